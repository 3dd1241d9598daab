//! Reading and writing one [`mxfed_proto::codec`] frame on an async stream
//! (a QUIC stream or the control socket).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use mxfed_proto::codec::{self, CodecError, Message, HEADER_LEN};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream failed or ended early.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes were refused by the codec.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Reads one frame of at most `max` bytes and decodes it as `T`.
pub async fn read<T: Message, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).await?;
    // A complete header always yields Some.
    let len = codec::check_frame(&header, max)?.unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(codec::decode_message(&body)?)
}

/// Encodes and writes one frame.
pub async fn write<T: Message, W: AsyncWrite + Unpin>(
    w: &mut W,
    value: &T,
) -> Result<(), FrameError> {
    let bytes = codec::frame(value)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}
