//! [`Policy`]: the Postfix policy service (SMTPD_POLICY_README) that carries
//! out friends' `when-down` backup mode here.
//!
//! It listens on `policy_listen`: by default a Unix socket in Postfix's
//! `private/` (`0660`, group `postfix`), or a loopback TCP address.
//! `postfix setup` wires `check_policy_service { unix:private/mxfed-policy,
//! default_action=DUNNO, try_limit=1, timeout=10s }` into
//! `smtpd_recipient_restrictions` once. My own users (SASL, `mynetworks`)
//! always get `DUNNO`. For a
//! recipient of a domain I back up for a friend in `when-down` mode, while
//! that friend's MTA is known to accept mail (its last report over a live
//! session says so, and my probe of that domain's next hop, every
//! [`PROBE_EVERY`], gets an SMTP greeting), the answer is `450 4.7.1 primary MX ... is up; deliver
//! there`; for anything else it is `DUNNO`. Within a probe interval of the
//! friend's server going away, mail is accepted as usual; and if this agent
//! is not running at all, Postfix's `default_action=DUNNO` accepts it too:
//! mxfed never makes Postfix refuse mail just because mxfed is absent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use mxfed_proto::PeerId;

use crate::clock::Clock;
use crate::config::{PolicyAddr, Shared};
use crate::postfix::Postfix;
use crate::queue::Queue;
use crate::store::Store;
use crate::util::lock;

/// One `mynetworks` pattern: a network, or (`not`) an exclusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Net {
    not: bool,
    ip: IpAddr,
    len: u8,
}

/// `mynetworks` as far as it can be told here: its patterns in order, or
/// why it cannot be told (then every client may be mine, and the policy
/// service defers nobody).
pub(crate) type Networks = Result<Vec<Net>, String>;

/// How often `mynetworks` is read again.
const MYNETWORKS_EVERY: Duration = Duration::from_secs(60);

/// The patterns of a `mynetworks` value as Postfix reads them: addresses
/// and CIDRs (`1.2.3.0/24`, `[2001:db8::]/32`, `[::ffff:127.0.0.0]/104`,
/// which is `127.0.0.0/8`), `!` exclusions (the first match decides),
/// `/file/name` pattern files and `cidr:` tables (their keys), read with
/// `read`. Anything else (a host name, another table type) cannot be told
/// here: `Err` naming it.
pub(crate) fn parse_networks(
    value: &str,
    read: &dyn Fn(&str) -> std::io::Result<String>,
    depth: u8,
) -> Networks {
    let mut out = Vec::new();
    let tokens = value
        .split([',', ' ', '\t', '\n', '\r'])
        .filter(|t| !t.is_empty());
    for token in tokens {
        let (not, t) = match token.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, token),
        };
        let file = |path: &str, cidr: bool| -> Networks {
            if depth > 2 {
                return Err(format!("{path}: nested too deep"));
            }
            let text = read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            let keys: Vec<&str> = text
                .lines()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .flat_map(|l| {
                    if cidr {
                        l.split_whitespace().take(1).collect::<Vec<_>>()
                    } else {
                        l.split([',', ' ', '\t'])
                            .filter(|t| !t.is_empty())
                            .collect()
                    }
                })
                .collect();
            parse_networks(&keys.join(" "), read, depth + 1)
        };
        let nets = if t.starts_with('/') {
            file(t, false)?
        } else if let Some(path) = t.strip_prefix("cidr:") {
            file(path, true)?
        } else {
            vec![network(t).ok_or_else(|| {
                format!("mynetworks item {token:?} cannot be evaluated by mxfed (only addresses, CIDRs, /files and cidr: tables)")
            })?]
        };
        // `!` applies to every pattern the item stands for.
        out.extend(nets.into_iter().map(|n| Net {
            not: n.not != not,
            ..n
        }));
    }
    Ok(out)
}

/// An address or CIDR pattern; an IPv4-mapped IPv6 network is its IPv4
/// one (`[::ffff:127.0.0.0]/104` is `127.0.0.0/8`).
fn network(t: &str) -> Option<Net> {
    let (addr, len) = match t.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
        None => (t, None),
    };
    let ip: IpAddr = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let (ip, max) = match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && len.is_none_or(|l| l >= 96) => {
            let v4 = v6.to_ipv4_mapped()?;
            return Some(Net {
                not: false,
                ip: IpAddr::V4(v4),
                len: len.map_or(32, |l| l - 96).min(32),
            });
        }
        IpAddr::V4(_) => (ip, 32),
        IpAddr::V6(_) => (ip, 128),
    };
    let len = len.unwrap_or(max);
    (len <= max).then_some(Net {
        not: false,
        ip,
        len,
    })
}

/// Whether `ip` is in `nets` (the first matching pattern decides; an
/// exclusion says no).
pub(crate) fn in_networks(nets: &[Net], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    let hit = |n: &Net| match (n.ip, ip) {
        (IpAddr::V4(net), IpAddr::V4(a)) => {
            let shift = 32u32.saturating_sub(u32::from(n.len));
            let mask = u32::MAX.checked_shl(shift).unwrap_or(0);
            u32::from(net) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(a)) => {
            let shift = 128u32.saturating_sub(u32::from(n.len));
            let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
            u128::from(net) & mask == u128::from(a) & mask
        }
        _ => false,
    };
    nets.iter().find(|n| hit(n)).is_some_and(|n| !n.not)
}

/// Reads one policy request (`name=value` lines up to an empty line)
/// within the bounds: [`MAX_REQUEST`] bytes, [`MAX_ATTRIBUTES`] attributes,
/// [`IDLE`] between requests. `None`: the client closed or went idle.
pub(crate) async fn read_request<R: AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Take<R>,
) -> Result<Option<HashMap<String, String>>, String> {
    let mut request = Request::default();
    let mut raw = Vec::new();
    loop {
        raw.clear();
        lines.set_limit(request.room());
        let n = match tokio::time::timeout(IDLE, lines.read_until(b'\n', &mut raw)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Ok(None),
        };
        if n == 0 {
            return Ok(None);
        }
        if let Some(attrs) = request.line(&raw)? {
            return Ok(Some(attrs));
        }
    }
}

/// One policy request being decoded, line by line (no I/O: what
/// [`read_request`] reads goes here, and so do the fuzzer's bytes).
#[derive(Default)]
pub(crate) struct Request {
    attrs: HashMap<String, String>,
    size: usize,
}

impl Request {
    /// Most bytes the next line may have: one over what is left, so that
    /// a line too long is read far enough to be refused.
    pub(crate) fn room(&self) -> u64 {
        (MAX_REQUEST - self.size + 1) as u64
    }

    /// One line as read (with its `\n`, unless the reader stopped at
    /// [`Self::room`]). `Some`: the empty line that ends the request.
    pub(crate) fn line(&mut self, raw: &[u8]) -> Result<Option<HashMap<String, String>>, String> {
        self.size += raw.len();
        // Attribute values are whatever clients sent (HELO names): not
        // necessarily UTF-8.
        let line = String::from_utf8_lossy(raw);
        if self.size > MAX_REQUEST || !line.ends_with('\n') {
            return Err(format!("request over {MAX_REQUEST} bytes"));
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            return Ok(Some(std::mem::take(&mut self.attrs)));
        }
        if self.attrs.len() >= MAX_ATTRIBUTES {
            return Err(format!("request with over {MAX_ATTRIBUTES} attributes"));
        }
        if let Some((k, v)) = line.split_once('=') {
            self.attrs.insert(k.to_string(), v.to_string());
        }
        Ok(None)
    }
}

/// How often the next hops of `when-down` friends that say they accept
/// mail are probed, and the friends and their domains read again. Each
/// probe is a short SMTP session in the friend's log (`connect`, then
/// `disconnect ... quit=1`).
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Most next-hop addresses probed per round, and at once.
const MAX_PROBED: usize = 256;
const PROBES_AT_ONCE: usize = 16;
/// A probe older than this says nothing.
const PROBE_FRESH: Duration = Duration::from_secs(15);
/// Most Postfix connections served at once (each smtpd process keeps one).
const MAX_CONNECTIONS: usize = 256;
/// Longest request (all its lines), and most attributes in one.
const MAX_REQUEST: usize = 64 << 10;
const MAX_ATTRIBUTES: usize = 256;
/// How long a connection may sit idle between requests: longer than
/// Postfix's own `max_idle` (300 s), so Postfix closes first and never
/// sends a request into a connection being closed (with `try_limit=1`
/// that request would get the default action).
const IDLE: Duration = Duration::from_secs(330);
/// Longest wait for an answer to be taken.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the policy service listens.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    /// The socket, its path, and its device and inode there (removed at
    /// shutdown if it is still this socket).
    Unix(tokio::net::UnixListener, std::path::PathBuf, (u64, u64)),
}

/// One accepted connection.
type Stream = Box<dyn AsyncReadWrite>;

trait AsyncReadWrite: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

impl Listener {
    async fn accept(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                // One small answer per request, each awaited: send it now.
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
            Listener::Unix(l, _, _) => Box::new(l.accept().await?.0),
        })
    }
}

/// The `postfix` group's ID, from /etc/group.
fn postfix_gid() -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == "postfix").then(|| f.nth(1)?.parse().ok())?
    })
}

/// One domain a `when-down` friend owns.
#[derive(Debug, Clone)]
struct Gate {
    peer: PeerId,
    /// Its next hop, as the friend wrote it, for the 4xx text.
    hop: String,
    /// Where its mail goes (the checked addresses, with the port): the
    /// primary is up when one of these answers.
    targets: Vec<SocketAddr>,
}

/// The policy service (a cheap handle).
#[derive(Clone)]
pub(crate) struct Policy {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Shared>,
    store: Store,
    queue: Queue,
    clock: Clock,
    /// Domain → its `when-down` friend.
    gates: Mutex<HashMap<String, Gate>>,
    /// Whether each next hop (its addresses) of a `when-down` friend
    /// answered, and when.
    probes: Mutex<HashMap<SocketAddr, (bool, tokio::time::Instant)>>,
    /// To read `mynetworks`; `None` without Postfix.
    postfix: Option<Postfix>,
    /// `mynetworks` (its address and CIDR items), and when it was read:
    /// my own clients are never deferred.
    mynetworks: Mutex<(Networks, Option<tokio::time::Instant>)>,
}

/// What to answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Dunno,
    /// The friend's own server takes this mail now: `450`, naming it.
    PrimaryUp(String),
}

impl Verdict {
    fn action(&self) -> String {
        match self {
            Verdict::Dunno => "action=DUNNO\n\n".into(),
            Verdict::PrimaryUp(hop) => {
                format!("action=450 4.7.1 primary MX {hop} is up; deliver there\n\n")
            }
        }
    }
}

impl Policy {
    pub(crate) fn new(
        config: Arc<Shared>,
        store: Store,
        queue: Queue,
        clock: Clock,
        postfix: Option<Postfix>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                queue,
                clock,
                gates: Mutex::new(HashMap::new()),
                probes: Mutex::new(HashMap::new()),
                postfix,
                mynetworks: Mutex::new((Err("mynetworks not read yet".into()), None)),
            }),
        }
    }

    /// Binds the policy address. A Unix socket replaces a stale one (not
    /// one another process still serves), is made `0660` and given to the
    /// `postfix` group, so Postfix (and root) can talk to it and nobody
    /// else. Postfix's user owns `private/` and could swap the new socket
    /// for a symlink: the mode and group are set through a handle opened
    /// without following links (`O_PATH|O_NOFOLLOW`) on what is checked to
    /// be a socket, never through the path.
    pub(crate) async fn bind(addr: &PolicyAddr) -> std::io::Result<Listener> {
        match addr {
            PolicyAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await?)),
            PolicyAddr::Unix(path) => {
                use rustix::fs::{AtFlags, FileType, Mode, OFlags};
                use std::os::fd::AsRawFd;
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            format!("another process serves {}", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                let listener = tokio::net::UnixListener::bind(path)?;
                let fd = rustix::fs::open(
                    path,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let st = rustix::fs::fstat(&fd)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
                    return Err(std::io::Error::other(format!(
                        "{} was replaced by something that is not my socket",
                        path.display()
                    )));
                }
                // chmod cannot take an O_PATH handle; its /proc link can.
                rustix::fs::chmod(
                    format!("/proc/self/fd/{}", fd.as_raw_fd()),
                    Mode::from_raw_mode(0o660),
                )?;
                if let Some(gid) = postfix_gid() {
                    rustix::fs::chownat(
                        &fd,
                        "",
                        None,
                        Some(rustix::fs::Gid::from_raw(gid)),
                        AtFlags::EMPTY_PATH,
                    )?;
                }
                let id = (st.st_dev, st.st_ino);
                Ok(Listener::Unix(listener, path.clone(), id))
            }
        }
    }

    /// Keeps the friends, their domains and their probes current until
    /// `cancel`.
    pub(crate) async fn run_probes(self, cancel: CancellationToken) {
        loop {
            self.refresh().await;
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    async fn refresh(&self) {
        let inner = &*self.inner;
        let stale = lock(&inner.mynetworks)
            .1
            .is_none_or(|at| at.elapsed() >= MYNETWORKS_EVERY);
        if let (true, Some(pf)) = (stale, &inner.postfix) {
            // Afresh: its default follows this machine's addresses.
            if let Ok(value) = pf.param_expanded_now("mynetworks").await {
                let nets = tokio::task::spawn_blocking(move || {
                    parse_networks(&value, &|p| std::fs::read_to_string(p), 0)
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                let mut held = lock(&inner.mynetworks);
                if let (Err(why), false) = (&nets, held.0.as_ref().err() == nets.as_ref().err()) {
                    tracing::warn!("policy service: {why}; every client may be one of my own, so friends' when-down mode is not carried out here");
                }
                *held = (nets, Some(tokio::time::Instant::now()));
            }
        }
        let now = inner.clock.now_unix();
        let grace = inner.config.get().expired_list_grace.0.as_secs() as i64;
        let routes = match inner.store.when_down_routes(now, grace).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("policy service: {e}; keeping what it knew");
                return;
            }
        };
        let mut gates = HashMap::new();
        let mut targets: std::collections::BTreeSet<SocketAddr> = Default::default();
        for (peer, r) in &routes {
            // A friend that says it is down is accepted for without a probe.
            let asks = inner.queue.friend_says_accepting(peer);
            // Each domain is judged by its own next hop: a friend with two
            // servers is up for a domain only while that domain's answers.
            let port = r.entry.next_hop.port().unwrap_or(25);
            let mut t: Vec<SocketAddr> = r
                .addrs
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect();
            t.sort();
            t.dedup();
            if asks {
                targets.extend(t.iter().copied());
            }
            gates.insert(
                r.entry.domain.to_string(),
                Gate {
                    peer: *peer,
                    hop: r.entry.next_hop.to_string(),
                    targets: t,
                },
            );
        }
        *lock(&inner.gates) = gates;
        // Each address once, a few at a time, each result kept as it comes
        // (one slow address delays no other's). Beyond MAX_PROBED nothing
        // is probed: those domains are accepted for (fail-open).
        if targets.len() > MAX_PROBED {
            tracing::warn!(
                "policy service: {} next-hop addresses of when-down friends; probing the first {MAX_PROBED} (the rest are accepted for as if their friend were down)",
                targets.len()
            );
        }
        lock(&inner.probes).retain(|t, _| targets.contains(t));
        let mut probes = tokio::task::JoinSet::new();
        for t in targets.into_iter().take(MAX_PROBED) {
            while probes.len() >= PROBES_AT_ONCE {
                if let Some(Ok((t, up))) = probes.join_next().await {
                    lock(&inner.probes).insert(t, (up, tokio::time::Instant::now()));
                }
            }
            probes.spawn(async move { (t, crate::queue::any_answers(&[t]).await) });
        }
        while let Some(done) = probes.join_next().await {
            if let Ok((t, up)) = done {
                lock(&inner.probes).insert(t, (up, tokio::time::Instant::now()));
            }
        }
    }

    /// What to answer for a recipient.
    fn decide(&self, recipient: &str) -> Verdict {
        let inner = &*self.inner;
        let Some(domain) = crate::mailq::domain_of(recipient) else {
            return Verdict::Dunno;
        };
        let Some(gate) = lock(&inner.gates).get(&domain).cloned() else {
            return Verdict::Dunno;
        };
        let probed = {
            let probes = lock(&inner.probes);
            gate.targets.iter().any(|t| {
                probes
                    .get(t)
                    .is_some_and(|(up, at)| *up && at.elapsed() < PROBE_FRESH)
            })
        };
        if probed && inner.queue.friend_says_accepting(&gate.peer) {
            Verdict::PrimaryUp(gate.hop)
        } else {
            Verdict::Dunno
        }
    }

    /// Serves Postfix's policy connections until `cancel`.
    pub(crate) async fn serve(self, listener: Listener, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                _ = cancel.cancelled() => break,
            };
            let stream = match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("policy service: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                // Postfix then takes the default action (DUNNO).
                tracing::warn!(
                    "policy service: {MAX_CONNECTIONS} connections already; refused one"
                );
                continue;
            };
            let me = self.clone();
            conns.spawn(async move {
                if let Err(e) = me.serve_connection(stream).await {
                    tracing::debug!("policy service: {e}");
                }
                drop(slot);
            });
        }
        conns.shutdown().await;
        if let Listener::Unix(_, path, id) = &listener {
            use std::os::unix::fs::MetadataExt;
            if std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    async fn serve_connection(&self, stream: Stream) -> Result<(), String> {
        let (read, mut write) = tokio::io::split(stream);
        let mut lines = BufReader::new(read).take(u64::MAX);
        loop {
            let Some(attrs) = read_request(&mut lines).await? else {
                return Ok(()); // closed, or idle: Postfix reconnects
            };
            // My own users (SASL, mynetworks) send through me whatever a
            // friend's mode says.
            let mine = attrs.get("sasl_username").is_some_and(|u| !u.is_empty())
                || attrs
                    .get("client_address")
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .is_none_or(|ip| match &lock(&self.inner.mynetworks).0 {
                        Ok(nets) => in_networks(nets, ip),
                        Err(_) => true, // cannot tell: defer nobody
                    });
            let verdict = match (
                attrs.get("request").map(String::as_str),
                attrs.get("protocol_state").map(String::as_str),
                attrs.get("recipient"),
            ) {
                (Some("smtpd_access_policy"), Some("RCPT"), Some(rcpt)) if !mine => {
                    self.decide(rcpt)
                }
                _ => Verdict::Dunno,
            };
            // A client that never reads cannot hold its slot for long.
            tokio::time::timeout(WRITE_TIMEOUT, write.write_all(verdict.action().as_bytes()))
                .await
                .map_err(|_| "the client does not read its answer".to_string())?
                .map_err(|e| e.to_string())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{in_networks, parse_networks, Verdict};

    /// The socket is made 0660; a live one is never taken over, a stale
    /// one is; at shutdown only our own socket is removed.
    #[tokio::test]
    async fn the_socket_is_ours_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mxfed-policy");
        let addr = super::PolicyAddr::Unix(path.clone());
        let first = super::Policy::bind(&addr).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        let e = super::Policy::bind(&addr).await.err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        drop(first); // leaves a stale socket behind
        let second = super::Policy::bind(&addr).await.unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(second);
    }

    #[test]
    fn the_recipient_domain_is_keyed_as_the_maps_are() {
        use crate::mailq::domain_of as d;
        assert_eq!(d("Bob@Friend.Example.").as_deref(), Some("friend.example"));
        assert_eq!(
            d("\"a@b\"@friend.example").as_deref(),
            Some("friend.example")
        );
        assert_eq!(
            d("bob@Bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(d("postmaster"), None);
    }

    fn no_files(p: &str) -> std::io::Result<String> {
        Err(std::io::Error::other(format!("no file {p}")))
    }

    #[test]
    fn my_networks_are_matched_by_address_and_prefix() {
        let nets = parse_networks(
            "127.0.0.0/8, [::1]/128 192.0.2.0/24,198.51.100.7",
            &no_files,
            0,
        )
        .unwrap();
        let is = |a: &str| in_networks(&nets, a.parse().unwrap());
        assert!(is("127.1.2.3") && is("192.0.2.200") && is("198.51.100.7") && is("::1"));
        assert!(!is("192.0.3.1") && !is("198.51.100.8") && !is("2001:db8::1"));
        assert!(in_networks(
            &parse_networks("0.0.0.0/0", &no_files, 0).unwrap(),
            "203.0.113.1".parse().unwrap()
        ));
    }

    /// Debian's own line: the IPv4-mapped network is 127.0.0.0/8, not
    /// every IPv4 address (and no overflow).
    #[test]
    fn debians_mynetworks_is_loopback_only() {
        let nets =
            parse_networks("127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128", &no_files, 0).unwrap();
        let is = |a: &str| in_networks(&nets, a.parse().unwrap());
        assert!(is("127.0.0.1") && is("::ffff:127.0.0.5") && is("::1"));
        assert!(!is("203.0.113.1") && !is("::ffff:203.0.113.1") && !is("2001:db8::1"));
    }

    /// Exclusions (first match decides), pattern files and cidr tables are
    /// read; a host name or another table cannot be told (then nobody is
    /// deferred).
    #[test]
    fn files_tables_and_exclusions_are_read_and_the_rest_refused() {
        let read = |p: &str| match p {
            "/etc/postfix/networks" => Ok("# mine\n10.0.0.0/8, 192.0.2.0/24\n".to_string()),
            "/etc/postfix/net.cidr" => {
                Ok("198.51.100.0/24 OK\n# x\n2001:db8::/32 OK\n".to_string())
            }
            other => no_files(other),
        };
        let nets = parse_networks(
            "!10.9.0.0/16 /etc/postfix/networks cidr:/etc/postfix/net.cidr",
            &read,
            0,
        )
        .unwrap();
        let is = |a: &str| in_networks(&nets, a.parse().unwrap());
        assert!(is("10.1.2.3") && is("192.0.2.9") && is("198.51.100.1") && is("2001:db8::5"));
        assert!(!is("10.9.1.1"), "excluded first");
        assert!(!is("203.0.113.1"));
        for bad in [
            "mail.example.com",
            "hash:/etc/postfix/x",
            "/missing",
            "1.2.3.0/33",
        ] {
            let e = parse_networks(&format!("127.0.0.0/8 {bad}"), &read, 0).unwrap_err();
            assert!(
                e.contains(bad.trim_start_matches('/')) || e.contains("cannot"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn answers_are_policy_protocol_actions() {
        assert_eq!(Verdict::Dunno.action(), "action=DUNNO\n\n");
        assert_eq!(
            Verdict::PrimaryUp("mail.friend.example".into()).action(),
            "action=450 4.7.1 primary MX mail.friend.example is up; deliver there\n\n"
        );
    }
}
