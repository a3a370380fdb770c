//! The server driven by the official `anthropic` Python package (installed by `.ci/run`): `messages.create`,
//! `messages.stream`, a stop sequence, `count_tokens`, and its 401 and 400 exceptions, with the key sent as
//! `x-api-key` as the package sends it.

mod common;

#[test]
fn the_official_anthropic_package_talks_to_the_server() {
    let checks = ["create ok", "stream ok", "stop_sequence ok", "count_tokens ok", "401 ok", "400 tools ok"];
    common::python_client_passes("anthropic", "anthropic_client.py", &checks);
}
