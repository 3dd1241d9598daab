//! Benchmarks. Not run by the test command (`#[ignore]`) and they assert
//! nothing about time: machines here are noisy. Run with
//! `cargo test --release -p mxfed --test integration -- --ignored --nocapture bench_`
//! and record the figures in BENCHMARKS.md.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// `mxfed domains add` on alpha, then the time until bravo's real Postfix
/// answers RCPT 250 for the new domain.
fn propagate(alpha: &Agent, pf: &PostfixInstance, d: &str) -> Duration {
    let rcpt = format!("x@{d}");
    assert_eq!(pf.rcpt(&rcpt), 554);
    // Each round is a change on its own: a change within MIN_APPLY_GAP of
    // the previous rewrite waits out the rest of the gap.
    std::thread::sleep(mxfed_agent::MIN_APPLY_GAP);
    let t0 = Instant::now();
    alpha.domains(&["add", d]);
    while pf.rcpt(&rcpt) != 250 {
        assert!(t0.elapsed() < Duration::from_secs(60), "{d} never relayed");
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

/// `ROUNDS` domain names `PREFIX0.example`..., each with MX 0 alpha's mail
/// host and MX 10 bravo's.
fn bench_domains(prefix: &str, rounds: usize) -> (Vec<&'static str>, Vec<Rec>) {
    let names: Vec<&'static str> = (0..rounds)
        .map(|i| &*Box::leak(format!("{prefix}{i}.example").into_boxed_str()))
        .collect();
    let mut records = Vec::new();
    for d in &names {
        records.push(Rec::Mx(d, "mail.alpha.example", 0));
        records.push(Rec::Mx(d, "mail.bravo.example", 10));
    }
    (names, records)
}

fn summary(times: &mut [Duration]) -> String {
    times.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let n = times.len();
    format!(
        "min {:.0} ms, median {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        ms(&times[0]),
        ms(&times[n / 2]),
        ms(&times[n * 9 / 10]),
        ms(&times[n - 1])
    )
}

/// From `mxfed domains add` on alpha to a working relay (RCPT 250) on
/// bravo's real Postfix, with both agents connected and MX checks on (the
/// mail hosts are where the agents run, so the automatic proof holds).
#[test]
#[ignore]
fn bench_propagation_domains_add_to_rcpt_250() {
    const ROUNDS: usize = 20;
    let (names, records) = bench_domains("p", ROUNDS);
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    let mut dns = mail_dns(&[&alpha, &bravo]);
    dns.restart(&["example"], &records);
    bravo.use_postfix(&pf);
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "setup");
    start_and_pair(&mut alpha, &mut bravo);

    let mut times: Vec<Duration> = names.iter().map(|d| propagate(&alpha, &pf, d)).collect();
    eprintln!("propagation over {ROUNDS} rounds: {}", summary(&mut times));
}

/// The same propagation while a third friend (mallory, paired with bravo)
/// floods bravo: Hellos, acknowledgements of versions of bravo's list it
/// never had, and list offers, from 8 streams at once, reconnecting each
/// time it is cut off. Quiet and flooded rounds alternate, so both are
/// measured in the same run under the same machine load.
#[test]
#[ignore]
fn bench_propagation_while_another_friend_floods() {
    use mxfed_proto::msg::{Hello, PeerInfo, Request};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    const ROUNDS: usize = 20;
    let (names, records) = bench_domains("f", ROUNDS);
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    let mut mallory = Agent::init("mallory");
    let mut dns = mail_dns(&[&alpha, &bravo, &mallory]);
    dns.restart(&["example"], &records);
    bravo.use_postfix(&pf);
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "setup");
    start_and_pair(&mut alpha, &mut bravo);
    mallory.start();
    let token = bravo.invite("10m");
    assert_ok(&mallory.mxfed(&["join", &token]), "join");
    wait_for("mallory connected", || bravo.connected_to("mallory"));
    mallory.stop();
    wait_for("mallory gone", || !bravo.connected_to("mallory"));

    let flooding = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicU64::new(0));
    let flood = {
        let (flooding, stop, answered, cut) = (
            Arc::clone(&flooding),
            Arc::clone(&stop),
            Arc::clone(&answered),
            Arc::clone(&cut),
        );
        let (dir, to, id) = (
            mallory.data_dir(),
            bravo.addr,
            bravo.id().parse::<mxfed_proto::PeerId>().unwrap(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let info = PeerInfo {
                    name: "mallory".into(),
                    mail_host: "mail.mallory.example".into(),
                    addrs: vec![],
                    agent_version: "flood".into(),
                };
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if !flooding.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    let raw = Arc::new(RawPeer::connect(&dir, to, id).await);
                    let mut streams = tokio::task::JoinSet::new();
                    for lane in 0..8u64 {
                        let (raw, info, flooding, answered) = (
                            Arc::clone(&raw),
                            info.clone(),
                            Arc::clone(&flooding),
                            Arc::clone(&answered),
                        );
                        n += 1_000_000;
                        let base = n;
                        streams.spawn(async move {
                            for i in 0.. {
                                if !flooding.load(Ordering::Relaxed) {
                                    break;
                                }
                                let v = base + lane * 10_000 + i;
                                let req = match i % 3 {
                                    0 => Request::Hello(Hello {
                                        info: info.clone(),
                                        list_version: v,
                                        now: 0,
                                    }),
                                    1 => Request::ListAck(mxfed_proto::msg::ListAck {
                                        version: v,
                                        accepted: 0,
                                        refused_count: 0,
                                        pending_count: 0,
                                        refused: Vec::new(),
                                        pending: Vec::new(),
                                    }),
                                    _ => Request::ListOffer { version: v },
                                };
                                if raw.try_request(&req).await.is_none() {
                                    break;
                                }
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    while streams.join_next().await.is_some() {}
                    if raw.conn.close_reason().is_some() {
                        cut.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        })
    };

    let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
    for (i, d) in names.iter().enumerate() {
        let flood_now = i % 2 == 1;
        flooding.store(flood_now, Ordering::Relaxed);
        if flood_now {
            std::thread::sleep(Duration::from_millis(500)); // the flood is on
        }
        let t = propagate(&alpha, &pf, d);
        match flood_now {
            true => flooded.push(t),
            false => quiet.push(t),
        }
        flooding.store(false, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    eprintln!(
        "propagation, quiet rounds ({}): {}",
        quiet.len(),
        summary(&mut quiet)
    );
    eprintln!(
        "propagation, flooded rounds ({}): {}",
        flooded.len(),
        summary(&mut flooded)
    );
    eprintln!(
        "the flood: {} requests answered, {} connections cut off",
        answered.load(Ordering::Relaxed),
        cut.load(Ordering::Relaxed)
    );
}

/// Reading a 100,000-message queue: `postqueue -j > /dev/null`, the agent's
/// streaming tally of the same output, and `qshape` on the same queue.
/// The messages sit in the hold queue (a HOLD action), so nothing moves
/// while we measure.
#[test]
#[ignore]
fn bench_queue_scan_100000_messages() {
    use std::io::{BufRead, BufReader, Write};
    let n: usize = std::env::var("MXFED_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let pf = PostfixInstance::start(
        "mail.bravo.example",
        "mynetworks = 127.0.0.0/8\nsmtpd_recipient_restrictions = check_recipient_access static:HOLD, permit_mynetworks, reject\nrelay_domains = friend.example",
    );
    // Inject over a few connections, many messages each.
    let t0 = Instant::now();
    let per_conn = 2000;
    for c in 0..n.div_ceil(per_conn) {
        let stream = std::net::TcpStream::connect(("127.0.0.1", pf.port)).unwrap();
        let mut r = BufReader::new(stream.try_clone().unwrap());
        let mut w = std::io::BufWriter::new(stream);
        let mut line = String::new();
        let mut read_reply = |r: &mut BufReader<std::net::TcpStream>| loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                break;
            }
        };
        read_reply(&mut r);
        write!(w, "EHLO bench\r\n").unwrap();
        w.flush().unwrap();
        read_reply(&mut r);
        for i in 0..per_conn.min(n - c * per_conn) {
            let k = c * per_conn + i;
            write!(
                w,
                "MAIL FROM:<s{k}@sender.example>\r\nRCPT TO:<u{k}@friend.example>\r\nRCPT TO:<v{k}@friend.example>\r\nDATA\r\n"
            )
            .unwrap();
            w.flush().unwrap();
            for _ in 0..4 {
                read_reply(&mut r);
            }
            write!(w, "Subject: m{k}\r\n\r\nbody {k}\r\n.\r\n").unwrap();
            w.flush().unwrap();
            read_reply(&mut r);
        }
        write!(w, "QUIT\r\n").unwrap();
        w.flush().unwrap();
    }
    eprintln!("injected {n} messages in {:?}", t0.elapsed());
    let etc = pf.etc();
    wait_for("all queued", || {
        let out = Command::new("postqueue")
            .arg("-c")
            .arg(&etc)
            .arg("-j")
            .output()
            .unwrap();
        out.stdout.iter().filter(|b| **b == b'\n').count() >= n
    });

    let time = |label: &str, f: &mut dyn FnMut()| {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed());
        }
        eprintln!("{label}: best of 3 {:.0} ms", best.as_secs_f64() * 1000.0);
        best
    };
    let raw = time("postqueue -j > /dev/null", &mut || {
        let s = Command::new("postqueue")
            .arg("-c")
            .arg(&etc)
            .arg("-j")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(s.success());
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let postfix = rt
        .block_on(mxfed_agent::postfix::Postfix::open(&etc, None))
        .unwrap();
    let ours = time(
        "mxfed tally (postqueue -j streamed and parsed)",
        &mut || {
            let mut t = mxfed_agent::mailq::PeerTally::new([(
                "friend".to_string(),
                "friend.example".to_string(),
            )]);
            rt.block_on(postfix.read_queue(|l| t.add_line(l))).unwrap();
            assert_eq!(t.peers["friend"].messages as usize, n);
        },
    );
    time("qshape -c ... hold", &mut || {
        let s = Command::new("qshape")
            .arg("-c")
            .arg(&etc)
            .arg("hold")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(s.success());
    });
    eprintln!(
        "overhead of the tally over postqueue -j alone: {:.1}%",
        (ours.as_secs_f64() / raw.as_secs_f64() - 1.0) * 100.0
    );
}

/// A 100,000-recipient list (from a `recipients` file) from alpha to
/// bravo's real Postfix: the time from alpha's start until bravo's Postfix
/// answers 250 for the last address and 550 for an unknown one, with the
/// bytes alpha sent; then one more address, its time and its bytes.
#[test]
#[ignore]
fn bench_recipients_100000_and_one_more() {
    const N: usize = 100_000;
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    let mut dns = mail_dns(&[&alpha, &bravo]);
    dns.restart(
        &["example"],
        &[
            Rec::Mx("alpha.example", "mail.alpha.example", 0),
            Rec::Mx("alpha.example", "mail.bravo.example", 10),
        ],
    );
    let file = alpha.dir.path().join("recipients");
    let mut text = String::with_capacity(N * 24);
    for i in 0..N {
        text.push_str(&format!("user{i:06}@alpha.example\n"));
    }
    std::fs::write(&file, &text).unwrap();
    alpha.configure(&format!("recipients = \"{}\"", file.display()));
    bravo.use_postfix(&pf);
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "setup");
    start_and_pair(&mut alpha, &mut bravo);
    let sent = || alpha.peer("bravo").unwrap()["bytes_out"].as_u64().unwrap();
    let before = sent();
    let t0 = Instant::now();
    alpha.domains(&["add", "alpha.example"]);
    let last = format!("user{:06}@alpha.example", N - 1);
    while !(pf.rcpt(&last) == 250 && pf.rcpt("nobody@alpha.example") == 550) {
        assert!(t0.elapsed() < Duration::from_secs(300), "never synced");
        std::thread::sleep(Duration::from_millis(20));
    }
    let full = (t0.elapsed(), sent() - before);

    std::thread::sleep(mxfed_agent::MIN_APPLY_GAP);
    let mut one = Vec::new();
    for i in 1..=3 {
        std::thread::sleep(2 * mxfed_agent::MIN_APPLY_GAP);
        let before = sent();
        let wall = wall_clock();
        let newcomer = format!("newcomer{i}@alpha.example");
        let (t, stalls) = first_250(&pf, &newcomer, || {
            text.push_str(&format!("{newcomer}\n"));
            std::fs::write(&file, &text).unwrap();
        });
        eprintln!(
            "{newcomer}: file written at {wall} UTC; RCPT 250 after {} ms{}",
            t.as_millis(),
            stalls_note(&stalls)
        );
        one.push((t, sent() - before));
    }
    eprintln!(
        "{N} recipients: RCPT 250/550 at the backup {:.1} s after `domains add`, {} bytes sent",
        full.0.as_secs_f64(),
        full.1
    );
    for (name, agent) in [("alpha", &alpha), ("bravo", &bravo)] {
        let log = agent.log_text();
        let tail: Vec<&str> = log.lines().rev().take(12).collect();
        for l in tail.iter().rev() {
            eprintln!("{name}: {l}");
        }
    }
    eprintln!(
        "one more recipient (file changed), three times: {}",
        one.iter()
            .map(|(t, b)| format!("RCPT 250 after {} ms, {b} bytes sent", t.as_millis()))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// The policy service's answer time: 10,000 RCPT requests over one
/// connection, as an smtpd process sends them, each timed from the first
/// byte sent to the last byte of the answer. The anchor, in the same run:
/// the same exchange with a minimal server in this process that answers
/// `DUNNO` to everything (the loopback round trip and parsing floor).
#[test]
#[ignore]
fn bench_policy_service_answers() {
    use std::io::{BufRead, BufReader, Write};
    const N: usize = 10_000;
    let mut agent = Agent::init("alpha");
    agent.start();
    let request = "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
        client_address=192.0.2.1\nclient_name=client.example\nhelo_name=client.example\n\
        sender=someone@sender.example\nrecipient=bob@friend.example\nrecipient_count=0\n\
        queue_id=\nsize=0\n\n";
    let time = |addr: std::net::SocketAddr| {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut times = Vec::with_capacity(N);
        for _ in 0..N {
            let t0 = Instant::now();
            writer.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\n" {
                    break;
                }
                answer.push_str(&line);
            }
            times.push(t0.elapsed());
            assert_eq!(answer, "action=DUNNO\n");
        }
        times
    };
    // The anchor: a minimal policy server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let floor_addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_nodelay(true).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\n" {
                writer.write_all(b"action=DUNNO\n\n").unwrap();
            }
        }
    });
    let mut floor = time(floor_addr);
    let mut agent_times = time(agent.policy_listen());
    let us = |d: &Duration| d.as_secs_f64() * 1e6;
    let show = |name: &str, t: &mut Vec<Duration>| {
        t.sort();
        eprintln!(
            "{name}: {N} requests, p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            us(&t[N / 2]),
            us(&t[N * 99 / 100]),
            us(&t[N - 1])
        );
    };
    show("minimal server (anchor)", &mut floor);
    show("mxfed policy service", &mut agent_times);
}

/// Issue 13, part 1: 20 outages of the friend's Postfix, 1 to 30 s long,
/// each with a message deferred at the backup meanwhile. Measured: from
/// the friend's Postfix taking connections again to the message in its
/// mailbox, and to the backup's `postqueue -s` (its log line, written once
/// the command is done). Anchors in the same run: Postfix alone (the same
/// pair without mxfed, relaying by a transport entry written by hand; 20
/// independent pairs side by side, so the run waits one backoff, not 20),
/// and the floor: `postqueue -s` by hand at once, 5 rounds.
#[test]
#[ignore]
fn bench_flush_after_outages_of_1_to_30_s() {
    use crate::queue::{json, world};
    let outage = |i: u64| Duration::from_secs(1 + i * 29 / 19);
    let w = world();
    let mut delivered = Vec::new();
    let mut starts = Vec::new();
    for i in 0..20u64 {
        let down_at = Instant::now();
        w.pf_alpha.down();
        w.pf_bravo
            .send(&format!("r{i}@a1.example"), &format!("round {i}"));
        wait_for("deferred at bravo", || {
            json(&w.bravo, &["queue", "--json"])["peers"][0]["queues"]["deferred"] == 1
        });
        std::thread::sleep(outage(i).saturating_sub(down_at.elapsed()));
        w.pf_alpha.up();
        let (t0, wall) = (Instant::now(), std::time::SystemTime::now());
        while w.pf_alpha.inbox() < i as usize + 1 {
            assert!(t0.elapsed() < Duration::from_secs(600), "round {i} lost");
            std::thread::sleep(Duration::from_millis(10));
        }
        delivered.push(t0.elapsed());
        starts.push(wall);
        eprintln!(
            "mxfed round {i}: outage {:?}, delivered {:?}",
            outage(i),
            t0.elapsed()
        );
    }
    // The backup's flush after each start, from its log's timestamps.
    let flushes: Vec<std::time::SystemTime> = w
        .bravo
        .log_text()
        .lines()
        .filter(|l| l.contains("flushed held mail"))
        .filter_map(|l| {
            let ts = l.split_whitespace().next()?;
            humantime::parse_rfc3339(ts).ok()
        })
        .collect();
    let mut to_flush: Vec<Duration> = starts
        .iter()
        .filter_map(|s| {
            let f = flushes.iter().find(|f| *f >= s)?;
            f.duration_since(*s).ok()
        })
        .collect();
    drop(w);

    // The floor: the same, flushed by hand the moment Postfix is back.
    let (pf_a, pf_b) = alone_pair();
    let mut floor = Vec::new();
    for i in 0..5 {
        pf_a.down();
        pf_b.send(&format!("f{i}@a1.example"), "floor");
        std::thread::sleep(Duration::from_secs(1));
        pf_a.up();
        let t0 = Instant::now();
        pf_b.flush_by_hand("a1.example");
        while pf_a.inbox() < i + 1 {
            assert!(t0.elapsed() < Duration::from_secs(600));
            std::thread::sleep(Duration::from_millis(10));
        }
        floor.push(t0.elapsed());
    }
    drop((pf_a, pf_b));

    // Postfix alone, 20 pairs side by side.
    let alone: Vec<Duration> = (0..20u64)
        .map(|i| {
            std::thread::spawn(move || {
                let (pf_a, pf_b) = alone_pair();
                pf_a.down();
                pf_b.send("x@a1.example", "alone");
                std::thread::sleep(outage(i));
                pf_a.up();
                let t0 = Instant::now();
                while pf_a.inbox() < 1 {
                    assert!(t0.elapsed() < Duration::from_secs(1800));
                    std::thread::sleep(Duration::from_millis(50));
                }
                t0.elapsed()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let mut alone = alone;
    eprintln!(
        "mxfed, start to delivered, 20 rounds: {}",
        summary(&mut delivered)
    );
    eprintln!(
        "mxfed, start to the backup's postqueue -s done, {} rounds: {}",
        to_flush.len(),
        summary(&mut to_flush)
    );
    eprintln!(
        "floor (postqueue -s by hand at once), 5 rounds: {}",
        summary(&mut floor)
    );
    eprintln!("Postfix alone, 20 pairs: {}", summary(&mut alone));
}

/// A friend's Postfix (mailbox for a1.example) and a backup relaying to it
/// by a transport entry written by hand: no mxfed.
fn alone_pair() -> (PostfixInstance, PostfixInstance) {
    let pf_a = PostfixInstance::start_mailbox("mail.alpha.example", "a1.example");
    let pf_b = PostfixInstance::start(
        "mail.bravo.example",
        &format!(
            "in_flow_delay = 0\nrelay_domains = a1.example\ntransport_maps = inline:{{ a1.example=relay:[127.0.0.1]:{} }}",
            pf_a.port
        ),
    );
    (pf_a, pf_b)
}

/// Issue 13, part 2: 10,000 messages held at the backup while the friend's
/// Postfix is down, then drained when it starts: with mxfed (its flush),
/// and the anchor in the same run, Postfix alone with `postqueue -s` run by
/// hand the moment the friend is back. Each delivered exactly once (count
/// and Message-IDs; asserted, not timed).
#[test]
#[ignore]
fn bench_drain_10000_held_messages() {
    use crate::queue::{json, world};
    const N: usize = 10_000;
    let check_once = |pf: &PostfixInstance, prefix: &str| {
        let mut ids = pf.inbox_message_ids();
        assert_eq!(ids.len(), N);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), N, "a Message-ID delivered twice");
        assert!(ids.iter().all(|i| i.starts_with(&format!("<{prefix}."))));
    };
    // Postfix alone, flushed by hand.
    let (pf_a, pf_b) = alone_pair();
    pf_a.down();
    pf_b.send_many("many@a1.example", N, "alone");
    wait_for("all queued", || pf_b.queued() == N);
    std::thread::sleep(Duration::from_secs(5)); // all tried once, deferred
    pf_a.up();
    let t0 = Instant::now();
    pf_b.flush_by_hand("a1.example");
    while pf_a.inbox() < N {
        assert!(t0.elapsed() < Duration::from_secs(1800));
        std::thread::sleep(Duration::from_millis(20));
    }
    let alone = t0.elapsed();
    check_once(&pf_a, "alone");
    drop((pf_a, pf_b));

    let w = world();
    w.pf_alpha.down();
    w.pf_bravo.send_many("many@a1.example", N, "mxfed");
    wait_for("all deferred at bravo", || {
        json(&w.bravo, &["queue", "--json"])["peers"][0]["queues"]["deferred"] == N
    });
    let cpu = |a: &Agent| proc_usage(a.pid().unwrap()).2;
    let cpu_before = (cpu(&w.alpha), cpu(&w.bravo));
    w.pf_alpha.up();
    let t0 = Instant::now();
    while w.pf_alpha.inbox() < N {
        assert!(t0.elapsed() < Duration::from_secs(1800));
        std::thread::sleep(Duration::from_millis(20));
    }
    let mxfed = t0.elapsed();
    eprintln!(
        "the agents' CPU time during the drain: alpha {:.2} s, bravo {:.2} s",
        (cpu(&w.alpha) - cpu_before.0).as_secs_f64(),
        (cpu(&w.bravo) - cpu_before.1).as_secs_f64()
    );
    wait_for("bravo's queue empty", || w.pf_bravo.queued() == 0);
    check_once(&w.pf_alpha, "mxfed");
    eprintln!(
        "drain of {N}: mxfed {:.1} s, Postfix alone flushed by hand {:.1} s, ratio {:.2}",
        mxfed.as_secs_f64(),
        alone.as_secs_f64(),
        mxfed.as_secs_f64() / alone.as_secs_f64()
    );
}

/// A real recursive resolver, unbound, serving `records` (zone-file lines)
/// as local data on a loopback address of its own. dnsmasq scans its MX
/// records one by one for each query (about 130 answers a second with
/// 200,000 of them, measured here), so the 100,000-domain benchmark uses
/// unbound, which keeps local data in a tree.
struct Unbound {
    addr: std::net::SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Unbound {
    fn start(zone: &str, records: &str) -> Unbound {
        use std::fmt::Write;
        let dir = tempfile::tempdir().unwrap();
        let addr = std::net::SocketAddr::new(fresh_ip().into(), 5353);
        let mut conf = format!(
            "server:\n  interface: {}@{}\n  access-control: 127.0.0.0/8 allow\n  \
             do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  directory: \"{}\"\n  \
             pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  num-threads: 1\n  \
             do-ip6: no\n  local-zone: \"{zone}.\" static\n",
            addr.ip(),
            addr.port(),
            dir.path().display()
        );
        for line in records.lines() {
            writeln!(conf, "  local-data: \"{line}\"").unwrap();
        }
        let file = dir.path().join("unbound.conf");
        std::fs::write(&file, conf).unwrap();
        let child = Command::new("unbound")
            .args(["-d", "-c"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unbound not found: apt-get install unbound (benchmarks only)");
        let dns = mxfed_agent::dns::Dns::new(&[addr]).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        wait_for("unbound to answer", || {
            !matches!(
                rt.block_on(dns.mx(&format!("probe.{zone}"))),
                mxfed_agent::dns::MxAnswer::Failed(_)
            )
        });
        Unbound {
            addr,
            child,
            _dir: dir,
        }
    }

    /// MX answers a second for `names`, with the agent's own resolver
    /// (hickory) and `parallel` queries in flight: the resolver's own rate.
    fn rate(&self, names: &[String], parallel: usize) -> f64 {
        let dns = mxfed_agent::dns::Dns::new(&[self.addr]).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let t0 = Instant::now();
        rt.block_on(async {
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
            let mut set = tokio::task::JoinSet::new();
            for n in names {
                let (dns, n) = (dns.clone(), n.clone());
                let permit = std::sync::Arc::clone(&sem).acquire_owned().await.unwrap();
                set.spawn(async move {
                    let a = dns.mx(&n).await;
                    drop(permit);
                    assert!(
                        matches!(a, mxfed_agent::dns::MxAnswer::Hosts(_)),
                        "{n}: {a:?}"
                    );
                });
            }
            while set.join_next().await.is_some() {}
        });
        names.len() as f64 / t0.elapsed().as_secs_f64()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// From /proc/PID: (VmRSS, VmHWM) in bytes, and user+system CPU time.
fn proc_usage(pid: u32) -> (u64, u64, Duration) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field of the line, the 12th after ')'.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    let hz = 100; // USER_HZ on Linux
    (
        kb("VmRSS:"),
        kb("VmHWM:"),
        Duration::from_millis(ticks * 1000 / hz),
    )
}

/// Issue 13, parts 3 and 4: alpha publishes 100,000 domains to bravo, which
/// checks each one's MX (and the proof: the mail hosts are where the agents
/// run) against a local resolver and relays for them with a real Postfix.
/// Measured: the time until all are accepted, both agents' peak RSS, their
/// idle RSS and CPU over a minute while holding the list, then a one-domain
/// change: its time to RCPT 250 at bravo's Postfix and its bytes on the
/// wire. Anchors in the same run: the resolver's own rate, and the same
/// one-domain change to a one-domain list before the big list was sent.
#[test]
#[ignore]
fn bench_sync_100000_domains_with_mx_checks() {
    const N: usize = 100_000;
    let names: Vec<String> = (0..=N).map(|i| format!("d{i:06}.bulk.example")).collect();
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    let mut records = format!(
        "mail.alpha.example. 0 IN A {}\nmail.bravo.example. 0 IN A {}\n",
        alpha.ip(),
        bravo.ip()
    );
    let smalls = ["small-1.example", "small-2.example", "small-3.example"];
    let more = [
        "one-more-1.example",
        "one-more-2.example",
        "one-more-3.example",
    ];
    for extra in smalls.iter().chain(&more) {
        records.push_str(&format!("{extra}. 0 IN MX 0 mail.alpha.example.\n"));
        records.push_str(&format!("{extra}. 0 IN MX 10 mail.bravo.example.\n"));
    }
    for d in &names {
        records.push_str(&format!("{d}. 0 IN MX 0 mail.alpha.example.\n"));
        records.push_str(&format!("{d}. 0 IN MX 10 mail.bravo.example.\n"));
    }
    let dns = Unbound::start("example", &records);
    let rate = dns.rate(&names[..N], 64);
    eprintln!("the resolver's own rate: {rate:.0} MX answers a second (hickory, 64 in flight)");
    let pf = PostfixInstance::start("mail.bravo.example", "");
    for a in [&alpha, &bravo] {
        a.configure(&format!(
            "dns_servers = [\"{}\"]\nallow_non_public_next_hops = true",
            dns.addr
        ));
    }
    bravo.use_postfix(&pf);
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "setup");
    start_and_pair(&mut alpha, &mut bravo);
    let sent = || alpha.peer("bravo").unwrap()["bytes_out"].as_u64().unwrap();
    let one_domain = |d: &str| {
        let rcpt = format!("x@{d}");
        assert_eq!(pf.rcpt(&rcpt), 554);
        // Clear of the gap after the last apply: the startup rebuild and
        // the one for alpha's connect (its mail host joins the friends
        // map) may come 5 s apart, just after pairing.
        std::thread::sleep(2 * mxfed_agent::MIN_APPLY_GAP + Duration::from_secs(1));
        let before = sent();
        let wall = wall_clock();
        let (t, stalls) = first_250(&pf, &rcpt, || {
            alpha.domains(&["add", d]);
        });
        eprintln!(
            "{d}: `domains add` at {wall} UTC; RCPT 250 after {} ms{}",
            t.as_millis(),
            stalls_note(&stalls)
        );
        std::thread::sleep(Duration::from_secs(1));
        (t, sent() - before)
    };
    let small: Vec<(Duration, u64)> = smalls.iter().map(|d| one_domain(d)).collect();

    // The big list.
    let pids = [alpha.pid().unwrap(), bravo.pid().unwrap()];
    let file = alpha.dir.path().join("domains.txt");
    std::fs::write(&file, names[..N].join("\n") + "\n").unwrap();
    let t0 = Instant::now();
    alpha.domains(&["add", "--from-file", file.to_str().unwrap()]);
    let last = format!("x@{}", names[N - 1]);
    let mut peak_rss = [0u64; 2];
    let mut accepted_at = None;
    loop {
        for (i, pid) in pids.iter().enumerate() {
            peak_rss[i] = peak_rss[i].max(proc_usage(*pid).0);
        }
        if accepted_at.is_none()
            && alpha.peer("bravo").unwrap()["my_list"]["accepted"] == (N + smalls.len()) as u64
        {
            accepted_at = Some(t0.elapsed());
        }
        if accepted_at.is_some() && pf.rcpt(&last) == 250 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(900), "never synced");
        std::thread::sleep(Duration::from_millis(100));
    }
    let relayed_at = t0.elapsed();
    let hwm: Vec<u64> = pids.iter().map(|p| proc_usage(*p).1).collect();
    eprintln!(
        "{N} domains: all accepted by bravo after {:.1} s, RCPT 250 for the last after {:.1} s",
        accepted_at.unwrap().as_secs_f64(),
        relayed_at.as_secs_f64()
    );
    eprintln!(
        "peak RSS during the sync (VmHWM): alpha {:.1} MB, bravo {:.1} MB (sampled every 100 ms: {:.1} MB, {:.1} MB)",
        hwm[0] as f64 / 1e6,
        hwm[1] as f64 / 1e6,
        peak_rss[0] as f64 / 1e6,
        peak_rss[1] as f64 / 1e6
    );

    // Idle while holding the list.
    std::thread::sleep(Duration::from_secs(15));
    let before: Vec<_> = pids.iter().map(|p| proc_usage(*p)).collect();
    std::thread::sleep(Duration::from_secs(60));
    let after: Vec<_> = pids.iter().map(|p| proc_usage(*p)).collect();
    for (i, name) in ["alpha", "bravo"].iter().enumerate() {
        eprintln!(
            "idle for 60 s holding the list: {name} RSS {:.1} MB, CPU {:.2} s",
            after[i].0 as f64 / 1e6,
            (after[i].2 - before[i].2).as_secs_f64()
        );
    }

    let big: Vec<(Duration, u64)> = more.iter().map(|d| one_domain(d)).collect();
    for l in alpha
        .log_text()
        .lines()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .iter()
        .rev()
    {
        eprintln!("alpha: {l}");
    }
    let log = bravo.log_text();
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .filter(|l| !l.contains("relay map: +"))
        .take(30)
        .collect();
    for l in tail.iter().rev() {
        eprintln!("bravo: {l}");
    }
    let show = |runs: &[(Duration, u64)]| {
        runs.iter()
            .map(|(t, b)| format!("{} ms, {b} B", t.as_millis()))
            .collect::<Vec<_>>()
            .join("; ")
    };
    eprintln!(
        "one-domain change, three times each: to a small list {}; to the {N}-domain list {}",
        show(&small),
        show(&big)
    );
}

/// Issue 13, part 5: 1,000 `kill -9` of the backup's agent at random
/// points (0 to 1.5 s after it answers) while its friend keeps changing its
/// list: single domains every 300 ms, a batch of 1,000 in and out every
/// few seconds, over a base of 5,000 (so some applies patch a map, others
/// build it whole). After each kill, every map is whole (its compiled
/// file answers exactly what its source says: one apply's version, old or
/// new), a domain listed all along still gets RCPT 250, and `PRAGMA
/// integrity_check` says ok. At the end the backup converges on the list.
/// `MXFED_SOAK_ROUNDS` sets the number of rounds (default 1,000).
#[test]
#[ignore]
fn bench_soak_kill_9_while_lists_change() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let rounds: usize = std::env::var("MXFED_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let (alpha, mut bravo, _dns) = backup_pair(&pf, "verify_mx = \"off\"", &[]);
    let base = domain_file(alpha.dir.path(), 5_000);
    alpha.domains(&[
        "add",
        "stable.example",
        "--from-file",
        base.to_str().unwrap(),
    ]);
    wait_for("the base list relayed", || {
        pf.rcpt("x@stable.example") == 250
    });
    bravo.stop();
    let batch = alpha.dir.path().join("batch.txt");
    std::fs::write(
        &batch,
        (0..1000)
            .map(|i| format!("b{i:04}.batch.example\n"))
            .collect::<String>(),
    )
    .unwrap();

    // The friend changes its list all along.
    let stop = Arc::new(AtomicBool::new(false));
    let changer = {
        let stop = Arc::clone(&stop);
        let (config, batch) = (alpha.config(), batch.clone());
        std::thread::spawn(move || {
            let domains = |args: &[&str]| {
                let out = Command::new(env!("CARGO_BIN_EXE_mxfed"))
                    .arg("--config")
                    .arg(&config)
                    .arg("domains")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "domains {}: {}",
                    args[0],
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                domains(&["add", &format!("s{n}.soak.example")]);
                if n > 5 {
                    domains(&["remove", &format!("s{}.soak.example", n - 5)]);
                }
                match n % 20 {
                    10 => domains(&["add", "--from-file", batch.to_str().unwrap()]),
                    0 => {
                        let names: Vec<String> = (0..1000)
                            .map(|i| format!("b{i:04}.batch.example"))
                            .collect();
                        let mut args = vec!["remove"];
                        args.extend(names.iter().map(String::as_str));
                        domains(&args);
                    }
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut random = move |below: u64| {
        // xorshift64
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let t0 = Instant::now();
    let mut applied_between = 0usize;
    for round in 1..=rounds {
        let applies_before = bravo
            .log_text()
            .matches("postfix relay maps applied")
            .count();
        bravo.start();
        std::thread::sleep(Duration::from_millis(random(1500)));
        bravo.kill();
        let applies_after = bravo
            .log_text()
            .matches("postfix relay maps applied")
            .count();
        applied_between += applies_after - applies_before;
        for name in [
            "transport",
            "relay_domains",
            "relay_recipients",
            "tls_policy",
        ] {
            let db = pf
                .dump("hash", name)
                .unwrap_or_else(|e| panic!("round {round}: {name} unreadable: {e}"));
            let written = pf.map_source(name);
            assert_eq!(
                db.len(),
                written.len(),
                "round {round}: {name} is not one version"
            );
            assert!(
                db == written,
                "round {round}: {name} differs from its source"
            );
        }
        assert_eq!(
            pf.rcpt("x@stable.example"),
            250,
            "round {round}: a domain listed all along is refused"
        );
        let check = bravo.integrity_check();
        assert_eq!(check, "ok", "round {round}: integrity_check");
        if round % 50 == 0 {
            eprintln!(
                "{round} kills in {:.0} s, every map whole and the database ok each time",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    changer.join().unwrap();
    bravo.start();
    let listed = || {
        let out = alpha.mxfed(&["domains", "list", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["domains"].as_array().unwrap().len()
    };
    let want = listed();
    let t1 = Instant::now();
    wait_for("converged", || {
        pf.dump("hash", "transport").map(|m| m.len()) == Ok(want)
    });
    eprintln!(
        "{rounds} kill -9 in {:.0} s ({applied_between} applies finished between start and kill); converged on {want} domains {:.1} s after the last start",
        t0.elapsed().as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
}

/// The time of day now, UTC, as the agents' logs write it (`HH:MM:SS.mmm`),
/// to place a benchmark's steps among their log lines.
fn wall_clock() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let s = t.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        t.subsec_millis()
    )
}

/// Runs `change`, then asks bravo's Postfix `RCPT TO:<rcpt>` in one SMTP
/// session after another (each begun when the one before has answered, at
/// least 10 ms apart), as clients arriving one at a time would, until one
/// answers 250. Returns when the first 250 came (from before `change`),
/// and the sessions that took over 100 ms (began at, took, reply).
///
/// One session at a time also keeps Postfix's inbound flow control out
/// of the figure: each session answered 250 makes cleanup open a queue
/// file, which takes one of 100 tokens that the queue manager only puts
/// back when mail wakes it; probes that queue no mail spend them, and then
/// every cleanup dozes `in_flow_delay` (1 s) before answering.
///
/// Why not overlapping sessions (session 10 probed with a new session every
/// 10 ms, each in its own thread): `postfix reload` restarts anvil, and
/// every smtpd process that held a connection to the old one sleeps 1 s
/// before it tries again (Postfix's clients do that on a lost connection),
/// so every session in progress around a reload answered about a second
/// late, for a small list as for a big one. On a bare Postfix with
/// `check_policy_service` wired as mxfed wires it (to a stand-in server
/// that answers DUNNO) and the same storm, 5 reloads in 8 held sessions
/// about a second; with the probe's address exempt from anvil
/// (`smtpd_client_event_limit_exceptions`), none in 5 (BENCHMARKS.md). A
/// storm of overlapping sessions measures that Postfix behaviour, not when
/// the backup began to answer 250; a session caught by it here is counted
/// all the same, and listed.
fn first_250(
    pf: &PostfixInstance,
    rcpt: &str,
    change: impl FnOnce(),
) -> (Duration, Vec<(u128, u128, u16)>) {
    let t0 = Instant::now();
    change();
    let mut stalls = Vec::new();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{rcpt} never relayed"
        );
        let at = t0.elapsed();
        let code = pf.rcpt(rcpt);
        let end = t0.elapsed();
        if end - at > Duration::from_millis(100) {
            stalls.push((at.as_millis(), (end - at).as_millis(), code));
        }
        if code == 250 {
            return (end, stalls);
        }
        std::thread::sleep(Duration::from_millis(10).saturating_sub(end - at));
    }
}

/// For a result line: the probe sessions that waited in Postfix, if any.
fn stalls_note(stalls: &[(u128, u128, u16)]) -> String {
    match stalls.is_empty() {
        true => String::new(),
        false => format!(" (sessions over 100 ms (at ms, took ms, reply): {stalls:?})"),
    }
}
