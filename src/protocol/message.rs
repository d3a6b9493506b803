//! Payloads and published messages: a [`Data`] is validated JSON on one
//! line; a [`Message`] serialises itself once and builds its framed forms
//! (WebSocket/WebTransport line, SSE event) at most once, for every
//! subscriber to share.

use std::fmt::Write as _;
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::{ErrorCode, ProtocolError};
use crate::name::{ChannelName, Epoch};

/// A message's payload: valid JSON on one line, within the size limit.
#[derive(Debug, Clone)]
pub struct Data(Box<RawValue>);

impl Data {
    /// Parses a request body into a payload of at most `max` bytes.
    pub fn parse(bytes: &[u8], max: usize) -> Result<Self, ProtocolError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ProtocolError::new(ErrorCode::BadJson, "body is not UTF-8"))?;
        let raw: Box<RawValue> = serde_json::from_str(text)
            .map_err(|e| ProtocolError::new(ErrorCode::BadJson, format!("invalid JSON: {e}")))?;
        Self::from_raw(raw, max)
    }

    /// Takes a payload already split out of a larger JSON document.
    pub fn from_raw(raw: Box<RawValue>, max: usize) -> Result<Self, ProtocolError> {
        // Line breaks can only be insignificant whitespace in JSON; SSE needs
        // the payload on one line, so drop that whitespace when they occur.
        // Not through `serde_json::Value`, which would reorder keys, round
        // big numbers and refuse ones beyond f64 (found by fuzzing).
        let raw = if raw.get().contains(['\n', '\r']) {
            RawValue::from_string(compact_json(raw.get()))
                .map_err(|e| ProtocolError::new(ErrorCode::BadJson, e.to_string()))?
        } else {
            raw
        };
        if raw.get().len() > max {
            return Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!(
                    "message data is {} bytes, the limit is {max}",
                    raw.get().len()
                ),
            ));
        }
        Ok(Self(raw))
    }

    /// The payload's JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

/// Removes the insignificant whitespace of valid JSON text, leaving strings,
/// numbers and key order exactly as they were.
fn compact_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// One published message, with its encodings shared by all subscribers.
#[derive(Debug)]
pub struct Message {
    channel: ChannelName,
    epoch: Epoch,
    offset: u64,
    ts: u64,
    /// `{"channel":…,"offset":…,"data":…,"ts":…}`.
    json: Bytes,
    /// `{"op":"message",…}\n`, built on first use.
    line: OnceLock<Bytes>,
    /// The complete SSE event, built on first use.
    sse: OnceLock<Bytes>,
}

impl Message {
    /// Creates a message and serialises its object form once.
    pub fn new(channel: ChannelName, epoch: Epoch, offset: u64, ts: u64, data: &Data) -> Self {
        let mut s = String::with_capacity(data.as_str().len() + channel.as_str().len() + 56);
        // The channel alphabet needs no JSON escaping (see `ChannelName`).
        let _ = write!(
            s,
            r#"{{"channel":"{channel}","offset":{offset},"data":{},"ts":{ts}}}"#,
            data.as_str()
        );
        Self {
            channel,
            epoch,
            offset,
            ts,
            json: Bytes::from(s),
            line: OnceLock::new(),
            sse: OnceLock::new(),
        }
    }

    /// The channel it was published on.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// The channel's epoch when it was published.
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// Its position in the channel.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Server time of publication, unix milliseconds.
    pub fn ts(&self) -> u64 {
        self.ts
    }

    /// The message object, as polls return it.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// `{"op":"message",…}` followed by `\n`: one WebTransport line.
    pub fn op_line(&self) -> &Bytes {
        self.line.get_or_init(|| {
            let mut v = Vec::with_capacity(self.json.len() + 15);
            v.extend_from_slice(br#"{"op":"message","#);
            v.extend_from_slice(&self.json[1..]);
            v.push(b'\n');
            Bytes::from(v)
        })
    }

    /// `{"op":"message",…}` without the line break: one WebSocket frame.
    pub fn op_frame(&self) -> Bytes {
        let line = self.op_line();
        line.slice(..line.len() - 1)
    }

    /// The SSE event: `id: epoch:offset`, `event: message`, `data: …`.
    pub fn sse_event(&self) -> &Bytes {
        self.sse.get_or_init(|| {
            let mut v = Vec::with_capacity(self.json.len() + 48);
            let _ = std::io::Write::write_fmt(
                &mut v,
                format_args!("id: {}:{}\nevent: message\ndata: ", self.epoch, self.offset),
            );
            v.extend_from_slice(&self.json);
            v.extend_from_slice(b"\n\n");
            Bytes::from(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(data: &str) -> Message {
        let data = Data::parse(data.as_bytes(), 1024).unwrap();
        Message::new(
            ChannelName::parse("room").unwrap(),
            Epoch::new("e1"),
            7,
            42,
            &data,
        )
    }

    #[test]
    fn encodings_share_one_object() {
        let m = msg(r#"{"a":[1,2]}"#);
        assert_eq!(
            &m.json()[..],
            br#"{"channel":"room","offset":7,"data":{"a":[1,2]},"ts":42}"#
        );
        assert_eq!(
            &m.op_line()[..],
            b"{\"op\":\"message\",\"channel\":\"room\",\"offset\":7,\"data\":{\"a\":[1,2]},\"ts\":42}\n"
        );
        assert_eq!(&m.op_frame()[..], &m.op_line()[..m.op_line().len() - 1]);
        assert_eq!(
            &m.sse_event()[..],
            b"id: e1:7\nevent: message\ndata: {\"channel\":\"room\",\"offset\":7,\"data\":{\"a\":[1,2]},\"ts\":42}\n\n"
        );
    }

    #[test]
    fn multi_line_data_is_compacted() {
        let m = msg("{\n  \"a\": \"x y\"\n}");
        assert_eq!(
            &m.json()[..],
            br#"{"channel":"room","offset":7,"data":{"a":"x y"},"ts":42}"#
        );
    }

    #[test]
    fn data_errors() {
        assert_eq!(Data::parse(b"{", 10).unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(
            Data::parse(b"\xff", 10).unwrap_err().code,
            ErrorCode::BadJson
        );
        assert_eq!(
            Data::parse(b"\"0123456789\"", 10).unwrap_err().code,
            ErrorCode::TooLarge
        );
        assert!(Data::parse(b"\"01234567\"", 10).is_ok());
    }
}
