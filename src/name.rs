//! The vocabulary the wire format and the hub share: validated channel
//! names ([`ChannelName`]), epochs ([`Epoch`]) and read positions
//! ([`Position`]).
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

#[cfg(test)]
mod tests {
    use super::*;

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
