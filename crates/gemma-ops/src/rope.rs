//! Rotary position embedding.

/// Inverse frequencies `scale * base^(-2i/d)` for the `d/2` rotated pairs of a head of `dim` values.
pub fn rope_inv_freq(dim: usize, base: f32, freq_scale: f32) -> Vec<f32> {
    (0..dim / 2).map(|i| (freq_scale as f64 * (base as f64).powf(-2.0 * i as f64 / dim as f64)) as f32).collect()
}

/// Rotates one head in place, "rotate-half" (NeoX) pairing: element `i` pairs with `i + d/2`.
pub fn rope_neox(x: &mut [f32], pos: usize, inv_freq: &[f32]) {
    let half = inv_freq.len();
    debug_assert!(x.len() >= 2 * half);
    let (a, b) = x.split_at_mut(half);
    for i in 0..half {
        let theta = pos as f32 * inv_freq[i];
        let (s, c) = theta.sin_cos();
        let (x0, x1) = (a[i], b[i]);
        a[i] = x0 * c - x1 * s;
        b[i] = x0 * s + x1 * c;
    }
}

/// Rotates one head in place, adjacent pairing (original LLaMA / GPT-J): element `2i` pairs with `2i + 1`.
pub fn rope_adjacent(x: &mut [f32], pos: usize, inv_freq: &[f32]) {
    for (i, pair) in x.chunks_exact_mut(2).take(inv_freq.len()).enumerate() {
        let theta = pos as f32 * inv_freq[i];
        let (s, c) = theta.sin_cos();
        let (x0, x1) = (pair[0], pair[1]);
        pair[0] = x0 * c - x1 * s;
        pair[1] = x0 * s + x1 * c;
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
            rope_neox(&mut q, pq, &inv);
            rope_neox(&mut k, pk, &inv);
            q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>()
        };
        // Attention scores depend only on the distance between positions.
        assert!((dot_at(5, 2) - dot_at(103, 100)).abs() < 1e-3);
        let mut q = q0.clone();
        rope_neox(&mut q, 7, &inv);
        let n0: f32 = q0.iter().map(|v| v * v).sum();
        let n1: f32 = q.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
        // Position 0 is the identity.
        let mut z = q0.clone();
        rope_neox(&mut z, 0, &inv);
        assert_eq!(z, q0);
    }

    #[test]
    fn adjacent_rotation_pairs_neighbours() {
        let inv = rope_inv_freq(8, 10_000.0, 1.0);
        let x0: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 0.9).collect();
        let mut x = x0.clone();
        rope_adjacent(&mut x, 3, &inv);
        // Pair i = (2i, 2i+1) turns by 3 * inv[i]; the same values in NeoX order (i, i + 4) turn alike.
        let mut neox: Vec<f32> = (0..4).map(|i| x0[2 * i]).chain((0..4).map(|i| x0[2 * i + 1])).collect();
        rope_neox(&mut neox, 3, &inv);
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
            rope_adjacent(&mut q, pq, &inv);
            rope_adjacent(&mut k, pk, &inv);
            q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>()
        };
        assert!((dot_at(9, 4) - dot_at(205, 200)).abs() < 1e-3);
    }
}
