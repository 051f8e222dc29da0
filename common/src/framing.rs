//! Length-prefixed frames: a big-endian `u32` length, then that many bytes of postcard.
//!
//! The length is checked against [`MAX_FRAME_LEN`] before anything is allocated, and a frame
//! whose bytes do not decode to exactly one value (trailing bytes included) is an error, so a
//! hostile sender can neither make us buffer without bound nor smuggle data past the decoder.

use crate::defaults::MAX_FRAME_LEN;
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;
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
    /// A frame began but did not end in time.
    #[error("a frame did not arrive whole within {0:?}")]
    TimedOut(Duration),
    /// The transport failed. Transparent: an `io::Error` made from another error (quinn's
    /// `ReadError`, say) shows that error and gives its source, so a prefix of our own would
    /// print its words twice ("i/o: connection lost: connection lost: timed out").
    #[error(transparent)]
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
            FrameError::TimedOut(_) => crate::wire::codes::TIMED_OUT,
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

/// Reads frames from a long-lived stream through a buffer, so that frames that arrived together
/// can be taken without waiting ([`FrameReader::buffered`]): a server answering a client that
/// pipelines its requests can answer all that arrived in one write, and so in few packets.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start.
    start: usize,
}

/// Room made for each read while a frame is in progress (at least; the buffer may have more).
const READ_AHEAD: usize = 16 * 1024;

/// Bytes asked of the stream by a read between frames. A long-lived stream is mostly idle
/// (the directory holds one per online peer), so that is all the memory it holds then; a
/// burst of small pipelined requests still fits in one such read.
const IDLE_READ: usize = 512;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads from `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The stream underneath.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The next frame. Waits as long as it takes for a frame to begin (a long-lived stream
    /// may be idle), then at most `within` for the rest of it. `Ok(None)` is a clean end of
    /// stream between frames.
    pub async fn next<T: DeserializeOwned>(
        &mut self,
        within: Duration,
    ) -> Result<Option<T>, FrameError> {
        loop {
            if let Some(frame) = self.buffered()? {
                return Ok(Some(frame));
            }
            let read = if self.start == self.buf.len() {
                self.fill().await?
            } else {
                tokio::time::timeout(within, self.fill())
                    .await
                    .map_err(|_| FrameError::TimedOut(within))??
            };
            if read == 0 {
                return match self.start == self.buf.len() {
                    true => Ok(None),
                    false => Err(FrameError::Truncated),
                };
            }
        }
    }

    /// A frame that has already arrived whole, without waiting for the stream.
    pub fn buffered<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let unread = &self.buf[self.start..];
        let Some(len) = unread.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge { len });
        }
        let Some(body) = unread.get(4..4 + len) else {
            return Ok(None);
        };
        let frame = decode(body)?;
        self.start += 4 + len;
        Ok(Some(frame))
    }

    /// Reads more of the stream into the buffer; 0 at its end.
    async fn fill(&mut self) -> Result<usize, FrameError> {
        // Drop what was read, so the buffer holds at most one frame in progress plus a read.
        self.buf.drain(..self.start);
        self.start = 0;
        if self.buf.is_empty() {
            self.buf.shrink_to(IDLE_READ);
            self.buf.reserve(IDLE_READ);
        } else {
            self.buf.reserve(READ_AHEAD);
        }
        // Into the spare capacity: nothing to zero first, nothing to cut back after.
        Ok(self.inner.read_buf(&mut self.buf).await?)
    }
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

    #[test]
    fn a_transport_failure_reads_as_one_chain_without_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("timed out")]
        struct Cause;
        #[derive(Debug, thiserror::Error)]
        #[error("connection lost")]
        struct Lost(#[source] Cause);
        let e = FrameError::from(std::io::Error::other(Lost(Cause)));
        let shown = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(shown, "connection lost: timed out");
    }

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

    fn ack(n: u8) -> PeerFrame {
        PeerFrame::Ack(crate::wire::MessageId([n; 16]))
    }

    #[tokio::test]
    async fn a_reader_takes_frames_that_arrived_together_without_waiting() {
        let mut bytes = Vec::new();
        for n in 1..=3 {
            bytes.extend(encode(&ack(n)).expect("encode"));
        }
        let (mut w, r) = tokio::io::duplex(1 << 16);
        w.write_all(&bytes).await.expect("write");
        let mut reader = FrameReader::new(r);
        let within = Duration::from_secs(5);
        assert_eq!(reader.next(within).await.expect("first"), Some(ack(1)));
        assert_eq!(reader.buffered().expect("second"), Some(ack(2)));
        assert_eq!(reader.buffered().expect("third"), Some(ack(3)));
        assert_eq!(reader.buffered::<PeerFrame>().expect("none yet"), None);
        // A frame split across writes waits for its end; the stream's end between frames is
        // a clean end.
        let fourth = encode(&ack(4)).expect("encode");
        w.write_all(&fourth[..7]).await.expect("write");
        assert_eq!(reader.buffered::<PeerFrame>().expect("partial"), None);
        let rest = fourth[7..].to_vec();
        let writer = tokio::spawn(async move {
            w.write_all(&rest).await.expect("write");
            w
        });
        assert_eq!(reader.next(within).await.expect("fourth"), Some(ack(4)));
        let mut w = writer.await.expect("writer");
        // A frame that begins on an idle stream is read with little memory.
        w.write_all(&encode(&ack(5)).expect("encode"))
            .await
            .expect("write");
        assert_eq!(reader.next(within).await.expect("fifth"), Some(ack(5)));
        assert!(
            reader.buf.capacity() <= IDLE_READ,
            "{}",
            reader.buf.capacity()
        );
        drop(w);
        assert_eq!(reader.next::<PeerFrame>(within).await.expect("end"), None);
    }

    #[tokio::test]
    async fn a_reader_refuses_truncated_oversized_and_late_frames() {
        let within = Duration::from_millis(20);
        let frame = encode(&ack(1)).expect("encode");
        let mut reader = FrameReader::new(&frame[..9]);
        assert!(matches!(
            reader.next::<PeerFrame>(within).await,
            Err(FrameError::Truncated)
        ));
        let huge = u32::MAX.to_be_bytes();
        let mut reader = FrameReader::new(&huge[..]);
        assert!(matches!(
            reader.next::<PeerFrame>(within).await,
            Err(FrameError::TooLarge { .. })
        ));
        // Begun but never finished, on a stream that stays open.
        let (mut w, r) = tokio::io::duplex(1 << 16);
        w.write_all(&frame[..9]).await.expect("write");
        let mut reader = FrameReader::new(r);
        assert!(matches!(
            reader.next::<PeerFrame>(within).await,
            Err(FrameError::TimedOut(_))
        ));
        drop(w);
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
