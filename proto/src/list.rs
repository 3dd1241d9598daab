//! Signed domain lists: the domains an agent hosts, which its friends back up.
//!
//! A [`DomainList`] is versioned and signed with the agent's Ed25519 identity
//! key over [`DomainList::signing_bytes`]: a fixed prefix, the signer, the
//! version, `issued_at`, `expires_at`, the entry count and a SHA-256 of the
//! sorted entries. Hashing the entries lets a receiver verify a list of
//! 100,000 domains that arrives in many chunks.
//!
//! On the wire a list is a [`ListHeader`] frame followed by chunks of at most
//! [`CHUNK_ENTRIES`] [`WireEntry`]s. A [`ListReceiver`] assembles them,
//! checking every bound as it goes, and only [`ListReceiver::finish`] —
//! signature included — yields a `DomainList`.
//!
//! A friend that holds an older version may get only the changes since it:
//! a [`ChangesHeader`] (the new list's header, and the version the changes
//! apply to), then chunks of [`WireChange`]s. A [`ChangesReceiver`] checks
//! them the same way, applies them to the entries held (as signed:
//! [`EncodedEntries`]), and [`ChangesReceiver::finish_encoded`] verifies the
//! signature over the whole resulting list: what is signed is always the
//! whole list, so a change transfer proves the same as a full one. Nothing
//! else yields a `DomainList` or a [`ChangedList`], so nothing unchecked
//! can be stored.

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::domain::{Domain, DomainError, NextHop};
use crate::id::PeerId;

/// Most entries a list may have.
pub const MAX_ENTRIES: u32 = 250_000;
/// Most bytes of entry text (domain + next hop) a list may carry in all.
pub const MAX_LIST_BYTES: usize = 16 << 20;
/// Most entries in one chunk; 1,000 worst-case entries fit well inside a frame.
pub const CHUNK_ENTRIES: usize = 1_000;
/// Longest validity a list may claim, from `issued_at` to `expires_at`.
pub const MAX_LIFETIME: u64 = 90 * 86_400;
/// How far in the future `issued_at` may be (clock skew between friends).
pub const MAX_SKEW: u64 = 86_400;

const SIGNING_PREFIX: &[u8] = b"mxfed/1 domain list\0";

/// One domain I host and where friends should relay its mail.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// The domain.
    pub domain: Domain,
    /// Where its mail goes: my mail host unless overridden.
    pub next_hop: NextHop,
}

/// An entry as it travels: plain strings, checked by the receiver so that a
/// bad one can be named in the refusal rather than failing the decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    /// Domain, canonical form.
    pub domain: String,
    /// Next hop, canonical form.
    pub next_hop: String,
}

/// The first frame of a list transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListHeader {
    /// Who signed it.
    pub signer: PeerId,
    /// Strictly increasing with every change.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; an expired list is refused.
    pub expires_at: u64,
    /// Number of entries that follow.
    pub count: u32,
    /// Ed25519 signature over the signing bytes.
    pub signature: Vec<u8>,
}

/// A change to one entry since an older version: its next hop now, or
/// `None` if it was removed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// The domain.
    pub domain: Domain,
    /// Its next hop now; `None`: no longer in the list.
    pub next_hop: Option<NextHop>,
}

/// A [`Change`] as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChange {
    /// Domain, canonical form.
    pub domain: String,
    /// Next hop, canonical form; `None`: removed.
    pub next_hop: Option<String>,
}

/// The first frame of a transfer of changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesHeader {
    /// The header of the whole new list (its count and signature are the
    /// whole list's).
    pub list: ListHeader,
    /// The version the changes apply to: the one the asker said it holds.
    pub base: u64,
    /// Number of changes that follow.
    pub changes: u32,
}

/// The changes in wire chunks of at most [`CHUNK_ENTRIES`].
pub fn change_chunks(changes: &[Change]) -> impl Iterator<Item = Vec<WireChange>> + '_ {
    changes.chunks(CHUNK_ENTRIES).map(|c| {
        c.iter()
            .map(|c| WireChange {
                domain: c.domain.to_string(),
                next_hop: c.next_hop.as_ref().map(|h| h.to_string()),
            })
            .collect()
    })
}

/// A verified (or locally built) list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainList {
    /// Who signed it.
    pub signer: PeerId,
    /// Version.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// Sorted by domain, no duplicates.
    entries: Vec<Entry>,
}

/// Why a list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// The header names another signer than the peer that sent it.
    #[error("list is signed as {claimed}, but was sent by {sender}")]
    WrongSigner {
        /// Who the header claims.
        claimed: PeerId,
        /// Who sent it.
        sender: PeerId,
    },
    /// Not newer than what is held: a replay or rollback.
    #[error(
        "list version {offered} is not newer than version {held} already held (replay or rollback)"
    )]
    NotNewer {
        /// Offered.
        offered: u64,
        /// Held.
        held: u64,
    },
    /// Past its expiry.
    #[error("list version {version} expired at unix time {expires_at}")]
    Expired {
        /// Version.
        version: u64,
        /// When.
        expires_at: u64,
    },
    /// Over a size limit.
    #[error("list is too large: {0}")]
    TooLarge(String),
    /// More or fewer entries than announced, or out of order.
    #[error("list is malformed: {0}")]
    Malformed(String),
    /// An entry that is not a valid, canonical name.
    #[error("list entry {index} is invalid: {error}")]
    BadEntry {
        /// Position in the list.
        index: usize,
        /// What is wrong.
        error: DomainError,
    },
    /// A recipient that is not a valid, canonical address or `@domain`.
    #[error("list entry {index} is invalid: {error}")]
    BadRecipient {
        /// Position in the list.
        index: usize,
        /// What is wrong (a [`crate::recipients::RecipientError`], said).
        error: String,
    },
    /// The signature does not verify against the signer's key.
    #[error("list signature does not verify against the signer's key")]
    BadSignature,
}

fn entries_digest(entries: &[Entry]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut record = Vec::new();
    each_entry_text(entries, |domain, next_hop| {
        record.clear();
        encode_entry(&mut record, domain, next_hop);
        ctx.update(&record);
    });
    finish_digest(ctx)
}

/// Each entry's domain and next hop as text, in order; a next hop is
/// written once for each run of entries that share it (most lists have
/// one), not once per entry.
fn each_entry_text(entries: &[Entry], mut each: impl FnMut(&str, &str)) {
    let mut hop: Option<(&NextHop, String)> = None;
    for e in entries {
        let text = match &hop {
            Some((h, text)) if *h == &e.next_hop => text,
            _ => &hop.insert((&e.next_hop, e.next_hop.to_string())).1,
        };
        each(e.domain.as_str(), text);
    }
}

fn finish_digest(ctx: digest::Context) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Appends one entry in the form the list's digest covers: the domain and
/// the next hop (canonical text), each an [`encode_field`].
fn encode_entry(out: &mut Vec<u8>, domain: &str, next_hop: &str) {
    encode_field(out, domain);
    encode_field(out, next_hop);
}

/// Appends `text` as every signed list's digest covers it: its length
/// (u32, big-endian), then the text.
pub(crate) fn encode_field(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Takes one [`encode_field`] off the front of `rest`; an error (naming
/// `what` is held) if it is cut short or not UTF-8.
pub(crate) fn take_field<'a>(rest: &mut &'a [u8], what: &str) -> Result<&'a str, ListError> {
    let bad = || ListError::Malformed(format!("the {what} held are not well formed"));
    let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_be_bytes(*len) as usize;
    if tail.len() < len {
        return Err(bad());
    }
    let (text, tail) = tail.split_at(len);
    *rest = tail;
    std::str::from_utf8(text).map_err(|_| bad())
}

/// The records of [`EncodedEntries`]: (domain, next hop) as text, in order;
/// `Err` at the first that is cut short or not UTF-8.
fn encoded_records(bytes: &[u8]) -> impl Iterator<Item = Result<(&str, &str), ListError>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let record = take_field(&mut rest, "entries")
            .and_then(|d| Ok((d, take_field(&mut rest, "entries")?)));
        if record.is_err() {
            rest = &[];
        }
        Some(record)
    })
}

/// SHA-256 of `bytes`.
pub(crate) fn digest_of(bytes: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(bytes);
    finish_digest(ctx)
}

/// Merges `changes` (sorted by key) into the records `held` (encoded as a
/// list's digest covers them, sorted by key), for every kind of signed
/// list: a held record is copied as it is; a change gets `apply` with the
/// held record of its key, if any, which writes what the change leaves in
/// the list and says whether it leaves a record and whether it changed
/// anything. Returns the new records and the changes that changed
/// something; `Err` unless there are exactly `want` records (checked as it
/// goes, so a hostile change set cannot make it build more), naming them
/// as `what`, or if `held` is not well formed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn merge_encoded<'h, R: Copy + 'h, C>(
    held: impl Iterator<Item = Result<R, ListError>>,
    held_key: impl Fn(R) -> &'h str,
    write_held: impl Fn(&mut Vec<u8>, R),
    changes: Vec<C>,
    change_key: impl Fn(&C) -> &str,
    apply: impl Fn(&mut Vec<u8>, &C, Option<R>) -> (bool, bool),
    (capacity, want, what): (usize, usize, &str),
) -> Result<(Vec<u8>, Vec<C>), ListError> {
    let mut out = Vec::with_capacity(capacity);
    let mut count = 0usize;
    let mut effective = Vec::new();
    let mut held = held.peekable();
    let mut changes = changes.into_iter().peekable();
    while count <= want {
        let next_held = match held.peek() {
            Some(Ok(r)) => Some(*r),
            Some(Err(e)) => return Err(e.clone()),
            None => None,
        };
        let take_change = match (next_held, changes.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(r), Some(c)) => change_key(c) <= held_key(r),
        };
        if !take_change {
            if let Some(r) = next_held {
                held.next();
                write_held(&mut out, r);
                count += 1;
            }
            continue;
        }
        let Some(c) = changes.next() else { break };
        let was = next_held.filter(|r| held_key(*r) == change_key(&c));
        if was.is_some() {
            held.next();
        }
        let (kept, changed) = apply(&mut out, &c, was);
        if kept {
            count += 1;
        }
        if changed {
            effective.push(c);
        }
    }
    if count != want {
        return Err(ListError::Malformed(format!(
            "the changes make a list of {count}{} {what}, {want} announced",
            if count > want { " or more" } else { "" }
        )));
    }
    Ok((out, effective))
}

/// A list's entries in the compact form its digest covers (see
/// [`DomainList::encoded_entries`]): what a receiver keeps to apply the
/// next changes to, without holding or parsing 100,000 entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncodedEntries(pub Vec<u8>);

impl EncodedEntries {
    /// The entries as (domain, next hop) text, in order; an `Err` for
    /// bytes that are not entries stops the walk.
    pub fn records(&self) -> impl Iterator<Item = Result<(&str, &str), ListError>> {
        encoded_records(&self.0)
    }
}

/// A list received as changes and verified ([`ChangesReceiver::finish_encoded`]):
/// its header, the changes that made a difference to the list held, and
/// the whole list's entries, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedList {
    /// Who signed it.
    pub signer: PeerId,
    /// Version.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// The number of entries of the whole list.
    pub count: u32,
    /// Entries new or with a new next hop (`Some`), and domains removed
    /// (`None`), sorted by domain; changes that changed nothing are left out.
    pub changes: Vec<Change>,
    /// The whole new list, encoded.
    pub entries: EncodedEntries,
}

#[allow(clippy::too_many_arguments)]
fn signing_bytes(
    signer: &PeerId,
    version: u64,
    issued_at: u64,
    expires_at: u64,
    count: u32,
    digest: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_PREFIX.len() + 32 + 8 * 3 + 4 + 32);
    m.extend_from_slice(SIGNING_PREFIX);
    m.extend_from_slice(signer.public_key());
    m.extend_from_slice(&version.to_be_bytes());
    m.extend_from_slice(&issued_at.to_be_bytes());
    m.extend_from_slice(&expires_at.to_be_bytes());
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(digest);
    m
}

impl DomainList {
    /// Builds a list; entries are sorted and de-duplicated by domain (the last wins).
    pub fn new(
        signer: PeerId,
        version: u64,
        issued_at: u64,
        expires_at: u64,
        mut entries: Vec<Entry>,
    ) -> Self {
        entries.reverse();
        entries.sort_by(|a, b| a.domain.cmp(&b.domain));
        entries.dedup_by(|a, b| a.domain == b.domain);
        Self {
            signer,
            version,
            issued_at,
            expires_at,
            entries,
        }
    }

    /// The entries, sorted by domain.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The bytes the signer signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        signing_bytes(
            &self.signer,
            self.version,
            self.issued_at,
            self.expires_at,
            self.entries.len() as u32,
            &entries_digest(&self.entries),
        )
    }

    /// The entries in the form the digest covers, for
    /// [`ChangesReceiver::finish_encoded`] to apply the next changes to.
    pub fn encoded_entries(&self) -> EncodedEntries {
        // Sized first: 4.6 MB for 100,000 entries, not a doubling to 6.3.
        let mut len = 0;
        each_entry_text(&self.entries, |d, h| len += 8 + d.len() + h.len());
        let mut out = Vec::with_capacity(len);
        each_entry_text(&self.entries, |d, h| encode_entry(&mut out, d, h));
        EncodedEntries(out)
    }

    /// The header to send, given the signature over [`Self::signing_bytes`].
    pub fn header(&self, signature: Vec<u8>) -> ListHeader {
        ListHeader {
            signer: self.signer,
            version: self.version,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            count: self.entries.len() as u32,
            signature,
        }
    }

    /// The entries in wire chunks.
    pub fn chunks(&self) -> impl Iterator<Item = Vec<WireEntry>> + '_ {
        self.entries.chunks(CHUNK_ENTRIES).map(|c| {
            c.iter()
                .map(|e| WireEntry {
                    domain: e.domain.to_string(),
                    next_hop: e.next_hop.to_string(),
                })
                .collect()
        })
    }
}

/// Checks a list header from `sender` against the version held (if any)
/// and `now`: signer, version, times, size (at most `max` items),
/// signature length. For every kind of signed list.
pub(crate) fn check_header(
    header: &ListHeader,
    sender: PeerId,
    held: Option<u64>,
    now: u64,
    max: u32,
) -> Result<(), ListError> {
    if header.signer != sender {
        return Err(ListError::WrongSigner {
            claimed: header.signer,
            sender,
        });
    }
    if let Some(held) = held {
        if header.version <= held {
            return Err(ListError::NotNewer {
                offered: header.version,
                held,
            });
        }
    }
    if header.version == 0 {
        return Err(ListError::Malformed(
            "version 0 is reserved for \"no list\"".into(),
        ));
    }
    if header.issued_at > header.expires_at
        || header.expires_at - header.issued_at > MAX_LIFETIME
        || header.issued_at > now.saturating_add(MAX_SKEW)
    {
        return Err(ListError::Malformed(format!(
                "implausible times: issued at {}, expires at {}, now {now} (at most {} days, {}s of clock skew)",
                header.issued_at,
                header.expires_at,
                MAX_LIFETIME / 86_400,
                MAX_SKEW
            )));
    }
    if header.expires_at <= now {
        return Err(ListError::Expired {
            version: header.version,
            expires_at: header.expires_at,
        });
    }
    if header.count > max {
        return Err(ListError::TooLarge(format!(
            "{} entries announced, the limit is {max}",
            header.count
        )));
    }
    if header.signature.len() != 64 {
        return Err(ListError::BadSignature);
    }
    Ok(())
}

/// Assembles and checks a list as it arrives. Sans-IO: feed it frames.
#[derive(Debug)]
pub struct ListReceiver {
    header: ListHeader,
    entries: Vec<Entry>,
    bytes: usize,
}

impl ListReceiver {
    /// Checks a header from `sender` against the version held (if any) and `now`.
    pub fn start(
        header: ListHeader,
        sender: PeerId,
        held: Option<u64>,
        now: u64,
    ) -> Result<Self, ListError> {
        check_header(&header, sender, held, now, MAX_ENTRIES)?;
        Ok(Self {
            entries: Vec::with_capacity(header.count.min(10_000) as usize),
            header,
            bytes: 0,
        })
    }

    /// The header being received.
    pub fn header(&self) -> &ListHeader {
        &self.header
    }

    /// Whether every announced entry has arrived.
    pub fn is_complete(&self) -> bool {
        self.entries.len() == self.header.count as usize
    }

    /// Adds a chunk, checking each entry.
    pub fn push(&mut self, chunk: Vec<WireEntry>) -> Result<(), ListError> {
        if chunk.is_empty() || chunk.len() > CHUNK_ENTRIES {
            return Err(ListError::Malformed(format!(
                "chunk of {} entries",
                chunk.len()
            )));
        }
        if self.entries.len() + chunk.len() > self.header.count as usize {
            return Err(ListError::Malformed(format!(
                "more entries than the {} announced",
                self.header.count
            )));
        }
        for w in chunk {
            let index = self.entries.len();
            self.bytes += w.domain.len() + w.next_hop.len();
            if self.bytes > MAX_LIST_BYTES {
                return Err(ListError::TooLarge(format!(
                    "over {MAX_LIST_BYTES} bytes of entries"
                )));
            }
            let domain = Domain::parse_canonical(&w.domain)
                .map_err(|error| ListError::BadEntry { index, error })?;
            // Most entries of a list share their next hop: the one parsed
            // for the entry before is shared, not parsed and stored again.
            let next_hop = match self.entries.last() {
                Some(prev) if prev.next_hop.is_written_as(&w.next_hop) => prev.next_hop.clone(),
                _ => NextHop::parse_canonical(&w.next_hop)
                    .map_err(|error| ListError::BadEntry { index, error })?,
            };
            if let Some(prev) = self.entries.last() {
                if prev.domain >= domain {
                    return Err(ListError::Malformed(format!(
                        "entries not strictly sorted at {index} ({domain} after {})",
                        prev.domain
                    )));
                }
            }
            self.entries.push(Entry { domain, next_hop });
        }
        Ok(())
    }

    /// Checks the count and the signature; the only way to a received list.
    pub fn finish(self) -> Result<DomainList, ListError> {
        if !self.is_complete() {
            return Err(ListError::Malformed(format!(
                "{} entries announced, {} received",
                self.header.count,
                self.entries.len()
            )));
        }
        let list = DomainList {
            signer: self.header.signer,
            version: self.header.version,
            issued_at: self.header.issued_at,
            expires_at: self.header.expires_at,
            entries: self.entries,
        };
        if !list
            .signer
            .verify(&list.signing_bytes(), &self.header.signature)
        {
            return Err(ListError::BadSignature);
        }
        Ok(list)
    }
}

/// Assembles and checks the changes since a version held, as they arrive,
/// and rebuilds the whole list from them. Sans-IO: feed it frames, then the
/// entries held.
#[derive(Debug)]
pub struct ChangesReceiver {
    header: ChangesHeader,
    changes: Vec<Change>,
    bytes: usize,
}

impl ChangesReceiver {
    /// Checks a header from `sender` against the version held and `now`:
    /// the changes must apply to exactly that version.
    pub fn start(
        header: ChangesHeader,
        sender: PeerId,
        held: u64,
        now: u64,
    ) -> Result<Self, ListError> {
        check_header(&header.list, sender, Some(held), now, MAX_ENTRIES)?;
        if header.base != held {
            return Err(ListError::Malformed(format!(
                "changes since version {} sent, but version {held} is held",
                header.base
            )));
        }
        if header.changes > MAX_ENTRIES {
            return Err(ListError::TooLarge(format!(
                "{} changes announced, the limit is {MAX_ENTRIES}",
                header.changes
            )));
        }
        Ok(Self {
            changes: Vec::with_capacity(header.changes.min(10_000) as usize),
            header,
            bytes: 0,
        })
    }

    /// The header being received.
    pub fn header(&self) -> &ChangesHeader {
        &self.header
    }

    /// Whether every announced change has arrived.
    pub fn is_complete(&self) -> bool {
        self.changes.len() == self.header.changes as usize
    }

    /// Adds a chunk, checking each change.
    pub fn push(&mut self, chunk: Vec<WireChange>) -> Result<(), ListError> {
        if chunk.is_empty() || chunk.len() > CHUNK_ENTRIES {
            return Err(ListError::Malformed(format!(
                "chunk of {} changes",
                chunk.len()
            )));
        }
        if self.changes.len() + chunk.len() > self.header.changes as usize {
            return Err(ListError::Malformed(format!(
                "more changes than the {} announced",
                self.header.changes
            )));
        }
        for w in chunk {
            let index = self.changes.len();
            self.bytes += w.domain.len() + w.next_hop.as_ref().map_or(0, String::len);
            if self.bytes > MAX_LIST_BYTES {
                return Err(ListError::TooLarge(format!(
                    "over {MAX_LIST_BYTES} bytes of changes"
                )));
            }
            let domain = Domain::parse_canonical(&w.domain)
                .map_err(|error| ListError::BadEntry { index, error })?;
            let next_hop = w
                .next_hop
                .as_deref()
                .map(NextHop::parse_canonical)
                .transpose()
                .map_err(|error| ListError::BadEntry { index, error })?;
            if let Some(prev) = self.changes.last() {
                if prev.domain >= domain {
                    return Err(ListError::Malformed(format!(
                        "changes not strictly sorted at {index} ({domain} after {})",
                        prev.domain
                    )));
                }
            }
            self.changes.push(Change { domain, next_hop });
        }
        Ok(())
    }
}

impl ChangesReceiver {
    /// Applies the changes to `held` (the entries of the version held, as
    /// [`DomainList::encoded_entries`] or an earlier [`ChangedList`] has
    /// them), checks the count and the signature over the whole result; the
    /// only way to a list received as changes. A removal of a domain not
    /// held changes nothing (it was added and removed since). The held entries are
    /// not parsed (they were checked when they arrived, and the signature
    /// over the result covers them again), only merged with the changes and
    /// hashed. So applying one change to a list of 100,000 costs a pass over
    /// a few megabytes, not 100,000 parsed entries.
    pub fn finish_encoded(self, held: &EncodedEntries) -> Result<ChangedList, ListError> {
        if !self.is_complete() {
            return Err(ListError::Malformed(format!(
                "{} changes announced, {} received",
                self.header.changes,
                self.changes.len()
            )));
        }
        let want = self.header.list.count as usize;
        let capacity = held.0.len() + self.bytes + 8 * self.changes.len();
        let (out, effective) = merge_encoded(
            held.records(),
            |(d, _)| d,
            |out, (d, h)| encode_entry(out, d, h),
            self.changes,
            |c: &Change| c.domain.as_str(),
            |out, c, was| match &c.next_hop {
                Some(hop) => {
                    let hop = hop.to_string();
                    encode_entry(out, c.domain.as_str(), &hop);
                    (true, was.map(|(_, h)| h) != Some(hop.as_str()))
                }
                // A removal of a domain not held changes nothing.
                None => (false, was.is_some()),
            },
            (capacity, want, "entries"),
        )?;
        let l = &self.header.list;
        let signed = signing_bytes(
            &l.signer,
            l.version,
            l.issued_at,
            l.expires_at,
            l.count,
            &digest_of(&out),
        );
        if !l.signer.verify(&signed, &l.signature) {
            return Err(ListError::BadSignature);
        }
        Ok(ChangedList {
            signer: l.signer,
            version: l.version,
            issued_at: l.issued_at,
            expires_at: l.expires_at,
            count: l.count,
            changes: effective,
            entries: EncodedEntries(out),
        })
    }
}

/// The changes that turn `old` into `new` (both sorted by domain, as
/// [`DomainList::entries`] are), sorted by domain.
pub fn changes_between(old: &[Entry], new: &[Entry]) -> Vec<Change> {
    let mut out = Vec::new();
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(a), Some(b)) if a.domain == b.domain => {
                if a.next_hop != b.next_hop {
                    out.push(Change {
                        domain: b.domain.clone(),
                        next_hop: Some(b.next_hop.clone()),
                    });
                }
                o.next();
                n.next();
            }
            (Some(a), b) if b.is_none_or(|b| a.domain < b.domain) => {
                out.push(Change {
                    domain: a.domain.clone(),
                    next_hop: None,
                });
                o.next();
            }
            (_, Some(b)) => {
                out.push(Change {
                    domain: b.domain.clone(),
                    next_hop: Some(b.next_hop.clone()),
                });
                n.next();
            }
            (Some(_), None) => unreachable!("handled above"),
        }
    }
    out
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

    fn entry(d: &str) -> Entry {
        Entry {
            domain: Domain::parse(d).unwrap(),
            next_hop: NextHop::parse("mail.friend.example").unwrap(),
        }
    }

    fn signed(k: &Ed25519KeyPair, list: &DomainList) -> (ListHeader, Vec<Vec<WireEntry>>) {
        let sig = k.sign(&list.signing_bytes()).as_ref().to_vec();
        (list.header(sig), list.chunks().collect())
    }

    fn receive(
        h: ListHeader,
        chunks: Vec<Vec<WireEntry>>,
        from: PeerId,
        held: Option<u64>,
    ) -> Result<DomainList, ListError> {
        let mut r = ListReceiver::start(h, from, held, 1000)?;
        for c in chunks {
            r.push(c)?;
        }
        r.finish()
    }

    #[test]
    fn a_signed_list_round_trips_in_chunks() {
        let (k, id) = key(1);
        let entries: Vec<Entry> = (0..2500)
            .map(|i| entry(&format!("d{i:05}.example")))
            .collect();
        let list = DomainList::new(id, 3, 900, 5000, entries);
        let (h, chunks) = signed(&k, &list);
        assert_eq!(chunks.len(), 3);
        assert_eq!(receive(h, chunks, id, Some(2)).unwrap(), list);
    }

    #[test]
    fn new_sorts_and_dedups() {
        let (_, id) = key(1);
        let l = DomainList::new(
            id,
            1,
            0,
            1,
            vec![entry("b.example"), entry("a.example"), entry("b.example")],
        );
        let names: Vec<&str> = l.entries().iter().map(|e| e.domain.as_str()).collect();
        assert_eq!(names, ["a.example", "b.example"]);
    }

    #[test]
    fn tampering_anywhere_breaks_the_signature() {
        let (k, id) = key(1);
        let list = DomainList::new(
            id,
            3,
            900,
            5000,
            vec![entry("a.example"), entry("b.example")],
        );
        let (h, chunks) = signed(&k, &list);
        let mut h2 = h.clone();
        h2.expires_at += 1;
        assert_eq!(
            receive(h2, chunks.clone(), id, None),
            Err(ListError::BadSignature)
        );
        let mut c2 = chunks.clone();
        c2[0][1].domain = "c.example".into();
        assert_eq!(
            receive(h.clone(), c2, id, None),
            Err(ListError::BadSignature)
        );
        let mut c3 = chunks;
        c3[0][0].next_hop = "mail.evil.example".into();
        assert_eq!(receive(h, c3, id, None), Err(ListError::BadSignature));
    }

    #[test]
    fn a_list_signed_by_another_key_is_refused() {
        let (_, id) = key(1);
        let (other_key, other) = key(2);
        // Signed by `other` but claiming to be `id`.
        let list = DomainList::new(id, 3, 900, 5000, vec![entry("a.example")]);
        let (h, chunks) = signed(&other_key, &list);
        assert_eq!(receive(h, chunks, id, None), Err(ListError::BadSignature));
        // Honestly signed by `other`, but relayed by `id`.
        let list = DomainList::new(other, 3, 900, 5000, vec![entry("a.example")]);
        let (h, chunks) = signed(&other_key, &list);
        assert!(matches!(
            receive(h, chunks, id, None),
            Err(ListError::WrongSigner { .. })
        ));
    }

    #[test]
    fn replay_rollback_and_expiry_are_refused() {
        let (k, id) = key(1);
        let list = DomainList::new(id, 3, 900, 5000, vec![entry("a.example")]);
        let (h, chunks) = signed(&k, &list);
        assert!(matches!(
            receive(h.clone(), chunks.clone(), id, Some(3)),
            Err(ListError::NotNewer { .. })
        ));
        assert!(matches!(
            receive(h, chunks, id, Some(4)),
            Err(ListError::NotNewer { .. })
        ));
        let old = DomainList::new(id, 5, 100, 1000, vec![entry("a.example")]);
        let (h, chunks) = signed(&k, &old);
        assert!(matches!(
            receive(h, chunks, id, None),
            Err(ListError::Expired { .. })
        ));
    }

    #[test]
    fn implausible_times_and_empty_chunks_are_refused() {
        let (k, id) = key(1);
        for (issued, expires) in [
            (2000, 1500),
            (900, 900 + MAX_LIFETIME + 1),
            (1000 + MAX_SKEW + 1, 1000 + MAX_SKEW + 100),
        ] {
            let list = DomainList::new(id, 3, issued, expires, vec![entry("a.example")]);
            let (h, _) = signed(&k, &list);
            assert!(
                matches!(
                    ListReceiver::start(h, id, None, 1000),
                    Err(ListError::Malformed(_))
                ),
                "{issued} {expires}"
            );
        }
        let list = DomainList::new(id, 3, 900, 5000, vec![entry("a.example")]);
        let (h, _) = signed(&k, &list);
        let mut r = ListReceiver::start(h, id, None, 1000).unwrap();
        assert!(matches!(r.push(vec![]), Err(ListError::Malformed(_))));
    }

    #[test]
    fn size_limits_are_checked_before_entries_arrive() {
        let (k, id) = key(1);
        let list = DomainList::new(id, 3, 900, 5000, vec![entry("a.example")]);
        let (mut h, _) = signed(&k, &list);
        h.count = MAX_ENTRIES + 1;
        assert!(matches!(
            ListReceiver::start(h, id, None, 1000),
            Err(ListError::TooLarge(_))
        ));
    }

    #[test]
    fn extra_missing_and_unsorted_entries_are_refused() {
        let (k, id) = key(1);
        let list = DomainList::new(
            id,
            3,
            900,
            5000,
            vec![entry("a.example"), entry("b.example")],
        );
        let (h, chunks) = signed(&k, &list);
        let mut more = chunks.clone();
        more[0].push(WireEntry {
            domain: "c.example".into(),
            next_hop: "mail.friend.example".into(),
        });
        assert!(matches!(
            receive(h.clone(), more, id, None),
            Err(ListError::Malformed(_))
        ));
        let mut fewer = chunks.clone();
        fewer[0].pop();
        assert!(matches!(
            receive(h.clone(), fewer, id, None),
            Err(ListError::Malformed(_))
        ));
        let mut swapped = chunks;
        swapped[0].swap(0, 1);
        assert!(matches!(
            receive(h, swapped, id, None),
            Err(ListError::Malformed(_))
        ));
    }

    #[test]
    fn injection_attempts_are_named_and_refused() {
        let (k, id) = key(1);
        let list = DomainList::new(id, 3, 900, 5000, vec![entry("a.example")]);
        let (h, _) = signed(&k, &list);
        for (domain, hop) in [
            ("evil.example\nrelay_domains = ", "mail.friend.example"),
            ("evil.example OK", "mail.friend.example"),
            ("*", "mail.friend.example"),
            (".", "mail.friend.example"),
            ("*.evil.example", "mail.friend.example"),
            ("192.0.2.1", "mail.friend.example"),
            ("evil.example", "mail.friend.example smtp:[x]"),
            ("evil.example", "[mail.friend.example]"),
            ("Evil.example", "mail.friend.example"),
        ] {
            let chunk = vec![WireEntry {
                domain: domain.into(),
                next_hop: hop.into(),
            }];
            let err = receive(h.clone(), vec![chunk], id, None).unwrap_err();
            assert!(
                matches!(err, ListError::BadEntry { index: 0, .. }),
                "{domain:?} {hop:?}: {err}"
            );
        }
    }

    fn changes_of(
        list: &DomainList,
        k: &Ed25519KeyPair,
        base: u64,
        changes: &[Change],
    ) -> (ChangesHeader, Vec<Vec<WireChange>>) {
        let sig = k.sign(&list.signing_bytes()).as_ref().to_vec();
        (
            ChangesHeader {
                list: list.header(sig),
                base,
                changes: changes.len() as u32,
            },
            change_chunks(changes).collect(),
        )
    }

    fn receive_changes(
        h: ChangesHeader,
        chunks: Vec<Vec<WireChange>>,
        from: PeerId,
        held: &DomainList,
    ) -> Result<ChangedList, ListError> {
        let mut r = ChangesReceiver::start(h, from, held.version, 1000)?;
        for c in chunks {
            r.push(c)?;
        }
        r.finish_encoded(&held.encoded_entries())
    }

    /// Whether `got` is `list`, received as changes.
    fn is_list(got: &ChangedList, list: &DomainList) -> bool {
        (
            got.signer,
            got.version,
            got.issued_at,
            got.expires_at,
            got.count as usize,
        ) == (
            list.signer,
            list.version,
            list.issued_at,
            list.expires_at,
            list.entries().len(),
        ) && got.entries == list.encoded_entries()
    }

    fn hop_entry(d: &str, hop: &str) -> Entry {
        Entry {
            domain: Domain::parse(d).unwrap(),
            next_hop: NextHop::parse(hop).unwrap(),
        }
    }

    #[test]
    fn changes_rebuild_the_signed_list_from_the_one_held() {
        let (k, id) = key(1);
        let old: Vec<Entry> = (0..2500)
            .map(|i| entry(&format!("d{i:05}.example")))
            .collect();
        let held = DomainList::new(id, 3, 900, 5000, old.clone());
        let mut new = old;
        new.retain(|e| e.domain.as_str() != "d00007.example");
        new.push(entry("a-new.example"));
        new.push(entry("z-new.example"));
        new[100] = hop_entry(new[100].domain.as_str(), "mail2.friend.example");
        let list = DomainList::new(id, 4, 950, 5000, new);
        let changes = changes_between(held.entries(), list.entries());
        assert_eq!(changes.len(), 4, "{changes:?}");
        let (h, chunks) = changes_of(&list, &k, 3, &changes);
        let got = receive_changes(h, chunks, id, &held).unwrap();
        assert!(is_list(&got, &list));
        assert_eq!(got.changes, changes);
        // Nothing changed but the version (a re-signing): no changes at all.
        let resigned = DomainList::new(id, 5, 960, 5000, list.entries().to_vec());
        let (h, chunks) = changes_of(&resigned, &k, 4, &[]);
        let got = receive_changes(h, chunks, id, &list).unwrap();
        assert!(is_list(&got, &resigned) && got.changes.is_empty());
        // A change that restates an entry held, and the removal of a domain
        // not held (added and removed since), make the list but are no
        // changes to judge.
        let mut restated = vec![
            Change {
                domain: list.entries()[5].domain.clone(),
                next_hop: Some(list.entries()[5].next_hop.clone()),
            },
            Change {
                domain: Domain::parse("zz-gone.example").unwrap(),
                next_hop: None,
            },
        ];
        restated.sort();
        let again = DomainList::new(id, 6, 970, 5000, list.entries().to_vec());
        let (h, chunks) = changes_of(&again, &k, 5, &restated);
        let got = receive_changes(h, chunks, id, &resigned).unwrap();
        assert!(is_list(&got, &again) && got.changes.is_empty());
    }

    #[test]
    fn entries_held_that_are_cut_short_are_refused_not_trusted() {
        let (k, id) = key(1);
        let held = DomainList::new(id, 3, 900, 5000, vec![entry("a.example")]);
        let list = DomainList::new(
            id,
            4,
            900,
            5000,
            vec![entry("a.example"), entry("b.example")],
        );
        let changes = changes_between(held.entries(), list.entries());
        let mut bytes = held.encoded_entries().0;
        bytes.truncate(bytes.len() - 3);
        let (h, chunks) = changes_of(&list, &k, 3, &changes);
        let mut r = ChangesReceiver::start(h, id, 3, 1000).unwrap();
        for c in chunks {
            r.push(c).unwrap();
        }
        assert!(matches!(
            r.finish_encoded(&EncodedEntries(bytes)),
            Err(ListError::Malformed(_))
        ));
    }

    #[test]
    fn changes_that_do_not_rebuild_the_signed_list_are_refused() {
        let (k, id) = key(1);
        let held = DomainList::new(
            id,
            3,
            900,
            5000,
            vec![entry("a.example"), entry("b.example")],
        );
        let list = DomainList::new(
            id,
            4,
            900,
            5000,
            vec![entry("a.example"), entry("c.example")],
        );
        let changes = changes_between(held.entries(), list.entries());
        // Applied to another version than the one held.
        let (h, chunks) = changes_of(&list, &k, 2, &changes);
        assert!(matches!(
            receive_changes(h, chunks, id, &held),
            Err(ListError::Malformed(_))
        ));
        // A change left out, or one slipped in: the count or signature fails.
        let (h, mut chunks) = changes_of(&list, &k, 3, &changes);
        let mut fewer = h.clone();
        fewer.changes -= 1;
        chunks[0].pop();
        assert!(receive_changes(fewer, chunks, id, &held).is_err());
        let mut more = changes.clone();
        more.push(Change {
            domain: Domain::parse("evil.example").unwrap(),
            next_hop: Some(NextHop::parse("mail.evil.example").unwrap()),
        });
        let (mut h, chunks) = changes_of(&list, &k, 3, &more);
        h.list.count += 1;
        assert_eq!(
            receive_changes(h, chunks, id, &held),
            Err(ListError::BadSignature)
        );
        // A re-targeted next hop that was not signed.
        let mut evil = changes.clone();
        evil[1].next_hop = Some(NextHop::parse("mail.evil.example").unwrap());
        let (h, chunks) = changes_of(&list, &k, 3, &changes);
        let (_, evil_chunks) = changes_of(&list, &k, 3, &evil);
        assert_eq!(
            receive_changes(h.clone(), evil_chunks, id, &held),
            Err(ListError::BadSignature)
        );
        // Unsorted, and a bad name, are named.
        let mut swapped = chunks.clone();
        swapped[0].swap(0, 1);
        assert!(matches!(
            receive_changes(h.clone(), swapped, id, &held),
            Err(ListError::Malformed(_))
        ));
        let mut bad = chunks;
        bad[0][0].domain = "evil.example OK".into();
        assert!(matches!(
            receive_changes(h, bad, id, &held),
            Err(ListError::BadEntry { index: 0, .. })
        ));
        // A replay is not newer than what is held.
        let (h, chunks) = changes_of(&held, &k, 3, &[]);
        assert!(matches!(
            receive_changes(h, chunks, id, &held),
            Err(ListError::NotNewer { .. })
        ));
    }
}
