//! Authentication and channel permissions: HS256 JSON Web Tokens whose
//! claims list the channel patterns a client may subscribe to and publish
//! to, and when that stops.
//!
//! Off unless `--jwt-secret` / `--jwt-secret-file` is given. Entry points:
//! [`Auth::check`] turns a token (from `Authorization: Bearer` or, because
//! browsers' `EventSource`, `WebSocket` and `WebTransport` cannot set headers,
//! the `token` query parameter) into a [`Grant`]; adapters ask the grant
//! before every subscribe and publish. Tokens are never logged.
//!
//! Claims (`exp` is required):
//!
//! ```json
//! {"sub": "alice", "exp": 1795300000, "subscribe": ["room:*"], "publish": ["room:alice"],
//!  "presence": ["room:*"]}
//! ```
//!
//! `sub` is the client's presence identity. `presence` lists the channels
//! whose member lists the holder may read; without it, those it may
//! subscribe to.
//!
//! A pattern is a channel name in which `*` matches any run of characters.

use std::sync::{Arc, LazyLock};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::hub::{ChannelName, now_ms};
use crate::protocol::{ErrorCode, ProtocolError};

/// Why a request was not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Auth is on and no token came with the request.
    #[error("a token is required: send `Authorization: Bearer <jwt>` or `?token=<jwt>`")]
    Missing,
    /// The token did not verify (signature, format, algorithm).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token is valid but does not allow this action.
    #[error("token does not allow {action} on channel {channel}")]
    Forbidden {
        /// `subscribe`, `publish` or `presence`.
        action: &'static str,
        /// The channel asked for.
        channel: String,
    },
}

impl From<AuthError> for ProtocolError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::Forbidden { .. } => ErrorCode::Forbidden,
            _ => ErrorCode::Unauthorized,
        };
        Self::new(code, e.to_string())
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    presence: Option<Vec<String>>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// The verifier; `None`-like when auth is off (see [`Auth::disabled`]).
#[derive(Clone)]
pub struct Auth {
    key: Option<Arc<(DecodingKey, Validation)>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.key.is_some())
            .finish()
    }
}

impl Auth {
    /// No authentication: every request gets [`Grant::all`].
    pub fn disabled() -> Self {
        Self { key: None }
    }

    /// HS256 with the given shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            key: Some(Arc::new((DecodingKey::from_secret(secret), validation))),
        }
    }

    /// Whether tokens are checked at all.
    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// Verifies a token (if auth is on) and returns what it allows.
    pub fn check(&self, token: Option<&str>) -> Result<Grant, AuthError> {
        let Some(key) = &self.key else {
            return Ok(Grant::all());
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.0, &key.1).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let c = data.claims;
        let presence = c.presence.unwrap_or_else(|| c.subscribe.clone());
        Ok(Grant(Arc::new(GrantFields {
            sub: c.sub.map(Arc::from),
            presence: presence.into(),
            expires_ms: Some(c.exp.saturating_mul(1000)),
            subscribe: c.subscribe.into(),
            publish: c.publish.into(),
        })))
    }
}

/// What one token allows. Cloning is shallow: one pointer, which every
/// connection keeps for its life (a wider struct was 80 bytes in each).
#[derive(Debug, Clone)]
pub struct Grant(Arc<GrantFields>);

#[derive(Debug)]
struct GrantFields {
    /// The token's subject: the holder's presence identity.
    sub: Option<Arc<str>>,
    /// Channels whose presence the holder may read.
    presence: Arc<[String]>,
    /// Unix ms at which the grant ends; `None` when auth is off.
    expires_ms: Option<u64>,
    subscribe: Arc<[String]>,
    publish: Arc<[String]>,
}

impl Grant {
    /// Everything, forever (auth off).
    pub fn all() -> Self {
        // One grant shared by every connection: built per connection it
        // cost six allocations that each idle connection kept (heaptrack,
        // 2 000 idle WebSockets).
        static ALL: LazyLock<Grant> = LazyLock::new(|| {
            Grant(Arc::new(GrantFields {
                sub: None,
                presence: Arc::from(["*".to_owned()]),
                expires_ms: None,
                subscribe: Arc::from(["*".to_owned()]),
                publish: Arc::from(["*".to_owned()]),
            }))
        });
        ALL.clone()
    }

    /// Unix ms at which live subscriptions under this grant must end.
    pub fn expires_ms(&self) -> Option<u64> {
        self.0.expires_ms
    }

    /// How long until expiry, from now; `None` = never.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.0
            .expires_ms
            .map(|e| std::time::Duration::from_millis(e.saturating_sub(now_ms())))
    }

    fn live(&self) -> Result<(), AuthError> {
        match self.0.expires_ms {
            Some(e) if now_ms() >= e => Err(AuthError::Expired),
            _ => Ok(()),
        }
    }

    /// May the holder subscribe to (or poll) `channel`?
    pub fn can_subscribe(&self, channel: &ChannelName) -> Result<(), AuthError> {
        self.live()?;
        allowed(&self.0.subscribe, channel, "subscribe")
    }

    /// The token's `sub`, if auth is on and the token has one.
    pub fn subject(&self) -> Option<&str> {
        self.0.sub.as_deref()
    }

    /// Whether a token was checked (auth on), so `sub` is the identity.
    pub fn authenticated(&self) -> bool {
        self.0.expires_ms.is_some()
    }

    /// May the holder read the presence of `channel`?
    pub fn can_read_presence(&self, channel: &ChannelName) -> Result<(), AuthError> {
        self.live()?;
        allowed(&self.0.presence, channel, "presence")
    }

    /// May the holder publish to `channel`?
    pub fn can_publish(&self, channel: &ChannelName) -> Result<(), AuthError> {
        self.live()?;
        allowed(&self.0.publish, channel, "publish")
    }
}

fn allowed(
    patterns: &[String],
    channel: &ChannelName,
    action: &'static str,
) -> Result<(), AuthError> {
    if patterns.iter().any(|p| matches(p, channel.as_str())) {
        Ok(())
    } else {
        Err(AuthError::Forbidden {
            action,
            channel: channel.as_str().to_owned(),
        })
    }
}

/// Glob match where `*` stands for any run of characters (including none).
fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*` at all: exact match
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The token of a request: `Authorization: Bearer …` first, else the
/// `token` query parameter.
pub fn token_from<'a>(
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(t) = authorization.and_then(|h| h.strip_prefix("Bearer ")) {
        return Some(std::borrow::Cow::Borrowed(t.trim()));
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(|t| percent_decode(t))
}

/// JWTs are base64url with dots, which need no escaping; decode `%XX`
/// anyway for clients that escape everything.
fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return std::borrow::Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn token(secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn patterns() {
        assert!(matches("*", "anything"));
        assert!(matches("room:*", "room:1"));
        assert!(matches("room:*", "room:"));
        assert!(!matches("room:*", "lobby"));
        assert!(matches("a*c*e", "abcde"));
        assert!(!matches("a*c*e", "abde"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
        assert!(matches("*:news", "sport:news"));
        assert!(!matches("ab*ba", "aba"), "parts may not overlap");
    }

    #[test]
    fn tokens_grant_what_their_claims_say() {
        let auth = Auth::hs256(b"secret");
        let exp = now_ms() / 1000 + 60;
        let t = token(
            b"secret",
            serde_json::json!({"exp": exp, "subscribe": ["room:*"], "publish": ["room:me"]}),
        );
        let g = auth.check(Some(&t)).unwrap();
        assert!(g.can_subscribe(&ch("room:1")).is_ok());
        assert!(g.can_publish(&ch("room:me")).is_ok());
        assert!(matches!(
            g.can_publish(&ch("room:1")),
            Err(AuthError::Forbidden { .. })
        ));
        assert!(matches!(
            g.can_subscribe(&ch("other")),
            Err(AuthError::Forbidden { .. })
        ));
        assert_eq!(g.expires_ms(), Some(exp * 1000));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let auth = Auth::hs256(b"secret");
        assert_eq!(auth.check(None).unwrap_err(), AuthError::Missing);
        let exp = now_ms() / 1000 + 60;
        let wrong = token(b"other", serde_json::json!({"exp": exp}));
        assert!(matches!(
            auth.check(Some(&wrong)),
            Err(AuthError::Invalid(_))
        ));
        let old = token(b"secret", serde_json::json!({"exp": 1000}));
        assert_eq!(auth.check(Some(&old)).unwrap_err(), AuthError::Expired);
        let no_exp = token(b"secret", serde_json::json!({"subscribe": ["*"]}));
        assert!(matches!(
            auth.check(Some(&no_exp)),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.check(Some("garbage")),
            Err(AuthError::Invalid(_))
        ));
        assert!(Auth::disabled().check(None).is_ok());
    }

    #[test]
    fn token_sources() {
        assert_eq!(
            token_from(Some("Bearer abc"), Some("token=zzz")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_from(None, Some("since=1&token=a.b.c")).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            token_from(None, Some("token=a%2Eb")).as_deref(),
            Some("a.b")
        );
        assert_eq!(token_from(Some("Basic x"), None), None);
    }
}
