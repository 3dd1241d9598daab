//! [`Services`]: the running agent's services, composed in one place.
//!
//! `lib.rs` builds each service and hands this bundle of handles to the
//! readers (control, status, metrics, doctor). Its [`Inbound`] impl is the
//! one routing table for requests from peers: each request goes to the
//! service it is for, so no service needs to know the session code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mxfed_proto::msg::{Request, Response};

use crate::clock::Clock;
use crate::config::Shared;
use crate::dns::Dns;
use crate::identity::Identity;
use crate::lists::Lists;
use crate::peer::{Caller, Inbound, Pairing, Peers, Responder};
use crate::postfix::Postfix;
use crate::queue::Queue;
use crate::recipients::Recipients;
use crate::relay::Relay;
use crate::store::Store;

/// Handles to every service, and the shared read-only pieces.
#[derive(Clone)]
pub(crate) struct Services {
    pub config: Arc<Shared>,
    pub identity: Arc<Identity>,
    pub store: Store,
    pub clock: Clock,
    pub dns: Dns,
    /// `None`: no main.cf in the config dir; Postfix integration is off.
    pub postfix: Option<Postfix>,
    pub peers: Peers,
    pub pairing: Pairing,
    pub lists: Lists,
    pub recipients: Recipients,
    pub relay: Relay,
    pub queue: Queue,
}

/// The requests from peers that other services answer, routed.
pub(crate) struct Router {
    pub lists: Lists,
    pub recipients: Recipients,
    pub queue: Queue,
}

impl Inbound for Router {
    fn handle<'a>(
        &'a self,
        from: &'a Caller,
        request: Request,
        reply: &'a mut Responder,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let response = match request {
                Request::ListOffer { version } => {
                    self.lists.offered(from.id, version);
                    Response::Done
                }
                Request::FetchList { have } => {
                    return self.lists.serve_fetch(from, have, false, reply).await
                }
                Request::FetchChanges { have } => {
                    return self.lists.serve_fetch(from, have, true, reply).await
                }
                Request::RecipientOffer { version } => {
                    self.recipients.offered(from.id, version);
                    Response::Done
                }
                Request::FetchRecipients { have } => {
                    return self.recipients.serve_fetch(from, have, reply).await
                }
                Request::ListAck(ack) => self.lists.receive_ack(from, ack).await,
                Request::QueueReport(report) => self.queue.receive_report(from, report),
                Request::Flush => self.queue.flush_requested(from).await,
                // The session answers these itself and never hands them on.
                Request::Hello(_) | Request::Ping(_) | Request::Unpair | Request::Join { .. } => {
                    Response::Refused {
                        message: "not routed".into(),
                    }
                }
            };
            if let Err(e) = reply.send(&response).await {
                tracing::debug!(peer = %from.name, "reply: {e}");
            }
        })
    }
}
