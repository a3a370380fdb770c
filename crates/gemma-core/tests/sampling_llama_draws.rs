//! Seeded sampling draws what llama.cpp draws. `testdata/goldens/llama_sampler_draws.json` holds the tokens
//! llama.cpp's own samplers (its `libllama`, chained as its `common/sampling.cpp` chains them) picked from the
//! same fixed pseudo-random logits, 300 steps per case; `scripts/llama_sampler_goldens.cpp` says how it was
//! made. With the same logits the two must agree at every step: same random numbers (`std::mt19937` as
//! libstdc++ draws from it), same candidate order and the same float arithmetic where a cut-off depends on it.

use gemma_core::sampling::{Sampler, SamplingParams};
use serde_json::Value;

/// The Rust twin of the script's logit stream: 24 random bits per logit, scaled exactly into [-8, 8).
struct Logits(u64);

impl Logits {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as u32 as f32 / 16_777_216.0 * 16.0 - 8.0
    }
}

#[test]
fn seeded_draws_equal_llama_cpp_on_fixed_logits() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/goldens/llama_sampler_draws.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("JSON");
    let vocab = golden["vocab"].as_u64().expect("vocab") as usize;
    let cases = golden["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 11);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        // Everything the case does not name is off (top-k too, which the user guide's defaults set to 1).
        let mut params = serde_json::json!({ "top_k": 0 });
        for (k, v) in case["params"].as_object().expect("params") {
            params[k] = v.clone();
        }
        let params: SamplingParams = serde_json::from_value(params).expect("sampling params");
        let mut sampler = Sampler::try_new(params).expect("valid params");
        let want: Vec<u32> =
            case["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
        let mut gen = Logits(1);
        let mut logits = vec![0f32; vocab];
        for (step, &want) in want.iter().enumerate() {
            logits.iter_mut().for_each(|l| *l = gen.next());
            let got = sampler.sample(&logits);
            assert_eq!(got, want, "{name}: step {step} picked {got}, llama.cpp {want}");
        }
    }
}
