//! Signed domain lists: publishing, propagation, the MX ownership check,
//! and hostile lists. DNS is a real dnsmasq on a loopback address.

use mxfed_proto::domain::{Domain, NextHop};
use mxfed_proto::list::{DomainList, Entry, ListHeader, WireEntry, MAX_ENTRIES};
use mxfed_proto::msg::{Hello, PeerInfo, Request, Response};
use mxfed_proto::PeerId;

use crate::util::*;

const ZONES: &[&str] = &["example"];

/// MX records for the two friends' domains: each lists its own server first
/// and the friend's second, as the seed describes. `lonely.example` lists
/// only alpha. The mail hosts' addresses are the agents' own (pinned by
/// [`two_friends`]): each agent runs on its mail server.
fn world() -> Vec<Rec> {
    vec![
        Rec::Mx("alpha.example", "mail.alpha.example", 0),
        Rec::Mx("alpha.example", "mail.bravo.example", 10),
        Rec::Mx("a2.example", "mail.alpha.example", 0),
        Rec::Mx("a2.example", "mail.bravo.example", 10),
        Rec::Mx("bravo.example", "mail.bravo.example", 0),
        Rec::Mx("bravo.example", "mail.alpha.example", 10),
        Rec::Mx("lonely.example", "mail.alpha.example", 0),
    ]
}

fn pair_with(a: &mut Agent, b: &mut Agent) {
    start_and_pair(a, b);
}

fn two_friends(dns: &mut DnsServer, b_extra: &str) -> (Agent, Agent) {
    let mut a = Agent::init("alpha");
    let mut b = Agent::init("bravo");
    dns.pin(&[Rec::mail_host(&a), Rec::mail_host(&b)]);
    for x in [&a, &b] {
        x.use_dns(dns);
        // The agents' addresses are loopback ones.
        x.configure("allow_non_public_next_hops = true");
    }
    b.configure(b_extra);
    pair_with(&mut a, &mut b);
    (a, b)
}

#[test]
fn lists_propagate_both_ways_and_persist_while_the_signer_is_down() {
    let mut dns = DnsServer::start(ZONES, &world());
    let (mut a, mut b) = two_friends(&mut dns, "");
    a.domains(&["add", "Alpha.EXAMPLE", "a2.example"]);
    wait_for("bravo to accept alpha's domains", || {
        b.state_of("alpha", "alpha.example").as_deref() == Some("accepted")
            && b.state_of("alpha", "a2.example").as_deref() == Some("accepted")
    });
    let p = b.peer("alpha").unwrap();
    assert_eq!(p["domains"][0]["next_hop"], "mail.alpha.example");
    let version = p["list_version"].as_u64().unwrap();
    wait_for("alpha to hear bravo's acknowledgement", || {
        let m = a.peer("bravo").unwrap()["my_list"].clone();
        m["version_acked"] == version && m["accepted"] == 2
    });

    b.domains(&["add", "bravo.example"]);
    wait_for("alpha to accept bravo's domain", || {
        a.state_of("bravo", "bravo.example").as_deref() == Some("accepted")
    });

    a.domains(&["remove", "a2.example"]);
    wait_for("the removal to reach bravo", || b.held("alpha").len() == 1);
    let listed: serde_json::Value =
        serde_json::from_slice(&a.domains(&["list", "--json"]).stdout).unwrap();
    assert_eq!(listed["domains"].as_array().unwrap().len(), 1);
    assert_eq!(listed["domains"][0]["domain"], "alpha.example");

    // The signer goes down: its list stays in force, across our restart too.
    a.stop();
    wait_for("bravo to see alpha go", || !b.connected_to("alpha"));
    assert_eq!(
        b.state_of("alpha", "alpha.example").as_deref(),
        Some("accepted")
    );
    b.stop();
    b.start();
    assert_eq!(
        b.state_of("alpha", "alpha.example").as_deref(),
        Some("accepted")
    );
    a.start();
    wait_for("reconnect", || {
        a.connected_to("bravo") && b.connected_to("alpha")
    });
    assert_eq!(
        b.peer("alpha").unwrap()["list_version"].as_u64().unwrap(),
        version + 1
    );
    assert_eq!(
        a.state_of("bravo", "bravo.example").as_deref(),
        Some("accepted")
    );
}

#[test]
fn a_refusal_names_what_is_missing_and_fixing_dns_is_enough() {
    let mut dns = DnsServer::start(ZONES, &world());
    let (a, b) = two_friends(&mut dns, "recheck_interval = \"1s\"");
    a.domains(&["add", "lonely.example"]);
    let reason = "MX of lonely.example does not list mail.bravo.example";
    wait_for("bravo to refuse lonely.example", || {
        b.held("alpha").get("lonely.example") == Some(&("refused".into(), reason.into()))
    });
    // The signer learns why.
    wait_for("alpha to hear the refusal", || {
        let m = a.peer("bravo").unwrap()["my_list"].clone();
        m["refused"][0]["domain"] == "lonely.example" && m["refused"][0]["reason"] == reason
    });
    let table = String::from_utf8(a.mxfed(&["status"]).stdout).unwrap();
    assert!(
        table.contains("bravo backs up 0 of my 1 domains"),
        "{table}"
    );
    assert!(table.contains(reason), "{table}");

    // The friend fixes DNS; the periodic re-check picks it up.
    let mut fixed = world();
    fixed.push(Rec::Mx("lonely.example", "mail.bravo.example", 10));
    dns.restart(ZONES, &fixed);
    wait_for("bravo to accept after the DNS fix", || {
        b.state_of("alpha", "lonely.example").as_deref() == Some("accepted")
    });
    wait_for("alpha to hear it", || {
        a.peer("bravo").unwrap()["my_list"]["accepted"] == 1
    });
    assert!(b.log_text().contains("re-checked entry changed state"));
}

/// A new version of a list costs what changed: the entries held unchanged
/// keep their verdicts and are not looked up again.
#[test]
fn a_new_list_version_looks_up_only_what_changed() {
    let mut dns = DnsServer::start(ZONES, &world());
    dns.log_queries();
    let (a, b) = two_friends(&mut dns, "");
    a.domains(&["add", "alpha.example", "a2.example"]);
    wait_for("both accepted", || {
        b.state_of("alpha", "alpha.example").as_deref() == Some("accepted")
            && b.state_of("alpha", "a2.example").as_deref() == Some("accepted")
    });
    let looked_up = |d: &str| dns.queries("MX", d) + dns.queries("TXT", &format!("_mxfed.{d}"));
    let before = (looked_up("alpha.example"), looked_up("a2.example"));
    assert!(
        before.0 > 0 && before.1 > 0,
        "the first version was looked up"
    );
    a.domains(&["add", "lonely.example"]);
    wait_for("the new entry judged", || {
        b.state_of("alpha", "lonely.example").is_some()
    });
    wait_for("its look-ups logged", || looked_up("lonely.example") > 0);
    assert_eq!(
        (looked_up("alpha.example"), looked_up("a2.example")),
        before,
        "unchanged entries were not looked up again"
    );
    assert_eq!(
        b.state_of("alpha", "alpha.example").as_deref(),
        Some("accepted")
    );
    assert!(b.log_text().contains("judged=1"), "{}", b.log_text());
}

/// Republishing costs what changed: a refused entry the friend did not
/// change waits for its re-check round (`recheck_interval`), even after its
/// DNS was fixed; only the new entry is judged now.
#[test]
fn republishing_judges_only_new_entries_and_refused_ones_wait_for_their_round() {
    let mut dns = DnsServer::start(ZONES, &world());
    let (a, b) = two_friends(&mut dns, "recheck_interval = \"1h\"");
    a.domains(&["add", "lonely.example"]);
    wait_for("refused", || {
        b.state_of("alpha", "lonely.example").as_deref() == Some("refused")
    });
    let mut fixed = world();
    fixed.push(Rec::Mx("lonely.example", "mail.bravo.example", 10));
    dns.restart(ZONES, &fixed);
    a.domains(&["add", "alpha.example"]);
    wait_for("the new entry accepted", || {
        b.state_of("alpha", "alpha.example").as_deref() == Some("accepted")
    });
    assert_eq!(
        b.state_of("alpha", "lonely.example").as_deref(),
        Some("refused"),
        "unchanged: it waits for its re-check round"
    );
}

#[test]
fn a_dns_failure_never_revokes_and_leaves_new_entries_pending() {
    let mut dns = DnsServer::start(ZONES, &world());
    let (a, b) = two_friends(&mut dns, "recheck_interval = \"1s\"");
    a.domains(&["add", "alpha.example"]);
    wait_for("accepted", || {
        b.state_of("alpha", "alpha.example").as_deref() == Some("accepted")
    });
    // DNS now fails (REFUSED for everything), and alpha republishes.
    dns.restart(&[], &[]);
    a.domains(&["add", "a2.example"]);
    wait_for("a2 pending", || {
        b.state_of("alpha", "a2.example").as_deref() == Some("pending")
    });
    let (state, reason) = b.held("alpha")["a2.example"].clone();
    assert_eq!(state, "pending");
    assert!(reason.contains("will retry"), "{reason}");
    assert_eq!(
        b.state_of("alpha", "alpha.example").as_deref(),
        Some("accepted")
    );
    // DNS comes back: the pending entry is decided.
    dns.restart(ZONES, &world());
    wait_for("a2 accepted", || {
        b.state_of("alpha", "a2.example").as_deref() == Some("accepted")
    });
}

#[test]
fn my_own_domains_and_another_peers_domains_are_refused() {
    let mut records = world();
    for host in [
        "mail.alpha.example",
        "mail.bravo.example",
        "mail.charlie.example",
    ] {
        records.push(Rec::Mx("shared.example", host, 10));
    }
    let mut dns = DnsServer::start(ZONES, &records);
    let (a, mut b) = two_friends(&mut dns, "");
    let mut c = Agent::init("charlie");
    dns.pin(&[Rec::mail_host(&c)]);
    c.use_dns(&dns);
    c.start();
    let token = b.invite("10m");
    assert_ok(&c.mxfed(&["join", &token]), "join");
    wait_for("charlie connected", || b.connected_to("charlie"));

    a.domains(&["add", "shared.example"]);
    wait_for("accepted for alpha", || {
        b.state_of("alpha", "shared.example").as_deref() == Some("accepted")
    });
    c.domains(&["add", "shared.example"]);
    wait_for("refused for charlie", || {
        b.state_of("charlie", "shared.example").as_deref() == Some("refused")
    });
    assert_eq!(
        b.held("charlie")["shared.example"].1,
        "shared.example is already backed up here for another peer"
    );

    // In mutual backup bravo.example's MX lists alpha too, so alpha's claim
    // passes DNS; once bravo lists the domain as its own, the claim is refused.
    a.domains(&["add", "bravo.example"]);
    wait_for("claim accepted at first", || {
        b.state_of("alpha", "bravo.example").as_deref() == Some("accepted")
    });
    b.domains(&["add", "bravo.example"]);
    wait_for("bravo.example refused", || {
        b.state_of("alpha", "bravo.example").as_deref() == Some("refused")
    });
    assert_eq!(
        b.held("alpha")["bravo.example"].1,
        "bravo.example is one of my own domains"
    );
    wait_for("alpha told", || {
        a.peer("bravo").unwrap()["my_list"]["refused"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["domain"] == "bravo.example")
    });
    // And the other order: a claim of a domain bravo already lists.
    b.domains(&["add", "b2.example"]);
    a.domains(&["add", "b2.example"]);
    wait_for("b2 refused", || {
        b.state_of("alpha", "b2.example").as_deref() == Some("refused")
    });
    b.stop();
}

#[test]
fn a_friend_cannot_point_mail_at_me_or_at_a_private_address() {
    let mut records = world();
    for d in ["loop.example", "private.example", "literal.example"] {
        records.push(Rec::Mx(d, "mail.alpha.example", 0));
        records.push(Rec::Mx(d, "mail.bravo.example", 10));
    }
    records.push(Rec::Mx("private.example", "inside.alpha.example", 20));
    records.push(Rec::A("inside.alpha.example", "10.0.0.25"));
    let mut dns = DnsServer::start(ZONES, &records);
    let (a, b) = two_friends(&mut dns, "allow_non_public_next_hops = false");
    a.domains(&["add", "loop.example", "--next-hop", "mail.bravo.example"]);
    a.domains(&[
        "add",
        "private.example",
        "--next-hop",
        "inside.alpha.example",
    ]);
    a.domains(&["add", "literal.example", "--next-hop", "[127.0.0.1]"]);
    wait_for("all three judged", || b.held("alpha").len() == 3);
    let held = b.held("alpha");
    assert_eq!(held["loop.example"].0, "refused");
    assert!(held["loop.example"].1.contains("this server"), "{held:?}");
    assert_eq!(held["private.example"].0, "refused");
    assert!(held["private.example"].1.contains("10.0.0.25"), "{held:?}");
    assert_eq!(held["literal.example"].0, "refused");
    assert!(held["literal.example"].1.contains("127.0.0.1"), "{held:?}");
}

#[test]
fn an_acknowledgement_with_a_thousand_refusals_crosses_the_wire() {
    // Regression: paired peers' requests were once capped at the 4 KiB join
    // limit, so a large ack closed the session on every reconnect.
    let mut dns = DnsServer::start(ZONES, &world());
    let (a, b) = two_friends(&mut dns, "");
    let file = domain_file(a.dir.path(), 1500);
    a.domains(&["add", "--from-file", file.to_str().unwrap()]);
    wait_for("alpha hears 1500 refusals", || {
        a.peer("bravo").unwrap()["my_list"]["refused_count"] == 1500
    });
    let m = a.peer("bravo").unwrap()["my_list"].clone();
    assert_eq!(m["refused"].as_array().unwrap().len(), 1000);
    assert!(
        m["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("no MX records"),
        "{m}"
    );
    assert!(a.connected_to("bravo") && b.connected_to("alpha"));
    assert!(!a.log_text().contains("frame too large") && !b.log_text().contains("frame too large"));
}

#[test]
fn bad_domain_names_are_refused_and_nothing_is_stored() {
    let mut a = Agent::init("alpha");
    a.start();
    a.domains(&["add", "good.example"]);
    for bad in [
        "*.wild.example",
        "trailing.example.",
        "sp ace.example",
        "192.0.2.1",
        ".",
        "a\nb.example",
    ] {
        let out = a.mxfed(&["domains", "add", "ok.example", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(
            stderr(&out).contains("invalid domain"),
            "{bad:?}: {}",
            stderr(&out)
        );
    }
    let out = a.mxfed(&["domains", "add", "x.example", "--next-hop", "smtp:[evil]"]);
    assert!(
        stderr(&out).contains("invalid next hop"),
        "{}",
        stderr(&out)
    );
    let out = a.mxfed(&["domains", "remove", "never.example"]);
    assert!(stderr(&out).contains("not in my list"), "{}", stderr(&out));
    let listed: serde_json::Value =
        serde_json::from_slice(&a.domains(&["list", "--json"]).stdout).unwrap();
    assert_eq!(listed["version"], 1, "nothing else was stored");
    assert_eq!(listed["domains"].as_array().unwrap().len(), 1);
    // IDN input is stored as punycode; a next hop override is kept.
    a.domains(&[
        "add",
        "bücher.example",
        "--next-hop",
        "Relay.Alpha.Example:2525",
    ]);
    let listed: serde_json::Value =
        serde_json::from_slice(&a.domains(&["list", "--json"]).stdout).unwrap();
    assert_eq!(listed["domains"][1]["domain"], "xn--bcher-kva.example");
    assert_eq!(listed["domains"][1]["next_hop"], "relay.alpha.example:2525");
}

#[test]
fn a_list_of_100000_domains_propagates() {
    let (a, b, _dns) = {
        let mut a = Agent::init("alpha");
        let mut b = Agent::init("bravo");
        b.configure("verify_mx = \"off\"");
        let dns = mail_dns(&[&a, &b]);
        pair_with(&mut a, &mut b);
        (a, b, dns)
    };
    let file = domain_file(a.dir.path(), 100_000);
    a.domains(&["add", "--from-file", file.to_str().unwrap()]);
    wait_for_within(
        "all 100,000 accepted",
        std::time::Duration::from_secs(300),
        || {
            let p = b.peer("alpha").unwrap();
            p["domains"].as_array().unwrap().len() == 100_000
                && p["domains"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|d| d["state"] == "accepted")
        },
    );
    wait_for("acknowledged", || {
        a.peer("bravo").unwrap()["my_list"]["accepted"] == 100_000
    });

    // One more domain costs what changed on the wire: the changes since the
    // version bravo holds, not the whole list again (about 3 MB).
    let sent = || a.peer("bravo").unwrap()["bytes_out"].as_u64().unwrap();
    let before = sent();
    a.domains(&["add", "one-more.example"]);
    wait_for("the new domain accepted", || {
        b.state_of("alpha", "one-more.example").as_deref() == Some("accepted")
    });
    wait_for("acknowledged", || {
        a.peer("bravo").unwrap()["my_list"]["accepted"] == 100_001
    });
    let cost = sent() - before;
    eprintln!(
        "a one-domain change to a 100,000-domain list: {cost} bytes sent (the whole list's first sync: {before} bytes)"
    );
    assert!(cost < 16_000, "{cost} bytes sent for a one-domain change");
    assert_eq!(
        b.peer("alpha").unwrap()["domains"]
            .as_array()
            .unwrap()
            .len(),
        100_001
    );
}

/// A list held here that is not what the friend thinks (here: a row lost
/// from the database) cannot take a change: the changes do not make the
/// signed list, so the whole list is fetched, checked as always, and the
/// list held is whole again.
#[test]
fn changes_that_do_not_apply_to_the_list_held_bring_the_whole_list() {
    let mut dns = DnsServer::start(ZONES, &world());
    let (a, b) = two_friends(&mut dns, "");
    a.domains(&["add", "alpha.example", "a2.example"]);
    wait_for("both accepted", || {
        b.state_of("alpha", "alpha.example").as_deref() == Some("accepted")
            && b.state_of("alpha", "a2.example").as_deref() == Some("accepted")
    });
    // The list held as signed is not the one alpha thinks (cut short), and
    // an entry's row is gone: the whole list settles both.
    b.sql("DELETE FROM peer_entries WHERE domain = 'a2.example'");
    b.sql("UPDATE peer_list_chunks SET bytes = substr(bytes, 1, length(bytes) - 3) WHERE list = 'domains'");
    assert_eq!(b.state_of("alpha", "a2.example"), None);
    a.domains(&["add", "lonely.example"]);
    wait_for("the list held whole again", || {
        b.state_of("alpha", "lonely.example").is_some()
            && b.state_of("alpha", "a2.example").as_deref() == Some("accepted")
    });
    assert!(
        b.log_text().contains("did not apply to version"),
        "{}",
        b.log_text()
    );
}

// ----- hostile lists ---------------------------------------------------------

fn entry(d: &str) -> Entry {
    Entry {
        domain: Domain::parse(d).unwrap(),
        next_hop: NextHop::parse("mail.bravo.example").unwrap(),
    }
}

/// A validly signed list by `key`'s owner.
fn signed(
    key_dir: &std::path::Path,
    version: u64,
    expires_at: u64,
    domains: &[&str],
) -> (ListHeader, Vec<Vec<WireEntry>>) {
    let id = mxfed_agent::identity::Identity::load(key_dir).unwrap();
    let list = DomainList::new(
        id.id,
        version,
        expires_at.saturating_sub(86_400),
        expires_at,
        domains.iter().map(|d| entry(d)).collect(),
    );
    let sig = id.sign(&list.signing_bytes());
    (list.header(sig), list.chunks().collect())
}

fn far_future() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400
}

#[test]
fn hostile_lists_are_refused_and_the_previous_list_stays_in_force() {
    let (a, mut b, _dns) = {
        let mut a = Agent::init("alpha");
        let mut b = Agent::init("bravo");
        a.configure("verify_mx = \"off\"");
        let dns = mail_dns(&[&a, &b]);
        pair_with(&mut a, &mut b);
        (a, b, dns)
    };
    b.domains(&["add", "b1.example"]);
    wait_for("alpha holds bravo's list", || {
        a.state_of("bravo", "b1.example").is_some()
    });
    let held_version = a.peer("bravo").unwrap()["list_version"].as_u64().unwrap();
    b.stop();
    wait_for("bravo gone", || !a.connected_to("bravo"));

    let stranger = Agent::init("stranger");
    let a_id: PeerId = a.id().parse().unwrap();
    let b_dir = b.data_dir();
    let future = far_future();
    let (good_header, good_chunks) = signed(
        &b_dir,
        held_version + 1,
        future,
        &["b1.example", "b2.example"],
    );

    // (what the bad list is, the refusal alpha must log)
    let mut cases: Vec<(&str, ListHeader, Vec<Vec<WireEntry>>, &str)> = Vec::new();
    let mut h = good_header.clone();
    h.signature = vec![7; 64];
    cases.push((
        "bad signature",
        h,
        good_chunks.clone(),
        "signature does not verify",
    ));
    let (h, c) = signed(&b_dir, held_version, future, &["evil.example"]);
    cases.push(("replay of the held version", h, c, "is not newer than"));
    let (h, c) = signed(&b_dir, held_version + 5, 10, &["evil.example"]);
    cases.push(("expired", h, c, "expired"));
    let mut h = good_header.clone();
    h.count = MAX_ENTRIES + 1;
    cases.push(("over the size limit", h, Vec::new(), "too large"));
    let (h, c) = signed(
        &stranger.data_dir(),
        held_version + 1,
        future,
        &["evil.example"],
    );
    cases.push(("signed by another peer's key", h, c, "but was sent by"));
    for (evil, hop) in [
        (
            "evil.example\nrelay_domains = evil.example",
            "mail.bravo.example",
        ),
        ("evil.example OK", "mail.bravo.example"),
        ("*", "mail.bravo.example"),
        (".", "mail.bravo.example"),
        ("192.0.2.66", "mail.bravo.example"),
        ("evil.example", "mail.bravo.example smtp:[10.0.0.1]"),
    ] {
        let mut h = good_header.clone();
        h.count = 1;
        let c = vec![vec![WireEntry {
            domain: evil.into(),
            next_hop: hop.into(),
        }]];
        cases.push(("injection", h, c, "list entry 0 is invalid"));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let raw = RawPeer::connect(&b_dir, a.addr, a_id).await;
        let current = std::sync::Arc::new(std::sync::Mutex::new((good_header.clone(), Vec::new())));
        let serving = std::sync::Arc::clone(&current);
        let _server = raw.serve(move |req| match req {
            Request::FetchList { .. } => {
                let (h, chunks) = serving.lock().unwrap().clone();
                let mut out = vec![Response::ListHeader(h)];
                out.extend(chunks.into_iter().map(Response::ListChunk));
                out
            }
            Request::Hello(_) => vec![Response::Hello(Hello {
                info: bravo_info(),
                list_version: 1_000,
                now: 0,
            })],
            _ => vec![Response::Done],
        });
        let hello = Request::Hello(Hello {
            info: bravo_info(),
            list_version: 1_000,
            now: 0,
        });
        assert!(matches!(raw.request(&hello).await, Response::Hello(_)));
        for (i, (what, h, c, expect)) in cases.into_iter().enumerate() {
            *current.lock().unwrap() = (h, c);
            let before = a.log_text().matches("refused domain list").count();
            assert_eq!(
                raw.request(&Request::ListOffer {
                    version: 1_000 + i as u64
                })
                .await,
                Response::Done
            );
            wait_for(what, || {
                a.log_text().matches("refused domain list").count() > before
            });
            let log = a.log_text();
            let last = log
                .lines()
                .rev()
                .find(|l| l.contains("refused domain list"))
                .unwrap();
            assert!(last.contains(expect), "{what}: {last}");
            // The previous list is still what alpha holds.
            let p = a.peer("bravo").unwrap();
            assert_eq!(p["list_version"].as_u64().unwrap(), held_version, "{what}");
            assert_eq!(
                a.held("bravo").keys().collect::<Vec<_>>(),
                ["b1.example"],
                "{what}"
            );
        }
        // And a good list from the same connection is still taken.
        *current.lock().unwrap() = (good_header.clone(), good_chunks.clone());
        raw.request(&Request::ListOffer { version: 2_000 }).await;
    });
    wait_for("the good list", || a.held("bravo").len() == 2);
}

fn bravo_info() -> PeerInfo {
    PeerInfo {
        name: "bravo".into(),
        mail_host: "mail.bravo.example".into(),
        addrs: vec![],
        agent_version: "test".into(),
    }
}

#[test]
fn after_a_restore_from_an_old_backup_my_list_is_re_signed_past_what_friends_hold() {
    let (mut a, mut b, _dns) = {
        let mut a = Agent::init("alpha");
        let mut b = Agent::init("bravo");
        b.configure("verify_mx = \"off\"");
        let dns = mail_dns(&[&a, &b]);
        pair_with(&mut a, &mut b);
        (a, b, dns)
    };
    a.domains(&["add", "one.example"]);
    wait_for("v1 held", || b.peer("alpha").unwrap()["list_version"] == 1);
    // Back up alpha's database at v1.
    a.stop();
    let backup = a.dir.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    for f in ["mxfed.db", "mxfed.db-wal", "mxfed.db-shm"] {
        let _ = std::fs::copy(a.data_dir().join(f), backup.join(f));
    }
    a.start();
    a.domains(&["add", "two.example"]);
    a.domains(&["add", "three.example"]);
    wait_for("v3 held", || b.peer("alpha").unwrap()["list_version"] == 3);
    // Disaster: alpha comes back from the v1 backup.
    a.stop();
    for f in ["mxfed.db", "mxfed.db-wal", "mxfed.db-shm"] {
        let _ = std::fs::remove_file(a.data_dir().join(f));
        if backup.join(f).exists() {
            std::fs::copy(backup.join(f), a.data_dir().join(f)).unwrap();
        }
    }
    a.start();
    // bravo acknowledges v3 on reconnect; alpha re-signs as v4, which bravo takes.
    wait_for("bravo holds v4", || {
        b.peer("alpha").unwrap()["list_version"] == 4
    });
    assert_eq!(b.held("alpha").keys().collect::<Vec<_>>(), ["one.example"]);
    assert!(a.log_text().contains("re-signing past it"));
    b.stop();
}

#[test]
fn domains_come_from_stdin_with_comments_and_list_prints_a_table() {
    use std::io::Write;
    let mut a = Agent::init("alpha");
    a.start();
    let mut child = std::process::Command::new(MXFED)
        .arg("--config")
        .arg(a.config())
        .args(["domains", "add", "--from-file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"# the domains I host\nstdin-one.example\n\n  stdin-two.example   # the shop\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, "domains add --from-file -");
    let table = String::from_utf8(a.domains(&["list"]).stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("my list: version 1,") && lines[0].ends_with("2 domain(s)"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("DOMAIN") && lines[1].contains("NEXT HOP"),
        "{table}"
    );
    for d in ["stdin-one.example", "stdin-two.example"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(d) && l.contains("mail.alpha.example")),
            "{d} missing in\n{table}"
        );
    }
    assert_eq!(lines.len(), 4, "{table}");
}

#[test]
fn an_accepted_domain_is_verified_again_while_its_friend_is_offline() {
    let mut dns = DnsServer::start(ZONES, &world());
    let (mut a, b) = two_friends(
        &mut dns,
        "recheck_interval = \"1s\"\nreverify_interval = \"2s\"",
    );
    a.domains(&["add", "alpha.example", "a2.example"]);
    wait_for("both accepted", || {
        b.state_of("alpha", "alpha.example").as_deref() == Some("accepted")
            && b.state_of("alpha", "a2.example").as_deref() == Some("accepted")
    });
    // alpha goes offline, so it cannot republish.
    a.stop();
    wait_for("bravo to see alpha go", || !b.connected_to("alpha"));
    // A DNS failure never revokes: several re-verifications pass, still accepted.
    dns.restart(&[], &[]);
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(
        b.state_of("alpha", "alpha.example").as_deref(),
        Some("accepted")
    );
    // A definite answer does: alpha.example's MX no longer names bravo.
    let moved: Vec<Rec> = world()
        .into_iter()
        .filter(|r| !matches!(r, Rec::Mx("alpha.example", "mail.bravo.example", _)))
        .collect();
    dns.restart(ZONES, &moved);
    wait_for("alpha.example refused without alpha republishing", || {
        b.state_of("alpha", "alpha.example").as_deref() == Some("refused")
    });
    let (_, reason) = b.held("alpha")["alpha.example"].clone();
    assert!(reason.contains("does not list"), "{reason}");
    assert_eq!(
        b.state_of("alpha", "a2.example").as_deref(),
        Some("accepted"),
        "a domain whose MX still names both stays"
    );
}

/// The agents in these tests run with the environment of
/// `deploy/mxfed.service` (glibc's malloc tuning), as deployed: the
/// benchmarks' memory figures are those of the unit.
#[test]
fn agents_here_run_with_the_units_environment() {
    let env = unit_environment();
    assert!(
        env.iter().any(|(k, v)| k == "MALLOC_ARENA_MAX" && v == "2"),
        "{env:?}"
    );
    let mut a = Agent::init("alpha");
    a.start();
    let environ = std::fs::read(format!("/proc/{}/environ", a.pid().unwrap())).unwrap();
    for (k, v) in &env {
        let kv = format!("{k}={v}");
        assert!(
            environ.split(|b| *b == 0).any(|e| e == kv.as_bytes()),
            "{kv} not in the agent's environment"
        );
    }
}
