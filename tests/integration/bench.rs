//! Benchmarks. Not run by the test command (`#[ignore]`) and they assert
//! nothing about time: machines here are noisy. Run with
//! `cargo test --release -p mxfed --test integration -- --ignored --nocapture bench_`
//! and record the figures in BENCHMARKS.md.

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
    alpha.start();
    bravo.start();
    let token = alpha.invite("10m");
    assert_ok(&bravo.mxfed(&["join", &token]), "join");
    wait_for("connected", || {
        bravo.connected_to("alpha") && alpha.connected_to("bravo")
    });

    let mut times = Vec::new();
    for d in &names {
        let rcpt = format!("x@{d}");
        assert_eq!(pf.rcpt(&rcpt), 554);
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
