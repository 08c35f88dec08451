//! The process-wide "we are stopping" signal that long-lived responses
//! (`/events`, `/ws`) watch, so they can end with a final event instead of
//! being cut when the grace period runs out.

use std::sync::Arc;

use tokio::sync::watch;

/// A signal set once, by `serve` on SIGTERM/SIGINT; every clone sees it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }
}

impl Shutdown {
    /// Tell every waiter that the server is stopping.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether [`Shutdown::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the server is stopping (at once if it already is).
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we wait.
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Shutdown;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let s = Shutdown::default();
        let other = s.clone();
        let waiter = tokio::spawn(async move { other.wait().await });
        assert!(!s.is_triggered());
        s.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes")
            .expect("the waiter does not panic");
        assert!(s.is_triggered());
        // A waiter that comes late returns at once.
        s.wait().await;
    }
}
