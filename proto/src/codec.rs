//! Framing and (de)serialisation: the only module that calls bincode.
//!
//! Keeping every encode and decode call here means that swapping the format
//! (bincode 2 is unmaintained, RUSTSEC-2025-0141) touches one file.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! bincode. Decoding is two steps, as in mini-redis: [`check_frame`] looks at
//! the length only (and says "not enough bytes yet" without error), then
//! [`decode`] decodes with a size limit and rejects trailing bytes.

use serde::{de::DeserializeOwned, Serialize};

/// Largest frame payload on the peer protocol (and for control requests), in bytes.
pub const MAX_FRAME: usize = 1 << 20;

/// Largest control-socket answer (a status report with 100,000 domains),
/// in bytes. Only the local agent sends these, to its own CLI.
pub const MAX_CONTROL_FRAME: usize = 256 << 20;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

fn control_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_CONTROL_FRAME>()
}

/// A message type that travels in frames.
///
/// `VARIANTS` is the number of variants of the message enum. bincode writes
/// the variant index first, as a single byte for indices below 251, so
/// [`decode_message`] can tell an unknown message type from a malformed one.
pub trait Message: Serialize + DeserializeOwned {
    /// Number of variants of this enum.
    const VARIANTS: u8;
    /// Largest frame of this type, in bytes: [`MAX_FRAME`] unless the type
    /// only ever comes from the local agent.
    const MAX: usize = MAX_FRAME;
}

/// Why bytes could not be turned into a value, or a value into bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The length prefix announces more than [`MAX_FRAME`] bytes.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The first byte names a message type this version does not know.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The bytes are not a valid encoding of the expected type.
    #[error("message does not decode: {0}")]
    Malformed(String),
    /// The value decoded but bytes were left over.
    #[error("message has {0} trailing bytes")]
    Trailing(usize),
    /// The value could not be encoded (it is too large, most likely).
    #[error("message does not encode: {0}")]
    Encode(String),
}

/// Encodes a value (no frame header).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > MAX_FRAME {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME,
        });
    }
    Ok(bytes)
}

/// Decodes a value that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with(bytes, MAX_FRAME, config())
}

/// Decodes with `config`, whose limit must be `max`: length first, then the
/// bounded decode, then no trailing bytes.
fn decode_with<T: DeserializeOwned>(
    bytes: &[u8],
    max: usize,
    config: impl bincode::config::Config,
) -> Result<T, CodecError> {
    if bytes.len() > max {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Decodes a message enum, reporting an unknown variant as
/// [`CodecError::UnknownType`], within the type's own size limit.
pub fn decode_message<T: Message>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.first() {
        None => Err(CodecError::Malformed("empty message".into())),
        Some(&tag) if tag >= T::VARIANTS => Err(CodecError::UnknownType(tag)),
        Some(_) if T::MAX <= MAX_FRAME => decode(bytes),
        Some(_) => decode_with(bytes, MAX_CONTROL_FRAME, control_config()),
    }
}

/// Encodes a message with its frame header, within the type's size limit.
pub fn frame_message<T: Message>(value: &T) -> Result<Vec<u8>, CodecError> {
    if T::MAX <= MAX_FRAME {
        return frame(value);
    }
    let body = bincode::serde::encode_to_vec(value, control_config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    with_header(body, MAX_CONTROL_FRAME)
}

fn with_header(body: Vec<u8>, max: usize) -> Result<Vec<u8>, CodecError> {
    if body.len() > max {
        return Err(CodecError::TooLarge {
            len: body.len(),
            max,
        });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    // `max` is at most MAX_CONTROL_FRAME, which fits in a u32.
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Encodes a value with its frame header.
pub fn frame<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    with_header(encode(value)?, MAX_FRAME)
}

/// Reads the frame header at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(len))` with the
/// payload length when the header is complete, and an error when the
/// announced length is over `max` (which is itself capped at [`MAX_CONTROL_FRAME`]).
pub fn check_frame(buf: &[u8], max: usize) -> Result<Option<usize>, CodecError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut len = [0u8; HEADER_LEN];
    len.copy_from_slice(header);
    let len = u32::from_be_bytes(len) as usize;
    let max = max.min(MAX_CONTROL_FRAME);
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Two {
        A(u32),
        B(String),
    }
    impl Message for Two {
        const VARIANTS: u8 = 2;
    }

    #[test]
    fn round_trip_through_a_frame() {
        let f = frame(&Two::B("hello".into())).unwrap();
        let len = check_frame(&f, MAX_FRAME).unwrap().unwrap();
        assert_eq!(len, f.len() - HEADER_LEN);
        let v: Two = decode_message(&f[HEADER_LEN..]).unwrap();
        assert_eq!(v, Two::B("hello".into()));
    }

    #[test]
    fn short_header_needs_more_bytes() {
        assert!(check_frame(&[0, 0, 1], MAX_FRAME).unwrap().is_none());
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let err = check_frame(&[0x7f, 0xff, 0xff, 0xff], MAX_FRAME).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
        let err = check_frame(&[0, 0, 1, 0], 100).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { len: 256, max: 100 }));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut b = encode(&Two::A(7)).unwrap();
        b.push(0);
        assert!(matches!(
            decode_message::<Two>(&b),
            Err(CodecError::Trailing(1))
        ));
    }

    #[test]
    fn unknown_variant_is_named_as_such() {
        assert!(matches!(
            decode_message::<Two>(&[9, 1, 2]),
            Err(CodecError::UnknownType(9))
        ));
    }

    #[test]
    fn huge_length_inside_message_hits_the_limit_instead_of_allocating() {
        // Variant B, then a string length of 2^60 as a bincode varint
        // (253 = "u64 follows", little-endian). Without `with_limit` this
        // would try to allocate an exabyte.
        let mut bytes = vec![1u8, 253];
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        match decode_message::<Two>(&bytes) {
            Err(CodecError::Malformed(m)) => assert!(m.contains("LimitExceeded"), "{m}"),
            other => panic!("expected the limit to refuse it, got {other:?}"),
        }
    }
}
