//! The control-socket client: one request, one response.

use std::io::ErrorKind;

use tokio::net::UnixStream;

use mxfed_agent::config::Config;
use mxfed_agent::{frames, EX_UNAVAILABLE};
use mxfed_proto::control::{ControlRequest, ControlResponse};

use crate::Failure;

/// Sends `req` to the running agent; an agent-side error becomes a [`Failure`].
pub async fn call(config: &Config, req: &ControlRequest) -> Result<ControlResponse, Failure> {
    let path = &config.control_socket;
    let mut stream = UnixStream::connect(path).await.map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => Failure {
            code: EX_UNAVAILABLE as u8,
            message: format!(
                "no agent is running (nothing answers on control socket {}); start it with `mxfed agent` or `systemctl start mxfed`",
                path.display()
            ),
        },
        ErrorKind::PermissionDenied => Failure {
            code: EX_UNAVAILABLE as u8,
            message: format!(
                "permission denied on control socket {}; run as the agent's user or root",
                path.display()
            ),
        },
        _ => Failure {
            code: EX_UNAVAILABLE as u8,
            message: format!("cannot reach the agent on control socket {}: {e}", path.display()),
        },
    })?;
    let broken = |e: frames::FrameError| Failure {
        code: 1,
        message: format!("control socket {}: {e}", path.display()),
    };
    frames::write(&mut stream, req).await.map_err(broken)?;
    match frames::read::<ControlResponse, _>(&mut stream)
        .await
        .map_err(broken)?
    {
        ControlResponse::Error { message } => Err(Failure { code: 1, message }),
        other => Ok(other),
    }
}

/// A response of the wrong kind: a CLI and agent of different versions.
pub fn unexpected(resp: ControlResponse) -> Failure {
    Failure {
        code: 1,
        message: format!("unexpected answer from the agent (version mismatch?): {resp:?}"),
    }
}
