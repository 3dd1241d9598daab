//! What judging needs from DNS and Postfix, gathered for a batch of
//! entries ([`gather`]) before the judging lock is taken: this is the slow
//! part, with at most [`DNS_CONCURRENCY`] look-ups in flight.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use mxfed_proto::domain::{Domain, Host};
use mxfed_proto::list::Entry;

use crate::config::{Config, VerifyMx};
use crate::dns::{Dns, MxAnswer};
use crate::postfix::Postfix;

use super::judge::DnsFacts;
use super::proof;

/// DNS look-ups in flight at once while judging a list.
const DNS_CONCURRENCY: usize = 32;

/// DNS and Postfix facts for a batch of entries.
pub(super) struct Gathered {
    pub facts: HashMap<Domain, DnsFacts>,
    /// Domains this Postfix delivers itself, or why that could not be read.
    pub local: Result<HashSet<Domain>, String>,
    /// The addresses of my mail host (empty if unknown).
    pub my_addrs: Vec<IpAddr>,
}

/// Gathers the facts for `entries` of a peer seen at `seen`; entries for
/// `my_domains` need no DNS.
pub(super) async fn gather(
    dns: &Dns,
    postfix: Option<&Postfix>,
    config: &Config,
    my_domains: &HashSet<Domain>,
    seen: &[IpAddr],
    entries: &[Entry],
) -> Gathered {
    let local = match postfix {
        Some(p) => {
            let candidates: Vec<Domain> = entries.iter().map(|e| e.domain.clone()).collect();
            p.local_domains(&candidates)
                .await
                .map_err(|e| e.to_string())
        }
        None => Ok(HashSet::new()),
    };
    let my_addrs = dns.addresses(&config.mail_host).await.unwrap_or_default();
    // The next hop's addresses and the proof record are looked up even
    // with `verify_mx = "off"`; only the MX checks are skipped.
    let mut facts: HashMap<Domain, DnsFacts> = HashMap::new();
    let limit = Arc::new(Semaphore::new(DNS_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for e in entries.iter().filter(|e| !my_domains.contains(&e.domain)) {
        let (dns, e, host, limit, verify, seen) = (
            dns.clone(),
            e.clone(),
            config.mail_host.clone(),
            Arc::clone(&limit),
            config.verify_mx,
            seen.to_vec(),
        );
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let d = e.domain.clone();
            (d, dns_facts(dns, e, host, verify, &seen).await)
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok((d, f)) = r {
            facts.insert(d, f);
        }
    }
    Gathered {
        facts,
        local,
        my_addrs,
    }
}

/// What `txt_ids` says when the record was not looked up because the next
/// hop already proves the claim: undecided, so it never counts against
/// another peer holding the domain.
pub(super) const TXT_NOT_NEEDED: &str = "not looked up: the next hop proves the claim";

async fn dns_facts(
    dns: Dns,
    entry: Entry,
    my_mail_host: String,
    verify: VerifyMx,
    seen: &[IpAddr],
) -> DnsFacts {
    let mx = match verify {
        VerifyMx::Off => None,
        _ => Some(dns.mx(entry.domain.as_str()).await),
    };
    let ip_listed = match (entry.next_hop.host(), &mx) {
        (Host::Ip(ip), Some(MxAnswer::Hosts(hosts))) => {
            let mut found = Ok(false);
            for h in hosts.iter().filter(|h| **h != my_mail_host).take(10) {
                match dns.addresses(h).await {
                    Ok(addrs) if addrs.contains(ip) => {
                        found = Ok(true);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => found = Err(e),
                }
            }
            found
        }
        _ => Ok(false),
    };
    let hop_addrs = match entry.next_hop.host() {
        Host::Ip(ip) => Ok(vec![*ip]),
        Host::Name(name) => dns.addresses(name.as_str()).await,
    };
    // The usual case, the agent on its mail server, needs no TXT look-up.
    let seen_at_hop = match &hop_addrs {
        Ok(addrs) => addrs
            .iter()
            .any(|a| seen.iter().any(|s| s.to_canonical() == a.to_canonical())),
        Err(_) => false,
    };
    let txt_ids = if seen_at_hop {
        Err(TXT_NOT_NEEDED.to_string())
    } else {
        dns.txt(&proof::txt_name(&entry.domain))
            .await
            .map(|records| proof::named_ids(&records))
    };
    DnsFacts {
        mx,
        ip_listed,
        hop_addrs,
        txt_ids,
    }
}
