//! README's quick start, for real: `deploy/quickstart.sh run` boots two
//! Debian systems with systemd as init (systemd-nspawn, each in its own
//! network namespace, joined by a veth pair, dnsmasq for DNS), and runs the
//! quick start's lines in each: `install`, `mxfed init`, `mxfed postfix
//! setup`, the unit from deploy/ with `systemctl enable --now`, `invite`,
//! `join`, `domains add`, `status`. It checks that each line it runs for
//! "me" is in README.md as written, that the agents run under the unit's
//! hardening, and that the sandboxed agents rewrite the maps and reload
//! Postfix (RCPT 250 for the friend's domains, refusal for others).
//!
//! Needs root (CI runs as root) and deb.debian.org for the one-time
//! debootstrap; missing packages are installed by the script; nothing is
//! skipped. The mxfed binary is this build's, since `cargo build --release`
//! cannot run while cargo runs the tests; the demo runs that line.

use crate::util::deploy_script;

#[test]
fn the_readme_quick_start_runs_under_systemd() {
    let work = tempfile::tempdir().unwrap();
    let out = deploy_script(
        "quickstart.sh",
        "run",
        &[
            ("MXFED_QS_DIR", work.path().join("qs").as_os_str()),
            ("MXFED_QS_TAG", format!("qs{}", std::process::id()).as_ref()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quick start failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for step in [
        "me# install -m 644 deploy/mxfed.service /etc/systemd/system/ && systemctl enable --now mxfed",
        "ok: me: mxfed.service active",
        "ok: friend: mxfed.service active",
        "ok: paired and connected",
        "ok: RCPT TO:<x@example.org> at mail.friend.example: 250",
        "ok: RCPT TO:<x@example.com> at mail.me.example: 250",
        "(not relayed)",
        "paired and connected again",
        "ALL QUICK START CHECKS PASSED",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in\n{stdout}");
    }
}
