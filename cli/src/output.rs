//! Presentation: lines, JSON and tables on stdout.

#![allow(clippy::print_stdout)]

/// `println!` that ends the process quietly when the reader has gone
/// (`mxfed status --json | grep -q ...`), as Unix tools do, instead of
/// panicking on the broken pipe.
macro_rules! println {
    () => {
        emit(format_args!(""))
    };
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))
    };
}

/// Writes one line to stdout; exits 0 if the reader closed it.
fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("mxfed: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

use std::time::{Duration, UNIX_EPOCH};

use mxfed_proto::control::{
    ApplyReport, DoctorReport, EntryState, HeldStatus, HistoryEntry, MyDomains, QueueView,
    StatusReport,
};

/// Prints one line to stdout.
pub fn line(s: &str) {
    println!("{s}");
}

/// Prints a value as one JSON object.
pub fn json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("mxfed: cannot render json: {e}"),
    }
}

/// RFC 3339 form of unix seconds.
pub fn time(secs: u64) -> String {
    // humantime formats years up to 9999 only.
    let secs = secs.min(253_402_300_799);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// Prints rows as left-aligned columns.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let header = header.map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

/// `domains list` (and the result of add and remove).
pub fn my_domains(d: &MyDomains) {
    if d.version == 0 {
        println!("no domains yet: add them with `mxfed domains add DOMAIN...`");
        return;
    }
    println!(
        "my list: version {}, signed {}, expires {}, {} domain(s)",
        d.version,
        d.issued_at.as_deref().unwrap_or("?"),
        d.expires_at.as_deref().unwrap_or("?"),
        d.domains.len()
    );
    if d.domains.is_empty() {
        return;
    }
    let rows: Vec<[String; 3]> = d
        .domains
        .iter()
        .map(|e| {
            let recipients = match (e.recipients, &e.recipients_reason) {
                (Some(n), _) => n.to_string(),
                (None, Some(why)) => format!("all (warning: {why})"),
                (None, None) => "all".into(),
            };
            [e.domain.clone(), e.next_hop.clone(), recipients]
        })
        .collect();
    table(["DOMAIN", "NEXT HOP", "RECIPIENTS"], &rows);
}

/// The `status` table.
pub fn status_table(r: &StatusReport) {
    println!("{} ({})", r.me.name, r.me.id);
    println!(
        "  listening on udp {}, advertising {}, mail host {}, version {}",
        r.me.listen,
        if r.me.advertise.is_empty() {
            "nothing".into()
        } else {
            r.me.advertise.join(" ")
        },
        r.me.mail_host,
        r.me.agent_version
    );
    match r.me.tls_fingerprints.as_slice() {
        [] => println!(
            "  server keys: none published (friends do not pin my server; see the agent's log)"
        ),
        fps => println!(
            "  server keys published for friends to pin: {}",
            fps.join(" ")
        ),
    }
    if r.peers.is_empty() {
        println!("\nno peers yet: pair with `mxfed invite` here and `mxfed join TOKEN` on the friend's side");
        return;
    }
    println!();
    let rows: Vec<[String; 8]> = r
        .peers
        .iter()
        .map(|p| {
            let state = if p.connected {
                format!("up since {}", p.connected_since.as_deref().unwrap_or("?"))
            } else {
                format!(
                    "down, last seen {}",
                    p.last_seen.as_deref().unwrap_or("never")
                )
            };
            [
                p.name.clone(),
                p.id.short(),
                state,
                p.address.clone().unwrap_or_else(|| "-".into()),
                p.rtt_ms.map_or("-".into(), |ms| format!("{ms:.1}ms")),
                bytes(p.bytes_in),
                bytes(p.bytes_out),
                p.agent_version.clone().unwrap_or_else(|| "?".into()),
            ]
        })
        .collect();
    table(
        [
            "PEER", "ID", "STATE", "ADDRESS", "RTT", "IN", "OUT", "VERSION",
        ],
        &rows,
    );
    for p in &r.peers {
        let count = |st| p.domains.iter().filter(|d| d.state == st).count();
        println!();
        match p.list_version {
            Some(v) => println!(
                "{}'s domains (list v{v}): I back up {} of {}; {} refused, {} pending",
                p.name,
                count(EntryState::Accepted),
                p.domains.len(),
                count(EntryState::Refused),
                count(EntryState::Pending)
            ),
            None => println!("{}'s domains: no list received yet", p.name),
        }
        let open: Vec<&str> = p
            .domains
            .iter()
            .filter(|d| d.state == EntryState::Accepted && d.recipients.is_none())
            .map(|d| d.domain.as_str())
            .collect();
        if let Some(first) = p
            .domains
            .iter()
            .find(|d| d.state == EntryState::Accepted && d.recipients.is_none())
        {
            let shown: Vec<&str> = open.iter().take(5).copied().collect();
            println!(
                "  warning: {} accepted domain(s) accept every recipient here ({}{}): {}",
                open.len(),
                shown.join(", "),
                if open.len() > 5 { ", ..." } else { "" },
                first
                    .recipients_reason
                    .as_deref()
                    .unwrap_or("no recipient list")
            );
        }
        for d in p
            .domains
            .iter()
            .filter(|d| d.state != EntryState::Accepted)
            .take(20)
        {
            println!(
                "  {} {}: {}",
                d.state.as_str(),
                d.domain,
                d.reason.as_deref().unwrap_or("")
            );
        }
        if !p.tls_fingerprints.is_empty() {
            println!("{}'s server keys: {}", p.name, p.tls_fingerprints.join(" "));
        }
        println!(
            "I hold for {}: {}; {} holds for me: {}{}",
            p.name,
            held(&p.held_for_peer),
            p.name,
            held(&p.held_by_peer),
            match p.peer_mta_accepting {
                Some(false) => " (its MTA is down)",
                _ => "",
            }
        );
        let m = &p.my_list;
        match m.version_acked {
            Some(v) => {
                let total = m.accepted + m.refused_count + m.pending_count;
                println!(
                    "{} backs up {} of my {} domains (holds my list v{v}){}",
                    p.name,
                    m.accepted,
                    total,
                    if m.refused_count + m.pending_count > 0 {
                        ":"
                    } else {
                        ""
                    }
                );
                for n in m.refused.iter().take(20) {
                    println!("  refused {}: {}", n.domain, n.reason);
                }
                for n in m.pending.iter().take(20) {
                    println!("  pending {}: {}", n.domain, n.reason);
                }
            }
            None => println!("{} has not acknowledged my list yet", p.name),
        }
    }
}

/// The changes an apply report stands for: the transport map's in all, or
/// (where only other maps change) the lines.
fn counted(r: &ApplyReport) -> usize {
    match (r.added + r.removed + r.changed) as usize {
        0 => r.changes.len(),
        n => n,
    }
}

/// `mxfed apply`.
pub fn apply_report(r: &ApplyReport) {
    for c in &r.changes {
        println!("{c}");
    }
    match r.result.as_str() {
        "planned" if r.changes.is_empty() => println!(
            "dry run: the maps in force already match ({} domains)",
            r.total
        ),
        "planned" => println!(
            "dry run: {} change(s) would be applied ({} domains afterwards)",
            counted(r),
            r.total
        ),
        "unchanged" => println!("the maps in force already match ({} domains)", r.total),
        "applied" => println!(
            "applied {} change(s); {} domains relayed",
            counted(r),
            r.total
        ),
        _ => println!(
            "failed at step {}; the previous maps stay in force",
            r.step.as_deref().unwrap_or("?")
        ),
    }
}

/// `mxfed history`.
pub fn history(h: &[HistoryEntry]) {
    if h.is_empty() {
        println!("no changes to the Postfix maps yet");
        return;
    }
    let rows: Vec<[String; 5]> = h
        .iter()
        .map(|e| {
            [
                e.at.clone(),
                e.result.clone(),
                format!("+{} -{} ~{} ={}", e.added, e.removed, e.changed, e.total),
                e.trigger.clone(),
                match (&e.step, &e.message) {
                    (Some(s), Some(m)) => format!("{s}: {m}"),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    table(["TIME", "RESULT", "CHANGES", "TRIGGER", "ERROR"], &rows);
}

fn held(h: &HeldStatus) -> String {
    match (h.messages, h.bytes) {
        (Some(0), _) => "nothing".into(),
        (Some(m), Some(b)) => format!(
            "{m} message(s), {}, oldest {}",
            bytes(b),
            h.oldest_arrival.as_deref().unwrap_or("?")
        ),
        _ if h.reported_at.is_some() => "unknown (queue unreadable)".into(),
        _ => "not reported yet".into(),
    }
}

/// `mxfed queue`.
pub fn queue(q: &QueueView) {
    if !q.known {
        println!(
            "queue depth unknown: {} (scanned {})",
            q.error.as_deref().unwrap_or("?"),
            q.scanned_at
        );
        return;
    }
    if q.peers.is_empty() {
        println!("no friends' domains are relayed here yet");
        return;
    }
    for p in &q.peers {
        let queues: Vec<String> = p.queues.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "{}: {} message(s), {} recipient(s), {}, oldest {}{}",
            p.name,
            p.messages,
            p.recipients,
            bytes(p.bytes),
            p.oldest_arrival.as_deref().unwrap_or("-"),
            if queues.is_empty() {
                String::new()
            } else {
                format!(" ({})", queues.join(", "))
            }
        );
        let rows: Vec<[String; 5]> = p
            .domains
            .iter()
            .map(|d| {
                [
                    d.domain.clone(),
                    d.messages.to_string(),
                    d.recipients.to_string(),
                    bytes(d.bytes),
                    d.oldest_arrival.clone().unwrap_or_default(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            table(
                ["  DOMAIN", "MESSAGES", "RECIPIENTS", "BYTES", "OLDEST"],
                &rows,
            );
        }
        for r in &p.reasons {
            println!("  {} x {}", r.count, r.reason);
        }
    }
}

/// `mxfed doctor`.
pub fn doctor(r: &DoctorReport) {
    for c in &r.checks {
        println!("{:<4}  {:<14}  {}", c.status, c.check, c.detail);
        if !c.fix.is_empty() {
            println!("{:<4}  {:<14}  fix: {}", "", "", c.fix);
        }
    }
}
