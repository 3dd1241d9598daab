//! [`Relay`]: keeping Postfix in step with the accepted entries.
//!
//! Every change of the accepted set (a list stored, a re-check, an unpair,
//! startup, an expiry check) calls [`Relay::request_apply`], which sends the
//! trigger to one worker task ([`ApplyWorker::run`]) over a channel. The
//! worker coalesces triggers, renders the maps from the store and hands them
//! to [`crate::postfix::Postfix::apply_texts`], at most one rewrite every
//! [`MIN_APPLY_GAP`]. `mxfed apply` runs [`Relay::apply_now`] directly; one
//! apply runs at a time either way. Each real change or failure is
//! recorded for `mxfed history`; a failure is retried a minute later. Only
//! entries of lists that have been expired for longer than
//! `expired_list_grace` drop out; an unreachable peer never removes
//! anything.
//!
//! Shutdown never cuts an apply (or its rollback) off: the worker stops
//! only between applies, and [`Relay::close`] waits for one in progress and
//! refuses new ones.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use mxfed_proto::control::{ApplyReport, HistoryEntry};
use mxfed_proto::domain::NextHop;
use mxfed_proto::PeerId;

use crate::clock::{rfc3339, Clock};
use crate::config::Shared;
use crate::dns::Dns;
use crate::postfix::render::{
    diff_text, diff_texts, map_text, render_maps, tls_policy, Hop, MapDiff, MapRenderer, RelayMaps,
    Route, FRIENDS, RELAY_DOMAINS, RELAY_RECIPIENTS, TLS_POLICY, TRANSPORT,
};
use crate::postfix::Postfix;
use crate::store::{ApplyRecord, RelayRoute, Store};
use crate::util::lock;

/// Wait after a failed apply before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How often to look for lists that expired beyond the grace period.
const EXPIRY_CHECK: Duration = Duration::from_secs(3600);
/// Least time between two applies that rewrote the maps: a change right
/// after another waits out the rest, and everything asked for meanwhile
/// goes in one apply, so no friend (however fast it flips its list) can
/// make Postfix reload more than once per this.
pub const MIN_APPLY_GAP: Duration = Duration::from_secs(5);

/// The relay service's handle; cheap to clone.
#[derive(Clone)]
pub(crate) struct Relay {
    triggers: mpsc::UnboundedSender<Trigger>,
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` when the config dir has no main.cf: Postfix integration is off.
    postfix: Option<Postfix>,
    store: Store,
    config: Arc<Shared>,
    clock: Clock,
    /// One apply at a time; `true` once closed for shutdown.
    running: tokio::sync::Mutex<bool>,
    /// Applies since start, by result, for the metrics.
    applied: AtomicU64,
    /// See `applied`.
    failed: AtomicU64,
    /// Unix time of the last successful apply (0: none since start).
    last_ok: AtomicI64,
    /// No apply has run since start (see the startup rebuild in `apply_now`).
    first: AtomicBool,
    /// The next apply builds every map whole: the last one failed, so the
    /// compiled maps in force may not say what their sources say.
    whole_next: AtomicBool,
    /// For friends' mail hosts' addresses (the friends map).
    dns: Dns,
    /// Each friend's mail host's addresses as last found, kept when a
    /// look-up fails (a failed look-up never removes a friend's entry).
    friend_addrs: Mutex<HashMap<PeerId, Vec<IpAddr>>>,
}

/// Why an apply is asked for, and for which domains alone (`None`: any).
struct Trigger {
    text: String,
    domains: Option<Vec<String>>,
}

/// Most domains an apply patches the relay maps for; more are rendered
/// whole (a big change costs a whole render anyway).
pub(crate) const MAX_PATCHED_DOMAINS: usize = 1_000;

/// The apply worker: the task that serves [`Relay::request_apply`].
pub(crate) struct ApplyWorker {
    triggers: mpsc::UnboundedReceiver<Trigger>,
    relay: Relay,
}

/// Counters for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ApplyCounts {
    pub applied: u64,
    pub failed: u64,
    /// Unix time of the last successful apply (0: none since start).
    pub last_ok: i64,
}

/// The history's trigger text for the requests one apply served: all of
/// them if few, else the first and last few and how many in between.
fn summarize(triggers: &[String]) -> String {
    const SHOWN: usize = 3;
    if triggers.len() <= 2 * SHOWN {
        return triggers.join("; ");
    }
    format!(
        "{}; and {} more; {}",
        triggers[..SHOWN].join("; "),
        triggers.len() - 2 * SHOWN,
        triggers[triggers.len() - SHOWN..].join("; ")
    )
}

impl Relay {
    /// The addresses of every paired friend's mail host, looked up now;
    /// a friend whose look-up fails keeps the addresses found last time.
    async fn friend_addrs(&self) -> Vec<IpAddr> {
        let inner = &*self.inner;
        let peers = match inner.store.peers().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("friends map: {e}; keeping the addresses found before");
                let mut all: Vec<IpAddr> = lock(&inner.friend_addrs)
                    .values()
                    .flatten()
                    .copied()
                    .collect();
                all.sort();
                all.dedup();
                return all;
            }
        };
        let mut all = Vec::new();
        let mut known = HashMap::new();
        for p in peers {
            let found = match inner.dns.addresses(&p.mail_host).await {
                // A mail host is a host: a few addresses, none a wildcard
                // or a whole network's worth.
                Ok(addrs) => addrs
                    .into_iter()
                    .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
                    .take(MAX_FRIEND_ADDRS)
                    .collect(),
                Err(why) => {
                    tracing::debug!(peer = %p.name, mail_host = %p.mail_host, "friends map: look-up failed ({why}); keeping its addresses");
                    lock(&inner.friend_addrs)
                        .get(&p.id)
                        .cloned()
                        .unwrap_or_default()
                }
            };
            all.extend(found.iter().copied());
            known.insert(p.id, found);
        }
        *lock(&inner.friend_addrs) = known;
        all.sort();
        all.dedup();
        all
    }

    /// The handle, and the worker to run.
    pub(crate) fn new(
        postfix: Option<Postfix>,
        store: Store,
        config: Arc<Shared>,
        clock: Clock,
        dns: Dns,
    ) -> (Self, ApplyWorker) {
        let (tx, rx) = mpsc::unbounded_channel();
        let relay = Self {
            triggers: tx,
            inner: Arc::new(Inner {
                postfix,
                store,
                config,
                clock,
                running: tokio::sync::Mutex::new(false),
                applied: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                last_ok: AtomicI64::new(0),
                first: AtomicBool::new(true),
                whole_next: AtomicBool::new(false),
                dns,
                friend_addrs: Mutex::new(HashMap::new()),
            }),
        };
        let worker = ApplyWorker {
            triggers: rx,
            relay: relay.clone(),
        };
        (relay, worker)
    }

    /// Asks the worker to bring Postfix in line; `trigger` goes into the history.
    pub(crate) fn request_apply(&self, trigger: impl Into<String>) {
        self.send(Trigger {
            text: trigger.into(),
            domains: None,
        });
    }

    /// [`Relay::request_apply`] after the accepted set changed for
    /// `domains` alone (and nothing else the maps are made of). A name
    /// with `@` is an address of a friend's recipient list whose domain
    /// keeps an exact list: only its key in the recipients map changes.
    pub(crate) fn request_apply_of(&self, trigger: impl Into<String>, domains: Vec<String>) {
        self.send(Trigger {
            text: trigger.into(),
            domains: Some(domains),
        });
    }

    fn send(&self, trigger: Trigger) {
        if self.inner.postfix.is_none() {
            return;
        }
        // After shutdown the worker is gone; the next start converges anyway.
        let _ = self.triggers.send(trigger);
    }

    /// Applies since start, for the metrics.
    pub(crate) fn counts(&self) -> ApplyCounts {
        ApplyCounts {
            applied: self.inner.applied.load(Ordering::Relaxed),
            failed: self.inner.failed.load(Ordering::Relaxed),
            last_ok: self.inner.last_ok.load(Ordering::Relaxed),
        }
    }

    /// For shutdown: waits for an apply in progress to finish (with its
    /// rollback, if any), and refuses applies from then on.
    pub(crate) async fn close(&self) {
        let mut running = match self.inner.running.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                tracing::info!("waiting for the Postfix map apply in progress to finish");
                self.inner.running.lock().await
            }
        };
        *running = true;
    }

    /// Renders the maps from the store and, unless `dry_run`, installs them.
    pub(crate) async fn apply_now(&self, trigger: &str, dry_run: bool) -> ApplyReport {
        self.apply(trigger, dry_run, None).await
    }

    /// [`Relay::apply_now`]; with `only`, the accepted set changed for
    /// those domains alone (a list's changes, a re-check), so the relay
    /// maps are patched from their text in force for those domains (see
    /// [`render::patch_text`]) instead of rendered from every route:
    /// a one-domain change to a list of 100,000 reads one route.
    async fn apply(
        &self,
        trigger: &str,
        dry_run: bool,
        only: Option<&BTreeSet<String>>,
    ) -> ApplyReport {
        let mut report = ApplyReport {
            dry_run,
            result: "failed".into(),
            changes: Vec::new(),
            added: 0,
            removed: 0,
            changed: 0,
            total: 0,
            step: None,
            error: None,
        };
        let inner = &*self.inner;
        let Some(postfix) = &inner.postfix else {
            report.step = Some("find postfix".into());
            report.error = Some(format!(
                "Postfix integration is off: no main.cf in {}",
                inner.config.get().postfix_config_dir.display()
            ));
            return report;
        };
        let closed = inner.running.lock().await;
        let started = tokio::time::Instant::now();
        if *closed {
            report.step = Some("start".into());
            report.error = Some("the agent is shutting down".into());
            return report;
        }
        // Only from maps in force that say what their sources say (see the
        // whole rebuild below), and for a few domains.
        let only: Option<Vec<&str>> = only
            .filter(|o| {
                !dry_run
                    && o.len() <= MAX_PATCHED_DOMAINS
                    && !inner.first.load(Ordering::Relaxed)
                    && !inner.whole_next.load(Ordering::Relaxed)
                    && postfix.maps_exist()
            })
            .map(|o| o.iter().map(String::as_str).collect());
        // Of those, single addresses (see [`Relay::request_apply_of`]).
        let (items, only): (Vec<&str>, Option<Vec<&str>>) = match only {
            Some(names) => {
                let (items, domains) = names.into_iter().partition(|n| n.contains('@'));
                (items, Some(domains))
            }
            None => (Vec::new(), None),
        };
        let now = inner.clock.now_unix();
        let grace = inner.config.get().expired_list_grace.0.as_secs() as i64;
        // What the maps are made of besides the routes, read side by side.
        let (recipients, delimiter, tls_params, friends, pins, hops) = tokio::join!(
            async {
                match only.as_deref() {
                    // Only addresses changed: no domain's recipients.
                    Some([]) => Ok(HashMap::new()),
                    only => inner.store.relay_recipients(now, grace, only).await,
                }
            },
            // As the owner publishes it: not expanded.
            postfix.param("recipient_delimiter"),
            postfix.params_expanded(&["smtp_tls_fingerprint_digest", "smtp_tls_security_level"]),
            self.friend_addrs(),
            inner.store.relay_tls(
                now,
                TLS_ROLLOVER.as_secs() as i64,
                now - crate::store::SEEN_LATELY.as_secs() as i64,
            ),
            // Every next hop, not only those of the domains that changed.
            inner.store.relay_hops(now, grace),
        );
        let joined_ms = started.elapsed().as_millis() as u64;
        let mut recipients = match recipients {
            Ok(r) => r,
            Err(e) => {
                return self
                    .failed_early(trigger, report, "read friends' recipients", e)
                    .await;
            }
        };
        let my_delimiter = match delimiter {
            Ok(d) => d,
            Err(e) => {
                return self.failed_early(trigger, report, e.step, e.message).await;
            }
        };
        let my_delimiter = my_delimiter.as_str();
        // (Unreadable: neither pins nor `may`, as if both said no.)
        let tls_params = tls_params.unwrap_or_default();
        let param = |n: &str| tls_params.get(n).map(String::as_str);
        let multiple = postfix.multiple_next_hops();
        let mut to_route = |r: RelayRoute| {
            let mut addrs = r.addrs;
            if !multiple {
                addrs.truncate(1);
            }
            // Exact recipients only where this Postfix splits address
            // extensions as the owner's does; else every recipient, as
            // an exact list would refuse `user+tag` or take too much.
            let recipients = recipients
                .remove(r.entry.domain.as_str())
                .filter(|d| same_delimiters(&d.delimiter, my_delimiter))
                .map(|d| d.items);
            Route {
                peer: r.peer,
                domain: r.entry.domain,
                next_hop: r.entry.next_hop,
                addrs,
                recipients,
            }
        };
        // The relay maps' new text, and what changes in each from the text
        // in force: for a few domains, patched from that text; else
        // rendered route by route as the routes are read.
        let mut changes: HashMap<&str, MapDiff> = HashMap::new();
        let mut texts: Vec<(&'static str, String)> = Vec::new();
        let total = match &only {
            Some(domains) => {
                // Addresses changed alone: each as the maps relay for it now.
                let item_rows = match items.is_empty() {
                    true => Ok(Vec::new()),
                    false => inner.store.relay_recipient_items(now, grace, &items).await,
                };
                let item_rows = match item_rows {
                    Ok(r) => r,
                    Err(e) => {
                        return self
                            .failed_early(trigger, report, "read friends' recipients", e)
                            .await;
                    }
                };
                // An address whose friend splits extensions unlike this
                // Postfix is not listed alone: its domain is relayed for
                // every recipient, so its domain is applied whole.
                let (item_rows, other_delimiter): (Vec<_>, Vec<_>) = item_rows
                    .into_iter()
                    .partition(|(_, delimiter)| same_delimiters(delimiter, my_delimiter));
                let mut other_delimiter: Vec<String> = other_delimiter
                    .into_iter()
                    .filter_map(|(item, _)| Some(item.rsplit_once('@')?.1.to_string()))
                    .collect();
                other_delimiter.sort();
                other_delimiter.dedup();
                let domains: Vec<&str> = domains
                    .iter()
                    .copied()
                    .chain(other_delimiter.iter().map(String::as_str))
                    .collect();
                let domains = &domains;
                let routes = match inner.store.relay_routes_of(now, grace, domains).await {
                    Ok(r) => r,
                    Err(e) => {
                        return self
                            .failed_early(trigger, report, "read accepted entries", e)
                            .await;
                    }
                };
                let routes: Vec<Route> = routes.into_iter().map(&mut to_route).collect();
                let domains: Arc<std::collections::HashSet<String>> =
                    Arc::new(domains.iter().map(|d| d.to_string()).collect());
                let items: Arc<std::collections::HashSet<String>> =
                    Arc::new(items.iter().map(|i| i.to_string()).collect());
                let mut maps = render_maps(&routes).maps;
                for (name, wanted) in &mut maps {
                    if *name == RELAY_RECIPIENTS {
                        wanted.extend(
                            item_rows
                                .iter()
                                .map(|(item, _)| (item.clone(), "OK".to_string())),
                        );
                    }
                }
                // Only addresses changed: the domain maps stay as they are.
                if domains.is_empty() {
                    maps.retain(|(name, _)| *name == RELAY_RECIPIENTS);
                }
                // Each map patched from its text in force, side by side.
                let patches = maps.into_iter().map(|(name, wanted)| {
                    let domains = domains.clone();
                    let items = items.clone();
                    let owned = move |key: &str| {
                        // relay_recipients is keyed by address or `@domain`.
                        let domain = match name {
                            RELAY_RECIPIENTS => key.rsplit_once('@').map_or(key, |(_, d)| d),
                            _ => key,
                        };
                        domains.contains(domain)
                            || (name == RELAY_RECIPIENTS && items.contains(key))
                    };
                    async move { (name, postfix.patched_text(name, owned, wanted).await) }
                });
                let mut total = None;
                for (name, patched) in futures_util::future::join_all(patches).await {
                    let (text, diff, count) = match patched {
                        Ok(p) => p,
                        Err(e) => {
                            return self.failed_early(trigger, report, e.step, e.message).await;
                        }
                    };
                    if name == TRANSPORT {
                        total = Some(count);
                    }
                    texts.push((name, text));
                    changes.insert(name, diff);
                }
                match total {
                    Some(total) => total,
                    None => postfix.map_entry_count(TRANSPORT).await,
                }
            }
            None => {
                let mut maps = MapRenderer::default();
                let read = inner
                    .store
                    .each_route(now, grace, None, |r| maps.push(&to_route(r)))
                    .await;
                if let Err(e) = read {
                    return self
                        .failed_early(trigger, report, "read accepted entries", e)
                        .await;
                }
                let total = maps.count();
                for (name, text) in maps.finish() {
                    changes.insert(name, diff_texts(&postfix.live_text(name).await, &text));
                    texts.push((name, text));
                }
                total
            }
        };
        let patched_ms = started.elapsed().as_millis() as u64;
        let pins = match pins {
            Ok(p) => p,
            Err(e) => {
                return self
                    .failed_early(trigger, report, "read friends' server keys", e)
                    .await;
            }
        };
        // Pins mean SHA-256 only where Postfix compares SHA-256 (its
        // default from compatibility_level 3.6; `postfix setup` sets it).
        let pinnable =
            param("smtp_tls_fingerprint_digest").is_some_and(|d| d.eq_ignore_ascii_case("sha256"));
        if !pinnable && !pins.is_empty() {
            tracing::warn!("smtp_tls_fingerprint_digest is not sha256: friends' server keys are not pinned (run `mxfed postfix setup`)");
        }
        // Friends without a pin get at least `may`, where this Postfix
        // would otherwise send in plain text (its default level is empty);
        // a stricter default of the admin's is left to apply.
        let at_least_may = param("smtp_tls_security_level")
            .is_some_and(|l| l.is_empty() || l.eq_ignore_ascii_case("none"));
        let hops = match hops {
            Ok(hops) => hops,
            Err(e) => {
                return self
                    .failed_early(trigger, report, "read accepted entries", e)
                    .await;
            }
        };
        let hops: Vec<(String, NextHop, Vec<IpAddr>)> = hops
            .into_iter()
            .map(|(peer, hop, mut addrs)| {
                if !multiple {
                    addrs.truncate(1);
                }
                (peer, hop, addrs)
            })
            .collect();
        let hops = hops.iter().map(|(peer, next_hop, addrs)| Hop {
            peer,
            next_hop,
            addrs,
        });
        let tls = tls_policy(hops, &pins, pinnable, at_least_may);
        let small = RelayMaps { maps: Vec::new() }
            .with_friends(&friends)
            .with_tls(tls);
        for (name, wanted) in &small.maps {
            changes.insert(name, diff_text(&postfix.live_text(name).await, wanted));
            texts.push((name, map_text(wanted)));
        }
        let read_ms = started.elapsed().as_millis() as u64;
        let change = changes.get(TRANSPORT).cloned().unwrap_or_default();
        report.changes = change.lines();
        report.added = change.counts.added as u32;
        report.removed = change.counts.removed as u32;
        report.changed = change.counts.changed as u32;
        // Recipients are summed up, not listed: there may be a million.
        let mut others_changed = false;
        for name in [RELAY_DOMAINS, RELAY_RECIPIENTS, FRIENDS, TLS_POLICY] {
            let Some(d) = changes.get(name).filter(|d| !d.is_empty()) else {
                continue;
            };
            others_changed = true;
            report.changes.push(format!(
                "{name}: {} added, {} removed",
                d.counts.added + d.counts.changed,
                d.counts.removed
            ));
        }
        // The domains relayed: the transport map's keys.
        report.total = total as u32;
        if dry_run {
            report.result = "planned".into();
            return report;
        }
        // Patching a copy of a compiled map is only as good as the compiled
        // map. A crash between renaming one compiled map and its source, or
        // between renaming the maps and reloading, leaves a compiled map
        // that may not say what its source says, or that running daemons
        // have not picked up; so does a failed rollback. So the first apply
        // after a start, and the one after a failure, build every map
        // whole from the list held and reload, even if nothing changed.
        let first = inner.first.swap(false, Ordering::Relaxed);
        let whole = first || inner.whole_next.load(Ordering::Relaxed);
        let unchanged = change.is_empty() && !others_changed && postfix.maps_exist();
        if unchanged && !whole {
            report.result = "unchanged".into();
            return report;
        }
        // A change needs Postfix running (it is retried until it is); a
        // rebuild of unchanged maps reloads only a running Postfix.
        let reload = !unchanged || postfix.is_running().await;
        let planned_ms = started.elapsed().as_millis() as u64;
        // Built whole (`whole`): every map, the changes only ordering the
        // renames.
        let outcome = match postfix.apply_texts(&texts, &changes, whole, reload).await {
            Ok(done) => {
                tracing::debug!(built = ?done.built, patched = ?done.patched, domains = ?only, addresses = ?items, built_ms = done.built_ms, installed_ms = done.installed_ms, "maps installed");
                Ok(())
            }
            Err(e) => Err(e),
        };
        inner.whole_next.store(outcome.is_err(), Ordering::Relaxed);
        if whole && unchanged && outcome.is_ok() {
            tracing::info!(
                "maps unchanged; built them whole once {} in case the maps in force do not say what their sources say",
                if first { "at startup" } else { "after a failed apply" }
            );
        }
        tracing::debug!(
            joined_ms,
            patched_ms,
            read_ms,
            planned_ms,
            took_ms = started.elapsed().as_millis() as u64,
            "apply: store read, maps rendered and compared, installed"
        );
        let record = ApplyRecord {
            at: inner.clock.now_unix(),
            trigger: trigger.to_string(),
            ok: outcome.is_ok(),
            step: outcome.as_ref().err().map(|e| e.step.to_string()),
            message: outcome.as_ref().err().map(|e| e.message.clone()),
            added: change.counts.added as u32,
            removed: change.counts.removed as u32,
            changed: change.counts.changed as u32,
            total: report.total,
        };
        if let Err(e) = inner.store.record_apply(&record).await {
            tracing::error!("cannot record apply: {e}");
        }
        match outcome {
            Ok(()) => {
                inner.applied.fetch_add(1, Ordering::Relaxed);
                inner.last_ok.store(record.at, Ordering::Relaxed);
                report.result = "applied".into();
                tracing::info!(
                    step = "apply",
                    trigger,
                    added = record.added,
                    removed = record.removed,
                    changed = record.changed,
                    total = record.total,
                    "postfix relay maps applied"
                );
                for line in report.changes.iter().take(20) {
                    // "+ DOMAIN NEXT_HOP", "- ..." or "~ ...": the domain is
                    // a field of its own (DOMAIN in the journal).
                    match line
                        .strip_prefix(['+', '-', '~'])
                        .and_then(|l| l.split_whitespace().next())
                    {
                        Some(domain) => tracing::info!(step = "apply", domain, "relay map: {line}"),
                        None => tracing::info!(step = "apply", "relay map: {line}"),
                    }
                }
            }
            Err(e) => {
                inner.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    trigger,
                    step = e.step,
                    "postfix relay maps not applied; the previous maps stay in force: {e}"
                );
                report.step = Some(e.step.to_string());
                report.error = Some(e.to_string());
            }
        }
        report
    }

    /// An apply that failed before it installed anything (the store,
    /// Postfix's parameters or the maps in force could not be read) at
    /// `step`: in the report, the history and the failure count as any
    /// other failure, recorded while the apply still holds the lock.
    async fn failed_early(
        &self,
        trigger: &str,
        mut report: ApplyReport,
        step: impl Into<String>,
        error: impl ToString,
    ) -> ApplyReport {
        report.step = Some(step.into());
        report.error = Some(error.to_string());
        if report.dry_run {
            return report;
        }
        let inner = &*self.inner;
        inner.failed.fetch_add(1, Ordering::Relaxed);
        // Whatever this apply was for, the next one (the retry, or any
        // other trigger that comes first) renders every map whole, so a
        // change for a few domains or addresses is not lost with it.
        inner.whole_next.store(true, Ordering::Relaxed);
        let record = ApplyRecord {
            at: inner.clock.now_unix(),
            trigger: trigger.to_string(),
            ok: false,
            step: report.step.clone(),
            message: report.error.clone(),
            added: 0,
            removed: 0,
            changed: 0,
            total: report.total,
        };
        if let Err(e) = inner.store.record_apply(&record).await {
            tracing::error!("cannot record apply: {e}");
        }
        tracing::error!(
            trigger,
            step = report.step.as_deref().unwrap_or(""),
            "postfix relay maps not applied; the previous maps stay in force: {}",
            report.error.as_deref().unwrap_or("")
        );
        report
    }

    /// The last applies.
    pub(crate) async fn history(&self, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        Ok(self
            .inner
            .store
            .applies(limit)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|r| HistoryEntry {
                at: rfc3339(r.at),
                trigger: r.trigger,
                result: if r.ok { "applied" } else { "failed" }.into(),
                step: r.step,
                message: r.message,
                added: r.added,
                removed: r.removed,
                changed: r.changed,
                total: r.total,
            })
            .collect())
    }
}

impl ApplyWorker {
    /// Applies on request, retries failures, checks expiry hourly; stops
    /// between applies once `cancel` fires.
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        if self.relay.inner.postfix.is_none() {
            return;
        }
        let mut retry: Option<String> = None;
        let mut last_change: Option<tokio::time::Instant> = None;
        // The hourly whole apply (lists expired beyond the grace period
        // leave the maps) is a deadline, not a wait that each trigger
        // starts again: applies for a few domains do not drop expired
        // lists, and friends' changes may come more often than hourly.
        let mut whole_by = tokio::time::Instant::now() + EXPIRY_CHECK;
        loop {
            let wake = match retry {
                Some(_) => (tokio::time::Instant::now() + RETRY_AFTER).min(whole_by),
                None => whole_by,
            };
            let mut triggers = Vec::new();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                t = self.triggers.recv() => match t {
                    Some(t) => triggers.push(t),
                    None => return,
                },
                _ = tokio::time::sleep_until(wake) => triggers.push(Trigger {
                    text: match retry.take() {
                        Some(t) => format!("retry after failure ({t})"),
                        None => "expiry check".into(),
                    },
                    domains: None,
                }),
            }
            self.drain(&mut triggers);
            if let Some(at) = last_change {
                if at.elapsed() < MIN_APPLY_GAP {
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep_until(at + MIN_APPLY_GAP) => {}
                    }
                    self.drain(&mut triggers);
                }
            }
            if cancel.is_cancelled() {
                return; // the next start's apply converges
            }
            // For a few domains only if every trigger was.
            let mut only: Option<BTreeSet<String>> = Some(BTreeSet::new());
            for t in &mut triggers {
                match (&mut only, t.domains.take()) {
                    (Some(all), Some(domains)) if all.len() <= MAX_PATCHED_DOMAINS => {
                        all.extend(domains)
                    }
                    _ => only = None,
                }
            }
            if tokio::time::Instant::now() >= whole_by {
                only = None;
            }
            if only.is_none() {
                whole_by = tokio::time::Instant::now() + EXPIRY_CHECK;
            }
            let mut texts: Vec<String> = triggers.into_iter().map(|t| t.text).collect();
            texts.dedup();
            let trigger = summarize(&texts);
            // From here the apply runs to its end, whatever `cancel` says.
            let report = self.relay.apply(&trigger, false, only.as_ref()).await;
            if report.result != "unchanged" {
                last_change = Some(tokio::time::Instant::now());
            }
            retry = (report.result == "failed").then_some(trigger);
        }
    }

    /// Takes every trigger sent so far.
    fn drain(&mut self, into: &mut Vec<Trigger>) {
        while let Ok(t) = self.triggers.try_recv() {
            into.push(t);
        }
    }
}

/// Most addresses of one friend's mail host in the friends map.
const MAX_FRIEND_ADDRS: usize = 16;

/// How long a friend's server keys from before its last change stay
/// pinned too (a certificate rollover).
const TLS_ROLLOVER: Duration = Duration::from_secs(7 * 86_400);

/// Whether two `recipient_delimiter` values split addresses alike (the same
/// set of characters).
pub(crate) fn same_delimiters(a: &str, b: &str) -> bool {
    let set = |s: &str| s.chars().collect::<std::collections::BTreeSet<char>>();
    set(a) == set(b)
}

#[cfg(test)]
mod tests {
    use super::summarize;

    #[test]
    fn many_triggers_are_summarized() {
        let t: Vec<String> = (1..=4).map(|v| format!("list v{v} from a")).collect();
        assert_eq!(
            summarize(&t),
            "list v1 from a; list v2 from a; list v3 from a; list v4 from a"
        );
        let t: Vec<String> = (1..=100).map(|v| format!("v{v}")).collect();
        assert_eq!(summarize(&t), "v1; v2; v3; and 94 more; v98; v99; v100");
    }

    #[test]
    fn delimiters_match_as_sets_of_characters() {
        assert!(super::same_delimiters("+", "+"));
        assert!(super::same_delimiters("+-", "-+"));
        assert!(super::same_delimiters("", ""));
        assert!(!super::same_delimiters("+", ""));
        assert!(!super::same_delimiters("+", "+-"));
    }
}
