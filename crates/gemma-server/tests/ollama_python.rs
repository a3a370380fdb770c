//! The server driven by the official `ollama` Python package (installed by `.ci/run`): list, ps, show,
//! generate (plain, streamed, continued with `context`), chat (plain, streamed, a JSON schema), and its
//! `ResponseError` for a 400 and a 401.

mod common;

#[test]
fn the_official_ollama_package_talks_to_the_server() {
    common::python_client_passes("ollama", "ollama_client.py", &["list ok", "generate ok", "chat ok", "errors ok"]);
}
