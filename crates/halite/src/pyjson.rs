//! JSON text the way Python's `json.dumps` writes it (`", "` and `": "`
//! separators, non-ASCII escaped), so responses are byte-for-byte what
//! salt-api's users have always seen, `Content-Length` included.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};

struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // ensure_ascii=True: escape everything outside ASCII as \uXXXX.
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if !c.is_ascii() {
                w.write_all(&fragment.as_bytes()[start..i])?;
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"\\/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => {
                return write!(w, "\\u{byte:04x}");
            }
        };
        w.write_all(s)
    }
}

/// Serialise `value` as Python's `json.dumps(value)` would.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// Append `value` to `out` as Python's `json.dumps(value)` would write it.
pub fn write(out: &mut Vec<u8>, value: &serde_json::Value) {
    let mut ser = serde_json::Serializer::with_formatter(out, PythonFormatter);
    // A `Value`'s keys are strings and a `Vec` takes every write: this
    // cannot fail.
    let _ = value.serialize(&mut ser);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_json_dumps() {
        // python3 -c 'import json; print(json.dumps({"return": [{"ms-0": True, "é": [1, "x\n"]}]}))'
        let v = json!({"return": [{"ms-0": true, "é": [1, "x\n"]}]});
        assert_eq!(
            String::from_utf8(to_vec(&v).expect("serialises")).expect("ascii"),
            r#"{"return": [{"ms-0": true, "\u00e9": [1, "x\n"]}]}"#
        );
        assert_eq!(
            to_vec(&json!("😀")).expect("serialises"),
            br#""\ud83d\ude00""#.to_vec()
        );
    }
}
