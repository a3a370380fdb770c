//! The real Gemma 3 270M file, truncated and corrupted at places found by walking its header here (independently
//! of the reader): every damaged image must be an error with a clear message, never a panic. Also: the writer
//! reproduces the real file byte for byte from what the reader parsed.

use std::path::{Path, PathBuf};

use gemma_io::gguf::{GgmlType, GgufFile, GgufWriter};

fn model_path() -> PathBuf {
    gemma_fetch::resolve_model("gemma-3-270m").expect("the real model (pulled on first use)")
}

/// Byte positions of one tensor-table entry.
#[derive(Debug)]
struct InfoPos {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    dims_at: Vec<usize>,
    type_at: usize,
    offset_at: usize,
}

/// Where things are in a GGUF file, found by a minimal walker of its own.
#[derive(Debug)]
struct Layout {
    first_key_len_at: usize,
    /// Start and end of the `tokenizer.ggml.tokens` value, and where its middle string's length is.
    tokens: (usize, usize),
    middle_token_len_at: usize,
    scores: (usize, usize),
    table_start: usize,
    table_end: usize,
    infos: Vec<InfoPos>,
}

struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Walker<'_> {
    fn u32(&mut self) -> u32 {
        let v = u32::from_le_bytes(self.b[self.pos..self.pos + 4].try_into().unwrap());
        self.pos += 4;
        v
    }
    fn u64(&mut self) -> u64 {
        let v = u64::from_le_bytes(self.b[self.pos..self.pos + 8].try_into().unwrap());
        self.pos += 8;
        v
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        let s = String::from_utf8(self.b[self.pos..self.pos + n].to_vec()).unwrap();
        self.pos += n;
        s
    }
    /// Skips a value of GGUF type `ty`, returning the positions of the string lengths it contained.
    fn skip(&mut self, ty: u32, string_lens: &mut Vec<usize>) {
        match ty {
            0 | 1 | 7 => self.pos += 1,
            2 | 3 => self.pos += 2,
            4..=6 => self.pos += 4,
            10..=12 => self.pos += 8,
            8 => {
                string_lens.push(self.pos);
                self.string();
            }
            9 => {
                let elem = self.u32();
                let n = self.u64();
                for _ in 0..n {
                    self.skip(elem, string_lens);
                }
            }
            other => panic!("walker: unexpected value type {other}"),
        }
    }
}

fn walk(b: &[u8]) -> Layout {
    assert_eq!(&b[..4], b"GGUF");
    let mut w = Walker { b, pos: 8 };
    let n_tensors = w.u64();
    let n_kv = w.u64();
    let first_key_len_at = w.pos;
    let (mut tokens, mut scores, mut middle_token_len_at) = ((0, 0), (0, 0), 0);
    for _ in 0..n_kv {
        let key = w.string();
        let ty = w.u32();
        let start = w.pos;
        let mut lens = Vec::new();
        w.skip(ty, &mut lens);
        match key.as_str() {
            "tokenizer.ggml.tokens" => {
                tokens = (start, w.pos);
                middle_token_len_at = lens[lens.len() / 2];
            }
            "tokenizer.ggml.scores" => scores = (start, w.pos),
            _ => {}
        }
    }
    let table_start = w.pos;
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = w.string();
        let n_dims = w.u32();
        let mut dims = Vec::new();
        let mut dims_at = Vec::new();
        for _ in 0..n_dims {
            dims_at.push(w.pos);
            dims.push(w.u64());
        }
        let type_at = w.pos;
        let type_id = w.u32();
        let offset_at = w.pos;
        w.u64();
        infos.push(InfoPos { name, dims, type_id, dims_at, type_at, offset_at });
    }
    Layout { first_key_len_at, tokens, middle_token_len_at, scores, table_start, table_end: w.pos, infos }
}

/// Parses a damaged image; it must be an error naming the file and containing each of `parts`.
fn expect_error(image: Vec<u8>, path: &Path, case: &str, parts: &[&str]) {
    match GgufFile::from_bytes(image, path) {
        Ok(f) => panic!("{case}: damaged model parsed ({} tensors)", f.tensors().len()),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{case}: {msg}");
            assert!(msg.contains(&path.display().to_string()), "{case}: message does not name the file: {msg}");
            for part in parts {
                assert!(msg.contains(part), "{case}: message lacks {part:?}: {msg}");
            }
        }
    }
}

#[test]
fn truncated_and_corrupted_real_model_is_always_an_error() {
    let path = model_path();
    let original = std::fs::read(&path).unwrap();
    let len = original.len();

    // The untouched file (as bytes) parses, agreeing with the walker.
    let layout = walk(&original);
    let (data_offset, last_end) = {
        let f = GgufFile::from_bytes(original.clone(), &path).unwrap();
        assert_eq!(f.tensors().len(), 236);
        assert_eq!(f.tensors().len(), layout.infos.len());
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        let last = f.tensors().last().unwrap();
        (f.data_offset() as usize, (f.data_offset() + last.offset + last.n_bytes) as usize)
    };
    assert_eq!(data_offset, layout.table_end.div_ceil(32) * 32);
    assert_eq!(last_end, len, "the last tensor ends the file");

    let short_len = format!("({} bytes)", len - 1);
    let truncations: Vec<(&str, usize, Vec<&str>)> = vec![
        ("empty file", 0, vec!["magic"]),
        ("inside the magic", 3, vec!["magic"]),
        ("inside the version", 6, vec!["version (at byte 4)"]),
        ("inside the tensor count", 12, vec!["tensor count (at byte 8)"]),
        ("inside the metadata count", 20, vec!["metadata count (at byte 16)"]),
        ("inside the first key", layout.first_key_len_at + 8 + 5, vec!["metadata entries (at byte 24)"]),
        ("middle of the tokens array", (layout.tokens.0 + layout.tokens.1) / 2, vec!["tokenizer.ggml.tokens"]),
        ("middle of the scores array", (layout.scores.0 + layout.scores.1) / 2, vec!["tokenizer.ggml.scores"]),
        ("end of the metadata", layout.table_start, vec!["name of tensor 0"]),
        ("middle of the tensor table", (layout.table_start + layout.table_end) / 2, vec!["tensor"]),
        ("last byte of the tensor table", layout.table_end - 1, vec!["offset of tensor"]),
        ("start of the data section", data_offset, vec!["runs past the end of the file"]),
        ("middle of the data", data_offset + (len - data_offset) / 2, vec!["runs past the end of the file"]),
        ("one byte short of the end", len - 1, vec!["runs past the end of the file", &short_len]),
    ];
    for (case, cut, parts) in truncations {
        let mut all = vec!["truncated"];
        all.extend_from_slice(&parts);
        expect_error(original[..cut].to_vec(), &path, case, &all);
    }
    if layout.table_end < data_offset {
        expect_error(
            original[..layout.table_end].to_vec(),
            &path,
            "end of the tensor table, before its padding",
            &["truncated", "padding before the tensor data"],
        );
    }

    // Damage to one field at a time. The flipped byte is one whose change is certainly detectable: a high byte
    // (a count or length beyond the file, an unknown type id, a dimension beyond int64), or one that changes a
    // tensor's size or position (which the packing of the data section pins down).
    let embd = layout.infos.iter().position(|t| t.name == "token_embd.weight").unwrap();
    let embd_info = &layout.infos[embd];
    assert!(embd + 1 < layout.infos.len(), "token_embd is not the last tensor");
    let last = layout.infos.last().unwrap();
    // A weight matrix in the middle of the table (not a 1-D norm).
    let matrices: Vec<&InfoPos> = layout.infos.iter().filter(|t| t.dims.len() == 2).collect();
    let mid = matrices[matrices.len() / 2];
    let retype_to = if embd_info.type_id == GgmlType::Q8_0.id() { GgmlType::Q4_0 } else { GgmlType::Q8_0 };
    let next_name = layout.infos[embd + 1].name.clone();

    let flips: Vec<(&str, usize, u8, Vec<&str>)> = vec![
        ("tensor count, high byte", 8 + 7, 0xFF, vec!["tensor infos (at byte 24)", "truncated or damaged"]),
        ("metadata count, high byte", 16 + 7, 0xFF, vec!["metadata entries (at byte 24)", "truncated or damaged"]),
        ("first key's length, high byte", layout.first_key_len_at + 7, 0xFF, vec!["key of metadata entry 0"]),
        (
            "a token's string length, high byte",
            layout.middle_token_len_at + 7,
            0xFF,
            vec!["value of metadata 'tokenizer.ggml.tokens'"],
        ),
        ("token_embd type id, high byte", embd_info.type_at + 3, 0xFF, vec!["token_embd.weight", "unknown type id"]),
        (
            "token_embd type id, another valid type",
            embd_info.type_at,
            (embd_info.type_id ^ retype_to.id()) as u8,
            vec![&next_name, "has data offset", "expected"],
        ),
        ("token_embd row count, high byte", embd_info.dims_at[1] + 7, 0xFF, vec!["token_embd.weight", "dimension 1"]),
        ("token_embd row count, low byte", embd_info.dims_at[1], 0xFF, vec![&next_name, "has data offset"]),
        // Depending on the type, the new row length breaks the block size or shifts the next tensor.
        ("a middle matrix's row length, byte 1", mid.dims_at[0] + 1, 0xFF, vec!["malformed file: tensor '"]),
        ("a middle matrix's offset, high byte", mid.offset_at + 7, 0xFF, vec![&mid.name, "has data offset"]),
        ("a middle matrix's offset, by one alignment", mid.offset_at, 32, vec![&mid.name, "has data offset"]),
        ("the last tensor's offset, low byte", last.offset_at, 0xFF, vec![&last.name, "alignment 32"]),
        ("the last tensor's length, byte 1", last.dims_at[0] + 1, 0xFF, vec![&last.name, "runs past the end"]),
    ];
    for (case, at, xor, parts) in flips {
        let mut image = original.clone();
        image[at] ^= xor;
        expect_error(image, &path, case, &parts);
    }
}

/// Reading the real file and writing back what was read reproduces it exactly: the writer's layout (metadata
/// encoding, tensor table, padding, data alignment) is llama.cpp's.
#[test]
fn writer_reproduces_the_real_model_byte_for_byte() {
    let path = model_path();
    let f = GgufFile::open(&path).unwrap();
    let mut w = GgufWriter::new().version(f.version()).unwrap().alignment(f.alignment() as u32).unwrap();
    for (key, value) in f.metadata() {
        w.add_metadata(key.as_str(), value.clone()).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor(t.name.as_str(), &t.dims, t.ggml_type, f.tensor_data(t).to_vec()).unwrap();
    }
    let rewritten = w.to_bytes();
    drop(w);
    let original = std::fs::read(&path).unwrap();
    assert_eq!(rewritten.len(), original.len());
    if let Some(i) = rewritten.iter().zip(&original).position(|(a, b)| a != b) {
        panic!("rewritten file differs from the original first at byte {i}");
    }
}

/// Random damage to the header (metadata and tensor table): whatever the bytes, parsing returns, a file or an
/// error naming it, and never panics. 600 images of 1 to 4 random bytes each (fixed seed), aimed a third each at
/// the whole header, its first 4 KB (the keys and small values) and the tensor table.
#[test]
fn random_header_damage_never_panics() {
    let path = model_path();
    let original = std::fs::read(&path).unwrap();
    let layout = walk(&original);
    // The data section is not needed to reach every check of the header; the images stop soon after it.
    let image_len = (layout.table_end + 4096).min(original.len());
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let regions = [(0, layout.table_end), (0, 4096), (layout.table_start, layout.table_end)];
    let mut errors = 0;
    for case in 0..600 {
        let mut image = original[..image_len].to_vec();
        let (start, end) = regions[case % regions.len()];
        for _ in 0..1 + next() % 4 {
            let at = start + (next() % (end - start) as u64) as usize;
            image[at] = next() as u8;
        }
        let parsed = std::panic::catch_unwind(|| GgufFile::from_bytes(image, &path).map(|f| f.tensors().len()));
        match parsed {
            Err(_) => panic!("case {case}: the parser panicked"),
            Ok(Err(e)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&path.display().to_string()),
                    "case {case}: message does not name the file: {msg}"
                );
                errors += 1;
            }
            Ok(Ok(_)) => {}
        }
    }
    // The images lack the data section, so every one that parses this far is refused for it at the least.
    assert_eq!(errors, 600);
}
