//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): each feeds
//! outside input to the agent's own decoder of it, as the agent would.
//! Not an API; hidden from the docs.

use std::path::Path;

/// Policy-service requests, as a Postfix (or anything that can reach the
/// socket) would send them on one connection: read within the bounds,
/// and each recipient's domain keyed as the maps are.
pub fn policy_requests(bytes: &[u8]) {
    // As `read_request` reads a connection: up to a `\n`, or up to the
    // room left in the request; a new request after each one ends; the
    // connection closed at the first error.
    let mut request = crate::policy::Request::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        let room = usize::try_from(request.room()).unwrap_or(usize::MAX);
        let window = &rest[..rest.len().min(room)];
        let end = window
            .iter()
            .position(|b| *b == b'\n')
            .map_or(window.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        match request.line(line) {
            Ok(Some(attrs)) => {
                if let Some(r) = attrs.get("recipient") {
                    let _ = crate::mailq::domain_of(r);
                }
                request = crate::policy::Request::default();
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
}

/// `postqueue -j` output, line by line, tallied for two friends.
pub fn postqueue_lines(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let mut tally = crate::mailq::PeerTally::new([
        ("alpha".to_string(), "a.example".to_string()),
        ("bravo".to_string(), "b.example".to_string()),
    ]);
    for line in text.lines() {
        tally.add_line(line);
    }
}

/// A config file's text.
pub fn config(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = crate::config::Config::parse(text, Path::new("fuzz.toml"));
    }
}

/// A `mynetworks` value, with pattern files that do not exist.
pub fn mynetworks(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let nets =
        crate::policy::parse_networks(&text, &|p| Err(std::io::Error::other(p.to_string())), 0);
    if let Ok(nets) = nets {
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
        let _ = crate::policy::in_networks(&nets, ip);
    }
}
