//! Whether a friend's mail server answers: a TCP connect to the SMTP port
//! of its next hops, each bounded by [`PROBE_TIMEOUT`].

use std::time::Duration;

use mxfed_proto::domain::{Host, NextHop};

use crate::dns::Dns;

/// How long a probe of a next hop's SMTP port may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Next hops tried per probe.
const MAX_HOPS: usize = 5;
/// Addresses tried per next hop.
const MAX_ADDRS: usize = 4;

/// True if one of `hops` (the first few, each at its first few addresses)
/// accepts a TCP connection on its SMTP port.
pub(crate) async fn any_answers(dns: &Dns, hops: &[&NextHop]) -> bool {
    for hop in hops.iter().take(MAX_HOPS) {
        let port = hop.port().unwrap_or(25);
        let addrs = match hop.host() {
            Host::Ip(ip) => vec![*ip],
            Host::Name(n) => dns.addresses(n.as_str()).await.unwrap_or_default(),
        };
        for ip in addrs.into_iter().take(MAX_ADDRS) {
            let connect = tokio::net::TcpStream::connect((ip, port));
            if matches!(
                tokio::time::timeout(PROBE_TIMEOUT, connect).await,
                Ok(Ok(_))
            ) {
                return true;
            }
        }
    }
    false
}
