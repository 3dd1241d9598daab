//! Telling systemd how the agent is doing (`Type=notify` in
//! deploy/mxfed.service), with the sd-notify crate: READY=1 once the agent
//! serves, RELOADING=1 … READY=1 around a config reload, STOPPING=1 at
//! shutdown, and WATCHDOG=1 every half of `WatchdogSec`. Outside systemd
//! (no `NOTIFY_SOCKET`) each is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn notify(what: &str, state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(step = "systemd notify", "cannot tell systemd {what}: {e}");
    }
}

/// The agent serves: its endpoint, control socket and policy service are up.
pub fn ready() {
    notify("READY=1", &[NotifyState::Ready]);
}

/// A reload (SIGHUP) begins; [`ready`] ends it.
pub fn reloading() {
    // systemd 253 and later want the time with RELOADING=1; 252 ignores it.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify("RELOADING=1", &[NotifyState::Reloading, now]),
        Err(_) => notify("RELOADING=1", &[NotifyState::Reloading]),
    }
}

/// Shutdown begins.
pub fn stopping() {
    notify("STOPPING=1", &[NotifyState::Stopping]);
}

/// How often to say WATCHDOG=1, if systemd watches this process (half of
/// `WatchdogSec`, as sd_watchdog_enabled(3) advises).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Says WATCHDOG=1 every `every` until `cancel`. It runs on the agent's
/// runtime among its other tasks, so a runtime that no longer gets to run
/// them stops the keep-alives, and systemd restarts the agent.
pub async fn watchdog(every: Duration, cancel: CancellationToken) {
    loop {
        notify("WATCHDOG=1", &[NotifyState::Watchdog]);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
