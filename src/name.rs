//! The vocabulary the wire format and the hub share: validated channel
//! names ([`ChannelName`]), epochs ([`Epoch`]), read positions
//! ([`Position`]) and publish idempotency keys ([`IdempotencyKey`]).
//!
//! The leaf of the layering: it imports nothing from the crate, so both
//! `protocol` (which parses names off the wire) and `hub` (which keys its
//! logs by them) can use it without either reaching into the other.
//! Everything that reaches the hub has been parsed here first, so the hub
//! never sees a channel name the contract forbids.

use std::fmt;
use std::sync::Arc;

/// Longest channel name the contract allows.
pub const MAX_CHANNEL_LEN: usize = 128;

/// A channel name matching `^[A-Za-z0-9._:-]{1,128}$`.
///
/// Cloning is shallow: the text lives behind an `Arc`, so every message and
/// subscription of a channel shares one allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("channel name is empty")]
    Empty,
    /// The name was longer than [`MAX_CHANNEL_LEN`] bytes.
    #[error("channel name is longer than {MAX_CHANNEL_LEN} characters")]
    TooLong,
    /// The name held a character outside `A-Z a-z 0-9 . _ : -`.
    #[error("channel name may only contain A-Z a-z 0-9 . _ : - (found {0:?})")]
    BadChar(char),
}

impl ChannelName {
    /// Parses a channel name, refusing anything the contract does not allow.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_CHANNEL_LEN {
            return Err(NameError::TooLong);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(NameError::BadChar(c));
        }
        Ok(Self(Arc::from(s)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A channel's epoch: an opaque token that changes whenever the channel's
/// numbering restarts, so a stale `(epoch, offset)` can be recognised.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// Wraps an epoch string produced by the hub (or read back from a client).
    pub fn new(s: &str) -> Self {
        Self(Arc::from(s))
    }

    /// The epoch as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Where a reader wants to start in a channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// Deliver messages with offset greater than this; `None` means "from now on".
    pub since: Option<u64>,
    /// The epoch the client last saw, when it is resuming.
    pub epoch: Option<String>,
}

impl Position {
    /// Live only: no history.
    pub fn live() -> Self {
        Self::default()
    }

    /// Everything after `since`, in any epoch the client happens to know.
    pub fn since(since: u64) -> Self {
        Self {
            since: Some(since),
            epoch: None,
        }
    }
}

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 128;

/// A client's idempotency key: 1–128 characters of `A-Z a-z 0-9` and
/// `- _ . : ~ + / =` (enough for UUIDs, ULIDs and base64 of random bytes).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

/// Why an idempotency key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key was empty.
    #[error("idempotency key is empty")]
    Empty,
    /// The key was longer than [`MAX_KEY_LEN`] bytes.
    #[error("idempotency key is longer than {MAX_KEY_LEN} characters")]
    TooLong,
    /// The key held a character outside the allowed set.
    #[error("idempotency key may only contain A-Z a-z 0-9 - _ . : ~ + / = (found {0:?})")]
    BadChar(char),
}

impl IdempotencyKey {
    /// Parses a key, refusing anything outside the allowed set.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        if s.is_empty() {
            return Err(KeyError::Empty);
        }
        if s.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong);
        }
        if let Some(c) = s.chars().find(|c| {
            !(c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | ':' | '~' | '+' | '/' | '='))
        }) {
            return Err(KeyError::BadChar(c));
        }
        Ok(Self(Arc::from(s)))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(IdempotencyKey::parse("6f1c2d3e-aaaa-4bbb-8ccc-0123456789ab").is_ok());
        assert!(IdempotencyKey::parse("a+b/c=").is_ok());
        assert_eq!(IdempotencyKey::parse(""), Err(KeyError::Empty));
        assert_eq!(
            IdempotencyKey::parse(&"k".repeat(MAX_KEY_LEN + 1)),
            Err(KeyError::TooLong)
        );
        assert_eq!(IdempotencyKey::parse("a b"), Err(KeyError::BadChar(' ')));
        assert_eq!(IdempotencyKey::parse("é"), Err(KeyError::BadChar('é')));
    }

    #[test]
    fn accepts_the_contract_alphabet() {
        let all = "azAZ09._:-";
        assert_eq!(ChannelName::parse(all).unwrap().as_str(), all);
        assert!(ChannelName::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(ChannelName::parse(""), Err(NameError::Empty));
        assert_eq!(
            ChannelName::parse(&"a".repeat(129)),
            Err(NameError::TooLong)
        );
        for bad in ["a b", "a/b", "é", "a\n", "x?y", "%20"] {
            assert!(ChannelName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
