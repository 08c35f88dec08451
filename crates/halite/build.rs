//! Records, for `halite --version`, the git revision (`HALITE_GIT_REV` wins,
//! for builds from a tarball; `unknown` when neither is available) and the
//! memory allocator the binary is built with (the `jemalloc` feature).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HALITE_GIT_REV");
    let rev = std::env::var("HALITE_GIT_REV").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    // Rebuild when HEAD moves (a worktree's .git is a file naming the real dir).
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
    {
        if out.status.success() {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            println!("cargo:rerun-if-changed={dir}/HEAD");
            println!("cargo:rerun-if-changed={dir}/refs/heads");
        }
    }
    let allocator = if std::env::var_os("CARGO_FEATURE_JEMALLOC").is_some() {
        "jemalloc"
    } else {
        "the system's malloc"
    };
    println!("cargo:rustc-env=HALITE_ALLOCATOR={allocator}");
    println!(
        "cargo:rustc-env=HALITE_GIT_REV={}",
        rev.filter(|r| !r.is_empty())
            .unwrap_or_else(|| "unknown".into())
    );
}
