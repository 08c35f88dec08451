//! Bus frames without I/O: the event body (`tag\n\n` + msgpack data), the
//! two framings (bare msgpack, 4-byte length prefix) and a streaming decoder
//! that finds each frame's body by walking its msgpack markers.

#[allow(unused_imports)]
use super::*;
use crate::value::Cursor;

/// The most the decoder reserves ahead of data it has not received.
const RESERVE_STEP: usize = 1 << 20;

/// Past this size, a frame's buffer is left to the frame: what is read
/// after it goes to a buffer of its own.
const LARGE_FRAME: usize = 64 * 1024;

pub fn split_body(body: &Bytes) -> (String, Bytes) {
    match body.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (
            String::from_utf8_lossy(&body[..i]).into_owned(),
            body.slice(i + 2..),
        ),
        None => (String::from_utf8_lossy(body).into_owned(), Bytes::new()),
    }
}

/// Build the event body for `tag` and `data` (msgpack with bin/str types).
pub fn pack_body(tag: &str, data: &Json) -> Vec<u8> {
    let mut body = Vec::with_capacity(tag.len() + 64);
    body.extend_from_slice(tag.as_bytes());
    body.extend_from_slice(b"\n\n");
    body.extend_from_slice(&value::encode(&value::from_json(data)));
    body
}

/// How frames are delimited on one side of the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Concatenated msgpack maps.
    Bare,
    /// Each map preceded by its length as a 4-byte big-endian integer.
    Prefixed,
}

/// Detect the framing from the first byte of a subscription stream.
pub fn detect_framing(first: u8) -> Framing {
    if (0x80..=0x8f).contains(&first) || first == 0xde || first == 0xdf {
        Framing::Bare
    } else {
        Framing::Prefixed
    }
}

/// Encode one bus frame `{"head": {}, "body": bin}` in `framing`.
pub fn encode_frame(body: &[u8], framing: Framing) -> Vec<u8> {
    let msg = value::map([
        ("head", Mp::Map(vec![])),
        ("body", Mp::Binary(body.to_vec())),
    ]);
    let bytes = value::encode(&msg);
    match framing {
        Framing::Bare => bytes,
        Framing::Prefixed => {
            let mut out = Vec::with_capacity(bytes.len() + 4);
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(&bytes);
            out
        }
    }
}

/// Incremental decoder of a subscription stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    framing: Option<Framing>,
    buf: BytesMut,
    /// A frame of more than [`LARGE_FRAME`] was taken from `buf` since
    /// more bytes were last needed.
    after_large: bool,
}

impl FrameDecoder {
    /// A decoder that detects the framing from the first byte it sees.
    pub fn new() -> Self {
        Self::default()
    }

    /// The detected framing, once known.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// Feed bytes read from the socket.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into directly.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Before more bytes are read: if a large frame was taken from the
    /// buffer, what is left of it (a partial frame) moves to a buffer of
    /// its own. The frame shares the allocation it was read into, grown
    /// for it, and frames read later into the same allocation would keep
    /// all of it alive for as long as any of them lives: the `new` event
    /// of a job to 30,000 minions (~0.5 MiB) would be held through the
    /// whole gathering of the returns that follow it. Once per read at
    /// most, so a stream of large frames is not copied over and over.
    fn more_needed(&mut self) {
        if std::mem::take(&mut self.after_large) {
            let rest = std::mem::take(&mut self.buf);
            self.buf = BytesMut::from(&rest[..]);
        }
    }

    /// The next complete event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> std::result::Result<Option<Event>, String> {
        loop {
            let Some(&first) = self.buf.first() else {
                self.more_needed();
                return Ok(None);
            };
            let framing = *self.framing.get_or_insert_with(|| detect_framing(first));
            let frame = match framing {
                Framing::Prefixed => {
                    if self.buf.len() < 4 {
                        self.more_needed();
                        return Ok(None);
                    }
                    let len =
                        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                            as usize;
                    if len > MAX_EVENT {
                        return Err(format!("event frame of {len} bytes is too large"));
                    }
                    if self.buf.len() < 4 + len {
                        self.more_needed();
                        // Grow with what arrives, not with what the prefix
                        // claims: a lying length must not allocate up front.
                        self.buf
                            .reserve((4 + len - self.buf.len()).min(RESERVE_STEP));
                        return Ok(None);
                    }
                    self.buf.advance(4);
                    self.buf.split_to(len).freeze()
                }
                Framing::Bare => match msgpack_len(&self.buf)? {
                    None => {
                        if self.buf.len() > MAX_EVENT {
                            return Err("event frame is too large".into());
                        }
                        self.more_needed();
                        return Ok(None);
                    }
                    Some(len) => self.buf.split_to(len).freeze(),
                },
            };
            self.after_large |= frame.len() > LARGE_FRAME;
            match event_from_frame(&frame)? {
                Some(ev) => return Ok(Some(ev)),
                // Not an event (no body): skip it.
                None => continue,
            }
        }
    }
}

/// The event in one complete frame `{"head": {...}, "body": <tag>\n\n<data>}`,
/// without copying: the body is found by walking the map's markers and the
/// event data stays a slice of the frame (the bus carries every event of the
/// master; most are only looked at for their tag). `Ok(None)` when the frame
/// has no body.
pub fn event_from_frame(frame: &Bytes) -> std::result::Result<Option<Event>, String> {
    let bad = || "undecodable event frame".to_string();
    let be = |at: usize, n: usize| -> std::result::Result<usize, String> {
        frame
            .get(at..at + n)
            .map(|b| b.iter().fold(0usize, |acc, x| (acc << 8) | usize::from(*x)))
            .ok_or_else(bad)
    };
    // (header length, payload length) of a str/bin item at `at`.
    let string_at = |at: usize| -> std::result::Result<Option<(usize, usize)>, String> {
        let Some(&m) = frame.get(at) else {
            return Err(bad());
        };
        Ok(match m {
            0xa0..=0xbf => Some((1, usize::from(m & 0x1f))),
            0xc4 | 0xd9 => Some((2, be(at + 1, 1)?)),
            0xc5 | 0xda => Some((3, be(at + 1, 2)?)),
            0xc6 | 0xdb => Some((5, be(at + 1, 4)?)),
            _ => None,
        })
    };
    let Some(&m) = frame.first() else {
        return Ok(None);
    };
    let (mut pos, pairs) = match m {
        0x80..=0x8f => (1, usize::from(m & 0x0f)),
        0xde => (3, be(1, 2)?),
        0xdf => (5, be(1, 4)?),
        _ => return Ok(None),
    };
    for _ in 0..pairs {
        let key = match string_at(pos)? {
            Some((hdr, len)) => {
                let key = frame.get(pos + hdr..pos + hdr + len).ok_or_else(bad)?;
                pos += hdr + len;
                key
            }
            None => {
                let len = msgpack_len(&frame[pos..])?.ok_or_else(bad)?;
                pos += len;
                &frame[0..0]
            }
        };
        if key == b"body" {
            let (hdr, len) = string_at(pos)?.ok_or_else(bad)?;
            if frame.len() < pos + hdr + len {
                return Err(bad());
            }
            let body = frame.slice(pos + hdr..pos + hdr + len);
            let (tag, data) = split_body(&body);
            return Ok(Some(Event::new(tag, data)));
        }
        let len = msgpack_len(frame.get(pos..).ok_or_else(bad)?)?.ok_or_else(bad)?;
        pos += len;
    }
    Ok(None)
}

/// The length of the msgpack item at the start of `buf`, or `None` if it is
/// not complete yet. Walks markers without building values, so re-scanning a
/// large partial event is cheap.
pub fn msgpack_len(buf: &[u8]) -> std::result::Result<Option<usize>, String> {
    let mut pos = 0usize;
    let mut pending: u64 = 1;
    while pending > 0 {
        let Some(&m) = buf.get(pos) else {
            return Ok(None);
        };
        pending -= 1;
        pos += 1;
        let be = |n: usize, pos: usize| -> Option<u64> {
            buf.get(pos..pos + n)
                .map(|b| b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
        };
        let (skip, items): (u64, u64) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(m & 0x0f)),
            0x90..=0x9f => (0, u64::from(m & 0x0f)),
            0xa0..=0xbf => (u64::from(m & 0x1f), 0),
            0xc4 | 0xd9 => match be(1, pos) {
                Some(n) => (1 + n, 0),
                None => return Ok(None),
            },
            0xc5 | 0xda => match be(2, pos) {
                Some(n) => (2 + n, 0),
                None => return Ok(None),
            },
            0xc6 | 0xdb => match be(4, pos) {
                Some(n) => (4 + n, 0),
                None => return Ok(None),
            },
            0xc7 => match be(1, pos) {
                Some(n) => (2 + n, 0),
                None => return Ok(None),
            },
            0xc8 => match be(2, pos) {
                Some(n) => (3 + n, 0),
                None => return Ok(None),
            },
            0xc9 => match be(4, pos) {
                Some(n) => (5 + n, 0),
                None => return Ok(None),
            },
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => match be(2, pos) {
                Some(n) => (2, n),
                None => return Ok(None),
            },
            0xdd => match be(4, pos) {
                Some(n) => (4, n),
                None => return Ok(None),
            },
            0xde => match be(2, pos) {
                Some(n) => (2, 2 * n),
                None => return Ok(None),
            },
            0xdf => match be(4, pos) {
                Some(n) => (4, 2 * n),
                None => return Ok(None),
            },
            0xc1 => return Err("invalid msgpack marker 0xc1".into()),
        };
        let skip = usize::try_from(skip).map_err(|_| "msgpack length overflow".to_string())?;
        pos = pos.checked_add(skip).ok_or("msgpack length overflow")?;
        if pos > MAX_EVENT {
            return Err("event frame is too large".into());
        }
        pending = pending
            .checked_add(items)
            .ok_or("msgpack length overflow")?;
    }
    if pos > buf.len() {
        Ok(None)
    } else {
        Ok(Some(pos))
    }
}

/// Call `f` with each string of the array under `key` in the msgpack map
/// `data` (an event's data), borrowed from it; nothing else is decoded, and
/// items of that array that are not strings are skipped. A job's `new`
/// event lists every targeted minion, 10,000 names where the names are all
/// a waiter needs: decoded whole, they would be a JSON array first.
pub fn map_strings<'a>(
    data: &'a [u8],
    key: &str,
    mut f: impl FnMut(&'a str),
) -> std::result::Result<(), String> {
    let mut r = Cursor::new(data);
    for _ in 0..r.map_len()? {
        let matches = r.str()? == Some(key.as_bytes());
        let items = match (matches, r.peek()?) {
            (true, m @ 0x90..=0x9f) => {
                r.pos += 1;
                u64::from(m & 0x0f)
            }
            (true, 0xdc) => {
                r.pos += 1;
                r.uint(2)?
            }
            (true, 0xdd) => {
                r.pos += 1;
                r.uint(4)?
            }
            _ => {
                r.skip()?;
                continue;
            }
        };
        for _ in 0..items {
            match r.str()? {
                Some(s) => {
                    if let Ok(s) = std::str::from_utf8(s) {
                        f(s);
                    }
                }
                None => r.skip()?,
            }
        }
    }
    Ok(())
}

/// The string under `key` in the msgpack map `data` (an event's data),
/// borrowed from it, without decoding anything else; `None` when it is not
/// there or not a string.
pub fn map_string<'a>(data: &'a [u8], key: &str) -> std::result::Result<Option<&'a str>, String> {
    let mut r = Cursor::new(data);
    for _ in 0..r.map_len()? {
        let matches = r.str()? == Some(key.as_bytes());
        match r.str()? {
            Some(value) if matches => return Ok(std::str::from_utf8(value).ok()),
            Some(_) => {}
            None => r.skip()?,
        }
    }
    Ok(None)
}

/// Call `f` with the key and the value's msgpack bytes of each entry of the
/// msgpack map `data` whose key is a string, without decoding the values.
/// An error if `data` is not a whole map.
pub fn map_entries<'a>(
    data: &'a [u8],
    mut f: impl FnMut(&'a [u8], &'a [u8]),
) -> std::result::Result<(), String> {
    let mut r = Cursor::new(data);
    for _ in 0..r.map_len()? {
        let key = r.str()?;
        if key.is_none() {
            r.skip()?;
        }
        let start = r.pos;
        r.skip()?;
        if let Some(key) = key {
            f(key, &data[start..r.pos]);
        }
    }
    Ok(())
}

/// The string the msgpack item `item` is, if it is one.
pub fn as_string(item: &[u8]) -> Option<&str> {
    let mut r = Cursor::new(item);
    let s = r.str().ok()??;
    (r.pos == item.len()).then(|| std::str::from_utf8(s).ok())?
}

/// What [`map_strings`], [`map_string`] and [`map_entries`] read with,
/// besides the cursor's own `take` and `uint`.
impl<'a> Cursor<'a> {
    /// The number of entries of the map at the cursor, its header consumed.
    fn map_len(&mut self) -> std::result::Result<u64, String> {
        match self.byte()? {
            m @ 0x80..=0x8f => Ok(u64::from(m & 0x0f)),
            0xde => self.uint(2),
            0xdf => self.uint(4),
            _ => Err("event data is not a map".into()),
        }
    }

    fn peek(&self) -> std::result::Result<u8, String> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or_else(|| "truncated msgpack".to_string())
    }

    fn byte(&mut self) -> std::result::Result<u8, String> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    /// The string (or binary) at the cursor, consumed; `None`, and nothing
    /// consumed, when the item is something else.
    fn str(&mut self) -> std::result::Result<Option<&'a [u8]>, String> {
        let len = match self.peek()? {
            m @ 0xa0..=0xbf => {
                self.pos += 1;
                usize::from(m & 0x1f)
            }
            0xd9 | 0xc4 => {
                self.pos += 1;
                self.uint(1)? as usize
            }
            0xda | 0xc5 => {
                self.pos += 1;
                self.uint(2)? as usize
            }
            0xdb | 0xc6 => {
                self.pos += 1;
                self.uint(4)? as usize
            }
            _ => return Ok(None),
        };
        self.take(len).map(Some)
    }

    /// Step over the item at the cursor.
    fn skip(&mut self) -> std::result::Result<(), String> {
        match msgpack_len(&self.buf[self.pos..])? {
            Some(len) => {
                self.pos += len;
                Ok(())
            }
            None => Err("truncated msgpack".into()),
        }
    }
}
