//! Salt's `tcp` request transport: a byte stream of concatenated msgpack maps
//! `{"head": {"mid": <id>}, "body": <envelope>}`, the reply echoing `head`
//! (docs/PROTOCOL.md §3.2). One request per connection at a time, on at most a
//! few connections (see `MAX_OPEN_TCP` in `transport/mod.rs`): the master's
//! listen backlog is 5. Pipelining several requests per connection, matched
//! by `mid`, would serve more at once with the same connections.

use bytes::{Buf, BytesMut};
use rmpv::Value as Mp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::value;

/// Errors of the tcp transport.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Wrap an encoded envelope in the `{head, body}` frame.
pub fn frame(mid: &str, envelope: &[u8]) -> Vec<u8> {
    // `{"head": {"mid": <mid>}, "body": <envelope>}`, the envelope's bytes
    // written as they were encoded.
    let mut out = value::encode(&value::map([(
        "head",
        value::map([("mid", Mp::from(mid))]),
    )]));
    // One more entry: a fixmap's count is its first byte's low bits.
    out[0] += 1;
    out.extend_from_slice(&value::encode(&Mp::from("body")));
    out.extend_from_slice(envelope);
    out
}

/// One connection to the master's `ret_port` speaking the tcp transport.
pub struct TcpConnection {
    stream: TcpStream,
    buf: BytesMut,
}

impl TcpConnection {
    /// Connect (no handshake in this transport).
    pub async fn connect(addr: &str) -> Result<Self, TcpError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(TcpConnection {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        })
    }

    /// Send `envelope` (encoded) and return the reply `body` whose head
    /// echoes our id.
    pub async fn request(&mut self, envelope: &[u8]) -> Result<Mp, TcpError> {
        let mid = uuid::Uuid::new_v4().to_string();
        self.stream.write_all(&frame(&mid, envelope)).await?;
        loop {
            match value::decode_prefix(&self.buf).map_err(|e| TcpError::Protocol(e.to_string()))? {
                Some((msg, used)) => {
                    self.buf.advance(used);
                    let echoed = value::get(&msg, "head").and_then(|h| value::get(h, "mid"));
                    if echoed.and_then(Mp::as_str) != Some(mid.as_str()) {
                        // A reply to an earlier, abandoned request: skip it.
                        continue;
                    }
                    // Moved out, not copied: a publish to 30,000 minions
                    // has their names in it.
                    return value::take(msg, "body")
                        .ok_or_else(|| TcpError::Protocol("reply without body".into()));
                }
                None => {
                    if self.buf.capacity() - self.buf.len() < 4096 {
                        self.buf.reserve(16 * 1024);
                    }
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        return Err(TcpError::Closed);
                    }
                }
            }
        }
    }

    /// True when the idle connection is still open and has nothing pending.
    pub fn is_reusable(&mut self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            && self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_head_mid_and_body() {
        let envelope = value::encode(&value::map([("enc", Mp::from("clear"))]));
        let bytes = frame("abc", &envelope);
        let decoded = value::decode(&bytes).expect("decodes");
        assert_eq!(
            value::to_json(&decoded),
            serde_json::json!({"head": {"mid": "abc"}, "body": {"enc": "clear"}})
        );
    }
}
