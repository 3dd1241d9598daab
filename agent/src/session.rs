//! Peer sessions: accepting, dialling, pairing, and serving requests.
//!
//! [`Shared`] is the running agent's state. For each paired peer a dialer
//! task keeps one authenticated QUIC connection up (with backoff); incoming
//! connections are sorted into paired peers, which get a session, and
//! unknown keys, which may present one invite and nothing else.
//!
//! When both sides dial at once, both keep the connection dialled by the
//! peer with the lower ID and close the other with `DUPLICATE`, so they
//! agree without talking about it.
//!
//! A peer that sends a frame over the limit, a message that does not decode,
//! an unknown message type or a flood of streams has its connection closed
//! with a code from [`close`], logged once; nothing else is affected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use mxfed_proto::codec::CodecError;
use mxfed_proto::control::{
    DomainReason, MyListAtPeer, PeerDomain, PeerStatus, SelfStatus, StatusReport,
};
use mxfed_proto::msg::{close, Hello, PeerInfo, Request, Response, EXPORTER_LABEL, SERVER_NAME};
use mxfed_proto::{name, token, InviteToken, PeerId};

use crate::config::Config;
use crate::frames::{self, FrameError};
use crate::identity::Identity;
use crate::limiter::JoinLimiter;
use crate::lists::ListState;
use crate::net;
use crate::queue::QueueState;
use crate::relay::RelayState;
use crate::store::{InviteState, PeerRecord, Store, StoreError};

/// How long a dial attempt to one address may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the answer to a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
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
/// Largest frame an unpaired client may send: a join request is small.
const MAX_JOIN_FRAME: usize = 4096;
/// How long an old connection has to answer a ping before a new one from
/// the same peer replaces it.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// A session must last this long before the dialer's backoff resets.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// How often `last_seen` is written while a session is up.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Longest invite lifetime.
pub(crate) const MAX_INVITE_TTL: u64 = 30 * 86_400;
/// How long the inviter waits for the joiner's first session before dialling it.
const JOIN_GRACE: Duration = Duration::from_secs(30);

/// Unix seconds now.
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 form of unix seconds (clamped to years 1970 to 9999).
pub(crate) fn rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.clamp(0, 253_402_300_799) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A live connection to a paired peer.
struct Session {
    conn: quinn::Connection,
    /// Who dialled it; decides which of two simultaneous connections stays.
    dialer: PeerId,
    since: i64,
    info: Option<PeerInfo>,
}

struct Dialer {
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

/// The running agent's state.
pub(crate) struct Shared {
    pub config: Config,
    pub identity: Identity,
    pub store: Store,
    pub endpoint: quinn::Endpoint,
    pub lists: ListState,
    pub relay: RelayState,
    pub queue: QueueState,
    sessions: Mutex<HashMap<PeerId, Session>>,
    dialers: Mutex<HashMap<PeerId, Dialer>>,
    limiter: Mutex<JoinLimiter>,
    /// Per peer: its clock minus mine, from its last Hello.
    pub(crate) clock_skew: Mutex<HashMap<PeerId, i64>>,
    handshakes: Arc<Semaphore>,
    unpaired: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

/// A protocol violation by the remote side, closing its connection.
pub(crate) fn violation(err: &FrameError) -> Option<(u32, String)> {
    match err {
        FrameError::Codec(CodecError::TooLarge { .. }) => {
            Some((close::FRAME_TOO_LARGE, err.to_string()))
        }
        FrameError::Codec(CodecError::UnknownType(_)) => {
            Some((close::UNKNOWN_MESSAGE, err.to_string()))
        }
        FrameError::Codec(_) => Some((close::MALFORMED, err.to_string())),
        FrameError::Io(_) => None,
    }
}

fn check_info(info: &PeerInfo) -> Result<(), String> {
    name::check_agent_name(&info.name).map_err(|e| e.to_string())?;
    name::check_hostname("mail host", &info.mail_host).map_err(|e| e.to_string())?;
    if info.addrs.len() > token::MAX_ADDRS {
        return Err(format!("more than {} addresses", token::MAX_ADDRS));
    }
    if info.agent_version.is_empty()
        || info.agent_version.len() > 64
        || !info.agent_version.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err("agent version must be 1 to 64 printable ASCII characters".into());
    }
    Ok(())
}

/// Text from the other side, made safe for a log line or a terminal:
/// printable ASCII only, at most 200 characters.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Sends one request on a new stream and waits for its answer. An answer
/// that breaks the protocol closes the connection.
pub(crate) async fn request(conn: &quinn::Connection, req: &Request) -> Result<Response, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        frames::write(&mut send, req)
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        frames::read::<Response, _>(&mut recv).await.map_err(|e| {
            if let Some((code, why)) = violation(&e) {
                violated(conn, "?", code, &why);
            }
            e.to_string()
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))?
}

/// Closes a connection for a protocol violation, logging it once.
pub(crate) fn violated(conn: &quinn::Connection, who: &str, code: u32, why: &str) {
    // Streams of one connection can fail at the same moment; the check and
    // the close must be one step for the violation to be logged once.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = lock(&ONE_AT_A_TIME);
    if conn.close_reason().is_some() {
        return; // already closed, and logged
    }
    tracing::warn!(
        peer = who,
        remote = %conn.remote_address(),
        code,
        "closing connection: {}: {why}",
        close::name(code.into())
    );
    conn.close(code.into(), why.as_bytes());
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        identity: Identity,
        store: Store,
        endpoint: quinn::Endpoint,
        lists: ListState,
        relay: RelayState,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            identity,
            store,
            endpoint,
            lists,
            relay,
            queue: QueueState::default(),
            sessions: Mutex::new(HashMap::new()),
            dialers: Mutex::new(HashMap::new()),
            limiter: Mutex::new(JoinLimiter::default()),
            clock_skew: Mutex::new(HashMap::new()),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            unpaired: Arc::new(Semaphore::new(MAX_UNPAIRED)),
            shutdown,
        })
    }

    fn my_info(&self) -> PeerInfo {
        PeerInfo {
            name: self.config.name.clone(),
            mail_host: self.config.mail_host.clone(),
            addrs: self.config.advertise.clone(),
            agent_version: mxfed_proto::VERSION.into(),
        }
    }

    pub(crate) fn live_conn(&self, id: &PeerId) -> Option<quinn::Connection> {
        lock(&self.sessions)
            .get(id)
            .filter(|s| s.conn.close_reason().is_none())
            .map(|s| s.conn.clone())
    }

    /// Every live session's connection.
    pub(crate) fn live_sessions(&self) -> Vec<(PeerId, quinn::Connection)> {
        lock(&self.sessions)
            .iter()
            .filter(|(_, s)| s.conn.close_reason().is_none())
            .map(|(id, s)| (*id, s.conn.clone()))
            .collect()
    }

    async fn hello(&self) -> Hello {
        Hello {
            info: self.my_info(),
            list_version: self.my_list_version().await,
            now: now_unix().max(0) as u64,
        }
    }

    async fn shutting_down(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    // ----- dialling -------------------------------------------------------

    /// Starts the task that keeps a connection to `id` up, unless running.
    pub(crate) fn start_dialer(self: &Arc<Self>, id: PeerId) {
        self.start_dialer_after(id, Duration::ZERO);
    }

    /// Like [`Self::start_dialer`], but the first dial waits `delay`.
    fn start_dialer_after(self: &Arc<Self>, id: PeerId, delay: Duration) {
        let mut dialers = lock(&self.dialers);
        if dialers.get(&id).is_some_and(|d| !d.task.is_finished()) {
            return;
        }
        let wake = Arc::new(Notify::new());
        let me = Arc::clone(self);
        let w = Arc::clone(&wake);
        let task = tokio::spawn(async move {
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

    fn stop_dialer(&self, id: &PeerId) {
        if let Some(d) = lock(&self.dialers).remove(id) {
            d.task.abort();
        }
    }

    fn wake_dialer(&self, id: &PeerId) {
        if let Some(d) = lock(&self.dialers).get(id) {
            d.wake.notify_one();
        }
    }

    pub(crate) fn stop_all_dialers(&self) {
        for (_, d) in lock(&self.dialers).drain() {
            d.task.abort();
        }
    }

    async fn dial_loop(self: Arc<Self>, id: PeerId, wake: Arc<Notify>) {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            if self.live_conn(&id).is_some() {
                tokio::select! {
                    _ = wake.notified() => continue,
                    _ = self.shutting_down() => return,
                }
            }
            let peer = match self.store.peer(&id).await {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(peer = %id.short(), "dialer: {e}");
                    tokio::time::sleep(BACKOFF_MAX).await;
                    continue;
                }
            };
            match self.dial(&peer).await {
                Ok(conn) => {
                    failures = 0;
                    let up = Instant::now();
                    let session =
                        tokio::spawn(Arc::clone(&self).run_session(conn, id, self.identity.id));
                    let _ = session.await;
                    // A session that did not last (refused as a duplicate, closed
                    // at once) does not reset the backoff: no redial storm.
                    if up.elapsed() >= STABLE_SESSION {
                        backoff = BACKOFF_MIN;
                    } else {
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = self.shutting_down() => return,
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
                        _ = self.shutting_down() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn dial(&self, peer: &PeerRecord) -> Result<quinn::Connection, String> {
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
    async fn connect(&self, id: PeerId, addrs: &[SocketAddr]) -> Result<quinn::Connection, String> {
        let config = net::client_config(&self.identity, id).map_err(|e| e.to_string())?;
        let mut errors = Vec::new();
        for addr in addrs {
            let attempt = async {
                self.endpoint
                    .connect_with(config.clone(), *addr, SERVER_NAME)
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(DIAL_TIMEOUT, attempt).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!(
                    "{addr}: no answer within {}s",
                    DIAL_TIMEOUT.as_secs()
                )),
            }
        }
        Err(errors.join("; "))
    }

    // ----- accepting ------------------------------------------------------

    /// Accepts connections until shutdown.
    pub(crate) async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => i,
                _ = self.shutting_down() => return,
            };
            let Some(incoming) = incoming else { return };
            let Ok(permit) = Arc::clone(&self.handshakes).try_acquire_owned() else {
                incoming.refuse();
                continue;
            };
            let me = Arc::clone(&self);
            tokio::spawn(me.handle_incoming(incoming, permit));
        }
    }

    async fn handle_incoming(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        handshake: tokio::sync::OwnedSemaphorePermit,
    ) {
        let remote = incoming.remote_address();
        let conn = match tokio::time::timeout(DIAL_TIMEOUT, incoming).await {
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
        let Some(id) = net::remote_id(&conn) else {
            violated(&conn, "?", close::NOT_PAIRED, "no usable certificate");
            return;
        };
        drop(handshake);
        match self.store.peer(&id).await {
            Ok(Some(_)) => self.run_session(conn, id, id).await,
            Ok(None) => {
                // Strangers get a small, separate budget, so they cannot
                // crowd out paired peers or hold much memory.
                let Ok(_slot) = Arc::clone(&self.unpaired).try_acquire_owned() else {
                    conn.close(close::NOT_PAIRED.into(), b"busy; try again later");
                    return;
                };
                self.serve_unpaired(conn, id).await
            }
            Err(e) => {
                tracing::error!(%remote, "{e}");
                conn.close(close::SHUTDOWN.into(), b"internal error");
            }
        }
    }

    /// An unknown key may present one invite, and nothing else.
    async fn serve_unpaired(self: Arc<Self>, conn: quinn::Connection, id: PeerId) {
        let who = format!("unpaired {}", id.short());
        let first = tokio::time::timeout(STREAM_TIMEOUT, conn.accept_bi()).await;
        let Ok(Ok((mut send, mut recv))) = first else {
            violated(&conn, &who, close::NOT_PAIRED, "no invite presented");
            return;
        };
        let req = match tokio::time::timeout(
            STREAM_TIMEOUT,
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
        let _ = tokio::time::timeout(STREAM_TIMEOUT, conn.closed()).await;
        conn.close(close::DONE.into(), b"");
    }

    async fn handle_join(
        self: &Arc<Self>,
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
        let blocked = lock(&self.limiter).blocked(ip, Instant::now());
        let now = now_unix();
        let fail = |message: &str| {
            lock(&self.limiter).failed(ip, Instant::now());
            tracing::warn!(%ip, joiner = %joiner.short(), "join refused: {message}");
            match blocked {
                Some(wait) => refuse(format!(
                    "too many failed join attempts from {ip}; try again in {}s",
                    wait.as_secs().max(1)
                )),
                None => refuse(message.into()),
            }
        };
        let key = match self.store.invite(&token_id, now).await {
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
        if joiner == self.identity.id {
            return fail("an agent cannot pair with itself");
        }
        let record = match self.new_peer_record(joiner, &info, now).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("join: {e}");
                return refuse("internal error on the inviter; see its log".into());
            }
        };
        match self.store.redeem_invite(&token_id, now, &record).await {
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
        self.start_dialer_after(joiner, JOIN_GRACE);
        Response::Welcome(self.my_info())
    }

    /// A record for a new peer, its name made unique among peers if needed.
    async fn new_peer_record(
        &self,
        id: PeerId,
        info: &PeerInfo,
        now: i64,
    ) -> Result<PeerRecord, StoreError> {
        let peers = self.store.peers().await?;
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

    // ----- sessions -------------------------------------------------------

    /// Serves a connection with a paired peer until it closes.
    async fn run_session(self: Arc<Self>, conn: quinn::Connection, id: PeerId, dialer: PeerId) {
        let name = match self.store.peer(&id).await {
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
        if let Some(old) = self.live_conn(&id) {
            let ping = tokio::time::timeout(PING_TIMEOUT, request(&old, &Request::Ping(0)));
            if old.stable_id() != conn.stable_id() && !matches!(ping.await, Ok(Ok(_))) {
                old.close(close::DUPLICATE.into(), b"replaced by a new connection");
            }
        }
        if !self.register(&conn, id, dialer) {
            conn.close(close::DUPLICATE.into(), b"another connection is kept");
            return;
        }
        self.start_dialer(id);
        let remote = conn.remote_address();
        tracing::info!(peer = %name, %remote, "session up");
        let _ = self
            .store
            .touch_peer(&id, now_unix(), &remote.to_string())
            .await;

        let toucher = {
            let me = Arc::clone(&self);
            let addr = remote.to_string();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(TOUCH_EVERY).await;
                    let _ = me.store.touch_peer(&id, now_unix(), &addr).await;
                }
            })
        };
        let hello = {
            let me = Arc::clone(&self);
            let conn = conn.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let hello = me.hello().await;
                match request(&conn, &Request::Hello(hello)).await {
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
                violated(
                    &conn,
                    &name,
                    close::TOO_MANY_STREAMS,
                    &format!(
                        "more than {MAX_STREAMS_PER_WINDOW} streams in {}s",
                        STREAM_WINDOW.as_secs()
                    ),
                );
                break conn.closed().await;
            }
            tokio::spawn(Arc::clone(&self).serve_stream(
                conn.clone(),
                id,
                name.clone(),
                send,
                recv,
            ));
        };
        hello.abort();
        toucher.abort();

        let ours = {
            let mut sessions = lock(&self.sessions);
            let ours = sessions
                .get(&id)
                .is_some_and(|s| s.conn.stable_id() == conn.stable_id());
            if ours {
                sessions.remove(&id);
            }
            ours
        };
        if ours {
            let _ = self
                .store
                .touch_peer(&id, now_unix(), &remote.to_string())
                .await;
            tracing::info!(peer = %name, %remote, "session down: {}", describe_close(&reason));
            // No race with pairing: the inviter only dials after the joiner's
            // first session, and the joiner dials only once it has stored us.
            if closed_by_peer_with(&reason, close::NOT_PAIRED) {
                // The peer (authenticated by its pinned key) no longer knows
                // us: it unpaired us while we were unreachable. Follow suit.
                tracing::warn!(peer = %name, "peer no longer lists us (it unpaired us while we were unreachable); removing it here too");
                self.forget_peer(&id).await;
                return;
            }
            self.wake_dialer(&id);
        }
    }

    /// Records a new session; false if an existing one is preferred.
    fn register(&self, conn: &quinn::Connection, id: PeerId, dialer: PeerId) -> bool {
        let mut sessions = lock(&self.sessions);
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
                since: now_unix(),
                info: None,
            },
        );
        true
    }

    async fn record_hello(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        id: PeerId,
        name: &str,
        hello: Hello,
    ) {
        let Hello {
            info,
            list_version,
            now: their_now,
        } = hello;
        lock(&self.clock_skew).insert(id, their_now as i64 - now_unix());
        if let Err(why) = check_info(&info) {
            violated(
                conn,
                name,
                close::MALFORMED,
                &format!("invalid hello: {why}"),
            );
            return;
        }
        if let Some(s) = lock(&self.sessions).get_mut(&id) {
            if s.conn.stable_id() == conn.stable_id() {
                s.info = Some(info.clone());
            }
        }
        if let Ok(Some(old)) = self.store.peer(&id).await {
            if old.mail_host != info.mail_host || old.addrs != info.addrs {
                tracing::info!(peer = %name, mail_host = %info.mail_host, addrs = ?info.addrs, "peer's details changed");
            }
        }
        if let Err(e) = self
            .store
            .update_peer_info(&id, &info.mail_host, &info.addrs, &info.agent_version)
            .await
        {
            tracing::error!(peer = %name, "{e}");
        }
        // Fetch their list if they have a newer one; tell them what we hold
        // of theirs, which they may have missed while apart.
        self.list_offered(id, list_version);
        self.resend_ack(id).await;
        // Tell the friend what I hold for it, and whether my MTA accepts:
        // that is how it knows I am back and flushes what it holds for me.
        self.report_to(id, name, true, None).await;
    }

    async fn serve_stream(
        self: Arc<Self>,
        conn: quinn::Connection,
        id: PeerId,
        name: String,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let req = match tokio::time::timeout(STREAM_TIMEOUT, frames::read::<Request, _>(&mut recv))
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                if let Some((code, why)) = violation(&e) {
                    violated(&conn, &name, code, &why);
                }
                return;
            }
            Err(_) => return,
        };
        let response = match req {
            Request::Hello(hello) => {
                self.record_hello(&conn, id, &name, hello).await;
                Response::Hello(self.hello().await)
            }
            Request::ListOffer { version } => {
                self.list_offered(id, version);
                Response::Done
            }
            Request::FetchList { have } => {
                if self.serve_fetch(have, &mut send).await.is_ok() {
                    let _ = send.finish();
                }
                return;
            }
            Request::ListAck(ack) => self.receive_ack(id, &name, ack).await,
            Request::QueueReport(report) => self.receive_queue_report(id, &name, report).await,
            Request::Flush => self.handle_flush_request(id, &name).await,
            Request::Ping(n) => Response::Pong(n),
            Request::Unpair => {
                tracing::info!(peer = %name, "peer unpaired us; removing it");
                self.forget_peer(&id).await;
                if frames::write(&mut send, &Response::Done).await.is_ok() {
                    let _ = send.finish();
                }
                // The asker closes once it has the answer; if it does not,
                // close anyway: this key is no longer a peer.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                conn.close(close::UNPAIRED.into(), b"unpaired");
                return;
            }
            Request::Join { .. } => {
                violated(&conn, &name, close::UNEXPECTED, "join on a paired session");
                return;
            }
        };
        if frames::write(&mut send, &response).await.is_ok() {
            let _ = send.finish();
        }
    }

    /// Removes a peer here: store, dialer and session.
    async fn forget_peer(&self, id: &PeerId) -> bool {
        self.stop_dialer(id);
        let name = match self.store.peer(id).await {
            Ok(Some(p)) => p.name,
            _ => id.short(),
        };
        let removed = match self.store.remove_peer(id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                false
            }
        };
        lock(&self.sessions).remove(id);
        self.lists.forget(id);
        self.queue.forget(id);
        if removed {
            self.request_apply(format!("unpaired {name}"));
        }
        removed
    }

    // ----- control requests -----------------------------------------------

    /// Creates an invite; returns the token text and its expiry.
    pub(crate) async fn invite(&self, ttl_secs: u64) -> Result<(String, u64), String> {
        if self.config.advertise.is_empty() {
            return Err("no address to put in the invite: set `advertise` in the config".into());
        }
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| "no randomness available".to_string())?;
        let now = now_unix();
        if ttl_secs > MAX_INVITE_TTL {
            return Err(format!(
                "an invite may be valid for at most {} days",
                MAX_INVITE_TTL / 86_400
            ));
        }
        let expires_at = now.saturating_add(ttl_secs as i64);
        let token = InviteToken {
            inviter: self.identity.id,
            addrs: self.config.advertise.clone(),
            secret,
            expires_at: expires_at as u64,
        };
        self.store
            .add_invite(&token.id(), &token.key(), now, expires_at)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(expires = %rfc3339(expires_at), "invite created");
        Ok((token.to_string(), expires_at as u64))
    }

    /// Joins the inviter named in `text`; returns its name and ID.
    pub(crate) async fn join(self: &Arc<Self>, text: &str) -> Result<(String, PeerId), String> {
        let token: InviteToken = text.parse().map_err(|e: token::TokenError| e.to_string())?;
        let now = now_unix();
        if token.is_expired(now.max(0) as u64) {
            return Err(format!(
                "invite token expired at {}; ask for a new one",
                rfc3339(token.expires_at.min(i64::MAX as u64) as i64)
            ));
        }
        if token.inviter == self.identity.id {
            return Err(
                "this invite token was made by this agent; run `mxfed join` on the friend's side"
                    .into(),
            );
        }
        if let Ok(Some(p)) = self.store.peer(&token.inviter).await {
            return Err(format!("already paired with {} ({})", p.name, p.id));
        }
        let conn = self
            .connect(token.inviter, &token.addrs)
            .await
            .map_err(|e| format!("cannot reach the inviter {}: {e}", token.inviter.short()))?;
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .map_err(|_| "no tls exporter on this connection".to_string())?;
        let proof = token.join_proof(&exporter, &self.identity.id);
        let answer = request(
            &conn,
            &Request::Join {
                token_id: token.id(),
                proof,
                info: self.my_info(),
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
        self.store
            .insert_peer(&record)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(peer = %record.name, id = %record.id, mail_host = %record.mail_host, "paired: joined with an invite");
        self.start_dialer(record.id);
        Ok((record.name, record.id))
    }

    /// Removes a peer by name, telling it first when it is connected.
    pub(crate) async fn unpair(&self, name: &str) -> Result<bool, String> {
        let peers = self.store.peers().await.map_err(|e| e.to_string())?;
        let peer = peers
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("no peer named {name:?} (see `mxfed status`)"))?;
        // Tell it over the live session, or try one dial if there is none.
        let conn = match self.live_conn(&peer.id) {
            Some(c) => Some(c),
            None => self.dial(&peer).await.ok(),
        };
        let notified = match &conn {
            Some(c) => matches!(request(c, &Request::Unpair).await, Ok(Response::Done)),
            None => false,
        };
        self.forget_peer(&peer.id).await;
        if let Some(c) = conn {
            c.close(close::UNPAIRED.into(), b"unpaired");
        }
        tracing::info!(peer = %peer.name, id = %peer.id, notified, "unpaired");
        Ok(notified)
    }

    /// The status report.
    pub(crate) async fn status(&self) -> Result<StatusReport, String> {
        let peers = self.store.peers().await.map_err(|e| e.to_string())?;
        // Store look-ups first: the sessions lock is not held across awaits.
        let mut lists = Vec::with_capacity(peers.len());
        for p in &peers {
            lists.push(self.list_status(&p.id).await.map_err(|e| e.to_string())?);
        }
        let listen = self
            .endpoint
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| self.config.listen.to_string());
        let me = SelfStatus {
            name: self.config.name.clone(),
            id: self.identity.id,
            listen,
            advertise: self
                .config
                .advertise
                .iter()
                .map(|a| a.to_string())
                .collect(),
            mail_host: self.config.mail_host.clone(),
            agent_version: mxfed_proto::VERSION.into(),
        };
        let sessions = lock(&self.sessions);
        let peers = peers
            .into_iter()
            .zip(lists)
            .map(|(p, (list_version, list_expires_at, domains, my_list))| {
                let (held_for_peer, held_by_peer, peer_mta_accepting) =
                    self.held_status(&p.id, &p.name);
                let live = sessions
                    .get(&p.id)
                    .filter(|s| s.conn.close_reason().is_none());
                let stats = live.map(|s| s.conn.stats());
                PeerStatus {
                    connected: live.is_some(),
                    address: live
                        .map(|s| s.conn.remote_address().to_string())
                        .or(p.last_address.clone()),
                    addresses: p.addrs.iter().map(|a| a.to_string()).collect(),
                    mail_host: p.mail_host.clone(),
                    connected_since: live.map(|s| rfc3339(s.since)),
                    last_seen: if live.is_some() {
                        Some(rfc3339(now_unix()))
                    } else {
                        p.last_seen.map(rfc3339)
                    },
                    rtt_ms: live.map(|s| s.conn.rtt().as_secs_f64() * 1000.0),
                    bytes_in: stats.as_ref().map_or(0, |s| s.udp_rx.bytes),
                    bytes_out: stats.as_ref().map_or(0, |s| s.udp_tx.bytes),
                    agent_version: live
                        .and_then(|s| s.info.as_ref().map(|i| i.agent_version.clone()))
                        .or(p.agent_version.clone()),
                    paired_at: rfc3339(p.paired_at),
                    name: p.name,
                    id: p.id,
                    list_version,
                    list_expires_at,
                    domains,
                    my_list,
                    held_for_peer,
                    held_by_peer,
                    peer_mta_accepting,
                }
            })
            .collect();
        Ok(StatusReport { me, peers })
    }

    /// A peer's list as held here, and what it holds of mine.
    async fn list_status(
        &self,
        id: &PeerId,
    ) -> Result<(Option<u64>, Option<String>, Vec<PeerDomain>, MyListAtPeer), StoreError> {
        let meta = self.store.peer_list_meta(id).await?;
        let domains = self
            .store
            .peer_entries(id)
            .await?
            .into_iter()
            .map(|h| PeerDomain {
                domain: h.entry.domain.to_string(),
                next_hop: h.entry.next_hop.to_string(),
                state: h.state,
                reason: h.reason,
            })
            .collect();
        let notes = |v: Vec<mxfed_proto::msg::EntryNote>| {
            v.into_iter()
                .map(|n| DomainReason {
                    domain: n.domain,
                    reason: n.reason,
                })
                .collect()
        };
        let my_list = match self.store.ack(id).await? {
            None => MyListAtPeer::default(),
            Some(a) => MyListAtPeer {
                version_acked: Some(a.ack.version),
                accepted: a.ack.accepted,
                refused_count: a.ack.refused_count,
                pending_count: a.ack.pending_count,
                refused: notes(a.ack.refused),
                pending: notes(a.ack.pending),
                acked_at: Some(rfc3339(a.received_at)),
            },
        };
        Ok((
            meta.as_ref().map(|m| m.version),
            meta.map(|m| rfc3339(m.expires_at as i64)),
            domains,
            my_list,
        ))
    }
}

fn closed_by_peer_with(e: &quinn::ConnectionError, code: u32) -> bool {
    matches!(e, quinn::ConnectionError::ApplicationClosed(c) if c.error_code.into_inner() == u64::from(code))
}

fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => format!(
            "closed by peer: {} ({})",
            close::name(c.error_code.into_inner()),
            printable(&String::from_utf8_lossy(&c.reason))
        ),
        quinn::ConnectionError::LocallyClosed => "closed here".into(),
        quinn::ConnectionError::TimedOut => {
            format!("no traffic for {}s", net::IDLE_TIMEOUT.as_secs())
        }
        other => other.to_string(),
    }
}

/// A number in [0, 1) from the OS random source, for jitter.
fn rand_fraction() -> f64 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX).max(1.0)
}
