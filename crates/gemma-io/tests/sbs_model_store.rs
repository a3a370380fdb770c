//! Whole SBS checkpoints: written by `SbsWriter`, read back by `SbsFile` (single-file format), and the pre-2025
//! format gemma.cpp still reads (type-prefixed blob names, `Fscales`, separate tokenizer, no config or toc).

use gemma_io::sbs::blob_store::{encode_blob_store, BlobStore};
use gemma_io::sbs::fields::{bytes_to_words, read_fields};
use gemma_io::sbs::model_store::{CONFIG_KEY, MOCK_TOKENIZER, TOC_KEY, TOKENIZER_KEY};
use gemma_io::sbs::sentencepiece_model::{ModelProto, SentencePiece};
use gemma_io::sbs::{
    Model, ModelConfig, PromptWrapping, SbsError, SbsFile, SbsFormat, SbsOpenOptions, SbsType, SbsWriter, TensorRecord,
};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn tiny_tokenizer() -> Vec<u8> {
    let pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "▁hello"]
        .iter()
        .enumerate()
        .map(|(i, p)| SentencePiece {
            piece: Some(p.to_string()),
            score: Some(-(i as f32)),
            r#type: Some(if i < 4 { 3 } else { 1 }),
        })
        .collect();
    ModelProto { pieces, ..ModelProto::default() }.encode_bytes()
}

#[test]
fn single_file_round_trip() {
    // The weight type is the smallest tensor type (NUQ's 4 bits), as gemma.cpp requires.
    let config = ModelConfig::new(Model::Gemma3_270M, SbsType::NUQ, PromptWrapping::GemmaIt);
    let mut qkv = TensorRecord::new("qkv_ein_0", SbsType::SFP, 1536, 640).unwrap();
    qkv.scale = 1.5;
    let tensors = [
        (qkv, pattern(1536 * 640, 1)),
        (TensorRecord::new("c_final_norm", SbsType::F32, 1, 640).unwrap(), pattern(640 * 4, 2)),
        (TensorRecord::new("pre_att_ns_0", SbsType::BF16, 1, 640).unwrap(), pattern(640 * 2, 3)),
        (TensorRecord::new("linear_w_0", SbsType::NUQ, 640, 2048).unwrap(), pattern(81920 + 655360, 4)),
        (TensorRecord::new("att_ein_0", SbsType::I8, 2560, 256).unwrap(), pattern(5120 * 4 + 655360, 5)),
    ];
    let tokenizer = tiny_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.sbs");
    let mut w = SbsWriter::create(&path).unwrap();
    for (r, d) in &tensors {
        w.add_tensor(r, d).unwrap();
    }
    w.finish(&config, Some(&tokenizer)).unwrap();

    let f = SbsFile::open(&path).unwrap();
    assert_eq!(f.format(), SbsFormat::SingleFile);
    assert_eq!(f.config(), &config);
    // Blob order as gemma.cpp writes it: tensors, then config, tokenizer, toc.
    let keys: Vec<&str> = f.blobs().keys().iter().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["qkv_ein_0", "c_final_norm", "pre_att_ns_0", "linear_w_0", "att_ein_0", CONFIG_KEY, TOKENIZER_KEY, TOC_KEY]
    );
    assert_eq!(f.tensors().len(), tensors.len());
    for (r, d) in &tensors {
        let t = f.tensor(&r.name).unwrap();
        assert_eq!(&t.record, r);
        assert_eq!(f.tensor_data(t), &d[..]);
        assert_eq!(t.range.offset % 256, 0);
    }
    assert_eq!(f.tokenizer_bytes().unwrap(), &tokenizer[..]);
    assert_eq!(f.tokenizer().unwrap().unwrap().pieces.len(), 5);

    // The toc is the records back to back, exactly.
    let toc = bytes_to_words(f.blobs().blob(TOC_KEY).unwrap()).unwrap();
    let mut pos = 0;
    for (r, _) in &tensors {
        let mut back = TensorRecord::default();
        pos = read_fields(&mut back, &toc, pos).unwrap().pos;
        assert_eq!(&back, r);
    }
    assert_eq!(pos, toc.len());
}

#[test]
fn in_memory_writer_and_mock_tokenizer() {
    let config = ModelConfig::new(Model::Gemma3_270M, SbsType::F32, PromptWrapping::GemmaPt);
    let mut w = SbsWriter::in_memory().unwrap();
    w.add_tensor(&TensorRecord::new("c_final_norm", SbsType::F32, 1, 640).unwrap(), &pattern(2560, 9)).unwrap();
    let bytes = w.finish(&config, None).unwrap();
    let f = SbsFile::from_bytes(bytes, "mem.sbs", &SbsOpenOptions::default()).unwrap();
    assert_eq!(f.blobs().blob(TOKENIZER_KEY).unwrap(), MOCK_TOKENIZER);
    assert!(f.tokenizer_bytes().is_none());
    assert_eq!(f.config().wrapping, PromptWrapping::GemmaPt);
}

#[test]
fn writer_enforces_gemma_cpp_invariants() {
    let config = ModelConfig::new(Model::Gemma3_270M, SbsType::SFP, PromptWrapping::GemmaIt);
    let norm = TensorRecord::new("c_final_norm", SbsType::F32, 1, 640).unwrap();
    let mut w = SbsWriter::in_memory().unwrap();
    assert!(matches!(w.add_tensor(&norm, &[0u8; 10]), Err(SbsError::InvalidWrite { .. })), "wrong data length");
    w.add_tensor(&norm, &pattern(2560, 0)).unwrap();
    assert!(matches!(w.add_tensor(&norm, &pattern(2560, 0)), Err(SbsError::InvalidWrite { .. })), "duplicate");
    // config.weight (SFP) is not the smallest tensor type (F32).
    assert!(matches!(w.finish(&config, None), Err(SbsError::InvalidWrite { .. })));
    assert!(TensorRecord::new("a_name_that_is_too_long", SbsType::F32, 1, 1).is_err());
    assert!(TensorRecord::new("x", SbsType::Unknown, 1, 1).is_err());
}

/// A pre-2025 file: type-prefixed names, scales, no config/toc/tokenizer.
fn pre2025_blobs() -> Vec<(String, Vec<u8>)> {
    let mut blobs = Vec::new();
    for layer in 0..4 {
        blobs.push((format!("$linear_w_{layer}"), pattern(640 * 2048, layer as u8)));
    }
    blobs.push(("Bpre_att_ns_17".to_string(), pattern(1280, 7)));
    blobs.push(("Fc_final_norm".to_string(), pattern(2560, 8)));
    let scales: Vec<u8> = [0.5f32, 0.25, 2.0, 4.0].iter().flat_map(|s| s.to_le_bytes()).collect();
    blobs.push(("Fscales".to_string(), scales));
    blobs
}

#[test]
fn reads_pre_2025_files() {
    let blobs = pre2025_blobs();
    let bytes = encode_blob_store(blobs.iter().map(|(k, d)| (k.as_str(), d.as_slice()))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tok_path = dir.path().join("tokenizer.spm");
    std::fs::write(&tok_path, tiny_tokenizer()).unwrap();
    let options = SbsOpenOptions { tokenizer_path: Some(tok_path), pretrained: None };
    let f = SbsFile::from_bytes(bytes.clone(), "old.sbs", &options).unwrap();
    assert_eq!(f.format(), SbsFormat::Pre2025);
    // 18 layers (from the `_17` suffix): Gemma 3 270M; SFP has >= 4 blobs and the fewest bits.
    assert_eq!(f.config().model, Model::Gemma3_270M);
    assert_eq!(f.config().weight, SbsType::SFP);
    assert_eq!(f.config().wrapping, PromptWrapping::GemmaIt);
    assert_eq!(f.tensors().len(), 6);
    let lw = f.tensor("linear_w_2").unwrap();
    assert_eq!((lw.record.rows, lw.record.cols, lw.record.ty), (640, 2048, SbsType::SFP));
    assert_eq!(lw.key, "$linear_w_2");
    assert_eq!(f.tensor_data(lw), &pattern(640 * 2048, 2)[..]);
    // Scales go, in visiting order, to the tensors whose base name takes one (linear_w), not to norms.
    let scales: Vec<f32> = (0..4).map(|i| f.tensor(&format!("linear_w_{i}")).unwrap().record.scale).collect();
    assert_eq!(scales, [0.5, 0.25, 2.0, 4.0]);
    assert_eq!(f.tensor("pre_att_ns_17").unwrap().record.scale, 1.0);
    assert_eq!(f.tokenizer().unwrap().unwrap().pieces.len(), 5);

    // Without a tokenizer file there is none; asking for PT changes the wrapping.
    let f = SbsFile::from_bytes(bytes, "old.sbs", &SbsOpenOptions { tokenizer_path: None, pretrained: Some(true) })
        .unwrap();
    assert!(f.tokenizer_bytes().is_none());
    assert_eq!(f.config().wrapping, PromptWrapping::GemmaPt);
}

#[test]
fn pre_2025_errors() {
    // One scale too many.
    let mut blobs = pre2025_blobs();
    blobs.last_mut().unwrap().1.extend_from_slice(&1.0f32.to_le_bytes());
    let bytes = encode_blob_store(blobs.iter().map(|(k, d)| (k.as_str(), d.as_slice()))).unwrap();
    assert!(matches!(SbsFile::from_bytes(bytes, "x", &SbsOpenOptions::default()), Err(SbsError::BadConfig { .. })));
    // An unknown tensor name.
    let mut blobs = pre2025_blobs();
    blobs.push(("Fno_such_thing".into(), vec![0; 4]));
    let bytes = encode_blob_store(blobs.iter().map(|(k, d)| (k.as_str(), d.as_slice()))).unwrap();
    assert!(matches!(SbsFile::from_bytes(bytes, "x", &SbsOpenOptions::default()), Err(SbsError::BadTensor { .. })));
    // A tensor blob of the wrong size for its shape.
    let mut blobs = pre2025_blobs();
    blobs[0].1.pop();
    let bytes = encode_blob_store(blobs.iter().map(|(k, d)| (k.as_str(), d.as_slice()))).unwrap();
    assert!(matches!(SbsFile::from_bytes(bytes, "x", &SbsOpenOptions::default()), Err(SbsError::BadTensor { .. })));
    // A layer count no model has.
    let bytes = encode_blob_store([("$linear_w_20", &[0u8; 4][..])]).unwrap();
    assert!(matches!(SbsFile::from_bytes(bytes, "x", &SbsOpenOptions::default()), Err(SbsError::BadConfig { .. })));
    // A blob store without any model in it is not a checkpoint.
    let store = BlobStore::from_bytes(encode_blob_store([("a", &b"x"[..])]).unwrap(), "y").unwrap();
    assert!(SbsFile::from_store(store, &SbsOpenOptions::default()).is_err());
}

/// Shapes come from a file's config: extents that do not fit saturate (and `TensorRecord::new` then refuses
/// them) instead of overflowing.
#[test]
fn absurd_extents_saturate_and_are_refused() {
    use gemma_io::sbs::tensor_info::TensorInfo;
    use gemma_io::sbs::{SbsType, TensorRecord};
    let huge = u64::from(u32::MAX);
    let image = TensorInfo { shape: vec![huge, huge, huge, 3], cols_take_extra_dims: true, ..Default::default() };
    assert_eq!(image.extents(), (huge, u64::MAX));
    let stacked = TensorInfo { shape: vec![huge, huge, huge, 8], ..Default::default() };
    assert_eq!(stacked.extents(), (u64::MAX, 8));
    let (rows, cols) = stacked.extents();
    assert!(TensorRecord::new("x", SbsType::F32, rows, cols).is_err());
    let normal = TensorInfo { shape: vec![4, 5, 6], cols_take_extra_dims: true, ..Default::default() };
    assert_eq!(normal.extents(), (4, 30));
}
