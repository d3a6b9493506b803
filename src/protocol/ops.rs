//! Client operations and the server's replies: [`ClientOp::parse`] reads
//! one WebSocket frame or WebTransport line; the `*_frame` functions build
//! every reply, and [`error_body`] the HTTP error body.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Data, ErrorCode, ProtocolError};
use crate::name::{ChannelName, Epoch, IdempotencyKey};

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
        /// Joining the channel's presence, and hearing who else is there.
        presence: PresenceAsk,
    },
    /// Read who is in a channel.
    Presence {
        /// Which channel.
        channel: ChannelName,
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
        /// Makes a retry append nothing (field `idempotency_key`).
        key: Option<IdempotencyKey>,
    },
    /// Send `data` straight back.
    Echo {
        /// What to send back.
        data: Box<RawValue>,
    },
}

/// What a `subscribe` asks of the channel's presence.
#[derive(Debug, Default)]
pub struct PresenceAsk {
    /// `client`: the id to join as when auth is off (with auth, the
    /// token's `sub` is the id and this must equal it if given).
    pub client: Option<String>,
    /// `info`: what the member says about itself (a small JSON object).
    pub info: Option<Box<RawValue>>,
    /// `presence: true`: send the member list, then joins and leaves.
    pub events: bool,
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
    client: Option<String>,
    info: Option<Box<RawValue>>,
    presence: Option<bool>,
    #[serde(borrow)]
    idempotency_key: Option<std::borrow::Cow<'a, str>>,
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
                presence: PresenceAsk {
                    client: raw.client,
                    info: raw.info,
                    events: raw.presence.unwrap_or(false),
                },
            }),
            Some("presence") => need_channel(raw.channel).map(|channel| Self::Presence { channel }),
            Some("unsubscribe") => {
                need_channel(raw.channel).map(|channel| Self::Unsubscribe { channel })
            }
            Some("publish") => need_channel(raw.channel).and_then(|channel| {
                let data = raw.data.ok_or_else(|| {
                    ProtocolError::new(ErrorCode::BadRequest, "missing field `data`")
                })?;
                let key = raw
                    .idempotency_key
                    .as_deref()
                    .map(IdempotencyKey::parse)
                    .transpose()?;
                Ok(Self::Publish {
                    channel,
                    data: Data::from_raw(data, max_data)?,
                    key,
                })
            }),
            Some("echo") => raw
                .data
                .ok_or_else(|| ProtocolError::new(ErrorCode::BadRequest, "missing field `data`"))
                .map(|data| Self::Echo { data }),
            Some(other) => Err(ProtocolError::new(
                ErrorCode::BadRequest,
                format!(
                    "unknown op {other:?}; expected subscribe, unsubscribe, publish, presence or echo"
                ),
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

/// `{"op":"subscribed",…}` with `"presence_error":{"code","message"}`: the
/// subscription works, joining its presence did not.
pub fn subscribed_frame_presence_error(
    channel: &ChannelName,
    epoch: &Epoch,
    head: u64,
    error: &ProtocolError,
) -> Bytes {
    let mut v: serde_json::Value =
        serde_json::from_slice(&subscribed_frame(channel, epoch, head)).unwrap_or_default();
    v["presence_error"] = serde_json::json!({
        "code": error.code.as_str(),
        "message": error.message,
    });
    Bytes::from(v.to_string())
}

/// `{"op":"presence","channel","members":[…]}`; `members` is a JSON array
/// already encoded.
pub fn presence_frame(channel: &ChannelName, members: &str) -> Bytes {
    // Channel names hold no character JSON must escape (see ChannelName).
    Bytes::from(format!(
        r#"{{"op":"presence","channel":"{channel}","members":{members}}}"#
    ))
}

/// `{"op":"join"|"leave","channel","member":{"id","info"}}`; `member` is
/// already encoded.
pub fn presence_change_frame(kind: &str, channel: &ChannelName, member: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"op":"{kind}","channel":"{channel}","member":{member}}}"#
    ))
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
