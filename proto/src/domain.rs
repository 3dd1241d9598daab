//! [`Domain`] and [`NextHop`]: names that end up in Postfix maps.
//!
//! Parse, don't validate: the only way to hold a `Domain` or `NextHop` is
//! through [`Domain::parse`] / [`NextHop::parse`], so once you have one it is
//! safe to write into a map. A domain is lower-cased, converted from IDN to
//! punycode (UTS 46, through the `idna` crate), and must then be LDH labels
//! of 1 to 63 characters, at least two of them, 253 characters at most, with
//! no wildcard, no trailing dot, no whitespace or control characters, and
//! not an IP address in disguise.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest domain name, in characters, after conversion to punycode.
pub const MAX_DOMAIN: usize = 253;

/// Why a string is not a usable domain or next hop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// Empty string, or a lone dot.
    #[error("empty name")]
    Empty,
    /// Whitespace or a control character somewhere in the name.
    #[error("{0:?} contains whitespace, a control character or an invisible character")]
    Whitespace(String),
    /// A `*` label.
    #[error("{0:?} is a wildcard; list the domain itself")]
    Wildcard(String),
    /// A trailing (or leading) dot.
    #[error("{0:?} has a leading or trailing dot; write it without")]
    Dot(String),
    /// IDNA conversion failed.
    #[error("{0:?} is not a valid internationalised domain name")]
    Idna(String),
    /// Over 253 characters in punycode form.
    #[error("{0:?} is longer than {MAX_DOMAIN} characters")]
    TooLong(String),
    /// A label is empty, too long, or has characters other than letters, digits and '-'.
    #[error("{name:?}: label {label:?} must be 1 to 63 letters, digits or '-', not starting or ending with '-'")]
    Label {
        /// The whole name.
        name: String,
        /// The bad label.
        label: String,
    },
    /// Only one label.
    #[error("{0:?} needs at least two labels (like example.org)")]
    SingleLabel(String),
    /// Looks like an IP address.
    #[error("{0:?} is an IP address, not a domain")]
    IpLiteral(String),
    /// A next hop that does not parse.
    #[error("next hop {0:?} must be HOST, HOST:PORT, [IP] or [IP]:PORT")]
    NextHop(String),
    /// The name is not in canonical form (a peer must send names already normalised).
    #[error("{0:?} is not in canonical form (lower-case punycode)")]
    NotCanonical(String),
}

/// A checked, normalised domain name (lower-case ASCII, punycode).
///
/// Shared, not copied, when cloned: a list of 100,000 domains is cloned
/// into changes, views and next hops, and each copy of a `String` was one
/// more small allocation per domain.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(std::sync::Arc<str>);

/// Characters that are invisible or reorder text: IDNA would silently drop
/// some of them (`ex\u{200B}ample` becomes `example`), so refuse them outright.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFF8}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

impl Domain {
    /// Checks and normalises user input: `Exämple.ORG` becomes `xn--exmple-cua.org`.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        // Refused before the (costly) IDNA mapping: an input too long to
        // make a name of 253 bytes. Every character that is not refused
        // below as invisible (what IDNA would drop) ends up as at least one
        // byte of the ASCII name, and the most UTF-8 that composes into
        // one character is about 9 bytes (a Hangul syllable written as
        // three jamo); 16 bytes a character leaves room to spare.
        if input.len() > 16 * MAX_DOMAIN {
            return Err(DomainError::TooLong(input.into()));
        }
        if input
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c))
        {
            return Err(DomainError::Whitespace(input.into()));
        }
        if input.is_empty() || input == "." {
            return Err(DomainError::Empty);
        }
        if input.split('.').any(|l| l == "*") || input.contains('*') {
            return Err(DomainError::Wildcard(input.into()));
        }
        if input.starts_with('.') || input.ends_with('.') {
            return Err(DomainError::Dot(input.into()));
        }
        if input.parse::<IpAddr>().is_ok()
            || input
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .is_some_and(|s| s.parse::<IpAddr>().is_ok())
        {
            return Err(DomainError::IpLiteral(input.into()));
        }
        let ascii =
            idna::domain_to_ascii_strict(input).map_err(|_| DomainError::Idna(input.into()))?;
        Self::check_ascii(&ascii, input)?;
        Ok(Self(ascii.into()))
    }

    /// Accepts only a name that is already in canonical form, as a peer must send it.
    pub fn parse_canonical(input: &str) -> Result<Self, DomainError> {
        let d = Self::parse(input)?;
        if &*d.0 != input {
            return Err(DomainError::NotCanonical(input.into()));
        }
        Ok(d)
    }

    fn check_ascii(ascii: &str, input: &str) -> Result<(), DomainError> {
        if ascii.is_empty() {
            return Err(DomainError::Empty);
        }
        if ascii.len() > MAX_DOMAIN {
            return Err(DomainError::TooLong(input.into()));
        }
        if ascii.ends_with('.') || ascii.starts_with('.') {
            return Err(DomainError::Dot(input.into()));
        }
        let labels: Vec<&str> = ascii.split('.').collect();
        for label in &labels {
            let ldh = label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if label.is_empty()
                || label.len() > 63
                || !ldh
                || label.starts_with('-')
                || label.ends_with('-')
            {
                return Err(DomainError::Label {
                    name: input.into(),
                    label: (*label).into(),
                });
            }
        }
        if labels.len() < 2 {
            return Err(DomainError::SingleLabel(input.into()));
        }
        // "1.2.3.4" and "0x7f.0x1" are LDH but addresses to inet_aton; a
        // real TLD is never all digits nor a hex number.
        let numeric = |l: &str| {
            l.bytes().all(|b| b.is_ascii_digit())
                || l.strip_prefix("0x")
                    .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        if labels.last().is_some_and(|l| numeric(l)) {
            return Err(DomainError::IpLiteral(input.into()));
        }
        Ok(())
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain({})", self.0)
    }
}

impl FromStr for Domain {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Domain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Domain::parse_canonical(&s).map_err(serde::de::Error::custom)
    }
}

/// Where a backed-up domain's mail is relayed: a host name or an IP, and an
/// optional port. Rendered into the transport map as `relay:[host]:port`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NextHop {
    host: Host,
    port: Option<u16>,
}

/// The host part of a [`NextHop`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Host {
    /// A host name.
    Name(Domain),
    /// An IP address, written `[IP]`.
    Ip(IpAddr),
}

impl NextHop {
    /// Whether `text` is exactly how this next hop is written (its
    /// `Display`), compared without an allocation.
    pub fn is_written_as(&self, text: &str) -> bool {
        struct Rest<'a>(&'a str);
        impl fmt::Write for Rest<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                self.0 = self.0.strip_prefix(s).ok_or(fmt::Error)?;
                Ok(())
            }
        }
        let mut rest = Rest(text);
        fmt::write(&mut rest, format_args!("{self}")).is_ok() && rest.0.is_empty()
    }

    /// Parses `HOST`, `HOST:PORT`, `[IP]` or `[IP]:PORT`.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let bad = || DomainError::NextHop(input.into());
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(DomainError::Whitespace(input.into()));
        }
        let (host, port) = if let Some(rest) = input.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
            let ip: IpAddr = ip.parse().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            (Host::Ip(ip), port)
        } else {
            let (name, port) = match input.rsplit_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (input, None),
            };
            (Host::Name(Domain::parse(name)?), port)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
                _ => return Err(bad()),
            },
        };
        Ok(Self { host, port })
    }

    /// Accepts only the canonical form, as a peer must send it.
    pub fn parse_canonical(input: &str) -> Result<Self, DomainError> {
        let h = Self::parse(input)?;
        if h.to_string() != input {
            return Err(DomainError::NotCanonical(input.into()));
        }
        Ok(h)
    }

    /// A next hop that is a host name, with no port.
    pub fn host_name(name: Domain) -> Self {
        Self {
            host: Host::Name(name),
            port: None,
        }
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port, if one was given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The Postfix transport nexthop: `[host]` or `[host]:port`. The brackets
    /// turn off MX lookup, so the backup never sends mail back to itself.
    pub fn postfix_nexthop(&self) -> String {
        let host = match &self.host {
            Host::Name(d) => d.to_string(),
            Host::Ip(ip) => ip.to_string(),
        };
        match self.port {
            Some(p) => format!("[{host}]:{p}"),
            None => format!("[{host}]"),
        }
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(d) => write!(f, "{d}")?,
            Host::Ip(ip) => write!(f, "[{ip}]")?,
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NextHop({self})")
    }
}

impl FromStr for NextHop {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for NextHop {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NextHop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NextHop::parse_canonical(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlong_input_is_refused_before_idna_and_long_idns_still_parse() {
        // Four-byte characters: 14 per label make 56 bytes of UTF-8 and a
        // punycode label within 63; four such labels and a TLD are near
        // the bound in both forms.
        let label = "\u{1F600}".repeat(14);
        let long = format!("{label}.{label}.{label}.{label}.example");
        let parsed = Domain::parse(&long).unwrap();
        assert!(parsed.as_str().len() <= MAX_DOMAIN);
        // Decomposed Hangul: 9 bytes of jamo make one syllable, so this
        // input of 1,355 bytes is a name of 176.
        let jamo = "\u{1100}\u{1161}\u{11A8}".repeat(50);
        let hangul = format!("{jamo}.{jamo}.{jamo}.kr");
        assert!(hangul.len() > 4 * MAX_DOMAIN);
        assert!(Domain::parse(&hangul).unwrap().as_str().len() <= MAX_DOMAIN);
        // Characters IDNA ignores are refused, not dropped.
        assert!(matches!(
            Domain::parse("exa\u{1BCA0}mple.com"),
            Err(DomainError::Whitespace(_))
        ));
        let overlong = format!("{}.example", "ä".repeat(3000));
        assert!(matches!(
            Domain::parse(&overlong),
            Err(DomainError::TooLong(_))
        ));
    }

    #[test]
    fn normalises_case_and_idn() {
        assert_eq!(
            Domain::parse("Friend.EXAMPLE").unwrap().as_str(),
            "friend.example"
        );
        assert_eq!(
            Domain::parse("bücher.example").unwrap().as_str(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            Domain::parse("BÜCHER.example").unwrap().as_str(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            Domain::parse("xn--bcher-kva.example").unwrap().as_str(),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn refuses_injection_and_junk() {
        let long = format!("{}.example", vec!["a".repeat(63); 4].join("."));
        for bad in [
            "",
            ".",
            "*",
            "*.friend.example",
            "a*.example",
            "friend.example.",
            ".friend.example",
            "friend example",
            "friend.example\nrelay_domains",
            "friend.example\tOK",
            "a\u{0}.example",
            "friend.example OK",
            "friend.example,other.example",
            "friend.example:smtp",
            "user@friend.example",
            "friend.example#",
            "a/b.example",
            "a=b.example",
            "192.0.2.1",
            "[192.0.2.1]",
            "::1",
            "1.2.3.4",
            "0x7f.0x1",
            "10.0xa",
            "ex\u{200B}ample.com",
            "exam\u{00AD}ple.com",
            "a\u{202E}b.example",
            "localhost",
            "com",
            "-a.example",
            "a-.example",
            "a..example",
            "a_b.example",
            &long,
            &format!("{}.example", "a".repeat(64)),
        ] {
            assert!(Domain::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let e = Domain::parse("*.x.example").unwrap_err().to_string();
        assert!(e.contains("wildcard"), "{e}");
        let e = Domain::parse("x.example.").unwrap_err().to_string();
        assert!(e.contains("trailing dot"), "{e}");
        let e = Domain::parse("a b.example").unwrap_err().to_string();
        assert!(e.contains("whitespace"), "{e}");
    }

    #[test]
    fn canonical_parse_refuses_what_parse_would_fix() {
        assert!(Domain::parse_canonical("friend.example").is_ok());
        assert!(matches!(
            Domain::parse_canonical("Friend.example"),
            Err(DomainError::NotCanonical(_))
        ));
        assert!(Domain::parse_canonical("bücher.example").is_err());
    }

    #[test]
    fn next_hops() {
        for (input, shown, postfix) in [
            (
                "mail.friend.example",
                "mail.friend.example",
                "[mail.friend.example]",
            ),
            (
                "Mail.Friend.Example:2525",
                "mail.friend.example:2525",
                "[mail.friend.example]:2525",
            ),
            ("[192.0.2.7]", "[192.0.2.7]", "[192.0.2.7]"),
            ("[192.0.2.7]:25", "[192.0.2.7]:25", "[192.0.2.7]:25"),
            ("[2001:db8::1]:25", "[2001:db8::1]:25", "[2001:db8::1]:25"),
        ] {
            let h = NextHop::parse(input).unwrap();
            assert_eq!(h.to_string(), shown, "{input}");
            assert_eq!(h.postfix_nexthop(), postfix, "{input}");
            assert_eq!(NextHop::parse_canonical(shown).unwrap(), h);
        }
        for bad in [
            "",
            "mail",
            "mail.friend.example:",
            "mail.friend.example:0",
            "mail.friend.example:99999",
            "mail.friend.example:+25",
            "[mail.friend.example]",
            "[192.0.2.7",
            "[192.0.2.7]25",
            "192.0.2.7",
            "mail.friend.example 25",
            "smtp:[mail.friend.example]",
            "*.friend.example",
        ] {
            assert!(NextHop::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn serde_refuses_non_canonical_names() {
        let ok = crate::codec::encode(&"friend.example").unwrap();
        assert!(crate::codec::decode::<Domain>(&ok).is_ok());
        let bad = crate::codec::encode(&"friend.example\nx OK").unwrap();
        assert!(crate::codec::decode::<Domain>(&bad).is_err());
        let upper = crate::codec::encode(&"Friend.example").unwrap();
        assert!(crate::codec::decode::<Domain>(&upper).is_err());
    }

    #[test]
    fn a_next_hop_knows_exactly_how_it_is_written() {
        for text in [
            "mail.example",
            "mail.example:2525",
            "[192.0.2.1]",
            "[2001:db8::1]:25",
        ] {
            let hop = NextHop::parse_canonical(text).unwrap();
            assert!(hop.is_written_as(text), "{text}");
            assert!(!hop.is_written_as(&format!("{text}0")), "{text}0");
            assert!(!hop.is_written_as(&text[..text.len() - 1]), "{text} cut");
            assert!(!hop.is_written_as(""));
        }
        let hop = NextHop::parse("mail.example").unwrap();
        assert!(!hop.is_written_as("Mail.example"));
        assert!(!hop.is_written_as("mail.example:25"));
    }
}
