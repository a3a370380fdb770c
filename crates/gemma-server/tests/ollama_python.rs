//! The server driven by the official `ollama` Python package (installed by `.ci/run`): list, ps, show,
//! generate (plain, streamed, continued with `context`), chat (plain, streamed, a JSON schema), and its
//! `ResponseError` for a 400 and a 401.

mod common;

use std::process::Command;

#[test]
fn the_official_ollama_package_talks_to_the_server() {
    let probe = Command::new("python3").args(["-c", "import ollama"]).output().expect("python3 runs");
    assert!(
        probe.status.success(),
        "the `ollama` Python package is needed for this test: run `python3 -m pip install ollama` ({})",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    let key = "ollama-python-key";
    let mut config = common::test_config();
    config.api_keys = vec![key.to_string()];
    let base = common::start(config);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ollama_client.py");
    let out = Command::new("python3").args([script, &base, key]).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the ollama client failed:\n{stdout}\n{stderr}");
    for check in ["list ok", "generate ok", "chat ok", "errors ok"] {
        assert!(stdout.contains(check), "missing '{check}' in:\n{stdout}");
    }
}
