//! `salt-raw`: the ceiling client. Runs the same lowstates the HTTP benchmarks
//! send, straight through the salt-client library (request channel + event
//! bus), with no HTTP in between, at a given concurrency for a given time or
//! count. Prints one JSON object.
//!
//! `--low` is a lowstate object as an HTTP client would POST it
//! (`{"client": "local_async", "tgt": "*", "fun": "test.ping", "eauth": ...}`);
//! the pseudo-client `login` calls `mk_token` with its credentials.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::{Check, Stats};
use clap::Parser;
use salt_client::clients::{Lowstate, Netapi, Output};
use salt_client::config::MasterConfig;
use salt_client::master::Master;
use serde_json::{json, Value as Json};

#[derive(Debug, Parser)]
#[command(about = "Raw salt-client ceiling: lowstates straight to the master, no HTTP")]
struct Args {
    /// Master config (default: $SALT_MASTER_CONFIG, then /etc/salt/master).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// The lowstate object to run (client login = mk_token).
    #[arg(long)]
    low: String,
    /// Requests in flight at once.
    #[arg(short, long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds to keep sending (ignored with --requests).
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Total requests instead of a duration.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// What a good result contains: none, jid, true:N, objects:N, key:NAME.
    #[arg(long, default_value = "none")]
    check: Check,
    /// Label copied into the report.
    #[arg(long, default_value = "")]
    label: String,
}

struct Job {
    netapi: Netapi,
    low: Lowstate,
    check: Check,
    deadline: Option<Instant>,
    budget: Option<u64>,
    issued: AtomicU64,
}

impl Job {
    fn claim(&self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        self.budget.is_none_or(|b| n < b)
    }

    async fn call(&self) -> Result<Json, String> {
        if self.low.get("client").and_then(Json::as_str) == Some("login") {
            let s = |k: &str| self.low.get(k).and_then(Json::as_str).unwrap_or("");
            let master = self.netapi.master();
            return match salt_client::auth::mk_token(
                master,
                s("eauth"),
                s("username"),
                s("password"),
                &Default::default(),
            )
            .await
            {
                Ok(Some(tok)) => Ok(Json::Object(tok)),
                Ok(None) => Err("mk_token rejected the credentials".into()),
                Err(e) => Err(e.to_string()),
            };
        }
        match self.netapi.run(self.low.clone()).await {
            Ok(Output::One(v)) => Ok(v),
            Ok(Output::Many(v)) => Ok(Json::Array(v)),
            Err(e) => Err(e.to_string()),
        }
    }
}

async fn worker(job: Arc<Job>) -> Stats {
    let mut stats = Stats::default();
    while job.claim() {
        let t0 = Instant::now();
        let res = job.call().await;
        let took = t0.elapsed();
        match res {
            Ok(v) => {
                stats.latencies_us.push(took.as_micros() as u64);
                match job.check.result(&v) {
                    Ok(()) => stats.ok += 1,
                    Err(e) => {
                        stats.incomplete += 1;
                        stats.note(e);
                    }
                }
            }
            Err(e) => {
                stats.failed += 1;
                stats.note(e);
            }
        }
    }
    stats
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let low: Lowstate = match serde_json::from_str::<Json>(&args.low) {
        Ok(Json::Object(m)) => m,
        _ => {
            eprintln!("salt-raw: --low must be a JSON object");
            return std::process::ExitCode::from(2);
        }
    };
    let config = match MasterConfig::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("salt-raw: cannot load the master config: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("salt-raw: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let out = runtime.block_on(async {
        let master = Master::new(config);
        if let Err(e) = master.bus().wait_connected(Duration::from_secs(10)).await {
            return Err(e.to_string());
        }
        let job = Arc::new(Job {
            netapi: Netapi::new(master),
            low,
            check: args.check.clone(),
            deadline: if args.requests.is_some() {
                None
            } else {
                Some(Instant::now() + Duration::from_secs_f64(args.duration))
            },
            budget: args.requests,
            issued: AtomicU64::new(0),
        });
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..args.concurrency.max(1) {
            set.spawn(worker(job.clone()));
        }
        let mut total = Stats::default();
        while let Some(r) = set.join_next().await {
            if let Ok(s) = r {
                total.merge(s);
            }
        }
        Ok((total, started.elapsed()))
    });
    match out {
        Ok((stats, elapsed)) => {
            let report = stats.report(
                elapsed,
                json!({
                    "tool": "salt-raw",
                    "label": args.label,
                    "concurrency": args.concurrency,
                    "check": format!("{:?}", args.check),
                }),
            );
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("salt-raw: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
