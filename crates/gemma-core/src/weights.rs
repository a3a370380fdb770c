//! Looking up and checking weight tensors in a GGUF file. Matrices stay in the memory map; small vectors
//! (norm weights) are decoded to f32 once.

use gemma_compression::quant_format;
use gemma_io::{GgufFile, TensorInfo};
use gemma_ops::QMatrix;

use crate::error::ModelError;

/// A weight matrix of `rows` outputs by `cols` inputs, by reference into the file.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub info: TensorInfo,
    pub rows: usize,
    pub cols: usize,
}

impl Matrix {
    /// The matrix as a kernel operand, borrowing its bytes from `file`.
    pub fn view<'a>(&self, file: &'a GgufFile) -> QMatrix<'a> {
        // Shape and format were checked in `matrix()`, so this cannot fail for a matrix made there.
        QMatrix::new(file.tensor_data(&self.info), self.rows, self.cols, self.info.ggml_type)
            .unwrap_or_else(|e| unreachable!("matrix {} was validated at load: {e}", self.info.name))
    }
}

fn tensor<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

/// Loads `name` as a `rows x cols` matrix (GGUF dims `[cols, rows]`), checking shape and number format.
pub fn matrix(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Matrix, ModelError> {
    let info = tensor(file, name)?;
    if info.dims != [cols as u64, rows as u64] {
        return Err(ModelError::TensorShape {
            name: name.into(),
            found: info.dims.clone(),
            expected: vec![cols as u64, rows as u64],
        });
    }
    QMatrix::new(file.tensor_data(info), rows, cols, info.ggml_type)
        .map_err(|source| ModelError::TensorFormat { name: name.into(), source })?;
    Ok(Matrix { info: info.clone(), rows, cols })
}

/// Loads `name` as a vector of `len` values, decoded to f32.
pub fn vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let info = tensor(file, name)?;
    if info.dims != [len as u64] {
        return Err(ModelError::TensorShape {
            name: name.into(),
            found: info.dims.clone(),
            expected: vec![len as u64],
        });
    }
    let format = quant_format(info.ggml_type)?;
    let mut out = vec![0f32; len];
    format.dequantize_row(file.tensor_data(info), &mut out);
    Ok(out)
}

/// Like [`vector`], but `Ok(None)` when the file has no tensor `name` (optional biases, rope factors).
pub fn optional_vector(file: &GgufFile, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
    match file.tensor(name) {
        None => Ok(None),
        Some(_) => vector(file, name, len).map(Some),
    }
}
