//! The Gemma 2 and Gemma 1 test files: Gemma 3 270M's real weights rewritten as `gemma2` / `gemma` GGUF files
//! (`docs/architectures.md`), made here so every test binary that needs them (`gemma2_parity`,
//! `quantize_parity`) makes the same bytes. llama.cpp's goldens on them record their sha256.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gemma_core::model::{MatmulObserver, WeightName};
use gemma_core::{Batch, Model, Scratch};
use gemma_io::{GgmlType, GgufFile, GgufWriter, MetaValue};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variant {
    Gemma2,
    Gemma1,
}

impl Variant {
    pub fn arch(self) -> &'static str {
        match self {
            Variant::Gemma2 => "gemma2",
            Variant::Gemma1 => "gemma",
        }
    }
    pub fn file_name(self) -> &'static str {
        match self {
            Variant::Gemma2 => "gemma2-test.gguf",
            Variant::Gemma1 => "gemma1-test.gguf",
        }
    }
    pub fn goldens(self) -> &'static str {
        match self {
            Variant::Gemma2 => concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/gemma2_llama.json"),
            Variant::Gemma1 => concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/gemma1_llama.json"),
        }
    }
}

/// Writes Gemma 3 270M (`source`) rewritten as `variant` to `out`: metadata keys `gemma3.*` renamed to the new
/// architecture's, the global RoPE base dropped (both variants then use llama.cpp's default 10,000 on every
/// layer), Gemma 2's soft-caps added, and the tensors the architecture lacks left out: the QK norms, and for
/// Gemma 1 the post norms (its layers are all global: the window key goes too). Tensor bytes are copied as
/// they are.
pub fn write_variant(source: &Path, variant: Variant, out: &Path) {
    let file = GgufFile::open(source).expect("Gemma 3 270M");
    let arch = variant.arch();
    let mut w = GgufWriter::new();
    for (key, value) in file.metadata() {
        let key = match key.strip_prefix("gemma3.") {
            Some("rope.freq_base") => continue,
            Some("attention.sliding_window") if variant == Variant::Gemma1 => continue,
            Some(rest) => format!("{arch}.{rest}"),
            None => key.clone(),
        };
        let value = match key.as_str() {
            "general.architecture" => MetaValue::String(arch.into()),
            "general.name" => MetaValue::String(format!("Gemma 3 270m weights as {arch} (test file)")),
            _ => value.clone(),
        };
        w.add_metadata(key, value).expect("metadata");
    }
    if variant == Variant::Gemma2 {
        w.add_metadata("gemma2.attn_logit_softcapping", MetaValue::F32(50.0)).expect("metadata");
        w.add_metadata("gemma2.final_logit_softcapping", MetaValue::F32(30.0)).expect("metadata");
    }
    let block_inputs = match variant {
        Variant::Gemma1 => block_output_inputs(source),
        Variant::Gemma2 => HashMap::new(),
    };
    for t in file.tensors() {
        let dropped = t.name.ends_with("attn_q_norm.weight")
            || t.name.ends_with("attn_k_norm.weight")
            || (variant == Variant::Gemma1
                && (t.name.ends_with("post_attention_norm.weight") || t.name.ends_with("post_ffw_norm.weight")));
        if dropped {
            continue;
        }
        let folded = [("attn_q.weight", "attn_q_norm.weight"), ("attn_k.weight", "attn_k_norm.weight")]
            .into_iter()
            .find(|(m, _)| t.name.ends_with(m));
        match folded {
            Some((m, norm)) => {
                let layer = t.name.strip_suffix(m).expect("layer prefix");
                let data = fold_head_norm(&file, t, &format!("{layer}{norm}"), &format!("{layer}attn_norm.weight"));
                w.add_tensor(t.name.clone(), &t.dims, GgmlType::F32, data).expect("tensor");
            }
            None => {
                let post_norm = [("attn_output", "post_attention_norm"), ("ffn_down", "post_ffw_norm")]
                    .into_iter()
                    .find(|(m, _)| t.name.ends_with(&format!("{m}.weight")));
                match (variant, post_norm) {
                    (Variant::Gemma1, Some((m, norm))) => {
                        let layer: usize = t.name.split('.').nth(1).and_then(|l| l.parse().ok()).expect("layer");
                        let inputs = &block_inputs[&(layer, m)];
                        let data = fold_output_norm(&file, t, &format!("blk.{layer}.{norm}.weight"), inputs);
                        w.add_tensor(t.name.clone(), &t.dims, GgmlType::F32, data).expect("tensor");
                    }
                    _ => w
                        .add_tensor(t.name.clone(), &t.dims, t.ggml_type, file.tensor_data(t).to_vec())
                        .expect("tensor"),
                }
            }
        }
    }
    w.write_file(out).expect("write");
}

/// The inputs of every layer's `attn_output` and `ffn_down` products when Gemma 3 270M reads a fixed sentence.
fn block_output_inputs(source: &Path) -> HashMap<(usize, &'static str), Vec<f32>> {
    struct Inputs(HashMap<(usize, &'static str), Vec<f32>>);
    impl MatmulObserver for Inputs {
        fn observe(&mut self, w: WeightName, input: &[f32], _cols: usize) {
            if let (Some(l), "attn_output" | "ffn_down") = (w.layer, w.tensor) {
                self.0.entry((l, w.tensor)).or_default().extend_from_slice(input);
            }
        }
    }
    let model = Model::open(source).expect("Gemma 3 270M");
    let tokenizer = gemma_core::Tokenizer::from_gguf(&model.file).expect("tokenizer");
    let ids =
        tokenizer.encode("The old lighthouse keeper climbed the stairs every evening to light the lamp.", true, false);
    let mut cache = model.new_cache(ids.len());
    let mut inputs = Inputs(HashMap::new());
    let pool = &super::default_model().pool;
    model
        .forward_observed(
            &Batch::sequence(&ids, 0, 0, false),
            std::slice::from_mut(&mut cache),
            pool,
            &mut Scratch::default(),
            &mut inputs,
        )
        .expect("forward");
    inputs.0
}

/// Gemma 1 has no post norms: Gemma 3 RMS-normalises each block's output before adding it to the residual
/// stream. Left out, the stream's scale is wrong from the first layer and the model is chaotic (as for the QK
/// norms). Folded as far as a linear map can: output row `i` scaled by the norm's weight `w[i]` and by the power
/// of two nearest `1 / rms` of the block's output when Gemma 3 reads a fixed sentence (`inputs`: the
/// product's input rows then). Written as F32.
fn fold_output_norm(file: &GgufFile, t: &gemma_io::TensorInfo, norm: &str, inputs: &[f32]) -> Vec<u8> {
    let bytes = file.tensor_bytes(norm).expect("norm tensor");
    let w_norm: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let mut m = dequantized(file, t);
    let cols = t.dims[0] as usize;
    let (mut sum, mut n) = (0f64, 0usize);
    for x in inputs.chunks_exact(cols) {
        for row in m.chunks_exact(cols) {
            let o: f64 = row.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
            sum += o * o;
            n += 1;
        }
    }
    let scale = (2f64).powi((-0.5 * (sum / n as f64).log2()).round() as i32) as f32;
    for (row, wi) in m.chunks_exact_mut(cols).zip(&w_norm) {
        row.iter_mut().for_each(|x| *x *= scale * wi);
    }
    m.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Tensor `t` decoded to f32, row-major.
pub fn dequantized(file: &GgufFile, t: &gemma_io::TensorInfo) -> Vec<f32> {
    let (cols, rows) = (t.row_len(), t.n_rows());
    let format = gemma_compression::quant_format(t.ggml_type).expect("weight type");
    let data = file.tensor_data(t);
    let row_bytes = data.len() / rows;
    let mut m = vec![0f32; rows * cols];
    for (r, out) in m.chunks_exact_mut(cols).enumerate() {
        format.dequantize_row(&data[r * row_bytes..(r + 1) * row_bytes], out);
    }
    m
}

/// Gemma 3 RMS-normalises each query and key head (QK-norm); the Gemma 2 and Gemma 1 graphs do not. Simply left
/// out, the 270M's raw heads are far from unit scale and the model turns chaotic (llama.cpp's own f16 and f32
/// caches then disagree by whole units of log-probability), useless for comparing engines. So the norm is folded
/// into the projection as far as a linear map can take it: row `j` of each head scaled by the norm's weight
/// `w[j]` and by one power of two per head standing in for `1 / rms` of the head, estimated from the weights
/// alone (the inputs taken as independent unit-RMS values times `attn_norm`'s weights). Written as F32.
fn fold_head_norm(file: &GgufFile, t: &gemma_io::TensorInfo, norm: &str, input_norm: &str) -> Vec<u8> {
    let f32s = |name: &str| -> Vec<f32> {
        let bytes = file.tensor_bytes(name).expect("norm tensor");
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    let (w_norm, w_in) = (f32s(norm), f32s(input_norm));
    let (cols, hd) = (t.dims[0] as usize, w_norm.len());
    let mut m = dequantized(file, t);
    for head in m.chunks_exact_mut(hd * cols) {
        let mean_square: f64 = head
            .chunks_exact(cols)
            .map(|row| row.iter().zip(&w_in).map(|(x, a)| (*x as f64 * *a as f64).powi(2)).sum::<f64>())
            .sum::<f64>()
            / hd as f64;
        let scale = (2f64).powi((-0.5 * mean_square.log2()).round() as i32) as f32;
        for (row, wj) in head.chunks_exact_mut(cols).zip(&w_norm) {
            row.iter_mut().for_each(|x| *x *= scale * wj);
        }
    }
    m.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The test file of `variant`, kept in the models folder's `test-files/` (not in a temp folder: tests keep
/// models in statics, never dropped) and written again when missing or not the bytes the goldens were
/// recorded on; the GGUF writer renames only a whole file.
pub fn test_file(variant: Variant) -> PathBuf {
    let dir = gemma_fetch::models_dir().join("test-files");
    std::fs::create_dir_all(&dir).expect("test files folder");
    let path = dir.join(variant.file_name());
    if !path.exists() || sha256(&path) != goldens_sha256(variant) {
        let source = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model");
        write_variant(&source, variant, &path);
    }
    path
}

/// The sha256 of the file llama.cpp's goldens were recorded on.
pub fn goldens_sha256(variant: Variant) -> String {
    let text = std::fs::read_to_string(variant.goldens()).expect("goldens");
    let v: serde_json::Value = serde_json::from_str(&text).expect("parse goldens");
    v["model_sha256"].as_str().expect("model_sha256").to_string()
}

pub fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("test file");
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}
