//! Build facts for the `proxyd_build_info` metric: the git commit and the compiler's version.
//!
//! Two commands' output is all it takes, so no build-dependency (vergen-gitcl would bring
//! several, and a placeholder string where git is missing). `PROXYD_REVISION` in the
//! environment wins (a Docker build has no .git); a build never fails for want of either:
//! src/metrics.rs says "unknown" then.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PROXYD_REVISION");
    let revision = std::env::var("PROXYD_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(git_revision);
    if let Some(revision) = revision {
        println!("cargo:rustc-env=PROXYD_REVISION={}", revision.trim());
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // "rustc 1.89.0 (29483883e 2025-08-04)": the version is the second word.
    if let Some(version) = output(Command::new(rustc).arg("--version"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
    {
        println!("cargo:rustc-env=PROXYD_RUSTC={version}");
    }
}

/// The stdout of `cmd`, trimmed, when it succeeds and says something.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    output(Command::new("git").arg("-C").arg(dir).args(args))
}

/// HEAD's commit (12 hex digits), and the files to watch so that a new commit rebuilds.
fn git_revision() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let revision = git(&dir, &["rev-parse", "--short=12", "HEAD"])?;
    // HEAD, the branch it names and packed-refs (git paths, right in a worktree too). Only
    // files that exist: cargo reruns a script on every build for one that does not.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watch.extend(git(&dir, &["symbolic-ref", "-q", "HEAD"]));
    for name in watch {
        if let Some(path) = git(&dir, &["rev-parse", "--git-path", &name]) {
            let path = dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Some(revision)
}
