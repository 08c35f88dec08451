//! Operating halite as a service, without a Salt lab: connection limits,
//! TLS options, HTTP/2, certificate rotation on SIGHUP, shutdown on
//! SIGTERM. Each test runs the real binary against a master that is not
//! running (the HTTP layer does not need one for `/health/live`).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{absent_master_config, free_port, temp_dir, Halite};

/// halite with one rest_wsgi surface on a free port; `extra` are YAML
/// entries of the section.
fn wsgi(name: &str, extra: &[(&str, serde_norway::Value)]) -> Halite {
    let dir = temp_dir(name);
    let mut cfg = absent_master_config(&dir);
    let port = free_port();
    let mut section = serde_norway::Mapping::new();
    section.insert("port".into(), port.into());
    section.insert("host".into(), "127.0.0.1".into());
    for (k, v) in extra {
        section.insert((*k).into(), v.clone());
    }
    cfg.insert("rest_wsgi".into(), section.into());
    Halite::start_in(dir, &cfg, port)
}

/// A self-signed certificate for 127.0.0.1, written as `<stem>.crt` and
/// `<stem>.key` in `dir`; its DER.
fn certificate(dir: &Path, stem: &str) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, stem);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    cert.der().to_vec()
}

/// halite serving HTTPS with `tls.crt`/`tls.key` from a directory that
/// exists before it starts.
fn tls_wsgi(name: &str, extra: &[(&str, serde_norway::Value)]) -> (Halite, Vec<u8>) {
    let dir = temp_dir(name);
    let der = certificate(&dir, "tls");
    let mut cfg = absent_master_config(&dir);
    let port = free_port();
    let mut section = serde_norway::Mapping::new();
    section.insert("port".into(), port.into());
    section.insert("host".into(), "127.0.0.1".into());
    section.insert(
        "ssl_crt".into(),
        dir.join("tls.crt").display().to_string().into(),
    );
    section.insert(
        "ssl_key".into(),
        dir.join("tls.key").display().to_string().into(),
    );
    for (k, v) in extra {
        section.insert((*k).into(), v.clone());
    }
    cfg.insert("rest_wsgi".into(), section.into());
    (Halite::start_in(dir, &cfg, port), der)
}

fn https_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .timeout(Duration::from_secs(10))
}

#[test]
fn a_connection_that_never_finishes_its_headers_is_closed() {
    let h = wsgi("slowloris", &[("header_read_timeout", 1.into())]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    s.write_all(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let res = s.read_to_end(&mut got);
    let elapsed = started.elapsed();
    assert!(
        res.is_ok() || started.elapsed() < Duration::from_secs(9),
        "the connection is still open after {elapsed:?}: {res:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "closed only after {elapsed:?} (header_read_timeout 1 s)"
    );
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "unexpected answer {:?}",
        String::from_utf8_lossy(&got)
    );
    // A client that does send its head is served.
    let mut ok = std::net::TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    ok.write_all(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    ok.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// One `GET /health/live` on a kept-alive connection; false when the
/// server closed the connection instead of answering.
fn live_on(stream: &mut std::net::TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).is_ok()
}

/// A connection that has been answered once and is kept open, so it holds
/// one of the server's connection permits. A connection the server refused
/// (a permit still held by an earlier connection the server has not yet
/// seen close) is retried; returns how many were refused on the way.
fn held_connection(port: u16) -> (std::net::TcpStream, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    loop {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        if live_on(&mut stream) {
            return (stream, refused);
        }
        refused += 1;
        assert!(Instant::now() < deadline, "no connection was ever served");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connections_beyond_max_connections_are_closed() {
    let h = wsgi("maxconn", &[("max_connections", 2.into())]);
    let mut refused = 0;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (stream, r) = held_connection(h.port);
            refused += r;
            stream
        })
        .collect();
    // Both permits are now held by connections that were answered: a
    // third connection is closed without an answer.
    let mut third = std::net::TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = third.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    let res = third.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "the third connection was served: {:?} ({res:?})",
        String::from_utf8_lossy(&buf)
    );
    refused += 1;
    // Closing the held connections frees their permits (once the server
    // has seen them close: retried like the held ones).
    drop(held);
    let (mut again, r) = held_connection(h.port);
    refused += r;
    again
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    again.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let expected = format!("halite_connections_refused_total{{surface=\"rest_wsgi\"}} {refused}");
    assert!(
        answer.lines().any(|l| l == expected),
        "{expected} in {answer}"
    );
}

/// One HTTP/1.1 exchange on a new connection: the status line.
fn exchange(port: u16, head_pad: usize, body: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let method = if body.is_empty() { "GET" } else { "POST" };
    let head = format!(
        "{method} / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nX-Pad: {}\r\n\r\n",
        body.len(),
        "p".repeat(head_pad)
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or("").to_owned()
}

#[test]
fn http1_read_buffer_cap_bounds_the_head_not_the_body() {
    let h = wsgi("h1buf", &[]);
    // A head within the default 8 KiB is served; a larger one is refused.
    assert!(exchange(h.port, 6000, b"").starts_with("HTTP/1.1 200"));
    let refused = exchange(h.port, 12_000, b"");
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    // A body far larger than the buffer is still read whole: it reaches the
    // JSON parser, which names its last byte.
    let mut body = br#"{"pad": ""#.to_vec();
    body.extend(std::iter::repeat_n(b'x', 200_000));
    body.extend_from_slice(br#""} trailing"#);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("trailing characters"), "{answer}");
    // The option raises the cap.
    let big = wsgi("h1buf-big", &[("http1_max_buf_size", 65536.into())]);
    assert!(exchange(big.port, 12_000, b"").starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn tls12_client_refused_when_tls13_is_required() {
    let (h, _) = tls_wsgi("tls13", &[("tls_min_version", "1.3".into())]);
    let url = format!("https://127.0.0.1:{}/health/live", h.port);
    let old = https_client()
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    let err = old
        .get(&url)
        .send()
        .await
        .expect_err("a TLS 1.2 client must be refused");
    eprintln!("TLS 1.2 client: {err:?}");
    let new = https_client().build().unwrap();
    let resp = new
        .get(&url)
        .send()
        .await
        .expect("a TLS 1.3 client is served");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn tls12_is_accepted_by_default() {
    let (h, _) = tls_wsgi("tls12", &[]);
    let url = format!("https://127.0.0.1:{}/health/live", h.port);
    let old = https_client()
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert_eq!(old.get(&url).send().await.unwrap().status(), 200);
}

#[test]
fn http2_over_tls_with_curl() {
    let (h, _) = tls_wsgi("h2", &[]);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg(format!("https://127.0.0.1:{}/health/live", h.port))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "2 200", "curl --http2 did not negotiate HTTP/2");
}

#[tokio::test]
async fn sighup_rotates_the_certificate_under_load() {
    let (h, old_der) = tls_wsgi("rotate", &[]);
    let url = format!("https://127.0.0.1:{}/health/live", h.port);
    let peer = |resp: &reqwest::Response| {
        resp.extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .map(<[u8]>::to_vec)
            .expect("the peer certificate")
    };

    // Load: keep-alive clients and clients opening a new connection each time.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for i in 0..8 {
        let client = if i % 2 == 0 {
            https_client().build().unwrap()
        } else {
            https_client().pool_max_idle_per_host(0).build().unwrap()
        };
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failed.lock().unwrap().push(format!("{e:?}")),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // certbot writes the new files, then the operator (or its hook) sends SIGHUP.
    let new_der = certificate(&h.dir, "next");
    std::fs::rename(h.dir.join("next.key"), h.dir.join("tls.key")).unwrap();
    std::fs::rename(h.dir.join("next.crt"), h.dir.join("tls.crt")).unwrap();
    h.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = https_client().pool_max_idle_per_host(0).build().unwrap();
    let resp = fresh.get(&url).send().await.unwrap();
    assert_eq!(
        peer(&resp),
        new_der,
        "a new connection still sees the old certificate"
    );
    assert_ne!(new_der, old_der);

    // A broken renewal keeps the current certificate.
    std::fs::write(h.dir.join("tls.crt"), "not a certificate").unwrap();
    h.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = fresh.get(&url).send().await.unwrap();
    assert_eq!(
        peer(&resp),
        new_der,
        "a broken file replaced the certificate"
    );

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!("{ok} requests during the rotation, {} failed", failed.len());
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok > 50, "too little load to mean anything: {ok} requests");
    let log = h.log();
    assert!(log.contains("TLS certificate reloaded"), "{log}");
    assert!(log.contains("keeping the current certificate"), "{log}");
}

/// SIGHUP puts the master config's per-request parts in force (here
/// `netapi_enable_clients`) and refuses a config that moves the master.
#[tokio::test]
async fn sighup_reloads_the_master_config() {
    let dir = temp_dir("sighup-config");
    let config = dir.join("master");
    let mut cfg = absent_master_config(&dir);
    let port = free_port();
    let mut section = serde_norway::Mapping::new();
    section.insert("port".into(), port.into());
    section.insert("host".into(), "127.0.0.1".into());
    cfg.insert("rest_wsgi".into(), section.into());
    let h = Halite::start_in(dir, &cfg, port);
    let wheel = serde_json::json!([{"client": "wheel", "fun": "key.list_all",
        "eauth": "auto", "username": "saltdev", "password": "x"}]);
    let c = reqwest::Client::new();
    let post = || c.post(h.url("/")).json(&wheel).send();
    let r = post().await.expect("answers");
    assert_eq!(r.status(), 400, "wheel is not enabled yet");
    assert!(r.text().await.unwrap().contains("Client disabled"));

    let wait_log = |needle: &str, times: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.log().matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "no '{needle}' in the log:\n{}",
                h.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    cfg.insert(
        "netapi_enable_clients".into(),
        serde_norway::from_str("[local, wheel]").unwrap(),
    );
    std::fs::write(&config, serde_norway::to_string(&cfg).unwrap()).unwrap();
    h.signal("HUP");
    wait_log("master config reloaded", 1);
    // Enabled now: the call goes on to the master, which is not there.
    assert_eq!(post().await.expect("answers").status(), 503);

    // A config that moves the master is refused whole; the current one stays.
    cfg.insert("ret_port".into(), free_port().into());
    cfg.insert(
        "netapi_enable_clients".into(),
        serde_norway::from_str("[local]").unwrap(),
    );
    std::fs::write(&config, serde_norway::to_string(&cfg).unwrap()).unwrap();
    h.signal("HUP");
    wait_log("moves the master", 1);
    assert!(h.log().contains("ret_port"), "{}", h.log());
    assert_eq!(post().await.expect("answers").status(), 503);

    // A config that does not load keeps the current one too.
    std::fs::write(&config, "rest_wsgi: [unterminated").unwrap();
    h.signal("HUP");
    wait_log("does not load", 1);
    assert_eq!(post().await.expect("answers").status(), 503);
}

#[test]
fn sigterm_exits_zero_and_stops_accepting() {
    let mut h = wsgi("sigterm", &[]);
    h.signal("TERM");
    let status = h.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}; log:\n{}", h.log());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", h.port)).is_err(),
        "still accepting after SIGTERM"
    );
}

/// Every metric the example dashboard, the alert examples and the
/// operator's guide name exists, so the docs cannot drift from the code.
#[tokio::test]
async fn docs_name_only_metrics_that_exist() {
    let h = wsgi("docs-metrics", &[]);
    let base = format!("http://127.0.0.1:{}", h.port);
    let http = reqwest::Client::new();
    // A Salt call (the master is absent: it fails, which is a sample too).
    let resp = http
        .post(&base)
        .json(
            &serde_json::json!([{"client": "local", "tgt": "*", "fun": "test.ping",
            "eauth": "auto", "username": "u", "password": "p"}]),
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let declared: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let mut checked = 0;
    for doc in ["grafana-dashboard.json", "prometheus.yml", "OPERATIONS.md"] {
        let body = std::fs::read_to_string(root.join(doc)).expect("the doc exists");
        for (i, _) in body.match_indices("halite_") {
            let name: String = body[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.ends_with('_') {
                continue;
            }
            let family = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                declared.contains(&family) || declared.contains(&name.as_str()),
                "{doc} names {name}, which /metrics does not declare:\n{text}"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "only {checked} metric names found in the docs"
    );
}
