//! `gemma quantize` against llama.cpp's `llama-quantize`: the same input, options and type must give the same
//! tensor types and bytes, and the same whole file.
//!
//! The goldens (`testdata/goldens/llama_quantize.json`, from `scripts/llama_quantize_goldens.py`) hold, per job,
//! the sha256 of llama-quantize's whole output and of every tensor's data. CI runs a set chosen to cover every
//! rule and codec in well under a minute (`CI_JOBS`); `GEMMA_QUANTIZE_ALL=1` runs every job in the file, and
//! `GEMMA_QUANTIZE_JOBS=a,b` the jobs named.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gemma_core::convert::no_progress;
use gemma_core::quantize::{parse_tensor_type, quantize_gguf, FileType, ImatrixInput, QuantizeOptions};
use gemma_core::sampling::greedy;
use gemma_core::{Batch, BatchToken, Model, Tokenizer};
use gemma_io::GgufFile;
use gemma_ops::ThreadPool;
use serde::Deserialize;

mod common;

/// Every codec (Q8_0, Q4_0, Q5_1, Q2_K..Q6_K; Q5_0 and Q4_1 through fallbacks and overrides), every mixture rule
/// the Gemma file reaches, requantizing from K-quants and quantizing from F32, and SmolLM2's llama rules.
const CI_JOBS: &[&str] = &[
    "gemma_q8_0",
    "gemma_q4_k_m",
    "gemma_q6_k",
    "gemma_q3_k_m",
    "gemma_q2_k",
    "gemma_q5_1",
    "gemma_q6_k_embd_q5_0_out_q4_1",
    "gemma_f32",
    "gemma_f32_to_q4_k_m",
    "smollm2_q4_k_m",
    "smollm2_q3_k_l",
    // IQ4_XS with its IQ4_NL fallback, the Q5_K V and first FFN-down layers, and a Q8_0 tied output head (its
    // 640-wide rows are no whole IQ4_XS super-block); SmolLM2's grouped-query ratio of 3 keeps V in IQ4.
    "gemma_iq4_xs",
    "smollm2_iq4_xs",
    // With the committed importance matrix: Q4_K + Q6_K + the Q5_0/Q8_0 fallbacks, Q2_K_S (Q2_K, its Q4_K
    // layers and the Q4_0 fallback), Q4_0's Q4_1 FFN-down rule, Q5_K through --include-weights, and Q3_K from
    // the legacy .dat file.
    "gemma_imatrix_q4_k_m",
    "gemma_imatrix_q2_k_s",
    "gemma_imatrix_q4_0",
    "gemma_imatrix_include_q5_k_s",
    "gemma_imatrix_dat_q3_k_s",
    // IQ4_XS and its IQ4_NL fallback weighted by the matrix, the first FFN-down layers kept in IQ4_XS.
    "gemma_imatrix_iq4_xs",
    // The Gemma 2 and Gemma 1 test files (gemma2 / gemma architectures; F32 matrices among the K-quants).
    "gemma2_q4_k_m",
    "gemma1_q5_k_s",
];

#[derive(Deserialize)]
struct Goldens {
    jobs: HashMap<String, Job>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Model(String),
    Job { from: String },
}

#[derive(Deserialize)]
struct Job {
    input: Input,
    options: Vec<String>,
    #[serde(rename = "type")]
    file_type: String,
    #[serde(flatten)]
    golden: common::GoldenFile,
}

fn goldens() -> &'static Goldens {
    static G: OnceLock<Goldens> = OnceLock::new();
    G.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/goldens/llama_quantize.json");
        let text = std::fs::read_to_string(&path).expect("goldens readable");
        serde_json::from_str(&text).expect("goldens parse")
    })
}

fn model_path(file_name: &str) -> PathBuf {
    match file_name {
        "test-files/gemma2-test.gguf" => return common::gemma2_files::test_file(common::gemma2_files::Variant::Gemma2),
        "test-files/gemma1-test.gguf" => return common::gemma2_files::test_file(common::gemma2_files::Variant::Gemma1),
        _ => {}
    }
    let name = match file_name {
        "gemma-3-270m-q4_k_m.gguf" => gemma_fetch::DEFAULT_MODEL,
        "SmolLM2-135M-Instruct.Q4_1.gguf" => "smollm2-135m-instruct",
        other => panic!("goldens name an unknown model {other}"),
    };
    gemma_fetch::resolve_model(name).expect("model available")
}

/// llama-quantize's command-line options, as the goldens recorded them.
fn options(job: &Job) -> QuantizeOptions {
    let mut o = QuantizeOptions::new(FileType::parse(&job.file_type).expect("golden type"));
    o.threads = 2;
    let mut args = job.options.iter();
    let (mut imatrix, mut include, mut exclude) = (None, Vec::new(), Vec::new());
    while let Some(arg) = args.next() {
        let mut tensor_type = || parse_tensor_type(args.next().expect("option value")).expect("golden tensor type");
        match arg.as_str() {
            "--allow-requantize" => o.allow_requantize = true,
            "--pure" => o.pure = true,
            "--leave-output-tensor" => o.leave_output_tensor = true,
            "--output-tensor-type" => o.output_tensor_type = Some(tensor_type()),
            "--token-embedding-type" => o.token_embedding_type = Some(tensor_type()),
            "--imatrix" => imatrix = args.next(),
            "--include-weights" => include.push(args.next().expect("option value").clone()),
            "--exclude-weights" => exclude.push(args.next().expect("option value").clone()),
            other => panic!("option {other} not handled"),
        }
    }
    if let Some(relative) = imatrix {
        // llama-quantize ran in the repository root and wrote the path as given into the metadata
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(relative);
        let mut m = ImatrixInput::load(&path, &include, &exclude).expect("imatrix loads");
        m.label = relative.clone();
        o.imatrix = Some(m);
    }
    o
}

/// Runs one job (and the job it reads from, when it chains) in `dir`; returns the output path and the problems.
fn run_job(name: &str, dir: &Path, made: &mut HashMap<String, PathBuf>) -> Vec<String> {
    let job = &goldens().jobs[name];
    let input = match &job.input {
        Input::Model(file) => model_path(file),
        Input::Job { from } => {
            if !made.contains_key(from) {
                let problems = run_job(from, dir, made);
                assert!(problems.is_empty(), "{from} (input of {name}) differs from llama-quantize: {problems:?}");
            }
            made[from].clone()
        }
    };
    let file = GgufFile::open(&input).expect("input opens");
    let quantized = quantize_gguf(&file, &options(job), &mut no_progress).expect("quantizes");
    let bytes = quantized.writer.into_bytes();
    let problems = common::differences_from_golden(&bytes, &job.golden, "llama-quantize");
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, &bytes).expect("output written");
    made.insert(name.to_string(), path);
    problems
}

#[test]
fn quantized_files_equal_llama_quantize_byte_for_byte() {
    let all = std::env::var("GEMMA_QUANTIZE_ALL").is_ok_and(|v| v == "1");
    let chosen = std::env::var("GEMMA_QUANTIZE_JOBS").ok();
    let mut names: Vec<&str> = match (&chosen, all) {
        (_, true) => goldens().jobs.keys().map(String::as_str).collect(),
        (Some(list), false) => list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect(),
        (None, false) => CI_JOBS.to_vec(),
    };
    for name in &names {
        assert!(goldens().jobs.contains_key(*name), "no job {name} in the goldens");
    }
    names.sort();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut made = HashMap::new();
    let mut failures = Vec::new();
    for name in names {
        if made.contains_key(name) {
            continue;
        }
        let start = std::time::Instant::now();
        let problems = run_job(name, dir.path(), &mut made);
        println!("{name}: {} problems, {:.1} s", problems.len(), start.elapsed().as_secs_f64());
        if !problems.is_empty() {
            failures.push(format!("{name}: {}", problems.iter().take(5).cloned().collect::<Vec<_>>().join("; ")));
        }
        // chained inputs are kept only until the jobs that read them are done
        if !all && made.len() > 2 {
            made.retain(|k, _| k.contains("f32") || k.contains("f16"));
        }
    }
    assert!(failures.is_empty(), "differences from llama-quantize:\n{}", failures.join("\n"));
}

/// The Q8_0 file made from the default model runs in the engine and predicts the source model's greedy tokens
/// wherever the source is not near a tie.
#[test]
fn a_q8_0_requantized_model_generates_like_its_source() {
    let source_path = model_path("gemma-3-270m-q4_k_m.gguf");
    let source = Model::open(&source_path).expect("source loads");
    let tokenizer = Tokenizer::from_gguf(&source.file).expect("tokenizer");
    let dir = tempfile::tempdir().expect("temp dir");
    let q8_path = dir.path().join("q8_0.gguf");
    let mut options = QuantizeOptions::new(FileType::MostlyQ8_0);
    options.allow_requantize = true;
    options.threads = 2;
    gemma_core::quantize::quantize_file(&source_path, &q8_path, &options, &mut no_progress).expect("quantizes");
    let q8 = Model::open(&q8_path).expect("Q8_0 model loads");
    let pool = ThreadPool::new(2);
    let prompt = tokenizer.encode("The capital of France is", true, false);
    let (mut ours, mut theirs) = (prompt.clone(), prompt.clone());
    let (mut agreed, mut steps) = (0, 0);
    for _ in 0..12 {
        let (src_logits, q8_logits) = (last_logits(&source, &pool, &theirs), last_logits(&q8, &pool, &ours));
        let (a, b) = (greedy(&src_logits), greedy(&q8_logits));
        let mut sorted = src_logits.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        let margin = sorted[0] - sorted[1];
        steps += 1;
        if a != b {
            assert!(margin < 1.0, "step {steps}: source picks {a}, Q8_0 {b}, with a source margin of {margin}");
            break;
        }
        agreed += 1;
        theirs.push(a);
        ours.push(b);
    }
    assert!(agreed >= 4, "only {agreed} greedy tokens agree");
    // the source's greedy text here is " the capital of the country of France. ..."
    let text = tokenizer.decode(&ours[prompt.len()..], false);
    assert!(text.contains("capital") && text.contains("France"), "Q8_0 continuation: {text:?}");
}

fn last_logits(model: &Model, pool: &ThreadPool, ids: &[u32]) -> Vec<f32> {
    let batch = Batch {
        tokens: ids
            .iter()
            .enumerate()
            .map(|(pos, &token)| BatchToken { token, pos, seq: 0, logits: pos + 1 == ids.len() })
            .collect(),
    };
    let mut cache = model.new_cache(ids.len());
    let logits = model.forward(&batch, std::slice::from_mut(&mut cache), pool).expect("forward");
    logits.row(0).to_vec()
}
