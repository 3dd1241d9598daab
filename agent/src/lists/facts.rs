//! What judging needs from DNS and Postfix, gathered for a batch of
//! entries ([`gather`]) before the judging lock is taken: this is the slow
//! part, done by [`DNS_CONCURRENCY`] workers.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

use mxfed_proto::domain::{Domain, Host};
use mxfed_proto::list::Entry;

use crate::config::Config;
use crate::dns::{Dns, MxAnswer};
use crate::postfix::Postfix;
use crate::util::lock;

use super::judge::DnsFacts;
use super::proof;

/// DNS look-ups in flight at once while judging a list.
const DNS_CONCURRENCY: usize = 32;

/// DNS and Postfix facts for a batch of entries.
pub(super) struct Gathered {
    pub facts: HashMap<Domain, DnsFacts>,
    /// Domains this Postfix delivers itself, or why that could not be read.
    pub local: Result<HashSet<Domain>, String>,
    /// The addresses of my mail host, or why they could not be looked up.
    pub my_addrs: Result<Vec<IpAddr>, String>,
}

/// Gathers the facts for `entries`; entries for `my_domains` need no DNS.
pub(super) async fn gather(
    dns: &Dns,
    postfix: Option<&Postfix>,
    config: &Config,
    my_domains: &HashSet<Domain>,
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
    let my_addrs = dns.addresses(&config.mail_host).await;
    // The next hop's addresses and the proof record are looked up even
    // with `verify_mx = "off"`; only the MX checks are skipped.
    let mut facts: HashMap<Domain, DnsFacts> = HashMap::new();
    // A few workers take entries from one queue, so a list of 100,000
    // entries costs as many tasks as a list of 40.
    let todo: Vec<Entry> = entries
        .iter()
        .filter(|e| !my_domains.contains(&e.domain))
        .cloned()
        .collect();
    let workers = DNS_CONCURRENCY.min(todo.len());
    let todo = Arc::new(Mutex::new(todo));
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (todo, dns, host) = (Arc::clone(&todo), dns.clone(), config.mail_host.clone());
        tasks.spawn(async move {
            let mut found = Vec::new();
            loop {
                let next = lock(&todo).pop();
                let Some(e) = next else { break };
                let d = e.domain.clone();
                found.push((d, dns_facts(dns.clone(), e, host.clone()).await));
            }
            found
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok(found) = r {
            facts.extend(found);
        }
    }
    Gathered {
        facts,
        local,
        my_addrs,
    }
}

/// Every look-up an entry's judgement may need: the domain's MX and
/// `_mxfed` records and the next hop's addresses, whatever `verify_mx`
/// says (the proof and the address checks need them).
async fn dns_facts(dns: Dns, entry: Entry, my_mail_host: String) -> DnsFacts {
    let mx = dns.mx(entry.domain.as_str()).await;
    let ip_listed = match (entry.next_hop.host(), &mx) {
        (Host::Ip(ip), MxAnswer::Hosts(hosts)) => {
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
    let txt_ids = dns
        .txt(&proof::txt_name(&entry.domain))
        .await
        .map(|records| proof::named_ids(&records));
    DnsFacts {
        mx,
        ip_listed,
        hop_addrs,
        txt_ids,
    }
}
