//! Channel names from URL paths and op fields: `ChannelName::parse` must
//! accept exactly `^[A-Za-z0-9._:-]{1,128}$`.

#![no_main]

use ladder::fuzzing::ChannelName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let allowed = (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    match ChannelName::parse(text) {
        Ok(name) => {
            assert!(allowed, "accepted {text:?}");
            assert_eq!(name.as_str(), text);
        }
        Err(_) => assert!(!allowed, "refused {text:?}"),
    }
});
