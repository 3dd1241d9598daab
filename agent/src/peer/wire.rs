//! One exchange over a QUIC connection, and the rules for ending one.
//!
//! [`request`] sends one request on a new stream and waits for its answer;
//! [`violation`] sorts a frame error into a protocol violation (with its
//! close code) or plain I/O; [`violated`] closes a connection for a
//! violation, logging it once; [`connect`] dials a peer whose key is
//! pinned. Nothing here keeps state.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use mxfed_proto::codec::CodecError;
use mxfed_proto::msg::{close, PeerInfo, Request, Response, SERVER_NAME};
use mxfed_proto::{name, token, PeerId};

use crate::frames::{self, FrameError};
use crate::identity::Identity;
use crate::net;
use crate::util::{lock, printable};

/// How long a dial attempt to one address may take.
pub(super) const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the answer to a request.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A protocol violation by the remote side, closing its connection.
pub(super) fn violation(err: &FrameError) -> Option<(u32, String)> {
    match err {
        FrameError::Codec(CodecError::TooLarge { .. }) => {
            Some((close::FRAME_TOO_LARGE, err.to_string()))
        }
        FrameError::Codec(CodecError::UnknownType(_)) => {
            Some((close::UNKNOWN_MESSAGE, err.to_string()))
        }
        FrameError::Codec(_) => Some((close::MALFORMED, err.to_string())),
        FrameError::Io(_) => None,
    }
}

/// Closes a connection for a protocol violation, logging it once.
pub(super) fn violated(conn: &quinn::Connection, who: &str, code: u32, why: &str) {
    // Streams of one connection can fail at the same moment; the check and
    // the close must be one step for the violation to be logged once.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = lock(&ONE_AT_A_TIME);
    if conn.close_reason().is_some() {
        return; // already closed, and logged
    }
    tracing::warn!(
        peer = who,
        remote = %conn.remote_address(),
        code,
        "closing connection: {}: {why}",
        close::name(code.into())
    );
    conn.close(code.into(), why.as_bytes());
}

/// Sends one request on a new stream and waits for its answer. An answer
/// that breaks the protocol closes the connection.
pub(super) async fn request(conn: &quinn::Connection, req: &Request) -> Result<Response, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        frames::write(&mut send, req)
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        frames::read::<Response, _>(&mut recv).await.map_err(|e| {
            if let Some((code, why)) = violation(&e) {
                violated(conn, "?", code, &why);
            }
            e.to_string()
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))?
}

/// Dials each address in turn, accepting only the server whose key is `id`.
pub(super) async fn connect(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    id: PeerId,
    addrs: &[SocketAddr],
) -> Result<quinn::Connection, String> {
    let config = net::client_config(identity, id).map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    for addr in addrs {
        let attempt = async {
            endpoint
                .connect_with(config.clone(), *addr, SERVER_NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(DIAL_TIMEOUT, attempt).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!(
                "{addr}: no answer within {}s",
                DIAL_TIMEOUT.as_secs()
            )),
        }
    }
    Err(errors.join("; "))
}

/// Checks the details a peer gives about itself before they are stored.
pub(super) fn check_info(info: &PeerInfo) -> Result<(), String> {
    name::check_agent_name(&info.name).map_err(|e| e.to_string())?;
    name::check_hostname("mail host", &info.mail_host).map_err(|e| e.to_string())?;
    if info.addrs.len() > token::MAX_ADDRS {
        return Err(format!("more than {} addresses", token::MAX_ADDRS));
    }
    if info.agent_version.is_empty()
        || info.agent_version.len() > 64
        || !info.agent_version.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err("agent version must be 1 to 64 printable ASCII characters".into());
    }
    Ok(())
}

/// Whether the peer closed the connection with `code`.
pub(super) fn closed_by_peer_with(e: &quinn::ConnectionError, code: u32) -> bool {
    matches!(e, quinn::ConnectionError::ApplicationClosed(c) if c.error_code.into_inner() == u64::from(code))
}

/// Why a connection ended, for the log.
pub(super) fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => format!(
            "closed by peer: {} ({})",
            close::name(c.error_code.into_inner()),
            printable(&String::from_utf8_lossy(&c.reason))
        ),
        quinn::ConnectionError::LocallyClosed => "closed here".into(),
        quinn::ConnectionError::TimedOut => {
            format!("no traffic for {}s", net::IDLE_TIMEOUT.as_secs())
        }
        other => other.to_string(),
    }
}
