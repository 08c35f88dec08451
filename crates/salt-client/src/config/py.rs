//! Small helpers with Python's semantics (truthiness, `os.path` joins).

#[allow(unused_imports)]
use super::*;

/// Log a problem that Salt would only log, and keep it for `warnings()`.
pub(super) fn warn(warnings: &mut Vec<String>, message: String) {
    tracing::warn!("master config: {message}");
    warnings.push(message);
}

/// Python truthiness: null, false, 0, "" and empty containers are false.
pub(super) fn py_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Whether `path` looks like a URI (`urllib.parse.urlparse(path).scheme != ""`).
/// Such log targets are not prefixed with `root_dir`.
pub(super) fn has_uri_scheme(path: &str) -> bool {
    path.split_once(':').is_some_and(|(scheme, _)| {
        let mut chars = scheme.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// `posixpath.join(a, b)` for two parts.
pub(super) fn py_join(a: &str, b: &str) -> String {
    if b.starts_with('/') || a.is_empty() {
        b.to_owned()
    } else if a.ends_with('/') {
        format!("{a}{b}")
    } else {
        format!("{a}/{b}")
    }
}

/// `posixpath.normpath`: drop `.` and empty components, resolve `..` lexically.
/// Exactly two leading slashes are kept, as POSIX allows.
pub(super) fn py_normpath(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let leading = if path.starts_with("//") && !path.starts_with("///") {
        "//"
    } else if path.starts_with('/') {
        "/"
    } else {
        ""
    };
    let mut parts: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." if leading.is_empty() && (parts.is_empty() || parts.last() == Some(&"..")) => {
                parts.push(comp)
            }
            ".." => {
                parts.pop();
            }
            _ => parts.push(comp),
        }
    }
    let joined = format!("{leading}{}", parts.join("/"));
    if joined.is_empty() {
        ".".to_owned()
    } else {
        joined
    }
}

/// `os.path.abspath`: relative paths are taken from the current directory.
pub(super) fn py_abspath(path: &str) -> Result<String, ConfigError> {
    if path.starts_with('/') {
        return Ok(py_normpath(path));
    }
    let cwd = std::env::current_dir().map_err(|e| {
        invalid(
            "root_dir",
            format!("'{path}' is relative and the current directory is unknown: {e}"),
        )
    })?;
    Ok(py_normpath(&py_join(&cwd.to_string_lossy(), path)))
}

/// `salt.utils.path.join(root, path)`: normalise both, strip the second's
/// leading slashes, join, and normalise again.
pub(super) fn salt_path_join(root: &str, path: &str) -> String {
    let root = py_normpath(root);
    let rest = py_normpath(path);
    py_normpath(&py_join(&root, rest.trim_start_matches('/')))
}

/// Salt's `prepend_root_dir` for one path on a POSIX system (where the built-in
/// default root is `/`). A path already under `root_dir` keeps its place. Any
/// other path, absolute or relative, is placed under `root_dir`. `root_dir` must
/// already be absolute and normalised.
///
/// One quirk is kept on purpose, so that halite computes the same path as the
/// master: a path *equal* to `root_dir` comes out as `root_dir/root_dir`.
pub(super) fn prepend_root_dir(root_dir: &str, path: &str) -> String {
    let under_root = path
        .strip_prefix(root_dir)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        .filter(|_| !root_dir.is_empty() && root_dir != "/");
    let relative = match under_root {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    };
    salt_path_join(root_dir, relative)
}
