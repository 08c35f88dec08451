//! What the fake master answers, command by command, in Salt 3008's shapes:
//! the envelope checks, `ping`, `publish` (with the job's events and one
//! return per minion), `runner`, `wheel`, `mk_token` and `get_token`, and the
//! auth and authorization errors of each.

use std::time::{SystemTime, UNIX_EPOCH};

use rmpv::Value as Mp;
use salt_client::value;
use serde_json::{json, Map, Value as Json};

use crate::{lock, Reply, State};

/// Something that answers request envelopes (the fake's default behaviour,
/// or a benchmark's).
pub trait Handler: Send + Sync + 'static {
    /// The reply to one decoded envelope `{"enc", "load", "version"}`.
    fn handle(&self, envelope: &Mp) -> Reply;
}

/// Salt 3008's `_stamp` format.
const STAMP: &str = "2026-01-01T00:00:00.000000+00:00";

/// A private key as `key.gen_accept` returns it (not a real key).
pub const FAKE_PRIVATE_KEY: &str =
    "-----BEGIN RSA PRIVATE KEY-----\nTESTKIT-NOT-A-REAL-KEY\n-----END RSA PRIVATE KEY-----\n";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The eauth ACL of a user, as in the fake's config.
fn eauth_acl(eauth: &str, user: &str) -> Option<&'static [&'static str]> {
    const FULL: &[&str] = &[".*", "@runner", "@wheel", "@jobs"];
    match (eauth, user) {
        ("auto", "saltdev" | "hal") | ("pam", "saltdev") => Some(FULL),
        ("auto", "limited") => Some(&["test.ping"]),
        _ => None,
    }
}

/// The `auto` backend accepts any password; `pam` knows one user.
fn password_ok(eauth: &str, user: &str, password: Option<&str>) -> bool {
    match eauth {
        "auto" => true,
        "pam" => user == "saltdev" && password == Some("saltdev"),
        _ => false,
    }
}

fn allows(acl: &[&str], fun: &str) -> bool {
    acl.iter().any(|p| {
        *p == ".*" || *p == fun || p.strip_suffix(".*").is_some_and(|m| fun.starts_with(m))
    })
}

fn str_of<'a>(load: &'a Json, key: &str) -> Option<&'a str> {
    load.get(key).and_then(Json::as_str)
}

impl Handler for State {
    fn handle(&self, envelope: &Mp) -> Reply {
        let Some(load) = value::get(envelope, "load") else {
            return Reply::Value(json!("bad load"));
        };
        if !load.is_map() {
            return Reply::Value(json!("payload and load must be a dict"));
        }
        let load = value::to_json(load);
        self.record(load.clone());
        let cmd = str_of(&load, "cmd").unwrap_or("").to_owned();
        if let Some(reply) = self.scripted(&cmd) {
            return reply;
        }
        match cmd.as_str() {
            "ping" => Reply::Value(load),
            "publish" => self.publish(&load),
            "runner" => self.runner(&load),
            "wheel" => self.wheel(&load),
            "mk_token" => self.mk_token(&load),
            "get_token" => match str_of(&load, "token") {
                Some(t) => Reply::Value(self.token(t).unwrap_or_else(|| json!({}))),
                None => Reply::Value(json!(false)),
            },
            _ => Reply::Value(json!({})),
        }
    }
}

/// Who a request authenticated as, and what they may do.
struct Caller {
    name: String,
    acl: &'static [&'static str],
}

impl State {
    fn token(&self, token: &str) -> Option<Json> {
        let mut tokens = lock(&self.tokens);
        if !self.token_dir.join(format!("{token}.p")).is_file() {
            tokens.remove(token);
            return None;
        }
        let rec = tokens.get(token)?;
        (rec["expire"].as_f64().unwrap_or(0.0) > now()).then(|| rec.clone())
    }

    /// Credentials from `creds` (the load for runner/wheel, `load.kwargs`
    /// for publish): a token wins over eauth, as in `_prep_auth_info`.
    fn authenticate(&self, creds: &Json) -> Result<Caller, &'static str> {
        if let Some(t) = str_of(creds, "token") {
            let rec = self.token(t).ok_or("token")?;
            let name = str_of(&rec, "name").unwrap_or("").to_owned();
            let eauth = str_of(&rec, "eauth").unwrap_or("");
            let acl = eauth_acl(eauth, &name).ok_or("token")?;
            return Ok(Caller { name, acl });
        }
        let (Some(eauth), Some(user)) = (str_of(creds, "eauth"), str_of(creds, "username")) else {
            return Err("user");
        };
        let password = str_of(creds, "password");
        let acl = eauth_acl(eauth, user)
            .filter(|_| password_ok(eauth, user, password))
            .ok_or("eauth")?;
        Ok(Caller {
            name: user.to_owned(),
            acl,
        })
    }

    fn mk_token(&self, load: &Json) -> Reply {
        let (Some(eauth), Some(user)) = (str_of(load, "eauth"), str_of(load, "username")) else {
            return Reply::Value(json!(""));
        };
        if eauth_acl(eauth, user).is_none() || !password_ok(eauth, user, str_of(load, "password")) {
            return Reply::Value(json!(""));
        }
        let token: String = format!("{:032x}{:032x}", rand_u128(), rand_u128());
        let t = now();
        let rec = json!({"token": token, "start": t, "expire": t + 43200.0,
            "name": user, "eauth": eauth});
        let file = self.token_dir.join(format!("{token}.p"));
        if std::fs::write(&file, rec.to_string()).is_err() {
            return Reply::Value(json!("Some exception handling minion payload"));
        }
        lock(&self.tokens).insert(token, rec.clone());
        Reply::Value(rec)
    }

    fn publish(&self, load: &Json) -> Reply {
        for field in ["tgt", "fun", "arg", "tgt_type", "ret", "user"] {
            if load.get(field).is_none() {
                return Reply::Value(json!("Some exception handling minion payload"));
            }
        }
        let jid = match str_of(load, "jid") {
            Some(j) if !j.is_empty() => j.to_owned(),
            _ => self.new_jid(),
        };
        let fun = str_of(load, "fun").unwrap_or("").to_owned();
        let creds = load.get("kwargs").cloned().unwrap_or(Json::Null);
        let caller = match self.authenticate(&creds) {
            Ok(c) => c,
            Err(_) => return self.publish_error(load, &jid, "AuthenticationError"),
        };
        if fun != "saltutil.find_job" && !allows(caller.acl, &fun) {
            return self.publish_error(load, &jid, "AuthorizationError");
        }
        let minions = self.targets(load);
        if minions.is_empty() {
            let tgt = load["tgt"].to_string();
            return Reply::Value(json!({"enc": "clear", "load": {"jid": null, "minions": [],
                "error": format!("Master could not resolve minions for target {}", tgt.trim_matches('"'))}}));
        }
        let arg = load["arg"].clone();
        self.fire(
            &format!("salt/job/{jid}/new"),
            &json!({"jid": jid, "tgt": load["tgt"], "tgt_type": load["tgt_type"],
                "user": caller.name, "fun": fun, "arg": arg, "minions": minions,
                "missing": [], "_stamp": STAMP}),
        );
        let silent = lock(&self.silent).clone();
        for m in minions.iter().filter(|m| !silent.contains(*m)) {
            let ret = self.minion_return(&fun, m, &arg);
            lock(&self.jobs)
                .entry(jid.clone())
                .or_default()
                .insert(m.clone(), ret.clone());
            self.fire(
                &format!("salt/job/{jid}/ret/{m}"),
                &json!({"cmd": "_return", "id": m, "jid": jid, "fun": fun, "fun_args": arg,
                    "return": ret, "retcode": 0, "success": true, "user": caller.name,
                    "_stamp": STAMP}),
            );
        }
        Reply::Value(
            json!({"enc": "clear", "load": {"jid": jid, "minions": minions, "missing": []}}),
        )
    }

    /// The error reply of a refused publish, and the `salt/job/<jid>/error`
    /// event the master fires with the whole load (credentials included).
    fn publish_error(&self, load: &Json, jid: &str, name: &str) -> Reply {
        let message = match name {
            "AuthorizationError" => "Authorization error occurred.",
            _ => "Authentication error occurred.",
        };
        let mut data = load.clone();
        if let Some(o) = data.as_object_mut() {
            o.insert("error".into(), json!({"name": name, "message": message}));
            o.insert("_stamp".into(), json!(STAMP));
        }
        self.fire(&format!("salt/job/{jid}/error"), &data);
        Reply::error(name, message)
    }

    fn targets(&self, load: &Json) -> Vec<String> {
        let tgt_type = str_of(load, "tgt_type").unwrap_or("glob");
        match (tgt_type, &load["tgt"]) {
            (_, Json::Array(list)) => list
                .iter()
                .filter_map(Json::as_str)
                .filter(|m| self.minions.iter().any(|x| x == m))
                .map(str::to_owned)
                .collect(),
            ("glob", Json::String(pattern)) => match glob::Pattern::new(pattern) {
                Ok(p) => self
                    .minions
                    .iter()
                    .filter(|m| p.matches(m))
                    .cloned()
                    .collect(),
                Err(_) => Vec::new(),
            },
            ("list", Json::String(s)) => s
                .split(',')
                .filter(|m| self.minions.iter().any(|x| x == m))
                .map(str::to_owned)
                .collect(),
            // Grains, pillar, compound ...: every minion matches.
            _ => self.minions.clone(),
        }
    }

    fn minion_return(&self, fun: &str, minion: &str, arg: &Json) -> Json {
        if let Some(r) = lock(&self.returns).get(fun) {
            return r.clone();
        }
        match fun {
            "test.ping" => json!(true),
            "test.arg" | "test.arg_repr" => json!({"args": arg, "kwargs": {}}),
            "test.echo" => arg.get(0).cloned().unwrap_or(Json::Null),
            "saltutil.find_job" => json!({}),
            "sys.list_functions" => json!(["test.arg", "test.echo", "test.ping", "grains.items"]),
            "grains.items" => json!({"id": minion, "os": "Debian", "kernel": "Linux"}),
            _ => json!(format!("'{fun}' is not available.")),
        }
    }

    fn runner(&self, load: &Json) -> Reply {
        let Some(fun) = str_of(load, "fun") else {
            return Reply::Value(json!("Some exception handling minion payload"));
        };
        let caller = match self.authenticate(load) {
            Ok(c) if c.acl.contains(&"@runner") => c,
            Ok(c) => return runner_auth_error("eauth", &c.name),
            Err(kind) => return runner_auth_error(kind, str_of(load, "username").unwrap_or("")),
        };
        let jid = self.new_jid();
        let tag = format!("salt/run/{jid}");
        let kwarg = load.get("kwarg").cloned().unwrap_or_else(|| json!({}));
        let args = kwarg.get("arg").cloned().unwrap_or_else(|| json!([]));
        let kwargs = kwarg.get("kwarg").cloned().unwrap_or_else(|| json!({}));
        let fun_full = format!("runner.{fun}");
        let base = json!({"fun": fun_full, "fun_args": [args, kwargs], "jid": jid,
            "user": caller.name, "_stamp": STAMP});
        self.fire(&format!("{tag}/new"), &base);
        let ret = match fun {
            "test.arg" => Some(json!({"args": args, "kwargs": kwargs})),
            "jobs.lookup_jid" => {
                let want = args
                    .get(0)
                    .or_else(|| kwargs.get("jid"))
                    .and_then(Json::as_str)
                    .unwrap_or("");
                let jobs = lock(&self.jobs);
                Some(Json::Object(jobs.get(want).cloned().unwrap_or_default()))
            }
            "manage.up" => Some(json!(self.minions)),
            "jobs.list_job" => {
                let want = kwargs
                    .get("jid")
                    .or_else(|| args.get(0))
                    .and_then(Json::as_str)
                    .unwrap_or("");
                let jobs = lock(&self.jobs);
                Some(match jobs.get(want) {
                    Some(rets) => {
                        let result: Map<String, Json> = rets
                            .iter()
                            .map(|(m, r)| {
                                (
                                    m.clone(),
                                    json!({"return": r, "retcode": 0, "success": true}),
                                )
                            })
                            .collect();
                        json!({"jid": want, "Minions": rets.keys().collect::<Vec<_>>(),
                            "Result": result, "StartTime": "2026, Jan 01 00:00:00.000000"})
                    }
                    None => json!({}),
                })
            }
            "jobs.list_jobs" => {
                let jobs = lock(&self.jobs);
                Some(Json::Object(
                    jobs.keys()
                        .map(|j| {
                            (
                                j.clone(),
                                json!({"Function": "test.ping", "Target": "*",
                            "Target-type": "glob", "User": "saltdev",
                            "StartTime": "2026, Jan 01 00:00:00.000000"}),
                            )
                        })
                        .collect(),
                ))
            }
            _ => lock(&self.returns).get(&fun_full).cloned(),
        };
        // Salt 3008 fires no `ret` event for an unknown runner function.
        if let Some(ret) = ret {
            let mut data = base;
            if let Some(o) = data.as_object_mut() {
                o.insert("return".into(), ret);
                o.insert("success".into(), json!(true));
            }
            self.fire(&format!("{tag}/ret"), &data);
        }
        Reply::Value(json!({"jid": jid, "tag": tag}))
    }

    fn wheel(&self, load: &Json) -> Reply {
        let Some(fun) = str_of(load, "fun") else {
            return Reply::Value(json!("Some exception handling minion payload"));
        };
        let caller = match self.authenticate(load) {
            Ok(c) if c.acl.contains(&"@wheel") => c,
            Ok(c) => return runner_auth_error("eauth", &c.name),
            Err(kind) => return runner_auth_error(kind, str_of(load, "username").unwrap_or("")),
        };
        let jid = self.new_jid();
        let tag = format!("salt/wheel/{jid}");
        let fun_full = format!("wheel.{fun}");
        let (ret, success) = match fun {
            "key.list_all" => (
                json!({"local": ["master.pem", "master.pub"], "minions": self.minions,
                    "minions_denied": [], "minions_pre": [], "minions_rejected": []}),
                true,
            ),
            "key.gen_accept" => (
                json!({"priv": FAKE_PRIVATE_KEY, "pub": "-----BEGIN PUBLIC KEY-----\nTESTKIT\n-----END PUBLIC KEY-----\n"}),
                true,
            ),
            _ => match lock(&self.returns).get(&fun_full) {
                Some(r) => (r.clone(), true),
                None => (
                    json!(format!("Exception occurred in wheel {fun}: UnboundLocalError: cannot access local variable 'proc_fn' where it is not associated with a value")),
                    false,
                ),
            },
        };
        let mut data = Map::new();
        data.insert("fun".into(), json!(fun_full));
        data.insert("jid".into(), json!(jid));
        data.insert("user".into(), json!(caller.name));
        data.insert("_stamp".into(), json!(STAMP));
        self.fire(&format!("{tag}/new"), &Json::Object(data.clone()));
        data.insert("tag".into(), json!(tag));
        data.insert("return".into(), ret);
        data.insert("success".into(), json!(success));
        let data = Json::Object(data);
        self.fire(&format!("{tag}/ret"), &data);
        Reply::Value(json!({"tag": tag, "data": data}))
    }

    fn fire(&self, tag: &str, data: &Json) {
        self.bus.fire(tag, data);
    }
}

/// The runner/wheel error replies, by authentication kind.
fn runner_auth_error(kind: &str, user: &str) -> Reply {
    match kind {
        "token" => Reply::error(
            "TokenAuthenticationError",
            "Authentication failure of type \"token\" occurred.",
        ),
        "user" => Reply::error(
            "UserAuthenticationError",
            "Authentication failure of type \"user\" occurred",
        ),
        _ => Reply::error(
            "EauthAuthenticationError",
            &format!("Authentication failure of type \"eauth\" occurred for user {user}."),
        ),
    }
}

/// 128 random bits for a token (the fake needs no cryptographic quality,
/// only tokens that differ).
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let s = std::collections::hash_map::RandomState::new();
    let mut h = s.build_hasher();
    h.write_u128(now().to_bits() as u128);
    let a = h.finish();
    let mut h = s.build_hasher();
    h.write_u64(a);
    (u128::from(a) << 64) | u128::from(h.finish())
}
