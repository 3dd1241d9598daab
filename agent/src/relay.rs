//! Keeping Postfix in step with the accepted entries.
//!
//! Every change of the accepted set (a list stored, a re-check, an unpair,
//! startup, an expiry check) calls [`Shared::request_apply`]. One worker
//! ([`Shared::apply_loop`]) coalesces the requests, renders the maps from
//! the store and hands them to [`crate::postfix::Postfix::apply`], at most
//! one rewrite every [`MIN_APPLY_GAP`]. Each real
//! change or failure is recorded for `mxfed history`; a failure is retried a
//! minute later. Only entries of lists that have been expired for longer
//! than `expired_list_grace` drop out; an unreachable peer never removes
//! anything.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use mxfed_proto::control::{ApplyReport, HistoryEntry};

use crate::postfix::render::{diff, render_maps, Route};
use crate::postfix::Postfix;
use crate::session::{lock, now_unix, rfc3339, Shared};
use crate::store::ApplyRecord;

/// Wait after a failed apply before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How often to look for lists that expired beyond the grace period.
const EXPIRY_CHECK: Duration = Duration::from_secs(3600);
/// Least time between two applies that rewrote the maps: a change right
/// after another waits out the rest, and everything asked for meanwhile
/// goes in one apply, so no friend (however fast it flips its list) can
/// make Postfix reload more than once per this.
pub const MIN_APPLY_GAP: Duration = Duration::from_secs(5);

/// Apply bookkeeping inside [`Shared`].
pub(crate) struct RelayState {
    /// `None` when the config dir has no main.cf: Postfix integration is off.
    pub postfix: Option<Postfix>,
    wake: Notify,
    triggers: Mutex<Vec<String>>,
    /// One apply at a time.
    running: tokio::sync::Mutex<()>,
    /// Applies since start, by result, for the metrics.
    pub applied: AtomicU64,
    /// See `applied`.
    pub failed: AtomicU64,
    /// Unix time of the last successful apply (0: none since start).
    pub last_ok: AtomicI64,
    /// No apply has run since start (see the startup reload in `apply_now`).
    first: AtomicBool,
}

impl RelayState {
    pub(crate) fn new(postfix: Option<Postfix>) -> Self {
        Self {
            postfix,
            wake: Notify::new(),
            triggers: Mutex::new(Vec::new()),
            running: tokio::sync::Mutex::new(()),
            applied: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_ok: AtomicI64::new(0),
            first: AtomicBool::new(true),
        }
    }
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

impl Shared {
    /// Asks the worker to bring Postfix in line; `trigger` goes into the history.
    pub(crate) fn request_apply(&self, trigger: impl Into<String>) {
        if self.relay.postfix.is_none() {
            return;
        }
        lock(&self.relay.triggers).push(trigger.into());
        self.relay.wake.notify_one();
    }

    /// The worker: applies on request, retries failures, checks expiry hourly.
    pub(crate) async fn apply_loop(self: Arc<Self>) {
        if self.relay.postfix.is_none() {
            return;
        }
        let mut retry: Option<String> = None;
        let mut last_change: Option<tokio::time::Instant> = None;
        loop {
            let wait = if retry.is_some() {
                RETRY_AFTER
            } else {
                EXPIRY_CHECK
            };
            let timed_out = tokio::select! {
                _ = self.relay.wake.notified() => false,
                _ = tokio::time::sleep(wait) => true,
            };
            let mut triggers: Vec<String> = std::mem::take(&mut *lock(&self.relay.triggers));
            if timed_out {
                triggers.push(match retry.take() {
                    Some(t) => format!("retry after failure ({t})"),
                    None => "expiry check".into(),
                });
            }
            if triggers.is_empty() {
                continue;
            }
            if let Some(at) = last_change {
                if at.elapsed() < MIN_APPLY_GAP {
                    tokio::time::sleep_until(at + MIN_APPLY_GAP).await;
                    triggers.append(&mut lock(&self.relay.triggers));
                }
            }
            triggers.dedup();
            let trigger = summarize(&triggers);
            let report = self.apply_now(&trigger, false).await;
            if report.result != "unchanged" {
                last_change = Some(tokio::time::Instant::now());
            }
            retry = (report.result == "failed").then_some(trigger);
        }
    }

    /// Renders the maps from the store and, unless `dry_run`, installs them.
    pub(crate) async fn apply_now(&self, trigger: &str, dry_run: bool) -> ApplyReport {
        let mut report = ApplyReport {
            dry_run,
            result: "failed".into(),
            changes: Vec::new(),
            total: 0,
            step: None,
            error: None,
        };
        let Some(postfix) = &self.relay.postfix else {
            report.step = Some("find postfix".into());
            report.error = Some(format!(
                "Postfix integration is off: no main.cf in {}",
                self.config.postfix_config_dir.display()
            ));
            return report;
        };
        let _one = self.relay.running.lock().await;
        let routes = match self
            .store
            .relay_routes(
                now_unix(),
                self.config.expired_list_grace.0.as_secs() as i64,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                report.step = Some("read accepted entries".into());
                report.error = Some(e.to_string());
                return report;
            }
        };
        let routes: Vec<Route> = routes
            .into_iter()
            .map(|(_, e)| Route {
                domain: e.domain,
                next_hop: e.next_hop,
            })
            .collect();
        let maps = render_maps(&routes);
        let desired = &maps
            .maps
            .iter()
            .find(|(n, _)| *n == crate::postfix::render::TRANSPORT)
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        let change = diff(&postfix.live_transport().await, desired);
        report.changes = change.lines();
        report.total = desired.len() as u32;
        if dry_run {
            report.result = "planned".into();
            return report;
        }
        let first = self.relay.first.swap(false, Ordering::Relaxed);
        if change.is_empty() && postfix.maps_exist() {
            // A crash between renaming the maps and reloading leaves new maps
            // that running daemons may not have picked up: reload at startup.
            if first && postfix.is_running().await {
                match postfix.reload().await {
                    Ok(()) => tracing::info!(
                        "maps unchanged; reloaded Postfix once at startup in case an earlier run stopped between installing maps and reloading"
                    ),
                    Err(e) => tracing::warn!("startup reload: {e}"),
                }
            }
            report.result = "unchanged".into();
            return report;
        }
        let outcome = postfix.apply(&maps, true).await;
        let record = ApplyRecord {
            at: now_unix(),
            trigger: trigger.to_string(),
            ok: outcome.is_ok(),
            step: outcome.as_ref().err().map(|e| e.step.to_string()),
            message: outcome.as_ref().err().map(|e| e.message.clone()),
            added: change.added.len() as u32,
            removed: change.removed.len() as u32,
            changed: change.changed.len() as u32,
            total: report.total,
        };
        if let Err(e) = self.store.record_apply(&record).await {
            tracing::error!("cannot record apply: {e}");
        }
        match outcome {
            Ok(()) => {
                self.relay.applied.fetch_add(1, Ordering::Relaxed);
                self.relay.last_ok.store(record.at, Ordering::Relaxed);
                report.result = "applied".into();
                tracing::info!(
                    trigger,
                    added = record.added,
                    removed = record.removed,
                    changed = record.changed,
                    total = record.total,
                    "postfix relay maps applied"
                );
                for line in report.changes.iter().take(20) {
                    tracing::info!("relay map: {line}");
                }
            }
            Err(e) => {
                self.relay.failed.fetch_add(1, Ordering::Relaxed);
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

    /// The last applies.
    pub(crate) async fn history(&self, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        Ok(self
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
}
