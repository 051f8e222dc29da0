//! Length-prefixed frames: a big-endian `u32` length, then that many bytes of postcard.
//!
//! The length is checked against [`MAX_FRAME_LEN`] before anything is allocated, and a frame
//! whose bytes do not decode to exactly one value (trailing bytes included) is an error, so a
//! hostile sender can neither make us buffer without bound nor smuggle data past the decoder.

use crate::defaults::MAX_FRAME_LEN;
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced length is over the cap.
    #[error("frame of {len} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    TooLarge {
        /// The announced length.
        len: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// The frame decoded but bytes were left over.
    #[error("malformed frame: {0} trailing bytes")]
    Trailing(usize),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The transport failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// True when the remote sent bytes that break the protocol, as opposed to the stream or
    /// connection ending. Only violations deserve closing the connection with an error code.
    pub fn is_violation(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge { .. } | FrameError::Malformed(_) | FrameError::Trailing(_)
        )
    }

    /// The QUIC error code to close a stream with when this error comes from the remote side.
    pub fn code(&self) -> u32 {
        match self {
            FrameError::TooLarge { .. } => crate::wire::codes::TOO_LARGE,
            _ => crate::wire::codes::PROTOCOL,
        }
    }
}

/// Encodes `value` as one frame, length prefix included.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = postcard::to_extend(value, vec![0u8; 4])?;
    let len = buf.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decodes one value from exactly `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing(rest.len()));
    }
    Ok(value)
}

/// Writes one frame.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    w: &mut W,
    value: &T,
) -> Result<(), FrameError> {
    w.write_all(&encode(value)?).await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1]).await? {
        0 => return Ok(None),
        _ => read_exact(r, &mut len[1..]).await?,
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    let mut buf = vec![0u8; len];
    read_exact(r, &mut buf).await?;
    decode(&buf).map(Some)
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PeerFrame;

    #[tokio::test]
    async fn round_trip() {
        let frame = PeerFrame::Ack(crate::wire::MessageId([1; 16]));
        let bytes = encode(&frame).expect("encode");
        let mut r = &bytes[..];
        assert_eq!(
            read_frame::<PeerFrame, _>(&mut r).await.expect("read"),
            Some(frame)
        );
        assert!(read_frame::<PeerFrame, _>(&mut r)
            .await
            .expect("eof")
            .is_none());
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocating() {
        let bytes = u32::MAX.to_be_bytes();
        let mut r = &bytes[..];
        let err = read_frame::<PeerFrame, _>(&mut r)
            .await
            .expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { len } if len == u32::MAX as usize));
    }

    #[tokio::test]
    async fn malformed_truncated_and_trailing_are_errors() {
        let mut r: &[u8] = &[0, 0, 0, 2, 9, 9];
        assert!(matches!(
            read_frame::<PeerFrame, _>(&mut r).await,
            Err(FrameError::Malformed(_))
        ));
        let mut r: &[u8] = &[0, 0, 0, 17, 1, 2];
        assert!(matches!(
            read_frame::<PeerFrame, _>(&mut r).await,
            Err(FrameError::Truncated)
        ));
        let mut good = encode(&PeerFrame::Ack(crate::wire::MessageId([1; 16]))).expect("encode");
        good.push(0);
        let len = (good.len() - 4) as u32;
        good[..4].copy_from_slice(&len.to_be_bytes());
        let mut r = &good[..];
        assert!(matches!(
            read_frame::<PeerFrame, _>(&mut r).await,
            Err(FrameError::Trailing(1))
        ));
    }
}
