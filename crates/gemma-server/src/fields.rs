//! Reading request bodies: a JSON object whose known fields are read one by one, so that a wrong type is a
//! 400 naming the field, and unknown fields are ignored.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::api_error::ApiError;

#[derive(Default)]
pub struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    /// Parses a body that must be a JSON object.
    pub fn parse(body: &[u8]) -> Result<Fields, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")).with_code("invalid_json"))?;
        match value {
            Value::Object(map) => Ok(Fields { map }),
            _ => Err(ApiError::invalid("the body must be a JSON object").with_code("invalid_json")),
        }
    }

    /// A JSON value that is an object (an element of a list of objects); `None` for anything else.
    pub fn from_value(value: Value) -> Option<Fields> {
        match value {
            Value::Object(map) => Some(Fields { map }),
            _ => None,
        }
    }

    /// A field that must be an object, read as [`Fields`] in turn.
    pub fn object(&self, name: &str) -> Result<Option<Fields>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields { map: map.clone() })),
            Some(_) => {
                Err(ApiError::invalid_param(name, format!("'{name}' must be an object")).with_code("invalid_type"))
            }
        }
    }

    /// The raw value of a field; `null` counts as absent.
    pub fn raw(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// A field read as `T`; absent or `null` is `None`, anything not a `T` a 400.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(v) => T::deserialize(v).map(Some).map_err(|e| {
                ApiError::invalid_param(name, format!("'{name}' has the wrong type or value: {e}"))
                    .with_code("invalid_type")
            }),
        }
    }

    /// A number that must lie in `range`.
    pub fn number_in(&self, name: &str, range: std::ops::RangeInclusive<f64>) -> Result<Option<f64>, ApiError> {
        let Some(v) = self.get::<f64>(name)? else { return Ok(None) };
        if !v.is_finite() || !range.contains(&v) {
            return Err(ApiError::invalid_param(
                name,
                format!("'{name}' must be between {} and {}, got {v}", range.start(), range.end()),
            )
            .with_code("invalid_value"));
        }
        Ok(Some(v))
    }

    /// A whole number that must lie in `range` (huge values are a 400, not an overflow).
    pub fn integer_in(&self, name: &str, range: std::ops::RangeInclusive<u64>) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.raw(name) else { return Ok(None) };
        let n = v.as_u64().ok_or_else(|| {
            ApiError::invalid_param(name, format!("'{name}' must be a non-negative integer")).with_code("invalid_type")
        })?;
        if !range.contains(&n) {
            return Err(ApiError::invalid_param(
                name,
                format!("'{name}' must be between {} and {}, got {n}", range.start(), range.end()),
            )
            .with_code("invalid_value"));
        }
        Ok(Some(n))
    }

    /// `stop`: a string or a list of strings.
    pub fn string_or_list(&self, name: &str) -> Result<Vec<String>, ApiError> {
        match self.raw(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::invalid_param(name, format!("'{name}' must be a string or a list of strings"))
                            .with_code("invalid_type")
                    })
                })
                .collect(),
            Some(_) => Err(ApiError::invalid_param(name, format!("'{name}' must be a string or a list of strings"))
                .with_code("invalid_type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_name_the_field_and_unknown_fields_are_ignored() {
        let f = Fields::parse(br#"{"temperature": "hot", "n": 2, "whatever": [1], "seed": null}"#).unwrap();
        let e = f.get::<f32>("temperature").unwrap_err();
        assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("temperature")));
        assert_eq!(f.integer_in("n", 1..=16).unwrap(), Some(2));
        assert_eq!(f.get::<u64>("seed").unwrap(), None);
        assert!(f.integer_in("n", 3..=16).is_err());
        let f = Fields::parse(br#"{"max_tokens": 1e300, "top_p": 7, "stop": ["a", 1]}"#).unwrap();
        assert!(f.integer_in("max_tokens", 1..=u64::MAX).is_err());
        assert!(f.number_in("top_p", 0.0..=1.0).is_err());
        assert!(f.string_or_list("stop").is_err());
        assert!(Fields::parse(b"[1, 2]").is_err());
        assert!(Fields::parse(b"{\"a\": \"\xff\"}").is_err());
        assert!(Fields::parse(b"{\"a\": 1").is_err());
    }
}
