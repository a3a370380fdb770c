//! Rotary position embedding.

/// Inverse frequencies `scale * base^(-2i/d)` for the `d/2` rotated pairs of a head of `dim` values.
pub fn rope_inv_freq(dim: usize, base: f32, freq_scale: f32) -> Vec<f32> {
    (0..dim / 2).map(|i| (freq_scale as f64 * (base as f64).powf(-2.0 * i as f64 / dim as f64)) as f32).collect()
}

/// The cosine and sine of every rotated pair's angle at each position of a batch. A forward pass computes them
/// once per set of frequencies and every head of every layer with those frequencies reuses them.
pub struct RopeAngles {
    half: usize,
    /// Per position: `half` cosines then `half` sines.
    cos_sin: Vec<f32>,
}

impl RopeAngles {
    pub fn new(positions: impl IntoIterator<Item = usize>, inv_freq: &[f32]) -> RopeAngles {
        let half = inv_freq.len();
        let mut cos_sin = Vec::new();
        for pos in positions {
            let start = cos_sin.len();
            cos_sin.resize(start + 2 * half, 0.0);
            let (cos, sin) = cos_sin[start..].split_at_mut(half);
            for ((c, s), f) in cos.iter_mut().zip(sin).zip(inv_freq) {
                (*s, *c) = (pos as f32 * f).sin_cos();
            }
        }
        RopeAngles { half, cos_sin }
    }

    /// The angles that move a rotated head `distance` positions back (`RoPE(p)` to `RoPE(p - distance)`):
    /// a context shift re-rotates the keys it keeps this way instead of recomputing them.
    pub fn backward(distance: usize, inv_freq: &[f32]) -> RopeAngles {
        let mut angles = RopeAngles::new([distance], inv_freq);
        angles.cos_sin[inv_freq.len()..].iter_mut().for_each(|s| *s = -*s);
        angles
    }

    fn at(&self, i: usize) -> (&[f32], &[f32]) {
        self.cos_sin[2 * self.half * i..2 * self.half * (i + 1)].split_at(self.half)
    }

    /// Rotates one head at the batch's `i`-th position, "rotate-half" (NeoX) pairing: element `j` pairs with
    /// `j + d/2`.
    pub fn neox(&self, x: &mut [f32], i: usize) {
        let (cos, sin) = self.at(i);
        debug_assert!(x.len() >= 2 * self.half, "a head shorter than its rotated pairs");
        let (a, b) = x.split_at_mut(self.half);
        for (((x0, x1), c), s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
            (*x0, *x1) = (*x0 * c - *x1 * s, *x0 * s + *x1 * c);
        }
    }

    /// Rotates one head at the batch's `i`-th position, adjacent pairing (original LLaMA / GPT-J): element `2j`
    /// pairs with `2j + 1`.
    pub fn adjacent(&self, x: &mut [f32], i: usize) {
        let (cos, sin) = self.at(i);
        for ((pair, c), s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0 * c - x1 * s;
            pair[1] = x0 * s + x1 * c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_norm_and_relative_positions() {
        let inv = rope_inv_freq(8, 10_000.0, 1.0);
        let q0: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
        let k0: Vec<f32> = (0..8).map(|i| (i as f32).cos()).collect();
        let dot_at = |pq: usize, pk: usize| {
            let (mut q, mut k) = (q0.clone(), k0.clone());
            RopeAngles::new([pq], &inv).neox(&mut q, 0);
            RopeAngles::new([pk], &inv).neox(&mut k, 0);
            q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>()
        };
        // Attention scores depend only on the distance between positions.
        assert!((dot_at(5, 2) - dot_at(103, 100)).abs() < 1e-3);
        let mut q = q0.clone();
        RopeAngles::new([7], &inv).neox(&mut q, 0);
        let n0: f32 = q0.iter().map(|v| v * v).sum();
        let n1: f32 = q.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
        // Going back `d` positions is the rotation at `p - d`.
        let mut k = k0.clone();
        RopeAngles::new([103], &inv).neox(&mut k, 0);
        RopeAngles::backward(100, &inv).neox(&mut k, 0);
        let mut k3 = k0.clone();
        RopeAngles::new([3], &inv).neox(&mut k3, 0);
        assert!(k.iter().zip(&k3).all(|(a, b)| (a - b).abs() < 1e-4), "{k:?} {k3:?}");
        let mut k = k0.clone();
        RopeAngles::new([9], &inv).adjacent(&mut k, 0);
        RopeAngles::backward(9, &inv).adjacent(&mut k, 0);
        assert!(k.iter().zip(&k0).all(|(a, b)| (a - b).abs() < 1e-5));
        // Position 0 is the identity.
        let mut z = q0.clone();
        RopeAngles::new([0], &inv).neox(&mut z, 0);
        assert_eq!(z, q0);
    }

    #[test]
    fn adjacent_rotation_pairs_neighbours() {
        let inv = rope_inv_freq(8, 10_000.0, 1.0);
        let x0: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 0.9).collect();
        let mut x = x0.clone();
        RopeAngles::new([3], &inv).adjacent(&mut x, 0);
        // Pair i = (2i, 2i+1) turns by 3 * inv[i]; the same values in NeoX order (i, i + 4) turn alike.
        let mut neox: Vec<f32> = (0..4).map(|i| x0[2 * i]).chain((0..4).map(|i| x0[2 * i + 1])).collect();
        RopeAngles::new([3], &inv).neox(&mut neox, 0);
        for i in 0..4 {
            assert!((x[2 * i] - neox[i]).abs() < 1e-6 && (x[2 * i + 1] - neox[i + 4]).abs() < 1e-6);
            let theta = 3.0 * inv[i];
            let want0 = x0[2 * i] * theta.cos() - x0[2 * i + 1] * theta.sin();
            assert!((x[2 * i] - want0).abs() < 1e-6);
        }
        // Relative positions only, as for NeoX.
        let k0: Vec<f32> = (0..8).map(|i| (i as f32).sin()).collect();
        let dot_at = |pq: usize, pk: usize| {
            let (mut q, mut k) = (x0.clone(), k0.clone());
            RopeAngles::new([pq], &inv).adjacent(&mut q, 0);
            RopeAngles::new([pk], &inv).adjacent(&mut k, 0);
            q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>()
        };
        assert!((dot_at(9, 4) - dot_at(205, 200)).abs() < 1e-3);
    }

    #[test]
    fn a_batch_rotates_each_row_at_its_own_position() {
        let inv = rope_inv_freq(8, 10_000.0, 1.0);
        let x0: Vec<f32> = (0..8).map(|i| i as f32 * 0.4 - 1.3).collect();
        let batch = RopeAngles::new([4, 0, 17], &inv);
        for (i, pos) in [4, 0, 17].into_iter().enumerate() {
            let (mut a, mut b) = (x0.clone(), x0.clone());
            batch.neox(&mut a, i);
            RopeAngles::new([pos], &inv).neox(&mut b, 0);
            assert_eq!(a, b);
            batch.adjacent(&mut a, i);
            RopeAngles::new([pos], &inv).adjacent(&mut b, 0);
            assert_eq!(a, b);
        }
    }
}
