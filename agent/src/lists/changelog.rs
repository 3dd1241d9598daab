//! [`ChangeLog`]: what changed in one of my signed lists in this run,
//! version by version, so that a friend holding a recent version gets only
//! the changes since. Not stored: after a restart each friend's next fetch
//! is a whole list.

use std::collections::{BTreeMap, VecDeque};

/// Most versions a change log keeps.
pub(super) const LOG_VERSIONS: usize = 256;
/// Most changes a change log keeps, in all.
pub(super) const LOG_CHANGES: usize = 10_000;

/// One new version: the version before, and what changed (key, new value).
#[derive(Debug)]
struct Step<K, V> {
    from: u64,
    to: u64,
    changes: Vec<(K, V)>,
}

/// The steps of this run (at most [`LOG_VERSIONS`] versions and
/// [`LOG_CHANGES`] changes, the oldest dropped first).
#[derive(Debug)]
pub(crate) struct ChangeLog<K, V> {
    steps: VecDeque<Step<K, V>>,
    changes: usize,
}

impl<K, V> Default for ChangeLog<K, V> {
    fn default() -> Self {
        Self {
            steps: VecDeque::new(),
            changes: 0,
        }
    }
}

impl<K: Ord + Clone, V: Clone> ChangeLog<K, V> {
    /// Records the step from version `from` to `to`.
    pub(crate) fn record(&mut self, from: u64, to: u64, changes: Vec<(K, V)>) {
        self.changes += changes.len();
        self.steps.push_back(Step { from, to, changes });
        while self.steps.len() > LOG_VERSIONS || self.changes > LOG_CHANGES {
            match self.steps.pop_front() {
                Some(old) => self.changes -= old.changes.len(),
                None => break,
            }
        }
    }

    /// Forgets every step: a step too big to keep was taken, so no
    /// version before it can be brought up to date by changes.
    pub(crate) fn forget(&mut self) {
        self.steps.clear();
        self.changes = 0;
    }

    /// The changes from version `have` to version `to`, sorted by key (the
    /// last value of each key), if this log has every step between them.
    pub(crate) fn since(&self, have: u64, to: u64) -> Option<Vec<(K, V)>> {
        let start = self.steps.iter().position(|s| s.from == have)?;
        let mut composed = BTreeMap::new();
        let mut at = have;
        for step in self.steps.range(start..) {
            if step.from != at {
                return None; // a gap: not every step is known
            }
            for (k, v) in &step.changes {
                composed.insert(k.clone(), v.clone());
            }
            at = step.to;
        }
        (at == to).then(|| composed.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_log_knows_no_changes_until_the_next_step() {
        let mut log: ChangeLog<&str, Option<&str>> = ChangeLog::default();
        log.record(1, 2, vec![("a.example", None)]);
        log.forget();
        assert_eq!(log.since(1, 3), None, "the step to 3 is unknown");
        assert_eq!(log.since(2, 3), None);
        log.record(3, 4, vec![("b.example", None)]);
        assert_eq!(log.since(3, 4), Some(vec![("b.example", None)]));
        assert_eq!(log.since(1, 4), None);
    }

    #[test]
    fn the_change_log_composes_the_steps_since_a_version_it_has_seen() {
        let mut log: ChangeLog<&str, Option<&str>> = ChangeLog::default();
        log.record(3, 4, vec![("a.example", Some("mail.me.example"))]);
        log.record(4, 5, vec![]);
        log.record(
            5,
            6,
            vec![("a.example", None), ("b.example", Some("mail.me.example"))],
        );
        assert_eq!(
            log.since(3, 6),
            Some(vec![
                ("a.example", None),
                ("b.example", Some("mail.me.example"))
            ])
        );
        assert_eq!(log.since(5, 6).unwrap().len(), 2);
        assert_eq!(log.since(6, 6), None, "nothing is newer");
        assert_eq!(log.since(2, 6), None, "before the log");
        assert_eq!(log.since(3, 7), None, "not up to the version wanted");
        // A jump (re-signed past a friend's version) leaves a gap.
        log.record(9, 10, vec![]);
        assert_eq!(log.since(4, 10), None);
        assert_eq!(log.since(9, 10), Some(vec![]));
        // Bounded: the oldest steps go first.
        for v in 10..10 + LOG_VERSIONS as u64 {
            log.record(v, v + 1, vec![]);
        }
        assert_eq!(log.steps.len(), LOG_VERSIONS);
        let newest = 10 + LOG_VERSIONS as u64;
        assert_eq!(log.since(9, newest), None);
        assert!(log.since(11, newest).is_some());
    }
}
