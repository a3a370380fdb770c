//! The default model split as llama-gguf-split splits it (`gemma_io::gguf::split`), opened by its first part:
//! the same logits, bit for bit, and the same greedy tokens as the single file; quantizing it gives the single
//! file's bytes. (The parts' bytes against llama-gguf-split's are `gemma-cli/tests/gguf_split.rs`.)

use gemma_core::generate::GenerationOptions;
use gemma_core::{Model, SamplingParams, Session};
use gemma_io::gguf::split::{SplitLimit, SplitPlan};
use gemma_io::GgufFile;

mod common;
use common::{default_model, teacher_forced};

#[test]
fn a_split_model_gives_the_single_files_logits_and_tokens() {
    let f = default_model();
    let dir = tempfile::tempdir().unwrap();
    let parts = {
        let file = GgufFile::open(f.model.file.path()).unwrap();
        let plan = SplitPlan::new(&file, SplitLimit::Bytes(100_000_000), false).unwrap();
        plan.write(&file, &dir.path().join("split"), |_| {}).unwrap()
    };
    assert_eq!(parts.len(), 3, "253 MB in parts of at most 100 MB of tensors");
    let split = Model::open(&parts[0]).expect("the split model loads from its first part");
    assert_eq!(split.file.parts().len(), 3);

    let prompt = f.tokenizer.encode("The lighthouse keeper climbed the stairs and", true, false);
    let gen: Vec<u32> = f.tokenizer.encode(" looked out over the dark sea, where", false, false);
    let ours = teacher_forced(&split, &f.pool, &prompt, &gen);
    let theirs = teacher_forced(&f.model, &f.pool, &prompt, &gen);
    for (row, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "logits differ at row {row}");
    }

    let opts = GenerationOptions { max_tokens: 24, sampling: SamplingParams::greedy(), ..Default::default() };
    let greedy = |model: &Model| {
        let mut session = Session::new(model, 1024);
        session.generate(&f.tokenizer, &prompt, &opts, &f.pool, &mut |_| {}).expect("generate").gen_ids
    };
    assert_eq!(greedy(&split), greedy(&f.model));
}

#[test]
fn quantizing_a_split_model_gives_the_single_files_bytes() {
    let source = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("default model");
    let dir = tempfile::tempdir().unwrap();
    let parts = {
        let file = GgufFile::open(&source).unwrap();
        SplitPlan::new(&file, SplitLimit::Tensors(100), false)
            .unwrap()
            .write(&file, &dir.path().join("s"), |_| {})
            .unwrap()
    };
    let mut options = gemma_core::quantize::QuantizeOptions::new(gemma_core::quantize::FileType::MostlyQ8_0);
    options.allow_requantize = true;
    options.threads = 2;
    let (from_single, from_split) = (dir.path().join("single.gguf"), dir.path().join("split.gguf"));
    gemma_core::quantize::quantize_file(&source, &from_single, &options, &mut |_| {}).unwrap();
    gemma_core::quantize::quantize_file(&parts[0], &from_split, &options, &mut |_| {}).unwrap();
    assert!(std::fs::read(&from_single).unwrap() == std::fs::read(&from_split).unwrap(), "same bytes");
}
