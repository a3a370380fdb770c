//! `gemma chat` driven through stdin as a script would, on the real Gemma model (greedy, short answers).

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use gemma_core::chat::{ChatMessage, ChatTemplate};
use gemma_core::Tokenizer;
use gemma_io::GgufFile;

mod common;
use common::model;

fn run_chat(args: &[&str], script: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .arg("chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gemma chat");
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write script");
    let out = child.wait_with_output().expect("gemma chat output");
    assert!(out.status.success(), "gemma chat failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The `/stats` blocks in stdout, in order, as key → value.
fn stats_blocks(stdout: &str) -> Vec<HashMap<String, f64>> {
    let lines: Vec<&str> = stdout.lines().collect();
    let mut blocks = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("turns: ") && lines.get(i + 1).is_some_and(|n| n.starts_with("context_tokens: ")) {
            // Eight lines, then the drafts' three with --spec-type.
            let n = 8 + lines[i + 8..].iter().take(3).take_while(|l| l.starts_with("draft")).count();
            let block = lines[i..i + n]
                .iter()
                .map(|kv| {
                    let (k, v) = kv.split_once(": ").expect("key: value");
                    (k.to_owned(), v.parse::<f64>().expect("number"))
                })
                .collect();
            blocks.push(block);
        }
    }
    blocks
}

fn load_conversation(path: &std::path::Path) -> Vec<ChatMessage> {
    serde_json::from_str(&std::fs::read_to_string(path).expect("saved file")).expect("saved JSON")
}

#[test]
fn three_turns_prefill_only_new_tokens_and_clear_save_load_work() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("conv.json");
    let resaved = dir.path().join("conv2.json");
    let system = "Answer in one short sentence.";
    let users = ["What is the capital of France?", "Name a color.", "Thank you."];
    let script = format!(
        "{}\n/stats\n{}\n/stats\n{}\n/stats\n/save {}\n/clear\n/stats\n/load {}\n/save {}\n/quit\n",
        users[0],
        users[1],
        users[2],
        saved.display(),
        saved.display(),
        resaved.display()
    );
    let out = run_chat(&["-m", &m, "-n", "16", "--system", system], &script);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains('\x1b'), "no escape codes when stdin is not a terminal: {stdout:?}");
    assert!(!stdout.contains(">>>"), "no prompt when stdin is not a terminal");

    let stats = stats_blocks(&stdout);
    assert_eq!(stats.len(), 4, "four /stats blocks in {stdout:?}");

    // The saved conversation: the system prompt, then the three exchanges.
    let conv = load_conversation(&saved);
    assert_eq!(conv.len(), 7);
    assert_eq!(conv[0], ChatMessage::system(system));
    for (i, u) in users.iter().enumerate() {
        assert_eq!(conv[1 + 2 * i], ChatMessage::user(*u));
        assert_eq!(conv[2 + 2 * i].role, "assistant");
        assert!(stdout.contains(conv[2 + 2 * i].content.as_str()), "answer {i} was printed");
    }
    // /load then /save round-trips the file exactly.
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), std::fs::read_to_string(&resaved).unwrap());

    // What each turn's prompt is, rendered and tokenized independently.
    let file = GgufFile::open(&m).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let template = ChatTemplate::from_gguf(&file, &tok).unwrap();
    let prompt_len = |turn: usize| template.encode(&tok, &conv[..2 + 2 * turn], true).unwrap().len() as f64;

    assert_eq!(stats[0]["turns"], 1.0);
    assert_eq!(stats[0]["reused_last_turn"], 0.0);
    assert_eq!(stats[0]["prefilled_last_turn"], prompt_len(0));
    for turn in 1..3 {
        let (prev, s) = (&stats[turn - 1], &stats[turn]);
        assert_eq!(s["turns"], (turn + 1) as f64);
        // The whole previous context is reused and only the new turn is prefilled.
        assert_eq!(s["reused_last_turn"], prev["context_tokens"], "turn {turn}: {s:?}");
        assert_eq!(s["prefilled_last_turn"], prompt_len(turn) - prev["context_tokens"], "turn {turn}: {s:?}");
        assert!(s["prefilled_last_turn"] * 3.0 < s["context_tokens"], "turn {turn} prefilled far fewer than the total");
        assert!(s["context_tokens"] > prev["context_tokens"]);
        assert!(s["prefill_tok_s"] > 0.0 && s["decode_tok_s"] > 0.0);
    }
    assert_eq!(stats[2]["context_size"], 32768.0);
    // /clear empties the context.
    assert_eq!((stats[3]["turns"], stats[3]["context_tokens"]), (0.0, 0.0));

    // Reusing the cache changes nothing: turn 3's answer is what a fresh run of its whole prompt gives.
    let full_prompt = template.render(&conv[..6], true).unwrap();
    let fresh = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["run", "-m", &m, "-n", "16", "--json", "--prompt", &full_prompt])
        .output()
        .unwrap();
    assert!(fresh.status.success());
    let v: serde_json::Value = serde_json::from_slice(&fresh.stdout).unwrap();
    assert_eq!(v["text"].as_str().unwrap(), conv[6].content);
}

#[test]
fn a_full_context_drops_the_oldest_turns_but_keeps_the_system_prompt() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("conv.json");
    // Each exchange takes about 31 tokens here, so the fourth no longer fits with room for its answer.
    let script = format!(
        "Hello there.\nWhat is two plus two?\nName a fruit.\nAnd a vegetable?\n/stats\n/save {}\n",
        saved.display()
    );
    let out = run_chat(&["-m", &m, "--ctx", "100", "-n", "16", "--system", "Be brief."], &script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("context full: dropped the oldest turn"), "{stderr}");
    let stats = stats_blocks(&String::from_utf8(out.stdout).unwrap());
    assert!(stats[0]["context_tokens"] <= 100.0 && stats[0]["context_size"] == 100.0);
    let conv = load_conversation(&saved);
    assert_eq!(conv[0], ChatMessage::system("Be brief."));
    assert_eq!(conv.last().map(|m| m.role.as_str()), Some("assistant"));
    assert!(!conv.iter().any(|m| m.content == "Hello there."), "the oldest turn is gone: {conv:?}");
    assert!(conv.iter().any(|m| m.content == "And a vegetable?"));
    assert_eq!(stats[0]["turns"], (conv.len() / 2) as f64);
}

#[test]
fn guide_style_chat_flag_and_bad_commands() {
    let m = model();
    // `gemma --chat --stream --weights W` is the same chat; unknown commands are reported, not fatal.
    let out = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["--chat", "--stream", "--weights", &m, "--max-tokens", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"/nonsense\n/load /no/such/file.json\nHi\n/stats\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown command /nonsense"), "{stderr}");
    assert!(stderr.contains("cannot read /no/such/file.json"), "{stderr}");
    let stats = stats_blocks(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(stats[0]["turns"], 1.0);
    assert!(stats[0]["generated_last_turn"] <= 4.0);
}

#[test]
fn a_message_may_span_lines_after_a_backslash_or_between_triple_quotes() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("conv.json");
    let script =
        format!("What is \\\nthe capital of France?\n\"\"\"\nName\na color.\n\"\"\"\n/save {}\n", saved.display());
    run_chat(&["-m", &m, "-n", "4"], &script);
    let users: Vec<String> =
        load_conversation(&saved).into_iter().filter(|m| m.role == "user").map(|m| m.content).collect();
    assert_eq!(users, ["What is \nthe capital of France?", "Name\na color.\n"]);
}

/// `--spec-type` on `gemma chat` and on the guide's `--chat`: every answer and the context's use are those of a
/// plain chat, and the turns that repeat an earlier turn's text get drafts accepted (`/stats` counts them).
#[test]
fn speculative_chat_answers_as_a_plain_chat_and_drafts_from_earlier_turns() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let paragraph = "The quick brown fox jumps over the lazy dog. Rust is a systems programming language that runs \
                     blazingly fast, prevents segfaults, and guarantees thread safety.";
    let chat = |args: &[&str], guide: bool, name: &str| {
        let saved = dir.path().join(name);
        let script = format!(
            "Repeat the following text exactly, word for word:\\\n\\\n{paragraph}\n/stats\n\
             Repeat that same text once more, exactly.\n/stats\nThanks! One last time, exactly as before.\n/stats\n\
             /save {}\n",
            saved.display()
        );
        let out = if guide {
            let mut child = Command::new(env!("CARGO_BIN_EXE_gemma"))
                .args(["--chat", "--weights", &m, "--max-tokens", "60"])
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            out
        } else {
            let mut all = vec!["-m", m.as_str(), "-n", "60"];
            all.extend_from_slice(args);
            run_chat(&all, &script)
        };
        (load_conversation(&saved), stats_blocks(&String::from_utf8(out.stdout).unwrap()))
    };
    let (plain, plain_stats) = chat(&[], false, "plain.json");
    assert_eq!(plain.len(), 6);
    assert!(plain_stats.iter().all(|s| !s.contains_key("draft_n_last_turn")), "no draft counts without the flag");
    for (kind, guide) in [("ngram-simple", false), ("ngram-mod", true)] {
        let (conv, stats) = chat(&["--spec-type", kind], guide, &format!("{kind}.json"));
        assert_eq!(conv, plain, "{kind}: the answers are a plain chat's");
        assert_eq!(stats.len(), 3);
        for (turn, (s, p)) in stats.iter().zip(&plain_stats).enumerate() {
            for key in ["context_tokens", "reused_last_turn", "prefilled_last_turn", "generated_last_turn"] {
                assert_eq!(s[key], p[key], "{kind}, turn {turn}: {key}");
            }
            eprintln!(
                "{kind}, turn {turn}: {} drafts, {}/{} drafted tokens accepted",
                s["drafts_last_turn"], s["draft_n_accepted_last_turn"], s["draft_n_last_turn"]
            );
            assert!(s["draft_n_accepted_last_turn"] <= s["draft_n_last_turn"]);
        }
        let later: f64 = stats[1..].iter().map(|s| s["draft_n_accepted_last_turn"]).sum();
        assert!(later > 0.0, "{kind}: no draft accepted in the turns that repeat the first: {stats:?}");
    }

    // A type this engine lacks is a usage error, before any model is loaded.
    let out = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["chat", "-m", "/no/such/model.gguf", "--spec-type", "ngram-cache"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ngram-cache"), "{}", String::from_utf8_lossy(&out.stderr));
}
