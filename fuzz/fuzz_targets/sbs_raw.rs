//! SBS blob store and model file on arbitrary bytes.
#![no_main]

use gemma_io::sbs::{SbsFile, SbsOpenOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SbsFile::from_bytes(data.to_vec(), "fuzz.sbs", &SbsOpenOptions::default()) else { return };
    for t in file.tensors() {
        let _ = file.tensor_data(t);
    }
    let _ = file.tokenizer();
});
