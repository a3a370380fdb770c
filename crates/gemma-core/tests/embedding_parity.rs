//! EmbeddingGemma 300M (pulled as its sentence-transformers folder) against two references on the same texts:
//! an independent float64 NumPy implementation of the published architecture
//! (`scripts/embeddinggemma_reference.py`) and llama.cpp running the GGUF our converter writes
//! (`scripts/llama_embedding_goldens.py`). One text is 651 tokens long, so the sliding-window layers' centred
//! window (256 positions either side) decides its result.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gemma_core::config::{Architecture, Pooling};
use gemma_core::convert::{sentence_transformers_gguf, GgufOutputType};
use gemma_core::model::embedding::{cosine_similarity, truncate_embedding};
use gemma_core::{Model, ModelError, Tokenizer};
use gemma_ops::ThreadPool;
use serde_json::Value;

struct Golden {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn goldens(name: &str) -> Vec<Golden> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/goldens").join(name);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| Golden {
            text: t["text"].as_str().unwrap().to_string(),
            ids: t["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect(),
            embedding: t["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        })
        .collect()
}

struct Fixture {
    folder: PathBuf,
    model: Model,
    tokenizer: Tokenizer,
    pool: ThreadPool,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let folder = gemma_fetch::resolve_model("embeddinggemma-300m").expect("EmbeddingGemma (pulled on first use)");
        let model = Model::open(&folder).expect("the folder loads");
        let tokenizer = model.tokenizer().unwrap();
        Fixture { folder, model, tokenizer, pool: ThreadPool::new(2) }
    })
}

/// |a - b| / |b|.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
    let n: f64 = b.iter().map(|&y| f64::from(y).powi(2)).sum();
    (d / n).sqrt()
}

fn embed_all(model: &Model, pool: &ThreadPool, inputs: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
    model.embed(&refs, pool).unwrap()
}

#[test]
fn the_folder_loads_as_llama_cpps_gemma_embedding() {
    let f = fixture();
    let c = &f.model.config;
    assert_eq!(c.arch, Architecture::GemmaEmbedding);
    assert_eq!((c.n_layers, c.d_model, c.ffn_dim, c.n_heads, c.n_kv_heads, c.head_dim), (24, 768, 1152, 3, 1, 256));
    assert!(!c.causal);
    assert_eq!(c.pooling, Some(Pooling::Mean));
    assert_eq!(c.sliding_window, Some(512));
    assert_eq!(c.layer_is_local.iter().filter(|&&l| !l).count(), 4);
    assert_eq!((c.rope_base, c.rope_base_local), (1_000_000.0, Some(10_000.0)));
    assert_eq!(f.model.embedding_dim(), Some(768));
    assert!(f.model.is_embedding_model());
    assert!(f.tokenizer.add_bos() && f.tokenizer.add_eos());
}

#[test]
fn inputs_tokenize_to_the_reference_ids_with_bos_and_eos() {
    let f = fixture();
    for g in goldens("embeddinggemma_300m_ref_f64.json") {
        assert_eq!(f.tokenizer.encode_input(&g.text, true), g.ids, "{:?}", g.text);
    }
}

#[test]
fn embeddings_match_the_float64_reference_and_llama_cpp() {
    let f = fixture();
    let reference = goldens("embeddinggemma_300m_ref_f64.json");
    let llama = goldens("embeddinggemma_300m_llama.json");
    let inputs: Vec<Vec<u32>> = reference.iter().map(|g| g.ids.clone()).collect();
    let got = embed_all(&f.model, &f.pool, &inputs);
    for ((g, l), e) in reference.iter().zip(&llama).zip(&got) {
        assert_eq!(l.ids, g.ids);
        let (to_ref, to_llama) = (rel_l2(e, &g.embedding), rel_l2(e, &l.embedding));
        eprintln!("{:4} tokens: {to_ref:.2e} from the f64 reference, {to_llama:.2e} from llama.cpp", g.ids.len());
        // Measured 3e-7..1.4e-6: f32 arithmetic. The reference's own 7-digit rounding is 1e-7.
        assert!(to_ref < 1e-5, "{:?}: {to_ref:e}", g.text);
        // llama.cpp is 1.6e-4..3.1e-4 from the reference (its GELU is an fp16 table).
        assert!(to_llama < 1e-3, "{:?}: {to_llama:e}", g.text);
        let norm: f64 = e.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    // The retrieval prompts do their job: the query is closer to the Paris document than to the cell one.
    let (paris, cell) = (cosine_similarity(&got[1], &got[2]), cosine_similarity(&got[1], &got[3]));
    assert!((paris - 0.582540).abs() < 1e-4 && (cell - 0.078968).abs() < 1e-4, "{paris} {cell}");
}

/// A centred window of 255 or 257 positions instead of 256 moves the 651-token text by 4e-3..7e-3 (the
/// reference's author measured it), far beyond this bound; full attention by 0.18.
#[test]
fn the_long_input_sees_a_centred_window() {
    let f = fixture();
    let g = goldens("embeddinggemma_300m_ref_f64.json").into_iter().find(|g| g.ids.len() > 600).unwrap();
    let e = &embed_all(&f.model, &f.pool, std::slice::from_ref(&g.ids))[0];
    assert!(rel_l2(e, &g.embedding) < 1e-5);
}

#[test]
fn batches_give_each_input_exactly_its_own_embedding() {
    let f = fixture();
    let inputs: Vec<Vec<u32>> = goldens("embeddinggemma_300m_ref_f64.json").into_iter().map(|g| g.ids).collect();
    let together = embed_all(&f.model, &f.pool, &inputs);
    for (ids, batched) in inputs.iter().zip(&together) {
        let alone = &embed_all(&f.model, &f.pool, std::slice::from_ref(ids))[0];
        assert_eq!(alone, batched);
    }
    // Matryoshka: the first 256 values, normalised again.
    let short = truncate_embedding(&together[0], 256);
    assert_eq!(short.len(), 256);
    let norm: f32 = together[0][..256].iter().map(|x| x * x).sum::<f32>().sqrt();
    for (s, x) in short.iter().zip(&together[0]) {
        assert!((s - x / norm).abs() < 1e-6);
    }
}

#[test]
fn converted_gguf_files_run_the_same_model() {
    let f = fixture();
    let reference = goldens("embeddinggemma_300m_ref_f64.json");
    let inputs: Vec<Vec<u32>> = reference.iter().take(6).map(|g| g.ids.clone()).collect();
    let from_folder = embed_all(&f.model, &f.pool, &inputs);
    let dir = tempfile::tempdir().unwrap();
    // F32 is exact: the same bytes the folder loads as. Q8_0 moves them by 2-4% (llama.cpp's Q8_0 of this model
    // is 1.9e-2..4.2e-2 from the reference too), BF16 by less.
    for (ty, bound) in [(GgufOutputType::F32, 0.0), (GgufOutputType::Bf16, 1e-2), (GgufOutputType::Q8_0, 6e-2)] {
        let path = dir.path().join(format!("eg-{ty:?}.gguf"));
        sentence_transformers_gguf(&f.folder, ty, &mut gemma_core::convert::no_progress)
            .unwrap()
            .write_file(&path)
            .unwrap();
        let model = Model::open(&path).unwrap();
        assert_eq!(model.config, f.model.config);
        let got = embed_all(&model, &f.pool, &inputs);
        for ((g, e), folder) in reference.iter().zip(&got).zip(&from_folder) {
            if bound == 0.0 {
                assert_eq!(e, folder, "{ty:?}");
            } else {
                let d = rel_l2(e, &g.embedding);
                eprintln!("{ty:?} {:3} tokens: {d:.2e}", g.ids.len());
                assert!(d < bound, "{ty:?} {:?}: {d:e}", g.text);
            }
        }
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn bad_inputs_are_errors() {
    let f = fixture();
    let err = f.model.embed(&[&[]], &f.pool).unwrap_err();
    assert!(matches!(err, ModelError::BadBatch(_)), "{err}");
    let long = vec![2u32; f.model.config.context_length + 1];
    let err = f.model.embed(&[&long], &f.pool).unwrap_err();
    assert!(matches!(err, ModelError::ContextFull { .. }), "{err}");
    let err = f.model.embed(&[&[2, 300_000, 1]], &f.pool).unwrap_err();
    assert!(matches!(err, ModelError::TokenOutOfRange { id: 300_000, .. }), "{err}");
    // A generative model has no embedding head.
    let gemma = Model::open(gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).unwrap()).unwrap();
    assert!(!gemma.is_embedding_model());
    let err = gemma.embed(&[&[2, 3]], &f.pool).unwrap_err();
    assert!(err.to_string().contains("is not an embedding model"), "{err}");
}

/// A copy of the folder (the weights linked, the small files copied) with one file changed.
fn damaged_copy(src: &Path, dst: &Path, change: impl FnOnce(&Path)) {
    for entry in walk(src) {
        let rel = entry.strip_prefix(src).unwrap();
        let to = dst.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        if std::fs::metadata(&entry).unwrap().len() > 50_000_000 {
            std::os::unix::fs::symlink(&entry, &to).unwrap();
        } else {
            std::fs::copy(&entry, &to).unwrap();
        }
    }
    change(dst);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A change made to a copy of the folder.
type Damage = Box<dyn FnOnce(&Path)>;

#[test]
fn damaged_folders_give_errors_that_name_the_problem() {
    let f = fixture();
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "generative config",
            Box::new(|d: &Path| {
                let p = d.join("config.json");
                let text = std::fs::read_to_string(&p)
                    .unwrap()
                    .replace("\"use_bidirectional_attention\": true", "\"use_bidirectional_attention\": false");
                std::fs::write(p, text).unwrap();
            }),
            "only embedding models",
        ),
        ("broken JSON", Box::new(|d: &Path| std::fs::write(d.join("config.json"), "{").unwrap()), "invalid JSON"),
        (
            "truncated dense layer",
            Box::new(|d: &Path| {
                let p = d.join("2_Dense/model.safetensors");
                let bytes = std::fs::read(&p).unwrap();
                std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
            }),
            "2_Dense/model.safetensors",
        ),
        (
            "missing tokenizer",
            Box::new(|d: &Path| std::fs::remove_file(d.join("tokenizer.model")).unwrap()),
            "tokenizer.model",
        ),
        (
            "unknown module",
            Box::new(|d: &Path| {
                let p = d.join("modules.json");
                let text = std::fs::read_to_string(&p).unwrap().replace("models.Normalize", "models.LayerNorm");
                std::fs::write(p, text).unwrap();
            }),
            "module type LayerNorm is not supported",
        ),
    ];
    for (what, change, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        damaged_copy(&f.folder, dir.path(), change);
        let err = match Model::open(dir.path()) {
            Ok(_) => panic!("{what}: loaded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{what}: {err}");
    }
}
