//! What llama-imatrix's `--show-statistics` reports about an importance matrix: per matrix, statistics of the
//! mean squared activation of each input column (sum, range, mean and deviation, the share of live columns,
//! the entropy of their distribution, the share more than one deviation above the mean, and the cosine
//! similarity with the same matrix one layer down), and per layer their averages weighted by column count.
//! Everything is computed in f32 in llama-imatrix's order, so the printed figures are its figures.

use std::collections::BTreeMap;

use gemma_io::imatrix::{Imatrix, ImatrixEntry};

/// Columns whose mean squared activation is at most this count as dormant.
pub const ACTIVE_THRESHOLD: f32 = 1e-5;

/// One matrix's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorStatistics {
    /// The full name (`blk.3.ffn_down.weight`).
    pub tensor: String,
    /// The layer as named (`3`), or `-` outside the layers.
    pub layer: String,
    /// The matrix's short name (`ffn_down`).
    pub short_name: String,
    /// Sum, minimum, maximum, mean and standard deviation of the per-column mean squared activations.
    pub total: f32,
    pub min: f32,
    pub max: f32,
    pub mean: f32,
    pub stddev: f32,
    /// The share of columns above [`ACTIVE_THRESHOLD`].
    pub active: f32,
    /// Columns (over every expert that saw a token).
    pub elements: usize,
    /// Shannon entropy of the columns' shares of the total, in bits.
    pub entropy: f32,
    /// The share of columns more than one standard deviation above the mean (the "ZD score").
    pub zd: f32,
    /// Cosine similarity of the raw sums with the same matrix of the layer below (0 where there is none).
    pub cossim: f32,
}

impl TensorStatistics {
    /// The entropy over its maximum, `log2(elements)`, in percent (llama-imatrix's "E (norm)").
    pub fn entropy_norm(&self) -> f32 {
        if self.elements == 0 {
            return 0.0;
        }
        // llama-imatrix divides by a double log2 of the integer count
        (100.0 * (f64::from(self.entropy) / (self.elements as f64).log2())) as f32
    }
}

/// One layer's averages over its matrices, weighted by their column counts.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerStatistics {
    pub layer: i64,
    pub mean_total: f32,
    pub zd: f32,
    pub cossim: f32,
}

/// The statistics of a whole matrix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Statistics {
    /// Sorted as llama-imatrix prints them: by short name, then largest sum first.
    pub tensors: Vec<TensorStatistics>,
    /// By layer number.
    pub layers: Vec<LayerStatistics>,
    /// Matrices left out, and why (no counts, or all zero; sums not a whole number of rows).
    pub skipped: Vec<(String, &'static str)>,
}

/// The statistics of `matrix`, a matrix of raw sums ([`Imatrix::raw`] with the file added).
pub fn statistics(matrix: &Imatrix) -> Statistics {
    let mut out = Statistics::default();
    let mut sums: BTreeMap<&str, &[f32]> = BTreeMap::new();
    for (name, entry) in &matrix.entries {
        match tensor_statistics(name, entry) {
            Ok(t) => {
                sums.insert(name, &entry.sums);
                out.tensors.push(t);
            }
            Err(why) => out.skipped.push((name.clone(), why)),
        }
    }
    for t in &mut out.tensors {
        t.cossim = previous_layer_name(&t.tensor)
            .and_then(|prev| Some((sums.get(prev.as_str())?, sums.get(t.tensor.as_str())?)))
            .map_or(0.0, |(prev, cur)| cosine(cur, prev));
    }
    out.tensors.sort_by(|a, b| a.short_name.cmp(&b.short_name).then(b.total.total_cmp(&a.total)));

    #[derive(Default)]
    struct Weighted {
        total: f32,
        zd: f32,
        cossim: f32,
        elements: usize,
    }
    let mut by_layer: BTreeMap<i64, Weighted> = BTreeMap::new();
    for t in &out.tensors {
        let w = by_layer.entry(leading_int(&t.layer).unwrap_or(-1)).or_default();
        let n = t.elements as f32;
        w.total += n * t.total;
        w.zd += n * t.zd;
        w.cossim += n * t.cossim;
        w.elements += t.elements;
    }
    out.layers = by_layer
        .into_iter()
        .filter(|(layer, w)| *layer >= 0 && w.elements > 0)
        .map(|(layer, w)| {
            let n = w.elements as f32;
            LayerStatistics { layer, mean_total: w.total / n, zd: w.zd / n, cossim: w.cossim / n }
        })
        .collect();
    out
}

fn tensor_statistics(name: &str, e: &ImatrixEntry) -> Result<TensorStatistics, &'static str> {
    if e.counts.is_empty() {
        return Err("there are no activations");
    }
    if !e.sums.len().is_multiple_of(e.counts.len()) {
        return Err("the sums are not a whole number of rows, one per count");
    }
    let row = e.sums.len() / e.counts.len();
    let mut acts = Vec::with_capacity(e.sums.len());
    for (i, &count) in e.counts.iter().enumerate() {
        if count != 0 {
            acts.extend(e.sums[i * row..(i + 1) * row].iter().map(|&s| s / count as f32));
        }
    }
    if acts.is_empty() {
        return Err("all counts are zero");
    }
    let n = acts.len() as f32;
    let total = acts.iter().fold(0f32, |a, &v| a + v);
    let max = acts.iter().copied().fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m });
    let min = acts.iter().copied().fold(f32::INFINITY, |m, v| if v < m { v } else { m });
    let mean = total / n;
    let squares = acts.iter().fold(0f32, |a, &v| a + v * v);
    let stddev = (squares / n - mean * mean).max(0.0).sqrt();
    let inactive = acts.iter().filter(|v| v.abs() <= ACTIVE_THRESHOLD).count();
    let mut entropy = 0f32;
    if total > 0.0 {
        for &v in &acts {
            let p = v / total;
            if p > 0.0 {
                entropy -= p * p.log2();
            }
        }
    }
    let above = if stddev > 0.0 { acts.iter().filter(|&&v| (v - mean) / stddev > 1.0).count() } else { 0 };
    let (layer, short_name) = split_name(name);
    Ok(TensorStatistics {
        tensor: name.to_string(),
        layer,
        short_name,
        total,
        min,
        max,
        mean,
        stddev,
        active: 1.0 - inactive as f32 / n,
        elements: acts.len(),
        entropy,
        zd: above as f32 / acts.len() as f32,
        cossim: 0.0,
    })
}

/// Cosine similarity in f32, summed in order.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot = a.iter().zip(b).fold(0f32, |s, (x, y)| s + x * y);
    let norm = |v: &[f32]| v.iter().fold(0f32, |s, x| s + x * x).sqrt();
    dot / (norm(a) * norm(b))
}

/// `blk.N.` → `blk.{N-1}.` at the first place the name has one.
fn previous_layer_name(name: &str) -> Option<String> {
    let mut from = 0;
    while let Some(at) = name[from..].find("blk.").map(|i| from + i) {
        let digits_start = at + 4;
        let digits = name[digits_start..].bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && name[digits_start + digits..].starts_with('.') {
            let n: i64 = name[digits_start..digits_start + digits].parse().ok()?;
            return Some(format!("{}{}{}", &name[..digits_start], n - 1, &name[digits_start + digits..]));
        }
        from = at + 1;
    }
    None
}

/// (layer, short name) as llama-imatrix reads them from `blk.3.ffn_down.weight`: the part after `blk`
/// (`-` without one), the part before `weight` (the whole name without one).
fn split_name(name: &str) -> (String, String) {
    let parts: Vec<&str> = name.split('.').collect();
    let layer = parts.iter().position(|&p| p == "blk").and_then(|i| parts.get(i + 1)).map(|s| s.to_string());
    let short = parts.iter().enumerate().skip(1).find(|(_, &p)| p == "weight").map(|(i, _)| parts[i - 1].to_string());
    let short = short.filter(|s| !s.is_empty()).unwrap_or_else(|| name.to_string());
    (layer.filter(|l| !l.is_empty()).unwrap_or_else(|| "-".to_string()), short)
}

/// The integer at the start of `s`, as C++'s `std::stoi` reads it.
fn leading_int(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let sign = usize::from(t.starts_with(['-', '+']));
    let digits = t[sign..].bytes().take_while(u8::is_ascii_digit).count();
    t[..sign + digits].parse().ok().filter(|_| digits > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sums: &[f32], counts: &[i64]) -> ImatrixEntry {
        ImatrixEntry { sums: sums.to_vec(), counts: counts.to_vec() }
    }

    #[test]
    fn names_split_as_llama_imatrix_splits_them() {
        assert_eq!(split_name("blk.12.ffn_down.weight"), ("12".into(), "ffn_down".into()));
        assert_eq!(split_name("output.weight"), ("-".into(), "output".into()));
        assert_eq!(split_name("odd"), ("-".into(), "odd".into()));
        assert_eq!(previous_layer_name("blk.12.ffn_down.weight").as_deref(), Some("blk.11.ffn_down.weight"));
        assert_eq!(previous_layer_name("blk.0.attn_q.weight").as_deref(), Some("blk.-1.attn_q.weight"));
        assert_eq!(previous_layer_name("x.blk.a.blk.3.y").as_deref(), Some("x.blk.a.blk.2.y"));
        assert_eq!(previous_layer_name("output.weight"), None);
        assert_eq!((leading_int("17"), leading_int("-"), leading_int("3abc")), (Some(17), None, Some(3)));
    }

    #[test]
    fn statistics_of_a_small_matrix() {
        let mut m = Imatrix::raw(4);
        // two layers, 4 columns: means [0, 1, 2, 5] and [0, 2, 4, 10]
        m.entries.insert("blk.0.ffn_up.weight".into(), entry(&[0.0, 2.0, 4.0, 10.0], &[2]));
        m.entries.insert("blk.1.ffn_up.weight".into(), entry(&[0.0, 8.0, 16.0, 40.0], &[4]));
        // an expert that saw nothing is left out of the columns
        m.entries.insert("blk.1.ffn_gate.weight".into(), entry(&[1.0, 1.0, 9.0, 9.0], &[1, 0]));
        m.entries.insert("blk.1.bad.weight".into(), entry(&[1.0, 2.0, 3.0], &[1, 1]));
        m.entries.insert("blk.1.none.weight".into(), entry(&[1.0, 2.0], &[0]));
        let s = statistics(&m);
        assert_eq!(
            s.skipped,
            [
                ("blk.1.bad.weight".to_string(), "the sums are not a whole number of rows, one per count"),
                ("blk.1.none.weight".to_string(), "all counts are zero")
            ]
        );
        let names: Vec<&str> = s.tensors.iter().map(|t| t.tensor.as_str()).collect();
        // by short name, then the larger sum first
        assert_eq!(names, ["blk.1.ffn_gate.weight", "blk.1.ffn_up.weight", "blk.0.ffn_up.weight"]);
        let up0 = &s.tensors[2];
        assert_eq!((up0.total, up0.min, up0.max, up0.mean, up0.elements), (8.0, 0.0, 5.0, 2.0, 4));
        // variance (0 + 1 + 4 + 25) / 4 - 4 = 3.5
        assert_eq!(up0.stddev, 3.5f32.sqrt());
        assert_eq!(up0.active, 0.75);
        // shares 1/8, 2/8, 5/8
        let h = -(0.125f32 * 0.125f32.log2() + 0.25 * 0.25f32.log2() + 0.625 * 0.625f32.log2());
        assert!((up0.entropy - h).abs() < 1e-6, "{} vs {h}", up0.entropy);
        // only 5 is more than one deviation (1.87) above the mean
        assert_eq!(up0.zd, 0.25);
        assert_eq!(up0.cossim, 0.0, "layer 0 has no layer below");
        let up1 = &s.tensors[1];
        assert!((up1.cossim - 1.0).abs() < 1e-6, "parallel sums: {}", up1.cossim);
        let gate = &s.tensors[0];
        assert_eq!((gate.elements, gate.total), (2, 2.0));
        assert_eq!(s.layers.iter().map(|l| l.layer).collect::<Vec<_>>(), [0, 1]);
        // layer 1: (2 columns x 2.0 + 4 x 16.0) / 6
        assert_eq!(s.layers[1].mean_total, (2.0 * 2.0 + 4.0 * 16.0) / 6.0);
        assert!((up0.entropy_norm() - 100.0 * h / 2.0).abs() < 1e-4);
    }
}
