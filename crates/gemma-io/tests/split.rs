//! Split models on small files: split by tensors and by size, opened by the first part as one model; merged back;
//! and every way a set of parts can be wrong (missing, foreign, truncated, duplicated, renamed, the wrong part
//! opened) is an error naming the file, never a panic. The real model against llama-gguf-split's bytes is in
//! `gemma-cli/tests/gguf_split.rs`.

use std::path::{Path, PathBuf};

use gemma_io::gguf::split::{merge, split_path, SplitLimit, SplitPlan};
use gemma_io::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue};

fn filler(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Seven tensors of assorted sizes (some not multiples of 32) and a few metadata kinds.
fn model(dir: &Path, seed: u8) -> PathBuf {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetaValue::String("test".into())).unwrap();
    w.add_metadata("test.seed", MetaValue::U8(seed)).unwrap();
    w.add_metadata("test.list", MetaValue::strings(["a", "bc"])).unwrap();
    for i in 0..7u8 {
        let n = 8 + 5 * i as usize;
        // A trailing 1 that ggml drops from the tensor table.
        let dims: Vec<u64> = if i == 3 { vec![n as u64, 1] } else { vec![n as u64] };
        w.add_tensor(format!("t{i}.weight"), &dims, GgmlType::F32, filler(4 * n, seed.wrapping_add(i))).unwrap();
    }
    let path = dir.join(format!("model-{seed}.gguf"));
    w.write_file(&path).unwrap();
    path
}

fn split(file: &GgufFile, limit: SplitLimit, prefix: &Path) -> Vec<PathBuf> {
    SplitPlan::new(file, limit, false).unwrap().write(file, prefix, |_| {}).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The same tensors, shapes (up to trailing 1s) and bytes.
fn assert_same_model(a: &GgufFile, b: &GgufFile) {
    assert_eq!(a.tensors().len(), b.tensors().len());
    for (x, y) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.n_elements, y.n_elements);
        assert_eq!(a.tensor_data(x), b.tensor_data(y), "{}", x.name);
        assert_eq!(a.tensor_bytes(&x.name), b.tensor_bytes(&y.name));
    }
}

#[test]
fn split_parts_open_as_one_model_and_merge_back() {
    let dir = tempfile::tempdir().unwrap();
    let single = GgufFile::open(model(dir.path(), 1)).unwrap();
    let prefix = dir.path().join("by-tensors");
    let parts = split(&single, SplitLimit::Tensors(3), &prefix);
    assert_eq!(parts, (0..3).map(|no| split_path(&prefix, no, 3)).collect::<Vec<_>>());

    let whole = GgufFile::open(&parts[0]).unwrap();
    assert_eq!(whole.parts().len(), 3);
    assert_eq!(whole.parts().iter().map(|p| p.n_tensors).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(whole.file_size(), parts.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum::<u64>());
    assert_eq!(whole.tensor_part("t6.weight"), Some(2));
    assert_same_model(&single, &whole);
    // The first part has all the metadata, then the split keys in the order ggml leaves them.
    let keys: Vec<&str> = whole.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["general.architecture", "test.seed", "test.list", "split.no", "split.tensors.count", "split.count"]
    );
    assert_eq!(whole.get("split.count"), Some(&MetaValue::U16(3)));
    assert_eq!(whole.get("split.tensors.count"), Some(&MetaValue::I32(7)));
    // One part alone.
    let part2 = GgufFile::open_single(&parts[1]).unwrap();
    assert_eq!(part2.tensors().len(), 3);
    assert_eq!(part2.metadata().len(), 3);

    // Merged back: the same model, split.count 0, not taken for a split again.
    let merged_path = dir.path().join("merged.gguf");
    let summary = merge(&parts[0], &merged_path, false).unwrap();
    assert_eq!((summary.parts.len(), summary.n_tensors), (3, 7));
    let merged = GgufFile::open(&merged_path).unwrap();
    assert_eq!(merged.parts().len(), 1);
    assert_eq!(merged.get("split.count"), Some(&MetaValue::U16(0)));
    assert_same_model(&single, &merged);
    // The merged file exists now: llama-gguf-split refuses to overwrite it, and so do we.
    let err = merge(&parts[0], &merged_path, true).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");

    // By size: each part's padded tensor bytes within the limit.
    let by_size = split(&single, SplitLimit::Bytes(200), &dir.path().join("by-size"));
    let whole = GgufFile::open(&by_size[0]).unwrap();
    for p in whole.parts() {
        let sum: u64 = whole
            .tensors()
            .iter()
            .filter(|t| p.path == whole.parts()[whole.tensor_part(&t.name).unwrap()].path)
            .map(|t| t.n_bytes.div_ceil(32) * 32)
            .sum();
        assert!(sum <= 200, "{}: {sum}", p.path.display());
    }
    assert_same_model(&single, &whole);
    assert!(files_in(dir.path()).iter().all(|n| !n.ends_with(".partial")), "no temporary files left");
}

#[test]
fn no_tensor_first_split_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let single = GgufFile::open(model(dir.path(), 2)).unwrap();
    let each = SplitPlan::new(&single, SplitLimit::Bytes(64), false).unwrap();
    assert_eq!(each.parts().len(), 7, "every tensor over 64 bytes (padded) but the first in a part of its own");
    let plan = SplitPlan::new(&single, SplitLimit::Tensors(128), true).unwrap();
    assert_eq!(plan.parts().iter().map(|p| p.tensors.len()).collect::<Vec<_>>(), [0, 7]);
    let parts = plan.write(&single, &dir.path().join("meta-first"), |_| {}).unwrap();
    assert_same_model(&single, &GgufFile::open(&parts[0]).unwrap());
    // A first tensor over the size limit would leave the first part empty (later ones get a part each).
    let err = SplitPlan::new(&single, SplitLimit::Bytes(16), false).unwrap_err().to_string();
    assert!(err.contains("over the size limit"), "{err}");
    let err = SplitPlan::new(&single, SplitLimit::Tensors(0), false).unwrap_err().to_string();
    assert!(err.contains("at least 1"), "{err}");
    // Everything in one part: one file, named 00001-of-00001, opened as it is.
    let one = split(&single, SplitLimit::Tensors(100), &dir.path().join("one"));
    assert_eq!(one, [dir.path().join("one-00001-of-00001.gguf")]);
    assert_same_model(&single, &GgufFile::open(&one[0]).unwrap());
}

/// Opening `first` fails, naming `culprit`, with `what` in the message.
fn assert_open_error(first: &Path, culprit: &Path, what: &str) {
    let err = GgufFile::open(first).expect_err("a bad split must not open").to_string();
    assert!(err.contains(&culprit.display().to_string()), "'{err}' should name {}", culprit.display());
    assert!(err.contains(what), "'{err}' should say '{what}'");
}

#[test]
fn bad_splits_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = GgufFile::open(model(dir.path(), 3)).unwrap();
    let b = GgufFile::open(model(dir.path(), 4)).unwrap();
    let fresh = |name: &str, file: &GgufFile, limit| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        split(file, limit, &sub.join("m"))
    };

    // A missing part.
    let parts = fresh("missing", &a, SplitLimit::Tensors(3));
    std::fs::remove_file(&parts[2]).unwrap();
    assert_open_error(&parts[0], &parts[2], "part 3 of 3");

    // A part of the same model split another way, or another part in its place.
    let parts = fresh("foreign", &a, SplitLimit::Tensors(3));
    let other = fresh("other", &a, SplitLimit::Tensors(2));
    std::fs::copy(&other[1], &parts[1]).unwrap(); // part 2 of 4: split.count 4, not 3
    assert_open_error(&parts[0], &parts[1], "split.count is 4, expected 3");
    std::fs::copy(&parts[2], &parts[1]).unwrap(); // part 3 in part 2's place
    assert_open_error(&parts[0], &parts[1], "split.no is 2, expected 1");

    // A tensor in two parts.
    let parts = fresh("dup", &a, SplitLimit::Tensors(3));
    let mut bytes = std::fs::read(&parts[1]).unwrap();
    // Rename t3 to t0 in part 2's table: a tensor in two parts.
    let at = bytes.windows(9).position(|w| w == b"t3.weight").unwrap();
    bytes[at + 1] = b'0';
    std::fs::write(&parts[1], &bytes).unwrap();
    assert_open_error(&parts[0], &parts[1], "tensor 't0.weight' is also in");
    // Another model of the same tensor names split the same way: nothing in the files tells them apart (nor
    // does llama.cpp), and the tensors load from the other model's part.
    let parts_a = fresh("same-shape-a", &a, SplitLimit::Tensors(4));
    let parts_b = fresh("same-shape-b", &b, SplitLimit::Tensors(4));
    std::fs::copy(&parts_b[1], &parts_a[1]).unwrap();
    let mixed = GgufFile::open(&parts_a[0]).unwrap();
    assert_eq!(mixed.tensor_bytes("t6.weight"), b.tensor_bytes("t6.weight"));
    // The first part's split.tensors.count disagrees with the others'.
    let parts = fresh("count", &a, SplitLimit::Tensors(3));
    let mut first = std::fs::read(&parts[0]).unwrap();
    let key = b"split.tensors.count";
    let at = first.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
    first[at] = 8;
    std::fs::write(&parts[0], &first).unwrap();
    assert_open_error(&parts[0], &parts[1], "split.tensors.count is 7, expected 8");

    // A truncated part.
    let parts = fresh("truncated", &a, SplitLimit::Tensors(3));
    let len = std::fs::metadata(&parts[1]).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&parts[1]).unwrap().set_len(len - 40).unwrap();
    assert_open_error(&parts[0], &parts[1], "truncated");

    // The second part opened: point at the first.
    let parts = fresh("second", &a, SplitLimit::Tensors(3));
    assert_open_error(&parts[1], &parts[1], &format!("open the first part, {}", parts[0].display()));
    // The first part renamed: its siblings cannot be found.
    let renamed = dir.path().join("second").join("renamed.gguf");
    std::fs::rename(&parts[0], &renamed).unwrap();
    assert_open_error(&renamed, &renamed, "PREFIX-00001-of-00003.gguf");
    // Merging needs a split model.
    let err = merge(&dir.path().join("model-3.gguf"), &dir.path().join("out.gguf"), false).unwrap_err().to_string();
    assert!(err.contains("not a split model"), "{err}");
    assert!(!dir.path().join("out.gguf").exists());
}

/// Every truncation and every single-byte change of a later part's header: an error or a model, never a panic;
/// a truncation into the tensor data is always an error naming that part.
#[test]
fn every_cut_and_byte_flip_of_a_part_is_handled() {
    let dir = tempfile::tempdir().unwrap();
    let single = GgufFile::open(model(dir.path(), 5)).unwrap();
    let parts = split(&single, SplitLimit::Tensors(4), &dir.path().join("m"));
    let original = std::fs::read(&parts[1]).unwrap();
    let alone = GgufFile::open_single(&parts[1]).unwrap();
    let data_start = alone.data_offset() as usize;
    let last = alone.tensors().last().unwrap();
    // The padding after the last tensor is not required.
    let data_end = data_start + (last.offset + last.n_bytes) as usize;
    assert!(data_end < original.len());
    for len in 0..data_end {
        std::fs::write(&parts[1], &original[..len]).unwrap();
        let err = GgufFile::open(&parts[0]).expect_err("a cut part").to_string();
        assert!(err.contains(&parts[1].display().to_string()), "cut at {len}: {err}");
    }
    // Flips in the header (the data bytes are opaque).
    for at in 0..data_start {
        let mut bytes = original.clone();
        bytes[at] ^= 0x5A;
        std::fs::write(&parts[1], &bytes).unwrap();
        if let Ok(file) = GgufFile::open(&parts[0]) {
            for t in file.tensors() {
                assert_eq!(file.tensor_data(t).len() as u64, t.n_bytes);
            }
        }
    }
}
