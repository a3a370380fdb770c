//! gemma.cpp's `migrate_weights`: rewrites a checkpoint (typically the pre-2025 layout: type-prefixed blob names,
//! scales in `Fscales`, no `toc`, the tokenizer in a separate file) as one single-file SBS checkpoint.

use std::collections::HashSet;
use std::path::Path;

use gemma_io::sbs::model_store::BlobSink;
use gemma_io::sbs::tensor_info::tensor_slots;
use gemma_io::sbs::{ModelConfig, SbsFile, SbsOpenOptions, SbsWriter};

use super::{ConvertError, ConvertProgress};

/// Writes every tensor of `file` (in gemma.cpp's tensor order, as its `Save` does; tensors it does not know
/// follow in file order), its config and its tokenizer into `writer`.
pub fn migrate_into<S: BlobSink>(
    file: &SbsFile,
    mut writer: SbsWriter<S>,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<S::Output, ConvertError> {
    let mut order = Vec::with_capacity(file.tensors().len());
    let mut seen = HashSet::new();
    for slot in tensor_slots(file.config()) {
        if let Some(t) = file.tensor(&slot.name) {
            if seen.insert(t.record.name.clone()) {
                order.push(t);
            }
        }
    }
    for t in file.tensors() {
        if seen.insert(t.record.name.clone()) {
            order.push(t);
        }
    }
    let total = order.len();
    for (i, t) in order.into_iter().enumerate() {
        let mut record = t.record.clone();
        // The file is packed whatever stride the source recorded.
        record.stride = record.cols;
        writer.add_tensor(&record, file.tensor_data(t))?;
        progress(ConvertProgress { done: i + 1, total, tensor: &record.name });
    }
    Ok(writer.finish(file.config(), file.tokenizer_bytes())?)
}

/// Migrates `input` (with its separate `tokenizer` file, if any; `pretrained` for files without a config) to a
/// single-file checkpoint at `output`, written through a temp file renamed when complete.
pub fn migrate(
    input: &Path,
    output: &Path,
    tokenizer: Option<&Path>,
    pretrained: Option<bool>,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<ModelConfig, ConvertError> {
    let options = SbsOpenOptions { tokenizer_path: tokenizer.map(Path::to_path_buf), pretrained };
    let file = SbsFile::open_with(input, &options)?;
    migrate_into(&file, SbsWriter::create(output)?, progress)?;
    Ok(file.config().clone())
}
