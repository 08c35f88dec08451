//! halite's Prometheus metrics, kept with `prometheus-client` and served as
//! OpenMetrics text on every surface's `/metrics`.
//!
//! Names follow Prometheus conventions: `_seconds` histograms, `_total`
//! counters, unit-less gauges. Label values come from small fixed sets
//! (surface, endpoint family, lowstate client, error kind), never from the
//! request, so a hostile client cannot grow the series count.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use salt_client::master::Master;

/// Buckets of the latency histograms: 1 ms to about 2 min (a synchronous
/// `local` call waits up to the job timeout).
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.5, 14)
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Labels of an HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// `rest_wsgi` or `rest_cherrypy`.
    pub surface: &'static str,
    /// The endpoint family (`/login`, `/minions`, ...; `other` for the rest).
    pub endpoint: &'static str,
    /// `2xx`, `4xx`, ...
    pub status: &'static str,
}

/// Labels of a Salt call (one lowstate chunk).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The lowstate client (`local`, `runner`, ...; `other` when unknown).
    pub client: &'static str,
    /// `ok`, or the kind of failure (`authentication`, `timeout`, ...).
    pub outcome: &'static str,
}

/// Labels naming a surface.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SurfaceLabel {
    pub surface: &'static str,
}

/// Every metric halite keeps, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    master: MasterCollector,
    /// `halite_http_request_duration_seconds{surface,endpoint,status}`.
    pub http_duration: Family<HttpLabels, Histogram>,
    /// `halite_http_requests_in_flight`.
    pub in_flight: Gauge,
    /// `halite_salt_call_duration_seconds{client,outcome}`.
    pub call_duration: Family<CallLabels, Histogram>,
    /// `halite_salt_call_errors_total{client,outcome}`.
    pub call_errors: Family<CallLabels, Counter>,
    /// `halite_connections_open{surface}`.
    pub connections_open: Family<SurfaceLabel, Gauge>,
    /// `halite_connections_total{surface}`.
    pub connections: Family<SurfaceLabel, Counter>,
    /// `halite_connections_refused_total{surface}` (over `max_connections`).
    pub connections_refused: Family<SurfaceLabel, Counter>,
    /// `halite_logins_throttled_total`: logins answered 429.
    pub logins_throttled: Counter,
    /// `halite_event_bus_lag_seconds`: age of an event when halite read it
    /// (its `_stamp` against the clock), sampled about once a second.
    pub bus_lag: Gauge<f64, AtomicU64>,
    /// `halite_tls_reloads_total`: SIGHUP reloads that took effect.
    pub tls_reloads: Counter,
    /// `halite_tls_reload_failures_total`: SIGHUP reloads refused.
    pub tls_reload_failures: Counter,
    requests: Counter,
    errors_4xx: Counter,
    errors_5xx: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("halite");
        let m = Metrics {
            registry: Registry::default(),
            master: MasterCollector(Arc::new(OnceLock::new())),
            http_duration: Family::new_with_constructor(latency_histogram),
            in_flight: Gauge::default(),
            call_duration: Family::new_with_constructor(latency_histogram),
            call_errors: Family::default(),
            connections_open: Family::default(),
            connections: Family::default(),
            connections_refused: Family::default(),
            logins_throttled: Counter::default(),
            bus_lag: Gauge::default(),
            tls_reloads: Counter::default(),
            tls_reload_failures: Counter::default(),
            requests: Counter::default(),
            errors_4xx: Counter::default(),
            errors_5xx: Counter::default(),
        };
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of its head for streams)",
            m.http_duration.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being answered",
            m.in_flight.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered",
            m.requests.clone(),
        );
        registry.register(
            "salt_call_duration_seconds",
            "Time of one lowstate chunk, request to the master and events included",
            m.call_duration.clone(),
        );
        registry.register(
            "salt_call_errors",
            "Lowstate chunks that failed, by client and kind of failure",
            m.call_errors.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open",
            m.connections_open.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed at once because max_connections were open",
            m.connections_refused.clone(),
        );
        registry.register(
            "logins_throttled",
            "Logins refused with 429 after repeated failures",
            m.logins_throttled.clone(),
        );
        registry.register(
            "event_bus_lag_seconds",
            "Age of an event when halite read it from the bus (sampled about once a second)",
            m.bus_lag.clone(),
        );
        registry.register(
            "tls_reloads",
            "TLS certificate reloads (SIGHUP) that took effect",
            m.tls_reloads.clone(),
        );
        registry.register(
            "tls_reload_failures",
            "TLS certificate reloads (SIGHUP) refused, the old certificate kept",
            m.tls_reload_failures.clone(),
        );
        registry.register_collector(Box::new(m.master.clone()));
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Report the state of `master` (requests sent, event bus) from now on.
    /// The first master attached wins: one process talks to one master.
    pub fn attach(&self, master: &Master) {
        let _ = self.master.0.set(master.clone());
    }

    /// Count one answered HTTP request.
    pub fn observe_request(&self, labels: HttpLabels, elapsed: Duration) {
        self.requests.inc();
        match labels.status {
            "4xx" => {
                self.errors_4xx.inc();
            }
            "5xx" => {
                self.errors_5xx.inc();
            }
            _ => {}
        }
        self.http_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Count one lowstate chunk.
    pub fn observe_call(&self, labels: CallLabels, elapsed: Duration) {
        if labels.outcome != "ok" {
            self.call_errors.get_or_create(&labels).inc();
        }
        self.call_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// HTTP requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// HTTP requests answered with a 4xx status so far.
    pub fn errors_4xx(&self) -> u64 {
        self.errors_4xx.get()
    }

    /// HTTP requests answered with a 5xx status so far.
    pub fn errors_5xx(&self) -> u64 {
        self.errors_5xx.get()
    }

    /// HTTP requests being answered now.
    pub fn requests_in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Keep `bus_lag` current: about once a second, take the next event off
/// the bus and compare its `_stamp` (the master's UTC time when it fired
/// the event) with the clock. Asking for one event at a time keeps the cost
/// at one stamp read per second whatever the event rate (a whole-stream
/// subscription would have the bus queue every event for it meanwhile).
pub async fn watch_bus_lag(master: Master, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let next = master.bus().next_event();
        let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), next).await else {
            continue;
        };
        // Only the stamp: the event may list 30,000 minions.
        let stamp = event.string_at("_stamp");
        let lag = stamp.and_then(stamp_age);
        tracing::debug!(tag = %event.tag, ?stamp, ?lag, "event bus lag sample");
        if let Some(lag) = lag {
            metrics.bus_lag.set(lag.as_secs_f64());
        }
    }
}

/// How long ago a Salt `_stamp` was: `2026-11-30T16:12:35.123456+00:00`
/// (3008), or the same without offset, meaning UTC (earlier releases);
/// zero when it is in the future (clock skew).
fn stamp_age(stamp: &str) -> Option<Duration> {
    let then = match chrono::DateTime::parse_from_rfc3339(stamp) {
        Ok(t) => t.naive_utc(),
        Err(_) => chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%.f").ok()?,
    };
    let age = chrono::Utc::now().naive_utc() - then;
    Some(age.to_std().unwrap_or(Duration::ZERO))
}

/// The master's own counters, read at scrape time.
#[derive(Clone)]
struct MasterCollector(Arc<OnceLock<Master>>);

impl std::fmt::Debug for MasterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterCollector")
    }
}

impl Collector for MasterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(master) = self.0.get() else {
            return Ok(());
        };
        let bus = master.bus();
        let counters = [
            (
                "master_requests",
                "Requests sent to the master's request server",
                master.requests_sent(),
            ),
            (
                "event_bus_reconnects",
                "Times the event bus subscription was re-established",
                bus.generation().saturating_sub(1),
            ),
            (
                "events",
                "Events read from the master's event bus (rate() gives events/s)",
                bus.events_seen(),
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let gauges = [
            (
                "event_bus_connected",
                "1 when the event bus subscription is connected",
                i64::from(bus.is_connected()),
            ),
            (
                "job_waiters",
                "Jobs whose returns a request is waiting for",
                i64::try_from(bus.waiting_jids()).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_follows_the_conventions() {
        let m = Metrics::default();
        m.observe_request(
            HttpLabels {
                surface: "rest_wsgi",
                endpoint: "/",
                status: "2xx",
            },
            Duration::from_millis(3),
        );
        m.observe_call(
            CallLabels {
                client: "local",
                outcome: "timeout",
            },
            Duration::from_secs(5),
        );
        let text = m.render();
        for line in [
            "# TYPE halite_http_request_duration_seconds histogram",
            "halite_http_request_duration_seconds_count{surface=\"rest_wsgi\",endpoint=\"/\",status=\"2xx\"} 1",
            "halite_http_requests_total 1",
            "halite_http_requests_in_flight 0",
            "halite_salt_call_errors_total{client=\"local\",outcome=\"timeout\"} 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        assert_eq!(m.requests(), 1);
        assert_eq!(m.errors_4xx(), 0);
    }

    #[test]
    fn stamps_are_aged_against_utc() {
        let now = chrono::Utc::now().naive_utc();
        let earlier = (now - chrono::Duration::seconds(3)).format("%Y-%m-%dT%H:%M:%S%.6f");
        let age = stamp_age(&earlier.to_string()).expect("a Salt stamp parses");
        assert!(
            age >= Duration::from_secs(3) && age < Duration::from_secs(60),
            "{age:?}"
        );
        let aware = (now - chrono::Duration::seconds(3)).format("%Y-%m-%dT%H:%M:%S%.6f+00:00");
        let age = stamp_age(&aware.to_string()).expect("a Salt 3008 stamp parses");
        assert!(
            age >= Duration::from_secs(3) && age < Duration::from_secs(60),
            "{age:?}"
        );
        let later = (now + chrono::Duration::seconds(30)).format("%Y-%m-%dT%H:%M:%S%.6f");
        assert_eq!(stamp_age(&later.to_string()), Some(Duration::ZERO));
        assert_eq!(stamp_age("yesterday"), None);
    }
}
