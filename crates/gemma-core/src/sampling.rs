//! Choosing the next token from logits: greedy, or top-k → top-p → min-p → temperature → random draw
//! (llama.cpp's default order), with a seeded generator so the same seed gives the same text.

/// Sampling settings. `temperature <= 0` or `top_k == 1` is greedy; `top_k == 0` disables top-k.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    /// `None`: seeded from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// The user guide's defaults: temperature 1.0, top-k 1 (so greedy), top-p 1.0.
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 1, top_p: 1.0, min_p: 0.0, seed: None }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng { s: [next(), next(), next(), next()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        });
        Sampler { params, rng: Rng::new(seed), candidates: Vec::new() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks a token id from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return greedy(logits);
        }
        let p = &self.params;
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().filter(|(_, v)| !v.is_nan()).map(|(i, &v)| (i as u32, v)));
        if c.is_empty() {
            return 0;
        }
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(by_logit_desc);
        if p.top_p < 1.0 {
            let probs = softmax_of(c.iter().map(|x| x.1));
            let mut cum = 0.0;
            let mut keep = c.len();
            for (i, pr) in probs.iter().enumerate() {
                cum += pr;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            // p_i >= min_p * p_max  <=>  logit_i >= logit_max + ln(min_p)
            let threshold = c[0].1 + p.min_p.ln();
            let keep = c.iter().take_while(|x| x.1 >= threshold).count();
            c.truncate(keep.max(1));
        }
        let probs = softmax_of(c.iter().map(|x| x.1 / p.temperature));
        let r = self.rng.next_f64();
        let mut cum = 0.0;
        for (i, pr) in probs.iter().enumerate() {
            cum += pr;
            if r < cum {
                return c[i].0;
            }
        }
        c[c.len() - 1].0
    }
}

/// Index of the largest logit (the lowest index on ties).
pub fn greedy(logits: &[f32]) -> u32 {
    gemma_ops::vector::argmax(logits).map_or(0, |(i, _)| i as u32)
}

fn softmax_of(values: impl Iterator<Item = f32> + Clone) -> Vec<f64> {
    let max = values.clone().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = values.map(|v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 5.0, 3.0, 4.9, -2.0, 0.0]
    }

    #[test]
    fn greedy_picks_the_max() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&logits()), 1);
        // top_k 1 is greedy whatever the temperature.
        let mut s = Sampler::new(SamplingParams { temperature: 5.0, top_k: 1, ..Default::default() });
        assert_eq!(s.sample(&logits()), 1);
    }

    #[test]
    fn same_seed_same_choices_and_top_k_restricts() {
        let params = SamplingParams { temperature: 1.5, top_k: 3, top_p: 1.0, min_p: 0.0, seed: Some(42) };
        let draw = |params: &SamplingParams| {
            let mut s = Sampler::new(params.clone());
            (0..200).map(|_| s.sample(&logits())).collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params));
        assert!(a.iter().all(|t| [1, 3, 2].contains(t)), "top-k 3 allows only the 3 best");
        assert!([1, 3, 2].iter().all(|t| a.contains(t)), "each of the 3 best is drawn sometimes");
        let other = draw(&SamplingParams { seed: Some(43), ..params });
        assert_ne!(a, other);
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // The best token alone has probability 0.48: top-p 0.4 keeps only it, top-p 0.6 also the runner-up.
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.4, min_p: 0.0, seed: Some(1) });
        assert!((0..100).all(|_| s.sample(&logits()) == 1));
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.6, min_p: 0.0, seed: Some(1) });
        let drawn: Vec<u32> = (0..300).map(|_| s.sample(&logits())).collect();
        assert!(drawn.iter().all(|t| *t == 1 || *t == 3) && drawn.contains(&3));
        // min-p 0.5 keeps tokens within ln(2) of the best logit: 5.0 and 4.9.
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.5, seed: Some(1) });
        let drawn: Vec<u32> = (0..300).map(|_| s.sample(&logits())).collect();
        assert!(drawn.iter().all(|t| *t == 1 || *t == 3));
        assert!(drawn.contains(&1) && drawn.contains(&3));
    }

    #[test]
    fn frequencies_follow_the_distribution() {
        // Two tokens with logits differing by ln(3): expect a 3:1 split.
        let l = vec![(3.0f32).ln(), 0.0];
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: Some(7) });
        let n = 20_000;
        let zeros = (0..n).filter(|_| s.sample(&l) == 0).count() as f64 / n as f64;
        assert!((zeros - 0.75).abs() < 0.02, "{zeros}");
    }
}
