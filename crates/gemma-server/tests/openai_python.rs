//! The server driven by the official `openai` Python package (installed by `.ci/run`): chat and
//! completions, streamed and not, stop, n, seed, include_usage, and its 401 and 400 exceptions.

mod common;

#[test]
fn the_official_openai_package_talks_to_the_server() {
    let checks =
        ["chat ok", "completions ok", "stop ok", "n+seed ok", "401 ok", "400 bad request ok", "400 over-long ok"];
    common::python_client_passes("openai", "openai_client.py", &checks);
}
