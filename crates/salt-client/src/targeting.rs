//! Client-side target expansion: nodegroups.
//!
//! The master resolves nodegroups for its own minion list, but minions get the
//! target unexpanded and never match, so the client must expand `nodegroup`
//! targets and `N@` words in compound targets first, as `LocalClient._prep_pub`
//! does with `salt.utils.minions.nodegroup_comp` (docs/PROTOCOL.md §5.9).

use std::collections::HashSet;

use regex::Regex;
use serde_json::{Map, Value as Json};

use crate::error::{Result, SaltError};

const OPERATORS: [&str; 5] = ["and", "or", "not", "(", ")"];

/// A target-type prefix such as `G@` or `L@`.
static TYPE_PREFIX: std::sync::LazyLock<Regex> =
    std::sync::LazyLock::new(|| Regex::new("^[A-Z]@").expect("static regex"));

/// Expand `tgt`/`tgt_type` for publishing. Nodegroup targets become compound
/// targets; `N@name` words of compound targets are replaced.
pub fn expand(
    tgt: &Json,
    tgt_type: &str,
    nodegroups: &Map<String, Json>,
    conf_file: &str,
) -> Result<(Json, String)> {
    match tgt_type {
        "nodegroup" => {
            let name = tgt.as_str().ok_or_else(|| {
                SaltError::Invocation("a nodegroup target must be a string".into())
            })?;
            if !nodegroups.contains_key(name) {
                return Err(SaltError::Invocation(format!(
                    "Node group {name} unavailable in {conf_file}"
                )));
            }
            let words = nodegroup_comp(name, nodegroups, &mut HashSet::new(), true);
            Ok((Json::String(words.join(" ")), "compound".into()))
        }
        "compound" => match tgt.as_str() {
            Some(s) if s.contains("N@") => {
                let mut out = Vec::new();
                for word in s.split_whitespace() {
                    match word.strip_prefix("N@") {
                        Some(name) if !name.is_empty() => {
                            if !nodegroups.contains_key(name) {
                                return Err(SaltError::Invocation(format!(
                                    "Node group {name} unavailable in {conf_file}"
                                )));
                            }
                            out.extend(nodegroup_comp(name, nodegroups, &mut HashSet::new(), true));
                        }
                        _ => out.push(word.to_owned()),
                    }
                }
                Ok((Json::String(out.join(" ")), "compound".into()))
            }
            _ => Ok((tgt.clone(), tgt_type.into())),
        },
        _ => Ok((tgt.clone(), tgt_type.into())),
    }
}

/// The words of nodegroup `name`, expanded as Salt's `nodegroup_comp` does.
pub fn nodegroup_comp(
    name: &str,
    nodegroups: &Map<String, Json>,
    skip: &mut HashSet<String>,
    first_call: bool,
) -> Vec<String> {
    if skip.contains(name) {
        tracing::error!(nodegroup = name, "illegal nested nodegroup (cycle)");
        return Vec::new();
    }
    let words: Vec<String> = match nodegroups.get(name) {
        Some(Json::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Json::Array(items)) => items
            .iter()
            .map(|w| match w {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => {
            tracing::error!(nodegroup = name, "unknown or malformed nodegroup");
            return Vec::new();
        }
    };
    skip.insert(name.to_owned());
    let mut expanded = false;
    let mut ret = Vec::new();
    for word in &words {
        if OPERATORS.contains(&word.as_str()) {
            ret.push(word.clone());
        } else if word.len() >= 3 && word.starts_with("N@") {
            expanded = true;
            ret.extend(nodegroup_comp(&word[2..], nodegroups, skip, false));
        } else {
            ret.push(word.clone());
        }
    }
    if !ret.is_empty() {
        ret.insert(0, "(".into());
        ret.push(")".into());
    }
    skip.remove(name);
    if expanded || !first_call {
        return ret;
    }
    // No nested group: Salt returns the original words, and a plain list of
    // names (no operators, wildcards or X@ prefixes) becomes L@ (or E@).
    let has_operator = words.iter().any(|w| OPERATORS.contains(&w.as_str()));
    let plain = !words
        .iter()
        .any(|w| w.contains('*') || TYPE_PREFIX.is_match(w));
    if !has_operator && plain {
        let regex_chars = ['(', '[', '{', '\\', '?', '}', ']', ')'];
        let joined = words.join(",");
        let prefix = if words.iter().any(|w| w.contains(&regex_chars[..])) {
            "E@"
        } else {
            "L@"
        };
        return vec![format!("{prefix}{joined}")];
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn groups() -> Map<String, Json> {
        json!({
            "first_two": "L@ms-0,ms-1",
            "plain": "ms-0 ms-2",
            "as_list": ["ms-0", "ms-1"],
            "nested": "N@first_two or ms-2",
            "loop_a": "N@loop_b",
            "loop_b": "N@loop_a",
            "wild": "ms-*",
        })
        .as_object()
        .cloned()
        .unwrap_or_default()
    }

    #[test]
    fn matches_the_wire_observed_in_the_labs() {
        // Seen on the wire from real masters: first_two: 'L@ms-0,ms-1' -> tgt "L@ms-0,ms-1", compound
        let (t, tt) = expand(&json!("first_two"), "nodegroup", &groups(), "m").expect("ok");
        assert_eq!((t, tt.as_str()), (json!("L@ms-0,ms-1"), "compound"));
        // and "N@first_two or ms-0" -> "L@ms-0,ms-1 or ms-0"
        let (t, _) = expand(&json!("N@first_two or ms-0"), "compound", &groups(), "m").expect("ok");
        assert_eq!(t, json!("L@ms-0,ms-1 or ms-0"));
    }

    #[test]
    fn plain_names_become_a_list_and_nesting_adds_parentheses() {
        let (t, _) = expand(&json!("plain"), "nodegroup", &groups(), "m").expect("ok");
        assert_eq!(t, json!("L@ms-0,ms-2"));
        let (t, _) = expand(&json!("as_list"), "nodegroup", &groups(), "m").expect("ok");
        assert_eq!(t, json!("L@ms-0,ms-1"));
        let (t, _) = expand(&json!("nested"), "nodegroup", &groups(), "m").expect("ok");
        assert_eq!(t, json!("( ( L@ms-0,ms-1 ) or ms-2 )"));
        let (t, _) = expand(&json!("wild"), "nodegroup", &groups(), "m").expect("ok");
        assert_eq!(t, json!("ms-*"));
    }

    #[test]
    fn cycles_terminate_and_unknown_groups_are_invocation_errors() {
        let (t, _) = expand(&json!("loop_a"), "nodegroup", &groups(), "m").expect("ok");
        assert_eq!(t, json!(""));
        let e = expand(&json!("nosuch"), "nodegroup", &groups(), "/etc/salt/master");
        assert_eq!(
            e,
            Err(SaltError::Invocation(
                "Node group nosuch unavailable in /etc/salt/master".into()
            ))
        );
    }
}
