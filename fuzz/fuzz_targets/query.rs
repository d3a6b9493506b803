//! Query parameters and the SSE `Last-Event-ID` header: `since` and
//! `epoch` (`parse_position`), `limit`, `wait`, and `parse_last_event_id`.
//!
//! Besides "never panics": accepted values are in range, and an id of the
//! form we issue (`epoch:offset`) always reads back as exactly that position.

#![no_main]

use ladder::fuzzing::parse_position;
use ladder::fuzzing::{MAX_LIMIT, MAX_WAIT_SECS, parse_limit, parse_wait};
use ladder::fuzzing::parse_last_event_id;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    // Up to three fields separated by `&`, like a query string.
    let mut parts = text.splitn(3, '&');
    let a = parts.next().unwrap_or_default();
    let b = parts.next();
    let c = parts.next();

    if let Ok(p) = parse_position(Some(a), b) {
        assert_eq!(p.since, a.parse::<u64>().ok());
        if let Some(e) = &p.epoch {
            assert!(!e.is_empty() && e.len() <= 64);
        }
    }
    let _ = parse_position(None, Some(a));
    if let Ok(n) = parse_limit(Some(a)) {
        assert!((1..=MAX_LIMIT).contains(&n));
    }
    if let Ok(w) = parse_wait(a) {
        assert!(w.as_secs_f64() <= MAX_WAIT_SECS);
    }
    let _ = parse_wait(c.unwrap_or(a));

    // Whatever the browser sends back.
    let _ = parse_last_event_id(&text);
    // What we issue must come back exactly.
    if !a.is_empty() && a.len() <= 64 {
        let offset = bytes.iter().fold(0u64, |acc, &x| {
            acc.wrapping_mul(131).wrapping_add(u64::from(x))
        });
        let p = parse_last_event_id(&format!("{a}:{offset}")).expect("our own id parses");
        assert_eq!(p.since, Some(offset));
        assert_eq!(p.epoch.as_deref(), Some(&*a));
    }
});
