//! The local control socket: the CLI's only way into a running agent.
//!
//! A Unix stream socket, mode 0600, at `control_socket`. Each connection
//! carries one [`ControlRequest`] frame and one [`ControlResponse`] frame.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use mxfed_proto::control::{ControlRequest, ControlResponse};
use mxfed_proto::domain::Domain;

use crate::frames;
use crate::services::Services;
use crate::{doctor, status};

/// The control socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Another agent answers on the socket.
    #[error("another agent is already running on control socket {0}")]
    AlreadyRunning(PathBuf),
    /// Creating, binding or securing the socket failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Binds the socket, replacing a stale one, and makes it owner-only.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io {
        path: path.into(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; refusing to replace it",
            )));
        }
        // Remove only a stale socket: one nobody listens on.
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ControlError::AlreadyRunning(path.into())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(io)?
            }
            Err(e) => return Err(io(e)),
        }
    }
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves control connections until `cancel`; then waits for the requests
/// in progress (an `mxfed apply` among them runs to its end).
pub(crate) async fn serve(services: Services, listener: UnixListener, cancel: CancellationToken) {
    let mut requests = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = requests.join_next(), if !requests.is_empty() => continue,
            _ = cancel.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let services = services.clone();
                requests.spawn(async move { handle(&services, stream).await });
            }
            Err(e) => {
                tracing::error!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // New clients are refused at once ("no agent is running"); those
    // already in get their answers.
    drop(listener);
    while requests.join_next().await.is_some() {}
}

async fn handle(s: &Services, mut stream: UnixStream) {
    let req = match tokio::time::timeout(
        Duration::from_secs(10),
        frames::read::<ControlRequest, _>(&mut stream),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let _ = frames::write(
                &mut stream,
                &ControlResponse::Error {
                    message: format!("bad control request: {e}"),
                },
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let response = match req {
        ControlRequest::Status => status::report(s).await.map(ControlResponse::Status),
        ControlRequest::Invite { ttl_secs } => s
            .pairing
            .invite(ttl_secs)
            .await
            .map(|(token, expires_at)| ControlResponse::Invite { token, expires_at }),
        ControlRequest::Join { token } => s
            .pairing
            .join(&token)
            .await
            .map(|(name, id)| ControlResponse::Joined { name, id }),
        ControlRequest::Unpair { name } => s
            .pairing
            .unpair(&name)
            .await
            .map(|notified| ControlResponse::Unpaired { notified }),
        ControlRequest::DomainsAdd { domains, next_hop } => s
            .lists
            .change_my_domains(domains, next_hop.as_deref(), Vec::new())
            .await
            .map(ControlResponse::DomainsChanged),
        ControlRequest::DomainsRemove { domains } => s
            .lists
            .change_my_domains(Vec::new(), None, domains)
            .await
            .map(ControlResponse::DomainsChanged),
        ControlRequest::DomainsList => {
            let mut mine = s.lists.my_domains().await;
            let counts = s.recipients.my_counts().await;
            let unlisted = s.recipients.my_unlisted();
            let read = s.recipients.my_version() > 0;
            for d in &mut mine.domains {
                d.recipients = counts.get(&d.domain).copied();
                if d.recipients.is_none() {
                    d.recipients_reason = Some(
                        Domain::parse_canonical(&d.domain)
                            .ok()
                            .and_then(|dom| unlisted.get(&dom).map(str::to_string))
                            .unwrap_or_else(|| match read {
                                true => "no recipients read for it yet".into(),
                                false => "my recipients have not been read yet".into(),
                            }),
                    );
                }
            }
            Ok(ControlResponse::Domains(mine))
        }
        ControlRequest::Apply { dry_run } => Ok(ControlResponse::Applied(
            s.relay.apply_now("mxfed apply", dry_run).await,
        )),
        ControlRequest::History { limit } => s
            .relay
            .history(limit.min(1000))
            .await
            .map(ControlResponse::History),
        ControlRequest::Queue => Ok(ControlResponse::Queue(s.queue.view().await)),
        ControlRequest::Doctor => Ok(ControlResponse::Doctor(doctor::report(s).await)),
        ControlRequest::Flush { peer } => s
            .queue
            .request_flush(peer.as_deref())
            .await
            .map(ControlResponse::Flushed),
    };
    let response = response.unwrap_or_else(|message| ControlResponse::Error { message });
    if let Err(e) = frames::write(&mut stream, &response).await {
        tracing::debug!("control reply: {e}");
    }
}
