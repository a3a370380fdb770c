//! The random numbers llama.cpp samples with, reproduced exactly: the C++ standard's `std::mt19937`, and the
//! way GNU libstdc++ turns it into `uniform_real_distribution<double>` / `<float>` draws and
//! `discrete_distribution` picks. With them a seeded run draws the very numbers llama.cpp draws, so where the
//! two engines' probabilities agree they pick the same tokens. (See docs/sampling.md.)

/// The 32-bit Mersenne Twister (`std::mt19937`), seeded as the C++ standard's `seed(value)`.
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937").field("index", &self.index).finish_non_exhaustive()
    }
}

impl Mt19937 {
    const N: usize = 624;
    const M: usize = 397;

    pub fn new(seed: u32) -> Mt19937 {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..Self::N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        Mt19937 { state, index: Self::N }
    }

    fn twist(&mut self) {
        for i in 0..Self::N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % Self::N] & 0x7fff_ffff);
            let mut next = self.state[(i + Self::M) % Self::N] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= Self::N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `std::uniform_real_distribution<double>(0, 1)`: libstdc++'s `generate_canonical<double, 53>`, two
    /// 32-bit outputs, the first as the low word, summed in double and divided by 2^64 (1 rounds down to the
    /// largest double below it).
    pub fn uniform_f64(&mut self) -> f64 {
        let low = self.next_u32() as f64;
        let high = self.next_u32() as f64;
        let r = (low + high * 4_294_967_296.0) / 18_446_744_073_709_551_616.0;
        if r >= 1.0 {
            1.0 - f64::EPSILON / 2.0
        } else {
            r
        }
    }

    /// `std::uniform_real_distribution<float>(0, 1)`: `generate_canonical<float, 24>`, one output rounded to
    /// float and divided by 2^32 (1 rounds down to the largest float below it).
    pub fn uniform_f32(&mut self) -> f32 {
        let r = self.next_u32() as f32 / 4_294_967_296.0f32;
        if r >= 1.0 {
            1.0 - f32::EPSILON / 2.0
        } else {
            r
        }
    }

    /// `std::uniform_int_distribution<size_t>(0, range - 1)(rng)` as libstdc++ (GCC 11 and later) computes it
    /// from a 32-bit generator: Lemire's multiply-and-shift, one output times `range`, the high word, drawn
    /// again while the low word falls under `2^32 mod range`. A `range` of 1 still draws once. `range` must
    /// be at least 1.
    pub fn below(&mut self, range: u32) -> u32 {
        let range = range.max(1);
        let mut product = u64::from(self.next_u32()) * u64::from(range);
        if (product as u32) < range {
            let threshold = range.wrapping_neg() % range;
            while (product as u32) < threshold {
                product = u64::from(self.next_u32()) * u64::from(range);
            }
        }
        (product >> 32) as u32
    }

    /// `std::discrete_distribution<int>(weights)(rng)` as libstdc++ computes it: weights normalised by
    /// their double sum, cumulated in double with the last set to exactly 1, and the first cumulative value not
    /// below one uniform double. Fewer than two weights give index 0 without drawing (libstdc++ keeps no
    /// table for them).
    pub fn discrete(&mut self, weights: impl Iterator<Item = f32> + Clone) -> usize {
        let count = weights.clone().count();
        if count < 2 {
            return 0;
        }
        let sum: f64 = weights.clone().map(f64::from).sum();
        let u = self.uniform_f64();
        let mut cum = 0.0f64;
        for (i, w) in weights.enumerate() {
            cum += f64::from(w) / sum;
            if i + 1 == count || cum >= u {
                return i;
            }
        }
        count - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_cpp_standard() {
        // [rand.predef]: the 10000th output of a default-constructed std::mt19937 (seed 5489) is 4123659995.
        let mut rng = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = rng.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    /// Values printed by a C++ program built with g++ 12 (libstdc++): `std::mt19937 rng(42)` then
    /// `std::uniform_real_distribution<double>(0, 1)(rng)` three times, a fresh `rng(42)` with
    /// `<float>` three times, and a fresh `rng(42)` with `discrete_distribution<int>{0.1, 0.2, 0.3, 0.4}` ten
    /// times (scripts/libstdcxx_random_vectors.cpp).
    #[test]
    fn draws_match_libstdcxx() {
        let mut rng = Mt19937::new(42);
        let doubles: Vec<f64> = (0..3).map(|_| rng.uniform_f64()).collect();
        assert_eq!(doubles, LIBSTDCXX_DOUBLES_SEED_42);
        let mut rng = Mt19937::new(42);
        let floats: Vec<f32> = (0..3).map(|_| rng.uniform_f32()).collect();
        assert_eq!(floats, LIBSTDCXX_FLOATS_SEED_42);
        let mut rng = Mt19937::new(42);
        let weights = [0.1f32, 0.2, 0.3, 0.4];
        let picks: Vec<usize> = (0..10).map(|_| rng.discrete(weights.iter().copied())).collect();
        assert_eq!(picks, LIBSTDCXX_DISCRETE_SEED_42);
    }

    /// `std::uniform_int_distribution<size_t>(0, n - 1)(rng)` from `std::mt19937 rng(1)`, printed by a C++
    /// program built with g++ 12: ranges 10, 9, .., 1, 10, 9 (hellaswag's task picks), then from a fresh
    /// `rng(1)` ranges 1, 2, 3, 7, 100, 1000, 10042, 65536, 4e9.
    #[test]
    fn integer_draws_match_libstdcxx() {
        let mut rng = Mt19937::new(1);
        let ranges = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1];
        let picks: Vec<u32> = ranges.iter().map(|&r| rng.below(r)).collect();
        assert_eq!(picks, [4, 8, 5, 6, 0, 0, 1, 2, 0, 0]);
        let mut rng = Mt19937::new(1);
        let ranges = [1, 2, 3, 7, 100, 1000, 10042, 65536, 4_000_000_000];
        let picks: Vec<u32> = ranges.iter().map(|&r| rng.below(r)).collect();
        assert_eq!(picks, [0, 1, 2, 6, 0, 128, 3036, 65473, 587_023_570]);
    }

    // As printed (%.17g, %.9g): enough digits to name each value exactly.
    #[allow(clippy::excessive_precision)]
    const LIBSTDCXX_DOUBLES_SEED_42: [f64; 3] = [0.79654298428784598, 0.18343478789336848, 0.77969099761266125];
    #[allow(clippy::excessive_precision)]
    const LIBSTDCXX_FLOATS_SEED_42: [f32; 3] = [0.37454012, 0.796543002, 0.95071429];
    const LIBSTDCXX_DISCRETE_SEED_42: [usize; 10] = [3, 1, 3, 2, 2, 0, 2, 2, 1, 3];
}
