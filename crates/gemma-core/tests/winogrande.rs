//! Winogrande scoring against llama-perplexity's `--winogrande` on the F32 file made from the default model
//! (F32 weights multiply unrounded activations in both engines, so each candidate's score can be compared to
//! a few thousandths; on the Q4_K_M file llama.cpp's own two attention paths differ by up to 0.2 and flip two
//! of the 25 choices, see docs/perplexity.md). `testdata/winogrande/everyday-tasks.csv` is 26 tasks written
//! for this test in Winogrande's format, a few with 3 tokens or fewer after the shared prefix (the candidates are
//! scored too, through llama-perplexity's "wrong first logits" for the second one);
//! `everyday-tasks.llama-perplexity-f32.txt` is what `llama-perplexity -m f32.gguf -f everyday-tasks.csv
//! --winogrande -t 2` printed (it reads only 25: a file's last line is lost in its reader).

mod common;

use gemma_core::winogrande;

const TASKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/winogrande/everyday-tasks.csv");
const LLAMA_F32: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/winogrande/everyday-tasks.llama-perplexity-f32.txt");

/// llama-perplexity's line: task, running accuracy, score 1, score 2, choice, answer.
fn llama_lines() -> Vec<(f32, f32, u8, u8)> {
    std::fs::read_to_string(LLAMA_F32)
        .expect("recorded output")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[2].parse().unwrap(), f[3].parse().unwrap(), f[4].parse().unwrap(), f[5].parse().unwrap())
        })
        .collect()
}

#[test]
fn f32_scores_match_llama_perplexity() {
    let (_dir, model) = common::f32_default_model();
    let tokenizer = gemma_core::Tokenizer::from_gguf(&model.file).expect("tokenizer");
    let pool = gemma_ops::ThreadPool::new(2);

    let (tasks, skipped) = winogrande::parse(&std::fs::read_to_string(TASKS).unwrap()).unwrap();
    assert_eq!((tasks.len(), skipped.len()), (26, 0));
    let scores = winogrande::score(&model, &pool, &tokenizer, &tasks, 512, &mut |_, _| {}, None).expect("scores");
    let llama = llama_lines();
    assert_eq!(llama.len(), 25);
    let mut worst = 0f32;
    for (i, (ours, (a, b, chosen, answer))) in scores.iter().zip(&llama).enumerate() {
        assert_eq!((ours.chosen, ours.answer), (*chosen, *answer), "task {}", i + 1);
        for (x, y) in ours.scores.iter().zip([a, b]) {
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("largest score difference from llama-perplexity: {worst}");
    // measured 0.0022
    assert!(worst < 0.005, "{worst}");
    // the 26th task, which llama-perplexity's reader drops, is scored too
    assert_eq!(scores.len(), 26);
}
