//! Reading an HTTP body whole under a byte bound: a client's POST (`server.max-body-bytes`)
//! and an upstream's answer (`max-response-mib`) are both read here.
//!
//! Who writes the body is outside the gateway's trust, so a declared `Content-Length` over the
//! bound is refused before a byte is read, and a body without one is cut off as soon as it
//! passes. Each chunk is copied into one buffer and dropped as it arrives, so the transport's
//! read buffers are reused rather than all held until the end (as a list of chunks would be):
//! a 4 MB body costs about 4 MB, not twice that plus allocator fragments. A body that arrives
//! in one piece (the common, small case) is handed on as it came, without a copy.

use bytes::Bytes;
use http_body_util::BodyExt;

/// Why a body was not read whole.
#[derive(Debug)]
pub enum ReadError<E> {
    /// Past the bound: `declared` when `Content-Length` said so before anything was read.
    TooLarge { declared: Option<u64> },
    /// The transport failed (or, for an incoming body, the peer went away).
    Body(E),
}

/// `body` whole, at most `limit` bytes. What was read before a breach is handed back to the
/// operating system ([`crate::memory::give_back`]).
pub async fn read_bounded<B>(mut body: B, limit: usize) -> Result<Bytes, ReadError<B::Error>>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let declared = body.size_hint().exact();
    if let Some(len) = declared.filter(|&len| len > limit as u64) {
        return Err(ReadError::TooLarge {
            declared: Some(len),
        });
    }
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame.map_err(ReadError::Body)?.into_data() else {
            continue; // trailers
        };
        let held = first.as_ref().map_or(0, Bytes::len) + joined.len();
        if held + chunk.len() > limit {
            crate::memory::give_back((first, joined));
            return Err(ReadError::TooLarge { declared: None });
        }
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            held => {
                if let Some(held) = held {
                    // What the sender declared (within the bound) is a fine first guess.
                    joined.reserve(declared.map_or(held.len() + chunk.len(), |l| l as usize));
                    joined.extend_from_slice(&held);
                }
                joined.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.into()))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{Full, StreamBody};

    use super::*;

    fn chunked(
        parts: &[&'static str],
    ) -> impl hyper::body::Body<Data = Bytes, Error = Infallible> + Unpin {
        let frames = parts
            .iter()
            .map(|p| {
                Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(p.as_bytes())))
            })
            .collect::<Vec<_>>();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_in_one_piece_is_handed_on_without_a_copy() {
        let sent = Bytes::from_static(b"{\"jsonrpc\":\"2.0\"}");
        let read = read_bounded(Full::new(sent.clone()), 100).await.unwrap();
        assert_eq!(read, sent);
        assert_eq!(read.as_ptr(), sent.as_ptr(), "the same buffer, not a copy");
    }

    #[tokio::test]
    async fn chunks_are_joined_in_order() {
        let read = read_bounded(chunked(&["ab", "cd", "ef"]), 6).await.unwrap();
        assert_eq!(&read[..], b"abcdef");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_bound_is_refused_before_reading() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        match read_bounded(body, 9).await {
            Err(ReadError::TooLarge { declared: Some(10) }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_undeclared_body_is_cut_off_once_it_passes_the_bound() {
        match read_bounded(chunked(&["abc", "def", "g"]), 6).await {
            Err(ReadError::TooLarge { declared: None }) => {}
            other => panic!("{other:?}"),
        }
    }
}
