//! Merging included files the way Salt does: top-level replace and deep merge.

#[allow(unused_imports)]
use super::*;

/// `dict.update`: keys in `upd` replace keys in `dest` wholesale.
pub(super) fn top_level_update(dest: &mut Map<String, Value>, upd: Map<String, Value>) {
    for (key, value) in upd {
        dest.insert(key, value);
    }
}

/// `salt.utils.dictupdate.update(dest, upd, recursive_update=True, merge_lists=True)`.
/// Mappings merge recursively. Lists are concatenated, leaving out items of `upd`
/// already present in `dest`. Anything else is replaced.
pub(super) fn deep_merge(dest: &mut Map<String, Value>, upd: Map<String, Value>) {
    for (key, value) in upd {
        let replacement = match (dest.get_mut(&key), value) {
            (Some(Value::Object(d)), Value::Object(u)) => {
                deep_merge(d, u);
                None
            }
            (Some(Value::Array(d)), Value::Array(u)) => {
                let fresh: Vec<Value> = u.into_iter().filter(|item| !d.contains(item)).collect();
                d.extend(fresh);
                None
            }
            (_, value) => Some(value),
        };
        if let Some(value) = replacement {
            dest.insert(key, value);
        }
    }
}
