//! The process-wide "we are stopping" signal, in two steps:
//!
//! 1. [`Shutdown::trigger`] (SIGTERM/SIGINT): long-lived responses
//!    (`/events`, `/ws`) end with a final event; calls in flight go on.
//! 2. [`Shutdown::cut`] (`graceful_shutdown_timeout` is over): calls still
//!    waiting for their jobs answer 503 with the jid at once, instead of
//!    having their connection closed without an answer.

use std::future::Future;
use std::sync::Arc;

use salt_client::SaltError;
use tokio::sync::watch;

/// How far the server is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    Stopping,
    Cut,
}

/// A signal set by `serve` on SIGTERM/SIGINT, then again when the grace
/// period is over; every clone sees it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Phase>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(Phase::Serving).0),
        }
    }
}

impl Shutdown {
    /// Tell every waiter that the server is stopping.
    pub fn trigger(&self) {
        self.advance(Phase::Stopping);
    }

    /// The grace period is over: calls still in flight are cut (and
    /// [`Shutdown::wait`] resolves too, if `trigger` was never called).
    pub fn cut(&self) {
        self.advance(Phase::Cut);
    }

    /// Whether [`Shutdown::trigger`] (or [`Shutdown::cut`]) was called.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow() >= Phase::Stopping
    }

    /// Resolves once the server is stopping (at once if it already is).
    pub async fn wait(&self) {
        self.reached(Phase::Stopping).await;
    }

    /// Resolves once calls in flight must be cut (at once if they must).
    pub async fn wait_cut(&self) {
        self.reached(Phase::Cut).await;
    }

    /// `call`, unless the cut comes first: then the 503 a call cut short
    /// answers, naming the job it was waiting for, if any. Pass a large
    /// `call` boxed: an async fn's future keeps its arguments beside the
    /// locals they move into, so an unboxed one would be held twice (with
    /// 10,000 calls in flight, ~5 KiB more per call).
    pub async fn or_cut<T>(
        &self,
        jid: Option<&str>,
        call: impl Future<Output = Result<T, SaltError>>,
    ) -> Result<T, SaltError> {
        tokio::select! {
            biased;
            () = self.wait_cut() => Err(cut_error(jid)),
            done = call => done,
        }
    }

    fn advance(&self, to: Phase) {
        self.tx.send_if_modified(|now| {
            let later = to > *now;
            if later {
                *now = to;
            }
            later
        });
    }

    async fn reached(&self, phase: Phase) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we wait.
        let _ = rx.wait_for(|now| *now >= phase).await;
    }
}

/// What a call cut short by the end of the grace period answers (503).
pub fn cut_error(jid: Option<&str>) -> SaltError {
    SaltError::Unreachable(match jid {
        Some(jid) => format!(
            "halite is stopping and its graceful_shutdown_timeout ran out before job {jid} \
             finished; what the master and minions do with the job goes on: look it up with the \
             runner jobs.lookup_jid (jid {jid})"
        ),
        None => "halite is stopping and its graceful_shutdown_timeout ran out before this call \
                 finished; what it started on the master goes on"
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Shutdown;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let s = Shutdown::default();
        let other = s.clone();
        let waiter = tokio::spawn(async move { other.wait().await });
        assert!(!s.is_triggered());
        s.trigger();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes")
            .expect("the waiter does not panic");
        assert!(s.is_triggered());
        // A waiter that comes late returns at once.
        s.wait().await;
    }

    #[tokio::test]
    async fn the_cut_comes_only_when_called_and_never_goes_back() {
        let s = Shutdown::default();
        let other = s.clone();
        let cut = tokio::spawn(async move { other.wait_cut().await });
        s.trigger();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!cut.is_finished(), "stopping is not yet a cut");
        s.cut();
        tokio::time::timeout(Duration::from_secs(5), cut)
            .await
            .expect("the cut wakes its waiter")
            .expect("the waiter does not panic");
        // A late trigger does not undo the cut.
        s.trigger();
        tokio::time::timeout(Duration::from_secs(1), s.wait_cut())
            .await
            .expect("still cut");
        assert!(s.is_triggered());
    }
}
