//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): each feeds
//! outside input to the agent's own decoder of it, as the agent would.
//! Not an API; hidden from the docs.

use std::path::Path;

/// Policy-service requests, as a Postfix (or anything that can reach the
/// socket) would send them on one connection: read within the bounds,
/// and each recipient's domain keyed as the maps are.
pub fn policy_requests(bytes: &[u8]) {
    static RT: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok()
    });
    let Some(rt) = rt else {
        return;
    };
    rt.block_on(async {
        let mut lines = tokio::io::AsyncReadExt::take(bytes, u64::MAX);
        while let Ok(Some(attrs)) = crate::policy::read_request(&mut lines).await {
            if let Some(r) = attrs.get("recipient") {
                let _ = crate::mailq::domain_of(r);
            }
        }
    });
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
