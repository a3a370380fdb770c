//! llama.cpp's multiple-choice scoring (`llama-perplexity --multiple-choice`, the format its ARC, MMLU and
//! TruthfulQA validation files come in): each task is a question and candidate answers, some marked right;
//! each answer is tokenized after the question (`question + " " + answer`, BOS first), the model "chooses"
//! the answer whose tokens after the prefix all share have the highest mean log-probability, and the score
//! is the share of tasks where the choice is marked right.
//!
//! The file is binary, little-endian: `u32` task count, a `u32` byte offset per task, then the tasks, each
//! a question string and two answer sets (`mc1`, one right answer, the one scored; `mc2`, read and not
//! used, as llama-perplexity), a set being a `u32` count (at most 100), that many strings and that many `i32`
//! labels (1 = right); a string is a `u32` length and its bytes. `--multiple-choice-tasks N` picks N tasks in
//! llama-perplexity's random order ([`task_scoring::pick_in_llama_order`]).

use std::sync::atomic::AtomicBool;

use gemma_ops::ThreadPool;

use crate::task_scoring::{self, ScoringError};
use crate::tokenizer::Tokenizer;
use crate::{Model, Scratch};

/// llama-perplexity's limit on the answers of one set.
pub const MAX_ANSWERS: u32 = 100;

/// A set of candidate answers and their labels (1 = right).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    pub answers: Vec<String>,
    pub labels: Vec<i32>,
}

/// One task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipleChoiceTask {
    pub question: String,
    /// The answers scored: one is right.
    pub mc1: Answers,
    /// Answers with several right ones: in the file, not scored (as llama-perplexity).
    pub mc2: Answers,
}

/// What the model made of one task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskScore {
    /// Mean log-probability of each answer's tokens after the shared prefix.
    pub logprobs: Vec<f64>,
    /// The answer with the highest (the first of equals).
    pub chosen: usize,
    /// Whether `chosen` is labelled right.
    pub correct: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MultipleChoiceError {
    #[error("the file holds no task")]
    Empty,
    #[error("the file is cut or damaged at byte {at}: {what}")]
    Damaged { at: usize, what: String },
    #[error("task {task}: {what}")]
    BadTask { task: usize, what: &'static str },
    #[error(transparent)]
    Scoring(#[from] ScoringError),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn damaged(&self, what: impl Into<String>) -> MultipleChoiceError {
        MultipleChoiceError::Damaged { at: self.at, what: what.into() }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], MultipleChoiceError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| self.damaged(format!("{what} runs past the end")))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, MultipleChoiceError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, what: &str) -> Result<String, MultipleChoiceError> {
        let len = self.u32(what)? as usize;
        Ok(String::from_utf8_lossy(self.take(len, what)?).into_owned())
    }

    fn answers(&mut self) -> Result<Answers, MultipleChoiceError> {
        let n = self.u32("an answer count")?;
        if n > MAX_ANSWERS {
            return Err(self.damaged(format!("{n} answers, more than {MAX_ANSWERS}")));
        }
        let answers = (0..n).map(|_| self.string("an answer")).collect::<Result<Vec<_>, _>>()?;
        let labels = (0..n).map(|_| self.u32("a label").map(|v| v as i32)).collect::<Result<Vec<_>, _>>()?;
        Ok(Answers { answers, labels })
    }
}

/// The tasks of a llama.cpp multiple-choice file, in file order. Each task's offset must be where it is.
pub fn parse(bytes: &[u8]) -> Result<Vec<MultipleChoiceTask>, MultipleChoiceError> {
    let mut r = Reader { bytes, at: 0 };
    let n = r.u32("the task count").map_err(|_| MultipleChoiceError::Empty)?;
    if n == 0 {
        return Err(MultipleChoiceError::Empty);
    }
    // no more offsets than the file has room for
    if (n as usize).saturating_mul(4) > bytes.len() {
        return Err(r.damaged(format!("{n} tasks announced, the file is {} bytes", bytes.len())));
    }
    let offsets = (0..n).map(|_| r.u32("the task offsets")).collect::<Result<Vec<_>, _>>()?;
    let mut tasks = Vec::with_capacity(n as usize);
    for (i, &offset) in offsets.iter().enumerate() {
        if offset as usize != r.at {
            return Err(r.damaged(format!("task {} is said to start at byte {offset}", i + 1)));
        }
        let question = r.string("a question")?;
        let mc1 = r.answers()?;
        let mc2 = r.answers()?;
        tasks.push(MultipleChoiceTask { question, mc1, mc2 });
    }
    Ok(tasks)
}

/// `n` tasks picked in llama-perplexity's random order; all, in file order, when `n` is 0 or not below their
/// number ([`task_scoring::pick_in_llama_order`]).
pub fn select(tasks: Vec<MultipleChoiceTask>, n: usize) -> Vec<MultipleChoiceTask> {
    task_scoring::pick_in_llama_order(tasks, n)
}

/// Scores `tasks` in order, calling `on_task(i, score)` after each. Setting `cancel` stops between two tasks.
/// A task without a question or answers, or with an empty answer, is an error before anything runs, as
/// llama-perplexity checks them all first.
pub fn score(
    model: &Model,
    pool: &ThreadPool,
    tokenizer: &Tokenizer,
    tasks: &[MultipleChoiceTask],
    n_ctx: usize,
    on_task: &mut dyn FnMut(usize, &TaskScore),
    cancel: Option<&AtomicBool>,
) -> Result<Vec<TaskScore>, MultipleChoiceError> {
    for (i, t) in tasks.iter().enumerate() {
        let bad = |what| Err(MultipleChoiceError::BadTask { task: i + 1, what });
        if t.question.is_empty() || t.mc1.answers.is_empty() {
            return bad("an empty question or no answers");
        }
        if t.mc1.answers.iter().any(String::is_empty) {
            return bad("an empty answer");
        }
    }
    let mut scratch = Scratch::default();
    let bos = tokenizer.add_bos();
    let scores = task_scoring::score_each(tasks, cancel, on_task, |task| {
        let seqs: Vec<Vec<u32>> =
            task.mc1.answers.iter().map(|a| tokenizer.encode(&format!("{} {a}", task.question), bos, false)).collect();
        task_scoring::check_fits(&seqs, n_ctx)?;
        let logprobs = task_scoring::mean_continuation_log_probs(model, pool, &mut scratch, &seqs)?;
        let chosen = task_scoring::first_max(&logprobs);
        let correct = task.mc1.labels.get(chosen) == Some(&1);
        Ok(TaskScore { logprobs, chosen, correct })
    })?;
    Ok(scores)
}

/// Serializes tasks in the file format (for tests and for making task files).
pub fn to_bytes(tasks: &[MultipleChoiceTask]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
    }
    fn answers(out: &mut Vec<u8>, a: &Answers) {
        out.extend((a.answers.len() as u32).to_le_bytes());
        a.answers.iter().for_each(|s| string(out, s));
        a.labels.iter().for_each(|l| out.extend(l.to_le_bytes()));
    }
    let mut body = Vec::new();
    let mut offsets = Vec::new();
    let head = 4 + 4 * tasks.len();
    for t in tasks {
        offsets.push((head + body.len()) as u32);
        string(&mut body, &t.question);
        answers(&mut body, &t.mc1);
        answers(&mut body, &t.mc2);
    }
    let mut out = (tasks.len() as u32).to_le_bytes().to_vec();
    offsets.iter().for_each(|o| out.extend(o.to_le_bytes()));
    out.extend(body);
    out
}

/// llama-perplexity's closing lines: the accuracy and the accuracy of choosing at random, each with its
/// standard error, in percent (f32, as its).
pub fn final_result(correct: usize, done: usize, total_answers: usize) -> [(f32, f32); 2] {
    let stat = |p: f32| (100.0 * p, 100.0 * (p * (1.0 - p) / (done as f32 - 1.0)).sqrt());
    [stat(correct as f32 / done as f32), stat(done as f32 / total_answers as f32)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(q: &str, answers: &[&str], right: usize) -> MultipleChoiceTask {
        let mc1 = Answers {
            answers: answers.iter().map(|s| s.to_string()).collect(),
            labels: (0..answers.len()).map(|i| i32::from(i == right)).collect(),
        };
        MultipleChoiceTask { question: q.into(), mc1: mc1.clone(), mc2: mc1 }
    }

    #[test]
    fn files_round_trip_and_damage_is_an_error() {
        let tasks = vec![task("Q1?", &["a", "bb"], 1), task("Q2?", &["x", "y", "z"], 0)];
        let bytes = to_bytes(&tasks);
        assert_eq!(parse(&bytes).unwrap(), tasks);
        // every cut is an error, never a panic
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut moved = bytes.clone();
        moved[8] += 1;
        assert!(matches!(parse(&moved), Err(MultipleChoiceError::Damaged { .. })));
        let mut many = bytes.clone();
        many[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&many), Err(MultipleChoiceError::Damaged { .. })));
        assert!(matches!(parse(&0u32.to_le_bytes()), Err(MultipleChoiceError::Empty)));
    }

    #[test]
    fn random_picks_follow_llama_perplexity() {
        let tasks: Vec<MultipleChoiceTask> = (0..10).map(|i| task(&i.to_string(), &["a"], 0)).collect();
        let picked: Vec<String> = select(tasks.clone(), 3).into_iter().map(|t| t.question).collect();
        // the same loop as Winogrande's (`winogrande` tests: printed by it built with g++ 12)
        assert_eq!(picked, ["4", "8", "5"]);
        assert_eq!(select(tasks.clone(), 0), tasks);
    }

    #[test]
    fn final_result_is_llama_perplexity_formula() {
        let [(acc, e), (chance, _)] = final_result(3, 4, 16);
        assert_eq!((acc, chance), (75.0, 25.0));
        assert!((e - 100.0 * (0.75f32 * 0.25 / 3.0).sqrt()).abs() < 1e-4);
    }
}
