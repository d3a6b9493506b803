//! The lean HTTP/1.1 path's request heads (`src/http/lean.rs`): the bytes a
//! connection opens with, or that follow a kept-alive poll, are either
//! served there or handed to hyper.
//!
//! Besides "never panics", what it accepts must be safe to serve without
//! hyper: a complete HTTP/1.1 `GET` head of an event stream or a poll,
//! with no body framing, protocol switch or folded header line anywhere in
//! it (checked on the raw bytes, not through the parser); no strict prefix
//! of an accepted head is accepted (a head is never served before the
//! client has finished it); and the head written back canonically reads
//! back as the same request.

#![no_main]

use ladder::fuzzing::{LEAN_PEEK_BYTES, lean_head};
use libfuzzer_sys::fuzz_target;

/// Header names whose presence must send a request to hyper.
const HYPERS: [&str; 4] = ["content-length", "transfer-encoding", "upgrade", "expect"];

fuzz_target!(|bytes: &[u8]| {
    // The lean path never looks at more than this at once.
    let bytes = &bytes[..bytes.len().min(LEAN_PEEK_BYTES)];
    let Some(head) = lean_head(bytes) else {
        return;
    };
    let raw = &bytes[..head.len];
    assert!(raw.starts_with(b"GET /api/channels/"), "{raw:?}");
    assert!(
        raw.ends_with(b"\n\n") || raw.ends_with(b"\n\r\n"),
        "accepted without an empty line: {raw:?}"
    );
    let req = &head.request;
    assert_eq!(req.method(), "GET");
    // HTTP/1.0 is hyper's.
    assert_eq!(req.version(), axum::http::Version::HTTP_11);
    let path = req.uri().path();
    assert!(path.starts_with("/api/channels/"), "{path}");
    if head.event_stream {
        assert!(path.ends_with("/events"), "{path}");
    } else {
        assert!(path.ends_with("/messages"), "{path}");
    }
    for name in HYPERS {
        assert!(!req.headers().contains_key(name), "kept {name}");
    }

    // The raw head, line by line, independently of the parser.
    for line in raw.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            !line.starts_with(b" ") && !line.starts_with(b"\t"),
            "accepted an obs-fold line: {raw:?}"
        );
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        let name = String::from_utf8_lossy(name);
        assert!(
            !HYPERS.iter().any(|h| name.trim().eq_ignore_ascii_case(h)),
            "accepted a head with {name}: {raw:?}"
        );
    }

    // Never served before the client has finished it.
    assert!(lean_head(&raw[..raw.len() - 1]).is_none(), "{raw:?}");
    let cut = usize::from(bytes[bytes.len() - 1]) * raw.len() / 256;
    assert!(lean_head(&raw[..cut]).is_none(), "prefix {cut} of {raw:?}");
    // What follows the head does not change it.
    let again = lean_head(raw).expect("the head alone");
    assert_eq!(again.len, head.len);
    assert_eq!(again.request.uri(), req.uri());

    // Written back canonically, the same request reads back.
    let mut canonical = format!("GET {} HTTP/1.1\r\n", req.uri()).into_bytes();
    for (name, value) in req.headers() {
        canonical.extend_from_slice(name.as_str().as_bytes());
        canonical.extend_from_slice(b": ");
        canonical.extend_from_slice(value.as_bytes());
        canonical.extend_from_slice(b"\r\n");
    }
    canonical.extend_from_slice(b"\r\n");
    if canonical.len() <= LEAN_PEEK_BYTES {
        let back = lean_head(&canonical).expect("the canonical form is served too");
        assert_eq!(back.event_stream, head.event_stream);
        assert_eq!(back.close, head.close);
        assert_eq!(back.request.uri(), req.uri());
        assert_eq!(back.request.headers(), req.headers());
        assert_eq!(back.len, canonical.len());
    }
});
