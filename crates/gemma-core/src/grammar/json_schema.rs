//! JSON Schema to GBNF grammar text, behaving like llama.cpp's `json_schema_to_grammar`.
//!
//! The conversion runs in two steps, as in llama.cpp: the schema is first read into a small tree of
//! the supported keywords (rejecting what falls outside), then the tree is turned into named GBNF
//! rules, printed sorted by name. Rule names, rule order, whitespace and the primitive rules match
//! llama.cpp, so a schema constrains generation here exactly as it does there.
//!
//! Property order matters to the grammar (properties are emitted in schema order). The workspace builds
//! serde_json with `preserve_order`, so a `serde_json::Value` keeps the written order;
//! [`json_schema_text_to_grammar`] reads the text itself and keeps it whatever serde_json's features.
//!
//! Where llama.cpp writes a grammar its own parser would refuse, crashes, or relies on undefined
//! behaviour, this module returns an error or keeps to the schema's meaning instead:
//! - minimum > maximum, minItems > maxItems, minLength > maxLength: an error when the rule is built
//!   (llama.cpp writes a rule matching the wrong numbers, or `{5,2}`);
//! - integer bounds too large for the 16-digit range layout (it would need `{17,15}`): an error;
//!   bounds beyond the 64-bit range clamp to it (llama.cpp's float-to-int cast is undefined there);
//! - a `$ref` that leads only to `$ref`s and back, once used: an error (llama.cpp writes
//!   `a ::= a`, or recurses forever inside `allOf`);
//! - `allOf` that flattens into itself without end: an error once rule visits nest 192 deep
//!   (llama.cpp overflows its stack);
//! - a quantifier after a non-ASCII character in a `pattern` applies to the whole character
//!   (llama.cpp applies it to the last UTF-8 byte, writing invalid UTF-8);
//! - lower repetition counts above [`MAX_REPETITION`] (llama.cpp's grammar parser refuses them
//!   too), counts past the 32-bit range, schemas nested past [`MAX_SCHEMA_DEPTH`] or larger than
//!   [`MAX_SCHEMA_NODES`]: an error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Schema nesting deeper than this is refused (schema objects inside schema objects).
pub const MAX_SCHEMA_DEPTH: usize = 64;
/// Largest lower count of a repetition written into the grammar (`minLength`, `minItems` less one
/// for the separated items after the first, regex `{n,m}`'s `n`). It is llama.cpp's grammar parser's
/// own limit, so a larger count could not be loaded anyway; that parser takes an upper count above
/// it as unbounded, so upper counts are only held to the 32-bit range llama.cpp reads them in.
pub const MAX_REPETITION: u64 = 2000;
/// Most schema nodes one conversion builds; `"type"` arrays copy their schema per type, which a
/// hostile schema could otherwise use to grow the work exponentially.
pub const MAX_SCHEMA_NODES: usize = 100_000;
/// Most rule visits nested inside each other, `$ref` hops included.
const MAX_VISIT_DEPTH: usize = 192;
/// Regex groups nested deeper than this fall back to any string, as in llama.cpp.
const MAX_PATTERN_DEPTH: usize = 100;
/// JSON values (enum and const included) nested deeper than this are refused.
const MAX_JSON_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonSchemaError {
    /// The schema text is not JSON.
    #[error("JSON schema is not valid JSON: {0}")]
    Json(String),
    /// The schema breaks a rule of JSON Schema that the conversion relies on.
    #[error("JSON schema error: {0}")]
    Invalid(String),
    /// The schema is valid but uses something the conversion does not support.
    #[error("JSON schema uses an unsupported feature: {0}")]
    Unsupported(String),
    /// A `pattern` is not a valid regular expression.
    #[error("JSON schema has an invalid pattern {pattern:?}: {why}")]
    InvalidPattern { pattern: String, why: String },
    /// The schema is too large or too deep to convert safely.
    #[error("JSON schema exceeds a limit: {0}")]
    Limit(String),
}

type Result<T> = std::result::Result<T, JsonSchemaError>;

/// A grammar together with the parts of the schema that were loosened to convert it (llama.cpp prints
/// these as warnings: a `pattern` with no grammar equivalent accepts any string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrammarConversion {
    pub grammar: String,
    pub warnings: Vec<String>,
}

/// Converts a JSON schema to GBNF text. Properties come in the order the `Value`'s map iterates (the
/// written order, with the workspace's `preserve_order`).
pub fn json_schema_to_grammar(schema: &serde_json::Value) -> Result<String> {
    convert_json_schema(schema).map(|c| c.grammar)
}

/// Converts a JSON schema given as text, keeping its properties in written order (as llama.cpp does).
pub fn json_schema_text_to_grammar(text: &str) -> Result<String> {
    convert_json_schema_text(text).map(|c| c.grammar)
}

/// [`json_schema_to_grammar`] with the warnings.
pub fn convert_json_schema(schema: &serde_json::Value) -> Result<GrammarConversion> {
    convert(&Json::from_value(schema, 0)?)
}

/// [`json_schema_text_to_grammar`] with the warnings.
pub fn convert_json_schema_text(text: &str) -> Result<GrammarConversion> {
    let json: Json = serde_json::from_str(text).map_err(|e| JsonSchemaError::Json(e.to_string()))?;
    convert(&json)
}

fn convert(schema: &Json) -> Result<GrammarConversion> {
    let doc = SchemaBuilder::new(schema).build()?;
    let mut converter = Converter::new(&doc);
    converter.visit(&doc.root, "")?;
    Ok(GrammarConversion { grammar: converter.format_grammar(), warnings: converter.warnings })
}

/// Escapes `s` as a GBNF string literal, quotes included.
pub fn gbnf_format_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// An order-keeping JSON value.

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    /// Keys in insertion order; a repeated key keeps its first place and its last value.
    Object(Vec<(String, Json)>),
}

impl Json {
    fn from_value(value: &serde_json::Value, depth: usize) -> Result<Json> {
        use serde_json::Value;
        if depth > MAX_JSON_DEPTH {
            return Err(JsonSchemaError::Limit(format!("JSON nested deeper than {MAX_JSON_DEPTH} levels")));
        }
        Ok(match value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) => Json::String(s.clone()),
            Value::Array(items) => {
                Json::Array(items.iter().map(|v| Json::from_value(v, depth + 1)).collect::<Result<_>>()?)
            }
            Value::Object(map) => Json::Object(
                map.iter().map(|(k, v)| Ok((k.clone(), Json::from_value(v, depth + 1)?))).collect::<Result<_>>()?,
            ),
        })
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn is_integer(&self) -> bool {
        matches!(self, Json::Number(n) if n.is_i64() || n.is_u64())
    }

    /// Compact JSON text, written as llama.cpp's JSON library writes it.
    fn dump(&self) -> String {
        let mut out = String::new();
        self.dump_into(&mut out);
        out
    }

    fn dump_into(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => dump_number(n, out),
            Json::String(s) => dump_string(s, out),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.dump_into(out);
                }
                out.push(']');
            }
            Json::Object(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    dump_string(k, out);
                    out.push(':');
                    v.dump_into(out);
                }
                out.push('}');
            }
        }
    }
}

fn dump_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn dump_number(n: &serde_json::Number, out: &mut String) {
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        dump_float(f, out);
    }
}

/// Shortest round-trip digits laid out as nlohmann::json does: plain notation while the decimal
/// point falls within 15 digits and the value is at least 1e-4, else `d.ddde+XX`.
fn dump_float(f: f64, out: &mut String) {
    if f.is_sign_negative() {
        out.push('-');
    }
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    // the decimal point sits after the first n digits
    let n = exp + 1;
    if k <= n && n <= 15 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
        out.push_str(".0");
    } else if 0 < n && n <= 15 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -4 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = n - 1;
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Json, E> {
        serde_json::Number::from_f64(v).map(Json::Number).ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> std::result::Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E>(self) -> std::result::Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> std::result::Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Json, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Json, A::Error> {
        let mut entries: Vec<(String, Json)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let value: Json = map.next_value()?;
            match index.get(&key) {
                Some(&i) => entries[i].1 = value,
                None => {
                    index.insert(key.clone(), entries.len());
                    entries.push((key, value));
                }
            }
        }
        Ok(Json::Object(entries))
    }
}

// ---------------------------------------------------------------------------------------------
// The schema tree: the supported subset of JSON Schema.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    None,
    Uuid,
    Date,
    Time,
    DateTime,
}

#[derive(Debug)]
enum Node {
    Any,
    /// A local `$ref`; its target lives in [`Document::refs`] under the same string.
    Ref(String),
    AnyOf(Vec<Node>),
    AllOf(Vec<Node>),
    Const(Json),
    Enum(Vec<Json>),
    Null,
    Boolean,
    Number,
    /// Inclusive bounds, `i64::MIN` / `i64::MAX` for none.
    Integer {
        min: i64,
        max: i64,
    },
    String {
        pattern: String,
        format: Format,
        min_length: u64,
        max_length: Option<u64>,
    },
    Array {
        items: Box<Node>,
        min_items: u64,
        max_items: Option<u64>,
    },
    Tuple(Vec<Node>),
    Object {
        properties: Vec<Property>,
        additional: Option<Box<Node>>,
    },
}

#[derive(Debug)]
struct Property {
    name: String,
    schema: Node,
    required: bool,
}

struct Document {
    root: Node,
    refs: HashMap<String, Node>,
    /// $refs that lead only to $refs and back: as a rule each would be defined by itself alone
    /// (llama.cpp writes such a grammar, which its grammar parser then refuses, or recurses forever
    /// inside `allOf`).
    cyclic_refs: HashSet<String>,
}

impl Document {
    fn target(&self, r: &str) -> Result<&Node> {
        if self.cyclic_refs.contains(r) {
            return Err(JsonSchemaError::Invalid(format!("$ref {r} refers only to itself through $refs")));
        }
        self.refs.get(r).ok_or_else(|| JsonSchemaError::Invalid(format!("unresolved $ref {r}")))
    }
}

struct SchemaBuilder<'a> {
    root: &'a Json,
    /// `None` while the target is being built, so that a cycle back to it stops there.
    refs: HashMap<String, Option<Node>>,
    nodes: usize,
}

fn invalid(path: &str, msg: impl std::fmt::Display) -> JsonSchemaError {
    JsonSchemaError::Invalid(format!("at {path}: {msg}"))
}

impl<'a> SchemaBuilder<'a> {
    fn new(root: &'a Json) -> Self {
        SchemaBuilder { root, refs: HashMap::new(), nodes: 0 }
    }

    fn build(mut self) -> Result<Document> {
        let root = self.build_node(self.root, "#", 0, None)?;
        let mut refs = HashMap::with_capacity(self.refs.len());
        for (key, node) in self.refs {
            let node = node.ok_or_else(|| JsonSchemaError::Invalid(format!("$ref {key} could not be resolved")))?;
            refs.insert(key, node);
        }
        let mut cyclic_refs = HashSet::new();
        for start in refs.keys() {
            let mut seen = HashSet::new();
            let mut cur = start;
            while let Some(Node::Ref(next)) = refs.get(cur) {
                if !seen.insert(next) {
                    cyclic_refs.insert(start.clone());
                    break;
                }
                cur = next;
            }
        }
        Ok(Document { root, refs, cyclic_refs })
    }

    fn get_count(schema: &Json, key: &str, path: &str) -> Result<Option<u64>> {
        let Some(value) = schema.get(key) else {
            return Ok(None);
        };
        let count = match value {
            Json::Number(n) if value.is_integer() => n.as_u64(),
            _ => None,
        };
        match count {
            None => Err(invalid(path, format!("{key} must be a non-negative integer"))),
            Some(c) if c > i32::MAX as u64 => {
                Err(JsonSchemaError::Limit(format!("at {path}: {key} {c} is above the limit of {}", i32::MAX)))
            }
            Some(c) => Ok(Some(c)),
        }
    }

    /// A fractional bound is rounded inwards, towards the integers it still admits. Wider than
    /// `i64` so that an exclusive bound can step past the 64-bit range before it is clamped.
    fn get_bound(value: &Json, key: &str, path: &str, round_up: bool) -> Result<i128> {
        let Json::Number(n) = value else {
            return Err(invalid(path, format!("{key} must be a number")));
        };
        if let Some(i) = n.as_i64() {
            return Ok(i128::from(i));
        }
        if let Some(u) = n.as_u64() {
            return Ok(i128::from(u));
        }
        let d = n.as_f64().unwrap_or(0.0);
        // `as` saturates at the ends of the range
        Ok(if round_up { d.ceil() } else { d.floor() } as i128)
    }

    fn get_format(schema: &Json, path: &str) -> Result<Format> {
        let Some(value) = schema.get("format") else {
            return Ok(Format::None);
        };
        let Json::String(format) = value else {
            return Err(invalid(path, "format must be a string"));
        };
        Ok(match format.as_str() {
            "date" => Format::Date,
            "time" => Format::Time,
            "date-time" => Format::DateTime,
            "uuid" | "uuid1" | "uuid2" | "uuid3" | "uuid4" | "uuid5" => Format::Uuid,
            _ => Format::None,
        })
    }

    /// Follows a `#/a/b/0` pointer. Tokens are taken literally (no `~0` / `~1` unescaping), as in
    /// llama.cpp.
    fn resolve_ref(&self, r: &str, path: &str) -> Result<&'a Json> {
        let mut target = self.root;
        for sel in r.split('/').skip(1) {
            if let Some(next) = target.get(sel) {
                target = next;
            } else if let Json::Array(items) = target {
                // like stoull: leading blanks and digits, trailing text ignored
                let digits: String = sel.trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
                let idx = digits.parse::<usize>().unwrap_or(usize::MAX);
                target = items
                    .get(idx)
                    .ok_or_else(|| invalid(path, format!("cannot resolve $ref {r}, {sel} is out of range")))?;
            } else {
                return Err(invalid(path, format!("cannot resolve $ref {r}, {sel} not found")));
            }
        }
        Ok(target)
    }

    fn build_ref(&mut self, value: &Json, path: &str, depth: usize) -> Result<Node> {
        let Json::String(r) = value else {
            return Err(invalid(path, "$ref must be a string"));
        };
        if !r.starts_with("#/") {
            return Err(JsonSchemaError::Unsupported(format!(
                "at {path}: $ref {r}, only references into the same document (\"#/...\") are supported"
            )));
        }
        if !self.refs.contains_key(r) {
            self.refs.insert(r.clone(), None);
            let target = self.resolve_ref(r, path)?;
            let node = self.build_node(target, r, depth + 1, None)?;
            self.refs.insert(r.clone(), Some(node));
        }
        Ok(Node::Ref(r.clone()))
    }

    fn build_alternatives(&mut self, alts: &Json, path: &str, depth: usize) -> Result<Vec<Node>> {
        let Json::Array(alts) = alts else {
            return Err(invalid(path, "must be an array of schemas"));
        };
        if alts.is_empty() {
            return Err(invalid(path, "must not be empty"));
        }
        alts.iter().enumerate().map(|(i, alt)| self.build_node(alt, &format!("{path}/{i}"), depth + 1, None)).collect()
    }

    fn build_object(&mut self, schema: &Json, path: &str, depth: usize) -> Result<Node> {
        let mut required = HashSet::new();
        if let Some(Json::Array(names)) = schema.get("required") {
            for name in names {
                if let Json::String(name) = name {
                    required.insert(name.as_str());
                }
            }
        }
        let mut properties = Vec::new();
        if let Some(props) = schema.get("properties") {
            let Json::Object(props) = props else {
                return Err(invalid(path, "properties must be an object"));
            };
            for (name, prop) in props {
                let schema = self.build_node(prop, &format!("{path}/properties/{name}"), depth + 1, None)?;
                properties.push(Property { name: name.clone(), schema, required: required.contains(name.as_str()) });
            }
        }
        let additional = match schema.get("additionalProperties") {
            Some(Json::Bool(true)) => Some(Box::new(Node::Any)),
            Some(Json::Bool(false)) => None,
            Some(ap @ Json::Object(_)) => {
                Some(Box::new(self.build_node(ap, &format!("{path}/additionalProperties"), depth + 1, None)?))
            }
            Some(_) => return Err(invalid(path, "additionalProperties must be a boolean or a schema")),
            // {"type": "object"} on its own accepts any object
            None if !schema.contains("properties") => Some(Box::new(Node::Any)),
            None => None,
        };
        Ok(Node::Object { properties, additional })
    }

    fn build_array(&mut self, schema: &Json, path: &str, depth: usize) -> Result<Node> {
        // "items" wins over "prefixItems"; either one as an array is a tuple, as a schema the item schema
        let key = if schema.contains("items") {
            Some("items")
        } else {
            schema.contains("prefixItems").then_some("prefixItems")
        };
        let items = match key.and_then(|k| schema.get(k).map(|v| (k, v))) {
            Some((key, Json::Array(items))) => {
                let items = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.build_node(item, &format!("{path}/{key}/{i}"), depth + 1, None))
                    .collect::<Result<_>>()?;
                return Ok(Node::Tuple(items));
            }
            Some((key, items)) => self.build_node(items, &format!("{path}/{key}"), depth + 1, None)?,
            None => Node::Any,
        };
        let min_items = Self::get_count(schema, "minItems", path)?.unwrap_or(0);
        let max_items = Self::get_count(schema, "maxItems", path)?;
        Ok(Node::Array { items: Box::new(items), min_items, max_items })
    }

    fn build_string(&mut self, schema: &Json, path: &str) -> Result<Node> {
        let pattern = match schema.get("pattern") {
            None => String::new(),
            Some(Json::String(p)) => p.clone(),
            Some(_) => return Err(invalid(path, "pattern must be a string")),
        };
        let format = Self::get_format(schema, path)?;
        let min_length = Self::get_count(schema, "minLength", path)?.unwrap_or(0);
        let max_length = Self::get_count(schema, "maxLength", path)?;
        Ok(Node::String { pattern, format, min_length, max_length })
    }

    fn build_integer(&mut self, schema: &Json, path: &str) -> Result<Node> {
        let mut min = i128::from(i64::MIN);
        let mut max = i128::from(i64::MAX);
        if let Some(v) = schema.get("minimum") {
            min = Self::get_bound(v, "minimum", path, true)?;
        } else if let Some(v) = schema.get("exclusiveMinimum") {
            min = Self::get_bound(v, "exclusiveMinimum", path, false)?.saturating_add(1);
        }
        if let Some(v) = schema.get("maximum") {
            max = Self::get_bound(v, "maximum", path, false)?;
        } else if let Some(v) = schema.get("exclusiveMaximum") {
            max = Self::get_bound(v, "exclusiveMaximum", path, true)?.saturating_sub(1);
        }
        // Past the 64-bit range a bound clamps to its end: i64::MIN / i64::MAX mean "no bound",
        // a lower bound past i64::MAX is then refused as too large when converted.
        let clamp = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        Ok(Node::Integer { min: clamp(min), max: clamp(max) })
    }

    /// `type_override` stands for the schema with its "type" replaced, for one entry of a type array.
    fn build_node(&mut self, schema: &Json, path: &str, depth: usize, type_override: Option<&Json>) -> Result<Node> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(JsonSchemaError::Limit(format!(
                "at {path}: schema nested deeper than {MAX_SCHEMA_DEPTH} levels"
            )));
        }
        self.nodes += 1;
        if self.nodes > MAX_SCHEMA_NODES {
            return Err(JsonSchemaError::Limit(format!("schema has more than {MAX_SCHEMA_NODES} nodes")));
        }
        if !matches!(schema, Json::Object(_)) {
            return Err(invalid(path, "schema must be an object"));
        }
        if let Some(r) = schema.get("$ref") {
            return self.build_ref(r, path, depth);
        }
        if let Some(key) = ["oneOf", "anyOf"].into_iter().find(|k| schema.contains(k)) {
            let alts = schema.get(key).unwrap_or(&Json::Null);
            return Ok(Node::AnyOf(self.build_alternatives(alts, &format!("{path}/{key}"), depth)?));
        }

        let ty = type_override.or_else(|| schema.get("type")).unwrap_or(&Json::Null);
        if let Json::Array(types) = ty {
            // {"type": ["a", "b"], ...} is {"anyOf": [{"type": "a", ...}, {"type": "b", ...}]}
            if types.is_empty() {
                return Err(invalid(path, "type must not be empty"));
            }
            let alts = types
                .iter()
                .enumerate()
                .map(|(i, t)| self.build_node(schema, &format!("{path}/type/{i}"), depth + 1, Some(t)))
                .collect::<Result<_>>()?;
            return Ok(Node::AnyOf(alts));
        }
        if let Some(value) = schema.get("const") {
            return Ok(Node::Const(value.clone()));
        }
        if let Some(values) = schema.get("enum") {
            return match values {
                Json::Array(values) if !values.is_empty() => Ok(Node::Enum(values.clone())),
                _ => Err(invalid(path, "enum must be a non-empty array")),
            };
        }
        let type_name = match ty {
            Json::Null => "",
            Json::String(s) => s.as_str(),
            _ => return Err(invalid(path, "type must be a string or an array of strings")),
        };
        let has_properties = schema.contains("properties")
            || schema.get("additionalProperties").is_some_and(|ap| *ap != Json::Bool(true));
        let all_of = |this: &mut Self| -> Result<Node> {
            let alts = schema.get("allOf").unwrap_or(&Json::Null);
            Ok(Node::AllOf(this.build_alternatives(alts, &format!("{path}/allOf"), depth)?))
        };

        match type_name {
            // without a type the structural keywords decide
            "" => {
                if has_properties {
                    self.build_object(schema, path, depth)
                } else if schema.contains("allOf") {
                    all_of(self)
                } else if schema.contains("items") || schema.contains("prefixItems") {
                    self.build_array(schema, path, depth)
                } else if ["pattern", "minLength", "maxLength"].iter().any(|k| schema.contains(k))
                    || Self::get_format(schema, path)? != Format::None
                {
                    self.build_string(schema, path)
                } else {
                    Ok(Node::Any)
                }
            }
            "object" if !has_properties && schema.contains("allOf") => all_of(self),
            "object" => self.build_object(schema, path, depth),
            "string" if schema.contains("allOf") => all_of(self),
            "string" => self.build_string(schema, path),
            "array" => self.build_array(schema, path, depth),
            "integer" => self.build_integer(schema, path),
            "number" => Ok(Node::Number),
            "boolean" => Ok(Node::Boolean),
            "null" => Ok(Node::Null),
            other => Err(invalid(path, format!("unrecognized type {other}"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rules.

const SPACE_RULE: &str = r#"| " " | "\n"{1,2} [ \t]{0,20}"#;

struct BuiltinRule {
    name: &'static str,
    content: &'static str,
    deps: &'static [&'static str],
}

const PRIMITIVE_RULES: &[BuiltinRule] = &[
    BuiltinRule { name: "boolean", content: r#"("true" | "false")"#, deps: &[] },
    BuiltinRule { name: "decimal-part", content: "[0-9]{1,16}", deps: &[] },
    BuiltinRule { name: "integral-part", content: "[0] | [1-9] [0-9]{0,15}", deps: &[] },
    BuiltinRule {
        name: "number",
        content: r#"("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?"#,
        deps: &["integral-part", "decimal-part"],
    },
    BuiltinRule { name: "integer", content: r#"("-"? integral-part)"#, deps: &["integral-part"] },
    BuiltinRule {
        name: "value",
        content: "object | array | string | number | boolean | null",
        deps: &["object", "array", "string", "number", "boolean", "null"],
    },
    BuiltinRule {
        name: "object",
        content: r#""{" space ( string ":" space value ("," space string ":" space value)* )? space "}""#,
        deps: &["string", "value"],
    },
    BuiltinRule { name: "array", content: r#""[" space ( value ("," space value)* )? space "]""#, deps: &["value"] },
    BuiltinRule {
        name: "uuid",
        content: r#""\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\"""#,
        deps: &[],
    },
    BuiltinRule { name: "char", content: r#"[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})"#, deps: &[] },
    BuiltinRule { name: "string", content: r#""\"" char* "\"""#, deps: &["char"] },
    BuiltinRule { name: "null", content: r#""null""#, deps: &[] },
];

const STRING_FORMAT_RULES: &[BuiltinRule] = &[
    BuiltinRule {
        name: "date",
        content: r#"[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )"#,
        deps: &[],
    },
    BuiltinRule {
        name: "time",
        content: r#"([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )"#,
        deps: &[],
    },
    BuiltinRule { name: "date-time", content: r#"date "T" time"#, deps: &["date", "time"] },
    BuiltinRule { name: "date-string", content: r#""\"" date "\"""#, deps: &["date"] },
    BuiltinRule { name: "time-string", content: r#""\"" time "\"""#, deps: &["time"] },
    BuiltinRule { name: "date-time-string", content: r#""\"" date-time "\"""#, deps: &["date-time"] },
];

fn builtin(name: &str) -> Option<&'static BuiltinRule> {
    PRIMITIVE_RULES.iter().chain(STRING_FORMAT_RULES).find(|r| r.name == name)
}

fn is_reserved_name(name: &str) -> bool {
    name == "root" || builtin(name).is_some()
}

/// Replaces each run of characters outside `[a-zA-Z0-9-]` with one `-`.
fn escape_rule_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('-');
            in_run = true;
        }
    }
    out
}

/// `name` then `-` unless `name` is empty, the prefix of a child rule's name.
fn child_prefix(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!("{name}-")
    }
}

/// `item` repeated `min..=max` times (`max` `None`: unbounded), optionally separated.
fn build_repetition(item: &str, min: u64, max: Option<u64>, separator: &str) -> String {
    if max == Some(0) {
        return String::new();
    }
    if min == 0 && max == Some(1) {
        return format!("{item}?");
    }
    if separator.is_empty() {
        return match (min, max) {
            (1, None) => format!("{item}+"),
            (0, None) => format!("{item}*"),
            (min, None) => format!("{item}{{{min},}}"),
            (min, Some(max)) => format!("{item}{{{min},{max}}}"),
        };
    }
    let rest =
        build_repetition(&format!("({separator} {item})"), min.saturating_sub(1), max.map(|m| m.saturating_sub(1)), "");
    let result = format!("{item} {rest}");
    if min == 0 {
        format!("({result})?")
    } else {
        result
    }
}

// Integer ranges as digit-by-digit alternatives, in llama.cpp's exact layout.

fn digit_range(out: &mut String, from: u8, to: u8) {
    out.push('[');
    out.push(from as char);
    if from != to {
        out.push('-');
        out.push(to as char);
    }
    out.push(']');
}

fn more_digits(out: &mut String, min_digits: i64, max_digits: i64) {
    out.push_str("[0-9]");
    if min_digits == max_digits && min_digits == 1 {
        return;
    }
    let _ = write!(out, "{{{min_digits}");
    if max_digits != min_digits {
        out.push(',');
        if max_digits != i64::from(i32::MAX) {
            let _ = write!(out, "{max_digits}");
        }
    }
    out.push('}');
}

/// Numbers of one length between `from` and `to`, both given as digit strings.
fn uniform_range(out: &mut String, from: &[u8], to: &[u8]) {
    let mut i = 0;
    while i < from.len() && i < to.len() && from[i] == to[i] {
        i += 1;
    }
    if i > 0 {
        out.push('"');
        out.push_str(&String::from_utf8_lossy(&from[..i]));
        out.push('"');
    }
    if i >= from.len() || i >= to.len() {
        return;
    }
    if i > 0 {
        out.push(' ');
    }
    let sub_len = from.len() - i - 1;
    let (f, t) = (from[i], to[i]);
    if sub_len == 0 {
        let _ = write!(out, "[{}-{}]", f as char, t as char);
        return;
    }
    let from_sub = &from[i + 1..];
    let to_sub = to.get(i + 1..).unwrap_or(&[]);
    let zeros = vec![b'0'; sub_len];
    let nines = vec![b'9'; sub_len];
    let mut to_reached = false;
    out.push('(');
    if from_sub == zeros.as_slice() {
        digit_range(out, f, t.wrapping_sub(1));
        out.push(' ');
        more_digits(out, sub_len as i64, sub_len as i64);
    } else {
        let _ = write!(out, "[{}] (", f as char);
        uniform_range(out, from_sub, &nines);
        out.push(')');
        if i32::from(f) < i32::from(t) - 1 {
            out.push_str(" | ");
            if to_sub == nines.as_slice() {
                digit_range(out, f.wrapping_add(1), t);
                to_reached = true;
            } else {
                digit_range(out, f.wrapping_add(1), t.wrapping_sub(1));
            }
            out.push(' ');
            more_digits(out, sub_len as i64, sub_len as i64);
        }
    }
    if !to_reached {
        out.push_str(" | ");
        digit_range(out, t, t);
        out.push(' ');
        uniform_range(out, &zeros, to_sub);
    }
    out.push(')');
}

/// Integers within `min..=max` (`i64::MIN` / `i64::MAX`: unbounded on that side).
/// Fails where llama.cpp fails: a negated bound that lands on "unbounded" leaves nothing to build.
fn build_min_max_int(
    out: &mut String,
    mut min: i64,
    max: i64,
    decimals_left: i64,
    top_level: bool,
) -> std::result::Result<(), ()> {
    let has_min = min != i64::MIN;
    let has_max = max != i64::MAX;

    if has_min && has_max {
        if min < 0 && max < 0 {
            out.push_str("\"-\" (");
            build_min_max_int(out, max.saturating_neg(), min.saturating_neg(), decimals_left, true)?;
            out.push(')');
            return Ok(());
        }
        if min < 0 {
            out.push_str("\"-\" (");
            build_min_max_int(out, 0, min.saturating_neg(), decimals_left, true)?;
            out.push_str(") | ");
            min = 0;
        }
        let mut min_s = min.to_string().into_bytes();
        let max_s = max.to_string().into_bytes();
        for digits in min_s.len()..max_s.len() {
            uniform_range(out, &min_s, &vec![b'9'; digits]);
            min_s = std::iter::once(b'1').chain(std::iter::repeat_n(b'0', digits)).collect();
            out.push_str(" | ");
        }
        uniform_range(out, &min_s, &max_s);
        return Ok(());
    }

    let less_decimals = (decimals_left - 1).max(1);

    if has_min {
        if min < 0 {
            out.push_str("\"-\" (");
            build_min_max_int(out, i64::MIN, min.saturating_neg(), decimals_left, false)?;
            out.push_str(") | [0] | [1-9] ");
            more_digits(out, 0, decimals_left - 1);
        } else if min == 0 {
            if top_level {
                out.push_str("[0] | [1-9] ");
                more_digits(out, 0, less_decimals);
            } else {
                more_digits(out, 1, decimals_left);
            }
        } else if min <= 9 {
            let c = b'0' + min as u8;
            let range_start = if top_level { b'1' } else { b'0' };
            if c > range_start {
                digit_range(out, range_start, c - 1);
                out.push(' ');
                more_digits(out, 1, less_decimals);
                out.push_str(" | ");
            }
            digit_range(out, c, b'9');
            out.push(' ');
            more_digits(out, 0, less_decimals);
        } else {
            let min_s = min.to_string().into_bytes();
            let len = min_s.len() as i64;
            let c = min_s[0];
            if c > b'1' {
                digit_range(out, if top_level { b'1' } else { b'0' }, c - 1);
                out.push(' ');
                more_digits(out, len, less_decimals);
                out.push_str(" | ");
            }
            digit_range(out, c, c);
            out.push_str(" (");
            let rest = std::str::from_utf8(&min_s[1..]).ok().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
            build_min_max_int(out, rest, i64::MAX, less_decimals, false)?;
            out.push(')');
            if c < b'9' {
                out.push_str(" | ");
                digit_range(out, c + 1, b'9');
                out.push(' ');
                more_digits(out, len - 1, less_decimals);
            }
        }
        return Ok(());
    }

    if has_max {
        if max >= 0 {
            if top_level {
                out.push_str("\"-\" [1-9] ");
                more_digits(out, 0, less_decimals);
                out.push_str(" | ");
            }
            build_min_max_int(out, 0, max, decimals_left, true)?;
        } else {
            out.push_str("\"-\" (");
            build_min_max_int(out, max.saturating_neg(), i64::MAX, decimals_left, false)?;
            out.push(')');
        }
        return Ok(());
    }
    Err(())
}

/// Appends `c` as it may stand inside a GBNF character class after its first character. llama.cpp writes
/// property names into classes as they are, so a name holding `]` made a grammar that neither parser reads
/// (found by fuzzing); `]` is escaped. `\` and `-` are still written as llama.cpp writes them (the
/// differential cases hold that text), although `[\]` and a `-` between two characters are misread.
fn push_class_char(out: &mut String, c: char) {
    if c == ']' {
        out.push_str("\\]");
    } else {
        out.push(c);
    }
}

/// Whether `rule` holds a repetition `{a,b}` with `a > b`.
fn has_inverted_repetition(rule: &str) -> bool {
    rule.split('{').skip(1).any(|part| {
        let inside = part.split('}').next().unwrap_or_default();
        match inside.split_once(',') {
            Some((a, b)) if !b.is_empty() => matches!((a.parse::<u64>(), b.parse::<u64>()), (Ok(a), Ok(b)) if a > b),
            _ => false,
        }
    })
}

/// Why a pattern did not convert.
enum PatternError {
    /// A valid regex with no grammar equivalent: the string is left unconstrained (with a warning).
    Unsupported(String),
    /// Not a valid regex: the conversion fails.
    Invalid(String),
    /// Valid, but asks for more than the grammar can hold: the conversion fails.
    Limit(String),
}

/// Characters that end a run of literal characters in a pattern.
fn is_non_literal(c: char) -> bool {
    matches!(c, '|' | '.' | '(' | ')' | '[' | ']' | '{' | '}' | '*' | '+' | '?' | '^' | '$')
}

/// Length of a GBNF escape (`\n`, `\x41`, `\u00e9`, ...) starting at `pos`, 0 if there is none.
fn gbnf_escape_length(p: &[char], pos: usize) -> usize {
    if pos + 1 >= p.len() || p[pos] != '\\' {
        return 0;
    }
    let n_hex = match p[pos + 1] {
        'x' => 2,
        'u' => 4,
        'U' => 8,
        't' | 'r' | 'n' | '\\' | '"' | '[' | ']' | '-' => return 2,
        _ => return 0,
    };
    if pos + 2 + n_hex > p.len() || !p[pos + 2..pos + 2 + n_hex].iter().all(|c| c.is_ascii_hexdigit()) {
        return 0;
    }
    2 + n_hex
}

/// Parses like C's `stoi`: leading blanks, an optional sign, digits; the rest is ignored.
fn parse_count(s: &str) -> Option<i64> {
    let s = s.trim_start_matches([' ', '\t', '\n', '\r', '\u{b}', '\u{c}']);
    let (neg, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
    let v: i64 = digits.parse().ok()?;
    let v = if neg { -v } else { v };
    i32::try_from(v).ok().map(i64::from)
}

struct PatternState {
    chars: Vec<char>,
    i: usize,
    paren_depth: usize,
    name: String,
    sub_rule_ids: HashMap<String, String>,
}

struct Converter<'a> {
    doc: &'a Document,
    rules: BTreeMap<String, String>,
    refs_being_resolved: HashSet<String>,
    warnings: Vec<String>,
    depth: usize,
    /// Rules added while a pattern converts, removed again if it turns out unsupported.
    journal: Option<Vec<String>>,
}

impl<'a> Converter<'a> {
    fn new(doc: &'a Document) -> Self {
        let mut rules = BTreeMap::new();
        rules.insert("space".to_owned(), SPACE_RULE.to_owned());
        Converter { doc, rules, refs_being_resolved: HashSet::new(), warnings: Vec::new(), depth: 0, journal: None }
    }

    fn format_grammar(&self) -> String {
        let mut out = String::new();
        for (name, rule) in &self.rules {
            let _ = writeln!(out, "{name} ::= {rule}");
        }
        out
    }

    /// Adds a rule under `name` (escaped), or under `name` plus a number if that name holds another
    /// rule; returns the name used.
    fn add_rule(&mut self, name: &str, rule: &str) -> String {
        let esc = escape_rule_name(name);
        let key = match self.rules.get(&esc) {
            None => esc,
            Some(existing) if existing == rule => return esc,
            Some(_) => {
                let mut i = 0usize;
                loop {
                    let key = format!("{esc}{i}");
                    match self.rules.get(&key) {
                        None => break key,
                        Some(existing) if existing == rule => return key,
                        Some(_) => i += 1,
                    }
                }
            }
        };
        if let Some(journal) = &mut self.journal {
            journal.push(key.clone());
        }
        self.rules.insert(key.clone(), rule.to_owned());
        key
    }

    fn add_primitive(&mut self, name: &str, rule: &BuiltinRule) -> String {
        let n = self.add_rule(name, rule.content);
        for dep in rule.deps {
            if let Some(dep_rule) = builtin(dep) {
                if !self.rules.contains_key(*dep) {
                    self.add_primitive(dep, dep_rule);
                }
            }
        }
        n
    }

    fn add_builtin(&mut self, name: &str) -> String {
        match builtin(name) {
            Some(rule) => self.add_primitive(name, rule),
            None => name.to_owned(),
        }
    }

    fn visit_primitive(&mut self, rule_name: &str, ty: &str) -> String {
        match builtin(ty) {
            Some(rule) => self.add_primitive(if rule_name == "root" { "root" } else { ty }, rule),
            None => ty.to_owned(),
        }
    }

    fn visit(&mut self, node: &'a Node, name: &str) -> Result<String> {
        if self.depth >= MAX_VISIT_DEPTH {
            return Err(JsonSchemaError::Limit(format!(
                "schema nested deeper than {MAX_VISIT_DEPTH} levels through $refs"
            )));
        }
        self.depth += 1;
        let result = self.visit_node(node, name);
        self.depth -= 1;
        result
    }

    fn visit_node(&mut self, node: &'a Node, name: &str) -> Result<String> {
        let rule_name = if is_reserved_name(name) {
            format!("{name}-")
        } else if name.is_empty() {
            "root".to_owned()
        } else {
            name.to_owned()
        };
        let sub_name = child_prefix(name);

        match node {
            Node::Ref(r) => {
                let target = self.resolve_ref(r)?;
                Ok(self.add_rule(&rule_name, &target))
            }
            Node::AnyOf(alts) => {
                let mut rules = Vec::with_capacity(alts.len());
                for (i, alt) in alts.iter().enumerate() {
                    let alt_name = if name.is_empty() { format!("alternative-{i}") } else { format!("{name}-{i}") };
                    rules.push(self.visit(alt, &alt_name)?);
                }
                Ok(self.add_rule(&rule_name, &rules.join(" | ")))
            }
            Node::AllOf(children) => self.visit_all_of(children, name, &rule_name),
            Node::Const(value) => Ok(self.add_rule(&rule_name, &gbnf_format_literal(&value.dump()))),
            Node::Enum(values) => {
                let alts: Vec<String> = values.iter().map(|v| gbnf_format_literal(&v.dump())).collect();
                Ok(self.add_rule(&rule_name, &format!("({})", alts.join(" | "))))
            }
            Node::Object { properties, additional } => {
                if properties.is_empty() && matches!(additional.as_deref(), Some(Node::Any)) {
                    let object = self.add_builtin("object");
                    return Ok(self.add_rule(&rule_name, &object));
                }
                let props: Vec<(&str, &'a Node)> = properties.iter().map(|p| (p.name.as_str(), &p.schema)).collect();
                let required: HashSet<&str> =
                    properties.iter().filter(|p| p.required).map(|p| p.name.as_str()).collect();
                let rule = self.build_object_rule(&props, &required, name, additional.as_deref())?;
                Ok(self.add_rule(&rule_name, &rule))
            }
            Node::Tuple(items) => {
                let mut rule = String::from("\"[\" space ");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        rule.push_str(" \",\" space ");
                    }
                    rule.push_str(&self.visit(item, &format!("{sub_name}tuple-{i}"))?);
                }
                rule.push_str(" space \"]\"");
                Ok(self.add_rule(&rule_name, &rule))
            }
            Node::Array { items, min_items, max_items } => {
                if matches!(**items, Node::Any) && *min_items == 0 && max_items.is_none() {
                    return Ok(self.visit_primitive(&rule_name, "array"));
                }
                if max_items.is_some_and(|max| max < *min_items) {
                    return Err(JsonSchemaError::Invalid(format!("{rule_name}: minItems is greater than maxItems")));
                }
                if min_items.saturating_sub(1) > MAX_REPETITION {
                    return Err(JsonSchemaError::Limit(format!(
                        "{rule_name}: minItems {min_items} is above the limit of {}",
                        MAX_REPETITION + 1
                    )));
                }
                let item_rule = self.visit(items, &format!("{sub_name}item"))?;
                let body = build_repetition(&item_rule, *min_items, *max_items, "\",\" space");
                Ok(self.add_rule(&rule_name, &format!("\"[\" space {body} space \"]\"")))
            }
            Node::String { pattern, format, min_length, max_length } => {
                if !pattern.is_empty() {
                    return self.visit_pattern(pattern, &rule_name);
                }
                let prim = match format {
                    Format::Uuid => return Ok(self.visit_primitive(&rule_name, "uuid")),
                    Format::Date => Some("date-string"),
                    Format::Time => Some("time-string"),
                    Format::DateTime => Some("date-time-string"),
                    Format::None => None,
                };
                if let Some(prim) = prim {
                    let r = self.add_builtin(prim);
                    return Ok(self.add_rule(&rule_name, &r));
                }
                if max_length.is_some_and(|max| max < *min_length) {
                    return Err(JsonSchemaError::Invalid(format!("{rule_name}: minLength is greater than maxLength")));
                }
                if *min_length > MAX_REPETITION {
                    return Err(JsonSchemaError::Limit(format!(
                        "{rule_name}: minLength {min_length} is above the limit of {MAX_REPETITION}"
                    )));
                }
                if *min_length > 0 || max_length.is_some() {
                    let char_rule = self.add_builtin("char");
                    let body = build_repetition(&char_rule, *min_length, *max_length, "");
                    return Ok(self.add_rule(&rule_name, &format!("\"\\\"\" {body} \"\\\"\"")));
                }
                Ok(self.visit_primitive(&rule_name, "string"))
            }
            Node::Integer { min, max } => {
                if *min == i64::MIN && *max == i64::MAX {
                    return Ok(self.visit_primitive(&rule_name, "integer"));
                }
                if min > max {
                    return Err(JsonSchemaError::Invalid(format!(
                        "{rule_name}: the minimum is greater than the maximum"
                    )));
                }
                let mut out = String::from("(");
                let built = build_min_max_int(&mut out, *min, *max, 16, true);
                // the digit-range layout has room for 16 digits; beyond, it asks for repetitions
                // like {17,15} that no grammar parser accepts
                if built.is_err() || has_inverted_repetition(&out) {
                    return Err(JsonSchemaError::Unsupported(format!(
                        "{rule_name}: integer bounds {min}..={max} are too large for a digit-range grammar"
                    )));
                }
                out.push(')');
                Ok(self.add_rule(&rule_name, &out))
            }
            Node::Number => Ok(self.visit_primitive(&rule_name, "number")),
            Node::Boolean => Ok(self.visit_primitive(&rule_name, "boolean")),
            Node::Null => Ok(self.visit_primitive(&rule_name, "null")),
            Node::Any => {
                let value = self.add_builtin("value");
                Ok(self.add_rule(&rule_name, &value))
            }
        }
    }

    fn resolve_ref(&mut self, r: &str) -> Result<String> {
        let fragment = r.split_once('#').map_or(r, |(_, f)| f);
        let mut ref_name = format!("ref{}", escape_rule_name(fragment));
        if !self.rules.contains_key(&ref_name) && !self.refs_being_resolved.contains(r) {
            let doc = self.doc;
            let target = doc.target(r)?;
            self.refs_being_resolved.insert(r.to_owned());
            let visited = self.visit(target, &ref_name);
            self.refs_being_resolved.remove(r);
            ref_name = visited?;
        }
        Ok(ref_name)
    }

    fn visit_all_of(&mut self, children: &'a [Node], name: &str, rule_name: &str) -> Result<String> {
        let mut required: HashSet<&'a str> = HashSet::new();
        let mut properties: Vec<(&'a str, &'a Node)> = Vec::new();
        let mut enum_values: BTreeMap<String, usize> = BTreeMap::new();
        let doc = self.doc;
        let mut add_component = |mut comp: &'a Node, is_required: bool| -> Result<()> {
            // the chain ends: cyclic ones are refused
            while let Node::Ref(r) = comp {
                comp = doc.target(r)?;
            }
            match comp {
                Node::Object { properties: props, .. } => {
                    for p in props {
                        properties.push((p.name.as_str(), &p.schema));
                        if is_required {
                            required.insert(p.name.as_str());
                        }
                    }
                }
                Node::Enum(values) => {
                    for v in values {
                        *enum_values.entry(gbnf_format_literal(&v.dump())).or_insert(0) += 1;
                    }
                }
                _ => {}
            }
            Ok(())
        };
        for child in children {
            if let Node::AnyOf(alts) = child {
                for alt in alts {
                    add_component(alt, false)?;
                }
            } else {
                add_component(child, true)?;
            }
        }
        if !enum_values.is_empty() {
            let common: Vec<&str> =
                enum_values.iter().filter(|(_, n)| **n == children.len()).map(|(v, _)| v.as_str()).collect();
            if !common.is_empty() {
                return Ok(self.add_rule(rule_name, &format!("({})", common.join(" | "))));
            }
        }
        let rule = self.build_object_rule(&properties, &required, name, None)?;
        Ok(self.add_rule(rule_name, &rule))
    }

    fn build_object_rule(
        &mut self,
        properties: &[(&str, &'a Node)],
        required: &HashSet<&str>,
        name: &str,
        additional: Option<&'a Node>,
    ) -> Result<String> {
        let prefix = child_prefix(name);
        let mut required_props: Vec<&str> = Vec::new();
        let mut optional_props: Vec<&str> = Vec::new();
        // "*" stands for the additional properties, as in llama.cpp
        let mut kv_rule_names: HashMap<&str, String> = HashMap::new();
        let mut prop_names: Vec<&str> = Vec::new();
        for &(prop_name, prop_schema) in properties {
            let prop_rule = self.visit(prop_schema, &format!("{prefix}{prop_name}"))?;
            let key = gbnf_format_literal(&Json::String(prop_name.to_owned()).dump());
            let kv = self.add_rule(&format!("{prefix}{prop_name}-kv"), &format!("{key} space \":\" space {prop_rule}"));
            kv_rule_names.insert(prop_name, kv);
            if required.contains(prop_name) {
                required_props.push(prop_name);
            } else {
                optional_props.push(prop_name);
            }
            prop_names.push(prop_name);
        }
        if let Some(additional) = additional {
            let sub_name = format!("{prefix}additional");
            let value_rule = if matches!(additional, Node::Any) {
                self.add_builtin("value")
            } else {
                self.visit(additional, &format!("{sub_name}-value"))?
            };
            let key_rule = if prop_names.is_empty() {
                self.add_builtin("string")
            } else {
                let not_strings = self.not_strings(&prop_names);
                self.add_rule(&format!("{sub_name}-k"), &not_strings)
            };
            let kv = self.add_rule(&format!("{sub_name}-kv"), &format!("{key_rule} \":\" space {value_rule}"));
            kv_rule_names.insert("*", kv);
            optional_props.push("*");
        }

        if required_props.is_empty() && optional_props.is_empty() {
            return Ok("\"{\" space \"}\"".to_owned());
        }

        let kv_of = |k: &str| kv_rule_names.get(k).cloned().unwrap_or_default();
        let mut rule = String::from("\"{\" space ");
        for (i, k) in required_props.iter().enumerate() {
            if i > 0 {
                rule.push_str(" \",\" space ");
            }
            rule.push_str(&kv_of(k));
        }

        if !optional_props.is_empty() {
            rule.push_str(" (");
            if !required_props.is_empty() {
                rule.push_str(" \",\" space ( ");
            }
            // rest[j]: the rule for "optional properties after the j-th, each behind a comma",
            // added innermost first as llama.cpp's recursion does
            let n = optional_props.len();
            let mut rest: Vec<String> = vec![String::new(); n];
            for j in (0..n.saturating_sub(1)).rev() {
                let next = optional_props[j + 1];
                let mut body = format!("( \",\" space {} ){}", kv_of(next), if next == "*" { "*" } else { "?" });
                if j + 1 < n - 1 {
                    body.push(' ');
                    body.push_str(&rest[j + 1]);
                }
                rest[j] = self.add_rule(&format!("{prefix}{}-rest", optional_props[j]), &body);
            }
            for (i, k) in optional_props.iter().enumerate() {
                if i > 0 {
                    rule.push_str(" | ");
                }
                let kv = kv_of(k);
                rule.push_str(&kv);
                if *k == "*" {
                    let _ = write!(rule, " ( \",\" space {kv} )*");
                }
                if i + 1 < n {
                    rule.push(' ');
                    rule.push_str(&rest[i]);
                }
            }
            if !required_props.is_empty() {
                rule.push_str(" )");
            }
            rule.push_str(" )?");
        }
        rule.push_str(" space \"}\"");
        Ok(rule)
    }

    /// A JSON string that is none of `strings`, spelled out over a trie of their characters.
    fn not_strings(&mut self, strings: &[&str]) -> String {
        struct TrieNode {
            children: BTreeMap<char, usize>,
            is_end: bool,
        }
        let mut nodes = vec![TrieNode { children: BTreeMap::new(), is_end: false }];
        for s in strings {
            let mut cur = 0;
            for c in s.chars() {
                cur = match nodes[cur].children.get(&c) {
                    Some(&next) => next,
                    None => {
                        nodes.push(TrieNode { children: BTreeMap::new(), is_end: false });
                        let next = nodes.len() - 1;
                        nodes[cur].children.insert(c, next);
                        next
                    }
                };
            }
            nodes[cur].is_end = true;
        }
        let char_rule = self.add_builtin("char");

        // Depth-first without recursion (names can be long): each frame is a node and its next child.
        let mut out = String::from("[\"] ( ");
        let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
        while let Some(&(idx, pos)) = stack.last() {
            let node = &nodes[idx];
            if let Some((&c, &child)) = node.children.iter().nth(pos) {
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                if pos > 0 {
                    out.push_str(" | ");
                }
                if c == '^' {
                    // `[^]` would be the empty negated class.
                    out.push_str("[\\x5E]");
                } else {
                    out.push('[');
                    push_class_char(&mut out, c);
                    out.push(']');
                }
                if nodes[child].children.is_empty() {
                    let _ = write!(out, " {char_rule}+");
                } else {
                    out.push_str(" (");
                    stack.push((child, 0));
                }
            } else {
                if !node.children.is_empty() {
                    out.push_str(" | [^\"");
                    for &c in node.children.keys() {
                        push_class_char(&mut out, c);
                    }
                    let _ = write!(out, "] {char_rule}*");
                }
                stack.pop();
                if !stack.is_empty() {
                    out.push(')');
                }
            }
        }
        out.push_str(" )");
        if !nodes[0].is_end {
            out.push('?');
        }
        out.push_str(" [\"]");
        out
    }

    fn visit_pattern(&mut self, pattern: &str, name: &str) -> Result<String> {
        let outer = self.journal.replace(Vec::new());
        let result = self.pattern_to_rule(pattern, name);
        let added = std::mem::replace(&mut self.journal, outer).unwrap_or_default();
        match result {
            Ok(rule) => {
                if let Some(outer) = &mut self.journal {
                    outer.extend(added);
                }
                Ok(rule)
            }
            Err(err) => {
                for key in added {
                    self.rules.remove(&key);
                }
                match err {
                    PatternError::Unsupported(why) => {
                        self.warnings.push(format!("pattern {pattern} is not supported ({why}), accepting any string"));
                        let string = self.add_builtin("string");
                        Ok(self.add_rule(name, &string))
                    }
                    PatternError::Invalid(why) => {
                        Err(JsonSchemaError::InvalidPattern { pattern: pattern.to_owned(), why })
                    }
                    PatternError::Limit(why) => Err(JsonSchemaError::Limit(format!("pattern {pattern}: {why}"))),
                }
            }
        }
    }

    fn pattern_to_rule(&mut self, pattern: &str, name: &str) -> std::result::Result<String, PatternError> {
        let chars: Vec<char> = pattern.chars().collect();
        if chars.len() < 2 || chars.first() != Some(&'^') || chars.last() != Some(&'$') {
            return Err(PatternError::Unsupported("not anchored with '^' and '$'".into()));
        }
        let mut st = PatternState {
            chars: chars[1..chars.len() - 1].to_vec(),
            i: 0,
            paren_depth: 0,
            name: name.to_owned(),
            sub_rule_ids: HashMap::new(),
        };
        let rule = to_rule(self.transform(&mut st)?);
        if st.paren_depth != 0 {
            return Err(PatternError::Invalid("unbalanced parentheses".into()));
        }
        Ok(self.add_rule(name, &format!("\"\\\"\" ({rule}) \"\\\"\"")))
    }

    /// Converts the pattern from `st.i` up to the `)` closing the current group (or the end).
    /// Items are (text, is_literal); literals are quoted only when joined.
    fn transform(&mut self, st: &mut PatternState) -> std::result::Result<(String, bool), PatternError> {
        let mut seq: Vec<(String, bool)> = Vec::new();
        let length = st.chars.len();
        while st.i < length {
            let c = st.chars[st.i];
            match c {
                '.' => {
                    let dot = self.add_rule("dot", "[^\\x0A\\x0D]");
                    seq.push((dot, false));
                    st.i += 1;
                }
                '(' => {
                    st.i += 1;
                    if st.chars.get(st.i) == Some(&'?') {
                        if st.chars.get(st.i + 1) == Some(&':') {
                            st.i += 2;
                        } else {
                            return Err(PatternError::Unsupported("unsupported group syntax".into()));
                        }
                    }
                    st.paren_depth += 1;
                    if st.paren_depth > MAX_PATTERN_DEPTH {
                        return Err(PatternError::Unsupported("pattern nesting too deep".into()));
                    }
                    let inner = self.transform(st)?;
                    seq.push((format!("({})", to_rule(inner)), false));
                }
                ')' => {
                    st.i += 1;
                    if st.paren_depth == 0 {
                        return Err(PatternError::Invalid("unbalanced parentheses".into()));
                    }
                    st.paren_depth -= 1;
                    return Ok(join_seq(&seq));
                }
                '^' | '$' => return Err(PatternError::Unsupported("anchor inside the pattern".into())),
                '[' => {
                    let mut class = String::from("[");
                    st.i += 1;
                    while st.i < length && st.chars[st.i] != ']' {
                        if st.chars[st.i] == '\\' {
                            let n = gbnf_escape_length(&st.chars, st.i);
                            if n == 0 {
                                let esc: String = st.chars[st.i..(st.i + 2).min(length)].iter().collect();
                                return Err(PatternError::Unsupported(format!(
                                    "unsupported escape in character class: {esc}"
                                )));
                            }
                            class.extend(&st.chars[st.i..st.i + n]);
                            st.i += n;
                        } else {
                            class.push(st.chars[st.i]);
                            st.i += 1;
                        }
                    }
                    if st.i >= length {
                        return Err(PatternError::Invalid("unterminated character class".into()));
                    }
                    class.push(']');
                    st.i += 1;
                    seq.push((class, false));
                }
                '|' => {
                    seq.push(("|".into(), false));
                    st.i += 1;
                }
                '*' | '+' | '?' => {
                    // Found by fuzzing: after a `|` (kept in the sequence as a bare `|`, as llama.cpp keeps it)
                    // there is nothing to repeat either; `a|{2}` became the grammar text `|{2}`.
                    let Some(last) = seq.last_mut().filter(|(text, literal)| *literal || text != "|") else {
                        return Err(PatternError::Invalid("nothing to repeat".into()));
                    };
                    *last = (format!("{}{c}", to_rule(std::mem::take(last))), false);
                    st.i += 1;
                }
                '{' => {
                    st.i += 1;
                    let start = st.i;
                    while st.i < length && st.chars[st.i] != '}' {
                        st.i += 1;
                    }
                    if st.i >= length {
                        return Err(PatternError::Unsupported("unterminated curly brackets".into()));
                    }
                    let inside: String = st.chars[start..st.i].iter().collect();
                    st.i += 1;
                    let (min, max) = repetition_bounds(&inside)?;
                    // Found by fuzzing: after a `|` (kept in the sequence as a bare `|`, as llama.cpp keeps it)
                    // there is nothing to repeat either; `a|{2}` became the grammar text `|{2}`.
                    let Some(last) = seq.last_mut().filter(|(text, literal)| *literal || text != "|") else {
                        return Err(PatternError::Invalid("nothing to repeat".into()));
                    };
                    let item = if last.1 {
                        format!("\"{}\"", last.0)
                    } else {
                        match st.sub_rule_ids.get(&last.0) {
                            Some(id) => id.clone(),
                            None => {
                                let id = self.add_rule(&format!("{}-{}", st.name, st.sub_rule_ids.len() + 1), &last.0);
                                st.sub_rule_ids.insert(last.0.clone(), id.clone());
                                id
                            }
                        }
                    };
                    *last = (build_repetition(&item, min, max, ""), false);
                }
                _ => {
                    let mut literal = String::new();
                    while st.i < length {
                        let ch = st.chars[st.i];
                        if ch == '\\' {
                            let Some(&next) = st.chars.get(st.i + 1) else {
                                return Err(PatternError::Invalid("trailing backslash".into()));
                            };
                            if matches!(
                                next,
                                '^' | '$' | '.' | '[' | ']' | '(' | ')' | '|' | '{' | '}' | '*' | '+' | '?'
                            ) {
                                literal.push(next);
                                st.i += 2;
                            } else {
                                let n = gbnf_escape_length(&st.chars, st.i);
                                if n == 0 {
                                    return Err(PatternError::Unsupported(format!("unsupported escape: \\{next}")));
                                }
                                literal.extend(&st.chars[st.i..st.i + n]);
                                st.i += n;
                            }
                        } else if ch == '"' {
                            literal.push_str("\\\"");
                            st.i += 1;
                        } else if !is_non_literal(ch)
                            && (st.i == length - 1
                                || literal.is_empty()
                                || st.chars[st.i + 1] == '.'
                                || !is_non_literal(st.chars[st.i + 1]))
                        {
                            // a character just before a quantifier starts a literal of its own
                            literal.push(ch);
                            st.i += 1;
                        } else {
                            break;
                        }
                    }
                    if literal.is_empty() {
                        return Err(PatternError::Unsupported(format!("unsupported character: {c}")));
                    }
                    seq.push((literal, true));
                }
            }
        }
        Ok(join_seq(&seq))
    }
}

/// `{n}`, `{n,}`, `{,m}`, `{n,m}` as (min, max).
fn repetition_bounds(inside: &str) -> std::result::Result<(u64, Option<u64>), PatternError> {
    let nums: Vec<&str> = inside.split(',').collect();
    let parse = |s: &str| -> std::result::Result<u64, PatternError> {
        let v = parse_count(s).ok_or_else(|| PatternError::Unsupported("invalid number in curly brackets".into()))?;
        u64::try_from(v).map_err(|_| PatternError::Invalid(format!("negative repetition count {v}")))
    };
    let (min, max) = match nums.as_slice() {
        [n] => {
            let n = parse(n)?;
            (n, Some(n))
        }
        [min, max] => {
            let min = if min.is_empty() { 0 } else { parse(min)? };
            let max = if max.is_empty() { None } else { Some(parse(max)?) };
            (min, max)
        }
        _ => return Err(PatternError::Unsupported("wrong number of values in curly brackets".into())),
    };
    if min > MAX_REPETITION {
        return Err(PatternError::Limit(format!("repetition count {min} is above the limit of {MAX_REPETITION}")));
    }
    // Regex engines refuse `{6,5}`; written through, the grammar parser would refuse it later.
    if let Some(max) = max.filter(|&max| max < min) {
        return Err(PatternError::Invalid(format!("repetition {{{min},{max}}} has its maximum below its minimum")));
    }
    Ok((min, max))
}

fn to_rule((text, is_literal): (String, bool)) -> String {
    if is_literal {
        format!("\"{text}\"")
    } else {
        text
    }
}

/// Joins a sequence with spaces, merging neighbouring literals into one.
fn join_seq(seq: &[(String, bool)]) -> (String, bool) {
    let mut parts: Vec<String> = Vec::new();
    let mut literal = String::new();
    for (text, is_literal) in seq {
        if *is_literal {
            literal.push_str(text);
        } else {
            if !literal.is_empty() {
                parts.push(format!("\"{}\"", std::mem::take(&mut literal)));
            }
            parts.push(text.clone());
        }
    }
    if !literal.is_empty() {
        parts.push(format!("\"{literal}\""));
    }
    (parts.join(" "), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/grammar/");
    /// Cases of llama.cpp's tests/test-json-schema-to-grammar.cpp that must match exactly; lowering
    /// it needs a reason.
    const MIN_PASSING: usize = 82;

    /// Runs a file of {"name", "schema", "expect": grammar or null for an error, "skip"?: why};
    /// returns how many cases pass. Skipped cases are printed, not silently dropped.
    fn run_cases(file: &str) -> usize {
        let text = std::fs::read_to_string(format!("{DATA}{file}")).expect("test data file");
        // parsed as Json, not Value, to keep each schema's properties in written order
        let cases: Json = serde_json::from_str(&text).expect("test data is JSON");
        let Json::Array(cases) = cases else { panic!("test data must be an array") };
        let (mut passed, mut skipped, mut failures) = (0usize, Vec::new(), Vec::new());
        for case in &cases {
            let Some(Json::String(name)) = case.get("name") else { panic!("case without a name") };
            if let Some(Json::String(why)) = case.get("skip") {
                skipped.push(format!("{name}: {why}"));
                continue;
            }
            let schema = case.get("schema").expect("case without a schema");
            let result = convert(schema).map(|c| c.grammar);
            match (case.get("expect"), &result) {
                (Some(Json::String(expect)), Ok(got)) if got == expect => passed += 1,
                (Some(Json::Null), Err(_)) => passed += 1,
                (expect, _) => failures.push(format!(
                    "# {name}\n{}\n# expected:\n{}\n# got:\n{result:?}",
                    schema.dump(),
                    match expect {
                        Some(Json::String(s)) => s.as_str(),
                        _ => "<error>",
                    }
                )),
            }
        }
        for s in &skipped {
            eprintln!("{file}: skipped {s}");
        }
        eprintln!("{file}: {passed} of {} cases pass, {} skipped", cases.len(), skipped.len());
        assert!(failures.is_empty(), "{file}: {} cases fail:\n{}", failures.len(), failures.join("\n\n"));
        passed
    }

    #[test]
    fn llama_cpp_cases() {
        let passed = run_cases("json_schema_cases.json");
        assert!(passed >= MIN_PASSING, "only {passed} cases pass, expected at least {MIN_PASSING}");
    }

    /// Random schemas and patterns with the grammar (or failure) llama.cpp's converter gave for them.
    #[test]
    fn differential_cases() {
        assert_eq!(run_cases("json_schema_differential_cases.json"), 79);
    }

    fn text(schema: &str) -> Result<String> {
        json_schema_text_to_grammar(schema)
    }

    #[test]
    fn value_and_text_agree_when_keys_are_sorted() {
        let schema = r#"{"type":"object","properties":{"a":{"type":"integer","minimum":3},"b":{"enum":[1.5,"x",null]}},"required":["b"]}"#;
        let value: serde_json::Value = serde_json::from_str(schema).expect("json");
        assert_eq!(json_schema_to_grammar(&value), text(schema));
    }

    #[test]
    fn recursive_schema_converts() {
        let g = text(
            r##"{"$ref": "#/$defs/node", "$defs": {"node": {"type": "object",
                "properties": {"next": {"$ref": "#/$defs/node"}, "leaf": {}}, "additionalProperties": false}}}"##,
        )
        .expect("recursive schema");
        assert!(g.contains("ref-defs-node-next ::= ref-defs-node\n"), "{g}");
        assert!(g.contains("root ::= ref-defs-node\n"), "{g}");
    }

    #[test]
    fn errors_wait_until_the_rule_is_built() {
        // allOf only merges objects and enums: llama.cpp never looks at the other components
        let ok = text(
            r##"{"allOf": [{"type": "integer", "minimum": 5, "maximum": 1}, {"type": "array", "items": {"$ref": "#/$defs/a"}},
                {"properties": {"x": {"type": "null"}}}], "$defs": {"a": {"$ref": "#/$defs/a"}}}"##,
        );
        assert!(ok.is_ok_and(|g| g.contains("root ::= \"{\" space x-kv space \"}\"\n")));
    }

    #[test]
    fn quantifier_after_non_ascii_takes_the_whole_character() {
        let g = text(r#"{"type": "string", "pattern": "^é?ü+$"}"#).expect("pattern");
        assert!(g.contains(r#"root ::= "\"" ("é"? "ü"+) "\"""#), "{g}");
    }

    #[test]
    fn format_literal_escapes() {
        assert_eq!(gbnf_format_literal("a\"b\\c\nd\re-]"), r#""a\"b\\c\nd\re-]""#);
    }

    #[test]
    fn constants_print_like_llama_cpp() {
        let g = text(r#"{"enum": [1.0, 0.5, 1e-7, 1e100, 1.5e20, 1e15, 1e14, -0.0001, "é\u0001"]}"#).expect("enum");
        let root = g.lines().find(|l| l.starts_with("root ::=")).unwrap_or_default();
        assert_eq!(
            root,
            r#"root ::= ("1.0" | "0.5" | "1e-07" | "1e+100" | "1.5e+20" | "1e+15" | "100000000000000.0" | "-0.0001" | "\"é\\u0001\"")"#
        );
    }

    #[test]
    fn unsupported_pattern_warns_and_accepts_any_string() {
        let c = convert_json_schema_text(r#"{"type": "string", "pattern": "^\\d+$"}"#).expect("converts");
        assert_eq!(c.warnings.len(), 1);
        assert!(c.grammar.starts_with("char ::= "), "{}", c.grammar);
        assert!(c.grammar.contains("root ::= string\n"));
    }

    fn nested(depth: usize) -> String {
        let mut s = String::new();
        for _ in 0..depth {
            s.push_str(r#"{"type": "array", "items": "#);
        }
        s.push_str(r#"{"type": "string"}"#);
        for _ in 0..depth {
            s.push('}');
        }
        s
    }

    #[test]
    fn hostile_inputs_fail_cleanly() {
        let limit = |r: Result<String>| assert!(matches!(r, Err(JsonSchemaError::Limit(_))), "{r:?}");
        let invalid = |r: Result<String>| assert!(matches!(r, Err(JsonSchemaError::Invalid(_))), "{r:?}");
        let bad_pattern =
            |r: Result<String>| assert!(matches!(r, Err(JsonSchemaError::InvalidPattern { .. })), "{r:?}");

        // depth: fine at the limit, refused past it, and past serde_json's own text limit
        assert!(text(&nested(MAX_SCHEMA_DEPTH)).is_ok());
        let mut objects = String::from(r#"{"type": "string"}"#);
        // four JSON levels a step: serde_json refuses text nested past 128
        for i in 0..30 {
            objects = format!(r#"{{"anyOf": [{{"properties": {{"p{i}": {objects}}}}}, {{"type": "null"}}]}}"#);
        }
        assert!(text(&objects).is_ok());
        limit(text(&nested(MAX_SCHEMA_DEPTH + 1)));
        assert!(matches!(text(&nested(1000)), Err(JsonSchemaError::Json(_))));
        let mut deep = serde_json::json!({"type": "string"});
        for _ in 0..500 {
            deep = serde_json::json!({"type": "array", "items": deep});
        }
        limit(json_schema_to_grammar(&deep));

        // huge counts
        limit(text(r#"{"type": "array", "items": {"type": "integer"}, "minItems": 2002}"#));
        limit(text(r#"{"type": "array", "items": {"type": "integer"}, "maxItems": 4294967296}"#));
        limit(text(r#"{"type": "string", "minLength": 2001}"#));
        limit(text(r#"{"type": "string", "minLength": 18446744073709551615}"#));
        // an upper count past the limit stays in the text: llama.cpp's parser reads it as unbounded
        let g = text(r#"{"type": "array", "items": {"type": "integer"}, "minItems": 2001, "maxItems": 1000000000}"#);
        assert!(
            g.is_ok_and(|g| g.contains(r#"root ::= "[" space integer ("," space integer){2000,999999999} space "]""#))
        );
        assert!(text(r#"{"type": "string", "pattern": "^a{2000,99999}$"}"#).is_ok());
        invalid(text(r#"{"type": "string", "minLength": -1}"#));
        invalid(text(r#"{"type": "string", "minLength": 5, "maxLength": 2}"#));
        invalid(text(r#"{"type": "integer", "minimum": 5, "maximum": 2}"#));
        limit(text(r#"{"type": "string", "pattern": "^a{99999}$"}"#));

        // schemas that are not objects
        for s in ["true", "false", "null", "42", "\"string\"", "[]", r#"{"items": true}"#] {
            invalid(text(s));
        }
        assert!(matches!(text("{"), Err(JsonSchemaError::Json(_))));

        // $ref cycles made only of $refs, refs that do not resolve, remote refs
        invalid(text(r##"{"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}"##));
        invalid(text(r##"{"allOf": [{"$ref": "#/$defs/a"}], "$defs": {"a": {"$ref": "#/$defs/a"}}}"##));
        invalid(text(r##"{"$ref": "#/$defs/missing"}"##));
        invalid(text(r##"{"$ref": "#/items/7", "items": []}"##));
        assert!(matches!(text(r#"{"$ref": "https://example.com/s.json"}"#), Err(JsonSchemaError::Unsupported(_))));
        assert!(matches!(text(r##"{"$ref": "#"}"##), Err(JsonSchemaError::Unsupported(_))));

        // bad regexes
        for p in [r"^(a$", r"^a)$", r"^[abc$", r"^*a$", r"^{2}$", r"^a\$"] {
            bad_pattern(text(&serde_json::json!({"type": "string", "pattern": p}).to_string()));
        }
        // found by fuzzing: a count range whose maximum is below its minimum was written through as `"a"{6,5}`,
        // a grammar the grammar parser then refused
        bad_pattern(text(r#"{"type": "string", "pattern": "^a{6,5}$"}"#));
        bad_pattern(text(r#"{"type": "string", "pattern": "^(ab){3,0}$"}"#));
        // found by fuzzing: a quantifier right after `|` repeated the `|` itself
        bad_pattern(text(r#"{"type": "string", "pattern": "^a|{2,}b$"}"#));
        bad_pattern(text(r#"{"type": "string", "pattern": "^(a|*)$"}"#));
        let g = text(r#"{"type": "string", "pattern": "^a\\|{2}$"}"#).unwrap();
        assert!(crate::grammar::Grammar::parse(&g).is_ok(), "{g}");
        let g = text(r#"{"type": "string", "pattern": "^a{5,5}(ab){0,}c{,3}$"}"#).unwrap();
        assert!(crate::grammar::Grammar::parse(&g).is_ok(), "{g}");

        // regex groups nested too deep fall back to any string
        let deep_groups = format!("^{}a{}$", "(".repeat(150), ")".repeat(150));
        let c = convert_json_schema_text(&serde_json::json!({"type": "string", "pattern": deep_groups}).to_string());
        assert!(c.is_ok_and(|c| c.warnings.len() == 1 && c.grammar.contains("root ::= string\n")));

        // type arrays that would copy the schema exponentially
        let mut s = String::from(r#"{"type": "string"}"#);
        for _ in 0..40 {
            s = format!(r#"{{"type": ["object", "object"], "properties": {{"a": {s}}}}}"#);
        }
        limit(text(&s));
    }

    #[test]
    fn large_but_reasonable_schemas_convert() {
        // many optional properties and a long property name (the exclusion trie is walked without recursion)
        let mut props: Vec<String> = (0..3000).map(|i| format!(r#""p{i}": {{"type": "integer"}}"#)).collect();
        props.push(format!(r#""{}": {{"type": "string"}}"#, "x".repeat(50_000)));
        let s = format!(r#"{{"type": "object", "properties": {{{}}}, "additionalProperties": true}}"#, props.join(","));
        let g = text(&s).expect("large schema");
        assert!(g.contains("p2998-rest ::= ( \",\" space p2999-kv )? p2999-rest\n"));

        // a long chain of $defs, referenced last to first so that no build nests deeply
        let defs: Vec<String> = (0..300)
            .map(|i| format!(r##""d{i}": {{"type": "array", "items": {{"$ref": "#/$defs/d{}"}}}}"##, i + 1))
            .collect();
        let alts: Vec<String> = (0..300).rev().map(|i| format!(r##"{{"$ref": "#/$defs/d{i}"}}"##)).collect();
        let chain = format!(
            r#"{{"anyOf": [{}], "$defs": {{{}, "d300": {{"type": "null"}}}}}}"#,
            alts.join(","),
            defs.join(",")
        );
        assert!(text(&chain).is_ok());
        // referenced first to last, the first build nests through every $ref
        let chain =
            format!(r##"{{"$ref": "#/$defs/d0", "$defs": {{{}, "d300": {{"type": "null"}}}}}}"##, defs.join(","));
        assert!(matches!(text(&chain), Err(JsonSchemaError::Limit(_))));
    }

    #[test]
    fn property_names_are_escaped_in_character_classes() {
        // Found by fuzzing: the names of known properties go into character classes (the additional properties'
        // keys must differ from them), where `]` ended the class early and the grammar did not parse.
        let schema = r#"{"type": "object", "properties": {"a]b": {"type": "number"}, "^": {"type": "number"},
            "n\nl": {"type": "number"}}, "additionalProperties": {"type": "number"}}"#;
        let g = text(schema).unwrap();
        let grammar = crate::grammar::Grammar::parse(&g).unwrap_or_else(|e| panic!("{e}\n{g}"));
        assert!(g.contains(r"[a] ([\]] ("), "{g}");
        assert!(g.contains(r"[\x5E] char+"), "{g}");
        assert!(!g.contains("[^]"), "{g}");
        // An unknown key is allowed, a known one only with its own value rule.
        let vocab = std::sync::Arc::new(crate::grammar::GrammarVocab::from_pieces(vec![b"x".to_vec()], vec![false]));
        let accepts = |text: &str| {
            let mut m = crate::grammar::GrammarMatcher::new(std::sync::Arc::new(grammar.clone()), vocab.clone());
            m.accept_text(text.as_bytes()) && m.is_complete()
        };
        assert!(accepts(r#"{"a]b": 1, "zz": 3}"#));
        assert!(accepts(r#"{"^": 1, "d": 2}"#));
        assert!(accepts(r#"{"a]c": 1, "^^": 2}"#));
        assert!(!accepts(r#"{"a]b": "text"}"#));
        assert!(!accepts(r#"{"^": "text"}"#));
    }
}
