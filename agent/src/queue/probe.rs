//! Whether a friend's mail server takes mail: its next hops, at the
//! addresses they were checked at (the ones Postfix relays to; a name is
//! never resolved again here), are tried side by side, and one that sends
//! an SMTP `220` greeting within [`PROBE_TIMEOUT`] answers. A probe says
//! `QUIT` after a complete greeting, so the friend's log shows a clean
//! `disconnect ... quit=1`; after postscreen's `220-` teaser it sends
//! nothing and hangs up (anything sent there would be a pregreet).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a probe of a next hop's SMTP port may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Addresses tried per probe.
const MAX_TRIES: usize = 20;
/// The most greeting bytes read.
const MAX_GREETING: usize = 4096;

/// True if one of `targets` (the first few) greets with `220`.
pub(crate) async fn any_answers(targets: &[SocketAddr]) -> bool {
    let mut tries = tokio::task::JoinSet::new();
    for target in targets.iter().take(MAX_TRIES).copied() {
        tries.spawn(async move {
            tokio::time::timeout(PROBE_TIMEOUT, greets(target))
                .await
                .unwrap_or(false)
        });
    }
    while let Some(done) = tries.join_next().await {
        if done.unwrap_or(false) {
            return true; // the others are aborted with the set
        }
    }
    false
}

/// Connects to `target` and reads its greeting: `220` is a server that
/// takes mail (a `421` or `554` greeting is one that does not).
async fn greets(target: SocketAddr) -> bool {
    let Ok(mut conn) = tokio::net::TcpStream::connect(target).await else {
        return false;
    };
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let Ok(n) = conn.read(&mut chunk).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= 4 && !buf.starts_with(b"220") {
            return false;
        }
        // The last complete line: `220 ` ends the greeting; `220-` is a
        // line of more (postscreen sends one and waits before the rest).
        if let Some(end) = buf.iter().rposition(|b| *b == b'\n') {
            let line_start = buf[..end]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let line = &buf[line_start..end];
            if line.starts_with(b"220 ") || line == b"220\r" || line == b"220" {
                let _ = conn.write_all(b"QUIT\r\n").await;
                return true;
            }
            if line.starts_with(b"220-") {
                return true;
            }
        }
        if buf.len() > MAX_GREETING {
            return false;
        }
    }
}

/// The SMTP addresses of next hops checked at `addrs` with `port` (25 if
/// none), each once.
pub(crate) fn targets<'a>(
    hops: impl Iterator<Item = (&'a [IpAddr], Option<u16>)>,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for (addrs, port) in hops {
        for ip in addrs {
            let t = SocketAddr::new(*ip, port.unwrap_or(25));
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves one connection: writes `greeting`, then records what the
    /// probe says.
    async fn server(greeting: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            c.write_all(greeting).await.unwrap();
            let mut said = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut said)).await;
            said
        });
        (addr, h)
    }

    #[tokio::test]
    async fn a_220_greeting_answers_and_gets_quit() {
        let (a, h) = server(b"220 mail.example ESMTP Postfix\r\n").await;
        assert!(any_answers(&[a]).await);
        assert_eq!(h.await.unwrap(), b"QUIT\r\n");
    }

    #[tokio::test]
    async fn a_postscreen_teaser_answers_and_gets_nothing() {
        let (a, h) = server(b"220-mail.example ESMTP Postfix\r\n").await;
        assert!(any_answers(&[a]).await);
        assert!(h.await.unwrap().is_empty(), "no pregreet");
    }

    #[tokio::test]
    async fn a_refusing_greeting_or_silence_does_not_answer() {
        let (a, _h) = server(b"421 mail.example Service not available\r\n").await;
        assert!(!any_answers(&[a]).await);
        // Accepts TCP but never greets; and a closed port.
        let (silent, _h) = server(b"").await;
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        assert!(!any_answers(&[silent, closed]).await);
        // One of several is enough.
        let (good, _h) = server(b"220 ok\r\n").await;
        assert!(any_answers(&[closed, good]).await);
    }
}
