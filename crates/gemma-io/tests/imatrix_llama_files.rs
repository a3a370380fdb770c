//! The writers against llama-imatrix's own files (`testdata/imatrix`, one run over `lighthouses.txt` with
//! `-c 128`, written once as GGUF and once as `.dat`): reading its GGUF file and writing it again gives its
//! bytes, and its legacy file is the legacy form of the same sums.

use std::path::PathBuf;

use gemma_io::imatrix::{Imatrix, ImatrixFormat};

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/imatrix").join(name)
}

#[test]
fn gguf_writer_gives_llama_imatrix_bytes() {
    let bytes = std::fs::read(testdata("gemma3-270m-lighthouses.imatrix.gguf")).expect("testdata");
    let m = Imatrix::from_bytes(bytes.clone(), "llama.gguf").expect("reads");
    assert!(m.has_metadata);
    assert_eq!((m.chunk_count, m.chunk_size, m.entries.len()), (5, 128, 126));
    let ours = m.to_gguf().expect("writer").into_bytes();
    assert_eq!(ours.len(), bytes.len());
    assert!(ours == bytes, "the rewritten GGUF imatrix differs from llama-imatrix's bytes");
}

#[test]
fn legacy_form_gives_llama_imatrix_dat_bytes() {
    let gguf = Imatrix::open(testdata("gemma3-270m-lighthouses.imatrix.gguf")).expect("gguf");
    let dat = std::fs::read(testdata("gemma3-270m-lighthouses.imatrix.dat")).expect("dat");
    let ours = gguf.to_legacy().to_legacy_bytes();
    assert_eq!(ours.len(), dat.len());
    assert!(ours == dat, "the legacy form of llama-imatrix's sums differs from its .dat bytes");
}

#[test]
fn written_files_read_back_and_leave_no_temp_file() {
    let m = Imatrix::open(testdata("gemma3-270m-lighthouses.imatrix.gguf")).expect("gguf");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, format) in [("out.gguf", ImatrixFormat::Gguf), ("out.dat", ImatrixFormat::Legacy)] {
        let path = dir.path().join(name);
        m.write_file(&path, format).expect("writes");
        let back = Imatrix::open(&path).expect("reads back");
        assert_eq!(back.is_legacy, format == ImatrixFormat::Legacy);
        assert_eq!(back.weights().expect("weights").len(), 126);
    }
    let names: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let missing = dir.path().join("no/such/folder/x.gguf");
    assert!(m.write_file(&missing, ImatrixFormat::Gguf).is_err());
}
