//! Logging to journald under systemd, with each event's fields both in the
//! text (`MESSAGE`, as the stderr format writes them: `session up
//! peer=friend`, so `journalctl -u mxfed` reads as the text log does) and
//! as journal fields of their own (`PEER=friend`, `DOMAIN=...`,
//! `STEP=apply`), for `journalctl -u mxfed PEER=friend` and `-o verbose`.
//! tracing-journald puts the fields in journal fields only, and leaves the
//! message without them, so this is journald's native protocol
//! (systemd.journal-fields(7), "Native Journal Protocol") written here:
//! one datagram per event to /run/systemd/journal/socket.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// journald's socket for the native protocol.
const SOCKET: &str = "/run/systemd/journal/socket";

/// A [`Layer`] that sends each event to journald.
#[derive(Debug)]
pub struct Journald {
    socket: UnixDatagram,
}

impl Journald {
    /// Connects to journald's socket; an error when there is none.
    pub fn connect() -> std::io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(SOCKET)?;
        Ok(Self { socket })
    }
}

/// An event's message and its other fields, in the order written.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.others.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.others.push((field.name(), format!("{value:?}")));
        }
    }
}

/// A tracing field name as a journal field name: upper case, A-Z 0-9 and
/// `_` only, starting with a letter (`peer` → `PEER`); `None` if nothing
/// is left, or if it would shadow one of journald's own fields.
pub fn journal_name(name: &str) -> Option<String> {
    let upper: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    let trimmed = upper.trim_start_matches(|c: char| !c.is_ascii_uppercase());
    let reserved = [
        "MESSAGE",
        "PRIORITY",
        "SYSLOG_IDENTIFIER",
        "CODE_FILE",
        "CODE_LINE",
        "TARGET",
    ];
    (!trimmed.is_empty() && !reserved.contains(&trimmed)).then(|| trimmed.to_string())
}

/// Appends `NAME=value` in the native protocol's form: as a line, or, for
/// a value with a newline, as the name, its length and the bytes.
pub fn put(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// The datagram for one event.
pub fn datagram(level: &Level, target: &str, fields: &[(&str, String)], message: &str) -> Vec<u8> {
    let priority = match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "5",
        Level::DEBUG => "6",
        Level::TRACE => "7",
    };
    // The text as the stderr format writes it: message, then key=value.
    let mut text = message.to_string();
    for (name, value) in fields {
        let _ = write!(text, " {name}={value}");
    }
    let mut out = Vec::with_capacity(text.len() + 128);
    put(&mut out, "MESSAGE", &text);
    put(&mut out, "PRIORITY", priority);
    put(&mut out, "SYSLOG_IDENTIFIER", "mxfed");
    put(&mut out, "TARGET", target);
    for (name, value) in fields {
        if let Some(name) = journal_name(name) {
            put(&mut out, &name, value);
        }
    }
    out
}

impl<S: Subscriber> Layer<S> for Journald {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let others: Vec<(&str, String)> = fields.others.into_iter().collect();
        let bytes = datagram(meta.level(), meta.target(), &others, &fields.message);
        // A log line that cannot be sent is lost, never the agent's work.
        let _ = self.socket.send(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_in_the_text_and_journal_fields_of_their_own() {
        let fields = [
            ("peer", "friend".to_string()),
            ("step", "config reload".to_string()),
            ("keys", "[\"listen\"]".to_string()),
        ];
        let d = datagram(&Level::WARN, "mxfed_agent", &fields, "take a restart");
        let text = String::from_utf8(d).unwrap();
        assert!(
            text.starts_with(
                "MESSAGE=take a restart peer=friend step=config reload keys=[\"listen\"]\n"
            ),
            "{text}"
        );
        for line in [
            "PRIORITY=4",
            "SYSLOG_IDENTIFIER=mxfed",
            "PEER=friend",
            "STEP=config reload",
            "KEYS=[\"listen\"]",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn a_value_with_a_newline_is_sent_with_its_length() {
        let mut out = Vec::new();
        put(&mut out, "MESSAGE", "two\nlines");
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(out, want);
    }

    #[test]
    fn names_are_made_journal_names() {
        assert_eq!(journal_name("peer").as_deref(), Some("PEER"));
        assert_eq!(journal_name("took_ms").as_deref(), Some("TOOK_MS"));
        assert_eq!(journal_name("mail.host").as_deref(), Some("MAIL_HOST"));
        assert_eq!(journal_name("_x").as_deref(), Some("X"));
        assert_eq!(journal_name("priority"), None);
        assert_eq!(journal_name("__"), None);
    }
}
