//! Loading: finding the main file, reading YAML (with Salt's YAML 1.1 booleans),
//! and following `default_include` / `include`.

#[allow(unused_imports)]
use super::*;

/// Salt's `load_config` path choice. The environment is passed in so that it can be tested.
pub(super) fn resolve_config_path(
    explicit: Option<&Path>,
    master_config_env: Option<OsString>,
    config_dir_env: Option<OsString>,
) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    let from_env = match master_config_env.filter(|v| !v.is_empty()) {
        Some(file) => Some(PathBuf::from(file)),
        None => config_dir_env
            .filter(|v| !v.is_empty())
            .map(|dir| PathBuf::from(dir).join("master")),
    };
    match from_env {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// Read one config file into a mapping (Salt's `_read_conf_file`).
pub(super) fn read_conf_file(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_document(&text, path)
}

/// Parse one YAML document as a config mapping. As in Salt's `safe_load(...) or {}`,
/// an empty document (or any other "falsy" top level) counts as `{}`. Any other
/// non-mapping is an error.
pub(super) fn parse_document(text: &str, path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let yaml_error = |message: String| ConfigError::Yaml {
        path: path.to_path_buf(),
        message,
    };
    let mut doc: YamlValue = serde_norway::from_str(text).map_err(|e| yaml_error(e.to_string()))?;
    doc.apply_merge().map_err(|e| yaml_error(e.to_string()))?;
    match yaml_to_json(doc).map_err(yaml_error)? {
        Value::Object(map) => Ok(map),
        top if !py_truthy(&top) => Ok(Map::new()),
        top => Err(yaml_error(format!(
            "conf should be a document (a mapping), not {}",
            json_kind(&top)
        ))),
    }
}

/// Convert parsed YAML into JSON. Map keys become strings (`1` → `"1"`, `true` →
/// `"true"`, null → `"null"`, as Python's `json.dumps` writes them). The YAML 1.1
/// boolean words become booleans. Floats JSON cannot hold (`.inf`, `.nan`) are
/// kept as strings.
pub(super) fn yaml_to_json(value: YamlValue) -> Result<Value, String> {
    Ok(match value {
        YamlValue::Null => Value::Null,
        YamlValue::Bool(b) => Value::Bool(b),
        YamlValue::Number(n) => yaml_number(&n),
        YamlValue::String(s) => match yaml11_bool(&s) {
            Some(b) => Value::Bool(b),
            None => Value::String(s),
        },
        YamlValue::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        YamlValue::Mapping(mapping) => {
            let mut out = Map::new();
            for (key, value) in mapping {
                out.insert(yaml_key(key)?, yaml_to_json(value)?);
            }
            Value::Object(out)
        }
        YamlValue::Tagged(tagged) => {
            return Err(format!(
                "could not determine a constructor for the tag '{}'",
                tagged.tag
            ))
        }
    })
}

pub(super) fn yaml_number(n: &serde_norway::Number) -> Value {
    if let Some(u) = n.as_u64() {
        Value::from(u)
    } else if let Some(i) = n.as_i64() {
        Value::from(i)
    } else {
        n.as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(n.to_string()), Value::Number)
    }
}

pub(super) fn yaml_key(key: YamlValue) -> Result<String, String> {
    match key {
        YamlValue::String(s) => Ok(s),
        YamlValue::Number(n) => Ok(n.to_string()),
        YamlValue::Bool(b) => Ok(b.to_string()),
        YamlValue::Null => Ok("null".to_owned()),
        YamlValue::Sequence(_) | YamlValue::Mapping(_) | YamlValue::Tagged(_) => {
            Err("found unacceptable key (a sequence or mapping cannot be a key)".to_owned())
        }
    }
}

/// The words PyYAML's YAML 1.1 resolver reads as booleans but YAML 1.2 does not
/// (plus the ones both agree on).
pub(super) fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => Some(true),
        "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// Read the include value of `key` (`default_include` or `include`) as a list of
/// patterns: a string or a list of strings. Empty values mean "nothing".
pub(super) fn include_patterns(
    value: &Value,
    key: &str,
    file: &Path,
) -> Result<Vec<String>, ConfigError> {
    let invalid = || ConfigError::Invalid {
        key: key.to_owned(),
        message: format!(
            "in {}: expected a glob or a list of globs, got {value}",
            file.display()
        ),
    };
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(invalid))
            .collect(),
        _ => Err(invalid()),
    }
}

/// Salt's `include_config`. Each pattern is taken relative to the directory of
/// `relative_to` and globbed, and the matches are read in sorted order and
/// deep-merged with each other. An include inside an included file is resolved
/// relative to that file.
///
/// As in Salt (`exit_on_config_errors=False`), an included file that is not a valid
/// YAML mapping is skipped with a warning, and a glob that matches nothing is only
/// worth a warning for `include:` (`warn_unmatched`). A file that cannot be read at
/// all is an error. Salt crashes on it too.
pub(super) fn include_config(
    value: &Value,
    key: &str,
    relative_to: &Path,
    warn_unmatched: bool,
    depth: usize,
    warnings: &mut Vec<String>,
) -> Result<Map<String, Value>, ConfigError> {
    let mut configuration = Map::new();
    let patterns = include_patterns(value, key, relative_to)?;
    if patterns.is_empty() {
        return Ok(configuration);
    }
    if depth > MAX_INCLUDE_DEPTH {
        return Err(ConfigError::Invalid {
            key: key.to_owned(),
            message: format!(
                "includes nested more than {MAX_INCLUDE_DEPTH} deep at {}; is there an include cycle?",
                relative_to.display()
            ),
        });
    }
    for pattern in patterns {
        let full = include_glob(&pattern, relative_to);
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let entries = glob::glob_with(&full, options).map_err(|e| ConfigError::Invalid {
            key: key.to_owned(),
            message: format!("bad glob '{full}': {e}"),
        })?;
        let mut matches = Vec::new();
        for entry in entries {
            match entry {
                Ok(path) => matches.push(path),
                // Python's glob silently skips directories it cannot list.
                Err(e) => warn(warnings, format!("while globbing '{full}': {e}")),
            }
        }
        if matches.is_empty() && warn_unmatched {
            warn(
                warnings,
                format!("\"{key}\" path/glob '{full}' matches no files"),
            );
        }
        matches.sort_by_cached_key(|p| p.to_string_lossy().into_owned());
        for file in matches {
            let mut opts = match read_conf_file(&file) {
                Ok(opts) => opts,
                Err(err @ ConfigError::Yaml { .. }) => {
                    warn(warnings, format!("{err}; skipping this file, as Salt does"));
                    Map::new()
                }
                Err(err) => return Err(err),
            };
            if let Some(nested) = opts.get("include").cloned() {
                let nested = include_config(
                    &nested,
                    "include",
                    &file,
                    warn_unmatched,
                    depth + 1,
                    warnings,
                )?;
                top_level_update(&mut opts, nested);
            }
            deep_merge(&mut configuration, opts);
        }
    }
    Ok(configuration)
}

/// Turn an include pattern into an absolute (or cwd-relative) glob: `~` is
/// expanded and the directory of `relative_to` is prepended. That directory is
/// escaped so a `[` in it is not read as glob syntax.
pub(super) fn include_glob(pattern: &str, relative_to: &Path) -> String {
    let pattern = expand_user(pattern);
    if pattern.starts_with('/') {
        return pattern;
    }
    let dir = relative_to.parent().unwrap_or_else(|| Path::new(""));
    py_join(&glob::Pattern::escape(&dir.to_string_lossy()), &pattern)
}

/// `os.path.expanduser` for the forms that matter: `~` and `~/...`.
pub(super) fn expand_user(pattern: &str) -> String {
    let home = std::env::var("HOME").ok().filter(|h| !h.is_empty());
    match (pattern.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            format!("{}{rest}", home.trim_end_matches('/'))
        }
        _ => pattern.to_owned(),
    }
}
