//! GGUF metadata values.

/// The type tag of a metadata value as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn id(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::String => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    pub fn from_id(id: u32) -> Option<ValueType> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array, stored by element type: a vocabulary of 262,144 strings, scores and types takes about 8 MB
/// this way instead of the 33 MB of one [`MetaValue`] per element. The element type is kept even when empty,
/// so arrays round-trip.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(StringList),
    /// Nested arrays, each with its own element type (GGUF allows it).
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// Strings stored back to back in one buffer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StringList {
    text: String,
    /// `ends[i]`: where string `i` ends in `text` (it starts where `i - 1` ends).
    ends: Vec<usize>,
}

impl StringList {
    pub fn new() -> StringList {
        StringList::default()
    }

    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start..end])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let s = &self.text[start..end];
            start = end;
            s
        })
    }
}

impl<S: AsRef<str>> FromIterator<S> for StringList {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> StringList {
        let mut list = StringList::new();
        for s in iter {
            list.push(s.as_ref());
        }
        list
    }
}

impl std::fmt::Debug for StringList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl MetaArray {
    /// An empty array of `elem` values.
    pub fn empty(elem: ValueType) -> MetaArray {
        match elem {
            ValueType::U8 => MetaArray::U8(Vec::new()),
            ValueType::I8 => MetaArray::I8(Vec::new()),
            ValueType::U16 => MetaArray::U16(Vec::new()),
            ValueType::I16 => MetaArray::I16(Vec::new()),
            ValueType::U32 => MetaArray::U32(Vec::new()),
            ValueType::I32 => MetaArray::I32(Vec::new()),
            ValueType::F32 => MetaArray::F32(Vec::new()),
            ValueType::Bool => MetaArray::Bool(Vec::new()),
            ValueType::String => MetaArray::String(StringList::new()),
            ValueType::Array => MetaArray::Array(Vec::new()),
            ValueType::U64 => MetaArray::U64(Vec::new()),
            ValueType::I64 => MetaArray::I64(Vec::new()),
            ValueType::F64 => MetaArray::F64(Vec::new()),
        }
    }

    /// An array of `elem` values from single values; `Err` with the first value of another type.
    pub fn from_values(elem: ValueType, values: impl IntoIterator<Item = MetaValue>) -> Result<MetaArray, MetaValue> {
        let mut array = MetaArray::empty(elem);
        for value in values {
            array.push(value)?;
        }
        Ok(array)
    }

    /// Appends `value`; `Err(value)` when its type is not the element type.
    pub fn push(&mut self, value: MetaValue) -> Result<(), MetaValue> {
        match (self, value) {
            (MetaArray::U8(a), MetaValue::U8(v)) => a.push(v),
            (MetaArray::I8(a), MetaValue::I8(v)) => a.push(v),
            (MetaArray::U16(a), MetaValue::U16(v)) => a.push(v),
            (MetaArray::I16(a), MetaValue::I16(v)) => a.push(v),
            (MetaArray::U32(a), MetaValue::U32(v)) => a.push(v),
            (MetaArray::I32(a), MetaValue::I32(v)) => a.push(v),
            (MetaArray::F32(a), MetaValue::F32(v)) => a.push(v),
            (MetaArray::Bool(a), MetaValue::Bool(v)) => a.push(v),
            (MetaArray::String(a), MetaValue::String(v)) => a.push(&v),
            (MetaArray::Array(a), MetaValue::Array(v)) => a.push(v),
            (MetaArray::U64(a), MetaValue::U64(v)) => a.push(v),
            (MetaArray::I64(a), MetaValue::I64(v)) => a.push(v),
            (MetaArray::F64(a), MetaValue::F64(v)) => a.push(v),
            (_, other) => return Err(other),
        }
        Ok(())
    }

    pub fn elem_type(&self) -> ValueType {
        match self {
            MetaArray::U8(_) => ValueType::U8,
            MetaArray::I8(_) => ValueType::I8,
            MetaArray::U16(_) => ValueType::U16,
            MetaArray::I16(_) => ValueType::I16,
            MetaArray::U32(_) => ValueType::U32,
            MetaArray::I32(_) => ValueType::I32,
            MetaArray::F32(_) => ValueType::F32,
            MetaArray::Bool(_) => ValueType::Bool,
            MetaArray::String(_) => ValueType::String,
            MetaArray::Array(_) => ValueType::Array,
            MetaArray::U64(_) => ValueType::U64,
            MetaArray::I64(_) => ValueType::I64,
            MetaArray::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a single value (strings and nested arrays are copied).
    pub fn get(&self, i: usize) -> Option<MetaValue> {
        Some(match self {
            MetaArray::U8(v) => MetaValue::U8(*v.get(i)?),
            MetaArray::I8(v) => MetaValue::I8(*v.get(i)?),
            MetaArray::U16(v) => MetaValue::U16(*v.get(i)?),
            MetaArray::I16(v) => MetaValue::I16(*v.get(i)?),
            MetaArray::U32(v) => MetaValue::U32(*v.get(i)?),
            MetaArray::I32(v) => MetaValue::I32(*v.get(i)?),
            MetaArray::F32(v) => MetaValue::F32(*v.get(i)?),
            MetaArray::Bool(v) => MetaValue::Bool(*v.get(i)?),
            MetaArray::String(v) => MetaValue::String(v.get(i)?.to_owned()),
            MetaArray::Array(v) => MetaValue::Array(v.get(i)?.clone()),
            MetaArray::U64(v) => MetaValue::U64(*v.get(i)?),
            MetaArray::I64(v) => MetaValue::I64(*v.get(i)?),
            MetaArray::F64(v) => MetaValue::F64(*v.get(i)?),
        })
    }

    /// The elements as single values (copies; for small arrays).
    pub fn iter(&self) -> impl Iterator<Item = MetaValue> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The strings of a string array.
    pub fn strings(&self) -> Option<&StringList> {
        match self {
            MetaArray::String(v) => Some(v),
            _ => None,
        }
    }

    /// Every element as f32 (floats and integers, as [`MetaValue::as_f64`] then rounded to f32); `None` for other
    /// element types.
    pub fn to_f32s(&self) -> Option<Vec<f32>> {
        match self {
            MetaArray::F32(v) => Some(v.clone()),
            MetaArray::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            _ => self.to_i64s().map(|v| v.into_iter().map(|x| x as f32).collect()),
        }
    }

    /// Every element as i64 (integers, as [`MetaValue::as_i64`]); `None` for other element types or a u64 above
    /// `i64::MAX`.
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        match self {
            MetaArray::U8(v) => Some(v.iter().map(|&x| x as i64).collect()),
            MetaArray::I8(v) => Some(v.iter().map(|&x| x as i64).collect()),
            MetaArray::U16(v) => Some(v.iter().map(|&x| x as i64).collect()),
            MetaArray::I16(v) => Some(v.iter().map(|&x| x as i64).collect()),
            MetaArray::U32(v) => Some(v.iter().map(|&x| x as i64).collect()),
            MetaArray::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
            MetaArray::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect(),
            MetaArray::I64(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(_) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type as i64 (u64 values above i64::MAX give `None`).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::U8(v) => Some(v as i64),
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::U16(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::U32(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            MetaValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any non-negative integer as u64.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i64().and_then(|v| u64::try_from(v).ok()).or(match *self {
            MetaValue::U64(v) => Some(v),
            _ => None,
        })
    }

    /// Any float or integer as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(v) => Some(v),
            _ => None,
        }
    }

    /// A string array.
    pub fn strings<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> MetaValue {
        MetaValue::Array(MetaArray::String(items.into_iter().collect()))
    }
}

impl std::fmt::Display for MetaValue {
    /// Short human form; arrays longer than 8 items are abbreviated.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaValue::U8(v) => write!(f, "{v}"),
            MetaValue::I8(v) => write!(f, "{v}"),
            MetaValue::U16(v) => write!(f, "{v}"),
            MetaValue::I16(v) => write!(f, "{v}"),
            MetaValue::U32(v) => write!(f, "{v}"),
            MetaValue::I32(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::String(s) => write!(f, "{s:?}"),
            MetaValue::U64(v) => write!(f, "{v}"),
            MetaValue::I64(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            MetaValue::Array(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().take(8).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                if items.len() > 8 {
                    write!(f, ", ... ({} {} items)", items.len(), items.elem_type().name())?;
                }
                write!(f, "]")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_lists_keep_every_string_including_empty_ones() {
        let list: StringList = ["", "ab", "", "\u{2581}c\u{1F600}"].into_iter().collect();
        assert_eq!(list.len(), 4);
        assert_eq!(
            (list.get(0), list.get(1), list.get(2), list.get(3)),
            (Some(""), Some("ab"), Some(""), Some("▁c😀"))
        );
        assert_eq!(list.get(4), None);
        assert_eq!(list.iter().collect::<Vec<_>>(), ["", "ab", "", "▁c😀"]);
        assert_eq!(list.iter().len(), 4);
        assert!(StringList::new().is_empty() && StringList::new().get(0).is_none());
    }

    #[test]
    fn arrays_hold_one_element_type() {
        let a = MetaArray::from_values(ValueType::I32, [MetaValue::I32(-1), MetaValue::I32(7)]).unwrap();
        assert_eq!((a.elem_type(), a.len()), (ValueType::I32, 2));
        assert_eq!(a.get(1), Some(MetaValue::I32(7)));
        assert_eq!(a.iter().collect::<Vec<_>>(), [MetaValue::I32(-1), MetaValue::I32(7)]);
        assert_eq!(a.to_i64s(), Some(vec![-1, 7]));
        assert_eq!(a.to_f32s(), Some(vec![-1.0, 7.0]));
        assert_eq!(a.strings(), None);
        let mut b = MetaArray::empty(ValueType::String);
        assert_eq!(b.push(MetaValue::U8(1)), Err(MetaValue::U8(1)));
        b.push(MetaValue::String("x".into())).unwrap();
        assert_eq!((b.len(), b.to_f32s(), b.get(0)), (1, None, Some(MetaValue::String("x".into()))));
        let big = MetaArray::U64(vec![1, u64::MAX]);
        assert_eq!(big.to_i64s(), None, "u64 beyond i64::MAX");
        let nested = MetaArray::Array(vec![MetaArray::F32(vec![0.5]), MetaArray::empty(ValueType::Bool)]);
        assert_eq!(nested.get(0), Some(MetaValue::Array(MetaArray::F32(vec![0.5]))));
        assert_eq!(
            MetaValue::Array(MetaArray::U16((0..10).collect())).to_string(),
            "[0, 1, 2, 3, 4, 5, 6, 7, ... (10 u16 items)]"
        );
    }
}
