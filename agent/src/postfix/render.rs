//! Rendering the mxfed maps: pure functions from accepted entries to map
//! text, and back from map text to entries (for diffs of what is in force).
//!
//! - `transport`: `domain relay:[IP]` for each address the next hop was
//!   checked at, comma-separated (with `:port` when set). The brackets turn
//!   off MX lookup, so the backup never sends mail back to itself (Postfix
//!   STANDARD_CONFIGURATION_README, "backup MX host"), and the addresses
//!   mean a name re-pointed later cannot redirect the relay. An entry with
//!   no checked addresses yet holds its mail ([`NOT_CHECKED_YET`]).
//! - `relay_domains`: `domain OK`.
//! - `relay_recipients`: `@domain OK`, for `relay_recipient_maps`, so that
//!   every recipient of a backed-up domain is accepted.

use std::collections::BTreeMap;
use std::net::IpAddr;

use mxfed_proto::domain::{Domain, NextHop};

/// File names of the maps inside `<postfix_config_dir>/mxfed/`.
pub const TRANSPORT: &str = "transport";
/// See [`TRANSPORT`].
pub const RELAY_DOMAINS: &str = "relay_domains";
/// See [`TRANSPORT`].
pub const RELAY_RECIPIENTS: &str = "relay_recipients";
/// The addresses of friends' mail hosts (a `cidr:` table, `IP permit`),
/// for `postscreen_access_list` and the admin's own whitelists.
pub const FRIENDS: &str = "friends";
/// Per next-hop address where the friend's agent was seen: pin the
/// friend's server keys (`fingerprint`; `smtp_tls_policy_maps`); other
/// friends' addresses get `may` where this Postfix's default is no TLS.
pub const TLS_POLICY: &str = "tls_policy";

const HEADER: &str = "# Written by mxfed from friends' accepted domain lists. Do not edit:\n# changes are overwritten. See `mxfed status` and `mxfed history`.\n";

/// One domain to relay, and where to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The friend it is relayed for, by name (whose [`Pins`] apply).
    pub peer: String,
    /// The backed-up domain.
    pub domain: Domain,
    /// The friend's declared next hop for it.
    pub next_hop: NextHop,
    /// The addresses the next hop was checked at. Postfix relays to these
    /// (with the next hop's port), so a name that resolves elsewhere later
    /// cannot turn the relay against anyone. Empty only for entries judged
    /// before addresses were kept: their mail is held until a re-check.
    pub addrs: Vec<IpAddr>,
    /// The domain's valid recipients as its owner publishes them
    /// (addresses, or `@domain` for a catch-all); `None`: every recipient.
    pub recipients: Option<Vec<String>>,
}

/// The three maps, as file contents and as key/value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayMaps {
    /// (file name, key → value), in file-name order.
    pub maps: Vec<(&'static str, BTreeMap<String, String>)>,
}

/// Renders the maps for `routes` (duplicates by domain: the first wins).
pub fn render_maps(routes: &[Route]) -> RelayMaps {
    let mut transport = BTreeMap::new();
    let mut relay = BTreeMap::new();
    let mut recipients = BTreeMap::new();
    for r in routes {
        let d = r.domain.as_str().to_string();
        if transport.contains_key(&d) {
            continue;
        }
        transport.insert(d.clone(), transport_value(r));
        relay.insert(d.clone(), "OK".to_string());
        match &r.recipients {
            Some(items) if !items.is_empty() => {
                for item in items {
                    recipients.insert(item.clone(), "OK".to_string());
                }
            }
            _ => {
                recipients.insert(format!("@{d}"), "OK".to_string());
            }
        }
    }
    RelayMaps {
        maps: vec![
            (RELAY_DOMAINS, relay),
            (RELAY_RECIPIENTS, recipients),
            (TRANSPORT, transport),
        ],
    }
}

/// What the TLS policy map is made of: a friend's next hop and its
/// checked addresses.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'r> {
    /// The friend's name.
    pub peer: &'r str,
    /// The next hop (for its port).
    pub next_hop: &'r NextHop,
    /// Its checked addresses.
    pub addrs: &'r [IpAddr],
}

impl Route {
    /// The route's next hop, for [`tls_policy`].
    pub fn hop(&self) -> Hop<'_> {
        Hop {
            peer: &self.peer,
            next_hop: &self.next_hop,
            addrs: &self.addrs,
        }
    }
}

/// The relay maps' texts rendered route by route, as [`render_maps`] and
/// [`map_text`] would write them, without holding a map of every route:
/// routes must come in domain order (duplicates: the first wins), and only
/// the recipients map is sorted at the end.
#[derive(Debug)]
pub struct MapRenderer {
    relay: String,
    transport: String,
    /// The recipients map's lines, unsorted, one after the other; and
    /// where each is (start, length): not a `String` per line, which for
    /// 100,000 domains was 100,000 small allocations.
    recipients: String,
    recipient_lines: Vec<(usize, usize)>,
    last: Option<Domain>,
    count: usize,
}

impl Default for MapRenderer {
    fn default() -> Self {
        Self {
            relay: HEADER.to_string(),
            transport: HEADER.to_string(),
            recipients: String::new(),
            recipient_lines: Vec::new(),
            last: None,
            count: 0,
        }
    }
}

impl MapRenderer {
    /// Adds one route; routes come in domain order.
    pub fn push(&mut self, r: &Route) {
        if self.last.as_ref() == Some(&r.domain) {
            return;
        }
        let d = r.domain.as_str();
        for (text, value) in [
            (&mut self.relay, "OK".to_string()),
            (&mut self.transport, transport_value(r)),
        ] {
            text.push_str(d);
            text.push(' ');
            text.push_str(&value);
            text.push('\n');
        }
        let mut line = |key: &[&str]| {
            let start = self.recipients.len();
            key.iter().for_each(|k| self.recipients.push_str(k));
            self.recipients.push_str(" OK\n");
            self.recipient_lines
                .push((start, self.recipients.len() - start));
        };
        match &r.recipients {
            Some(items) if !items.is_empty() => items.iter().for_each(|i| line(&[i])),
            _ => line(&["@", d]),
        }
        self.last = Some(r.domain.clone());
        self.count += 1;
    }

    /// The number of domains pushed (the transport map's entries).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The texts of [`RELAY_DOMAINS`], [`RELAY_RECIPIENTS`] and [`TRANSPORT`].
    pub fn finish(mut self) -> Vec<(&'static str, String)> {
        // Sorted by key, as a map would be: each line is `key OK`, and no
        // key has a space.
        let lines = &self.recipients;
        let line = |&(start, len): &(usize, usize)| &lines[start..start + len];
        self.recipient_lines
            .sort_unstable_by(|a, b| line(a).cmp(line(b)));
        self.recipient_lines.dedup_by(|a, b| line(a) == line(b));
        let mut recipients = String::with_capacity(
            HEADER.len()
                + self
                    .recipient_lines
                    .iter()
                    .map(|(_, len)| len)
                    .sum::<usize>(),
        );
        recipients.push_str(HEADER);
        for l in &self.recipient_lines {
            recipients.push_str(line(l));
        }
        vec![
            (RELAY_DOMAINS, self.relay),
            (RELAY_RECIPIENTS, recipients),
            (TRANSPORT, self.transport),
        ]
    }
}

/// A friend's server keys, as its owner's agent read them from its own
/// Postfix, and where that agent was seen (so where those keys are).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    /// Fingerprints to accept (`AB:CD:...`).
    pub fingerprints: Vec<String>,
    /// Addresses the friend's authenticated agent was seen at lately.
    pub seen: Vec<IpAddr>,
}

/// A next-hop address as the transport map writes it and the TLS policy
/// map keys it: `[IP]`, or `[IP]:port` where the next hop names a port.
pub fn address_key(ip: &IpAddr, next_hop: &NextHop) -> String {
    match next_hop.port() {
        Some(port) => format!("[{ip}]:{port}"),
        None => format!("[{ip}]"),
    }
}

/// The TLS policy map for `routes`: each next-hop address exactly as the
/// transport map writes it (`[IP]` or `[IP]:port`), with `fingerprint` and
/// a `match=` per fingerprint in `pins` (by friend), where the friend's
/// agent was seen: the keys it publishes are those of the Postfix beside
/// it, so a next hop elsewhere (a domain proven by its TXT record, say)
/// would be held to keys it does not have. Routes without keys, and
/// addresses where the route's friend was not seen, have no say: so a
/// friend can pin only a server its own agent runs on, and cannot unpin
/// another's. Where two friends seen at one address publish different
/// keys, that address gets `encrypt` ([`CONFLICT`]). Addresses nobody pins
/// get `may` where `at_least_may` (this Postfix's own
/// `smtp_tls_security_level` is empty or `none`), else no entry (the
/// admin's own, stricter policy applies). `pinnable` false (this Postfix
/// does not compare SHA-256 fingerprints) writes no pins at all.
pub fn tls_policy<'r>(
    routes: impl Iterator<Item = Hop<'r>> + Clone,
    pins: &std::collections::HashMap<String, Pins>,
    pinnable: bool,
    at_least_may: bool,
) -> BTreeMap<String, String> {
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for r in routes.clone() {
        let pin = pins
            .get(r.peer)
            .filter(|p| pinnable && !p.fingerprints.is_empty());
        let Some(pin) = pin else {
            continue; // no keys: no opinion on any address
        };
        let matches: Vec<String> = pin
            .fingerprints
            .iter()
            .map(|f| format!("match={f}"))
            .collect();
        let value = format!("fingerprint {}", matches.join(" "));
        for ip in r.addrs {
            let seen = pin
                .seen
                .iter()
                .any(|s| s.to_canonical() == ip.to_canonical());
            if !seen {
                continue; // its agent is not there: no opinion
            }
            let key = address_key(ip, r.next_hop);
            match wanted.get(&key) {
                None => {
                    wanted.insert(key, value.clone());
                }
                // Two friends' agents seen at one address with different
                // keys: TLS, but neither may hold the other to its key.
                Some(v) if *v != value => {
                    wanted.insert(key, CONFLICT.to_string());
                }
                Some(_) => {}
            }
        }
    }
    if at_least_may {
        for r in routes {
            for ip in r.addrs {
                wanted
                    .entry(address_key(ip, r.next_hop))
                    .or_insert_with(|| OPPORTUNISTIC.to_string());
            }
        }
    }
    wanted
}

/// The TLS policy for a friend's next-hop address nobody pins, where this
/// Postfix's own default is weaker (no TLS at all).
pub const OPPORTUNISTIC: &str = "may";

/// The TLS policy for an address two friends' pins disagree on.
pub const CONFLICT: &str = "encrypt";

impl RelayMaps {
    /// Adds the [`TLS_POLICY`] map.
    pub fn with_tls(mut self, policy: BTreeMap<String, String>) -> Self {
        self.maps.push((TLS_POLICY, policy));
        self
    }

    /// Adds the [`FRIENDS`] map: each address `permit`.
    pub fn with_friends(mut self, addrs: &[IpAddr]) -> Self {
        let friends = addrs
            .iter()
            .map(|ip| (ip.to_canonical().to_string(), "permit".to_string()))
            .collect();
        self.maps.push((FRIENDS, friends));
        self
    }
}

/// What the transport map says for an entry judged before addresses were
/// kept, until a re-check pins them: hold the mail (accepted, queued, and
/// retried), never relay it to a name nobody checked.
pub const NOT_CHECKED_YET: &str = "retry:4.4.1 mxfed has not checked this next hop's addresses yet";

/// `relay:` and the next hop: each checked address in brackets (no MX
/// look-up) with the next hop's port, comma-separated (Postfix 3.5 and
/// later try them in turn).
fn transport_value(r: &Route) -> String {
    if r.addrs.is_empty() {
        return NOT_CHECKED_YET.to_string();
    }
    let hops: Vec<String> = r
        .addrs
        .iter()
        .map(|ip| address_key(ip, &r.next_hop))
        .collect();
    format!("relay:{}", hops.join(", "))
}

/// The text of a map file.
pub fn map_text(entries: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(HEADER.len() + entries.len() * 48);
    out.push_str(HEADER);
    for (k, v) in entries {
        out.push_str(k);
        out.push(' ');
        out.push_str(v);
        out.push('\n');
    }
    out
}

/// Parses a map file as written by [`map_text`] (comments and blank lines skipped).
pub fn parse_map(text: &str) -> BTreeMap<String, String> {
    map_lines(text)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// At most this many changes of each kind are listed in a [`MapDiff`];
/// beyond that they are only counted (a first sync adds 100,000 domains,
/// and the history and logs want the sum, not the list).
pub const LISTED: usize = 1000;

/// What changes between two versions of a map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapDiff {
    /// Keys in the map afterwards but not before: (key, new value); the
    /// first [`LISTED`].
    pub added: Vec<(String, String)>,
    /// Keys in the map before but not afterwards: (key, old value).
    pub removed: Vec<(String, String)>,
    /// Keys whose value changes: (key, old, new).
    pub changed: Vec<(String, String, String)>,
    /// How many keys are added, removed and changed in all.
    pub counts: DiffCounts,
}

/// The sizes of a [`MapDiff`], listed or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffCounts {
    /// See [`MapDiff::added`].
    pub added: usize,
    /// See [`MapDiff::removed`].
    pub removed: usize,
    /// See [`MapDiff::changed`].
    pub changed: usize,
}

impl MapDiff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.counts == DiffCounts::default()
    }

    /// Whether every change is listed (none beyond [`LISTED`]).
    pub fn is_complete(&self) -> bool {
        self.counts.added == self.added.len()
            && self.counts.removed == self.removed.len()
            && self.counts.changed == self.changed.len()
    }

    fn add(&mut self, k: &str, v: &str) {
        self.counts.added += 1;
        if self.added.len() < LISTED {
            self.added.push((k.to_string(), v.to_string()));
        }
    }

    fn remove(&mut self, k: &str, v: &str) {
        self.counts.removed += 1;
        if self.removed.len() < LISTED {
            self.removed.push((k.to_string(), v.to_string()));
        }
    }

    fn change(&mut self, k: &str, old: &str, new: &str) {
        self.counts.changed += 1;
        if self.changed.len() < LISTED {
            self.changed
                .push((k.to_string(), old.to_string(), new.to_string()));
        }
    }

    /// One line per change listed, `+`, `-` or `~` first, and a last line
    /// with the number of changes not listed, if any.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (d, v) in &self.added {
            out.push(format!("+ {d} {v}"));
        }
        for (d, v) in &self.removed {
            out.push(format!("- {d} {v}"));
        }
        for (d, old, new) in &self.changed {
            out.push(format!("~ {d} {old} -> {new}"));
        }
        let unlisted = self.counts.added + self.counts.removed + self.counts.changed
            - self.added.len()
            - self.removed.len()
            - self.changed.len();
        if unlisted > 0 {
            out.push(format!("... and {unlisted} more changes"));
        }
        out
    }
}

/// The entries of a map file's text (or of `postmap -q -` output), in
/// order (comments and blank lines skipped).
pub(crate) fn map_lines(text: &str) -> impl Iterator<Item = (&str, &str)> + Clone {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            Some((k, v.trim()))
        })
}

/// The new text of a map whose entries for some keys change: `before`'s
/// entries whose key is not `owned` stay as they are, those that are give
/// way to `wanted` (which holds every entry wanted for the owned keys, and
/// no other). Returns the text, the difference, and the number of entries
/// in the text. Entries stay in key order (as [`map_text`] writes them), so
/// the text is the one a whole render would write; only the owned keys are
/// compared, so a change to a few keys of 100,000 costs one pass over the
/// text, not a render of every entry.
pub fn patch_text(
    before: &str,
    owned: impl Fn(&str) -> bool,
    wanted: &BTreeMap<String, String>,
) -> (String, MapDiff, usize) {
    let mut d = MapDiff::default();
    let mut out = String::with_capacity(before.len() + wanted.len() * 48);
    out.push_str(HEADER);
    let mut count = 0usize;
    let mut line = |out: &mut String, k: &str, v: &str| {
        out.push_str(k);
        out.push(' ');
        out.push_str(v);
        out.push('\n');
        count += 1;
    };
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut next = wanted.iter().peekable();
    for (k, old) in map_lines(before) {
        if owned(k) {
            if !seen.insert(k) {
                continue;
            }
            match wanted.get(k) {
                None => d.remove(k, old),
                Some(new) if new != old => d.change(k, old, new),
                Some(_) => {}
            }
            continue;
        }
        while let Some((wk, wv)) = next.next_if(|(wk, _)| wk.as_str() < k) {
            line(&mut out, wk, wv);
        }
        line(&mut out, k, old);
    }
    for (wk, wv) in next {
        line(&mut out, wk, wv);
    }
    for (k, v) in wanted {
        if !seen.contains(k.as_str()) {
            d.add(k, v);
        }
    }
    (out, d, count)
}

/// [`diff_text`] to a map given as its text.
pub fn diff_texts(before: &str, after: &str) -> MapDiff {
    let wanted: std::collections::HashMap<&str, &str> = map_lines(after).collect();
    let mut d = MapDiff::default();
    let mut kept: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut gone: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (k, old) in map_lines(before) {
        match wanted.get(k) {
            None => {
                if gone.insert(k) {
                    d.remove(k, old);
                }
            }
            Some(new) => {
                // A key written twice counts once, as Postfix reads it.
                if kept.insert(k) && new != &old {
                    d.change(k, old, new);
                }
            }
        }
    }
    for (k, v) in map_lines(after) {
        if !kept.contains(k) {
            d.add(k, v);
        }
    }
    d
}

/// The difference from a map file's text (as [`map_text`] writes it) to
/// `after`, without holding the text's entries apart from it.
pub fn diff_text(before: &str, after: &BTreeMap<String, String>) -> MapDiff {
    let mut d = MapDiff::default();
    let mut kept: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut gone: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (k, old) in map_lines(before) {
        match after.get_key_value(k) {
            None => {
                if gone.insert(k) {
                    d.remove(k, old);
                }
            }
            Some((key, new)) => {
                // A key written twice counts once, as Postfix reads it.
                if kept.insert(key.as_str()) && new != old {
                    d.change(k, old, new);
                }
            }
        }
    }
    for (k, v) in after {
        if !kept.contains(k.as_str()) {
            d.add(k, v);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route as judged: an IP next hop at its address, a name at a
    /// documentation address of its own.
    fn route(d: &str, hop: &str) -> Route {
        let next_hop = NextHop::parse(hop).unwrap();
        let addr: IpAddr = match next_hop.host() {
            mxfed_proto::domain::Host::Ip(ip) => *ip,
            mxfed_proto::domain::Host::Name(n) => {
                format!("192.0.2.{}", n.as_str().len()).parse().unwrap()
            }
        };
        Route {
            peer: d.to_string(),
            domain: Domain::parse(d).unwrap(),
            next_hop,
            addrs: vec![addr],
            recipients: None,
        }
    }

    /// Golden output: the friends map, each address once, `permit`.
    #[test]
    fn golden_friends_map() {
        let addrs: Vec<IpAddr> = ["198.51.100.7", "2001:db8::7", "::ffff:198.51.100.7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let maps = render_maps(&[]).with_friends(&addrs);
        let (name, map) = maps.maps.last().unwrap();
        assert_eq!(*name, FRIENDS);
        assert_eq!(
            map_text(map),
            format!("{HEADER}198.51.100.7 permit\n2001:db8::7 permit\n"),
            "an IPv4-mapped address is the IPv4 one"
        );
    }

    #[test]
    fn tls_pins_each_checked_address_where_its_friend_runs() {
        let fp = |c: &str| [c; 32].join(":");
        let pin = |fps: Vec<String>, seen: &[&str]| Pins {
            fingerprints: fps,
            seen: seen.iter().map(|ip| ip.parse().unwrap()).collect(),
        };
        let mut pins = std::collections::HashMap::new();
        pins.insert("a.example".to_string(), pin(vec![fp("AA")], &["192.0.2.1"]));
        pins.insert(
            "b.example".to_string(),
            pin(vec![fp("BB"), fp("BC")], &["192.0.2.2"]),
        );
        pins.insert(
            "evil.example".to_string(),
            pin(vec![fp("EE")], &["192.0.2.1"]),
        );
        // Its next hop is not where its agent runs (a TXT-proven domain).
        pins.insert(
            "elsewhere.example".to_string(),
            pin(vec![fp("CC")], &["192.0.2.9"]),
        );
        let at = |d: &str, hop: &str, ip: &str| Route {
            addrs: vec![ip.parse().unwrap()],
            ..route(d, hop)
        };
        let routes = [
            at("a.example", "mail.a.example", "192.0.2.1"),
            at("b.example", "mail.b.example:2525", "192.0.2.2"),
            at("nokey.example", "mail.n.example", "192.0.2.3"),
            at("elsewhere.example", "mx.hosted.example", "192.0.2.4"),
            // Another friend points at a's address with its own key.
            at("evil.example", "mail.a.example", "192.0.2.1"),
        ];
        let map = tls_policy(routes.iter().map(Route::hop), &pins, true, false);
        assert_eq!(
            map,
            BTreeMap::from([
                (
                    // Both a's and evil's agents were seen there.
                    "[192.0.2.1]".to_string(),
                    CONFLICT.to_string()
                ),
                (
                    "[192.0.2.2]:2525".to_string(),
                    format!("fingerprint match={} match={}", fp("BB"), fp("BC"))
                )
            ]),
            "two pins at one address: encrypt; no key, or keys of an agent not seen there: no entry"
        );
        // A friend whose agent is elsewhere, or that has no keys, cannot
        // unpin a's server by pointing a next hop at it.
        pins.insert(
            "squat.example".to_string(),
            pin(vec![fp("FF")], &["192.0.2.50"]),
        );
        let squat = [
            at("a.example", "mail.a.example", "192.0.2.1"),
            at("squat.example", "mail.a.example", "192.0.2.1"),
            at("nokey.example", "mail.a.example", "192.0.2.1"),
        ];
        assert_eq!(
            tls_policy(squat.iter().map(Route::hop), &pins, true, false),
            BTreeMap::from([(
                "[192.0.2.1]".to_string(),
                format!("fingerprint match={}", fp("AA"))
            )])
        );
        let alone = tls_policy(routes[..1].iter().map(Route::hop), &pins, true, false);
        assert_eq!(
            alone["[192.0.2.1]"],
            format!("fingerprint match={}", fp("AA"))
        );
        assert!(
            tls_policy(routes[..1].iter().map(Route::hop), &pins, false, false).is_empty(),
            "not pinnable"
        );
        // Where this Postfix would send in plain text, unpinned friends
        // get `may` at least; pins and conflicts stay.
        let may = tls_policy(routes.iter().map(Route::hop), &pins, true, true);
        assert_eq!(may["[192.0.2.3]"], OPPORTUNISTIC, "no key");
        assert_eq!(may["[192.0.2.4]"], OPPORTUNISTIC, "agent not seen there");
        assert_eq!(may["[192.0.2.1]"], CONFLICT);
        assert!(may["[192.0.2.2]:2525"].starts_with("fingerprint "));
    }

    #[test]
    fn a_domain_with_published_recipients_accepts_exactly_those() {
        let with = Route {
            recipients: Some(vec![
                "bob@friend.example".into(),
                "carol@friend.example".into(),
            ]),
            ..route("friend.example", "mail.friend.example")
        };
        let catch_all = Route {
            recipients: Some(vec!["@open.example".into()]),
            ..route("open.example", "mail.friend.example")
        };
        let maps = render_maps(&[
            with,
            catch_all,
            route("plain.example", "mail.friend.example"),
        ]);
        assert_eq!(
            map_text(&maps.maps[1].1),
            format!("{HEADER}@open.example OK\n@plain.example OK\nbob@friend.example OK\ncarol@friend.example OK\n")
        );
    }

    #[test]
    fn transport_relays_to_the_checked_addresses_with_the_port() {
        let pinned = |hop: &str, addrs: &[&str]| Route {
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ..route("friend.example", hop)
        };
        let value = |r: Route| render_maps(&[r]).maps[2].1["friend.example"].clone();
        assert_eq!(
            value(pinned("mail.friend.example", &["192.0.2.7"])),
            "relay:[192.0.2.7]"
        );
        assert_eq!(
            value(pinned(
                "mail.friend.example:2525",
                &["192.0.2.7", "2001:db8::7"]
            )),
            "relay:[192.0.2.7]:2525, [2001:db8::7]:2525"
        );
        // Not yet checked (judged before addresses were kept): held, never
        // relayed to the name.
        assert_eq!(value(pinned("mail.friend.example", &[])), NOT_CHECKED_YET);
    }

    /// Golden output: exactly what Postfix gets.
    #[test]
    fn golden_maps() {
        let maps = render_maps(&[
            route("friend.example", "mail.friend.example"),
            route("bücher.example", "mail.friend.example:2525"),
            route("ip.example", "[192.0.2.7]:25"),
            route("v6.example", "[2001:db8::1]"),
        ]);
        let text: Vec<(&str, String)> = maps.maps.iter().map(|(n, m)| (*n, map_text(m))).collect();
        assert_eq!(
            text[2],
            (
                "transport",
                format!(
                    "{HEADER}friend.example relay:[192.0.2.19]\nip.example relay:[192.0.2.7]:25\nv6.example relay:[2001:db8::1]\nxn--bcher-kva.example relay:[192.0.2.19]:2525\n"
                )
            )
        );
        assert_eq!(
            text[0],
            (
                "relay_domains",
                format!("{HEADER}friend.example OK\nip.example OK\nv6.example OK\nxn--bcher-kva.example OK\n")
            )
        );
        assert_eq!(
            text[1],
            (
                "relay_recipients",
                format!("{HEADER}@friend.example OK\n@ip.example OK\n@v6.example OK\n@xn--bcher-kva.example OK\n")
            )
        );
    }

    /// Patching the text in force for a few domains writes exactly what a
    /// whole render of the new routes writes, and says what changed.
    #[test]
    fn patching_a_few_domains_writes_what_a_whole_render_writes() {
        let mut routes: Vec<Route> = (0..200)
            .map(|i| route(&format!("d{i:03}.example"), "mail.x.example"))
            .collect();
        routes[7].recipients = Some(vec!["a@d007.example".into(), "b@d007.example".into()]);
        let before = render_maps(&routes);
        // d005 gone, d050 re-targeted, d007 with other recipients, a new
        // first and last domain.
        let mut after = routes.clone();
        after.retain(|r| r.domain.as_str() != "d005.example");
        after[49] = route("d050.example", "mail.yy.example");
        after[6].recipients = Some(vec!["b@d007.example".into(), "c@d007.example".into()]);
        after.push(route("a-first.example", "mail.x.example"));
        after.push(route("z-last.example", "mail.x.example"));
        after.sort_by(|a, b| a.domain.cmp(&b.domain));
        let whole = render_maps(&after);
        let touched = [
            "d005.example",
            "d050.example",
            "d007.example",
            "a-first.example",
            "z-last.example",
        ];
        let few: Vec<Route> = after
            .iter()
            .filter(|r| touched.contains(&r.domain.as_str()))
            .cloned()
            .collect();
        let partial = render_maps(&few);
        for (i, (name, wanted)) in partial.maps.iter().enumerate() {
            let owned = |k: &str| touched.contains(&k.rsplit_once('@').map_or(k, |(_, d)| d));
            let (text, diff, count) = patch_text(&map_text(&before.maps[i].1), owned, wanted);
            assert_eq!(text, map_text(&whole.maps[i].1), "{name}");
            assert_eq!(count, whole.maps[i].1.len(), "{name}");
            assert_eq!(
                diff,
                diff_text(&map_text(&before.maps[i].1), &whole.maps[i].1),
                "{name}"
            );
        }
        // Nothing changed for the domains owned: the same text, no change.
        let same = render_maps(&routes[..3]);
        let owned = |k: &str| ["d000.example", "d001.example", "d002.example"].contains(&k);
        let (text, diff, _) = patch_text(&map_text(&before.maps[2].1), owned, &same.maps[2].1);
        assert_eq!(text, map_text(&before.maps[2].1));
        assert!(diff.is_empty());
    }

    /// Rendered route by route, the texts are those of the maps rendered
    /// whole; and a diff of texts says what a diff against the map says.
    #[test]
    fn maps_rendered_route_by_route_are_the_maps_rendered_whole() {
        let mut routes: Vec<Route> = (0..300)
            .map(|i| {
                route(
                    &format!("d{i:03}.example"),
                    &format!("mx{}.x.example", i % 7),
                )
            })
            .collect();
        routes[3].recipients = Some(vec!["0zed@d003.example".into(), "b@d003.example".into()]);
        routes[9].recipients = Some(vec!["a@d009.example".into()]);
        routes.push(routes[5].clone());
        routes.sort_by(|a, b| a.domain.cmp(&b.domain));
        let whole = render_maps(&routes);
        let mut r = MapRenderer::default();
        routes.iter().for_each(|x| r.push(x));
        assert_eq!(r.count(), 300);
        let texts = r.finish();
        for ((name, text), (wname, wmap)) in texts.iter().zip(&whole.maps) {
            assert_eq!(name, wname);
            assert_eq!(text, &map_text(wmap), "{name}");
        }
        let before = render_maps(&routes[50..250]);
        for ((_, text), (_, old)) in texts.iter().zip(&before.maps) {
            let new = parse_map(text);
            assert_eq!(
                diff_texts(&map_text(old), text),
                diff_text(&map_text(old), &new)
            );
        }
    }

    #[test]
    fn empty_maps_are_just_the_header() {
        for (_, m) in render_maps(&[]).maps {
            assert_eq!(map_text(&m), HEADER);
        }
    }

    #[test]
    fn every_transport_entry_points_at_its_own_next_hop() {
        let routes: Vec<Route> = (0..50)
            .map(|i| {
                route(
                    &format!("d{i}.example"),
                    &format!("mx{}.friend{}.example", i % 3, i % 7),
                )
            })
            .collect();
        let maps = render_maps(&routes);
        let transport = &maps.maps[2].1;
        for r in &routes {
            let port = r
                .next_hop
                .port()
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            assert_eq!(
                transport[r.domain.as_str()],
                format!("relay:[{}]{port}", r.addrs[0])
            );
        }
        assert_eq!(transport.len(), routes.len());
    }

    #[test]
    fn parse_reads_back_what_render_wrote_and_diff_says_what_changed() {
        let before = render_maps(&[
            route("a.example", "mail.x.example"),
            route("b.example", "mail.x.example"),
        ]);
        let after = render_maps(&[
            route("b.example", "mail.yy.example"),
            route("c.example", "mail.x.example"),
        ]);
        let b = parse_map(&map_text(&before.maps[2].1));
        assert_eq!(b, before.maps[2].1);
        let d = diff_text(&map_text(&b), &after.maps[2].1);
        // mail.x.example at 192.0.2.14, mail.yy.example at 192.0.2.15.
        assert_eq!(
            d.added,
            vec![("c.example".into(), "relay:[192.0.2.14]".into())]
        );
        assert_eq!(
            d.removed,
            vec![("a.example".into(), "relay:[192.0.2.14]".into())]
        );
        assert_eq!(
            d.changed,
            vec![(
                "b.example".into(),
                "relay:[192.0.2.14]".into(),
                "relay:[192.0.2.15]".into()
            )]
        );
        assert!(diff_text(&map_text(&b), &b).is_empty());
        assert!(d.is_complete());
    }

    #[test]
    fn a_big_diff_is_counted_in_full_and_listed_in_part() {
        let after: BTreeMap<String, String> = (0..LISTED + 5)
            .map(|i| (format!("d{i:05}.example"), "OK".to_string()))
            .collect();
        let before = "# header\nold.example OK\nd00000.example OLD\n";
        let d = diff_text(before, &after);
        assert_eq!(
            d.counts,
            DiffCounts {
                added: LISTED + 4,
                removed: 1,
                changed: 1
            }
        );
        assert!(!d.is_complete());
        assert_eq!(d.added.len(), LISTED);
        let lines = d.lines();
        assert_eq!(lines.len(), LISTED + 3);
        assert_eq!(lines.last().unwrap(), "... and 4 more changes");
    }
}
