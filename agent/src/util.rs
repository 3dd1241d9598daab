//! Small helpers every service uses: [`lock`] for the short std mutexes, and
//! [`printable`] for text from the other side before it is logged or shown.

use std::sync::{Mutex, MutexGuard};

/// Locks a short-lived std mutex. A panic while holding one of these locks
/// leaves plain data behind, so a poisoned lock is used as it is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Text from the other side, made safe for a log line or a terminal:
/// printable ASCII only, at most 200 characters.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn printable_replaces_controls_and_caps_length() {
        assert_eq!(printable("ok\x1b[31m\nred"), "ok?[31m?red");
        assert_eq!(printable(&"x".repeat(500)).len(), 200);
    }
}
