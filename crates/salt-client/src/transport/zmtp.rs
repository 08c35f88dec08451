//! A ZMTP 3.1 DEALER connection to the master's ROUTER (`ret_port`).
//!
//! Why not the `zeromq` crate: version 0.7 rejects every ZMTP command other
//! than READY ("Unknown command received") and drops the connection, and Salt
//! 3008's ReqServer sends a heartbeat `PING` every 10 s; a wheel call that runs
//! longer than that, or a pooled idle socket, would be cut. The subset Salt
//! needs — NULL mechanism, one DEALER peer, PING/PONG — is small and fully
//! specified (ZMTP 3.1, RFC 37), so it lives here, in one file, with its own
//! tests. libzmq bindings would add a C++ build to a static binary.
//!
//! One connection carries one request at a time: the protocol has no request
//! id and replies on one socket come back out of order (docs/PROTOCOL.md §3.1).

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest reply frame accepted (a `grains.items` on thousands of minions
/// is tens of MiB; anything near this is a broken peer).
pub const MAX_FRAME: u64 = 1 << 30;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

/// Errors of the ZMTP layer.
#[derive(Debug, thiserror::Error)]
pub enum ZmtpError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
}

/// The 64-byte greeting of a ZMTP 3.1 client with the NULL mechanism.
pub fn greeting() -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 1;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// Check the peer's greeting: signature, version 3.x, NULL mechanism.
pub fn check_greeting(g: &[u8]) -> Result<(), ZmtpError> {
    if g.len() < 64 || g[0] != 0xff || g[9] & 0x01 != 0x01 {
        return Err(ZmtpError::Protocol("not a ZMTP peer".into()));
    }
    if g[10] < 3 {
        return Err(ZmtpError::Protocol(format!(
            "ZMTP version {}.{} is too old",
            g[10], g[11]
        )));
    }
    if &g[12..16] != b"NULL" {
        return Err(ZmtpError::Protocol(
            "peer wants a security mechanism other than NULL".into(),
        ));
    }
    Ok(())
}

/// Append one frame to `out`.
pub fn put_frame(out: &mut Vec<u8>, body: &[u8], more: bool, command: bool) {
    let mut flags = if more { FLAG_MORE } else { 0 } | if command { FLAG_COMMAND } else { 0 };
    if body.len() > 255 {
        flags |= FLAG_LONG;
        out.push(flags);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(flags);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
}

/// The READY command announcing a DEALER socket.
pub fn ready_command() -> Vec<u8> {
    let mut body = Vec::with_capacity(32);
    body.push(5);
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&6u32.to_be_bytes());
    body.extend_from_slice(b"DEALER");
    let mut out = Vec::with_capacity(40);
    put_frame(&mut out, &body, false, true);
    out
}

/// One decoded frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub more: bool,
    pub command: bool,
    pub body: BytesMut,
}

/// Take one complete frame off the front of `buf`, or `None` if more bytes are
/// needed.
pub fn parse_frame(buf: &mut BytesMut) -> Result<Option<Frame>, ZmtpError> {
    let Some(&flags) = buf.first() else {
        return Ok(None);
    };
    if flags & !0x07 != 0 {
        return Err(ZmtpError::Protocol(format!("bad frame flags {flags:#04x}")));
    }
    let (header, size) = if flags & FLAG_LONG != 0 {
        if buf.len() < 9 {
            return Ok(None);
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&buf[1..9]);
        (9, u64::from_be_bytes(len))
    } else {
        if buf.len() < 2 {
            return Ok(None);
        }
        (2, u64::from(buf[1]))
    };
    if size > MAX_FRAME {
        return Err(ZmtpError::Protocol(format!(
            "frame of {size} bytes is too large"
        )));
    }
    let size = size as usize;
    if buf.len() < header + size {
        buf.reserve(header + size - buf.len());
        return Ok(None);
    }
    buf.advance(header);
    let body = buf.split_to(size);
    Ok(Some(Frame {
        more: flags & FLAG_MORE != 0,
        command: flags & FLAG_COMMAND != 0,
        body,
    }))
}

/// The name of a command frame's body (`READY`, `PING`, ...).
pub fn command_name(body: &[u8]) -> Option<&[u8]> {
    let n = *body.first()? as usize;
    body.get(1..1 + n)
}

/// The PONG answering a PING body (`\x04PING` + TTL(2) + context).
pub fn pong_for(ping_body: &[u8]) -> Vec<u8> {
    let context = ping_body.get(7..).unwrap_or(&[]);
    let mut body = Vec::with_capacity(5 + context.len());
    body.push(4);
    body.extend_from_slice(b"PONG");
    body.extend_from_slice(context);
    let mut out = Vec::with_capacity(body.len() + 2);
    put_frame(&mut out, &body, false, true);
    out
}

/// The read buffer a connection starts with: a publish's reply is a few
/// hundred bytes, and a burst of calls opens hundreds of connections at once.
const INITIAL_BUFFER: usize = 1024;

/// Past this many bytes of reply, the buffer it was read into is not kept.
const KEEP_BUFFER: usize = 16 * 1024;

/// A connected, handshaken DEALER connection.
pub struct ZmtpConnection {
    stream: TcpStream,
    buf: BytesMut,
}

impl ZmtpConnection {
    /// Connect and complete the handshake (greetings and READY both ways).
    pub async fn connect(addr: &str) -> Result<Self, ZmtpError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = ZmtpConnection {
            stream,
            buf: BytesMut::with_capacity(INITIAL_BUFFER),
        };
        let mut hello = greeting().to_vec();
        hello.extend_from_slice(&ready_command());
        conn.stream.write_all(&hello).await?;
        while conn.buf.len() < 64 {
            conn.fill().await?;
        }
        check_greeting(&conn.buf[..64])?;
        conn.buf.advance(64);
        loop {
            let frame = conn.next_frame().await?;
            if frame.command && command_name(&frame.body) == Some(b"READY") {
                return Ok(conn);
            }
            if frame.command && command_name(&frame.body) == Some(b"ERROR") {
                return Err(ZmtpError::Protocol("peer refused the handshake".into()));
            }
        }
    }

    async fn fill(&mut self) -> Result<(), ZmtpError> {
        if self.buf.capacity() - self.buf.len() < INITIAL_BUFFER / 2 {
            // Doubling: a large reply (a wheel's key list, a runner's
            // return) takes a few reads, not one per 16 KiB.
            self.buf.reserve(self.buf.len().max(4 * 1024));
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(ZmtpError::Closed);
        }
        Ok(())
    }

    async fn next_frame(&mut self) -> Result<Frame, ZmtpError> {
        loop {
            if let Some(frame) = parse_frame(&mut self.buf)? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Send one request (`["", payload]`) and return the reply payload,
    /// answering heartbeat PINGs while waiting.
    pub async fn request(&mut self, payload: &[u8]) -> Result<BytesMut, ZmtpError> {
        let mut out = Vec::with_capacity(payload.len() + 12);
        put_frame(&mut out, b"", true, false);
        put_frame(&mut out, payload, false, false);
        self.stream.write_all(&out).await?;
        let mut parts: Vec<BytesMut> = Vec::with_capacity(2);
        loop {
            let frame = self.next_frame().await?;
            if frame.command {
                if command_name(&frame.body) == Some(b"PING") {
                    let pong = pong_for(&frame.body);
                    self.stream.write_all(&pong).await?;
                }
                continue;
            }
            let more = frame.more;
            parts.push(frame.body);
            if !more {
                break;
            }
        }
        // The reply is [<empty delimiter>, payload]; take the last part.
        let reply = parts
            .pop()
            .ok_or_else(|| ZmtpError::Protocol("empty reply".into()))?;
        if reply.len() > KEEP_BUFFER && self.buf.is_empty() {
            // The reply was read into (and still shares) a buffer grown
            // for it; the pooled connection would keep that allocation
            // once the reply is dropped. A publish to 10,000 minions is
            // ~180 KiB, a wheel's key list can be megabytes.
            self.buf = BytesMut::with_capacity(INITIAL_BUFFER);
        }
        Ok(reply)
    }

    /// True when the idle connection is still usable: nothing unexpected to
    /// read and not closed by the peer. Answers a pending PING on the way.
    pub fn is_reusable(&mut self) -> bool {
        let mut probe = [0u8; 512];
        loop {
            match self.stream.try_read(&mut probe) {
                Ok(0) => return false,
                Ok(n) => self.buf.extend_from_slice(&probe[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        while !self.buf.is_empty() {
            match parse_frame(&mut self.buf) {
                Ok(Some(f)) if f.command => {
                    if command_name(&f.body) == Some(b"PING") {
                        let pong = pong_for(&f.body);
                        if self.stream.try_write(&pong).ok() != Some(pong.len()) {
                            return false;
                        }
                    }
                }
                // A stray message or a partial frame on an idle socket: unusable.
                _ => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server greeting and READY captured from a 3008.4 master
    /// (as a raw TCP capture of the handshake showed it):
    /// signature ff00000000000000017f, version 3.1, NULL, as_server 0,
    /// then READY with Socket-Type=ROUTER and an empty Identity.
    fn server_hello_3008() -> Vec<u8> {
        let mut g = vec![0u8; 64];
        g[0] = 0xff;
        g[8] = 0x01;
        g[9] = 0x7f;
        g[10] = 3;
        g[11] = 1;
        g[12..16].copy_from_slice(b"NULL");
        let mut body = vec![5];
        body.extend_from_slice(b"READY");
        body.push(11);
        body.extend_from_slice(b"Socket-Type");
        body.extend_from_slice(&6u32.to_be_bytes());
        body.extend_from_slice(b"ROUTER");
        body.push(8);
        body.extend_from_slice(b"Identity");
        body.extend_from_slice(&0u32.to_be_bytes());
        put_frame(&mut g, &body, false, true);
        g
    }

    #[tokio::test]
    async fn a_large_reply_does_not_stay_in_the_pooled_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.expect("accept");
            // The handshake, then two replies, whatever was asked.
            let mut out = server_hello_3008();
            for size in [200 * 1024, 10] {
                put_frame(&mut out, b"", true, false);
                put_frame(&mut out, &vec![b'x'; size], false, false);
            }
            peer.write_all(&out).await.expect("write");
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut sink).await;
        });
        let mut conn = ZmtpConnection::connect(&addr).await.expect("connect");
        let big = conn.request(b"first").await.expect("first reply");
        assert_eq!(big.len(), 200 * 1024);
        drop(big);
        // Kept, the grown buffer could be reclaimed now without allocating.
        assert!(
            !conn.buf.try_reclaim(64 * 1024),
            "the reply's buffer was kept"
        );
        let small = conn.request(b"second").await.expect("second reply");
        assert_eq!(&small[..], &[b'x'; 10]);
        drop(conn);
        server.await.expect("server");
    }

    #[test]
    fn greeting_is_64_bytes_null_mechanism() {
        let g = greeting();
        assert_eq!(g.len(), 64);
        assert_eq!(&g[12..16], b"NULL");
        check_greeting(&g).expect("own greeting is valid");
    }

    #[test]
    fn parses_server_greeting_and_ready() {
        let hello = server_hello_3008();
        check_greeting(&hello[..64]).expect("valid greeting");
        let mut buf = BytesMut::from(&hello[64..]);
        let frame = parse_frame(&mut buf).expect("parses").expect("complete");
        assert!(frame.command);
        assert_eq!(command_name(&frame.body), Some(&b"READY"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn ping_from_3008_gets_pong_with_context() {
        // A 3008.4 master sends PING every 10 s with TTL 0 and an empty context.
        let mut buf = BytesMut::from(&[0x04, 0x07, 0x04, b'P', b'I', b'N', b'G', 0, 0][..]);
        let frame = parse_frame(&mut buf).expect("parses").expect("complete");
        assert_eq!(command_name(&frame.body), Some(&b"PING"[..]));
        assert_eq!(
            pong_for(&frame.body),
            vec![0x04, 0x05, 0x04, b'P', b'O', b'N', b'G']
        );
        let with_ctx = [0x04, b'P', b'I', b'N', b'G', 0, 10, b'x', b'y'];
        assert_eq!(&pong_for(&with_ctx)[7..], b"xy");
    }

    #[test]
    fn long_frames_and_partial_input() {
        let body = vec![7u8; 300];
        let mut out = Vec::new();
        put_frame(&mut out, &body, true, false);
        assert_eq!(out[0], FLAG_MORE | FLAG_LONG);
        let mut buf = BytesMut::from(&out[..100]);
        assert!(parse_frame(&mut buf).expect("no error").is_none());
        buf.extend_from_slice(&out[100..]);
        let frame = parse_frame(&mut buf).expect("parses").expect("complete");
        assert!(frame.more);
        assert_eq!(frame.body.len(), 300);
    }

    #[test]
    fn rejects_oversized_and_garbage_frames() {
        let mut buf = BytesMut::from(&[0x02, 0xff, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(parse_frame(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0xf0, 0x00][..]);
        assert!(parse_frame(&mut buf).is_err());
        assert!(check_greeting(&[0u8; 64]).is_err());
    }
}
