//! The JSON op framing: one op per WebSocket text frame or WebTransport line
//! (`ClientOp::parse`), WebTransport datagrams (`datagram_reply`) and HTTP
//! publish bodies (`Data::parse`), plus the encodings built from what they
//! accept (the message object, its op line and its SSE event).
//!
//! Beyond "never panics", it checks what the framing relies on: an accepted
//! payload is valid JSON on one line within the size limit, every reply is
//! one JSON object, and a reply to a line without `\n` has no `\n` either.

#![no_main]

use ladder::fuzzing::{ChannelName, Epoch};
use ladder::fuzzing::{ClientOp, Data, Message, error_frame, published_frame};
use ladder::fuzzing::datagram_reply;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

const MAX: usize = 256;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(data) = Data::parse(bytes, MAX) {
        check_payload(&data);
        // Compaction keeps the meaning (key order and numbers as sent).
        if let Ok(sent) = serde_json::from_slice::<Value>(bytes) {
            let kept: Value = serde_json::from_str(data.as_str()).expect("same value");
            assert_eq!(sent, kept);
        }
    }

    let reply = datagram_reply(bytes, MAX);
    let op = op_of(&reply);
    assert!(op == "echo" || op == "error", "{op}");

    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let reply = match ClientOp::parse(text, MAX) {
        Ok((op, id)) => match op {
            ClientOp::Publish { channel, data, .. } => {
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
    op_of(&reply);
    if !text.contains('\n') {
        assert!(
            !reply.contains(&b'\n'),
            "a reply line would split: {reply:?}"
        );
    }
});

/// The `op` of a frame, which must be one JSON object.
fn op_of(frame: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Frame {
        op: String,
    }
    serde_json::from_slice::<Frame>(frame)
        .expect("frame is a JSON object with an op")
        .op
}

/// A payload goes into JSON objects, op lines and SSE `data:` lines as is.
fn check_payload(data: &Data) {
    let s = data.as_str();
    assert!(s.len() <= MAX, "payload over the limit");
    assert!(!s.contains(['\n', '\r']), "payload is not one line: {s:?}");
    // Grammar only: JSON allows numbers beyond f64, which `Value` refuses.
    serde_json::from_str::<IgnoredAny>(s).expect("payload is JSON");

    let channel = ChannelName::parse("c").expect("valid name");
    let m = Message::new(channel, Epoch::new("e"), 7, 1, data);
    #[derive(Deserialize)]
    struct Msg<'a> {
        offset: u64,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let obj: Msg<'_> = serde_json::from_slice(m.json()).expect("message object");
    assert_eq!((obj.offset, obj.data.get()), (7, s));
    let line = m.op_line();
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(op_of(line), "message");
    let event = std::str::from_utf8(m.sse_event()).expect("SSE event is UTF-8");
    let lines: Vec<&str> = event.trim_end_matches('\n').split('\n').collect();
    assert_eq!(lines.len(), 3, "{event:?}");
    assert_eq!(lines[0], "id: e:7");
    assert_eq!(lines[1], "event: message");
    let data_line = lines[2].strip_prefix("data: ").expect("data line");
    assert_eq!(data_line.as_bytes(), &m.json()[..]);
}
