//! Walks the route table and checks that the three readers agree on every
//! entry: the router (driven as a tower service, with axum's own record of
//! the route it matched) serves it with the entry's handler, `classify`
//! counts it under the entry's rung, and the lean path serves it or hands
//! it to hyper as the entry says. Paths next to the routes but on none of
//! them, and methods a route does not take, get a 404 or a 405 from every
//! reader.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::{Next, from_fn};
use axum::response::Response;
use tower::ServiceExt;

use super::{Endpoint, Lean, Methods, ROUTES, Route, Rung, find};
use crate::config::Config;
use crate::context::Ctx;
use crate::http::{api, classify, lean};
use crate::hub::{Hub, HubConfig};
use crate::stats::{Stats, Transport};
use crate::transport::fanout::Fanouts;

/// The route axum matched, copied from the request into the response.
#[derive(Debug, Clone)]
struct Matched(String);

async fn record(req: Request, next: Next) -> Response {
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let mut resp = next.run(req).await;
    if let Some(m) = matched {
        resp.extensions_mut().insert(Matched(m));
    }
    resp
}

fn router() -> Router {
    let ctx = Ctx::new(
        Config::default(),
        Hub::new(HubConfig::default()),
        Arc::new(Stats::new()),
        "127.0.0.1:1".parse().unwrap(),
        crate::auth::Auth::disabled(),
    );
    api::router(ctx, Fanouts::default()).layer(from_fn(record))
}

/// A path the pattern matches: each parameter filled in.
fn example(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|seg| match seg {
            s if s.starts_with("{*") => "x/y",
            s if s.starts_with('{') => "t",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The methods to try on an entry: each it takes (HEAD with GET), or a few
/// when it takes any.
fn methods(route: &Route) -> Vec<Method> {
    match route.methods {
        Methods::Any => vec![Method::GET, Method::POST, Method::DELETE],
        Methods::Only(ms) => {
            let mut v = ms.to_vec();
            if ms.contains(&Method::GET) {
                v.push(Method::HEAD);
            }
            v
        }
    }
}

/// The router's answer and the route it matched, if any.
async fn serve(router: &Router, method: &Method, target: &str) -> (StatusCode, Option<String>) {
    let req = Request::builder()
        .method(method)
        .uri(target)
        .body(Body::empty())
        .unwrap();
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        router.clone().oneshot(req),
    )
    .await
    .expect("the router answers")
    .unwrap();
    let matched = resp.extensions().get::<Matched>().map(|m| m.0.clone());
    (resp.status(), matched)
}

fn classified(method: &Method, target: &str) -> Transport {
    let req = Request::builder()
        .method(method)
        .uri(target)
        .body(())
        .unwrap();
    classify(&req)
}

/// What the lean path does with a connection opening with this request.
fn lean_kind(method: &Method, target: &str) -> Option<Lean> {
    let head = format!("{method} {target} HTTP/1.1\r\nhost: x\r\n\r\n");
    lean::parse_head(head.as_bytes()).map(|(kind, _, _)| kind)
}

#[tokio::test]
async fn every_entry_is_served_classified_and_leaned_as_the_table_says() {
    let router = router();
    for route in ROUTES {
        let path = example(route.path);
        for method in methods(route) {
            let at = format!("{method} {path} ({})", route.path);
            // The router runs the handler of exactly this entry's pattern.
            let (status, matched) = serve(&router, &method, &path).await;
            assert_eq!(matched.as_deref(), Some(route.path), "{at}");
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{at}");
            let found = find(&method, &path).unwrap_or_else(|| panic!("{at}: not found"));
            assert_eq!(found.endpoint, route.endpoint, "{at}");
            assert_eq!(found.path, route.path, "{at}");
            // Counted under its rung, as each rung is known to be.
            let expected = match route.endpoint {
                Endpoint::Events => Transport::Sse,
                Endpoint::WebSocket => Transport::WebSocket,
                Endpoint::Poll => Transport::Poll,
                _ => Transport::Api,
            };
            assert_eq!(classified(&method, &path), expected, "{at}");
            if route.rung == Rung::Poll {
                let waits = format!("{path}?since=0&wait=5");
                assert_eq!(classified(&method, &waits), Transport::LongPoll, "{at}");
            }
            // Served by the lean path only where the table allows it, and
            // only its GETs; everything else is hyper's.
            let leaned = if method == Method::GET {
                route.lean
            } else {
                None
            };
            assert_eq!(lean_kind(&method, &path), leaned, "{at}");
            if let Some(kind) = route.lean {
                assert!(
                    format!("GET {path}")
                        .as_bytes()
                        .starts_with(super::LEAN_PREFIX)
                );
                let target = format!("{path}?since=0");
                assert_eq!(lean_kind(&Method::GET, &target), Some(kind), "{at}");
            }
        }
    }
}

#[tokio::test]
async fn paths_and_methods_off_the_table_get_404_or_405_everywhere() {
    let router = router();
    let near = [
        "/api/channels/t/events/",
        "/api/channels/t/u/events",
        "/api/channel/t/messages",
        "/api/channels/t/message",
        "/api/channels/t/presence/x",
        "/api/ws/",
        "/api/wsx",
        "/api/info/x",
        "/api/lab",
        "/metrics/x",
        "/no-such-file.html",
    ];
    for path in near {
        for method in [Method::GET, Method::POST] {
            // Only a catch-all takes it, and it answers 404; or none takes
            // the method (the page's files are only read), a 405.
            let (status, matched) = serve(&router, &method, path).await;
            match find(&method, path) {
                Some(route) => {
                    assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
                    assert!(
                        [Endpoint::NoSuchApi, Endpoint::Page].contains(&route.endpoint),
                        "{method} {path}: {route:?}"
                    );
                    assert_eq!(matched.as_deref(), Some(route.path), "{method} {path}");
                }
                None => {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                    assert!(!path.starts_with("/api/"), "{method} {path}");
                }
            }
            assert_eq!(classified(&method, path), Transport::Api, "{path}");
            assert_eq!(lean_kind(&method, path), None, "{method} {path}");
        }
    }
    // A method no entry of a path takes: 405 from the router, API traffic,
    // and hyper's.
    for route in ROUTES {
        let Methods::Only(_) = route.methods else {
            continue;
        };
        let path = example(route.path);
        let (status, _) = serve(&router, &Method::DELETE, &path).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "DELETE {path}");
        assert!(find(&Method::DELETE, &path).is_none(), "DELETE {path}");
        assert_eq!(classified(&Method::DELETE, &path), Transport::Api);
        assert_eq!(lean_kind(&Method::DELETE, &path), None, "DELETE {path}");
    }
}

#[test]
fn lean_entries_are_get_routes_under_the_lean_prefix() {
    for route in ROUTES.iter().filter(|r| r.lean.is_some()) {
        assert!(route.methods.allow(&Method::GET), "{}", route.path);
        let head = format!("GET {}", route.path);
        assert!(
            head.as_bytes().starts_with(super::LEAN_PREFIX),
            "{}",
            route.path
        );
    }
}
