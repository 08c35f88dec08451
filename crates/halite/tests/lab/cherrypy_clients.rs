//! Real salt-api clients against halite's rest_cherrypy surface: `pepper`
//! (salt-pepper) and `salt` from salt-api-cli, installed from PyPI into
//! `build/clients/venv` on first use (skipped when present), run as child
//! processes with their own `HOME` so that no token cache leaks in or out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::support::*;
use serde_json::{json, Value as Json};

static INSTALL: Mutex<()> = Mutex::new(());

/// The clients' venv, created and filled once.
fn venv() -> PathBuf {
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let venv = repo_root().join("build/clients/venv");
    let bin = venv.join("bin");
    if bin.join("pepper").is_file() && bin.join("salt").is_file() {
        return venv;
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv")
        .success();
    assert!(ok, "cannot create {}", venv.display());
    let out = Command::new(bin.join("pip"))
        .args(["install", "-q", "salt-pepper", "salt-api-cli"])
        .output()
        .expect("pip install");
    assert!(
        out.status.success(),
        "pip install salt-pepper salt-api-cli failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    venv
}

/// Run a client; its exit status, stdout and stderr.
fn run(venv: &Path, home: &Path, prog: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(venv.join("bin").join(prog))
        .args(args)
        .env("HOME", home)
        .env_remove("SALTAPI_URL")
        .env_remove("SALT_API_URL")
        .env_remove("PEPPERRC")
        .env_remove("PEPPERCACHE")
        .current_dir(home)
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_of(what: &str, (ok, out, err): &(bool, String, String)) -> Json {
    assert!(*ok, "{what} failed:\nstdout: {out}\nstderr: {err}");
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{out}\n{err}"))
}

/// A minion's answer to test.ping in pepper's output: `true`, or pepper's
/// `{"ret": true, ...}` form.
fn pinged(v: &Json, minion: &str) -> bool {
    let r = &v["return"][0][minion];
    r == &json!(true) || r["ret"] == json!(true)
}

fn pepper_version(venv: &Path) -> String {
    run(venv, Path::new("/tmp"), "pepper", &["--version"]).1
}

#[test]
fn pepper_against_halite() {
    let lab = lab();
    let venv = venv();
    let h = Halite::cherrypy("");
    let home = TempDir::new();
    let url = h.base.clone();
    let base = [
        "--saltapi-url",
        url.as_str(),
        "-a",
        "auto",
        "--username",
        "saltdev",
        "--password",
        "x",
        "--non-interactive",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
    };
    let call = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&venv, home.path(), "pepper", &args)
    };

    // pepper '*' test.ping (session login, POST /).
    let v = json_of(
        "pepper test.ping",
        &call(with(&["-t", "60", "ms-*", "test.ping"])),
    );
    for m in &lab.minions {
        assert!(pinged(&v, m), "{m} in {v}");
    }

    // Runner and wheel clients.
    let v = json_of(
        "pepper --client runner",
        &call(with(&["--client", "runner", "test.arg", "a", "b=1"])),
    );
    assert_eq!(
        v["return"][0]["data"]["return"]["args"],
        json!(["a"]),
        "{v}"
    );
    assert_eq!(v["return"][0]["data"]["return"]["kwargs"]["b"], json!(1));
    let v = json_of(
        "pepper --client wheel",
        &call(with(&["--client", "wheel", "key.list_all"])),
    );
    let minions = &v["return"][0]["data"]["return"]["minions"];
    for m in &lab.minions {
        assert!(minions.as_array().unwrap().contains(&json!(m)), "{v}");
    }

    // -T -x: the login is cached in a file and reused.
    let cache = home.path().join("pepper.cache");
    let cache_s = cache.to_string_lossy().into_owned();
    let v = json_of(
        "pepper -T -x",
        &call(with(&[
            "-T", "-x", &cache_s, "--client", "runner", "test.arg", "one",
        ])),
    );
    assert_eq!(v["return"][0]["data"]["return"]["args"], json!(["one"]));
    let cached: Json = serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    let token = cached["token"]
        .as_str()
        .expect("a token in the cache")
        .to_owned();
    assert_eq!(cached["user"], "saltdev");
    let v = json_of(
        "pepper -T -x (cached)",
        &call(with(&[
            "-T", "-x", &cache_s, "--client", "runner", "test.arg", "two",
        ])),
    );
    assert_eq!(v["return"][0]["data"]["return"]["args"], json!(["two"]));
    let again: Json = serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    assert_eq!(again["token"], json!(token), "the cached token was reused");

    // -r: a token from /token, commands through /run.
    let v = json_of(
        "pepper -r",
        &call(with(&["-r", "-t", "60", "ms-0", "test.ping"])),
    );
    assert!(pinged(&v, "ms-0"), "{v}");
    eprintln!("pepper version: {}", pepper_version(&venv).trim());
}

#[test]
fn pepper_against_salt_api_too() {
    // The same client against Python salt-api: what works on halite works
    // there (so the test above checks compatibility, not a halite quirk).
    let lab = lab();
    let venv = venv();
    let home = TempDir::new();
    let v = json_of(
        "pepper on salt-api",
        &run(
            &venv,
            home.path(),
            "pepper",
            &[
                "--saltapi-url",
                &lab.api_url,
                "-a",
                "auto",
                "--username",
                "saltdev",
                "--password",
                "x",
                "--non-interactive",
                "--client",
                "runner",
                "test.arg",
                "a",
            ],
        ),
    );
    assert_eq!(
        v["return"][0]["data"]["return"]["args"],
        json!(["a"]),
        "{v}"
    );
}

#[test]
fn salt_api_cli_against_halite() {
    let lab = lab();
    let venv = venv();
    let h = Halite::cherrypy("");
    let home = TempDir::new();
    let url = h.base.clone();
    // salt-api-cli logs in with PAM (the lab's saltdev/saltdev).
    let pam_user = std::env::var("SALT_LAB_PAM_USER").unwrap_or_else(|_| "saltdev".into());
    let pam_pass = std::env::var("SALT_LAB_PAM_PASSWORD").unwrap_or_else(|_| "saltdev".into());
    let base = [
        "--url",
        url.as_str(),
        "--user",
        pam_user.as_str(),
        "--password",
        pam_pass.as_str(),
    ];
    let call = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        run(&venv, home.path(), "salt", &args)
    };
    let v = json_of(
        "salt local test.ping",
        &call(&["local", "ms-*", "test.ping"]),
    );
    assert_eq!(v, json!({"return": [all_true(&lab)]}));
    let token_file = home.path().join(".cache/salt-api-cli/token.json");
    let cached: Json =
        serde_json::from_str(&std::fs::read_to_string(&token_file).unwrap()).unwrap();
    let token = cached["token"].as_str().expect("a cached token").to_owned();
    assert_eq!(cached["eauth"], "pam");

    // The cached token is reused for the next commands.
    let v = json_of("salt runner", &call(&["runner", "test.arg", "hello"]));
    assert_eq!(v["return"][0]["args"], json!(["hello"]), "{v}");
    let v = json_of("salt wheel", &call(&["wheel", "key.finger", "match=ms-0"]));
    let finger = &v["return"][0]["data"]["return"]["minions"]["ms-0"];
    assert!(finger.as_str().is_some_and(|f| f.contains(':')), "{v}");
    let (ok, out, err) = call(&["keys", "list"]);
    assert!(ok, "salt keys list: {out}{err}");
    assert!(out.contains("Accepted (3)"), "{out}");
    for m in &lab.minions {
        assert!(out.contains(m.as_str()), "{m} in {out}");
    }
    // `salt wheel key.list_all` sends `"arg": []`, which the master's wheel
    // fails on (UnboundLocalError 'proc_fn') — with Python salt-api as
    // well: halite passes the same answer through.
    let v = json_of("salt wheel key.list_all", &call(&["wheel", "key.list_all"]));
    let oracle_home = TempDir::new();
    let oracle = json_of(
        "salt wheel key.list_all on salt-api",
        &run(
            &venv,
            oracle_home.path(),
            "salt",
            &[
                "--url",
                &lab.api_url,
                "--user",
                &pam_user,
                "--password",
                &pam_pass,
                "wheel",
                "key.list_all",
            ],
        ),
    );
    let outcome = |v: &Json| {
        let d = &v["return"][0]["data"];
        (d["success"].clone(), d["return"].clone())
    };
    assert!(oracle["return"][0]["data"].is_object(), "{oracle}");
    assert!(outcome(&oracle).0.is_boolean(), "{oracle}");
    assert_eq!(outcome(&v), outcome(&oracle), "same as salt-api");
    let again: Json = serde_json::from_str(&std::fs::read_to_string(&token_file).unwrap()).unwrap();
    assert_eq!(again["token"], json!(token));

    // A token halite no longer knows (revoked through /logout) makes it
    // log in again by itself.
    let status = tokio::runtime::Runtime::new().unwrap().block_on(async {
        client()
            .post(format!("{url}/logout"))
            .header("X-Auth-Token", &token)
            .send()
            .await
            .expect("POST /logout")
            .status()
    });
    assert_eq!(status, 200);
    let v = json_of("salt after logout", &call(&["runner", "test.arg", "again"]));
    assert_eq!(v["return"][0]["args"], json!(["again"]), "{v}");
    let fresh: Json = serde_json::from_str(&std::fs::read_to_string(&token_file).unwrap()).unwrap();
    assert_ne!(
        fresh["token"],
        json!(token),
        "a fresh login after a rejected token"
    );

    // The `logout` subcommand drops the cache.
    let (ok, out, err) = call(&["logout"]);
    assert!(ok, "{out}{err}");
    assert!(!token_file.exists());
}
