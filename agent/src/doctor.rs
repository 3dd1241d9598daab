//! `mxfed doctor`: checks the setup the seed calls for and says what to fix.
//!
//! - `mx`: each of my domains lists my mail host, and each friend's mail
//!   host as a backup at a higher preference number than mine;
//! - `local-domains`: no accepted friend domain is delivered by this Postfix;
//! - `queue-lifetime`: `bounce_queue_lifetime` and `maximal_queue_lifetime`
//!   are at least 5 days (the seed raises them to 10);
//! - `postfix-setup`: the wiring `mxfed postfix setup` makes is in place;
//! - `postfix-version`: 3.5 or later, for several next hops per entry;
//! - `clock`: friends' clocks are within a minute of mine;
//! - `recipients`: my domains have recipient lists (else friends accept
//!   every recipient of them), and so do the friends' domains I back up;
//! - `tls`: every friend I relay for published a server key to pin (else
//!   its mail goes with opportunistic TLS only);
//! - `policy`: the policy service answers at `policy_listen`, where a
//!   friend asks for `when-down` mode (else Postfix accepts its mail while
//!   it is up).

use mxfed_proto::control::{Check, DoctorReport};
use mxfed_proto::domain::Domain;

use crate::services::Services;

/// Below this a queue lifetime is too short for a friend's outage.
const MIN_LIFETIME: u64 = 5 * 86_400;
/// More clock skew than this is reported.
const MAX_SKEW: i64 = 60;

fn check(check: &str, status: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        check: check.into(),
        status: status.into(),
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// Parses a Postfix time value (`5d`, `3600s`, `1w`; a bare number is in
/// `default_unit`) into seconds.
pub fn postfix_seconds(value: &str, default_unit: char) -> Option<u64> {
    let v = value.trim();
    let (num, unit) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&v[..i], v[i..].chars().next()?),
        None => (v, default_unit),
    };
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    Some(n * mult)
}

/// Runs every check.
pub(crate) async fn report(s: &Services) -> DoctorReport {
    let mut checks = Vec::new();
    check_mx(s, &mut checks).await;
    check_recipients(s, &mut checks).await;
    check_tls(s, &mut checks).await;
    check_policy(s, &mut checks).await;
    match &s.postfix {
        None => checks.push(check(
            "postfix-setup",
            "fail",
            format!(
                "no main.cf in {}",
                s.config.get().postfix_config_dir.display()
            ),
            "set postfix_config_dir in the mxfed config",
        )),
        Some(p) => {
            match p.plan_setup(false, &s.config.get().policy_listen).await {
                Ok(plan) if plan.changes.is_empty() && plan.create_maps.is_empty() => {
                    checks.push(check(
                        "postfix-setup",
                        "ok",
                        "main.cf is wired to the mxfed maps",
                        "",
                    ))
                }
                Ok(plan) => checks.push(check(
                    "postfix-setup",
                    "fail",
                    format!(
                        "main.cf does not use the mxfed maps yet ({} change(s) missing)",
                        plan.changes.len() + plan.create_maps.len()
                    ),
                    "run `mxfed postfix setup`",
                )),
                Err(e) => checks.push(check(
                    "postfix-setup",
                    "fail",
                    e.to_string(),
                    "do what the detail says, then run `mxfed postfix setup`",
                )),
            }
            if !p.multiple_next_hops() {
                checks.push(check(
                    "postfix-version",
                    "warn",
                    "Postfix before 3.5 takes one next hop per transport entry: a friend's domain is relayed to the first of its checked addresses only",
                    "upgrade Postfix to 3.5 or later",
                ));
            }
            for param in ["bounce_queue_lifetime", "maximal_queue_lifetime"] {
                match p.param_expanded(param).await.map(|v| (postfix_seconds(&v, 'd'), v)) {
                    Ok((Some(secs), v)) if secs >= MIN_LIFETIME => {
                        checks.push(check("queue-lifetime", "ok", format!("{param} = {v}"), ""))
                    }
                    Ok((_, v)) => checks.push(check(
                        "queue-lifetime",
                        "warn",
                        format!("{param} = {v} is under 5 days: mail for a friend who is down longer bounces"),
                        format!("postconf -e '{param} = 10d'"),
                    )),
                    Err(e) => checks.push(check("queue-lifetime", "warn", e.to_string(), "")),
                }
            }
            let routes = s
                .store
                .relay_routes(s.clock.now_unix(), crate::store::ANY_EXPIRY)
                .await
                .unwrap_or_default();
            let domains: Vec<Domain> = routes.iter().map(|r| r.entry.domain.clone()).collect();
            match p.local_domains(&domains).await {
                Ok(local) if local.is_empty() => checks.push(check(
                    "local-domains",
                    "ok",
                    format!(
                        "none of the {} relayed friend domains is local here",
                        domains.len()
                    ),
                    "",
                )),
                Ok(local) => {
                    let mut names: Vec<String> = local.iter().map(|d| d.to_string()).collect();
                    names.sort();
                    checks.push(check(
                        "local-domains",
                        "fail",
                        format!("relayed for a friend but also local here: {}", names.join(", ")),
                        "remove them from mydestination / virtual_*_domains / relay_domains, or ask the friend to drop them",
                    ))
                }
                Err(e) => checks.push(check("local-domains", "warn", e.to_string(), "")),
            }
        }
    }
    let peers = s.store.peers().await.unwrap_or_default();
    for p in &peers {
        let skew = s.peers.clock_skew(&p.id);
        checks.push(match skew {
            None => check(
                "clock",
                "warn",
                format!("{}: not heard from since start", p.name),
                "",
            ),
            Some(s) if s.abs() <= MAX_SKEW => check(
                "clock",
                "ok",
                format!("{}: clocks agree within {}s", p.name, s.abs()),
                "",
            ),
            Some(s) => check(
                "clock",
                "warn",
                format!(
                    "{}: its clock is {s}s off mine; list expiry and queue ages will be off",
                    p.name
                ),
                "run NTP (systemd-timesyncd, chrony) on both servers",
            ),
        });
    }
    let ok = !checks.iter().any(|c| c.status == "fail");
    DoctorReport { ok, checks }
}

/// Domains (mine, and friends' I back up) whose backups accept every
/// recipient, because no recipient list says which are valid.
async fn check_recipients(s: &Services, checks: &mut Vec<Check>) {
    let unlisted = s.recipients.my_unlisted();
    if s.recipients.my_version() == 0 && s.lists.my_list_version() > 0 {
        checks.push(check(
            "recipients",
            "warn",
            "my recipients have not been read yet",
            "see the agent's log",
        ));
    }
    // One warning for each domain, also where one reason is for all.
    let every: Vec<(Domain, String)> = match unlisted.for_every() {
        Some(why) => {
            let names = s.lists.my_domain_names().await;
            names.into_iter().map(|d| (d, why.to_string())).collect()
        }
        None => Vec::new(),
    };
    let each = unlisted
        .each_domain()
        .map(|(d, why)| (d.clone(), why.to_string()));
    for (d, why) in every.into_iter().chain(each) {
        checks.push(check(
            "recipients",
            "warn",
            format!("friends accept every recipient of {d}: {why}"),
            "list its recipients in a table postmap can list (hash, lmdb, btree, cdb, texthash), or set recipients to a file of them",
        ));
    }
    let mut open = Vec::new();
    for peer in s.store.peers().await.unwrap_or_default() {
        let Ok(status) = s.lists.list_status(&peer.id).await else {
            continue;
        };
        for d in status.2 {
            if d.state == mxfed_proto::control::EntryState::Accepted && d.recipients.is_none() {
                open.push(format!("{} ({})", d.domain, peer.name));
            }
        }
    }
    if !open.is_empty() {
        let shown: Vec<&str> = open.iter().take(10).map(String::as_str).collect();
        checks.push(check(
            "recipients",
            "warn",
            format!(
                "I accept every recipient of {} friend domain(s), which can bounce spam to forged senders: {}{}",
                open.len(),
                shown.join(", "),
                if open.len() > 10 { ", ..." } else { "" }
            ),
            "ask those friends to publish recipients (mxfed 0.2 or later, recipients = \"postfix\" or a file)",
        ));
    }
    if unlisted.is_empty() && open.is_empty() && s.recipients.my_version() > 0 {
        checks.push(check(
            "recipients",
            "ok",
            "every domain has a recipient list",
            "",
        ));
    }
}

/// Friends' domains I relay to without a pinned server key.
async fn check_tls(s: &Services, checks: &mut Vec<Check>) {
    let Ok(routes) = s
        .store
        .relay_routes(s.clock.now_unix(), crate::store::ANY_EXPIRY)
        .await
    else {
        return;
    };
    let Some(postfix) = &s.postfix else {
        return;
    };
    // What Postfix holds to, as the map in force says.
    let live = postfix.live_map(crate::postfix::render::TLS_POLICY).await;
    let pinned = |ip: &std::net::IpAddr, hop: &mxfed_proto::domain::NextHop| {
        live.get(&crate::postfix::render::address_key(ip, hop))
            .is_some_and(|v| v.starts_with("fingerprint "))
    };
    let mut open: Vec<String> = routes
        .iter()
        .filter(|r| {
            // Before Postfix 3.5 only the first address is relayed to.
            let used = if postfix.multiple_next_hops() {
                r.addrs.len()
            } else {
                1
            };
            r.addrs.is_empty()
                || !r
                    .addrs
                    .iter()
                    .take(used)
                    .all(|ip| pinned(ip, &r.entry.next_hop))
        })
        .map(|r| format!("{} ({})", r.entry.domain, r.peer))
        .collect();
    open.sort();
    open.dedup();
    if open.is_empty() {
        if !routes.is_empty() {
            checks.push(check(
                "tls",
                "ok",
                "mail relayed to every friend goes over TLS pinned to its server key",
                "",
            ));
        }
        return;
    }
    let shown: Vec<&str> = open.iter().take(10).map(String::as_str).collect();
    checks.push(check(
        "tls",
        "warn",
        format!(
            "{} friend domain(s) are relayed with opportunistic TLS only (the friend published no server key): {}{}",
            open.len(),
            shown.join(", "),
            if open.len() > 10 { ", ..." } else { "" }
        ),
        "ask those friends to offer STARTTLS with a certificate (smtpd_tls_security_level = may, smtpd_tls_chain_files) and run mxfed 0.2 or later on their mail server; a next hop where their agent does not run is not pinned",
    ));
}

async fn check_mx(s: &Services, checks: &mut Vec<Check>) {
    let mine = s.lists.my_domains().await;
    if mine.domains.is_empty() {
        checks.push(check(
            "mx",
            "warn",
            "I list no domains yet",
            "`mxfed domains add DOMAIN`",
        ));
        return;
    }
    let peers = s.store.peers().await.unwrap_or_default();
    let me = &s.config.get().mail_host;
    for d in &mine.domains {
        let records = match s.dns.mx_prefs(&d.domain).await {
            Ok(r) => r,
            Err(e) => {
                checks.push(check(
                    "mx",
                    "warn",
                    format!("{}: DNS look-up failed: {e}", d.domain),
                    "",
                ));
                continue;
            }
        };
        let pref = |host: &str| {
            records
                .iter()
                .filter(|(_, h)| h == host)
                .map(|(p, _)| *p)
                .min()
        };
        let Some(my_pref) = pref(me) else {
            checks.push(check(
                "mx",
                "fail",
                format!("MX of {} does not list my mail host {me}", d.domain),
                format!("add `{}. MX 0 {me}.`", d.domain),
            ));
            continue;
        };
        if peers.is_empty() {
            checks.push(check(
                "mx",
                "warn",
                format!("{}: no friend to back it up yet", d.domain),
                "pair with `mxfed invite` / `mxfed join`",
            ));
        }
        for p in &peers {
            match pref(&p.mail_host) {
                None => checks.push(check(
                    "mx",
                    "fail",
                    format!("MX of {} does not list friend {} ({})", d.domain, p.name, p.mail_host),
                    format!("add `{}. MX {} {}.`", d.domain, my_pref.saturating_add(10), p.mail_host),
                )),
                Some(fp) if fp <= my_pref => checks.push(check(
                    "mx",
                    "warn",
                    format!(
                        "{}: friend {} has MX preference {fp}, not higher than mine ({my_pref}): senders may use it first",
                        d.domain, p.name
                    ),
                    format!("give {} a higher number, e.g. `{}. MX {} {}.`", p.mail_host, d.domain, my_pref.saturating_add(10), p.mail_host),
                )),
                Some(fp) => checks.push(check(
                    "mx",
                    "ok",
                    format!("{}: MX {my_pref} {me}, backup MX {fp} {} ({})", d.domain, p.mail_host, p.name),
                    "",
                )),
            }
        }
    }
}

/// The policy service answers, where a friend needs it.
async fn check_policy(s: &Services, checks: &mut Vec<Check>) {
    let grace = s.config.get().expired_list_grace.0.as_secs() as i64;
    let Ok(routes) = s.store.when_down_routes(s.clock.now_unix(), grace).await else {
        return;
    };
    if routes.is_empty() {
        return;
    }
    let addr = &s.config.get().policy_listen;
    let answers = match addr {
        crate::config::PolicyAddr::Unix(path) => {
            tokio::net::UnixStream::connect(path).await.is_ok()
        }
        crate::config::PolicyAddr::Tcp(a) => tokio::net::TcpStream::connect(a).await.is_ok(),
    };
    let mut friends: Vec<&str> = routes.iter().map(|(_, r)| r.peer.as_str()).collect();
    friends.sort();
    friends.dedup();
    if answers {
        checks.push(check(
            "policy",
            "ok",
            format!(
                "the policy service answers at {addr} for when-down friends ({})",
                friends.join(", ")
            ),
            "",
        ));
    } else {
        checks.push(check(
            "policy",
            "warn",
            format!(
                "the policy service does not answer at {addr}: friends in when-down mode ({}) get their mail accepted here even while their own server is up",
                friends.join(", ")
            ),
            "see the agent's log at startup (is there a postfix group? is the path free?), then restart the agent",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_time_values() {
        assert_eq!(postfix_seconds("5d", 'd'), Some(432_000));
        assert_eq!(postfix_seconds("10", 'd'), Some(864_000));
        assert_eq!(postfix_seconds("3600s", 'd'), Some(3600));
        assert_eq!(postfix_seconds("1w", 'd'), Some(604_800));
        assert_eq!(postfix_seconds("2h", 'd'), Some(7200));
        assert_eq!(postfix_seconds("x", 'd'), None);
        assert_eq!(postfix_seconds("5y", 'd'), None);
    }
}
