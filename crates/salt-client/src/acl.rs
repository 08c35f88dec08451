//! Which bus events a token's holder may see, judged by the eauth ACL.
//!
//! The bus carries everything: every job's arguments and returns, runner and
//! wheel results, key events, auth attempts. Salt's own API hands all of it
//! to every token holder. [`EventFilter`] keeps what the token's ACL covers:
//!
//! * jobs the user started (their `new`, `ret` and `prog` events);
//! * `salt/job` events of functions the ACL allows on that minion;
//! * `salt/run` events with `@runner` rights (or started by the user),
//!   `salt/wheel` and `salt/key` events with `@wheel` rights;
//! * anything else (auth, minion start, presence, webhooks, custom tags)
//!   only for a user whose ACL allows every function on every minion.
//!
//! ACL entries match as Salt's `expr_match` does: equal, a shell glob, or a
//! regular expression matching the whole text.

use std::collections::{HashMap, HashSet, VecDeque};

use regex::Regex;
use serde_json::Value as Json;

/// Jobs remembered per filter as started by its user (oldest forgotten).
const STARTED_JOBS: usize = 1024;
/// (minion, function) verdicts remembered per filter: matching compiles the
/// ACL's patterns, and a stream sees the same pairs over and over.
const VERDICTS: usize = 4096;

/// Salt's `expr_match(line, expr)`.
pub fn expr_match(line: &str, expr: &str) -> bool {
    if line == expr {
        return true;
    }
    if glob::Pattern::new(expr).is_ok_and(|p| p.matches(line)) {
        return true;
    }
    Regex::new(&format!(r"\A(?:{expr})\z")).is_ok_and(|re| re.is_match(line))
}

/// A user's eauth ACL, as `auth::permissions` lists it.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    entries: Vec<Json>,
}

impl Acl {
    pub fn new(entries: Vec<Json>) -> Acl {
        Acl { entries }
    }

    /// Whether the ACL lets `fun` run on `minion`.
    pub fn allows(&self, minion: &str, fun: &str) -> bool {
        self.entries.iter().any(|e| match e {
            Json::String(f) => !f.starts_with('@') && expr_match(fun, f),
            Json::Object(m) => m.iter().any(|(tgt, funs)| {
                !tgt.starts_with('@') && expr_match(minion, tgt) && list_matches(funs, fun)
            }),
            _ => false,
        })
    }

    /// Whether the ACL grants `section` (`@runner`, `@wheel`) for `fun`:
    /// the bare section, or `{section: [patterns]}`, or `section` followed
    /// by a pattern (`@wheel` and `key.*` as separate entries are not that).
    pub fn grants(&self, section: &str, fun: &str) -> bool {
        self.entries.iter().any(|e| match e {
            Json::String(s) => s == section,
            Json::Object(m) => m
                .get(section)
                .is_some_and(|funs| fun.is_empty() || list_matches(funs, fun)),
            _ => false,
        })
    }

    /// Whether every function on every minion is allowed.
    pub fn is_full(&self) -> bool {
        self.entries.iter().any(|e| match e {
            Json::String(f) => matches!(f.as_str(), ".*" | "*"),
            Json::Object(m) => m.iter().any(|(tgt, funs)| {
                matches!(tgt.as_str(), "*" | ".*")
                    && list_matches(funs, ".*")
                    && funs
                        .as_array()
                        .is_some_and(|l| l.iter().any(|f| matches!(f.as_str(), Some(".*" | "*"))))
            }),
            _ => false,
        })
    }
}

fn list_matches(funs: &Json, fun: &str) -> bool {
    match funs {
        Json::Array(list) => list.iter().any(|f| match f {
            Json::String(p) => expr_match(fun, p),
            // {"test.arg": {"args": [...]}}: argument-restricted; the function
            // name is what an event can be judged by.
            Json::Object(m) => m.keys().any(|p| expr_match(fun, p)),
            _ => false,
        }),
        Json::String(p) => expr_match(fun, p),
        _ => false,
    }
}

/// The functions of an event's `fun` (a compound job lists several).
fn funs(data: &Json) -> Vec<&str> {
    match &data["fun"] {
        Json::String(f) => vec![f.as_str()],
        Json::Array(l) => l.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Decides, event by event, what one token's holder sees.
#[derive(Debug)]
pub struct EventFilter {
    user: String,
    acl: Acl,
    started: HashSet<String>,
    order: VecDeque<String>,
    verdicts: HashMap<(String, String), bool>,
}

impl EventFilter {
    pub fn new(user: &str, acl: Acl) -> EventFilter {
        EventFilter {
            user: user.to_owned(),
            acl,
            started: HashSet::new(),
            order: VecDeque::new(),
            verdicts: HashMap::new(),
        }
    }

    fn remember(&mut self, jid: &str) {
        if self.started.contains(jid) {
            return;
        }
        if self.order.len() >= STARTED_JOBS {
            if let Some(old) = self.order.pop_front() {
                self.started.remove(&old);
            }
        }
        self.started.insert(jid.to_owned());
        self.order.push_back(jid.to_owned());
    }

    fn allows(&mut self, minion: &str, fun: &str) -> bool {
        let key = (minion.to_owned(), fun.to_owned());
        if let Some(v) = self.verdicts.get(&key) {
            return *v;
        }
        if self.verdicts.len() >= VERDICTS {
            self.verdicts.clear();
        }
        let v = self.acl.allows(minion, fun);
        self.verdicts.insert(key, v);
        v
    }

    fn by_user(&self, data: &Json) -> bool {
        !self.user.is_empty() && data["user"].as_str() == Some(self.user.as_str())
    }

    /// Whether the event with `tag` and `data` may be shown.
    pub fn visible(&mut self, tag: &str, data: &Json) -> bool {
        if self.acl.is_full() {
            return true;
        }
        let parts: Vec<&str> = tag.split('/').collect();
        match parts.as_slice() {
            ["salt", "job", jid, "new", ..] => {
                if self.by_user(data) {
                    self.remember(jid);
                    return true;
                }
                let minions: Vec<&str> = data["minions"]
                    .as_array()
                    .map(|l| l.iter().filter_map(Json::as_str).collect())
                    .unwrap_or_default();
                let f = funs(data);
                !minions.is_empty()
                    && !f.is_empty()
                    && minions
                        .iter()
                        .all(|m| f.iter().all(|fun| self.allows(m, fun)))
            }
            ["salt", "job", jid, "ret" | "prog", minion, ..] => {
                if self.started.contains(*jid) {
                    return true;
                }
                let f = funs(data);
                !f.is_empty() && f.iter().all(|fun| self.allows(minion, fun))
            }
            ["salt", "run", ..] => {
                let fun = data["fun"].as_str().unwrap_or("");
                self.by_user(data)
                    || self
                        .acl
                        .grants("@runner", fun.strip_prefix("runner.").unwrap_or(fun))
            }
            ["salt", "wheel", ..] => {
                let fun = data["fun"].as_str().unwrap_or("");
                self.by_user(data)
                    || self
                        .acl
                        .grants("@wheel", fun.strip_prefix("wheel.").unwrap_or(fun))
            }
            ["salt", "key", ..] => self.acl.grants("@wheel", ""),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn acl(v: Json) -> Acl {
        Acl::new(v.as_array().cloned().unwrap_or_default())
    }

    #[test]
    fn expr_match_as_salt() {
        assert!(expr_match("test.ping", "test.ping"));
        assert!(expr_match("test.ping", "test.*"));
        assert!(expr_match("test.ping", ".*"));
        assert!(!expr_match("cmd.run", "test.*"));
        assert!(!expr_match("xtest.ping", "test\\.ping"));
        assert!(expr_match("ms-1", "ms-*"));
    }

    #[test]
    fn limited_user_sees_only_what_the_acl_covers() {
        let mut f = EventFilter::new("limited", acl(json!(["test.ping"])));
        assert!(f.visible(
            "salt/job/1/new",
            &json!({"fun": "test.ping", "minions": ["ms-0"], "user": "saltdev"})
        ));
        assert!(f.visible("salt/job/1/ret/ms-0", &json!({"fun": "test.ping"})));
        assert!(!f.visible(
            "salt/job/2/new",
            &json!({"fun": "cmd.run", "minions": ["ms-0"], "user": "saltdev"})
        ));
        assert!(!f.visible("salt/job/2/ret/ms-0", &json!({"fun": "cmd.run"})));
        assert!(!f.visible("salt/run/3/ret", &json!({"fun": "runner.jobs.list_jobs"})));
        assert!(!f.visible("salt/wheel/4/ret", &json!({"fun": "wheel.key.gen_accept"})));
        assert!(!f.visible("salt/auth", &json!({"id": "ms-0"})));
        assert!(!f.visible("salt/netapi/hook/x", &json!({})));
        // A job the user started is theirs, whatever its function.
        assert!(f.visible(
            "salt/job/5/new",
            &json!({"fun": "test.echo", "minions": ["ms-0"], "user": "limited"})
        ));
        assert!(f.visible("salt/job/5/ret/ms-0", &json!({"fun": "test.echo"})));
    }

    #[test]
    fn rights_by_section_and_target() {
        let mut f = EventFilter::new(
            "ops",
            acl(json!(["@runner", {"ms-1": ["cmd.*"]}, {"@wheel": ["key.list_all"]}])),
        );
        assert!(f.visible("salt/run/1/ret", &json!({"fun": "runner.jobs.list_jobs"})));
        assert!(f.visible("salt/job/2/ret/ms-1", &json!({"fun": "cmd.run"})));
        assert!(!f.visible("salt/job/2/ret/ms-0", &json!({"fun": "cmd.run"})));
        assert!(f.visible("salt/wheel/3/ret", &json!({"fun": "wheel.key.list_all"})));
        assert!(!f.visible("salt/wheel/4/ret", &json!({"fun": "wheel.key.gen_accept"})));
        let mut full = EventFilter::new("root", acl(json!([".*", "@runner"])));
        assert!(full.visible("salt/auth", &json!({})));
    }

    #[test]
    fn started_jobs_are_bounded() {
        let mut f = EventFilter::new("u", acl(json!([])));
        for i in 0..(STARTED_JOBS * 3) {
            f.visible(&format!("salt/job/{i}/new"), &json!({"user": "u"}));
        }
        assert_eq!(f.started.len(), STARTED_JOBS);
        assert_eq!(f.order.len(), STARTED_JOBS);
    }
}
