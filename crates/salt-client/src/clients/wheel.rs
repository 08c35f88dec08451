//! `wheel` and `wheel_async`: `WheelClient.cmd_sync` / `cmd_async`
//! (docs/PROTOCOL.md §3.5.3, §5.7). The lowstate goes to the master unchanged
//! with `cmd: wheel`; the synchronous reply `{tag, data}` is the result.

use std::time::Duration;

use rmpv::Value as Mp;
use serde_json::{json, Value as Json};

use super::{Low, Lowstate};
use crate::args::secs;
use crate::error::{Result, SaltError};
use crate::master::Master;
use crate::value;

fn load(low: &Lowstate) -> Mp {
    let mut m = low.clone();
    m.insert("cmd".into(), json!("wheel"));
    value::from_json(&Json::Object(m))
}

fn timeout(master: &Master) -> Duration {
    secs(master.config().rest_timeout().max(60.0))
}

/// `wheel`: run the wheel function and return the master's `{tag, data}`.
pub async fn wheel(master: &Master, low: Low) -> Result<Json> {
    low.fun_str()?;
    let reply = master.request(load(&low.fields), timeout(master)).await?;
    Ok(value::to_json(&reply))
}

/// `wheel_async` calls running in the background at most, process-wide:
/// each holds a master worker, and nothing else bounds how many a client
/// can start.
pub const MAX_WHEEL_ASYNC: usize = 64;

static WHEEL_ASYNC: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_WHEEL_ASYNC)));

/// `wheel_async`: answer `{jid, tag}` at once and run the call in the
/// background with `__jid__`/`__tag__` set (honoured by 3006/3007 masters;
/// 3008 ignores them and reports events under its own jid).
pub async fn wheel_async(master: &Master, low: Low) -> Result<Json> {
    low.fun_str()?;
    let permit = WHEEL_ASYNC.clone().try_acquire_owned().map_err(|_| {
        SaltError::Unreachable(format!(
            "{MAX_WHEEL_ASYNC} wheel_async calls are already running; try again later"
        ))
    })?;
    let jid = master.new_jid();
    let tag = format!("salt/wheel/{jid}");
    let mut low = low.fields;
    low.insert("__jid__".into(), json!(jid));
    low.insert("__tag__".into(), json!(tag));
    low.insert("__user__".into(), json!("UNKNOWN"));
    let m = master.clone();
    let load = load(&low);
    let limit = timeout(master);
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(e) = m.request(load, limit).await {
            tracing::info!(error = %e, "wheel_async call failed");
        }
    });
    Ok(json!({"jid": jid, "tag": tag}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MasterConfig;

    #[tokio::test]
    async fn wheel_async_is_refused_beyond_its_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A master nobody listens on: a call that got through would fail later.
        let config = MasterConfig::from_yaml_str("interface: 127.0.0.1\nret_port: 9\n", dir.path())
            .expect("config");
        let master = Master::new(config);
        let held = WHEEL_ASYNC
            .clone()
            .acquire_many_owned(MAX_WHEEL_ASYNC as u32)
            .await
            .expect("all permits");
        let low = json!({"fun": "key.list_all"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let err = wheel_async(&master, Low::parse(low.clone()))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), crate::ErrorKind::Unreachable);
        assert!(err.message().contains("already running"), "{err}");
        drop(held);
        assert!(wheel_async(&master, Low::parse(low)).await.is_ok());
    }
}
