//! A lowstate chunk parsed once into typed fields, when it enters
//! [`Netapi`](super::Netapi): the client, the credentials, target and target
//! type, `fun`, `arg`/`kwarg`, timeouts, the batch and subset fields and
//! `full_return`. The clients read these fields instead of looking the same
//! keys up in the JSON map again and again.
//!
//! Parsing never fails: a field of the wrong type is kept as the error (or
//! the raw value) that the client using it reports, so every client reports
//! the same error, in the same order of checks, as when it read the map
//! itself. Python truthiness, seconds and `arg`/`kwarg` normalisation are
//! `crate::args`'s rules.
//!
//! The chunk as sent stays in [`Low::fields`], in its order: Salt forwards
//! the keys a client does not consume to the master (that is how the
//! credentials reach it), and so does halite.

use serde_json::{Map, Value as Json};

use super::{Client, Lowstate};
use crate::args::{seconds, truthy};
use crate::error::{Result, SaltError};

/// The credentials of a chunk, as sent (any JSON type: the master judges
/// them). `Debug` shows which are present, never their values.
#[derive(Clone, Default, PartialEq)]
pub struct Credentials {
    pub eauth: Option<Json>,
    pub username: Option<Json>,
    pub password: Option<Json>,
    pub token: Option<Json>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let present = |v: &Option<Json>| if v.is_some() { "<set>" } else { "<none>" };
        f.debug_struct("Credentials")
            .field("eauth", &self.eauth)
            .field("username", &self.username)
            .field("password", &present(&self.password))
            .field("token", &present(&self.token))
            .finish()
    }
}

/// One lowstate chunk, parsed.
#[derive(Clone)]
pub struct Low {
    /// `client`, or NetapiClient's error for a missing or unknown one.
    pub client: Result<Client>,
    pub credentials: Credentials,
    /// `tgt`, as sent (a string or a list is valid; `local*` checks).
    pub tgt: Option<Json>,
    /// `tgt_type`, or its old name `expr_form` when `tgt_type` is absent.
    pub tgt_type: Option<Json>,
    /// `fun`, as sent (a string, or a list for a compound `local` job).
    pub fun: Option<Json>,
    /// `arg` as a list: absent or null is none, a scalar is one argument.
    pub arg: Vec<Json>,
    /// `kwarg` as a map (absent or null is empty), or the error a client
    /// reports when it needs it.
    pub kwarg: Result<Map<String, Json>>,
    /// `timeout` in seconds (a number or numeric string, finite and not
    /// negative; anything else is unset).
    pub timeout: Option<f64>,
    /// `gather_job_timeout` in seconds, as `timeout`.
    pub gather_job_timeout: Option<f64>,
    /// `full_return`, by Python truthiness.
    pub full_return: bool,
    /// `raw_shell`, by Python truthiness.
    pub raw_shell: bool,
    /// `jid`, as sent.
    pub jid: Option<Json>,
    /// `ret` (returners), as sent.
    pub ret: Option<Json>,
    /// `batch` (a count or a percentage), as sent.
    pub batch: Option<Json>,
    /// `batch_wait` in seconds, as `timeout`.
    pub batch_wait: Option<f64>,
    /// `failhard`, by Python truthiness.
    pub failhard: bool,
    /// `subset`, or its short name `sub` when `subset` is absent.
    pub subset: Option<Json>,
    /// The chunk as sent, every key in its order: the typed fields above
    /// and the rest, which clients forward to the master.
    pub fields: Lowstate,
}

impl Low {
    /// Parse a chunk. Never fails; see the module documentation.
    pub fn parse(fields: Lowstate) -> Low {
        let get = |k: &str| fields.get(k).cloned();
        let either = |a: &str, b: &str| fields.get(a).or_else(|| fields.get(b)).cloned();
        Low {
            client: match fields.get("client") {
                Some(Json::String(c)) => c.parse(),
                Some(other) => Err(SaltError::Invocation(format!(
                    "Invalid client specified: '{other}'"
                ))),
                None => Err(SaltError::Invocation("No client specified".into())),
            },
            credentials: Credentials {
                eauth: get("eauth"),
                username: get("username"),
                password: get("password"),
                token: get("token"),
            },
            tgt: get("tgt"),
            tgt_type: either("tgt_type", "expr_form"),
            fun: get("fun"),
            arg: match fields.get("arg") {
                None | Some(Json::Null) => Vec::new(),
                Some(Json::Array(a)) => a.clone(),
                Some(other) => vec![other.clone()],
            },
            kwarg: match fields.get("kwarg") {
                None | Some(Json::Null) => Ok(Map::new()),
                Some(Json::Object(m)) => Ok(m.clone()),
                Some(_) => Err(SaltError::Invocation("'kwarg' must be a dictionary".into())),
            },
            timeout: seconds(fields.get("timeout")),
            gather_job_timeout: seconds(fields.get("gather_job_timeout")),
            full_return: truthy(fields.get("full_return")),
            raw_shell: truthy(fields.get("raw_shell")),
            jid: get("jid"),
            ret: get("ret"),
            batch: get("batch"),
            batch_wait: seconds(fields.get("batch_wait")),
            failhard: truthy(fields.get("failhard")),
            subset: either("subset", "sub"),
            fields,
        }
    }

    /// `fun` as a required non-empty string (`runner`, `wheel`).
    pub fn fun_str(&self) -> Result<&str> {
        match &self.fun {
            Some(Json::String(s)) if !s.is_empty() => Ok(s),
            Some(_) => Err(SaltError::Invocation(
                "'fun' must be a non-empty string".into(),
            )),
            None => Err(SaltError::Invocation(
                "Missing required argument 'fun'".into(),
            )),
        }
    }

    /// The keys of the chunk other than `consumed`, in their order, with
    /// their values: what a client forwards to the master.
    pub fn rest<'a>(
        &'a self,
        consumed: &'a [&'a [&'a str]],
    ) -> impl Iterator<Item = (&'a String, &'a Json)> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| !consumed.iter().any(|keys| keys.contains(&k.as_str())))
    }
}

impl From<Lowstate> for Low {
    fn from(fields: Lowstate) -> Low {
        Low::parse(fields)
    }
}

/// Field names and types only: a chunk carries credentials.
impl std::fmt::Debug for Low {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Low")
            .field("client", &self.client)
            .field("credentials", &self.credentials)
            .field("tgt", &self.tgt)
            .field("tgt_type", &self.tgt_type)
            .field("fun", &self.fun)
            .field("keys", &self.fields.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn low(j: Json) -> Low {
        Low::parse(j.as_object().cloned().expect("an object"))
    }

    #[test]
    fn fields_are_typed_once() {
        let l = low(json!({
            "client": "local", "tgt": "*", "expr_form": "list", "fun": "test.arg",
            "arg": "one", "kwarg": null, "timeout": "2.5", "gather_job_timeout": -1,
            "full_return": "yes", "raw_shell": 0, "sub": 2, "batch_wait": 1,
            "eauth": "pam", "username": "u", "password": "secret", "other": [1]
        }));
        assert_eq!(l.client, Ok(Client::Local));
        assert_eq!(l.tgt_type, Some(json!("list")));
        assert_eq!(l.arg, vec![json!("one")]);
        assert_eq!(l.kwarg, Ok(Map::new()));
        assert_eq!(l.timeout, Some(2.5));
        assert_eq!(l.gather_job_timeout, None);
        assert!(l.full_return && !l.raw_shell && !l.failhard);
        assert_eq!(l.subset, Some(json!(2)));
        assert_eq!(l.batch_wait, Some(1.0));
        assert_eq!(l.credentials.password, Some(json!("secret")));
        let rest: Vec<&str> = l
            .rest(&[&["client", "tgt", "fun", "arg", "kwarg"], &["sub"]])
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            rest,
            [
                "expr_form",
                "timeout",
                "gather_job_timeout",
                "full_return",
                "raw_shell",
                "batch_wait",
                "eauth",
                "username",
                "password",
                "other"
            ]
        );
    }

    #[test]
    fn tgt_type_wins_over_expr_form_even_when_null() {
        let l = low(json!({"tgt_type": null, "expr_form": "list"}));
        assert_eq!(l.tgt_type, Some(Json::Null));
        let l = low(json!({"subset": null, "sub": 4}));
        assert_eq!(l.subset, Some(Json::Null));
    }

    #[test]
    fn bad_types_are_kept_as_the_clients_errors() {
        let l = low(json!({"client": 5, "kwarg": [1], "fun": ""}));
        assert_eq!(
            l.client,
            Err(SaltError::Invocation(
                "Invalid client specified: '5'".into()
            ))
        );
        assert_eq!(
            l.kwarg,
            Err(SaltError::Invocation("'kwarg' must be a dictionary".into()))
        );
        assert_eq!(
            l.fun_str(),
            Err(SaltError::Invocation(
                "'fun' must be a non-empty string".into()
            ))
        );
        assert_eq!(
            low(json!({})).client,
            Err(SaltError::Invocation("No client specified".into()))
        );
        assert_eq!(
            low(json!({"client": "nope"})).client,
            Err(SaltError::Invocation(
                "Invalid client specified: 'nope'".into()
            ))
        );
        assert_eq!(
            low(json!({})).fun_str(),
            Err(SaltError::Invocation(
                "Missing required argument 'fun'".into()
            ))
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let l = low(json!({"client": "local", "password": "hunter2", "token": "t0k3n"}));
        let text = format!("{l:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("t0k3n"),
            "{text}"
        );
    }
}
