//! The formats against real model files: Gemma 3 270M (q8_0, q5_0, q4_K, q6_K) and SmolLM2 135M (q4_1).
//! For a few rows of a tensor of each weight type: decoded values are finite and of weight-like magnitude, and
//! `vec_dot` with quantized activations matches the f32 dot of the decoded rows.

use gemma_compression::{quant_format, simd_level, GgmlType};
use gemma_io::GgufFile;

/// Deterministic activation-like values (SplitMix64, roughly normal, a few outliers).
fn activations(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    (0..n)
        .map(|i| {
            let v = (next() + next() + next() + next()) * 0.9;
            if i % 97 == 0 {
                v * 12.0
            } else {
                v
            }
        })
        .collect()
}

/// Checks `rows` rows spread over the first tensor of each type in `want`; returns the types it found.
fn check_model(path: &std::path::Path, want: &[GgmlType]) {
    let file = GgufFile::open(path).expect("open model");
    println!("{}: simd level {}", path.display(), simd_level());
    for &ty in want {
        let tensors: Vec<_> = file.tensors().iter().filter(|t| t.ggml_type == ty && t.dims.len() == 2).collect();
        assert!(!tensors.is_empty(), "{}: no 2-D tensor of type {ty}", path.display());
        let format = quant_format(ty).expect("format");
        let act_format = quant_format(format.vec_dot_type()).expect("activation format");
        let mut worst_formula = 0.0f64;
        let mut worst_truth = 0.0f64;
        // up to three tensors of this type, four rows each (first, last and two between)
        for t in tensors.iter().take(3) {
            let (n, n_rows) = (t.row_len(), t.n_rows());
            let row_bytes = ty.row_bytes(n).expect("whole blocks");
            let data = file.tensor_data(t);
            assert_eq!(data.len(), row_bytes * n_rows, "{}", t.name);
            let x = activations(n, n as u64 + n_rows as u64);
            let mut a = vec![0u8; format.vec_dot_type().row_bytes(n).unwrap()];
            act_format.quantize_row(&x, &mut a).expect("quantize activations");
            let mut ad = vec![0.0f32; n];
            act_format.dequantize_row(&a, &mut ad);
            for r in [0, n_rows / 3, 2 * n_rows / 3, n_rows - 1] {
                let w = &data[r * row_bytes..(r + 1) * row_bytes];
                let mut wd = vec![0.0f32; n];
                format.dequantize_row(w, &mut wd);
                assert!(wd.iter().all(|v| v.is_finite()), "{} row {r}: non-finite weight", t.name);
                let max = wd.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert!(max > 0.0 && max < 1e3, "{} row {r}: max |w| = {max}", t.name);

                let got = format.vec_dot(n, w, &a) as f64;
                let formula: f64 = wd.iter().zip(&ad).map(|(&p, &q)| p as f64 * q as f64).sum();
                let abs: f64 = wd.iter().zip(&ad).map(|(&p, &q)| (p as f64 * q as f64).abs()).sum();
                let truth: f64 = wd.iter().zip(&x).map(|(&p, &q)| p as f64 * q as f64).sum();
                // the Q8_1 partner carries s = d * sum(q) in f16, multiplied by each block's min
                let tol_formula = 1e-5 * abs + if ty == GgmlType::Q4_1 { 2e-3 * abs } else { 0.0 };
                assert!(
                    (got - formula).abs() <= tol_formula,
                    "{} row {r}: vec_dot {got} vs decoded dot {formula} (sum |terms| {abs})",
                    t.name
                );
                // activation quantization: at most half a step (amax/127 per block) per element
                let bs = format.vec_dot_type().block_size();
                let act_err: f64 = wd
                    .chunks(bs)
                    .zip(x.chunks(bs))
                    .map(|(wc, xc)| {
                        let step = xc.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                        wc.iter().map(|v| v.abs() as f64).sum::<f64>() * (0.5 * step * 1.01)
                    })
                    .sum();
                assert!(
                    (got - truth).abs() <= act_err + tol_formula,
                    "{} row {r}: vec_dot {got} vs f32 dot {truth}, bound {act_err}",
                    t.name
                );
                worst_formula = worst_formula.max((got - formula).abs() / abs);
                worst_truth = worst_truth.max((got - truth).abs() / act_err.max(f64::MIN_POSITIVE));
            }
        }
        // throughput of a whole matrix-vector product over the first tensor (measured, not asserted)
        let t = tensors[0];
        let (n, n_rows) = (t.row_len(), t.n_rows());
        let row_bytes = ty.row_bytes(n).expect("whole blocks");
        let x = activations(n, 1);
        let mut a = vec![0u8; format.vec_dot_type().row_bytes(n).unwrap()];
        let start = std::time::Instant::now();
        act_format.quantize_row(&x, &mut a).expect("quantize activations");
        let quantize_time = start.elapsed();
        // best of five runs: the first one also pays for faulting the mapped pages in
        let mut secs = f64::MAX;
        let mut checksum = 0.0f32;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            checksum = file.tensor_data(t).chunks_exact(row_bytes).map(|w| format.vec_dot(n, w, &a)).sum();
            secs = secs.min(start.elapsed().as_secs_f64());
        }
        assert!(checksum.is_finite());
        println!(
            "{ty}: matvec {} ({n} x {n_rows}) in {:.2} ms = {:.2} G mult-adds/s; activation quantize {:?}",
            t.name,
            secs * 1e3,
            (n * n_rows) as f64 / secs / 1e9,
            quantize_time
        );
        println!(
            "{ty}: {} tensors, worst |vec_dot - decoded dot| = {worst_formula:.2e} of sum|terms|, worst error vs \
             f32 activations = {worst_truth:.3} of the quantization bound",
            tensors.len()
        );
    }
}

#[test]
fn gemma_3_270m_weight_types() {
    let path = gemma_fetch::resolve_model("gemma-3-270m").expect("Gemma 3 270M in the model cache");
    check_model(&path, &[GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4K, GgmlType::Q6K]);
}

#[test]
fn smollm2_135m_weight_types() {
    let path = gemma_fetch::resolve_model("smollm2-135m-instruct").expect("SmolLM2 135M in the model cache");
    check_model(&path, &[GgmlType::Q4_1]);
}
