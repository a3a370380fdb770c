//! A model file's bytes: memory-mapped (zero-copy, pages loaded on first touch) or held in memory.

use std::path::Path;

pub(crate) enum FileBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl FileBytes {
    /// Maps the file at `path` read-only (an empty file is held as no bytes: an empty mapping is an error).
    pub(crate) fn open(path: &Path) -> std::io::Result<FileBytes> {
        let file = std::fs::File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(FileBytes::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only and private to this process; a concurrent writer truncating the file
        // could still fault, which is the documented hazard of every mmap-based model loader.
        let map = unsafe { memmap2::Mmap::map(&file) }?;
        // Page-sized mappings, so that releasing some pages (`release_pages`) never takes a neighbour's with
        // them, nor does a fault on a neighbour map released pages back as part of a huge page. A refusal only
        // costs that precision.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::NoHugePage);
        Ok(FileBytes::Mapped(map))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }

    /// Maps every page of the file into this process now (`MADV_POPULATE_READ`; on kernels without it,
    /// `MADV_WILLNEED` reads ahead), so that the first pass over the weights does not take a page fault every
    /// 4 KiB. A no-op for bytes held in memory; a refusal from the kernel only means faults happen later.
    pub(crate) fn prefetch(&self) {
        let FileBytes::Mapped(map) = self else { return };
        #[cfg(target_os = "linux")]
        if map.advise(memmap2::Advice::PopulateRead).is_ok() {
            return;
        }
        let _ = map.advise(memmap2::Advice::WillNeed);
    }

    /// Drops the file pages that lie wholly inside `bytes` (a slice of these bytes) from this process's
    /// resident set: touched again, they are read back from the file. A no-op for bytes held in memory and for
    /// slices outside the mapping; a refusal from the kernel is ignored (it only means the pages stay).
    pub(crate) fn release_pages(&self, bytes: &[u8]) {
        const PAGE: usize = 4096;
        let FileBytes::Mapped(map) = self else { return };
        let (base, start) = (map.as_ptr() as usize, bytes.as_ptr() as usize);
        if start < base || start + bytes.len() > base + map.len() {
            return;
        }
        let lo = (start - base).div_ceil(PAGE) * PAGE;
        let hi = (start - base + bytes.len()) / PAGE * PAGE;
        if hi > lo {
            // SAFETY: the mapping is read-only and file-backed, so discarding its pages loses nothing: the
            // next access reads the same bytes from the file. No `&mut` to the mapping exists.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo) };
        }
    }
}
