//! Judging one entry of a friend's list: [`judge`] decides accepted,
//! refused or pending from what is known locally ([`Ownership`]) and in DNS
//! ([`DnsFacts`]). Pure: the facts are gathered before (`facts`), and the
//! caller stores the outcome.
//!
//! The rules, in order: never one of my domains or a domain this Postfix
//! delivers; the next hop's port must be allowed, and its addresses (looked
//! up even with `verify_mx = "off"`) must be neither this server nor
//! special-purpose, and few; the claiming peer must prove it speaks for the
//! domain (the domain's `_mxfed` TXT records, if it has any, decide alone;
//! otherwise the next hop must be at an address where the peer's key was
//! seen and, unless `verify_mx = "off"`, one of the domain's MX hosts); a domain another peer holds with
//! proof stays with it (one held without proof is taken over); and with
//! `verify_mx` the MX records must name my mail host and the next hop.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use mxfed_proto::control::EntryState;
use mxfed_proto::domain::{Domain, Host, NextHop};
use mxfed_proto::list::Entry;
use mxfed_proto::PeerId;

use crate::config::VerifyMx;
use crate::dns::MxAnswer;

use super::proof;
use super::special::special_purpose;

/// What the judge knows about one entry's DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsFacts {
    /// The MX answer for the domain (the automatic proof needs it; with
    /// `verify_mx = "off"` it is not looked up, `NoMx`, and never read).
    pub mx: MxAnswer,
    /// For an `[IP]` next hop: whether one of the MX hosts resolves to it
    /// (`Err` if those look-ups failed). Unused for a host-name next hop.
    pub ip_listed: Result<bool, String>,
    /// The addresses the next hop resolves to (for an `[IP]` next hop, that
    /// address), or why they could not be found.
    pub hop_addrs: Result<Vec<IpAddr>, String>,
    /// The peers the domain's `_mxfed` TXT records name (`None`: it
    /// publishes no such record), or why they could not be read.
    pub txt_ids: Result<Option<Vec<PeerId>>, String>,
}

/// Why mail must not be relayed to `ip` at `port`, if it must not: only
/// public unicast addresses that are not this server's are a friend's host.
pub(super) fn forbidden_hop(ip: &IpAddr, port: u16, own: &Ownership<'_>) -> Option<String> {
    let ip = ip.to_canonical();
    if own.my_addrs.iter().any(|m| m.to_canonical() == ip) {
        return Some("is this server".into());
    }
    if own
        .my_listeners
        .iter()
        .any(|l| l.ip().to_canonical() == ip && l.port() == port)
    {
        return Some(format!(
            "is where this server's Postfix takes mail (port {port})"
        ));
    }
    if own.allow_non_public {
        return None;
    }
    special_purpose(&ip).map(|block| format!("is not a public address ({block})"))
}

/// The local facts an entry is judged against.
pub(crate) struct Ownership<'a> {
    pub my_mail_host: &'a str,
    /// Addresses that are this server at every port: my mail host's, and
    /// Postfix's `proxy_interfaces`.
    pub my_addrs: &'a [IpAddr],
    /// Where this server's Postfix listens for SMTP (address and port).
    pub my_listeners: &'a [SocketAddr],
    /// Why these could not be looked up, if they could not: then no next
    /// hop can be checked against them, and nothing is decided.
    pub my_addrs_unknown: Option<&'a str>,
    /// `allow_non_public_next_hops`.
    pub allow_non_public: bool,
    /// `allowed_next_hop_ports`.
    pub allowed_ports: &'a [u16],
    pub my_domains: &'a HashSet<Domain>,
    /// Domains this Postfix delivers itself, or why that could not be read.
    pub local: &'a Result<HashSet<Domain>, String>,
    /// Domains accepted for other peers, and whether that peer's claim is
    /// proven now (a failed look-up counts as proven: never revoke on it).
    pub taken: &'a HashMap<Domain, bool>,
    pub verify: VerifyMx,
    /// The peer whose list this is.
    pub claimant: PeerId,
    /// The addresses at which the claimant's key has been seen.
    pub seen: &'a [IpAddr],
}

/// The addresses an entry's next hop was checked at: the IP itself, or
/// what its name resolved to (sorted); empty if that is not known.
pub(super) fn hop_addrs(entry: &Entry, dns: Option<&DnsFacts>) -> Vec<IpAddr> {
    let mut addrs = match entry.next_hop.host() {
        Host::Ip(ip) => vec![*ip],
        Host::Name(_) => match dns.map(|f| &f.hop_addrs) {
            Some(Ok(addrs)) => addrs.clone(),
            _ => Vec::new(),
        },
    };
    for a in &mut addrs {
        *a = a.to_canonical();
    }
    addrs.sort();
    addrs.dedup();
    addrs
}

/// The most addresses a next hop may have.
pub(super) const MAX_HOP_ADDRS: usize = 16;

/// Whether the domain's MX records name `hop` (for an `[IP]` next hop: an
/// MX host has that address); `Err` if that could not be read.
pub(super) fn mx_names_hop(
    hop: &NextHop,
    mx: &MxAnswer,
    ip_listed: &Result<bool, String>,
) -> Result<bool, String> {
    match mx {
        MxAnswer::Failed(why) => Err(why.clone()),
        MxAnswer::NoMx => Ok(false),
        MxAnswer::Hosts(hosts) => match hop.host() {
            Host::Name(name) => Ok(hosts.iter().any(|h| h == name.as_str())),
            Host::Ip(_) => ip_listed.clone(),
        },
    }
}

/// Whether `claimant` proves it speaks for the domain. If the domain
/// publishes `_mxfed` records, they decide alone (its owner's word, a
/// veto over everyone else). Otherwise the next hop must be one of the
/// domain's MX hosts (`mx_names_hop`; the caller passes `Ok(true)` where
/// `verify_mx` is off) and at an address where the claimant's key was
/// seen (`addrs` against `seen`). `Err` if that could
/// not be decided because a look-up failed.
pub(super) fn proven(
    claimant: &PeerId,
    addrs: &[IpAddr],
    seen: &[IpAddr],
    mx_names_hop: Result<bool, String>,
    txt_ids: &Result<Option<Vec<PeerId>>, String>,
) -> Result<bool, String> {
    match txt_ids {
        Err(why) => Err(why.clone()),
        Ok(Some(ids)) => Ok(ids.contains(claimant)),
        Ok(None) => {
            let seen_there = addrs
                .iter()
                .any(|a| seen.iter().any(|s| s.to_canonical() == *a));
            Ok(seen_there && mx_names_hop?)
        }
    }
}

/// Judges one entry. `previous` is its state under the same next hop, if
/// any: a DNS failure keeps an accepted entry accepted.
pub(crate) fn judge(
    entry: &Entry,
    own: &Ownership<'_>,
    dns: Option<&DnsFacts>,
    previous: Option<&(EntryState, Option<String>)>,
) -> (EntryState, Option<String>) {
    let d = &entry.domain;
    let refused = |why: String| (EntryState::Refused, Some(why));
    if own.my_domains.contains(d) {
        return refused(format!("{d} is one of my own domains"));
    }
    match own.local {
        Ok(local) if local.contains(d) => {
            return refused("local domain: this Postfix delivers it (mydestination, virtual_*_domains or relay_domains)".into())
        }
        Ok(_) => {}
        Err(why) => {
            return match previous {
                Some((EntryState::Accepted, reason)) => (EntryState::Accepted, reason.clone()),
                _ => (EntryState::Pending, Some(format!("cannot check Postfix's local domains ({why}); will retry"))),
            }
        }
    }
    let port = entry.next_hop.port().unwrap_or(25);
    if !own.allowed_ports.contains(&port) {
        let allowed: Vec<String> = own.allowed_ports.iter().map(|p| p.to_string()).collect();
        return refused(format!(
            "next hop port {port} is not allowed here (allowed_next_hop_ports: {})",
            allowed.join(", ")
        ));
    }
    // Mail goes only to the friend's host: never back to me, never to a
    // loopback, private or otherwise special-purpose address.
    match entry.next_hop.host() {
        Host::Name(name) if name.as_str() == own.my_mail_host => {
            return refused(format!("next hop {name} is this server's own mail host"));
        }
        Host::Ip(ip) => {
            if let Some(why) = forbidden_hop(ip, port, own) {
                return refused(format!("next hop {ip} {why}"));
            }
        }
        Host::Name(_) => {}
    }
    let Some(facts) = dns else {
        return match previous {
            // No answer is not an answer: never a reason to revoke.
            Some((EntryState::Accepted, reason)) => (EntryState::Accepted, reason.clone()),
            _ => (EntryState::Pending, Some("not checked yet".into())),
        };
    };
    let failed = |why: &str| match previous {
        Some((EntryState::Accepted, reason)) => (EntryState::Accepted, reason.clone()),
        _ => (
            EntryState::Pending,
            Some(format!("DNS look-up for {d} failed ({why}); will retry")),
        ),
    };
    if let Some(why) = own.my_addrs_unknown {
        return match previous {
            Some((EntryState::Accepted, reason)) => (EntryState::Accepted, reason.clone()),
            _ => (
                EntryState::Pending,
                Some(format!(
                    "cannot tell which addresses are this server ({why}); will retry"
                )),
            ),
        };
    }
    if let Host::Name(name) = entry.next_hop.host() {
        match &facts.hop_addrs {
            Err(why) => return failed(why),
            Ok(addrs) if addrs.is_empty() => {
                return refused(format!("next hop {name} has no address"))
            }
            Ok(addrs) => {
                if let Some((ip, why)) = addrs
                    .iter()
                    .find_map(|ip| forbidden_hop(ip, port, own).map(|w| (ip, w)))
                {
                    return refused(format!("next hop {name} resolves to {ip}, which {why}"));
                }
            }
        }
    }
    let addrs = hop_addrs(entry, Some(facts));
    if addrs.len() > MAX_HOP_ADDRS {
        return refused(format!(
            "next hop {} has {} addresses; at most {MAX_HOP_ADDRS}",
            entry.next_hop,
            addrs.len()
        ));
    }
    // With `verify_mx = "off"` the admin trusts friends' word on DNS: the
    // automatic proof is then the seen next hop alone (a domain's own
    // `_mxfed` record still decides over it).
    let mx_names = match own.verify {
        VerifyMx::Off => Ok(true),
        _ => mx_names_hop(&entry.next_hop, &facts.mx, &facts.ip_listed),
    };
    match proven(&own.claimant, &addrs, own.seen, mx_names, &facts.txt_ids) {
        Ok(true) => {}
        Ok(false) => {
            let record = proof::txt_name(d);
            let why = match &facts.txt_ids {
                Ok(Some(_)) => format!("{record} names other peers, not this one"),
                _ if facts.mx == MxAnswer::NoMx && own.verify != VerifyMx::Off => format!(
                    "{d} has no MX records, so its next hop {} cannot be one, and it publishes no {record} record",
                    entry.next_hop
                ),
                _ => {
                    let at: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                    let wanted = match own.verify {
                        VerifyMx::Off => String::new(),
                        _ => format!("an MX host of {d} "),
                    };
                    format!(
                        "its next hop {} ({}) is not {wanted}where this peer's agent was seen, and {d} publishes no {record} record",
                        entry.next_hop,
                        at.join(", "),
                    )
                }
            };
            return refused(format!(
                "no proof that this peer speaks for {d}: {why}; run the agent on that mail server, or publish `{record}. TXT \"{}\"`",
                proof::record_for(&own.claimant)
            ));
        }
        Err(why) => return failed(&why),
    }
    if own.taken.get(d) == Some(&true) {
        // Held with proof by another peer. Do not tell one friend which
        // other friends are paired here.
        return refused(format!("{d} is already backed up here for another peer"));
    }
    if own.verify == VerifyMx::Off {
        return (EntryState::Accepted, None);
    }
    let missing: Vec<String> = match &facts.mx {
        MxAnswer::Failed(why) => return failed(why),
        MxAnswer::NoMx => vec![format!("{d} has no MX records")],
        MxAnswer::Hosts(hosts) => {
            let mut missing = Vec::new();
            if !hosts.iter().any(|h| h == own.my_mail_host) {
                missing.push(format!("MX of {d} does not list {}", own.my_mail_host));
            }
            match entry.next_hop.host() {
                Host::Name(name) => {
                    if !hosts.iter().any(|h| h == name.as_str()) {
                        missing.push(format!("MX of {d} does not list its next hop {name}"));
                    }
                }
                Host::Ip(ip) => match &facts.ip_listed {
                    Ok(true) => {}
                    Ok(false) => {
                        missing.push(format!("no MX host of {d} has the next hop's address {ip}"))
                    }
                    Err(why) => return failed(why),
                },
            }
            missing
        }
    };
    if missing.is_empty() {
        return (EntryState::Accepted, None);
    }
    let reason = missing.join("; ");
    match own.verify {
        VerifyMx::Warn => (EntryState::Accepted, Some(format!("warning: {reason}"))),
        _ => (EntryState::Refused, Some(reason)),
    }
}

/// Whether judging `entry` could check everything it depends on (Postfix's
/// local domains and every DNS look-up it needs), so that keeping it
/// accepted counts as a re-verification: judged afresh, with no earlier
/// state to fall back on, it would not be left pending.
pub(super) fn conclusive(entry: &Entry, own: &Ownership<'_>, dns: Option<&DnsFacts>) -> bool {
    judge(entry, own, dns, None).0 != EntryState::Pending
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use mxfed_proto::domain::NextHop;

    /// An entry for tests (also used by the other lists tests).
    pub(in crate::lists) fn entry(d: &str, hop: &str) -> Entry {
        Entry {
            domain: Domain::parse(d).unwrap(),
            next_hop: NextHop::parse(hop).unwrap(),
        }
    }

    /// The friend's mail server, where its agent runs (a public address).
    const HOP: &str = "1.2.3.9";

    fn hosts(h: &[&str]) -> DnsFacts {
        DnsFacts {
            mx: MxAnswer::Hosts(h.iter().map(|s| s.to_string()).collect()),
            ip_listed: Ok(false),
            hop_addrs: Ok(vec![HOP.parse().unwrap()]),
            txt_ids: Ok(None),
        }
    }

    const MY_ADDRS: &[IpAddr] = &[IpAddr::V4(std::net::Ipv4Addr::new(1, 2, 3, 1))];

    /// The claiming peer.
    fn friend() -> PeerId {
        PeerId::from_public_key([7; 32])
    }

    struct World {
        mine: HashSet<Domain>,
        taken: HashMap<Domain, bool>,
        local: Result<HashSet<Domain>, String>,
        /// Where the friend's agent was seen.
        seen: Vec<IpAddr>,
        ports: Vec<u16>,
        /// Where my Postfix takes mail (an address not in my mail host's DNS).
        listeners: Vec<SocketAddr>,
    }

    impl World {
        fn new() -> Self {
            let mut taken = HashMap::new();
            taken.insert(Domain::parse("taken.example").unwrap(), true);
            Self {
                mine: [Domain::parse("me.example").unwrap()].into(),
                taken,
                local: Ok([Domain::parse("local.example").unwrap()].into()),
                seen: vec![HOP.parse().unwrap(), "1.2.3.7".parse().unwrap()],
                ports: crate::config::DEFAULT_NEXT_HOP_PORTS.to_vec(),
                listeners: vec![
                    "1.2.3.5:25".parse().unwrap(),
                    "1.2.3.5:587".parse().unwrap(),
                ],
            }
        }
        fn own(&self, verify: VerifyMx) -> Ownership<'_> {
            Ownership {
                my_mail_host: "mail.me.example",
                my_addrs: MY_ADDRS,
                my_listeners: &self.listeners,
                my_addrs_unknown: None,
                allow_non_public: false,
                allowed_ports: &self.ports,
                my_domains: &self.mine,
                local: &self.local,
                taken: &self.taken,
                verify,
                claimant: friend(),
                seen: &self.seen,
            }
        }
    }

    #[test]
    fn mail_never_goes_back_to_me_or_to_a_non_public_address() {
        let w = World::new();
        let f = hosts(&["mail.me.example", "mail.friend.example"]);
        for verify in [VerifyMx::Require, VerifyMx::Off] {
            let (s, r) = judge(
                &entry("friend.example", "mail.me.example"),
                &w.own(verify),
                Some(&f),
                None,
            );
            assert_eq!(s, EntryState::Refused, "{verify:?}");
            assert!(r.unwrap().contains("this server"));
            for ip in [
                "127.0.0.1",
                "10.1.2.3",
                "192.168.1.1",
                "169.254.0.1",
                "0.0.0.0",
                "::1",
                "fd00::1",
                "fe80::1",
                "192.0.2.1",
                "198.18.0.1",
                "100.64.0.1",
                "240.0.0.1",
                "2002::1",
                "64:ff9b::1",
                "1.2.3.1",
            ] {
                let hop = format!("[{ip}]:2525");
                let (s, r) = judge(
                    &entry("friend.example", &hop),
                    &w.own(verify),
                    Some(&f),
                    None,
                );
                assert_eq!(s, EntryState::Refused, "{hop} {verify:?}");
                assert!(r.unwrap().contains(ip), "{hop}");
            }
        }
        // A host name that resolves to a forbidden address is refused too.
        for ip in ["127.0.0.1", "10.0.0.7", "1.2.3.1", "192.0.2.1"] {
            let mut facts = hosts(&["mail.me.example", "mail.friend.example"]);
            facts.hop_addrs = Ok(vec![ip.parse().unwrap()]);
            let (s, r) = judge(
                &entry("friend.example", "mail.friend.example"),
                &w.own(VerifyMx::Require),
                Some(&facts),
                None,
            );
            assert_eq!(s, EntryState::Refused, "{ip}");
            assert!(r.unwrap().contains(&format!("resolves to {ip}")));
        }
    }

    #[test]
    fn mail_never_goes_to_where_my_postfix_listens_but_other_ports_there_are_not_me() {
        let mut w = World::new();
        w.seen.push("1.2.3.5".parse().unwrap());
        for hop in ["mail.friend.example", "mail.friend.example:587"] {
            let mut facts = hosts(&["mail.me.example", "mail.friend.example"]);
            facts.hop_addrs = Ok(vec!["1.2.3.5".parse().unwrap()]);
            for verify in [VerifyMx::Require, VerifyMx::Off] {
                let (s, r) = judge(
                    &entry("friend.example", hop),
                    &w.own(verify),
                    Some(&facts),
                    None,
                );
                assert_eq!(s, EntryState::Refused, "{hop} {verify:?}");
                assert!(
                    r.as_deref()
                        .unwrap()
                        .contains("where this server's Postfix takes mail"),
                    "{r:?}"
                );
            }
        }
        let (s, r) = judge(
            &entry("friend.example", "[1.2.3.5]:25"),
            &w.own(VerifyMx::Off),
            Some(&hosts(&[])),
            None,
        );
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().contains("port 25"));
        // Another server on the same address (a port my Postfix does not
        // take mail at) is not me.
        let (s, r) = judge(
            &entry("friend.example", "[1.2.3.5]:2525"),
            &w.own(VerifyMx::Off),
            Some(&hosts(&[])),
            None,
        );
        assert_eq!((s, r), (EntryState::Accepted, None));
    }

    #[test]
    fn accepted_when_mx_lists_me_and_the_next_hop() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        let f = hosts(&["mail.friend.example", "mail.me.example"]);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None),
            (EntryState::Accepted, None)
        );
    }

    #[test]
    fn refused_with_a_reason_naming_what_is_missing() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        let (s, r) = judge(
            &e,
            &w.own(VerifyMx::Require),
            Some(&hosts(&["mail.friend.example"])),
            None,
        );
        assert_eq!(s, EntryState::Refused);
        assert_eq!(
            r.unwrap(),
            "MX of friend.example does not list mail.me.example"
        );
        let (s, r) = judge(
            &e,
            &w.own(VerifyMx::Require),
            Some(&hosts(&["mail.me.example"])),
            None,
        );
        assert_eq!(s, EntryState::Refused);
        // Without the next hop in the MX there is no proof either; the
        // reason says both.
        let r = r.unwrap();
        assert!(
            r.starts_with("no proof that this peer speaks for friend.example: its next hop mail.friend.example (1.2.3.9) is not an MX host of friend.example"),
            "{r}"
        );
        let nomx = DnsFacts {
            mx: MxAnswer::NoMx,
            ..hosts(&[])
        };
        let (s, r) = judge(&e, &w.own(VerifyMx::Require), Some(&nomx), None);
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().contains("no MX records"));
    }

    #[test]
    fn warn_accepts_but_says_why_and_off_skips_mx_but_not_addresses() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        // The MX names the next hop (the proof) but not me.
        let (s, r) = judge(
            &e,
            &w.own(VerifyMx::Warn),
            Some(&hosts(&["mail.friend.example"])),
            None,
        );
        assert_eq!(s, EntryState::Accepted);
        assert!(r.unwrap().starts_with("warning: "));
        let mut hop_only = hosts(&["mail.friend.example"]);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Off), Some(&hop_only), None),
            (EntryState::Accepted, None)
        );
        // Off still looks up and checks the next hop's addresses.
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Off), None, None).0,
            EntryState::Pending
        );
        hop_only.hop_addrs = Ok(vec!["10.0.0.7".parse().unwrap()]);
        let (s, r) = judge(&e, &w.own(VerifyMx::Off), Some(&hop_only), None);
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().contains("resolves to 10.0.0.7"));
    }

    #[test]
    fn without_a_record_the_next_hop_must_be_an_mx_host_unless_verify_mx_is_off() {
        // A friend claiming any domain with its own server as next hop: its
        // agent was seen there, but the domain's MX does not name it.
        let w = World::new();
        let e = entry("someone-else.example", "mail.friend.example");
        for verify in [VerifyMx::Require, VerifyMx::Warn] {
            let (s, r) = judge(
                &e,
                &w.own(verify),
                Some(&hosts(&["mail.owner.example"])),
                None,
            );
            assert_eq!(s, EntryState::Refused, "{verify:?}");
            assert!(r.unwrap().starts_with("no proof"), "{verify:?}");
        }
        // No MX at all: no proof either.
        let mut none = hosts(&[]);
        none.mx = MxAnswer::NoMx;
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Warn), Some(&none), None).0,
            EntryState::Refused
        );
        // The MX cannot be read: undecided.
        none.mx = MxAnswer::Failed("SERVFAIL".into());
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Warn), Some(&none), None).0,
            EntryState::Pending
        );
        // `off`: the admin trusts its friends on DNS; the seen next hop is
        // the proof, unless the domain's own record says otherwise.
        assert_eq!(
            judge(
                &e,
                &w.own(VerifyMx::Off),
                Some(&hosts(&["mail.owner.example"])),
                None
            )
            .0,
            EntryState::Accepted
        );
        let mut vetoed = hosts(&["mail.owner.example"]);
        vetoed.txt_ids = Ok(Some(vec![PeerId::from_public_key([9; 32])]));
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Off), Some(&vetoed), None).0,
            EntryState::Refused
        );
    }

    #[test]
    fn a_domains_record_decides_alone_over_the_automatic_proof() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        let mut f = hosts(&["mail.me.example", "mail.friend.example"]);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
            EntryState::Accepted
        );
        // The owner names another peer: the seen next hop is not enough.
        f.txt_ids = Ok(Some(vec![PeerId::from_public_key([9; 32])]));
        let (s, r) = judge(&e, &w.own(VerifyMx::Require), Some(&f), None);
        assert_eq!(s, EntryState::Refused);
        assert!(r
            .unwrap()
            .contains("_mxfed.friend.example names other peers, not this one"));
        // A record naming nobody refuses everyone.
        f.txt_ids = Ok(Some(vec![]));
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
            EntryState::Refused
        );
    }

    #[test]
    fn my_own_addresses_unknown_decide_nothing() {
        let w = World::new();
        let mut own = w.own(VerifyMx::Require);
        own.my_addrs = &[];
        own.my_addrs_unknown = Some("timeout");
        let e = entry("friend.example", "mail.friend.example");
        let f = hosts(&["mail.me.example", "mail.friend.example"]);
        assert_eq!(judge(&e, &own, Some(&f), None).0, EntryState::Pending);
        let before = (EntryState::Accepted, None);
        assert_eq!(judge(&e, &own, Some(&f), Some(&before)), before);
    }

    #[test]
    fn a_next_hop_with_too_many_addresses_is_refused() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        let mut f = hosts(&["mail.me.example", "mail.friend.example"]);
        f.hop_addrs = Ok((1..=17)
            .map(|i| format!("1.2.4.{i}").parse().unwrap())
            .collect());
        let (s, r) = judge(&e, &w.own(VerifyMx::Require), Some(&f), None);
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().contains("has 17 addresses; at most 16"));
    }

    #[test]
    fn my_own_and_other_peers_domains_are_refused_whatever_dns_says() {
        let w = World::new();
        let f = hosts(&["mail.me.example", "mail.friend.example"]);
        for verify in [VerifyMx::Require, VerifyMx::Warn, VerifyMx::Off] {
            let (s, r) = judge(
                &entry("me.example", "mail.friend.example"),
                &w.own(verify),
                Some(&f),
                None,
            );
            assert_eq!(s, EntryState::Refused);
            assert!(r.unwrap().contains("one of my own"));
            let (s, r) = judge(
                &entry("taken.example", "mail.friend.example"),
                &w.own(verify),
                Some(&f),
                None,
            );
            assert_eq!(s, EntryState::Refused);
            assert!(r.unwrap().contains("another peer"));
        }
    }

    #[test]
    fn domains_this_postfix_delivers_are_refused_as_local() {
        let mut w = World::new();
        let f = hosts(&["mail.me.example", "mail.friend.example"]);
        let (s, r) = judge(
            &entry("local.example", "mail.friend.example"),
            &w.own(VerifyMx::Off),
            Some(&f),
            None,
        );
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().starts_with("local domain"));
        // Postfix unreadable: pending, but an accepted entry stays accepted.
        w.local = Err("postconf failed".into());
        let e = entry("friend.example", "mail.friend.example");
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
            EntryState::Pending
        );
        let before = (EntryState::Accepted, None);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), Some(&before)),
            before
        );
    }

    #[test]
    fn dns_failure_is_pending_and_never_revokes() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        let fail = DnsFacts {
            mx: MxAnswer::Failed("SERVFAIL".into()),
            ..hosts(&[])
        };
        let (s, r) = judge(&e, &w.own(VerifyMx::Require), Some(&fail), None);
        assert_eq!(s, EntryState::Pending);
        assert!(r.unwrap().contains("will retry"));
        let before = (EntryState::Accepted, None);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&fail), Some(&before)),
            before
        );
        // A definite answer does change an accepted entry's state.
        let (s, _) = judge(
            &e,
            &w.own(VerifyMx::Require),
            Some(&hosts(&["x.example"])),
            Some(&before),
        );
        assert_eq!(s, EntryState::Refused);
    }

    #[test]
    fn no_answer_never_revokes_and_only_full_checks_count_as_reverified() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        let before = (EntryState::Accepted, None);
        // No DNS facts at all (a look-up task that died): kept, not pending.
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), None, Some(&before)),
            before
        );
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), None, None).0,
            EntryState::Pending
        );
        let require = w.own(VerifyMx::Require);
        let good = hosts(&["mail.me.example", "mail.friend.example"]);
        assert!(conclusive(&e, &require, Some(&good)));
        let mut unread = World::new();
        unread.local = Err("postconf failed".into());
        assert!(
            !conclusive(&e, &unread.own(VerifyMx::Require), Some(&good)),
            "local domains unread"
        );
        assert!(!conclusive(&e, &require, None));
        let mut failed = good.clone();
        failed.mx = MxAnswer::Failed("SERVFAIL".into());
        assert!(!conclusive(&e, &require, Some(&failed)));
        let mut no_addr = good.clone();
        no_addr.hop_addrs = Err("timeout".into());
        assert!(!conclusive(&e, &require, Some(&no_addr)));
        let ip = entry("friend.example", "[1.2.3.7]");
        let mut unlisted = good.clone();
        unlisted.ip_listed = Err("timeout".into());
        assert!(!conclusive(&ip, &require, Some(&unlisted)));
        let mut no_txt = good.clone();
        no_txt.hop_addrs = Ok(vec!["1.2.3.50".parse().unwrap()]);
        no_txt.txt_ids = Err("timeout".into());
        assert!(
            !conclusive(&e, &require, Some(&no_txt)),
            "proof undecided: the TXT look-up failed"
        );
        assert!(
            !conclusive(&e, &w.own(VerifyMx::Off), None),
            "the next hop's addresses are looked up even with verify_mx off"
        );
    }

    #[test]
    fn ip_next_hops_need_an_mx_host_with_that_address() {
        let w = World::new();
        let e = entry("friend.example", "[1.2.3.7]");
        let mut f = hosts(&["mail.me.example", "mail.friend.example"]);
        f.ip_listed = Ok(true);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
            EntryState::Accepted
        );
        f.ip_listed = Ok(false);
        let (s, r) = judge(&e, &w.own(VerifyMx::Require), Some(&f), None);
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().contains("1.2.3.7"));
    }

    #[test]
    fn a_next_hop_port_must_be_allowed() {
        let w = World::new();
        let f = hosts(&["mail.me.example", "mail.friend.example"]);
        for ok in [
            "mail.friend.example",
            "mail.friend.example:587",
            "mail.friend.example:2525",
        ] {
            let e = entry("friend.example", ok);
            assert_eq!(
                judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
                EntryState::Accepted,
                "{ok}"
            );
        }
        for verify in [VerifyMx::Require, VerifyMx::Off] {
            let e = entry("friend.example", "mail.friend.example:6379");
            let (s, r) = judge(&e, &w.own(verify), Some(&f), None);
            assert_eq!(s, EntryState::Refused);
            assert_eq!(
                r.unwrap(),
                "next hop port 6379 is not allowed here (allowed_next_hop_ports: 25, 587, 2525)"
            );
        }
    }

    #[test]
    fn a_claim_needs_proof_from_where_the_agent_was_seen_or_a_txt_record() {
        let mut w = World::new();
        let e = entry("friend3.example", "mail.friend.example");
        let mut f = hosts(&["mail.me.example", "mail.friend.example"]);
        // The next hop is where the friend's agent was seen: proven.
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
            EntryState::Accepted
        );
        // Squatting: a next hop that is someone else's server, no record.
        f.hop_addrs = Ok(vec!["5.6.7.8".parse().unwrap()]);
        for verify in [VerifyMx::Require, VerifyMx::Warn, VerifyMx::Off] {
            let (s, r) = judge(&e, &w.own(verify), Some(&f), None);
            assert_eq!(s, EntryState::Refused, "{verify:?}");
            let r = r.unwrap();
            assert!(
                r.starts_with("no proof that this peer speaks for friend3.example"),
                "{r}"
            );
            assert!(
                r.contains(&format!(
                    "_mxfed.friend3.example. TXT \"v=mxfed1; id={}\"",
                    friend()
                )),
                "names the record to add: {r}"
            );
        }
        // The domain's record names the friend: proven (an agent elsewhere).
        f.txt_ids = Ok(Some(vec![PeerId::from_public_key([9; 32]), friend()]));
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
            EntryState::Accepted
        );
        // ... and a record naming only others is no proof.
        f.txt_ids = Ok(Some(vec![PeerId::from_public_key([9; 32])]));
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
            EntryState::Refused
        );
        // A failed TXT look-up decides nothing: pending, and never revokes.
        f.txt_ids = Err("SERVFAIL".into());
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
            EntryState::Pending
        );
        let before = (EntryState::Accepted, None);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), Some(&before)),
            before
        );
        // An IP next hop proves itself the same way: an MX host with that
        // address, where the friend's agent was seen.
        let ip = entry("friend3.example", "[5.6.7.8]");
        f.txt_ids = Ok(None);
        f.ip_listed = Ok(true);
        assert_eq!(
            judge(&ip, &w.own(VerifyMx::Warn), Some(&f), None).0,
            EntryState::Refused,
            "not seen there"
        );
        w.seen.push("5.6.7.8".parse().unwrap());
        assert_eq!(
            judge(&ip, &w.own(VerifyMx::Warn), Some(&f), None).0,
            EntryState::Accepted
        );
        f.ip_listed = Ok(false);
        assert_eq!(
            judge(&ip, &w.own(VerifyMx::Warn), Some(&f), None).0,
            EntryState::Refused,
            "no MX host has that address"
        );
    }

    #[test]
    fn an_unproven_claim_never_blocks_a_proven_one() {
        let mut w = World::new();
        let e = entry("taken.example", "mail.friend.example");
        let f = hosts(&["mail.me.example", "mail.friend.example"]);
        // Held with proof by another peer: refused.
        let (s, r) = judge(&e, &w.own(VerifyMx::Require), Some(&f), None);
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().contains("another peer"));
        // Held without proof: the proven claim takes it.
        w.taken
            .insert(Domain::parse("taken.example").unwrap(), false);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
            EntryState::Accepted
        );
        // An unproven claim does not take it from anyone.
        let mut squat = f.clone();
        squat.hop_addrs = Ok(vec!["5.6.7.8".parse().unwrap()]);
        let (s, r) = judge(&e, &w.own(VerifyMx::Require), Some(&squat), None);
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().starts_with("no proof"));
    }
}
