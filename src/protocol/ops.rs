//! Client operations: [`ClientOp::parse`] reads one WebSocket frame or
//! WebTransport line (the replies are built in `super::frames`).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Data, ErrorCode, ProtocolError};
use crate::name::{ChannelName, IdempotencyKey};

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
    /// Join a channel's presence as one tab of this conversation's
    /// identity, until `presence_leave` or the conversation ends.
    PresenceJoin {
        /// Which channel.
        channel: ChannelName,
        /// `tab`: which of the identity's members this is.
        tab: String,
        /// `client`: the id, as in `subscribe` (with auth, the token's `sub`).
        client: Option<String>,
        /// `info`: what the member says about itself.
        info: Option<Box<RawValue>>,
    },
    /// Leave what a `presence_join` joined.
    PresenceLeave {
        /// Which channel.
        channel: ChannelName,
        /// Which tab.
        tab: String,
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
#[derive(Debug)]
pub struct PresenceAsk {
    /// `client`: the id to join as when auth is off (with auth, the
    /// token's `sub` is the id and this must equal it if given).
    pub client: Option<String>,
    /// `info`: what the member says about itself (a small JSON object).
    pub info: Option<Box<RawValue>>,
    /// `presence: true`: send the member list, then joins and leaves.
    pub events: bool,
    /// `join: false`: subscribe without joining, even with a token's
    /// `sub` (its members join by `presence_join`, one per tab).
    pub join: bool,
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
    join: Option<bool>,
    tab: Option<String>,
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
                    join: raw.join.unwrap_or(true),
                },
            }),
            Some("presence_join") => need_channel(raw.channel).and_then(|channel| {
                Ok(Self::PresenceJoin {
                    channel,
                    tab: need_tab(raw.tab)?,
                    client: raw.client,
                    info: raw.info,
                })
            }),
            Some("presence_leave") => need_channel(raw.channel).and_then(|channel| {
                Ok(Self::PresenceLeave {
                    channel,
                    tab: need_tab(raw.tab)?,
                })
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
                    "unknown op {other:?}; expected subscribe, unsubscribe, publish, presence, presence_join, presence_leave or echo"
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

/// The `tab` field a presence op needs (checked further when joining).
fn need_tab(tab: Option<String>) -> Result<String, ProtocolError> {
    tab.ok_or_else(|| ProtocolError::new(ErrorCode::BadRequest, "missing field `tab`"))
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
        assert_eq!(
            err(r#"{"op":"presence_join","channel":"a","client":"x"}"#)
                .error
                .message,
            "missing field `tab`"
        );
        let (op, _) =
            ClientOp::parse(r#"{"op":"presence_leave","channel":"a","tab":"t"}"#, 100).unwrap();
        assert!(matches!(op, ClientOp::PresenceLeave { tab, .. } if tab == "t"));
    }
}
