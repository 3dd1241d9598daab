//! [`Peers`]: the one interface the other services have to paired peers.
//!
//! Outward, a service may [`Peers::send`] a request to a peer and get its
//! answer, [`Peers::open`] a request answered by several frames (a list
//! transfer), ask who is connected, and [`Peers::subscribe`] to
//! [`PeerEvent`]s. Inward, the session hands each request a peer sends to
//! an [`Inbound`] (the wiring routes it to the service it is for), with a
//! [`Responder`] to answer on. No connection, stream or session type leaves
//! the `peer` module.
//!
//! Behind the handle is the peer layer's own state: the live sessions (and
//! the duplicate-connection rule that decides which one stays), each peer's
//! clock skew, the event subscribers, and the channel to the dialers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use mxfed_proto::msg::{close, PeerInfo, Request, Response};
use mxfed_proto::PeerId;

use crate::clock::Clock;
use crate::config::Config;
use crate::frames::{self, FrameError};
use crate::identity::Identity;
use crate::store::{PeerRecord, Store};
use crate::util::lock;

use super::wire;

/// Something that happened to a peer, for the services that follow peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerEvent {
    /// A session is up and the peer said who it is now (its `Hello`, or its
    /// answer to mine, checked and recorded). Sent for both, so a service
    /// may see it twice per session.
    Up {
        peer: PeerId,
        name: String,
        /// The version of its domain list it announced.
        list_version: u64,
    },
    /// The peer was unpaired, here or by itself.
    Removed {
        peer: PeerId,
        name: String,
        /// Whether it was still in the store (false: it was already gone).
        was_paired: bool,
    },
}

/// A subscription to [`PeerEvent`]s (from [`Peers::subscribe`]).
#[derive(Debug)]
pub(crate) struct PeerEvents(mpsc::UnboundedReceiver<PeerEvent>);

impl PeerEvents {
    /// The next event; `None` once `cancel` fires or the peer layer is gone.
    pub(crate) async fn next(&mut self, cancel: &CancellationToken) -> Option<PeerEvent> {
        tokio::select! {
            e = self.0.recv() => e,
            _ = cancel.cancelled() => None,
        }
    }
}

/// The peer a request came from.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub id: PeerId,
    pub name: String,
}

/// Why a request to a peer got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendError {
    /// No session with the peer is up.
    NotConnected,
    /// The exchange failed (timeout, stream error, bad answer).
    Failed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotConnected => f.write_str("not connected"),
            SendError::Failed(why) => f.write_str(why),
        }
    }
}

/// The stream a request from a peer is answered on.
#[derive(Debug)]
pub(crate) struct Responder {
    send: quinn::SendStream,
}

impl Responder {
    pub(super) fn new(send: quinn::SendStream) -> Self {
        Self { send }
    }

    /// Writes one response frame.
    pub(crate) async fn send(&mut self, response: &Response) -> Result<(), FrameError> {
        frames::write(&mut self.send, response).await
    }

    /// Writes `first`, then each of `rest`, stopping at the first error
    /// (a header and its chunks, say).
    pub(crate) async fn send_all(
        &mut self,
        first: Response,
        rest: impl IntoIterator<Item = Response>,
    ) -> Result<(), FrameError> {
        self.send(&first).await?;
        for r in rest {
            self.send(&r).await?;
        }
        Ok(())
    }

    /// Ends the stream once every frame is written.
    pub(super) fn finish(mut self) {
        let _ = self.send.finish();
    }
}

/// The answers to a request opened with [`Peers::open`], read one frame at a time.
#[derive(Debug)]
pub(crate) struct Responses {
    conn: quinn::Connection,
    recv: quinn::RecvStream,
}

impl Responses {
    /// The next answer frame.
    pub(crate) async fn next(&mut self) -> Result<Response, FrameError> {
        frames::read::<Response, _>(&mut self.recv).await
    }

    /// Closes the connection if `err` is a protocol violation by the peer
    /// (logged once, naming `who`); true if it was.
    pub(crate) fn close_if_violation(&self, who: &str, err: &FrameError) -> bool {
        match wire::violation(err) {
            Some((code, why)) => {
                wire::violated(&self.conn, who, code, &why);
                true
            }
            None => false,
        }
    }

    /// Closes the connection: the peer answered with something it must not.
    pub(crate) fn close_unexpected(&self, who: &str, why: &str) {
        wire::violated(&self.conn, who, close::UNEXPECTED, why);
    }
}

/// What the session hands each request from a paired peer to (except the
/// session's own: `Hello`, `Ping`, `Unpair`, `Join`). It answers on
/// `reply`; the session finishes the stream afterwards.
pub(crate) trait Inbound: Send + Sync + 'static {
    /// Answers one request.
    fn handle<'a>(
        &'a self,
        from: &'a Caller,
        request: Request,
        reply: &'a mut Responder,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// What a session's connection looks like from outside, for `status`.
#[derive(Debug, Clone)]
pub(crate) struct SessionView {
    pub remote: SocketAddr,
    /// Unix time the session came up.
    pub since: i64,
    pub rtt: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The version the peer gave in its last Hello on this session.
    pub agent_version: Option<String>,
}

/// Orders for the dialers (run by `session`).
#[derive(Debug)]
pub(super) enum DialCommand {
    /// Keep a connection to this peer up, the first dial after `delay`;
    /// nothing if its dialer runs.
    Start(PeerId, Duration),
    /// Dial now if waiting.
    Wake(PeerId),
    /// Stop dialling this peer.
    Stop(PeerId),
}

/// The receiving end of the dialers' orders, for [`super::Sessions::run_dialers`].
#[derive(Debug)]
pub(crate) struct DialOrders(pub(super) mpsc::UnboundedReceiver<DialCommand>);

/// A live connection to a paired peer.
struct Session {
    conn: quinn::Connection,
    /// Who dialled it; decides which of two simultaneous connections stays.
    dialer: PeerId,
    since: i64,
    info: Option<PeerInfo>,
}

struct Core {
    config: Arc<crate::config::Shared>,
    identity: Arc<Identity>,
    endpoint: quinn::Endpoint,
    store: Store,
    clock: Clock,
    sessions: Mutex<HashMap<PeerId, Session>>,
    /// Per peer: its clock minus mine, from its last Hello.
    clock_skew: Mutex<HashMap<PeerId, i64>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<PeerEvent>>>,
    dial: mpsc::UnboundedSender<DialCommand>,
}

/// The handle to the peer layer; cheap to clone.
#[derive(Clone)]
pub(crate) struct Peers {
    core: Arc<Core>,
}

impl Peers {
    /// The handle, and the receiving end of the dialers' orders (for
    /// `session::Sessions::run_dialers`).
    pub(crate) fn new(
        config: Arc<crate::config::Shared>,
        identity: Arc<Identity>,
        endpoint: quinn::Endpoint,
        store: Store,
        clock: Clock,
    ) -> (Self, DialOrders) {
        let (dial, orders) = mpsc::unbounded_channel();
        let core = Core {
            config,
            identity,
            endpoint,
            store,
            clock,
            sessions: Mutex::new(HashMap::new()),
            clock_skew: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(Vec::new()),
            dial,
        };
        (
            Self {
                core: Arc::new(core),
            },
            DialOrders(orders),
        )
    }

    // ----- for every service ------------------------------------------------

    /// Sends one request to `peer` over its session and waits for the answer.
    pub(crate) async fn send(&self, peer: &PeerId, req: &Request) -> Result<Response, SendError> {
        let conn = self.live_conn(peer).ok_or(SendError::NotConnected)?;
        wire::request(&conn, req).await.map_err(SendError::Failed)
    }

    /// Sends a request answered by several frames; read them from the result.
    pub(crate) async fn open(&self, peer: &PeerId, req: &Request) -> Result<Responses, SendError> {
        let conn = self.live_conn(peer).ok_or(SendError::NotConnected)?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| SendError::Failed(e.to_string()))?;
        frames::write(&mut send, req)
            .await
            .map_err(|e| SendError::Failed(e.to_string()))?;
        let _ = send.finish();
        Ok(Responses { conn, recv })
    }

    /// Whether a session with `peer` is up.
    pub(crate) fn is_connected(&self, peer: &PeerId) -> bool {
        self.live_conn(peer).is_some()
    }

    /// The peers with a session up.
    pub(crate) fn connected(&self) -> Vec<PeerId> {
        lock(&self.core.sessions)
            .iter()
            .filter(|(_, s)| s.conn.close_reason().is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The session with `peer`, if one is up.
    pub(crate) fn session(&self, peer: &PeerId) -> Option<SessionView> {
        let sessions = lock(&self.core.sessions);
        let s = sessions
            .get(peer)
            .filter(|s| s.conn.close_reason().is_none())?;
        let stats = s.conn.stats();
        Some(SessionView {
            remote: s.conn.remote_address(),
            since: s.since,
            rtt: s.conn.rtt(),
            bytes_in: stats.udp_rx.bytes,
            bytes_out: stats.udp_tx.bytes,
            agent_version: s.info.as_ref().map(|i| i.agent_version.clone()),
        })
    }

    /// The address the QUIC endpoint listens on.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.core.endpoint.local_addr().ok()
    }

    /// The peer's clock minus mine, from its last Hello since start.
    pub(crate) fn clock_skew(&self, peer: &PeerId) -> Option<i64> {
        lock(&self.core.clock_skew).get(peer).copied()
    }

    /// Events from now on, in order, until the peer layer is gone.
    pub(crate) fn subscribe(&self) -> PeerEvents {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.core.subscribers).push(tx);
        PeerEvents(rx)
    }

    /// Starts the dialer that keeps a session with `peer` up.
    pub(crate) fn start_dialer(&self, peer: PeerId) {
        self.start_dialer_after(peer, Duration::ZERO);
    }

    // ----- for the peer layer itself ---------------------------------------

    /// The config in force now (live keys follow a reload).
    pub(super) fn config(&self) -> std::sync::Arc<Config> {
        self.core.config.get()
    }

    pub(super) fn identity(&self) -> &Identity {
        &self.core.identity
    }

    pub(super) fn endpoint(&self) -> &quinn::Endpoint {
        &self.core.endpoint
    }

    pub(super) fn store(&self) -> &Store {
        &self.core.store
    }

    pub(super) fn clock(&self) -> &Clock {
        &self.core.clock
    }

    /// Who I am, as I tell peers.
    pub(super) fn my_info(&self) -> PeerInfo {
        let config = self.core.config.get();
        PeerInfo {
            name: config.name.clone(),
            mail_host: config.mail_host.clone(),
            addrs: config.advertise.clone(),
            agent_version: mxfed_proto::VERSION.into(),
        }
    }

    pub(super) fn live_conn(&self, id: &PeerId) -> Option<quinn::Connection> {
        lock(&self.core.sessions)
            .get(id)
            .filter(|s| s.conn.close_reason().is_none())
            .map(|s| s.conn.clone())
    }

    /// Records a new session; false if an existing one is preferred.
    pub(super) fn register(&self, conn: &quinn::Connection, id: PeerId, dialer: PeerId) -> bool {
        let mut sessions = lock(&self.core.sessions);
        if let Some(old) = sessions.get(&id) {
            let old_live = old.conn.close_reason().is_none();
            // Same dialer: the new one replaces a connection that is probably dead.
            // Different dialers: the connection dialled by the lower ID stays.
            if old_live && old.dialer != dialer && old.dialer < dialer {
                return false;
            }
            old.conn
                .close(close::DUPLICATE.into(), b"another connection is kept");
        }
        sessions.insert(
            id,
            Session {
                conn: conn.clone(),
                dialer,
                since: self.core.clock.now_unix(),
                info: None,
            },
        );
        true
    }

    /// Removes the session of `id` if it is `conn`; true if it was.
    pub(super) fn unregister(&self, conn: &quinn::Connection, id: &PeerId) -> bool {
        let mut sessions = lock(&self.core.sessions);
        let ours = sessions
            .get(id)
            .is_some_and(|s| s.conn.stable_id() == conn.stable_id());
        if ours {
            sessions.remove(id);
        }
        ours
    }

    /// Notes what the peer said of itself on the session `conn`.
    pub(super) fn set_info(&self, conn: &quinn::Connection, id: &PeerId, info: &PeerInfo) {
        if let Some(s) = lock(&self.core.sessions).get_mut(id) {
            if s.conn.stable_id() == conn.stable_id() {
                s.info = Some(info.clone());
            }
        }
    }

    pub(super) fn record_skew(&self, id: PeerId, skew: i64) {
        lock(&self.core.clock_skew).insert(id, skew);
    }

    /// Tells every subscriber; drops the ones that are gone.
    pub(super) fn emit(&self, event: PeerEvent) {
        lock(&self.core.subscribers).retain(|s| s.send(event.clone()).is_ok());
    }

    pub(super) fn start_dialer_after(&self, peer: PeerId, delay: Duration) {
        let _ = self.core.dial.send(DialCommand::Start(peer, delay));
    }

    pub(super) fn wake_dialer(&self, peer: PeerId) {
        let _ = self.core.dial.send(DialCommand::Wake(peer));
    }

    /// Dials a paired peer at its advertised addresses and the one it last
    /// came from.
    pub(super) async fn dial(&self, peer: &PeerRecord) -> Result<quinn::Connection, String> {
        let mut addrs = peer.addrs.clone();
        if let Some(last) = peer.last_address.as_deref().and_then(|a| a.parse().ok()) {
            if !addrs.contains(&last) {
                addrs.push(last);
            }
        }
        if addrs.is_empty() {
            return Err("it advertises no address; waiting for it to dial us".into());
        }
        self.connect(peer.id, &addrs).await
    }

    /// Dials each address in turn, accepting only the server whose key is `id`.
    pub(super) async fn connect(
        &self,
        id: PeerId,
        addrs: &[SocketAddr],
    ) -> Result<quinn::Connection, String> {
        wire::connect(&self.core.endpoint, &self.core.identity, id, addrs).await
    }

    /// Removes a peer here: dialer, store and session; then tells the
    /// services. True if it was in the store.
    pub(super) async fn forget(&self, id: &PeerId) -> bool {
        let _ = self.core.dial.send(DialCommand::Stop(*id));
        let store = &self.core.store;
        let name = match store.peer(id).await {
            Ok(Some(p)) => p.name,
            _ => id.short(),
        };
        let removed = match store.remove_peer(id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                false
            }
        };
        lock(&self.core.sessions).remove(id);
        self.emit(PeerEvent::Removed {
            peer: *id,
            name,
            was_paired: removed,
        });
        removed
    }
}
