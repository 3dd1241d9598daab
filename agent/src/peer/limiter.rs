//! [`JoinLimiter`]: rate limit on failed join attempts, per source IP and
//! overall. [`CoolOff`]: how long a paired peer cut off for a flood must
//! wait before it is served again.
//!
//! Pure bookkeeping; the caller passes `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed attempts one IP may make per window.
pub const PER_IP: u32 = 5;
/// Failed attempts all IPs together may make per window.
pub const GLOBAL: u32 = 30;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The bucket an address counts in: itself for IPv4, its /64 for IPv6,
/// since one host usually has a whole /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

/// Counts failed join attempts in fixed windows.
#[derive(Debug, Default)]
pub struct JoinLimiter {
    per_ip: HashMap<IpAddr, (Instant, u32)>,
    global: Option<(Instant, u32)>,
}

fn live(entry: Option<(Instant, u32)>, now: Instant) -> Option<(Instant, u32)> {
    entry.filter(|(start, _)| now.duration_since(*start) < WINDOW)
}

impl JoinLimiter {
    /// If `ip` may not try now, how long until it may.
    pub fn blocked(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let ip = bucket(ip);
        self.per_ip
            .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        let mut wait = None;
        if let Some((start, n)) = live(self.per_ip.get(&ip).copied(), now) {
            if n >= PER_IP {
                wait = Some(WINDOW - now.duration_since(start));
            }
        }
        if let Some((start, n)) = live(self.global, now) {
            if n >= GLOBAL {
                wait = wait.max(Some(WINDOW - now.duration_since(start)));
            }
        }
        wait
    }

    /// Records a failed attempt from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        let ip = bucket(ip);
        let e = live(self.per_ip.get(&ip).copied(), now).unwrap_or((now, 0));
        self.per_ip.insert(ip, (e.0, e.1 + 1));
        let g = live(self.global, now).unwrap_or((now, 0));
        self.global = Some((g.0, g.1 + 1));
    }
}

/// The first cool-off after a cut.
pub const COOL_OFF_MIN: Duration = Duration::from_secs(10);
/// The longest cool-off.
pub const COOL_OFF_MAX: Duration = Duration::from_secs(300);
/// A cut within this long of the previous cool-off's end doubles the next.
const COOL_OFF_MEMORY: Duration = Duration::from_secs(600);

/// Per paired peer, kept across its connections: a peer cut off for a
/// flood is not served again until its cool-off ends, so reconnecting at
/// once does not reset its budget. Each cut soon after the last doubles
/// the wait, from [`COOL_OFF_MIN`] to [`COOL_OFF_MAX`].
#[derive(Debug)]
pub struct CoolOff<K> {
    /// Until when, and how long the last cool-off was.
    cut: HashMap<K, (Instant, Duration)>,
}

impl<K> Default for CoolOff<K> {
    fn default() -> Self {
        Self {
            cut: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Copy> CoolOff<K> {
    /// Records a cut now; returns how long the peer must wait.
    pub fn cut(&mut self, peer: K, now: Instant) -> Duration {
        self.cut
            .retain(|_, (until, _)| *until + COOL_OFF_MEMORY > now);
        let wait = match self.cut.get(&peer) {
            Some((_, last)) => (*last * 2).min(COOL_OFF_MAX),
            None => COOL_OFF_MIN,
        };
        self.cut.insert(peer, (now + wait, wait));
        wait
    }

    /// Forgets `peer` (unpaired).
    pub fn forget(&mut self, peer: &K) {
        self.cut.remove(peer);
    }

    /// How long `peer` must still wait, if it must.
    pub fn waiting(&self, peer: &K, now: Instant) -> Option<Duration> {
        self.cut
            .get(peer)
            .and_then(|(until, _)| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_cut_off_waits_longer_each_time_and_is_forgiven_later() {
        let mut c = CoolOff::default();
        let t0 = Instant::now();
        assert_eq!(c.waiting(&1, t0), None);
        assert_eq!(c.cut(1, t0), COOL_OFF_MIN);
        assert_eq!(c.waiting(&1, t0), Some(COOL_OFF_MIN));
        assert_eq!(c.waiting(&2, t0), None, "per peer");
        let t1 = t0 + COOL_OFF_MIN;
        assert_eq!(c.waiting(&1, t1), None, "served again after the wait");
        assert_eq!(c.cut(1, t1), COOL_OFF_MIN * 2);
        let mut t = t1;
        for _ in 0..10 {
            t += COOL_OFF_MAX;
            c.cut(1, t);
        }
        assert_eq!(c.waiting(&1, t), Some(COOL_OFF_MAX), "bounded");
        // Long after its last cool-off, a cut starts from the minimum.
        let later = t + COOL_OFF_MAX + COOL_OFF_MEMORY;
        assert_eq!(c.cut(1, later), COOL_OFF_MIN);
    }

    #[test]
    fn blocks_after_limit_and_releases_after_window() {
        let mut l = JoinLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..PER_IP {
            assert!(l.blocked(ip, t0).is_none());
            l.failed(ip, t0);
        }
        assert!(l.blocked(ip, t0).is_some());
        assert!(l.blocked(other, t0).is_none(), "limit is per IP");
        assert!(l.blocked(ip, t0 + WINDOW).is_none());
    }

    #[test]
    fn an_ipv6_64_counts_as_one_address() {
        let mut l = JoinLimiter::default();
        let t0 = Instant::now();
        for i in 0..PER_IP {
            l.failed(format!("2001:db8:1:2::{i:x}").parse().unwrap(), t0);
        }
        assert!(l
            .blocked("2001:db8:1:2::ffff".parse().unwrap(), t0)
            .is_some());
        assert!(l.blocked("2001:db8:1:3::1".parse().unwrap(), t0).is_none());
    }

    #[test]
    fn global_limit_applies_across_ips() {
        let mut l = JoinLimiter::default();
        let t0 = Instant::now();
        for i in 0..GLOBAL {
            l.failed(IpAddr::from([198, 51, 100, i as u8]), t0);
        }
        assert!(l.blocked("203.0.113.9".parse().unwrap(), t0).is_some());
    }
}
