//! gemma.cpp's `IFields` serialization (`io/fields.h`): structs as sequences of little-endian `u32` words.
//!
//! Wire format, one struct ("field group"):
//! - a leading word with the number of words that follow for this struct (not counting itself);
//! - then each field in the order the struct visits them:
//!   `u32`/`i32`/`f32`/`bool`/enum: one word (`bool` and enums are `u32`; floats are their IEEE bits);
//!   `u64`: two words, low half first;
//!   string: a word count `n` (at most 64), then `n` words holding the ASCII bytes, the last word zero-padded;
//!   vector: an element count (at most 65,536), then each element;
//!   nested struct: its own leading size, then its fields.
//!
//! New fields are only ever appended, so old data read by new code stops at the stored size and leaves the remaining
//! fields at their defaults ("missing"), and new data read by old code skips the words it does not know ("extra").
//!
//! Differences from gemma.cpp, all on data gemma.cpp itself would misread: a nested struct's stored size is checked
//! against the enclosing struct's end (gemma.cpp checks against the end of the whole span), and unknown trailing
//! words of a nested struct are skipped (gemma.cpp skips them only for the outermost struct, via
//! `pos + extra_u32`), and a vector whose element count exceeds the words left in its struct is an error
//! (gemma.cpp reads the absent elements as defaults, so 65,536 default elements could come from one word). [`ReadResult::pos`] is therefore always just past the struct, unknown words included.

/// Longest string, in words (gemma.cpp refuses longer strings so that strings cannot carry arbitrary data).
pub const MAX_STRING_WORDS: u32 = 64;
/// Longest vector gemma.cpp accepts.
pub const MAX_VECTOR_LEN: u32 = 64 * 1024;

/// A field value that gemma.cpp's visitors refuse to read or write.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FieldsError {
    #[error("{within}: invalid bool {value} at word {pos}")]
    InvalidBool { within: &'static str, value: u32, pos: usize },
    #[error("{within}: invalid {enum_name} value {value} at word {pos}")]
    InvalidEnum { within: &'static str, enum_name: &'static str, value: u32, pos: usize },
    #[error("{within}: float at word {pos} is not finite (bits {bits:#010x})")]
    NonFiniteFloat { within: &'static str, bits: u32, pos: usize },
    #[error("{within}: string of {words} words at word {pos} is longer than {MAX_STRING_WORDS} words")]
    StringTooLong { within: &'static str, words: u64, pos: usize },
    #[error("{within}: string word {index} ({word:#010x}) at word {pos} is zero or not ASCII")]
    InvalidStringWord { within: &'static str, word: u32, index: u32, pos: usize },
    #[error("{within}: vector of {len} elements at word {pos} is longer than {MAX_VECTOR_LEN}")]
    VectorTooLong { within: &'static str, len: u64, pos: usize },
    #[error("{within}: {what} at word {pos} needs {needed} words but its enclosing data ends at word {end}")]
    Truncated { within: &'static str, what: &'static str, pos: usize, needed: u64, end: usize },
    #[error("cannot start reading at word {pos}: only {len} words")]
    StartOutOfRange { pos: usize, len: usize },
}

/// How a read went (gemma.cpp's `IFields::ReadResult`, with `pos` already past any unknown trailing words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadResult {
    /// Index of the first word after the struct, where the next struct starts.
    pub pos: usize,
    /// Fields (and vector elements) the code visits but the data does not hold: the data is older than the code;
    /// those fields keep their values from before the read (normally their defaults).
    pub missing_fields: u32,
    /// Words the data holds beyond what the code reads: the data is newer than the code.
    pub extra_u32: u32,
}

/// A struct with fields (gemma.cpp's `IFields`). `visit_fields` visits every field in its fixed wire order; new
/// fields may only ever be appended.
pub trait Fields {
    /// Caption for errors and printing.
    fn name(&self) -> &'static str;
    /// Calls `v.visit(&mut self.field)` (or [`FieldVisitor::nested`] for nested structs) for each field in order.
    fn visit_fields(&mut self, v: &mut FieldVisitor<'_>);
}

/// A value that can be a field: integers, `f32`, `bool`, `String`, vectors of fields, enums, nested structs.
pub trait Field {
    fn visit(&mut self, v: &mut FieldVisitor<'_>);
}

/// An enum stored as a `u32` (gemma.cpp's `EnumValid` decides which values are valid).
pub trait FieldEnum: Copy {
    const ENUM_NAME: &'static str;
    fn to_u32(self) -> u32;
    fn from_u32(value: u32) -> Option<Self>;
}

enum Mode<'a> {
    Read {
        words: &'a [u32],
        pos: usize,
        /// End (exclusive) of each struct being read, innermost last.
        ends: Vec<usize>,
        missing: u32,
        extra: u32,
    },
    Write {
        out: &'a mut Vec<u32>,
    },
}

/// Reads or writes fields; passed to [`Fields::visit_fields`]. After the first invalid value every further visit
/// is a no-op (gemma.cpp's sticky `AnyInvalid`).
pub struct FieldVisitor<'a> {
    mode: Mode<'a>,
    error: Option<FieldsError>,
    within: Vec<&'static str>,
}

impl<'a> FieldVisitor<'a> {
    fn within(&self) -> &'static str {
        self.within.last().copied().unwrap_or("fields")
    }

    fn fail(&mut self, e: FieldsError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Whether this visitor reads (fields are overwritten) rather than writes.
    pub fn is_reading(&self) -> bool {
        matches!(self.mode, Mode::Read { .. })
    }

    fn pos(&self) -> usize {
        match &self.mode {
            Mode::Read { pos, .. } => *pos,
            Mode::Write { out } => out.len(),
        }
    }

    /// gemma.cpp's `SkipField`: after an error, or when reading past the end of the current struct (old data), the
    /// field is left alone; the latter counts as a missing field.
    fn skip_field(&mut self) -> bool {
        if self.error.is_some() {
            return true;
        }
        if let Mode::Read { words, pos, ends, missing, .. } = &mut self.mode {
            let end = ends.last().copied().unwrap_or(words.len());
            if *pos >= end {
                *missing += 1;
                return true;
            }
        }
        false
    }

    /// One raw word: the only place data is read or written.
    fn word(&mut self, value: &mut u32) {
        if self.skip_field() {
            return;
        }
        match &mut self.mode {
            Mode::Read { words, pos, .. } => {
                // `skip_field` guarantees *pos < end <= words.len().
                if let Some(&w) = words.get(*pos) {
                    *value = w;
                }
                *pos += 1;
            }
            Mode::Write { out } => out.push(*value),
        }
    }

    /// Visits any field.
    pub fn visit<T: Field + ?Sized>(&mut self, value: &mut T) {
        value.visit(self);
    }

    pub fn visit_u32(&mut self, value: &mut u32) {
        self.word(value);
    }

    pub fn visit_i32(&mut self, value: &mut i32) {
        let mut w = *value as u32;
        self.word(&mut w);
        *value = w as i32;
    }

    pub fn visit_u64(&mut self, value: &mut u64) {
        if self.skip_field() {
            return;
        }
        let mut lower = *value as u32;
        self.word(&mut lower);
        let mut upper = (*value >> 32) as u32;
        self.word(&mut upper);
        *value = u64::from(lower) | (u64::from(upper) << 32);
    }

    pub fn visit_f32(&mut self, value: &mut f32) {
        if self.skip_field() {
            return;
        }
        let pos = self.pos();
        let mut bits = value.to_bits();
        self.word(&mut bits);
        let read = f32::from_bits(bits);
        if !read.is_finite() {
            let within = self.within();
            return self.fail(FieldsError::NonFiniteFloat { within, bits, pos });
        }
        *value = read;
    }

    pub fn visit_bool(&mut self, value: &mut bool) {
        if self.skip_field() {
            return;
        }
        let pos = self.pos();
        let mut w = u32::from(*value);
        self.word(&mut w);
        if w > 1 {
            let within = self.within();
            return self.fail(FieldsError::InvalidBool { within, value: w, pos });
        }
        *value = w == 1;
    }

    pub fn visit_enum<E: FieldEnum>(&mut self, value: &mut E) {
        if self.skip_field() {
            return;
        }
        let pos = self.pos();
        let mut w = value.to_u32();
        self.word(&mut w);
        match E::from_u32(w) {
            Some(e) => *value = e,
            None => {
                let within = self.within();
                self.fail(FieldsError::InvalidEnum { within, enum_name: E::ENUM_NAME, value: w, pos })
            }
        }
    }

    pub fn visit_string(&mut self, value: &mut String) {
        if self.skip_field() {
            return;
        }
        let within = self.within();
        let pos = self.pos();
        if self.is_reading() {
            let mut n = 0u32;
            self.word(&mut n);
            if n > MAX_STRING_WORDS {
                return self.fail(FieldsError::StringTooLong { within, words: u64::from(n), pos });
            }
            let end = self.read_end();
            let start = pos + 1;
            if start + n as usize > end {
                return self.fail(FieldsError::Truncated {
                    within,
                    what: "string",
                    pos,
                    needed: u64::from(n) + 1,
                    end,
                });
            }
            let mut bytes = Vec::with_capacity(n as usize * 4);
            for i in 0..n {
                let mut w = 0u32;
                self.word(&mut w);
                if w == 0 || w & 0x8080_8080 != 0 {
                    return self.fail(FieldsError::InvalidStringWord {
                        within,
                        word: w,
                        index: i,
                        pos: start + i as usize,
                    });
                }
                bytes.extend_from_slice(&w.to_le_bytes());
            }
            // Trim the 0..3 NUL bytes that pad the last word.
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            // Every byte is ASCII (checked above), hence valid UTF-8.
            *value = bytes.iter().map(|&b| char::from(b)).collect();
        } else {
            let bytes = value.as_bytes();
            let n = bytes.len().div_ceil(4) as u64;
            if n > u64::from(MAX_STRING_WORDS) {
                return self.fail(FieldsError::StringTooLong { within, words: n, pos });
            }
            let mut n32 = n as u32;
            self.word(&mut n32);
            for (i, chunk) in bytes.chunks(4).enumerate() {
                let mut word_bytes = [0u8; 4];
                word_bytes[..chunk.len()].copy_from_slice(chunk);
                let mut w = u32::from_le_bytes(word_bytes);
                if w == 0 || w & 0x8080_8080 != 0 {
                    return self.fail(FieldsError::InvalidStringWord {
                        within,
                        word: w,
                        index: i as u32,
                        pos: pos + 1 + i,
                    });
                }
                self.word(&mut w);
            }
        }
    }

    pub fn visit_vec<T: Field + Default>(&mut self, value: &mut Vec<T>) {
        if self.skip_field() {
            return;
        }
        let within = self.within();
        let pos = self.pos();
        if value.len() as u64 > u64::from(MAX_VECTOR_LEN) && !self.is_reading() {
            return self.fail(FieldsError::VectorTooLong { within, len: value.len() as u64, pos });
        }
        let mut n = value.len() as u32;
        self.word(&mut n);
        if n > MAX_VECTOR_LEN {
            return self.fail(FieldsError::VectorTooLong { within, len: u64::from(n), pos });
        }
        if self.is_reading() {
            // Every element takes at least one word, and a writer stores all of a vector's elements: a count
            // beyond the enclosing struct's end is damage, and must not make a few words read as thousands of
            // default elements.
            let end = self.read_end();
            if pos as u64 + 1 + u64::from(n) > end as u64 {
                return self.fail(FieldsError::Truncated {
                    within,
                    what: "vector",
                    pos,
                    needed: u64::from(n) + 1,
                    end,
                });
            }
            value.clear();
            value.resize_with(n as usize, T::default);
        }
        for item in value.iter_mut() {
            item.visit(self);
            if self.error.is_some() {
                return;
            }
        }
    }

    /// Visits a nested struct, which carries its own leading size.
    pub fn nested(&mut self, fields: &mut dyn Fields) {
        if self.skip_field() {
            return;
        }
        let within = self.within();
        let name = fields.name();
        if self.is_reading() {
            let end = self.read_end();
            let size_pos = self.pos();
            let mut n = 0u32;
            self.word(&mut n);
            let body_end = (size_pos as u64) + 1 + u64::from(n);
            if body_end > end as u64 {
                let needed = u64::from(n) + 1;
                return self.fail(FieldsError::Truncated { within, what: name, pos: size_pos, needed, end });
            }
            if let Mode::Read { ends, .. } = &mut self.mode {
                ends.push(body_end as usize);
            }
            self.within.push(name);
            fields.visit_fields(self);
            self.within.pop();
            let failed = self.error.is_some();
            if let Mode::Read { pos, ends, extra, .. } = &mut self.mode {
                let body_end = ends.pop().unwrap_or(*pos);
                if !failed && *pos <= body_end {
                    // Newer data: skip the words this code does not know.
                    *extra += (body_end - *pos) as u32;
                    *pos = body_end;
                }
            }
        } else {
            let size_pos = self.pos();
            let mut placeholder = 0u32;
            self.word(&mut placeholder);
            self.within.push(name);
            fields.visit_fields(self);
            self.within.pop();
            if let Mode::Write { out } = &mut self.mode {
                let payload = out.len() - size_pos - 1;
                if let Some(slot) = out.get_mut(size_pos) {
                    *slot = payload as u32;
                }
            }
        }
    }

    /// End (exclusive) of the struct being read.
    fn read_end(&self) -> usize {
        match &self.mode {
            Mode::Read { words, ends, .. } => ends.last().copied().unwrap_or(words.len()),
            Mode::Write { out } => out.len(),
        }
    }
}

macro_rules! impl_field {
    ($t:ty, $method:ident) => {
        impl Field for $t {
            fn visit(&mut self, v: &mut FieldVisitor<'_>) {
                v.$method(self)
            }
        }
    };
}
impl_field!(u32, visit_u32);
impl_field!(i32, visit_i32);
impl_field!(u64, visit_u64);
impl_field!(f32, visit_f32);
impl_field!(bool, visit_bool);
impl_field!(String, visit_string);

/// A field appended to a struct after files were written without it: `None` when reading data that ends
/// before it (old data), so the caller can tell "absent" from the default. Written as the value, `false` for
/// `None`.
impl Field for Option<bool> {
    fn visit(&mut self, v: &mut FieldVisitor<'_>) {
        let present = !v.is_reading() || (v.error.is_none() && v.pos() < v.read_end());
        let mut value = self.unwrap_or(false);
        v.visit_bool(&mut value);
        if v.is_reading() {
            *self = (present && v.error.is_none()).then_some(value);
        }
    }
}

impl<T: Field + Default> Field for Vec<T> {
    fn visit(&mut self, v: &mut FieldVisitor<'_>) {
        v.visit_vec(self)
    }
}

/// Implements [`Field`] for a [`Fields`] struct (visited as a nested struct) or a [`FieldEnum`].
#[macro_export]
macro_rules! sbs_field_impl {
    (struct $t:ty) => {
        impl $crate::sbs::fields::Field for $t {
            fn visit(&mut self, v: &mut $crate::sbs::fields::FieldVisitor<'_>) {
                v.nested(self)
            }
        }
    };
    (enum $t:ty) => {
        impl $crate::sbs::fields::Field for $t {
            fn visit(&mut self, v: &mut $crate::sbs::fields::FieldVisitor<'_>) {
                v.visit_enum(self)
            }
        }
    };
}

/// Reads `fields` from `words` starting at `pos` (gemma.cpp's `IFields::Read`). On error the fields may be
/// partly overwritten and must not be used.
pub fn read_fields(fields: &mut dyn Fields, words: &[u32], pos: usize) -> Result<ReadResult, FieldsError> {
    if pos >= words.len() {
        return Err(FieldsError::StartOutOfRange { pos, len: words.len() });
    }
    let mut v = FieldVisitor {
        mode: Mode::Read { words, pos, ends: Vec::new(), missing: 0, extra: 0 },
        error: None,
        within: Vec::new(),
    };
    v.nested(fields);
    if let Some(e) = v.error {
        return Err(e);
    }
    match v.mode {
        Mode::Read { pos, missing, extra, .. } => Ok(ReadResult { pos, missing_fields: missing, extra_u32: extra }),
        Mode::Write { .. } => Err(FieldsError::StartOutOfRange { pos, len: words.len() }),
    }
}

/// Appends the serialized `fields` to `out` (gemma.cpp's `IFields::AppendTo`). `visit_fields` needs `&mut`, but
/// writing never changes a field. On error `out` is left as it was.
pub fn append_fields(fields: &mut dyn Fields, out: &mut Vec<u32>) -> Result<(), FieldsError> {
    let start = out.len();
    let mut v = FieldVisitor { mode: Mode::Write { out }, error: None, within: Vec::new() };
    v.nested(fields);
    if let Some(e) = v.error {
        out.truncate(start);
        return Err(e);
    }
    Ok(())
}

/// Serializes `fields` on its own (gemma.cpp's `IFields::Write`).
pub fn write_fields<F: Fields + Clone>(fields: &F) -> Result<Vec<u32>, FieldsError> {
    let mut out = Vec::new();
    append_fields(&mut fields.clone(), &mut out)?;
    Ok(out)
}

/// Little-endian bytes of serialized words, as stored in a blob.
pub fn words_to_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Words of a blob; `None` if its length is not a multiple of four.
pub fn bytes_to_words(bytes: &[u8]) -> Option<Vec<u32>> {
    if bytes.len() & 3 != 0 {
        return None;
    }
    Some(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct WithVec {
        items: Vec<u32>,
    }

    impl Fields for WithVec {
        fn name(&self) -> &'static str {
            "WithVec"
        }
        fn visit_fields(&mut self, v: &mut FieldVisitor<'_>) {
            v.visit(&mut self.items);
        }
    }

    #[test]
    fn vector_count_beyond_the_struct_is_an_error() {
        // Found by fuzzing: a one-word struct whose vector count is the maximum read as 65,536 default elements
        // (a damaged SBS config did this with the ViT layers, and the tensor registry then took seconds).
        let mut f = WithVec::default();
        let e = read_fields(&mut f, &[1, 65_536], 0).unwrap_err();
        assert_eq!(e, FieldsError::Truncated { within: "WithVec", what: "vector", pos: 1, needed: 65_537, end: 2 });
        // The count must fit the enclosing struct, not just the whole span.
        let e = read_fields(&mut WithVec::default(), &[2, 2, 7, 8], 0).unwrap_err();
        assert!(matches!(e, FieldsError::Truncated { what: "vector", .. }), "{e:?}");

        let r = read_fields(&mut f, &[3, 2, 7, 8], 0).unwrap();
        assert_eq!((r.pos, r.missing_fields, f.items.as_slice()), (4, 0, &[7, 8][..]));
        // An empty vector, and a struct that ends before its vector (older data), are still fine.
        assert_eq!(read_fields(&mut f, &[1, 0], 0).unwrap().missing_fields, 0);
        assert_eq!(read_fields(&mut f, &[0], 0).unwrap().missing_fields, 1);
    }
}
