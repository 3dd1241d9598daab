//! [`JoinLimiter`]: rate limit on failed join attempts, per source IP and overall.
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

#[cfg(test)]
mod tests {
    use super::*;

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
