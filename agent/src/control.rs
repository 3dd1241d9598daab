//! The local control socket: the CLI's only way into a running agent.
//!
//! A Unix stream socket, mode 0600, at `control_socket`. Each connection
//! carries one [`ControlRequest`] frame and one [`ControlResponse`] frame.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use mxfed_proto::control::{ControlRequest, ControlResponse};

use crate::frames;
use crate::session::Shared;

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

/// Serves control connections until the listener fails or the task is aborted.
pub(crate) async fn serve(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(Arc::clone(&shared), stream));
            }
            Err(e) => {
                tracing::error!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, mut stream: UnixStream) {
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
        ControlRequest::Status => shared.status().await.map(ControlResponse::Status),
        ControlRequest::Invite { ttl_secs } => shared
            .invite(ttl_secs)
            .await
            .map(|(token, expires_at)| ControlResponse::Invite { token, expires_at }),
        ControlRequest::Join { token } => shared
            .join(&token)
            .await
            .map(|(name, id)| ControlResponse::Joined { name, id }),
        ControlRequest::Unpair { name } => shared
            .unpair(&name)
            .await
            .map(|notified| ControlResponse::Unpaired { notified }),
        ControlRequest::DomainsAdd { domains, next_hop } => shared
            .change_my_domains(&domains, next_hop.as_deref(), &[])
            .await
            .map(ControlResponse::DomainsChanged),
        ControlRequest::DomainsRemove { domains } => shared
            .change_my_domains(&[], None, &domains)
            .await
            .map(ControlResponse::DomainsChanged),
        ControlRequest::DomainsList => Ok(ControlResponse::Domains(shared.my_domains().await)),
        ControlRequest::Apply { dry_run } => Ok(ControlResponse::Applied(
            shared.apply_now("mxfed apply", dry_run).await,
        )),
        ControlRequest::History { limit } => shared
            .history(limit.min(1000))
            .await
            .map(ControlResponse::History),
        ControlRequest::Queue => shared.queue_view().await.map(ControlResponse::Queue),
        ControlRequest::Doctor => Ok(ControlResponse::Doctor(shared.doctor().await)),
        ControlRequest::Flush { peer } => shared
            .request_flush(peer.as_deref())
            .await
            .map(ControlResponse::Flushed),
    };
    let response = response.unwrap_or_else(|message| ControlResponse::Error { message });
    if let Err(e) = frames::write(&mut stream, &response).await {
        tracing::debug!("control reply: {e}");
    }
}
