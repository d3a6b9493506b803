//! The server's replies on the socket rungs: the `*_frame` functions build
//! every one (a WebSocket frame or WebTransport line), and [`error_body`]
//! the HTTP error body.

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{ErrorCode, ProtocolError};
use crate::name::{ChannelName, Epoch};

#[derive(Serialize)]
struct Frame<'a> {
    op: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tab: Option<&'a str>,
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
            tab: None,
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

/// `{"op":"presence_joined"|"presence_left","id"?,"channel","tab"}`: the
/// answer to `presence_join` (`joined` true) or `presence_leave`.
pub fn presence_tab_frame(
    id: Option<&RawValue>,
    channel: &ChannelName,
    tab: &str,
    joined: bool,
) -> Bytes {
    Frame {
        id,
        channel: Some(channel.as_str()),
        tab: Some(tab),
        ..Frame::op(if joined {
            "presence_joined"
        } else {
            "presence_left"
        })
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
