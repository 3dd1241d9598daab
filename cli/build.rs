//! Puts the git commit this binary is built from into `mxfed --version`
//! (env `MXFED_GIT_COMMIT` at compile time). Outside a git checkout (a
//! source tarball) it is "unknown", unless MXFED_GIT_COMMIT is set.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=MXFED_GIT_COMMIT");
    let commit = std::env::var("MXFED_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MXFED_GIT_COMMIT={commit}");
    // Built again when HEAD moves: HEAD itself (a checkout), the branch it
    // names (a commit), packed-refs (a gc), and HEAD's reflog (every commit,
    // checkout and reset, also of a branch that was only in packed-refs).
    // Only files that exist: a missing one would run this script at every
    // build.
    let mut watched = vec![
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--git-path", "logs/HEAD"]),
    ];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
