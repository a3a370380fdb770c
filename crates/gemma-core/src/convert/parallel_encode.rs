//! Encoding a whole tensor into one of gemma.cpp's formats, split over threads.
//!
//! NUQ clustering is slow (a dynamic programme per group of 256), so large tensors are cut into chunks of whole
//! groups, each encoded on its own thread into its own byte range. That is only valid because every format lays
//! groups out back to back (`packed_bytes(a + b) == packed_bytes(a) + packed_bytes(b)` for whole groups), which
//! the tests check against a single-threaded encode.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use gemma_compression::{sbs_codec, scale_weights, SbsCodecError, SbsCodecType};

use super::ConvertError;

/// One thread's share: the chunk's first element in the tensor, its values, its bytes of the stream.
type Job<'a> = (usize, &'a [f32], &'a mut [u8]);

/// Groups per chunk handed to one thread: enough that scheduling costs nothing.
const CHUNK_GROUPS: usize = 512;

/// Threads to use by default: the machine's parallelism.
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Encodes `values` (a whole tensor, row-major) as `ty` with up to `threads` threads. SFP and NUQ values are first
/// scaled into SFP's range as gemma.cpp's exporter does (`values` is modified); returns the packed bytes and the
/// tensor's scale (the factor that restores the original values).
pub fn encode_sbs_tensor(
    name: &str,
    values: &mut [f32],
    ty: SbsCodecType,
    threads: usize,
) -> Result<(Vec<u8>, f32), ConvertError> {
    let scale = if matches!(ty, SbsCodecType::Sfp | SbsCodecType::Nuq) { scale_weights(values) } else { 1.0 };
    let codec = sbs_codec(ty);
    let mut packed = vec![0u8; codec.packed_bytes(values.len())];
    let codec_error = |source| ConvertError::Codec { tensor: name.into(), source };
    let chunk = codec.group_size() * CHUNK_GROUPS;
    if threads <= 1 || values.len() <= chunk {
        codec.encode(values, &mut packed, 0).map_err(codec_error)?;
        return Ok((packed, scale));
    }
    // Byte ranges of whole groups; the last chunk takes what remains.
    let chunk_bytes = codec.packed_bytes(chunk);
    let mut jobs: Vec<Job<'_>> = Vec::new();
    let mut rest: &mut [u8] = &mut packed;
    for (i, src) in values.chunks(chunk).enumerate() {
        let take = if src.len() == chunk { chunk_bytes.min(rest.len()) } else { rest.len() };
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(take);
        jobs.push((i * chunk, src, head));
        rest = tail;
    }
    let next = AtomicUsize::new(0);
    let jobs: Vec<Mutex<Job<'_>>> = jobs.into_iter().map(Mutex::new).collect();
    let first_error: Mutex<Option<SbsCodecError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.min(jobs.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let mut job = job.lock().unwrap_or_else(|e| e.into_inner());
                let (start, src, dst) = &mut *job;
                if let Err(e) = codec.encode(src, dst, 0) {
                    // Report positions in the whole tensor, not the chunk.
                    let e = match e {
                        SbsCodecError::OutOfRange { codec, index, value } => {
                            SbsCodecError::OutOfRange { codec, index: index + *start, value }
                        }
                        other => other,
                    };
                    let mut slot = first_error.lock().unwrap_or_else(|e| e.into_inner());
                    slot.get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(codec_error(e));
    }
    Ok((packed, scale))
}
