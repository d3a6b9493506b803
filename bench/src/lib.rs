//! `ladder-bench`: the load and comparison harness for Ladder.
//!
//! # Layout
//!
//! - [`load`]: the fan-out workload — N subscribers on one transport, one
//!   publisher at a fixed rate or as fast as possible for a bounded count —
//!   and what it measures ([`report::LoadResult`]).
//! - [`idle`]: N idle connections, memory per connection.
//! - [`versions`]: SSE over HTTP/1.1, HTTP/2 and HTTP/3 side by side (CPU
//!   per delivery, memory per subscriber, as ratios).
//! - [`floor`]: the one-`send()`-per-delivery floor of this machine.
//! - [`backends`]: publish throughput and latency of every log backend
//!   (memory, durable, Redis) side by side, servers in-process.
//! - [`quic_base`]: raw quinn vs a Ladder WebTransport stream (bulk, echo),
//!   and fan-out's QUIC floor (`floor --quic`).
//! - [`hol`]: head-of-line blocking under real packet loss: N channels on
//!   one WebSocket against a WebTransport stream per channel and datagrams,
//!   across an emulated lossy wire inside a network namespace.
//! - [`clients`]: the load loop of each transport (and the Node peers'
//!   protocols: plain `ws` and hand-framed Socket.IO v4), on the test kit's
//!   connections (`ladder-testkit`: WebSocket, WebTransport endpoints,
//!   source-address TCP).
//! - [`probe`]: the server process (started here or given by pid), its CPU
//!   time and RSS from `/proc`, and `/api/stats` deltas.
//! - [`track`]: per-subscriber loss / duplicate / reorder accounting from
//!   offsets, and the shared HDR latency histogram.
//! - [`sys`]: file-descriptor limit, CPU pinning, source addresses.
//! - [`report`]: the human table and the one-JSON-line-per-run output.
//!
//! Every run is bounded in count and time and talks to loopback only (or,
//! for `hol`, to the wire of a namespace it made).

pub mod backends;
pub mod clients;
pub mod floor;
pub mod hol;
pub mod idle;
pub mod load;
pub mod probe;
pub mod quic_base;
pub mod report;
pub mod scale;
pub mod sys;
pub mod track;
pub mod versions;
