//! README's quick start, for real: `deploy/quickstart.sh run` boots two
//! Debian systems with systemd as init (systemd-nspawn, each in its own
//! network namespace, joined by a veth pair, dnsmasq for DNS), and runs the
//! quick start's lines in each: `apt install ./mxfed_<version>_amd64.deb`,
//! `mxfed init`, `mxfed postfix setup`, `systemctl enable --now mxfed`,
//! `invite`, `join`, `domains add`, `status`. It checks that each line it
//! runs for "me" is in README.md as written, what the package installs and
//! that it starts nothing before init, that the agents run under the
//! unit's hardening and tell systemd they are ready, that the sandboxed
//! agents rewrite the maps and reload Postfix (RCPT 250 for the friend's
//! domains, refusal for others), `systemctl reload`, and purge.
//!
//! Needs root (CI runs as root) and the Debian mirror this machine's apt
//! sources name, for the one-time debootstrap; missing packages are
//! installed by the script; nothing is skipped. The package is the one the
//! test command (deploy/test.sh) built with deploy/deb.sh just before
//! `cargo test`, since cargo cannot build while it runs the tests; the
//! test checks it holds this very commit.

use crate::util::deploy_script;

#[test]
fn the_readme_quick_start_runs_under_systemd() {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    let deb = target.join(format!(
        "debian/mxfed_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        deb.exists(),
        "no package at {}: the test command (bash deploy/test.sh) builds it with deploy/deb.sh first",
        deb.display()
    );
    let work = tempfile::tempdir().unwrap();
    let out = deploy_script(
        "quickstart.sh",
        "run",
        &[
            ("MXFED_QS_DIR", work.path().join("qs").as_os_str()),
            ("MXFED_QS_TAG", format!("qs{}", std::process::id()).as_ref()),
            ("MXFED_DEB", deb.as_os_str()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quick start failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // The package holds this commit's build, not an older one.
    let version = format!(
        "mxfed {} (git {})",
        env!("CARGO_PKG_VERSION"),
        env!("MXFED_GIT_COMMIT")
    );
    let install = format!(
        "me# apt install ./mxfed_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    );
    let installed =
        format!("ok: me: {version}; unit, example config, man pages, completions; not started");
    for step in [
        install.as_str(),
        installed.as_str(),
        "me# systemctl enable --now mxfed",
        "ok: me: mxfed.service active",
        "ok: friend: mxfed.service active",
        "ok: paired and connected",
        "ok: RCPT TO:<x@example.org> at mail.friend.example: 250",
        "ok: RCPT TO:<x@example.com> at mail.me.example: 250",
        "(not relayed)",
        "ok: Type=notify, watchdog 1min; journal fields, e.g. PEER=friend: ",
        "ok: reload: recheck_interval in force, listen named for a restart, same process, still connected",
        "paired and connected again",
        "ok: no restarts, no errors and no permission errors in either journal",
        "ok: reinstalled: config kept, agent restarted and connected",
        "ok: removed: config kept; purged: /etc/mxfed and /var/lib/mxfed gone, the maps and Postfix untouched",
        "ALL QUICK START CHECKS PASSED",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in\n{stdout}");
    }
}
