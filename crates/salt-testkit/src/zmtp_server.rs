//! The request server: a ZMTP 3.1 ROUTER with the NULL mechanism, as the
//! master's `ReqServer` is. A DEALER client sends `["", payload]` and gets
//! `["", reply]`; heartbeats (`PING`) are answered with `PONG`.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use salt_client::transport::zmtp;
use salt_client::value;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{Handler, Reply};

/// A request larger than this closes the connection.
const MAX_REQUEST: usize = 64 << 20;

/// Accept request connections until the task is aborted.
pub async fn serve_request_server(listener: TcpListener, handler: Arc<dyn Handler>) {
    while let Ok((stream, _)) = listener.accept().await {
        let h = handler.clone();
        tokio::spawn(async move {
            let _ = serve_connection(stream, h).await;
        });
    }
}

/// The server side of the handshake: greeting (as-server) and `READY` with
/// `Socket-Type: ROUTER`.
fn server_hello() -> Vec<u8> {
    let mut hello = zmtp::greeting().to_vec();
    hello[32] = 1; // as-server
    let mut body = Vec::with_capacity(48);
    body.push(5);
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&6u32.to_be_bytes());
    body.extend_from_slice(b"ROUTER");
    body.push(8);
    body.extend_from_slice(b"Identity");
    body.extend_from_slice(&0u32.to_be_bytes());
    zmtp::put_frame(&mut hello, &body, false, true);
    hello
}

async fn serve_connection(mut stream: TcpStream, handler: Arc<dyn Handler>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    stream.write_all(&server_hello()).await?;
    let mut buf = BytesMut::with_capacity(8192);
    while buf.len() < 64 {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
    if zmtp::check_greeting(&buf[..64]).is_err() {
        return Ok(());
    }
    buf.advance(64);
    let mut parts: Vec<BytesMut> = Vec::with_capacity(2);
    let mut out = Vec::with_capacity(512);
    loop {
        while let Some(frame) = zmtp::parse_frame(&mut buf).map_err(std::io::Error::other)? {
            if frame.command {
                if zmtp::command_name(&frame.body) == Some(b"PING") {
                    stream.write_all(&zmtp::pong_for(&frame.body)).await?;
                }
                continue;
            }
            let more = frame.more;
            parts.push(frame.body);
            if more {
                continue;
            }
            let payload = parts.pop().unwrap_or_default();
            parts.clear();
            let mut reply = match value::decode(&payload) {
                Ok(envelope) => handler.handle(&envelope),
                Err(_) => Reply::Value(json!({"error": "Routing error"})),
            };
            let bytes = loop {
                match reply {
                    Reply::Delay(d, next) => {
                        tokio::time::sleep(d).await;
                        reply = *next;
                    }
                    Reply::Never => {
                        // Keep the connection open and unanswered until the
                        // client goes away.
                        let mut sink = [0u8; 4096];
                        while stream.read(&mut sink).await? != 0 {}
                        return Ok(());
                    }
                    Reply::Close => return Ok(()),
                    Reply::Raw(b) => break b,
                    Reply::Value(v) => break value::encode(&value::from_json(&v)),
                    Reply::Error { name, message } => {
                        break value::encode(&value::from_json(
                            &json!({"error": {"name": name, "message": message}}),
                        ))
                    }
                }
            };
            out.clear();
            zmtp::put_frame(&mut out, b"", true, false);
            zmtp::put_frame(&mut out, &bytes, false, false);
            stream.write_all(&out).await?;
        }
        if buf.len() > MAX_REQUEST {
            return Ok(());
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}
