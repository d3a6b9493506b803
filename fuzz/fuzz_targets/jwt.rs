//! The JWT check: `token_from` (the `Authorization` header or the `token`
//! query parameter, percent-decoded) and `Auth::check` (HS256 signature,
//! `exp`, the claims), then the grant's channel patterns.
//!
//! Three things per input: the raw text as a token (must be refused, never
//! panic); the text as a JSON object signed with the right key (the claims
//! parser sees arbitrary claims); and `|`-separated patterns put in a signed
//! token, whose grant must match channels exactly as a reference glob does.

#![no_main]

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ladder::fuzzing::{Auth, token_from};
use ladder::fuzzing::ChannelName;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const SECRET: &[u8] = b"fuzz-secret";

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let auth = Auth::hs256(SECRET);

    // Where tokens come from.
    let (header, query) = text.split_once('\u{1}').unwrap_or((&*text, &*text));
    if let Some(t) = token_from(Some(header), Some(query)) {
        if let Some(h) = header.strip_prefix("Bearer ") {
            assert_eq!(&*t, h.trim());
        }
        assert!(auth.check(Some(&t)).is_err(), "an unsigned token passed");
    }
    let _ = token_from(None, Some(query));
    assert!(auth.check(Some(&text)).is_err(), "an unsigned token passed");

    // Arbitrary claims, correctly signed.
    if let Ok(claims @ Value::Object(_)) = serde_json::from_str::<Value>(&text)
        && let Ok(grant) = auth.check(Some(&sign(&claims)))
    {
        let exp = claims["exp"].as_u64().expect("a grant needs a numeric exp");
        assert_eq!(grant.expires_ms(), Some(exp.saturating_mul(1000)));
        let _ = grant.can_subscribe(&ChannelName::parse("c").expect("name"));
    }

    // Patterns against channels, compared with a reference matcher.
    let mut fields = text.split('\u{0}');
    let patterns: Vec<&str> = fields.next().unwrap_or_default().split('|').collect();
    let far = 4_000_000_000u64; // year 2096
    let token = sign(&json!({"exp": far, "subscribe": patterns, "publish": []}));
    let grant = auth.check(Some(&token)).expect("a well-signed token");
    for channel in fields {
        let Ok(name) = ChannelName::parse(channel) else {
            continue;
        };
        let want = patterns
            .iter()
            .any(|p| glob(p.as_bytes(), channel.as_bytes()));
        assert_eq!(
            grant.can_subscribe(&name).is_ok(),
            want,
            "patterns {patterns:?} channel {channel:?}"
        );
        assert!(grant.can_publish(&name).is_err());
    }
});

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .expect("encode")
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob(p: &[u8], s: &[u8]) -> bool {
    // m[j] = whether p[..i] matches s[..j], row by row.
    let mut m = vec![false; s.len() + 1];
    m[0] = true;
    for &c in p {
        let mut next = vec![false; s.len() + 1];
        for j in 0..=s.len() {
            next[j] = if c == b'*' {
                m[j] || (j > 0 && next[j - 1])
            } else {
                j > 0 && m[j - 1] && s[j - 1] == c
            };
        }
        m = next;
    }
    m[s.len()]
}
