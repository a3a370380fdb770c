//! `gemma embed`: texts to embedding vectors, as llama.cpp's `llama-embedding` (one vector per input, L2
//! normalised) with OpenAI's response format under `--json`.

use std::io::{Read, Write};

use anyhow::{Context, Result};
use gemma_core::model::embedding::{cosine_similarity, truncate_embedding};

use crate::args::EmbedArgs;
use crate::commands::{usage, Common};

pub(crate) fn embed(common: &Common, args: &EmbedArgs) -> Result<()> {
    let mut inputs = args.texts.clone();
    if let Some(path) = &args.file {
        let text = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read standard input")?;
            s
        } else {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
        };
        inputs.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
    }
    if inputs.is_empty() {
        return Err(usage("nothing to embed: give TEXT arguments or --file FILE with one input per line"));
    }
    if args.dimensions == Some(0) {
        return Err(usage("--dimensions must be at least 1"));
    }
    let m = common.load_any()?;
    let Some(width) = m.model.embedding_dim() else {
        return Err(gemma_core::ModelError::NotEmbeddingModel(m.model.config.name.clone()).into());
    };
    if let Some(d) = args.dimensions.filter(|&d| d > width) {
        return Err(usage(format!("--dimensions {d} exceeds the model's {width}")));
    }
    let ids: Vec<Vec<u32>> = inputs.iter().map(|t| m.tokenizer.encode_input(t, true)).collect();
    for (i, input) in ids.iter().enumerate() {
        if input.len() > m.ctx {
            anyhow::bail!(
                "input {} has {} tokens, more than the context of {} (raise --ctx)",
                i + 1,
                input.len(),
                m.ctx
            );
        }
    }
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let mut vectors = m.model.embed(&refs, &m.pool)?;
    if let Some(d) = args.dimensions {
        vectors = vectors.iter().map(|v| truncate_embedding(v, d)).collect();
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let tokens: usize = ids.iter().map(Vec::len).sum();
        let data: Vec<JsonItem> = vectors
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| JsonItem { object: "embedding", index, embedding })
            .collect();
        let body = JsonResponse {
            object: "list",
            data,
            model: m.model.config.name.clone(),
            usage: JsonUsage { prompt_tokens: tokens, total_tokens: tokens },
        };
        writeln!(out, "{}", serde_json::to_string(&body)?)?;
    } else if args.similarity {
        for a in &vectors {
            let row: Vec<String> = vectors.iter().map(|b| format!("{:.4}", cosine_similarity(a, b))).collect();
            writeln!(out, "{}", row.join(" "))?;
        }
    } else {
        for v in &vectors {
            let row: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            writeln!(out, "{}", row.join(" "))?;
        }
    }
    Ok(())
}

/// OpenAI's embeddings response (typed, so the floats print as f32).
#[derive(serde::Serialize)]
struct JsonResponse {
    object: &'static str,
    data: Vec<JsonItem>,
    model: String,
    usage: JsonUsage,
}

#[derive(serde::Serialize)]
struct JsonItem {
    object: &'static str,
    index: usize,
    embedding: Vec<f32>,
}

#[derive(serde::Serialize)]
struct JsonUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}
