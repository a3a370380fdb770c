//! The server driven by the official `openai` Python package (installed by `.ci/run`): chat and
//! completions, streamed and not, stop, n, seed, include_usage, and its 401 and 400 exceptions.

mod common;

use std::process::Command;

#[test]
fn the_official_openai_package_talks_to_the_server() {
    let probe = Command::new("python3").args(["-c", "import openai"]).output().expect("python3 runs");
    assert!(
        probe.status.success(),
        "the `openai` Python package is needed for this test: run `python3 -m pip install openai` ({})",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    let key = "python-test-key";
    let mut config = common::test_config();
    config.api_keys = vec![key.to_string()];
    let base = common::start(config);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = Command::new("python3").args([script, &base, key]).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the openai client failed:\n{stdout}\n{stderr}");
    for check in
        ["chat ok", "completions ok", "stop ok", "n+seed ok", "401 ok", "400 bad request ok", "400 over-long ok"]
    {
        assert!(stdout.contains(check), "missing '{check}' in:\n{stdout}");
    }
}
