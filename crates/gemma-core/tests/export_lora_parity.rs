//! `gemma export-lora` (`gemma_core::convert::merge_lora`) against llama.cpp's `llama-export-lora`: the same
//! base model and adapters must give the same file, byte for byte.
//!
//! The goldens (`testdata/goldens/llama_export_lora.json`, from `scripts/llama_export_lora_goldens.py`) hold, per
//! job, the sha256 of llama-export-lora's whole output and of every tensor's data. The adapters are the
//! deterministic ones of `gemma_core::lora::synthetic` (their sha256 is in the goldens too): their products are
//! exact in f32, so the merged values do not depend on how either program sums them.

use std::collections::HashMap;
use std::path::PathBuf;

use gemma_core::convert::{merge_lora, no_progress, ConvertError, MergeAdapter};
use gemma_core::lora::synthetic::{self, Spec};
use gemma_io::gguf::lora::LoraFile;
use gemma_io::{GgmlType, GgufFile, GgufWriter, MetaValue};
use gemma_ops::ThreadPool;
use serde::Deserialize;

mod common;

#[derive(Deserialize)]
struct Goldens {
    jobs: HashMap<String, Job>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Base {
    Model(String),
    /// The model requantized by llama-quantize (`gemma quantize` writes the same bytes: `quantize_parity.rs`).
    Quantized {
        quantized: String,
        #[serde(rename = "type")]
        file_type: String,
    },
}

#[derive(Deserialize)]
struct UsedAdapter {
    adapter: String,
    sha256: String,
    scale: f32,
}

#[derive(Deserialize)]
struct Job {
    base: Base,
    adapters: Vec<UsedAdapter>,
    #[serde(flatten)]
    golden: common::GoldenFile,
}

fn goldens() -> Goldens {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/llama_export_lora.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("goldens")).expect("goldens parse")
}

use common::sha256_hex as sha256;

/// The adapter of the script's token-embedding job: `token_embd.weight` alone, its `lora_a` one rank-wide row
/// per token, as gguf-py writes it.
fn embedding_adapter(spec: &Spec) -> GgufWriter {
    let (vocab, dim) = (262_144usize, 640usize);
    let mut w = GgufWriter::new();
    let text = |s: &str| MetaValue::String(s.to_string());
    w.add_metadata("general.architecture", text("gemma3")).expect("metadata");
    w.add_metadata("general.type", text("adapter")).expect("metadata");
    w.add_metadata("adapter.type", text("lora")).expect("metadata");
    w.add_metadata("adapter.lora.alpha", MetaValue::F32(spec.alpha)).expect("metadata");
    let f16 = |v: Vec<f32>| v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect::<Vec<u8>>();
    let a = f16(synthetic::values(spec.seed, 0, vocab * spec.rank, spec.a_shift));
    let b = f16(synthetic::values(spec.seed, 1, dim * spec.rank, spec.b_shift));
    w.add_tensor("token_embd.weight.lora_a", &[spec.rank as u64, vocab as u64], GgmlType::F16, a).expect("tensor");
    w.add_tensor("token_embd.weight.lora_b", &[spec.rank as u64, dim as u64], GgmlType::F16, b).expect("tensor");
    w
}

/// The adapter the goldens call `name`, read back from its bytes.
fn adapter(name: &str) -> (LoraFile, String) {
    let writer = match name {
        "gemma" => Spec::gemma3_270m().writer().expect("adapter"),
        "gemma_second" => Spec { seed: 0x20BB, ..Spec::gemma3_270m() }.writer().expect("adapter"),
        "gemma_embd" => embedding_adapter(&Spec::gemma3_270m()),
        "smollm2" => Spec::smollm2_135m().writer().expect("adapter"),
        other => panic!("goldens name an unknown adapter {other}"),
    };
    let bytes = writer.into_bytes();
    let sha = sha256(&bytes);
    let file = GgufFile::from_bytes(bytes, format!("{name}.gguf")).expect("adapter parses");
    (LoraFile::from_gguf(file).expect("a LoRA adapter"), sha)
}

fn model(file_name: &str) -> PathBuf {
    let name = match file_name {
        "gemma-3-270m-q4_k_m.gguf" => gemma_fetch::DEFAULT_MODEL,
        "SmolLM2-135M-Instruct.Q4_1.gguf" => "smollm2-135m-instruct",
        other => panic!("goldens name an unknown model {other}"),
    };
    gemma_fetch::resolve_model(name).expect("model available")
}

/// Runs job `name`; returns what differs from llama-export-lora's file.
fn run_job(name: &str, job: &Job, pool: &ThreadPool) -> Vec<String> {
    let _f32_dir;
    let base = match &job.base {
        Base::Model(file) => GgufFile::open(model(file)).expect("base opens"),
        Base::Quantized { quantized, file_type } => {
            assert_eq!((quantized.as_str(), file_type.as_str()), ("gemma-3-270m-q4_k_m.gguf", "F32"));
            let (dir, m) = common::f32_default_model();
            _f32_dir = dir;
            GgufFile::open(m.file.path()).expect("F32 base opens")
        }
    };
    let adapters: Vec<MergeAdapter> = job
        .adapters
        .iter()
        .map(|u| {
            let (lora, sha) = adapter(&u.adapter);
            assert_eq!(sha, u.sha256, "{name}: adapter {} is not the script's", u.adapter);
            MergeAdapter { lora, scale: u.scale }
        })
        .collect();
    let (writer, summary) = merge_lora(&base, &adapters, pool, &mut no_progress).expect("merges");
    let bytes = writer.into_bytes();
    let mut problems = common::differences_from_golden(&bytes, &job.golden, "llama-export-lora");
    let out = GgufFile::from_bytes(bytes, format!("{name}.gguf")).expect("output parses");
    if out.get("general.file_type") != Some(&MetaValue::U32(1)) {
        problems.push("general.file_type is not F16 (1)".into());
    }
    let merged =
        out.tensors().iter().filter(|t| base.tensor(&t.name).map(|b| b.ggml_type) != Some(t.ggml_type)).count();
    println!(
        "{name}: {} merged, {} copied ({merged} changed type), {} problems",
        summary.merged,
        summary.copied,
        problems.len()
    );
    assert!(summary.merged > 0, "{name}: nothing merged");
    problems
}

#[test]
fn merged_files_equal_llama_export_lora_byte_for_byte() {
    let goldens = goldens();
    let pool = ThreadPool::new(2);
    let mut names: Vec<&String> = goldens.jobs.keys().collect();
    names.sort();
    let mut failures = Vec::new();
    for name in names {
        let problems = run_job(name, &goldens.jobs[name], &pool);
        if !problems.is_empty() {
            failures.push(format!("{name}: {}", problems.iter().take(5).cloned().collect::<Vec<_>>().join("; ")));
        }
    }
    assert!(failures.is_empty(), "differences from llama-export-lora:\n{}", failures.join("\n"));
}

/// What llama-export-lora refuses, refused with a message that says why: an adapter of another architecture,
/// adapters that do not adapt the same tensors, quantized factors, a tensor the base lacks, factors that do not
/// fit the base, a split model.
#[test]
fn bad_merges_are_clear_errors() {
    let pool = ThreadPool::new(2);
    let gemma = GgufFile::open(model("gemma-3-270m-q4_k_m.gguf")).expect("base");
    let merge = |base: &GgufFile, adapters: Vec<(LoraFile, f32)>| -> ConvertError {
        let adapters = adapters.into_iter().map(|(lora, scale)| MergeAdapter { lora, scale }).collect::<Vec<_>>();
        merge_lora(base, &adapters, &pool, &mut no_progress).err().expect("refused")
    };
    let from = |w: GgufWriter| LoraFile::from_gguf(GgufFile::from_bytes(w.into_bytes(), "x.gguf").unwrap()).unwrap();

    let e = merge(&gemma, vec![(adapter("smollm2").0, 1.0)]).to_string();
    assert!(e.contains("arch mismatch") && e.contains("'llama'"), "{e}");
    let e = merge(&gemma, vec![(adapter("gemma").0, 1.0), (adapter("gemma_embd").0, 1.0)]).to_string();
    assert!(e.contains("do not adapt the same tensors"), "{e}");
    let e = merge(&gemma, vec![(adapter("gemma").0, f32::NAN)]).to_string();
    assert!(e.contains("not a finite number"), "{e}");

    // One layer more than the base has.
    let e = merge(&gemma, vec![(from(Spec { n_layers: 19, ..Spec::gemma3_270m() }.writer().unwrap()), 1.0)]);
    assert!(e.to_string().contains("blk.18.attn_q.weight") && e.to_string().contains("does not exist"), "{e}");
    // attn_q's factors given to attn_v (1024 outputs for a 256-row matrix).
    let wrong = Spec { targets: vec![("attn_v", 640, 1024)], ..Spec::gemma3_270m() };
    let e = merge(&gemma, vec![(from(wrong.writer().unwrap()), 1.0)]).to_string();
    assert!(e.contains("do not fit") && e.contains("attn_v"), "{e}");
    // Factors in Q8_0.
    let mut w = GgufWriter::new();
    let t = |s: &str| MetaValue::String(s.into());
    for (k, v) in [("general.architecture", t("gemma3")), ("general.type", t("adapter")), ("adapter.type", t("lora"))] {
        w.add_metadata(k, v).unwrap();
    }
    let q8 = |rows: usize| vec![0u8; rows * 34];
    w.add_tensor("blk.0.attn_q.weight.lora_a", &[640, 32], GgmlType::Q8_0, q8(32 * 20)).unwrap();
    w.add_tensor("blk.0.attn_q.weight.lora_b", &[32, 1024], GgmlType::Q8_0, q8(1024)).unwrap();
    let e = merge(&gemma, vec![(from(w), 1.0)]).to_string();
    assert!(e.contains("quantized LoRA adapters are not supported"), "{e}");
    // A split model's first part.
    let mut split = GgufWriter::new();
    for (k, v) in gemma.metadata() {
        split.add_metadata(k.clone(), v.clone()).unwrap();
    }
    split.add_metadata("split.count", MetaValue::U16(2)).unwrap();
    let split = GgufFile::from_bytes(split.into_bytes(), "part-00001-of-00002.gguf").unwrap();
    let e = merge(&split, vec![(adapter("gemma").0, 1.0)]).to_string();
    assert!(e.contains("gguf-split --merge"), "{e}");
}

/// The merged model runs as the base model with the adapter applied at run time: llama-server's greedy tokens
/// with the adapter (`gemma3_270m_llama_lora.json`, scale 1 and 0.5) are the merged model's teacher-forced best
/// tokens wherever llama.cpp's margin is at least 1 (the merged matrices are F16 where the base ones were
/// K-quants, so logits move a little).
#[test]
fn a_merged_model_generates_as_the_adapter_does() {
    #[derive(Deserialize)]
    struct LoraGoldens {
        cases: Vec<LoraCase>,
    }
    #[derive(Deserialize)]
    struct LoraCase {
        prompt_ids: Vec<u32>,
        runs: Vec<LoraRun>,
    }
    #[derive(Deserialize)]
    struct LoraRun {
        scale: f32,
        gen_ids: Vec<u32>,
        top1_top2_margin: Vec<f32>,
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/gemma3_270m_llama_lora.json");
    let goldens: LoraGoldens = serde_json::from_str(&std::fs::read_to_string(path).expect("goldens")).expect("parse");
    let pool = ThreadPool::new(2);
    let base = GgufFile::open(model("gemma-3-270m-q4_k_m.gguf")).expect("base");
    for scale in [1.0f32, 0.5] {
        let adapters = vec![MergeAdapter { lora: adapter("gemma").0, scale }];
        let (writer, _) = merge_lora(&base, &adapters, &pool, &mut no_progress).expect("merges");
        let dir = tempfile::tempdir().expect("temp dir");
        let merged_path = dir.path().join("merged.gguf");
        writer.write_file(&merged_path).expect("written");
        let merged = gemma_core::Model::open(&merged_path).expect("merged model loads");
        let (mut checked, mut failures) = (0, Vec::new());
        for (ci, case) in goldens.cases.iter().enumerate() {
            let run = case.runs.iter().find(|r| r.scale == scale).expect("run at this scale");
            let logits = common::teacher_forced(&merged, &pool, &case.prompt_ids, &run.gen_ids);
            for (i, row) in logits.iter().enumerate() {
                if run.top1_top2_margin[i] >= 1.0 {
                    checked += 1;
                    let ours = gemma_core::sampling::greedy(row);
                    if ours != run.gen_ids[i] {
                        failures.push(format!("case {ci} step {i}: ours {ours}, llama.cpp {}", run.gen_ids[i]));
                    }
                }
            }
        }
        println!("scale {scale}: {checked} clear steps, {} differ", failures.len());
        assert!(checked >= 30 && failures.is_empty(), "scale {scale}: {checked} steps, {failures:?}");
    }
}
