//! The one route table: every route the HTTP listeners serve, with what
//! each one is.
//!
//! Three parts of the listener decide by route, and all three read
//! [`ROUTES`]:
//!
//! - the router factory (`api::router`) builds the axum router from it, one
//!   `route` per entry, the handler chosen by the entry's [`Endpoint`];
//! - `classify` (in `super`) finds a request's entry to count it under its
//!   rung ([`Rung`]) before the router runs;
//! - the lean HTTP/1.1 path (`super::lean`) serves a request itself only if
//!   its entry says it may ([`Route::lean`]), and hands everything else to
//!   hyper.
//!
//! Entry point: [`find`]. It matches paths with `matchit`, the matcher
//! inside axum's router, on the same patterns, so a path finds here the
//! entry whose handler the router runs for it (the tests in
//! `routes/tests.rs` walk the table and check that over the router itself).

use std::sync::LazyLock;

use axum::http::Method;

use crate::stats::Transport;

/// Which handler serves a route (the router factory maps each to one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/api/info`: versions, rungs, listeners, the WebTransport URL and
    /// certificate hash.
    Info,
    /// `/api/stats`: the counters as JSON.
    Stats,
    /// `/api/lab/switch`: the network lab's network switch.
    LabSwitch,
    /// `/api/lab/wire`: what crossed `lossy-link`'s wire, and was dropped.
    LabWire,
    /// `/metrics`: the counters in OpenMetrics text.
    Metrics,
    /// A short or long poll.
    Poll,
    /// A publish.
    Publish,
    /// An SSE event stream.
    Events,
    /// A channel's presence.
    Presence,
    /// The WebSocket upgrade (GET, or extended CONNECT over HTTP/2).
    WebSocket,
    /// Any other path under `/api/`: a JSON 404.
    NoSuchApi,
    /// The page's static files (`--web-dir`); a missing file is a 404.
    Page,
}

/// The methods a route answers; any other gets a 405.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Methods {
    /// These methods (GET implies HEAD, as in axum).
    Only(&'static [Method]),
    /// Every method: the handler decides.
    Any,
}

impl Methods {
    /// Whether a request with `method` reaches the route's handler.
    pub(crate) fn allow(self, method: &Method) -> bool {
        match self {
            Self::Any => true,
            Self::Only(ms) => {
                ms.contains(method) || (method == Method::HEAD && ms.contains(&Method::GET))
            }
        }
    }
}

/// The transport a route's requests are counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rung {
    /// Always this one.
    Is(Transport),
    /// A poll: long if the query has `wait=`, short otherwise.
    Poll,
}

impl Rung {
    /// The transport of a request with this query string.
    pub(crate) fn of(self, query: Option<&str>) -> Transport {
        match self {
            Self::Is(t) => t,
            Self::Poll => {
                let waits = query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("wait=")));
                if waits {
                    Transport::LongPoll
                } else {
                    Transport::Poll
                }
            }
        }
    }
}

/// How the lean path serves a route's `GET` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lean {
    /// One response streamed until the connection closes.
    EventStream,
    /// Whole responses on a kept-alive connection.
    Poll,
}

/// One route: a path pattern (axum's syntax), its methods and what it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    /// The path pattern, as axum and `matchit` read it.
    pub(crate) path: &'static str,
    /// The methods it answers.
    pub(crate) methods: Methods,
    /// Its handler.
    pub(crate) endpoint: Endpoint,
    /// The transport its requests count under.
    pub(crate) rung: Rung,
    /// Whether the lean path may serve its `GET` requests, and how;
    /// `None`: always hyper.
    pub(crate) lean: Option<Lean>,
}

const GET: Methods = Methods::Only(&[Method::GET]);
const API: Rung = Rung::Is(Transport::Api);

/// Every route of the HTTP listeners (HTTP/1.1, `--https`, HTTP/3). Two
/// entries may share a path with different methods.
pub(crate) const ROUTES: &[Route] = &[
    Route {
        path: "/api/info",
        methods: GET,
        endpoint: Endpoint::Info,
        rung: API,
        lean: None,
    },
    Route {
        path: "/api/stats",
        methods: GET,
        endpoint: Endpoint::Stats,
        rung: API,
        lean: None,
    },
    Route {
        path: "/api/lab/switch",
        methods: Methods::Only(&[Method::POST]),
        endpoint: Endpoint::LabSwitch,
        rung: API,
        lean: None,
    },
    Route {
        path: "/api/lab/wire",
        methods: GET,
        endpoint: Endpoint::LabWire,
        rung: API,
        lean: None,
    },
    Route {
        path: "/metrics",
        methods: GET,
        endpoint: Endpoint::Metrics,
        rung: API,
        lean: None,
    },
    Route {
        path: "/api/channels/{channel}/messages",
        methods: GET,
        endpoint: Endpoint::Poll,
        rung: Rung::Poll,
        lean: Some(Lean::Poll),
    },
    Route {
        path: "/api/channels/{channel}/messages",
        methods: Methods::Only(&[Method::POST]),
        endpoint: Endpoint::Publish,
        rung: API,
        lean: None,
    },
    Route {
        path: "/api/channels/{channel}/events",
        methods: GET,
        endpoint: Endpoint::Events,
        rung: Rung::Is(Transport::Sse),
        lean: Some(Lean::EventStream),
    },
    Route {
        path: "/api/channels/{channel}/presence",
        methods: GET,
        endpoint: Endpoint::Presence,
        rung: API,
        lean: None,
    },
    // CONNECT too: WebSocket over HTTP/2 is an extended CONNECT (RFC 8441),
    // which axum's upgrade accepts on `--https`.
    Route {
        path: "/api/ws",
        methods: Methods::Only(&[Method::GET, Method::CONNECT]),
        endpoint: Endpoint::WebSocket,
        rung: Rung::Is(Transport::WebSocket),
        lean: None,
    },
    Route {
        path: "/api/{*rest}",
        methods: Methods::Any,
        endpoint: Endpoint::NoSuchApi,
        rung: API,
        lean: None,
    },
    Route {
        path: "/",
        methods: GET,
        endpoint: Endpoint::Page,
        rung: API,
        lean: None,
    },
    Route {
        path: "/{*file}",
        methods: GET,
        endpoint: Endpoint::Page,
        rung: API,
        lean: None,
    },
];

/// What every request head the lean path may serve starts with: it looks
/// no further at a connection's first bytes otherwise (a unit test keeps
/// every lean entry's path under it).
pub(crate) const LEAN_PREFIX: &[u8] = b"GET /api/channels/";

/// The table's paths in `matchit`, each with its entries' indices.
static MATCHER: LazyLock<matchit::Router<Vec<usize>>> = LazyLock::new(|| {
    let mut paths: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, route) in ROUTES.iter().enumerate() {
        match paths.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, entries)) => entries.push(i),
            None => paths.push((route.path, vec![i])),
        }
    }
    let mut m = matchit::Router::new();
    for (path, entries) in paths {
        // The same patterns build axum's router, which would refuse them
        // at start-up too.
        m.insert(path, entries)
            .unwrap_or_else(|e| panic!("route {path}: {e}"));
    }
    m
});

/// The entry a request with `method` to `path` is served by; `None` when
/// its path matches but not its method (the router answers 405).
pub(crate) fn find(method: &Method, path: &str) -> Option<&'static Route> {
    let found = MATCHER.at(path).ok()?;
    found
        .value
        .iter()
        .map(|&i| &ROUTES[i])
        .find(|r| r.methods.allow(method))
}

#[cfg(test)]
mod tests;
