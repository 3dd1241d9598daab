//! What judging needs from DNS and Postfix, gathered for a batch of
//! entries ([`gather`]) before the judging lock is taken: this is the slow
//! part, done by [`DNS_CONCURRENCY`] workers.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

use mxfed_proto::domain::{Domain, Host};
use mxfed_proto::list::Entry;

use crate::config::{Config, VerifyMx};
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
    /// This server: the addresses of my mail host and Postfix's
    /// `proxy_interfaces` (any port), and where Postfix listens for SMTP;
    /// or why that could not be found.
    pub myself: Result<(Vec<IpAddr>, Vec<SocketAddr>), String>,
}

/// Gathers the facts for `entries`; entries for `my_domains` need no DNS.
pub(super) async fn gather(
    dns: &Dns,
    postfix: Option<&Postfix>,
    config: &Config,
    my_domains: &HashSet<Domain>,
    entries: &[Entry],
) -> Gathered {
    // Postfix's answers and DNS's, side by side: each is a few processes or
    // look-ups, and a one-entry change waits for the slowest, not the sum.
    let local = async {
        match postfix {
            Some(p) => {
                let candidates: Vec<Domain> = entries.iter().map(|e| e.domain.clone()).collect();
                p.local_domains(&candidates)
                    .await
                    .map_err(|e| e.to_string())
            }
            None => Ok(HashSet::new()),
        }
    };
    let myself = async {
        match dns.addresses(&config.mail_host).await {
            Err(why) => Err(format!("my own mail host's addresses: {why}")),
            Ok(mut addrs) => match postfix {
                None => Ok((addrs, Vec::new())),
                Some(p) => match p.smtp_listeners().await {
                    Ok(l) => {
                        addrs.extend(l.any_port);
                        Ok((addrs, l.listen))
                    }
                    Err(e) => Err(format!("where this Postfix listens: {e}")),
                },
            },
        }
    };
    let (local, myself, facts) =
        tokio::join!(local, myself, look_up(dns, config, my_domains, entries));
    Gathered {
        facts,
        local,
        myself,
    }
}

/// The DNS facts for each entry not one of mine.
async fn look_up(
    dns: &Dns,
    config: &Config,
    my_domains: &HashSet<Domain>,
    entries: &[Entry],
) -> HashMap<Domain, DnsFacts> {
    let todo: Vec<Entry> = entries
        .iter()
        .filter(|e| !my_domains.contains(&e.domain))
        .cloned()
        .collect();
    // Each next hop's addresses once, however many entries name it.
    let mut names: Vec<String> = todo
        .iter()
        .filter_map(|e| match e.next_hop.host() {
            Host::Name(n) => Some(n.to_string()),
            Host::Ip(_) => None,
        })
        .collect();
    names.sort();
    names.dedup();
    let resolver = dns.clone();
    let hops: HashMap<String, Result<Vec<IpAddr>, String>> = in_workers(names, move |name| {
        let dns = resolver.clone();
        async move {
            let found = dns.addresses(&name).await;
            (name, found)
        }
    })
    .await
    .into_iter()
    .collect();
    let hops = Arc::new(hops);
    let (resolver, host, verify) = (dns.clone(), config.mail_host.clone(), config.verify_mx);
    in_workers(todo, move |e| {
        let (dns, host, hops) = (resolver.clone(), host.clone(), Arc::clone(&hops));
        async move {
            let d = e.domain.clone();
            (d, dns_facts(dns, e, host, verify, &hops).await)
        }
    })
    .await
    .into_iter()
    .collect()
}

/// Runs `work` on every item with [`DNS_CONCURRENCY`] workers taking items
/// from one queue (a list of 100,000 entries costs as many tasks as a list
/// of 40). A worker that panics loses its results: those items are then
/// judged as not looked up, which decides nothing.
async fn in_workers<T, R, F, Fut>(items: Vec<T>, work: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let workers = DNS_CONCURRENCY.min(items.len());
    let todo = Arc::new(Mutex::new(items));
    let work = Arc::new(work);
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (todo, work) = (Arc::clone(&todo), Arc::clone(&work));
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = lock(&todo).pop();
                let Some(item) = next else { break };
                done.push(work(item).await);
            }
            done
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(done) = r {
            all.extend(done);
        }
    }
    all
}

/// Every look-up an entry's judgement may need: the domain's `_mxfed`
/// records and MX, and the next hop's addresses (from `hops`, looked up
/// once per name). The MX is skipped with `verify_mx = "off"`, where
/// nothing reads it (`NoMx` stands in).
async fn dns_facts(
    dns: Dns,
    entry: Entry,
    my_mail_host: String,
    verify: VerifyMx,
    hops: &HashMap<String, Result<Vec<IpAddr>, String>>,
) -> DnsFacts {
    let mx = match verify {
        VerifyMx::Off => MxAnswer::NoMx,
        _ => dns.mx(entry.domain.as_str()).await,
    };
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
        Host::Name(name) => hops
            .get(name.as_str())
            .cloned()
            .unwrap_or_else(|| Err("not looked up".into())),
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
