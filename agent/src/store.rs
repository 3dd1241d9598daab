//! [`Store`]: all agent state, in SQLite at `<data_dir>/mxfed.db`.
//!
//! This is the only module that speaks SQL. The database runs in WAL mode
//! with `synchronous = NORMAL`; migrations are embedded in the binary
//! (`agent/migrations/`) and run on open, so no live database is needed to
//! build. Queries use sqlx's runtime functions, not the compile-time macros.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use mxfed_proto::control::EntryState;
use mxfed_proto::domain::{Domain, NextHop};
use mxfed_proto::list::{DomainList, EncodedEntries, Entry};
use mxfed_proto::msg::{EntryNote, ListAck};
use mxfed_proto::recipients::{EncodedItems, Recipient, RecipientList};
use mxfed_proto::token::{TokenId, TokenKey};
use mxfed_proto::PeerId;

use crate::postfix::render::Pins;

/// The database handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
    /// Bumped by every write that may change [`Store::relay_routes`], so
    /// readers that keep something made from the routes know when to make
    /// it again (see [`Store::routes_generation`]).
    routes_gen: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A failed database operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened or migrated: corrupt, or not ours.
    #[error("database {path} cannot be opened: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        message: String,
    },
    /// A query failed.
    #[error("database {path}: {message}")]
    Query {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        message: String,
    },
    /// A row holds a value this version cannot read.
    #[error("database {path}: bad value in {what}: {value:?}")]
    BadRow {
        /// The file.
        path: PathBuf,
        /// Table and column.
        what: &'static str,
        /// The stored value.
        value: String,
    },
}

/// A paired peer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// Its ID (public key).
    pub id: PeerId,
    /// Its name; unique among peers.
    pub name: String,
    /// Its mail host.
    pub mail_host: String,
    /// Addresses it advertises.
    pub addrs: Vec<SocketAddr>,
    /// Its software version, as it last said.
    pub agent_version: Option<String>,
    /// Unix seconds of pairing.
    pub paired_at: i64,
    /// Unix seconds it was last connected.
    pub last_seen: Option<i64>,
    /// The remote address last used.
    pub last_address: Option<String>,
}

/// Outcome of [`Store::redeem_invite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteState {
    /// No invite with that ID was ever issued here.
    Unknown,
    /// Already redeemed.
    Used,
    /// Past its expiry.
    Expired,
    /// Valid; here is the key to check the proof with.
    Valid(TokenKey),
}

/// The signed header of my current list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyListMeta {
    /// Version.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// Signature over the list's signing bytes.
    pub signature: Vec<u8>,
}

/// My recipient list's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyRecipientMeta {
    /// Version.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// `recipient_delimiter` as signed.
    pub delimiter: String,
    /// Signature over the list's signing bytes.
    pub signature: Vec<u8>,
}

/// What the relay map needs of one friend's domain's recipients.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DomainRecipients {
    /// The friend's `recipient_delimiter`.
    pub delimiter: String,
    /// Its addresses (and `@domain` for a catch-all), sorted.
    pub items: Vec<String>,
}

/// A peer's list as held: header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerListMeta {
    /// Version.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// Unix seconds it was received.
    pub received_at: i64,
}

/// A verified list's header and entries as [`Store::store_peer_list`]
/// keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListHead {
    /// Version.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// The entries, as signed.
    pub entries: EncodedEntries,
}

impl From<&DomainList> for ListHead {
    fn from(list: &DomainList) -> Self {
        Self {
            version: list.version,
            issued_at: list.issued_at,
            expires_at: list.expires_at,
            entries: list.encoded_entries(),
        }
    }
}

/// A verified recipient list's header and items as
/// [`Store::store_peer_recipients`] keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientHead {
    /// Version.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// The owner's `recipient_delimiter`.
    pub delimiter: String,
    /// The owner's backup mode is `when-down`.
    pub when_down: bool,
    /// The owner's server key fingerprints.
    pub tls_fingerprints: Vec<String>,
    /// The items, as signed.
    pub items: EncodedItems,
}

impl From<&RecipientList> for RecipientHead {
    fn from(list: &RecipientList) -> Self {
        Self {
            version: list.version,
            issued_at: list.issued_at,
            expires_at: list.expires_at,
            delimiter: list.delimiter.clone(),
            when_down: list.when_down,
            tls_fingerprints: list.tls_fingerprints.clone(),
            items: list.encoded_items(),
        }
    }
}

/// What a peer's list held here comes to (see [`Store::list_summary`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListSummary {
    /// Entries accepted.
    pub accepted: u32,
    /// Entries refused.
    pub refused: u32,
    /// Entries pending.
    pub pending: u32,
    /// The first refused entries: domain and reason.
    pub refused_notes: Vec<(String, String)>,
    /// The first pending entries: domain and reason.
    pub pending_notes: Vec<(String, String)>,
}

/// One entry of a peer's list as held, with its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldEntry {
    /// The entry.
    pub entry: Entry,
    /// What was made of it.
    pub state: EntryState,
    /// Why.
    pub reason: Option<String>,
    /// The checked addresses of its next hop, which Postfix relays to
    /// (empty unless accepted, and for entries judged before addresses
    /// were kept).
    pub addrs: Vec<IpAddr>,
}

/// What a peer said of my list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAck {
    /// The acknowledgement.
    pub ack: ListAck,
    /// Unix seconds it arrived.
    pub received_at: i64,
}

type PeerRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
);

impl Store {
    /// Opens (creating if missing) and migrates the database.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.into(),
            message: e.to_string(),
        };
        if path.exists() {
            // Only migrate an empty database or one of ours: never rewrite
            // some other application's SQLite file given by mistake. Look
            // read-only first, since even switching to WAL writes the file.
            let ro = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(SqliteConnectOptions::new().filename(path).read_only(true))
                .await
                .map_err(|e| open_err(&e))?;
            let tables: Vec<(String,)> = sqlx::query_as(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .fetch_all(&ro)
            .await
            .map_err(|e| open_err(&e))?;
            ro.close().await;
            if !tables.is_empty() && !tables.iter().any(|(t,)| t == "_sqlx_migrations") {
                return Err(open_err(
                    &"not an mxfed database (it has other tables and no migration history)",
                ));
            }
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Writers wait for each other rather than fail: storing a
            // friend's 1,000,000-recipient list is one transaction of
            // several seconds (readers are never blocked, WAL).
            .busy_timeout(Duration::from_secs(60))
            // 1 MiB of page cache per connection (SQLite's default is 2):
            // four connections each reading a list of 100,000 filled 8 MB
            // of a big sync's peak; the pages are in the OS's cache anyway.
            .pragma("cache_size", "-1024");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| open_err(&e))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| open_err(&e))?;
        let store = Self {
            pool,
            path: path.into(),
            routes_gen: Default::default(),
        };
        store.seed_seen().await?;
        Ok(store)
    }

    /// For peers paired before seen addresses were kept: the address each
    /// last came from is the first one seen.
    async fn seed_seen(&self) -> Result<(), StoreError> {
        let q = |e| self.query_err(e);
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT id, last_address, COALESCE(last_seen, 0) FROM peers
             WHERE last_address IS NOT NULL AND id NOT IN (SELECT peer_id FROM peer_seen)",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q)?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(q)?;
        for (id, address, at) in rows {
            if let Ok(a) = address.parse::<SocketAddr>() {
                record_seen(&mut tx, &id, a.ip().to_canonical(), at)
                    .await
                    .map_err(q)?;
            }
        }
        tx.commit().await.map_err(q)
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn query_err(&self, e: sqlx::Error) -> StoreError {
        StoreError::Query {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn peer_from_row(&self, row: PeerRow) -> Result<PeerRecord, StoreError> {
        let (id, name, mail_host, addresses, agent_version, paired_at, last_seen, last_address) =
            row;
        let bad = |what, value: &str| StoreError::BadRow {
            path: self.path.clone(),
            what,
            value: value.into(),
        };
        let peer_id = PeerId::from_str(&id).map_err(|_| bad("peers.id", &id))?;
        let addrs = addresses
            .split_whitespace()
            .map(|a| a.parse().map_err(|_| bad("peers.addresses", &addresses)))
            .collect::<Result<_, _>>()?;
        Ok(PeerRecord {
            id: peer_id,
            name,
            mail_host,
            addrs,
            agent_version,
            paired_at,
            last_seen,
            last_address,
        })
    }

    /// All paired peers, sorted by name.
    pub async fn peers(&self) -> Result<Vec<PeerRecord>, StoreError> {
        let rows: Vec<PeerRow> = sqlx::query_as(
            "SELECT id, name, mail_host, addresses, agent_version, paired_at, last_seen, last_address
             FROM peers ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        rows.into_iter().map(|r| self.peer_from_row(r)).collect()
    }

    /// One peer by ID.
    pub async fn peer(&self, id: &PeerId) -> Result<Option<PeerRecord>, StoreError> {
        let row: Option<PeerRow> = sqlx::query_as(
            "SELECT id, name, mail_host, addresses, agent_version, paired_at, last_seen, last_address
             FROM peers WHERE id = ?",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        row.map(|r| self.peer_from_row(r)).transpose()
    }

    /// Records what a connected peer says about itself (not its name, which
    /// was fixed at pairing).
    pub async fn update_peer_info(
        &self,
        id: &PeerId,
        mail_host: &str,
        addrs: &[SocketAddr],
        agent_version: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE peers SET mail_host = ?, addresses = ?, agent_version = ? WHERE id = ?",
        )
        .bind(mail_host)
        .bind(join_addrs(addrs))
        .bind(agent_version)
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        Ok(())
    }

    /// Records that a peer was connected at `now` from `address`.
    ///
    /// `address` is where its authenticated endpoint is now (a session's
    /// remote address), so it is also kept among the addresses it has been
    /// seen at (the [`MAX_SEEN`] most recent).
    pub async fn touch_peer(
        &self,
        id: &PeerId,
        now: i64,
        address: &SocketAddr,
    ) -> Result<(), StoreError> {
        let q = |e| self.query_err(e);
        let peer = id.to_string();
        let mut tx = self.pool.begin().await.map_err(q)?;
        sqlx::query("UPDATE peers SET last_seen = ?, last_address = ? WHERE id = ?")
            .bind(now)
            .bind(address.to_string())
            .bind(&peer)
            .execute(&mut *tx)
            .await
            .map_err(q)?;
        record_seen(&mut tx, &peer, address.ip().to_canonical(), now)
            .await
            .map_err(q)?;
        tx.commit().await.map_err(q)
    }

    /// Adds a peer (after a successful join, as joiner).
    pub async fn insert_peer(&self, peer: &PeerRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.query_err(e))?;
        insert_peer(&mut tx, peer)
            .await
            .map_err(|e| self.query_err(e))?;
        tx.commit().await.map_err(|e| self.query_err(e))
    }

    /// Removes a peer; returns whether it existed.
    pub async fn remove_peer(&self, id: &PeerId) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM peers WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| self.query_err(e))?;
        self.routes_changed();
        Ok(r.rows_affected() > 0)
    }

    /// Files a new invite under its ID; only the derived key is stored.
    pub async fn add_invite(
        &self,
        token_id: &TokenId,
        key: &TokenKey,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        // Expired invites are of no further use; keep the table small.
        sqlx::query("DELETE FROM invites WHERE expires_at < ?")
            .bind(now - 7 * 86_400)
            .execute(&self.pool)
            .await
            .map_err(|e| self.query_err(e))?;
        sqlx::query(
            "INSERT INTO invites (token_id, key, created_at, expires_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&token_id[..])
        .bind(&key[..])
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        Ok(())
    }

    /// Looks up an invite without using it.
    pub async fn invite(&self, token_id: &TokenId, now: i64) -> Result<InviteState, StoreError> {
        let row: Option<(Vec<u8>, i64, Option<i64>)> =
            sqlx::query_as("SELECT key, expires_at, used_at FROM invites WHERE token_id = ?")
                .bind(&token_id[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.query_err(e))?;
        Ok(match row {
            None => InviteState::Unknown,
            Some((_, _, Some(_))) => InviteState::Used,
            Some((_, exp, None)) if now >= exp => InviteState::Expired,
            Some((key, _, None)) => match key.try_into() {
                Ok(k) => InviteState::Valid(k),
                Err(_) => {
                    return Err(StoreError::BadRow {
                        path: self.path.clone(),
                        what: "invites.key",
                        value: "wrong length".into(),
                    })
                }
            },
        })
    }

    /// Marks the invite used and adds the joiner as a peer, in one
    /// transaction. Returns false (and changes nothing) if the invite was
    /// used in the meantime.
    pub async fn redeem_invite(
        &self,
        token_id: &TokenId,
        now: i64,
        peer: &PeerRecord,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.query_err(e))?;
        let r = sqlx::query(
            "UPDATE invites SET used_at = ?, used_by = ? WHERE token_id = ? AND used_at IS NULL AND expires_at > ?",
        )
        .bind(now)
        .bind(peer.id.to_string())
        .bind(&token_id[..])
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.query_err(e))?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        insert_peer(&mut tx, peer)
            .await
            .map_err(|e| self.query_err(e))?;
        tx.commit().await.map_err(|e| self.query_err(e))?;
        Ok(true)
    }
}

impl Store {
    fn bad(&self, what: &'static str, value: impl Into<String>) -> StoreError {
        StoreError::BadRow {
            path: self.path.clone(),
            what,
            value: value.into(),
        }
    }

    fn entry_from(&self, domain: &str, next_hop: &str) -> Result<Entry, StoreError> {
        Ok(Entry {
            domain: Domain::parse_canonical(domain).map_err(|_| self.bad("domain", domain))?,
            next_hop: NextHop::parse_canonical(next_hop)
                .map_err(|_| self.bad("next_hop", next_hop))?,
        })
    }

    /// My current list's header, if I ever published one.
    pub async fn my_list_meta(&self) -> Result<Option<MyListMeta>, StoreError> {
        let row: Option<(i64, i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT version, issued_at, expires_at, signature FROM my_list WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        Ok(row.map(|(v, i, e, signature)| MyListMeta {
            version: v as u64,
            issued_at: i as u64,
            expires_at: e as u64,
            signature,
        }))
    }

    /// My domains, sorted.
    pub async fn my_entries(&self) -> Result<Vec<Entry>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT domain, next_hop FROM my_domains ORDER BY domain")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.query_err(e))?;
        rows.iter().map(|(d, h)| self.entry_from(d, h)).collect()
    }

    /// Stores a newly signed version of my list: the changed entries and the
    /// header, in one transaction, so entries and signature always agree.
    pub async fn publish_my_list(
        &self,
        list: &DomainList,
        signature: &[u8],
        upserted: &[Entry],
        removed: &[Domain],
    ) -> Result<(), StoreError> {
        let q = |e| self.query_err(e);
        let mut tx = self.pool.begin().await.map_err(q)?;
        for d in removed {
            sqlx::query("DELETE FROM my_domains WHERE domain = ?")
                .bind(d.as_str())
                .execute(&mut *tx)
                .await
                .map_err(q)?;
        }
        for e in upserted {
            sqlx::query(
                "INSERT INTO my_domains (domain, next_hop) VALUES (?, ?)
                 ON CONFLICT (domain) DO UPDATE SET next_hop = excluded.next_hop",
            )
            .bind(e.domain.as_str())
            .bind(e.next_hop.to_string())
            .execute(&mut *tx)
            .await
            .map_err(q)?;
        }
        sqlx::query(
            "INSERT INTO my_list (id, version, issued_at, expires_at, signature) VALUES (1, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, issued_at = excluded.issued_at,
               expires_at = excluded.expires_at, signature = excluded.signature",
        )
        .bind(list.version as i64)
        .bind(list.issued_at as i64)
        .bind(list.expires_at as i64)
        .bind(signature)
        .execute(&mut *tx)
        .await
        .map_err(q)?;
        tx.commit().await.map_err(q)
    }

    /// My recipient list's header, if I ever published one.
    pub async fn my_recipient_meta(&self) -> Result<Option<MyRecipientMeta>, StoreError> {
        let row: Option<(i64, i64, i64, String, Vec<u8>)> = sqlx::query_as(
            "SELECT version, issued_at, expires_at, delimiter, signature FROM my_recipient_list WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        Ok(row.map(|(v, i, e, delimiter, signature)| MyRecipientMeta {
            version: v as u64,
            issued_at: i as u64,
            expires_at: e as u64,
            delimiter,
            signature,
        }))
    }

    /// Stores the header of a newly signed version of my recipient list.
    pub async fn publish_my_recipients(
        &self,
        list: &RecipientList,
        signature: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO my_recipient_list (id, version, issued_at, expires_at, delimiter, signature) VALUES (1, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, issued_at = excluded.issued_at,
               expires_at = excluded.expires_at, delimiter = excluded.delimiter, signature = excluded.signature",
        )
        .bind(list.version as i64)
        .bind(list.issued_at as i64)
        .bind(list.expires_at as i64)
        .bind(&list.delimiter)
        .bind(signature)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        Ok(())
    }

    /// The delimiter and expiry of the recipient list held for a peer.
    pub async fn peer_recipient_terms(
        &self,
        peer: &PeerId,
    ) -> Result<Option<(String, i64)>, StoreError> {
        sqlx::query_as("SELECT delimiter, expires_at FROM peer_recipient_lists WHERE peer_id = ?")
            .bind(peer.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.query_err(e))
    }

    /// The server key fingerprints `peer` publishes, as held.
    pub async fn peer_tls(&self, peer: &PeerId) -> Result<Vec<String>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT tls FROM peer_recipient_lists WHERE peer_id = ?")
                .bind(peer.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.query_err(e))?;
        Ok(row
            .map(|(t,)| t.split_whitespace().map(String::from).collect())
            .unwrap_or_default())
    }

    /// The version of the recipient list held for a peer (0: none).
    pub async fn peer_recipient_version(&self, peer: &PeerId) -> Result<u64, StoreError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM peer_recipient_lists WHERE peer_id = ?")
                .bind(peer.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.query_err(e))?;
        Ok(row.map_or(0, |(v,)| v as u64))
    }

    /// The version of the recipient list held for a peer and its items,
    /// encoded (`None` for a list stored before they were kept).
    pub async fn peer_recipient_items(
        &self,
        peer: &PeerId,
    ) -> Result<Option<(u64, EncodedItems)>, StoreError> {
        let read = self
            .read_signed(peer, Signed::Recipients)
            .await
            .map_err(|e| self.query_err(e))?;
        Ok(read.map(|(v, i)| (v, EncodedItems(i))))
    }

    /// The recipients held for a peer, sorted.
    pub async fn peer_recipients(&self, peer: &PeerId) -> Result<Vec<Recipient>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT item FROM peer_recipients WHERE peer_id = ? ORDER BY item")
                .bind(peer.to_string())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.query_err(e))?;
        let mut items = rows
            .into_iter()
            .map(|(i,)| Recipient::parse_canonical(&i).map_err(|_| self.bad("recipient", i)))
            .collect::<Result<Vec<_>, _>>()?;
        items.sort();
        Ok(items)
    }

    /// Stores a verified recipient list of a peer as the difference from
    /// the one held: `changes` are (item, whether it is in the list now).
    /// One transaction, so items and header always agree.
    pub async fn store_peer_recipients(
        &self,
        peer: &PeerId,
        list: &RecipientHead,
        signature: &[u8],
        changes: &[(Recipient, bool)],
        now: i64,
    ) -> Result<(), StoreError> {
        let q = |e| self.query_err(e);
        let id = peer.to_string();
        let mut tx = self.pool.begin().await.map_err(q)?;
        sqlx::query(
            "INSERT INTO peer_recipient_lists (peer_id, version, issued_at, expires_at, delimiter, when_down, tls, signature, received_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (peer_id) DO UPDATE SET version = excluded.version, issued_at = excluded.issued_at,
               expires_at = excluded.expires_at, delimiter = excluded.delimiter, when_down = excluded.when_down,
               tls_previous = CASE WHEN tls != excluded.tls THEN tls ELSE tls_previous END,
               tls_changed_at = CASE WHEN tls != excluded.tls THEN excluded.received_at ELSE tls_changed_at END,
               tls = excluded.tls,
               signature = excluded.signature, received_at = excluded.received_at",
        )
        .bind(&id)
        .bind(list.version as i64)
        .bind(list.issued_at as i64)
        .bind(list.expires_at as i64)
        .bind(&list.delimiter)
        .bind(i64::from(list.when_down))
        .bind(list.tls_fingerprints.join(" "))
        .bind(signature)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(q)?;
        write_signed(&mut tx, &id, Signed::Recipients, Some(&list.items.0))
            .await
            .map_err(q)?;
        for (item, present) in changes {
            let query = match present {
                true => sqlx::query(
                    "INSERT OR IGNORE INTO peer_recipients (peer_id, domain, item) VALUES (?, ?, ?)",
                )
                .bind(&id)
                .bind(item.domain())
                .bind(item.as_str()),
                false => sqlx::query("DELETE FROM peer_recipients WHERE peer_id = ? AND item = ?")
                    .bind(&id)
                    .bind(item.as_str()),
            };
            query.execute(&mut *tx).await.map_err(q)?;
        }
        tx.commit().await.map_err(q)
    }

    /// Which of `items` (addresses, of friends' recipient lists) the maps
    /// relay for as they are: held in a list whose friend's entry for the
    /// domain is accepted here, both lists not expired for longer than
    /// `grace` seconds, with the friend's delimiter. For an apply that
    /// changes a few addresses of a domain with an exact list: each is
    /// looked up by its key, not by reading the domain's 100,000.
    pub async fn relay_recipient_items(
        &self,
        now: i64,
        grace: i64,
        items: &[&str],
    ) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query_as(
            "SELECT r.item, rl.delimiter FROM peer_recipients r
             JOIN peer_entries e ON e.peer_id = r.peer_id AND e.domain = r.domain AND e.state = 'accepted'
             JOIN peer_recipient_lists rl ON rl.peer_id = r.peer_id
             JOIN peer_lists l ON l.peer_id = r.peer_id
             WHERE l.expires_at + ? > ? AND rl.expires_at + ? > ?
               AND r.peer_id IN (SELECT id FROM peers)
               AND r.item IN (SELECT value FROM json_each(?))
             ORDER BY r.item",
        )
        .bind(grace)
        .bind(now)
        .bind(grace)
        .bind(now)
        .bind(json_names(items.iter().copied()))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))
    }

    /// Which of `domains` have, in `peer`'s recipient list, an item other
    /// than `but` (each domain with the items to leave out): a domain that
    /// does had an exact list before a change of those items and has one
    /// after, so the maps change by those addresses alone.
    pub async fn recipient_domains_keeping_items(
        &self,
        peer: &PeerId,
        domains: &[(String, Vec<String>)],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let id = peer.to_string();
        let mut keeping = std::collections::HashSet::new();
        for (domain, but) in domains {
            let other: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM peer_recipients WHERE peer_id = ? AND domain = ?
                 AND item NOT IN (SELECT value FROM json_each(?)) LIMIT 1",
            )
            .bind(&id)
            .bind(domain)
            .bind(json_names(but.iter().map(String::as_str)))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.query_err(e))?;
            if other.is_some() {
                keeping.insert(domain.clone());
            }
        }
        Ok(keeping)
    }

    /// For each friend's domain accepted here (among `only`, if given) whose
    /// friend publishes recipients for it: the friend's delimiter and those
    /// recipients. The
    /// friend's domain list and recipient list must not have been expired
    /// for longer than `grace` seconds (as for [`Self::relay_routes`]).
    pub async fn relay_recipients(
        &self,
        now: i64,
        grace: i64,
        only: Option<&[&str]>,
    ) -> Result<HashMap<String, DomainRecipients>, StoreError> {
        let sql = format!(
            "SELECT r.domain, r.item, rl.delimiter FROM peer_recipients r
             JOIN peer_entries e ON e.peer_id = r.peer_id AND e.domain = r.domain AND e.state = 'accepted'
             JOIN peer_recipient_lists rl ON rl.peer_id = r.peer_id
             JOIN peer_lists l ON l.peer_id = r.peer_id
             WHERE l.expires_at + ? > ? AND rl.expires_at + ? > ? {}
             ORDER BY r.domain, r.item",
            match only {
                Some(_) => "AND r.domain IN (SELECT value FROM json_each(?))",
                None => "",
            }
        );
        let mut query = sqlx::query_as(&sql)
            .bind(grace)
            .bind(now)
            .bind(grace)
            .bind(now);
        if let Some(domains) = only {
            query = query.bind(json_names(domains.iter().copied()));
        }
        let rows: Vec<(String, String, String)> = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.query_err(e))?;
        let mut out: HashMap<String, DomainRecipients> = HashMap::new();
        for (domain, item, delimiter) in rows {
            let d = out.entry(domain).or_default();
            d.delimiter = delimiter;
            d.items.push(item);
        }
        Ok(out)
    }

    /// The accepted entries of friends whose backup mode is `when-down`
    /// (their lists not expired for longer than `grace` seconds): the
    /// friend, and the route.
    pub async fn when_down_routes(
        &self,
        now: i64,
        grace: i64,
    ) -> Result<Vec<(PeerId, RelayRoute)>, StoreError> {
        let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(
            "SELECT e.peer_id, p.name, e.domain, e.next_hop, e.addrs FROM peer_entries e
             JOIN peer_recipient_lists rl ON rl.peer_id = e.peer_id AND rl.when_down = 1
             JOIN peer_lists l ON l.peer_id = e.peer_id
             JOIN peers p ON p.id = e.peer_id
             WHERE e.state = 'accepted' AND l.expires_at + ? > ? AND rl.expires_at + ? > ?",
        )
        .bind(grace)
        .bind(now)
        .bind(grace)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        rows.iter()
            .map(|(id, n, d, h, a)| {
                let peer = id.parse().map_err(|_| self.bad("peer_id", id.clone()))?;
                Ok((
                    peer,
                    RelayRoute {
                        peer: n.clone(),
                        entry: self.entry_from(d, h)?,
                        addrs: self.ips_from("peer_entries.addrs", a)?,
                    },
                ))
            })
            .collect()
    }

    /// For each friend, by name: its server key fingerprints to pin, with
    /// those it had before its last change if that was less than
    /// `rollover` seconds ago, and the addresses where its agent was seen
    /// since `seen_since`. Friends that publish no recipient list (which
    /// carries the keys) are missing.
    pub async fn relay_tls(
        &self,
        now: i64,
        rollover: i64,
        seen_since: i64,
    ) -> Result<HashMap<String, Pins>, StoreError> {
        // Per friend, not per domain: a friend's keys are the same for all
        // its domains, and it may have 100,000.
        let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT p.name, rl.peer_id, rl.tls, rl.tls_previous, rl.tls_changed_at
             FROM peer_recipient_lists rl JOIN peers p ON p.id = rl.peer_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        let seen_rows: Vec<(String, String)> =
            sqlx::query_as("SELECT peer_id, ip FROM peer_seen WHERE last_seen >= ?")
                .bind(seen_since)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.query_err(e))?;
        let mut seen: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (peer, ip) in seen_rows {
            let ip = ip.parse().map_err(|_| self.bad("peer_seen.ip", &ip))?;
            seen.entry(peer).or_default().push(ip);
        }
        Ok(rows
            .into_iter()
            .map(|(name, peer, tls, previous, changed_at)| {
                let mut fps: Vec<String> = tls.split_whitespace().map(String::from).collect();
                if now - changed_at < rollover {
                    fps.extend(previous.split_whitespace().map(String::from));
                }
                fps.sort();
                fps.dedup();
                let pins = Pins {
                    fingerprints: fps,
                    seen: seen.get(&peer).cloned().unwrap_or_default(),
                };
                (name, pins)
            })
            .collect())
    }

    /// How many recipients a peer publishes for each of its domains.
    pub async fn recipient_counts(
        &self,
        peer: &PeerId,
    ) -> Result<HashMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT domain, COUNT(*) FROM peer_recipients WHERE peer_id = ? GROUP BY domain",
        )
        .bind(peer.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        Ok(rows.into_iter().map(|(d, n)| (d, n as u64)).collect())
    }

    /// The header of the list held for a peer.
    pub async fn peer_list_meta(&self, peer: &PeerId) -> Result<Option<PeerListMeta>, StoreError> {
        let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT version, issued_at, expires_at, received_at FROM peer_lists WHERE peer_id = ?",
        )
        .bind(peer.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        Ok(row.map(|(v, i, e, r)| PeerListMeta {
            version: v as u64,
            issued_at: i as u64,
            expires_at: e as u64,
            received_at: r,
        }))
    }

    /// The version of a peer's list held and the list as signed, if kept:
    /// the header and its chunks read in one transaction, the chunks
    /// appended as they come. A list whose chunks do not add up (which no
    /// write leaves) counts as not kept: the next fetch is of the whole list.
    async fn read_signed(
        &self,
        peer: &PeerId,
        kind: Signed,
    ) -> Result<Option<(u64, Vec<u8>)>, sqlx::Error> {
        use futures_util::TryStreamExt;
        let id = peer.to_string();
        let mut tx = self.pool.begin().await?;
        let header = match kind {
            Signed::Domains => "SELECT version, entries_chunks FROM peer_lists WHERE peer_id = ?",
            Signed::Recipients => {
                "SELECT version, items_chunks FROM peer_recipient_lists WHERE peer_id = ?"
            }
        };
        let row: Option<(i64, Option<i64>)> = sqlx::query_as(header)
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((version, Some(chunks))) = row else {
            return Ok(None);
        };
        // The whole size, from the records (SQLite reads a blob's length
        // without its bytes), so the list is read into one allocation.
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT SUM(length(bytes)) FROM peer_list_chunks WHERE peer_id = ? AND list = ?",
        )
        .bind(&id)
        .bind(kind.name())
        .fetch_one(&mut *tx)
        .await?;
        let size = usize::try_from(size.unwrap_or(0)).unwrap_or(0);
        let mut bytes = Vec::with_capacity(size.min(MAX_SIGNED_BYTES));
        let mut read = 0i64;
        {
            let mut rows = sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT bytes FROM peer_list_chunks WHERE peer_id = ? AND list = ? ORDER BY seq",
            )
            .bind(&id)
            .bind(kind.name())
            .fetch(&mut *tx);
            while let Some(chunk) = rows.try_next().await? {
                bytes.extend_from_slice(&chunk);
                read += 1;
            }
        }
        tx.commit().await?;
        if read != chunks {
            tracing::warn!(
                peer = %peer,
                list = kind.name(),
                chunks,
                read,
                "the list held as signed is not whole; the next fetch is of the whole list"
            );
            return Ok(None);
        }
        Ok(Some((version as u64, bytes)))
    }

    /// The version of the list held for a peer and its entries, encoded
    /// (`None` for a list stored before they were kept).
    pub async fn peer_list_entries(
        &self,
        peer: &PeerId,
    ) -> Result<Option<(u64, EncodedEntries)>, StoreError> {
        let read = self
            .read_signed(peer, Signed::Domains)
            .await
            .map_err(|e| self.query_err(e))?;
        Ok(read.map(|(v, e)| (v, EncodedEntries(e))))
    }

    /// The entries held for a peer among `domains` (any order), sorted by
    /// domain: what a change to a few of 100,000 entries needs to read.
    pub async fn peer_entries_of(
        &self,
        peer: &PeerId,
        domains: &[&Domain],
    ) -> Result<Vec<HeldEntry>, StoreError> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "SELECT domain, next_hop, state, reason, addrs FROM peer_entries
             WHERE peer_id = ? AND domain IN (SELECT value FROM json_each(?)) ORDER BY domain",
        )
        .bind(peer.to_string())
        .bind(json_names(domains.iter().map(|d| d.as_str())))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        self.held_entries(rows)
    }

    /// What a peer's list held here comes to: the number of entries in each
    /// state, and the first `notes` refused and pending ones (by domain),
    /// with their reasons; for the acknowledgement, without reading every
    /// entry.
    pub async fn list_summary(
        &self,
        peer: &PeerId,
        notes: usize,
    ) -> Result<ListSummary, StoreError> {
        let q = |e| self.query_err(e);
        let id = peer.to_string();
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM peer_entries WHERE peer_id = ? GROUP BY state",
        )
        .bind(&id)
        .fetch_all(&self.pool)
        .await
        .map_err(q)?;
        let mut summary = ListSummary::default();
        for (state, n) in counts {
            let n = n as u32;
            match EntryState::parse(&state) {
                Some(EntryState::Accepted) => summary.accepted = n,
                Some(EntryState::Refused) => summary.refused = n,
                Some(EntryState::Pending) => summary.pending = n,
                None => return Err(self.bad("peer_entries.state", state)),
            }
        }
        for state in [EntryState::Refused, EntryState::Pending] {
            let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT domain, reason FROM peer_entries WHERE peer_id = ? AND state = ?
                 ORDER BY domain LIMIT ?",
            )
            .bind(&id)
            .bind(state.as_str())
            .bind(notes as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(q)?;
            let rows = rows
                .into_iter()
                .map(|(d, r)| (d, r.unwrap_or_default()))
                .collect();
            match state {
                EntryState::Refused => summary.refused_notes = rows,
                _ => summary.pending_notes = rows,
            }
        }
        Ok(summary)
    }

    /// The entries held for a peer, sorted by domain.
    pub async fn peer_entries(&self, peer: &PeerId) -> Result<Vec<HeldEntry>, StoreError> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "SELECT domain, next_hop, state, reason, addrs FROM peer_entries WHERE peer_id = ? ORDER BY domain",
        )
        .bind(peer.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        self.held_entries(rows)
    }

    /// The entries of `peer` due for a re-check: every one not accepted, and
    /// the accepted ones last checked before `accepted_before` (Unix seconds).
    pub async fn entries_due(
        &self,
        peer: &PeerId,
        accepted_before: i64,
    ) -> Result<Vec<HeldEntry>, StoreError> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "SELECT domain, next_hop, state, reason, addrs FROM peer_entries
             WHERE peer_id = ? AND (state != 'accepted' OR checked_at < ?) ORDER BY domain",
        )
        .bind(peer.to_string())
        .bind(accepted_before)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        self.held_entries(rows)
    }

    fn held_entries(&self, rows: Vec<EntryRow>) -> Result<Vec<HeldEntry>, StoreError> {
        rows.into_iter()
            .map(|(d, h, s, reason, addrs)| {
                Ok(HeldEntry {
                    entry: self.entry_from(&d, &h)?,
                    state: EntryState::parse(&s)
                        .ok_or_else(|| self.bad("peer_entries.state", s.clone()))?,
                    reason,
                    addrs: self.ips_from("peer_entries.addrs", &addrs)?,
                })
            })
            .collect()
    }

    fn ips_from(&self, what: &'static str, text: &str) -> Result<Vec<IpAddr>, StoreError> {
        text.split_whitespace()
            .map(|a| a.parse().map_err(|_| self.bad(what, a)))
            .collect()
    }

    /// Entries among `domains` accepted for peers other than `except`: the
    /// entry, the peer that holds it, and the checked addresses of its next
    /// hop.
    pub async fn accepted_elsewhere(
        &self,
        except: &PeerId,
        domains: &[&Domain],
    ) -> Result<Vec<(Entry, PeerId, Vec<IpAddr>)>, StoreError> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT domain, next_hop, peer_id, addrs FROM peer_entries
             WHERE state = 'accepted' AND peer_id != ?
               AND domain IN (SELECT value FROM json_each(?))",
        )
        .bind(except.to_string())
        .bind(json_names(domains.iter().map(|d| d.as_str())))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        rows.into_iter()
            .map(|(d, h, p, a)| {
                Ok((
                    self.entry_from(&d, &h)?,
                    p.parse()
                        .map_err(|_| self.bad("peer_entries.peer_id", &p))?,
                    self.ips_from("peer_entries.addrs", &a)?,
                ))
            })
            .collect()
    }

    /// The addresses at which `peer`'s authenticated endpoint has been
    /// seen since `since` (Unix seconds), most recent first.
    pub async fn seen(&self, peer: &PeerId, since: i64) -> Result<Vec<IpAddr>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT ip FROM peer_seen WHERE peer_id = ? AND last_seen >= ?
             ORDER BY last_seen DESC, ip",
        )
        .bind(peer.to_string())
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        rows.iter()
            .map(|(ip,)| ip.parse().map_err(|_| self.bad("peer_seen.ip", ip)))
            .collect()
    }

    /// Stores a verified list for a peer as a difference from the one held,
    /// in one transaction: the new header, the entries `changed` (new ones,
    /// and those judged again; written with `now` as their check time), the
    /// domains `removed` from it, and the entries of other peers `handed`
    /// over to it (their new, refused state), so two peers never both hold a
    /// domain. Entries in neither are left as they
    /// are, check time included, so an unchanged entry keeps its verdict
    /// until its re-check is due.
    pub async fn store_peer_list(
        &self,
        peer: &PeerId,
        list: &ListHead,
        signature: &[u8],
        change: ListChange<'_>,
        now: i64,
    ) -> Result<(), StoreError> {
        let ListChange {
            changed,
            removed,
            handed,
        } = change;
        let q = |e| self.query_err(e);
        let id = peer.to_string();
        let mut tx = self.pool.begin().await.map_err(q)?;
        sqlx::query(
            "INSERT INTO peer_lists (peer_id, version, issued_at, expires_at, signature, received_at)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (peer_id) DO UPDATE SET version = excluded.version, issued_at = excluded.issued_at,
               expires_at = excluded.expires_at, signature = excluded.signature, received_at = excluded.received_at",
        )
        .bind(&id)
        .bind(list.version as i64)
        .bind(list.issued_at as i64)
        .bind(list.expires_at as i64)
        .bind(signature)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(q)?;
        write_signed(&mut tx, &id, Signed::Domains, Some(&list.entries.0))
            .await
            .map_err(q)?;
        for d in removed {
            sqlx::query("DELETE FROM peer_entries WHERE peer_id = ? AND domain = ?")
                .bind(&id)
                .bind(d.as_str())
                .execute(&mut *tx)
                .await
                .map_err(q)?;
        }
        for h in changed {
            insert_entry(&mut tx, &id, h, now).await.map_err(q)?;
        }
        for (holder, h) in handed {
            update_state(&mut tx, &holder.to_string(), h, now)
                .await
                .map_err(q)?;
        }
        tx.commit().await.map_err(q)?;
        self.routes_changed();
        Ok(())
    }

    /// Stores judged entries of a peer's new list before its header (a big
    /// list is judged in batches): `changed` and `handed` as
    /// [`Self::store_peer_list`] writes them, in one transaction; the
    /// header and `removed` wait for the last batch. Until then the rows
    /// are not the list held as signed, so that is forgotten: if the last
    /// batch never comes (a crash, an error), the next fetch is of the
    /// whole list, which is compared with the rows.
    pub async fn store_peer_entries(
        &self,
        peer: &PeerId,
        change: ListChange<'_>,
        now: i64,
    ) -> Result<(), StoreError> {
        let q = |e| self.query_err(e);
        let id = peer.to_string();
        let mut tx = self.pool.begin().await.map_err(q)?;
        write_signed(&mut tx, &id, Signed::Domains, None)
            .await
            .map_err(q)?;
        for h in change.changed {
            insert_entry(&mut tx, &id, h, now).await.map_err(q)?;
        }
        for (holder, h) in change.handed {
            update_state(&mut tx, &holder.to_string(), h, now)
                .await
                .map_err(q)?;
        }
        tx.commit().await.map_err(q)?;
        self.routes_changed();
        Ok(())
    }

    /// Updates the states of some entries held for a peer, and of the
    /// entries of other peers `handed` over to it, in one transaction. An
    /// entry whose next hop changed meanwhile is left alone.
    pub async fn update_entry_states(
        &self,
        peer: &PeerId,
        entries: &[HeldEntry],
        handed: &[(PeerId, HeldEntry)],
        now: i64,
    ) -> Result<(), StoreError> {
        let q = |e| self.query_err(e);
        let id = peer.to_string();
        let mut tx = self.pool.begin().await.map_err(q)?;
        for h in entries {
            update_state(&mut tx, &id, h, now).await.map_err(q)?;
        }
        for (holder, h) in handed {
            update_state(&mut tx, &holder.to_string(), h, now)
                .await
                .map_err(q)?;
        }
        tx.commit().await.map_err(q)?;
        self.routes_changed();
        Ok(())
    }

    /// Stores what a peer said of my list.
    pub async fn store_ack(
        &self,
        peer: &PeerId,
        ack: &ListAck,
        now: i64,
    ) -> Result<(), StoreError> {
        let q = |e| self.query_err(e);
        let id = peer.to_string();
        let mut tx = self.pool.begin().await.map_err(q)?;
        sqlx::query(
            "INSERT INTO my_list_acks (peer_id, version, accepted, refused_count, pending_count, received_at)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (peer_id) DO UPDATE SET version = excluded.version, accepted = excluded.accepted,
               refused_count = excluded.refused_count, pending_count = excluded.pending_count,
               received_at = excluded.received_at
             WHERE excluded.version >= my_list_acks.version",
        )
        .bind(&id)
        .bind(ack.version as i64)
        .bind(i64::from(ack.accepted))
        .bind(i64::from(ack.refused_count))
        .bind(i64::from(ack.pending_count))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(q)?;
        let stored: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM my_list_acks WHERE peer_id = ?")
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q)?;
        if stored.map(|(v,)| v) != Some(ack.version as i64) {
            // An older acknowledgement arriving late: keep the newer one.
            return tx.commit().await.map_err(q);
        }
        sqlx::query("DELETE FROM my_list_ack_notes WHERE peer_id = ?")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(q)?;
        for (state, notes) in [("refused", &ack.refused), ("pending", &ack.pending)] {
            for n in notes {
                sqlx::query("INSERT INTO my_list_ack_notes (peer_id, state, domain, reason) VALUES (?, ?, ?, ?)")
                    .bind(&id)
                    .bind(state)
                    .bind(&n.domain)
                    .bind(&n.reason)
                    .execute(&mut *tx)
                    .await
                    .map_err(q)?;
            }
        }
        tx.commit().await.map_err(q)
    }

    /// What a peer last said of my list.
    pub async fn ack(&self, peer: &PeerId) -> Result<Option<StoredAck>, StoreError> {
        let q = |e| self.query_err(e);
        let id = peer.to_string();
        let row: Option<(i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT version, accepted, refused_count, pending_count, received_at FROM my_list_acks WHERE peer_id = ?",
        )
        .bind(&id)
        .fetch_optional(&self.pool)
        .await
        .map_err(q)?;
        let Some((version, accepted, refused_count, pending_count, received_at)) = row else {
            return Ok(None);
        };
        let notes: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT state, domain, reason FROM my_list_ack_notes WHERE peer_id = ? ORDER BY domain",
        )
        .bind(&id)
        .fetch_all(&self.pool)
        .await
        .map_err(q)?;
        let (mut refused, mut pending) = (Vec::new(), Vec::new());
        for (state, domain, reason) in notes {
            let note = EntryNote { domain, reason };
            if state == "refused" {
                refused.push(note);
            } else {
                pending.push(note);
            }
        }
        Ok(Some(StoredAck {
            ack: ListAck {
                version: version as u64,
                accepted: accepted as u32,
                refused_count: refused_count as u32,
                pending_count: pending_count as u32,
                refused,
                pending,
            },
            received_at,
        }))
    }
}

/// One row of `mxfed history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyRecord {
    /// Unix seconds.
    pub at: i64,
    /// What caused it.
    pub trigger: String,
    /// Whether it worked.
    pub ok: bool,
    /// The step that failed.
    pub step: Option<String>,
    /// The error, or a summary.
    pub message: Option<String>,
    /// Domains added, removed, re-targeted; domains relayed afterwards.
    pub added: u32,
    /// See `added`.
    pub removed: u32,
    /// See `added`.
    pub changed: u32,
    /// See `added`.
    pub total: u32,
}

/// One accepted entry as Postfix should relay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRoute {
    /// The name of the peer it is relayed for.
    pub peer: String,
    /// The domain and its declared next hop.
    pub entry: Entry,
    /// The checked addresses of the next hop (empty: judged before
    /// addresses were kept, and not re-checked yet).
    pub addrs: Vec<IpAddr>,
}

/// What storing a new version of a peer's list writes (see
/// [`Store::store_peer_list`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ListChange<'a> {
    /// New entries, and entries judged again.
    pub changed: &'a [HeldEntry],
    /// Domains no longer in the list.
    pub removed: &'a [Domain],
    /// Other peers' entries handed over to this peer, refused.
    pub handed: &'a [(PeerId, HeldEntry)],
}

/// How long an address where a peer's agent was seen counts for its
/// ownership proof and its TLS pins: longer than a list lives unrenewed
/// (14 days) plus the default `expired_list_grace` (30 days), so it never
/// ends relay for an offline friend before its list would; an address
/// given up long ago proves nothing any more.
pub const SEEN_LATELY: Duration = Duration::from_secs(60 * 86_400);
/// How many addresses are kept per peer in `peer_seen`.
pub const MAX_SEEN: usize = 16;

/// A row of `peer_entries`: domain, next hop, state, reason, addresses.
type EntryRow = (String, String, String, Option<String>, String);

/// A grace period for [`Store::relay_routes`] that no list outlives: every
/// accepted entry, however long its list has been expired.
pub const ANY_EXPIRY: i64 = i64::MAX / 4;

impl Store {
    /// A number that changes after every write that may change what
    /// [`Store::relay_routes`] returns (not its expiry, which depends on
    /// the time asked for): a reader that made something from the routes
    /// at one generation need not read them again while it stays.
    pub fn routes_generation(&self) -> u64 {
        self.routes_gen.load(std::sync::atomic::Ordering::Acquire)
    }

    fn routes_changed(&self) {
        self.routes_gen
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Accepted entries of lists that have not been expired for longer than
    /// `grace` seconds, with the peer's name: what Postfix should relay.
    pub async fn relay_routes(&self, now: i64, grace: i64) -> Result<Vec<RelayRoute>, StoreError> {
        let mut routes = Vec::new();
        self.each_route(now, grace, None, |r| routes.push(r))
            .await?;
        routes.shrink_to_fit();
        Ok(routes)
    }

    /// [`Self::relay_routes`] for `domains` only: what an apply of a
    /// change to a few domains reads.
    pub async fn relay_routes_of(
        &self,
        now: i64,
        grace: i64,
        domains: &[&str],
    ) -> Result<Vec<RelayRoute>, StoreError> {
        let mut routes = Vec::new();
        self.each_route(now, grace, Some(domains), |r| routes.push(r))
            .await?;
        Ok(routes)
    }

    /// The routes of [`Self::relay_routes`] (of `only`, if given), in
    /// domain order, handed to `each` one at a time as they are read: a
    /// list of 100,000 is never held whole.
    pub async fn each_route(
        &self,
        now: i64,
        grace: i64,
        only: Option<&[&str]>,
        mut each: impl FnMut(RelayRoute),
    ) -> Result<(), StoreError> {
        use futures_util::TryStreamExt;
        let sql = format!(
            "SELECT p.name, e.domain, e.next_hop, e.addrs FROM peer_entries e
             JOIN peer_lists l ON l.peer_id = e.peer_id
             JOIN peers p ON p.id = e.peer_id
             WHERE e.state = 'accepted' AND l.expires_at + ? > ? {}
             ORDER BY e.domain",
            match only {
                Some(_) => "AND e.domain IN (SELECT value FROM json_each(?))",
                None => "",
            }
        );
        let mut query = sqlx::query_as::<_, (String, String, String, String)>(&sql)
            .bind(grace)
            .bind(now);
        if let Some(domains) = only {
            query = query.bind(json_names(domains.iter().copied()));
        }
        let mut rows = query.fetch(&self.pool);
        while let Some((n, d, h, a)) = rows.try_next().await.map_err(|e| self.query_err(e))? {
            each(RelayRoute {
                peer: n,
                entry: self.entry_from(&d, &h)?,
                addrs: self.ips_from("peer_entries.addrs", &a)?,
            });
        }
        Ok(())
    }

    /// Each distinct (friend, next hop, checked addresses) among the routes
    /// [`Self::relay_routes`] returns: what the TLS policy map is made of,
    /// read without reading every route.
    pub async fn relay_hops(
        &self,
        now: i64,
        grace: i64,
    ) -> Result<Vec<(String, NextHop, Vec<IpAddr>)>, StoreError> {
        let q = |e| self.query_err(e);
        let mut tx = self.pool.begin().await.map_err(q)?;
        // Friends whose lists count, by id.
        let friends: HashMap<String, String> = sqlx::query_as(
            "SELECT p.id, p.name FROM peers p JOIN peer_lists l ON l.peer_id = p.id
             WHERE l.expires_at + ? > ?",
        )
        .bind(grace)
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(q)?
        .into_iter()
        .collect();
        // The distinct (friend, next hop, addresses) of the accepted
        // entries, each found by a seek in `peer_entries_hops` past the one
        // before: a few look-ups for the few next hops friends have, however
        // many domains name them. Past HOPS_BY_SEEK of them, one scan of
        // the index reads the rest.
        const HOPS_BY_SEEK: usize = 64;
        const NEXT: [&str; 3] = [
            "SELECT peer_id, next_hop, addrs FROM peer_entries
             WHERE state = 'accepted' AND peer_id = ?1 AND next_hop = ?2 AND addrs > ?3
             ORDER BY addrs LIMIT 1",
            "SELECT peer_id, next_hop, addrs FROM peer_entries
             WHERE state = 'accepted' AND peer_id = ?1 AND next_hop > ?2
             ORDER BY next_hop, addrs LIMIT 1",
            "SELECT peer_id, next_hop, addrs FROM peer_entries
             WHERE state = 'accepted' AND peer_id > ?1
             ORDER BY peer_id, next_hop, addrs LIMIT 1",
        ];
        let mut hops: Vec<(String, String, String)> = Vec::new();
        let mut at = (String::new(), String::new(), String::new());
        let mut whole = true;
        'seek: loop {
            if hops.len() == HOPS_BY_SEEK {
                whole = false;
                break;
            }
            for next in NEXT {
                let row: Option<(String, String, String)> = sqlx::query_as(next)
                    .bind(&at.0)
                    .bind(&at.1)
                    .bind(&at.2)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(q)?;
                if let Some(row) = row {
                    hops.push(row.clone());
                    at = row;
                    continue 'seek;
                }
            }
            break;
        }
        if !whole {
            hops = sqlx::query_as(
                "SELECT DISTINCT peer_id, next_hop, addrs FROM peer_entries WHERE state = 'accepted'",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(q)?;
        }
        tx.commit().await.map_err(q)?;
        let mut out = hops
            .into_iter()
            .filter_map(|(peer, h, a)| Some((friends.get(&peer)?.clone(), h, a)))
            .map(|(n, h, a)| {
                Ok((
                    n,
                    NextHop::parse_canonical(&h).map_err(|_| self.bad("next_hop", &h))?,
                    self.ips_from("peer_entries.addrs", &a)?,
                    a,
                    h,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // As before: by friend, next hop and addresses as written.
        out.sort_by(|a, b| (&a.0, &a.4, &a.3).cmp(&(&b.0, &b.4, &b.3)));
        Ok(out.into_iter().map(|(n, h, a, _, _)| (n, h, a)).collect())
    }

    /// Records an apply, keeping the last 1,000.
    pub async fn record_apply(&self, r: &ApplyRecord) -> Result<(), StoreError> {
        let q = |e| self.query_err(e);
        sqlx::query(
            "INSERT INTO applies (at, trigger, result, step, message, added, removed, changed, total)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(r.at)
        .bind(&r.trigger)
        .bind(if r.ok { "applied" } else { "failed" })
        .bind(&r.step)
        .bind(&r.message)
        .bind(i64::from(r.added))
        .bind(i64::from(r.removed))
        .bind(i64::from(r.changed))
        .bind(i64::from(r.total))
        .execute(&self.pool)
        .await
        .map_err(q)?;
        sqlx::query("DELETE FROM applies WHERE id <= (SELECT MAX(id) - 1000 FROM applies)")
            .execute(&self.pool)
            .await
            .map_err(q)?;
        Ok(())
    }

    /// The last `limit` applies, newest first.
    pub async fn applies(&self, limit: u32) -> Result<Vec<ApplyRecord>, StoreError> {
        type Row = (
            i64,
            String,
            String,
            Option<String>,
            Option<String>,
            i64,
            i64,
            i64,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT at, trigger, result, step, message, added, removed, changed, total
             FROM applies ORDER BY id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        Ok(rows
            .into_iter()
            .map(
                |(at, trigger, result, step, message, a, r, c, t)| ApplyRecord {
                    at,
                    trigger,
                    ok: result == "applied",
                    step,
                    message,
                    added: a as u32,
                    removed: r as u32,
                    changed: c as u32,
                    total: t as u32,
                },
            )
            .collect())
    }
}

/// Notes that `peer` was seen at `ip`, keeping only the [`MAX_SEEN`] most
/// recent addresses (a peer that roams cannot fill the table).
async fn record_seen(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    peer: &str,
    ip: IpAddr,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO peer_seen (peer_id, ip, last_seen) VALUES (?, ?, ?)
         ON CONFLICT (peer_id, ip) DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)",
    )
    .bind(peer)
    .bind(ip.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM peer_seen WHERE peer_id = ?1 AND ip NOT IN
           (SELECT ip FROM peer_seen WHERE peer_id = ?1 ORDER BY last_seen DESC, ip LIMIT ?2)",
    )
    .bind(peer)
    .bind(MAX_SEEN as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn update_state(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    peer_id: &str,
    h: &HeldEntry,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE peer_entries SET state = ?, reason = ?, addrs = ?, checked_at = ?
         WHERE peer_id = ? AND domain = ? AND next_hop = ?",
    )
    .bind(h.state.as_str())
    .bind(&h.reason)
    .bind(join_ips(&h.addrs))
    .bind(now)
    .bind(peer_id)
    .bind(h.entry.domain.as_str())
    .bind(h.entry.next_hop.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The lists kept as signed, in `peer_list_chunks`.
#[derive(Clone, Copy)]
enum Signed {
    /// `peer_lists.entries_chunks`.
    Domains,
    /// `peer_recipient_lists.items_chunks`.
    Recipients,
}

impl Signed {
    fn name(self) -> &'static str {
        match self {
            Self::Domains => "domains",
            Self::Recipients => "recipients",
        }
    }

    /// Sets the header's chunk count (the header row is written first).
    fn set_count(self) -> &'static str {
        match self {
            Self::Domains => "UPDATE peer_lists SET entries_chunks = ? WHERE peer_id = ?",
            Self::Recipients => {
                "UPDATE peer_recipient_lists SET items_chunks = ? WHERE peer_id = ?"
            }
        }
    }
}

/// A list as signed is stored in chunks of about this size, cut where its
/// content says ([`signed_chunks`]): sqlx and SQLite copy what they bind, a
/// chunk at a time, not the whole list (and above glibc's mmap threshold in
/// the unit, so each copy is given back when freed).
const SIGNED_CHUNK: u32 = 256 * 1024;
/// The most room reserved for a list as signed read back (a list is at
/// most 16 MiB of names, 64 MiB of recipients, and 8 bytes an entry more).
const MAX_SIGNED_BYTES: usize = 96 << 20;

/// `bytes` cut into chunks where their content says (FastCDC: 64 KiB to
/// 1 MiB, about [`SIGNED_CHUNK`]), each with the SHA-256 of its bytes. A
/// change to a few entries changes the chunks they fall in and leaves the
/// others as they were, at the same place in the sequence unless a cut
/// point itself came or went.
fn signed_chunks(bytes: &[u8]) -> impl Iterator<Item = (&[u8], ring::digest::Digest)> {
    fastcdc::v2020::FastCDC::new(bytes, SIGNED_CHUNK / 4, SIGNED_CHUNK, SIGNED_CHUNK * 4).map(
        move |c| {
            let chunk = &bytes[c.offset..c.offset + c.length];
            (chunk, ring::digest::digest(&ring::digest::SHA256, chunk))
        },
    )
}

/// Replaces a peer's list kept as signed with `bytes` (`None`: no list
/// kept), and the chunk count in its header, which must be written before
/// in the same transaction. Only chunks whose digest differs from the one
/// stored at their place are written: a one-entry change to a list of
/// 100,000 writes one chunk of about 256 KiB.
async fn write_signed(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    peer_id: &str,
    kind: Signed,
    bytes: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    let Some(bytes) = bytes else {
        sqlx::query(kind.set_count())
            .bind(None::<i64>)
            .bind(peer_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM peer_list_chunks WHERE peer_id = ? AND list = ?")
            .bind(peer_id)
            .bind(kind.name())
            .execute(&mut **tx)
            .await?;
        return Ok(());
    };
    // The digest stored at each place (none for a chunk stored before
    // digests were kept: it is rewritten).
    let stored: Vec<(i64, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT seq, digest FROM peer_list_chunks WHERE peer_id = ? AND list = ? ORDER BY seq",
    )
    .bind(peer_id)
    .bind(kind.name())
    .fetch_all(&mut **tx)
    .await?;
    let stored: HashMap<i64, Vec<u8>> = stored
        .into_iter()
        .filter_map(|(seq, d)| Some((seq, d?)))
        .collect();
    let mut count = 0i64;
    for (seq, (chunk, digest)) in signed_chunks(bytes).enumerate() {
        let seq = seq as i64;
        count = seq + 1;
        if stored.get(&seq).is_some_and(|d| d == digest.as_ref()) {
            continue;
        }
        sqlx::query(
            "INSERT INTO peer_list_chunks (peer_id, list, seq, bytes, digest) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (peer_id, list, seq) DO UPDATE SET bytes = excluded.bytes, digest = excluded.digest",
        )
        .bind(peer_id)
        .bind(kind.name())
        .bind(seq)
        .bind(chunk)
        .bind(digest.as_ref())
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("DELETE FROM peer_list_chunks WHERE peer_id = ? AND list = ? AND seq >= ?")
        .bind(peer_id)
        .bind(kind.name())
        .bind(count)
        .execute(&mut **tx)
        .await?;
    sqlx::query(kind.set_count())
        .bind(count)
        .bind(peer_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_entry(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    peer_id: &str,
    h: &HeldEntry,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO peer_entries (peer_id, domain, next_hop, state, reason, addrs, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (peer_id, domain) DO UPDATE SET next_hop = excluded.next_hop, state = excluded.state,
           reason = excluded.reason, addrs = excluded.addrs, checked_at = excluded.checked_at",
    )
    .bind(peer_id)
    .bind(h.entry.domain.as_str())
    .bind(h.entry.next_hop.to_string())
    .bind(h.state.as_str())
    .bind(&h.reason)
    .bind(join_ips(&h.addrs))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Names as a JSON array, for `IN (SELECT value FROM json_each(?))`: one
/// statement for any number of them.
fn json_names<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    serde_json::to_string(&names.into_iter().collect::<Vec<&str>>()).unwrap_or_else(|_| "[]".into())
}

fn join_ips(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn join_addrs(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

async fn insert_peer(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    peer: &PeerRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO peers (id, name, mail_host, addresses, agent_version, paired_at, last_seen, last_address)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(peer.id.to_string())
    .bind(&peer.name)
    .bind(&peer.mail_host)
    .bind(join_addrs(&peer.addrs))
    .bind(&peer.agent_version)
    .bind(peer.paired_at)
    .bind(peer.last_seen)
    .bind(&peer.last_address)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8, name: &str) -> PeerRecord {
        PeerRecord {
            id: PeerId::from_public_key([n; 32]),
            name: name.into(),
            mail_host: format!("mail.{name}.example"),
            addrs: vec!["127.0.0.1:7787".parse().unwrap()],
            agent_version: None,
            paired_at: 1,
            last_seen: None,
            last_address: None,
        }
    }

    #[tokio::test]
    async fn where_a_peer_was_seen_is_kept_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("mxfed.db")).await.unwrap();
        let friend = peer(1, "friend");
        s.insert_peer(&friend).await.unwrap();
        assert!(s.seen(&friend.id, 0).await.unwrap().is_empty());
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        s.touch_peer(&friend.id, 100, &at("1.2.3.4:7787"))
            .await
            .unwrap();
        // An IPv4 client of a dual-stack socket: the same address.
        s.touch_peer(&friend.id, 200, &at("[::ffff:1.2.3.4]:7787"))
            .await
            .unwrap();
        s.touch_peer(&friend.id, 150, &at("[2001:db8::5]:7787"))
            .await
            .unwrap();
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        assert_eq!(
            s.seen(&friend.id, 0).await.unwrap(),
            [ip("1.2.3.4"), ip("2001:db8::5")],
            "most recent first, each address once"
        );
        for i in 0..(MAX_SEEN as i64 + 5) {
            s.touch_peer(&friend.id, 1000 + i, &at(&format!("10.0.0.{i}:7787")))
                .await
                .unwrap();
        }
        let seen = s.seen(&friend.id, 0).await.unwrap();
        assert_eq!(seen.len(), MAX_SEEN, "a roaming peer cannot fill the table");
        assert_eq!(seen[0], ip(&format!("10.0.0.{}", MAX_SEEN + 4)));
        // Only addresses seen lately count.
        assert_eq!(
            s.seen(&friend.id, 1000 + MAX_SEEN as i64 + 3)
                .await
                .unwrap()
                .len(),
            2
        );
        // Gone with the peer.
        s.remove_peer(&friend.id).await.unwrap();
        assert!(s.seen(&friend.id, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn checked_addresses_are_stored_with_the_entry() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("mxfed.db")).await.unwrap();
        let friend = peer(1, "friend");
        s.insert_peer(&friend).await.unwrap();
        let entry = Entry {
            domain: Domain::parse("friend.example").unwrap(),
            next_hop: NextHop::parse("mail.friend.example").unwrap(),
        };
        let addrs: Vec<IpAddr> = vec!["1.2.3.4".parse().unwrap(), "2001:db8::5".parse().unwrap()];
        let held = HeldEntry {
            entry: entry.clone(),
            state: EntryState::Accepted,
            reason: None,
            addrs: addrs.clone(),
        };
        let list = DomainList::new(friend.id, 1, 0, i64::MAX as u64 / 2, vec![entry]);
        s.store_peer_list(
            &friend.id,
            &ListHead::from(&list),
            b"sig",
            ListChange {
                changed: std::slice::from_ref(&held),
                ..ListChange::default()
            },
            5,
        )
        .await
        .unwrap();
        assert_eq!(
            s.peer_entries(&friend.id).await.unwrap(),
            std::slice::from_ref(&held)
        );
        let routes = s.relay_routes(10, 0).await.unwrap();
        assert_eq!(routes[0].addrs, addrs);
        let other = peer(2, "other");
        s.insert_peer(&other).await.unwrap();
        let elsewhere = s
            .accepted_elsewhere(&other.id, &[&held.entry.domain])
            .await
            .unwrap();
        assert_eq!(elsewhere, [(held.entry.clone(), friend.id, addrs)]);
    }

    #[tokio::test]
    async fn a_new_list_is_stored_as_a_difference_keeping_unchanged_entries() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("mxfed.db")).await.unwrap();
        let friend = peer(1, "friend");
        s.insert_peer(&friend).await.unwrap();
        let held = |domain: &str, hop: &str| HeldEntry {
            entry: Entry {
                domain: Domain::parse(domain).unwrap(),
                next_hop: NextHop::parse(hop).unwrap(),
            },
            state: EntryState::Accepted,
            reason: None,
            addrs: vec!["1.2.3.4".parse().unwrap()],
        };
        let v1 = [
            held("a.example", "mx.a.example"),
            held("b.example", "mx.b.example"),
            held("c.example", "mx.c.example"),
        ];
        let list = |v, e: &[HeldEntry]| {
            DomainList::new(
                friend.id,
                v,
                0,
                i64::MAX as u64 / 2,
                e.iter().map(|h| h.entry.clone()).collect(),
            )
        };
        s.store_peer_list(
            &friend.id,
            &ListHead::from(&list(1, &v1)),
            b"s",
            ListChange {
                changed: &v1,
                ..ListChange::default()
            },
            1000,
        )
        .await
        .unwrap();
        // v2: b re-targeted, c gone, d new; a unchanged.
        let b2 = held("b.example", "mx2.b.example");
        let d2 = held("d.example", "mx.d.example");
        let v2 = [v1[0].clone(), b2.clone(), d2.clone()];
        s.store_peer_list(
            &friend.id,
            &ListHead::from(&list(2, &v2)),
            b"s",
            ListChange {
                changed: &[b2.clone(), d2.clone()],
                removed: &[Domain::parse("c.example").unwrap()],
                handed: &[],
            },
            5000,
        )
        .await
        .unwrap();
        assert_eq!(s.peer_entries(&friend.id).await.unwrap(), v2.to_vec());
        assert_eq!(
            s.peer_list_meta(&friend.id).await.unwrap().unwrap().version,
            2
        );
        // a kept its check time (1000): due before 4000; b and d were checked at 5000.
        let due: Vec<String> = s
            .entries_due(&friend.id, 4000)
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.entry.domain.to_string())
            .collect();
        assert_eq!(due, ["a.example"]);
        // The list as signed is kept with it, for the next changes.
        assert_eq!(
            s.peer_list_entries(&friend.id).await.unwrap(),
            Some((2, list(2, &v2).encoded_entries()))
        );
        // Reads of a few domains read those only.
        let b = Domain::parse("b.example").unwrap();
        let c = Domain::parse("c.example").unwrap();
        assert_eq!(
            s.peer_entries_of(&friend.id, &[&c, &b]).await.unwrap(),
            std::slice::from_ref(&b2)
        );
        let routes = s
            .relay_routes_of(10, ANY_EXPIRY, &["b.example", "c.example"])
            .await
            .unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].entry, b2.entry);
        // A batch stored ahead of its list's header: the list held as
        // signed no longer says what the rows say, so it is forgotten.
        let e2 = held("e.example", "mx.e.example");
        s.store_peer_entries(
            &friend.id,
            ListChange {
                changed: std::slice::from_ref(&e2),
                ..ListChange::default()
            },
            6000,
        )
        .await
        .unwrap();
        assert_eq!(s.peer_list_entries(&friend.id).await.unwrap(), None);
        assert_eq!(
            s.peer_entries_of(&friend.id, &[&e2.entry.domain])
                .await
                .unwrap(),
            std::slice::from_ref(&e2)
        );
        // Every next hop, once.
        let hops = s.relay_hops(10, ANY_EXPIRY).await.unwrap();
        let hops: Vec<String> = hops
            .iter()
            .map(|(p, h, a)| format!("{p} {h} {a:?}"))
            .collect();
        assert_eq!(
            hops,
            [
                "friend mx.a.example [1.2.3.4]",
                "friend mx.d.example [1.2.3.4]",
                "friend mx.e.example [1.2.3.4]",
                "friend mx2.b.example [1.2.3.4]"
            ]
        );
    }

    #[tokio::test]
    async fn a_list_as_signed_is_kept_in_chunks_and_read_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("mxfed.db")).await.unwrap();
        let friend = peer(1, "friend");
        s.insert_peer(&friend).await.unwrap();
        let store = |v: u64, n: usize| store_list(&s, friend.id, v, names(n));
        // Several chunks.
        let big = store(1, 30_000).await;
        assert!(big.0.len() > 3 * SIGNED_CHUNK as usize, "{}", big.0.len());
        assert!(chunk_digests(&s).await.len() >= 2);
        assert_eq!(
            s.peer_list_entries(&friend.id).await.unwrap(),
            Some((1, big))
        );
        // A smaller list replaces every chunk of the bigger one.
        let small = store(2, 3).await;
        assert_eq!(
            s.peer_list_entries(&friend.id).await.unwrap(),
            Some((2, small))
        );
        // An empty list is kept, as empty.
        let empty = store(3, 0).await;
        assert!(empty.0.is_empty());
        assert_eq!(
            s.peer_list_entries(&friend.id).await.unwrap(),
            Some((3, empty))
        );
        // Chunks that do not add up are no list kept (the whole is fetched).
        let big = store(4, 30_000).await;
        assert_eq!(
            s.peer_list_entries(&friend.id).await.unwrap(),
            Some((4, big))
        );
        sqlx::query("DELETE FROM peer_list_chunks WHERE seq = 1")
            .execute(&s.pool)
            .await
            .unwrap();
        assert_eq!(s.peer_list_entries(&friend.id).await.unwrap(), None);
        // Unpairing takes the chunks with the peer.
        s.remove_peer(&friend.id).await.unwrap();
        let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM peer_list_chunks")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }

    #[tokio::test]
    async fn next_hops_are_read_distinct_by_seeks_and_past_many_by_one_scan() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("mxfed.db")).await.unwrap();
        let (alpha, bravo, gone) = (peer(1, "alpha"), peer(2, "bravo"), peer(3, "gone"));
        let entry = |domain: String, hop: &str, state: EntryState, ip: &str| HeldEntry {
            entry: Entry {
                domain: Domain::parse(&domain).unwrap(),
                next_hop: NextHop::parse(hop).unwrap(),
            },
            state,
            reason: None,
            addrs: vec![ip.parse().unwrap()],
        };
        let put = |p: &PeerRecord, expires: u64, entries: Vec<HeldEntry>| {
            let s = &s;
            let p = p.clone();
            async move {
                s.insert_peer(&p).await.unwrap();
                let list = DomainList::new(
                    p.id,
                    1,
                    0,
                    expires,
                    entries.iter().map(|h| h.entry.clone()).collect(),
                );
                s.store_peer_list(
                    &p.id,
                    &ListHead::from(&list),
                    b"s",
                    ListChange {
                        changed: &entries,
                        ..ListChange::default()
                    },
                    1000,
                )
                .await
                .unwrap();
            }
        };
        // alpha: 300 domains over two next hops, one of them at two sets of
        // addresses; a refused entry's next hop is not one.
        let mut a: Vec<HeldEntry> = (0..300)
            .map(|i| {
                let (hop, ip) = match i % 3 {
                    0 => ("mx1.alpha.example", "192.0.2.1"),
                    1 => ("mx1.alpha.example", "192.0.2.9"),
                    _ => ("mx2.alpha.example", "192.0.2.2"),
                };
                entry(
                    format!("d{i:03}.alpha.example"),
                    hop,
                    EntryState::Accepted,
                    ip,
                )
            })
            .collect();
        a.push(entry(
            "refused.alpha.example".into(),
            "mx9.alpha.example",
            EntryState::Refused,
            "192.0.2.99",
        ));
        put(&alpha, 1_000_000, a).await;
        put(
            &bravo,
            1_000_000,
            vec![entry(
                "b.example".into(),
                "mx.bravo.example",
                EntryState::Accepted,
                "192.0.2.3",
            )],
        )
        .await;
        // gone: its list expired long ago.
        put(
            &gone,
            5,
            vec![entry(
                "g.example".into(),
                "mx.gone.example",
                EntryState::Accepted,
                "192.0.2.4",
            )],
        )
        .await;
        let hops = |s: &Store| {
            let s = s.clone();
            async move {
                s.relay_hops(100, 0)
                    .await
                    .unwrap()
                    .iter()
                    .map(|(p, h, a)| format!("{p} {h} {a:?}"))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            hops(&s).await,
            [
                "alpha mx1.alpha.example [192.0.2.1]",
                "alpha mx1.alpha.example [192.0.2.9]",
                "alpha mx2.alpha.example [192.0.2.2]",
                "bravo mx.bravo.example [192.0.2.3]",
            ]
        );
        // More next hops than are sought one by one: the same answer, by
        // one scan.
        let many: Vec<HeldEntry> = (0..100)
            .map(|i| {
                entry(
                    format!("m{i:03}.bravo.example"),
                    &format!("mx{i:03}.bravo.example"),
                    EntryState::Accepted,
                    "192.0.2.5",
                )
            })
            .collect();
        s.store_peer_entries(
            &bravo.id,
            ListChange {
                changed: &many,
                ..ListChange::default()
            },
            2000,
        )
        .await
        .unwrap();
        let all = hops(&s).await;
        assert_eq!(all.len(), 104, "{all:?}");
        assert_eq!(all[3], "bravo mx.bravo.example [192.0.2.3]");
        assert_eq!(all[4], "bravo mx000.bravo.example [192.0.2.5]");
        assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    }

    /// `d000000.example`, `d000001.example`, ...: `n` names in order.
    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d{i:06}.example")).collect()
    }

    /// Stores version `v` of `friend`'s list of `names` (one next hop), as
    /// a fetch would, and returns it as signed.
    async fn store_list(s: &Store, friend: PeerId, v: u64, names: Vec<String>) -> EncodedEntries {
        let entries: Vec<Entry> = names
            .iter()
            .map(|n| Entry {
                domain: Domain::parse(n).unwrap(),
                next_hop: NextHop::parse("mx.friend.example").unwrap(),
            })
            .collect();
        let list = DomainList::new(friend, v, 0, i64::MAX as u64 / 2, entries);
        let head = ListHead::from(&list);
        s.store_peer_list(&friend, &head, b"s", ListChange::default(), 1000)
            .await
            .unwrap();
        head.entries
    }

    /// The chunks kept as signed, in order: (seq, digest).
    async fn chunk_digests(s: &Store) -> Vec<(i64, Option<Vec<u8>>)> {
        sqlx::query_as("SELECT seq, digest FROM peer_list_chunks ORDER BY peer_id, list, seq")
            .fetch_all(&s.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_one_entry_change_to_a_big_list_rewrites_only_the_chunk_it_falls_in() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("mxfed.db")).await.unwrap();
        let friend = peer(1, "friend");
        s.insert_peer(&friend).await.unwrap();
        let store = |v: u64, names: Vec<String>| store_list(&s, friend.id, v, names);
        let mut list = names(100_000);
        store(1, list.clone()).await;
        let before = chunk_digests(&s).await;
        assert!(before.len() >= 8, "{}", before.len());
        // One more domain in the middle of the list.
        list.push("d050000x.example".into());
        list.sort();
        let after_bytes = store(2, list.clone()).await;
        let after = chunk_digests(&s).await;
        let rewritten = after.iter().filter(|c| !before.contains(c)).count();
        assert_eq!(rewritten, 1, "{before:?}\n{after:?}");
        assert_eq!(after.len(), before.len());
        assert_eq!(
            s.peer_list_entries(&friend.id).await.unwrap(),
            Some((2, after_bytes))
        );
        // A chunk kept without a digest (by an older mxfed) is rewritten,
        // with its digest, and the list read back is the list written.
        sqlx::query("UPDATE peer_list_chunks SET digest = NULL WHERE seq = 0")
            .execute(&s.pool)
            .await
            .unwrap();
        let same = store(3, list).await;
        assert!(chunk_digests(&s).await.iter().all(|(_, d)| d.is_some()));
        assert_eq!(chunk_digests(&s).await, after);
        assert_eq!(
            s.peer_list_entries(&friend.id).await.unwrap(),
            Some((3, same))
        );
    }

    #[tokio::test]
    async fn a_list_kept_as_one_blob_before_chunks_is_read_after_the_upgrade() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("mxfed.db");
        // The database as the migrations before chunks left it.
        let pool = SqlitePoolOptions::new()
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        let mut before = sqlx::migrate!("./migrations");
        before.migrations = before
            .migrations
            .iter()
            .filter(|m| m.version <= 6)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before.run(&pool).await.unwrap();
        let old = Store {
            pool,
            path: path.clone(),
            routes_gen: Default::default(),
        };
        let friend = peer(1, "friend");
        old.insert_peer(&friend).await.unwrap();
        let blob: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
        sqlx::query(
            "INSERT INTO peer_lists (peer_id, version, issued_at, expires_at, signature, received_at, entries)
             VALUES (?, 5, 0, 99, x'00', 0, ?)",
        )
        .bind(friend.id.to_string())
        .bind(&blob)
        .execute(&old.pool)
        .await
        .unwrap();
        old.pool.close().await;
        let s = Store::open(&path).await.unwrap();
        assert_eq!(
            s.peer_list_entries(&friend.id).await.unwrap(),
            Some((5, EncodedEntries(blob)))
        );
        assert_eq!(s.peer_recipient_items(&friend.id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_list_summary_counts_every_state_and_notes_the_first() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("mxfed.db")).await.unwrap();
        let friend = peer(1, "friend");
        s.insert_peer(&friend).await.unwrap();
        let held: Vec<HeldEntry> = (0..30)
            .map(|i| HeldEntry {
                entry: Entry {
                    domain: Domain::parse(&format!("d{i:02}.example")).unwrap(),
                    next_hop: NextHop::parse("mail.friend.example").unwrap(),
                },
                state: match i % 3 {
                    0 => EntryState::Accepted,
                    1 => EntryState::Refused,
                    _ => EntryState::Pending,
                },
                reason: (i % 3 != 0).then(|| format!("why {i}")),
                addrs: Vec::new(),
            })
            .collect();
        let list = DomainList::new(
            friend.id,
            1,
            0,
            i64::MAX as u64 / 2,
            held.iter().map(|h| h.entry.clone()).collect(),
        );
        s.store_peer_list(
            &friend.id,
            &ListHead::from(&list),
            b"s",
            ListChange {
                changed: &held,
                ..ListChange::default()
            },
            5,
        )
        .await
        .unwrap();
        let summary = s.list_summary(&friend.id, 3).await.unwrap();
        assert_eq!(
            (summary.accepted, summary.refused, summary.pending),
            (10, 10, 10)
        );
        let note = |d: &str, r: &str| (d.to_string(), r.to_string());
        assert_eq!(
            summary.refused_notes,
            [
                note("d01.example", "why 1"),
                note("d04.example", "why 4"),
                note("d07.example", "why 7")
            ]
        );
        assert_eq!(summary.pending_notes[0], note("d02.example", "why 2"));
        assert_eq!(summary.pending_notes.len(), 3);
        // Only other peers' accepted entries among those asked for.
        let other = peer(2, "other");
        s.insert_peer(&other).await.unwrap();
        let (d00, d01) = (&held[0].entry.domain, &held[1].entry.domain);
        let elsewhere = s.accepted_elsewhere(&other.id, &[d00, d01]).await.unwrap();
        assert_eq!(elsewhere.len(), 1);
        assert_eq!(&elsewhere[0].0.domain, d00);
        assert!(s
            .accepted_elsewhere(&friend.id, &[d00])
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_hand_over_is_stored_with_the_claimants_list() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("mxfed.db")).await.unwrap();
        let (squatter, owner) = (peer(1, "squatter"), peer(2, "owner"));
        s.insert_peer(&squatter).await.unwrap();
        s.insert_peer(&owner).await.unwrap();
        let entry = Entry {
            domain: Domain::parse("x.example").unwrap(),
            next_hop: NextHop::parse("mail.x.example").unwrap(),
        };
        let accepted = HeldEntry {
            entry: entry.clone(),
            state: EntryState::Accepted,
            reason: None,
            addrs: vec!["1.2.3.4".parse().unwrap()],
        };
        let list =
            |p: &PeerRecord| DomainList::new(p.id, 1, 0, i64::MAX as u64 / 2, vec![entry.clone()]);
        fn only(h: &HeldEntry) -> ListChange<'_> {
            ListChange {
                changed: std::slice::from_ref(h),
                ..ListChange::default()
            }
        }
        s.store_peer_list(
            &squatter.id,
            &ListHead::from(&list(&squatter)),
            b"s",
            only(&accepted),
            1,
        )
        .await
        .unwrap();
        let refused = HeldEntry {
            state: EntryState::Refused,
            reason: Some("no proof".into()),
            addrs: Vec::new(),
            ..accepted.clone()
        };
        let handed = [(squatter.id, refused.clone())];
        let change = ListChange {
            handed: &handed,
            ..only(&accepted)
        };
        s.store_peer_list(&owner.id, &ListHead::from(&list(&owner)), b"s", change, 2)
            .await
            .unwrap();
        assert_eq!(s.peer_entries(&squatter.id).await.unwrap(), [refused]);
        let routes = s.relay_routes(3, 0).await.unwrap();
        assert_eq!(routes.len(), 1, "one holder: {routes:?}");
        assert_eq!(routes[0].peer, "owner");
    }

    #[tokio::test]
    async fn entries_are_due_when_open_or_accepted_and_not_checked_lately() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("mxfed.db")).await.unwrap();
        let friend = peer(1, "friend");
        s.insert_peer(&friend).await.unwrap();
        let held = |domain: &str, state| HeldEntry {
            entry: Entry {
                domain: Domain::parse(domain).unwrap(),
                next_hop: NextHop::parse("mail.friend.example").unwrap(),
            },
            state,
            reason: None,
            addrs: Vec::new(),
        };
        let entries = [
            held("a.example", EntryState::Accepted),
            held("p.example", EntryState::Pending),
            held("r.example", EntryState::Refused),
        ];
        let list = DomainList::new(
            friend.id,
            1,
            1000,
            2000,
            entries.iter().map(|h| h.entry.clone()).collect(),
        );
        s.store_peer_list(
            &friend.id,
            &ListHead::from(&list),
            &[0; 64],
            ListChange {
                changed: &entries,
                ..ListChange::default()
            },
            1000,
        )
        .await
        .unwrap();
        let due = |before| {
            let s = &s;
            let id = friend.id;
            async move {
                s.entries_due(&id, before)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|h| h.entry.domain.to_string())
                    .collect::<Vec<_>>()
            }
        };
        // Stored at 1000: the accepted entry is not due before then.
        assert_eq!(due(1000).await, ["p.example", "r.example"]);
        assert_eq!(due(1001).await, ["a.example", "p.example", "r.example"]);
        // Checked again at 5000: not due until then.
        s.update_entry_states(&friend.id, &entries[..1], &[], 5000)
            .await
            .unwrap();
        assert_eq!(due(4000).await, ["p.example", "r.example"]);
        assert_eq!(due(5001).await, ["a.example", "p.example", "r.example"]);
    }

    #[tokio::test]
    async fn peers_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mxfed.db");
        let s = Store::open(&p).await.unwrap();
        s.insert_peer(&peer(1, "friend")).await.unwrap();
        s.close().await;
        let s = Store::open(&p).await.unwrap();
        assert_eq!(s.peers().await.unwrap(), vec![peer(1, "friend")]);
        assert!(s.remove_peer(&peer(1, "x").id).await.unwrap());
        assert!(s.peers().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn invite_is_single_use_and_expires() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("mxfed.db")).await.unwrap();
        let id = [1u8; 16];
        s.add_invite(&id, &[2u8; 32], 100, 200).await.unwrap();
        assert_eq!(
            s.invite(&[9u8; 16], 150).await.unwrap(),
            InviteState::Unknown
        );
        assert_eq!(s.invite(&id, 200).await.unwrap(), InviteState::Expired);
        assert_eq!(
            s.invite(&id, 150).await.unwrap(),
            InviteState::Valid([2u8; 32])
        );
        assert!(
            !s.redeem_invite(&id, 250, &peer(1, "a")).await.unwrap(),
            "expired"
        );
        assert!(s.redeem_invite(&id, 150, &peer(1, "a")).await.unwrap());
        assert_eq!(s.invite(&id, 151).await.unwrap(), InviteState::Used);
        assert!(!s.redeem_invite(&id, 152, &peer(2, "b")).await.unwrap());
        assert_eq!(s.peers().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn duplicate_name_fails_without_using_the_invite() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("mxfed.db")).await.unwrap();
        s.insert_peer(&peer(1, "a")).await.unwrap();
        s.add_invite(&[1u8; 16], &[2u8; 32], 100, 200)
            .await
            .unwrap();
        assert!(s
            .redeem_invite(&[1u8; 16], 150, &peer(2, "a"))
            .await
            .is_err());
        assert!(matches!(
            s.invite(&[1u8; 16], 150).await.unwrap(),
            InviteState::Valid(_)
        ));
    }

    #[tokio::test]
    async fn a_foreign_sqlite_database_is_not_touched() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mxfed.db");
        let other = SqlitePoolOptions::new()
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&p)
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        sqlx::query("CREATE TABLE customers (id INTEGER)")
            .execute(&other)
            .await
            .unwrap();
        other.close().await;
        let before = std::fs::read(&p).unwrap();
        let e = Store::open(&p).await.unwrap_err().to_string();
        assert!(e.contains("not an mxfed database"), "{e}");
        assert!(std::fs::read(&p).unwrap() == before, "the file was changed");
    }

    #[tokio::test]
    async fn garbage_file_is_an_open_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mxfed.db");
        std::fs::write(&p, vec![0x55u8; 8192]).unwrap();
        let e = Store::open(&p).await.unwrap_err().to_string();
        assert!(e.contains("mxfed.db"), "{e}");
        assert_eq!(
            std::fs::read(&p).unwrap(),
            vec![0x55u8; 8192],
            "left untouched"
        );
    }
}
