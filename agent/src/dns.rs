//! [`Dns`]: the MX and address look-ups behind the ownership check.
//!
//! Uses hickory-resolver with the system's resolver configuration, or the
//! `dns_servers` from the config. A look-up has three outcomes: an answer,
//! a definite "no such records" (NXDOMAIN or no MX), or a failure (timeout,
//! SERVFAIL) that is retried later and never revokes anything.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

/// The answer to an MX query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// The exchange host names, lower-case, without the trailing dot.
    Hosts(Vec<String>),
    /// The domain does not exist or has no MX records.
    NoMx,
    /// The look-up failed; try again later.
    Failed(String),
}

/// A DNS resolver for the checks.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dns")
    }
}

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("dns resolver: {0}")]
pub struct DnsError(String);

fn fqdn(name: &str) -> String {
    format!("{name}.")
}

fn host_of(name: &hickory_resolver::proto::rr::Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

impl Dns {
    /// A resolver using `servers`, or the system configuration if empty.
    pub fn new(servers: &[SocketAddr]) -> Result<Self, DnsError> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| DnsError(format!("/etc/resolv.conf: {e}")))?
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in &mut ns.connections {
                        c.port = s.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = Duration::from_secs(5);
        opts.attempts = 2;
        // Re-checks must see DNS fixes soon; do not cache for long.
        opts.positive_max_ttl = Some(Duration::from_secs(60));
        opts.negative_max_ttl = Some(Duration::from_secs(30));
        let resolver = builder.build().map_err(|e| DnsError(e.to_string()))?;
        Ok(Self { resolver })
    }

    /// The MX hosts of `domain`.
    pub async fn mx(&self, domain: &str) -> MxAnswer {
        match self.resolver.mx_lookup(fqdn(domain)).await {
            Ok(lookup) => {
                let mut hosts: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some(host_of(&mx.exchange)),
                        _ => None,
                    })
                    .collect();
                hosts.sort();
                hosts.dedup();
                if hosts.is_empty() {
                    MxAnswer::NoMx
                } else {
                    MxAnswer::Hosts(hosts)
                }
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => MxAnswer::NoMx,
            Err(e) => MxAnswer::Failed(e.to_string()),
        }
    }

    /// The MX records of `domain` as (preference, host), sorted.
    pub async fn mx_prefs(&self, domain: &str) -> Result<Vec<(u16, String)>, String> {
        match self.resolver.mx_lookup(fqdn(domain)).await {
            Ok(lookup) => {
                let mut v: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, host_of(&mx.exchange))),
                        _ => None,
                    })
                    .collect();
                v.sort();
                Ok(v)
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The TXT records at `name`, each as one string (its character-strings
    /// joined, as RFC 7208 reads them); none if there are no such records.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        match self.resolver.txt_lookup(fqdn(name)).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The addresses of `host`.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        match self.resolver.lookup_ip(fqdn(host)).await {
            Ok(l) => Ok(l.iter().collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }
}
