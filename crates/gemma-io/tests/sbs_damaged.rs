//! Damaged SBS files: every truncation, and every single-bit flip in the directory, header, config and toc, must
//! give a typed error (or, where the flipped bit is redundant, a file that still reads consistently), never a panic.

use gemma_io::sbs::model_store::{CONFIG_KEY, TOC_KEY};
use gemma_io::sbs::{
    Model, ModelConfig, PromptWrapping, SbsError, SbsFile, SbsOpenOptions, SbsType, SbsWriter, TensorRecord,
};

fn small_file() -> Vec<u8> {
    let config = ModelConfig::new(Model::Gemma3_270M, SbsType::SFP, PromptWrapping::GemmaIt);
    let mut w = SbsWriter::in_memory().unwrap();
    let tensors = [
        TensorRecord::new("c_final_norm", SbsType::F32, 1, 640).unwrap(),
        TensorRecord::new("pre_att_ns_0", SbsType::BF16, 1, 640).unwrap(),
        TensorRecord::new("qkv_ein_0", SbsType::SFP, 6, 64).unwrap(),
    ];
    for (i, r) in tensors.iter().enumerate() {
        let data: Vec<u8> = (0..r.packed_bytes()).map(|j| (j as u8) ^ (i as u8)).collect();
        w.add_tensor(r, &data).unwrap();
    }
    w.finish(&config, Some(b"not parsed when opening")).unwrap()
}

fn open(bytes: Vec<u8>) -> Result<SbsFile, SbsError> {
    SbsFile::from_bytes(bytes, "damaged.sbs", &SbsOpenOptions::default())
}

/// A file that opened despite damage must still be self-consistent.
fn check_consistent(f: &SbsFile) {
    for t in f.tensors() {
        assert_eq!(f.tensor_data(t).len() as u64, t.record.packed_bytes());
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = small_file();
    assert!(open(bytes.clone()).is_ok());
    for len in 0..bytes.len() {
        match open(bytes[..len].to_vec()) {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("damaged.sbs"), "{msg}");
                // a cut file says so, rather than that it is not SBS
                assert!(msg.contains("truncated"), "cut to {len} bytes: {msg}");
            }
            Ok(_) => panic!("truncated to {len} bytes but opened"),
        }
    }
}

#[test]
fn header_and_directory_flips() {
    let bytes = small_file();
    let n = bytes.len();
    let num_blobs = 6;
    let dir_start = n - 16 - 32 * num_blobs;
    let mut errors = 0;
    for at in dir_start..n {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[at] ^= 1 << bit;
            match open(b) {
                Err(_) => errors += 1,
                Ok(f) => {
                    check_consistent(&f);
                    // Harmless flips: a key byte after the key's NUL (ignored, as in gemma.cpp), a renamed
                    // tokenizer key (the tokenizer is optional), or the tokenizer's size growing into its padding
                    // (only its parser can tell).
                    let in_keys = at < dir_start + 16 * num_blobs;
                    let tokenizer_size = dir_start + 16 * num_blobs + 16 * 4 + 8;
                    let in_tokenizer_size = (tokenizer_size..tokenizer_size + 8).contains(&at);
                    assert!(
                        in_keys || in_tokenizer_size,
                        "flip at {at} bit {bit} (directory offset {}) went unnoticed",
                        at - dir_start
                    );
                }
            }
        }
    }
    assert!(errors > 0);

    // Specific fields give specific errors.
    let flip = |at: usize, mask: u8| {
        let mut b = bytes.clone();
        b[at] ^= mask;
        open(b).unwrap_err()
    };
    // the end magic of a file that starts like SBS: its directory is missing (truncated or damaged)
    assert!(matches!(flip(n - 16, 0x01), SbsError::NoDirectory { .. }));
    // and a file that is SBS at neither end is not an SBS file
    let mut neither = bytes.clone();
    neither[0] ^= 0x01;
    neither[n - 16] ^= 0x01;
    assert!(matches!(open(neither).unwrap_err(), SbsError::BadMagic { .. }));
    assert!(matches!(flip(n - 10, 0x80), SbsError::TooManyBlobs { .. }), "count += 2^23");
    assert!(matches!(
        flip(n - 12, 0x01),
        SbsError::BadRange { .. } | SbsError::BadKey { .. } | SbsError::DuplicateKey { .. }
    ));
    assert!(matches!(flip(n - 8, 0x01), SbsError::SizeMismatch { .. }));
    // First range's offset: misaligned, or not where blobs start.
    let range0 = dir_start + 16 * num_blobs;
    assert!(matches!(flip(range0, 0x01), SbsError::BadRange { .. }));
    assert!(matches!(flip(range0 + 1, 0x01), SbsError::BadRange { .. }));
    // First range's size grows into the next blob: overlap.
    assert!(matches!(flip(range0 + 8 + 1, 0x10), SbsError::BadRange { .. }));
    // A key becomes another tensor's name -> the toc names a missing blob; or a duplicate.
    assert!(matches!(flip(dir_start, 0x01), SbsError::BadTensor { .. }));
}

#[test]
fn toc_and_config_flips() {
    let bytes = small_file();
    let f = open(bytes.clone()).unwrap();
    for key in [TOC_KEY, CONFIG_KEY] {
        let r = f.blobs().range(key).unwrap();
        let mut errors = 0;
        let mut opened = 0;
        for at in r.offset as usize..r.end() as usize {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[at] ^= 1 << bit;
                match open(b) {
                    Err(e) => {
                        errors += 1;
                        assert!(
                            matches!(
                                e,
                                SbsError::Fields { .. } | SbsError::BadTensor { .. } | SbsError::BadConfig { .. }
                            ),
                            "{key} flip at {at}: {e}"
                        );
                    }
                    Ok(f) => {
                        opened += 1;
                        check_consistent(&f);
                    }
                }
            }
        }
        // Some flips are legitimately harmless (e.g. a scale or a config dimension); most are caught.
        assert!(errors > opened, "{key}: {errors} errors, {opened} opened");
    }
}

#[test]
fn garbage_is_an_error() {
    assert!(matches!(open(Vec::new()), Err(SbsError::Truncated { .. })));
    assert!(matches!(open(vec![0u8; 65536]), Err(SbsError::BadMagic { .. })));
    let mut x = 0x9E37_79B9u32;
    let noise: Vec<u8> = (0..70_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    assert!(open(noise).is_err());
}
