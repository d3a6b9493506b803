//! Counting a WebSocket's frames itself, for a socket that is a stream of a
//! multiplexed connection (RFC 8441 extended CONNECT over HTTP/2).
//!
//! Over HTTP/1.1 the upgraded socket is the TCP connection, which its
//! [`crate::transport::meter::MeteredIo`] counts. Over HTTP/2 the upgraded
//! stream bypasses the response body that counts the connection's other
//! streams, and the connection's socket counts nothing (its bytes belong to
//! many transports), so the adapter counts what it sends and receives, the
//! same way the per-stream counting of SSE and polls does: payload plus
//! framing, at the size it would have uncompressed.

use axum::extract::ws::Message;

use crate::stats::TransportStats;

/// Set as a request extension by a listener whose connection is counted
/// per stream: a WebSocket opened by that request counts its own frames.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PerStream {
    /// Bytes the connection's framing adds around each chunk of the stream
    /// (9 for an HTTP/2 DATA frame header).
    pub(crate) data_frame_overhead: u64,
}

/// Adds a WebSocket's frames to its transport's byte counters.
#[derive(Debug)]
pub(super) struct FrameMeter {
    counters: TransportStats,
    data_frame_overhead: u64,
}

impl FrameMeter {
    pub(super) fn new(counters: TransportStats, per_stream: PerStream) -> Self {
        Self {
            counters,
            data_frame_overhead: per_stream.data_frame_overhead,
        }
    }

    /// A frame read from the client: masked (RFC 6455 section 5.3), in a
    /// chunk of its own.
    pub(super) fn received(&self, msg: &Message) {
        let n = frame_len(msg, true) + self.data_frame_overhead;
        self.counters.bytes_in.inc_by(n);
    }

    /// A frame queued for the client (unmasked).
    pub(super) fn sent(&self, msg: &Message) {
        self.counters.bytes_out.inc_by(frame_len(msg, false));
    }

    /// Queued frames written out: one chunk of the connection's framing.
    pub(super) fn flushed(&self) {
        self.counters.bytes_out.inc_by(self.data_frame_overhead);
    }
}

/// A frame's size on the wire: RFC 6455 section 5.2's header (2 bytes, plus
/// 2 or 8 of extended length, plus 4 of mask) and the payload.
fn frame_len(msg: &Message, masked: bool) -> u64 {
    let payload = match msg {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(Some(c)) => 2 + c.reason.len(),
        Message::Close(None) => 0,
    } as u64;
    let length = match payload {
        0..=125 => 0,
        126..=65535 => 2,
        _ => 8,
    };
    2 + length + if masked { 4 } else { 0 } + payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_follow_rfc_6455() {
        let text = |n: usize| Message::Text("x".repeat(n).into());
        assert_eq!(frame_len(&text(5), false), 7);
        assert_eq!(frame_len(&text(5), true), 11);
        assert_eq!(frame_len(&text(126), false), 130);
        assert_eq!(frame_len(&text(70_000), false), 70_010);
        assert_eq!(frame_len(&Message::Close(None), false), 2);
    }
}
