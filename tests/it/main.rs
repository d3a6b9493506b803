//! Integration tests: one binary, one module per area (see STYLE.md). Each
//! test starts the real server on loopback with OS-chosen ports.

mod helpers;

mod cross_transport;
mod errors;
mod polling;
mod shutdown;
mod sse;
mod stats;
mod websocket;
