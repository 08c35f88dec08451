//! Every way a Salt call can fail, as one typed error.
//!
//! The master reports errors as `{"error": {"name": "<Python exception>",
//! "message": "..."}}`, as magic strings (`"bad load"`, `"Some exception
//! handling minion payload"`), or not at all (a request that is never
//! answered). [`SaltError::from_master`] turns the first two into variants;
//! the transports produce the rest. HTTP layers map variants to status codes
//! in one place.

use std::fmt;

/// A failed Salt call. Messages never contain credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaltError {
    /// Credentials missing or rejected (`AuthenticationError`,
    /// `EauthAuthenticationError`, `UserAuthenticationError`).
    #[error("{0}")]
    Authentication(String),
    /// A token that the master does not know or that has expired
    /// (`TokenAuthenticationError`).
    #[error("{0}")]
    Token(String),
    /// Authenticated, but the eauth ACL does not allow the call
    /// (`AuthorizationError`).
    #[error("{0}")]
    Authorization(String),
    /// The caller asked for something invalid: unknown or disabled client,
    /// unknown nodegroup, malformed lowstate (`SaltInvocationError`).
    #[error("{0}")]
    Invocation(String),
    /// The master raised while handling the request, or answered something
    /// that is not a valid reply.
    #[error("{0}")]
    Master(String),
    /// The master (or the job) did not answer in time (`SaltClientTimeout`).
    #[error("{0}")]
    Timeout(String),
    /// The master cannot be reached (connection refused, event bus down).
    #[error("{0}")]
    Unreachable(String),
}

/// Which class of failure, for callers that map errors to status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Authentication,
    Token,
    Authorization,
    Invocation,
    Master,
    Timeout,
    Unreachable,
}

impl SaltError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SaltError::Authentication(_) => ErrorKind::Authentication,
            SaltError::Token(_) => ErrorKind::Token,
            SaltError::Authorization(_) => ErrorKind::Authorization,
            SaltError::Invocation(_) => ErrorKind::Invocation,
            SaltError::Master(_) => ErrorKind::Master,
            SaltError::Timeout(_) => ErrorKind::Timeout,
            SaltError::Unreachable(_) => ErrorKind::Unreachable,
        }
    }

    /// The human message.
    pub fn message(&self) -> &str {
        match self {
            SaltError::Authentication(m)
            | SaltError::Token(m)
            | SaltError::Authorization(m)
            | SaltError::Invocation(m)
            | SaltError::Master(m)
            | SaltError::Timeout(m)
            | SaltError::Unreachable(m) => m,
        }
    }

    /// The master's `{"error": {"name", "message"}}` reply, as Salt's
    /// `salt.utils.error.raise_error` would raise it.
    pub fn from_master(name: &str, message: &str) -> SaltError {
        let message = if message.is_empty() {
            name.to_owned()
        } else {
            message.to_owned()
        };
        match name {
            "AuthenticationError" | "EauthAuthenticationError" | "UserAuthenticationError" => {
                SaltError::Authentication(message)
            }
            "TokenAuthenticationError" => SaltError::Token(message),
            "AuthorizationError" => SaltError::Authorization(message),
            "SaltInvocationError" => SaltError::Invocation(message),
            "SaltClientTimeout" | "SaltReqTimeoutError" => SaltError::Timeout(message),
            _ => SaltError::Master(format!("{name}: {message}")),
        }
    }
}

/// Shorthand for results of Salt calls.
pub type Result<T, E = SaltError> = std::result::Result<T, E>;

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
