//! NUQ, gemma.cpp's non-uniform quantization (`compression/nuq-inl.h`): each group of 256 elements is
//! clustered into at most 16 values; the group stores the 16 cluster centres as SFP bytes, then one 4-bit
//! cluster index per element, two per byte, the even element in the low nibble.
//!
//! Layout of a stream of `n` elements (gemma.cpp's interleaved layout): group `g` starts at byte `g * 144`
//! with its 16 table bytes, then `ceil(len / 2)` index bytes, where `len` is 256 except for the last group.
//! A stream takes `16 * ceil(n / 256) + ceil(n / 2)` bytes (`NuqStream::PackedEnd`). For an odd last group,
//! the high nibble of its last byte is the cluster of the value gemma.cpp pads the group with (its maximum).
//!
//! Encoding is gemma.cpp's `ClusterExactL2`: values are sorted (each carrying its index in the low 8 mantissa
//! bits, which the sums ignore), then dynamic programming over the sorted order finds the 16 contiguous
//! clusters of least total squared error, with the costs computed from f32 cumulative sums exactly as
//! gemma.cpp computes them, FMA included, so the same clusters come out. Centres are the f64 means.

use crate::sbs_codec::{
    assert_dot_stream, bf16_to_f32, check_stream, dot_lanes_scalar, SbsCodec, SbsCodecError, SbsCodecType,
};
use crate::sfp::{sfp_decode, sfp_decode_bf16, sfp_encode};

/// Elements per group.
pub const NUQ_GROUP: usize = 256;
/// Clusters (table entries) per group.
pub const NUQ_CLUSTERS: usize = 16;
/// Bytes of a whole group: the table and 128 index bytes.
pub(crate) const NUQ_GROUP_BYTES: usize = NUQ_CLUSTERS + NUQ_GROUP / 2;

/// Bytes of a NUQ stream of `n` elements.
pub fn nuq_packed_bytes(n: usize) -> usize {
    NUQ_CLUSTERS * n.div_ceil(NUQ_GROUP) + n.div_ceil(2)
}

/// Byte offset of the table of the group holding element `p`.
#[inline(always)]
pub(crate) fn nuq_table_offset(p: usize) -> usize {
    (p / NUQ_GROUP) * NUQ_GROUP_BYTES
}

/// The cluster index of element `p`.
#[inline(always)]
pub(crate) fn nuq_index_at(packed: &[u8], p: usize) -> u8 {
    let within = p % NUQ_GROUP;
    let byte = packed[nuq_table_offset(p) + NUQ_CLUSTERS + within / 2];
    if within & 1 == 0 {
        byte & 0xf
    } else {
        byte >> 4
    }
}

/// The SFP code of element `p`'s centre.
#[inline(always)]
pub(crate) fn nuq_code_at(packed: &[u8], p: usize) -> u8 {
    packed[nuq_table_offset(p) + nuq_index_at(packed, p) as usize]
}

/// The value of element `p`.
#[inline(always)]
pub(crate) fn nuq_value_at(packed: &[u8], p: usize) -> f32 {
    sfp_decode(nuq_code_at(packed, p))
}

/// Scratch for clustering one group (gemma.cpp's `ClusterBuf`); reuse it across groups.
pub struct NuqClusterBuf {
    /// `costs[k * 256 + m]`: least cost of clustering sorted values 0..=m into k + 1 clusters.
    costs: Vec<f32>,
    /// `argmin[k * 256 + m]`: where the last of those clusters starts.
    argmin: Vec<u32>,
}

impl Default for NuqClusterBuf {
    fn default() -> Self {
        NuqClusterBuf { costs: vec![0.0; NUQ_CLUSTERS * NUQ_GROUP], argmin: vec![0; NUQ_CLUSTERS * NUQ_GROUP] }
    }
}

/// The low 8 mantissa bits of a sorted value carry its original index (gemma.cpp's `FloatPayload`).
#[inline(always)]
fn payload_clear(f: f32) -> f32 {
    f32::from_bits(f.to_bits() & !(NUQ_GROUP as u32 - 1))
}
#[inline(always)]
fn payload_set(f: f32, i: usize) -> f32 {
    f32::from_bits(payload_clear(f).to_bits() | i as u32)
}
#[inline(always)]
fn payload_get(f: f32) -> usize {
    (f.to_bits() & (NUQ_GROUP as u32 - 1)) as usize
}

/// Cumulative sums of the sorted values, for O(1) cluster costs (gemma.cpp's `ClusterCost`).
pub(crate) struct ClusterCost {
    /// f32 copies of the f64 running sums of x and x^2; element i sums values 0..i.
    cumsum: [f32; NUQ_GROUP + 1],
    cumsum2: [f32; NUQ_GROUP + 1],
    /// `len_f[l]` = l and `inv_len[l]` = 1 / l in f32.
    len_f: [f32; NUQ_GROUP + 1],
    inv_len: [f32; NUQ_GROUP + 1],
    /// f64 running sums, for the centres.
    dcumsum: [f64; NUQ_GROUP + 1],
}

impl ClusterCost {
    fn new(sorted: &[f32; NUQ_GROUP]) -> ClusterCost {
        let mut cc = ClusterCost {
            cumsum: [0.0; NUQ_GROUP + 1],
            cumsum2: [0.0; NUQ_GROUP + 1],
            len_f: [0.0; NUQ_GROUP + 1],
            inv_len: [0.0; NUQ_GROUP + 1],
            dcumsum: [0.0; NUQ_GROUP + 1],
        };
        let (mut sum, mut sum2) = (0.0f64, 0.0f64);
        for (i, &s) in sorted.iter().enumerate() {
            let x = payload_clear(s) as f64;
            sum += x;
            sum2 += x * x;
            cc.dcumsum[i + 1] = sum;
            cc.cumsum[i + 1] = sum as f32;
            cc.cumsum2[i + 1] = sum2 as f32;
        }
        for l in 1..=NUQ_GROUP {
            cc.len_f[l] = l as f32;
            cc.inv_len[l] = 1.0 / l as f32;
        }
        cc
    }

    /// The cumulative sums of a sorted group (tests of the clustering kernels).
    #[cfg(test)]
    pub(crate) fn for_sorted(sorted: &[f32]) -> ClusterCost {
        let mut group = [0.0f32; NUQ_GROUP];
        group.copy_from_slice(&sorted[..NUQ_GROUP]);
        ClusterCost::new(&group)
    }

    #[cfg(test)]
    pub(crate) fn cost_for_test(&self, first: usize, last: usize) -> f32 {
        self.cost(first, last)
    }

    /// Sum of squared distances of sorted values `first..=last` from their mean, as gemma.cpp's `SumCosts`
    /// computes it: `sum2 + mu * (mu * len - 2 * sum)` with two FMAs, negative results clamped to zero.
    #[inline(always)]
    fn cost(&self, first: usize, last: usize) -> f32 {
        let len = last + 1 - first;
        let sum = self.cumsum[last + 1] - self.cumsum[first];
        let sum2 = self.cumsum2[last + 1] - self.cumsum2[first];
        let mu = sum * self.inv_len[len];
        let two_sum = sum + sum;
        let l2 = mu.mul_add(mu.mul_add(self.len_f[len], -two_sum), sum2);
        if l2 > 0.0 {
            l2
        } else {
            0.0
        }
    }
}

/// One row of the dynamic program: from `prev_costs`/`prev_arg` (k clusters) fills `costs`/`arg` (k + 1
/// clusters). For each end `last`, the candidates are every start `first` of the last cluster in increasing
/// order, taken only when strictly cheaper, as gemma.cpp's vectorized loop does per lane. Written as
/// independent lanes over `last` so it vectorizes; `x86::sbs_dots` compiles it with FMA enabled, which gives
/// the same bits (FMA is exact either way).
#[inline(always)]
pub(crate) fn cluster_dp_row(
    cc: &ClusterCost,
    prev_costs: &[f32],
    prev_arg: &[u32],
    costs: &mut [f32],
    arg: &mut [u32],
) {
    let (prev_costs, prev_arg) = (&prev_costs[..NUQ_GROUP], &prev_arg[..NUQ_GROUP]);
    let (costs, arg) = (&mut costs[..NUQ_GROUP], &mut arg[..NUQ_GROUP]);
    costs.copy_from_slice(prev_costs);
    arg.copy_from_slice(prev_arg);
    for first in 1..NUQ_GROUP {
        let prev = prev_costs[first - 1];
        let (lo_sum, lo_sum2) = (cc.cumsum[first], cc.cumsum2[first]);
        let hi_sum = &cc.cumsum[first + 1..];
        let hi_sum2 = &cc.cumsum2[first + 1..];
        let lens = &cc.len_f[1..];
        let inv_lens = &cc.inv_len[1..];
        let m = NUQ_GROUP - first;
        let (costs, arg) = (&mut costs[first..], &mut arg[first..]);
        for j in 0..m {
            // last = first + j, len = j + 1
            let sum = hi_sum[j] - lo_sum;
            let sum2 = hi_sum2[j] - lo_sum2;
            let mu = sum * inv_lens[j];
            let two_sum = sum + sum;
            let l2 = mu.mul_add(mu.mul_add(lens[j], -two_sum), sum2);
            let l2 = if l2 > 0.0 { l2 } else { 0.0 };
            let c = prev + l2;
            let less = c < costs[j];
            costs[j] = if less { c } else { costs[j] };
            arg[j] = if less { first as u32 } else { arg[j] };
        }
    }
}

fn run_dp_row(cc: &ClusterCost, buf: &mut NuqClusterBuf, k: usize) {
    let (done, rest) = buf.costs.split_at_mut(k * NUQ_GROUP);
    let (done_arg, rest_arg) = buf.argmin.split_at_mut(k * NUQ_GROUP);
    let prev_costs = &done[(k - 1) * NUQ_GROUP..];
    let prev_arg = &done_arg[(k - 1) * NUQ_GROUP..];
    if crate::x86_dispatch!(sbs_dots::cluster_dp_row_fma(cc, prev_costs, prev_arg, &mut *rest, &mut *rest_arg))
        .is_none()
    {
        cluster_dp_row(cc, prev_costs, prev_arg, rest, rest_arg);
    }
}

/// gemma.cpp's `ClusterExactL2`: clusters `x` (at most 256 finite values) into at most 16 clusters of least
/// total squared error. Fills `centers` (ascending; unused leading ones 0) and `indices` (for all 256
/// positions: those past `x.len()` belong to the padding, copies of the maximum). Returns the number of unused
/// clusters (the index of the first used centre).
pub fn nuq_cluster(
    x: &[f32],
    buf: &mut NuqClusterBuf,
    centers: &mut [f32; NUQ_CLUSTERS],
    indices: &mut [u16; NUQ_GROUP],
) -> usize {
    let num = x.len().min(NUQ_GROUP);
    let mut sorted = [0.0f32; NUQ_GROUP];
    for (i, s) in sorted.iter_mut().enumerate().take(num) {
        *s = payload_set(x[i], i);
    }
    if num < NUQ_GROUP {
        // Pad with an existing value so no cluster is spent on a sentinel: the largest.
        let max = x[..num].iter().fold(-1e38f32, |m, &v| if m < v { v } else { m });
        for (i, s) in sorted.iter_mut().enumerate().skip(num) {
            *s = payload_set(max, i);
        }
    }
    // The payloads make every key distinct, so any correct sort gives gemma.cpp's order.
    sorted.sort_unstable_by(|a, b| a.total_cmp(b));
    let cc = ClusterCost::new(&sorted);

    for last in 0..NUQ_GROUP {
        buf.costs[last] = cc.cost(0, last);
        buf.argmin[last] = 0;
    }
    for k in 1..NUQ_CLUSTERS {
        run_dp_row(&cc, buf, k);
    }

    // Backtrack: clusters are [argmin(k, last), last].
    let mut last = NUQ_GROUP - 1;
    let mut unused = 0;
    for k in (0..NUQ_CLUSTERS).rev() {
        let start = buf.argmin[k * NUQ_GROUP + last] as usize;
        let sum = cc.dcumsum[last + 1] - cc.dcumsum[start];
        let size = (last - start + 1) as f64;
        centers[k] = (sum / size) as f32;
        for s in &sorted[start..=last] {
            indices[payload_get(*s)] = k as u16;
        }
        if start == 0 {
            unused = k;
            centers[..k].fill(0.0);
            break;
        }
        last = start - 1;
    }
    unused
}

/// Whether NUQ (whose centres are SFP) can hold `v`: not NaN and at most 1.875 in magnitude once truncated to
/// bf16, as SFP encodes it.
fn nuq_encodable(v: f32) -> bool {
    ((v.to_bits() >> 16) & 0x7fff) <= 0x3ff0
}

/// Encodes `src` into the stream at element `packed_ofs` (a multiple of 256), as gemma.cpp's `NuqCodec::Enc`.
/// Returns the total number of unused clusters.
pub fn nuq_encode(
    src: &[f32],
    packed: &mut [u8],
    packed_ofs: usize,
    buf: &mut NuqClusterBuf,
) -> Result<usize, SbsCodecError> {
    if !packed_ofs.is_multiple_of(NUQ_GROUP) {
        return Err(SbsCodecError::UnalignedOffset { codec: SbsCodecType::Nuq, packed_ofs, group: NUQ_GROUP });
    }
    check_stream(&NUQ_CODEC, packed.len(), packed_ofs, src.len())?;
    if let Some(i) = src.iter().position(|&v| !nuq_encodable(v)) {
        return Err(SbsCodecError::OutOfRange { codec: SbsCodecType::Nuq, index: packed_ofs + i, value: src[i] });
    }
    let mut unused = 0;
    let mut centers = [0.0f32; NUQ_CLUSTERS];
    let mut indices = [0u16; NUQ_GROUP];
    for (g, group) in src.chunks(NUQ_GROUP).enumerate() {
        unused += nuq_cluster(group, buf, &mut centers, &mut indices);
        let table = nuq_table_offset(packed_ofs + g * NUQ_GROUP);
        for (o, &c) in packed[table..table + NUQ_CLUSTERS].iter_mut().zip(&centers) {
            *o = sfp_encode(c);
        }
        let index_bytes = &mut packed[table + NUQ_CLUSTERS..table + NUQ_CLUSTERS + group.len().div_ceil(2)];
        for (j, o) in index_bytes.iter_mut().enumerate() {
            *o = (indices[2 * j] as u8 & 0xf) | ((indices[2 * j + 1] as u8 & 0xf) << 4);
        }
    }
    Ok(unused)
}

pub(crate) struct NuqCodec;
pub(crate) static NUQ_CODEC: NuqCodec = NuqCodec;

impl NuqCodec {
    pub(crate) fn dot_scalar(packed: &[u8], ofs: usize, act: &[f32]) -> f32 {
        dot_lanes_scalar(act.len(), |i| nuq_value_at(packed, ofs + i), |i| act[i])
    }
    pub(crate) fn dot_bf16_scalar(packed: &[u8], ofs: usize, act: &[u16]) -> f32 {
        dot_lanes_scalar(act.len(), |i| nuq_value_at(packed, ofs + i), |i| bf16_to_f32(act[i]))
    }
}

impl SbsCodec for NuqCodec {
    fn codec_type(&self) -> SbsCodecType {
        SbsCodecType::Nuq
    }
    fn group_size(&self) -> usize {
        NUQ_GROUP
    }
    fn packed_bytes(&self, n: usize) -> usize {
        nuq_packed_bytes(n)
    }
    fn encode(&self, src: &[f32], packed: &mut [u8], packed_ofs: usize) -> Result<usize, SbsCodecError> {
        nuq_encode(src, packed, packed_ofs, &mut NuqClusterBuf::default())
    }
    fn decode(&self, packed: &[u8], packed_ofs: usize, dst: &mut [f32]) -> Result<(), SbsCodecError> {
        check_stream(self, packed.len(), packed_ofs, dst.len())?;
        for (i, o) in dst.iter_mut().enumerate() {
            *o = nuq_value_at(packed, packed_ofs + i);
        }
        Ok(())
    }
    fn decode_bf16(&self, packed: &[u8], packed_ofs: usize, dst: &mut [u16]) -> Result<(), SbsCodecError> {
        check_stream(self, packed.len(), packed_ofs, dst.len())?;
        if crate::x86_dispatch!(sbs_dots::decode_nuq_bf16_avx2(packed, packed_ofs, dst)).is_some() {
            return Ok(());
        }
        for (i, o) in dst.iter_mut().enumerate() {
            *o = sfp_decode_bf16(nuq_code_at(packed, packed_ofs + i));
        }
        Ok(())
    }
    fn dot(&self, packed: &[u8], packed_ofs: usize, act: &[f32]) -> f32 {
        assert_dot_stream(self, packed.len(), packed_ofs, act.len());
        if let Some(r) = crate::x86_dispatch!(sbs_dots::dot_nuq(packed, packed_ofs, act)) {
            return r;
        }
        Self::dot_scalar(packed, packed_ofs, act)
    }
    fn dot_bf16(&self, packed: &[u8], packed_ofs: usize, act: &[u16]) -> f32 {
        assert_dot_stream(self, packed.len(), packed_ofs, act.len());
        if let Some(r) = crate::x86_dispatch!(sbs_dots::dot_nuq_bf16(packed, packed_ofs, act)) {
            return r;
        }
        Self::dot_bf16_scalar(packed, packed_ofs, act)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::TestRng;

    /// Highway's test generator (`hwy::RandomState`: xorshift128+ seeded through SplitMix64 from 0x123456789),
    /// so the Gaussian tests below draw exactly gemma.cpp's inputs.
    struct HwyRandomState(u64, u64);

    impl HwyRandomState {
        fn new() -> Self {
            fn split_mix(mut z: u64) -> u64 {
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            }
            let s0 = split_mix(0x1_2345_6789u64.wrapping_add(0x9e37_79b9_7f4a_7c15));
            HwyRandomState(s0, split_mix(s0))
        }
        fn next_u32(&mut self) -> u32 {
            let mut s1 = self.0;
            let s0 = self.1;
            let bits = s1.wrapping_add(s0);
            self.0 = s0;
            s1 ^= s1 << 23;
            s1 ^= s0 ^ (s1 >> 18) ^ (s0 >> 5);
            self.1 = s1;
            bits as u32
        }
    }

    /// gemma.cpp's test inputs (`RandomGaussian` in util/test_util.h): the mean of 40 uniform 20-bit values,
    /// mapped to [-1, 1] and multiplied by sqrt(40 / 3): near-Gaussian, standard deviation about 1/3.
    fn gaussian(rng: &mut HwyRandomState, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let sum: u64 = (0..40).map(|_| (rng.next_u32() & 0xfffff) as u64).sum();
                let mean = sum as f64 / (0xfffff as f64 * 40.0);
                ((2.0 * mean - 1.0) * (40.0f64 / 3.0).sqrt()) as f32
            })
            .collect()
    }

    fn shuffle(rng: &mut TestRng, x: &mut [f32]) {
        for i in (1..x.len()).rev() {
            x.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
    }

    /// gemma.cpp's `DistortionStats`, the parts its NUQ tests check.
    #[derive(Default)]
    struct Distortion {
        n: usize,
        exact: usize,
        sign_flip: usize,
        to_zero: usize,
        sum_l1: f64,
        max_l1: f32,
        nonzero_l1: Vec<f32>,
        sum_log_snr: f64,
    }

    impl Distortion {
        fn notify(&mut self, original: f32, distorted: f32) {
            let to_zero = original != 0.0 && distorted == 0.0;
            let l1 = (original - distorted).abs();
            self.n += 1;
            self.exact += (original == distorted) as usize;
            self.to_zero += to_zero as usize;
            self.sign_flip += ((original < 0.0) != (distorted < 0.0) && !to_zero) as usize;
            self.sum_l1 += l1 as f64;
            self.max_l1 = self.max_l1.max(l1);
            if l1 != 0.0 {
                self.nonzero_l1.push(l1);
                self.sum_log_snr += (1.0 + original.abs() as f64 / l1 as f64).ln();
            }
        }
        fn geomean_value_div_l1(&self) -> f64 {
            if self.nonzero_l1.is_empty() {
                return 0.0;
            }
            (self.sum_log_snr / self.nonzero_l1.len() as f64).exp()
        }
        fn weighted_average_l1(&self) -> f64 {
            if self.nonzero_l1.is_empty() {
                return 0.0;
            }
            let mut sorted = self.nonzero_l1.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let median = sorted[sorted.len() / 2];
            let dist: Vec<f32> = self.nonzero_l1.iter().map(|&d| (d - median).abs()).collect();
            let max_abs = dist.iter().fold(-1.0f32, |m, &d| m.max(d));
            if max_abs == 0.0 {
                return median as f64;
            }
            let inv_max = 1.0 / max_abs as f64;
            let weights: Vec<f32> =
                dist.iter().map(|&d| (4.0 * (d as f64 * inv_max) * (d as f64 * inv_max)).exp() as f32).collect();
            let sum_w: f64 = dist.iter().map(|&d| (4.0 * (d as f64 * inv_max) * (d as f64 * inv_max)).exp()).sum();
            let weighted: f64 = self.nonzero_l1.iter().zip(&weights).map(|(&l, &w)| l as f64 * w as f64).sum();
            weighted / sum_w
        }
    }

    fn cluster(x: &[f32]) -> ([f32; NUQ_CLUSTERS], [u16; NUQ_GROUP], usize) {
        let mut centers = [0.0; NUQ_CLUSTERS];
        let mut indices = [0; NUQ_GROUP];
        let unused = nuq_cluster(x, &mut NuqClusterBuf::default(), &mut centers, &mut indices);
        (centers, indices, unused)
    }

    #[test]
    fn flat_input_uses_one_cluster() {
        // nuq_test.cc TestFlat
        let (centers, indices, unused) = cluster(&[0.5; NUQ_GROUP]);
        assert_eq!(unused, NUQ_CLUSTERS - 1);
        assert!(centers[..unused].iter().all(|&c| c == 0.0));
        assert_eq!(centers[unused], 0.5);
        assert!(indices.iter().all(|&i| i as usize == unused));
    }

    #[test]
    fn shuffled_plateaus_cluster_without_error() {
        // nuq_test.cc TestPlateaus: 16 plateaus of 16 equal values, shuffled.
        let mut x: Vec<f32> = (0..NUQ_GROUP).map(|i| (i / 16) as f32 / 16.0 - 0.5).collect();
        shuffle(&mut TestRng::new(1), &mut x);
        let (centers, indices, unused) = cluster(&x);
        assert_eq!(unused, 0);
        let mut d = Distortion::default();
        for (i, &v) in x.iter().enumerate() {
            d.notify(v, centers[indices[i] as usize]);
        }
        assert_eq!(d.exact, NUQ_GROUP);
        assert_eq!((d.sign_flip, d.to_zero, d.sum_l1), (0, 0, 0.0));
        assert!(centers.windows(2).all(|w| w[0] < w[1]), "{centers:?}");
    }

    #[test]
    fn ramp_clusters_into_equal_runs() {
        // nuq_test.cc TestRamp: its expected error statistics.
        let mut x: Vec<f32> = (0..NUQ_GROUP).map(|i| i as f32 / NUQ_GROUP as f32 - 0.45).collect();
        shuffle(&mut TestRng::new(2), &mut x);
        let (centers, indices, unused) = cluster(&x);
        assert_eq!(unused, 0);
        let mut d = Distortion::default();
        for (i, &v) in x.iter().enumerate() {
            d.notify(v, centers[indices[i] as usize]);
        }
        println!("ramp: sum L1 {}, geomean {}, wL1 {}", d.sum_l1, d.geomean_value_div_l1(), d.weighted_average_l1());
        assert_eq!(d.exact, 0);
        assert!(d.sign_flip < 10);
        assert_eq!(d.to_zero, 0);
        assert_eq!(d.sum_l1, (NUQ_GROUP / NUQ_CLUSTERS) as f64 / 4.0);
        assert!((17.0..=18.0).contains(&d.geomean_value_div_l1()));
        assert!((0.005..=0.010).contains(&d.weighted_average_l1()));
        assert!(d.max_l1 <= 0.04);
        // every cluster is a run of 16 consecutive ramp values
        for k in 0..NUQ_CLUSTERS {
            assert_eq!(indices.iter().filter(|&&i| i as usize == k).count(), 16, "cluster {k}");
        }
    }

    #[test]
    fn normal_group_has_moderate_error() {
        // nuq_test.cc TestNormal: the same inputs, its bounds.
        let x = gaussian(&mut HwyRandomState::new(), NUQ_GROUP);
        let (centers, indices, unused) = cluster(&x);
        assert_eq!(unused, 0);
        let mut d = Distortion::default();
        for (i, &v) in x.iter().enumerate() {
            d.notify(v, centers[indices[i] as usize]);
        }
        println!("normal: sum L1 {}, geomean {}, wL1 {}", d.sum_l1, d.geomean_value_div_l1(), d.weighted_average_l1());
        assert_eq!(d.exact, 0);
        assert!(d.sign_flip < NUQ_GROUP / NUQ_CLUSTERS);
        assert_eq!(d.to_zero, 0);
        assert!((5.0..=6.0).contains(&d.sum_l1), "{}", d.sum_l1);
        assert!((12.7..=12.8).contains(&d.geomean_value_div_l1()), "{}", d.geomean_value_div_l1());
        assert!((0.036..=0.037).contains(&d.weighted_average_l1()), "{}", d.weighted_average_l1());
        assert!(d.max_l1 <= 0.10);
    }

    /// Brute force over every split of a small sorted input into at most `k` runs, for the optimality check.
    fn best_cost(sorted: &[f64], k: usize) -> f64 {
        let cost = |s: &[f64]| {
            let mu = s.iter().sum::<f64>() / s.len() as f64;
            s.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>()
        };
        if k == 1 {
            return cost(sorted);
        }
        (1..sorted.len())
            .map(|cut| cost(&sorted[..cut]) + best_cost(&sorted[cut..], k - 1))
            .fold(cost(sorted), f64::min)
    }

    #[test]
    fn clustering_is_optimal_for_seventeen_distinct_values() {
        // 256 values taking 17 distinct levels: the best 16 clusters merge the closest adjacent pair.
        let levels: Vec<f32> = (0..17).map(|i| (i * i) as f32 / 256.0 - 0.5).collect();
        let mut x: Vec<f32> = (0..NUQ_GROUP).map(|i| levels[i % 17]).collect();
        shuffle(&mut TestRng::new(4), &mut x);
        let (centers, indices, unused) = cluster(&x);
        assert_eq!(unused, 0);
        let got: f64 =
            x.iter().enumerate().map(|(i, &v)| (v as f64 - centers[indices[i] as usize] as f64).powi(2)).sum();
        let mut sorted: Vec<f64> = x.iter().map(|&v| payload_clear(v) as f64).collect();
        sorted.sort_by(f64::total_cmp);
        // brute force on the 17 levels with their multiplicities is equivalent: merge one adjacent pair
        let best = (0..16)
            .map(|j| {
                let run: Vec<f64> = sorted
                    .iter()
                    .copied()
                    .filter(|&v| v == sorted_level(&sorted, j) || v == sorted_level(&sorted, j + 1))
                    .collect();
                best_cost(&run, 1)
            })
            .fold(f64::INFINITY, f64::min);
        assert!((got - best).abs() <= 1e-9, "got {got}, best {best}");
    }

    fn sorted_level(sorted: &[f64], j: usize) -> f64 {
        let mut distinct: Vec<f64> = sorted.to_vec();
        distinct.dedup();
        distinct[j]
    }

    #[test]
    fn layout_round_trips_and_matches_packed_end() {
        // 2.5 groups (nuq_test.cc TestDec2): tables interleaved with indices, a partial last group.
        let mut rng = HwyRandomState::new();
        let n = 2 * NUQ_GROUP + NUQ_GROUP / 2;
        let x = gaussian(&mut rng, n);
        assert_eq!(nuq_packed_bytes(n), 16 * 3 + n / 2);
        let mut packed = vec![0u8; nuq_packed_bytes(n)];
        let unused = nuq_encode(&x, &mut packed, 0, &mut NuqClusterBuf::default()).unwrap();
        assert_eq!(unused, 0);
        for (g, group) in x.chunks(NUQ_GROUP).enumerate() {
            let (centers, indices, _) = cluster(group);
            let table = &packed[g * NUQ_GROUP_BYTES..g * NUQ_GROUP_BYTES + NUQ_CLUSTERS];
            let codes: Vec<u8> = centers.iter().map(|&c| sfp_encode(c)).collect();
            assert_eq!(table, &codes[..], "group {g} table");
            for (i, &idx) in indices.iter().enumerate().take(group.len()) {
                assert_eq!(nuq_index_at(&packed, g * NUQ_GROUP + i), idx as u8);
            }
        }
        let mut all = vec![0.0f32; n];
        NUQ_CODEC.decode(&packed, 0, &mut all).unwrap();
        let mut d = Distortion::default();
        for (&a, &b) in x.iter().zip(&all) {
            d.notify(a, b);
        }
        assert!(d.max_l1 <= 0.11, "{}", d.max_l1);
        // decoding at unaligned offsets gives the same values (nuq_test.cc TestUnalignedOffset)
        for (ofs, len) in [(4, 4), (NUQ_GROUP + 100, 16), (2 * NUQ_GROUP - 7, 64), (3, n - 3)] {
            let mut part = vec![0.0f32; len];
            NUQ_CODEC.decode(&packed, ofs, &mut part).unwrap();
            assert_eq!(part, all[ofs..ofs + len]);
            let mut bf = vec![0u16; len];
            NUQ_CODEC.decode_bf16(&packed, ofs, &mut bf).unwrap();
            assert!(bf.iter().zip(&part).all(|(&b, &f)| bf16_to_f32(b) == f));
        }
    }

    #[test]
    fn odd_last_group_pads_with_its_maximum() {
        let mut rng = HwyRandomState::new();
        let x = gaussian(&mut rng, 255);
        let mut packed = vec![0u8; nuq_packed_bytes(255)];
        nuq_encode(&x, &mut packed, 0, &mut NuqClusterBuf::default()).unwrap();
        let imax = (0..255).max_by(|&a, &b| x[a].total_cmp(&x[b])).unwrap();
        // the high nibble of the last byte is the padding's cluster: the maximum's
        assert_eq!(packed[packed.len() - 1] >> 4, nuq_index_at(&packed, imax));
    }

    #[test]
    fn encoding_at_an_offset_rewrites_only_those_groups() {
        // nuq_test.cc TestOffset
        let mut rng = HwyRandomState::new();
        let total = 10 * NUQ_GROUP;
        let x = gaussian(&mut rng, total);
        let mut packed = vec![0u8; nuq_packed_bytes(total)];
        let mut buf = NuqClusterBuf::default();
        nuq_encode(&x, &mut packed, 0, &mut buf).unwrap();
        let mut dec1 = vec![0.0f32; total];
        NUQ_CODEC.decode(&packed, 0, &mut dec1).unwrap();
        nuq_encode(&x[..2 * NUQ_GROUP], &mut packed, 5 * NUQ_GROUP, &mut buf).unwrap();
        let mut dec2 = vec![0.0f32; 2 * NUQ_GROUP];
        NUQ_CODEC.decode(&packed, 5 * NUQ_GROUP, &mut dec2).unwrap();
        assert_eq!(dec2, dec1[..2 * NUQ_GROUP]);
    }

    #[test]
    fn four_gaussian_groups_have_gemma_cpp_error_levels() {
        // nuq_test.cc TestEncDec: the same inputs, its bounds (decoded through the SFP centres).
        let x = gaussian(&mut HwyRandomState::new(), 4 * NUQ_GROUP);
        let mut packed = vec![0u8; nuq_packed_bytes(x.len())];
        let unused = nuq_encode(&x, &mut packed, 0, &mut NuqClusterBuf::default()).unwrap();
        assert_eq!(unused, 0);
        let mut out = vec![0.0f32; x.len()];
        NUQ_CODEC.decode(&packed, 0, &mut out).unwrap();
        let mut d = Distortion::default();
        for (&a, &b) in x.iter().zip(&out) {
            d.notify(a, b);
        }
        println!(
            "enc/dec: sum L1 {}, geomean {}, wL1 {}, max {}",
            d.sum_l1,
            d.geomean_value_div_l1(),
            d.weighted_average_l1(),
            d.max_l1
        );
        assert_eq!(d.exact, 0);
        assert!(d.sign_flip < x.len() / NUQ_CLUSTERS);
        assert_eq!(d.to_zero, 0);
        assert!((23.0..=24.0).contains(&d.sum_l1), "{}", d.sum_l1);
        assert!((13.0..=13.3).contains(&d.geomean_value_div_l1()), "{}", d.geomean_value_div_l1());
        assert!((0.034..=0.035).contains(&d.weighted_average_l1()), "{}", d.weighted_average_l1());
        assert!(d.max_l1 <= 0.11, "{}", d.max_l1);
    }

    #[test]
    fn values_beyond_sfp_range_are_rejected() {
        let mut packed = vec![0u8; nuq_packed_bytes(4)];
        let r = nuq_encode(&[0.5, -1.9, 0.1, 0.0], &mut packed, 0, &mut NuqClusterBuf::default());
        assert!(matches!(r, Err(SbsCodecError::OutOfRange { codec: SbsCodecType::Nuq, index: 1, .. })));
        nuq_encode(&[0.5, -1.875, 0.1, 0.0], &mut packed, 0, &mut NuqClusterBuf::default()).unwrap();
    }

    #[test]
    fn rejects_bad_offsets_short_streams_and_nan() {
        let mut packed = vec![0u8; nuq_packed_bytes(512)];
        let mut buf = NuqClusterBuf::default();
        assert!(matches!(
            nuq_encode(&[0.0; 10], &mut packed, 100, &mut buf),
            Err(SbsCodecError::UnalignedOffset { packed_ofs: 100, group: 256, .. })
        ));
        assert!(matches!(
            nuq_encode(&[0.0; 300], &mut packed, 256, &mut buf),
            Err(SbsCodecError::StreamTooShort { .. })
        ));
        assert!(matches!(
            nuq_encode(&[0.0, f32::NAN], &mut packed, 0, &mut buf),
            Err(SbsCodecError::OutOfRange { index: 1, .. })
        ));
        let mut out = [0.0f32; 8];
        assert!(matches!(NUQ_CODEC.decode(&packed, 510, &mut out), Err(SbsCodecError::StreamTooShort { .. })));
    }
}
