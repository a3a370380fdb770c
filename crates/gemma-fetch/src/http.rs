//! What the hub clients share: a blocking HTTP client (ureq with rustls), credentials and where they came from,
//! `.env` files, resumable downloads into a `.part` file, and the errors.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::Progress;

/// A failed hub operation.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{hub} answered 401 Unauthorized for {url}: {hint}")]
    Unauthorized { hub: &'static str, url: String, hint: String },
    #[error("{hub} answered 403 Forbidden for {url}: {hint}")]
    Forbidden { hub: &'static str, url: String, hint: String },
    #[error("{hub}: {what} was not found ({url} answered 404){detail}")]
    NotFound { hub: &'static str, what: String, url: String, detail: String },
    #[error("{hub} answered HTTP {status} for {url}{detail}")]
    Status { hub: &'static str, url: String, status: u16, detail: String },
    #[error("cannot reach {hub} ({url}): {detail}")]
    Network { hub: &'static str, url: String, detail: String },
    #[error("{hub} sent an answer to {url} that cannot be read: {detail}")]
    BadResponse { hub: &'static str, url: String, detail: String },
    #[error("{what}: {why}")]
    BadArgument { what: String, why: String },
    #[error("cannot read the Kaggle credentials in {path}: {detail}")]
    BadCredentials { path: PathBuf, detail: String },
    #[error("downloaded {got} bytes from {url}, expected {expected}; the download was discarded")]
    SizeMismatch { url: String, expected: u64, got: u64 },
    #[error("checksum mismatch for {url}: {algorithm} expected {expected}, got {got}; the download was discarded")]
    ChecksumMismatch { url: String, algorithm: &'static str, expected: String, got: String },
    #[error("cannot unpack the archive from {url}: {detail}")]
    BadArchive { url: String, detail: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl HubError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> HubError {
        let path = path.into();
        move |source| HubError::Io { action, path, source }
    }
}

/// How a request authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <token>` (Hugging Face tokens, Kaggle API tokens).
    Bearer(String),
    /// HTTP basic auth (Kaggle's legacy username and key).
    Basic { username: String, key: String },
}

// Secrets stay out of debug output (and so out of any logged error).
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Bearer(_) => f.write_str("Bearer(..)"),
            Auth::Basic { username, .. } => write!(f, "Basic {{ username: {username:?}, key: .. }}"),
        }
    }
}

impl Auth {
    fn header_value(&self) -> String {
        match self {
            Auth::Bearer(token) => format!("Bearer {token}"),
            Auth::Basic { username, key } => {
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{key}")))
            }
        }
    }
}

/// A credential and where it was found, so that a refusal can say which one was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub auth: Auth,
    /// For messages, e.g. "KAGGLE_API_TOKEN from the environment" or "/home/me/.kaggle/kaggle.json".
    pub source: String,
}

/// Where settings are looked up: the process environment first, then a `.env` file in `cwd` (as python-dotenv
/// does by default, a variable already set wins). Tests build one with their own variables.
type Lookup = dyn Fn(&str) -> Option<String>;

pub struct Settings {
    vars: Box<Lookup>,
    pub cwd: PathBuf,
    pub home: Option<PathBuf>,
}

impl Settings {
    /// The process environment, the current directory and `$HOME`.
    pub fn from_process() -> Settings {
        Settings {
            vars: Box::new(|name| std::env::var(name).ok()),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            home: std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from),
        }
    }

    /// Given variables instead of the environment's.
    pub fn new(vars: impl Fn(&str) -> Option<String> + 'static, cwd: &Path, home: Option<&Path>) -> Settings {
        Settings { vars: Box::new(vars), cwd: cwd.to_path_buf(), home: home.map(Path::to_path_buf) }
    }

    /// A variable's non-empty value and where it came from ("the environment" or the `.env` file's path).
    pub fn var(&self, name: &str) -> Option<(String, String)> {
        if let Some(v) = (self.vars)(name).filter(|v| !v.trim().is_empty()) {
            return Some((v.trim().to_string(), "the environment".to_string()));
        }
        let path = self.cwd.join(".env");
        let text = fs::read_to_string(&path).ok()?;
        dotenv_value(&text, name).filter(|v| !v.is_empty()).map(|v| (v, path.display().to_string()))
    }
}

/// The value of `name` in the text of a `.env` file: `NAME=value` lines, optionally after `export `, the value
/// optionally quoted; `#` starts a comment line. The last assignment wins, as in a shell.
pub fn dotenv_value(text: &str, name: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        if key.trim() != name {
            continue;
        }
        let value = value.trim();
        let unquoted = match value.as_bytes() {
            [b'"', .., b'"'] | [b'\'', .., b'\''] if value.len() >= 2 => &value[1..value.len() - 1],
            // An unquoted value ends at a comment.
            _ => value.split(" #").next().unwrap_or("").trim_end(),
        };
        found = Some(unquoted.to_string());
    }
    found
}

/// Percent-encodes one URL path segment (everything but RFC 3986's unreserved characters).
pub(crate) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `scheme://host[:port]` of a URL, lowercased, for same-origin checks.
pub(crate) fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    Some(format!("{}://{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase()))
}

/// A request that did not give a successful answer.
pub(crate) enum Failure {
    /// The server answered with this 4xx/5xx status.
    Status {
        status: u16,
        /// A machine-readable reason where the hub gives one (Hugging Face's `X-Error-Code`).
        error_code: Option<String>,
        /// The hub's own explanation: `X-Error-Message`, or the start of the body.
        message: String,
    },
    /// No answer: DNS, connection, TLS, timeout, or a cut-off body.
    Transport(String),
}

impl Failure {
    /// The generic error for a failure that the caller has no better words for.
    pub(crate) fn into_error(self, hub: &'static str, url: &str) -> HubError {
        match self {
            Failure::Status { status, message, .. } => {
                HubError::Status { hub, url: url.to_string(), status, detail: detail(&message) }
            }
            Failure::Transport(detail) => HubError::Network { hub, url: url.to_string(), detail },
        }
    }
}

/// ": message" or nothing.
pub(crate) fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// The HTTP client of the hub clients: one that follows redirects (without passing credentials to another
/// host: signed download URLs need none and must not get them) and one that does not, to read where a
/// redirect goes.
#[derive(Clone)]
pub(crate) struct Client {
    follow: ureq::Agent,
    no_follow: ureq::Agent,
}

impl Client {
    pub(crate) fn new() -> Client {
        let builder = || {
            ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(15))
                // Between reads, not for the whole body: a download of many GB may take hours.
                .timeout_read(Duration::from_secs(60))
                .timeout_write(Duration::from_secs(60))
                .user_agent(concat!("gemma-fetch/", env!("CARGO_PKG_VERSION")))
        };
        Client { follow: builder().redirects(10).build(), no_follow: builder().redirects(0).build() }
    }

    pub(crate) fn request(&self, method: &str, url: &str, auth: Option<&Auth>, follow: bool) -> ureq::Request {
        let agent = if follow { &self.follow } else { &self.no_follow };
        let mut request = agent.request(method, url);
        if let Some(auth) = auth {
            request = request.set("Authorization", &auth.header_value());
        }
        request
    }

    /// GET `url` and parse its JSON answer.
    pub(crate) fn get_json(
        &self,
        request: ureq::Request,
        hub: &'static str,
    ) -> Result<Result<serde_json::Value, Failure>, HubError> {
        let url = request.url().to_string();
        match send(request) {
            Ok(response) => {
                let value = serde_json::from_reader(BufReader::new(response.into_reader()))
                    .map_err(|e| HubError::BadResponse { hub, url, detail: format!("not the JSON expected: {e}") })?;
                Ok(Ok(value))
            }
            Err(f) => Ok(Err(f)),
        }
    }
}

/// Sends a request; any answer below 400 (a redirect too, on the agent that does not follow them) is a success.
pub(crate) fn send(request: ureq::Request) -> Result<ureq::Response, Failure> {
    let url = request.url().to_string();
    match request.call() {
        Ok(response) => Ok(response),
        Err(ureq::Error::Status(status, response)) => Err(status_failure(status, response)),
        Err(ureq::Error::Transport(t)) => {
            // ureq starts its message with the URL, which the error names already.
            let text = t.to_string();
            Err(Failure::Transport(text.strip_prefix(&format!("{url}: ")).unwrap_or(&text).to_string()))
        }
    }
}

fn status_failure(status: u16, response: ureq::Response) -> Failure {
    let error_code = response.header("X-Error-Code").map(str::to_string);
    let header_message = response.header("X-Error-Message").map(str::to_string);
    let mut body = Vec::new();
    // A few KB are enough for a message; an error page may be large.
    let _ = response.into_reader().take(4096).read_to_end(&mut body);
    let message = header_message.unwrap_or_else(|| body_message(&body));
    Failure::Status { status, error_code, message }
}

/// A short message from an error body: the JSON `error` / `message` field, or its first line of text.
fn body_message(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        for key in ["error", "message"] {
            if let Some(text) = json.get(key).and_then(|v| v.as_str()) {
                return text.to_string();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    if line.starts_with('<') {
        return String::new(); // an HTML page says nothing useful in one line
    }
    line.chars().take(200).collect()
}

/// What [`download`] fetched.
pub(crate) struct Downloaded {
    /// Size of the whole file (resumed part included).
    pub size: u64,
    /// sha256 of the whole file, lowercase hex.
    pub sha256: String,
    /// md5 of the whole file, base64 (as Google Cloud Storage's `X-Goog-Hash` gives it).
    pub md5_base64: String,
    /// The last answer's `X-Goog-Hash` header, if any.
    pub goog_hash: Option<String>,
}

/// One download for [`download`].
pub(crate) struct Job<'a> {
    pub hub: &'static str,
    pub url: &'a str,
    /// Sent to `url` only; ureq drops it on a redirect to another host.
    pub auth: Option<&'a Auth>,
    pub part: &'a Path,
    pub expected_size: Option<u64>,
    /// The progress line.
    pub label: &'a str,
}

/// Downloads `job.url` into `job.part`, resuming from the part's current length with a `Range` request when it
/// has one. When the expected size is known and the part already has it all, nothing is requested. A server
/// that ignores the range (200) restarts the file; one that refuses it (416) gets one fresh request. On a network
/// error the part file is kept for the next attempt. Hashes (sha256 and md5) cover the whole file.
pub(crate) fn download(
    client: &Client,
    job: &Job,
    progress: &Progress,
) -> Result<Result<Downloaded, Failure>, HubError> {
    let Job { hub, url, auth, part, expected_size, label } = *job;
    let mut have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if expected_size.is_some_and(|e| have > e) {
        have = 0; // longer than the file: not a prefix of it
    }
    let mut goog_hash = None;
    let mut response = None;
    if have == 0 || expected_size != Some(have) {
        let mut restarted = false;
        loop {
            let mut request = client.request("GET", url, auth, true).set("Accept-Encoding", "identity");
            if have > 0 {
                request = request.set("Range", &format!("bytes={have}-"));
            }
            match send(request) {
                Ok(r) => {
                    if r.status() == 206 {
                        if content_range_start(r.header("Content-Range")) != Some(have) {
                            return Err(HubError::BadResponse {
                                hub,
                                url: url.to_string(),
                                detail: format!(
                                    "asked for bytes from {have}, got Content-Range {:?}",
                                    r.header("Content-Range").unwrap_or("(none)")
                                ),
                            });
                        }
                    } else {
                        have = 0; // the whole file comes again
                    }
                    response = Some(r);
                    break;
                }
                // The part file does not fit the file on the server (it changed, or the part is complete and
                // the size unknown): start again once.
                Err(Failure::Status { status: 416, .. }) if have > 0 && !restarted => {
                    restarted = true;
                    have = 0;
                }
                Err(f) => return Ok(Err(f)),
            }
        }
    }

    let mut sha = Sha256::new();
    let mut md5 = Md5::new();
    if have > 0 {
        // The resumed prefix is hashed first, so that the checks cover the whole file.
        let mut f = File::open(part).map_err(HubError::io("cannot read", part))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = have;
        while left > 0 {
            let n = f.read(&mut buf[..left.min(1 << 20) as usize]).map_err(HubError::io("cannot read", part))?;
            if n == 0 {
                return Err(HubError::Io {
                    action: "the partial download shrank while being read:",
                    path: part.to_path_buf(),
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
            sha.update(&buf[..n]);
            md5.update(&buf[..n]);
            left -= n as u64;
        }
    }

    let mut size = have;
    if let Some(response) = response {
        goog_hash = response.header("X-Goog-Hash").map(str::to_string);
        let body_len = response.header("Content-Length").and_then(|v| v.trim().parse::<u64>().ok());
        let total = body_len.map(|n| n + have).or(expected_size);
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(have > 0)
            .truncate(have == 0)
            .open(part)
            .map_err(HubError::io("cannot write", part))?;
        match total {
            Some(total) => {
                progress.bytes_phase(label, total);
                progress.advance(have);
            }
            None => progress.phase(label),
        }
        let mut reader = response.into_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = file.flush();
                    return Ok(Err(Failure::Transport(format!(
                        "the download broke off after {size} bytes ({e}); the part downloaded is kept in {} and \
                         the next run resumes from it",
                        part.display()
                    ))));
                }
            };
            file.write_all(&buf[..n]).map_err(HubError::io("cannot write", part))?;
            sha.update(&buf[..n]);
            md5.update(&buf[..n]);
            size += n as u64;
            progress.advance(n as u64);
        }
        file.sync_all().map_err(HubError::io("cannot sync", part))?;
        if let Some(len) = body_len {
            if size - have != len {
                return Ok(Err(Failure::Transport(format!(
                    "the answer ended after {} of its {len} bytes; the part downloaded is kept in {} and the next \
                     run resumes from it",
                    size - have,
                    part.display()
                ))));
            }
        }
    }
    Ok(Ok(Downloaded {
        size,
        sha256: sha.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        md5_base64: base64::engine::general_purpose::STANDARD.encode(md5.finalize()),
        goog_hash,
    }))
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range_start(header: Option<&str>) -> Option<u64> {
    let rest = header?.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

/// sha256 of a file, lowercase hex.
pub(crate) fn sha256_of(path: &Path) -> Result<String, HubError> {
    let mut f = File::open(path).map_err(HubError::io("cannot read", path))?;
    let mut sha = Sha256::new();
    io::copy(&mut f, &mut sha).map_err(HubError::io("cannot read", path))?;
    Ok(sha.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Makes a finished file readable as an ordinary file (temporary files are created 0600) and renames it into
/// place.
pub(crate) fn persist(part: &Path, target: &Path) -> Result<(), HubError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(part, fs::Permissions::from_mode(0o644))
            .map_err(HubError::io("cannot set permissions of", part))?;
    }
    fs::rename(part, target).map_err(HubError::io("cannot rename the finished download into", target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_are_read_as_a_shell_would() {
        let text =
            "# tokens\nexport HF_TOKEN=\"hf_abc\"\nKAGGLE_API_TOKEN = kgat_1 # mine\nX='a b'\nHF_TOKEN=hf_last\n";
        assert_eq!(dotenv_value(text, "HF_TOKEN").as_deref(), Some("hf_last"));
        assert_eq!(dotenv_value(text, "KAGGLE_API_TOKEN").as_deref(), Some("kgat_1"));
        assert_eq!(dotenv_value(text, "X").as_deref(), Some("a b"));
        assert_eq!(dotenv_value(text, "MISSING"), None);
        assert_eq!(dotenv_value("#HF_TOKEN=x", "HF_TOKEN"), None);
    }

    #[test]
    fn segments_and_origins() {
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_segment("gemma-3 1b.gguf"), "gemma-3%201b.gguf");
        assert_eq!(origin("HTTPS://Huggingface.co/a/b?x").as_deref(), Some("https://huggingface.co"));
        assert_eq!(origin("http://127.0.0.1:8080").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(origin("no scheme"), None);
        assert_eq!(content_range_start(Some("bytes 100-199/200")), Some(100));
        assert_eq!(content_range_start(Some("items 1-2")), None);
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let basic = format!("{:?}", Auth::Basic { username: "me".into(), key: "s3cret".into() });
        let bearer = format!("{:?}", Auth::Bearer("s3cret".into()));
        assert!(!basic.contains("s3cret") && !bearer.contains("s3cret"), "{basic} {bearer}");
        assert_eq!(Auth::Basic { username: "u".into(), key: "k".into() }.header_value(), "Basic dTpr");
    }
}
