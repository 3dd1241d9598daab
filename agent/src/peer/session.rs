//! [`Sessions`]: dialling, accepting and serving paired peers.
//!
//! For each paired peer a dialer task keeps one authenticated QUIC
//! connection up (with backoff); [`Sessions::run_dialers`] starts and stops
//! them on the orders sent through [`Peers`]. [`Sessions::run_accept`]
//! sorts incoming connections into paired peers, which get a session, and
//! unknown keys, which go to [`Pairing`] (one invite, nothing else).
//!
//! When both sides dial at once, both keep the connection dialled by the
//! peer with the lower ID and close the other with `DUPLICATE`, so they
//! agree without talking about it ([`Peers::register`]).
//!
//! A session answers `Hello`, `Ping` and `Unpair` itself and hands every
//! other request to the [`Inbound`] it was given. A peer that sends a frame
//! over the limit, a message that does not decode, an unknown message type
//! or a flood of streams has its connection closed with a code from
//! [`close`], logged once; nothing else is affected.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use mxfed_proto::msg::{close, Hello, Request, Response};
use mxfed_proto::PeerId;

use crate::frames;
use crate::util::lock;

use super::limiter::CoolOff;
use super::link::{Caller, DialCommand, DialOrders, Inbound, PeerEvent, Peers, Responder};
use super::pairing::Pairing;
use super::wire::{self, check_info, violated, violation};

/// How long a peer has to send its request after opening a stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest wait between failed dials.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// More streams than this within [`STREAM_WINDOW`] closes the connection.
const MAX_STREAMS_PER_WINDOW: u32 = 200;
const STREAM_WINDOW: Duration = Duration::from_secs(10);
/// Handshakes in progress at once.
const MAX_HANDSHAKES: usize = 64;
/// Connections from unpaired keys (presenting an invite) served at once.
const MAX_UNPAIRED: usize = 16;
/// How long an old connection has to answer a ping before a new one from
/// the same peer replaces it.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// A session must last this long before the dialer's backoff resets.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// How often `last_seen` is written while a session is up.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// The session service: what serving peers needs besides [`Peers`].
pub(crate) struct Sessions {
    peers: Peers,
    pairing: Pairing,
    /// Where requests for other services go.
    inbound: Arc<dyn Inbound>,
    /// My list's version, for my Hello (published by the lists service).
    my_version: watch::Receiver<u64>,
    handshakes: Arc<Semaphore>,
    unpaired: Arc<Semaphore>,
    /// Peers cut off for a flood, kept across their connections.
    cool_off: std::sync::Mutex<CoolOff<PeerId>>,
    cancel: CancellationToken,
}

/// A running dialer.
struct Dialer {
    wake: Arc<Notify>,
    task: AbortHandle,
}

/// A number in [0, 1) from the OS random source, for jitter.
fn rand_fraction() -> f64 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX).max(1.0)
}

impl Sessions {
    pub(crate) fn new(
        peers: Peers,
        pairing: Pairing,
        inbound: Arc<dyn Inbound>,
        my_version: watch::Receiver<u64>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            peers,
            pairing,
            inbound,
            my_version,
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            unpaired: Arc::new(Semaphore::new(MAX_UNPAIRED)),
            cool_off: std::sync::Mutex::new(CoolOff::default()),
            cancel,
        })
    }

    fn hello(&self) -> Hello {
        Hello {
            info: self.peers.my_info(),
            list_version: *self.my_version.borrow(),
            now: self.peers.clock().now_u64(),
        }
    }

    // ----- dialling -------------------------------------------------------

    /// Runs the dialers on the orders from [`Peers`] until shutdown.
    pub(crate) async fn run_dialers(self: Arc<Self>, orders: DialOrders) {
        let mut orders = orders.0;
        let mut dialers: HashMap<PeerId, Dialer> = HashMap::new();
        let mut tasks = JoinSet::new();
        loop {
            let order = tokio::select! {
                o = orders.recv() => o,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                _ = self.cancel.cancelled() => None,
            };
            let Some(order) = order else { break };
            match order {
                DialCommand::Start(id, delay) => {
                    if dialers.get(&id).is_some_and(|d| !d.task.is_finished()) {
                        continue;
                    }
                    let wake = Arc::new(Notify::new());
                    let (me, w) = (Arc::clone(&self), Arc::clone(&wake));
                    let task = tasks.spawn(async move {
                        if !delay.is_zero() {
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = w.notified() => {}
                            }
                        }
                        me.dial_loop(id, w).await
                    });
                    dialers.insert(id, Dialer { wake, task });
                }
                DialCommand::Wake(id) => {
                    if let Some(d) = dialers.get(&id) {
                        d.wake.notify_one();
                    }
                }
                DialCommand::Stop(id) => {
                    if let Some(d) = dialers.remove(&id) {
                        d.task.abort();
                    }
                    // Unpaired: a cool-off does not outlive the pairing.
                    lock(&self.cool_off).forget(&id);
                }
            }
        }
        // A dialer holds nothing half-done: stop them all.
        tasks.shutdown().await;
    }

    async fn dial_loop(self: Arc<Self>, id: PeerId, wake: Arc<Notify>) {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            if self.peers.live_conn(&id).is_some() {
                tokio::select! {
                    _ = wake.notified() => continue,
                    _ = self.cancel.cancelled() => return,
                }
            }
            // A peer cut off for a flood is not dialled until its cool-off
            // ends (its sessions would be refused), and that wait is not a
            // failure that grows the backoff.
            let waiting = lock(&self.cool_off).waiting(&id, Instant::now().into_std());
            if let Some(wait) = waiting {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.cancel.cancelled() => return,
                }
                continue;
            }
            let peer = match self.peers.store().peer(&id).await {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(peer = %id.short(), "dialer: {e}");
                    tokio::time::sleep(BACKOFF_MAX).await;
                    continue;
                }
            };
            match self.peers.dial(&peer).await {
                Ok(conn) => {
                    failures = 0;
                    let up = Instant::now();
                    let me = self.peers.identity().id;
                    let session = tokio::spawn(Arc::clone(&self).run_session(conn, id, me));
                    let _ = session.await;
                    // A session that did not last (refused as a duplicate, closed
                    // at once) does not reset the backoff: no redial storm.
                    if up.elapsed() >= STABLE_SESSION {
                        backoff = BACKOFF_MIN;
                    } else {
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = self.cancel.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                Err(why) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::info!(peer = %peer.name, attempts = failures, "cannot reach peer: {why}; retrying in {}s", backoff.as_secs());
                    }
                    // Jitter of up to a quarter keeps two agents from dialling in lockstep.
                    let jitter = backoff.mul_f64(rand_fraction() / 4.0);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff + jitter) => {}
                        _ = wake.notified() => {}
                        _ = self.cancel.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    // ----- accepting ------------------------------------------------------

    /// Accepts connections until shutdown.
    pub(crate) async fn run_accept(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                i = self.peers.endpoint().accept() => i,
                _ = self.cancel.cancelled() => return,
            };
            let Some(incoming) = incoming else { return };
            let Ok(permit) = Arc::clone(&self.handshakes).try_acquire_owned() else {
                incoming.refuse();
                continue;
            };
            tokio::spawn(Arc::clone(&self).handle_incoming(incoming, permit));
        }
    }

    async fn handle_incoming(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        handshake: tokio::sync::OwnedSemaphorePermit,
    ) {
        let remote = incoming.remote_address();
        let conn = match tokio::time::timeout(wire::DIAL_TIMEOUT, incoming).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(%remote, "handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "handshake timed out");
                return;
            }
        };
        let Some(id) = crate::net::remote_id(&conn) else {
            violated(&conn, "?", close::NOT_PAIRED, "no usable certificate");
            return;
        };
        drop(handshake);
        match self.peers.store().peer(&id).await {
            Ok(Some(_)) => self.run_session(conn, id, id).await,
            Ok(None) => {
                // Strangers get a small, separate budget, so they cannot
                // crowd out paired peers or hold much memory.
                let Ok(_slot) = Arc::clone(&self.unpaired).try_acquire_owned() else {
                    conn.close(close::NOT_PAIRED.into(), b"busy; try again later");
                    return;
                };
                self.pairing.serve_unpaired(conn, id).await
            }
            Err(e) => {
                tracing::error!(%remote, "{e}");
                conn.close(close::SHUTDOWN.into(), b"internal error");
            }
        }
    }

    // ----- sessions -------------------------------------------------------

    /// Serves a connection with a paired peer until it closes.
    async fn run_session(self: Arc<Self>, conn: quinn::Connection, id: PeerId, dialer: PeerId) {
        let peers = &self.peers;
        let waiting = lock(&self.cool_off).waiting(&id, Instant::now().into_std());
        if let Some(wait) = waiting {
            tracing::debug!(peer = %id.short(), "connection refused: cut off for a flood, {}s to wait", wait.as_secs() + 1);
            let why = format!("cut off for a flood; try again in {}s", wait.as_secs() + 1);
            conn.close(close::TOO_MANY_STREAMS.into(), why.as_bytes());
            return;
        }
        let name = match peers.store().peer(&id).await {
            Ok(Some(p)) => p.name,
            Ok(None) => {
                conn.close(close::NOT_PAIRED.into(), b"not paired");
                return;
            }
            Err(e) => {
                // Never answer "not paired" for a database hiccup: the peer
                // would take it as an unpair.
                tracing::error!(peer = %id.short(), "{e}");
                conn.close(close::SHUTDOWN.into(), b"internal error");
                return;
            }
        };
        // A peer that restarted dials again while its old connection still
        // looks alive here; if the old one does not answer a ping, drop it
        // so the new one is not refused as a duplicate.
        if let Some(old) = peers.live_conn(&id) {
            let ping = tokio::time::timeout(PING_TIMEOUT, wire::request(&old, &Request::Ping(0)));
            if old.stable_id() != conn.stable_id() && !matches!(ping.await, Ok(Ok(_))) {
                old.close(close::DUPLICATE.into(), b"replaced by a new connection");
            }
        }
        if !peers.register(&conn, id, dialer) {
            conn.close(close::DUPLICATE.into(), b"another connection is kept");
            return;
        }
        peers.start_dialer(id);
        let remote = conn.remote_address();
        tracing::info!(peer = %name, %remote, "session up");
        let clock = peers.clock().clone();
        let _ = peers
            .store()
            .touch_peer(&id, clock.now_unix(), &remote)
            .await;

        let toucher = {
            let store = peers.store().clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(TOUCH_EVERY).await;
                    let _ = store.touch_peer(&id, clock.now_unix(), &remote).await;
                }
            })
        };
        let hello = {
            let me = Arc::clone(&self);
            let conn = conn.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let hello = me.hello();
                match wire::request(&conn, &Request::Hello(hello)).await {
                    Ok(Response::Hello(info)) => me.record_hello(&conn, id, &name, info).await,
                    Ok(other) => violated(
                        &conn,
                        &name,
                        close::UNEXPECTED,
                        &format!("answered hello with {other:?}"),
                    ),
                    Err(e) => tracing::debug!(peer = %name, "hello: {e}"),
                }
            })
        };

        let mut window = Instant::now();
        let mut opened = 0u32;
        let reason = loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => break e,
            };
            if window.elapsed() > STREAM_WINDOW {
                window = Instant::now();
                opened = 0;
            }
            opened += 1;
            if opened > MAX_STREAMS_PER_WINDOW {
                let wait = lock(&self.cool_off).cut(id, Instant::now().into_std());
                violated(
                    &conn,
                    &name,
                    close::TOO_MANY_STREAMS,
                    &format!(
                        "more than {MAX_STREAMS_PER_WINDOW} streams in {}s; not served again for {}s",
                        STREAM_WINDOW.as_secs(),
                        wait.as_secs()
                    ),
                );
                break conn.closed().await;
            }
            let from = Caller {
                id,
                name: name.clone(),
            };
            tokio::spawn(Arc::clone(&self).serve_stream(conn.clone(), from, send, recv));
        };
        hello.abort();
        toucher.abort();

        if peers.unregister(&conn, &id) {
            let _ = peers
                .store()
                .touch_peer(&id, clock.now_unix(), &remote)
                .await;
            tracing::info!(peer = %name, %remote, "session down: {}", wire::describe_close(&reason));
            // No race with pairing: the inviter only dials after the joiner's
            // first session, and the joiner dials only once it has stored us.
            if wire::closed_by_peer_with(&reason, close::NOT_PAIRED) {
                // The peer (authenticated by its pinned key) no longer knows
                // us: it unpaired us while we were unreachable. Follow suit.
                tracing::warn!(peer = %name, "peer no longer lists us (it unpaired us while we were unreachable); removing it here too");
                peers.forget(&id).await;
                return;
            }
            peers.wake_dialer(id);
        }
    }

    /// Checks and records what a peer says of itself, then tells the services.
    async fn record_hello(&self, conn: &quinn::Connection, id: PeerId, name: &str, hello: Hello) {
        let Hello {
            info,
            list_version,
            now: their_now,
        } = hello;
        let peers = &self.peers;
        peers.record_skew(id, their_now as i64 - peers.clock().now_unix());
        if let Err(why) = check_info(&info) {
            violated(
                conn,
                name,
                close::MALFORMED,
                &format!("invalid hello: {why}"),
            );
            return;
        }
        peers.set_info(conn, &id, &info);
        if let Ok(Some(old)) = peers.store().peer(&id).await {
            if old.mail_host != info.mail_host || old.addrs != info.addrs {
                tracing::info!(peer = %name, mail_host = %info.mail_host, addrs = ?info.addrs, "peer's details changed");
            }
        }
        if let Err(e) = peers
            .store()
            .update_peer_info(&id, &info.mail_host, &info.addrs, &info.agent_version)
            .await
        {
            tracing::error!(peer = %name, "{e}");
        }
        // The lists service fetches their list if newer and re-sends what we
        // hold of it; the queue service tells them what I hold for them.
        peers.emit(PeerEvent::Up {
            peer: id,
            name: name.to_string(),
            list_version,
        });
    }

    async fn serve_stream(
        self: Arc<Self>,
        conn: quinn::Connection,
        from: Caller,
        send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let req = match tokio::time::timeout(STREAM_TIMEOUT, frames::read::<Request, _>(&mut recv))
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                if let Some((code, why)) = violation(&e) {
                    violated(&conn, &from.name, code, &why);
                }
                return;
            }
            Err(_) => return,
        };
        let mut reply = Responder::new(send);
        match req {
            Request::Hello(hello) => {
                self.record_hello(&conn, from.id, &from.name, hello).await;
                let _ = reply.send(&Response::Hello(self.hello())).await;
            }
            Request::Ping(n) => {
                let _ = reply.send(&Response::Pong(n)).await;
            }
            Request::Unpair => {
                tracing::info!(peer = %from.name, "peer unpaired us; removing it");
                self.peers.forget(&from.id).await;
                if reply.send(&Response::Done).await.is_ok() {
                    reply.finish();
                }
                // The asker closes once it has the answer; if it does not,
                // close anyway: this key is no longer a peer.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                conn.close(close::UNPAIRED.into(), b"unpaired");
                return;
            }
            Request::Join { .. } => {
                violated(
                    &conn,
                    &from.name,
                    close::UNEXPECTED,
                    "join on a paired session",
                );
                return;
            }
            other => self.inbound.handle(&from, other, &mut reply).await,
        }
        reply.finish();
    }
}
