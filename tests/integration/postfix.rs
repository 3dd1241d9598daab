//! Applying accepted lists to a real Postfix: each test runs its own
//! instance in a temp dir (see `util::PostfixInstance`).

use std::time::Duration;

use crate::util::*;

/// alpha publishes; bravo backs alpha up with a private Postfix. Each
/// agent's mail host resolves to the agent's own address (its agent runs on
/// its mail server, which proves its claims).
struct Pair {
    alpha: Agent,
    bravo: Agent,
    pf: PostfixInstance,
    /// Serves the mail hosts while the pair lives.
    _dns: DnsServer,
}

fn pair(bravo_extra: &str, main_cf_extra: &str) -> Pair {
    pair_on(bravo_extra, main_cf_extra, &[])
}

/// As [`pair`], with these records in DNS too (for bravo's MX checks).
fn pair_on(bravo_extra: &str, main_cf_extra: &str, records: &[Rec]) -> Pair {
    let pf = PostfixInstance::start("mail.bravo.example", main_cf_extra);
    let (alpha, bravo, dns) = backup_pair(&pf, bravo_extra, records);
    Pair {
        alpha,
        bravo,
        pf,
        _dns: dns,
    }
}

#[test]
fn setup_shows_the_change_keeps_admin_values_and_is_idempotent() {
    let pf = PostfixInstance::start(
        "mail.bravo.example",
        "relay_domains = old.example\nrelay_recipient_maps = hash:/etc/postfix/nonexistent\ntransport_maps = hash:/etc/postfix/admin-transport",
    );
    let a = Agent::init("bravo");
    a.use_postfix(&pf);
    let before = pf.main_cf();
    let out = a.mxfed(&["postfix", "setup", "--dry-run"]);
    assert_ok(&out, "setup --dry-run");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let map_dir = pf.etc().join("mxfed");
    assert!(
        shown.contains(&format!(
            "relay_domains = old.example, hash:{}/relay_domains",
            map_dir.display()
        )),
        "{shown}"
    );
    assert!(
        // Ours first, so an admin wildcard transport cannot override it.
        shown.contains(&format!(
            "transport_maps = hash:{}/transport, hash:/etc/postfix/admin-transport",
            map_dir.display()
        )),
        "{shown}"
    );
    assert!(
        shown.contains("relay_recipient_maps = hash:/etc/postfix/nonexistent, hash:"),
        "{shown}"
    );
    assert_eq!(pf.main_cf(), before, "dry run changes nothing");
    assert!(!map_dir.exists(), "dry run creates no maps");

    assert_ok(&a.mxfed(&["postfix", "setup"]), "setup");
    assert_eq!(
        pf.postconf("relay_domains"),
        format!("old.example, hash:{}/relay_domains", map_dir.display())
    );
    assert_eq!(
        pf.postconf("transport_maps"),
        format!(
            "hash:{}/transport, hash:/etc/postfix/admin-transport",
            map_dir.display()
        )
    );
    assert!(
        pf.dump("hash", "transport").unwrap().is_empty(),
        "empty maps exist before main.cf names them"
    );

    let after = pf.main_cf();
    let out = a.mxfed(&["postfix", "setup"]);
    assert_ok(&out, "second setup");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to change"));
    assert_eq!(pf.main_cf(), after, "second run changes nothing");
}

#[test]
fn setup_refuses_to_let_other_relay_domains_lose_their_recipients() {
    // relay_recipient_maps empty: every recipient of old.example is
    // accepted today; setting it for friends would reject them.
    let pf = PostfixInstance::start("mail.bravo.example", "relay_domains = old.example");
    let a = Agent::init("bravo");
    a.use_postfix(&pf);
    let before = pf.main_cf();
    let out = a.mxfed(&["postfix", "setup"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("relay_recipient_maps is empty"), "{err}");
    assert!(err.contains("(old.example)"), "names the domains: {err}");
    assert!(
        err.contains("postconf -e 'relay_recipient_maps = "),
        "says what to add: {err}"
    );
    assert_eq!(pf.main_cf(), before, "nothing changed");
    // With a table for old.example's recipients, setup adds ours to it.
    let pf = PostfixInstance::start(
        "mail.bravo.example",
        "relay_domains = old.example\nrelay_recipient_maps = inline:{ @old.example=OK }",
    );
    a.use_postfix(&pf);
    assert_ok(&a.mxfed(&["postfix", "setup"]), "setup");
    assert!(pf
        .postconf("relay_recipient_maps")
        .starts_with("inline:{ @old.example=OK }, hash:"));
    assert_eq!(
        pf.rcpt("x@old.example"),
        250,
        "its recipients still accepted"
    );

    // Set up on Debian's defaults, then the admin adds a relay domain of
    // its own: it would lose its recipients, and setup (and doctor) says
    // so and what to add.
    let pf = PostfixInstance::start("mail.bravo.example", "");
    a.use_postfix(&pf);
    assert_ok(&a.mxfed(&["postfix", "setup"]), "setup");
    let relay_domains = pf.postconf("relay_domains");
    std::process::Command::new("postconf")
        .arg("-c")
        .arg(pf.etc())
        .arg("-e")
        .arg(format!("relay_domains = later.example, {relay_domains}"))
        .status()
        .unwrap();
    // (doctor's postfix-setup check asks the same plan; the agent is not
    // running here.)
    let out = a.mxfed(&["postfix", "setup", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("names only mxfed's map") && err.contains("(later.example)"),
        "{err}"
    );
}

#[test]
fn setup_refuses_to_make_an_open_relay() {
    let pf = PostfixInstance::start("mail.bravo.example", "smtpd_relay_restrictions = permit_mynetworks, permit\nsmtpd_recipient_restrictions = permit_mynetworks");
    let a = Agent::init("bravo");
    a.use_postfix(&pf);
    let before = pf.main_cf();
    let out = a.mxfed(&["postfix", "setup"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("reject_unauth_destination") && stderr(&out).contains("open relay"),
        "{}",
        stderr(&out)
    );
    assert_eq!(pf.main_cf(), before);
}

#[test]
fn setup_accepts_debians_stock_relay_restrictions() {
    // Debian's postinst writes defer_unauth_destination (a 4xx for the
    // same refusal); the quick start runs `postfix setup` on exactly that.
    let pf = PostfixInstance::start(
        "mail.charlie.example",
        "smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
    );
    let a = Agent::init("charlie");
    a.use_postfix(&pf);
    let out = a.mxfed(&["postfix", "setup"]);
    assert_ok(&out, "setup on Debian's defaults");
    assert!(
        pf.postconf("relay_domains").contains("mxfed/relay_domains"),
        "{}",
        pf.postconf("relay_domains")
    );
}

/// DNS where each of `domains` has MX 0 alpha and MX 10 bravo (the mail
/// hosts' addresses come from [`pair_on`]).
fn backed_up_by_bravo(domains: &[&'static str]) -> Vec<Rec> {
    let mut records = vec![];
    for d in domains {
        records.push(Rec::Mx(d, "mail.alpha.example", 0));
        records.push(Rec::Mx(d, "mail.bravo.example", 10));
    }
    records
}

#[test]
fn accepted_domains_are_relayed_to_their_next_hop_and_removal_takes_relay_away() {
    let mut records = backed_up_by_bravo(&["a1.example", "a2.example", "localhost.example"]);
    records.push(Rec::Mx("notmine.example", "mail.alpha.example", 0));
    let p = pair_on("", "mydestination = localhost, localhost.example", &records);
    // Relay is denied before anything is accepted.
    assert_eq!(p.pf.rcpt("x@a1.example"), 554);

    p.alpha
        .domains(&["add", "a1.example", "localhost.example", "notmine.example"]);
    p.alpha
        .domains(&["add", "a2.example", "--next-hop", "mail.alpha.example:2525"]);
    wait_for("a1 relayed", || p.pf.rcpt("x@a1.example") == 250);
    wait_for("a2 relayed", || p.pf.rcpt("x@a2.example") == 250);
    assert_eq!(
        p.pf.rcpt("x@notmine.example"),
        554,
        "MX does not list bravo"
    );
    assert_eq!(p.pf.rcpt("x@other.example"), 554);
    let (state, reason) = p.bravo.held("alpha")["localhost.example"].clone();
    assert_eq!(state, "refused");
    assert!(reason.starts_with("local domain"), "{reason}");

    // The transport map points each domain at exactly its declared next
    // hop, at the address (and port) it was checked at.
    let transport = p.pf.dump("hash", "transport").unwrap();
    let expected: std::collections::BTreeMap<String, String> = [
        (
            "a1.example".to_string(),
            format!("relay:[{}]", p.alpha.ip()),
        ),
        (
            "a2.example".to_string(),
            format!("relay:[{}]:2525", p.alpha.ip()),
        ),
    ]
    .into();
    assert_eq!(transport, expected);
    assert_eq!(p.pf.dump("hash", "relay_domains").unwrap().len(), 2);

    // Removal takes the relay away.
    p.alpha.domains(&["remove", "a1.example"]);
    wait_for("a1 no longer relayed", || p.pf.rcpt("x@a1.example") == 554);
    assert_eq!(p.pf.rcpt("x@a2.example"), 250);
    // So does unpairing.
    assert_ok(&p.bravo.mxfed(&["unpair", "alpha"]), "unpair");
    wait_for("a2 no longer relayed", || p.pf.rcpt("x@a2.example") == 554);
    assert!(p.pf.dump("hash", "transport").unwrap().is_empty());

    let history = p.bravo.history();
    assert!(
        history
            .iter()
            .any(|h| h["trigger"].as_str().unwrap().contains("unpaired alpha")),
        "{history:?}"
    );
    assert!(
        history.iter().all(|h| h["result"] == "applied"),
        "{history:?}"
    );
}

#[test]
fn an_unreachable_peer_removes_nothing() {
    let mut p = pair("verify_mx = \"off\"", "");
    p.alpha.domains(&["add", "a1.example"]);
    wait_for("relayed", || p.pf.rcpt("x@a1.example") == 250);
    p.alpha.kill();
    wait_for("alpha gone", || !p.bravo.connected_to("alpha"));
    p.bravo.stop();
    p.bravo.start();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(p.pf.rcpt("x@a1.example"), 250);
    assert_eq!(
        p.bravo.state_of("alpha", "a1.example").as_deref(),
        Some("accepted")
    );
}

fn relay_with_map_type(map_type: &str) {
    let p = pair(
        &format!("verify_mx = \"off\"\npostfix_map_type = \"{map_type}\""),
        "",
    );
    assert!(p
        .pf
        .postconf("transport_maps")
        .starts_with(&format!("{map_type}:")));
    p.alpha.domains(&["add", "a1.example"]);
    wait_for("relayed", || p.pf.rcpt("x@a1.example") == 250);
    // Relay goes to the address the next hop was checked at, never to a
    // name that could resolve elsewhere later.
    assert_eq!(
        p.pf.query(map_type, "transport", "a1.example"),
        Some(format!("relay:[{}]", p.alpha.ip()))
    );
    p.alpha.domains(&["remove", "a1.example"]);
    wait_for("not relayed", || p.pf.rcpt("x@a1.example") == 554);
}

#[test]
fn hash_maps_work() {
    relay_with_map_type("hash");
}

#[test]
fn lmdb_maps_work() {
    relay_with_map_type("lmdb");
}

#[test]
fn cdb_maps_work() {
    relay_with_map_type("cdb");
}

/// A few changes are patched into a copy of the compiled map in force
/// (`postmap -i -r`, `postmap -d`), a changed value included, and the maps
/// then answer exactly what their sources say; maps without changes are
/// left alone. Straight through `Postfix::apply_changes` on a real Postfix.
fn patching_few_changes(map_type: &str) {
    use mxfed_agent::postfix::{render, Postfix};
    use mxfed_proto::domain::{Domain, NextHop};
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let postfix = rt
        .block_on(Postfix::open(&pf.etc(), Some(map_type)))
        .unwrap();
    let route = |d: &str, ip: &str| render::Route {
        peer: "alpha".into(),
        domain: Domain::parse(d).unwrap(),
        next_hop: NextHop::parse("mail.alpha.example").unwrap(),
        addrs: vec![ip.parse().unwrap()],
        recipients: None,
    };
    let apply = |routes: &[render::Route]| {
        let maps = render::render_maps(routes);
        rt.block_on(async {
            let mut changes = std::collections::HashMap::new();
            for (name, wanted) in &maps.maps {
                let live = postfix.live_text(name).await;
                changes.insert(*name, render::diff_text(&live, wanted));
            }
            postfix.apply_changes(&maps, &changes, false).await.unwrap()
        })
    };
    let first = apply(&[
        route("a1.example", "192.0.2.1"),
        route("a2.example", "192.0.2.1"),
    ]);
    assert!(first.patched.is_empty(), "nothing in force yet: {first:?}");
    // a1 re-targeted, a2 gone, a3 new.
    let second = apply(&[
        route("a1.example", "192.0.2.9"),
        route("a3.example", "192.0.2.1"),
    ]);
    assert_eq!(
        second.patched,
        ["relay_domains", "relay_recipients", "transport"],
        "{second:?}"
    );
    assert!(second.built.is_empty(), "{second:?}");
    for name in ["relay_domains", "relay_recipients", "transport"] {
        assert_eq!(
            pf.dump(map_type, name).unwrap(),
            pf.map_source(name),
            "{name}"
        );
    }
    assert_eq!(
        pf.query(map_type, "transport", "a1.example").as_deref(),
        Some("relay:[192.0.2.9]"),
        "a changed value is replaced, not kept"
    );
    assert_eq!(pf.query(map_type, "transport", "a2.example"), None);
    // Nothing changes: nothing is touched.
    let third = apply(&[
        route("a1.example", "192.0.2.9"),
        route("a3.example", "192.0.2.1"),
    ]);
    assert!(
        third.patched.is_empty() && third.built.is_empty(),
        "{third:?}"
    );
}

#[test]
fn few_changes_patch_hash_maps() {
    patching_few_changes("hash");
}

#[test]
fn few_changes_patch_lmdb_maps() {
    patching_few_changes("lmdb");
}

#[test]
fn apply_dry_run_shows_the_diff_and_history_records_applies() {
    let p = pair("verify_mx = \"off\"", "");
    p.alpha.domains(&["add", "a1.example"]);
    wait_for("relayed", || p.pf.rcpt("x@a1.example") == 250);
    let out = p.bravo.mxfed(&["apply", "--dry-run"]);
    assert_ok(&out, "apply --dry-run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("already match"));
    let out = p.bravo.mxfed(&["apply", "--dry-run", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["result"], "planned");
    assert_eq!(r["changes"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["total"], 1);
    let out = p.bravo.mxfed(&["apply", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["result"], "unchanged");
    let h = p.bravo.history();
    assert_eq!(h[0]["result"], "applied");
    assert_eq!(h[0]["added"], 1);
    assert!(
        h[0]["trigger"].as_str().unwrap().contains("from alpha"),
        "{h:?}"
    );
    let table = String::from_utf8_lossy(&p.bravo.mxfed(&["history"]).stdout).into_owned();
    assert!(table.contains("applied") && table.contains("+1"), "{table}");

    // A second apply; --limit keeps the newest.
    p.alpha.domains(&["add", "a2.example"]);
    wait_for("a2 relayed", || p.pf.rcpt("x@a2.example") == 250);
    assert!(p.bravo.history().len() >= 2);
    let out = p.bravo.mxfed(&["history", "--json", "--limit", "1"]);
    let limited: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0]["total"], 2, "{limited:?}");
}

/// Waits for an apply to fail and returns its history entry.
fn first_failed_apply(agent: &Agent) -> serde_json::Value {
    let failed = || {
        agent
            .history()
            .into_iter()
            .find(|h| h["result"] == "failed")
    };
    wait_for("a failed apply", || failed().is_some());
    failed().unwrap()
}

#[test]
fn when_postmap_fails_the_old_maps_stay_and_the_step_is_named() {
    let p = pair("verify_mx = \"off\"", "");
    p.alpha.domains(&["add", "a1.example"]);
    wait_for("relayed", || p.pf.rcpt("x@a1.example") == 250);
    // Make postmap fail: a directory sits where the new database must go.
    std::fs::create_dir(p.pf.etc().join("mxfed/transport.new.db")).unwrap();
    p.alpha.domains(&["add", "a2.example"]);
    let failed = first_failed_apply(&p.bravo);
    assert_eq!(failed["step"], "postmap", "{failed:?}");
    // Postfix still has the old maps, and they work.
    assert_eq!(p.pf.rcpt("x@a1.example"), 250);
    assert_eq!(p.pf.rcpt("x@a2.example"), 554);
    let transport = p.pf.dump("hash", "transport").unwrap();
    assert_eq!(transport.keys().collect::<Vec<_>>(), ["a1.example"]);
    let out = p.bravo.mxfed(&["apply"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("postmap"), "{}", stderr(&out));
}

/// An apply that fails before it installs anything (here the map text in
/// force cannot be read, so a patch has nothing to start from) is in the
/// history with its step, as every other failure is. It used to be only
/// in the log.
#[test]
fn an_apply_that_cannot_read_the_maps_in_force_is_in_the_history() {
    let p = pair("verify_mx = \"off\"", "");
    p.alpha.domains(&["add", "a1.example"]);
    wait_for("relayed", || p.pf.rcpt("x@a1.example") == 250);
    // Not UTF-8: the transport source in force cannot be read as text.
    let source = p.pf.etc().join("mxfed/transport");
    let mut bytes = std::fs::read(&source).unwrap();
    bytes.extend_from_slice(b"\xff\xfe\n");
    std::fs::write(&source, bytes).unwrap();
    p.alpha.domains(&["add", "a2.example"]);
    let failed = first_failed_apply(&p.bravo);
    assert_eq!(failed["step"], "read maps in force", "{failed:?}");
    assert!(
        failed["message"].as_str().unwrap().contains("transport"),
        "the file is named: {failed:?}"
    );
    // The maps in force still answer, and nothing of the change is in them.
    assert_eq!(p.pf.rcpt("x@a1.example"), 250);
    assert_eq!(p.pf.rcpt("x@a2.example"), 554);
}

#[test]
fn when_reload_fails_the_previous_maps_are_put_back() {
    let p = pair("verify_mx = \"off\"", "");
    p.alpha.domains(&["add", "a1.example"]);
    wait_for("relayed", || p.pf.rcpt("x@a1.example") == 250);
    p.pf.down(); // `postfix reload` now fails: the mail system is not running
    p.alpha.domains(&["add", "a2.example"]);
    let failed = first_failed_apply(&p.bravo);
    assert_eq!(failed["step"], "postfix reload", "{failed:?}");
    assert!(
        !failed["message"]
            .as_str()
            .unwrap()
            .contains("rolling back also failed"),
        "the maps were put back, and the second reload failing is no news: {failed:?}"
    );
    let transport = p.pf.dump("hash", "transport").unwrap();
    assert_eq!(
        transport.keys().collect::<Vec<_>>(),
        ["a1.example"],
        "rolled back"
    );
    let source = std::fs::read_to_string(p.pf.etc().join("mxfed/transport")).unwrap();
    assert!(
        !source.contains("a2.example"),
        "source rolled back too: {source}"
    );
    // Postfix comes back: applying now works.
    p.pf.up();
    assert_eq!(p.pf.rcpt("x@a2.example"), 554);
    assert_ok(&p.bravo.mxfed(&["apply"]), "apply");
    wait_for("a2 relayed", || p.pf.rcpt("x@a2.example") == 250);
}

/// A small tmpfs mounted over a directory for a test's length (root only;
/// the test command runs as root). Unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs on {} (needs root)", dir.display());
        SmallDisk(dir.into())
    }

    fn grow(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {}", self.0.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Issue 13: the disk fills up during an apply (ENOSPC, a real tmpfs of
/// 256 KiB under the maps). The apply fails with the step and the cause
/// named, the maps in force stay and answer, nothing half written is left
/// to take the space, and once there is room again the next apply brings
/// Postfix in line with the list held (nothing was lost).
#[test]
fn a_full_disk_during_an_apply_leaves_the_maps_in_force() {
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let disk = SmallDisk::mount(&pf.etc().join("mxfed"), "256k");
    let (alpha, bravo, _dns) = backup_pair(&pf, "verify_mx = \"off\"", &[]);
    alpha.domains(&["add", "a1.example"]);
    wait_for("relayed", || pf.rcpt("x@a1.example") == 250);

    // 20,000 domains: their transport map alone is about 900 KB.
    let file = domain_file(alpha.dir.path(), 20_000);
    alpha.domains(&["add", "--from-file", file.to_str().unwrap()]);
    let failed = first_failed_apply(&bravo);
    let message = failed["message"].as_str().unwrap();
    assert!(
        message.contains("No space left on device"),
        "the cause is named: {failed:?}"
    );
    assert!(
        ["write map source", "postmap"].contains(&failed["step"].as_str().unwrap()),
        "the step is named: {failed:?}"
    );
    // The maps in force answer as before.
    assert_eq!(pf.rcpt("x@a1.example"), 250);
    assert_eq!(pf.rcpt("x@d000000.bulk.example"), 554);
    let transport = pf.dump("hash", "transport").unwrap();
    assert_eq!(transport.keys().collect::<Vec<_>>(), ["a1.example"]);
    let leftovers: Vec<String> = std::fs::read_dir(pf.etc().join("mxfed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".new"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-written maps left: {leftovers:?}"
    );
    assert!(
        bravo.log_text().contains("previous maps stay in force"),
        "{}",
        bravo.log_text()
    );

    // Room again: the list held all along is applied.
    disk.grow("64m");
    assert_ok(&bravo.mxfed(&["apply"]), "apply with room again");
    // Postfix's daemons take the reloaded maps at their own pace (one CI
    // run saw 550 just after the apply: a process with the new
    // relay_domains and the old relay_recipients), as every other test
    // here waits for them.
    wait_for("relayed after the apply", || {
        pf.rcpt("x@d019999.bulk.example") == 250 && pf.rcpt("x@a1.example") == 250
    });
    drop(disk);
}

/// Regression: shutdown used to abort the apply worker wherever it was, so
/// a SIGTERM in the middle of an apply left it half done (maps built but
/// not installed, nothing in the history). Now the apply runs to its end.
#[test]
fn stopping_the_agent_mid_apply_lets_the_apply_finish() {
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    let _dns = mail_dns(&[&alpha, &bravo]);
    bravo.use_postfix(&pf);
    bravo.configure("verify_mx = \"off\"");
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "postfix setup");
    // Slowed, not faked: while `slow` exists, each postmap waits a second
    // and then runs the real postmap, so an apply takes several seconds.
    let bin = bravo.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v postmap"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let slow = bravo.dir.path().join("slow");
    let wrapper = bin.join("postmap");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n[ -e '{}' ] && sleep 1\nexec {} \"$@\"\n",
            slow.display(),
            real.trim()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    bravo.env.push(("PATH".into(), path));
    start_and_pair(&mut alpha, &mut bravo);
    // The apply a new friend brings (its mail host in the friends map) is
    // done before postmap is slowed, so the apply stopped below is
    // slow.example's.
    let friends = pf.etc().join("mxfed/friends");
    let alpha_ip = alpha.ip().to_string();
    wait_for("alpha in the friends map", || {
        std::fs::read_to_string(&friends)
            .unwrap_or_default()
            .contains(&alpha_ip)
    });

    std::fs::write(&slow, "").unwrap();
    alpha.domains(&["add", "slow.example"]);
    let building = pf.etc().join("mxfed/transport.new");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !building.exists() {
        assert!(std::time::Instant::now() < deadline, "no apply started");
        std::thread::sleep(Duration::from_millis(10));
    }
    bravo.stop(); // SIGTERM while the new maps are being built
    let log = bravo.log_text();
    assert!(
        log.contains("waiting for the Postfix map apply in progress to finish"),
        "{log}"
    );
    assert!(log.contains("stopped"), "{log}");
    let transport = pf.dump("hash", "transport").unwrap();
    assert_eq!(
        transport.keys().collect::<Vec<_>>(),
        ["slow.example"],
        "the apply was finished, not cut off"
    );
    let leftovers: Vec<String> = std::fs::read_dir(pf.etc().join("mxfed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".new"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_file(&slow).unwrap();
    bravo.start();
    let applied = bravo
        .history()
        .into_iter()
        .find(|h| h["result"] == "applied")
        .expect("the apply is in the history");
    assert_eq!(applied["total"], 1, "{applied:?}");
    assert_eq!(pf.rcpt("x@slow.example"), 250);
}

#[test]
fn killing_the_agent_mid_apply_never_leaves_postfix_without_maps() {
    const N: usize = 10_000;
    let mut p = pair("verify_mx = \"off\"", "");
    p.bravo.stop();
    let file = domain_file(p.alpha.dir.path(), N);
    p.alpha
        .domains(&["add", "--from-file", file.to_str().unwrap()]);
    let mut delay = Duration::from_millis(150);
    let mut rounds = 0;
    loop {
        rounds += 1;
        p.bravo.start();
        std::thread::sleep(delay);
        p.bravo.kill();
        // Every live map is a whole map: the old (empty) one or the new one.
        for name in ["transport", "relay_domains", "relay_recipients"] {
            let db =
                p.pf.dump("hash", name)
                    .unwrap_or_else(|e| panic!("{name} unreadable after kill: {e}"));
            assert!(
                db.is_empty() || db.len() == N,
                "{name} has {} entries after a kill at {delay:?}",
                db.len()
            );
            let source = std::fs::read_to_string(p.pf.etc().join("mxfed").join(name)).unwrap();
            let lines = source.lines().filter(|l| !l.starts_with('#')).count();
            assert!(lines == 0 || lines == N, "{name} source has {lines} lines");
        }
        eprintln!("round {rounds}: killed after {delay:?}");
        if p.pf.dump("hash", "transport").unwrap().len() == N || rounds > 40 {
            break;
        }
        delay += Duration::from_millis(200);
    }
    // Whatever happened, a restart converges.
    p.bravo.start();
    wait_for("converged", || {
        p.pf.dump("hash", "transport").map(|m| m.len()) == Ok(N)
    });
    assert_eq!(p.pf.rcpt("x@d000042.bulk.example"), 250);
    assert!(rounds >= 2, "the first kill came too late to test anything");
}

#[test]
fn an_expired_list_leaves_the_maps_only_after_the_grace_period() {
    use mxfed_proto::domain::{Domain, NextHop};
    use mxfed_proto::list::{DomainList, Entry};
    use mxfed_proto::msg::{Hello, PeerInfo, Request, Response};

    // alpha is the backup here; "bravo" is played by a raw client holding
    // bravo's key, because a real agent never lets its list run out.
    let pf = PostfixInstance::start("mail.alpha.example", "");
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    // bravo's claim is proven by where its agent was seen when it paired.
    let _dns = mail_dns(&[&alpha, &bravo]);
    alpha.use_postfix(&pf);
    // The grace is longer than MIN_APPLY_GAP (5 s) plus slack: an apply
    // asked for within it may wait out the gap after an earlier one.
    alpha.configure("verify_mx = \"off\"\nexpired_list_grace = \"15s\"");
    assert_ok(&alpha.mxfed(&["postfix", "setup"]), "setup");
    start_and_pair(&mut alpha, &mut bravo);
    bravo.stop();
    wait_for("bravo gone", || !alpha.connected_to("bravo"));

    let key = mxfed_agent::identity::Identity::load(&bravo.data_dir()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let entry = Entry {
        domain: Domain::parse("short.example").unwrap(),
        next_hop: NextHop::parse("mail.bravo.example").unwrap(),
    };
    let expires_at = now + 3;
    let list = DomainList::new(key.id, 1, now, expires_at, vec![entry.clone()]);
    let header = list.header(key.sign(&list.signing_bytes()));
    let chunks: Vec<_> = list.chunks().collect();
    let a_id: mxfed_proto::PeerId = alpha.id().parse().unwrap();
    let info = PeerInfo {
        name: "bravo".into(),
        mail_host: "mail.bravo.example".into(),
        addrs: vec![],
        agent_version: "test".into(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let raw = RawPeer::connect(&bravo.data_dir(), alpha.addr, a_id).await;
        let serve_info = info.clone();
        let _server = raw.serve(move |req| match req {
            Request::FetchList { .. } => {
                let mut out = vec![Response::ListHeader(header.clone())];
                out.extend(chunks.iter().cloned().map(Response::ListChunk));
                out
            }
            Request::Hello(_) => vec![Response::Hello(Hello {
                info: serve_info.clone(),
                list_version: 1,
                now: 0,
            })],
            _ => vec![Response::Done],
        });
        raw.request(&Request::Hello(Hello {
            info: info.clone(),
            list_version: 1,
            now: 0,
        }))
        .await;
        wait_for("relayed", || pf.rcpt("x@short.example") == 250);
        raw.conn.close(0u32.into(), b"");
    });
    // Expired, but within the grace period: still in force.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= expires_at + 1
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ok(&alpha.mxfed(&["apply"]), "apply within grace");
    assert_eq!(pf.rcpt("x@short.example"), 250);
    // Past expiry + grace: the entry leaves the maps.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= expires_at + 16
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = alpha.mxfed(&["apply"]);
    assert_ok(&out, "apply after grace");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("- short.example"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // `postfix reload` only signals the master, which restarts its
    // daemons "at their earliest convenience": a session begun at once
    // can still be served by an smtpd or trivial-rewrite of before the
    // reload, which answer from the old relay_domains (CI saw 250 once).
    wait_for("short.example refused", || {
        pf.rcpt("x@short.example") == 554
    });

    // The friend comes back with a new version that adds one domain: the
    // entry unchanged since the list ran out is back in the maps too, not
    // only the one that changed.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let back = Entry {
        domain: Domain::parse("back.example").unwrap(),
        next_hop: NextHop::parse("mail.bravo.example").unwrap(),
    };
    let list = DomainList::new(key.id, 2, now, now + 3600, vec![entry, back]);
    let header = list.header(key.sign(&list.signing_bytes()));
    let chunks: Vec<_> = list.chunks().collect();
    rt.block_on(async {
        let raw = RawPeer::connect(&bravo.data_dir(), alpha.addr, a_id).await;
        let serve_info = info.clone();
        let _server = raw.serve(move |req| match req {
            Request::FetchList { .. } => {
                let mut out = vec![Response::ListHeader(header.clone())];
                out.extend(chunks.iter().cloned().map(Response::ListChunk));
                out
            }
            Request::Hello(_) => vec![Response::Hello(Hello {
                info: serve_info.clone(),
                list_version: 2,
                now: 0,
            })],
            _ => vec![Response::Done],
        });
        raw.request(&Request::Hello(Hello {
            info: info.clone(),
            list_version: 2,
            now: 0,
        }))
        .await;
        wait_for("both relayed again", || {
            pf.rcpt("x@back.example") == 250 && pf.rcpt("x@short.example") == 250
        });
        raw.conn.close(0u32.into(), b"");
    });
}

#[test]
fn doctor_checks_mx_lifetimes_wiring_and_clocks() {
    let dns = DnsServer::start(
        &["example"],
        &[
            Rec::Mx("bravo.example", "mail.bravo.example", 0),
            Rec::Mx("bravo.example", "mail.alpha.example", 10),
            Rec::Mx("nobackup.example", "mail.bravo.example", 0),
            Rec::Mx("samepref.example", "mail.bravo.example", 10),
            Rec::Mx("samepref.example", "mail.alpha.example", 5),
        ],
    );
    let pf = PostfixInstance::start("mail.bravo.example", "bounce_queue_lifetime = 1d");
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    bravo.use_postfix(&pf);
    bravo.use_dns(&dns);
    start_and_pair(&mut alpha, &mut bravo);
    bravo.domains(&[
        "add",
        "bravo.example",
        "nobackup.example",
        "samepref.example",
    ]);

    let out = bravo.mxfed(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "a failed check exits 1");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], false);
    let find = |check: &str, needle: &str| -> serde_json::Value {
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == check && c["detail"].as_str().unwrap().contains(needle))
            .cloned()
            .unwrap_or_else(|| panic!("no {check} check about {needle}: {r}"))
    };
    assert_eq!(find("mx", "bravo.example: MX 0")["status"], "ok");
    let missing = find("mx", "nobackup.example does not list friend alpha");
    assert_eq!(missing["status"], "fail");
    assert!(missing["fix"]
        .as_str()
        .unwrap()
        .contains("nobackup.example. MX 10 mail.alpha.example."));
    assert_eq!(
        find("mx", "samepref.example: friend alpha has MX preference 5")["status"],
        "warn"
    );
    assert_eq!(
        find("queue-lifetime", "bounce_queue_lifetime = 1d")["status"],
        "warn"
    );
    assert_eq!(
        find("queue-lifetime", "maximal_queue_lifetime")["status"],
        "ok"
    );
    assert_eq!(
        find("postfix-setup", "does not use the mxfed maps")["status"],
        "fail"
    );
    assert_eq!(find("clock", "alpha: clocks agree")["status"], "ok");

    // After `postfix setup` the wiring check passes; the table names fixes.
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "setup");
    let out = bravo.mxfed(&["doctor"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.contains("main.cf is wired to the mxfed maps"),
        "{table}"
    );
    assert!(
        table.contains("fix: postconf -e 'bounce_queue_lifetime = 10d'"),
        "{table}"
    );
}

#[test]
fn setup_never_overwrites_existing_maps() {
    let p = pair("verify_mx = \"off\"", "");
    p.alpha.domains(&["add", "a1.example"]);
    wait_for("relayed", || p.pf.rcpt("x@a1.example") == 250);
    // One map's database goes missing; setup recreates only that one.
    std::fs::remove_file(p.pf.etc().join("mxfed/relay_recipients.db")).unwrap();
    assert_ok(&p.bravo.mxfed(&["postfix", "setup"]), "setup");
    assert!(p.pf.etc().join("mxfed/relay_recipients.db").exists());
    assert_eq!(
        p.pf.dump("hash", "transport").unwrap().len(),
        1,
        "transport untouched"
    );
    assert_eq!(p.pf.rcpt("x@a1.example"), 250);
}

#[test]
fn an_unreadable_local_domain_table_keeps_entries_pending_not_accepted() {
    // Regression: `postmap -q` exits 1 for "not found" and for a fatal
    // error alike; a broken table must not make a local domain look foreign.
    let p = pair(
        "verify_mx = \"off\"",
        "virtual_alias_domains = hash:/nonexistent/mxfed-test-table",
    );
    p.alpha.domains(&["add", "a1.example"]);
    wait_for("judged", || {
        p.bravo.state_of("alpha", "a1.example").is_some()
    });
    let (state, reason) = p.bravo.held("alpha")["a1.example"].clone();
    assert_eq!(state, "pending", "{reason}");
    assert!(
        reason.contains("cannot check Postfix's local domains"),
        "{reason}"
    );
    // Not relayed (Postfix itself tempfails with 451 while the table is broken).
    assert_ne!(p.pf.rcpt("x@a1.example"), 250);
}

#[test]
fn a_friend_flipping_its_list_cannot_make_postfix_reload_in_a_storm() {
    let p = pair("verify_mx = \"off\"", "");
    wait_for("bravo's startup reload", || {
        p.bravo
            .log_text()
            .contains("built them whole once at startup")
    });
    let reloads = || {
        std::fs::read_to_string(p.pf.dir.path().join("maillog"))
            .unwrap()
            .matches("reload -- version")
            .count()
    };
    let (reloads_before, applies_before) = (reloads(), p.bravo.history().len());
    // 12 new versions as fast as the CLI goes, ending with flip.example removed.
    for i in 0..12 {
        let verb = if i % 2 == 0 { "add" } else { "remove" };
        assert_ok(&p.alpha.domains(&[verb, "flip.example"]), verb);
    }
    p.alpha.domains(&["add", "last.example"]);
    wait_for("the last version to be relayed", || {
        p.pf.rcpt("x@last.example") == 250
    });
    assert_eq!(p.pf.rcpt("x@flip.example"), 554, "the final list wins");
    let h = p.bravo.history();
    assert!(
        h.len() < 13,
        "13 versions were coalesced into fewer applies: {h:#?}"
    );
    // Rewrites (and so reloads) are never closer than MIN_APPLY_GAP (5 s;
    // history times are whole seconds).
    let at = |e: &serde_json::Value| humantime::parse_rfc3339(e["at"].as_str().unwrap()).unwrap();
    for w in h.windows(2) {
        let gap = at(&w[0]).duration_since(at(&w[1])).unwrap();
        assert!(
            gap >= std::time::Duration::from_secs(4),
            "{gap:?} between {w:#?}"
        );
    }
    let new_reloads = reloads() - reloads_before;
    let new_applies = h.len() - applies_before;
    assert!(
        new_reloads <= new_applies,
        "{new_reloads} reloads for {new_applies} applies"
    );
}

#[test]
fn local_domains_in_inline_maps_and_parent_forms_are_seen_and_do_not_block_the_rest() {
    let records = backed_up_by_bravo(&[
        "inl.example",
        "ok.example",
        "x.parent.example",
        "y.sub.example",
    ]);
    // An inline table: one list item with commas and spaces inside braces.
    // relay_domains is in parent_domain_matches_subdomains by default, so
    // the admin's parent.example covers x.parent.example; .sub.example
    // covers subdomains anywhere.
    let p = pair_on(
        "",
        "virtual_alias_domains = inline:{ inl.example=yes, { elsewhere.example = yes } }\n\
         relay_domains = parent.example\n\
         relay_recipient_maps = inline:{ @parent.example=OK }\n\
         mydestination = localhost, .sub.example",
        &records,
    );
    p.alpha.domains(&[
        "add",
        "inl.example",
        "ok.example",
        "x.parent.example",
        "y.sub.example",
    ]);
    wait_for("ok.example relayed", || p.pf.rcpt("x@ok.example") == 250);
    let held = p.bravo.held("alpha");
    assert_eq!(held["ok.example"].0, "accepted", "{held:?}");
    for d in ["inl.example", "x.parent.example", "y.sub.example"] {
        let (state, reason) = held[d].clone();
        assert_eq!(state, "refused", "{d}: {held:?}");
        assert!(reason.starts_with("local domain"), "{d}: {reason}");
    }
}

/// The owner trusts its backups: the agent keeps `mxfed/friends` (a cidr
/// table of its friends' mail host addresses, each `permit`) in step with
/// its friends, and `postfix setup --trust-friends` wires it into
/// postscreen_access_list, after what the admin had.
#[test]
fn friends_mail_hosts_are_kept_in_a_cidr_map_that_setup_can_trust() {
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    let _dns = mail_dns(&[&alpha, &bravo]);
    bravo.use_postfix(&pf);
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "setup");
    assert_eq!(pf.postconf("postscreen_access_list"), "permit_mynetworks");
    let out = bravo.mxfed(&["postfix", "setup", "--trust-friends"]);
    assert_ok(&out, "setup --trust-friends");
    let friends = pf.etc().join("mxfed/friends");
    assert_eq!(
        pf.postconf("postscreen_access_list"),
        format!("permit_mynetworks, cidr:{}", friends.display())
    );
    let lookup = |ip: &str| {
        let out = std::process::Command::new("postmap")
            .arg("-q")
            .arg(ip)
            .arg(format!("cidr:{}", friends.display()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    start_and_pair(&mut alpha, &mut bravo);
    let alpha_ip = alpha.ip().to_string();
    wait_for("alpha's mail host in the friends map", || {
        lookup(&alpha_ip) == "permit"
    });
    assert_eq!(lookup("192.0.2.99"), "", "nobody else");
    // Unpaired: gone.
    assert_ok(&bravo.mxfed(&["unpair", "alpha"]), "unpair");
    wait_for("alpha gone from the friends map", || {
        lookup(&alpha_ip).is_empty()
    });
    // Running it again changes nothing.
    let out = bravo.mxfed(&["postfix", "setup", "--trust-friends"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to change"),
        "{out:?}"
    );
}
