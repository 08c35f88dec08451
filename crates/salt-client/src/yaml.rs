//! YAML read with a budget, for text that comes from the network.
//!
//! YAML anchors and aliases let a tiny document describe a huge value (an
//! 82 KB "alias bomb" expands to tens of millions of nodes). The parser's own
//! guard counts alias jumps, not the nodes each jump copies, so it does not
//! stop that. [`from_str`] builds the JSON value itself and charges every
//! node and every string byte it produces against a budget proportional to
//! the input's length: ordinary YAML (with or without a few aliases) fits,
//! an expansion fails as soon as it outgrows the text it came from.
//! Nesting is capped by the parser at 128 levels.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value as Json};

/// Budget units per input byte: a node costs one unit plus the length of
/// its string (or key), so text without aliases needs at most about two
/// units per byte.
pub const UNITS_PER_BYTE: usize = 4;
/// Budget every document gets whatever its length.
pub const BASE_UNITS: usize = 4096;

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YamlError {
    /// Not YAML, nested deeper than the parser allows, or not representable as JSON.
    Invalid,
    /// The value would be much larger than its text (an alias expansion).
    TooLarge,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            YamlError::Invalid => f.write_str("invalid YAML document"),
            YamlError::TooLarge => f.write_str("YAML document expands beyond its size limit"),
        }
    }
}

impl std::error::Error for YamlError {}

/// Parse `text` as one YAML document into JSON, within the budget.
pub fn from_str(text: &str) -> Result<Json, YamlError> {
    let budget = Budget {
        left: Cell::new(
            text.len()
                .saturating_mul(UNITS_PER_BYTE)
                .saturating_add(BASE_UNITS),
        ),
        exceeded: Cell::new(false),
    };
    let de = serde_norway::Deserializer::from_str(text);
    match (ValueSeed { budget: &budget }).deserialize(de) {
        Ok(v) => Ok(v),
        Err(_) if budget.exceeded.get() => Err(YamlError::TooLarge),
        Err(_) => Err(YamlError::Invalid),
    }
}

struct Budget {
    left: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Budget {
    fn charge<E: serde::de::Error>(&self, units: usize) -> Result<(), E> {
        match self.left.get().checked_sub(units.saturating_add(1)) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("YAML document expands beyond its size limit"))
            }
        }
    }
}

#[derive(Clone, Copy)]
struct ValueSeed<'b> {
    budget: &'b Budget,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Json, E> {
        self.budget.charge(0)?;
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Json, E> {
        self.budget.charge(0)?;
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Json, E> {
        self.budget.charge(0)?;
        Ok(Json::Number(v.into()))
    }

    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Json, E> {
        self.budget.charge(0)?;
        match i64::try_from(v) {
            Ok(i) => Ok(Json::Number(i.into())),
            Err(_) => u64::try_from(v)
                .map(|u| Json::Number(u.into()))
                .map_err(|_| E::custom("integer out of range")),
        }
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Json, E> {
        self.budget.charge(0)?;
        u64::try_from(v)
            .map(|u| Json::Number(u.into()))
            .map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Json, E> {
        self.budget.charge(0)?;
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Json, E> {
        self.budget.charge(v.len())?;
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Json, E> {
        self.budget.charge(v.len())?;
        Ok(Json::String(v))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Json, E> {
        self.budget.charge(0)?;
        Ok(Json::Null)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Json, E> {
        self.budget.charge(0)?;
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        self.budget.charge(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        self.budget.charge(0)?;
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed {
            budget: self.budget,
        })? {
            let value = map.next_value_seed(self)?;
            out.insert(key, value);
        }
        Ok(Json::Object(out))
    }
}

/// A mapping key: its text, charged like a string.
struct KeySeed<'b> {
    budget: &'b Budget,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        self.budget.charge(v.len())?;
        Ok(v.to_owned())
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
        self.budget.charge(v.len())?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_values_as_the_plain_parser() {
        for text in [
            "a: 1\nb: [x, 2.5, true, null, ~]\nc: {d: 'e'}\n",
            "- 1\n- -2\n- 18446744073709551615\n- .nan\n- 'text'\n",
            "{1: one, true: t, null: n}",
            "plain text",
            "base: &b {x: 1}\nother: *b\n",
        ] {
            let ours = from_str(text).expect("parses");
            let theirs: Json = serde_norway::from_str(text).expect("parses");
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        let mut text = String::from("[&a [");
        text.push_str(&["0"; 1000].join(","));
        text.push(']');
        for _ in 0..2000 {
            text.push_str(", *a");
        }
        text.push(']');
        assert_eq!(from_str(&text), Err(YamlError::TooLarge));
    }

    #[test]
    fn a_repeated_long_string_is_refused() {
        let long = "x".repeat(40_000);
        let text = format!("[&s {long}, {}]", ["*s"; 100].join(", "));
        assert_eq!(from_str(&text), Err(YamlError::TooLarge));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(from_str(&text), Err(YamlError::Invalid));
        assert_eq!(from_str("[[[1]]]"), Ok(json!([[[1]]])));
    }

    #[test]
    fn a_large_plain_document_fits() {
        let text = format!(
            "{{{}}}",
            (0..20_000)
                .map(|i| format!("k{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let v = from_str(&text).expect("fits");
        assert_eq!(v.as_object().map(Map::len), Some(20_000));
    }
}
