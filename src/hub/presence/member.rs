//! Who a presence member is: [`ClientId`] and [`Info`], parsed and bounded
//! before they reach the registry, and [`PresenceError`], what a join can
//! be refused with.
//!
//! A member may also name a *tab*: one of several joins of one identity on
//! one connection (the tabs of a browser sharing one connection, each
//! counted). `(id, tab)` is then the member, so one user's tabs are as many
//! members, each reported with the user's id and its own `tab`. It is kept
//! in the [`ClientId`] as `id` + space + `tab` — a space no id or tab may
//! hold — so the registry, the feed and Redis treat it as any other id.

use std::fmt;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::protocol::{ErrorCode, ProtocolError};

/// Longest client id, in bytes. A JWT `sub` is held to the same bound.
pub const MAX_CLIENT_ID: usize = 128;

/// Longest tab name, in bytes.
const MAX_TAB: usize = 64;

/// Checks one id or tab name: 1 to `max` printable ASCII characters other
/// than space, `"` and `\`.
fn check_name(what: &str, s: &str, max: usize) -> Result<(), PresenceError> {
    if s.is_empty() || s.len() > max {
        return Err(PresenceError::BadId(format!(
            "{what} must be 1 to {max} characters, got {}",
            s.len()
        )));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\\'))
    {
        return Err(PresenceError::BadId(format!(
            "{what} may hold printable ASCII except `\"` and `\\` (found {c:?})"
        )));
    }
    Ok(())
}

/// A member's identity in a channel: the JWT `sub` when auth is on, else an
/// id the client chose. 1 to [`MAX_CLIENT_ID`] printable ASCII characters
/// other than space, `"` and `\`, so it can be written into JSON and Redis
/// fields without escaping surprises.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// Parses a client id, refusing anything outside the alphabet above.
    pub fn parse(s: &str) -> Result<Self, PresenceError> {
        check_name("client id", s, MAX_CLIENT_ID)?;
        Ok(Self(Arc::from(s)))
    }

    /// This id's member for one tab (see the module docs); the tab name has
    /// the id's alphabet and at most 64 bytes.
    pub fn with_tab(&self, tab: &str) -> Result<Self, PresenceError> {
        Self::check_tab(tab)?;
        match self.tab() {
            None => Ok(Self(Arc::from(format!("{} {tab}", self.0)))),
            Some(_) => Err(PresenceError::BadId("a tab has no tabs".into())),
        }
    }

    /// Checks a tab name (see [`Self::with_tab`]).
    pub fn check_tab(tab: &str) -> Result<(), PresenceError> {
        check_name("tab", tab, MAX_TAB)
    }

    /// Parses an id as [`Self::as_str`] wrote it, tab included (read back
    /// from Redis).
    pub fn parse_stored(s: &str) -> Result<Self, PresenceError> {
        match s.split_once(' ') {
            Some((id, tab)) => Self::parse(id)?.with_tab(tab),
            None => Self::parse(s),
        }
    }

    /// The identity, without the tab.
    pub fn id(&self) -> &str {
        self.0.split_once(' ').map_or(&self.0, |(id, _)| id)
    }

    /// The tab, if this member is one.
    pub fn tab(&self) -> Option<&str> {
        self.0.split_once(' ').map(|(_, tab)| tab)
    }

    /// The id as stored: `id`, or `id tab`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A member's `info`: a JSON object, compact, at most the configured size.
/// Kept as its encoding, since it is only ever written back out.
#[derive(Clone, PartialEq, Eq)]
pub struct Info(Arc<str>);

impl Info {
    /// No info: `{}`.
    pub fn empty() -> Self {
        Self(Arc::from("{}"))
    }

    /// Parses `text` as a JSON object of at most `max` bytes once compacted.
    pub fn parse(text: &str, max: usize) -> Result<Self, PresenceError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| PresenceError::BadInfo(format!("info is not JSON: {e}")))?;
        Self::from_value(&value, max)
    }

    /// Checks an already-parsed JSON value.
    pub fn from_raw(raw: &RawValue, max: usize) -> Result<Self, PresenceError> {
        Self::parse(raw.get(), max)
    }

    fn from_value(value: &serde_json::Value, max: usize) -> Result<Self, PresenceError> {
        if !value.is_object() {
            return Err(PresenceError::BadInfo("info must be a JSON object".into()));
        }
        let compact = value.to_string();
        if compact.len() > max {
            return Err(PresenceError::InfoTooLarge {
                size: compact.len(),
                max,
            });
        }
        Ok(Self(Arc::from(compact)))
    }

    /// Wraps text already checked (read back from Redis, written by a node).
    pub(super) fn trusted(text: &str) -> Self {
        Self(Arc::from(text))
    }

    /// The compact JSON encoding.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Info {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One member as it is reported: identity and info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Who.
    pub id: ClientId,
    /// What they said about themselves.
    pub info: Info,
}

impl Member {
    /// `{"id":…,"info":…}`, with `"tab":…` after the id for a tab. Neither
    /// needs escaping (see [`ClientId`]).
    pub fn json(&self) -> String {
        let (id, info) = (self.id.id(), self.info.as_str());
        match self.id.tab() {
            Some(tab) => format!(r#"{{"id":"{id}","tab":"{tab}","info":{info}}}"#),
            None => format!(r#"{{"id":"{id}","info":{info}}}"#),
        }
    }
}

/// A JSON array of members.
pub fn members_json(members: &[Member]) -> String {
    let mut out = String::from("[");
    for (i, m) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&m.json());
    }
    out.push(']');
    out
}

/// Why a presence join or read was refused. The subscription that asked
/// for the join is kept either way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The client id is empty, too long or holds a forbidden character.
    #[error("{0}")]
    BadId(String),
    /// `info` is not a JSON object.
    #[error("{0}")]
    BadInfo(String),
    /// `info` is larger than `--max-presence-info`.
    #[error("presence info is {size} bytes; at most {max} allowed")]
    InfoTooLarge {
        /// Its compact size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The channel already has `--max-presence` members.
    #[error("channel presence is full ({0} members); subscribed without joining")]
    Full(usize),
    /// The shared store (Redis) cannot be reached.
    #[error("presence store unavailable: {0}")]
    Unavailable(String),
}

impl From<PresenceError> for ProtocolError {
    fn from(e: PresenceError) -> Self {
        let code = match e {
            PresenceError::BadId(_) | PresenceError::BadInfo(_) => ErrorCode::BadRequest,
            PresenceError::InfoTooLarge { .. } => ErrorCode::TooLarge,
            PresenceError::Full(_) => ErrorCode::RateLimited,
            PresenceError::Unavailable(_) => ErrorCode::Unavailable,
        };
        Self::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_printable() {
        assert_eq!(ClientId::parse("alice@x.y").unwrap().as_str(), "alice@x.y");
        assert!(ClientId::parse(&"a".repeat(MAX_CLIENT_ID)).is_ok());
        for bad in ["", "a b", "a\"b", "a\\b", "é", "a\n"] {
            assert!(
                matches!(ClientId::parse(bad), Err(PresenceError::BadId(_))),
                "{bad:?} accepted"
            );
        }
        assert!(ClientId::parse(&"a".repeat(MAX_CLIENT_ID + 1)).is_err());
    }

    #[test]
    fn a_tab_is_its_own_member_of_one_identity() {
        let ann = ClientId::parse("ann").unwrap();
        let t1 = ann.with_tab("t-1").unwrap();
        assert_eq!((t1.id(), t1.tab()), ("ann", Some("t-1")));
        assert_ne!(t1, ann.with_tab("t-2").unwrap());
        assert_eq!((ann.id(), ann.tab()), ("ann", None));
        // Stored as `id tab` and read back the same; a space is no id's.
        assert_eq!(ClientId::parse_stored(t1.as_str()).unwrap(), t1);
        assert_eq!(ClientId::parse_stored("ann").unwrap(), ann);
        assert!(ClientId::parse(t1.as_str()).is_err());
        for bad in ["", "a b", "a\"", &"t".repeat(MAX_TAB + 1)] {
            assert!(
                matches!(ann.with_tab(bad), Err(PresenceError::BadId(_))),
                "{bad:?} accepted"
            );
        }
        assert!(t1.with_tab("x").is_err());
        let m = Member {
            id: t1,
            info: Info::empty(),
        };
        assert_eq!(m.json(), r#"{"id":"ann","tab":"t-1","info":{}}"#);
    }

    #[test]
    fn info_is_a_small_object_kept_compact() {
        let i = Info::parse(r#"{ "name" : "Ann" }"#, 64).unwrap();
        assert_eq!(i.as_str(), r#"{"name":"Ann"}"#);
        assert!(matches!(
            Info::parse("[1]", 64),
            Err(PresenceError::BadInfo(_))
        ));
        assert!(matches!(
            Info::parse("{", 64),
            Err(PresenceError::BadInfo(_))
        ));
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(100));
        assert_eq!(
            Info::parse(&big, 64),
            Err(PresenceError::InfoTooLarge { size: 108, max: 64 })
        );
        let m = Member {
            id: ClientId::parse("bob").unwrap(),
            info: i,
        };
        assert_eq!(
            members_json(&[m.clone(), m]),
            r#"[{"id":"bob","info":{"name":"Ann"}},{"id":"bob","info":{"name":"Ann"}}]"#
        );
    }
}
