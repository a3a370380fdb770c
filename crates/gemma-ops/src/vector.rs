//! Element-wise and reduction kernels on f32 vectors. Plain loops written so the compiler vectorises them
//! (several independent accumulators), no intrinsics.

/// Dot product of two equal-length vectors (AVX-512 or AVX2+FMA when the CPU has them).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the kernel reads only within the two equal-length slices.
            return unsafe { x86::dot_avx512(a, b) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above, for AVX2 and FMA.
            return unsafe { x86::dot_avx2(a, b) };
        }
    }
    dot_scalar(a, b)
}

/// The scalar twin of [`dot`].
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, ar) = a.split_at(a.len() / 16 * 16);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(16).zip(bc.chunks_exact(16)) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `y += a * x` (AVX-512 or AVX2+FMA when the CPU has them).
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy of vectors of different lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the kernel stays within the two equal-length slices.
            return unsafe { x86::axpy_avx512(a, x, y) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above, for AVX2 and FMA.
            return unsafe { x86::axpy_avx2(a, x, y) };
        }
    }
    axpy_scalar(a, x, y)
}

/// The scalar twin of [`axpy`].
pub fn axpy_scalar(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len() / 32 * 32;
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i < n {
            // SAFETY: i + 32 <= n <= len of both slices.
            unsafe {
                s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.as_ptr().add(i)), _mm512_loadu_ps(b.as_ptr().add(i)), s0);
                s1 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(a.as_ptr().add(i + 16)),
                    _mm512_loadu_ps(b.as_ptr().add(i + 16)),
                    s1,
                );
            }
            i += 32;
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
        for j in n..a.len() {
            s += a[j] * b[j];
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len() / 16 * 16;
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < n {
            // SAFETY: i + 16 <= n <= len of both slices.
            unsafe {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), s0);
                s1 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i + 8)), _mm256_loadu_ps(b.as_ptr().add(i + 8)), s1);
            }
            i += 16;
        }
        let v = _mm256_add_ps(s0, s1);
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let mut s = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
        for j in n..a.len() {
            s += a[j] * b[j];
        }
        s
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn axpy_avx512(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len() / 16 * 16;
        let av = _mm512_set1_ps(a);
        let mut i = 0;
        while i < n {
            // SAFETY: i + 16 <= n <= len of both slices.
            unsafe {
                let p = y.as_mut_ptr().add(i);
                _mm512_storeu_ps(p, _mm512_fmadd_ps(av, _mm512_loadu_ps(x.as_ptr().add(i)), _mm512_loadu_ps(p)));
            }
            i += 16;
        }
        for j in n..x.len() {
            y[j] += a * x[j];
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len() / 8 * 8;
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len of both slices.
            unsafe {
                let p = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(p)));
            }
            i += 8;
        }
        for j in n..x.len() {
            y[j] += a * x[j];
        }
    }
}

/// `x *= s`.
pub fn scale(x: &mut [f32], s: f32) {
    x.iter_mut().for_each(|v| *v *= s);
}

/// `y += x`.
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += xi;
    }
}

/// Compiles an element-wise loop three times (AVX-512, AVX2, baseline) and calls the best the CPU runs. The
/// loop is plain Rust written to auto-vectorise; no version fuses multiplies and adds, so all give the same bits.
macro_rules! simd_versions {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match gemma_compression::simd_level() {
                    // SAFETY: `simd_level` reports only levels the CPU has.
                    gemma_compression::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    gemma_compression::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            body($($arg),*)
        }
    };
}

simd_versions! {
    /// RMS normalisation in place: `x = x / sqrt(mean(x^2) + eps) * w`. (GGUF files store Gemma's `1 + w` already.)
    /// The sum of squares runs in f64, in 16 interleaved partial sums so it vectorises.
    pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
        debug_assert_eq!(x.len(), w.len());
        let mut partial = [0f64; 16];
        let chunks = x.chunks_exact(16);
        let tail: f64 = chunks.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum();
        for c in chunks {
            for (p, &v) in partial.iter_mut().zip(c) {
                *p += (v as f64) * (v as f64);
            }
        }
        let sum_sq = partial.iter().sum::<f64>() + tail;
        let inv = 1.0 / ((sum_sq / x.len() as f64) as f32 + eps).sqrt();
        for (v, wi) in x.iter_mut().zip(w) {
            *v = *v * inv * wi;
        }
    }
}

/// GELU, tanh approximation (as Gemma and ggml use), via the identity `0.5x(1 + tanh z) = x / (1 + e^(-2z))`
/// and a branch-free `exp`, so loops over it vectorise. Within 1e-6 of the exact formula.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let z = SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x);
    x / (1.0 + exp_fast(-2.0 * z))
}

/// `e^x` to about 3e-7 (1 + |x|) relative error, branch-free: `2^(x log2 e)` split into an integer power (built in the
/// exponent bits) and a degree-6 polynomial for the fraction. Saturates outside [-87, 88].
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer with plain SSE2 arithmetic.
    const ROUND: f32 = 12_582_912.0;
    // max/min rather than clamp (which also checks for NaN): they map to single vector instructions.
    #[allow(clippy::manual_clamp)]
    let t = x.max(-87.0).min(88.0) * LOG2_E;
    let i = (t + ROUND) - ROUND;
    let f = (t - i) * std::f32::consts::LN_2; // e^f for f in [-ln2/2, ln2/2]
    let p = 1.0 + f * (1.0 + f * (0.5 + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    f32::from_bits(((i as i32 + 127) << 23) as u32) * p
}

simd_versions! {
    /// `gate = gelu(gate) * up`, the gated FFN's element-wise step.
    pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
        debug_assert_eq!(gate.len(), up.len());
        for (g, u) in gate.iter_mut().zip(up) {
            *g = gelu_tanh(*g) * u;
        }
    }
}

simd_versions! {
    /// `x = e^(x - shift)` element-wise; returns the sum (in 16 interleaved partial sums, so it vectorises).
    pub fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
        let mut partial = [0f32; 16];
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            for (p, v) in partial.iter_mut().zip(c.iter_mut()) {
                *v = exp_fast(*v - shift);
                *p += *v;
            }
        }
        let mut tail = 0.0;
        for v in chunks.into_remainder() {
            *v = exp_fast(*v - shift);
            tail += *v;
        }
        partial.iter().sum::<f32>() + tail
    }
}

/// SiLU (x * sigmoid(x)).
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate = silu(gate) * up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// Softmax in place, numerically stable.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = exp_fast(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Index and value of the largest element (first one on ties), or `None` for an empty slice.
pub fn argmax(x: &[f32]) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in x.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_on_odd_lengths() {
        for n in [0, 1, 15, 16, 17, 255, 256, 1000] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - naive).abs() < 1e-3, "n={n}");
        }
    }

    #[test]
    fn simd_dot_and_axpy_equal_their_scalar_twins() {
        #[cfg(target_arch = "x86_64")]
        {
            let levels = [
                ("avx512", is_x86_feature_detected!("avx512f")),
                ("avx2+fma", is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")),
            ];
            for n in [0, 1, 7, 8, 15, 16, 31, 32, 33, 256, 1000] {
                let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
                let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
                let want = dot_scalar(&a, &b);
                let mut y_want = b.clone();
                axpy_scalar(0.3, &a, &mut y_want);
                for (name, present) in levels {
                    if !present {
                        println!("{name}: not on this CPU");
                        continue;
                    }
                    println!("{name}: checked n={n}");
                    let mut y = b.clone();
                    // SAFETY: the feature was just detected.
                    let got = unsafe {
                        if name == "avx512" {
                            x86::axpy_avx512(0.3, &a, &mut y);
                            x86::dot_avx512(&a, &b)
                        } else {
                            x86::axpy_avx2(0.3, &a, &mut y);
                            x86::dot_avx2(&a, &b)
                        }
                    };
                    assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{name} dot n={n}: {got} vs {want}");
                    for (g, w) in y.iter().zip(&y_want) {
                        assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "{name} axpy n={n}");
                    }
                }
            }
        }
    }

    #[test]
    fn rms_norm_gives_unit_rms() {
        let mut x: Vec<f32> = (0..64).map(|i| i as f32 - 20.0).collect();
        rms_norm(&mut x, &vec![1.0; 64], 0.0);
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / 64.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-5);
    }

    #[test]
    fn fast_exp_and_gelu_match_libm() {
        let mut x = -90.0f32;
        while x < 90.0 {
            let (want, got) = (x.exp(), exp_fast(x));
            if x > -87.0 && x < 88.0 {
                // Rounding of x * log2(e) grows with |x|.
                assert!(((got - want) / want).abs() < 3e-7 * (1.0 + x.abs()), "exp({x}): {got} vs {want}");
            }
            let exact =
                0.5 * x as f64 * (1.0 + (0.797_884_560_8 * x as f64 * (1.0 + 0.044715 * (x * x) as f64)).tanh());
            let g = gelu_tanh(x) as f64;
            assert!((g - exact).abs() <= 1e-6 * exact.abs() + 1e-8, "gelu({x}): {g} vs {exact}");
            x += 0.01;
        }
    }

    #[test]
    fn gelu_known_values() {
        assert_eq!(gelu_tanh(0.0), 0.0);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_tanh(-1.0) + 0.158_808).abs() < 1e-5);
        assert!((gelu_tanh(10.0) - 10.0).abs() < 1e-4);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = vec![1.0, 3.0, 2.0, -100.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[2] && x[2] > x[0] && x[0] > x[3]);
        assert_eq!(argmax(&x).map(|(i, _)| i), Some(1));
    }
}
