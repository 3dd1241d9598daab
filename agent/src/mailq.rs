//! Parsing `postqueue -j` (pure): one JSON object per line, one message each.
//!
//! [`QueueTally`] is fed the lines one at a time, so a queue of millions of
//! messages is never held in memory; it keeps counts only for the domains
//! it was asked to watch (the friends' accepted domains). Unknown members
//! are ignored (newer Postfix versions add some), and both spellings of the
//! expiry flag, `forced_expire` and the older `force_expired`, are read.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

/// Delay reasons kept per domain.
pub const TOP_REASONS: usize = 3;

/// One queued message, borrowing from the line where it can.
#[derive(Debug, Deserialize)]
pub struct QueueMessage<'a> {
    /// `incoming`, `active`, `deferred`, `hold`, ...
    #[serde(borrow)]
    pub queue_name: Cow<'a, str>,
    /// Postfix queue ID.
    #[serde(borrow, default)]
    pub queue_id: Cow<'a, str>,
    /// Unix seconds.
    #[serde(default)]
    pub arrival_time: i64,
    /// Bytes.
    #[serde(default)]
    pub message_size: u64,
    /// Whether `postsuper -e` forced it to expire.
    #[serde(default, alias = "force_expired")]
    pub forced_expire: bool,
    /// Recipients still to be delivered.
    #[serde(borrow, default)]
    pub recipients: Vec<QueueRecipient<'a>>,
}

/// One recipient of a queued message.
#[derive(Debug, Deserialize)]
pub struct QueueRecipient<'a> {
    /// The address, possibly with a quoted local part.
    #[serde(borrow)]
    pub address: Cow<'a, str>,
    /// Why delivery was deferred, if it was.
    #[serde(borrow, default)]
    pub delay_reason: Option<Cow<'a, str>>,
}

/// Parses one line of `postqueue -j`.
pub fn parse_line(line: &str) -> Result<QueueMessage<'_>, serde_json::Error> {
    serde_json::from_str(line)
}

/// The domain of an address as mxfed's maps and lists key it: after the
/// last `@`, lower-cased, without a trailing dot, a UTF-8 (SMTPUTF8) name
/// as its A-label (one that is not a valid name stays as written, lower
/// case). `None` for an address without a domain.
pub fn domain_of(address: &str) -> Option<String> {
    let (_, d) = address.rsplit_once('@')?;
    let d = d.trim_end_matches('.');
    if d.is_empty() {
        return None;
    }
    if !d.is_ascii() {
        if let Ok(name) = mxfed_proto::domain::Domain::parse(d) {
            return Some(name.as_str().to_string());
        }
    }
    Some(d.to_ascii_lowercase())
}

/// What is queued for one domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainDepth {
    /// Messages with at least one recipient in the domain.
    pub messages: u64,
    /// Recipients in the domain.
    pub recipients: u64,
    /// Sum of those messages' sizes.
    pub bytes: u64,
    /// Unix seconds of the oldest of those messages.
    pub oldest_arrival: Option<i64>,
    /// Unix seconds of the newest of those messages.
    pub newest_arrival: Option<i64>,
    /// Messages per queue name.
    pub by_queue: BTreeMap<String, u64>,
    /// Delay reasons with how many recipients have them.
    pub reasons: HashMap<String, u64>,
}

impl DomainDepth {
    fn merge(&mut self, other: &DomainDepth) {
        self.messages += other.messages;
        self.recipients += other.recipients;
        self.bytes += other.bytes;
        self.oldest_arrival = match (self.oldest_arrival, other.oldest_arrival) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.newest_arrival = self.newest_arrival.max(other.newest_arrival);
        for (q, n) in &other.by_queue {
            *self.by_queue.entry(q.clone()).or_default() += n;
        }
        for (r, n) in &other.reasons {
            self.add_reason(r, *n);
        }
    }

    /// Counts `n` recipients delayed for `reason` (already cut). At most
    /// [`MAX_DISTINCT_REASONS`] are kept, by the space-saving algorithm: a
    /// new reason takes the place of the least counted one and inherits its
    /// count, so a reason common anywhere in the queue is never crowded out
    /// by one-off reasons (counts are exact until the cap is reached, then
    /// over by at most the smallest kept count; their sum stays exact).
    fn add_reason(&mut self, reason: &str, n: u64) {
        if let Some(c) = self.reasons.get_mut(reason) {
            *c += n;
            return;
        }
        let mut base = 0;
        if self.reasons.len() >= MAX_DISTINCT_REASONS {
            let least = self
                .reasons
                .iter()
                .min_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                .map(|(r, c)| (r.clone(), *c));
            if let Some((r, c)) = least {
                self.reasons.remove(&r);
                base = c;
            }
        }
        self.reasons.insert(reason.to_string(), base + n);
    }

    /// The most common delay reasons, most frequent first.
    pub fn top_reasons(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.reasons.iter().map(|(r, c)| (r.clone(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

/// Which friend each relayed domain belongs to, built once for a set of
/// accepted routes and shared by every queue scan until that set changes
/// (so a scan of an empty queue costs nothing per domain relayed).
///
/// Compact, as it is kept while idle: the domains in one string, and a
/// sorted index into it (about 23 bytes a domain, in three allocations,
/// where a hash map of boxed names took over 100).
#[derive(Debug, Default)]
pub struct Owners {
    /// Every domain (lower-case), one after another.
    text: String,
    /// Per domain: its start and length in `text`, and an index into
    /// `names`; sorted by domain once [`Self::shrink_to_fit`] has run.
    index: Vec<(u32, u32, u32)>,
    names: Vec<String>,
    /// Some domain was added out of order: sort before looking up.
    unsorted: bool,
}

impl Owners {
    /// From `(peer, domain)` pairs; a domain named twice keeps the last.
    pub fn new(routes: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut o = Owners::default();
        for (peer, domain) in routes {
            o.add(&peer, &domain);
        }
        o.shrink_to_fit();
        o
    }

    fn domain_at(&self, (start, len, _): (u32, u32, u32)) -> &str {
        &self.text[start as usize..(start + len) as usize]
    }

    /// Adds one `(peer, domain)`, best in domain order (as the store reads
    /// routes); call [`Self::shrink_to_fit`] after the last.
    pub fn add(&mut self, peer: &str, domain: &str) {
        let (Ok(start), Ok(len), Ok(_)) = (
            u32::try_from(self.text.len()),
            u32::try_from(domain.len()),
            u32::try_from(self.text.len() + domain.len()),
        ) else {
            // Over 4 GB of names: not a list anyone relays for.
            return;
        };
        // A federation has a few friends: a look-up among them beats a map.
        let owner = match self.names.iter().position(|n| n == peer) {
            Some(i) => i,
            None => {
                self.names.push(peer.to_string());
                self.names.len() - 1
            }
        } as u32;
        if let Some(last) = self.index.last() {
            if self.domain_at(*last) >= domain {
                self.unsorted = true;
            }
        }
        self.text.push_str(domain);
        self.index.push((start, len, owner));
    }

    /// Sorts (a domain named twice keeps the last) and gives back what the
    /// adds left spare.
    pub fn shrink_to_fit(&mut self) {
        if self.unsorted {
            let mut index = std::mem::take(&mut self.index);
            // Stable: of a domain named twice, the last added stays last.
            index.sort_by(|a, b| self.domain_at(*a).cmp(self.domain_at(*b)));
            let mut kept: Vec<(u32, u32, u32)> = Vec::with_capacity(index.len());
            for i in index {
                match kept.last_mut() {
                    Some(last) if self.domain_at(*last) == self.domain_at(i) => *last = i,
                    _ => kept.push(i),
                }
            }
            self.index = kept;
            self.unsorted = false;
        }
        self.text.shrink_to_fit();
        self.index.shrink_to_fit();
    }

    /// The friend `domain` (lower-case) is relayed for.
    pub fn owner(&self, domain: &str) -> Option<&str> {
        debug_assert!(!self.unsorted, "Owners::shrink_to_fit was not called");
        self.index
            .binary_search_by(|i| self.domain_at(*i).cmp(domain))
            .ok()
            .map(|i| self.names[self.index[i].2 as usize].as_str())
    }

    /// The friends with at least one domain, in the order first seen.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Running totals for the watched domains.
#[derive(Debug, Default)]
pub struct QueueTally {
    /// Per watched domain that has mail.
    pub domains: HashMap<String, DomainDepth>,
    /// Lines that did not parse (counted, not fatal).
    pub bad_lines: u64,
    /// Messages seen in all.
    pub messages_seen: u64,
}

/// Reasons are cut to this many bytes so a hostile server name cannot bloat reports.
const MAX_REASON: usize = 200;
/// Distinct delay reasons kept per domain or peer (they can name each
/// recipient, so a big queue could otherwise hold one per recipient).
const MAX_DISTINCT_REASONS: usize = 100;

/// A delay reason, cut to [`MAX_REASON`] bytes.
fn cut(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

impl QueueTally {
    /// Adds one message, counting it for the domains `watched` says yes to.
    fn add(&mut self, m: &QueueMessage<'_>, watched: impl Fn(&str) -> bool) {
        self.messages_seen += 1;
        let here = one_message(m, |d| watched(&d).then_some(d));
        for (d, e) in here {
            self.domains.entry(d).or_default().merge(&e);
        }
    }

    /// The totals for one watched domain, if it has mail. (Per-peer totals,
    /// which count a message once across a peer's domains, are in [`PeerTally`].)
    pub fn domain(&self, d: &str) -> Option<&DomainDepth> {
        self.domains.get(d)
    }
}

/// Per-peer totals, counting a message once per peer however many of the
/// peer's domains it has recipients in.
#[derive(Debug, Default)]
pub struct PeerTally {
    owners: std::sync::Arc<Owners>,
    /// Per peer.
    pub peers: HashMap<String, DomainDepth>,
    /// Per domain, as [`QueueTally`].
    pub domains: QueueTally,
}

impl PeerTally {
    /// Watches each `(peer, domain)`.
    pub fn new(routes: impl IntoIterator<Item = (String, String)>) -> Self {
        Self::with_owners(std::sync::Arc::new(Owners::new(routes)))
    }

    /// Watches the domains of `owners`.
    pub fn with_owners(owners: std::sync::Arc<Owners>) -> Self {
        Self {
            owners,
            peers: HashMap::new(),
            domains: QueueTally::default(),
        }
    }

    /// Adds one line of `postqueue -j`.
    pub fn add_line(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let Ok(m) = parse_line(line) else {
            self.domains.bad_lines += 1;
            return;
        };
        let owners = &*self.owners;
        self.domains.add(&m, |d| owners.owner(d).is_some());
        let here = one_message(&m, |d| owners.owner(&d));
        for (peer, e) in here {
            self.peers.entry(peer.to_string()).or_default().merge(&e);
        }
    }
}

/// One message's depth for each group its recipients fall in: `group` maps a
/// recipient's domain to its group (a watched domain, a peer) or `None`.
/// Each group counts the message once, with its own recipients and reasons.
fn one_message<K: std::hash::Hash + Eq>(
    m: &QueueMessage<'_>,
    group: impl Fn(String) -> Option<K>,
) -> HashMap<K, DomainDepth> {
    let mut here: HashMap<K, DomainDepth> = HashMap::new();
    for r in &m.recipients {
        let Some(k) = domain_of(&r.address).and_then(&group) else {
            continue;
        };
        let e = here.entry(k).or_default();
        e.recipients += 1;
        if let Some(reason) = &r.delay_reason {
            e.add_reason(&cut(reason), 1);
        }
    }
    for e in here.values_mut() {
        e.messages = 1;
        e.bytes = m.message_size;
        e.oldest_arrival = Some(m.arrival_time);
        e.newest_arrival = Some(m.arrival_time);
        e.by_queue.insert(m.queue_name.to_string(), 1);
    }
    here
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from a private Postfix 3.7 instance with the next hop down.
    const DEFERRED: &str = include_str!("../testdata/postqueue-deferred.jsonl");

    fn tally(routes: &[(&str, &str)], text: &str) -> PeerTally {
        let mut t = PeerTally::new(routes.iter().map(|(p, d)| (p.to_string(), d.to_string())));
        for l in text.lines() {
            t.add_line(l);
        }
        t
    }

    #[test]
    fn owners_in_any_order_keep_the_last_claim_of_a_domain() {
        let pairs = [
            ("b", "m.example"),
            ("a", "z.example"),
            ("a", "a.example"),
            ("c", "m.example"),
            ("a", "mm.example"),
        ];
        let o = Owners::new(pairs.iter().map(|(p, d)| (p.to_string(), d.to_string())));
        assert_eq!(o.owner("a.example"), Some("a"));
        assert_eq!(o.owner("m.example"), Some("c"), "the last claim");
        assert_eq!(o.owner("mm.example"), Some("a"));
        assert_eq!(o.owner("z.example"), Some("a"));
        assert_eq!(o.owner("m"), None);
        assert_eq!(o.owner("b.example"), None);
        assert_eq!(o.names(), ["b", "a", "c"]);
        // In order, as the store streams them: no sort needed.
        let mut sorted = Owners::default();
        for d in ["a.example", "b.example", "c.example"] {
            sorted.add("x", d);
        }
        sorted.shrink_to_fit();
        assert_eq!(sorted.owner("b.example"), Some("x"));
        assert_eq!(Owners::default().owner("a.example"), None);
    }

    #[test]
    fn golden_deferred_queue() {
        let t = tally(
            &[("friend", "friend.example"), ("other", "other.example")],
            DEFERRED,
        );
        assert_eq!(t.domains.messages_seen, 2);
        assert_eq!(t.domains.bad_lines, 0);
        let f = t.domains.domain("friend.example").unwrap();
        assert_eq!((f.messages, f.recipients, f.bytes), (2, 3, 310 + 5332));
        assert_eq!(f.oldest_arrival, Some(1795595557));
        assert_eq!(f.by_queue.get("deferred"), Some(&2));
        assert_eq!(
            f.top_reasons(3),
            vec![(
                "connect to 127.0.0.1[127.0.0.1]:1: Connection refused".to_string(),
                3
            )]
        );
        let o = t.domains.domain("other.example").unwrap();
        assert_eq!((o.messages, o.recipients, o.bytes), (1, 1, 310));
        // Per peer, a message counts once; reasons are kept per peer too.
        assert_eq!(t.peers["friend"].messages, 2);
        assert_eq!(t.peers["friend"].top_reasons(1)[0].1, 3);
        assert_eq!(t.peers["other"].messages, 1);
    }

    /// Also captured for real: a 1,000-recipient message caught in the
    /// active queue, and a bounce (empty sender) to quoted, spaced,
    /// mixed-case and backslashed addresses.
    const BULK_AND_ODD: &str = include_str!("../testdata/postqueue-bulk-and-odd.jsonl");

    #[test]
    fn golden_bulk_and_odd_addresses() {
        let t = tally(
            &[("friend", "friend.example"), ("other", "other.example")],
            BULK_AND_ODD,
        );
        assert_eq!((t.domains.messages_seen, t.domains.bad_lines), (4, 0));
        let f = t.domains.domain("friend.example").unwrap();
        assert_eq!((f.messages, f.recipients, f.bytes), (4, 1006, 6254));
        assert_eq!(f.oldest_arrival, Some(1795595557));
        assert_eq!(f.by_queue.get("active"), Some(&1));
        assert_eq!(f.by_queue.get("deferred"), Some(&3));
        let o = t.domains.domain("other.example").unwrap();
        assert_eq!((o.messages, o.recipients, o.bytes), (2, 2, 612));
        assert_eq!(t.peers["friend"].messages, 4);
        assert_eq!(t.peers["friend"].recipients, 1006);
    }

    #[test]
    fn odd_addresses_unknown_members_and_both_expiry_spellings() {
        let text = concat!(
            r#"{"queue_name":"hold","queue_id":"A1","arrival_time":10,"message_size":100,"force_expired":true,"sender":"","recipients":[{"address":"\"a@b\"@Friend.Example."},{"address":"no-domain"},{"address":"x@elsewhere.example","delay_reason":"r"}],"new_member":{"nested":[1,2]}}"#,
            "\n",
            r#"{"queue_name":"active","queue_id":"A2","arrival_time":5,"message_size":7,"forced_expire":false,"sender":"s@x","recipients":[{"address":"y@friend.example","delay_reason":"4.4.1 timeout"}]}"#,
            "\n",
            "not json\n",
            "\n",
        );
        let t = tally(&[("friend", "friend.example")], text);
        assert_eq!(t.domains.bad_lines, 1);
        let f = t.domains.domain("friend.example").unwrap();
        assert_eq!((f.messages, f.recipients, f.bytes), (2, 2, 107));
        assert_eq!(f.oldest_arrival, Some(5));
        assert_eq!(f.by_queue.get("hold"), Some(&1));
        assert_eq!(f.by_queue.get("active"), Some(&1));
        assert!(
            t.domains.domain("elsewhere.example").is_none(),
            "not watched"
        );
        let m = parse_line(text.lines().next().unwrap()).unwrap();
        assert!(m.forced_expire, "older spelling read");
    }

    #[test]
    fn a_huge_recipient_list_counts_every_recipient_and_the_message_once() {
        let recips: Vec<String> = (0..5000)
            .map(|i| {
                format!(
                    r#"{{"address":"u{i}@friend.example","delay_reason":"busy {}"}}"#,
                    i % 5
                )
            })
            .collect();
        let line = format!(
            r#"{{"queue_name":"deferred","queue_id":"B","arrival_time":1,"message_size":999,"recipients":[{}]}}"#,
            recips.join(",")
        );
        let t = tally(&[("friend", "friend.example")], &line);
        let f = t.domains.domain("friend.example").unwrap();
        assert_eq!((f.messages, f.recipients, f.bytes), (1, 5000, 999));
        assert_eq!(f.top_reasons(TOP_REASONS).len(), 3);
        assert_eq!(f.top_reasons(1)[0].1, 1000);
    }

    #[test]
    fn distinct_delay_reasons_are_capped_without_hiding_the_common_one() {
        // 500 reasons that name their recipient (one-offs) first, then one
        // reason shared by 300 recipients, then more one-offs.
        let line = |i: usize, reason: &str| {
            format!(
                "{{\"queue_name\":\"deferred\",\"queue_id\":\"Q{i}\",\"arrival_time\":1,\"message_size\":1,\"recipients\":[{{\"address\":\"u{i}@friend.example\",\"delay_reason\":\"{reason}\"}}]}}\n"
            )
        };
        let mut text = String::new();
        for i in 0..500 {
            text += &line(i, &format!("550 <u{i}@friend.example> busy"));
        }
        for i in 500..800 {
            text += &line(
                i,
                "connect to mail.friend.example[192.0.2.1]:25: Connection refused",
            );
        }
        for i in 800..1000 {
            text += &line(i, &format!("550 <u{i}@friend.example> busy"));
        }
        let t = tally(&[("friend", "friend.example")], &text);
        for f in [
            t.domains.domain("friend.example").unwrap(),
            &t.peers["friend"],
        ] {
            assert_eq!(f.reasons.len(), MAX_DISTINCT_REASONS);
            assert_eq!(
                f.reasons.values().sum::<u64>(),
                1000,
                "every recipient counted"
            );
            let (top, n) = f.top_reasons(1).remove(0);
            assert!(top.ends_with("Connection refused"), "{top}");
            assert!(n >= 300, "{n}");
        }
    }

    #[test]
    fn domain_of_handles_quotes_case_and_trailing_dots() {
        assert_eq!(
            domain_of("\"x@y\"@EXAMPLE.org.").as_deref(),
            Some("example.org")
        );
        assert_eq!(domain_of("postmaster"), None);
        assert_eq!(
            domain_of("bob@Bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(domain_of("a@"), None);
    }
}
