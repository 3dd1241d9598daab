//! [`Pairing`]: invites, joining with one, and unpairing.
//!
//! `mxfed invite` files a new invite (only a hash of its secret is kept);
//! `mxfed join` dials the inviter, proves it holds the token over the TLS
//! exporter of that very connection, and stores the inviter on a welcome.
//! On the inviter's side an unknown key may present one invite and nothing
//! else ([`Pairing::serve_unpaired`]); failures count in the
//! [`JoinLimiter`]. `mxfed unpair` tells the peer (over its session, or one
//! dial) and forgets it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use mxfed_proto::msg::{close, PeerInfo, Request, Response, EXPORTER_LABEL};
use mxfed_proto::{name, token, InviteToken, PeerId};

use crate::clock::rfc3339;
use crate::frames;
use crate::store::{InviteState, PeerRecord, StoreError};
use crate::util::{lock, printable};

use super::limiter::JoinLimiter;
use super::link::Peers;
use super::wire::{self, check_info, violated, violation};

/// Longest invite lifetime.
const MAX_INVITE_TTL: u64 = 30 * 86_400;
/// How long the inviter waits for the joiner's first session before dialling it.
const JOIN_GRACE: Duration = Duration::from_secs(30);
/// Largest frame an unpaired client may send: a join request is small.
const MAX_JOIN_FRAME: usize = 4096;
/// How long an unpaired client has to present its invite.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The pairing service; cheap to clone.
#[derive(Clone)]
pub(crate) struct Pairing {
    peers: Peers,
    limiter: Arc<Mutex<JoinLimiter>>,
}

impl Pairing {
    pub(crate) fn new(peers: Peers) -> Self {
        Self {
            peers,
            limiter: Arc::new(Mutex::new(JoinLimiter::default())),
        }
    }

    /// Creates an invite; returns the token text and its expiry.
    pub(crate) async fn invite(&self, ttl_secs: u64) -> Result<(String, u64), String> {
        let config = self.peers.config();
        if config.advertise.is_empty() {
            return Err("no address to put in the invite: set `advertise` in the config".into());
        }
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| "no randomness available".to_string())?;
        let now = self.peers.clock().now_unix();
        if ttl_secs > MAX_INVITE_TTL {
            return Err(format!(
                "an invite may be valid for at most {} days",
                MAX_INVITE_TTL / 86_400
            ));
        }
        let expires_at = now.saturating_add(ttl_secs as i64);
        let token = InviteToken {
            inviter: self.peers.identity().id,
            addrs: config.advertise.clone(),
            secret,
            expires_at: expires_at as u64,
        };
        self.peers
            .store()
            .add_invite(&token.id(), &token.key(), now, expires_at)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(expires = %rfc3339(expires_at), "invite created");
        Ok((token.to_string(), expires_at as u64))
    }

    /// Joins the inviter named in `text`; returns its name and ID.
    pub(crate) async fn join(&self, text: &str) -> Result<(String, PeerId), String> {
        let token: InviteToken = text.parse().map_err(|e: token::TokenError| e.to_string())?;
        let peers = &self.peers;
        let now = peers.clock().now_unix();
        if token.is_expired(now.max(0) as u64) {
            return Err(format!(
                "invite token expired at {}; ask for a new one",
                rfc3339(token.expires_at.min(i64::MAX as u64) as i64)
            ));
        }
        let me = peers.identity().id;
        if token.inviter == me {
            return Err(
                "this invite token was made by this agent; run `mxfed join` on the friend's side"
                    .into(),
            );
        }
        if let Ok(Some(p)) = peers.store().peer(&token.inviter).await {
            return Err(format!("already paired with {} ({})", p.name, p.id));
        }
        let conn = peers
            .connect(token.inviter, &token.addrs)
            .await
            .map_err(|e| format!("cannot reach the inviter {}: {e}", token.inviter.short()))?;
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .map_err(|_| "no tls exporter on this connection".to_string())?;
        let proof = token.join_proof(&exporter, &me);
        let answer = wire::request(
            &conn,
            &Request::Join {
                token_id: token.id(),
                proof,
                info: peers.my_info(),
            },
        )
        .await;
        conn.close(close::DONE.into(), b"");
        let info = match answer {
            Ok(Response::Welcome(info)) => info,
            Ok(Response::Refused { message }) => {
                return Err(format!("the inviter refused: {}", printable(&message)))
            }
            Ok(other) => return Err(format!("the inviter answered {other:?}")),
            Err(e) => return Err(format!("no answer from the inviter: {e}")),
        };
        check_info(&info).map_err(|e| format!("the inviter's details are invalid: {e}"))?;
        let mut record = self
            .new_peer_record(token.inviter, &info, now)
            .await
            .map_err(|e| e.to_string())?;
        if record.addrs.is_empty() {
            record.addrs = token.addrs.clone();
        }
        peers
            .store()
            .insert_peer(&record)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(peer = %record.name, id = %record.id, mail_host = %record.mail_host, "paired: joined with an invite");
        peers.start_dialer(record.id);
        Ok((record.name, record.id))
    }

    /// Removes a peer by name, telling it first when it is connected.
    pub(crate) async fn unpair(&self, name: &str) -> Result<bool, String> {
        let peers = &self.peers;
        let all = peers.store().peers().await.map_err(|e| e.to_string())?;
        let peer = all
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("no peer named {name:?} (see `mxfed status`)"))?;
        // Tell it over the live session, or try one dial if there is none.
        let conn = match peers.live_conn(&peer.id) {
            Some(c) => Some(c),
            None => peers.dial(&peer).await.ok(),
        };
        let notified = match &conn {
            Some(c) => matches!(wire::request(c, &Request::Unpair).await, Ok(Response::Done)),
            None => false,
        };
        peers.forget(&peer.id).await;
        if let Some(c) = conn {
            c.close(close::UNPAIRED.into(), b"unpaired");
        }
        tracing::info!(peer = %peer.name, id = %peer.id, notified, "unpaired");
        Ok(notified)
    }

    /// An unknown key may present one invite, and nothing else.
    pub(super) async fn serve_unpaired(&self, conn: quinn::Connection, id: PeerId) {
        let who = format!("unpaired {}", id.short());
        let first = tokio::time::timeout(JOIN_TIMEOUT, conn.accept_bi()).await;
        let Ok(Ok((mut send, mut recv))) = first else {
            violated(&conn, &who, close::NOT_PAIRED, "no invite presented");
            return;
        };
        let req = match tokio::time::timeout(
            JOIN_TIMEOUT,
            frames::read_limited::<Request, _>(&mut recv, MAX_JOIN_FRAME),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                match violation(&e) {
                    Some((code, why)) => violated(&conn, &who, code, &why),
                    None => conn.close(close::DONE.into(), b""),
                }
                return;
            }
            Err(_) => {
                violated(&conn, &who, close::TIMEOUT, "no request");
                return;
            }
        };
        let Request::Join {
            token_id,
            proof,
            info,
        } = req
        else {
            violated(
                &conn,
                &who,
                close::NOT_PAIRED,
                "only an invite may be presented before pairing",
            );
            return;
        };
        let response = self.handle_join(&conn, id, token_id, proof, info).await;
        if frames::write(&mut send, &response).await.is_ok() {
            let _ = send.finish();
        }
        // The joiner closes once it has read the answer.
        let _ = tokio::time::timeout(JOIN_TIMEOUT, conn.closed()).await;
        conn.close(close::DONE.into(), b"");
    }

    async fn handle_join(
        &self,
        conn: &quinn::Connection,
        joiner: PeerId,
        token_id: token::TokenId,
        proof: Vec<u8>,
        info: PeerInfo,
    ) -> Response {
        let ip = conn.remote_address().ip();
        let refuse = |message: String| Response::Refused { message };
        // While an address is blocked its attempts are still checked, but a
        // failure only gets "too many attempts". A genuine token and proof
        // (128-bit ID, signature) always get through, so nobody can lock
        // friends out by failing on purpose.
        let blocked = lock(&self.limiter).blocked(ip, Instant::now().into_std());
        let peers = &self.peers;
        let now = peers.clock().now_unix();
        let fail = |message: &str| {
            lock(&self.limiter).failed(ip, Instant::now().into_std());
            tracing::warn!(%ip, joiner = %joiner.short(), "join refused: {message}");
            match blocked {
                Some(wait) => refuse(format!(
                    "too many failed join attempts from {ip}; try again in {}s",
                    wait.as_secs().max(1)
                )),
                None => refuse(message.into()),
            }
        };
        let key = match peers.store().invite(&token_id, now).await {
            Ok(InviteState::Valid(key)) => key,
            Ok(InviteState::Unknown) => {
                return fail("unknown invite token: this agent did not issue it")
            }
            Ok(InviteState::Used) => return fail("invite token has already been used"),
            Ok(InviteState::Expired) => return fail("invite token has expired"),
            Err(e) => {
                tracing::error!("join: {e}");
                return refuse("internal error on the inviter; see its log".into());
            }
        };
        let mut exporter = [0u8; 32];
        if conn
            .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .is_err()
        {
            return refuse("internal error: no tls exporter".into());
        }
        if !token::verify_join_proof(&key, &exporter, &joiner, &proof) {
            return fail("invite proof is invalid for this connection");
        }
        if let Err(why) = check_info(&info) {
            return fail(&format!("joiner's details are invalid: {why}"));
        }
        if joiner == peers.identity().id {
            return fail("an agent cannot pair with itself");
        }
        let record = match self.new_peer_record(joiner, &info, now).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("join: {e}");
                return refuse("internal error on the inviter; see its log".into());
            }
        };
        match peers.store().redeem_invite(&token_id, now, &record).await {
            Ok(true) => {}
            Ok(false) => return fail("invite token has already been used"),
            Err(e) => {
                tracing::error!("join: {e}");
                return refuse("internal error on the inviter; see its log".into());
            }
        }
        tracing::info!(peer = %record.name, id = %joiner, %ip, mail_host = %record.mail_host, "paired: peer joined with an invite");
        // The joiner stores us only once it has this answer, and dials us
        // then; its first session starts our dialer. If it never comes (the
        // answer was lost), our dialer tries after a grace period, and the
        // joiner's "not paired" answer then undoes this half-pairing.
        peers.start_dialer_after(joiner, JOIN_GRACE);
        Response::Welcome(peers.my_info())
    }

    /// A record for a new peer, its name made unique among peers if needed.
    async fn new_peer_record(
        &self,
        id: PeerId,
        info: &PeerInfo,
        now: i64,
    ) -> Result<PeerRecord, StoreError> {
        let peers = self.peers.store().peers().await?;
        if let Some(p) = peers.iter().find(|p| p.id == id) {
            // Already paired (a second join, say): keep the existing name.
            return Ok(PeerRecord {
                name: p.name.clone(),
                ..p.clone()
            });
        }
        let mut name = info.name.clone();
        let mut n = 2;
        while peers.iter().any(|p| p.name == name) {
            let suffix = format!("-{n}");
            let keep = info.name.len().min(name::MAX_NAME - suffix.len());
            name = format!("{}{suffix}", &info.name[..keep]);
            n += 1;
        }
        if name != info.name {
            tracing::info!(peer = %id, "peer calls itself {:?}, which is taken; naming it {name:?}", info.name);
        }
        Ok(PeerRecord {
            id,
            name,
            mail_host: info.mail_host.clone(),
            addrs: info.addrs.clone(),
            agent_version: Some(info.agent_version.clone()),
            paired_at: now,
            last_seen: None,
            last_address: None,
        })
    }
}
