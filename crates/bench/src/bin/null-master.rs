//! `null-master`: a benchmark-only fake Salt master that speaks the real
//! client-facing protocol and does no work, so that what is measured is the
//! API server in front of it.
//!
//! * Request server: ZMTP 3.1 ROUTER with the NULL mechanism on `--port`.
//!   DEALER clients send `["", payload]`; the reply is `["", reply]`.
//!   Commands: `ping`, `publish`, `mk_token`, `get_token`, `runner`, `wheel`.
//! * Event bus, Salt 3008 style: `<sock_dir>/master_event_pub.ipc` streams
//!   bare msgpack frames `{"head": {}, "body": bin(tag + "\n\n" + data)}` to
//!   every subscriber; `<sock_dir>/master_event_pull.ipc` accepts frames with
//!   a 4-byte big-endian length prefix and re-publishes them.
//! * A `publish` is answered at once with `--minions` simulated minions; the
//!   job's `new` event follows immediately and one `ret` event per minion
//!   after `--ret-delay-ms` (to hold thousands of synchronous calls open).
//!
//! It writes a master config for halite pointing at itself (`--write-config`).
//! Never use it for anything but benchmarks: it accepts any credentials.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use clap::Parser;
use rmpv::Value as Mp;
use salt_client::events::{encode_frame, Framing};
use salt_client::value;
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::broadcast;

#[derive(Debug, Parser)]
#[command(about = "Benchmark-only fake Salt master (ZMTP request server + event bus)")]
struct Args {
    /// Request server port (ret_port) on 127.0.0.1.
    #[arg(long, default_value_t = 16606)]
    port: u16,
    /// Directory for the event bus sockets (sock_dir) and the config.
    #[arg(long)]
    dir: PathBuf,
    /// Simulated minions answering every publish (sim-0 .. sim-<N-1>).
    #[arg(long, default_value_t = 3)]
    minions: usize,
    /// Delay of the return events after a publish, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ret_delay_ms: u64,
    /// Write a master config for halite to this file.
    #[arg(long)]
    write_config: Option<PathBuf>,
    /// rest_wsgi port in the written config.
    #[arg(long, default_value_t = 16601)]
    wsgi_port: u16,
    /// rest_cherrypy port in the written config.
    #[arg(long, default_value_t = 16602)]
    cherrypy_port: u16,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Unrelated events fired between two returns (other jobs' returns,
    /// minion starts, auth events): a bus that is never quiet.
    #[arg(long, default_value_t = 0)]
    noise: usize,
    /// Fire a sustained stream on the bus for this many seconds after the
    /// first subscriber connects: 10,000-minion jobs (`new` + returns),
    /// their progress events and unrelated events, as fast as it can. Jids
    /// are `20260101999<n:09>`, so a measuring client can wait on them.
    #[arg(long, default_value_t = 0)]
    firehose_secs: u64,
}

struct Sim {
    minions: Vec<String>,
    minion_set: std::collections::HashSet<String>,
    noise: usize,
    ret_delay: Duration,
    bus: broadcast::Sender<Bytes>,
    tokens: Mutex<HashMap<String, Json>>,
    next_jid: AtomicU64,
    returns: HashMap<&'static str, Vec<u8>>,
    published: AtomicU64,
    lagged: AtomicU64,
    /// The publish side's listener, for [`Sim::accept_pending`].
    pub_listener: OnceLock<std::os::unix::net::UnixListener>,
    firehose_secs: u64,
    firehose_started: AtomicBool,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A fixed, plausible `_stamp` (Salt 3008 style, with `+00:00`).
const STAMP: &str = "2026-01-01T00:00:00.000000+00:00";

impl Sim {
    fn new_jid(&self) -> String {
        // 20 digits like Salt's jids: a fixed date plus a counter.
        format!(
            "20260101{:012}",
            self.next_jid.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Subscribe one connection of the publish side to the bus and stream
    /// to it (and start the firehose on the first one, if asked).
    fn add_subscriber(self: &Arc<Self>, stream: UnixStream) {
        let rx = self.bus.subscribe();
        tokio::spawn(serve_sub(stream, self.clone(), rx));
        // Subscribed before the firehose starts, so it has a reader.
        if self.firehose_secs > 0 && !self.firehose_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(firehose(self.clone(), self.firehose_secs));
        }
    }

    /// Subscribe every connection waiting in the publish side's backlog.
    /// Called before anything is sent on the bus: a client's `connect` to
    /// the publish side completes as soon as the kernel queues it, and the
    /// client then counts itself subscribed (as it may with a real master)
    /// and publishes a job; had the accept task not run yet (a loaded
    /// machine), the job's events went to no receiver and were lost.
    fn accept_pending(self: &Arc<Self>) {
        let Some(listener) = self.pub_listener.get() else {
            return;
        };
        // Non-blocking: `WouldBlock` (nothing waiting) ends it.
        while let Ok((stream, _)) = listener.accept() {
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| UnixStream::from_std(stream));
            match stream {
                Ok(s) => self.add_subscriber(s),
                Err(e) => eprintln!("null-master: cannot serve a subscriber: {e}"),
            }
        }
    }

    /// Publish one event body on the bus.
    fn fire_body(self: &Arc<Self>, body: &[u8]) {
        self.accept_pending();
        let _ = self
            .bus
            .send(Bytes::from(encode_frame(body, Framing::Bare)));
    }

    fn fire(self: &Arc<Self>, tag: &str, data: &Json) {
        self.fire_body(&salt_client::events::pack_body(tag, data));
    }

    /// The `salt/job/<jid>/ret/<minion>` frame, encoded by hand (hot path).
    fn ret_frame(&self, jid: &str, minion: &str, fun: &str, ret: &[u8]) -> Bytes {
        let tag = format!("salt/job/{jid}/ret/{minion}");
        let mut body = Vec::with_capacity(tag.len() + ret.len() + 200);
        body.extend_from_slice(tag.as_bytes());
        body.extend_from_slice(b"\n\n");
        let w = &mut body;
        let _ = rmp::encode::write_map_len(w, 10);
        for (k, v) in [
            ("cmd", "_return"),
            ("id", minion),
            ("jid", jid),
            ("fun", fun),
            ("user", "saltdev"),
            ("_stamp", STAMP),
        ] {
            let _ = rmp::encode::write_str(w, k);
            let _ = rmp::encode::write_str(w, v);
        }
        let _ = rmp::encode::write_str(w, "fun_args");
        let _ = rmp::encode::write_array_len(w, 0);
        let _ = rmp::encode::write_str(w, "retcode");
        let _ = rmp::encode::write_uint(w, 0);
        let _ = rmp::encode::write_str(w, "success");
        let _ = rmp::encode::write_bool(w, true);
        let _ = rmp::encode::write_str(w, "return");
        w.extend_from_slice(ret);
        // The frame {"head": {}, "body": bin}, bare (3008 publish side).
        let mut frame = Vec::with_capacity(body.len() + 20);
        let _ = rmp::encode::write_map_len(&mut frame, 2);
        let _ = rmp::encode::write_str(&mut frame, "head");
        let _ = rmp::encode::write_map_len(&mut frame, 0);
        let _ = rmp::encode::write_str(&mut frame, "body");
        let _ = rmp::encode::write_bin(&mut frame, &body);
        Bytes::from(frame)
    }

    fn authenticated(load: &Mp) -> bool {
        value::get(load, "eauth").is_some() || value::get(load, "token").is_some()
    }

    fn handle(self: &Arc<Self>, envelope: &Mp) -> Mp {
        let Some(load) = value::get(envelope, "load") else {
            return Mp::from("bad load");
        };
        let cmd = value::get(load, "cmd").and_then(Mp::as_str).unwrap_or("");
        match cmd {
            "ping" => load.clone(),
            "publish" => self.publish(load),
            "mk_token" => {
                let user = value::get(load, "username")
                    .and_then(Mp::as_str)
                    .unwrap_or("");
                let eauth = value::get(load, "eauth").and_then(Mp::as_str).unwrap_or("");
                if user.is_empty() || eauth.is_empty() {
                    return Mp::from("");
                }
                let n = self.next_jid.fetch_add(1, Ordering::Relaxed);
                let token = format!("{:064x}", u128::from(n) * 0x9e37_79b9_7f4a_7c15 + 1);
                let t = now();
                let rec = json!({"token": token, "start": t, "expire": t + 43200.0,
                    "name": user, "eauth": eauth});
                let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                if tokens.len() > 100_000 {
                    tokens.clear();
                }
                tokens.insert(token, rec.clone());
                value::from_json(&rec)
            }
            "get_token" => match value::get(load, "token").and_then(Mp::as_str) {
                Some(t) => {
                    let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                    value::from_json(tokens.get(t).unwrap_or(&json!({})))
                }
                None => Mp::Boolean(false),
            },
            "runner" => {
                if !Self::authenticated(load) {
                    return auth_error("EauthAuthenticationError");
                }
                let fun = value::get(load, "fun").and_then(Mp::as_str).unwrap_or("");
                let kwarg = value::get(load, "kwarg")
                    .map(value::to_json)
                    .unwrap_or(json!({}));
                let jid = self.new_jid();
                let tag = format!("salt/run/{jid}");
                let fun_full = format!("runner.{fun}");
                let args = kwarg.get("arg").cloned().unwrap_or(json!([]));
                let kwargs = kwarg.get("kwarg").cloned().unwrap_or(json!({}));
                let new = json!({"fun": fun_full, "fun_args": [args, kwargs], "jid": jid,
                    "user": "saltdev", "_stamp": STAMP});
                self.fire(&format!("{tag}/new"), &new);
                let ret = json!({"fun": fun_full, "fun_args": [args, kwargs], "jid": jid,
                    "user": "saltdev", "return": {"args": args, "kwargs": kwargs},
                    "success": true, "_stamp": STAMP});
                self.fire(&format!("{tag}/ret"), &ret);
                value::from_json(&json!({"jid": jid, "tag": tag}))
            }
            "wheel" => {
                if !Self::authenticated(load) {
                    return auth_error("EauthAuthenticationError");
                }
                let fun = value::get(load, "fun").and_then(Mp::as_str).unwrap_or("");
                let jid = self.new_jid();
                let tag = format!("salt/wheel/{jid}");
                let ret = if fun == "key.list_all" {
                    json!({"local": ["master.pem", "master.pub"], "minions": self.minions,
                        "minions_denied": [], "minions_pre": [], "minions_rejected": []})
                } else {
                    json!(true)
                };
                value::from_json(&json!({"tag": tag, "data": {"fun": format!("wheel.{fun}"),
                    "jid": jid, "tag": tag, "user": "saltdev", "success": true, "return": ret}}))
            }
            _ => Mp::Map(vec![]),
        }
    }

    fn publish(self: &Arc<Self>, load: &Mp) -> Mp {
        let kwargs = value::get(load, "kwargs");
        if !kwargs.is_some_and(Self::authenticated) {
            return auth_error("AuthenticationError");
        }
        let jid = match value::get(load, "jid").and_then(Mp::as_str) {
            Some(j) if !j.is_empty() => j.to_owned(),
            _ => self.new_jid(),
        };
        let fun = value::get(load, "fun")
            .and_then(Mp::as_str)
            .unwrap_or("")
            .to_owned();
        let tgt_type = value::get(load, "tgt_type")
            .and_then(Mp::as_str)
            .unwrap_or("glob");
        let minions: Vec<String> = match (tgt_type, value::get(load, "tgt")) {
            (_, Some(Mp::Array(list))) => list
                .iter()
                .filter_map(Mp::as_str)
                .filter(|m| self.minion_set.contains(*m))
                .map(str::to_owned)
                .collect(),
            _ => self.minions.clone(),
        };
        self.published.fetch_add(1, Ordering::Relaxed);
        let new = json!({"jid": jid, "tgt": value::get(load, "tgt").map(value::to_json),
            "tgt_type": tgt_type, "user": "saltdev", "fun": fun, "arg": [],
            "minions": minions, "missing": [], "_stamp": STAMP});
        self.fire(&format!("salt/job/{jid}/new"), &new);
        let ret: &[u8] = match self.returns.get(fun.as_str()) {
            Some(r) => r,
            None => &[0xc3],
        };
        let mut frames: Vec<Bytes> = Vec::with_capacity(minions.len() * (1 + self.noise));
        for (i, m) in minions.iter().enumerate() {
            frames.push(self.ret_frame(&jid, m, &fun, ret));
            for k in 0..self.noise {
                frames.push(noise_frame(self, i * self.noise + k));
            }
        }
        if self.ret_delay.is_zero() {
            self.accept_pending();
            for f in frames {
                let _ = self.bus.send(f);
            }
        } else {
            let sim = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(sim.ret_delay).await;
                sim.accept_pending();
                for f in frames {
                    let _ = sim.bus.send(f);
                }
            });
        }
        value::map([
            (
                "load",
                value::from_json(&json!({"jid": jid, "minions": minions, "missing": []})),
            ),
            ("enc", Mp::from("clear")),
        ])
    }
}

/// One unrelated event: another job's return, a minion start, an auth
/// event, in turn.
fn noise_frame(sim: &Sim, n: usize) -> Bytes {
    let body = match n % 3 {
        0 => {
            return sim.ret_frame(
                "20260101888000000000",
                &format!("other-{n}"),
                "test.ping",
                &[0xc3],
            )
        }
        1 => salt_client::events::pack_body(
            &format!("minion_start/other-{n}"),
            &json!({"cmd": "_minion_event", "data": "Minion other started", "id": format!("other-{n}"), "_stamp": STAMP}),
        ),
        _ => salt_client::events::pack_body(
            "salt/auth",
            &json!({"act": "accept", "id": format!("other-{n}"), "pub": "-----BEGIN PUBLIC KEY-----", "result": true, "_stamp": STAMP}),
        ),
    };
    Bytes::from(encode_frame(&body, Framing::Bare))
}

/// The sustained stream of `--firehose-secs`: rounds of a 10,000-minion job
/// (its `new` event, a progress event and a return per minion, one
/// unrelated event per return), pre-encoded once and re-sent.
async fn firehose(sim: Arc<Sim>, secs: u64) {
    const MINIONS: usize = 10_000;
    let mut round: Vec<Bytes> = Vec::with_capacity(3 * MINIONS + 1);
    let jid = "20260101999000000000";
    round.push(Bytes::from(encode_frame(
        &salt_client::events::pack_body(
            &format!("salt/job/{jid}/new"),
            &json!({"jid": jid, "tgt": "*", "tgt_type": "glob", "fun": "test.ping", "arg": [],
                "minions": [], "missing": [], "user": "saltdev", "_stamp": STAMP}),
        ),
        Framing::Bare,
    )));
    for i in 0..MINIONS {
        let m = format!("sim-{i}");
        round.push(Bytes::from(encode_frame(
            &salt_client::events::pack_body(
                &format!("salt/job/{jid}/prog/{m}/0"),
                &json!({"cmd": "_minion_event", "data": {"ret": {"name": "x", "result": true}},
                    "id": m, "_stamp": STAMP}),
            ),
            Framing::Bare,
        )));
        round.push(sim.ret_frame(jid, &m, "test.ping", &[0xc3]));
        round.push(noise_frame(&sim, i));
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut sent = 0u64;
    while tokio::time::Instant::now() < end && sim.bus.receiver_count() > 0 {
        sim.accept_pending();
        for f in &round {
            // Wait for the subscribers rather than lapping them, and let
            // the writers run (a single worker thread is the default).
            while sim.bus.len() > (1 << 16) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if sim.bus.send(f.clone()).is_err() {
                break;
            }
            sent += 1;
            if sent.is_multiple_of(1024) {
                tokio::task::yield_now().await;
            }
        }
    }
    eprintln!("null-master: firehose done, {sent} events sent");
}

fn auth_error(name: &str) -> Mp {
    value::from_json(&json!({"error": {"name": name, "message": "Authentication error occurred."}}))
}

/// The request server's handler: the simulated master answers every
/// request (the ZMTP server itself is salt-testkit's).
struct SimHandler(Arc<Sim>);

impl salt_testkit::Handler for SimHandler {
    fn handle(&self, envelope: &Mp) -> salt_testkit::Reply {
        salt_testkit::Reply::Raw(value::encode(&self.0.handle(envelope)))
    }
}

/// One subscriber of the publish side: stream every event, batching writes.
async fn serve_sub(mut stream: UnixStream, sim: Arc<Sim>, mut rx: broadcast::Receiver<Bytes>) {
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        match rx.recv().await {
            Ok(b) => out.extend_from_slice(&b),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                sim.lagged.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
        while out.len() < (1 << 20) {
            match rx.try_recv() {
                Ok(b) => out.extend_from_slice(&b),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    sim.lagged.fetch_add(n, Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

/// One pusher on the pull side: length-prefixed frames, re-published bare.
async fn serve_pull(mut stream: UnixStream, sim: Arc<Sim>) {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > (64 << 20) {
                return;
            }
            if buf.len() < 4 + len {
                break;
            }
            buf.advance(4);
            let frame = buf.split_to(len);
            if let Ok(msg) = value::decode(&frame) {
                if let Some(Mp::Binary(body)) = value::get(&msg, "body") {
                    sim.fire_body(body);
                }
            }
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}

fn grains(i: usize) -> Json {
    // About the size of a real minion's grains.items (~6 KiB of JSON).
    let mut g = serde_json::Map::new();
    g.insert("id".into(), json!(format!("sim-{i}")));
    g.insert("os".into(), json!("Debian"));
    g.insert("os_family".into(), json!("Debian"));
    g.insert("kernel".into(), json!("Linux"));
    g.insert("num_cpus".into(), json!(2));
    g.insert("mem_total".into(), json!(24105));
    g.insert("ipv4".into(), json!(["127.0.0.1", "10.0.0.2"]));
    g.insert(
        "path".into(),
        json!("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    );
    for k in 0..120 {
        g.insert(
            format!("grain_{k:03}"),
            json!(format!("value-{k:03}-{}", "x".repeat(24))),
        );
    }
    Json::Object(g)
}

fn write_config(args: &Args, path: &Path) -> std::io::Result<()> {
    let d = args.dir.display();
    let text = format!(
        "# Written by null-master (benchmarks only): a fake master on 127.0.0.1:{port}.\n\
         root_dir: {d}\n\
         interface: 127.0.0.1\n\
         ret_port: {port}\n\
         transport: zeromq\n\
         ipc_mode: ipc\n\
         sock_dir: {d}/sock\n\
         cachedir: {d}/cache\n\
         pki_dir: {d}/pki\n\
         log_file: {d}/master.log\n\
         external_auth:\n  auto:\n    saltdev: ['.*', '@runner', '@wheel', '@jobs']\n\
         netapi_enable_clients: [local, local_async, local_batch, local_subset, runner, runner_async, wheel, wheel_async]\n\
         rest_wsgi:\n  port: {wsgi}\n  host: 127.0.0.1\n\
         rest_cherrypy:\n  port: {cp}\n  host: 127.0.0.1\n  disable_ssl: true\n",
        port = args.port,
        wsgi = args.wsgi_port,
        cp = args.cherrypy_port,
    );
    std::fs::write(path, text)
}

fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    // The config names sock_dir; relative paths would resolve against it.
    if let Ok(abs) = std::path::absolute(&args.dir) {
        args.dir = abs;
    }
    let sock_dir = args.dir.join("sock");
    for d in [&sock_dir, &args.dir.join("cache"), &args.dir.join("pki")] {
        if let Err(e) = std::fs::create_dir_all(d) {
            eprintln!("null-master: cannot create {}: {e}", d.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    if let Some(path) = &args.write_config {
        if let Err(e) = write_config(&args, path) {
            eprintln!("null-master: cannot write {}: {e}", path.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("null-master: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut returns: HashMap<&'static str, Vec<u8>> = HashMap::new();
    returns.insert("test.ping", vec![0xc3]);
    returns.insert("saltutil.find_job", vec![0x80]);
    returns.insert("grains.items", value::encode(&value::from_json(&grains(0))));
    let (bus, _) = broadcast::channel(1 << 17);
    let sim = Arc::new(Sim {
        minions: (0..args.minions).map(|i| format!("sim-{i}")).collect(),
        minion_set: (0..args.minions).map(|i| format!("sim-{i}")).collect(),
        noise: args.noise,
        ret_delay: Duration::from_millis(args.ret_delay_ms),
        bus,
        tokens: Mutex::new(HashMap::new()),
        next_jid: AtomicU64::new(0),
        returns,
        published: AtomicU64::new(0),
        lagged: AtomicU64::new(0),
        pub_listener: OnceLock::new(),
        firehose_secs: args.firehose_secs,
        firehose_started: AtomicBool::new(false),
    });
    let res: Result<(), String> = runtime.block_on(async {
        let req = TcpListener::bind(("127.0.0.1", args.port))
            .await
            .map_err(|e| format!("cannot bind 127.0.0.1:{}: {e}", args.port))?;
        // The publish side is accepted both by its task below and by
        // `Sim::accept_pending` (before every send), on one socket.
        let pub_std = std::os::unix::net::UnixListener::bind({
            let path = sock_dir.join("master_event_pub.ipc");
            let _ = std::fs::remove_file(&path);
            path
        })
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("cannot bind master_event_pub.ipc: {e}"))?;
        let pub_l = pub_std
            .try_clone()
            .and_then(UnixListener::from_std)
            .map_err(|e| format!("cannot listen on master_event_pub.ipc: {e}"))?;
        let _ = sim.pub_listener.set(pub_std);
        let pull_l = bind_unix(&sock_dir.join("master_event_pull.ipc"))
            .map_err(|e| format!("cannot bind master_event_pull.ipc: {e}"))?;
        // Salt's LocalClient refuses to publish unless this socket exists
        // (its check that the master's publisher runs); nothing is read.
        let publish_pull = bind_unix(&sock_dir.join("publish_pull.ipc"))
            .map_err(|e| format!("cannot bind publish_pull.ipc: {e}"))?;
        tokio::spawn(async move {
            while let Ok((stream, _)) = publish_pull.accept().await {
                drop(stream);
            }
        });
        eprintln!(
            "null-master: ret_port 127.0.0.1:{}, bus {}, {} minions, ret delay {} ms",
            args.port,
            sock_dir.display(),
            args.minions,
            args.ret_delay_ms
        );
        let s = sim.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = pub_l.accept().await {
                s.add_subscriber(stream);
            }
        });
        let s = sim.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = pull_l.accept().await {
                tokio::spawn(serve_pull(stream, s.clone()));
            }
        });
        let s = sim.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let p = s.published.load(Ordering::Relaxed);
                if p != last {
                    eprintln!(
                        "null-master: {p} publishes, {} events lagged",
                        s.lagged.load(Ordering::Relaxed)
                    );
                    last = p;
                }
            }
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::spawn(salt_testkit::serve_request_server(
            req,
            Arc::new(SimHandler(sim.clone())),
        ));
        tokio::select! {
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("null-master: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
