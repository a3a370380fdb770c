//! A well-formed SBS blob store whose config, toc, tokenizer and tensor blobs are arbitrary: exercises the
//! `IFields` reader on the config and toc, the toc checks and the SentencePiece `ModelProto` decoder.
//!
//! Input: blobs separated by the 4 bytes `#SB#`: config, toc, tokenizer, then tensor blobs named by their first
//! line (up to 16 bytes).
#![no_main]

use gemma_io::sbs::blob_store::encode_blob_store;
use gemma_io::sbs::{ModelProto, SbsFile, SbsOpenOptions};
use libfuzzer_sys::fuzz_target;

fn split<'a>(mut data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(i) = data.windows(sep.len()).position(|w| w == sep) {
        out.push(&data[..i]);
        data = &data[i + sep.len()..];
    }
    out.push(data);
    out
}

fuzz_target!(|data: &[u8]| {
    let _ = ModelProto::decode_bytes(data);
    let parts = split(data, b"#SB#");
    let mut names: Vec<String> = Vec::new();
    let mut blobs: Vec<&[u8]> = Vec::new();
    for (i, part) in parts.iter().enumerate().take(12) {
        let (name, blob) = match i {
            0 => ("config".to_string(), *part),
            1 => ("toc".to_string(), *part),
            2 => ("tokenizer".to_string(), *part),
            _ => {
                let nl = part.iter().position(|&b| b == b'\n').unwrap_or(part.len()).min(16);
                let Ok(name) = std::str::from_utf8(&part[..nl]) else { return };
                (name.to_string(), part.get(nl + 1..).unwrap_or(&[]))
            }
        };
        if names.contains(&name) {
            return;
        }
        names.push(name);
        blobs.push(blob);
    }
    let Ok(bytes) = encode_blob_store(names.iter().map(String::as_str).zip(blobs.iter().copied())) else { return };
    let Ok(file) = SbsFile::from_bytes(bytes, "fuzz.sbs", &SbsOpenOptions::default()) else { return };
    for t in file.tensors() {
        let _ = file.tensor_data(t);
        if t.record.rows.saturating_mul(t.record.cols) <= 1 << 16 {
            let _ = gemma_core::convert::sbs_to_gguf::decode_sbs_tensor(&file, t);
        }
    }
    let _ = gemma_core::ModelConfig::from_sbs(file.config());
    if let Ok(Some(proto)) = file.tokenizer() {
        let _ = gemma_core::convert::tokenizer_proto::gguf_vocab_metadata(&proto);
        if let Ok(tok) = gemma_core::Tokenizer::from_sentencepiece(&proto) {
            let ids = tok.encode("Hello <start_of_turn>world 123 \u{e9}\u{1F600}", true, true);
            let _ = tok.decode(&ids, true);
        }
    }
});
