//! GGUF reader on arbitrary bytes, then the model-side readers of its metadata (config, tokenizer, chat template).
#![no_main]

use gemma_core::{chat::ChatTemplate, ModelConfig, Tokenizer};
use gemma_io::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") else { return };
    for (key, value) in file.metadata() {
        let _ = file.get(key);
        let _ = format!("{value}");
    }
    for t in file.tensors() {
        let bytes = file.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.n_bytes);
        let _ = (t.row_len(), t.n_rows());
    }
    let _ = ModelConfig::from_gguf(&file);
    if let Ok(tok) = Tokenizer::from_gguf(&file) {
        let ids = tok.encode("Hello <start_of_turn>world 123 ÿ\u{1F600}", true, true);
        let _ = tok.decode(&ids, true);
        if let Ok(t) = ChatTemplate::from_gguf(&file, &tok) {
            let _ = t.render(&[gemma_core::chat::ChatMessage::user("hi")], true);
        }
    }
    let _ = ChatTemplate::from_gguf_metadata(&file);
});
