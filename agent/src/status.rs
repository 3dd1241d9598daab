//! `mxfed status`: the report assembled from the services' handles — the
//! store's peers, each session as [`Peers`](crate::peer::Peers) sees it,
//! each list as the lists service holds it, and held mail from the queue.

use mxfed_proto::control::{PeerStatus, SelfStatus, StatusReport};

use crate::clock::rfc3339;
use crate::services::Services;

/// The status report.
pub(crate) async fn report(s: &Services) -> Result<StatusReport, String> {
    let peers = s.store.peers().await.map_err(|e| e.to_string())?;
    let mut lists = Vec::with_capacity(peers.len());
    let mut tls = Vec::with_capacity(peers.len());
    for p in &peers {
        lists.push(
            s.lists
                .list_status(&p.id)
                .await
                .map_err(|e| e.to_string())?,
        );
        tls.push(s.store.peer_tls(&p.id).await.map_err(|e| e.to_string())?);
    }
    let config = s.config.get();
    let listen = s
        .peers
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| config.listen.to_string());
    let me = SelfStatus {
        name: config.name.clone(),
        id: s.identity.id,
        listen,
        advertise: config.advertise.iter().map(|a| a.to_string()).collect(),
        mail_host: config.mail_host.clone(),
        agent_version: mxfed_proto::VERSION.into(),
        tls_fingerprints: s.recipients.my_tls(),
    };
    let now = s.clock.now_unix();
    let peers = peers
        .into_iter()
        .zip(lists)
        .zip(tls)
        .map(
            |((p, (list_version, list_expires_at, domains, my_list)), tls_fingerprints)| {
                let (held_for_peer, held_by_peer, peer_mta_accepting) =
                    s.queue.held_status(&p.id, &p.name);
                let live = s.peers.session(&p.id);
                PeerStatus {
                    connected: live.is_some(),
                    address: live
                        .as_ref()
                        .map(|l| l.remote.to_string())
                        .or(p.last_address.clone()),
                    addresses: p.addrs.iter().map(|a| a.to_string()).collect(),
                    mail_host: p.mail_host.clone(),
                    connected_since: live.as_ref().map(|l| rfc3339(l.since)),
                    last_seen: if live.is_some() {
                        Some(rfc3339(now))
                    } else {
                        p.last_seen.map(rfc3339)
                    },
                    rtt_ms: live.as_ref().map(|l| l.rtt.as_secs_f64() * 1000.0),
                    bytes_in: live.as_ref().map_or(0, |l| l.bytes_in),
                    bytes_out: live.as_ref().map_or(0, |l| l.bytes_out),
                    agent_version: live
                        .and_then(|l| l.agent_version)
                        .or(p.agent_version.clone()),
                    paired_at: rfc3339(p.paired_at),
                    name: p.name,
                    id: p.id,
                    list_version,
                    list_expires_at,
                    domains,
                    my_list,
                    held_for_peer,
                    held_by_peer,
                    peer_mta_accepting,
                    tls_fingerprints,
                }
            },
        )
        .collect();
    Ok(StatusReport { me, peers })
}
