//! Kaggle Models: a model variation's files (an archive, unpacked), and model search.
//!
//! Routes follow Kaggle's own clients. From `kagglehub` (`clients.py` `KaggleApiV1Client`, `http_resolver.py`,
//! `config.py`): the latest version is `versionNumber` in `GET {endpoint}/api/v1/models/{owner}/{model}/
//! {framework}/{variation}/get`; `GET .../{variation}/{version}/download` answers (after redirects to storage)
//! with an archive of the variation's files, whose md5 `X-Goog-Hash` gives and kagglehub checks; the endpoint is
//! `KAGGLE_API_ENDPOINT`; `KAGGLE_USERNAME`/`KAGGLE_KEY` or `kaggle.json` (in `$KAGGLE_CONFIG_DIR`, else
//! `~/.kaggle`) are HTTP basic auth. From the `kaggle` CLI's `kagglesdk` (`model_api_service.py`,
//! `kaggle_env.py`): `KAGGLE_API_TOKEN` or `~/.kaggle/access_token` is sent as `Authorization: Bearer`, and the
//! model list is `GET /api/v1/models/list?search=..&pageSize=..`, answered with `models` (`ref`, `title`,
//! `voteCount`).

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use crate::http::{self, detail, encode_segment, Auth, Client, Credential, Failure, HubError, Settings};
use crate::Progress;

/// kagglehub's default endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://www.kaggle.com";
const HUB: &str = "Kaggle";

/// `OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]`, as kagglehub writes a model handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelHandle {
    pub owner: String,
    pub model: String,
    pub framework: String,
    pub variation: String,
    pub version: Option<u64>,
}

impl ModelHandle {
    pub fn parse(handle: &str) -> Result<ModelHandle, HubError> {
        let bad = |why: &str| HubError::BadArgument { what: format!("--kaggle '{handle}'"), why: why.to_string() };
        let parts: Vec<&str> = handle.trim_matches('/').split('/').collect();
        if !(4..=5).contains(&parts.len()) {
            return Err(bad(
                "expected OWNER/MODEL/FRAMEWORK/VARIATION, e.g. google/gemma-3/gguf/gemma-3-1b-it-qat-q4_0",
            ));
        }
        if let Some(p) = parts[..4].iter().find(|p| {
            p.is_empty()
                || **p == "."
                || **p == ".."
                || !p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }) {
            return Err(bad(&format!("'{p}' is not a Kaggle name (letters, digits, '-', '_', '.')")));
        }
        let version = match parts.get(4) {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| bad(&format!("the fifth part, '{v}', must be a version number (1, 2, ...)")))?,
            ),
        };
        Ok(ModelHandle {
            owner: parts[0].to_string(),
            model: parts[1].to_string(),
            framework: parts[2].to_string(),
            variation: parts[3].to_string(),
            version,
        })
    }

    fn url_path(&self) -> String {
        [&self.owner, &self.model, &self.framework, &self.variation].map(|s| encode_segment(s)).join("/")
    }
}

impl std::fmt::Display for ModelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}/{}", self.owner, self.model, self.framework, self.variation)
    }
}

/// The first credential found, in this order: `KAGGLE_API_TOKEN` (environment, then `./.env`),
/// `~/.kaggle/access_token`, `KAGGLE_USERNAME` with `KAGGLE_KEY`, `kaggle.json`. A `kaggle.json` that is there
/// but unreadable is an error rather than a silent anonymous request.
pub fn credentials(settings: &Settings) -> Result<Option<Credential>, HubError> {
    if let Some((token, from)) = settings.var("KAGGLE_API_TOKEN") {
        return Ok(Some(Credential { auth: Auth::Bearer(token), source: format!("KAGGLE_API_TOKEN from {from}") }));
    }
    let kaggle_home = settings.home.as_ref().map(|h| h.join(".kaggle"));
    if let Some(path) = kaggle_home.as_ref().map(|d| d.join("access_token")) {
        if let Ok(text) = fs::read_to_string(&path) {
            if !text.trim().is_empty() {
                let source = path.display().to_string();
                return Ok(Some(Credential { auth: Auth::Bearer(text.trim().to_string()), source }));
            }
        }
    }
    if let (Some((username, u_from)), Some((key, k_from))) =
        (settings.var("KAGGLE_USERNAME"), settings.var("KAGGLE_KEY"))
    {
        let source = if u_from == k_from {
            format!("KAGGLE_USERNAME and KAGGLE_KEY from {u_from}")
        } else {
            format!("KAGGLE_USERNAME from {u_from} and KAGGLE_KEY from {k_from}")
        };
        return Ok(Some(Credential { auth: Auth::Basic { username, key }, source }));
    }
    let dir = settings.var("KAGGLE_CONFIG_DIR").map(|(d, _)| PathBuf::from(d)).or(kaggle_home);
    let Some(path) = dir.map(|d| d.join("kaggle.json")) else { return Ok(None) };
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HubError::BadCredentials { path, detail: e.to_string() }),
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| HubError::BadCredentials { path: path.clone(), detail: format!("not JSON ({e})") })?;
    let field = |name: &str| {
        json.get(name).and_then(|v| v.as_str()).map(str::to_string).filter(|s| !s.is_empty()).ok_or_else(|| {
            HubError::BadCredentials { path: path.clone(), detail: format!("no \"{name}\" string in it") }
        })
    };
    let (username, key) = (field("username")?, field("key")?);
    Ok(Some(Credential { auth: Auth::Basic { username, key }, source: path.display().to_string() }))
}

/// A client of one Kaggle endpoint.
pub struct KaggleClient {
    endpoint: String,
    credential: Option<Credential>,
    client: Client,
}

/// What [`KaggleClient::download`] saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KaggleDownload {
    pub version: u64,
    /// Every file unpacked, under the output folder, in archive order.
    pub files: Vec<PathBuf>,
}

/// A search hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KaggleModel {
    /// `owner/model`.
    pub reference: String,
    pub title: String,
    pub votes: Option<u64>,
}

impl KaggleClient {
    /// A client of `endpoint` (e.g. [`DEFAULT_ENDPOINT`]).
    pub fn new(endpoint: &str, credential: Option<Credential>) -> KaggleClient {
        KaggleClient { endpoint: endpoint.trim_end_matches('/').to_string(), credential, client: Client::new() }
    }

    /// `KAGGLE_API_ENDPOINT` (default [`DEFAULT_ENDPOINT`]) and [`credentials`].
    pub fn from_settings(settings: &Settings) -> Result<KaggleClient, HubError> {
        let endpoint =
            settings.var("KAGGLE_API_ENDPOINT").map(|(v, _)| v).unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Ok(KaggleClient::new(&endpoint, credentials(settings)?))
    }

    pub fn credential(&self) -> Option<&Credential> {
        self.credential.as_ref()
    }

    fn auth(&self) -> Option<&Auth> {
        self.credential.as_ref().map(|c| &c.auth)
    }

    /// The variation's latest version number.
    pub fn latest_version(&self, handle: &ModelHandle) -> Result<u64, HubError> {
        let url = format!("{}/api/v1/models/{}/get", self.endpoint, handle.url_path());
        let request = self.client.request("GET", &url, self.auth(), true);
        let json = self
            .client
            .get_json(request, HUB)?
            .map_err(|f| self.explain(f, &url, &format!("model variation '{handle}'")))?;
        json.get("versionNumber").and_then(|v| v.as_u64()).filter(|v| *v > 0).ok_or_else(|| HubError::BadResponse {
            hub: HUB,
            url,
            detail: "no positive \"versionNumber\" in the model variation's description".into(),
        })
    }

    /// Downloads version `handle.version` (the latest when `None`) of the variation and unpacks its archive into
    /// `out_dir`. The archive is written to a hidden `.part` file in `out_dir` (resumed by a later run), checked
    /// against the md5 the storage gives, unpacked into a hidden folder beside it, and only then are its files
    /// moved into place; the archive is removed.
    pub fn download(
        &self,
        handle: &ModelHandle,
        out_dir: &Path,
        progress: &Progress,
    ) -> Result<KaggleDownload, HubError> {
        let version = match handle.version {
            Some(v) => v,
            None => {
                progress.note(&format!("looking up the latest version of {handle}"));
                self.latest_version(handle)?
            }
        };
        let what = format!("model variation '{handle}' version {version}");
        let url = format!("{}/api/v1/models/{}/{version}/download", self.endpoint, handle.url_path());
        fs::create_dir_all(out_dir).map_err(HubError::io("cannot create", out_dir))?;
        let part = out_dir.join(format!(
            ".{}-{}-{}-{}-{version}.archive.part",
            handle.owner, handle.model, handle.framework, handle.variation
        ));
        if fs::metadata(&part).is_ok_and(|m| m.len() > 0) {
            progress.note(&format!("resuming the download in {}", part.display()));
        }
        let label = format!("downloading {what}");
        let job = http::Job { hub: HUB, url: &url, auth: self.auth(), part: &part, expected_size: None, label: &label };
        let got = match http::download(&self.client, &job, progress)? {
            Ok(got) => got,
            Err(f) => return Err(self.explain(f, &url, &what)),
        };
        if let Some(expected) = got.goog_hash.as_deref().and_then(goog_md5) {
            if expected != got.md5_base64 {
                let _ = fs::remove_file(&part);
                return Err(HubError::ChecksumMismatch { url, algorithm: "md5", expected, got: got.md5_base64 });
            }
        }

        progress.phase(&format!("unpacking {} bytes into {}", got.size, out_dir.display()));
        let staging = tempfile::Builder::new()
            .prefix(".kaggle-unpack-")
            .tempdir_in(out_dir)
            .map_err(HubError::io("cannot create a work folder in", out_dir))?;
        let unpacked = unpack(&part, staging.path(), &url);
        // A broken archive is not resumable: start afresh next time.
        let _ = fs::remove_file(&part);
        let relative = unpacked?;
        for entry in fs::read_dir(staging.path()).map_err(HubError::io("cannot read", staging.path()))? {
            let entry = entry.map_err(HubError::io("cannot read", staging.path()))?;
            move_into(&entry.path(), &out_dir.join(entry.file_name()))?;
        }
        let files: Vec<PathBuf> = relative.iter().map(|r| out_dir.join(r)).collect();
        progress.note(&format!("saved {} file(s) of {what} in {}", files.len(), out_dir.display()));
        Ok(KaggleDownload { version, files })
    }

    /// Turns a failure into words naming the missing or rejected credential, or what was not found.
    fn explain(&self, failure: Failure, url: &str, what: &str) -> HubError {
        let Failure::Status { status, message, .. } = failure else {
            return failure.into_error(HUB, url);
        };
        let said = detail(&message);
        let url = url.to_string();
        const WHERE: &str = "set KAGGLE_API_TOKEN (in the environment or ./.env; a token from \
                             https://www.kaggle.com/settings), or KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json \
                             in ~/.kaggle";
        match (status, &self.credential) {
            (401, None) => HubError::Unauthorized {
                hub: HUB,
                url,
                hint: format!("no Kaggle credentials were found: {WHERE}{said}"),
            },
            (401, Some(c)) => HubError::Unauthorized {
                hub: HUB,
                url,
                hint: format!(
                    "the credential ({}) was rejected; create a new token at https://www.kaggle.com/settings{said}",
                    c.source
                ),
            },
            (403, None) => HubError::Forbidden {
                hub: HUB,
                url,
                hint: format!("{what} needs credentials, and none were found: {WHERE}{said}"),
            },
            (403, Some(c)) => HubError::Forbidden {
                hub: HUB,
                url,
                hint: format!(
                    "the account of the credential ({}) has no access to {what} (for Gemma, accept its licence on \
                     the model's Kaggle page first){said}",
                    c.source
                ),
            },
            (404, _) => HubError::NotFound { hub: HUB, what: what.to_string(), url, detail: said },
            _ => HubError::Status { hub: HUB, url, status, detail: said },
        }
    }

    /// `GET {endpoint}/api/v1/models/list?search=QUERY&pageSize=N`.
    pub fn search(&self, query: &str, limit: u32) -> Result<Vec<KaggleModel>, HubError> {
        let url = format!("{}/api/v1/models/list", self.endpoint);
        let request = self
            .client
            .request("GET", &url, self.auth(), true)
            .query("search", query)
            .query("pageSize", &limit.to_string());
        let json = self.client.get_json(request, HUB)?.map_err(|f| self.explain(f, &url, "the model list"))?;
        let bad = |detail: &str| HubError::BadResponse { hub: HUB, url: url.clone(), detail: detail.to_string() };
        // The field is left out when nothing matches.
        let Some(models) = json.get("models") else { return Ok(Vec::new()) };
        let models = models.as_array().ok_or_else(|| bad("\"models\" is not a list"))?;
        models
            .iter()
            .take(limit as usize)
            .map(|m| {
                let text = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                let reference = text("ref");
                if reference.is_empty() {
                    return Err(bad("a model without a \"ref\""));
                }
                Ok(KaggleModel { reference, title: text("title"), votes: m.get("voteCount").and_then(|v| v.as_u64()) })
            })
            .collect()
    }
}

/// The md5 in an `X-Goog-Hash` header (`crc32c=...,md5=...`), base64.
fn goog_md5(header: &str) -> Option<String> {
    header.split(',').find_map(|p| p.trim().strip_prefix("md5=")).map(str::to_string)
}

/// Unpacks the tar or tar.gz `archive` into `dir` (empty), returning the relative paths of its files. Only
/// regular files and folders are accepted, at plain relative paths: a link or a path leaving `dir` is refused.
fn unpack(archive: &Path, dir: &Path, url: &str) -> Result<Vec<PathBuf>, HubError> {
    let bad = |detail: String| HubError::BadArchive { url: url.to_string(), detail };
    let mut head = [0u8; 262];
    let mut file = File::open(archive).map_err(HubError::io("cannot read", archive))?;
    let n = read_up_to(&mut file, &mut head).map_err(HubError::io("cannot read", archive))?;
    let file = BufReader::new(File::open(archive).map_err(HubError::io("cannot read", archive))?);
    let reader: Box<dyn Read> = if head[..n].starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(file))
    } else if n >= 262 && &head[257..262] == b"ustar" {
        Box::new(file)
    } else if head[..n].starts_with(b"PK\x03\x04") || head[..n].starts_with(b"PK\x05\x06") {
        return Err(bad("it is a zip archive; only tar and tar.gz archives are unpacked".into()));
    } else {
        return Err(bad("it is neither a tar nor a tar.gz archive".into()));
    };
    let mut files = Vec::new();
    let mut tar = tar::Archive::new(reader);
    let entries = tar.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let raw = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let mut relative = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(part) => relative.push(part),
                Component::CurDir => {}
                _ => return Err(bad(format!("the entry '{}' points outside the output folder", raw.display()))),
            }
        }
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        if relative.as_os_str().is_empty() {
            if kind.is_dir() {
                continue; // "./"
            }
            return Err(bad(format!("the entry '{}' has no name", raw.display())));
        }
        let path = dir.join(&relative);
        if kind.is_dir() {
            fs::create_dir_all(&path).map_err(HubError::io("cannot create", &path))?;
        } else if kind.is_file() || kind.is_contiguous() {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(HubError::io("cannot create", parent))?;
            }
            let mut out = File::create(&path).map_err(HubError::io("cannot create", &path))?;
            io::copy(&mut entry, &mut out).map_err(|e| bad(format!("entry '{}': {e}", raw.display())))?;
            files.push(relative);
        } else {
            return Err(bad(format!(
                "the entry '{}' is a {:?}; only files and folders are unpacked",
                raw.display(),
                kind
            )));
        }
    }
    if files.is_empty() {
        return Err(bad("the archive holds no files".into()));
    }
    Ok(files)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Moves `from` to `to`: a file replaces a file, a folder merges into a folder already there.
fn move_into(from: &Path, to: &Path) -> Result<(), HubError> {
    let from_dir = fs::symlink_metadata(from).map_err(HubError::io("cannot read", from))?.is_dir();
    match fs::symlink_metadata(to) {
        Err(_) => fs::rename(from, to).map_err(HubError::io("cannot move the unpacked file to", to)),
        Ok(existing) if from_dir && existing.is_dir() => {
            for entry in fs::read_dir(from).map_err(HubError::io("cannot read", from))? {
                let entry = entry.map_err(HubError::io("cannot read", from))?;
                move_into(&entry.path(), &to.join(entry.file_name()))?;
            }
            Ok(())
        }
        Ok(existing) if !from_dir && existing.is_file() => {
            fs::rename(from, to).map_err(HubError::io("cannot replace", to))
        }
        Ok(_) => Err(HubError::Io {
            action: "cannot unpack over",
            path: to.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file where the archive has a folder, or the reverse",
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_parse_as_kagglehub_writes_them() {
        let h = ModelHandle::parse("google/gemma-3/gguf/gemma-3-1b-it-qat-q4_0").unwrap();
        assert_eq!((h.owner.as_str(), h.variation.as_str(), h.version), ("google", "gemma-3-1b-it-qat-q4_0", None));
        assert_eq!(h.url_path(), "google/gemma-3/gguf/gemma-3-1b-it-qat-q4_0");
        assert_eq!(ModelHandle::parse("a/b/c/d/3").unwrap().version, Some(3));
        for bad in ["a/b/c", "a/b/c/d/e/f", "a/b/c/d/x", "a/b/c/d/0", "a//c/d", "a/../c/d", "a/b c/c/d"] {
            let err = ModelHandle::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--kaggle '{bad}'")), "{err}");
        }
    }

    #[test]
    fn goog_hash_md5() {
        assert_eq!(
            goog_md5("crc32c=n03x6A==,md5=Ojk9c3dhfxgoKVVHYwFbHQ==").as_deref(),
            Some("Ojk9c3dhfxgoKVVHYwFbHQ==")
        );
        assert_eq!(goog_md5("crc32c=n03x6A=="), None);
    }
}
