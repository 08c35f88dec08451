//! `local_subset`: `LocalClient.cmd_subset` — run the job on `subset`
//! (default 3) randomly chosen minions of the target that have the function.

use rand::seq::SliceRandom;
use serde_json::{json, Value as Json};

use super::local::LocalJob;
use super::Low;
use crate::error::{Result, SaltError};
use crate::master::Master;

/// Run a subset job.
pub async fn local_subset(master: &Master, low: Low) -> Result<Json> {
    let job = LocalJob::from_low(master, &low, &["subset", "sub", "cli"])?;
    let subset = match &low.subset {
        None | Some(Json::Null) => 3,
        Some(Json::Number(n)) => n.as_u64().unwrap_or(0) as usize,
        Some(Json::String(s)) => s.trim().parse().unwrap_or(0),
        Some(_) => 0,
    };
    if subset == 0 {
        return Err(SaltError::Invocation(
            "'subset' must be a positive integer".into(),
        ));
    }
    let fun = job
        .fun
        .as_str()
        .ok_or_else(|| SaltError::Invocation("'fun' must be a string for local_subset".into()))?
        .to_owned();

    let mut listing = job.clone();
    listing.fun = json!("sys.list_functions");
    listing.arg = Vec::new();
    listing.full_return = false;
    let functions = listing.cmd(master, None).await?;
    let mut minions: Vec<(String, Json)> = match functions {
        Json::Object(m) => m.into_iter().collect(),
        _ => Vec::new(),
    };
    minions.shuffle(&mut rand::rng());
    let chosen: Vec<Json> = minions
        .into_iter()
        .filter(|(_, funs)| {
            funs.as_array()
                .is_some_and(|l| l.iter().any(|f| f.as_str() == Some(fun.as_str())))
        })
        .take(subset)
        .map(|(id, _)| Json::String(id))
        .collect();
    if chosen.is_empty() {
        return Ok(Json::Object(Default::default()));
    }
    let mut run = job;
    run.tgt = Json::Array(chosen);
    run.tgt_type = "list".into();
    run.kwargs.insert("progress".into(), json!(false));
    run.cmd(master, None).await
}
