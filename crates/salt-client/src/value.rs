//! Salt's msgpack values, decoded once and converted to JSON in one place.
//!
//! Salt packs request replies with `use_bin_type=False` (every string and every
//! bytes value is a msgpack *str*, possibly not valid UTF-8) and event data with
//! `use_bin_type=True` (bytes are *bin*). Python's salt-api decodes raw and then
//! turns every valid UTF-8 byte string into `str`; the JSON it emits follows
//! from that. This module reproduces the same mapping so that the rest of
//! halite only ever sees `serde_json::Value`.

use rmpv::Value as Mp;
use serde_json::{Map, Number, Value as Json};

/// Salt's msgpack extension type for `datetime` (payload `%Y%m%dT%H:%M:%S.%f`).
pub const EXT_DATETIME: i8 = 78;
/// Salt's msgpack extension type for `salt.utils.odict._Constant` (`[name, value]`).
pub const EXT_CONSTANT: i8 = 79;

/// Containers nested deeper than this are refused when decoding (and cut
/// off when converting to JSON): the master and the bus are untrusted input,
/// and every consumer of a value (conversion, rendering, dropping) recurses.
/// The same depth serde_json and the YAML reader allow.
pub const MAX_DEPTH: usize = 128;

/// rmpv charges a container two units of depth (the value and its items)
/// and a string or ext one more.
fn decoder_depth(levels: usize) -> usize {
    2 * levels + 2
}

/// Decode one complete msgpack item from `bytes`.
///
/// Errors when the bytes are truncated, not msgpack, or nested deeper than
/// [`MAX_DEPTH`]; trailing bytes are ignored (callers that stream use
/// [`decode_prefix`]).
pub fn decode(bytes: &[u8]) -> Result<Mp, rmpv::decode::Error> {
    decode_within(bytes, MAX_DEPTH)
}

fn decode_within(bytes: &[u8], levels: usize) -> Result<Mp, rmpv::decode::Error> {
    let mut cursor = bytes;
    rmpv::decode::read_value_with_max_depth(&mut cursor, decoder_depth(levels))
}

/// Decode one msgpack item from the start of `bytes`, returning it with the
/// number of bytes it used, or `Ok(None)` when more bytes are needed.
pub fn decode_prefix(bytes: &[u8]) -> Result<Option<(Mp, usize)>, rmpv::decode::Error> {
    let mut cursor = bytes;
    match rmpv::decode::read_value_with_max_depth(&mut cursor, decoder_depth(MAX_DEPTH)) {
        Ok(v) => Ok(Some((v, bytes.len() - cursor.len()))),
        Err(e) if is_eof(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_eof(e: &rmpv::decode::Error) -> bool {
    use rmpv::decode::Error::*;
    match e {
        InvalidMarkerRead(io) | InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

/// Encode a msgpack value the way Salt's clients do (strings as msgpack `str`).
pub fn encode(value: &Mp) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, value);
    out
}

/// Convert a decoded Salt value to JSON exactly as Python salt-api would emit it.
///
/// * str/bin that is valid UTF-8 becomes a JSON string; other bytes become a
///   string with U+FFFD replacement characters (Python salt-api cannot
///   serialise such bytes at all and answers 500).
/// * map keys that are not strings (integers, booleans, nil) become their JSON
///   text, as `json.dumps` does (`1` → `"1"`, `True` → `"true"`, `None` → `"null"`).
/// * integers keep their full 64-bit range; NaN and infinities become `null`.
/// * ext 78 (datetime) becomes its ISO text; ext 79 (constant) its value.
/// * anything nested deeper than [`MAX_DEPTH`] (possible only through ext
///   79 payloads, which hold msgpack of their own) becomes `null`.
pub fn to_json(value: &Mp) -> Json {
    to_json_within(value, MAX_DEPTH)
}

fn to_json_within(value: &Mp, levels: usize) -> Json {
    let Some(inner) = levels.checked_sub(1) else {
        return Json::Null;
    };
    match value {
        Mp::Nil => Json::Null,
        Mp::Boolean(b) => Json::Bool(*b),
        Mp::Integer(i) => {
            if let Some(u) = i.as_u64() {
                Json::Number(u.into())
            } else if let Some(s) = i.as_i64() {
                Json::Number(s.into())
            } else {
                Json::Null
            }
        }
        Mp::F32(f) => float(f64::from(*f)),
        Mp::F64(f) => float(*f),
        Mp::String(s) => Json::String(match s.as_str() {
            Some(s) => s.to_owned(),
            None => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        }),
        Mp::Binary(b) => Json::String(String::from_utf8_lossy(b).into_owned()),
        Mp::Array(items) => Json::Array(items.iter().map(|v| to_json_within(v, inner)).collect()),
        Mp::Map(pairs) => {
            let mut map = Map::with_capacity(pairs.len());
            for (k, v) in pairs {
                map.insert(key_text(k, inner), to_json_within(v, inner));
            }
            Json::Object(map)
        }
        Mp::Ext(code, data) => ext_to_json(*code, data, inner),
    }
}

/// Decode one msgpack item straight to JSON: the same result as
/// `to_json(&decode(bytes)?)` without building the intermediate `rmpv`
/// tree. Used for event data, which the bus decodes for every return a
/// job waits for.
pub fn decode_to_json(bytes: &[u8]) -> Result<Json, String> {
    let mut r = Cursor::new(bytes);
    r.value(0)
}

/// A cursor over msgpack bytes. `decode_to_json` reads values with it here;
/// the event bus reads single fields of event data with it without
/// decoding the rest (`events::map_strings`).
pub(crate) struct Cursor<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// The next `n` bytes, consumed.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated msgpack")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next `n` bytes as a big-endian unsigned integer, consumed.
    pub(crate) fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn text(&mut self, n: usize) -> Result<String, String> {
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > MAX_DEPTH {
            return Err("msgpack nested too deeply".into());
        }
        let m = self.uint(1)? as u8;
        Ok(match m {
            0x00..=0x7f => Json::Number(u64::from(m).into()),
            0xe0..=0xff => Json::Number(i64::from(m as i8).into()),
            0xc0 => Json::Null,
            0xc2 => Json::Bool(false),
            0xc3 => Json::Bool(true),
            0xcc => Json::Number(self.uint(1)?.into()),
            0xcd => Json::Number(self.uint(2)?.into()),
            0xce => Json::Number(self.uint(4)?.into()),
            0xcf => Json::Number(self.uint(8)?.into()),
            0xd0 => Json::Number(i64::from(self.uint(1)? as u8 as i8).into()),
            0xd1 => Json::Number(i64::from(self.uint(2)? as u16 as i16).into()),
            0xd2 => Json::Number(i64::from(self.uint(4)? as u32 as i32).into()),
            0xd3 => Json::Number((self.uint(8)? as i64).into()),
            0xca => float(f64::from(f32::from_bits(self.uint(4)? as u32))),
            0xcb => float(f64::from_bits(self.uint(8)?)),
            0xa0..=0xbf => self.text(usize::from(m & 0x1f)).map(Json::String)?,
            0xd9 | 0xc4 => {
                let n = self.uint(1)? as usize;
                Json::String(self.text(n)?)
            }
            0xda | 0xc5 => {
                let n = self.uint(2)? as usize;
                Json::String(self.text(n)?)
            }
            0xdb | 0xc6 => {
                let n = self.uint(4)? as usize;
                Json::String(self.text(n)?)
            }
            0x90..=0x9f => self.array(usize::from(m & 0x0f), depth)?,
            0xdc => {
                let n = self.uint(2)? as usize;
                self.array(n, depth)?
            }
            0xdd => {
                let n = self.uint(4)? as usize;
                self.array(n, depth)?
            }
            0x80..=0x8f => self.map(usize::from(m & 0x0f), depth)?,
            0xde => {
                let n = self.uint(2)? as usize;
                self.map(n, depth)?
            }
            0xdf => {
                let n = self.uint(4)? as usize;
                self.map(n, depth)?
            }
            0xd4 => self.ext(1, depth)?,
            0xd5 => self.ext(2, depth)?,
            0xd6 => self.ext(4, depth)?,
            0xd7 => self.ext(8, depth)?,
            0xd8 => self.ext(16, depth)?,
            0xc7 => {
                let n = self.uint(1)? as usize;
                self.ext(n, depth)?
            }
            0xc8 => {
                let n = self.uint(2)? as usize;
                self.ext(n, depth)?
            }
            0xc9 => {
                let n = self.uint(4)? as usize;
                self.ext(n, depth)?
            }
            0xc1 => return Err("invalid msgpack marker 0xc1".into()),
        })
    }

    fn ext(&mut self, n: usize, depth: usize) -> Result<Json, String> {
        let code = self.uint(1)? as u8 as i8;
        // An ext 79 payload is msgpack inside msgpack: it carries the depth.
        Ok(ext_to_json(
            code,
            self.take(n)?,
            MAX_DEPTH.saturating_sub(depth),
        ))
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Json, String> {
        // Every item takes at least one byte: never reserve more than remain.
        let mut items = Vec::with_capacity(n.min(self.buf.len() - self.pos));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Json::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Json, String> {
        let mut map = Map::with_capacity(n.min((self.buf.len() - self.pos) / 2));
        for _ in 0..n {
            let key = match self.buf.get(self.pos) {
                Some(0xa0..=0xbf | 0xd9 | 0xda | 0xdb | 0xc4 | 0xc5 | 0xc6) => {
                    match self.value(depth + 1)? {
                        Json::String(s) => s,
                        _ => return Err("undecodable msgpack key".into()),
                    }
                }
                // Rare (integer, boolean, nil, container keys): decode the
                // key as msgpack and name it as `to_json` does.
                _ => {
                    let mut rest = &self.buf[self.pos..];
                    let before = rest.len();
                    let levels = MAX_DEPTH.saturating_sub(depth);
                    let k =
                        rmpv::decode::read_value_with_max_depth(&mut rest, decoder_depth(levels))
                            .map_err(|e| e.to_string())?;
                    self.pos += before - rest.len();
                    key_text(&k, levels)
                }
            };
            let value = self.value(depth + 1)?;
            map.insert(key, value);
        }
        Ok(Json::Object(map))
    }
}

fn float(f: f64) -> Json {
    Number::from_f64(f).map(Json::Number).unwrap_or(Json::Null)
}

fn ext_to_json(code: i8, data: &[u8], levels: usize) -> Json {
    match code {
        EXT_DATETIME => {
            let text = String::from_utf8_lossy(data);
            // %Y%m%dT%H:%M:%S.%f -> YYYY-MM-DDTHH:MM:SS.ffffff
            if text.len() >= 8
                && text.is_char_boundary(8)
                && text.as_bytes()[..8].iter().all(u8::is_ascii_digit)
            {
                Json::String(format!(
                    "{}-{}-{}{}",
                    &text[0..4],
                    &text[4..6],
                    &text[6..8],
                    &text[8..]
                ))
            } else {
                Json::String(text.into_owned())
            }
        }
        EXT_CONSTANT => match decode_within(data, levels) {
            Ok(Mp::Array(parts)) if parts.len() == 2 => to_json_within(&parts[1], levels),
            Ok(other) => to_json_within(&other, levels),
            Err(_) => Json::Null,
        },
        _ => Json::String(String::from_utf8_lossy(data).into_owned()),
    }
}

/// The JSON object key Python's `json.dumps` writes for a dict key.
fn key_text(key: &Mp, levels: usize) -> String {
    match key {
        Mp::String(s) => match s.as_str() {
            Some(s) => s.to_owned(),
            None => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        },
        Mp::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        Mp::Nil => "null".to_owned(),
        Mp::Boolean(b) => b.to_string(),
        Mp::Integer(i) => i.to_string(),
        Mp::F32(f) => f.to_string(),
        Mp::F64(f) => f.to_string(),
        other => to_json_within(other, levels).to_string(),
    }
}

/// Convert JSON (a lowstate from an HTTP client) to the msgpack value sent to
/// the master. Strings become msgpack `str`, as Salt's own clients send them.
pub fn from_json(value: &Json) -> Mp {
    match value {
        Json::Null => Mp::Nil,
        Json::Bool(b) => Mp::Boolean(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Mp::from(u)
            } else if let Some(i) = n.as_i64() {
                Mp::from(i)
            } else {
                Mp::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::String(s) => Mp::from(s.as_str()),
        Json::Array(items) => Mp::Array(items.iter().map(from_json).collect()),
        Json::Object(map) => Mp::Map(
            map.iter()
                .map(|(k, v)| (Mp::from(k.as_str()), from_json(v)))
                .collect(),
        ),
    }
}

/// Look up `key` in a msgpack map whose keys are strings.
pub fn get<'a>(map: &'a Mp, key: &str) -> Option<&'a Mp> {
    match map {
        Mp::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Take the value of `key` out of `map`, without a copy of it.
pub fn take(map: Mp, key: &str) -> Option<Mp> {
    match map {
        Mp::Map(pairs) => pairs
            .into_iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Build a msgpack map from string keys.
pub fn map<I, K>(pairs: I) -> Mp
where
    I: IntoIterator<Item = (K, Mp)>,
    K: Into<String>,
{
    Mp::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Mp::from(k.into()), v))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn non_utf8_str_becomes_replacement_text() {
        // msgpack fixstr of length 2 holding 0x00 0xff (what Salt sends for b"\x00\xff")
        let v = decode(&[0xa2, 0x00, 0xff]).expect("decodes");
        assert_eq!(to_json(&v), json!("\u{0}\u{fffd}"));
    }

    #[test]
    fn integer_and_bool_keys_follow_json_dumps() {
        // {1: "a", true: "b", nil: "c"}
        let v =
            decode(&[0x83, 0x01, 0xa1, b'a', 0xc3, 0xa1, b'b', 0xc0, 0xa1, b'c']).expect("decodes");
        assert_eq!(to_json(&v), json!({"1": "a", "true": "b", "null": "c"}));
    }

    #[test]
    fn large_integers_keep_full_range() {
        let v = decode(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).expect("decodes");
        assert_eq!(to_json(&v), json!(u64::MAX));
        let v = decode(&[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]).expect("decodes");
        assert_eq!(to_json(&v), json!(i64::MIN));
    }

    #[test]
    fn datetime_ext_becomes_iso_text() {
        let payload = b"20261126T20:37:24.123608";
        let mut bytes = vec![0xc7, payload.len() as u8, EXT_DATETIME as u8];
        bytes.extend_from_slice(payload);
        assert_eq!(
            to_json(&decode(&bytes).expect("decodes")),
            json!("2026-11-26T20:37:24.123608")
        );
    }

    #[test]
    fn decode_prefix_asks_for_more_bytes() {
        let full = encode(&from_json(&json!({"tag": "x", "data": [1, 2, 3]})));
        assert!(decode_prefix(&full[..full.len() - 1])
            .expect("no error")
            .is_none());
        let (v, used) = decode_prefix(&full).expect("no error").expect("complete");
        assert_eq!(used, full.len());
        assert_eq!(to_json(&v), json!({"tag": "x", "data": [1, 2, 3]}));
    }

    fn nested_arrays(levels: usize) -> Vec<u8> {
        let mut bytes = vec![0x91; levels];
        bytes.push(0x01);
        bytes
    }

    #[test]
    fn nesting_is_capped() {
        assert!(decode(&nested_arrays(MAX_DEPTH)).is_ok());
        assert!(decode(&nested_arrays(MAX_DEPTH + 1)).is_err());
        assert!(decode(&nested_arrays(100_000)).is_err());
        assert!(decode_prefix(&nested_arrays(100_000)).is_err());
    }

    #[test]
    fn nested_constant_exts_cannot_recurse_without_bound() {
        // ext 79 whose payload is ext 79 whose payload is ..., 100,000 deep:
        // each layer is decoded on its own, so the depth must be carried.
        let layers: u32 = 100_000;
        let mut payload = Vec::new();
        for i in 0..layers {
            payload.push(0xc9);
            payload.extend_from_slice(&(6 * (layers - 1 - i) + 1).to_be_bytes());
            payload.push(EXT_CONSTANT as u8);
        }
        payload.push(0x01);
        let v = decode(&payload).expect("one ext value");
        assert_eq!(to_json(&v), Json::Null);
    }

    /// `decode_to_json` must agree with `to_json(decode())` on everything.
    #[test]
    fn direct_decode_matches_the_two_step_decode() {
        let mut samples: Vec<Vec<u8>> = vec![
            vec![0xa2, 0x00, 0xff],
            vec![0xc4, 0x02, 0xc3, 0x28],
            vec![0x83, 0x01, 0xa1, b'a', 0xc3, 0xa1, b'b', 0xc0, 0xa1, b'c'],
            vec![0x81, 0x91, 0x01, 0xa1, b'x'],
            vec![0x81, 0xca, 0x3f, 0xc0, 0x00, 0x00, 0x01],
            vec![0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            vec![0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
            vec![0xd0, 0x05],
            vec![0xd1, 0xff, 0x00],
            vec![0xe0],
            vec![0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 1],
            vec![0xca, 0x7f, 0x80, 0x00, 0x00],
            vec![0xd4, 0x05, 0x41],
            vec![0xd6, 0x4f, 0x92, 0xa1, b'k', 0x07],
        ];
        let dt = b"20261126T20:37:24.123608";
        let mut ext = vec![0xc7, dt.len() as u8, EXT_DATETIME as u8];
        ext.extend_from_slice(dt);
        samples.push(ext);
        for j in [
            json!({"cmd": "_return", "id": "ms-0", "return": {"a": [1, -2, 3.5, "é", null]},
                "retcode": 0, "success": true, "fun_args": [], "_stamp": "2026"}),
            json!([{"x": {}}, [], "", 0, u64::MAX, i64::MIN]),
            json!("y".repeat(70_000)),
        ] {
            samples.push(encode(&from_json(&j)));
        }
        // Pseudo-random values of every kind (a fixed LCG: reproducible).
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        fn gen(next: &mut dyn FnMut() -> u64, depth: u32) -> Mp {
            match next() % if depth > 3 { 8 } else { 11 } {
                0 => Mp::Nil,
                1 => Mp::Boolean(next().is_multiple_of(2)),
                2 => Mp::from(next() as i64 - (1 << 30)),
                3 => Mp::from(next() << 31),
                4 => Mp::F64((next() as f64) / 7.0),
                5 => Mp::F32((next() as f32) / 3.0),
                6 => Mp::Binary((0..next() % 6).map(|_| next() as u8).collect()),
                7 => Mp::from(format!("s{}", next() % 1000)),
                8 => Mp::Array((0..next() % 4).map(|_| gen(next, depth + 1)).collect()),
                9 => Mp::Ext(EXT_DATETIME, b"20260101T00:00:00.000001".to_vec()),
                _ => Mp::Map(
                    (0..next() % 4)
                        .map(|_| (gen(next, depth + 1), gen(next, depth + 1)))
                        .collect(),
                ),
            }
        }
        for _ in 0..2000 {
            samples.push(encode(&gen(&mut next, 0)));
        }
        for bytes in &samples {
            let two_step = decode(bytes).map(|v| to_json(&v)).ok();
            assert_eq!(decode_to_json(bytes).ok(), two_step, "{bytes:02x?}");
            // Every truncation is an error for both.
            for cut in [1usize, bytes.len() / 2] {
                if cut < bytes.len() {
                    assert!(
                        decode_to_json(&bytes[..bytes.len() - cut]).is_err()
                            || decode(&bytes[..bytes.len() - cut]).is_ok()
                    );
                }
            }
        }
        // Hostile shapes: absurd lengths and nesting are errors, not allocations.
        assert!(decode_to_json(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_to_json(&[0xdf, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_to_json(&vec![0x91; 5000]).is_err());
        assert!(decode_to_json(&[0xc1]).is_err());
    }

    #[test]
    fn json_round_trip_keeps_nesting() {
        let j = json!({"a": [1, -2, 3.5, "s", null, true, {"b": {}}]});
        assert_eq!(to_json(&from_json(&j)), j);
    }
}
