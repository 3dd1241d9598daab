//! Checks for the names peers send each other: agent names and mail hosts.
//!
//! Both end up in logs, the status table and (mail hosts) Postfix maps, so
//! they are held to a strict alphabet before anything stores them.

/// Longest agent name.
pub const MAX_NAME: usize = 32;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Empty or over the length limit.
    #[error("{what} {value:?} must be 1 to {max} characters")]
    Length {
        /// Which kind of name.
        what: &'static str,
        /// The value, as given.
        value: String,
        /// The limit.
        max: usize,
    },
    /// A character outside the allowed set.
    #[error("{what} {value:?} may only contain {allowed}")]
    Character {
        /// Which kind of name.
        what: &'static str,
        /// The value, as given.
        value: String,
        /// Description of the allowed alphabet.
        allowed: &'static str,
    },
}

/// Checks an agent name: 1 to 32 of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn check_agent_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(NameError::Length {
            what: "agent name",
            value: name.into(),
            max: MAX_NAME,
        });
    }
    let ok_first = name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !(ok_first && ok_rest) {
        return Err(NameError::Character {
            what: "agent name",
            value: name.into(),
            allowed:
                "lower-case letters, digits, '-', '_' and '.', starting with a letter or digit",
        });
    }
    Ok(())
}

/// Checks a host name: lower-case LDH labels of 1 to 63 characters, at most
/// 253 characters in all, no trailing dot, at least two labels.
pub fn check_hostname(what: &'static str, host: &str) -> Result<(), NameError> {
    if host.is_empty() || host.len() > 253 {
        return Err(NameError::Length {
            what,
            value: host.into(),
            max: 253,
        });
    }
    let allowed = "lower-case letters, digits and '-' in dot-separated labels of 1 to 63 characters, with no leading or trailing '-'";
    let bad = || NameError::Character {
        what,
        value: host.into(),
        allowed,
    };
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 {
        return Err(bad());
    }
    for label in &labels {
        let ldh = label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if label.is_empty()
            || label.len() > 63
            || !ldh
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(bad());
        }
    }
    // An all-numeric last label would make "1.2.3.4" pass as a host name.
    if labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names() {
        for ok in ["me", "friend-1", "a.b_c", "0x"] {
            assert!(check_agent_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Me", "-x", "a b", "a\nb", "é", &"x".repeat(33)] {
            assert!(check_agent_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostnames() {
        for ok in ["mail.me.example", "a-b.c0.example", "mx1.friend.test"] {
            assert!(check_hostname("mail host", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "localhost",
            "mail.me.example.",
            "Mail.me.example",
            "a..b",
            "-a.b",
            "a-.b",
            "1.2.3.4",
            "a b.c",
            "a\nb.c",
            "*.x.y",
            "[1.2.3.4]",
            "a.b:25",
        ] {
            assert!(check_hostname("mail host", bad).is_err(), "{bad:?}");
        }
        assert!(check_hostname("mail host", &format!("{}.x", "a".repeat(64))).is_err());
    }
}
