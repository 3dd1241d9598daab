//! Judging one entry of a friend's list: [`judge`] decides accepted,
//! refused or pending from what is known locally ([`Ownership`]) and in DNS
//! ([`DnsFacts`]). Pure: the facts are gathered before (`facts`), and the
//! caller stores the outcome.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use mxfed_proto::control::EntryState;
use mxfed_proto::domain::{Domain, Host};
use mxfed_proto::list::Entry;

use crate::config::VerifyMx;
use crate::dns::MxAnswer;

/// What the judge knows about one entry's DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsFacts {
    /// The MX answer for the domain.
    pub mx: MxAnswer,
    /// For an `[IP]` next hop: whether one of the MX hosts resolves to it
    /// (`Err` if those look-ups failed). Unused for a host-name next hop.
    pub ip_listed: Result<bool, String>,
    /// The addresses the next hop resolves to (for an `[IP]` next hop, that
    /// address), or why they could not be found.
    pub hop_addrs: Result<Vec<IpAddr>, String>,
}

/// Why mail must not be relayed to `ip`, if it must not: only public
/// unicast addresses that are not this server's are a friend's host.
pub(super) fn forbidden_hop(
    ip: &IpAddr,
    mine: &[IpAddr],
    allow_non_public: bool,
) -> Option<&'static str> {
    if mine.contains(ip) {
        return Some("is this server");
    }
    if allow_non_public {
        return None;
    }
    let bad = match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| forbidden_hop(&IpAddr::V4(v4), mine, false).is_some())
        }
    };
    bad.then_some("is not a public address")
}

/// The local facts an entry is judged against.
pub(crate) struct Ownership<'a> {
    pub my_mail_host: &'a str,
    /// The addresses of my mail host (empty if unknown).
    pub my_addrs: &'a [IpAddr],
    /// `allow_non_public_next_hops`.
    pub allow_non_public: bool,
    pub my_domains: &'a HashSet<Domain>,
    /// Domains this Postfix delivers itself, or why that could not be read.
    pub local: &'a Result<HashSet<Domain>, String>,
    /// Domains accepted for other peers, with the peer's name.
    pub taken: &'a HashMap<Domain, String>,
    pub verify: VerifyMx,
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
    if own.my_domains.contains(d) {
        return (
            EntryState::Refused,
            Some(format!("{d} is one of my own domains")),
        );
    }
    match own.local {
        Ok(local) if local.contains(d) => {
            return (
                EntryState::Refused,
                Some("local domain: this Postfix delivers it (mydestination, virtual_*_domains or relay_domains)".into()),
            )
        }
        Ok(_) => {}
        Err(why) => {
            return match previous {
                Some((EntryState::Accepted, reason)) => (EntryState::Accepted, reason.clone()),
                _ => (EntryState::Pending, Some(format!("cannot check Postfix's local domains ({why}); will retry"))),
            }
        }
    }
    if own.taken.contains_key(d) {
        // Do not tell one friend which other friends are paired here.
        return (
            EntryState::Refused,
            Some(format!("{d} is already backed up here for another peer")),
        );
    }
    // Mail goes only to the friend's host: never back to me, never to a
    // loopback, private or otherwise non-public address.
    match entry.next_hop.host() {
        Host::Name(name) if name.as_str() == own.my_mail_host => {
            return (
                EntryState::Refused,
                Some(format!("next hop {name} is this server's own mail host")),
            );
        }
        Host::Ip(ip) => {
            if let Some(why) = forbidden_hop(ip, own.my_addrs, own.allow_non_public) {
                return (EntryState::Refused, Some(format!("next hop {ip} {why}")));
            }
        }
        Host::Name(_) => {}
    }
    if own.verify == VerifyMx::Off {
        return (EntryState::Accepted, None);
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
    if let Host::Name(name) = entry.next_hop.host() {
        match &facts.hop_addrs {
            Err(why) => return failed(why),
            Ok(addrs) if addrs.is_empty() => {
                return (
                    EntryState::Refused,
                    Some(format!("next hop {name} has no address")),
                )
            }
            Ok(addrs) => {
                if let Some((ip, why)) = addrs.iter().find_map(|ip| {
                    forbidden_hop(ip, own.my_addrs, own.allow_non_public).map(|w| (ip, w))
                }) {
                    return (
                        EntryState::Refused,
                        Some(format!("next hop {name} resolves to {ip}, which {why}")),
                    );
                }
            }
        }
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

    fn hosts(h: &[&str]) -> DnsFacts {
        DnsFacts {
            mx: MxAnswer::Hosts(h.iter().map(|s| s.to_string()).collect()),
            ip_listed: Ok(false),
            hop_addrs: Ok(vec!["192.0.2.9".parse().unwrap()]),
        }
    }

    const MY_ADDRS: &[IpAddr] = &[IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1))];

    struct World {
        mine: HashSet<Domain>,
        taken: HashMap<Domain, String>,
        local: Result<HashSet<Domain>, String>,
    }

    impl World {
        fn new() -> Self {
            let mut taken = HashMap::new();
            taken.insert(Domain::parse("taken.example").unwrap(), "carol".to_string());
            Self {
                mine: [Domain::parse("me.example").unwrap()].into(),
                taken,
                local: Ok([Domain::parse("local.example").unwrap()].into()),
            }
        }
        fn own(&self, verify: VerifyMx) -> Ownership<'_> {
            Ownership {
                my_mail_host: "mail.me.example",
                my_addrs: MY_ADDRS,
                allow_non_public: false,
                my_domains: &self.mine,
                local: &self.local,
                taken: &self.taken,
                verify,
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
            ] {
                let hop = format!("[{ip}]:10025");
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
        for ip in ["127.0.0.1", "10.0.0.7", "192.0.2.1"] {
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
        assert_eq!(
            r.unwrap(),
            "MX of friend.example does not list its next hop mail.friend.example"
        );
        let nomx = DnsFacts {
            mx: MxAnswer::NoMx,
            ip_listed: Ok(false),
            hop_addrs: Ok(vec!["192.0.2.9".parse().unwrap()]),
        };
        let (s, r) = judge(&e, &w.own(VerifyMx::Require), Some(&nomx), None);
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().contains("no MX records"));
    }

    #[test]
    fn warn_accepts_but_says_why_and_off_skips_dns() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        let (s, r) = judge(
            &e,
            &w.own(VerifyMx::Warn),
            Some(&hosts(&["x.example"])),
            None,
        );
        assert_eq!(s, EntryState::Accepted);
        assert!(r.unwrap().starts_with("warning: "));
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Off), None, None),
            (EntryState::Accepted, None)
        );
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
            ip_listed: Ok(false),
            hop_addrs: Ok(vec!["192.0.2.9".parse().unwrap()]),
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
        let ip = entry("friend.example", "[192.0.2.7]");
        let mut unlisted = good.clone();
        unlisted.ip_listed = Err("timeout".into());
        assert!(!conclusive(&ip, &require, Some(&unlisted)));
        assert!(
            conclusive(&e, &w.own(VerifyMx::Off), None),
            "nothing to look up"
        );
    }

    #[test]
    fn ip_next_hops_need_an_mx_host_with_that_address() {
        let w = World::new();
        let e = entry("friend.example", "[192.0.2.7]");
        let mut f = hosts(&["mail.me.example", "mail.friend.example"]);
        f.ip_listed = Ok(true);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
            EntryState::Accepted
        );
        f.ip_listed = Ok(false);
        let (s, r) = judge(&e, &w.own(VerifyMx::Require), Some(&f), None);
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().contains("192.0.2.7"));
    }
}
