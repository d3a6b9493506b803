//! WebTransport datagrams a client sends: each `echo` is answered with a
//! datagram, anything else with an `{"op":"error"}` datagram (see the
//! module doc of [`super`] for the policy). Datagram *deliveries* go out
//! through the stream's outlet ([`super::outlet`]).

use bytes::Bytes;
use tracing::debug;
use wtransport::Connection;

use crate::context::Ctx;
use crate::protocol::{self, ClientOp, ErrorCode, ProtocolError};
use crate::stats::TransportStats;

/// Answers one datagram (see the module doc for the policy).
pub(super) fn on_datagram(ctx: &Ctx, conn: &Connection, stats: &TransportStats, payload: &[u8]) {
    stats.datagrams_in.inc();
    let reply = datagram_reply(payload, ctx.cfg.max_message_bytes());
    match conn.max_datagram_size() {
        Some(max) if reply.len() <= max => {
            if conn.send_datagram(&reply).is_ok() {
                stats.datagrams_out.inc();
            }
        }
        _ => debug!(len = reply.len(), "datagram reply does not fit; dropped"),
    }
}

/// The reply to a datagram: echo for `echo`, an error frame otherwise.
pub fn datagram_reply(payload: &[u8], max_data: usize) -> Bytes {
    let Ok(text) = std::str::from_utf8(payload) else {
        let e = ProtocolError::new(ErrorCode::BadJson, "datagram is not UTF-8");
        return protocol::error_frame(&e, None);
    };
    match ClientOp::parse(text, max_data) {
        Ok((ClientOp::Echo { data }, _)) => protocol::echo_frame(&data),
        Ok((_, id)) => {
            let e = ProtocolError::new(
                ErrorCode::BadRequest,
                "datagrams carry only `echo`; send other ops on a stream",
            );
            protocol::error_frame(&e, id.as_deref())
        }
        Err(e) => protocol::error_frame(&e.error, e.id.as_deref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_answer_echo_and_explain_the_rest() {
        let reply = |p: &[u8]| {
            let b = datagram_reply(p, 1024);
            serde_json::from_slice::<serde_json::Value>(&b).unwrap()
        };
        let echo = reply(br#"{"op":"echo","data":{"x":[1,2]}}"#);
        assert_eq!(echo, serde_json::json!({"op":"echo","data":{"x":[1,2]}}));
        let other = reply(br#"{"op":"publish","channel":"a","data":1,"id":7}"#);
        assert_eq!(other["op"], "error");
        assert_eq!(other["code"], "bad_request");
        assert_eq!(other["id"], 7);
        assert_eq!(reply(b"{nope")["code"], "bad_json");
        assert_eq!(reply(b"\xff")["code"], "bad_json");
    }
}
