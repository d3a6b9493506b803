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
//! Layers, highest first; a module uses only its own layer and those below
//! (checked by a unit test over every `crate::` path in `src/`):
//!
//! 1. [`server`]: the composition root, [`server::Server::bind`] then
//!    [`server::Server::run`]. It makes the shared state and the fan-out
//!    registry and hands them to the listeners.
//! 2. Listeners: `http`, the plain HTTP/1.1 listener (with its lean
//!    path), the TLS listener for HTTP/1.1 + HTTP/2 and HTTP/3 for the
//!    router; `quic`, the WebTransport endpoint, its twin.
//! 3. [`transport`]: one adapter per rung, translating framing to hub calls,
//!    with what they share: request extractors, the socket meter, the
//!    channels' fan-outs.
//! 4. Shared state: [`context`], [`stats`], [`limits`], [`auth`],
//!    [`config`], [`tls`], which makes and loads the certificate,
//!    `socket`, the reference-counted TCP socket the meter and the
//!    fan-out share, and `lab`, the network lab beside the server.
//! 5. [`hub`]: the pub/sub core. A pure ring buffer per channel
//!    ([`hub::ChannelLog`]) plus the async handle [`hub::Hub`], over a log
//!    backend ([`hub::backend`]): memory, an embedded durable file, or Redis.
//! 6. [`protocol`]: the one wire format; messages are encoded once.
//! 7. [`name`]: the vocabulary the wire format and the hub share: channel
//!    names, epochs, positions.
//!
//! `fuzzing` (hidden) re-exports parsers for the fuzz targets.

// Unsafe code is confined to the `uring` feature's module
// (`transport::websocket::uring`), which allows it for itself.
#![deny(unsafe_code)]

pub mod auth;
pub mod config;
pub mod context;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod http;
pub mod hub;
pub(crate) mod lab;
#[cfg(test)]
mod layering;
pub mod limits;
pub mod name;
pub mod protocol;
pub(crate) mod quic;
pub mod server;
pub(crate) mod socket;
pub mod stats;
pub mod tls;
pub mod transport;
