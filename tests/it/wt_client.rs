//! The WebTransport test client is `ladder-testkit`'s (sessions pinning the
//! served certificate hash, streams of JSON lines that report how they
//! ended); re-exported under the name the tests use.

pub use ladder_testkit::wt::*;
