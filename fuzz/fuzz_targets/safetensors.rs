//! safetensors header parsing on arbitrary bytes.
#![no_main]

use gemma_io::SafetensorsFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SafetensorsFile::from_bytes(data.to_vec(), "fuzz.safetensors") else { return };
    let _ = file.metadata();
    let names: Vec<String> = file.tensors().map(|t| t.name.clone()).collect();
    for name in names {
        if let Some(t) = file.tensor(&name) {
            let _ = file.tensor_bytes(t);
            let _ = t.len();
        }
        let _ = file.f32_values(&name);
    }
});
