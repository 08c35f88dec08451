//! `wheel` and `wheel_async`: `WheelClient.cmd_sync` / `cmd_async`
//! (docs/PROTOCOL.md §3.5.3, §5.7). The lowstate goes to the master unchanged
//! with `cmd: wheel`; the synchronous reply `{tag, data}` is the result.

use std::time::Duration;

use rmpv::Value as Mp;
use serde_json::{json, Value as Json};

use super::{required_str, secs, Lowstate};
use crate::error::Result;
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
pub async fn wheel(master: &Master, low: Lowstate) -> Result<Json> {
    required_str(&low, "fun")?;
    let reply = master.request(load(&low), timeout(master)).await?;
    Ok(value::to_json(&reply))
}

/// `wheel_async`: answer `{jid, tag}` at once and run the call in the
/// background with `__jid__`/`__tag__` set (honoured by 3006/3007 masters;
/// 3008 ignores them and reports events under its own jid).
pub async fn wheel_async(master: &Master, low: Lowstate) -> Result<Json> {
    required_str(&low, "fun")?;
    let jid = master.new_jid();
    let tag = format!("salt/wheel/{jid}");
    let mut low = low;
    low.insert("__jid__".into(), json!(jid));
    low.insert("__tag__".into(), json!(tag));
    low.insert("__user__".into(), json!("UNKNOWN"));
    let m = master.clone();
    let load = load(&low);
    let limit = timeout(master);
    tokio::spawn(async move {
        if let Err(e) = m.request(load, limit).await {
            tracing::info!(error = %e, "wheel_async call failed");
        }
    });
    Ok(json!({"jid": jid, "tag": tag}))
}
