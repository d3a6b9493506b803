//! WebTransport stream framing: `LineBuf` splits whatever chunks QUIC
//! delivers into `\n`-terminated lines and refuses to buffer one longer than
//! its limit.
//!
//! The input is cut into chunks at fuzzer-chosen points; the lines that come
//! out must equal a plain split of the whole input, up to the first line over
//! the limit, which must be refused (and nothing over the limit returned).

#![no_main]

use ladder::fuzzing::LineBuf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&head, rest)) = input.split_first() else {
        return;
    };
    let limit = usize::from(head % 32) + 1;
    // Chunk lengths come from the bytes themselves: a byte < 8 ends a chunk.
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for (i, b) in rest.iter().enumerate() {
        if *b < 8 {
            chunks.push(&rest[start..=i]);
            start = i + 1;
        }
    }
    chunks.push(&rest[start..]);

    let mut expected = rest.split(|&b| b == b'\n').collect::<Vec<_>>();
    let trailing = expected.pop().unwrap_or_default(); // no newline after it

    let mut buf = LineBuf::new(limit);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut refused = false;
    'feed: for chunk in chunks {
        buf.push(chunk);
        loop {
            match buf.next_line() {
                Ok(Some(line)) => {
                    assert!(line.len() <= limit, "a line over the limit came out");
                    got.push(line);
                }
                Ok(None) => break,
                Err(n) => {
                    assert_eq!(n, limit);
                    refused = true;
                    break 'feed;
                }
            }
        }
    }
    for (i, line) in got.iter().enumerate() {
        assert_eq!(line.as_slice(), expected[i], "line {i}");
    }
    if refused {
        // The refusal is for the first line (complete or not) over the limit.
        let next = expected.get(got.len()).copied().unwrap_or(trailing);
        assert!(next.len() > limit, "refused a line within the limit");
    } else {
        assert_eq!(
            got.len(),
            expected.len(),
            "a complete line was not returned"
        );
        assert!(
            trailing.len() <= limit,
            "an over-long partial line was buffered"
        );
    }
});
