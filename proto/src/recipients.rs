//! Signed recipient lists: the addresses an agent's own server accepts in
//! its domains, so that its backups accept exactly those and refuse the
//! rest at RCPT time instead of bouncing them later (backscatter).
//!
//! A [`RecipientList`] is versioned and signed like a domain list (see
//! [`crate::list`]), with its own signing prefix, and also carries the
//! owner's `recipient_delimiter`, which decides how its backups treat
//! address extensions, and its `backup_mode` (whether backups take its mail
//! always, or only while its own server is down). An item is an address (`user@example.org`) or a
//! catch-all (`@example.org`: every address of the domain). A domain with
//! no item at all has no recipient list: its backups accept every
//! recipient, as before.
//!
//! On the wire: a [`RecipientHeader`] and chunks of at most
//! [`CHUNK_ENTRIES`] items, assembled by a [`RecipientReceiver`]; or, for a
//! friend holding an older version, a [`RecipientChangesHeader`] and chunks
//! of [`WireRecipientChange`]s, applied by a [`RecipientChangesReceiver`] to
//! the items held, encoded as signed ([`EncodedItems`]). Either way only
//! `finish` (a [`RecipientList`]) or `finish_encoded` (a
//! [`ChangedRecipients`]), which verify the signature over the whole list,
//! yield a received list.

use std::fmt;

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::domain::Domain;
use crate::id::PeerId;
use crate::list::{
    check_header, digest_of, encode_field, merge_encoded, take_field, ListError, ListHeader,
    CHUNK_ENTRIES,
};

/// Most items a recipient list may have.
pub const MAX_RECIPIENTS: u32 = 1_000_000;
/// Most bytes of item text a recipient list may carry in all.
pub const MAX_RECIPIENT_BYTES: usize = 64 << 20;
/// Longest local part (RFC 5321).
pub const MAX_LOCAL: usize = 64;
/// Longest `recipient_delimiter` value.
pub const MAX_DELIMITER: usize = 8;

const SIGNING_PREFIX: &[u8] = b"mxfed/1 recipient list\0";

/// Why a recipient was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecipientError {
    /// No `@`.
    #[error("{0:?} is not an address or @domain")]
    NoAt(String),
    /// A local part that is empty, too long, not ASCII, or has a character
    /// a Postfix table key cannot hold.
    #[error("{0:?} has an unsupported local part (1 to 64 of a-z 0-9 and !#$%&'*+-/=?^_`{{|}}~., not starting with #)")]
    Local(String),
    /// The domain part is not a valid name.
    #[error("{input:?}: {error}")]
    Domain {
        /// What was given.
        input: String,
        /// What is wrong with its domain.
        error: crate::domain::DomainError,
    },
    /// Not in canonical form (lower case, punycode), as a peer must send it.
    #[error("{0:?} is not in canonical form (lower case, punycode)")]
    NotCanonical(String),
}

/// A valid recipient, canonical: `local@domain` in lower case with the
/// domain in punycode, or `@domain` for every address of the domain.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Recipient(String);

fn local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c)
}

impl Recipient {
    /// Checks and normalises an address or `@domain`.
    pub fn parse(input: &str) -> Result<Self, RecipientError> {
        let Some((local, domain)) = input.rsplit_once('@') else {
            return Err(RecipientError::NoAt(input.into()));
        };
        if local.len() > MAX_LOCAL || !local.chars().all(local_char) || local.starts_with('#') {
            return Err(RecipientError::Local(input.into()));
        }
        let domain = Domain::parse(domain).map_err(|error| RecipientError::Domain {
            input: input.into(),
            error,
        })?;
        Ok(Self(format!("{}@{domain}", local.to_ascii_lowercase())))
    }

    /// Accepts only a recipient already in canonical form.
    pub fn parse_canonical(input: &str) -> Result<Self, RecipientError> {
        let r = Self::parse(input)?;
        if r.0 != input {
            return Err(RecipientError::NotCanonical(input.into()));
        }
        Ok(r)
    }

    /// The text, as a Postfix table key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain part.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }

    /// Whether this is `@domain`: every address of the domain.
    pub fn is_catch_all(&self) -> bool {
        self.0.starts_with('@')
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({})", self.0)
    }
}

/// Whether a `recipient_delimiter` value can travel: at most
/// [`MAX_DELIMITER`] characters, none a letter, digit, `@`, white space or
/// control character.
pub fn valid_delimiter(d: &str) -> bool {
    d.len() <= MAX_DELIMITER
        && d.chars()
            .all(|c| c.is_ascii_graphic() && !c.is_ascii_alphanumeric() && c != '@')
}

/// Most server key fingerprints a list may carry (several certificates,
/// and a rollover).
pub const MAX_FINGERPRINTS: usize = 16;

/// Whether `f` is a SHA-256 fingerprint as Postfix writes it: 32 bytes in
/// upper-case hex, colon-separated.
pub fn valid_fingerprint(f: &str) -> bool {
    f.len() == 95
        && f.split(':').count() == 32
        && f.split(':').all(|b| {
            b.len() == 2
                && b.bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
        })
}

/// A verified (or locally built) recipient list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientList {
    /// Who signed it.
    pub signer: PeerId,
    /// Version, strictly increasing with every change.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// The owner's `recipient_delimiter` (empty: none).
    pub delimiter: String,
    /// The owner's `backup_mode`: `true` for `when-down` (backups accept
    /// its mail only while its own server does not), `false` for `always`.
    pub when_down: bool,
    /// The SHA-256 fingerprints (`AB:CD:...`) of the public keys of the
    /// owner's SMTP server certificates, which backups pin; at most
    /// [`MAX_FINGERPRINTS`], sorted.
    pub tls_fingerprints: Vec<String>,
    /// Sorted, no duplicates.
    items: Vec<Recipient>,
}

/// The first frame of a recipient list transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientHeader {
    /// Signer, version, times, item count and signature.
    pub list: ListHeader,
    /// The owner's `recipient_delimiter`.
    pub delimiter: String,
    /// The owner's `backup_mode` is `when-down`.
    pub when_down: bool,
    /// The owner's server key fingerprints.
    pub tls_fingerprints: Vec<String>,
}

/// The first frame of a transfer of changes to a recipient list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientChangesHeader {
    /// The whole new list's header.
    pub list: RecipientHeader,
    /// The version the changes apply to.
    pub base: u64,
    /// Number of changes that follow.
    pub changes: u32,
}

/// One item added or removed since an older version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRecipientChange {
    /// The item, canonical.
    pub item: String,
    /// Whether it is in the list now.
    pub present: bool,
}

/// What a recipient list's signature covers besides its items.
struct Terms<'a> {
    signer: &'a PeerId,
    version: u64,
    issued_at: u64,
    expires_at: u64,
    delimiter: &'a str,
    when_down: bool,
    tls_fingerprints: &'a [String],
}

impl Terms<'_> {
    fn signing_bytes(&self, count: u32, digest: &[u8; 32]) -> Vec<u8> {
        let mut m = Vec::with_capacity(SIGNING_PREFIX.len() + 32 + 8 * 3 + 1 + 8 + 4 + 32);
        m.extend_from_slice(SIGNING_PREFIX);
        m.extend_from_slice(self.signer.public_key());
        m.extend_from_slice(&self.version.to_be_bytes());
        m.extend_from_slice(&self.issued_at.to_be_bytes());
        m.extend_from_slice(&self.expires_at.to_be_bytes());
        m.push(self.delimiter.len() as u8);
        m.extend_from_slice(self.delimiter.as_bytes());
        m.push(u8::from(self.when_down));
        m.push(self.tls_fingerprints.len() as u8);
        for f in self.tls_fingerprints {
            m.push(f.len() as u8);
            m.extend_from_slice(f.as_bytes());
        }
        m.extend_from_slice(&count.to_be_bytes());
        m.extend_from_slice(digest);
        m
    }
}

/// A recipient list's items in the compact form its digest covers (see
/// [`RecipientList::encoded_items`]): what a receiver keeps to apply the
/// next changes to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncodedItems(pub Vec<u8>);

impl EncodedItems {
    /// The items as text, in order; an `Err` for bytes that are not items
    /// stops the walk.
    pub fn items(&self) -> impl Iterator<Item = Result<&str, ListError>> {
        let mut rest = &self.0[..];
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let item = take_field(&mut rest, "recipients");
            if item.is_err() {
                rest = &[];
            }
            Some(item)
        })
    }
}

/// A recipient list received as changes and verified
/// ([`RecipientChangesReceiver::finish_encoded`]): its header, the changes
/// that made a difference to the list held (item, whether it is in the
/// list now), and the whole list's items, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedRecipients {
    /// The whole new list's header.
    pub header: RecipientHeader,
    /// Items added (`true`) and removed (`false`), sorted.
    pub changes: Vec<(Recipient, bool)>,
    /// The whole new list's items.
    pub items: EncodedItems,
}

fn items_digest(items: &[Recipient]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for r in items {
        ctx.update(&(r.0.len() as u32).to_be_bytes());
        ctx.update(r.0.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl RecipientList {
    /// Builds a list; items are sorted and de-duplicated.
    pub fn new(
        signer: PeerId,
        version: u64,
        (issued_at, expires_at): (u64, u64),
        delimiter: String,
        mut items: Vec<Recipient>,
    ) -> Self {
        items.sort();
        items.dedup();
        Self {
            signer,
            version,
            issued_at,
            expires_at,
            delimiter,
            when_down: false,
            tls_fingerprints: Vec::new(),
            items,
        }
    }

    /// The items, sorted.
    pub fn items(&self) -> &[Recipient] {
        &self.items
    }

    /// The bytes the signer signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let terms = Terms {
            signer: &self.signer,
            version: self.version,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            delimiter: &self.delimiter,
            when_down: self.when_down,
            tls_fingerprints: &self.tls_fingerprints,
        };
        terms.signing_bytes(self.items.len() as u32, &items_digest(&self.items))
    }

    /// The items in the form the digest covers, for
    /// [`RecipientChangesReceiver::finish_encoded`] to apply the next
    /// changes to.
    pub fn encoded_items(&self) -> EncodedItems {
        let mut out = Vec::new();
        for r in &self.items {
            encode_field(&mut out, r.as_str());
        }
        EncodedItems(out)
    }

    /// The header to send, given the signature over [`Self::signing_bytes`].
    pub fn header(&self, signature: Vec<u8>) -> RecipientHeader {
        RecipientHeader {
            list: ListHeader {
                signer: self.signer,
                version: self.version,
                issued_at: self.issued_at,
                expires_at: self.expires_at,
                count: self.items.len() as u32,
                signature,
            },
            delimiter: self.delimiter.clone(),
            when_down: self.when_down,
            tls_fingerprints: self.tls_fingerprints.clone(),
        }
    }

    /// The items in wire chunks.
    pub fn chunks(&self) -> impl Iterator<Item = Vec<String>> + '_ {
        self.items
            .chunks(CHUNK_ENTRIES)
            .map(|c| c.iter().map(|r| r.0.clone()).collect())
    }

    fn verified(header: RecipientHeader, items: Vec<Recipient>) -> Result<Self, ListError> {
        let list = RecipientList {
            signer: header.list.signer,
            version: header.list.version,
            issued_at: header.list.issued_at,
            expires_at: header.list.expires_at,
            delimiter: header.delimiter,
            when_down: header.when_down,
            tls_fingerprints: header.tls_fingerprints,
            items,
        };
        if !list
            .signer
            .verify(&list.signing_bytes(), &header.list.signature)
        {
            return Err(ListError::BadSignature);
        }
        Ok(list)
    }
}

/// The changes that turn `old` into `new` (both sorted), sorted: each
/// item, and whether it is in `new`.
pub fn recipient_changes(old: &[Recipient], new: &[Recipient]) -> Vec<(Recipient, bool)> {
    let mut out = Vec::new();
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let (item, present) = match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(a), Some(b)) if a == b => {
                o.next();
                n.next();
                continue;
            }
            (Some(a), b) if b.is_none_or(|b| *a < *b) => (o.next(), false),
            _ => (n.next(), true),
        };
        if let Some(item) = item {
            out.push((item.clone(), present));
        }
    }
    out
}

/// Changes as they travel.
pub fn to_wire(changes: &[(Recipient, bool)]) -> Vec<WireRecipientChange> {
    changes
        .iter()
        .map(|(r, present)| WireRecipientChange {
            item: r.0.clone(),
            present: *present,
        })
        .collect()
}

/// The changes in wire chunks of at most [`CHUNK_ENTRIES`].
pub fn recipient_change_chunks(
    changes: &[WireRecipientChange],
) -> impl Iterator<Item = Vec<WireRecipientChange>> + '_ {
    changes.chunks(CHUNK_ENTRIES).map(<[_]>::to_vec)
}

fn check_recipient_header(
    h: &RecipientHeader,
    sender: PeerId,
    held: Option<u64>,
    now: u64,
) -> Result<(), ListError> {
    check_header(&h.list, sender, held, now, MAX_RECIPIENTS)?;
    if h.tls_fingerprints.len() > MAX_FINGERPRINTS
        || !h.tls_fingerprints.iter().all(|f| valid_fingerprint(f))
    {
        return Err(ListError::Malformed(format!(
            "TLS fingerprints (at most {MAX_FINGERPRINTS}, each 32 bytes as AB:CD:...)"
        )));
    }
    if !valid_delimiter(&h.delimiter) {
        return Err(ListError::Malformed(format!(
            "recipient_delimiter {:?} (at most {MAX_DELIMITER} punctuation characters)",
            h.delimiter
        )));
    }
    Ok(())
}

/// Checks chunk sizes, bytes, canonical form and order, item by item.
#[derive(Debug, Default)]
struct Items {
    items: Vec<Recipient>,
    bytes: usize,
}

impl Items {
    fn push(&mut self, text: &str, index: usize) -> Result<Recipient, ListError> {
        self.bytes += text.len();
        if self.bytes > MAX_RECIPIENT_BYTES {
            return Err(ListError::TooLarge(format!(
                "over {MAX_RECIPIENT_BYTES} bytes of recipients"
            )));
        }
        let r = Recipient::parse_canonical(text).map_err(|e| ListError::BadRecipient {
            index,
            error: e.to_string(),
        })?;
        if let Some(prev) = self.items.last() {
            if *prev >= r {
                return Err(ListError::Malformed(format!(
                    "recipients not strictly sorted at {index} ({r} after {prev})"
                )));
            }
        }
        Ok(r)
    }
}

fn check_chunk(len: usize, have: usize, announced: u32) -> Result<(), ListError> {
    if len == 0 || len > CHUNK_ENTRIES {
        return Err(ListError::Malformed(format!("chunk of {len} items")));
    }
    if have + len > announced as usize {
        return Err(ListError::Malformed(format!(
            "more items than the {announced} announced"
        )));
    }
    Ok(())
}

/// Assembles and checks a whole recipient list as it arrives.
#[derive(Debug)]
pub struct RecipientReceiver {
    header: RecipientHeader,
    items: Items,
}

impl RecipientReceiver {
    /// Checks a header from `sender` against the version held (if any) and `now`.
    pub fn start(
        header: RecipientHeader,
        sender: PeerId,
        held: Option<u64>,
        now: u64,
    ) -> Result<Self, ListError> {
        check_recipient_header(&header, sender, held, now)?;
        Ok(Self {
            items: Items {
                items: Vec::with_capacity(header.list.count.min(10_000) as usize),
                bytes: 0,
            },
            header,
        })
    }

    /// Whether every announced item has arrived.
    pub fn is_complete(&self) -> bool {
        self.items.items.len() == self.header.list.count as usize
    }

    /// Adds a chunk, checking each item.
    pub fn push(&mut self, chunk: Vec<String>) -> Result<(), ListError> {
        check_chunk(chunk.len(), self.items.items.len(), self.header.list.count)?;
        for text in chunk {
            let index = self.items.items.len();
            let r = self.items.push(&text, index)?;
            self.items.items.push(r);
        }
        Ok(())
    }

    /// Checks the count and the signature; the only way to a received list.
    pub fn finish(self) -> Result<RecipientList, ListError> {
        if !self.is_complete() {
            return Err(ListError::Malformed(format!(
                "{} items announced, {} received",
                self.header.list.count,
                self.items.items.len()
            )));
        }
        RecipientList::verified(self.header, self.items.items)
    }
}

/// Assembles and checks the changes since a version held, and rebuilds the
/// whole recipient list from them.
#[derive(Debug)]
pub struct RecipientChangesReceiver {
    header: RecipientChangesHeader,
    changes: Items,
    present: Vec<bool>,
}

impl RecipientChangesReceiver {
    /// Checks a header from `sender` against the version held and `now`.
    pub fn start(
        header: RecipientChangesHeader,
        sender: PeerId,
        held: u64,
        now: u64,
    ) -> Result<Self, ListError> {
        check_recipient_header(&header.list, sender, Some(held), now)?;
        if header.base != held {
            return Err(ListError::Malformed(format!(
                "changes since version {} sent, but version {held} is held",
                header.base
            )));
        }
        if header.changes > MAX_RECIPIENTS {
            return Err(ListError::TooLarge(format!(
                "{} changes announced, the limit is {MAX_RECIPIENTS}",
                header.changes
            )));
        }
        Ok(Self {
            header,
            changes: Items::default(),
            present: Vec::new(),
        })
    }

    /// Whether every announced change has arrived.
    pub fn is_complete(&self) -> bool {
        self.changes.items.len() == self.header.changes as usize
    }

    /// Adds a chunk, checking each change.
    pub fn push(&mut self, chunk: Vec<WireRecipientChange>) -> Result<(), ListError> {
        check_chunk(chunk.len(), self.changes.items.len(), self.header.changes)?;
        for c in chunk {
            let index = self.changes.items.len();
            let r = self.changes.push(&c.item, index)?;
            self.changes.items.push(r);
            self.present.push(c.present);
        }
        Ok(())
    }

    /// [`Self::finish`] for a list held encoded
    /// ([`RecipientList::encoded_items`], or the `items` of an earlier
    /// [`ChangedRecipients`]): the items held are not parsed, only merged
    /// with the changes and hashed, and the signature checked over the
    /// result. A removal of an item not held, or an addition of one held,
    /// changes nothing and is left out of the changes returned.
    pub fn finish_encoded(self, held: &EncodedItems) -> Result<ChangedRecipients, ListError> {
        if !self.is_complete() {
            return Err(ListError::Malformed(format!(
                "{} changes announced, {} received",
                self.header.changes,
                self.changes.items.len()
            )));
        }
        let want = self.header.list.list.count as usize;
        let capacity = held.0.len() + 64 * self.changes.items.len();
        let changes: Vec<(Recipient, bool)> =
            self.changes.items.into_iter().zip(self.present).collect();
        let (out, effective) = merge_encoded(
            held.items(),
            |i| i,
            encode_field,
            changes,
            |(item, _): &(Recipient, bool)| item.as_str(),
            |out, (item, present), was| {
                if *present {
                    encode_field(out, item.as_str());
                }
                (*present, *present != was.is_some())
            },
            (capacity, want, "items"),
        )?;
        let h = &self.header.list;
        let terms = Terms {
            signer: &h.list.signer,
            version: h.list.version,
            issued_at: h.list.issued_at,
            expires_at: h.list.expires_at,
            delimiter: &h.delimiter,
            when_down: h.when_down,
            tls_fingerprints: &h.tls_fingerprints,
        };
        if !h.list.signer.verify(
            &terms.signing_bytes(h.list.count, &digest_of(&out)),
            &h.list.signature,
        ) {
            return Err(ListError::BadSignature);
        }
        Ok(ChangedRecipients {
            header: self.header.list,
            changes: effective,
            items: EncodedItems(out),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key(seed: u8) -> (Ed25519KeyPair, PeerId) {
        let k = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        let id = PeerId::from_public_key(k.public_key().as_ref().try_into().unwrap());
        (k, id)
    }

    fn r(s: &str) -> Recipient {
        Recipient::parse(s).unwrap()
    }

    fn list(id: PeerId, version: u64, items: &[&str]) -> RecipientList {
        let items = items.iter().map(|s| r(s)).collect();
        RecipientList::new(id, version, (900, 5000), "+".into(), items)
    }

    fn receive(
        k: &Ed25519KeyPair,
        l: &RecipientList,
        from: PeerId,
        held: Option<u64>,
    ) -> Result<RecipientList, ListError> {
        let sig = k.sign(&l.signing_bytes()).as_ref().to_vec();
        let mut rx = RecipientReceiver::start(l.header(sig), from, held, 1000)?;
        for c in l.chunks() {
            rx.push(c)?;
        }
        rx.finish()
    }

    #[test]
    fn recipients_are_checked_and_normalised() {
        assert_eq!(
            r("Bob.Smith+tag@Example.ORG").as_str(),
            "bob.smith+tag@example.org"
        );
        assert_eq!(r("@example.org").as_str(), "@example.org");
        assert!(r("@example.org").is_catch_all());
        assert_eq!(r("bob@bücher.example").domain(), "xn--bcher-kva.example");
        for bad in [
            "bob",
            "bob@",
            "bo b@example.org",
            "bob\n@example.org",
            "\"bob\"@example.org",
            "#bob@example.org",
            "bob:x@example.org",
            "bøb@example.org",
            "bob@*.example.org",
            "bob@192.0.2.1",
        ] {
            assert!(Recipient::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@example.org", "a".repeat(65));
        assert!(Recipient::parse(&long).is_err());
        assert!(Recipient::parse_canonical("Bob@example.org").is_err());
        assert!(valid_delimiter("+") && valid_delimiter("+-") && valid_delimiter(""));
        assert!(!valid_delimiter("a") && !valid_delimiter(" ") && !valid_delimiter("@"));
    }

    #[test]
    fn a_signed_recipient_list_round_trips_and_tampering_breaks_it() {
        let (k, id) = key(1);
        let names: Vec<String> = (0..2500).map(|i| format!("u{i:05}@example.org")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let l = list(id, 3, &refs);
        assert_eq!(receive(&k, &l, id, Some(2)).unwrap(), l);
        let sig = k.sign(&l.signing_bytes()).as_ref().to_vec();
        let mut h = l.header(sig.clone());
        h.delimiter = "-".into();
        let mut rx = RecipientReceiver::start(h, id, None, 1000).unwrap();
        for c in l.chunks() {
            rx.push(c).unwrap();
        }
        assert_eq!(
            rx.finish(),
            Err(ListError::BadSignature),
            "the delimiter is signed"
        );
        let mut h = l.header(sig.clone());
        h.when_down = true;
        let mut rx = RecipientReceiver::start(h, id, None, 1000).unwrap();
        for c in l.chunks() {
            rx.push(c).unwrap();
        }
        assert_eq!(
            rx.finish(),
            Err(ListError::BadSignature),
            "the mode is signed"
        );
        let mut h = l.header(sig.clone());
        h.tls_fingerprints = vec![["AB"; 32].join(":")];
        let mut rx = RecipientReceiver::start(h, id, None, 1000).unwrap();
        for c in l.chunks() {
            rx.push(c).unwrap();
        }
        assert_eq!(
            rx.finish(),
            Err(ListError::BadSignature),
            "the pins are signed"
        );
        let mut h = l.header(sig.clone());
        h.tls_fingerprints = vec!["ab:cd".into()];
        assert!(
            RecipientReceiver::start(h, id, None, 1000).is_err(),
            "a malformed pin"
        );
        let mut chunks: Vec<Vec<String>> = l.chunks().collect();
        chunks[0][0] = "evil@example.org".into();
        let mut rx = RecipientReceiver::start(l.header(sig), id, None, 1000).unwrap();
        for c in chunks {
            rx.push(c).unwrap();
        }
        assert_eq!(
            rx.finish(),
            Err(ListError::BadSignature),
            "an address swapped in"
        );
        let (other, _) = key(2);
        assert_eq!(receive(&other, &l, id, None), Err(ListError::BadSignature));
        assert!(matches!(
            receive(&k, &l, id, Some(3)),
            Err(ListError::NotNewer { .. })
        ));
    }

    #[test]
    fn bad_items_and_delimiters_are_named_and_refused() {
        let (k, id) = key(1);
        let l = list(id, 3, &["a@example.org"]);
        let sig = k.sign(&l.signing_bytes()).as_ref().to_vec();
        for bad in ["A@example.org", "a@example.org OK", "a b@example.org"] {
            let mut rx = RecipientReceiver::start(l.header(sig.clone()), id, None, 1000).unwrap();
            assert!(
                matches!(
                    rx.push(vec![bad.into()]),
                    Err(ListError::BadRecipient { index: 0, .. })
                ),
                "{bad:?}"
            );
        }
        let mut h = l.header(sig.clone());
        h.delimiter = "x".into();
        assert!(RecipientReceiver::start(h, id, None, 1000).is_err());
        let mut h = l.header(sig);
        h.list.count = MAX_RECIPIENTS + 1;
        assert!(matches!(
            RecipientReceiver::start(h, id, None, 1000),
            Err(ListError::TooLarge(_))
        ));
    }

    #[test]
    fn changes_rebuild_the_signed_list_and_nothing_else() {
        let (k, id) = key(1);
        let old = list(id, 3, &["a@example.org", "b@example.org", "@catch.example"]);
        let new = list(id, 4, &["a@example.org", "c@example.org", "@catch.example"]);
        let changes = to_wire(&recipient_changes(old.items(), new.items()));
        assert_eq!(changes.len(), 2);
        let sig = k.sign(&new.signing_bytes()).as_ref().to_vec();
        let header = |n: usize| RecipientChangesHeader {
            list: new.header(sig.clone()),
            base: 3,
            changes: n as u32,
        };
        let apply = |h: RecipientChangesHeader, cs: Vec<WireRecipientChange>| {
            let mut rx = RecipientChangesReceiver::start(h, id, 3, 1000)?;
            for c in recipient_change_chunks(&cs) {
                rx.push(c)?;
            }
            rx.finish_encoded(&old.encoded_items())
        };
        let got = apply(header(2), changes.clone()).unwrap();
        assert_eq!(got.items, new.encoded_items());
        assert_eq!(got.header, new.header(sig.clone()));
        assert_eq!(got.changes, recipient_changes(old.items(), new.items()));
        // An addition of an item held, a removal of one not held: the same
        // list, and no change to store.
        let restated = vec![
            WireRecipientChange {
                item: "@catch.example".into(),
                present: true,
            },
            WireRecipientChange {
                item: "zz@example.org".into(),
                present: false,
            },
        ];
        let same = list(id, 4, &["a@example.org", "b@example.org", "@catch.example"]);
        let same_sig = k.sign(&same.signing_bytes()).as_ref().to_vec();
        let mut rx = RecipientChangesReceiver::start(
            RecipientChangesHeader {
                list: same.header(same_sig),
                base: 3,
                changes: 2,
            },
            id,
            3,
            1000,
        )
        .unwrap();
        for c in recipient_change_chunks(&restated) {
            rx.push(c).unwrap();
        }
        let got = rx.finish_encoded(&old.encoded_items()).unwrap();
        assert!(got.changes.is_empty());
        assert_eq!(got.items, same.encoded_items());
        // Items held that are cut short are refused, not trusted.
        let mut cut = old.encoded_items();
        cut.0.pop();
        let mut rx = RecipientChangesReceiver::start(header(2), id, 3, 1000).unwrap();
        for c in recipient_change_chunks(&changes) {
            rx.push(c).unwrap();
        }
        assert!(matches!(
            rx.finish_encoded(&cut),
            Err(ListError::Malformed(_))
        ));
        // An extra address slipped in: the count or the signature fails.
        let mut more = changes.clone();
        more.push(WireRecipientChange {
            item: "evil@example.org".into(),
            present: true,
        });
        assert!(apply(header(3), more).is_err());
        // A removal turned into an addition.
        let mut flipped = changes;
        flipped[0].present = !flipped[0].present;
        assert!(apply(header(2), flipped).is_err());
    }
}
