//! The writer's files parse back to exactly what was written, for every value type, both versions, several
//! alignments and tensor types; and the writer refuses what the reader would reject.

use gemma_io::gguf::{GgmlType, GgufFile, GgufWriter, MetaArray, MetaValue, ValueType};

/// An array value from single values of type `ty`.
fn arr(ty: ValueType, items: Vec<MetaValue>) -> MetaValue {
    MetaValue::Array(MetaArray::from_values(ty, items).expect("items of the element type"))
}

/// A small deterministic generator, so tensor contents differ from tensor to tensor without a rand dependency.
struct Lcg(u64);

impl Lcg {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (self.0 >> 56) as u8
            })
            .collect()
    }
}

/// One metadata entry of every scalar type (including extremes), strings, arrays of every type, empty and
/// nested arrays.
fn all_values() -> Vec<(String, MetaValue)> {
    use MetaValue as V;
    let mut v: Vec<(&str, MetaValue)> = vec![
        ("t.u8", V::U8(u8::MAX)),
        ("t.i8", V::I8(i8::MIN)),
        ("t.u16", V::U16(0xBEEF)),
        ("t.i16", V::I16(-12345)),
        ("t.u32", V::U32(u32::MAX)),
        ("t.i32", V::I32(i32::MIN)),
        ("t.f32", V::F32(-1.5e-7)),
        ("t.f32.inf", V::F32(f32::INFINITY)),
        ("t.bool.true", V::Bool(true)),
        ("t.bool.false", V::Bool(false)),
        ("t.string", V::String("Gemma \u{2014} \u{1F600} <start_of_turn>".into())),
        ("t.string.empty", V::String(String::new())),
        ("t.u64", V::U64(u64::MAX)),
        ("t.i64", V::I64(i64::MIN)),
        ("t.f64", V::F64(std::f64::consts::PI)),
        ("t.f64.subnormal", V::F64(f64::MIN_POSITIVE / 4.0)),
    ];
    let scalars: Vec<MetaValue> = v.iter().map(|(_, x)| x.clone()).collect();
    // An array of each scalar type with three items, and an empty one of each.
    let mut arrays = Vec::new();
    for x in &scalars {
        let ty = x.value_type();
        let key = format!("t.array.{}", ty.name());
        if arrays.iter().any(|(k, _): &(String, MetaValue)| *k == key) {
            continue;
        }
        let items: Vec<MetaValue> = scalars.iter().filter(|s| s.value_type() == ty).cloned().cycle().take(3).collect();
        arrays.push((key, arr(ty, items)));
        arrays.push((format!("t.array.{}.empty", ty.name()), arr(ty, Vec::new())));
    }
    v.push(("t.array.of.arrays.empty", arr(ValueType::Array, Vec::new())));
    let mut out: Vec<(String, MetaValue)> = v.into_iter().map(|(k, x)| (k.to_string(), x)).collect();
    out.extend(arrays);
    // Nested arrays: inner arrays of different element types, an empty inner array, and the deepest nesting.
    out.push((
        "t.nested".into(),
        arr(
            ValueType::Array,
            vec![
                arr(ValueType::String, vec![V::String("a".into()), V::String("bc".into())]),
                arr(ValueType::I16, vec![V::I16(-1)]),
                arr(ValueType::F64, Vec::new()),
            ],
        ),
    ));
    let deepest = arr(
        ValueType::Array,
        vec![arr(
            ValueType::Array,
            vec![arr(ValueType::Array, vec![arr(ValueType::Bool, vec![V::Bool(true), V::Bool(false)])])],
        )],
    );
    out.push(("t.nested.deepest".into(), deepest));
    out
}

/// Tensors of several types and ranks (1 to 4 dims, and an empty one).
fn all_tensors(rng: &mut Lcg) -> Vec<(String, Vec<u64>, GgmlType, Vec<u8>)> {
    let shapes: &[(GgmlType, &[u64])] = &[
        (GgmlType::F32, &[7]),
        (GgmlType::F16, &[5, 3]),
        (GgmlType::BF16, &[4, 2, 2]),
        (GgmlType::Q4_0, &[64, 3]),
        (GgmlType::Q4_1, &[32, 1, 1, 2]),
        (GgmlType::Q5_0, &[96, 2]),
        (GgmlType::Q8_0, &[32, 5]),
        (GgmlType::Q4K, &[256, 2]),
        (GgmlType::Q6K, &[512]),
        (GgmlType::Q8K, &[256, 1]),
        (GgmlType::I32, &[3]),
        (GgmlType::I8, &[1]),
        (GgmlType::F64, &[2, 2]),
        (GgmlType::F32, &[16, 0]),
    ];
    shapes
        .iter()
        .enumerate()
        .map(|(i, (ty, dims))| {
            let n: u64 = dims.iter().product();
            let bytes = n as usize / ty.block_size() * ty.type_size();
            (format!("blk.{i}.{}", ty.name()), dims.to_vec(), *ty, rng.bytes(bytes))
        })
        .collect()
}

#[test]
fn every_value_type_version_and_alignment_round_trips() {
    let mut rng = Lcg(7);
    for version in [2u32, 3] {
        for alignment in [32u32, 64, 256, 8192] {
            let mut w = GgufWriter::new().version(version).unwrap().alignment(alignment).unwrap();
            let values = all_values();
            for (k, v) in &values {
                w.add_metadata(k.as_str(), v.clone()).unwrap();
            }
            let tensors = all_tensors(&mut rng);
            for (name, dims, ty, data) in &tensors {
                w.add_tensor(name.as_str(), dims, *ty, data.clone()).unwrap();
            }
            let bytes = w.to_bytes();
            let label = format!("v{version}-a{alignment}.gguf");
            let f = GgufFile::from_bytes(bytes.clone(), &label).unwrap();

            assert_eq!(f.version(), version);
            assert_eq!(f.alignment(), alignment as u64);
            assert_eq!(f.data_offset() % alignment as u64, 0);
            assert_eq!(f.metadata(), w.metadata(), "{label}");
            // general.alignment is recorded (first, as it was set first) exactly when it is not the default.
            let mut expected: Vec<(String, MetaValue)> = values.clone();
            if alignment != 32 {
                expected.insert(0, ("general.alignment".into(), MetaValue::U32(alignment)));
            }
            assert_eq!(f.metadata(), &expected[..], "{label}");

            assert_eq!(f.tensors().len(), tensors.len());
            let mut end = 0;
            for (t, (name, dims, ty, data)) in f.tensors().iter().zip(&tensors) {
                assert_eq!((&t.name, &t.dims, t.ggml_type), (name, dims, *ty), "{label}");
                assert_eq!(t.n_bytes, data.len() as u64);
                assert_eq!(t.n_elements, dims.iter().product::<u64>());
                assert_eq!(t.offset % alignment as u64, 0);
                assert_eq!(f.tensor_data(t), &data[..], "{label}: {name}");
                assert_eq!(f.tensor_bytes(name), Some(&data[..]));
                end = f.data_offset() + t.offset + t.n_bytes;
            }
            // The file ends with the last tensor padded to the alignment, as llama.cpp writes it.
            assert_eq!(bytes.len() as u64, end.div_ceil(alignment as u64) * alignment as u64);

            // write_to produces the same bytes as to_bytes.
            let mut streamed = Vec::new();
            w.write_to(&mut streamed).unwrap();
            assert_eq!(streamed, bytes);
        }
    }
}

#[test]
fn metadata_only_and_empty_files_round_trip() {
    let empty = GgufWriter::new().to_bytes();
    assert_eq!(empty.len(), 32, "24-byte header padded to the alignment");
    let f = GgufFile::from_bytes(empty, "empty.gguf").unwrap();
    assert!(f.metadata().is_empty() && f.tensors().is_empty());

    let mut w = GgufWriter::new().version(2).unwrap();
    w.add_metadata("general.name", MetaValue::String("only metadata".into())).unwrap();
    let f = GgufFile::from_bytes(w.to_bytes(), "meta.gguf").unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.get("general.name").and_then(|v| v.as_str()), Some("only metadata"));
}

#[test]
fn alignment_via_metadata_key_and_reset() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", MetaValue::U32(128)).unwrap();
    let f = GgufFile::from_bytes(w.to_bytes(), "a128.gguf").unwrap();
    assert_eq!(f.alignment(), 128);
    // Back to the default: the entry disappears again.
    let w = w.alignment(32).unwrap();
    assert!(w.metadata().is_empty());
    let f = GgufFile::from_bytes(w.to_bytes(), "a32.gguf").unwrap();
    assert_eq!(f.alignment(), 32);
    assert!(f.get("general.alignment").is_none());
}

#[test]
fn write_file_replaces_atomically_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata("general.name", MetaValue::String("first".into())).unwrap();
    w.add_tensor("x", &[4], GgmlType::F32, vec![1; 16]).unwrap();
    w.write_file(&path).unwrap();
    std::fs::write(dir.path().join("unrelated.txt"), b"keep me").unwrap();

    let mut w2 = GgufWriter::new().alignment(64).unwrap();
    w2.add_metadata("general.name", MetaValue::String("second".into())).unwrap();
    w2.add_tensor("y", &[8], GgmlType::F16, vec![2; 16]).unwrap();
    w2.write_file(&path).unwrap();

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get("general.name").and_then(|v| v.as_str()), Some("second"));
    assert_eq!(f.tensor_bytes("y"), Some(&[2u8; 16][..]));
    assert_eq!(std::fs::read(&path).unwrap(), w2.to_bytes());
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["model.gguf", "unrelated.txt"]);

    // A folder that does not exist: an error naming the target, and nothing created.
    let missing = dir.path().join("no-such-dir").join("m.gguf");
    let err = w2.write_file(&missing).unwrap_err().to_string();
    assert!(err.contains("no-such-dir/m.gguf") && err.contains("cannot write file"), "{err}");
    assert!(!missing.exists());
}

#[test]
fn writer_refuses_what_the_reader_would_reject() {
    let refused = |r: Result<(), gemma_io::GgufError>, part: &str| {
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("cannot write GGUF") && msg.contains(part), "{msg}");
    };
    for bad in [0, 1, 4] {
        let msg = GgufWriter::new().version(bad).err().unwrap().to_string();
        assert!(msg.contains(&format!("version {bad}")), "{msg}");
    }
    for bad in [0, 48, 100] {
        let msg = GgufWriter::new().alignment(bad).err().unwrap().to_string();
        assert!(msg.contains("not a power of two"), "{msg}");
    }
    let mut w = GgufWriter::new();
    refused(w.add_metadata("", MetaValue::U8(0)), "empty metadata key");
    w.add_metadata("k", MetaValue::U8(0)).unwrap();
    refused(w.add_metadata("k", MetaValue::U8(1)), "duplicate metadata key 'k'");
    refused(w.add_metadata("general.alignment", MetaValue::U64(64)), "must be a u32");
    refused(w.add_metadata("general.alignment", MetaValue::U32(96)), "not a power of two");
    // Arrays are stored by element type, so a mixed one cannot be built, let alone written.
    assert_eq!(MetaArray::from_values(ValueType::U32, [MetaValue::U32(1), MetaValue::I32(2)]), Err(MetaValue::I32(2)));
    assert_eq!(MetaArray::from_values(ValueType::U8, [MetaValue::Bool(true)]), Err(MetaValue::Bool(true)));

    w.add_tensor("t", &[32], GgmlType::Q8_0, vec![0; 34]).unwrap();
    refused(w.add_tensor("t", &[32], GgmlType::Q8_0, vec![0; 34]), "duplicate tensor name 't'");
    refused(w.add_tensor("u", &[32], GgmlType::Q8_0, vec![0; 33]), "takes 34 bytes, but 33 were given");
    refused(w.add_tensor("u", &[16], GgmlType::Q8_0, vec![0; 17]), "row length 16 is not a multiple");
    refused(w.add_tensor("u", &[], GgmlType::F32, vec![]), "has 0 dimensions");
    refused(w.add_tensor("u", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4]), "has 5 dimensions");
    refused(w.add_tensor("u", &[1 << 63], GgmlType::I8, vec![]), "beyond ggml's limit");
    refused(w.add_tensor("n".repeat(64), &[1], GgmlType::F32, vec![0; 4]), "longer than ggml's limit of 63");
    // Nothing refused was recorded.
    let f = GgufFile::from_bytes(w.to_bytes(), "refusals.gguf").unwrap();
    assert_eq!(f.metadata().len(), 1);
    assert_eq!(f.tensors().len(), 1);
}
