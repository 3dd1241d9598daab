//! The seed's story end to end: a network namespace with one address per
//! host, dnsmasq serving MX 0 / MX 10 records, real Postfix for me, friend
//! and a sender, and three mxfed agents (me, friend, a hostile mallory)
//! driven through the CLI exactly as a user would. The story itself lives
//! in `deploy/lab.sh demo`, which is also the demo a newcomer runs; it
//! checks every step and exits non-zero at the first that fails.
//!
//! Needs root (CI runs as root). Missing packages are installed by the
//! script; nothing is skipped.

use std::process::Command;

use crate::util::deploy_script;

#[test]
fn the_seeds_story_end_to_end_in_a_network_namespace() {
    let lab = tempfile::tempdir().unwrap();
    let out = deploy_script(
        "lab.sh",
        "demo",
        &[
            ("MXFED_LAB", lab.path().join("lab").as_os_str()),
            (
                "MXFED_LAB_NETNS",
                format!("mxfed-e2e-{}", std::process::id()).as_ref(),
            ),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lab demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for step in [
        "ok: paired and connected",
        "RCPT TO:<bob@friend.test> at mail.me.test: 250",
        "RCPT TO:<someone@other.test> at mail.me.test: 554",
        "RCPT TO:<nobody@friend.test> at mail.me.test: 550",
        "ok: me holds 1 message for friend, and friend sees it",
        "delivered to friend's mailbox",
        "Subject: held while friend was down",
        "RCPT x@friend2.test at me is 554",
        "RCPT bob@friend.test at me is 554",
        // The squat: mallory points friend.test at friend's own server.
        "no proof that this peer speaks for friend.test",
        "ALL CHECKS PASSED",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in\n{stdout}");
    }
}

#[test]
fn the_lab_comes_up_for_a_look_around_and_goes_down() {
    let lab = tempfile::tempdir().unwrap();
    let dir = lab.path().join("lab");
    let ns = format!("mxfed-up-{}", std::process::id());
    let lab_sh = |cmd: &str| {
        deploy_script(
            "lab.sh",
            cmd,
            &[
                ("MXFED_LAB", dir.as_os_str()),
                ("MXFED_LAB_NETNS", ns.as_ref()),
            ],
        )
    };
    // Whatever happens below, the lab goes (down is idempotent).
    struct Down<F: Fn(&str) -> std::process::Output>(F);
    impl<F: Fn(&str) -> std::process::Output> Drop for Down<F> {
        fn drop(&mut self) {
            let _ = (self.0)("down");
        }
    }
    let guard = Down(lab_sh);
    let lab_sh = &guard.0;
    let out = lab_sh("up");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lab.sh up failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The command it prints for reaching an agent works as printed.
    let hint = stdout
        .lines()
        .find_map(|l| l.strip_prefix("running; try: "))
        .expect("up prints how to reach an agent")
        .to_string();
    let status = Command::new("bash").arg("-c").arg(&hint).output().unwrap();
    let down = lab_sh("down");
    assert!(
        status.status.success() && String::from_utf8_lossy(&status.stdout).contains("friend"),
        "`{hint}`: {}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(String::from_utf8_lossy(&down.stdout).contains("lab removed"));
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&ns),
        "namespace {ns} is gone"
    );
    assert!(!dir.exists(), "lab dir removed");
}
