//! Winogrande scoring as llama.cpp's `llama-perplexity --winogrande` does it: a sentence with a blank (`_`)
//! and two candidates for it; each candidate is put in the blank, and the model "chooses" the one after which
//! the rest of the sentence is more probable (the mean log-probability of its tokens, the last one left out).
//! Where the rest is 3 tokens or fewer the candidate's own tokens are scored too, as llama-perplexity does.
//!
//! The file is llama.cpp's CSV (`index,sentence,choice 1,choice 2,answer`, the sentence optionally quoted, the
//! answer 1 or 2). Lines it cannot read are skipped and reported, as llama-perplexity skips them.
//! `--winogrande-tasks N` picks N tasks in llama-perplexity's random order
//! ([`task_scoring::pick_in_llama_order`]).
//!
//! One quirk kept for the same numbers: where the candidates are scored too, llama-perplexity scores the
//! second candidate's first token under the logits after the *first* sequence's last token (its code marks
//! this "FIXME: this uses the wrong first logits"); so does this, so that the scores are the scores users
//! compare with llama.cpp's.

use std::sync::atomic::AtomicBool;

use gemma_ops::ThreadPool;

use crate::task_scoring::{self, Query, ScoringError};
use crate::tokenizer::Tokenizer;
use crate::{Model, Scratch};

/// Below this many tokens after the shared prefix, the candidates' tokens are scored too.
const MIN_TRAILING_TOKENS: usize = 3;

/// One task: the sentence before and after the blank, two candidates, and the right one (1 or 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinograndeTask {
    pub first: String,
    pub second: String,
    pub choices: [String; 2],
    pub answer: u8,
}

/// A line of the file that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedLine {
    pub line: usize,
    pub why: &'static str,
}

/// What the model made of one task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskScore {
    /// Mean log-probability (f32, summed in order, as llama-perplexity's) after each candidate.
    pub scores: [f32; 2],
    /// 1 or 2 (2 where the scores are equal).
    pub chosen: u8,
    pub answer: u8,
}

impl TaskScore {
    pub fn correct(&self) -> bool {
        self.chosen == self.answer
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WinograndeError {
    #[error("no task could be read from the file ({skipped} lines skipped)")]
    Empty { skipped: usize },
}

/// The tasks of a llama.cpp Winogrande CSV file, in file order, and the lines skipped.
pub fn parse(text: &str) -> Result<(Vec<WinograndeTask>, Vec<SkippedLine>), WinograndeError> {
    let mut tasks = Vec::new();
    let mut skipped = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(t) => tasks.push(t),
            Err(why) => skipped.push(SkippedLine { line: i + 1, why }),
        }
    }
    if tasks.is_empty() {
        return Err(WinograndeError::Empty { skipped: skipped.len() });
    }
    Ok((tasks, skipped))
}

fn parse_line(line: &str) -> Result<WinograndeTask, &'static str> {
    // the first four commas outside quotes
    let mut commas = Vec::with_capacity(4);
    let mut quoted = false;
    for (i, b) in line.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                commas.push(i);
                if commas.len() == 4 {
                    break;
                }
            }
            _ => {}
        }
    }
    let [c0, c1, c2, c3] = commas[..] else {
        return Err("fewer than 4 commas (index,sentence,choice 1,choice 2,answer)");
    };
    let sentence = match line.as_bytes().get(c0 + 1) {
        Some(b'"') if c1 >= c0 + 3 => &line[c0 + 2..c1 - 1],
        _ => &line[c0 + 1..c1],
    };
    let (first, second) = sentence.split_once('_').ok_or("the sentence has no _")?;
    let answer = line[c3 + 1..].trim_start();
    let digits = answer.bytes().take_while(u8::is_ascii_digit).count();
    let answer = match answer[..digits].parse::<u8>() {
        Ok(a @ 1..=2) => a,
        _ => return Err("the answer is not 1 or 2"),
    };
    Ok(WinograndeTask {
        first: first.to_string(),
        second: second.to_string(),
        choices: [line[c1 + 1..c2].to_string(), line[c2 + 1..c3].to_string()],
        answer,
    })
}

/// `n` tasks picked in llama-perplexity's random order; all, in file order, when `n` is 0 or not below their
/// number ([`task_scoring::pick_in_llama_order`]).
pub fn select(tasks: Vec<WinograndeTask>, n: usize) -> Vec<WinograndeTask> {
    task_scoring::pick_in_llama_order(tasks, n)
}

/// A task's two sequences and where their scoring starts.
struct Prepared {
    seqs: [Vec<u32>; 2],
    common: usize,
    /// Tokens of `first + choice` for each candidate.
    base: [usize; 2],
}

fn prepare(tokenizer: &Tokenizer, task: &WinograndeTask) -> Prepared {
    let bos = tokenizer.add_bos();
    let seqs =
        [0, 1].map(|c| tokenizer.encode(&format!("{}{}{}", task.first, task.choices[c], task.second), bos, false));
    let common = seqs[0].iter().zip(&seqs[1]).take_while(|(a, b)| a == b).count();
    let base = [0, 1].map(|c| tokenizer.encode(&format!("{}{}", task.first, task.choices[c]), bos, false).len());
    Prepared { seqs, common, base }
}

/// The queries whose log-probabilities make each candidate's score: from the first token after the base (the
/// sentence up to the candidate's end, or only the shared prefix where the rest is short) to the one before the
/// last (the last is left out when more than one remains).
fn queries(p: &Prepared) -> [Vec<Query>; 2] {
    let both_long = p.seqs.iter().all(|s| s.len().saturating_sub(p.common) > MIN_TRAILING_TOKENS);
    std::array::from_fn(|c| {
        let seq = &p.seqs[c];
        let base = if both_long { p.base[c] } else { p.common }.clamp(1, seq.len());
        let last = usize::from(seq.len() - base > 1);
        (base - 1..seq.len().saturating_sub(1 + last))
            .map(|j| {
                let target = seq[j + 1];
                if c == 1 && !both_long && j + 1 == p.common {
                    // llama-perplexity's FIXME: the first sequence's last logits
                    Query { seq: 0, pos: p.seqs[0].len() - 1, target }
                } else {
                    Query { seq: c, pos: j, target }
                }
            })
            .collect()
    })
}

/// Scores `tasks` in order, calling `on_task(i, score)` after each. Setting `cancel` stops between two tasks.
pub fn score(
    model: &Model,
    pool: &ThreadPool,
    tokenizer: &Tokenizer,
    tasks: &[WinograndeTask],
    n_ctx: usize,
    on_task: &mut dyn FnMut(usize, &TaskScore),
    cancel: Option<&AtomicBool>,
) -> Result<Vec<TaskScore>, ScoringError> {
    let mut scratch = Scratch::default();
    task_scoring::score_each(tasks, cancel, on_task, |task| {
        let p = prepare(tokenizer, task);
        task_scoring::check_fits(&p.seqs, n_ctx)?;
        let [q0, q1] = queries(&p);
        let all: Vec<Query> = q0.iter().chain(&q1).copied().collect();
        let lp = task_scoring::log_probs(model, pool, &mut scratch, &p.seqs, &all)?;
        let (lp0, lp1) = lp.split_at(q0.len());
        let mean = |v: &[f64]| v.iter().fold(0f32, |s, &x| s + x as f32) / v.len().max(1) as f32;
        let scores = [mean(lp0), mean(lp1)];
        let chosen = if scores[0] > scores[1] { 1 } else { 2 };
        Ok(TaskScore { scores, chosen, answer: task.answer })
    })
}

/// The final score llama-perplexity prints from 100 tasks on: the accuracy and its standard error, in percent
/// (f32, as its).
pub fn final_score(correct: usize, done: usize) -> (f32, f32) {
    let p = correct as f32 / done as f32;
    let sigma = 100.0 * (p * (1.0 - p) / (done - 1) as f32).sqrt();
    (100.0 * p, sigma)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_llama_perplexity_reads_them() {
        let text = "0,Sarah was a better surgeon than Maria so _ got the easier cases.,Sarah,Maria,2\n\
                    1,\"Quoted, with a comma: _ stays.\",it,that,1\n\
                    2,no blank here,a,b,1\n\
                    3,a _ b,x,y,3\n\
                    4,too,few,commas\n";
        let (tasks, skipped) = parse(text).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].first, "Sarah was a better surgeon than Maria so ");
        assert_eq!(tasks[0].second, " got the easier cases.");
        assert_eq!((tasks[0].choices.clone(), tasks[0].answer), (["Sarah".to_string(), "Maria".to_string()], 2));
        assert_eq!((tasks[1].first.as_str(), tasks[1].second.as_str()), ("Quoted, with a comma: ", " stays."));
        assert_eq!(skipped.iter().map(|s| s.line).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(matches!(parse("x\n"), Err(WinograndeError::Empty { skipped: 1 })));
    }

    #[test]
    fn random_picks_follow_llama_perplexity() {
        let tasks: Vec<WinograndeTask> = (0..10)
            .map(|i| WinograndeTask {
                first: i.to_string(),
                second: String::new(),
                choices: Default::default(),
                answer: 1,
            })
            .collect();
        assert_eq!(select(tasks.clone(), 0), tasks);
        assert_eq!(select(tasks.clone(), 10), tasks);
        // what llama-perplexity's selection loop picks from 10 tasks, printed by the same loop built with g++ 12
        let picked: Vec<String> = select(tasks, 3).into_iter().map(|t| t.first).collect();
        assert_eq!(picked, ["4", "8", "5"]);
    }

    #[test]
    fn final_score_is_llama_perplexity_formula() {
        let (p, s) = final_score(75, 100);
        assert_eq!(p, 75.0);
        assert!((s - 100.0 * (0.75f32 * 0.25 / 99.0).sqrt()).abs() < 1e-6);
    }
}
