//! [`Store`]: all agent state, in SQLite at `<data_dir>/mxfed.db`.
//!
//! This is the only module that speaks SQL. The database runs in WAL mode
//! with `synchronous = NORMAL`; migrations are embedded in the binary
//! (`agent/migrations/`) and run on open, so no live database is needed to
//! build. Queries use sqlx's runtime functions, not the compile-time macros.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use mxfed_proto::token::{TokenId, TokenKey};
use mxfed_proto::PeerId;

/// The database handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
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
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| open_err(&e))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| open_err(&e))?;
        Ok(Self {
            pool,
            path: path.into(),
        })
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
    pub async fn touch_peer(&self, id: &PeerId, now: i64, address: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE peers SET last_seen = ?, last_address = ? WHERE id = ?")
            .bind(now)
            .bind(address)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| self.query_err(e))?;
        Ok(())
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
