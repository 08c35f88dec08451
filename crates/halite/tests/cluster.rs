//! Two halites in front of a Salt master cluster, behind HAProxy: the
//! cluster lab (`LAB_TOPOLOGY=cluster scripts/lab start`, then
//! `eval "$(LAB_TOPOLOGY=cluster scripts/lab env)"`; scripts/test does this).
//!
//! Every call goes through the HTTP balancer unless a test needs one halite;
//! the balancer names the halite that answered in `X-Halite-Backend`
//! (`h0`, `h1`), so the tests count where calls went.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value as Json};

#[path = "support/mod.rs"]
mod support;
use support::login;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the cluster lab; run \
             `LAB_TOPOLOGY=cluster scripts/lab start && eval \"$(LAB_TOPOLOGY=cluster scripts/lab env)\"` \
             (scripts/test does this)"
        )
    })
}

fn balancer() -> String {
    env("CLUSTER_CHERRYPY_URL")
}

fn halite(i: usize) -> String {
    env(&format!("CLUSTER_H{i}_CHERRYPY_URL"))
}

fn http() -> reqwest::Client {
    support::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// The `i`-th call of the mixed workload: local, local_async, runner, wheel.
fn mixed(i: usize) -> Json {
    match i % 4 {
        0 => json!({"client": "local", "tgt": "*", "fun": "test.ping"}),
        1 => json!({"client": "local_async", "tgt": "*", "fun": "test.ping"}),
        2 => json!({"client": "runner", "fun": "test.arg", "arg": [i]}),
        _ => json!({"client": "wheel", "fun": "key.list_all"}),
    }
}

/// Whether `body` is the right answer to `mixed(i)`.
fn answer_ok(i: usize, body: &Json) -> bool {
    let r = &body["return"][0];
    match i % 4 {
        0 => r.as_object().is_some_and(|m| !m.is_empty()),
        1 => r["jid"].as_str().is_some_and(|j| j.len() == 20),
        2 => r["args"] == json!([i]),
        _ => r["data"]["return"]["minions"].is_array(),
    }
}

struct Answer {
    status: u16,
    backend: String,
    body: Json,
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    chunk: &Json,
) -> reqwest::Result<Answer> {
    let resp = http
        .post(format!("{base}/"))
        .header("X-Auth-Token", token)
        .header("Accept", "application/json")
        .json(&json!([chunk]))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let backend = resp
        .headers()
        .get("x-halite-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.json().await.unwrap_or(Json::Null);
    Ok(Answer {
        status,
        backend,
        body,
    })
}

async fn wait_ready(http: &reqwest::Client, base: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/health/ready")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(start.elapsed() < limit, "{base} not ready within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Both halites ready, and the balancer's checks have seen it (2 checks).
async fn wait_both_ready(http: &reqwest::Client) {
    for i in 0..2 {
        wait_ready(http, &halite(i), Duration::from_secs(120)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
}

fn lab_command(name: &str) {
    let cmd = env(name);
    let out = Command::new("bash")
        .arg("-c")
        .arg(&cmd)
        .output()
        .expect("run a lab command");
    assert!(
        out.status.success(),
        "{cmd} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One test, in order: the failover part stops a master of the shared lab,
/// so it runs after the part that needs the cluster whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_balanced_then_failover() {
    let start = Instant::now();
    balanced_calls_shared_tokens_jobs_events_and_logout().await;
    eprintln!("balanced part done at {:?}", start.elapsed());
    failover_when_a_master_dies_under_load().await;
    eprintln!("failover part done at {:?}", start.elapsed());
}

async fn balanced_calls_shared_tokens_jobs_events_and_logout() {
    let http = http();
    wait_both_ready(&http).await;
    let token = login(&http, &balancer(), "saltdev").await;

    // The token (minted by one master) works on each halite, so on each master.
    for i in 0..2 {
        let a = call(&http, &halite(i), &token, &mixed(2)).await.unwrap();
        assert_eq!(a.status, 200, "the token on h{i}: {}", a.body);
    }

    // A job published through h0 is found through h1, and h1's event
    // stream sees its returns (the cluster forwards them).
    let events = http
        .get(format!("{}/events", halite(1)))
        .header("X-Auth-Token", &token)
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .expect("GET /events on h1");
    assert_eq!(events.status(), 200);
    let mut events = events.bytes_stream();
    let a = call(
        &http,
        &halite(0),
        &token,
        &json!({"client": "local_async", "tgt": "*", "fun": "test.arg", "arg": ["cluster"]}),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let jid = a.body["return"][0]["jid"]
        .as_str()
        .expect("a jid")
        .to_owned();
    let minions: Vec<String> = env("CLUSTER_MINIONS")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut seen_returns = std::collections::BTreeSet::new();
    let mut text = String::new();
    // Generous: on a loaded machine the minions may still be working
    // through the jobs of an earlier test.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen_returns.len() < minions.len() {
        let chunk = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| {
                panic!("h1's /events saw returns of {jid} from only {seen_returns:?}")
            })
            .expect("the stream goes on")
            .expect("stream bytes");
        text.push_str(&String::from_utf8_lossy(&chunk));
        for m in &minions {
            if text.contains(&format!("salt/job/{jid}/ret/{m}")) {
                seen_returns.insert(m.clone());
            }
        }
    }
    drop(events);

    let start = Instant::now();
    loop {
        let resp = http
            .get(format!("{}/jobs/{jid}", halite(1)))
            .header("X-Auth-Token", &token)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Json = resp.json().await.unwrap();
        let result = &body["info"][0]["Result"];
        if minions
            .iter()
            .all(|m| result[m]["return"]["args"] == json!(["cluster"]))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "/jobs/{jid} on h1: {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let a = call(
        &http,
        &halite(1),
        &token,
        &json!({"client": "runner", "fun": "jobs.lookup_jid", "jid": jid}),
    )
    .await
    .unwrap();
    for m in &minions {
        assert_eq!(
            a.body["return"][0][m]["args"],
            json!(["cluster"]),
            "jobs.lookup_jid {jid} on h1: {}",
            a.body
        );
    }

    // 60 mixed calls through the balancer, 8 at a time: all succeed, on
    // both halites. (After the job above: they leave the minions a backlog.)
    let calls = 60;
    let answers: Vec<(usize, Answer)> = futures_util::stream::iter(0..calls)
        .map(|i| {
            let (http, token, base) = (http.clone(), token.clone(), balancer());
            async move {
                let a = call(&http, &base, &token, &mixed(i))
                    .await
                    .unwrap_or_else(|e| panic!("call {i} got no answer: {e}"));
                (i, a)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut by_backend: BTreeMap<String, usize> = BTreeMap::new();
    for (i, a) in &answers {
        assert_eq!(a.status, 200, "call {i} ({}): {}", mixed(*i), a.body);
        assert!(
            answer_ok(*i, &a.body),
            "call {i} ({}): {}",
            mixed(*i),
            a.body
        );
        *by_backend.entry(a.backend.clone()).or_default() += 1;
    }
    eprintln!("{calls} mixed calls through the balancer: {by_backend:?}");
    assert_eq!(by_backend.len(), 2, "answered by {by_backend:?}");
    for (b, n) in &by_backend {
        assert!(
            *n >= calls * 2 / 5,
            "round-robin: halite {b} answered only {n} of {calls}"
        );
    }

    // /logout through h1 revokes the token on both.
    let resp = http
        .post(format!("{}/logout", halite(1)))
        .header("X-Auth-Token", &token)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(body["return"], "Your token has been cleared", "{body}");
    for i in 0..2 {
        let a = call(&http, &halite(i), &token, &mixed(2)).await.unwrap();
        assert_eq!(a.status, 401, "the revoked token on h{i}: {}", a.body);
    }
}

#[derive(Default, Debug)]
struct Tally {
    sent: usize,
    ok: usize,
    unavailable: usize,
    /// Of the 503s: those naming the jid of a job that was published (a
    /// synchronous call interrupted by its master's death).
    unavailable_with_jid: usize,
    /// Of the 503s: those from h1, whose master stayed up.
    unavailable_from_h1: usize,
    /// Answered by a halite with Salt's own failure: a 200 whose job failed
    /// inside the master, or a 500 (seen with Salt 3008.5 on the surviving
    /// member while its peer is down: `wheel` jobs fail with an exception
    /// raised before the job starts).
    salt_failed: usize,
    /// Answered by a halite with 504, within the call's own time: the
    /// master did not answer, or a runner job's return never reached the
    /// bus (see [`RUNNER_TIMEOUT_S`]).
    timed_out: usize,
    /// Answered, but not by a halite (the balancer's own 502/503/504).
    balancer: usize,
    lost: usize,
    by_backend: BTreeMap<String, usize>,
}

/// How often each of the failover test's 6 clients starts a call. Half the
/// calls publish a job to every minion; unpaced, the clients published
/// about 14 jobs a second, several times what the lab's three minions run
/// on 2 CPUs, and minutes later the minions were still working through
/// the backlog, so that no call got its returns in time. Every 2 s (it was
/// 1.5 s) since the test runs beside the other lab tests.
const CALL_PERIOD: Duration = Duration::from_millis(2000);

/// The failover workload's runner calls carry a `timeout` (seconds), as a
/// careful client's do. Once in CI (1 run of ~20), two runner calls went
/// through the balancer while m0 stopped and had no answer within the test
/// client's 120 s; it did not happen again in 16 stop/start cycles of
/// mixed load here, and the cause was not found. Halite waits for a
/// runner's return until the call's `timeout` (`rest_timeout`, 300 s, by
/// default) and says so in its log; with this `timeout` such a call is
/// answered (504) inside the client's 120 s, so that a call without an
/// answer is one halite failed to end, and the log lines are shown.
const RUNNER_TIMEOUT_S: u64 = 60;

/// `mixed(i)`, with the failover workload's runner `timeout`.
fn failover_call(i: usize) -> Json {
    let mut chunk = mixed(i);
    if chunk["client"] == "runner" {
        chunk["timeout"] = json!(RUNNER_TIMEOUT_S);
    }
    chunk
}

/// The WARN and ERROR lines of both halites' logs (the last `max`), for a
/// failure's report: CI shows the test's output only.
fn halite_log_warnings(max: usize) -> String {
    let dir = env("CLUSTER_LAB_DIR");
    let mut out = String::new();
    for i in 0..2 {
        let path = format!("{dir}/out/halite-{i}.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        out += &format!(
            "--- h{i} ({path}): {} WARN/ERROR lines, the last {max}:\n",
            lines.len()
        );
        for l in &lines[lines.len().saturating_sub(max)..] {
            out += l;
            out.push('\n');
        }
    }
    out
}

/// Master m0 stops 8 s into a 45 s mixed load through the balancer and
/// comes back at 30 s: every request is answered (200, or 503 while h0's
/// master is gone and before the balancer drains h0), and afterwards the
/// traffic flows through both halites again, and jobs published through
/// either member reach every minion.
async fn failover_when_a_master_dies_under_load() {
    let http = http();
    wait_both_ready(&http).await;
    let token = login(&http, &balancer(), "saltdev").await;
    let tally = std::sync::Arc::new(std::sync::Mutex::new(Tally::default()));
    let start = Instant::now();
    let run_for = Duration::from_secs(45);
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (http, token, tally) = (http.clone(), token.clone(), tally.clone());
            tokio::spawn(async move {
                let mut i = w;
                let mut pace = tokio::time::interval(CALL_PERIOD);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while start.elapsed() < run_for {
                    pace.tick().await;
                    let chunk = failover_call(i);
                    let sent_at = start.elapsed();
                    let r = call(&http, &balancer(), &token, &chunk).await;
                    let mut t = tally.lock().unwrap();
                    t.sent += 1;
                    match r {
                        Ok(a) if a.status == 200 && answer_ok(i, &a.body) => {
                            t.ok += 1;
                            *t.by_backend.entry(a.backend).or_default() += 1;
                        }
                        Ok(a) if a.backend.is_empty() => {
                            eprintln!("call {chunk}: {} from the balancer: {}", a.status, a.body);
                            t.balancer += 1;
                        }
                        Ok(a) if a.status == 504 => {
                            eprintln!(
                                "call {chunk} at {sent_at:.1?}: 504 from {} after {:.1?}: {}",
                                a.backend,
                                start.elapsed() - sent_at,
                                a.body
                            );
                            t.timed_out += 1;
                        }
                        Ok(a) if a.status == 503 => {
                            t.unavailable += 1;
                            let text = a.body.to_string();
                            if text.contains("jobs.lookup_jid (jid 20") {
                                t.unavailable_with_jid += 1;
                            }
                            if a.backend == "h1" {
                                eprintln!("call {chunk}: 503 from h1: {text}");
                                t.unavailable_from_h1 += 1;
                            }
                        }
                        Ok(a) => {
                            let text = a.body.to_string();
                            eprintln!(
                                "call {chunk}: {} from {}: {}",
                                a.status,
                                a.backend,
                                &text[..text.len().min(300)]
                            );
                            t.salt_failed += 1;
                        }
                        Err(e) => {
                            eprintln!(
                                "call {chunk} at {sent_at:.1?}: no answer after {:.1?}: {e:?}",
                                start.elapsed() - sent_at
                            );
                            t.lost += 1;
                        }
                    }
                    drop(t);
                    i += 6;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(8)).await;
    let stopping = Instant::now();
    tokio::task::spawn_blocking(|| lab_command("CLUSTER_M0_STOP"))
        .await
        .unwrap();
    eprintln!("m0 stopped in {:?}", stopping.elapsed());
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(start.elapsed())).await;
    tokio::task::spawn_blocking(|| lab_command("CLUSTER_M0_START"))
        .await
        .unwrap();
    eprintln!("m0 started again at {:?}", start.elapsed());
    for w in workers {
        w.await.expect("a load worker");
    }
    let t = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!(
        "failover: sent {}, succeeded {}, 503 {} ({} naming a jid, {} from h1), failed inside Salt {}, \
         runner timed out {}, balancer errors {}, lost {}; succeeded by halite {:?}",
        t.sent,
        t.ok,
        t.unavailable,
        t.unavailable_with_jid,
        t.unavailable_from_h1,
        t.salt_failed,
        t.timed_out,
        t.balancer,
        t.lost,
        t.by_backend
    );
    if t.lost + t.timed_out > 0 {
        eprintln!("{}", halite_log_warnings(30));
    }
    assert_eq!(t.lost, 0, "requests without an answer: {t:?}");
    assert!(t.timed_out <= t.sent / 20, "too many time-outs: {t:?}");
    assert_eq!(
        t.balancer, 0,
        "requests the balancer could not place: {t:?}"
    );
    assert_eq!(
        t.sent,
        t.ok + t.unavailable + t.salt_failed + t.timed_out + t.balancer + t.lost,
        "{t:?}"
    );
    assert!(t.ok > t.sent / 2, "{t:?}");

    // After m0's return, traffic flows through both halites again.
    wait_both_ready(&http).await;
    let mut after: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..20 {
        let a = call(&http, &balancer(), &token, &mixed(2 + 4 * i))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "after m0 returned: {}", a.body);
        *after.entry(a.backend).or_default() += 1;
    }
    eprintln!("after m0 returned: {after:?}");
    assert_eq!(after.len(), 2, "both halites answer again: {after:?}");

    // A job published through either member, the restarted one included,
    // reaches every minion again (the minions moved to m1 while m0 was
    // down, so m0 hands its publishes to its peer).
    let minions = env("CLUSTER_MINIONS").split_whitespace().count();
    for i in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = call(&http, &halite(i), &token, &mixed(0)).await.unwrap();
            assert_eq!(
                a.status, 200,
                "after m0 returned, local through h{i}: {}",
                a.body
            );
            let returned = a.body["return"][0]
                .as_object()
                .map_or(0, |m| m.values().filter(|v| **v == json!(true)).count());
            if returned == minions {
                eprintln!("after m0 returned, local through h{i}: every minion returned");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after m0 returned, local through h{i}: {returned} of {minions} minions returned within 60 s: {}",
                a.body
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}
