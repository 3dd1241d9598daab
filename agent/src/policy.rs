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

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use mxfed_proto::PeerId;

use crate::clock::Clock;
use crate::config::{Config, PolicyAddr};
use crate::postfix::Postfix;
use crate::queue::Queue;
use crate::store::Store;
use crate::util::lock;

/// Address and prefix length of each network item.
type Networks = Vec<(IpAddr, u8)>;

/// How often `mynetworks` is read again.
const MYNETWORKS_EVERY: Duration = Duration::from_secs(60);

/// The address and CIDR items of a `mynetworks` value (`1.2.3.0/24`,
/// `[2001:db8::]/32`, a bare address); names and tables are left out.
fn parse_networks(value: &str) -> Networks {
    value
        .split([',', ' ', '\t', '\n'])
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            let (addr, len) = match t.split_once('/') {
                Some((a, l)) => (a, l.parse::<u8>().ok()?),
                None => (t, 128),
            };
            let ip: IpAddr = addr
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            Some((ip.to_canonical(), len.min(max)))
        })
        .collect()
}

/// Whether `ip` is in one of `nets`.
fn in_networks(nets: &[(IpAddr, u8)], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|(net, len)| match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            u32::from(*n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
            u128::from(*n) & mask == u128::from(a) & mask
        }
        _ => false,
    })
}

/// How often the next hops of `when-down` friends that say they accept
/// mail are probed, and the friends and their domains read again. Each
/// probe is a short SMTP session in the friend's log (`connect`, then
/// `disconnect ... quit=1`).
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// A probe older than this says nothing.
const PROBE_FRESH: Duration = Duration::from_secs(15);
/// Most Postfix connections served at once (each smtpd process keeps one).
const MAX_CONNECTIONS: usize = 256;
/// Longest request (all its lines), and most attributes in one.
const MAX_REQUEST: usize = 64 << 10;
const MAX_ATTRIBUTES: usize = 256;
/// How long a connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(300);

/// Where the policy service listens.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    /// The socket, and its path (removed at shutdown).
    Unix(tokio::net::UnixListener, std::path::PathBuf),
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
            Listener::Unix(l, _) => Box::new(l.accept().await?.0),
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
    config: Arc<Config>,
    store: Store,
    queue: Queue,
    clock: Clock,
    /// Domain → its `when-down` friend.
    gates: Mutex<HashMap<String, Gate>>,
    /// Whether each next hop (its addresses) of a `when-down` friend
    /// answered, and when.
    probes: Mutex<HashMap<Vec<SocketAddr>, (bool, tokio::time::Instant)>>,
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
        config: Arc<Config>,
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
                mynetworks: Mutex::new((Vec::new(), None)),
            }),
        }
    }

    /// Binds the policy address. A Unix socket replaces a stale one, is
    /// made `0660` and given to the `postfix` group, so Postfix (and root)
    /// can talk to it and nobody else.
    pub(crate) async fn bind(addr: &PolicyAddr) -> std::io::Result<Listener> {
        match addr {
            PolicyAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await?)),
            PolicyAddr::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(path)?;
                }
                let listener = tokio::net::UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
                if let Some(gid) = postfix_gid() {
                    std::os::unix::fs::chown(path, None, Some(gid))?;
                }
                Ok(Listener::Unix(listener, path.clone()))
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
            if let Ok(value) = pf.param_expanded("mynetworks").await {
                *lock(&inner.mynetworks) =
                    (parse_networks(&value), Some(tokio::time::Instant::now()));
            }
        }
        let now = inner.clock.now_unix();
        let grace = inner.config.expired_list_grace.0.as_secs() as i64;
        let routes = match inner.store.when_down_routes(now, grace).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("policy service: {e}; keeping what it knew");
                return;
            }
        };
        let mut gates = HashMap::new();
        let mut targets: std::collections::HashSet<Vec<SocketAddr>> = Default::default();
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
                targets.insert(t.clone());
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
        let mut probes = tokio::task::JoinSet::new();
        for t in targets {
            probes.spawn(async move {
                let up = crate::queue::any_answers(&t).await;
                (t, up)
            });
        }
        let mut results = HashMap::new();
        while let Some(Ok((t, up))) = probes.join_next().await {
            results.insert(t, (up, tokio::time::Instant::now()));
        }
        *lock(&inner.probes) = results;
    }

    /// What to answer for a recipient.
    fn decide(&self, recipient: &str) -> Verdict {
        let inner = &*self.inner;
        let domain = recipient
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let Some(gate) = lock(&inner.gates).get(&domain).cloned() else {
            return Verdict::Dunno;
        };
        let probed = lock(&inner.probes)
            .get(&gate.targets)
            .is_some_and(|(up, at)| *up && at.elapsed() < PROBE_FRESH);
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
        if let Listener::Unix(_, path) = &listener {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn serve_connection(&self, stream: Stream) -> Result<(), String> {
        let (read, mut write) = tokio::io::split(stream);
        let mut lines = BufReader::new(read).take(u64::MAX);
        loop {
            let mut attrs: HashMap<String, String> = HashMap::new();
            let mut size = 0usize;
            loop {
                let mut raw = Vec::new();
                lines.set_limit((MAX_REQUEST - size + 1) as u64);
                let n = match tokio::time::timeout(IDLE, lines.read_until(b'\n', &mut raw)).await {
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Ok(()), // idle: Postfix reconnects
                };
                if n == 0 {
                    return Ok(()); // closed
                }
                size += n;
                // Attribute values are whatever clients sent (HELO names):
                // not necessarily UTF-8.
                let line = String::from_utf8_lossy(&raw);
                if size > MAX_REQUEST || !line.ends_with('\n') {
                    return Err(format!("request over {MAX_REQUEST} bytes"));
                }
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    break;
                }
                if attrs.len() >= MAX_ATTRIBUTES {
                    return Err(format!("request with over {MAX_ATTRIBUTES} attributes"));
                }
                if let Some((k, v)) = line.split_once('=') {
                    attrs.insert(k.to_string(), v.to_string());
                }
            }
            // My own users (SASL, mynetworks) send through me whatever a
            // friend's mode says.
            let mine = attrs.get("sasl_username").is_some_and(|u| !u.is_empty())
                || attrs
                    .get("client_address")
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .is_some_and(|ip| in_networks(&lock(&self.inner.mynetworks).0, ip));
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
            write
                .write_all(verdict.action().as_bytes())
                .await
                .map_err(|e| e.to_string())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{in_networks, parse_networks, Verdict};

    #[test]
    fn my_networks_are_matched_by_address_and_prefix() {
        let nets = parse_networks("127.0.0.0/8, [::1]/128 192.0.2.0/24,198.51.100.7 hash:/etc/x");
        let is = |a: &str| in_networks(&nets, a.parse().unwrap());
        assert!(is("127.1.2.3") && is("192.0.2.200") && is("198.51.100.7") && is("::1"));
        assert!(!is("192.0.3.1") && !is("198.51.100.8") && !is("2001:db8::1"));
        assert!(in_networks(
            &parse_networks("0.0.0.0/0"),
            "203.0.113.1".parse().unwrap()
        ));
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
