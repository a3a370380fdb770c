//! Writes valid SBS files (both layouts, four weight types, with a tokenizer) into corpus/sbs_raw, and the
//! same blobs in the sbs_model target's input format into corpus/sbs_model. Run from fuzz/: `cargo run --release`.

use gemma_io::sbs::blob_store::{encode_blob_store, encode_blob_store_v1};
use gemma_io::sbs::fields::{words_to_bytes, write_fields};
use gemma_io::sbs::sentencepiece_model::{SentencePiece, TrainerSpec};
use gemma_io::sbs::{Model, ModelConfig, ModelProto, PromptWrapping, SbsType, SbsWriter, TensorRecord};

fn main() {
    let out = std::path::Path::new("corpus");
    std::fs::create_dir_all(out.join("sbs_raw")).unwrap();
    std::fs::create_dir_all(out.join("sbs_model")).unwrap();
    let mut proto = ModelProto::default();
    for (i, p) in
        ["<pad>", "<eos>", "<bos>", "<unk>", "\u{2581}", "a", "b", "\u{2581}a", "<0x41>", "Hello"].iter().enumerate()
    {
        proto.pieces.push(SentencePiece {
            piece: Some(p.to_string()),
            score: Some(-(i as f32)),
            r#type: Some(if i < 3 {
                3
            } else if i == 3 {
                2
            } else if i == 8 {
                6
            } else {
                1
            }),
        });
    }
    proto.trainer_spec = Some(TrainerSpec { byte_fallback: Some(true), model_type: Some(1), ..Default::default() });
    let tok = proto.encode_bytes();
    let mut n = 0;
    for (model, ty) in [
        (Model::Gemma3_270M, SbsType::F32),
        (Model::Gemma3_270M, SbsType::SFP),
        (Model::Gemma3_270M, SbsType::NUQ),
        (Model::Gemma3_270M, SbsType::BF16),
    ] {
        let config = ModelConfig::new(model, ty, PromptWrapping::default());
        let records: Vec<TensorRecord> =
            vec![TensorRecord::new("w", ty, 2, 256).unwrap(), TensorRecord::new("n", SbsType::F32, 1, 4).unwrap()];
        let mut w = SbsWriter::in_memory().unwrap();
        let mut toc = Vec::new();
        let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
        for r in &records {
            let data = vec![0x11u8; r.packed_bytes() as usize];
            w.add_tensor(r, &data).unwrap();
            toc.extend(write_fields(r).unwrap());
            blobs.push((r.name.clone(), data));
        }
        let file = w.finish(&config, Some(&tok)).unwrap();
        std::fs::write(out.join(format!("sbs_raw/v2_{n}")), &file).unwrap();
        let cw = words_to_bytes(&config.to_words().unwrap());
        let tw = words_to_bytes(&toc);
        let mut all: Vec<(&str, &[u8])> = blobs.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        all.push(("config", &cw));
        all.push(("tokenizer", &tok));
        all.push(("toc", &tw));
        std::fs::write(out.join(format!("sbs_raw/v1_{n}")), encode_blob_store_v1(all.iter().copied(), false).unwrap())
            .unwrap();
        let _ = encode_blob_store(all.iter().copied()).unwrap();
        let mut m = Vec::new();
        m.extend_from_slice(&cw);
        m.extend_from_slice(b"#SB#");
        m.extend_from_slice(&tw);
        m.extend_from_slice(b"#SB#");
        m.extend_from_slice(&tok);
        for (k, v) in &blobs {
            m.extend_from_slice(b"#SB#");
            m.extend_from_slice(k.as_bytes());
            m.push(b'\n');
            m.extend_from_slice(v);
        }
        std::fs::write(out.join(format!("sbs_model/m_{n}")), &m).unwrap();
        n += 1;
    }
}
