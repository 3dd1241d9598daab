//! Logging to journald under systemd, with each event's fields both in the
//! text (`MESSAGE`, as the stderr format writes them: `session up
//! peer=friend`, so `journalctl -u mxfed` reads as the text log does) and
//! as journal fields of their own (`PEER=friend`, `DOMAIN=...`,
//! `STEP=apply`), for `journalctl -u mxfed PEER=friend` and `-o verbose`.
//! tracing-journald puts the fields in journal fields only, and leaves the
//! message without them, so this is journald's native protocol
//! (systemd.journal-fields(7), "Native Journal Protocol") written here:
//! one datagram per event to /run/systemd/journal/socket, sent to the
//! path each time (as libsystemd does), so a journald that restarts gets
//! the next line. A line journald refuses (over the datagram limit: values
//! are cut to [`MAX_VALUE`] bytes) or cannot take goes to stderr, which is
//! the journal's stream, as text.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// journald's socket for the native protocol.
const SOCKET: &str = "/run/systemd/journal/socket";

/// A value longer than this is cut (at a character boundary) and marked:
/// whole datagrams stay well under the socket's send buffer.
pub const MAX_VALUE: usize = 48 * 1024;

/// A [`Layer`] that sends each event to journald.
#[derive(Debug)]
pub struct Journald {
    socket: UnixDatagram,
}

impl Journald {
    /// A socket for journald's; an error when journald's is not there.
    pub fn connect() -> std::io::Result<Self> {
        std::fs::metadata(SOCKET)?;
        Ok(Self {
            socket: UnixDatagram::unbound()?,
        })
    }
}

/// One field's value: as its journal field holds it, and as the text
/// writes it (strings quoted, as the stderr format does).
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub journal: String,
    pub text: String,
}

/// An event's message and its other fields, in the order written.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.others.push((
                field.name(),
                Value {
                    journal: value.to_string(),
                    text: format!("{value:?}"),
                },
            ));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let v = format!("{value:?}");
            self.others.push((
                field.name(),
                Value {
                    journal: v.clone(),
                    text: v,
                },
            ));
        }
    }
}

/// A tracing field name as a journal field name: upper case, A-Z 0-9 and
/// `_` only, starting with a letter, at most 64 bytes (`peer` → `PEER`);
/// `None` if nothing is left, or if it would be one of the fields journald
/// gives a meaning (systemd.journal-fields(7)).
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
        "MESSAGE_ID",
        "PRIORITY",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "ERRNO",
        "INVOCATION_ID",
        "USER_INVOCATION_ID",
        "SYSLOG_FACILITY",
        "SYSLOG_IDENTIFIER",
        "SYSLOG_PID",
        "SYSLOG_TIMESTAMP",
        "SYSLOG_RAW",
        "DOCUMENTATION",
        "TID",
        "UNIT",
        "USER_UNIT",
        "TARGET",
    ];
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 64
        && !reserved.contains(&trimmed)
        && !trimmed.starts_with("OBJECT_")
        && !trimmed.starts_with("COREDUMP_");
    ok.then(|| trimmed.to_string())
}

/// Appends `NAME=value` in the native protocol's form: as a line, or, for
/// a value with a newline, as the name, its length and the bytes. A value
/// over [`MAX_VALUE`] is cut.
pub fn put(out: &mut Vec<u8>, name: &str, value: &str) {
    let cut;
    let value = if value.len() > MAX_VALUE {
        let mut end = MAX_VALUE;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        cut = format!("{} [cut at {end} of {} bytes]", &value[..end], value.len());
        cut.as_str()
    } else {
        value
    };
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
pub fn datagram(level: &Level, target: &str, fields: &[(&str, Value)], message: &str) -> Vec<u8> {
    let priority = match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "5",
        Level::DEBUG => "6",
        Level::TRACE => "7",
    };
    // The text as the stderr format writes it: message, then key=value.
    let text = text_line(message, fields);
    let mut out = Vec::with_capacity(text.len() + 128);
    put(&mut out, "MESSAGE", &text);
    put(&mut out, "PRIORITY", priority);
    put(&mut out, "SYSLOG_IDENTIFIER", "mxfed");
    put(&mut out, "TARGET", target);
    for (name, value) in fields {
        if let Some(name) = journal_name(name) {
            put(&mut out, &name, &value.journal);
        }
    }
    out
}

/// The event as one text line: the message, then ` name=value` for each
/// field.
pub fn text_line(message: &str, fields: &[(&str, Value)]) -> String {
    let mut text = message.to_string();
    for (name, value) in fields {
        let _ = write!(text, " {name}={}", value.text);
    }
    text
}

impl<S: Subscriber> Layer<S> for Journald {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let bytes = datagram(meta.level(), meta.target(), &fields.others, &fields.message);
        if let Err(e) = self.socket.send_to(&bytes, SOCKET) {
            // Not lost: the text on stderr, which is the journal's stream.
            eprintln!(
                "{} {} (journald refused the structured line: {e})",
                meta.level(),
                text_line(&fields.message, &fields.others)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_in_the_text_and_journal_fields_of_their_own() {
        // As the visitor records them: strings quoted in the text only.
        let v = |journal: &str, text: &str| Value {
            journal: journal.into(),
            text: text.into(),
        };
        let fields = [
            ("peer", v("friend", "\"friend\"")),
            ("step", v("config reload", "\"config reload\"")),
            ("keys", v("[\"listen\"]", "[\"listen\"]")),
        ];
        let d = datagram(&Level::WARN, "mxfed_agent", &fields, "take a restart");
        let text = String::from_utf8(d).unwrap();
        assert!(
            text.starts_with(
                "MESSAGE=take a restart peer=\"friend\" step=\"config reload\" keys=[\"listen\"]\n"
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
    fn a_value_over_the_limit_is_cut_at_a_character() {
        let mut out = Vec::new();
        let long = "é".repeat(MAX_VALUE);
        put(&mut out, "MESSAGE", &long);
        let text = String::from_utf8(out).unwrap();
        assert!(text.len() < MAX_VALUE + 100, "{}", text.len());
        assert!(
            text.ends_with(&format!("of {} bytes]\n", long.len())),
            "{}",
            &text[text.len() - 60..]
        );
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
        assert_eq!(journal_name("object_pid"), None);
        assert_eq!(journal_name(&"x".repeat(65)), None);
        assert_eq!(journal_name("__"), None);
    }
}
