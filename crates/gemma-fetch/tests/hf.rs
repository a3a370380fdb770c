//! The Hugging Face client against a local mock of the Hub's routes (`HEAD`/`GET {repo}/resolve/{rev}/{path}`,
//! a CDN on another origin, `/api/models`); no hub is reachable from these machines.

mod common;

use std::fs;
use std::sync::Arc;

use common::{bytes, entries, serve_bytes, sha256_hex, MockServer, Response};
use gemma_fetch::hf::HfClient;
use gemma_fetch::{Auth, Credential, HubError, Progress};

fn token() -> Option<Credential> {
    Some(Credential { auth: Auth::Bearer("hf_test".into()), source: "HF_TOKEN from the test".into() })
}

/// A Hub whose `org/repo` has `dir/model.gguf` (LFS: redirected to `cdn`, with its sha256 and size) and
/// `config.json` (served by the Hub itself, a git etag).
fn hub_with(cdn: &MockServer, data: Arc<Vec<u8>>, etag_sha: String) -> MockServer {
    let cdn_url = cdn.url.clone();
    MockServer::start(move |req| match req.path() {
        "/org/repo/resolve/main/dir/model.gguf" => Response::redirect(&format!("{cdn_url}/blobs/model?signed=1"))
            .header("X-Linked-Etag", &format!("\"{etag_sha}\""))
            .header("X-Linked-Size", &data.len().to_string())
            .header("ETag", "\"git-blob-sha1\""),
        "/org/repo/resolve/main/config.json" => {
            serve_bytes(req, b"{\"a\": 1}").header("ETag", "\"0123456789abcdef0123456789abcdef01234567\"")
        }
        _ => Response::new(404, "Entry not found").header("X-Error-Code", "EntryNotFound"),
    })
}

fn cdn_serving(data: Arc<Vec<u8>>) -> MockServer {
    MockServer::start(move |req| serve_bytes(req, &data))
}

#[test]
fn downloads_through_the_cdn_checking_size_and_sha256() {
    let data = Arc::new(bytes(300_000, 1));
    let cdn = cdn_serving(data.clone());
    let hub = hub_with(&cdn, data.clone(), sha256_hex(&data));
    let out = tempfile::tempdir().unwrap();
    let hf = HfClient::new(&hub.url, token());

    let path = hf.download("org/repo", "dir/model.gguf", "main", out.path(), &Progress::silent()).unwrap();
    assert_eq!(path, out.path().join("model.gguf"), "saved under the file's own name");
    assert_eq!(fs::read(&path).unwrap(), *data);
    assert_eq!(entries(out.path()), ["model.gguf"], "no .part left behind");

    let head = &hub.requests()[0];
    assert_eq!((head.method.as_str(), head.header("Authorization")), ("HEAD", Some("Bearer hf_test")));
    let get = &cdn.requests()[0];
    assert_eq!(get.method, "GET");
    assert_eq!(get.target, "/blobs/model?signed=1");
    assert_eq!(get.header("Authorization"), None, "the token never goes to another origin");

    // A file from the Hub itself (no LFS: a git etag, no sha256 to check) gets the token, as it is the Hub.
    let config = hf.download("org/repo", "config.json", "main", out.path(), &Progress::silent()).unwrap();
    assert_eq!(fs::read(config).unwrap(), b"{\"a\": 1}");
    let gets: Vec<_> = hub.requests().into_iter().filter(|r| r.method == "GET").collect();
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].header("Authorization"), Some("Bearer hf_test"));

    // Again: the file there has the Hub's sha256, so nothing is downloaded.
    let before = cdn.requests().len();
    hf.download("org/repo", "dir/model.gguf", "main", out.path(), &Progress::silent()).unwrap();
    assert_eq!(cdn.requests().len(), before, "a file already there with the right sha256 is kept");
}

#[test]
fn a_partial_download_is_resumed_with_a_range_request() {
    let data = Arc::new(bytes(200_000, 2));
    let cdn = cdn_serving(data.clone());
    let hub = hub_with(&cdn, data.clone(), sha256_hex(&data));
    let out = tempfile::tempdir().unwrap();
    fs::write(out.path().join("model.gguf.part"), &data[..77_777]).unwrap();

    let hf = HfClient::new(&hub.url, None);
    let path = hf.download("org/repo", "dir/model.gguf", "main", out.path(), &Progress::silent()).unwrap();
    assert_eq!(fs::read(&path).unwrap(), *data, "prefix from disk + the rest from the server");
    let requests = cdn.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("Range"), Some("bytes=77777-"));
    assert_eq!(entries(out.path()), ["model.gguf"]);
}

#[test]
fn a_download_that_breaks_off_is_kept_and_the_next_run_resumes_it() {
    let data = Arc::new(bytes(500_000, 3));
    let served = data.clone();
    // The first answer breaks off after 123,456 bytes; later ones are whole.
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cdn = MockServer::start(move |req| {
        let mut r = serve_bytes(req, &served);
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            r.cut_after = Some(123_456);
        }
        r
    });
    let hub = hub_with(&cdn, data.clone(), sha256_hex(&data));
    let out = tempfile::tempdir().unwrap();
    let hf = HfClient::new(&hub.url, None);

    let err = hf.download("org/repo", "dir/model.gguf", "main", out.path(), &Progress::silent()).unwrap_err();
    assert!(matches!(err, HubError::Network { .. }), "{err:?}");
    assert!(err.to_string().contains("the next run resumes from it"), "{err}");
    assert_eq!(entries(out.path()), ["model.gguf.part"], "only the part, never the file");
    assert_eq!(fs::metadata(out.path().join("model.gguf.part")).unwrap().len(), 123_456);

    let path = hf.download("org/repo", "dir/model.gguf", "main", out.path(), &Progress::silent()).unwrap();
    assert_eq!(fs::read(path).unwrap(), *data);
    assert_eq!(cdn.requests()[1].header("Range"), Some("bytes=123456-"));
    assert_eq!(entries(out.path()), ["model.gguf"]);
}

#[test]
fn a_wrong_checksum_is_rejected_and_leaves_no_file() {
    let data = Arc::new(bytes(100_000, 4));
    let cdn = cdn_serving(data.clone());
    let hub = hub_with(&cdn, data.clone(), sha256_hex(b"other content"));
    let out = tempfile::tempdir().unwrap();
    let hf = HfClient::new(&hub.url, None);

    let err = hf.download("org/repo", "dir/model.gguf", "main", out.path(), &Progress::silent()).unwrap_err();
    let HubError::ChecksumMismatch { algorithm, expected, got, .. } = &err else { panic!("{err:?}") };
    assert_eq!(
        (*algorithm, expected.as_str(), got.as_str()),
        ("sha256", &*sha256_hex(b"other content"), &*sha256_hex(&data))
    );
    assert!(err.to_string().contains("the download was discarded"), "{err}");
    assert!(entries(out.path()).is_empty(), "neither the file nor its part: {:?}", entries(out.path()));
}

#[test]
fn a_wrong_size_is_rejected_too() {
    let data = Arc::new(bytes(1000, 5));
    let cdn = cdn_serving(data.clone());
    let cdn_url = cdn.url.clone();
    // The Hub promises 2,000 bytes and gives no sha256.
    let hub = MockServer::start(move |_| {
        Response::redirect(&format!("{cdn_url}/f")).header("X-Linked-Size", "2000").header("ETag", "\"abc\"")
    });
    let out = tempfile::tempdir().unwrap();
    let err = HfClient::new(&hub.url, None)
        .download("org/repo", "f.bin", "main", out.path(), &Progress::silent())
        .unwrap_err();
    assert!(matches!(err, HubError::SizeMismatch { expected: 2000, got: 1000, .. }), "{err:?}");
    assert!(entries(out.path()).is_empty());
}

#[test]
fn unauthorized_says_whether_a_token_was_sent_and_which() {
    let hub = MockServer::start(|_| {
        Response::new(401, "")
            .header("X-Error-Code", "GatedRepo")
            .header("X-Error-Message", "Access to model org/repo is restricted.")
    });
    let out = tempfile::tempdir().unwrap();

    let err = HfClient::new(&hub.url, None)
        .download("org/repo", "model.gguf", "main", out.path(), &Progress::silent())
        .unwrap_err()
        .to_string();
    assert!(err.contains("401 Unauthorized"), "{err}");
    assert!(err.contains("no token was sent"), "{err}");
    assert!(err.contains("set HF_TOKEN"), "{err}");
    assert!(err.contains("Access to model org/repo is restricted."), "the Hub's own words: {err}");

    let err = HfClient::new(&hub.url, token())
        .download("org/repo", "model.gguf", "main", out.path(), &Progress::silent())
        .unwrap_err()
        .to_string();
    assert!(err.contains("the token (HF_TOKEN from the test) was rejected"), "{err}");
    assert!(!err.contains("hf_test"), "the secret itself is never shown: {err}");
    assert!(entries(out.path()).is_empty());
}

#[test]
fn forbidden_points_at_the_gated_model_page() {
    // A HEAD answer has no body: the Hub says why in X-Error-Message.
    let hub = MockServer::start(|_| Response::new(403, "").header("X-Error-Message", "gated"));
    let out = tempfile::tempdir().unwrap();
    let err = HfClient::new(&hub.url, token())
        .download("org/repo", "model.gguf", "main", out.path(), &Progress::silent())
        .unwrap_err();
    assert!(matches!(err, HubError::Forbidden { .. }));
    let err = err.to_string();
    assert!(err.contains("has no access to 'org/repo'") && err.contains("accept its conditions"), "{err}");
    assert!(err.ends_with(": gated"), "the Hub's own words: {err}");
}

#[test]
fn not_found_names_the_file_revision_and_repo() {
    let data = Arc::new(bytes(10, 6));
    let cdn = cdn_serving(data.clone());
    let hub = hub_with(&cdn, data, String::new());
    let out = tempfile::tempdir().unwrap();
    let err = HfClient::new(&hub.url, None)
        .download("org/repo", "nope/missing.gguf", "v1.0", out.path(), &Progress::silent())
        .unwrap_err();
    assert!(matches!(err, HubError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("file 'nope/missing.gguf' of repo 'org/repo' at revision 'v1.0' was not found"), "{msg}");
    assert!(msg.contains("/org/repo/resolve/v1.0/nope/missing.gguf"), "{msg}");
    assert!(entries(out.path()).is_empty());
}

#[test]
fn revisions_and_paths_are_percent_encoded() {
    let hub = MockServer::start(|req| serve_bytes(req, b"x"));
    let out = tempfile::tempdir().unwrap();
    HfClient::new(&hub.url, None)
        .download("org/repo", "a b/c.txt", "refs/pr/1", out.path(), &Progress::silent())
        .unwrap();
    assert_eq!(hub.requests()[0].target, "/org/repo/resolve/refs%2Fpr%2F1/a%20b/c.txt");
    assert_eq!(fs::read(out.path().join("c.txt")).unwrap(), b"x");
}

#[test]
fn bad_repo_or_path_is_refused_before_any_request() {
    let hub = MockServer::start(|_| Response::new(500, ""));
    let out = tempfile::tempdir().unwrap();
    let hf = HfClient::new(&hub.url, None);
    for (repo, file) in [("org/repo/x", "f"), ("org/repo", "../f"), ("org/repo", "/etc/passwd"), ("", "f")] {
        let err = hf.download(repo, file, "main", out.path(), &Progress::silent()).unwrap_err();
        assert!(matches!(err, HubError::BadArgument { .. }), "{repo} {file}: {err:?}");
    }
    assert!(hub.requests().is_empty());
}

#[test]
fn network_errors_name_the_hub_and_url() {
    // A port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = tempfile::tempdir().unwrap();
    let err = HfClient::new(&format!("http://127.0.0.1:{port}"), None)
        .download("org/repo", "f", "main", out.path(), &Progress::silent())
        .unwrap_err();
    assert!(matches!(err, HubError::Network { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!("cannot reach Hugging Face (http://127.0.0.1:{port}/org/repo/")),
        "{err}"
    );
}

#[test]
fn search_lists_ids_downloads_and_likes() {
    let hub = MockServer::start(|req| {
        assert_eq!(req.path(), "/api/models");
        Response::json(
            200,
            serde_json::json!([
                {"id": "google/gemma-3-1b-it", "downloads": 123456, "likes": 789},
                {"modelId": "someone/gemma-gguf", "likes": 3}
            ]),
        )
    });
    let models = HfClient::new(&hub.url, None).search("gemma 3", 2).unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(
        (models[0].id.as_str(), models[0].downloads, models[0].likes),
        ("google/gemma-3-1b-it", Some(123456), Some(789))
    );
    assert_eq!((models[1].id.as_str(), models[1].downloads), ("someone/gemma-gguf", None));
    let req = &hub.requests()[0];
    assert_eq!((req.query("search").as_deref(), req.query("limit").as_deref()), (Some("gemma 3"), Some("2")));
}
