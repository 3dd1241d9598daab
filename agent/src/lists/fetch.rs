//! Fetching a friend's list: [`fetch`] asks for what is newer than the
//! version held, reads the header and chunks into a
//! [`mxfed_proto::list::ListReceiver`] (signer, version, expiry, bounds,
//! canonical names, signature) and returns the list only once `finish`
//! has verified it. A frame that breaks the protocol closes the connection.

use std::time::Duration;

use mxfed_proto::list::{DomainList, ListError, ListReceiver};
use mxfed_proto::msg::{Request, Response};
use mxfed_proto::PeerId;

use crate::frames::FrameError;
use crate::peer::{Peers, SendError};

/// Least time between two transfers of the same version of a list to one
/// friend; the sender refuses a repeat sooner with [`too_soon`]'s words.
pub(super) const SERVE_GAP: Duration = Duration::from_secs(5);

/// The refusal for a repeat within [`SERVE_GAP`].
pub(super) fn too_soon(version: u64) -> String {
    format!(
        "version {version} was sent less than {}s ago",
        SERVE_GAP.as_secs()
    )
}

/// What a fetch came to.
pub(super) enum Fetched {
    /// A verified list and its signature.
    List(DomainList, Vec<u8>),
    /// The sender sent it moments ago and asks to wait: try again after this.
    Later(Duration),
    /// Nothing (logged; the connection closed if the peer broke the protocol).
    Nothing,
}

/// How long a whole list transfer may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long to wait for each frame of a list transfer.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a fetch ended without a new list.
enum FetchError {
    Io(String),
    Frame(FrameError),
    List(ListError),
    Nothing(String),
    Unexpected(String),
}

impl From<FrameError> for FetchError {
    fn from(e: FrameError) -> Self {
        FetchError::Frame(e)
    }
}

impl From<ListError> for FetchError {
    fn from(e: ListError) -> Self {
        FetchError::List(e)
    }
}

impl From<SendError> for FetchError {
    fn from(e: SendError) -> Self {
        FetchError::Io(e.to_string())
    }
}

/// Fetches `peer`'s list if it is newer than `held` (0: none).
pub(super) async fn fetch(peers: &Peers, peer: PeerId, name: &str, held: u64, now: u64) -> Fetched {
    let mut opened = None;
    let transfer = async {
        let rx = opened.insert(
            peers
                .open(&peer, &Request::FetchList { have: held })
                .await?,
        );
        let header = match read_response(rx).await? {
            Response::ListHeader(h) => h,
            Response::Refused { message } => return Err(FetchError::Nothing(message)),
            other => return Err(FetchError::Unexpected(format!("{other:?}"))),
        };
        let held = (held > 0).then_some(held);
        let mut list = ListReceiver::start(header, peer, held, now)?;
        let signature = list.header().signature.clone();
        while !list.is_complete() {
            match read_response(rx).await? {
                Response::ListChunk(chunk) => list.push(chunk)?,
                other => return Err(FetchError::Unexpected(format!("{other:?}"))),
            }
        }
        Ok((list.finish()?, signature))
    };
    let result = match tokio::time::timeout(TRANSFER_TIMEOUT, transfer).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Io(format!(
            "transfer not finished within {}s",
            TRANSFER_TIMEOUT.as_secs()
        ))),
    };
    match result {
        Ok((list, signature)) => return Fetched::List(list, signature),
        Err(FetchError::Nothing(m)) if m.contains("was sent less than") => {
            tracing::debug!(peer = %name, "list fetch: {m}; trying again later");
            return Fetched::Later(SERVE_GAP);
        }
        Err(FetchError::List(e)) => {
            tracing::warn!(peer = %name, "refused domain list: {e}; the list held before stays in force");
        }
        Err(FetchError::Frame(e)) => {
            let closed = opened
                .as_ref()
                .is_some_and(|rx| rx.close_if_violation(name, &e));
            if !closed {
                tracing::debug!(peer = %name, "list fetch: {e}");
            }
        }
        Err(FetchError::Unexpected(what)) => {
            if let Some(rx) = &opened {
                rx.close_unexpected(name, &format!("answered a list fetch with {what}"));
            }
        }
        Err(FetchError::Nothing(m)) => tracing::debug!(peer = %name, "list fetch: {m}"),
        Err(FetchError::Io(e)) => tracing::debug!(peer = %name, "list fetch: {e}"),
    }
    Fetched::Nothing
}

async fn read_response(rx: &mut crate::peer::Responses) -> Result<Response, FetchError> {
    match tokio::time::timeout(FRAME_TIMEOUT, rx.next()).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(FetchError::Io(format!(
            "no data within {}s",
            FRAME_TIMEOUT.as_secs()
        ))),
    }
}
