//! Deterministic test inputs: a seeded SplitMix64 generator and the value shapes the kernels meet in models.

/// SplitMix64: tiny, seedable and good enough to spread test values.
pub(crate) struct TestRng(u64);

impl TestRng {
    pub(crate) fn new(seed: u64) -> TestRng {
        TestRng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub(crate) fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Approximately normal (sum of four uniforms), unit-ish variance.
    pub(crate) fn normal(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform()) * 0.866
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// A row shaped like real weights/activations: normal values at a per-block scale that varies over three
    /// orders of magnitude, with an occasional outlier, a few exact zeros, and a mostly-positive stretch.
    pub(crate) fn row(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n);
        let mut scale = 1.0f32;
        let mut shift = 0.0f32;
        for i in 0..n {
            if i % 32 == 0 {
                scale = 10f32.powf(self.uniform() * 1.5);
                shift = if self.next_u64().is_multiple_of(4) { scale } else { 0.0 };
            }
            let r = self.next_u64() % 64;
            let v = match r {
                0 => 0.0,
                1 => self.normal() * scale * 8.0,
                _ => self.normal() * scale + shift,
            };
            out.push(v);
        }
        out
    }
}

/// |a - b| <= tol * scale, with a message naming what differs.
pub(crate) fn assert_close(got: f32, want: f32, tol: f32, scale: f32, what: &str) {
    assert!(
        (got - want).abs() <= tol * scale,
        "{what}: got {got}, want {want}, diff {} > {tol} * {scale}",
        (got - want).abs()
    );
}

/// `v` as the little-endian f16 bytes a block header holds.
pub(crate) fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// Whole blocks of `ty` decoded through the crate's public codec.
pub(crate) fn dequant(ty: crate::GgmlType, bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0; bytes.len() / ty.type_size() * ty.block_size()];
    crate::quant_format(ty).unwrap().dequantize_row(bytes, &mut out);
    out
}

/// `x` encoded as `ty` through the crate's public codec.
pub(crate) fn quant(ty: crate::GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    crate::quant_format(ty).unwrap().quantize_row(x, &mut out).unwrap();
    out
}
