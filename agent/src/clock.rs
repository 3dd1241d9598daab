//! The agent's clock: [`Clock`] gives unix seconds to every service, and
//! [`rfc3339`] is the form they are shown in.
//!
//! Services never read the system time themselves; they hold a `Clock`,
//! which is the system's in the daemon and a manual one in tests, so a test
//! moves time with [`Clock::advance`] instead of sleeping. (Timers and
//! intervals are tokio's, which tests pause and advance the same way.)

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where "now" comes from: the system, or a manual time that tests move.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system clock.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that stands at `start` (unix seconds) until moved.
    pub fn manual(start: i64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(start))),
        }
    }

    /// Moves a manual clock (and every clone of it) forward by `secs`; the
    /// system clock cannot be moved, and this does nothing to it.
    pub fn advance(&self, secs: i64) {
        if let Some(t) = &self.manual {
            t.fetch_add(secs, Ordering::Relaxed);
        }
    }

    /// Unix seconds now.
    pub fn now_unix(&self) -> i64 {
        match &self.manual {
            Some(t) => t.load(Ordering::Relaxed),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        }
    }

    /// Unix seconds now, as the unsigned number the wire and lists use.
    pub fn now_u64(&self) -> u64 {
        self.now_unix().max(0) as u64
    }
}

/// RFC 3339 form of unix seconds (clamped to years 1970 to 9999).
pub fn rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.clamp(0, 253_402_300_799) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_every_clone_sees_it() {
        let clock = Clock::manual(1_000);
        let seen_by_a_service = clock.clone();
        assert_eq!(seen_by_a_service.now_unix(), 1_000);
        clock.advance(86_400);
        assert_eq!(seen_by_a_service.now_unix(), 87_400);
        assert_eq!(seen_by_a_service.now_u64(), 87_400);
    }

    #[test]
    fn the_system_clock_is_now_and_cannot_be_moved() {
        let clock = Clock::system();
        let before = clock.now_unix();
        clock.advance(1_000_000);
        assert!(
            clock.now_unix() - before < 1_000,
            "advance moved the system clock"
        );
        assert!(before > 1_700_000_000);
    }

    #[test]
    fn rfc3339_is_clamped() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
    }
}
