//! The JSON op framing: one op per WebSocket text frame or WebTransport line
//! (`ClientOp::parse`), WebTransport datagrams (`datagram_reply`) and HTTP
//! publish bodies (`Data::parse`), plus the encodings built from what they
//! accept (the message object, its op line and its SSE event).
//!
//! Beyond "never panics", it checks what the framing relies on: an accepted
//! payload is valid JSON on one line within the size limit, every reply is
//! one JSON object, and a reply to a line without `\n` has no `\n` either.

#![no_main]

use ladder::hub::{ChannelName, Epoch};
use ladder::protocol::{ClientOp, Data, Message, error_frame, published_frame};
use ladder::transport::webtransport::datagram_reply;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const MAX: usize = 256;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(data) = Data::parse(bytes, MAX) {
        check_payload(&data);
    }

    let reply = datagram_reply(bytes, MAX);
    let v: Value = serde_json::from_slice(&reply).expect("datagram reply is JSON");
    assert!(v["op"] == "echo" || v["op"] == "error", "{v}");

    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let reply = match ClientOp::parse(text, MAX) {
        Ok((op, id)) => match op {
            ClientOp::Publish { channel, data } => {
                check_payload(&data);
                published_frame(id.as_deref(), &channel, &Epoch::new("e"), 1)
            }
            ClientOp::Subscribe { channel, .. } | ClientOp::Unsubscribe { channel } => {
                assert_eq!(ChannelName::parse(channel.as_str()).as_ref(), Ok(&channel));
                return;
            }
            ClientOp::Echo { data } => ladder::protocol::echo_frame(&data),
        },
        Err(e) => error_frame(&e.error, e.id.as_deref()),
    };
    let v: Value = serde_json::from_slice(&reply).expect("reply frame is JSON");
    assert!(v.is_object());
    if !text.contains('\n') {
        assert!(!reply.contains(&b'\n'), "a reply line would split: {reply:?}");
    }
});

/// A payload goes into JSON objects, op lines and SSE `data:` lines as is.
fn check_payload(data: &Data) {
    let s = data.as_str();
    assert!(s.len() <= MAX, "payload over the limit");
    assert!(!s.contains(['\n', '\r']), "payload is not one line: {s:?}");
    serde_json::from_str::<Value>(s).expect("payload is JSON");

    let channel = ChannelName::parse("c").expect("valid name");
    let m = Message::new(channel, Epoch::new("e"), 7, 1, data);
    let obj: Value = serde_json::from_slice(m.json()).expect("message object is JSON");
    assert_eq!(obj["offset"], 7);
    let line = m.op_line();
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    let op: Value = serde_json::from_slice(line).expect("op line is JSON");
    assert_eq!(op["op"], "message");
    let event = std::str::from_utf8(m.sse_event()).expect("SSE event is UTF-8");
    let lines: Vec<&str> = event.trim_end_matches('\n').split('\n').collect();
    assert_eq!(lines.len(), 3, "{event:?}");
    assert_eq!(lines[0], "id: e:7");
    assert_eq!(lines[1], "event: message");
    let data_line = lines[2].strip_prefix("data: ").expect("data line");
    assert_eq!(serde_json::from_str::<Value>(data_line).ok(), Some(obj));
}
