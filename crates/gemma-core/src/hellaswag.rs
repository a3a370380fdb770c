//! HellaSwag scoring as llama.cpp's `llama-perplexity --hellaswag` does it: each task is a context and four
//! endings, one of them right; the model "chooses" the ending whose tokens have the highest mean
//! log-probability after the context, and the score is the share of tasks where that is the right one
//! (acc_norm), with its 95% Wilson interval.
//!
//! The task file is llama.cpp's: six lines per task, the context (`activity_label: ctx`), the index of the
//! right ending, then the four endings. Tasks are taken in llama-perplexity's random order (`std::mt19937`
//! seeded with 1, a uniform pick among the tasks left), so the first N tasks scored are its first N.
//!
//! Each ending is tokenized with the context (`context + " " + ending`, BOS first); the tokens the four share
//! from the start are the common prefix, and an ending's score is the mean log-probability of its tokens
//! from the first one after that prefix. Where llama-perplexity runs the prefix once for four sequences, each
//! sequence runs whole here (the same positions and tokens, so the same probabilities up to float rounding).

use std::sync::atomic::AtomicBool;

use gemma_ops::ThreadPool;

use crate::random::Mt19937;
use crate::task_scoring::{self, ScoringError};
use crate::tokenizer::Tokenizer;
use crate::{Model, Scratch};

/// llama-perplexity's default `--hellaswag-tasks`.
pub const DEFAULT_TASKS: usize = 400;

/// One task: a context, four endings, and which one is right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HellaswagTask {
    pub context: String,
    pub gold: usize,
    pub endings: [String; 4],
}

/// What the model made of one task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskScore {
    /// Mean log-probability of each ending's tokens.
    pub logprobs: [f64; 4],
    /// The ending with the highest (the first of equals).
    pub chosen: usize,
    pub gold: usize,
}

impl TaskScore {
    pub fn correct(&self) -> bool {
        self.chosen == self.gold
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HellaswagError {
    #[error(
        "a HellaSwag file has 6 lines per task (context, the right ending's index, four endings), but this one \
         has {0} lines"
    )]
    Lines(usize),
    #[error("the file holds no task")]
    Empty,
    #[error("task on lines {line}..: the right ending is given as '{value}', not 0, 1, 2 or 3")]
    Gold { line: usize, value: String },
}

/// The tasks of a llama.cpp HellaSwag file, in file order.
pub fn parse(text: &str) -> Result<Vec<HellaswagTask>, HellaswagError> {
    // std::getline: a last line without a newline counts, a final newline adds no empty line
    let lines: Vec<&str> = text.strip_suffix('\n').unwrap_or(text).split('\n').collect();
    let lines = if text.is_empty() { Vec::new() } else { lines };
    if !lines.len().is_multiple_of(6) {
        return Err(HellaswagError::Lines(lines.len()));
    }
    if lines.is_empty() {
        return Err(HellaswagError::Empty);
    }
    lines
        .chunks_exact(6)
        .enumerate()
        .map(|(i, l)| {
            let gold = l[1].trim().parse::<usize>().ok().filter(|g| *g < 4);
            let gold = gold.ok_or_else(|| HellaswagError::Gold { line: 6 * i + 1, value: l[1].to_string() })?;
            Ok(HellaswagTask { context: l[0].to_string(), gold, endings: [l[2], l[3], l[4], l[5]].map(str::to_string) })
        })
        .collect()
}

/// `n` tasks (all, if fewer) in llama-perplexity's random order.
pub fn select(mut tasks: Vec<HellaswagTask>, n: usize) -> Vec<HellaswagTask> {
    let mut rng = Mt19937::new(1);
    let count = n.min(tasks.len());
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let i = rng.below(tasks.len() as u32) as usize;
        out.push(tasks.remove(i));
    }
    out
}

/// The 95% Wilson score interval of `correct` out of `n`, as fractions (llama-perplexity's).
pub fn wilson_interval(correct: usize, n: usize) -> (f64, f64) {
    let za = 1.95996398454f64;
    let n = n as f64;
    let freq = correct as f64 / n;
    let z = za * za / n;
    let cnf = z * (n * (4.0 * freq * (1.0 - freq) + z)).sqrt() / (za + za);
    ((freq + z * 0.5 - cnf) / (1.0 + z), (freq + z * 0.5 + cnf) / (1.0 + z))
}

/// Scores `tasks` in order, calling `on_task(i, score)` after each. Setting `cancel` stops between two tasks
/// with [`ScoringError::Cancelled`].
pub fn score(
    model: &Model,
    pool: &ThreadPool,
    tokenizer: &Tokenizer,
    tasks: &[HellaswagTask],
    n_ctx: usize,
    on_task: &mut dyn FnMut(usize, &TaskScore),
    cancel: Option<&AtomicBool>,
) -> Result<Vec<TaskScore>, ScoringError> {
    let mut scratch = Scratch::default();
    let bos = tokenizer.add_bos();
    task_scoring::score_each(tasks, cancel, on_task, |task| {
        let seqs: Vec<Vec<u32>> =
            task.endings.iter().map(|e| tokenizer.encode(&format!("{} {e}", task.context), bos, false)).collect();
        task_scoring::check_fits(&seqs, n_ctx)?;
        let means = task_scoring::mean_continuation_log_probs(model, pool, &mut scratch, &seqs)?;
        let logprobs: [f64; 4] = std::array::from_fn(|s| means[s]);
        Ok(TaskScore { logprobs, chosen: task_scoring::first_max(&logprobs), gold: task.gold })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tasks: usize) -> String {
        (0..tasks).map(|i| format!("ctx {i}\n{}\na\nb\nc\nd\n", i % 4)).collect()
    }

    #[test]
    fn files_parse_as_llama_perplexity_reads_them() {
        let tasks = parse(&file(3)).unwrap();
        assert_eq!(tasks.len(), 3);
        assert_eq!((tasks[2].context.as_str(), tasks[2].gold, tasks[2].endings[3].as_str()), ("ctx 2", 2, "d"));
        // no final newline is the same
        assert_eq!(parse(file(3).trim_end()).unwrap(), tasks);
        assert!(matches!(parse(&file(3)[1..].replacen('\n', "", 1)), Err(HellaswagError::Lines(17))));
        assert!(matches!(parse(""), Err(HellaswagError::Empty)));
        let bad = file(2).replacen("\n1\n", "\nfour\n", 1);
        let e = parse(&bad).unwrap_err();
        assert!(matches!(&e, HellaswagError::Gold { line: 7, value } if value == "four"), "{e}");
        assert!(matches!(parse(&file(1).replacen("\n0\n", "\n4\n", 1)), Err(HellaswagError::Gold { .. })));
    }

    #[test]
    fn tasks_are_picked_in_llama_perplexity_order() {
        let tasks = parse(&file(10)).unwrap();
        let picked: Vec<String> = select(tasks.clone(), 10).into_iter().map(|t| t.context).collect();
        // mt19937(1) picks 4, 8, 5, 6, 0, 0, 1, 2, 0, 0 among the tasks left (`random`'s test)
        assert_eq!(picked, ["ctx 4", "ctx 9", "ctx 6", "ctx 8", "ctx 0", "ctx 1", "ctx 3", "ctx 7", "ctx 2", "ctx 5"]);
        assert_eq!(select(tasks, 3).len(), 3);
    }

    #[test]
    fn wilson_interval_is_llama_perplexity_formula() {
        let (a, b) = wilson_interval(3, 4);
        // computed by hand: z = 3.8415/4, centre (0.75 + z/2)/(1 + z)
        assert!((a - 0.300_642).abs() < 1e-6 && (b - 0.954_413).abs() < 1e-6, "{a} {b}");
        let (a, b) = wilson_interval(0, 1);
        assert!(a.abs() < 1e-12 && (b - 0.793_451).abs() < 1e-6, "{a} {b}");
    }
}
