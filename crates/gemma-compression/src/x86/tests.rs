//! Every SIMD kernel against its scalar twin, at every SIMD level this CPU reports. Integer parts must agree
//! exactly (checked with unit scales, where the f32 result is the integer sum), float results within 1e-5 of
//! the sum of |terms|.

use super::{activations, iq4 as simd_iq4, k_quants as simd_k, legacy as simd_legacy};
use crate::iq4::{IQ4_NL, IQ4_XS};
use crate::k_quants::{self, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K_BSUMS, Q8K_QS};
use crate::q_legacy::{self, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1};
use crate::test_data::{assert_close, f16_bytes, TestRng};
use crate::{cpu_has_avx512_vnni, quant_format, GgmlType, SimdLevel};

/// The levels whose kernels can run here, each named; levels without their own kernels are reported, not run.
fn levels_to_run() -> Vec<SimdLevel> {
    let mut run = Vec::new();
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
        run.push(SimdLevel::Avx2);
    } else {
        println!("skipping avx2+fma: not supported by this CPU");
    }
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
        println!(
            "avx512 reported: the AVX2 kernels are checked here, and the k-quant single-row dots also on AVX-512 VNNI; \
             the VNNI tiles are checked in legacy_tiles and k_quants"
        );
    }
    println!("SIMD levels checked against scalar: {run:?}");
    run
}

/// Sets every weight byte to 0xff (largest quants, and for Q4_K the largest scales and mins) and every
/// activation quant to +127 or -127, keeping the block headers the caller rewrites afterwards.
fn extreme_block(act_ty: GgmlType, positive: bool, w: &mut [u8], a: &mut [u8]) {
    w.fill(0xff);
    let q = if positive { 127i8 } else { -127 } as u8;
    let qs = match act_ty {
        GgmlType::Q8K => Q8K_QS..Q8K_BSUMS,
        GgmlType::Q8_1 => 4..36,
        _ => 2..34,
    };
    a[qs].fill(q);
    if act_ty == GgmlType::Q8K {
        let sum = (q as i8 as i16) * 16;
        for g in 0..16 {
            a[Q8K_BSUMS + 2 * g..Q8K_BSUMS + 2 * g + 2].copy_from_slice(&sum.to_le_bytes());
        }
    }
}

type DotKernel = unsafe fn(usize, &[u8], &[u8]) -> f32;

/// Random weight row of `nb` blocks: random quant bytes, then the scale fields overwritten by `scales`.
fn weight_row(rng: &mut TestRng, ty: GgmlType, nb: usize, scales: &mut dyn FnMut(&mut TestRng, &mut [u8])) -> Vec<u8> {
    let mut w = rng.bytes(nb * ty.type_size());
    for b in w.chunks_exact_mut(ty.type_size()) {
        scales(rng, b);
    }
    w
}

/// Activations with unit scale and random quants in -127..=127 (bsums consistent for Q8_K; s = 0 for Q8_1).
fn unit_activations(rng: &mut TestRng, act_ty: GgmlType, n: usize) -> Vec<u8> {
    let mut a = vec![0u8; act_ty.row_bytes(n).unwrap()];
    for b in a.chunks_exact_mut(act_ty.type_size()) {
        match act_ty {
            GgmlType::Q8K => {
                b[..4].copy_from_slice(&1.0f32.to_le_bytes());
                for q in &mut b[Q8K_QS..Q8K_BSUMS] {
                    *q = ((rng.next_u64() % 255) as i32 - 127) as i8 as u8;
                }
                for g in 0..16 {
                    let s: i32 = b[Q8K_QS + 16 * g..Q8K_QS + 16 * g + 16].iter().map(|&q| q as i8 as i32).sum();
                    b[Q8K_BSUMS + 2 * g..Q8K_BSUMS + 2 * g + 2].copy_from_slice(&(s as i16).to_le_bytes());
                }
            }
            _ => {
                b[..2].copy_from_slice(&f16_bytes(1.0));
                let qs = if act_ty == GgmlType::Q8_1 {
                    b[2..4].copy_from_slice(&f16_bytes(0.0));
                    4
                } else {
                    2
                };
                for q in &mut b[qs..] {
                    *q = ((rng.next_u64() % 255) as i32 - 127) as i8 as u8;
                }
            }
        }
    }
    a
}

struct DotCase {
    ty: GgmlType,
    simd: DotKernel,
    /// The AVX-512 VNNI version, where this file checks one (the k-quants' 1 x 1 tiles).
    simd512: Option<DotKernel>,
    scalar: fn(&[u8], &[u8]) -> f32,
    /// Writes unit scales (d = 1, dmin = 1 or m = 0) into one block.
    unit: fn(&mut [u8]),
    /// Writes realistic random scales into one block.
    real: fn(&mut TestRng, &mut [u8]),
}

fn dot_cases() -> Vec<DotCase> {
    fn d_at(off: usize) -> impl Fn(&mut [u8], f32) {
        move |b: &mut [u8], v: f32| b[off..off + 2].copy_from_slice(&f16_bytes(v))
    }
    vec![
        DotCase {
            ty: GgmlType::Q8_0,
            simd: simd_legacy::dot_q8_0,
            simd512: None,
            scalar: q_legacy::dot_scalar::<Q8_0>,
            unit: |b| d_at(0)(b, 1.0),
            real: |r, b| d_at(0)(b, r.uniform() * 0.01),
        },
        DotCase {
            ty: GgmlType::Q4_0,
            simd: simd_legacy::dot_q4_0,
            simd512: None,
            scalar: q_legacy::dot_scalar::<Q4_0>,
            unit: |b| d_at(0)(b, 1.0),
            real: |r, b| d_at(0)(b, r.uniform() * 0.1),
        },
        DotCase {
            ty: GgmlType::Q5_0,
            simd: simd_legacy::dot_q5_0,
            simd512: None,
            scalar: q_legacy::dot_scalar::<Q5_0>,
            unit: |b| d_at(0)(b, 1.0),
            real: |r, b| d_at(0)(b, r.uniform() * 0.05),
        },
        DotCase {
            ty: GgmlType::Q4_1,
            simd: simd_legacy::dot_q4_1,
            simd512: None,
            scalar: q_legacy::dot_scalar::<Q4_1>,
            unit: |b| {
                d_at(0)(b, 1.0);
                d_at(2)(b, 0.0)
            },
            real: |r, b| {
                d_at(0)(b, r.uniform().abs() * 0.1);
                d_at(2)(b, r.uniform() * 0.8)
            },
        },
        DotCase {
            ty: GgmlType::Q5_1,
            simd: simd_legacy::dot_q5_1,
            simd512: None,
            scalar: q_legacy::dot_scalar::<Q5_1>,
            unit: |b| {
                d_at(0)(b, 1.0);
                d_at(2)(b, 0.0)
            },
            real: |r, b| {
                d_at(0)(b, r.uniform().abs() * 0.05);
                d_at(2)(b, r.uniform() * 0.8)
            },
        },
        DotCase {
            ty: GgmlType::Q2K,
            simd: simd_k::dot_one_avx2::<Q2K>,
            simd512: Some(simd_k::dot_one_avx512::<Q2K>),
            scalar: k_quants::dot_scalar::<Q2K>,
            unit: |b| {
                d_at(80)(b, 1.0);
                d_at(82)(b, 1.0)
            },
            real: |r, b| {
                d_at(80)(b, r.uniform().abs() * 0.01);
                d_at(82)(b, r.uniform().abs() * 0.01)
            },
        },
        DotCase {
            ty: GgmlType::Q3K,
            simd: simd_k::dot_one_avx2::<Q3K>,
            simd512: Some(simd_k::dot_one_avx512::<Q3K>),
            scalar: k_quants::dot_scalar::<Q3K>,
            unit: |b| d_at(108)(b, 1.0),
            real: |r, b| d_at(108)(b, r.uniform() * 0.002),
        },
        DotCase {
            ty: GgmlType::Q4K,
            simd: simd_k::dot_one_avx2::<Q4K>,
            simd512: Some(simd_k::dot_one_avx512::<Q4K>),
            scalar: k_quants::dot_scalar::<Q4K>,
            unit: |b| {
                d_at(0)(b, 1.0);
                d_at(2)(b, 1.0)
            },
            real: |r, b| {
                d_at(0)(b, r.uniform().abs() * 0.002);
                d_at(2)(b, r.uniform().abs() * 0.002)
            },
        },
        DotCase {
            ty: GgmlType::Q5K,
            simd: simd_k::dot_one_avx2::<Q5K>,
            simd512: Some(simd_k::dot_one_avx512::<Q5K>),
            scalar: k_quants::dot_scalar::<Q5K>,
            unit: |b| {
                d_at(0)(b, 1.0);
                d_at(2)(b, 1.0)
            },
            real: |r, b| {
                d_at(0)(b, r.uniform().abs() * 0.001);
                d_at(2)(b, r.uniform().abs() * 0.002)
            },
        },
        DotCase {
            ty: GgmlType::Q6K,
            simd: simd_k::dot_one_avx2::<Q6K>,
            simd512: Some(simd_k::dot_one_avx512::<Q6K>),
            scalar: k_quants::dot_scalar::<Q6K>,
            unit: |b| d_at(208)(b, 1.0),
            real: |r, b| d_at(208)(b, r.uniform() * 0.0005),
        },
        DotCase {
            ty: GgmlType::IQ4_NL,
            simd: simd_iq4::dot_one_nl_avx2,
            simd512: Some(simd_iq4::dot_one_nl_vnni),
            scalar: q_legacy::dot_scalar::<IQ4_NL>,
            unit: |b| d_at(0)(b, 1.0),
            real: |r, b| d_at(0)(b, r.uniform() * 0.01),
        },
        DotCase {
            ty: GgmlType::IQ4_XS,
            simd: simd_k::dot_one_avx2::<IQ4_XS>,
            simd512: Some(simd_k::dot_one_avx512::<IQ4_XS>),
            scalar: k_quants::dot_scalar::<IQ4_XS>,
            unit: |b| d_at(0)(b, 1.0),
            real: |r, b| d_at(0)(b, r.uniform() * 0.0005),
        },
    ]
}

/// The kernels of one case that this CPU runs at `level`, named: the AVX2 one, plus the AVX-512 VNNI one where the
/// case has it and the CPU reports it (a CPU with VNNI always runs it).
fn case_kernels(case: &DotCase, level: SimdLevel) -> Vec<(String, DotKernel)> {
    let mut out = vec![(level.to_string(), case.simd)];
    match case.simd512 {
        Some(k) if cpu_has_avx512_vnni() => out.push(("avx512-vnni".to_string(), k)),
        Some(_) => println!("{}: skipping avx512-vnni: not supported by this CPU", case.ty),
        None => {}
    }
    out
}

#[test]
fn dot_kernels_equal_their_scalar_twins() {
    for level in levels_to_run() {
        for case in dot_cases() {
            let f = quant_format(case.ty).unwrap();
            let act_ty = f.vec_dot_type();
            let bs = case.ty.block_size();
            for (name, simd) in case_kernels(&case, level) {
                let mut rng = TestRng::new(case.ty.id() as u64 * 31 + 5);
                // integer part, one block per call so every partial sum is exact in f32: unit scales make the
                // result the integer sum itself. Random blocks, then blocks of extreme quants.
                for i in 0..200 {
                    let mut w = weight_row(&mut rng, case.ty, 1, &mut |_, b| (case.unit)(b));
                    let mut a = unit_activations(&mut rng, act_ty, bs);
                    if i >= 190 {
                        extreme_block(act_ty, i % 2 == 0, &mut w, &mut a);
                        if i >= 196 {
                            // all-zero weight bytes: for Q3_K the most negative quants (-4) and scales (-32)
                            w.fill(0);
                        }
                        (case.unit)(&mut w);
                    }
                    let want = (case.scalar)(&w, &a);
                    // SAFETY: `case_kernels` lists a kernel only when the CPU reports its features.
                    let got = unsafe { simd(bs, &w, &a) };
                    assert_eq!(got, want, "{} {name} block {i}: integer sums differ", case.ty);
                }
                for n_blocks in [1usize, 2, 3, 10, 40] {
                    let n = n_blocks * bs;
                    // float part: realistic scales, activations quantized from real-shaped data
                    let w = weight_row(&mut rng, case.ty, n_blocks, &mut |r, b| (case.real)(r, b));
                    let mut a = vec![0u8; act_ty.row_bytes(n).unwrap()];
                    quant_format(act_ty).unwrap().quantize_row(&rng.row(n), &mut a).unwrap();
                    let (mut wd, mut ad) = (vec![0.0f32; n], vec![0.0f32; n]);
                    f.dequantize_row(&w, &mut wd);
                    quant_format(act_ty).unwrap().dequantize_row(&a, &mut ad);
                    let abs: f32 = wd.iter().zip(&ad).map(|(x, y)| (x * y).abs()).sum();
                    // formats with mins subtract a separate product: its rounding counts too
                    let mins = if matches!(case.ty, GgmlType::Q2K | GgmlType::Q4K | GgmlType::Q5K) {
                        wd.iter().map(|v| v.abs()).sum::<f32>() * ad.iter().fold(0f32, |m, v| m.max(v.abs()))
                    } else {
                        0.0
                    };
                    let want = (case.scalar)(&w, &a);
                    // SAFETY: as above.
                    let got = unsafe { simd(n, &w, &a) };
                    assert_close(got, want, 1e-5, abs + mins, &format!("{} {name} n={n}", case.ty));
                }
                println!("{} {name}: dot agrees with scalar", case.ty);
            }
        }
    }
}

/// Rows that exercise rounding: real-shaped data plus blocks with exact .5 ties (amax 127 gives d = 1, and for
/// Q8_K max -127 gives iscale = 1).
fn quantizer_inputs(rng: &mut TestRng, n: usize) -> Vec<Vec<f32>> {
    let mut ties: Vec<f32> = (0..n).map(|i| ((i % 50) as f32 - 25.0) + 0.5).collect();
    for c in ties.chunks_mut(32) {
        c[0] = 127.0;
    }
    let mut ties_k: Vec<f32> = (0..n).map(|i| ((i % 50) as f32 - 25.0) + 0.5).collect();
    for c in ties_k.chunks_mut(256) {
        c[3] = -127.0;
        c[9] = 127.0; // same magnitude later: the first one decides the sign
    }
    let mut zero_block = rng.row(n);
    zero_block[..256].fill(0.0);
    vec![rng.row(n), rng.row(n), ties, ties_k, zero_block]
}

#[test]
fn activation_quantizers_equal_their_scalar_twins() {
    for level in levels_to_run() {
        let mut rng = TestRng::new(77);
        for x in quantizer_inputs(&mut rng, 1024) {
            let run = |ty: GgmlType, simd: unsafe fn(&[f32], &mut [u8]), scalar: fn(&[f32], &mut [u8])| {
                let mut got = vec![0u8; ty.row_bytes(x.len()).unwrap()];
                let mut want = vec![0xaau8; got.len()];
                // SAFETY: `level` is only listed when the CPU reports avx2, fma and f16c.
                unsafe { simd(&x, &mut got) };
                scalar(&x, &mut want);
                assert_eq!(got, want, "{ty} {level}: quantized bytes differ");
            };
            run(GgmlType::Q8_0, activations::quantize_q8_0, q_legacy::quantize_scalar::<Q8_0>);
            run(GgmlType::Q8_1, activations::quantize_q8_1, q_legacy::quantize_scalar::<Q8_1>);
            run(GgmlType::Q8K, activations::quantize_q8_k, k_quants::quantize_scalar::<k_quants::Q8K>);
        }
        println!("Q8_0/Q8_1/Q8_K quantizers {level}: bytes equal scalar");
    }
}

#[test]
fn q8_0_decoder_equals_its_scalar_twin() {
    for level in levels_to_run() {
        let mut rng = TestRng::new(78);
        let mut w = rng.bytes(34 * 20);
        for b in w.chunks_exact_mut(34) {
            b[..2].copy_from_slice(&f16_bytes(rng.normal()));
        }
        let (mut got, mut want) = (vec![0.0f32; 640], vec![0.0f32; 640]);
        // SAFETY: `level` is only listed when the CPU reports avx2, fma and f16c.
        unsafe { activations::dequantize_q8_0(&w, &mut got) };
        q_legacy::dequantize_scalar::<Q8_0>(&w, &mut want);
        assert_eq!(got, want, "Q8_0 decode {level}");
        println!("Q8_0 decoder {level}: equals scalar");
    }
}
