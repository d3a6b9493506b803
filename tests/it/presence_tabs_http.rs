//! Tabs in presence on SSE and polls: a request that names `tab`s (the
//! repeatable query parameter a browser's shared connection sends when it
//! falls back to these rungs) joins one member per tab. On SSE they leave
//! when the stream ends; on polls they live by the poll lease. Bad tabs
//! and too many get clear errors with nothing joined.

use anyhow::{Result, ensure};
use serde_json::json;

use crate::helpers::*;
use crate::presence::next_presence;
use crate::presence_tabs::{members, members_become, none, tab};

#[tokio::test]
async fn sse_tabs_are_members_each_and_leave_with_the_stream() -> Result<()> {
    let s = TestServer::spawn().await?;
    let ch = "sse-tabs";
    let mut sse = Sse::connect(&s, ch, "?client=ann&tab=t1&tab=t2&since=0", None).await?;
    members_become(&s, ch, &[tab("ann", "t1"), tab("ann", "t2")]).await?;
    // The stream still delivers.
    s.publish(ch, json!("hi")).await?;
    assert_eq!(sse.messages_until(1).await?[0]["data"], "hi");
    // Re-opened with another tab list (what the shared client does when a
    // tab comes or goes): the new list is the members.
    drop(sse);
    members_become(&s, ch, &none()).await?;
    let sse = Sse::connect(&s, ch, "?client=ann&tab=t2&tab=t3", None).await?;
    members_become(&s, ch, &[tab("ann", "t2"), tab("ann", "t3")]).await?;
    drop(sse);
    members_become(&s, ch, &none()).await?;
    s.shutdown().await
}

#[tokio::test]
async fn polled_tabs_are_members_each_and_lapse_when_polls_stop() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.presence_lapse = 1).await?;
    let ch = "polled-tabs";
    // A watcher sees each tab join and, after the lapse, leave.
    let mut ws = Ws::connect(&s).await?;
    ws.send(json!({"op":"subscribe","channel":ch,"presence":true}))
        .await?;
    assert_eq!(ws.recv().await?["op"], "subscribed");
    assert_eq!(next_presence(&mut ws).await?["members"], json!([]));
    let (status, body) = s
        .get_json(&format!(
            "/api/channels/{ch}/messages?client=pat&tab=a&tab=b"
        ))
        .await?;
    ensure!(
        status == 200 && body.get("presence_error").is_none(),
        "{body}"
    );
    let member = |t: &str| json!({"id":"pat","tab":t,"info":{}});
    let mut seen = Vec::new();
    for _ in 0..4 {
        let f = next_presence(&mut ws).await?;
        seen.push((f["op"].clone(), f["member"].clone()));
    }
    // Both join before either leaves (in either order).
    let joins: Vec<_> = seen[..2].iter().map(|(op, _)| op.clone()).collect();
    assert_eq!(joins, [json!("join"), json!("join")], "{seen:?}");
    let leaves: Vec<_> = seen[2..].iter().map(|(op, _)| op.clone()).collect();
    assert_eq!(leaves, [json!("leave"), json!("leave")], "{seen:?}");
    for part in [&seen[..2], &seen[2..]] {
        let mut got: Vec<String> = part.iter().map(|(_, m)| m.to_string()).collect();
        got.sort();
        assert_eq!(got, [member("a").to_string(), member("b").to_string()]);
    }
    // A long poll holds its tabs while it waits, then leases them.
    let http = s.http.clone();
    let url = s.url(&format!(
        "/api/channels/{ch}/messages?client=lp&tab=x&tab=y&wait=30"
    ));
    let waiting = tokio::spawn(async move { http.get(url).send().await });
    members_become(&s, ch, &[tab("lp", "x"), tab("lp", "y")]).await?;
    s.publish(ch, json!(1)).await?;
    let resp = within("the long poll", waiting).await???;
    assert_eq!(resp.status(), 200);
    members_become(&s, ch, &none()).await?;
    s.shutdown().await
}

#[tokio::test]
async fn bad_tabs_and_too_many_get_clear_errors_and_join_nothing() -> Result<()> {
    let s = TestServer::spawn_with(|c| {
        c.max_subscriptions = 2;
        c.max_presence = 1;
    })
    .await?;
    let ch = "bad-tabs";
    for route in ["events", "messages", "messages?wait=1&"] {
        let q = |tail: &str| match route.strip_suffix('&') {
            Some(r) => format!("/api/channels/{ch}/{r}&{tail}"),
            None => format!("/api/channels/{ch}/{route}?{tail}"),
        };
        for (tail, status, code, says) in [
            ("tab=t1", 400, "bad_request", "`tab` needs a `client`"),
            ("client=a&tab=", 400, "bad_request", "tab must be 1 to 64"),
            ("client=a&tab=a%20b", 400, "bad_request", "tab may hold"),
            ("client=a&tab=x&tab=x", 400, "bad_request", "named twice"),
            (
                "client=a&tab=1&tab=2&tab=3",
                429,
                "rate_limited",
                "at most 2 tabs",
            ),
        ] {
            let (got, body) = s.get_json(&q(tail)).await?;
            let message = body["error"]["message"].as_str().unwrap_or_default();
            ensure!(
                got == status && body["error"]["code"] == code && message.contains(says),
                "{route} {tail}: {got} {body}"
            );
        }
    }
    assert_eq!(members(&s, ch).await?, none());
    // Over --max-presence: the tabs that fit join, the stream is told why
    // the rest did not, and it still delivers.
    let mut sse = Sse::connect(&s, ch, "?client=ann&tab=t1&tab=t2&since=0", None).await?;
    let ev = sse
        .next()
        .await?
        .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
    assert_eq!(
        (ev.event.as_str(), ev.json()["code"].clone()),
        ("presence_error", json!("rate_limited"))
    );
    assert_eq!(members(&s, ch).await?, [tab("ann", "t1")]);
    s.publish(ch, json!("still")).await?;
    assert_eq!(sse.messages_until(1).await?[0]["data"], "still");
    s.shutdown().await
}

#[tokio::test]
async fn with_a_token_the_tabs_of_a_stream_or_poll_are_its_sub() -> Result<()> {
    const SECRET: &str = "tabs-http-secret";
    let s = TestServer::spawn_with(|c| c.jwt_secret = Some(SECRET.into())).await?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 600;
    let token = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
    };
    let alice = token(json!({"sub":"alice","exp":exp,"subscribe":["room"],"presence":["room"]}))?;
    let nobody = token(json!({"exp":exp,"subscribe":["room"]}))?;
    let listed = || async {
        let resp = s
            .http
            .get(s.url("/api/channels/room/presence"))
            .bearer_auth(&alice)
            .send()
            .await?;
        ensure!(resp.status() == 200, "{}", resp.status());
        let body: serde_json::Value = resp.json().await?;
        anyhow::Ok(crate::presence_tabs::pairs(&body["members"]))
    };
    // Refused with nothing joined: another id than the sub; no sub at all.
    for (tok, tail, status, code) in [
        (&alice, "client=mallory&tab=a", 403, "forbidden"),
        (&nobody, "tab=a", 400, "bad_request"),
    ] {
        for route in ["events", "messages"] {
            let (got, body) = s
                .get_json(&format!("/api/channels/room/{route}?token={tok}&{tail}"))
                .await?;
            ensure!(
                got == status && body["error"]["code"] == code,
                "{route} {tail}: {got} {body}"
            );
        }
    }
    assert_eq!(listed().await?, none());
    // The stream's tabs and a poll's are members with the sub as their id.
    let sse = Sse::connect(&s, "room", &format!("?token={alice}&tab=a&tab=b"), None).await?;
    let (status, _) = s
        .get_json(&format!("/api/channels/room/messages?token={alice}&tab=c"))
        .await?;
    assert_eq!(status, 200);
    within("the tabs to be listed", async {
        loop {
            if listed().await? == [tab("alice", "a"), tab("alice", "b"), tab("alice", "c")] {
                return anyhow::Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await??;
    drop(sse);
    s.shutdown().await
}
