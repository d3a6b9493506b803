//! Byte counting per request stream, for the multiplexed versions
//! (HTTP/2 in [`super::https`], HTTP/3 in [`super::h3`]): one connection
//! carries several transports at once, so what its socket moves cannot be
//! attributed to one of them. Each stream counts its own headers and body
//! into its transport's counters instead.
//!
//! What is counted: body bytes plus [`DATA_FRAME_OVERHEAD`] per body
//! chunk, and headers at their uncompressed size. HPACK/QPACK compression,
//! TLS records and control frames are left out, so the figures are close
//! to, not exactly, the bytes on the wire.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::HeaderMap;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::stats::TransportStats;

/// Bytes a DATA frame adds to its payload: 9 in HTTP/2 (RFC 9113, section
/// 4.1); HTTP/3's variable-length header is 2-3 for typical chunks, so the
/// same figure is used for both.
pub(crate) const DATA_FRAME_OVERHEAD: u64 = 9;

/// Uncompressed size of a header block: names, values, and 2 bytes per
/// field for the separators (as HTTP/1.1 would write them).
pub(crate) fn header_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum()
}

/// Which way a [`Counted`] body flows.
#[derive(Debug, Clone, Copy)]
enum Direction {
    In,
    Out,
}

/// A body whose data frames are added to a transport's byte counters.
#[derive(Debug)]
pub(crate) struct Counted<B> {
    inner: B,
    counters: TransportStats,
    direction: Direction,
}

impl<B> Counted<B> {
    /// A request body: its bytes are the transport's `bytes_in`.
    pub(crate) fn incoming(inner: B, counters: TransportStats) -> Self {
        Self {
            inner,
            counters,
            direction: Direction::In,
        }
    }

    /// A response body: its bytes are the transport's `bytes_out`.
    pub(crate) fn outgoing(inner: B, counters: TransportStats) -> Self {
        Self {
            inner,
            counters,
            direction: Direction::Out,
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &res
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64 + DATA_FRAME_OVERHEAD;
            match self.direction {
                Direction::In => self.counters.bytes_in.inc_by(n),
                Direction::Out => self.counters.bytes_out.inc_by(n),
            };
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Stats, Transport};

    #[tokio::test]
    async fn each_data_frame_is_counted_with_its_frame_header() {
        let stats = Stats::new();
        let sse = stats.of(Transport::Sse).clone();
        let body = Counted::outgoing(axum::body::Body::from("data: 1\n\n"), sse.clone());
        let bytes = axum::body::to_bytes(axum::body::Body::new(body), 1024)
            .await
            .unwrap();
        assert_eq!(bytes.len(), 9);
        assert_eq!(sse.bytes_out.get(), 9 + DATA_FRAME_OVERHEAD);
        assert_eq!(sse.bytes_in.get(), 0);
        let mut h = HeaderMap::new();
        h.insert("accept", "text/event-stream".parse().unwrap());
        assert_eq!(header_bytes(&h), 6 + 17 + 4);
    }
}
