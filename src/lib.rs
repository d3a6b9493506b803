//! Ladder: one pub/sub hub served over every rung of the real-time ladder.
#![warn(missing_docs, unreachable_pub)]

pub mod hub;
pub mod protocol;
