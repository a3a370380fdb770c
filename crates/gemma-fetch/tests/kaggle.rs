//! The Kaggle client against a local mock of Kaggle's routes (`/api/v1/models/.../get`, `.../{version}/download`
//! redirected to a storage server on another origin, `/api/v1/models/list`); no hub is reachable from these
//! machines. Also where credentials are found.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use common::{entries, serve_bytes, MockServer, Response};
use gemma_fetch::kaggle::{credentials, KaggleClient, ModelHandle};
use gemma_fetch::{Auth, Credential, HubError, Progress, Settings};
use md5::Digest;

/// A tar.gz of `files` (path, content), as Kaggle serves a variation.
fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn goog_hash(data: &[u8]) -> String {
    format!("crc32c=AAAAAA==,md5={}", base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data)))
}

const VARIATION: &str = "/api/v1/models/google/gemma-3/gguf/gemma-3-1b-it-qat-q4_0";

/// Kaggle with versions 2 and 3 (the latest) of one variation, each an archive on `storage`.
fn kaggle_with(storage: &MockServer) -> MockServer {
    let storage_url = storage.url.clone();
    MockServer::start(move |req| match req.path().strip_prefix(VARIATION) {
        Some("/get") => Response::json(200, serde_json::json!({"id": 1, "slug": "x", "versionNumber": 3})),
        Some(rest) if rest.ends_with("/download") => {
            let version = rest.trim_start_matches('/').trim_end_matches("/download");
            Response::redirect(&format!("{storage_url}/archives/v{version}.tar.gz?X-Goog-Signature=1"))
        }
        _ => Response::json(404, serde_json::json!({"code": 404, "message": "Not found"})),
    })
}

fn storage_serving(v2: Vec<u8>, v3: Vec<u8>) -> MockServer {
    let (v2, v3) = (Arc::new(v2), Arc::new(v3));
    MockServer::start(move |req| {
        let data = if req.path().ends_with("v2.tar.gz") { &v2 } else { &v3 };
        serve_bytes(req, data).header("X-Goog-Hash", &goog_hash(data))
    })
}

fn bearer() -> Option<Credential> {
    Some(Credential { auth: Auth::Bearer("kgat_test".into()), source: "KAGGLE_API_TOKEN from the test".into() })
}

#[test]
fn the_latest_version_is_resolved_and_its_tar_gz_unpacked_into_out() {
    let v3 = tar_gz(&[("model.gguf", b"GGUF v3 weights"), ("./docs/README.md", b"read me")]);
    let storage = storage_serving(tar_gz(&[("model.gguf", b"v2")]), v3);
    let kaggle = kaggle_with(&storage);
    let out = tempfile::tempdir().unwrap();
    let client = KaggleClient::new(&kaggle.url, bearer());
    let handle = ModelHandle::parse("google/gemma-3/gguf/gemma-3-1b-it-qat-q4_0").unwrap();

    assert_eq!(client.latest_version(&handle).unwrap(), 3);
    let got = client.download(&handle, out.path(), &Progress::silent()).unwrap();
    assert_eq!(got.version, 3);
    assert_eq!(got.files, [out.path().join("model.gguf"), out.path().join("docs/README.md")]);
    assert_eq!(fs::read(out.path().join("model.gguf")).unwrap(), b"GGUF v3 weights");
    assert_eq!(fs::read(out.path().join("docs/README.md")).unwrap(), b"read me");
    assert_eq!(entries(out.path()), ["docs", "model.gguf"], "no archive or work folder left");

    let api: Vec<String> = kaggle.requests().iter().map(|r| r.path().to_string()).collect();
    assert_eq!(api, [format!("{VARIATION}/get"), format!("{VARIATION}/get"), format!("{VARIATION}/3/download")]);
    assert!(kaggle.requests().iter().all(|r| r.header("Authorization") == Some("Bearer kgat_test")));
    let fetched = &storage.requests()[0];
    assert_eq!(fetched.path(), "/archives/v3.tar.gz");
    assert_eq!(fetched.header("Authorization"), None, "credentials never go to the storage's signed URL");
}

#[test]
fn a_pinned_version_is_downloaded_without_a_lookup() {
    let storage = storage_serving(tar_gz(&[("model.gguf", b"v2 weights")]), tar_gz(&[("model.gguf", b"v3")]));
    let kaggle = kaggle_with(&storage);
    let out = tempfile::tempdir().unwrap();
    let mut handle = ModelHandle::parse("google/gemma-3/gguf/gemma-3-1b-it-qat-q4_0").unwrap();
    handle.version = Some(2);
    let got = KaggleClient::new(&kaggle.url, None).download(&handle, out.path(), &Progress::silent()).unwrap();
    assert_eq!(got.version, 2);
    assert_eq!(fs::read(out.path().join("model.gguf")).unwrap(), b"v2 weights");
    let api: Vec<String> = kaggle.requests().iter().map(|r| r.path().to_string()).collect();
    assert_eq!(api, [format!("{VARIATION}/2/download")], "no /get");
    assert_eq!(kaggle.requests()[0].header("Authorization"), None, "nothing to send without credentials");
}

#[test]
fn an_md5_mismatch_is_rejected_and_leaves_nothing() {
    let archive = Arc::new(tar_gz(&[("model.gguf", b"weights")]));
    let storage = MockServer::start(move |req| serve_bytes(req, &archive).header("X-Goog-Hash", &goog_hash(b"else")));
    let kaggle = kaggle_with(&storage);
    let out = tempfile::tempdir().unwrap();
    let handle = ModelHandle::parse("google/gemma-3/gguf/gemma-3-1b-it-qat-q4_0/3").unwrap();
    let err = KaggleClient::new(&kaggle.url, None).download(&handle, out.path(), &Progress::silent()).unwrap_err();
    assert!(matches!(err, HubError::ChecksumMismatch { algorithm: "md5", .. }), "{err:?}");
    assert!(entries(out.path()).is_empty(), "{:?}", entries(out.path()));
}

#[test]
fn archives_that_are_not_tar_or_leave_the_folder_are_refused() {
    // A tar whose entry climbs out of the folder (written by hand: the tar crate refuses to build one).
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..9].copy_from_slice(b"../escape");
    header.set_size(1);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut escaping = header.as_bytes().to_vec();
    escaping.extend_from_slice(&[b'x'; 512]);
    escaping.extend_from_slice(&[0; 1024]);
    // A symlink.
    let mut link = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_cksum();
    link.append_link(&mut h, "model.gguf", "/etc/passwd").unwrap();
    let link = link.into_inner().unwrap();

    for (archive, expected) in [
        (escaping, "points outside the output folder"),
        (link, "only files and folders are unpacked"),
        (b"PK\x03\x04 a zip".to_vec(), "it is a zip archive"),
        (b"just some bytes".to_vec(), "neither a tar nor a tar.gz"),
    ] {
        let archive = Arc::new(archive);
        let storage = MockServer::start(move |req| serve_bytes(req, &archive));
        let kaggle = kaggle_with(&storage);
        let out = tempfile::tempdir().unwrap();
        let handle = ModelHandle::parse("google/gemma-3/gguf/gemma-3-1b-it-qat-q4_0/2").unwrap();
        let err = KaggleClient::new(&kaggle.url, None).download(&handle, out.path(), &Progress::silent()).unwrap_err();
        assert!(matches!(err, HubError::BadArchive { .. }), "{err:?}");
        assert!(err.to_string().contains(expected), "{err}");
        assert!(entries(out.path()).is_empty(), "{expected}: {:?}", entries(out.path()));
        assert!(!out.path().parent().unwrap().join("escape").exists());
    }
}

#[test]
fn refusals_name_the_missing_or_rejected_credential_and_what_was_not_found() {
    let kaggle = MockServer::start(|req| {
        if req.path().contains("/private/") {
            Response::new(403, "{\"message\": \"Permission 'models.get' was denied\"}")
        } else if req.path().contains("/missing/") {
            Response::json(404, serde_json::json!({"code": 404, "message": "Not found"}))
        } else {
            Response::new(401, "{\"message\": \"Unauthenticated\"}")
        }
    });
    let out = tempfile::tempdir().unwrap();
    let handle = |h: &str| ModelHandle::parse(h).unwrap();
    let anonymous = KaggleClient::new(&kaggle.url, None);
    let with_token = KaggleClient::new(&kaggle.url, bearer());

    let err = anonymous.download(&handle("o/m/f/v"), out.path(), &Progress::silent()).unwrap_err();
    assert!(matches!(err, HubError::Unauthorized { .. }));
    let msg = err.to_string();
    assert!(msg.contains("no Kaggle credentials were found: set KAGGLE_API_TOKEN"), "{msg}");
    assert!(msg.contains("kaggle.json") && msg.ends_with(": Unauthenticated"), "{msg}");

    let msg = with_token.download(&handle("o/m/f/v"), out.path(), &Progress::silent()).unwrap_err().to_string();
    assert!(msg.contains("the credential (KAGGLE_API_TOKEN from the test) was rejected"), "{msg}");
    assert!(!msg.contains("kgat_test"), "{msg}");

    let msg = with_token.download(&handle("o/private/f/v/1"), out.path(), &Progress::silent()).unwrap_err().to_string();
    assert!(
        msg.contains("403 Forbidden") && msg.contains("has no access to model variation 'o/private/f/v' version 1"),
        "{msg}"
    );

    let err = with_token.download(&handle("o/missing/f/v/7"), out.path(), &Progress::silent()).unwrap_err();
    assert!(matches!(err, HubError::NotFound { .. }));
    let msg = err.to_string();
    assert!(msg.starts_with("Kaggle: model variation 'o/missing/f/v' version 7 was not found"), "{msg}");
    assert!(entries(out.path()).is_empty(), "{:?}", entries(out.path()));
}

#[test]
fn search_lists_refs_titles_and_votes() {
    let kaggle = MockServer::start(|req| {
        assert_eq!(req.path(), "/api/v1/models/list");
        if req.query("search").as_deref() == Some("nothing") {
            return Response::json(200, serde_json::json!({"nextPageToken": ""}));
        }
        Response::json(
            200,
            serde_json::json!({"models": [
                {"id": 1, "ref": "google/gemma-3", "title": "Gemma 3", "voteCount": 512},
                {"id": 2, "ref": "keras/gemma", "title": "Gemma (Keras)"}
            ], "nextPageToken": "abc", "totalResults": 40}),
        )
    });
    let client = KaggleClient::new(&kaggle.url, None);
    let models = client.search("gemma", 5).unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(
        (models[0].reference.as_str(), models[0].title.as_str(), models[0].votes),
        ("google/gemma-3", "Gemma 3", Some(512))
    );
    assert_eq!(models[1].votes, None);
    let req = &kaggle.requests()[0];
    assert_eq!((req.query("search").as_deref(), req.query("pageSize").as_deref()), (Some("gemma"), Some("5")));
    assert!(client.search("nothing", 5).unwrap().is_empty());
}

fn settings(vars: &[(&str, &str)], cwd: &Path, home: &Path) -> Settings {
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Settings::new(move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()), cwd, Some(home))
}

#[test]
fn credentials_are_found_in_the_documented_order() {
    let cwd = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let (c, h) = (cwd.path(), home.path());
    assert_eq!(credentials(&settings(&[], c, h)).unwrap(), None);

    // Legacy kaggle.json in ~/.kaggle: basic auth.
    fs::create_dir(h.join(".kaggle")).unwrap();
    fs::write(h.join(".kaggle/kaggle.json"), r#"{"username": "ada", "key": "k123"}"#).unwrap();
    let found = credentials(&settings(&[], c, h)).unwrap().unwrap();
    assert_eq!(found.auth, Auth::Basic { username: "ada".into(), key: "k123".into() });
    assert_eq!(found.source, h.join(".kaggle/kaggle.json").display().to_string());

    // KAGGLE_CONFIG_DIR moves it.
    let elsewhere = tempfile::tempdir().unwrap();
    fs::write(elsewhere.path().join("kaggle.json"), r#"{"username": "bob", "key": "k9"}"#).unwrap();
    let s = settings(&[("KAGGLE_CONFIG_DIR", elsewhere.path().to_str().unwrap())], c, h);
    assert_eq!(credentials(&s).unwrap().unwrap().auth, Auth::Basic { username: "bob".into(), key: "k9".into() });

    // KAGGLE_USERNAME + KAGGLE_KEY beat kaggle.json.
    let s = settings(&[("KAGGLE_USERNAME", "env-user"), ("KAGGLE_KEY", "env-key")], c, h);
    let found = credentials(&s).unwrap().unwrap();
    assert_eq!(found.auth, Auth::Basic { username: "env-user".into(), key: "env-key".into() });
    assert_eq!(found.source, "KAGGLE_USERNAME and KAGGLE_KEY from the environment");

    // ~/.kaggle/access_token beats the legacy ones.
    fs::write(h.join(".kaggle/access_token"), "kgat_file\n").unwrap();
    assert_eq!(credentials(&s).unwrap().unwrap().auth, Auth::Bearer("kgat_file".into()));

    // KAGGLE_API_TOKEN in ./.env beats those ...
    fs::write(c.join(".env"), "# mine\nKAGGLE_API_TOKEN=\"kgat_dotenv\"\n").unwrap();
    let found = credentials(&s).unwrap().unwrap();
    assert_eq!(found.auth, Auth::Bearer("kgat_dotenv".into()));
    assert_eq!(found.source, format!("KAGGLE_API_TOKEN from {}", c.join(".env").display()));

    // ... and the environment's beats the .env file's.
    let s = settings(&[("KAGGLE_API_TOKEN", "kgat_env")], c, h);
    let found = credentials(&s).unwrap().unwrap();
    assert_eq!(
        (found.auth, found.source.as_str()),
        (Auth::Bearer("kgat_env".into()), "KAGGLE_API_TOKEN from the environment")
    );
}

#[test]
fn a_broken_kaggle_json_is_an_error_naming_the_file() {
    let cwd = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    fs::create_dir(home.path().join(".kaggle")).unwrap();
    let path = home.path().join(".kaggle/kaggle.json");
    for (text, expected) in [("{not json", "not JSON"), (r#"{"username": "ada"}"#, "no \"key\" string")] {
        fs::write(&path, text).unwrap();
        let err = credentials(&settings(&[], cwd.path(), home.path())).unwrap_err();
        assert!(matches!(err, HubError::BadCredentials { .. }));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()) && msg.contains(expected), "{msg}");
    }
}
