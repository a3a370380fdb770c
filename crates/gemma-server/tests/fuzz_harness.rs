//! The `server_request` fuzz target's harness (`gemma_server::fuzzing`), run over a few bodies for every
//! endpoint: it keeps compiling and checking with the crate (the fuzz crate itself is built only by hand, on
//! nightly), and each answer is what the fuzz target demands: accepted, or a 4xx with a message.

use gemma_server::fuzzing::{model, parse_request, ENDPOINTS};

#[test]
fn every_endpoint_accepts_or_refuses_with_a_client_error() {
    let path = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("the test model is available");
    let loaded = model(&path.to_string_lossy()).expect("the fuzz harness loads the model as the server does");
    assert_eq!(loaded.ctx, 256);
    let bodies: [&[u8]; 13] = [
        b"",
        b"not json",
        b"{}",
        b"[]",
        br#"{"prompt": "Hello", "max_tokens": 4}"#,
        br#"{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}"#,
        br#"{"input": "Hello", "model": "x"}"#,
        br#"{"contents": [{"parts": [{"text": "Hello"}]}]}"#,
        br#"{"content": {"parts": [{"text": "Hello"}]}}"#,
        br#"{"requests": [{"content": {"parts": [{"text": "Hello"}]}}]}"#,
        br#"{"content": "Hello"}"#,
        br#"{"tokens": [2, 9259]}"#,
        br#"{"prompt": "Hello", "n_predict": 100000, "temperature": -1, "top_k": "x"}"#,
    ];
    let mut accepted = vec![0; ENDPOINTS.len()];
    for (endpoint, name) in ENDPOINTS.iter().enumerate() {
        for body in bodies {
            match parse_request(endpoint, body, &loaded) {
                Ok(()) => accepted[endpoint] += 1,
                Err(e) => {
                    assert!(e.status.is_client_error(), "{name} answered {}: {}", e.status, e.message);
                    assert!(!e.message.is_empty(), "{name}: an error without a message");
                }
            }
        }
    }
    // Not vacuous: each endpoint's own well-formed body among these gets through its parser.
    for (name, n) in ENDPOINTS.iter().zip(&accepted) {
        assert!(*n > 0, "{name} refused every body");
    }
}
