//! The one wire format, decided once for every transport.
//!
//! The hub stores [`Message`]s that carry their own encodings: the message
//! object is serialised when the message is published, and the framed forms
//! (an `{"op":"message",…}` line for WebSocket/WebTransport, an SSE event) are
//! built at most once on first use. Every subscriber then shares the same
//! bytes, so the fan-out path never encodes JSON per subscriber.
//!
//! Client → server operations are parsed by [`ClientOp::parse`]; server →
//! client replies are built by the `*_frame` functions and [`ErrorCode`].

use std::fmt::Write as _;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hub::{ChannelName, Epoch, NameError};

/// Error codes of the contract (plus a few of Ladder's own), shared by the
/// HTTP error body and the `{"op":"error"}` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The body or frame is not JSON (or not UTF-8).
    BadJson,
    /// The channel name does not match the contract's pattern.
    BadChannel,
    /// Well-formed JSON that is not a valid request.
    BadRequest,
    /// No such route.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// A message or body over the configured size.
    TooLarge,
    /// Too many requests or publishes.
    RateLimited,
    /// Missing or invalid credentials.
    Unauthorized,
    /// Credentials valid but not allowed to do this.
    Forbidden,
    /// The server is at a capacity limit or shutting down.
    Unavailable,
    /// The subscriber fell too far behind and was dropped.
    Lagged,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadChannel => "bad_channel",
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
            Self::Lagged => "lagged",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadJson | Self::BadChannel | Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::TooLarge => 413,
            Self::Lagged => 409,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
        }
    }
}

/// A protocol-level failure: a code for machines and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A sentence for the developer reading it.
    pub message: String,
}

impl ProtocolError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<NameError> for ProtocolError {
    fn from(e: NameError) -> Self {
        Self::new(ErrorCode::BadChannel, e.to_string())
    }
}

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

/// How a WebTransport subscription wants its messages carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// On the stream that subscribed (reliable, ordered).
    #[default]
    Stream,
    /// As datagrams (unreliable, latest-value use).
    Datagram,
}

/// A parsed client → server operation (WebSocket frame or WebTransport line).
#[derive(Debug)]
pub enum ClientOp {
    /// Start receiving a channel.
    Subscribe {
        /// Which channel.
        channel: ChannelName,
        /// Resume after this offset; `None` = live only.
        since: Option<u64>,
        /// The epoch the client last saw.
        epoch: Option<String>,
        /// Stream or datagram delivery (WebTransport only).
        delivery: DeliveryMode,
    },
    /// Stop receiving a channel.
    Unsubscribe {
        /// Which channel.
        channel: ChannelName,
    },
    /// Publish a message and get an ack.
    Publish {
        /// Which channel.
        channel: ChannelName,
        /// The payload.
        data: Data,
    },
    /// Send `data` straight back.
    Echo {
        /// What to send back.
        data: Box<RawValue>,
    },
}

/// The loose shape every op is read into before it is checked, so that a
/// wrong field gets a precise error and the `id` survives for the reply.
#[derive(Deserialize)]
struct RawOp<'a> {
    #[serde(borrow)]
    op: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<std::borrow::Cow<'a, str>>,
    since: Option<u64>,
    epoch: Option<String>,
    delivery: Option<DeliveryMode>,
    data: Option<Box<RawValue>>,
    id: Option<Box<RawValue>>,
}

/// An op that could not be parsed, with the client's `id` when it had one.
#[derive(Debug)]
pub struct OpError {
    /// What was wrong.
    pub error: ProtocolError,
    /// The `id` field of the offending op, if it could be read.
    pub id: Option<Box<RawValue>>,
}

impl ClientOp {
    /// Parses one op. `max_data` bounds a publish's payload.
    ///
    /// Returns the op and its `id` field (echoed in replies).
    pub fn parse(text: &str, max_data: usize) -> Result<(Self, Option<Box<RawValue>>), OpError> {
        let raw: RawOp<'_> = serde_json::from_str(text).map_err(|e| {
            let code = match e.classify() {
                serde_json::error::Category::Data => ErrorCode::BadRequest,
                _ => ErrorCode::BadJson,
            };
            OpError {
                error: ProtocolError::new(code, format!("invalid op: {e}")),
                id: None,
            }
        })?;
        let id = raw.id;
        let fail = |error: ProtocolError, id: Option<Box<RawValue>>| OpError { error, id };
        let need_channel =
            |c: Option<std::borrow::Cow<'_, str>>| -> Result<ChannelName, ProtocolError> {
                let c = c.ok_or_else(|| {
                    ProtocolError::new(ErrorCode::BadRequest, "missing field `channel`")
                })?;
                Ok(ChannelName::parse(&c)?)
            };
        let op = match raw.op.as_deref() {
            Some("subscribe") => need_channel(raw.channel).map(|channel| Self::Subscribe {
                channel,
                since: raw.since,
                epoch: raw.epoch,
                delivery: raw.delivery.unwrap_or_default(),
            }),
            Some("unsubscribe") => {
                need_channel(raw.channel).map(|channel| Self::Unsubscribe { channel })
            }
            Some("publish") => need_channel(raw.channel).and_then(|channel| {
                let data = raw.data.ok_or_else(|| {
                    ProtocolError::new(ErrorCode::BadRequest, "missing field `data`")
                })?;
                Ok(Self::Publish {
                    channel,
                    data: Data::from_raw(data, max_data)?,
                })
            }),
            Some("echo") => raw
                .data
                .ok_or_else(|| ProtocolError::new(ErrorCode::BadRequest, "missing field `data`"))
                .map(|data| Self::Echo { data }),
            Some(other) => Err(ProtocolError::new(
                ErrorCode::BadRequest,
                format!("unknown op {other:?}; expected subscribe, unsubscribe, publish or echo"),
            )),
            None => Err(ProtocolError::new(
                ErrorCode::BadRequest,
                "missing field `op`",
            )),
        };
        match op {
            Ok(op) => Ok((op, id)),
            Err(e) => Err(fail(e, id)),
        }
    }
}

#[derive(Serialize)]
struct Frame<'a> {
    op: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    oldest: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

impl<'a> Frame<'a> {
    fn op(op: &'a str) -> Self {
        Self {
            op,
            id: None,
            channel: None,
            epoch: None,
            offset: None,
            oldest: None,
            code: None,
            message: None,
            data: None,
        }
    }

    fn encode(&self) -> Bytes {
        // Serialising these plain structs cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// `{"op":"subscribed","channel","epoch","offset"}`.
pub fn subscribed_frame(channel: &ChannelName, epoch: &Epoch, head: u64) -> Bytes {
    Frame {
        channel: Some(channel.as_str()),
        epoch: Some(epoch.as_str()),
        offset: Some(head),
        ..Frame::op("subscribed")
    }
    .encode()
}

/// `{"op":"unsubscribed","channel"}`.
pub fn unsubscribed_frame(channel: &ChannelName) -> Bytes {
    Frame {
        channel: Some(channel.as_str()),
        ..Frame::op("unsubscribed")
    }
    .encode()
}

/// `{"op":"published","id"?,"channel","epoch","offset"}`.
pub fn published_frame(
    id: Option<&RawValue>,
    channel: &ChannelName,
    epoch: &Epoch,
    offset: u64,
) -> Bytes {
    Frame {
        id,
        channel: Some(channel.as_str()),
        epoch: Some(epoch.as_str()),
        offset: Some(offset),
        ..Frame::op("published")
    }
    .encode()
}

/// `{"op":"echo","data"}`.
pub fn echo_frame(data: &RawValue) -> Bytes {
    Frame {
        data: Some(data),
        ..Frame::op("echo")
    }
    .encode()
}

/// `{"op":"truncated","channel","oldest","epoch"}`.
pub fn truncated_frame(channel: &ChannelName, oldest: u64, epoch: &Epoch) -> Bytes {
    Frame {
        channel: Some(channel.as_str()),
        oldest: Some(oldest),
        epoch: Some(epoch.as_str()),
        ..Frame::op("truncated")
    }
    .encode()
}

/// `{"op":"lagged","channel","offset"}`: the last offset delivered before the
/// subscriber was dropped, to resume from with `since`.
pub fn lagged_frame(channel: &ChannelName, last: u64) -> Bytes {
    Frame {
        channel: Some(channel.as_str()),
        offset: Some(last),
        code: Some(ErrorCode::Lagged.as_str()),
        message: Some("subscriber too slow; resubscribe with since = offset"),
        ..Frame::op("lagged")
    }
    .encode()
}

/// `{"op":"error","code","message","id"?}`.
pub fn error_frame(error: &ProtocolError, id: Option<&RawValue>) -> Bytes {
    Frame {
        id,
        code: Some(error.code.as_str()),
        message: Some(&error.message),
        ..Frame::op("error")
    }
    .encode()
}

/// The HTTP error body `{"error":{"code","message"}}`.
pub fn error_body(error: &ProtocolError) -> Bytes {
    #[derive(Serialize)]
    struct Inner<'a> {
        code: &'a str,
        message: &'a str,
    }
    #[derive(Serialize)]
    struct Outer<'a> {
        error: Inner<'a>,
    }
    let body = Outer {
        error: Inner {
            code: error.code.as_str(),
            message: &error.message,
        },
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
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

    #[test]
    fn ops_parse_and_fail_precisely() {
        let (op, id) =
            ClientOp::parse(r#"{"op":"publish","channel":"a","data":[1],"id":"x"}"#, 100).unwrap();
        assert!(matches!(op, ClientOp::Publish { .. }));
        assert_eq!(id.unwrap().get(), r#""x""#);
        let err = |s: &str| ClientOp::parse(s, 100).unwrap_err();
        assert_eq!(err("nope").error.code, ErrorCode::BadJson);
        assert_eq!(
            err(r#"{"op":"dance","id":3}"#).error.code,
            ErrorCode::BadRequest
        );
        assert_eq!(err(r#"{"op":"dance","id":3}"#).id.unwrap().get(), "3");
        assert_eq!(
            err(r#"{"op":"subscribe","channel":"a b"}"#).error.code,
            ErrorCode::BadChannel
        );
        assert_eq!(
            err(r#"{"op":"subscribe","channel":"a","since":-1}"#)
                .error
                .code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            err(r#"{"op":"publish","channel":"a"}"#).error.code,
            ErrorCode::BadRequest
        );
        assert_eq!(err(r#"{"channel":"a"}"#).error.code, ErrorCode::BadRequest);
    }
}
