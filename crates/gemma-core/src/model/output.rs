//! The end of every decoder: final RMSNorm and the projection to vocabulary logits, computed only for the
//! batch tokens that ask for logits.

use gemma_io::GgufFile;
use gemma_ops::QuantizedActs;

use super::{rms_norm_rows, sized, Products, WeightName};
use crate::batch::{Batch, Logits};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::weights::{matrix, vector, Matrix};

pub(crate) struct OutputHead {
    norm: Vec<f32>,
    /// `output.weight`, or the token embedding itself when the file ties them (no `output.weight`).
    projection: Matrix,
    /// The projection's name: `output`, or `token_embd` when tied (what an observer of the product sees,
    /// as llama.cpp names the product's weight).
    name: WeightName,
}

impl OutputHead {
    pub(crate) fn load(file: &GgufFile, c: &ModelConfig, embedding: &Matrix) -> Result<OutputHead, ModelError> {
        let (projection, tensor) = match file.tensor("output.weight") {
            Some(_) => (matrix(file, "output.weight", c.vocab_size, c.d_model)?, "output"),
            None => (embedding.clone(), "token_embd"),
        };
        let name = WeightName { layer: None, tensor };
        Ok(OutputHead { norm: vector(file, "output_norm.weight", c.d_model)?, projection, name })
    }

    /// The head of an SBS checkpoint: the final norm (`1 + w`) and the embedding as the tied projection.
    pub(crate) fn new(norm: Vec<f32>, projection: Matrix) -> OutputHead {
        OutputHead { norm, projection, name: WeightName { layer: None, tensor: "token_embd" } }
    }

    /// The final norm's weight.
    pub(crate) fn norm(&self) -> &[f32] {
        &self.norm
    }

    /// Writes into `logits` the logits of the tokens of `batch` that want them, from the final hidden states
    /// `x` (one row of `d_model` per batch token). `rows` is scratch space for the selected rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn logits(
        &self,
        mm: &mut Products<'_, '_>,
        c: &ModelConfig,
        batch: &Batch,
        x: &[f32],
        rows: &mut Vec<f32>,
        acts: &mut QuantizedActs,
        logits: &mut Logits,
    ) -> Result<(), ModelError> {
        let d = c.d_model;
        logits.vocab_size = c.vocab_size;
        logits.batch_index.clear();
        logits.batch_index.extend(batch.tokens.iter().enumerate().filter(|(_, t)| t.logits).map(|(i, _)| i));
        rows.clear();
        if logits.batch_index.is_empty() {
            logits.data.clear();
            return Ok(());
        }
        for &i in &logits.batch_index {
            rows.extend_from_slice(&x[i * d..(i + 1) * d]);
        }
        rms_norm_rows(mm.pool, rows, &self.norm, c.rms_eps);
        let data = sized(&mut logits.data, logits.batch_index.len() * c.vocab_size);
        mm.select_rows(&logits.batch_index);
        mm.matmul(self.name, &self.projection, rows, data, acts)?;
        if let Some(cap) = c.final_logit_softcap {
            data.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        Ok(())
    }
}
