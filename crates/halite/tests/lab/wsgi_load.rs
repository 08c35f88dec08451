//! 200 concurrent synchronous `local` calls through the rest_wsgi surface:
//! every one answered in full, with bounded memory.

use crate::support::*;
use serde_json::json;

const CONCURRENT: usize = 200;
/// Generous: unbounded growth fails, normal use (~tens of MiB) passes.
const RSS_SANITY_BOUND_KIB: u64 = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_local_calls() {
    // 200 minion jobs at once: a test beside this one would see its minions
    // miss Salt's timeout.
    let _alone = alone();
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let before = h.rss_kib();
    let url = format!("{}/", h.wsgi_url());
    // One connection per request: 200 requests truly in parallel, each for
    // one minion, in turn (every minion runs a third of the jobs, one Python
    // process each: a lab job per call, not three, is what keeps this test
    // a test of halite rather than of the minions). The `timeout` is generous
    // because those jobs take a minute on a loaded machine; LocalClient
    // returns as soon as the minion answered, so a healthy lab is fast.
    let mut tasks = Vec::with_capacity(CONCURRENT);
    for i in 0..CONCURRENT {
        let minion = lab.minions[i % lab.minions.len()].clone();
        let body = serde_json::to_vec(&json!([low(
            &hal("load"),
            json!({"client": "local", "tgt": minion, "fun": "test.ping", "timeout": 300})
        )]))
        .unwrap();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(std::time::Duration::from_secs(900))
            .build()
            .unwrap();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .expect("send");
            (minion, Reply::from(r).await)
        }));
    }
    let mut failures = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (minion, r) = t.await.expect("request task");
        let ok = r.status == 200 && r.json()["return"] == json!([{ minion: true }]);
        if !ok {
            failures.push(format!("#{i}: {} {}", r.status, r.text()));
        }
    }
    let peak = h.peak_rss_kib();
    let after = h.rss_kib();
    eprintln!(
        "{CONCURRENT} concurrent local test.ping, one minion each: halite RSS {before} KiB before, peak (VmHWM) {peak} KiB ({:.1} MiB), {after} KiB after",
        peak as f64 / 1024.0
    );
    assert!(
        failures.is_empty(),
        "{} of {CONCURRENT} calls did not return their minion true:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        peak < RSS_SANITY_BOUND_KIB,
        "halite peak RSS {peak} KiB is beyond the sanity bound {RSS_SANITY_BOUND_KIB} KiB"
    );
    let m = h.metrics("rest_wsgi").await;
    assert_eq!(
        m.get("halite_job_waiters"),
        Some(&0.0),
        "waiters left behind: {m:?}"
    );
}
