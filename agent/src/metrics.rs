//! Prometheus metrics at `metrics_listen` (off by default), in the
//! OpenMetrics text format written by the `prometheus-client` crate.
//!
//! A registry is built afresh for each scrape from the agent's state, so
//! there is nothing to keep in step. The HTTP side is deliberately tiny:
//! `GET /metrics` answers, anything else is 404, one request per connection.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::services::Services;

type Labels = Vec<(String, String)>;

fn family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    registry.register(name, help, f.clone());
    f
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The metrics text for one scrape.
async fn render(s: &Services) -> String {
    let mut r = Registry::default();
    let now = s.clock.now_unix();
    let up = family(
        &mut r,
        "mxfed_peer_up",
        "1 while a session with the peer is up",
    );
    let list = family(
        &mut r,
        "mxfed_peer_list_version",
        "Version of the peer's domain list held here (0: none)",
    );
    let held_msgs = family(
        &mut r,
        "mxfed_held_messages",
        "Messages in my queue for the peer's domains",
    );
    let held_bytes = family(
        &mut r,
        "mxfed_held_bytes",
        "Bytes in my queue for the peer's domains",
    );
    let held_age = family(
        &mut r,
        "mxfed_held_oldest_age_seconds",
        "Age of the oldest message in my queue for the peer",
    );
    let dom_msgs = family(
        &mut r,
        "mxfed_held_domain_messages",
        "Messages in my queue per backed-up domain",
    );
    let dom_bytes = family(
        &mut r,
        "mxfed_held_domain_bytes",
        "Bytes in my queue per backed-up domain",
    );
    let dom_age = family(
        &mut r,
        "mxfed_held_domain_oldest_age_seconds",
        "Age of the oldest message per backed-up domain",
    );
    let by_peer = family(
        &mut r,
        "mxfed_held_by_peer_messages",
        "Messages the peer reports holding for me",
    );
    let peers = s.store.peers().await.unwrap_or_default();
    // The last queue scan, with the routes it was made for.
    let last = s.queue.last_scan();
    let held = last
        .as_ref()
        .and_then(|s| s.result.as_ref().ok().map(|r| (s, r)));
    for p in &peers {
        let l = vec![("peer".to_string(), p.name.clone())];
        up.get_or_create(&l)
            .set(i64::from(s.peers.is_connected(&p.id)));
        let v = s.lists.held_version(&p.id).await;
        list.get_or_create(&l).set(v as i64);
        if let Some((scan, (peer_depths, _))) = &held {
            let d = peer_depths.get(&p.name).cloned().unwrap_or_default();
            held_msgs.get_or_create(&l).set(d.messages as i64);
            held_bytes.get_or_create(&l).set(d.bytes as i64);
            held_age
                .get_or_create(&l)
                .set(d.oldest_arrival.map_or(0, |t| (now - t).max(0)));
            for (domain, dd) in scan.domains_of(&p.name) {
                let dl = vec![
                    ("peer".to_string(), p.name.clone()),
                    ("domain".to_string(), domain.to_string()),
                ];
                dom_msgs.get_or_create(&dl).set(dd.messages as i64);
                dom_bytes.get_or_create(&dl).set(dd.bytes as i64);
                dom_age
                    .get_or_create(&dl)
                    .set(dd.oldest_arrival.map_or(0, |t| (now - t).max(0)));
            }
        }
        if let Some(m) = s.queue.held_by_peer_messages(&p.id) {
            by_peer.get_or_create(&l).set(m as i64);
        }
    }
    gauge(
        &mut r,
        "mxfed_queue_readable",
        "1 if the last postqueue -j scan worked (0: depths unknown)",
        i64::from(held.is_some()),
    );
    gauge(
        &mut r,
        "mxfed_my_list_version",
        "Version of my own signed domain list",
        s.lists.my_list_version() as i64,
    );
    let applies = Family::<Labels, Counter>::default();
    r.register(
        "mxfed_applies",
        "Changes to the Postfix maps, by result",
        applies.clone(),
    );
    let counts = s.relay.counts();
    for (result, n) in [("applied", counts.applied), ("failed", counts.failed)] {
        applies
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc_by(n);
    }
    gauge(
        &mut r,
        "mxfed_last_sync_timestamp_seconds",
        "Unix time of the last successful change to the Postfix maps (0: none since start)",
        counts.last_ok,
    );
    let mut out = String::new();
    if encode(&mut out, &r).is_err() {
        out = "# encoding failed\n".into();
    }
    out
}

/// Scrapes served at once; more wait in the kernel's accept queue.
const MAX_SCRAPES: usize = 4;

/// Serves `GET /metrics` until `cancel`.
pub(crate) async fn serve(services: Services, listener: TcpListener, cancel: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p,
            _ = cancel.cancelled() => return,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = cancel.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let services = services.clone();
        tokio::spawn(async move {
            // A client that does not read cannot hold a slot for long.
            let _ = tokio::time::timeout(Duration::from_secs(10), handle(&services, stream)).await;
            drop(permit);
        });
    }
}

async fn handle(services: &Services, mut stream: TcpStream) {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let read = async {
        while len < buf.len() {
            let n = stream.read(&mut buf[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Some(())
    };
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let first = head.lines().next().unwrap_or("");
    let (status, body) = if first.starts_with("GET /metrics ") || first == "GET /metrics" {
        ("200 OK", render(services).await)
    } else {
        ("404 Not Found", "not found; try /metrics\n".to_string())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}
