//! When to flush what I hold for one friend, and when to probe its next
//! hop ([`Friend`]): a state, not an edge. Pure: the caller says what it
//! sees and when (`now`), runs the probes and flushes this asks for, and
//! reports back. Rate limits here defer a flush; they never drop one.
//!
//! - A flush is wanted at once when the friend comes back (its report says
//!   its MTA accepts after saying it did not, or my probe gets a greeting
//!   after failing), and when new mail is held while it accepts.
//! - While the held mail stays although the friend accepts (it defers the
//!   mail itself, say), it is flushed again after [`BACKOFF_MIN`], doubling
//!   to [`BACKOFF_MAX`]: Postfix's own retries go on meanwhile.
//! - Two flushes are at least [`GAP_MIN`] apart, and at most [`BURST`]
//!   run in a row before the pace falls to one per [`REFILL`] (a friend
//!   flapping, or a hostile one, cannot make me run `postqueue` faster).
//! - A friend's own `Flush` request counts once per [`REQUEST_EVERY`]; one
//!   sooner is kept for then.
//! - While I hold mail and the friend does not say it accepts, its next
//!   hop is probed every [`PROBE_FAST`]; once the probe answers, every
//!   [`PROBE_SLOW`].

use std::time::Duration;

use tokio::time::Instant;

/// Least time between two flushes for one friend.
pub const GAP_MIN: Duration = Duration::from_millis(500);
/// Flushes that may run in a row (a token bucket of this size)...
pub const BURST: f64 = 10.0;
/// ...refilled by one every this long.
pub const REFILL: Duration = Duration::from_secs(6);
/// First wait before flushing again mail that stays held.
pub const BACKOFF_MIN: Duration = Duration::from_secs(30);
/// The longest wait before flushing again mail that stays held.
pub const BACKOFF_MAX: Duration = Duration::from_secs(600);
/// A friend's own flush requests count at most this often.
pub const REQUEST_EVERY: Duration = Duration::from_secs(30);
/// Probe interval while I hold mail and the friend is not known to accept.
pub const PROBE_FAST: Duration = Duration::from_secs(1);
/// Probe interval while I hold mail and the last probe answered.
pub const PROBE_SLOW: Duration = Duration::from_secs(10);

/// What I hold for a friend, as a scan saw it: messages, and the arrival
/// (Unix seconds) of the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    pub messages: u64,
    pub newest: i64,
}

/// One friend's flush and probe state.
#[derive(Debug)]
pub struct Friend {
    /// A flush is wanted, why, and not before when.
    wanted: Option<(String, Instant)>,
    /// Whether the wanted flush is a comeback (look at the queue afresh).
    comeback: bool,
    last_flush: Option<Instant>,
    /// Flushes I may start now (up to [`BURST`]), as of `refilled`.
    tokens: f64,
    refilled: Option<Instant>,
    backoff: Duration,
    /// What was held when the last flush ran (`None`: nothing since).
    held_at_flush: Option<Held>,
    flushing: bool,
    last_request: Option<Instant>,
    /// My last probe of its next hop: answered?, and when it was started.
    probe: Option<(bool, Instant)>,
    probing: bool,
}

impl Default for Friend {
    fn default() -> Self {
        Self {
            wanted: None,
            comeback: false,
            last_flush: None,
            tokens: BURST,
            refilled: None,
            backoff: BACKOFF_MIN,
            held_at_flush: None,
            flushing: false,
            last_request: None,
            probe: None,
            probing: false,
        }
    }
}

/// A flush to run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub why: String,
    /// Read the queue afresh first: mail may have been deferred since the
    /// last scan (an outage shorter than the scan interval).
    pub fresh_scan: bool,
}

impl Friend {
    /// The friend came back (its report, or my probe): flush now, or as
    /// soon as the pace allows.
    pub fn comeback(&mut self, why: &str, now: Instant) {
        self.backoff = BACKOFF_MIN;
        self.comeback = true;
        self.want(why, now);
    }

    /// What a scan says I hold, and whether the friend accepts mail now.
    pub fn held(&mut self, held: Held, accepting: bool, now: Instant) {
        if self.flushing {
            return; // its outcome comes first
        }
        if held.messages == 0 {
            self.held_at_flush = None;
            self.backoff = BACKOFF_MIN;
            return;
        }
        if !accepting {
            return;
        }
        match self.held_at_flush {
            // New mail since the last flush (or none yet): out it goes.
            None => self.want("I hold mail for it and it accepts", now),
            Some(h) if held.messages > h.messages || held.newest > h.newest => {
                self.backoff = BACKOFF_MIN;
                self.want("new mail held while it accepts", now);
            }
            // The same mail, still held: again once the backoff is over.
            Some(_) => {
                if self
                    .last_flush
                    .is_none_or(|t| now.duration_since(t) >= self.backoff)
                {
                    self.want("mail still held while it accepts", now);
                }
            }
        }
    }

    /// The friend asks me to flush. `Err(wait)`: one came within
    /// [`REQUEST_EVERY`]; this one runs after `wait`.
    pub fn request(&mut self, now: Instant) -> Result<(), Duration> {
        match self.last_request {
            Some(t) if now.duration_since(t) < REQUEST_EVERY => {
                let at = t + REQUEST_EVERY;
                self.want_at("the friend asked", at);
                Err(at.duration_since(now))
            }
            _ => {
                self.last_request = Some(now);
                self.want("the friend asked", now);
                Ok(())
            }
        }
    }

    fn want(&mut self, why: &str, now: Instant) {
        self.want_at(why, now);
    }

    fn want_at(&mut self, why: &str, at: Instant) {
        match &mut self.wanted {
            Some((_, t)) if *t <= at => {}
            _ => self.wanted = Some((why.to_string(), at)),
        }
    }

    /// The flush to start now, if one is wanted and the gap allows; it is
    /// then running until [`Friend::flushed`].
    pub fn due(&mut self, now: Instant) -> Option<Due> {
        if self.flushing {
            return None;
        }
        let (_, at) = self.wanted.as_ref()?;
        let gap_over = self
            .last_flush
            .is_none_or(|t| now.duration_since(t) >= GAP_MIN);
        if let Some(t) = self.refilled {
            let earned = now.duration_since(t).as_secs_f64() / REFILL.as_secs_f64();
            self.tokens = (self.tokens + earned).min(BURST);
        }
        self.refilled = Some(now);
        if now < *at || !gap_over || self.tokens < 1.0 {
            return None;
        }
        let (why, _) = self.wanted.take()?;
        self.tokens -= 1.0;
        self.flushing = true;
        let due = Due {
            why,
            fresh_scan: std::mem::take(&mut self.comeback),
        };
        Some(due)
    }

    /// The flush started by [`Friend::due`] is over; `held` is what the
    /// scan it used saw (`None`: nothing, or unreadable).
    pub fn flushed(&mut self, held: Option<Held>, now: Instant) {
        self.flushing = false;
        let again = self.held_at_flush.is_some() && self.held_at_flush == held;
        if again {
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
        self.held_at_flush = held;
        self.last_flush = Some(now);
    }

    /// Whether to probe its next hop now: I hold mail for it, it does not
    /// say it accepts, and the last probe is old enough.
    pub fn probe_due(&mut self, held: u64, says_accepting: bool, now: Instant) -> bool {
        if held == 0 || says_accepting || self.probing {
            return false;
        }
        let every = match self.probe {
            Some((true, _)) => PROBE_SLOW,
            _ => PROBE_FAST,
        };
        let due = self
            .probe
            .is_none_or(|(_, at)| now.duration_since(at) >= every);
        if due {
            self.probing = true;
        }
        due
    }

    /// A probe started at `at` came back. Answering after not answering (or
    /// for the first time) is a comeback.
    pub fn probed(&mut self, up: bool, at: Instant, now: Instant) {
        self.probing = false;
        let before = self.probe.map(|(u, _)| u);
        self.probe = Some((up, at));
        if up && before != Some(true) {
            let why = match before {
                Some(false) => "its next hop answers again",
                _ => "its next hop answers and I hold mail for it",
            };
            self.comeback(why, now);
        }
    }

    /// Whether my last probe got a greeting.
    pub fn probe_answers(&self) -> bool {
        matches!(self.probe, Some((true, _)))
    }

    /// Forget the probe (I hold nothing: the next hold starts afresh).
    pub fn idle(&mut self) {
        if !self.probing {
            self.probe = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(messages: u64, newest: i64) -> Held {
        Held { messages, newest }
    }

    #[test]
    fn a_comeback_flushes_at_once_and_a_flapping_friend_is_paced() {
        let t0 = Instant::now();
        let mut f = Friend::default();
        f.comeback("its MTA accepts again", t0);
        let due = f.due(t0).unwrap();
        assert!(due.fresh_scan);
        assert_eq!(f.due(t0), None, "one at a time");
        f.flushed(Some(held(3, 100)), t0);
        // Back again 100 ms later: deferred to the gap, never dropped.
        let t1 = t0 + Duration::from_millis(100);
        f.comeback("its MTA accepts again", t1);
        assert_eq!(f.due(t1), None);
        assert!(f.due(t0 + GAP_MIN).is_some(), "runs once the gap is over");
        f.flushed(Some(held(3, 100)), t0 + GAP_MIN);
        // Flapping on: a burst, then one per REFILL.
        let mut t = t0 + GAP_MIN;
        let mut ran = 2;
        for _ in 0..40 {
            t += GAP_MIN;
            f.comeback("its MTA accepts again", t);
            if f.due(t).is_some() {
                ran += 1;
                f.flushed(Some(held(3, 100)), t);
            }
        }
        // 20 s of flapping: the burst, plus what 20 s refill.
        assert!((10..=14).contains(&ran), "{ran} flushes");
        assert!(f.wanted.is_some(), "the last one waits, not dropped");
    }

    #[test]
    fn held_mail_that_stays_is_flushed_again_with_a_growing_backoff() {
        let t0 = Instant::now();
        let mut f = Friend::default();
        f.held(held(2, 50), true, t0);
        assert!(f.due(t0).is_some());
        f.flushed(Some(held(2, 50)), t0);
        // The same mail, still held, the friend still accepting.
        f.held(held(2, 50), true, t0 + Duration::from_secs(10));
        assert_eq!(f.due(t0 + Duration::from_secs(10)), None);
        let t1 = t0 + BACKOFF_MIN;
        f.held(held(2, 50), true, t1);
        assert!(f.due(t1).is_some());
        f.flushed(Some(held(2, 50)), t1);
        assert_eq!(f.backoff, BACKOFF_MIN * 2, "nothing moved: back off");
        // New mail resets it and goes at once (after the gap).
        let t2 = t1 + Duration::from_secs(1);
        f.held(held(3, 60), true, t2);
        assert!(f.due(t2).is_some());
        assert_eq!(f.backoff, BACKOFF_MIN);
        // Not accepting: nothing wanted; nothing held: all reset.
        f.flushed(Some(held(3, 60)), t2);
        f.held(held(4, 70), false, t2 + Duration::from_secs(5));
        assert_eq!(f.due(t2 + Duration::from_secs(5)), None);
        f.held(held(0, 0), true, t2 + Duration::from_secs(6));
        assert_eq!(f.held_at_flush, None);
    }

    #[test]
    fn a_request_too_soon_is_deferred_not_dropped() {
        let t0 = Instant::now();
        let mut f = Friend::default();
        assert!(f.request(t0).is_ok());
        assert!(f.due(t0).is_some());
        f.flushed(None, t0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(f.request(t1), Err(REQUEST_EVERY - Duration::from_secs(5)));
        assert_eq!(f.due(t1), None);
        assert!(f.due(t0 + REQUEST_EVERY).is_some());
    }

    #[test]
    fn probes_are_fast_while_down_slow_once_up_and_none_when_told() {
        let t0 = Instant::now();
        let mut f = Friend::default();
        assert!(!f.probe_due(0, false, t0), "nothing held");
        assert!(!f.probe_due(1, true, t0), "its report says it accepts");
        assert!(f.probe_due(1, false, t0));
        assert!(!f.probe_due(1, false, t0), "one at a time");
        f.probed(false, t0, t0);
        assert!(!f.probe_due(1, false, t0 + PROBE_FAST / 2));
        let t1 = t0 + PROBE_FAST;
        assert!(f.probe_due(1, false, t1));
        f.probed(true, t1, t1);
        let due = f.due(t1).unwrap();
        assert_eq!(due.why, "its next hop answers again");
        assert!(f.probe_answers());
        assert!(!f.probe_due(1, false, t1 + PROBE_FAST));
        assert!(f.probe_due(1, false, t1 + PROBE_SLOW));
    }
}
