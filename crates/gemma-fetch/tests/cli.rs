//! The `gemma-fetch` binary end to end, against local mocks of the hubs (pointed to by `HF_ENDPOINT` and
//! `KAGGLE_API_ENDPOINT`), with a temporary HOME and working directory for the credential files.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::{bytes, entries, serve_bytes, sha256_hex, MockServer, Response};

/// The binary with none of the caller's hub settings, HOME and the working directory in `dir`.
fn fetch(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gemma-fetch"));
    for var in [
        "HF_TOKEN",
        "HF_ENDPOINT",
        "KAGGLE_API_TOKEN",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "KAGGLE_CONFIG_DIR",
        "KAGGLE_API_ENDPOINT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", dir).current_dir(dir).args(args).envs(env.iter().copied());
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn hf_download_with_the_token_from_dot_env() {
    let data = Arc::new(bytes(50_000, 7));
    let sha = sha256_hex(&data);
    let served = data.clone();
    let hub = MockServer::start(move |req| {
        if req.header("Authorization") != Some("Bearer hf_from_dotenv") {
            return Response::new(401, "");
        }
        serve_bytes(req, &served).header("X-Linked-Etag", &format!("\"{sha}\""))
    });
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(".env"), format!("HF_ENDPOINT={}\nHF_TOKEN=hf_from_dotenv\n", hub.url)).unwrap();

    let out = fetch(dir.path(), &["--hf-repo", "google/gemma-3", "--hf-file", "gguf/m.gguf", "--out", "models"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let saved = dir.path().join("models/m.gguf");
    assert_eq!(text(&out.stdout).trim(), "models/m.gguf", "the saved path on stdout");
    assert_eq!(fs::read(saved).unwrap(), *data);
    assert!(text(&out.stderr).contains("sha256 checked"), "{}", text(&out.stderr));
    assert_eq!(hub.requests()[0].path(), "/google/gemma-3/resolve/main/gguf/m.gguf");
}

#[test]
fn hf_failures_exit_1_with_a_clear_message() {
    let hub = MockServer::start(|req| {
        if req.path().contains("gated") {
            Response::new(401, "")
        } else {
            Response::new(404, "").header("X-Error-Code", "RepoNotFound")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let env = [("HF_ENDPOINT", hub.url.as_str())];

    let out = fetch(dir.path(), &["--hf-repo", "org/gated", "--hf-file", "m.gguf", "--out", "o", "-q"], &env);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("gemma-fetch: error: downloading m.gguf of org/gated from http://127.0.0.1:"), "{err}");
    assert!(err.contains("401 Unauthorized") && err.contains("no token was sent"), "{err}");

    let out = fetch(dir.path(), &["--hf-repo", "org/nope", "--hf-file", "m.gguf", "--out", "o", "-q"], &env);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("Hugging Face: repo 'org/nope' was not found"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dir.path().join("o/m.gguf").exists());
}

#[test]
fn kaggle_download_with_kaggle_json_from_home() {
    let archive = Arc::new({
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "gemma.gguf", &b"GGUF!"[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap()
    });
    let kaggle = MockServer::start(move |req| {
        if req.header("Authorization") != Some("Basic YWRhOmsxMjM=") {
            return Response::new(401, "");
        }
        match req.path() {
            "/api/v1/models/google/gemma-3/gguf/v/get" => Response::json(200, serde_json::json!({"versionNumber": 4})),
            "/api/v1/models/google/gemma-3/gguf/v/4/download" => serve_bytes(req, &archive),
            _ => Response::new(404, ""),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join(".kaggle")).unwrap();
    fs::write(dir.path().join(".kaggle/kaggle.json"), r#"{"username":"ada","key":"k123"}"#).unwrap();

    let env = [("KAGGLE_API_ENDPOINT", kaggle.url.as_str())];
    let out = fetch(dir.path(), &["--kaggle", "google/gemma-3/gguf/v", "--out", "models"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "models/gemma.gguf");
    assert_eq!(fs::read(dir.path().join("models/gemma.gguf")).unwrap(), b"GGUF!");
    assert_eq!(entries(&dir.path().join("models")), ["gemma.gguf"]);
    assert!(text(&out.stderr).contains("latest version of google/gemma-3/gguf/v"), "{}", text(&out.stderr));

    // --version pins it: no lookup; version 9 does not exist.
    let before = kaggle.requests().len();
    let out =
        fetch(dir.path(), &["--kaggle", "google/gemma-3/gguf/v", "--version", "9", "--out", "models", "-q"], &env);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("model variation 'google/gemma-3/gguf/v' version 9 was not found"), "{err}");
    let after: Vec<String> = kaggle.requests()[before..].iter().map(|r| r.path().to_string()).collect();
    assert_eq!(after, ["/api/v1/models/google/gemma-3/gguf/v/9/download"]);
}

#[test]
fn kaggle_token_from_dot_env_is_a_bearer_token_and_a_missing_one_is_named() {
    let kaggle = MockServer::start(|req| match req.header("Authorization") {
        Some("Bearer kgat_dotenv") => Response::json(200, serde_json::json!({"models": []})),
        _ => Response::new(401, ""),
    });
    let dir = tempfile::tempdir().unwrap();
    let env = [("KAGGLE_API_ENDPOINT", kaggle.url.as_str())];

    let out = fetch(dir.path(), &["--search-kaggle", "gemma"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no Kaggle credentials were found: set KAGGLE_API_TOKEN"),
        "{}",
        text(&out.stderr)
    );

    fs::write(dir.path().join(".env"), "KAGGLE_API_TOKEN=kgat_dotenv\n").unwrap();
    let out = fetch(dir.path(), &["--search-kaggle", "gemma"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no Kaggle model matches 'gemma'"), "{}", text(&out.stderr));
}

#[test]
fn search_output_lists_the_hits() {
    let hub = MockServer::start(|_| {
        Response::json(
            200,
            serde_json::json!([
                {"id": "google/gemma-3-1b-it", "downloads": 1200000, "likes": 410},
                {"id": "x/gemma-tiny", "downloads": 7, "likes": 0}
            ]),
        )
    });
    let kaggle = MockServer::start(|_| {
        Response::json(
            200,
            serde_json::json!({"models": [{"ref": "google/gemma-3", "title": "Gemma 3", "voteCount": 99}]}),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let env = [("HF_ENDPOINT", hub.url.as_str()), ("KAGGLE_API_ENDPOINT", kaggle.url.as_str())];

    let out = fetch(dir.path(), &["--search-hf", "gemma", "--limit", "2"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "MODEL                 DOWNLOADS  LIKES\ngoogle/gemma-3-1b-it    1200000  410\nx/gemma-tiny                  7  0\n"
    );
    assert_eq!(hub.requests()[0].target, "/api/models?search=gemma&limit=2");

    let out = fetch(dir.path(), &["--search-kaggle", "gemma", "--limit", "3"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "MODEL           VOTES  TITLE\ngoogle/gemma-3     99  Gemma 3\n");
    assert_eq!(kaggle.requests()[0].target, "/api/v1/models/list?search=gemma&pageSize=3");
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (&[][..], "required"),
        (&["--hf-repo", "a/b", "--out", "o"][..], "--hf-file"),
        (&["--hf-file", "m.gguf", "--out", "o"][..], "--hf-repo"),
        (&["--kaggle", "a/b/c/d"][..], "--out"),
        (&["--kaggle", "a/b/c", "--out", "o"][..], "expected OWNER/MODEL/FRAMEWORK/VARIATION"),
        (&["--kaggle", "a/b/c/d", "--version", "0", "--out", "o"][..], "--version"),
        (&["--kaggle", "a/b/c/d/2", "--version", "3", "--out", "o"][..], "names version 2 and --version 3"),
        (&["--version", "3", "--out", "o", "--list"][..], "--kaggle"),
        (&["--hf-repo", "a/b/c", "--hf-file", "f", "--out", "o"][..], "expected OWNER/REPO"),
        (&["--hf-repo", "a/b", "--hf-file", "../f", "--out", "o"][..], "inside the repo"),
        (&["--search-hf", "x", "--limit", "0"][..], "--limit"),
        (&["--list", "--search-hf", "x"][..], "cannot be used with"),
        (&["no-such-model"][..], "'no-such-model' is not a known model"),
        (&["--frobnicate"][..], "unexpected argument"),
    ] {
        let out = fetch(dir.path(), args, &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(entries(dir.path()).is_empty(), "nothing was created: {:?}", entries(dir.path()));
}

#[test]
fn list_names_the_known_models() {
    let dir = tempfile::tempdir().unwrap();
    let out = fetch(dir.path(), &["--list"], &[("GEMMA_MODELS", dir.path().to_str().unwrap())]);
    assert!(out.status.success());
    let listed = text(&out.stdout);
    for m in gemma_fetch::KNOWN_MODELS {
        assert!(listed.lines().any(|l| l.starts_with(m.name) && l.contains(&m.size.to_string())), "{listed}");
    }
}

/// A known model already in the cache is linked into --out, not pulled again (a sparse file of the right size
/// passes the cache's size check, so no download happens).
#[test]
fn a_cached_known_model_is_linked_into_out() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let model = gemma_fetch::known_model("smollm2-135m-instruct").unwrap();
    fs::File::create(cache.join(model.file_name)).unwrap().set_len(model.size).unwrap();

    let env = [("GEMMA_MODELS", cache.to_str().unwrap())];
    let out = fetch(dir.path(), &[model.name, "--out", "models", "-q"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let target = dir.path().join("models").join(model.file_name);
    assert_eq!(text(&out.stdout).trim(), format!("models/{}", model.file_name));
    assert_eq!(fs::metadata(&target).unwrap().len(), model.size);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&target).unwrap().ino(), fs::metadata(cache.join(model.file_name)).unwrap().ino());
    }
    assert_eq!(entries(&dir.path().join("models")), [model.file_name], "no temporary name left");
}
