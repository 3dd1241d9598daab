//! Whether a friend's mail server answers: a TCP connect to the SMTP port
//! of its next hops at the addresses they were checked at (the ones
//! Postfix relays to; a name is never resolved again here), each bounded by
//! [`PROBE_TIMEOUT`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long a probe of a next hop's SMTP port may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Addresses tried per probe.
const MAX_TRIES: usize = 20;

/// True if one of `targets` (the first few) accepts a TCP connection.
pub(crate) async fn any_answers(targets: &[SocketAddr]) -> bool {
    for target in targets.iter().take(MAX_TRIES) {
        let connect = tokio::net::TcpStream::connect(*target);
        if matches!(
            tokio::time::timeout(PROBE_TIMEOUT, connect).await,
            Ok(Ok(_))
        ) {
            return true;
        }
    }
    false
}

/// The SMTP addresses of next hops checked at `addrs` with `port` (25 if
/// none), each once.
pub(crate) fn targets<'a>(
    hops: impl Iterator<Item = (&'a [IpAddr], Option<u16>)>,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for (addrs, port) in hops {
        for ip in addrs {
            let t = SocketAddr::new(*ip, port.unwrap_or(25));
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}
