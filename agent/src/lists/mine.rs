//! [`Mine`]: my own domain list. `mxfed domains add/remove` changes it
//! ([`Mine::change`]); each change is signed with a new version and stored.
//! It is re-signed daily so it never expires while this agent runs
//! ([`Mine::refresh_if_due`]), and signed past a version a friend holds
//! after a restore from backup ([`Mine::resign_as`]). The lists service
//! offers each new version to peers; this module never talks to them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use mxfed_proto::control::{DomainsChanged, MyDomain, MyDomains};
use mxfed_proto::domain::{Domain, NextHop};
use mxfed_proto::list::{Change, DomainList, Entry};

use crate::clock::{rfc3339, Clock};
use crate::identity::Identity;
use crate::store::{Store, StoreError};
use crate::util::lock;

use super::changelog::{ChangeLog, LOG_CHANGES};

/// How long a signed list of mine is valid.
pub const LIST_LIFETIME: Duration = Duration::from_secs(14 * 86_400);
/// Re-sign my list once it is this old, well before it expires.
pub const REFRESH_AFTER: Duration = Duration::from_secs(86_400);

/// My current signed list.
#[derive(Debug)]
pub(crate) struct Published {
    pub list: DomainList,
    pub signature: Vec<u8>,
    /// The stored signature does not match the stored entries: re-sign now.
    pub stale: bool,
}

/// What a change did.
#[derive(Debug)]
pub(super) struct Changed {
    pub summary: DomainsChanged,
    /// The new version, if a new list was signed.
    pub signed: Option<u64>,
    /// Domains added or re-targeted.
    pub added: Vec<Domain>,
}

/// My list, and the only way to change it.
pub(super) struct Mine {
    identity: Arc<Identity>,
    store: Store,
    clock: Clock,
    /// The current list; its lock also serialises publishing.
    current: tokio::sync::Mutex<Option<Arc<Published>>>,
    /// Its version (0: none), for readers that must not wait for the lock.
    version: watch::Sender<u64>,
    /// What changed in this run (changed with `current` held).
    log: Mutex<ChangeLog<Domain, Option<NextHop>>>,
}

/// Whether my list should be re-signed now: once a day, so that it is
/// always far from its 14-day expiry while this agent runs.
fn needs_refresh(list: &DomainList, now: u64) -> bool {
    now.saturating_sub(list.issued_at) >= REFRESH_AFTER.as_secs() || list.expires_at <= now
}

fn view(p: Option<&Published>) -> MyDomains {
    match p {
        None => MyDomains {
            version: 0,
            issued_at: None,
            expires_at: None,
            domains: Vec::new(),
        },
        Some(p) => MyDomains {
            version: p.list.version,
            issued_at: Some(rfc3339(p.list.issued_at as i64)),
            expires_at: Some(rfc3339(p.list.expires_at as i64)),
            domains: p
                .list
                .entries()
                .iter()
                .map(|e| MyDomain {
                    domain: e.domain.to_string(),
                    next_hop: e.next_hop.to_string(),
                    recipients: None,
                    recipients_reason: None,
                })
                .collect(),
        },
    }
}

impl Mine {
    /// Loads my current list from the store, checking it against my own key.
    pub(super) async fn load(
        identity: Arc<Identity>,
        store: Store,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        let id = identity.id;
        let published = match store.my_list_meta().await? {
            None => None,
            Some(meta) => {
                let list = DomainList::new(
                    id,
                    meta.version,
                    meta.issued_at,
                    meta.expires_at,
                    store.my_entries().await?,
                );
                let stale = !id.verify(&list.signing_bytes(), &meta.signature);
                if stale {
                    tracing::warn!(
                        "my stored domain list does not match its signature; re-signing it"
                    );
                }
                Some(Arc::new(Published {
                    list,
                    signature: meta.signature,
                    stale,
                }))
            }
        };
        let version = published.as_ref().map_or(0, |p| p.list.version);
        Ok(Self {
            identity,
            store,
            clock,
            current: tokio::sync::Mutex::new(published),
            version: watch::Sender::new(version),
            log: Mutex::new(ChangeLog::default()),
        })
    }

    /// The version now (0: none).
    pub(super) fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Follows the version.
    pub(super) fn version_watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The current list.
    pub(super) async fn current(&self) -> Option<Arc<Published>> {
        self.current.lock().await.clone()
    }

    /// The current list, and the changes to it since version `have` if they
    /// are known (this run made every version since) and fewer than its
    /// entries.
    pub(super) async fn current_and_changes(
        &self,
        have: u64,
    ) -> Option<(Arc<Published>, Option<Vec<Change>>)> {
        let current = self.current.lock().await;
        let p = current.clone()?;
        let changes = lock(&self.log)
            .since(have, p.list.version)
            .map(|c| {
                c.into_iter()
                    .map(|(domain, next_hop)| Change { domain, next_hop })
                    .collect::<Vec<_>>()
            })
            .filter(|c| c.len() < p.list.entries().len().max(1));
        Some((p, changes))
    }

    /// `mxfed domains list`.
    pub(super) async fn view(&self) -> MyDomains {
        // Not under the lock: a view of 100,000 domains takes a while, and
        // serving a friend's fetch waits for the lock.
        let current = self.current.lock().await.clone();
        view(current.as_deref())
    }

    /// My domains, sorted.
    pub(super) async fn domain_names(&self) -> Vec<Domain> {
        let current = self.current.lock().await.clone();
        current
            .map(|p| p.list.entries().iter().map(|e| e.domain.clone()).collect())
            .unwrap_or_default()
    }

    /// My domains.
    pub(super) async fn domains(&self) -> HashSet<Domain> {
        let current = self.current.lock().await.clone();
        current
            .map(|p| p.list.entries().iter().map(|e| e.domain.clone()).collect())
            .unwrap_or_default()
    }

    /// Adds (or re-targets) and removes domains; signs a new version if
    /// anything changed. Removing a domain not in the list is an error, and
    /// changes nothing.
    pub(super) async fn change(
        &self,
        add: Vec<Entry>,
        remove: Vec<Domain>,
    ) -> Result<Changed, String> {
        let mut mine = self.current.lock().await;
        // The list is sorted: look up and merge, no map of 100,000.
        let held: &[Entry] = mine.as_ref().map_or(&[], |p| p.list.entries());
        let held_hop = |d: &Domain| {
            held.binary_search_by(|e| e.domain.cmp(d))
                .ok()
                .map(|i| &held[i].next_hop)
        };
        let unknown: Vec<String> = remove
            .iter()
            .filter(|d| held_hop(d).is_none())
            .map(|d| d.to_string())
            .collect();
        if !unknown.is_empty() {
            return Err(format!("not in my list: {}", unknown.join(", ")));
        }
        // Each domain named: its next hop now, or `None` if removed; the
        // last word on a domain stands. Sorted, not a map of 100,000.
        let mut changes: Vec<(Domain, Option<NextHop>)> = add
            .into_iter()
            .map(|e| (e.domain, Some(e.next_hop)))
            .chain(remove.into_iter().map(|d| (d, None)))
            .collect();
        changes.reverse();
        changes.sort_by(|a, b| a.0.cmp(&b.0)); // stable: the last word first
        changes.dedup_by(|later, first| later.0 == first.0);
        changes.retain(|(d, hop)| held_hop(d) != hop.as_ref());
        let mut upserted = Vec::new();
        let mut removed = Vec::new();
        for (domain, hop) in &changes {
            match hop {
                Some(next_hop) => upserted.push(Entry {
                    domain: domain.clone(),
                    next_hop: next_hop.clone(),
                }),
                None => removed.push(domain.clone()),
            }
        }
        if upserted.is_empty() && removed.is_empty() {
            let (version, total) = mine
                .as_ref()
                .map_or((0, 0), |p| (p.list.version, p.list.entries().len() as u32));
            return Ok(Changed {
                summary: DomainsChanged {
                    version,
                    added: 0,
                    removed: 0,
                    total,
                },
                signed: None,
                added: Vec::new(),
            });
        }
        let mut entries = Vec::with_capacity(held.len() + upserted.len());
        let mut changes = changes.into_iter().peekable();
        let new = |(domain, hop): (Domain, Option<NextHop>)| {
            hop.map(|next_hop| Entry { domain, next_hop })
        };
        for e in held {
            while let Some(c) = changes.next_if(|(d, _)| *d < e.domain) {
                entries.extend(new(c));
            }
            match changes.next_if(|(d, _)| *d == e.domain) {
                Some(c) => entries.extend(new(c)),
                None => entries.push(e.clone()),
            }
        }
        entries.extend(changes.filter_map(new));
        let version = mine.as_ref().map_or(0, |p| p.list.version) + 1;
        let published = self
            .sign_and_store(version, entries, &upserted, &removed)
            .await?;
        tracing::info!(
            version,
            added = upserted.len(),
            removed = removed.len(),
            total = published.list.entries().len(),
            "my domain list changed; signed and offered to peers"
        );
        let summary = DomainsChanged {
            version,
            added: upserted.len() as u32,
            removed: removed.len() as u32,
            total: published.list.entries().len() as u32,
        };
        // More changes than the log keeps: a friend gets the whole list
        // anyway, so they are not copied only to be dropped (100,000 of
        // them were 11 MB of a `domains add --from-file`'s peak).
        let changes = (upserted.len() + removed.len() <= LOG_CHANGES).then(|| {
            let mut changes: Vec<Change> = upserted
                .iter()
                .map(|e| Change {
                    domain: e.domain.clone(),
                    next_hop: Some(e.next_hop.clone()),
                })
                .chain(removed.iter().map(|d| Change {
                    domain: d.clone(),
                    next_hop: None,
                }))
                .collect();
            changes.sort();
            changes
        });
        self.install(&mut mine, published, changes);
        Ok(Changed {
            summary,
            signed: Some(version),
            added: upserted.into_iter().map(|e| e.domain).collect(),
        })
    }

    /// Re-signs my list (same entries, new version) once it is a day old,
    /// or if its stored signature did not match; the new version, if signed.
    pub(super) async fn refresh_if_due(&self) -> Result<Option<u64>, String> {
        let mut mine = self.current.lock().await;
        let Some(p) = mine.clone() else {
            return Ok(None);
        };
        if !p.stale && !needs_refresh(&p.list, self.clock.now_u64()) {
            return Ok(None);
        }
        let version = p.list.version + 1;
        let new = self
            .sign_and_store(version, p.list.entries().to_vec(), &[], &[])
            .await?;
        self.install(&mut mine, new, Some(Vec::new()));
        Ok(Some(version))
    }

    /// Re-signs my list (same entries) with at least `version`; the version
    /// now, and whether a new list was signed.
    pub(super) async fn resign_as(&self, version: u64) -> Result<(u64, bool), String> {
        let mut mine = self.current.lock().await;
        let current = mine.as_ref().map_or(0, |p| p.list.version);
        if current >= version {
            return Ok((current, false));
        }
        let entries = mine
            .as_ref()
            .map(|p| p.list.entries().to_vec())
            .unwrap_or_default();
        let published = self.sign_and_store(version, entries, &[], &[]).await?;
        self.install(&mut mine, published, Some(Vec::new()));
        Ok((version, true))
    }

    /// Makes `published` current; `changes` are what changed since the
    /// list in `slot` (sorted by domain), `None` if too many to log.
    fn install(
        &self,
        slot: &mut Option<Arc<Published>>,
        published: Arc<Published>,
        changes: Option<Vec<Change>>,
    ) {
        let from = slot.as_ref().map_or(0, |p| p.list.version);
        match changes {
            Some(changes) => {
                let changes = changes
                    .into_iter()
                    .map(|c| (c.domain, c.next_hop))
                    .collect();
                lock(&self.log).record(from, published.list.version, changes);
            }
            // No version before this one can be brought up to it by changes.
            None => lock(&self.log).forget(),
        }
        self.version.send_replace(published.list.version);
        *slot = Some(published);
    }

    async fn sign_and_store(
        &self,
        version: u64,
        entries: Vec<Entry>,
        upserted: &[Entry],
        removed: &[Domain],
    ) -> Result<Arc<Published>, String> {
        let now = self.clock.now_u64();
        let list = DomainList::new(
            self.identity.id,
            version,
            now,
            now + LIST_LIFETIME.as_secs(),
            entries,
        );
        let signature = self.identity.sign(&list.signing_bytes());
        self.store
            .publish_my_list(&list, &signature, upserted, removed)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(Published {
            list,
            signature,
            stale: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxfed_proto::PeerId;

    #[test]
    fn my_list_is_refreshed_daily_long_before_it_expires() {
        let id = PeerId::from_public_key([1; 32]);
        let day = REFRESH_AFTER.as_secs();
        let list = DomainList::new(id, 1, 1_000, 1_000 + LIST_LIFETIME.as_secs(), vec![]);
        assert!(!needs_refresh(&list, 1_000));
        assert!(!needs_refresh(&list, 1_000 + day - 1));
        assert!(needs_refresh(&list, 1_000 + day));
        assert!(
            LIST_LIFETIME.as_secs() >= 7 * day,
            "a week of margin at least"
        );
    }

    /// The daily re-signing, driven by a manual clock instead of waiting a
    /// day: a real identity and a real SQLite file.
    #[tokio::test]
    async fn a_day_on_the_clock_re_signs_my_list_with_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Arc::new(Identity::create(dir.path()).unwrap());
        let store = Store::open(&dir.path().join("mxfed.db")).await.unwrap();
        let clock = Clock::manual(1_800_000_000);
        let mine = Mine::load(Arc::clone(&identity), store.clone(), clock.clone())
            .await
            .unwrap();
        let watch = mine.version_watch();
        let entry = Entry {
            domain: Domain::parse("me.example").unwrap(),
            next_hop: NextHop::parse("mail.me.example").unwrap(),
        };
        let changed = mine.change(vec![entry], vec![]).await.unwrap();
        assert_eq!(changed.signed, Some(1));
        assert_eq!(*watch.borrow(), 1);
        assert_eq!(mine.refresh_if_due().await.unwrap(), None, "fresh");

        clock.advance(REFRESH_AFTER.as_secs() as i64 - 1);
        assert_eq!(mine.refresh_if_due().await.unwrap(), None, "a second early");
        clock.advance(1);
        assert_eq!(mine.refresh_if_due().await.unwrap(), Some(2));
        assert_eq!(*watch.borrow(), 2);
        let p = mine.current().await.unwrap();
        assert_eq!(p.list.issued_at, clock.now_u64());
        assert!(identity.id.verify(&p.list.signing_bytes(), &p.signature));

        // What was stored is what a restart loads: same version, same entries.
        let again = Mine::load(identity, store, clock).await.unwrap();
        assert_eq!(again.version(), 2);
        assert_eq!(again.domains().await.len(), 1);
    }
}
