//! gemma.cpp's `io/fields_test.cc`, ported: the same structs (`Nested`, `OldFields`, `NewFields`), the same values
//! and the same expectations, plus the exact words of a small struct and error cases.

use gemma_io::sbs::fields::{read_fields, write_fields, FieldEnum, FieldVisitor, Fields, FieldsError};
use gemma_io::sbs_field_impl;

#[derive(Clone, Copy, Debug, PartialEq, Default)]
enum TestEnum {
    #[default]
    K1 = 1,
    K3 = 3,
    K8 = 8,
}

impl FieldEnum for TestEnum {
    const ENUM_NAME: &'static str = "Enum";
    fn to_u32(self) -> u32 {
        self as u32
    }
    fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(TestEnum::K1),
            3 => Some(TestEnum::K3),
            8 => Some(TestEnum::K8),
            _ => None,
        }
    }
}
sbs_field_impl!(enum TestEnum);

#[derive(Clone, Debug, PartialEq)]
struct Nested {
    nested_u32: u32,
    nested_bool: bool,
    nested_vector: Vec<u32>,
    nested_enum: TestEnum,
    nested_str: String,
    nested_f: f32,
}

impl Nested {
    fn new(u: u32) -> Nested {
        Nested {
            nested_u32: u,
            nested_bool: true,
            nested_vector: vec![1, 2, 3],
            nested_enum: TestEnum::K1,
            nested_str: "nested".into(),
            nested_f: 1.125,
        }
    }
}

impl Default for Nested {
    fn default() -> Self {
        Nested::new(0)
    }
}

impl Fields for Nested {
    fn name(&self) -> &'static str {
        "Nested"
    }
    fn visit_fields(&mut self, v: &mut FieldVisitor<'_>) {
        v.visit(&mut self.nested_u32);
        v.visit(&mut self.nested_bool);
        v.visit(&mut self.nested_vector);
        v.visit(&mut self.nested_enum);
        v.visit(&mut self.nested_str);
        v.visit(&mut self.nested_f);
    }
}
sbs_field_impl!(struct Nested);

#[derive(Clone, Debug, PartialEq)]
struct OldFields {
    old_str: String,
    old_nested: Nested,
    old1: u32,
    oldi: i32,
    oldl: u64,
    old_vec_str: Vec<String>,
    old_vec_nested: Vec<Nested>,
    old_f: f32,
    old_enum: TestEnum,
    old_bool: bool,
}

impl Default for OldFields {
    fn default() -> Self {
        OldFields {
            old_str: "old".into(),
            old_nested: Nested::new(0),
            old1: 1,
            oldi: -1,
            oldl: 1234567890123456789,
            old_vec_str: vec!["abc".into(), "1234".into()],
            old_vec_nested: vec![Nested::new(1), Nested::new(4)],
            old_f: 1.125,
            old_enum: TestEnum::K1,
            old_bool: true,
        }
    }
}

impl Fields for OldFields {
    fn name(&self) -> &'static str {
        "OldFields"
    }
    fn visit_fields(&mut self, v: &mut FieldVisitor<'_>) {
        v.visit(&mut self.old_str);
        v.visit(&mut self.old_nested);
        v.visit(&mut self.old1);
        v.visit(&mut self.oldi);
        v.visit(&mut self.oldl);
        v.visit(&mut self.old_vec_str);
        v.visit(&mut self.old_vec_nested);
        v.visit(&mut self.old_f);
        v.visit(&mut self.old_enum);
        v.visit(&mut self.old_bool);
    }
}

#[derive(Clone, Debug, PartialEq)]
struct NewFields {
    old: OldFields,
    new_nested: Nested,
    new_bool: bool,
    new_vec_nested: Vec<Nested>,
    new_f: f32,
    new_vec_str: Vec<String>,
    new_enum: TestEnum,
    new2: u32,
    new_str: String,
    new_i: i32,
    new_l: u64,
}

impl Default for NewFields {
    fn default() -> Self {
        NewFields {
            old: OldFields::default(),
            new_nested: Nested::new(999),
            new_bool: false,
            new_vec_nested: vec![Nested::new(2), Nested::new(3)],
            new_f: -2.0,
            new_vec_str: vec!["AB".into(), String::new(), "56789".into()],
            new_enum: TestEnum::K3,
            new2: 2,
            new_str: String::new(),
            new_i: 123456789,
            new_l: 876543210987654321,
        }
    }
}

impl Fields for NewFields {
    fn name(&self) -> &'static str {
        "NewFields"
    }
    fn visit_fields(&mut self, v: &mut FieldVisitor<'_>) {
        // The old fields inline (not nested), exactly as OldFields visits them.
        self.old.visit_fields(v);
        // New fields in a different type order.
        v.visit(&mut self.new_nested);
        v.visit(&mut self.new_bool);
        v.visit(&mut self.new_vec_nested);
        v.visit(&mut self.new_f);
        v.visit(&mut self.new_vec_str);
        v.visit(&mut self.new_enum);
        v.visit(&mut self.new2);
        v.visit(&mut self.new_str);
        v.visit(&mut self.new_i);
        v.visit(&mut self.new_l);
    }
}

fn modified_new_fields() -> NewFields {
    NewFields {
        old: OldFields {
            old_str: "old2".into(),
            old_nested: Nested::new(5),
            old1: 11,
            old_vec_str: vec!["abc2".into(), "431".into(), "ZZ".into()],
            old_vec_nested: vec![Nested::new(9)],
            old_f: -2.5,
            old_enum: TestEnum::K3,
            old_bool: false,
            ..OldFields::default()
        },
        new_nested: Nested::new(55),
        new_bool: true,
        new_vec_nested: vec![Nested::new(3), Nested::new(33), Nested::new(333)],
        new_f: 4.0,
        new_vec_str: vec!["4321".into(), "321".into(), "21".into(), "1".into()],
        new_enum: TestEnum::K8,
        new2: 22,
        new_str: "new and even longer".into(),
        new_i: 246810121,
        new_l: 1357913579113579135,
    }
}

#[test]
fn new_matches_defaults() {
    let storage = write_fields(&NewFields::default()).unwrap();
    let mut read = modified_new_fields();
    let r = read_fields(&mut read, &storage, 0).unwrap();
    assert_eq!((r.pos, r.missing_fields, r.extra_u32), (storage.len(), 0, 0));
    assert_eq!(read, NewFields::default());
}

#[test]
fn round_trip() {
    let modified = modified_new_fields();
    let storage = write_fields(&modified).unwrap();
    let mut copy = NewFields::default();
    let r = read_fields(&mut copy, &storage, 0).unwrap();
    assert_eq!((r.pos, r.missing_fields, r.extra_u32), (storage.len(), 0, 0));
    assert_eq!(copy, modified);
}

#[test]
fn refuses_invalid_floats() {
    for bad in [f32::INFINITY, f32::NAN] {
        let n = NewFields { new_f: bad, ..NewFields::default() };
        assert!(matches!(write_fields(&n), Err(FieldsError::NonFiniteFloat { .. })));
    }
}

#[test]
fn refuses_invalid_strings() {
    type IsExpected = fn(&FieldsError) -> bool;
    let cases: [(&[u8], IsExpected); 4] = [
        (b"\0\0\0\0", |e| matches!(e, FieldsError::InvalidStringWord { .. })),
        (&[b'a'; 257], |e| matches!(e, FieldsError::StringTooLong { words: 65, .. })),
        (&[128, b'2', b'3'], |e| matches!(e, FieldsError::InvalidStringWord { index: 0, .. })),
        (b"ABCDEFG\xff", |e| matches!(e, FieldsError::InvalidStringWord { index: 1, .. })),
    ];
    for (bytes, check) in cases {
        // Non-ASCII bytes are not valid UTF-8 on their own; build the String unchecked the way C++ holds bytes.
        // Rust strings are UTF-8: a non-ASCII byte becomes U+FFFD, whose bytes are also non-ASCII, in the same word.
        let s = String::from_utf8_lossy(bytes).into_owned();
        let n = NewFields { new_str: s, ..NewFields::default() };
        let err = write_fields(&n).unwrap_err();
        assert!(check(&err), "{bytes:?}: {err}");
    }
    // 256 ASCII bytes (64 words) is the longest allowed string.
    let n = NewFields { new_str: "a".repeat(256), ..NewFields::default() };
    let words = write_fields(&n).unwrap();
    let mut back = NewFields::default();
    read_fields(&mut back, &words, 0).unwrap();
    assert_eq!(back.new_str.len(), 256);
}

#[test]
fn multiple_structs_in_one_storage() {
    let modified = modified_new_fields();
    let mut storage = write_fields(&modified).unwrap();
    let modified_len = storage.len();
    storage.extend(write_fields(&NewFields::default()).unwrap());

    let mut first = NewFields::default();
    let r1 = read_fields(&mut first, &storage, 0).unwrap();
    assert_eq!((r1.pos, r1.missing_fields, r1.extra_u32), (modified_len, 0, 0));
    assert_eq!(first, modified);

    let mut second = modified.clone();
    let r2 = read_fields(&mut second, &storage, r1.pos).unwrap();
    assert_eq!((r2.pos, r2.missing_fields, r2.extra_u32), (storage.len(), 0, 0));
    assert_eq!(second, NewFields::default());
}

#[test]
fn new_code_reads_old_data() {
    let old = OldFields::default();
    let storage = write_fields(&old).unwrap();
    // Start from modified values: the old fields must be overwritten, the new ones left alone.
    let mut new = modified_new_fields();
    let r = read_fields(&mut new, &storage, 0).unwrap();
    assert_eq!(r.pos, storage.len());
    assert_eq!(r.missing_fields, 10, "ten new fields are missing");
    assert_eq!(r.extra_u32, 0);
    assert_eq!(new.old, old);
    let untouched = modified_new_fields();
    assert_eq!(new.new_nested, untouched.new_nested);
    assert_eq!(new.new_l, untouched.new_l);

    // Starting from defaults, the new fields keep their defaults.
    let mut new = NewFields::default();
    read_fields(&mut new, &storage, 0).unwrap();
    assert_eq!(new, NewFields::default());
}

#[test]
fn old_code_reads_new_data() {
    let new = NewFields::default();
    let storage = write_fields(&new).unwrap();
    let old_len = write_fields(&OldFields::default()).unwrap().len();
    let mut old = OldFields::default();
    let r = read_fields(&mut old, &storage, 0).unwrap();
    assert_eq!(r.missing_fields, 0);
    assert_eq!(r.extra_u32 as usize, storage.len() - old_len, "exactly the new fields' words are extra");
    // gemma.cpp: storage.size() == pos + extra_u32 with pos where reading stopped; ours skips to the end.
    assert_eq!(r.pos, storage.len());
    assert_eq!(old, new.old);
}

#[derive(Clone, Debug, PartialEq, Default)]
struct Outer {
    inner: Nested,
    after: u32,
}
impl Fields for Outer {
    fn name(&self) -> &'static str {
        "Outer"
    }
    fn visit_fields(&mut self, v: &mut FieldVisitor<'_>) {
        v.visit(&mut self.inner);
        v.visit(&mut self.after);
    }
}

#[test]
fn exact_words_and_nested_extra_words_are_skipped() {
    let n = Nested::new(7);
    let words = write_fields(&n).unwrap();
    let nested = u32::from_le_bytes(*b"nest");
    let ed = u32::from_le_bytes([b'e', b'd', 0, 0]);
    assert_eq!(
        words,
        vec![11, 7, 1, 3, 1, 2, 3, 1, 2, nested, ed, 1.125f32.to_bits()],
        "size, u32, bool, vec len + items, enum, string len + words, float"
    );

    // An inner struct with two unknown trailing words: the outer field after it must still be found.
    let outer = Outer { inner: Nested::new(3), after: 42 };
    let mut w = write_fields(&outer).unwrap();
    // w = [outer size, inner size, inner fields..., after]
    let inner_len = w[1] as usize;
    w.insert(2 + inner_len, 0xDEAD);
    w.insert(2 + inner_len, 0xBEEF);
    w[1] += 2;
    w[0] += 2;
    let mut back = Outer::default();
    let r = read_fields(&mut back, &w, 0).unwrap();
    assert_eq!(back, outer);
    assert_eq!((r.pos, r.extra_u32, r.missing_fields), (w.len(), 2, 0));
}

#[test]
fn invalid_data_is_an_error() {
    let words = write_fields(&Nested::new(1)).unwrap();
    // bool word (index 2) = 2
    let mut w = words.clone();
    w[2] = 2;
    assert!(matches!(read_fields(&mut Nested::default(), &w, 0), Err(FieldsError::InvalidBool { value: 2, .. })));
    // enum word (index 7) = 2, not a valid Enum
    let mut w = words.clone();
    w[7] = 2;
    assert!(matches!(read_fields(&mut Nested::default(), &w, 0), Err(FieldsError::InvalidEnum { value: 2, .. })));
    // string length beyond the struct
    let mut w = words.clone();
    w[8] = 60;
    assert!(matches!(read_fields(&mut Nested::default(), &w, 0), Err(FieldsError::Truncated { .. })));
    // absurd vector length
    let mut w = words.clone();
    w[3] = 70_000;
    assert!(matches!(read_fields(&mut Nested::default(), &w, 0), Err(FieldsError::VectorTooLong { .. })));
    // size word claiming more than the span holds
    let mut w = words.clone();
    w[0] = 1000;
    assert!(matches!(read_fields(&mut Nested::default(), &w, 0), Err(FieldsError::Truncated { .. })));
    // NaN float
    let mut w = words.clone();
    w[11] = f32::NAN.to_bits();
    assert!(matches!(read_fields(&mut Nested::default(), &w, 0), Err(FieldsError::NonFiniteFloat { .. })));
    // zero word inside a string
    let mut w = words;
    w[9] = 0;
    assert!(matches!(read_fields(&mut Nested::default(), &w, 0), Err(FieldsError::InvalidStringWord { .. })));
    // starting past the end
    assert!(matches!(read_fields(&mut Nested::default(), &[], 0), Err(FieldsError::StartOutOfRange { .. })));
}
