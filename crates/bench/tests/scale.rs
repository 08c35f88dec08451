//! Fleet scale against `null-master` (spawned): a synchronous `local` call
//! on 10,000 simulated minions gets every return, on a bus that also
//! carries unrelated events and a whole-stream subscriber that never reads.
//! No timing is asserted: the call's `timeout` is far beyond what a correct
//! gathering needs, and the test checks the answer, not the clock.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use salt_client::clients::{Netapi, Output};
use salt_client::config::MasterConfig;
use salt_client::master::Master;
use serde_json::{json, Value as Json};

/// A spawned null-master, killed on drop.
struct NullMaster {
    child: Child,
    dir: PathBuf,
}

impl Drop for NullMaster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

async fn spawn_null_master(minions: usize, noise: usize) -> (NullMaster, Master) {
    let dir = std::env::temp_dir().join(format!(
        "halite-scale-{}-{}",
        std::process::id(),
        uuid_like()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("master");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_null-master"))
        .args(["--port", &port.to_string(), "--dir"])
        .arg(&dir)
        .args(["--minions", &minions.to_string()])
        .args(["--noise", &noise.to_string()])
        .arg("--write-config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("null-master starts");
    let nm = NullMaster { child, dir };
    // The config is written before the sockets are bound; wait for both.
    for _ in 0..500 {
        if config.exists() && nm.dir.join("sock/master_event_pub.ipc").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cfg = MasterConfig::from_file(&config).expect("null-master's config loads");
    let master = Master::new(cfg);
    master
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("null-master answers and its bus is subscribed");
    (nm, master)
}

fn uuid_like() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

fn ping_all() -> serde_json::Map<String, Json> {
    match json!({"client": "local", "tgt": "*", "fun": "test.ping",
        "eauth": "auto", "username": "saltdev", "password": "saltdev",
        // Far beyond need: only a lost return would ever wait this long
        // (and then probe, and answer it as not returned).
        "timeout": 60})
    {
        Json::Object(m) => m,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_returns_arrive_complete_on_a_noisy_bus() {
    const MINIONS: usize = 10_000;
    // Two unrelated events (another job's return, a minion start, an auth
    // event) between every two returns: 30,000 events on the bus.
    let (_nm, master) = spawn_null_master(MINIONS, 2).await;
    // A whole-stream subscriber that never reads (a stalled /events client).
    let _stalled = master.bus().subscribe_all();
    let netapi = Netapi::new(master.clone());
    let out = tokio::time::timeout(Duration::from_secs(300), netapi.run(ping_all()))
        .await
        .expect("the call ends")
        .expect("the call succeeds");
    let Output::One(Json::Object(answer)) = out else {
        panic!("not a map of returns: {out:?}");
    };
    assert_eq!(answer.len(), MINIONS, "every minion is in the answer");
    for i in 0..MINIONS {
        let id = format!("sim-{i}");
        assert_eq!(answer.get(&id), Some(&json!(true)), "return of {id}");
    }
    assert!(
        master.bus().events_seen() >= (3 * MINIONS) as u64,
        "the unrelated events went through the same subscription"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_gathering_yields_each_return_once() {
    const MINIONS: usize = 3_000;
    let (_nm, master) = spawn_null_master(MINIONS, 1).await;
    let netapi = Netapi::new(master);
    let mut gather = netapi
        .start_local(ping_all(), None)
        .await
        .expect("published")
        .expect("minions matched");
    assert_eq!(gather.expected_minions().len(), MINIONS);
    let mut seen = std::collections::HashSet::new();
    while let Some((id, ev)) = gather.next().await {
        assert_eq!(ev.data().get("return"), Some(&json!(true)));
        assert!(seen.insert(id.clone()), "{id} yielded twice");
    }
    assert_eq!(seen.len(), MINIONS);
    let outcome = gather.finish();
    assert!(outcome.no_return.is_empty(), "{:?}", outcome.no_return);
}

/// A `WriteReturn` for `answer_with`: `"<id>": <value>` in serde_json's
/// compact text.
fn entry(out: &mut Vec<u8>, id: &str, value: &Json) {
    serde_json::to_writer(&mut *out, id).expect("a str serialises");
    out.extend_from_slice(b": ");
    serde_json::to_writer(out, value).expect("a Value serialises");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_written_as_text_holds_every_return_once() {
    const MINIONS: usize = 10_000;
    let (_nm, master) = spawn_null_master(MINIONS, 2).await;
    let netapi = Netapi::new(master);
    // Started with the writer, the bus writes every return; started
    // without, the returns that came before `answer_with` are events the
    // waiter writes, the rest written by the bus.
    for at_start in [Some(entry as salt_client::clients::WriteReturn), None] {
        let gather = netapi
            .start_local(ping_all(), at_start)
            .await
            .expect("published")
            .expect("minions matched");
        let text = tokio::time::timeout(Duration::from_secs(300), gather.answer_with(entry))
            .await
            .expect("the call ends")
            .expect("the call succeeds")
            .to_vec();
        let answer: serde_json::Map<String, Json> =
            serde_json::from_slice(&text).expect("the text is a JSON object");
        assert_eq!(answer.len(), MINIONS, "every minion is in the answer");
        for i in 0..MINIONS {
            let id = format!("sim-{i}");
            assert_eq!(answer.get(&id), Some(&json!(true)), "return of {id}");
        }
        // A key written twice would parse into one: count the entries.
        let entries = text.windows(7).filter(|w| w == b"\": true").count();
        assert_eq!(entries, MINIONS, "each minion written once");
    }
}
