//! Fetching a friend's list: [`fetch`] asks for what is newer than the
//! version held, reads the header and chunks into a
//! [`mxfed_proto::list::ListReceiver`] (signer, version, expiry, bounds,
//! canonical names, signature) and returns the list only once `finish`
//! has verified it. Asked for changes, a friend may send only those: a
//! [`mxfed_proto::list::ChangesReceiver`] checks them alike, applies them
//! to the entries held and verifies the signature over the whole result.
//! A frame that breaks the protocol closes the connection.

use std::time::Duration;

use mxfed_proto::list::{
    ChangedList, ChangesReceiver, DomainList, EncodedEntries, ListError, ListReceiver,
};
use mxfed_proto::msg::{Request, Response};
use mxfed_proto::PeerId;

use crate::frames::FrameError;
use crate::peer::{Peers, SendError};
use crate::store::Store;

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

/// A verified list: whole, or as the changes from the one held.
pub(super) enum Received {
    Whole(DomainList),
    Changes(ChangedList),
}

/// What a fetch came to.
pub(super) enum Fetched {
    /// A verified list and its signature.
    List(Received, Vec<u8>),
    /// The sender sent it moments ago and asks to wait: try again after this.
    Later(Duration),
    /// The changes sent did not make the signed list from the one held:
    /// fetch the whole list.
    Whole,
    /// Nothing (logged; the connection closed if the peer broke the protocol).
    Nothing,
}

/// How long a whole list transfer may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long to wait for each frame of a list transfer.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a fetch ended without a new list.
enum FetchError {
    /// The changes sent could not be applied to the list held here.
    NotApplied(String),
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

/// Fetches `peer`'s list if it is newer than `held` (0: none); with
/// `changes`, asks for only the changes since `held` (the peer must
/// understand [`Request::FetchChanges`]), which are applied to the entries
/// `store` holds for it.
pub(super) async fn fetch(
    peers: &Peers,
    store: &Store,
    peer: PeerId,
    name: &str,
    (held, changes): (u64, bool),
    now: u64,
) -> Fetched {
    let mut opened = None;
    let mut as_changes = false;
    let transfer = async {
        let asked_changes = changes && held > 0;
        let request = match asked_changes {
            true => Request::FetchChanges { have: held },
            false => Request::FetchList { have: held },
        };
        let rx = opened.insert(peers.open(&peer, &request).await?);
        let header = match read_response(rx).await? {
            Response::ListHeader(h) => h,
            Response::ChangesHeader(h) if asked_changes => {
                as_changes = true;
                let mut list = ChangesReceiver::start(h, peer, held, now)?;
                let signature = list.header().list.signature.clone();
                while !list.is_complete() {
                    match read_response(rx).await? {
                        Response::ListChanges(chunk) => list.push(chunk)?,
                        other => return Err(FetchError::Unexpected(format!("{other:?}"))),
                    }
                }
                let held_entries = match held_entries(store, &peer, held).await {
                    Ok(entries) => entries,
                    // Not the list the changes apply to: the whole one will do.
                    Err(why) => return Err(FetchError::NotApplied(why)),
                };
                let list = list.finish_encoded(&held_entries)?;
                return Ok((Received::Changes(list), signature));
            }
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
        Ok((Received::Whole(list.finish()?), signature))
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
        Err(FetchError::List(e @ (ListError::BadSignature | ListError::Malformed(_))))
            if as_changes =>
        {
            // A friend whose list here is not the one it thinks (or a bug):
            // the whole list settles it, and is checked as always.
            tracing::info!(peer = %name, "the changes to its domain list did not apply to version {held} held here ({e}); fetching the whole list");
            return Fetched::Whole;
        }
        Err(FetchError::NotApplied(why)) => {
            tracing::info!(peer = %name, "cannot apply the changes to its domain list ({why}); fetching the whole list");
            return Fetched::Whole;
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

/// The entries held for `peer`, as signed, if they are version `held`.
/// (Fetches of one peer's list run one at a time, and the result is
/// checked against the signature whatever happens in between.)
async fn held_entries(store: &Store, peer: &PeerId, held: u64) -> Result<EncodedEntries, String> {
    match store.peer_list_entries(peer).await {
        Err(e) => Err(e.to_string()),
        Ok(Some((version, entries))) if version == held => Ok(entries),
        Ok(Some((version, _))) => Err(format!(
            "the list held changed during the fetch (version {version}, not {held})"
        )),
        Ok(None) => Err(format!(
            "version {held} is held without its entries as signed (stored by an older mxfed, or not whole)"
        )),
    }
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
