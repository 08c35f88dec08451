//! halite's own counters and their Prometheus text.

use std::sync::atomic::{AtomicU64, Ordering};

use salt_client::master::Master;

/// Counters kept by halite itself.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    pub errors_4xx: AtomicU64,
    pub errors_5xx: AtomicU64,
}

impl Metrics {
    /// The Prometheus text exposition of these counters and of `master`'s.
    pub fn render(&self, master: &Master) -> String {
        let bus = master.bus();
        format!(
            "# TYPE halite_http_requests_total counter\nhalite_http_requests_total {}\n\
             # TYPE halite_http_requests_in_flight gauge\nhalite_http_requests_in_flight {}\n\
             # TYPE halite_http_errors_total counter\nhalite_http_errors_total{{class=\"4xx\"}} {}\nhalite_http_errors_total{{class=\"5xx\"}} {}\n\
             # TYPE halite_master_requests_total counter\nhalite_master_requests_total {}\n\
             # TYPE halite_event_bus_connected gauge\nhalite_event_bus_connected {}\n\
             # TYPE halite_event_bus_reconnects_total counter\nhalite_event_bus_reconnects_total {}\n\
             # TYPE halite_events_total counter\nhalite_events_total {}\n\
             # TYPE halite_job_waiters gauge\nhalite_job_waiters {}\n",
            self.requests.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
            self.errors_4xx.load(Ordering::Relaxed),
            self.errors_5xx.load(Ordering::Relaxed),
            master.requests_sent(),
            u8::from(bus.is_connected()),
            bus.generation().saturating_sub(1),
            bus.events_seen(),
            bus.waiting_jids(),
        )
    }
}
