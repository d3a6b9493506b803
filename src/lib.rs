//! Ladder: one pub/sub hub served over every rung of the real-time ladder —
//! short polling, long polling, Server-Sent Events, WebSocket and
//! WebTransport over HTTP/3.
//!
//! ```text
//!            HTTP/1.1 listener (http/)              QUIC endpoint (quic)
//!   poll  long poll  SSE  WebSocket  publish         WebTransport sessions
//!     \       |       |       |        /              streams   datagrams
//!      '------+-------+-------+-------'                  \        /
//!                 transport/ adapters  ----------------  transport/
//!                              \                        /
//!                               '------  hub/  --------'
//!                         channel logs, offsets, epochs, subscriptions
//! ```
//!
//! # Layout
//!
//! - [`hub`]: the pub/sub core. A pure ring buffer per channel
//!   ([`hub::ChannelLog`]) plus the async handle [`hub::Hub`], over a log
//!   backend ([`hub::backend`]): memory, an embedded durable file, or Redis.
//! - [`protocol`]: the one wire format; messages are encoded once.
//! - [`transport`]: one adapter per rung, translating framing to hub calls.
//! - [`http`]: the HTTP/1.1 listener, its routes and byte metering.
//! - [`quic`]: the HTTP/3 + WebTransport endpoint (its twin), with
//!   certificate rotation; [`tls`] makes and loads the certificate.
//! - [`server`]: the composition root, [`server::Server::bind`] then
//!   [`server::Server::run`].
//! - [`config`], [`context`], [`stats`]: settings, shared state, counters.
//! - [`lab`]: the network lab's relays beside the server (`--lab`).

// Unsafe code is confined to the `uring` feature's module
// (`transport::websocket::uring`), which allows it for itself.
#![deny(unsafe_code)]

pub mod auth;
pub mod config;
pub mod context;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod hub;
pub mod lab;
pub mod limits;
pub mod name;
pub mod protocol;
pub mod quic;
pub mod server;
pub mod socket;
pub mod stats;
pub mod tls;
pub mod transport;
