//! `bus-rate`: how many bus events salt-client's one subscription decodes
//! and dispatches per CPU-second.
//!
//! Point it at a `null-master --firehose-secs N` (the sustained stream of
//! 10,000-minion jobs, progress and unrelated events). It runs the event bus
//! on a single-threaded runtime by default (so CPU-seconds are one core's;
//! `--threads 2` lets the waiter run beside the bus), keeps one
//! waiter on the firehose's jid receiving every return (counting them by
//! tag, so that it keeps up with a stream that never ends), and one whole-stream
//! subscriber that never reads (a stalled `/events` client), then prints a
//! JSON line: events, seconds, process CPU seconds, events per CPU-second,
//! returns the waiter received, and whether it lost events (progress events
//! beyond its queue may be dropped by design) or returns (must not be).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use salt_client::events::{Endpoint, EventBus};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Measure event-bus decode and dispatch rate against null-master --firehose-secs")]
struct Args {
    /// null-master's sock_dir (`<dir>/sock`).
    #[arg(long)]
    sock_dir: PathBuf,
    /// Seconds to measure (after the first event).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Runtime worker threads: 1 runs the bus and the waiter on one core
    /// (the waiter then only runs when the bus yields); 2 lets the waiter
    /// run beside the bus.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The jid the firehose repeats.
    #[arg(long, default_value = "20260101999000000000")]
    jid: String,
}

/// utime + stime of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bus-rate: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let bus = EventBus::start_at(
            Endpoint::Unix(args.sock_dir.join("master_event_pub.ipc")),
            Endpoint::Unix(args.sock_dir.join("master_event_pull.ipc")),
        );
        let _stalled = bus.subscribe_all();
        let mut waiter = bus.subscribe_jid(&args.jid);
        if bus.wait_connected(Duration::from_secs(10)).await.is_err() {
            eprintln!("bus-rate: cannot subscribe at {}", args.sock_dir.display());
            return std::process::ExitCode::FAILURE;
        }
        // Start counting at the first event.
        let give_up = Instant::now() + Duration::from_secs(10);
        while bus.events_seen() == 0 {
            if Instant::now() > give_up {
                eprintln!(
                    "bus-rate: no event within 10 s (is null-master running --firehose-secs?)"
                );
                return std::process::ExitCode::FAILURE;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (e0, c0, t0) = (bus.events_seen(), cpu_seconds(), Instant::now());
        let end = tokio::time::Instant::now() + Duration::from_secs(args.secs);
        let mut returns = 0u64;
        loop {
            tokio::select! {
                ev = waiter.recv() => match ev {
                    // Counted by tag: the waiter must keep up with a
                    // stream that never ends (one job's returns, again and
                    // again), so it does no work of its own per return.
                    Some(ev) if ev.tag.contains("/ret/") => returns += 1,
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(end) => break,
            }
        }
        let (events, cpu, wall) = (
            bus.events_seen() - e0,
            cpu_seconds() - c0,
            t0.elapsed().as_secs_f64(),
        );
        println!(
            "{}",
            json!({
                "events": events,
                "wall_s": wall,
                "cpu_s": cpu,
                "events_per_s": events as f64 / wall,
                "events_per_cpu_s": if cpu > 0.0 { events as f64 / cpu } else { 0.0 },
                "waiter_returns": returns,
                "waiter_lost_events": waiter.lost_events(),
                "waiter_lost_returns": waiter.lost_returns(),
            })
        );
        std::process::ExitCode::SUCCESS
    })
}
