//! One test per kind of damage the GGUF reader must reject, on small files made by the writer and then patched;
//! plus exhaustive truncation and single-byte-corruption sweeps.

use gemma_io::gguf::{GgmlType, GgufFile, GgufWriter, MetaArray, MetaValue, ValueType};

/// An array value from single values of type `ty`.
fn arr(ty: ValueType, items: Vec<MetaValue>) -> MetaValue {
    MetaValue::Array(MetaArray::from_values(ty, items).expect("items of the element type"))
}

const NAME: &str = "sample-under-test.gguf";

/// Deterministic filler bytes (tensor contents do not matter to the container).
fn filler(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// A small valid file: several metadata kinds and three tensors, the last one leaving trailing padding.
fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetaValue::String("test".into())).unwrap();
    w.add_metadata("test.flag", MetaValue::Bool(true)).unwrap();
    w.add_metadata("test.text", MetaValue::String("h\u{e9}llo".into())).unwrap();
    w.add_metadata("test.list", arr(ValueType::U32, vec![MetaValue::U32(1), MetaValue::U32(2)])).unwrap();
    w.add_metadata("test.dupA", MetaValue::U8(1)).unwrap();
    w.add_metadata("test.dupB", MetaValue::U8(2)).unwrap();
    // Q8_0: 2 rows of 64 elements = 2 * 2 blocks * 34 bytes = 136 bytes, padded to 160.
    w.add_tensor("first.weight", &[64, 2], GgmlType::Q8_0, filler(136, 1)).unwrap();
    w.add_tensor("second.weight", &[8], GgmlType::F32, filler(32, 2)).unwrap();
    w.add_tensor("third.weight", &[3], GgmlType::F16, filler(6, 3)).unwrap();
    w
}

fn sample() -> Vec<u8> {
    sample_writer().to_bytes()
}

/// Position of the only occurrence of `needle`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> =
        haystack.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "marker {:?} should occur exactly once", String::from_utf8_lossy(needle));
    hits[0]
}

/// Byte positions of one tensor-table entry, found by its (unique) name.
struct InfoAt {
    n_dims: usize,
    dims: usize,
    type_id: usize,
    offset: usize,
}

fn info_at(bytes: &[u8], name: &str, n_dims: usize) -> InfoAt {
    let name_start = find(bytes, name.as_bytes());
    let n_dims_at = name_start + name.len();
    let dims = n_dims_at + 4;
    let type_id = dims + 8 * n_dims;
    InfoAt { n_dims: n_dims_at, dims, type_id, offset: type_id + 4 }
}

/// Position of a scalar metadata value, found by its key.
fn value_at(bytes: &[u8], key: &str) -> usize {
    find(bytes, key.as_bytes()) + key.len() + 4
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Parses `bytes`, expects an error, checks that its message names the file and contains every `parts`.
fn expect_error(bytes: Vec<u8>, parts: &[&str]) -> String {
    let msg = match GgufFile::from_bytes(bytes, NAME) {
        Ok(f) => panic!("damaged file parsed: {f:?}"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains(NAME), "message does not name the file: {msg}");
    for part in parts {
        assert!(msg.contains(part), "message lacks {part:?}: {msg}");
    }
    msg
}

#[test]
fn sample_is_valid() {
    let f = GgufFile::from_bytes(sample(), NAME).unwrap();
    assert_eq!(f.tensors().len(), 3);
    assert_eq!(f.get("test.text").and_then(|v| v.as_str()), Some("h\u{e9}llo"));
    assert_eq!(f.tensor("first.weight").unwrap().n_bytes, 136);
    assert_eq!(f.tensor("second.weight").unwrap().offset, 160);
    assert_eq!(f.tensor("third.weight").unwrap().offset, 192);
}

#[test]
fn bad_magic() {
    let mut b = sample();
    b[..4].copy_from_slice(b"GGML");
    expect_error(b, &["not a GGUF file (it starts with \"GGML\", expected \"GGUF\")"]);
    expect_error(Vec::new(), &["truncated", "magic (at byte 0): 4 bytes needed", "ends at byte 0"]);
}

#[test]
fn unknown_version() {
    for version in [0u32, 1, 4, 99] {
        let mut b = sample();
        put_u32(&mut b, 4, version);
        expect_error(b, &[&format!("unsupported GGUF version {version} ")]);
    }
    // Version 3 as a big-endian file stores it.
    let mut b = sample();
    put_u32(&mut b, 4, 3u32.swap_bytes());
    expect_error(b, &["unsupported GGUF version 50331648", "big-endian"]);
}

#[test]
fn truncated_header() {
    let b = sample();
    expect_error(b[..6].to_vec(), &["truncated", "version (at byte 4)"]);
    expect_error(b[..10].to_vec(), &["truncated", "tensor count (at byte 8): 8 bytes needed", "ends at byte 10"]);
    expect_error(b[..20].to_vec(), &["truncated", "metadata count (at byte 16)"]);
}

#[test]
fn truncated_metadata() {
    let b = sample();
    // Inside the string value of test.text: its length is read, its bytes are cut.
    let cut = value_at(&b, "test.text") + 8 + 2;
    expect_error(b[..cut].to_vec(), &["truncated", "value of metadata 'test.text'", "6 bytes needed"]);
    // Inside the key of the fourth entry.
    let cut = find(&b, b"test.list") + 3;
    expect_error(b[..cut].to_vec(), &["truncated", "key of metadata entry 3"]);
    // Inside the array elements.
    let cut = value_at(&b, "test.list") + 12 + 5;
    expect_error(b[..cut].to_vec(), &["truncated", "2 elements of metadata 'test.list'", "8 bytes needed"]);
}

#[test]
fn truncated_tensor_table() {
    let b = sample();
    let second = info_at(&b, "second.weight", 1);
    expect_error(b[..second.n_dims - 3].to_vec(), &["truncated", "name of tensor 1"]);
    expect_error(b[..second.dims + 4].to_vec(), &["truncated", "dimension 0 of tensor 'second.weight'"]);
    expect_error(b[..second.offset + 1].to_vec(), &["truncated", "offset of tensor 'second.weight'"]);
    let third = info_at(&b, "third.weight", 1);
    expect_error(b[..third.type_id].to_vec(), &["truncated", "type of tensor 'third.weight'"]);
    // Table complete, but the padding before the data is missing.
    let table_end = third.offset + 8;
    assert_ne!(table_end % 32, 0, "the sample's table must need padding for this case");
    expect_error(b[..table_end].to_vec(), &["truncated", "padding before the tensor data"]);
}

#[test]
fn truncated_data() {
    let b = sample();
    let f = GgufFile::from_bytes(b.clone(), NAME).unwrap();
    let data = f.data_offset() as usize;
    expect_error(b[..data].to_vec(), &["truncated", "tensor 'first.weight'", "runs past the end of the file"]);
    expect_error(b[..data + 100].to_vec(), &["truncated", "tensor 'first.weight' data (bytes"]);
    let third_end = data + 192 + 6;
    expect_error(b[..third_end - 1].to_vec(), &["truncated", "tensor 'third.weight'", &format!("{}", third_end - 1)]);
    // Only the padding after the last tensor is missing: the data is all there, as llama.cpp's mmap loader accepts.
    let f = GgufFile::from_bytes(b[..third_end].to_vec(), NAME).unwrap();
    assert_eq!(f.tensor_bytes("third.weight").unwrap(), &filler(6, 3)[..]);
}

#[test]
fn tensor_past_the_end() {
    // The last tensor claims more rows than the file holds; the table is otherwise consistent.
    let mut b = sample();
    let third = info_at(&b, "third.weight", 1);
    put_u64(&mut b, third.dims, 1000);
    expect_error(b, &["tensor 'third.weight' data (bytes", "runs past the end of the file"]);
}

#[test]
fn overflowing_dims_product() {
    let mut b = sample();
    let first = info_at(&b, "first.weight", 2);
    put_u64(&mut b, first.dims + 8, 1 << 62);
    expect_error(b, &["tensor 'first.weight' shape [64, 4611686018427387904] overflows"]);
    // A dimension that is negative as ggml's int64.
    let mut b = sample();
    put_u64(&mut b, first.dims + 8, u64::MAX - 1);
    expect_error(b, &["tensor 'first.weight' dimension 1 is 18446744073709551614"]);
    // An empty tensor (row length 0) whose other dims still multiply past i64::MAX: its row count would
    // overflow, so both the writer and the reader refuse it.
    let mut w = GgufWriter::new();
    let err = w.add_tensor("cube", &[0, 1 << 40, 1 << 40], GgmlType::F32, Vec::new()).unwrap_err().to_string();
    assert!(err.contains("overflows"), "{err}");
    w.add_tensor("cube", &[32, 1, 1], GgmlType::F32, vec![0; 128]).unwrap();
    let mut b = w.to_bytes();
    let cube = info_at(&b, "cube", 3);
    put_u64(&mut b, cube.dims, 0);
    put_u64(&mut b, cube.dims + 8, 1 << 40);
    put_u64(&mut b, cube.dims + 16, 1 << 40);
    expect_error(b, &["tensor 'cube' shape [0, 1099511627776, 1099511627776] overflows"]);
}

#[test]
fn too_many_or_no_dims_and_bad_row_length() {
    let b = sample();
    let first = info_at(&b, "first.weight", 2);
    for n in [0u32, 5, u32::MAX] {
        let mut d = b.clone();
        put_u32(&mut d, first.n_dims, n);
        expect_error(d, &[&format!("tensor 'first.weight' has {n} dimensions (1 to 4 allowed)")]);
    }
    let mut d = b.clone();
    put_u64(&mut d, first.dims, 48);
    expect_error(d, &["tensor 'first.weight' row length 48 is not a multiple of the q8_0 block size 32"]);
}

#[test]
fn unknown_tensor_type() {
    let mut b = sample();
    let second = info_at(&b, "second.weight", 1);
    put_u32(&mut b, second.type_id, 99);
    expect_error(b, &["tensor 'second.weight' has unknown type id 99"]);
}

#[test]
fn misaligned_offset() {
    let mut b = sample();
    let second = info_at(&b, "second.weight", 1);
    assert_eq!(get_u64(&b, second.offset), 160);
    put_u64(&mut b, second.offset, 161);
    expect_error(b, &["tensor 'second.weight' offset 161 is not a multiple of the alignment 32"]);
}

#[test]
fn non_contiguous_offsets() {
    let b = sample();
    let second = info_at(&b, "second.weight", 1);
    // A gap, an overlap, and a tensor whose type was changed to one of another size (Q8_0 -> Q4_0 shrinks the
    // first tensor, so the second no longer follows it).
    let mut gap = b.clone();
    put_u64(&mut gap, second.offset, 192);
    expect_error(gap, &["tensor 'second.weight' (tensor 1) has data offset 192, expected 160", "in order"]);
    let mut overlap = b.clone();
    put_u64(&mut overlap, second.offset, 0);
    expect_error(overlap, &["tensor 'second.weight' (tensor 1) has data offset 0, expected 160"]);
    let mut retyped = b.clone();
    let first = info_at(&b, "first.weight", 2);
    put_u32(&mut retyped, first.type_id, GgmlType::Q4_0.id());
    expect_error(retyped, &["tensor 'second.weight' (tensor 1) has data offset 160, expected 96"]);
}

#[test]
fn bad_alignment_value() {
    let b = sample_writer().alignment(64).unwrap().to_bytes();
    assert_eq!(GgufFile::from_bytes(b.clone(), NAME).unwrap().alignment(), 64);
    let at = value_at(&b, "general.alignment");
    for bad in [0u32, 48, 3] {
        let mut d = b.clone();
        put_u32(&mut d, at, bad);
        expect_error(d, &[&format!("general.alignment must be a power-of-two u32, found u32 {bad}")]);
    }
    // Right value, wrong type (i32 instead of u32).
    let mut d = b.clone();
    put_u32(&mut d, at - 4, ValueType::I32.id());
    expect_error(d, &["general.alignment must be a power-of-two u32, found i32 64"]);
}

#[test]
fn invalid_bool() {
    let mut b = sample();
    let at = value_at(&b, "test.flag");
    assert_eq!(b[at], 1);
    b[at] = 2;
    expect_error(b, &["metadata 'test.flag': bool byte 2", "neither 0 nor 1"]);
}

#[test]
fn invalid_utf8() {
    let mut b = sample();
    let at = value_at(&b, "test.text") + 8;
    b[at] = 0xFF;
    expect_error(b, &["value of metadata 'test.text'", "is not valid UTF-8"]);
    let mut b = sample();
    let at = find(&b, b"test.flag");
    b[at + 1] = 0xC3; // a lead byte followed by ASCII
    expect_error(b, &["key of metadata entry 1", "is not valid UTF-8"]);
    let mut b = sample();
    let at = find(&b, b"second.weight");
    b[at] = 0x80;
    expect_error(b, &["name of tensor 1", "is not valid UTF-8"]);
}

#[test]
fn duplicate_key_and_tensor() {
    let mut b = sample();
    let at = find(&b, b"test.dupB");
    b[at + 8] = b'A';
    expect_error(b, &["duplicate metadata key 'test.dupA' (entry 5"]);
    let mut b = sample();
    let at = find(&b, b"third.weight");
    b[at..at + 5].copy_from_slice(b"first");
    expect_error(b, &["duplicate tensor name 'first.weight' (tensor 2"]);
}

#[test]
fn empty_key() {
    let mut b = sample();
    let at = find(&b, b"general.architecture") - 8;
    put_u64(&mut b, at, 0);
    expect_error(b, &["metadata entry 0 (at byte 24) has an empty key"]);
}

#[test]
fn nested_array_depth() {
    // Four levels is the limit and parses; the innermost level holds 12 bytes that read as an empty array header
    // (element type u8, count 0), so retyping it to "one array" adds a fifth level without changing any size.
    let nested = |inner: MetaValue| arr(ValueType::Array, vec![inner]);
    let innermost = arr(ValueType::U8, vec![MetaValue::U8(0); 12]);
    let value = nested(nested(nested(innermost)));
    let mut w = sample_writer();
    w.add_metadata("test.nested", value.clone()).unwrap();
    let b = w.to_bytes();
    let f = GgufFile::from_bytes(b.clone(), NAME).unwrap();
    assert_eq!(f.get("test.nested"), Some(&value));

    let mut w = sample_writer();
    let err = w.add_metadata("test.deeper", nested(value.clone())).unwrap_err().to_string();
    assert!(err.contains("arrays nested more than 4 deep"), "{err}");

    let mut d = b.clone();
    // key, type (array), then three levels of (element type array, count 1), then the innermost header.
    let innermost_at = value_at(&b, "test.nested") + 3 * 12;
    assert_eq!(u32::from_le_bytes(d[innermost_at..innermost_at + 4].try_into().unwrap()), ValueType::U8.id());
    put_u32(&mut d, innermost_at, ValueType::Array.id());
    put_u64(&mut d, innermost_at + 4, 1);
    expect_error(d, &["metadata 'test.nested': arrays nested more than 4 deep"]);
}

#[test]
fn bad_value_type() {
    let mut b = sample();
    let at = value_at(&b, "test.flag") - 4;
    put_u32(&mut b, at, 13);
    expect_error(b, &["type of metadata 'test.flag'", "unknown value type id 13"]);
    let mut b = sample();
    let at = value_at(&b, "test.list");
    put_u32(&mut b, at, 0x8000_0000);
    expect_error(b, &["element type of metadata 'test.list'", "unknown value type id 2147483648"]);
}

#[test]
fn counts_that_cannot_fit() {
    let b = sample();
    let mut d = b.clone();
    put_u64(&mut d, 8, 1 << 40);
    expect_error(d, &["truncated or damaged: 1099511627776 tensor infos (at byte 24): 35184372088832 bytes needed"]);
    let mut d = b.clone();
    put_u64(&mut d, 16, u64::MAX);
    expect_error(d, &["18446744073709551615 metadata entries (at byte 24): 18446744073709551615 bytes needed"]);
    let mut d = b.clone();
    put_u64(&mut d, value_at(&b, "test.list") + 4, 1 << 20);
    expect_error(d, &["truncated or damaged: 1048576 elements of metadata 'test.list'", "4194304 bytes needed"]);
    let mut d = b.clone();
    put_u64(&mut d, value_at(&b, "test.list") + 4, 1 << 40);
    expect_error(d, &["metadata 'test.list': array of 1099511627776 elements is longer than the limit"]);
    // A string length far beyond the file.
    let mut d = b.clone();
    put_u64(&mut d, value_at(&b, "test.text"), u64::MAX);
    expect_error(d, &["truncated or damaged", "value of metadata 'test.text'", "18446744073709551615 bytes needed"]);
}

/// Everything a caller may do with a parsed file, to be sure none of it panics on what the parser accepted.
fn exercise(f: &GgufFile) {
    for t in f.tensors() {
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        let _ = (t.row_len(), t.n_rows());
    }
    for (k, v) in f.metadata() {
        assert_eq!(f.get(k), Some(v));
        let _ = v.to_string();
    }
}

#[test]
fn every_truncation_is_an_error() {
    let b = sample();
    let f = GgufFile::from_bytes(b.clone(), NAME).unwrap();
    let last = f.tensors().last().unwrap();
    let data_end = (f.data_offset() + last.offset + last.n_bytes) as usize;
    for n in 0..b.len() {
        match GgufFile::from_bytes(b[..n].to_vec(), NAME) {
            Err(e) => assert!(e.to_string().contains(NAME), "{e}"),
            Ok(f) => {
                assert!(n >= data_end, "truncation to {n} bytes (data ends at {data_end}) parsed");
                exercise(&f);
            }
        }
    }
}

#[test]
fn every_single_byte_corruption_parses_or_errors() {
    let b = sample();
    let table_start = find(&b, b"first.weight") - 8;
    // The table proper, without the padding that follows it.
    let table_end = info_at(&b, "third.weight", 1).offset + 8;
    let mut detected = 0;
    for i in 0..b.len() {
        let mut d = b.clone();
        d[i] ^= 0xFF;
        match GgufFile::from_bytes(d, NAME) {
            Err(e) => {
                assert!(e.to_string().contains(NAME), "{e}");
                detected += 1;
            }
            Ok(f) => {
                // Damage to the fixed header or the tensor table must always be caught: every field there is
                // either structural or constrained by the packing of the tensor data.
                let header = i < 24;
                let table = (table_start..table_end).contains(&i);
                assert!(!header && !table, "corrupting byte {i} went unnoticed");
                exercise(&f);
            }
        }
    }
    // Most bytes are structure; only values, padding and tensor data can change without notice.
    assert!(detected > b.len() / 3, "only {detected} of {} corruptions detected", b.len());
}
