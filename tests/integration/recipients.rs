//! Recipient lists on real Postfix (issue 12, part 1): the owner's agent
//! reads the valid recipients of its domains from its own Postfix and
//! publishes them; the backup's Postfix then accepts exactly those at RCPT
//! time and refuses the rest with 550, never to bounce them later.

use crate::util::*;

const ZONES: &[&str] = &["example"];

/// `domain` has MX 0 alpha's mail host and MX 10 bravo's.
fn backed_up(domain: &'static str) -> [Rec; 2] {
    [
        Rec::Mx(domain, "mail.alpha.example", 0),
        Rec::Mx(domain, "mail.bravo.example", 10),
    ]
}

fn postmap(path: &std::path::Path) {
    let out = std::process::Command::new("postmap")
        .arg(format!("hash:{}", path.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "postmap: {out:?}");
}

#[test]
fn the_backup_accepts_exactly_the_owners_recipients() {
    // alpha's own server: a mailbox domain, a catch-all alias domain, and a
    // relay domain whose recipient table (regexp) cannot be listed.
    let tables = tempfile::tempdir().unwrap();
    let vmailbox = tables.path().join("vmailbox");
    std::fs::write(&vmailbox, "bob@alpha.example alpha/bob/\n").unwrap();
    postmap(&vmailbox);
    let virtual_ = tables.path().join("virtual");
    std::fs::write(&virtual_, "@catch.example bob@alpha.example\n").unwrap();
    postmap(&virtual_);
    let rx = tables.path().join("rx.regexp");
    std::fs::write(&rx, "/^[a-z]+@rx\\.example$/ OK\n").unwrap();
    let pf_alpha = PostfixInstance::start(
        "mail.alpha.example",
        &format!(
            "virtual_mailbox_domains = alpha.example\n\
             virtual_mailbox_maps = hash:{}\n\
             virtual_alias_domains = catch.example\n\
             virtual_alias_maps = hash:{}\n\
             relay_domains = rx.example\n\
             relay_recipient_maps = regexp:{}\n\
             recipient_delimiter = +",
            vmailbox.display(),
            virtual_.display(),
            rx.display()
        ),
    );
    let pf = PostfixInstance::start("mail.bravo.example", "recipient_delimiter = +");
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    let mut dns = mail_dns(&[&alpha, &bravo]);
    let mut records = Vec::new();
    for d in ["alpha.example", "catch.example", "rx.example"] {
        records.extend(backed_up(d));
    }
    dns.restart(ZONES, &records);
    alpha.use_postfix(&pf_alpha);
    bravo.use_postfix(&pf);
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "postfix setup");
    start_and_pair(&mut alpha, &mut bravo);
    alpha.domains(&["add", "alpha.example", "catch.example", "rx.example"]);

    wait_for("alpha's recipients relayed", || {
        pf.rcpt("bob@alpha.example") == 250 && pf.rcpt("nobody@alpha.example") == 550
    });
    // The same at RCPT time, per domain:
    assert_eq!(
        pf.rcpt("bob+tag@alpha.example"),
        250,
        "an address extension"
    );
    assert_eq!(pf.rcpt("Bob@Alpha.example"), 250, "case does not matter");
    assert_eq!(pf.rcpt("anyone@catch.example"), 250, "a catch-all");
    assert_eq!(
        pf.rcpt("anyone@rx.example"),
        250,
        "cannot be listed: every recipient"
    );
    assert_eq!(
        pf.rcpt("x@sub.alpha.example"),
        550,
        "still exact domains only"
    );

    // What each side shows.
    let held = bravo.peer("alpha").unwrap();
    let domain = |d: &str| {
        held["domains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["domain"] == d)
            .unwrap()
            .clone()
    };
    assert_eq!(domain("alpha.example")["recipients"], 1);
    assert_eq!(domain("catch.example")["recipients"], 1);
    assert!(domain("rx.example")["recipients"].is_null());
    assert!(domain("rx.example")["recipients_reason"]
        .as_str()
        .unwrap()
        .contains("every recipient is accepted"));
    let mine: serde_json::Value =
        serde_json::from_slice(&alpha.domains(&["list", "--json"]).stdout).unwrap();
    let rx_mine = mine["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == "rx.example")
        .unwrap()
        .clone();
    assert!(rx_mine["recipients"].is_null());
    assert!(
        rx_mine["recipients_reason"]
            .as_str()
            .unwrap()
            .contains("regexp tables cannot be listed"),
        "{rx_mine}"
    );

    // A user added to the owner's table is accepted at the backup within
    // seconds, with no command: the agent notices the table change.
    std::fs::write(
        &vmailbox,
        "bob@alpha.example alpha/bob/\ncarol@alpha.example alpha/carol/\n",
    )
    .unwrap();
    postmap(&vmailbox);
    wait_for("carol accepted at the backup", || {
        pf.rcpt("carol@alpha.example") == 250
    });
    assert_eq!(pf.rcpt("nobody@alpha.example"), 550);
    assert!(
        alpha.log_text().contains("my recipient list changed"),
        "{}",
        alpha.log_text()
    );
    // alpha.example keeps an exact list through that change (bob stays), so
    // only carol's key in the recipients map changed: no domain map was
    // touched, and a whole render finds nothing to change.
    let patched_alone =
        r#"patched=["relay_recipients"] domains=Some([]) addresses=["carol@alpha.example"]"#;
    let installed = |bravo: &Agent| {
        bravo
            .log_text()
            .lines()
            .filter(|l| l.contains("maps installed"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for _ in 0..100 {
        if bravo.log_text().contains(patched_alone) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        bravo.log_text().contains(patched_alone),
        "{}",
        installed(&bravo)
    );
    let whole_render_agrees = |bravo: &Agent| {
        let out = bravo.mxfed(&["apply", "--dry-run", "--json"]);
        assert_ok(&out, "apply --dry-run");
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["changes"].as_array().unwrap().len(), 0, "{r}");
    };
    whole_render_agrees(&bravo);
    // The same for an address that goes.
    std::fs::write(&vmailbox, "carol@alpha.example alpha/carol/\n").unwrap();
    postmap(&vmailbox);
    wait_for("bob refused at the backup", || {
        pf.rcpt("bob@alpha.example") == 550
    });
    assert_eq!(pf.rcpt("carol@alpha.example"), 250);
    assert!(bravo.log_text().contains(
        r#"patched=["relay_recipients"] domains=Some([]) addresses=["bob@alpha.example"]"#
    ));
    whole_render_agrees(&bravo);
}

/// A friend that turns its recipient list off (or whose list cannot be
/// read) brings back "every recipient", and says so.
#[test]
fn recipients_off_accepts_every_recipient_with_a_warning() {
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    let mut dns = mail_dns(&[&alpha, &bravo]);
    dns.restart(ZONES, &backed_up("alpha.example"));
    alpha.configure("recipients = \"off\"");
    bravo.use_postfix(&pf);
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "postfix setup");
    start_and_pair(&mut alpha, &mut bravo);
    alpha.domains(&["add", "alpha.example"]);
    wait_for("relayed", || pf.rcpt("anyone@alpha.example") == 250);
    let table = String::from_utf8(bravo.mxfed(&["status"]).stdout).unwrap();
    assert!(
        table.contains("accept every recipient here (alpha.example)"),
        "{table}"
    );
    let mine = String::from_utf8(alpha.domains(&["list"]).stdout).unwrap();
    assert!(mine.contains("recipients = \"off\""), "{mine}");
    // Both doctors say it, each from its side.
    // (alpha has no Postfix, so no server key either: bravo relays to it
    // with opportunistic TLS only, and says so.)
    for (agent, check, says) in [
        (
            &alpha,
            "recipients",
            "friends accept every recipient of alpha.example",
        ),
        (
            &bravo,
            "recipients",
            "I accept every recipient of 1 friend domain(s)",
        ),
        (&bravo, "tls", "opportunistic TLS only"),
    ] {
        let doctor: serde_json::Value =
            serde_json::from_slice(&agent.mxfed(&["doctor", "--json"]).stdout).unwrap();
        let found = doctor["checks"].as_array().unwrap().iter().any(|c| {
            c["check"] == check
                && c["status"] == "warn"
                && c["detail"].as_str().unwrap().contains(says)
        });
        assert!(found, "{doctor}");
    }
}

/// `backup_mode = "when-down"`: the backup answers 4xx naming the primary
/// while the owner's server takes mail, accepts within seconds of it going
/// away, defers again once it is back, and accepts whenever the backup's
/// own agent is not running (Postfix's default_action=DUNNO).
#[test]
fn when_down_defers_to_the_primary_while_it_is_up() {
    // alpha's agent runs where its Postfix listens (127.0.0.1), so bravo's
    // probe of alpha's next hop reaches alpha's real Postfix.
    let pf_alpha = PostfixInstance::start_mailbox("mail.alpha.example", "alpha.example");
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let mut alpha = Agent::init_at("alpha", free_udp_on_localhost());
    let mut bravo = Agent::init("bravo");
    let mut dns = mail_dns(&[&alpha, &bravo]);
    dns.restart(ZONES, &backed_up("alpha.example"));
    alpha.use_postfix(&pf_alpha);
    alpha.configure("backup_mode = \"when-down\"\nrecipients = \"off\"");
    bravo.use_postfix(&pf);
    // The policy socket where Debian's default puts it: in Postfix's
    // private/, which Postfix names relative to its queue directory.
    let socket = pf.dir.path().join("queue/private/mxfed-policy");
    bravo.configure(&format!(
        "allowed_next_hop_ports = [25, {}]\npolicy_listen = \"unix:{}\"",
        pf_alpha.port,
        socket.display()
    ));
    let out = bravo.mxfed(&["postfix", "setup"]);
    assert_ok(&out, "postfix setup");
    assert!(
        pf.postconf("smtpd_recipient_restrictions").starts_with(
            "check_policy_service { unix:private/mxfed-policy, default_action=DUNNO, try_limit=1, timeout=10s }"
        ),
        "{}",
        pf.postconf("smtpd_recipient_restrictions")
    );
    start_and_pair(&mut alpha, &mut bravo);
    let hop = format!("mail.alpha.example:{}", pf_alpha.port);
    alpha.domains(&["add", "alpha.example", "--next-hop", &hop]);

    wait_for("4xx naming the primary while alpha is up", || {
        pf.rcpt("bob@alpha.example") == 450
    });
    // Only the when-down friend's domains: any other recipient is as before
    // (here, not a relay domain at all).
    assert_eq!(pf.rcpt("bob@other.example"), 554);
    // My own users (here a client in mynetworks, 127.0.0.2/32) send
    // through me whatever a friend's mode says.
    let mine = pf.rcpt_reply_from(std::net::Ipv4Addr::new(127, 0, 0, 2), "bob@alpha.example");
    assert!(mine.starts_with("250"), "{mine}");
    let reply = pf.rcpt_reply("bob@alpha.example");
    assert!(
        reply.contains(&format!("primary MX {hop} is up; deliver there")),
        "{reply}"
    );
    pf_alpha.down();
    wait_for("accepted once alpha's Postfix is down", || {
        pf.rcpt("bob@alpha.example") == 250
    });
    pf_alpha.up();
    wait_for("4xx again once alpha is back", || {
        pf.rcpt("bob@alpha.example") == 450
    });
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660, "only root and the postfix group");
    }
    // The backup's agent stops: Postfix takes the default action and
    // accepts; mxfed being away never makes it refuse mail.
    bravo.stop();
    assert!(!socket.exists(), "the socket goes with the agent");
    assert_eq!(pf.rcpt("bob@alpha.example"), 250);
}

/// A self-signed key and certificate for `name`, as one PEM chain file
/// (key first, then its certificate), in `dir`.
fn tls_chain(dir: &std::path::Path, file: &str, name: &str) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let path = dir.join(file);
    std::fs::write(&path, format!("{}{}", key.serialize_pem(), cert.pem())).unwrap();
    path
}

fn maillog(pf: &PostfixInstance) -> String {
    std::fs::read_to_string(pf.dir.path().join("maillog")).unwrap_or_default()
}

/// Authenticated TLS on the relay hop (issue 12, part 3): the owner's agent
/// publishes its Postfix server key's fingerprint; the backup pins it in
/// smtp_tls_policy_maps, so relayed mail goes only over TLS to that key
/// ("Verified TLS connection"). A certificate changed without an
/// announcement (the owner's agent is down) leaves the mail deferred in the
/// backup's queue, never bounced; once announced, it is delivered.
#[test]
fn relayed_mail_goes_over_tls_pinned_to_the_owners_key() {
    let certs = tempfile::tempdir().unwrap();
    let chain = tls_chain(certs.path(), "alpha.pem", "mail.alpha.example");
    let pf_alpha = PostfixInstance::start_mailbox("mail.alpha.example", "alpha.example");
    let tls = format!(
        "smtpd_tls_chain_files = {}\nsmtpd_tls_security_level = may",
        chain.display()
    );
    let main = pf_alpha.etc().join("main.cf");
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&tls);
    text.push('\n');
    std::fs::write(&main, text).unwrap();
    let reload = |pf: &PostfixInstance| {
        let out = std::process::Command::new("postfix")
            .arg("-c")
            .arg(pf.etc())
            .arg("reload")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    reload(&pf_alpha);
    let pf = PostfixInstance::start("mail.bravo.example", "smtp_tls_loglevel = 1");
    let mut alpha = Agent::init_at("alpha", free_udp_on_localhost());
    let mut bravo = Agent::init("bravo");
    let mut dns = mail_dns(&[&alpha, &bravo]);
    dns.restart(ZONES, &backed_up("alpha.example"));
    alpha.use_postfix(&pf_alpha);
    alpha.configure("recipients = \"off\"");
    bravo.use_postfix(&pf);
    bravo.configure(&format!("allowed_next_hop_ports = [25, {}]", pf_alpha.port));
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "postfix setup");
    assert!(
        pf.postconf("smtp_tls_policy_maps")
            .contains("mxfed/tls_policy"),
        "{}",
        pf.postconf("smtp_tls_policy_maps")
    );
    start_and_pair(&mut alpha, &mut bravo);
    let hop = format!("mail.alpha.example:{}", pf_alpha.port);
    alpha.domains(&["add", "alpha.example", "--next-hop", &hop]);
    let key = format!("[{}]:{}", alpha.ip(), pf_alpha.port);
    wait_for("alpha's key pinned at the backup", || {
        pf.query("hash", "tls_policy", &key)
            .is_some_and(|v| v.starts_with("fingerprint match="))
    });

    pf.send("bob@alpha.example", "relayed over pinned TLS");
    wait_for("delivered to alpha", || pf_alpha.inbox() == 1);
    assert!(
        maillog(&pf).contains("Verified TLS connection established to"),
        "{}",
        maillog(&pf)
    );

    // A new key, not announced: alpha's agent is down when it changes.
    alpha.stop();
    tls_chain(certs.path(), "alpha.pem", "mail.alpha.example");
    reload(&pf_alpha);
    pf.send("bob@alpha.example", "waits for the new key");
    wait_for("deferred at the backup", || {
        maillog(&pf).contains("status=deferred")
    });
    assert!(!maillog(&pf).contains("status=bounced"), "{}", maillog(&pf));
    assert_eq!(pf_alpha.inbox(), 1, "not delivered to an unpinned key");

    // alpha's agent comes back and announces the new key: delivered.
    // (The backup flushes when alpha's agent says it is back, perhaps
    // before the new key is pinned; mail still held then goes again after
    // 30 s: allow for that.)
    alpha.start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while pf_alpha.inbox() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "never delivered after the new key was announced:\n{}",
            maillog(&pf)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!maillog(&pf).contains("status=bounced"), "{}", maillog(&pf));

    // A rollover announced first (tls_next_keys): the next key is pinned
    // beside the current one before Postfix uses it, so mail sent right
    // after the switch is delivered at once, never deferred.
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v["tls_fingerprints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect()
    };
    let now = keys(&alpha.status()["self"]);
    assert_eq!(now.len(), 1, "alpha publishes its one key: {now:?}");
    let next = tls_chain(certs.path(), "next.pem", "mail.alpha.example");
    alpha.stop();
    alpha.configure(&format!("tls_next_keys = [\"{}\"]", next.display()));
    alpha.start();
    wait_for("alpha publishes the next key too", || {
        keys(&alpha.status()["self"]).len() == 2
    });
    let announced: Vec<String> = keys(&alpha.status()["self"])
        .into_iter()
        .filter(|f| !now.contains(f))
        .collect();
    assert_eq!(announced.len(), 1);
    wait_for("bravo holds alpha's next key", || {
        bravo
            .peer("alpha")
            .is_some_and(|p| keys(&p).contains(&announced[0]))
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !pf
        .query("hash", "tls_policy", &key)
        .is_some_and(|v| v.contains(&format!("match={}", announced[0])))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the next key was never pinned at the backup: {:?}\n{}",
            pf.query("hash", "tls_policy", &key),
            bravo.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let deferred = maillog(&pf).matches("status=deferred").count();
    std::fs::copy(&next, &chain).unwrap();
    reload(&pf_alpha);
    pf.send("bob@alpha.example", "after an announced rollover");
    wait_for("delivered with the new key", || pf_alpha.inbox() == 3);
    assert_eq!(
        maillog(&pf).matches("status=deferred").count(),
        deferred,
        "an announced key never defers mail:\n{}",
        maillog(&pf)
    );
}

/// The policy service speaks Postfix's protocol (several requests on one
/// connection, `DUNNO` for anything that is not a when-down friend's RCPT)
/// and keeps its bounds: an oversized request closes that connection only.
#[test]
fn the_policy_service_answers_postfix_and_keeps_its_bounds() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut alpha = Agent::init("alpha");
    alpha.start();
    let stream = std::net::TcpStream::connect(alpha.policy_listen()).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut ask = |request: &[u8]| {
        writer.write_all(request).unwrap();
        let mut answer = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\n" || line.is_empty() {
                return answer;
            }
            answer.push_str(&line);
        }
    };
    // (A HELO name that is not UTF-8, as clients may send.)
    let rcpt: &[u8] =
        b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n\
        helo_name=\xffodd\nrecipient=bob@friend.example\n\n";
    assert_eq!(ask(rcpt), "action=DUNNO\n");
    let data: &[u8] =
        b"request=smtpd_access_policy\nprotocol_state=DATA\nrecipient=bob@friend.example\n\n";
    assert_eq!(ask(data), "action=DUNNO\n", "not RCPT");
    assert_eq!(ask(rcpt), "action=DUNNO\n", "again on the same connection");
    // Over 64 KiB in one request: the connection is closed, nothing else.
    let huge = format!(
        "request=smtpd_access_policy\nhelo_name={}\n\n",
        "x".repeat(70_000)
    );
    let _ = writer.write_all(huge.as_bytes());
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no answer to an oversized request");
    let again = std::net::TcpStream::connect(alpha.policy_listen()).unwrap();
    drop(again);
    assert!(alpha.is_running(), "the agent serves on");
}

/// An owner that splits address extensions differently from the backup
/// (here: none at the owner, `+` at the backup) gets `@domain` at the
/// backup, since an exact list would take `user+x` as `user`; status says
/// why every recipient is accepted instead of showing a count.
#[test]
fn a_different_recipient_delimiter_accepts_every_recipient_and_says_why() {
    let pf = PostfixInstance::start("mail.bravo.example", "recipient_delimiter = +");
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    let mut dns = mail_dns(&[&alpha, &bravo]);
    dns.restart(ZONES, &backed_up("alpha.example"));
    let file = alpha.dir.path().join("recipients");
    std::fs::write(&file, "bob@alpha.example\n").unwrap();
    alpha.configure(&format!("recipients = \"{}\"", file.display()));
    bravo.use_postfix(&pf);
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "postfix setup");
    start_and_pair(&mut alpha, &mut bravo);
    alpha.domains(&["add", "alpha.example"]);
    wait_for("the recipient list held", || {
        bravo.peer("alpha").unwrap()["domains"][0]["recipients_reason"]
            .as_str()
            .is_some_and(|r| r.contains("splits address extensions"))
    });
    wait_for("relayed", || pf.rcpt("bob@alpha.example") == 250);
    assert_eq!(pf.rcpt("nobody@alpha.example"), 250, "every recipient");
    assert!(bravo.peer("alpha").unwrap()["domains"][0]["recipients"].is_null());
}
