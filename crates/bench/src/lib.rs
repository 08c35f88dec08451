//! Shared pieces of the benchmark binaries: latency statistics, JSON
//! reports and response-body checks.

use std::time::Duration;

use serde_json::{json, Value as Json};

/// Latencies and outcome counts of one run.
#[derive(Debug, Default)]
pub struct Stats {
    /// Latency of every completed request, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Requests that answered as expected.
    pub ok: u64,
    /// Transport errors, timeouts and unexpected status codes.
    pub failed: u64,
    /// Answered successfully but the body lacks returns (missing minions,
    /// non-true values, no jid ...).
    pub incomplete: u64,
    /// A few failure messages, for the report.
    pub samples: Vec<String>,
}

impl Stats {
    /// Fold another worker's stats into this one.
    pub fn merge(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        self.failed += other.failed;
        self.incomplete += other.incomplete;
        for s in other.samples {
            if self.samples.len() < 5 && !self.samples.contains(&s) {
                self.samples.push(s);
            }
        }
    }

    /// Remember a failure message (a handful at most).
    pub fn note(&mut self, msg: String) {
        if self.samples.len() < 5 && !self.samples.contains(&msg) {
            self.samples.push(msg);
        }
    }

    /// The JSON report: throughput counts only requests that completed.
    pub fn report(mut self, elapsed: Duration, extra: Json) -> Json {
        self.latencies_us.sort_unstable();
        let n = self.latencies_us.len();
        let pct = |p: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            let idx = ((p / 100.0) * n as f64).ceil() as usize;
            self.latencies_us[idx.clamp(1, n) - 1] as f64 / 1000.0
        };
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mean = if n == 0 {
            0.0
        } else {
            self.latencies_us.iter().sum::<u64>() as f64 / n as f64 / 1000.0
        };
        let mut out = json!({
            "requests": self.ok + self.failed + self.incomplete,
            "ok": self.ok,
            "failed": self.failed,
            "incomplete": self.incomplete,
            "elapsed_s": round3(secs),
            "rps": round3(n as f64 / secs),
            "ok_rps": round3(self.ok as f64 / secs),
            "p50_ms": round3(pct(50.0)),
            "p90_ms": round3(pct(90.0)),
            "p99_ms": round3(pct(99.0)),
            "max_ms": round3(pct(100.0)),
            "mean_ms": round3(mean),
            "errors": self.samples,
        });
        if let (Json::Object(o), Json::Object(e)) = (&mut out, extra) {
            o.extend(e);
        }
        out
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What a successful answer must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Any 2xx answer.
    None,
    /// A job id (`local_async`).
    Jid,
    /// Exactly `n` minions, each `true` (`local` test.ping).
    True(usize),
    /// Exactly `n` minions, each a non-empty object (`grains.items`).
    Objects(usize),
    /// The result has this key (`args` for runner test.arg, `data` for
    /// wheel, `token` for login).
    Key(String),
}

impl std::str::FromStr for Check {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        let n = || {
            arg.parse::<usize>()
                .map_err(|_| format!("bad count in check '{s}'"))
        };
        Ok(match kind {
            "none" => Check::None,
            "jid" => Check::Jid,
            "true" => Check::True(n()?),
            "objects" => Check::Objects(n()?),
            "key" if !arg.is_empty() => Check::Key(arg.to_owned()),
            _ => {
                return Err(format!(
                    "unknown check '{s}' (none, jid, true:N, objects:N, key:NAME)"
                ))
            }
        })
    }
}

impl Check {
    /// Check one result (an element of `return`, or a raw client result).
    /// `Err` says what is missing.
    pub fn result(&self, r: &Json) -> Result<(), String> {
        match self {
            Check::None => Ok(()),
            Check::Jid => match r.get("jid").and_then(Json::as_str) {
                Some(j) if !j.is_empty() => Ok(()),
                _ => Err(format!("no jid in {}", short(r))),
            },
            Check::True(n) | Check::Objects(n) => {
                let Some(m) = r.as_object() else {
                    return Err(format!("not an object: {}", short(r)));
                };
                let good = m
                    .values()
                    .filter(|v| match self {
                        Check::True(_) => **v == Json::Bool(true),
                        _ => v.as_object().is_some_and(|o| !o.is_empty()),
                    })
                    .count();
                if good == *n && m.len() == *n {
                    Ok(())
                } else {
                    Err(format!("{good} good of {} returns, want {n}", m.len()))
                }
            }
            Check::Key(k) => {
                if r.get(k).is_some() {
                    Ok(())
                } else {
                    Err(format!("no '{k}' in {}", short(r)))
                }
            }
        }
    }

    /// Check an HTTP body `{"return": [result]}`.
    pub fn body(&self, body: &[u8]) -> Result<(), String> {
        if *self == Check::None {
            return Ok(());
        }
        let v: Json = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
        match v
            .get("return")
            .and_then(Json::as_array)
            .and_then(|a| a.first())
        {
            Some(r) => self.result(r),
            None => Err(format!("no return list in {}", short(&v))),
        }
    }
}

/// The first 120 characters of a value, for error samples.
pub fn short(v: &Json) -> String {
    let s = v.to_string();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks() {
        let c: Check = "true:3".parse().expect("parses");
        assert!(c
            .body(br#"{"return": [{"a": true, "b": true, "c": true}]}"#)
            .is_ok());
        assert!(c
            .body(br#"{"return": [{"a": true, "b": false, "c": true}]}"#)
            .is_err());
        assert!(c.body(br#"{"return": [{"a": true, "b": true}]}"#).is_err());
        let j: Check = "jid".parse().expect("parses");
        assert!(j
            .body(br#"{"return": [{"jid": "2026", "minions": []}]}"#)
            .is_ok());
        assert!(j.body(br#"{"return": [{}]}"#).is_err());
        let k: Check = "key:token".parse().expect("parses");
        assert!(k.body(br#"{"return": [{"token": "ab"}]}"#).is_ok());
        assert!(k.body(br#"{"return": [{"x": 1}]}"#).is_err());
        let o: Check = "objects:2".parse().expect("parses");
        assert!(o
            .body(br#"{"return": [{"a": {"k": 1}, "b": {"k": 2}}]}"#)
            .is_ok());
        assert!(o
            .body(br#"{"return": [{"a": {"k": 1}, "b": {}}]}"#)
            .is_err());
        assert!("bogus".parse::<Check>().is_err());
    }

    #[test]
    fn percentiles() {
        let s = Stats {
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            ok: 100,
            ..Default::default()
        };
        let r = s.report(Duration::from_secs(1), json!({}));
        assert_eq!(r["p50_ms"], json!(50.0));
        assert_eq!(r["p99_ms"], json!(99.0));
        assert_eq!(r["rps"], json!(100.0));
    }
}
