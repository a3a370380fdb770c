//! The server driven by the official `anthropic` Python package (installed by `.ci/run`): `messages.create`,
//! `messages.stream`, a stop sequence, `count_tokens`, and its 401 and 400 exceptions, with the key sent as
//! `x-api-key` as the package sends it.

mod common;

use std::process::Command;

#[test]
fn the_official_anthropic_package_talks_to_the_server() {
    let probe = Command::new("python3").args(["-c", "import anthropic"]).output().expect("python3 runs");
    assert!(
        probe.status.success(),
        "the `anthropic` Python package is needed for this test: run `python3 -m pip install anthropic` ({})",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    let key = "anthropic-python-test-key";
    let mut config = common::test_config();
    config.api_keys = vec![key.to_string()];
    let base = common::start(config);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/anthropic_client.py");
    let out = Command::new("python3").args([script, &base, key]).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the anthropic client failed:\n{stdout}\n{stderr}");
    for check in ["create ok", "stream ok", "stop_sequence ok", "count_tokens ok", "401 ok", "400 tools ok"] {
        assert!(stdout.contains(check), "missing '{check}' in:\n{stdout}");
    }
}
