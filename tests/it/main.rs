//! Integration tests: one binary (so it links once), one module per area. Each
//! test starts the real server on loopback with OS-chosen ports.

// Test helpers are `pub` for sibling modules, not for export.
#![allow(unreachable_pub)]

mod helpers;
mod tls_clients;
mod wt_client;

mod auth;
mod backends;
mod bad_input;
mod browser;
mod cross_transport;
mod errors;
mod h3;
mod https;
mod lean_diff;
mod polling;
mod presence;
mod presence_nodes;
mod presence_tabs;
mod presence_tabs_http;
mod shutdown;
mod soak;
mod sse;
mod stats;
mod tls_limits;
mod websocket;
mod webtransport;
