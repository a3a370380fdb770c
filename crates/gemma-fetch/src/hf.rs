//! Hugging Face Hub: one file of a repo, and model search.
//!
//! Routes and headers follow the official Python client, `huggingface_hub` (`file_download.py`,
//! `constants.py`): `HEAD {endpoint}/{repo}/resolve/{revision}/{path}` without following redirects gives the
//! file's size (`X-Linked-Size`, else `Content-Length`), its etag (`X-Linked-Etag`, else `ETag`; for files
//! stored with LFS the sha256 of the content) and where to download it (`Location`, often a CDN); relative
//! redirects (a renamed repo) are followed with the token, as that client does. The endpoint is `HF_ENDPOINT`,
//! the token `HF_TOKEN`. The downloaded size is checked as `huggingface_hub` checks it; a sha256 etag, which
//! that client only uses to recognise a file already there, is also checked against the downloaded bytes.

use std::fs;
use std::path::{Path, PathBuf};

use crate::http::{self, detail, encode_segment, origin, send, Auth, Client, Credential, Failure, HubError, Settings};
use crate::Progress;

/// huggingface_hub's default endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const HUB: &str = "Hugging Face";

/// A client of one Hugging Face endpoint.
pub struct HfClient {
    endpoint: String,
    token: Option<Credential>,
    client: Client,
}

/// A search hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfModel {
    pub id: String,
    pub downloads: Option<u64>,
    pub likes: Option<u64>,
}

/// What the `HEAD` of a file said.
struct FileMetadata {
    location: String,
    size: Option<u64>,
    etag: Option<String>,
}

impl HfClient {
    /// A client of `endpoint` (e.g. [`DEFAULT_ENDPOINT`]) sending `token` as `Authorization: Bearer`.
    pub fn new(endpoint: &str, token: Option<Credential>) -> HfClient {
        HfClient { endpoint: endpoint.trim_end_matches('/').to_string(), token, client: Client::new() }
    }

    /// `HF_ENDPOINT` (default [`DEFAULT_ENDPOINT`]) and `HF_TOKEN`, from the environment or `.env`.
    pub fn from_settings(settings: &Settings) -> HfClient {
        let endpoint = settings.var("HF_ENDPOINT").map(|(v, _)| v).unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = settings
            .var("HF_TOKEN")
            .map(|(token, from)| Credential { auth: Auth::Bearer(token), source: format!("HF_TOKEN from {from}") });
        HfClient::new(&endpoint, token)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The token is sent only to the endpoint's own origin; a CDN's signed URL needs none.
    fn auth_for(&self, url: &str) -> Option<&Auth> {
        let token = self.token.as_ref()?;
        (origin(url) == origin(&self.endpoint)).then_some(&token.auth)
    }

    /// Downloads `file` of `repo` at `revision` into `out_dir` under the file's own name and returns its path.
    /// The bytes go to `NAME.part` in `out_dir` first (a later run resumes it with a `Range` request) and are
    /// renamed to `NAME` once the size and, when the hub gives one, the sha256 match. A file already there with
    /// the hub's sha256 is kept without downloading.
    pub fn download(
        &self,
        repo: &str,
        file: &str,
        revision: &str,
        out_dir: &Path,
        progress: &Progress,
    ) -> Result<PathBuf, HubError> {
        check_repo(repo)?;
        if !crate::pull::is_plain_relative_path(file) {
            return Err(HubError::BadArgument {
                what: format!("--hf-file '{file}'"),
                why: "must be a '/'-separated path inside the repo, without '.', '..' or empty parts".into(),
            });
        }
        if revision.is_empty() {
            return Err(HubError::BadArgument { what: "--revision".into(), why: "must not be empty".into() });
        }
        let what = format!("file '{file}' of repo '{repo}' at revision '{revision}'");
        let path: Vec<String> = file.split('/').map(encode_segment).collect();
        let url = format!("{}/{repo}/resolve/{}/{}", self.endpoint, encode_segment(revision), path.join("/"));

        let meta = self.metadata(&url, repo, &what)?;
        let sha256 = meta.etag.as_deref().filter(|e| is_sha256(e)).map(str::to_string);
        let name = file.rsplit('/').next().unwrap_or(file);
        let target = out_dir.join(name);

        if let (Some(expected), Ok(existing)) = (&sha256, fs::metadata(&target)) {
            if existing.is_file() && !matches!(meta.size, Some(s) if s != existing.len()) {
                progress
                    .bytes_phase(&format!("checking the {} already in {}", name, out_dir.display()), existing.len());
                if &http::sha256_of(&target)? == expected {
                    progress.note(&format!("{} is already there (sha256 {expected})", target.display()));
                    return Ok(target);
                }
            }
        }

        fs::create_dir_all(out_dir).map_err(HubError::io("cannot create", out_dir))?;
        let part = out_dir.join(format!("{name}.part"));
        if fs::metadata(&part).is_ok_and(|m| m.len() > 0) {
            progress.note(&format!("resuming {} from {}", name, part.display()));
        }
        let label = format!("downloading {what}");
        let job = http::Job {
            hub: HUB,
            url: &meta.location,
            auth: self.auth_for(&meta.location),
            part: &part,
            expected_size: meta.size,
            label: &label,
        };
        let got = match http::download(&self.client, &job, progress)? {
            Ok(got) => got,
            Err(f) => return Err(self.explain(f, &meta.location, repo, &what)),
        };
        if let Some(expected) = meta.size {
            if got.size != expected {
                let _ = fs::remove_file(&part);
                return Err(HubError::SizeMismatch { url, expected, got: got.size });
            }
        }
        if let Some(expected) = sha256 {
            if got.sha256 != expected {
                let _ = fs::remove_file(&part);
                return Err(HubError::ChecksumMismatch { url, algorithm: "sha256", expected, got: got.sha256 });
            }
        }
        http::persist(&part, &target)?;
        let check = if is_sha256(meta.etag.as_deref().unwrap_or("")) { "sha256 checked" } else { "no sha256 given" };
        progress.note(&format!("saved {} ({} bytes, sha256 {}; {check})", target.display(), got.size, got.sha256));
        Ok(target)
    }

    /// The `HEAD` of `url`, following only relative redirects.
    fn metadata(&self, url: &str, repo: &str, what: &str) -> Result<FileMetadata, HubError> {
        let mut current = url.to_string();
        for _ in 0..5 {
            let request = self
                .client
                .request("HEAD", &current, self.auth_for(&current), false)
                .set("Accept-Encoding", "identity");
            let response = send(request).map_err(|f| self.explain(f, &current, repo, what))?;
            let header = |name: &str| response.header(name).map(|v| v.trim().to_string());
            let size = header("X-Linked-Size")
                .or_else(|| if response.status() < 300 { header("Content-Length") } else { None })
                .and_then(|v| v.parse().ok());
            let etag = header("X-Linked-Etag").or_else(|| header("ETag")).map(|e| normalize_etag(&e));
            if (300..400).contains(&response.status()) {
                let Some(location) = header("Location") else {
                    return Err(HubError::BadResponse {
                        hub: HUB,
                        url: current,
                        detail: format!("a {} redirect without a Location", response.status()),
                    });
                };
                if location.starts_with('/') {
                    current = format!("{}{location}", origin(&current).unwrap_or_default());
                    continue;
                }
                return Ok(FileMetadata { location, size, etag });
            }
            return Ok(FileMetadata { location: current, size, etag });
        }
        Err(HubError::BadResponse { hub: HUB, url: url.to_string(), detail: "more than 5 relative redirects".into() })
    }

    /// Turns a failure into words naming the missing or rejected token, or what was not found.
    fn explain(&self, failure: Failure, url: &str, repo: &str, what: &str) -> HubError {
        let Failure::Status { status, error_code, message } = failure else {
            return failure.into_error(HUB, url);
        };
        let said = detail(&message);
        let code = error_code.as_deref().unwrap_or("");
        match status {
            401 => {
                let hint = match &self.token {
                    None => format!(
                        "no token was sent, and '{repo}' is private, gated or does not exist (the Hub answers 401 \
                         for a repo it does not show); set HF_TOKEN in the environment or in ./.env{said}"
                    ),
                    Some(c) => format!(
                        "the token ({}) was rejected or cannot see '{repo}'; check it at \
                         https://huggingface.co/settings/tokens{said}",
                        c.source
                    ),
                };
                HubError::Unauthorized { hub: HUB, url: url.to_string(), hint }
            }
            403 => {
                let hint = match &self.token {
                    None => format!("'{repo}' needs a token: set HF_TOKEN in the environment or in ./.env{said}"),
                    Some(c) => format!(
                        "the token ({}) has no access to '{repo}' (for a gated model, accept its conditions on the \
                         model's page with the token's account){said}",
                        c.source
                    ),
                };
                HubError::Forbidden { hub: HUB, url: url.to_string(), hint }
            }
            404 => {
                let what = match code {
                    "RepoNotFound" => format!("repo '{repo}'"),
                    "RevisionNotFound" => format!("the revision asked for, in repo '{repo}'"),
                    _ => what.to_string(),
                };
                HubError::NotFound { hub: HUB, what, url: url.to_string(), detail: said }
            }
            _ => HubError::Status { hub: HUB, url: url.to_string(), status, detail: said },
        }
    }

    /// `GET {endpoint}/api/models?search=QUERY&limit=N`: model ids with their downloads and likes.
    pub fn search(&self, query: &str, limit: u32) -> Result<Vec<HfModel>, HubError> {
        let url = format!("{}/api/models", self.endpoint);
        let request = self
            .client
            .request("GET", &url, self.auth_for(&url), true)
            .query("search", query)
            .query("limit", &limit.to_string());
        let value = self.client.get_json(request, HUB)?.map_err(|f| self.explain(f, &url, "", "the model list"))?;
        let bad = |detail: &str| HubError::BadResponse { hub: HUB, url: url.clone(), detail: detail.to_string() };
        let list = value.as_array().ok_or_else(|| bad("expected a JSON array of models"))?;
        list.iter()
            .map(|m| {
                let id = m.get("id").or_else(|| m.get("modelId")).and_then(|v| v.as_str());
                Ok(HfModel {
                    id: id.ok_or_else(|| bad("a model without an \"id\""))?.to_string(),
                    downloads: m.get("downloads").and_then(|v| v.as_u64()),
                    likes: m.get("likes").and_then(|v| v.as_u64()),
                })
            })
            .collect()
    }
}

/// `owner/name` or `name`, of the characters the Hub allows.
fn check_repo(repo: &str) -> Result<(), HubError> {
    let parts: Vec<&str> = repo.split('/').collect();
    let ok = (1..=2).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if ok {
        Ok(())
    } else {
        Err(HubError::BadArgument {
            what: format!("--hf-repo '{repo}'"),
            why: "expected OWNER/REPO (letters, digits, '-', '_', '.')".into(),
        })
    }
}

/// huggingface_hub's `_normalize_etag`: no weak-validator prefix, no quotes.
fn normalize_etag(etag: &str) -> String {
    etag.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_repo_names() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert!(is_sha256(&"a".repeat(64)) && !is_sha256(&"A".repeat(64)) && !is_sha256("abc"));
        assert!(check_repo("google/gemma-3-1b-it").is_ok() && check_repo("gpt2").is_ok());
        for bad in ["", "a/b/c", "../x", "a//b", "a b/c", "a/"] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_token_goes_to_the_endpoint_only() {
        let token = Credential { auth: Auth::Bearer("t".into()), source: "test".into() };
        let hf = HfClient::new("https://huggingface.co/", Some(token));
        assert_eq!(hf.endpoint(), "https://huggingface.co");
        assert!(hf.auth_for("https://huggingface.co/a/resolve/main/f").is_some());
        assert!(hf.auth_for("https://cdn-lfs.hf.co/x?sig=1").is_none());
        assert!(hf.auth_for("http://huggingface.co/a").is_none(), "never over another scheme");
    }
}
