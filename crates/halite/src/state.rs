//! The state every handler of every surface shares.

use std::sync::Arc;

use salt_client::clients::Netapi;
use salt_client::master::Master;

use crate::metrics::Metrics;

/// Limits applied to each request of a surface.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body read, in bytes; beyond it, 413.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: crate::settings::DEFAULT_MAX_BODY,
        }
    }
}

/// Shared state of one surface: the master handle (cheap to clone, one
/// connection pool and one event-bus subscription per process), the
/// surface's limits and the process-wide metrics.
#[derive(Clone)]
pub struct AppState {
    pub netapi: Netapi,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// State for a surface of `master`, with metrics of its own. Surfaces of
    /// one process share metrics through [`AppState::with_metrics`].
    pub fn new(master: Master, limits: Limits) -> AppState {
        AppState::with_metrics(master, limits, Arc::new(Metrics::default()))
    }

    /// State for a surface of `master` recording into `metrics`.
    pub fn with_metrics(master: Master, limits: Limits, metrics: Arc<Metrics>) -> AppState {
        AppState {
            netapi: Netapi::new(master),
            limits,
            metrics,
        }
    }
}
