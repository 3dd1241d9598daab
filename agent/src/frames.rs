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

/// Reads one frame (at most `T::MAX` bytes) and decodes it as `T`.
pub async fn read<T: Message, R: AsyncRead + Unpin>(r: &mut R) -> Result<T, FrameError> {
    read_limited(r, T::MAX).await
}

/// Reads one frame of at most `max` bytes (and never more than `T::MAX`).
///
/// A stream that ends inside a frame is malformed, not a plain I/O error:
/// the sender announced bytes it did not send.
pub async fn read_limited<T: Message, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).await?;
    // A complete header always yields Some.
    let len = codec::check_frame(&header, max.min(T::MAX))?.unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Codec(CodecError::Malformed(format!(
            "stream ended inside a frame of {len} bytes"
        ))),
        _ => FrameError::Io(e),
    })?;
    Ok(codec::decode_message(&body)?)
}

/// Encodes and writes one frame.
pub async fn write<T: Message, W: AsyncWrite + Unpin>(
    w: &mut W,
    value: &T,
) -> Result<(), FrameError> {
    let bytes = codec::frame_message(value)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}
