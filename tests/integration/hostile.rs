//! A hostile paired friend, on real Postfix and real DNS (dnsmasq): one
//! test per attack. Each shows that nothing changed for the other friends'
//! domains, and that no mail went anywhere but the owner's checked address.
//!
//! The cast: bravo is the backup (`me`, with its own Postfix); alpha owns
//! its domains and runs its agent on its mail server; mallory is paired
//! with bravo too, and attacks.

use crate::util::*;

const ZONES: &[&str] = &["example"];

/// `domain` has MX 0 `owner`'s mail host and MX 10 bravo's.
fn backed_up(domain: &'static str, owner: &'static str) -> [Rec; 2] {
    [
        Rec::Mx(domain, owner, 0),
        Rec::Mx(domain, "mail.bravo.example", 10),
    ]
}

/// An acknowledgement of version `v` of the other side's list, with no
/// entries: what a hostile friend sends to move that version.
fn empty_ack(v: u64) -> mxfed_proto::msg::Request {
    mxfed_proto::msg::Request::ListAck(mxfed_proto::msg::ListAck {
        version: v,
        accepted: 0,
        refused_count: 0,
        pending_count: 0,
        refused: Vec::new(),
        pending: Vec::new(),
    })
}

struct Cast {
    alpha: Agent,
    bravo: Agent,
    mallory: Agent,
    pf: PostfixInstance,
    dns: DnsServer,
}

/// bravo backs up alpha and mallory; alpha.example and mallory.example are
/// each backed up by bravo, as their owners publish them.
fn cast(records: &[Rec], bravo_extra: &str) -> Cast {
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    let mut mallory = Agent::init("mallory");
    let mut all: Vec<Rec> = Vec::new();
    all.extend(backed_up("alpha.example", "mail.alpha.example"));
    all.extend(backed_up("mallory.example", "mail.mallory.example"));
    all.extend(records.iter().cloned());
    let mut dns = mail_dns(&[&alpha, &bravo, &mallory]);
    dns.restart(ZONES, &all);
    bravo.use_postfix(&pf);
    bravo.configure(&format!("recheck_interval = \"1s\"\n{bravo_extra}"));
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "postfix setup");
    start_and_pair(&mut alpha, &mut bravo);
    mallory.start();
    let token = bravo.invite("10m");
    assert_ok(&mallory.mxfed(&["join", &token]), "join");
    wait_for("mallory connected", || bravo.connected_to("mallory"));
    alpha.domains(&["add", "alpha.example"]);
    mallory.domains(&["add", "mallory.example"]);
    wait_for("both friends' own domains relayed", || {
        pf.rcpt("x@alpha.example") == 250 && pf.rcpt("x@mallory.example") == 250
    });
    Cast {
        alpha,
        bravo,
        mallory,
        pf,
        dns,
    }
}

impl Cast {
    /// The other friends' domains are relayed as before, each to its
    /// owner's checked address only.
    fn others_unchanged(&self) {
        assert_eq!(self.pf.rcpt("x@alpha.example"), 250);
        assert_eq!(self.pf.rcpt("x@mallory.example"), 250);
        let transport = self.pf.dump("hash", "transport").unwrap();
        assert_eq!(
            transport.get("alpha.example"),
            Some(&format!("relay:[{}]", self.alpha.ip()))
        );
        assert_eq!(
            transport.get("mallory.example"),
            Some(&format!("relay:[{}]", self.mallory.ip()))
        );
    }

    /// Every transport entry points at the address of the friend it was
    /// accepted for, and nowhere else.
    fn transport_only_to_owners(&self) {
        let transport = self.pf.dump("hash", "transport").unwrap();
        let alpha = format!("relay:[{}]", self.alpha.ip());
        let mallory = format!("relay:[{}]", self.mallory.ip());
        for (d, v) in &transport {
            let ok = if d.starts_with("mallory") {
                *v == mallory
            } else {
                *v == alpha
            };
            assert!(ok, "{d} relayed to {v}: {transport:?}");
        }
    }
}

/// The squat: mallory claims a domain whose MX names its real owner's host
/// and mine, pointing it at the owner's host. An MX check alone passes.
#[test]
fn a_squatter_is_refused_and_never_blocks_the_owner() {
    let c = cast(&backed_up("friend3.example", "mail.alpha.example"), "");
    c.mallory
        .domains(&["add", "friend3.example", "--next-hop", "mail.alpha.example"]);
    wait_for("mallory's claim judged", || {
        c.bravo.state_of("mallory", "friend3.example").is_some()
    });
    let (state, reason) = c.bravo.held("mallory")["friend3.example"].clone();
    assert_eq!(state, "refused");
    assert!(
        reason.starts_with("no proof that this peer speaks for friend3.example"),
        "{reason}"
    );
    assert!(
        reason.contains(&format!(
            "_mxfed.friend3.example. TXT \"v=mxfed1; id={}\"",
            c.mallory.id()
        )),
        "the reason names the record to add: {reason}"
    );
    wait_for("mallory hears why", || {
        c.mallory.peer("bravo").unwrap()["my_list"]["refused"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["domain"] == "friend3.example")
    });
    assert_eq!(c.pf.rcpt("x@friend3.example"), 554);

    // The owner claims it later: the squatter's claim does not block it.
    c.alpha.domains(&["add", "friend3.example"]);
    wait_for("the owner's claim accepted", || {
        c.bravo.state_of("alpha", "friend3.example").as_deref() == Some("accepted")
    });
    wait_for("relayed for the owner", || {
        c.pf.rcpt("x@friend3.example") == 250
    });
    assert_eq!(
        c.bravo.state_of("mallory", "friend3.example").as_deref(),
        Some("refused")
    );
    // Held mail for friend3.example is the owner's: the squatter hears of none.
    let status = c.bravo.status();
    let mallory = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "mallory")
        .unwrap();
    assert!(mallory["domains"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["domain"] != "friend3.example" || d["state"] == "refused"));
    c.others_unchanged();
    c.transport_only_to_owners();
}

/// The explicit proof: a domain whose mail server is not where its owner's
/// agent runs publishes `_mxfed.DOMAIN TXT`. When the record moves to
/// another peer, the entry moves with it.
#[test]
fn a_txt_record_proves_a_claim_and_the_entry_follows_it() {
    let mut c = cast(
        &backed_up("remote.example", "mail.remote.example"),
        "reverify_interval = \"1s\"",
    );
    // remote.example's mail server is where mallory's agent runs; the
    // domain says alpha speaks for it.
    let mallory_ip = c.mallory.ip();
    let records = |who: &Agent| {
        let mut r: Vec<Rec> = Vec::new();
        r.extend(backed_up("alpha.example", "mail.alpha.example"));
        r.extend(backed_up("mallory.example", "mail.mallory.example"));
        r.extend(backed_up("remote.example", "mail.remote.example"));
        r.push(Rec::Host("mail.remote.example".into(), mallory_ip));
        r.push(Rec::proof("remote.example", who));
        r
    };
    c.dns.restart(ZONES, &records(&c.alpha));
    c.alpha
        .domains(&["add", "remote.example", "--next-hop", "mail.remote.example"]);
    wait_for("alpha's claim accepted on the record", || {
        c.bravo.state_of("alpha", "remote.example").as_deref() == Some("accepted")
    });
    // mallory claims it too: its agent runs at that very address (an MX
    // host of the domain), but the domain's record names alpha, and the
    // record decides alone.
    c.mallory
        .domains(&["add", "remote.example", "--next-hop", "mail.remote.example"]);
    wait_for("mallory's claim judged", || {
        c.bravo.state_of("mallory", "remote.example").is_some()
    });
    let (state, reason) = c.bravo.held("mallory")["remote.example"].clone();
    assert_eq!(state, "refused");
    assert!(
        reason.starts_with(
            "no proof that this peer speaks for remote.example: _mxfed.remote.example names other peers, not this one"
        ),
        "{reason}"
    );
    // The domain's owner moves the record to mallory: at the next
    // re-verification alpha's entry is refused, and mallory's re-check
    // accepts its own.
    c.dns.restart(ZONES, &records(&c.mallory));
    wait_for("the entry moves to mallory", || {
        c.bravo.state_of("alpha", "remote.example").as_deref() == Some("refused")
            && c.bravo.state_of("mallory", "remote.example").as_deref() == Some("accepted")
    });
    let (_, reason) = c.bravo.held("alpha")["remote.example"].clone();
    assert!(reason.starts_with("no proof"), "{reason}");
    wait_for("relayed to mallory's checked address", || {
        c.pf.dump("hash", "transport")
            .unwrap()
            .get("remote.example")
            == Some(&format!("relay:[{mallory_ip}]"))
    });
    c.others_unchanged();
}

/// The next hop's name is re-pointed after the check, here at this very
/// server. Postfix relays to the address that was checked, never to the new
/// one, so the mail reaches the owner instead of looping back and bouncing;
/// the next re-check refuses the new address.
#[test]
fn a_next_hop_re_pointed_after_the_check_cannot_redirect_the_relay() {
    // alpha's agent runs where its mail server listens (127.0.0.1).
    let pf_alpha = PostfixInstance::start_mailbox("mail.alpha.example", "moving.example");
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let mut alpha = Agent::init_at("alpha", free_udp_on_localhost());
    let mut bravo = Agent::init("bravo");
    let mut mallory = Agent::init("mallory");
    let mut dns = mail_dns(&[&alpha, &bravo, &mallory]);
    let mut records: Vec<Rec> = Vec::new();
    records.extend(backed_up("mallory.example", "mail.mallory.example"));
    records.push(Rec::Mx("moving.example", "hop.alpha.example", 0));
    records.push(Rec::Mx("moving.example", "mail.bravo.example", 10));
    records.push(Rec::Host("hop.alpha.example".into(), alpha.ip()));
    dns.restart(ZONES, &records);
    bravo.use_postfix(&pf);
    bravo.configure(&format!(
        "allowed_next_hop_ports = [25, {}]\nreverify_interval = \"1h\"",
        pf_alpha.port
    ));
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "postfix setup");
    start_and_pair(&mut alpha, &mut bravo);
    mallory.start();
    let token = bravo.invite("10m");
    assert_ok(&mallory.mxfed(&["join", &token]), "join");
    mallory.domains(&["add", "mallory.example"]);
    let hop = format!("hop.alpha.example:{}", pf_alpha.port);
    alpha.domains(&["add", "moving.example", "--next-hop", &hop]);
    let pinned = format!("relay:[{}]:{}", alpha.ip(), pf_alpha.port);
    wait_for("moving.example relayed to alpha's checked address", || {
        pf.dump("hash", "transport").unwrap().get("moving.example") == Some(&pinned)
    });
    wait_for("mallory.example relayed", || {
        pf.rcpt("x@mallory.example") == 250
    });

    // The name now points at bravo itself.
    records.pop();
    records.push(Rec::Host("hop.alpha.example".into(), bravo.ip()));
    dns.restart(ZONES, &records);
    pf.send("bob@moving.example", "sent after the re-point");
    wait_for("delivered to alpha, the checked address", || {
        pf_alpha.inbox() == 1
    });
    assert_eq!(
        pf.dump("hash", "transport").unwrap().get("moving.example"),
        Some(&pinned),
        "the transport never followed the name"
    );

    // The next re-verification sees the new address and refuses it.
    bravo.stop();
    bravo.configure("reverify_interval = \"1s\"\nrecheck_interval = \"1s\"");
    bravo.start();
    wait_for("the re-check refuses the new address", || {
        bravo.state_of("alpha", "moving.example").as_deref() == Some("refused")
    });
    let (_, reason) = bravo.held("alpha")["moving.example"].clone();
    assert!(
        reason.contains(&format!("resolves to {}, which is this server", bravo.ip())),
        "{reason}"
    );
    wait_for("relay removed", || pf.rcpt("x@moving.example") == 554);
    // The other friend's domain: as before.
    assert_eq!(pf.rcpt("x@mallory.example"), 250);
    assert_eq!(
        pf.dump("hash", "transport").unwrap().get("mallory.example"),
        Some(&format!("relay:[{}]", mallory.ip()))
    );
}

/// Ports outside `allowed_next_hop_ports` are refused, and with
/// `verify_mx = "off"` the next hop's addresses are still checked.
#[test]
fn any_port_or_this_servers_address_is_refused_even_without_mx_checks() {
    let mut c = cast(&[], "verify_mx = \"off\"");
    let mut records: Vec<Rec> = Vec::new();
    records.extend(backed_up("alpha.example", "mail.alpha.example"));
    records.extend(backed_up("mallory.example", "mail.mallory.example"));
    records.push(Rec::Host("loop.mallory.example".into(), c.bravo.ip()));
    c.dns.restart(ZONES, &records);
    c.mallory.domains(&[
        "add",
        "redis.example",
        "--next-hop",
        "mail.mallory.example:6379",
    ]);
    c.mallory
        .domains(&["add", "loop.example", "--next-hop", "loop.mallory.example"]);
    wait_for("both judged", || {
        let h = c.bravo.held("mallory");
        h.contains_key("redis.example") && h.contains_key("loop.example")
    });
    let held = c.bravo.held("mallory");
    assert_eq!(
        held["redis.example"],
        (
            "refused".to_string(),
            "next hop port 6379 is not allowed here (allowed_next_hop_ports: 25, 587, 2525)"
                .to_string()
        )
    );
    assert_eq!(held["loop.example"].0, "refused");
    assert!(
        held["loop.example"].1.contains("which is this server"),
        "{held:?}"
    );
    assert_eq!(c.pf.rcpt("x@redis.example"), 554);
    assert_eq!(c.pf.rcpt("x@loop.example"), 554);
    c.others_unchanged();
    c.transport_only_to_owners();

    // An address of this machine that is not in my mail host's DNS, at the
    // port where my Postfix takes mail (here 127.0.0.1 and the instance's
    // port, allowed for the test): also this server.
    records.push(Rec::Host(
        "smtp.mallory.example".into(),
        "127.0.0.1".parse().unwrap(),
    ));
    c.dns.restart(ZONES, &records);
    c.bravo.stop();
    c.bravo.configure(&format!(
        "allowed_next_hop_ports = [25, 587, 2525, {}]",
        c.pf.port
    ));
    c.bravo.start();
    wait_for("friends back", || {
        c.bravo.connected_to("mallory") && c.bravo.connected_to("alpha")
    });
    let hop = format!("smtp.mallory.example:{}", c.pf.port);
    c.mallory
        .domains(&["add", "listener.example", "--next-hop", &hop]);
    wait_for("judged", || {
        c.bravo.held("mallory").contains_key("listener.example")
    });
    let held = c.bravo.held("mallory");
    assert_eq!(held["listener.example"].0, "refused", "{held:?}");
    assert!(
        held["listener.example"]
            .1
            .contains("is where this server's Postfix takes mail"),
        "{held:?}"
    );
    assert_eq!(c.pf.rcpt("x@listener.example"), 554);
    c.others_unchanged();
    c.transport_only_to_owners();
}

/// relay_domains matches subdomains (parent_domain_matches_subdomains), and
/// such mail would be routed by DNS the friend controls. A friend's entry
/// relays its exact domain only, on Debian's defaults (relay_recipient_maps
/// empty before setup) and with each map type.
#[test]
fn a_subdomain_of_an_accepted_domain_is_not_relayed() {
    for map_type in ["hash", "lmdb", "cdb"] {
        let pf = PostfixInstance::start("mail.bravo.example", "");
        assert_eq!(pf.postconf("relay_recipient_maps"), "", "Debian's default");
        let mut alpha = Agent::init("alpha");
        let mut bravo = Agent::init("bravo");
        let _dns = mail_dns(&[&alpha, &bravo]);
        bravo.use_postfix(&pf);
        bravo.configure(&format!(
            "verify_mx = \"off\"\npostfix_map_type = \"{map_type}\""
        ));
        assert_ok(&bravo.mxfed(&["postfix", "setup"]), "postfix setup");
        start_and_pair(&mut alpha, &mut bravo);
        alpha.domains(&["add", "friend.example"]);
        wait_for("friend.example relayed", || {
            pf.rcpt("x@friend.example") == 250
        });
        for sub in ["x@sub.friend.example", "x@a.b.friend.example"] {
            let code = pf.rcpt(sub);
            assert!((500..600).contains(&code), "{map_type}: {sub} got {code}");
        }
        // A subdomain that is itself an accepted entry is relayed.
        alpha.domains(&["add", "sub.friend.example"]);
        wait_for("sub.friend.example relayed", || {
            pf.rcpt("x@sub.friend.example") == 250
        });
        assert!((500..600).contains(&pf.rcpt("x@a.b.friend.example")));
        // cdb cannot be listed; ask for each key.
        for d in ["friend.example", "sub.friend.example"] {
            assert_eq!(
                pf.query(map_type, "transport", d),
                Some(format!("relay:[{}]", alpha.ip())),
                "{map_type}: {d}"
            );
        }
        assert_eq!(pf.query(map_type, "transport", "b.friend.example"), None);
    }
}

/// An acknowledgement naming a far-future version of my list would make me
/// re-sign, and every other friend re-fetch my list. It may push my
/// version forward only by a bounded step, and at most once per interval.
#[test]
fn acknowledgements_cannot_jump_my_version_or_make_me_re_sign_at_their_pace() {
    use mxfed_proto::msg::Response;

    let mut alpha = Agent::init("alpha");
    let mut mallory = Agent::init("mallory");
    start_and_pair(&mut alpha, &mut mallory);
    alpha.domains(&["add", "alpha.example"]);
    let version = || {
        let listed: serde_json::Value =
            serde_json::from_slice(&alpha.domains(&["list", "--json"]).stdout).unwrap();
        listed["version"].as_u64().unwrap()
    };
    assert_eq!(version(), 1);
    // mallory's own agent steps aside; a raw client with its key plays it.
    mallory.stop();
    wait_for("mallory gone", || !alpha.connected_to("mallory"));
    let alpha_id: mxfed_proto::PeerId = alpha.id().parse().unwrap();
    let refusal = |r: Response| match r {
        Response::Refused { message } => message,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let raw = RawPeer::connect(&mallory.data_dir(), alpha.addr, alpha_id).await;
        // Too far: ignored.
        let m = refusal(raw.request(&empty_ack(1 + 1_000_000)).await);
        assert!(
            m.contains("acknowledges version 1000001 but mine is 1"),
            "{m}"
        );
        assert_eq!(version(), 1);
        // Within the bound (a restore from an old backup): re-signed past it, once.
        let m = refusal(raw.request(&empty_ack(40)).await);
        assert!(m.contains("re-signed as v41"), "{m}");
        assert_eq!(version(), 41);
        // Again at once: not again yet.
        for v in [100, 1_000, 50_000] {
            let m = refusal(raw.request(&empty_ack(v)).await);
            assert!(m.contains("not again yet"), "{m}");
        }
        assert_eq!(version(), 41);
    });
    assert_eq!(
        alpha.log_text().matches("re-signing past it").count(),
        1,
        "{}",
        alpha.log_text()
    );
}

/// A flood from one friend: Hellos, acknowledgements of versions of my list
/// it never had, and list offers, as fast as it can. It gets at most one
/// re-sign out of me, is cut off when it opens more than 200 streams in
/// 10 s and not served again until a cool-off ends, and another friend's
/// list still propagates and is relayed.
#[test]
fn a_flooding_friend_is_cut_off_and_the_others_are_served_as_usual() {
    use mxfed_proto::msg::{Hello, PeerInfo, Request};

    let mut c = cast(&backed_up("late.example", "mail.alpha.example"), "");
    c.mallory.stop();
    wait_for("mallory gone", || !c.bravo.connected_to("mallory"));
    let bravo_id: mxfed_proto::PeerId = c.bravo.id().parse().unwrap();
    let info = PeerInfo {
        name: "mallory".into(),
        mail_host: "mail.mallory.example".into(),
        addrs: vec![],
        agent_version: "flood".into(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sent, code) = rt.block_on(async {
        let raw = RawPeer::connect(&c.mallory.data_dir(), c.bravo.addr, bravo_id).await;
        let mut sent = 0u64;
        for i in 0..1_000u64 {
            let req = match i % 3 {
                0 => Request::Hello(Hello {
                    info: info.clone(),
                    list_version: 1_000 + i,
                    now: 0,
                }),
                1 => empty_ack(2 + i),
                _ => Request::ListOffer { version: 1_000 + i },
            };
            if raw.try_request(&req).await.is_none() {
                break;
            }
            sent += 1;
        }
        (sent, raw.close_code().await)
    });
    assert_eq!(
        code,
        u64::from(mxfed_proto::msg::close::TOO_MANY_STREAMS),
        "cut off after {sent} requests"
    );
    assert!(sent <= 200, "{sent} requests answered before the cut");
    // Reconnecting at once does not reset its budget: it is not served
    // until its cool-off ends.
    let (answer, code) = rt.block_on(async {
        let raw = RawPeer::connect(&c.mallory.data_dir(), c.bravo.addr, bravo_id).await;
        let answer = raw.try_request(&Request::ListOffer { version: 5 }).await;
        (answer, raw.close_code().await)
    });
    assert_eq!(answer, None);
    assert_eq!(code, u64::from(mxfed_proto::msg::close::TOO_MANY_STREAMS));
    // The other friend is served as usual: a new domain propagates and is
    // relayed to its owner only.
    c.alpha.domains(&["add", "late.example"]);
    wait_for("late.example relayed", || {
        c.pf.rcpt("x@late.example") == 250
    });
    assert!(
        c.bravo.log_text().matches("re-signing past it").count() <= 1,
        "at most one re-sign per interval, however many acknowledgements"
    );
    assert_eq!(c.pf.rcpt("x@alpha.example"), 250);
    assert_eq!(c.pf.rcpt("x@mallory.example"), 250, "its own domain stays");
    c.transport_only_to_owners();
    // After the cool-off, its own agent is served again.
    c.mallory.start();
    wait_for("mallory served again", || c.bravo.connected_to("mallory"));
}

/// A friend asking for my whole list again and again: each version is sent
/// to it once per few seconds, so it cannot make me stream my list in a
/// loop; a new version is sent at once.
#[test]
fn asking_for_my_whole_list_in_a_loop_gets_it_once() {
    use mxfed_proto::msg::{Request, Response};

    let mut alpha = Agent::init("alpha");
    let mut mallory = Agent::init("mallory");
    start_and_pair(&mut alpha, &mut mallory);
    mallory.stop();
    wait_for("mallory gone", || !alpha.connected_to("mallory"));
    // Published while mallory's own agent is away: never sent to it yet.
    alpha.domains(&["add", "alpha.example"]);
    let alpha_id: mxfed_proto::PeerId = alpha.id().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let raw = RawPeer::connect(&mallory.data_dir(), alpha.addr, alpha_id).await;
        let fetch = Request::FetchList { have: 0 };
        assert!(matches!(
            raw.request(&fetch).await,
            Response::ListHeader(h) if h.version == 1
        ));
        for _ in 0..5 {
            match raw.request(&fetch).await {
                Response::Refused { message } => {
                    assert!(message.contains("was sent less than"), "{message}")
                }
                other => panic!("sent again at once: {other:?}"),
            }
        }
        // A new version is sent at once.
        alpha.domains(&["add", "a2.example"]);
        assert!(matches!(
            raw.request(&fetch).await,
            Response::ListHeader(h) if h.version == 2
        ));
    });
}
