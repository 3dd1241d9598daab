//! Benchmarks. Not run by the test command (`#[ignore]`) and they assert
//! nothing about time: machines here are noisy. Run with
//! `cargo test --release -p mxfed --test integration -- --ignored --nocapture bench_`
//! and record the figures in BENCHMARKS.md.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// From `mxfed domains add` on alpha to a working relay (RCPT 250) on
/// bravo's real Postfix, with both agents connected and MX checks on.
#[test]
#[ignore]
fn bench_propagation_domains_add_to_rcpt_250() {
    const ROUNDS: usize = 20;
    let mut records = vec![
        Rec::A("mail.alpha.example", "192.0.2.1"),
        Rec::A("mail.bravo.example", "192.0.2.2"),
    ];
    let names: Vec<&'static str> = (0..ROUNDS)
        .map(|i| &*Box::leak(format!("p{i}.example").into_boxed_str()))
        .collect();
    for d in &names {
        records.push(Rec::Mx(d, "mail.alpha.example", 0));
        records.push(Rec::Mx(d, "mail.bravo.example", 10));
    }
    let dns = DnsServer::start(&["example"], &records);
    let pf = PostfixInstance::start("mail.bravo.example", "");
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    bravo.use_postfix(&pf);
    bravo.use_dns(&dns);
    alpha.use_dns(&dns);
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "setup");
    start_and_pair(&mut alpha, &mut bravo);

    let mut times = Vec::new();
    for d in &names {
        let rcpt = format!("x@{d}");
        assert_eq!(pf.rcpt(&rcpt), 554);
        // Each round is a change on its own: a change within MIN_APPLY_GAP
        // of the previous rewrite waits out the rest of the gap.
        std::thread::sleep(mxfed_agent::MIN_APPLY_GAP);
        let t0 = Instant::now();
        alpha.domains(&["add", d]);
        while pf.rcpt(&rcpt) != 250 {
            assert!(t0.elapsed() < Duration::from_secs(30), "{d} never relayed");
            std::thread::sleep(Duration::from_millis(5));
        }
        times.push(t0.elapsed());
    }
    times.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "propagation over {ROUNDS} rounds: min {:.0} ms, median {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        ms(&times[0]),
        ms(&times[ROUNDS / 2]),
        ms(&times[ROUNDS * 9 / 10]),
        ms(&times[ROUNDS - 1])
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
