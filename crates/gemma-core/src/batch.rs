//! A batch of tokens for one forward pass, possibly from several sequences.

/// One token to run: its id, its position in its sequence, which sequence (an index into the caches passed
/// to the forward pass), and whether its logits are wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchToken {
    pub token: u32,
    pub pos: usize,
    pub seq: usize,
    pub logits: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub tokens: Vec<BatchToken>,
}

impl Batch {
    /// The tokens of one sequence at consecutive positions from `start`, logits for the last one only
    /// (or for all, when `all_logits`).
    pub fn sequence(ids: &[u32], start: usize, seq: usize, all_logits: bool) -> Batch {
        let n = ids.len();
        Batch {
            tokens: ids
                .iter()
                .enumerate()
                .map(|(i, &token)| BatchToken { token, pos: start + i, seq, logits: all_logits || i + 1 == n })
                .collect(),
        }
    }

    pub fn push(&mut self, t: BatchToken) {
        self.tokens.push(t);
    }
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Logits of the batch tokens that asked for them, in batch order.
#[derive(Clone, Debug, Default)]
pub struct Logits {
    pub vocab_size: usize,
    /// Index into the batch of each row.
    pub batch_index: Vec<usize>,
    pub data: Vec<f32>,
}

impl Logits {
    pub fn len(&self) -> usize {
        self.batch_index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.batch_index.is_empty()
    }
    /// The `i`-th row.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab_size..(i + 1) * self.vocab_size]
    }
    /// The row of batch token `b`, if it asked for logits.
    pub fn for_batch_index(&self, b: usize) -> Option<&[f32]> {
        self.batch_index.iter().position(|&x| x == b).map(|i| self.row(i))
    }
}
