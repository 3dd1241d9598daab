//! Integration tests: real `mxfed` processes, real QUIC on loopback
//! addresses, real SQLite files. No mocks.

mod bench;
mod e2e;
mod hostile;
mod lists;
mod postfix;
mod queue;
mod quickstart;
mod recipients;
mod util;

use std::time::Duration;

use mxfed_proto::codec;
use mxfed_proto::msg::{close, Hello, PeerInfo, Request};
use mxfed_proto::{InviteToken, PeerId};

use util::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Regression: `mxfed status --json | grep -q ...` made mxfed panic on the
/// broken pipe once the reader had what it wanted (seen in the lab).
#[test]
fn a_reader_that_stops_early_ends_the_cli_quietly() {
    let mut a = Agent::init("alpha");
    a.start();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; for i in $(seq 20); do '{MXFED}' --config '{}' status --json | true || exit 1; done",
            a.config().display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn two_agents_pair_and_show_each_other_connected() {
    let (a, b) = paired_pair("alpha", "bravo");
    let pa = a.peer("bravo").unwrap();
    let pb = b.peer("alpha").unwrap();
    assert_eq!(pa["id"], b.id());
    assert_eq!(pb["id"], a.id());
    assert_eq!(pa["mail_host"], "mail.bravo.example");
    assert_eq!(pb["mail_host"], "mail.alpha.example");
    assert_eq!(pb["address"], a.addr.to_string());
    assert!(pa["rtt_ms"].as_f64().unwrap() > 0.0);
    assert!(pa["bytes_in"].as_u64().unwrap() > 0 && pa["bytes_out"].as_u64().unwrap() > 0);
    assert!(pa["connected_since"].is_string());
    assert_eq!(pa["agent_version"], env!("CARGO_PKG_VERSION"));
    let me = a.status()["self"].clone();
    assert_eq!(me["name"], "alpha");
    assert_eq!(me["listen"], a.addr.to_string());
    // The table form names the peer too.
    let table = String::from_utf8(a.mxfed(&["status"]).stdout).unwrap();
    assert!(
        table.contains("bravo") && table.contains("up since"),
        "{table}"
    );
}

#[test]
fn both_restart_and_reconnect_without_a_new_token() {
    let (mut a, mut b) = paired_pair("alpha", "bravo");
    let (ida, idb) = (a.id(), b.id());
    a.stop();
    wait_for("bravo to see alpha go", || !b.connected_to("alpha"));
    assert!(b.peer("alpha").unwrap()["last_seen"].is_string());
    b.stop();
    a.start();
    b.start();
    wait_for("reconnect", || {
        a.connected_to("bravo") && b.connected_to("alpha")
    });
    assert_eq!(a.id(), ida, "peer id survives restart");
    assert_eq!(b.id(), idb);
    assert_eq!(a.peer_names(), ["bravo"]);
    assert_eq!(b.peer_names(), ["alpha"]);
}

#[test]
fn a_token_works_once() {
    let (a, b) = paired_pair("alpha", "bravo");
    let mut c = Agent::init("charlie");
    c.start();
    // bravo's token from paired_pair is spent; make one, use it, then reuse it.
    let token = a.invite("10m");
    assert_ok(&c.mxfed(&["join", &token]), "first join");
    let mut d = Agent::init("delta");
    d.start();
    let out = d.mxfed(&["join", &token]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already been used"),
        "{}",
        stderr(&out)
    );
    assert!(d.peer_names().is_empty());
    assert_eq!(a.peer_names(), ["bravo", "charlie"]);
    drop(b);
}

#[test]
fn tampered_tokens_are_refused_and_change_nothing() {
    let mut a = Agent::init("alpha");
    let mut b = Agent::init("bravo");
    a.start();
    b.start();
    let text = a.invite("10m");
    let good: InviteToken = text.parse().unwrap();

    // One character changed: caught by the checksum before anything is dialled.
    let mut edited = text.clone().into_bytes();
    let i = edited.len() / 2;
    edited[i] = if edited[i] == b'A' { b'B' } else { b'A' };
    let out = b.mxfed(&["join", &String::from_utf8(edited).unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));

    // Garbage.
    let out = b.mxfed(&["join", "hello"]);
    assert!(
        stderr(&out).contains("not an mxfed invite token"),
        "{}",
        stderr(&out)
    );

    // Re-encoded with another secret: the inviter knows no such invite.
    let mut t = good.clone();
    t.secret[0] ^= 1;
    let out = b.mxfed(&["join", &t.to_string()]);
    assert!(
        stderr(&out).contains("unknown invite token"),
        "{}",
        stderr(&out)
    );

    // Re-encoded with another inviter ID: the pinned key does not match, no TOFU.
    let mut t = good.clone();
    t.inviter = PeerId::from_public_key([7; 32]);
    let out = b.mxfed(&["join", &t.to_string()]);
    assert!(
        stderr(&out).contains("cannot reach the inviter"),
        "{}",
        stderr(&out)
    );

    // (A token whose expiry was edited is in `expired_token_is_refused_on_both_sides`.)
    assert!(a.peer_names().is_empty() && b.peer_names().is_empty());
    // The genuine token still works afterwards.
    assert_ok(&b.mxfed(&["join", &text]), "join with the genuine token");
    wait_for("connected", || a.connected_to("bravo"));
}

#[test]
fn expired_token_is_refused_on_both_sides() {
    let mut a = Agent::init("alpha");
    let mut b = Agent::init("bravo");
    a.start();
    b.start();
    let text = a.invite("1s");
    std::thread::sleep(Duration::from_millis(2100));
    // The joiner sees the expiry in the token itself.
    let out = b.mxfed(&["join", &text]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    // A token edited to look fresh is still refused by the inviter, which
    // keeps its own record of the expiry.
    let mut t: InviteToken = text.parse().unwrap();
    t.expires_at += 3600;
    let out = b.mxfed(&["join", &t.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the inviter refused: invite token has expired"),
        "{}",
        stderr(&out)
    );
    assert!(a.peer_names().is_empty() && b.peer_names().is_empty());
}

#[test]
fn failed_join_attempts_are_rate_limited() {
    let mut a = Agent::init("alpha");
    let mut b = Agent::init("bravo");
    a.start();
    b.start();
    let good: InviteToken = a.invite("10m").parse().unwrap();
    for i in 0..5u8 {
        let mut t = good.clone();
        t.secret[1] ^= i + 1;
        let out = b.mxfed(&["join", &t.to_string()]);
        assert!(
            stderr(&out).contains("unknown invite token"),
            "attempt {i}: {}",
            stderr(&out)
        );
    }
    // Further failures from that address now only hear "too many attempts" ...
    let mut t = good.clone();
    t.secret[1] ^= 0x80;
    let out = b.mxfed(&["join", &t.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("too many failed join attempts"),
        "{}",
        stderr(&out)
    );
    assert!(a.peer_names().is_empty());
    // ... but a genuine token and proof still get through, so a stranger who
    // fails on purpose cannot lock friends out.
    assert_ok(
        &b.mxfed(&["join", &good.to_string()]),
        "genuine join while limited",
    );
    wait_for("connected", || a.connected_to("bravo"));
}

/// Presents `token`'s invite as the agent in `joiner_dir`, with a proof made
/// by `make_proof(token, exporter_of_this_connection, joiner_id)`.
async fn present(
    joiner_dir: &std::path::Path,
    token: &InviteToken,
    make_proof: impl Fn(&InviteToken, &[u8; 32], &PeerId) -> Vec<u8>,
) -> mxfed_proto::msg::Response {
    let raw = RawPeer::connect(joiner_dir, token.addrs[0], token.inviter).await;
    let joiner = mxfed_agent::identity::Identity::load(joiner_dir)
        .unwrap()
        .id;
    let mut exporter = [0u8; 32];
    raw.conn
        .export_keying_material(&mut exporter, mxfed_proto::msg::EXPORTER_LABEL, b"")
        .unwrap();
    let req = Request::Join {
        token_id: token.id(),
        proof: make_proof(token, &exporter, &joiner),
        info: PeerInfo {
            name: "joiner".into(),
            mail_host: "mail.joiner.example".into(),
            addrs: vec![],
            agent_version: "test".into(),
        },
    };
    raw.request(&req).await
}

#[test]
fn a_join_proof_must_be_made_for_this_connection_by_this_joiner() {
    let mut a = Agent::init("alpha");
    a.start();
    let j = Agent::init("joiner");
    let token: InviteToken = a.invite("10m").parse().unwrap();
    let refused = |r: mxfed_proto::msg::Response| match r {
        mxfed_proto::msg::Response::Refused { message } => {
            assert!(message.contains("invite proof is invalid"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    let rt = runtime();
    rt.block_on(async {
        // (a) a made-up proof
        refused(present(&j.data_dir(), &token, |_, _, _| vec![9; 64]).await);
        // (b) a genuine proof, but for another connection's exporter
        refused(present(&j.data_dir(), &token, |t, _, me| t.join_proof(&[0; 32], me)).await);
        // (c) a genuine proof for this connection, but made for another joiner
        let other = PeerId::from_public_key([5; 32]);
        refused(present(&j.data_dir(), &token, |t, ex, _| t.join_proof(ex, &other)).await);
        // The invite is still unused: the right proof pairs.
        match present(&j.data_dir(), &token, |t, ex, me| t.join_proof(ex, me)).await {
            mxfed_proto::msg::Response::Welcome(info) => assert_eq!(info.name, "alpha"),
            other => panic!("expected welcome, got {other:?}"),
        }
    });
    assert_eq!(a.peer_names(), ["joiner"]);
}

#[test]
fn an_unpaired_agent_cannot_open_a_session() {
    let mut a = Agent::init("alpha");
    a.start();
    let stranger = Agent::init("stranger");
    let a_id: PeerId = a.id().parse().unwrap();
    let rt = runtime();
    rt.block_on(async {
        // The handshake itself succeeds (anyone may present an invite) ...
        let raw = RawPeer::connect(&stranger.data_dir(), a.addr, a_id).await;
        // ... but anything other than an invite closes the connection.
        let hello = Request::Hello(Hello {
            info: PeerInfo {
                name: "stranger".into(),
                mail_host: "mail.stranger.example".into(),
                addrs: vec![],
                agent_version: "0".into(),
            },
            list_version: 0,
            now: 0,
        });
        raw.send_raw(&codec::frame(&hello).unwrap()).await;
        assert_eq!(raw.close_code().await, u64::from(close::NOT_PAIRED));
    });
    assert!(a.peer_names().is_empty());
    assert!(
        a.log_text().contains("not paired"),
        "logged: {}",
        a.log_text()
    );
}

#[test]
fn dialling_a_peer_checks_its_key() {
    // A client that expects another key cannot even complete the handshake.
    let mut a = Agent::init("alpha");
    a.start();
    let b = Agent::init("bravo");
    let rt = runtime();
    rt.block_on(async {
        let identity = mxfed_agent::identity::Identity::load(&b.data_dir()).unwrap();
        let config =
            mxfed_agent::net::client_config(&identity, PeerId::from_public_key([1; 32])).unwrap();
        let ep = quinn::Endpoint::client((fresh_ip(), 0).into()).unwrap();
        let err = ep
            .connect_with(config, a.addr, mxfed_proto::msg::SERVER_NAME)
            .unwrap()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not the expected"), "{err}");
    });
}

/// Connects as `bravo` (a paired peer) with a raw client and runs `act`,
/// then checks that `alpha` logged the close and still serves.
fn misbehave(expected_code: u32, act: impl AsyncFnOnce(&RawPeer)) {
    let (a, mut b) = paired_pair("alpha", "bravo");
    b.stop();
    let a_id: PeerId = a.id().parse().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let raw = RawPeer::connect(&b.data_dir(), a.addr, a_id).await;
        act(&raw).await;
        assert_eq!(raw.close_code().await, u64::from(expected_code));
    });
    let log = a.log_text();
    let name = close::name(expected_code.into());
    assert_eq!(
        log.matches(&format!("closing connection: {name}")).count(),
        1,
        "logged once: {log}"
    );
    // alpha keeps serving: status answers and the real bravo reconnects.
    b.start();
    wait_for("bravo to reconnect", || {
        a.connected_to("bravo") && b.connected_to("alpha")
    });
}

#[test]
fn a_frame_over_the_limit_closes_only_that_connection() {
    misbehave(close::FRAME_TOO_LARGE, async |raw| {
        raw.send_raw_many(&[0x7f, 0xff, 0xff, 0xff, 0, 0], 10).await;
    });
}

#[test]
fn a_message_that_does_not_decode_closes_the_connection() {
    misbehave(close::MALFORMED, async |raw| {
        // Variant 0 (Hello) followed by a string length far past the body.
        raw.send_raw_many(&[0, 0, 0, 3, 0, 200, 1], 10).await;
    });
}

#[test]
fn an_unknown_message_type_closes_the_connection() {
    misbehave(close::UNKNOWN_MESSAGE, async |raw| {
        raw.send_raw_many(&[0, 0, 0, 2, 77, 0], 10).await;
    });
}

#[test]
fn a_flood_of_streams_closes_the_connection() {
    misbehave(close::TOO_MANY_STREAMS, async |raw| {
        let ping = codec::frame(&Request::Ping(1)).unwrap();
        for _ in 0..400 {
            let Ok((mut send, recv)) = raw.conn.open_bi().await else {
                break;
            };
            if send.write_all(&ping).await.is_err() {
                break;
            }
            let _ = send.finish();
            drop(recv);
        }
    });
}

#[test]
fn garbage_datagrams_do_not_hurt_the_agent() {
    let (a, b) = paired_pair("alpha", "bravo");
    let sock = std::net::UdpSocket::bind((fresh_ip(), 0)).unwrap();
    for i in 0..500u32 {
        let len = 1 + (i as usize * 37) % 1400;
        let junk: Vec<u8> = (0..len).map(|j| (j as u32 * 131 + i * 7) as u8).collect();
        sock.send_to(&junk, a.addr).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(a.connected_to("bravo") && b.connected_to("alpha"));
    // The endpoint still completes new handshakes (and still turns strangers away).
    let stranger = Agent::init("stranger");
    let a_id: PeerId = a.id().parse().unwrap();
    runtime().block_on(async {
        let raw = RawPeer::connect(&stranger.data_dir(), a.addr, a_id).await;
        raw.send_raw(&codec::frame(&Request::Ping(1)).unwrap())
            .await;
        assert_eq!(raw.close_code().await, u64::from(close::NOT_PAIRED));
    });
}

#[test]
fn unpair_removes_the_peer_on_both_sides() {
    let (a, b) = paired_pair("alpha", "bravo");
    let out = a.mxfed(&["unpair", "bravo"]);
    assert_ok(&out, "unpair");
    assert!(String::from_utf8_lossy(&out.stdout).contains("it was told"));
    assert!(a.peer_names().is_empty());
    wait_for("bravo to forget alpha", || b.peer_names().is_empty());
    let out = a.mxfed(&["unpair", "bravo"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no peer named"));
}

#[test]
fn unpair_of_an_unreachable_peer_still_removes_it_here() {
    let (a, mut b) = paired_pair("alpha", "bravo");
    b.stop();
    wait_for("alpha to see bravo go", || !a.connected_to("bravo"));
    let out = a.mxfed(&["unpair", "bravo"]);
    assert_ok(&out, "unpair");
    assert!(String::from_utf8_lossy(&out.stdout).contains("not reachable"));
    assert!(a.peer_names().is_empty());
    // When bravo comes back, alpha turns it away as unpaired, and bravo,
    // hearing that from alpha's pinned key, removes alpha too.
    b.start();
    wait_for("bravo to forget alpha", || b.peer_names().is_empty());
    assert!(a.peer_names().is_empty());
}

#[test]
fn commands_without_an_agent_say_so_and_fail() {
    let a = Agent::init("alpha");
    for args in [
        &["status"][..],
        &["invite"],
        &["join", "x"],
        &["unpair", "x"],
    ] {
        let out = a.mxfed(args);
        assert_eq!(out.status.code(), Some(69), "{args:?}");
        assert!(
            stderr(&out).contains("no agent is running"),
            "{}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn control_socket_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mut a = Agent::init("alpha");
    a.start();
    let mode = std::fs::metadata(a.dir.path().join("control.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for f in ["identity.key", "identity.crt"] {
        let mode = std::fs::metadata(a.data_dir().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[test]
fn corrupt_config_exits_78_naming_the_file_and_changes_nothing() {
    let mut a = Agent::init("alpha");
    std::fs::write(a.config(), "name = \"alpha\"\nmail_host = 42\n").unwrap();
    for args in [&["agent"][..], &["status"]] {
        let out = a.mxfed(args);
        assert_eq!(out.status.code(), Some(78), "{args:?}");
        assert!(
            stderr(&out).contains(a.config().to_str().unwrap()),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        std::fs::read_to_string(a.config()).unwrap(),
        "name = \"alpha\"\nmail_host = 42\n"
    );
    assert!(!a.is_running());
}

#[test]
fn corrupt_data_dir_exits_78_naming_the_file_and_changes_nothing() {
    let a = Agent::init("alpha");
    let db = a.data_dir().join("mxfed.db");
    let _ = std::fs::remove_file(a.data_dir().join("mxfed.db-wal"));
    let _ = std::fs::remove_file(a.data_dir().join("mxfed.db-shm"));
    let junk = vec![0x5au8; 16384];
    std::fs::write(&db, &junk).unwrap();
    let out = a.mxfed(&["agent"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("mxfed.db"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&db).unwrap(), junk, "database left as it was");

    let b = Agent::init("bravo");
    let key = b.data_dir().join("identity.key");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = b.mxfed(&["agent"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("identity.key"), "{}", stderr(&out));
}

#[test]
fn init_refuses_to_overwrite_and_validates_its_input() {
    let a = Agent::init("alpha");
    let out = a.mxfed(&[
        "init",
        "--name",
        "alpha",
        "--mail-host",
        "mail.alpha.example",
        "--advertise",
        "127.0.0.1:7787",
    ]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("x.toml");
    let out = std::process::Command::new(MXFED)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "init",
            "--name",
            "Bad Name",
            "--mail-host",
            "mail.x.example",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("name"), "{}", stderr(&out));
    assert!(!cfg.exists());
}

#[test]
fn invite_prints_exactly_one_line() {
    let mut a = Agent::init("alpha");
    a.start();
    let out = a.mxfed(&["invite", "--ttl", "5m"]);
    assert_ok(&out, "invite");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    assert!(stdout.starts_with("mxfed1-") && stdout.ends_with('\n'));
    let token: InviteToken = stdout.parse().unwrap();
    assert_eq!(token.addrs, vec![a.addr]);
    // The secret is never stored: not in the database, not in its WAL.
    for f in ["mxfed.db", "mxfed.db-wal"] {
        let bytes = std::fs::read(a.data_dir().join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(32).any(|w| w == token.secret),
            "secret found in {f}"
        );
    }
    let out = a.mxfed(&["invite", "--ttl", "soon"]);
    assert_eq!(out.status.code(), Some(2), "bad duration is a usage error");
}

#[test]
fn an_identity_without_its_database_refuses_to_start() {
    // Starting with no peers would make every friend drop us.
    let a = Agent::init("alpha");
    for f in ["mxfed.db", "mxfed.db-wal", "mxfed.db-shm"] {
        let _ = std::fs::remove_file(a.data_dir().join(f));
    }
    let out = a.mxfed(&["agent"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("mxfed.db") && stderr(&out).contains("missing"),
        "{}",
        stderr(&out)
    );
    assert!(
        !a.data_dir().join("mxfed.db").exists(),
        "nothing was created"
    );
}

#[test]
fn init_refuses_a_data_dir_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.path().join("mxfed.toml");
    let out = std::process::Command::new(MXFED)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "init",
            "--name",
            "alpha",
            "--mail-host",
            "mail.alpha.example",
        ])
        .args([
            "--advertise",
            "127.0.0.1:7787",
            "--data-dir",
            shared.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("accessible by group or others"),
        "{}",
        stderr(&out)
    );
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "mode left alone");
    assert!(
        std::fs::read_dir(&shared).unwrap().next().is_none(),
        "nothing written"
    );
}

#[test]
fn join_reads_the_token_from_stdin() {
    use std::io::Write;
    let mut a = Agent::init("alpha");
    let mut b = Agent::init("bravo");
    a.start();
    b.start();
    let token = a.invite("10m");
    let mut child = std::process::Command::new(MXFED)
        .arg("--config")
        .arg(b.config())
        .args(["join", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    assert!(child.wait().unwrap().success());
    wait_for("connected", || a.connected_to("bravo"));
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/mxfed.service"
    ))
    .unwrap();
    for directive in [
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/mxfed /run/mxfed -/etc/postfix/mxfed",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestartPreventExitStatus=78",
    ] {
        assert!(unit.contains(directive), "unit lacks {directive}");
    }
    // systemd's own checker, with ExecStart pointing at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mxfed.service");
    std::fs::write(&path, unit.replace("/usr/bin/mxfed", MXFED)).unwrap();
    // --man=no: the unit's Documentation= names mxfed's man pages, which
    // only the package installs.
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze not found (package systemd; the test command, deploy/test.sh, installs it)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        stderr(&out)
    );
}

#[test]
fn mxfed_config_from_the_environment_two_advertised_addresses_and_a_debug_log() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mxfed.toml");
    let listen = std::net::SocketAddr::new(fresh_ip().into(), 7787);
    let run = |args: &[&str]| {
        Command::new(MXFED)
            .env("MXFED_CONFIG", &cfg)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let data = dir.path().join("data");
    let sock = dir.path().join("control.sock");
    let out = run(&[
        "init",
        "--name",
        "alpha",
        "--mail-host",
        "mail.alpha.example",
        "--listen",
        &listen.to_string(),
        "--advertise",
        &listen.to_string(),
        "--advertise",
        "192.0.2.7:7787",
        "--data-dir",
        data.to_str().unwrap(),
        "--control-socket",
        sock.to_str().unwrap(),
    ]);
    assert_ok(&out, "init with MXFED_CONFIG");
    assert!(cfg.exists(), "init wrote the file MXFED_CONFIG names");
    let log = dir.path().join("agent.log");
    // Killed if an assertion below fails first.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut agent = Running(
        Command::new(MXFED)
            .env("MXFED_CONFIG", &cfg)
            .env("MXFED_LOG", "debug")
            .arg("agent")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the agent to answer", || {
        run(&["status", "--json"]).status.success()
    });
    let status: serde_json::Value =
        serde_json::from_slice(&run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        status["self"]["advertise"],
        serde_json::json!([listen.to_string(), "192.0.2.7:7787"])
    );
    let token: InviteToken = String::from_utf8(run(&["invite"]).stdout)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(token.addrs.len(), 2, "the token carries both addresses");
    let _ = Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status();
    assert!(agent.0.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(" DEBUG "),
        "MXFED_LOG=debug logs debug lines:\n{text}"
    );
}

/// SIGHUP (what `systemctl reload mxfed` sends): the config file is read
/// again; live keys take effect at once, the others are named as needing
/// a restart and keep their old values; the process and its sessions stay;
/// a file that does not load changes nothing.
#[test]
fn sighup_reads_the_config_again_and_keeps_the_sessions() {
    let (a, _b) = paired_pair("alpha", "bravo");
    let pid = a.pid().unwrap();
    let since = a.peer("bravo").unwrap()["connected_since"].clone();
    let hup = || {
        let s = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(s.success());
    };
    let lines = |needle: &str| -> Vec<String> {
        a.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    };
    a.configure("advertise = [\"192.0.2.7:7787\"]\nlisten = \"127.0.0.1:9\"");
    hup();
    wait_for("the reload in the log", || {
        !lines("in force now").is_empty()
    });
    let applied = lines("in force now").join("\n");
    assert!(applied.contains("advertise"), "{applied}");
    assert!(!applied.contains("listen"), "{applied}");
    let restart = lines("take a restart").join("\n");
    assert!(restart.contains("listen"), "{}", a.log_text());
    // In force: status shows the new advertise; listen is still the old one.
    let me = a.status()["self"].clone();
    assert_eq!(me["advertise"], serde_json::json!(["192.0.2.7:7787"]));
    assert_eq!(me["listen"], a.addr.to_string());
    assert_eq!(a.pid(), Some(pid), "the reload restarted the agent");
    assert_eq!(a.peer("bravo").unwrap()["connected_since"], since);

    // A broken file: refused whole, nothing changes. (The CLI needs a
    // good file to find the control socket: it is put back before asking.)
    let good = std::fs::read_to_string(a.config()).unwrap();
    std::fs::write(
        a.config(),
        good.replace(
            "advertise = ",
            "verify_mx = \"warn\"\nlisten = [[\nadvertise = ",
        ),
    )
    .unwrap();
    hup();
    wait_for("the refusal in the log", || {
        !lines("nothing changed: the agent goes on").is_empty()
    });
    assert_eq!(lines("in force now").len(), 1, "{}", a.log_text());
    std::fs::write(a.config(), good).unwrap();
    assert_eq!(a.pid(), Some(pid));
    assert_eq!(a.peer("bravo").unwrap()["connected_since"], since);
    assert_eq!(
        a.status()["self"]["advertise"],
        serde_json::json!(["192.0.2.7:7787"])
    );
}
