//! Presence on every rung: joining on subscribe, leaving on unsubscribe,
//! disconnect or a lapsed poll, the events watchers get (never an offset),
//! the fresh snapshot on resume, limits, bad input and tokens.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::wt_client::Wt;

/// The member ids `GET /api/channels/{ch}/presence` reports, sorted.
pub async fn members(base: &str, http: &reqwest::Client, ch: &str) -> Result<Vec<String>> {
    let resp = http
        .get(format!("{base}/api/channels/{ch}/presence"))
        .send()
        .await?;
    ensure!(resp.status() == 200, "presence answered {}", resp.status());
    let body: Value = resp.json().await?;
    ensure!(body["channel"] == ch, "{body}");
    Ok(ids(&body["members"]))
}

pub fn ids(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits (bounded) until the channel's members are exactly `want`.
pub async fn members_become(
    base: &str,
    http: &reqwest::Client,
    ch: &str,
    want: &[&str],
) -> Result<()> {
    let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    let mut last = Vec::new();
    let done = within(&format!("members of {ch} to become {want:?}"), async {
        loop {
            last = members(base, http, ch).await?;
            if last == want {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    done.with_context(|| format!("last seen {last:?}"))?
}

async fn become_(s: &TestServer, ch: &str, want: &[&str]) -> Result<()> {
    members_become(&s.base, &s.http, ch, want).await
}

#[tokio::test]
async fn every_rung_joins_and_leaves_on_unsubscribe_and_disconnect() -> Result<()> {
    let s = TestServer::spawn().await?;
    let ch = "room";

    // WebSocket: joins with its info, leaves on unsubscribe and on close.
    let mut ws = Ws::connect(&s).await?;
    ws.send(json!({"op":"subscribe","channel":ch,"client":"ws-ann","info":{"name":"Ann"}}))
        .await?;
    let r = ws.recv().await?;
    ensure!(
        r["op"] == "subscribed" && r.get("presence_error").is_none(),
        "{r}"
    );
    let (_, body) = s.get_json(&format!("/api/channels/{ch}/presence")).await?;
    assert_eq!(
        body["members"],
        json!([{"id":"ws-ann","info":{"name":"Ann"}}])
    );
    ws.send(json!({"op":"unsubscribe","channel":ch})).await?;
    assert_eq!(ws.recv().await?["op"], "unsubscribed");
    become_(&s, ch, &[]).await?;
    ws.send(json!({"op":"subscribe","channel":ch,"client":"ws-ann"}))
        .await?;
    ws.recv().await?;
    become_(&s, ch, &["ws-ann"]).await?;
    drop(ws);
    become_(&s, ch, &[]).await?;

    // WebTransport: per stream; unsubscribe, then the session going away.
    let wt = Wt::connect(&s).await?;
    let mut st = wt.stream().await?;
    st.subscribe(json!({"op":"subscribe","channel":ch,"client":"wt-bo"}))
        .await?;
    become_(&s, ch, &["wt-bo"]).await?;
    st.send(json!({"op":"unsubscribe","channel":ch})).await?;
    assert_eq!(st.recv().await?["op"], "unsubscribed");
    become_(&s, ch, &[]).await?;
    st.subscribe(json!({"op":"subscribe","channel":ch,"client":"wt-bo"}))
        .await?;
    become_(&s, ch, &["wt-bo"]).await?;
    wt.conn.close(0u32.into(), b"bye");
    drop((st, wt));
    become_(&s, ch, &[]).await?;

    // SSE: present while the stream is open.
    let sse = Sse::connect(&s, ch, "?client=sse-cy", None).await?;
    become_(&s, ch, &["sse-cy"]).await?;
    drop(sse);
    become_(&s, ch, &[]).await?;

    // Long poll: present while it waits (and for the lapse after).
    let http = s.http.clone();
    let url = s.url(&format!("/api/channels/{ch}/messages?client=lp-di&wait=20"));
    let waiting = tokio::spawn(async move { http.get(url).send().await });
    become_(&s, ch, &["lp-di"]).await?;
    s.publish(ch, json!(1)).await?;
    let resp = within("the long poll", waiting).await???;
    assert_eq!(resp.status(), 200);
    assert_eq!(members(&s.base, &s.http, ch).await?, ["lp-di"]);
    s.shutdown().await
}

#[tokio::test]
async fn pollers_stay_while_they_poll_and_lapse_when_they_stop() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.presence_lapse = 1).await?;
    let ch = "polled";
    // A watcher, to see the poller's join and, after the lapse, its leave.
    let mut ws = Ws::connect(&s).await?;
    ws.send(json!({"op":"subscribe","channel":ch,"presence":true}))
        .await?;
    assert_eq!(ws.recv().await?["op"], "subscribed");
    assert_eq!(
        ids(&next_presence(&mut ws).await?["members"]),
        Vec::<String>::new()
    );
    let q = format!("/api/channels/{ch}/messages?client=pat&info=%7B%22a%22%3A1%7D");
    let (status, _) = s.get_json(&q).await?;
    assert_eq!(status, 200);
    let (_, body) = s.get_json(&format!("/api/channels/{ch}/presence")).await?;
    assert_eq!(body["members"], json!([{"id":"pat","info":{"a":1}}]));
    let pat = json!({"id":"pat","info":{"a":1}});
    assert_eq!(
        next_presence(&mut ws).await?,
        json!({"op":"join","channel":ch,"member":pat})
    );
    // Silence: the lease runs out and the sweep lets pat go, told to the
    // watcher as a leave (each recv is bounded; no timing is asserted).
    assert_eq!(
        next_presence(&mut ws).await?,
        json!({"op":"leave","channel":ch,"member":pat})
    );
    become_(&s, ch, &[]).await?;
    s.shutdown().await
}

/// The next WebSocket frame that is not a message.
pub async fn next_presence(ws: &mut Ws) -> Result<Value> {
    loop {
        let f = ws.recv().await?;
        if f["op"] != "message" {
            return Ok(f);
        }
    }
}

#[tokio::test]
async fn watchers_get_the_list_then_joins_and_leaves_without_offsets() -> Result<()> {
    let s = TestServer::spawn().await?;
    let ch = "lobby";
    s.publish(ch, json!("before")).await?;

    // WebSocket watcher: subscribed, the (empty) list, then changes.
    let mut ws = Ws::connect(&s).await?;
    ws.send(json!({"op":"subscribe","channel":ch,"presence":true}))
        .await?;
    assert_eq!(ws.recv().await?["op"], "subscribed");
    assert_eq!(
        ws.recv().await?,
        json!({"op":"presence","channel":ch,"members":[]})
    );
    // WebTransport watcher, joining itself: it sees itself in the list.
    let wt = Wt::connect(&s).await?;
    let mut st = wt.stream().await?;
    st.subscribe(json!({"op":"subscribe","channel":ch,"presence":true,"client":"wt"}))
        .await?;
    let first = st.recv().await?;
    ensure!(
        first["op"] == "presence" && ids(&first["members"]) == ["wt"],
        "{first}"
    );
    assert_eq!(
        next_presence(&mut ws).await?,
        json!({"op":"join","channel":ch,"member":{"id":"wt","info":{}}})
    );
    // SSE watcher: `presence`, then `join` / `leave` events with no id, so
    // the messages' ids (the resume position) are untouched.
    let mut sse = Sse::connect(&s, ch, "?presence=1", None).await?;
    let ev = sse.next().await?.context("presence event")?;
    assert_eq!((ev.event.as_str(), ev.id.as_deref()), ("presence", None));
    assert_eq!(ids(&ev.json()["members"]), ["wt"]);
    // A poller asks for the list and gets a version to ask from next.
    let (_, p) = s
        .get_json(&format!("/api/channels/{ch}/messages?presence=0"))
        .await?;
    assert_eq!(ids(&p["presence"]["members"]), ["wt"]);
    let version = p["presence"]["version"].as_u64().context("version")?;

    let joiner = Sse::connect(&s, ch, "?client=sam", None).await?;
    for got in [next_presence(&mut ws).await?, st.recv().await?] {
        assert_eq!(
            got,
            json!({"op":"join","channel":ch,"member":{"id":"sam","info":{}}})
        );
    }
    let ev = sse.next().await?.context("join event")?;
    assert_eq!((ev.event.as_str(), ev.id.as_deref()), ("join", None));
    assert_eq!(ev.json(), json!({"id":"sam","info":{}}));
    // A message between joins keeps offset 2: presence took none.
    let ack = s.publish(ch, json!("after")).await?;
    assert_eq!(ack["offset"], 2);
    let ev = sse.next().await?.context("message")?;
    assert_eq!(ev.event, "message");
    assert_eq!(
        ev.id,
        Some(format!("{}:2", ack["epoch"].as_str().unwrap_or_default()))
    );
    drop(joiner);
    assert_eq!(
        next_presence(&mut ws).await?,
        json!({"op":"leave","channel":ch,"member":{"id":"sam","info":{}}})
    );
    let ev = sse.next().await?.context("leave event")?;
    assert_eq!((ev.event.as_str(), ev.id.as_deref()), ("leave", None));

    // The poller gets exactly the two changes since its version.
    let (_, p) = s
        .get_json(&format!(
            "/api/channels/{ch}/messages?since=2&presence={version}"
        ))
        .await?;
    let kinds: Vec<(&str, &str)> = p["presence"]["changes"]
        .as_array()
        .context("changes")?
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or(""),
                c["member"]["id"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(kinds, [("join", "sam"), ("leave", "sam")]);
    // The `presence` op reads the list on demand.
    ws.send(json!({"op":"presence","channel":ch})).await?;
    let r = next_presence(&mut ws).await?;
    ensure!(r["op"] == "presence" && ids(&r["members"]) == ["wt"], "{r}");
    s.shutdown().await
}

#[tokio::test]
async fn a_resumed_subscriber_gets_a_fresh_list_not_a_replay() -> Result<()> {
    let s = TestServer::spawn().await?;
    let ch = "resume";
    let mut sse = Sse::connect(&s, ch, "?since=0&presence=1&client=me", None).await?;
    let ev = sse.next().await?.context("list")?;
    assert_eq!(
        (ev.event.as_str(), ids(&ev.json()["members"])),
        ("presence", vec!["me".to_owned()])
    );
    let epoch = s.publish(ch, json!(1)).await?["epoch"]
        .as_str()
        .context("epoch")?
        .to_owned();
    sse.messages_until(1).await?;
    drop(sse);
    // While it is away, others come and go.
    let mut ws = Ws::connect(&s).await?;
    for who in ["gone", "stays"] {
        ws.send(json!({"op":"subscribe","channel":format!("{ch}"),"client":who}))
            .await?;
        ws.recv().await?;
        if who == "gone" {
            ws.send(json!({"op":"unsubscribe","channel":ch})).await?;
            ws.recv().await?;
        }
    }
    s.publish(ch, json!(2)).await?;
    // Resuming: the list as it is now first, then message 2 only.
    let mut sse =
        Sse::connect(&s, ch, "?presence=1&client=me", Some(&format!("{epoch}:1"))).await?;
    let ev = sse.next().await?.context("fresh list")?;
    assert_eq!(ev.event, "presence");
    assert_eq!(ids(&ev.json()["members"]), ["me", "stays"]);
    let ev = sse.next().await?.context("message 2")?;
    assert_eq!(
        (ev.event.as_str(), ev.json()["offset"].as_u64()),
        ("message", Some(2))
    );
    // A WebSocket resuming with `since` likewise gets the list at once.
    let mut again = Ws::connect(&s).await?;
    again
        .send(json!({"op":"subscribe","channel":ch,"since":1,"epoch":epoch,"presence":true}))
        .await?;
    assert_eq!(again.recv().await?["op"], "subscribed");
    let list = again.recv().await?;
    assert_eq!(ids(&list["members"]), ["me", "stays"]);
    assert_eq!(again.recv().await?["offset"], 2);
    s.shutdown().await
}

#[tokio::test]
async fn limits_and_bad_input_get_clear_errors_and_keep_the_subscription() -> Result<()> {
    let s = TestServer::spawn_with(|c| {
        c.max_presence = 1;
        c.max_presence_info = 32;
    })
    .await?;
    let ch = "full";
    let mut first = Ws::connect(&s).await?;
    first
        .send(json!({"op":"subscribe","channel":ch,"client":"one"}))
        .await?;
    first.recv().await?;
    // Over --max-presence: subscribed all the same, with the reason.
    let mut second = Ws::connect(&s).await?;
    second
        .send(json!({"op":"subscribe","channel":ch,"client":"two"}))
        .await?;
    let r = second.recv().await?;
    assert_eq!(r["op"], "subscribed");
    assert_eq!(r["presence_error"]["code"], "rate_limited");
    ensure!(
        r["presence_error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("1 members"),
        "{r}"
    );
    s.publish(ch, json!("still delivered")).await?;
    assert_eq!(
        second.messages_until(1).await?[0]["data"],
        "still delivered"
    );
    assert_eq!(members(&s.base, &s.http, ch).await?, ["one"]);
    // The same on SSE (an event) and polls (a field).
    let mut sse = Sse::connect(&s, ch, "?client=three&since=0", None).await?;
    let ev = sse.next().await?.context("presence_error")?;
    assert_eq!(ev.event, "presence_error");
    assert_eq!(ev.json()["code"], "rate_limited");
    assert_eq!(sse.messages_until(1).await?.len(), 1);
    let (status, p) = s
        .get_json(&format!("/api/channels/{ch}/messages?since=0&client=four"))
        .await?;
    assert_eq!(
        (status, &p["presence_error"]["code"]),
        (200, &json!("rate_limited"))
    );
    assert_eq!(p["messages"].as_array().map(Vec::len), Some(1));

    // Bad input is refused before anything is made, with what was wrong.
    let big = json!({"name": "x".repeat(40)});
    let cases = [
        (
            json!({"op":"subscribe","channel":"b","client":"a b"}),
            "bad_request",
        ),
        (
            json!({"op":"subscribe","channel":"b","client":""}),
            "bad_request",
        ),
        (
            json!({"op":"subscribe","channel":"b","client":"x".repeat(129)}),
            "bad_request",
        ),
        (
            json!({"op":"subscribe","channel":"b","client":"ok","info":big}),
            "too_large",
        ),
        (
            json!({"op":"subscribe","channel":"b","client":"ok","info":[1]}),
            "bad_request",
        ),
        (
            json!({"op":"subscribe","channel":"b","info":{}}),
            "bad_request",
        ),
        (json!({"op":"presence","channel":"no such"}), "bad_channel"),
    ];
    let mut bad = Ws::connect(&s).await?;
    for (op, code) in cases {
        bad.send(op.clone()).await?;
        let r = bad.recv().await?;
        ensure!(r["op"] == "error" && r["code"] == code, "{op} answered {r}");
    }
    for (path, code) in [
        ("/api/channels/b/events?client=a%20b", "bad_request"),
        ("/api/channels/b/events?presence=yes", "bad_request"),
        (
            "/api/channels/b/messages?client=ok&info=%5B1%5D",
            "bad_request",
        ),
        ("/api/channels/b/messages?presence=v1", "bad_request"),
        ("/api/channels/no%20such/presence", "bad_channel"),
    ] {
        let (status, body) = s.get_json(path).await?;
        ensure!(
            status == 400 && body["error"]["code"] == code,
            "{path}: {status} {body}"
        );
    }
    assert_eq!(members(&s.base, &s.http, "b").await?, Vec::<String>::new());
    s.shutdown().await
}

#[tokio::test]
async fn a_tokens_sub_is_the_member_and_its_claims_decide_who_reads() -> Result<()> {
    const SECRET: &str = "presence-secret";
    let s = TestServer::spawn_with(|c| c.jwt_secret = Some(SECRET.into())).await?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 600;
    let token = |claims: Value| {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
    };
    // Alice may subscribe but not read who is there; the watcher may read.
    let alice = token(json!({"sub":"alice","exp":exp,"subscribe":["room"],"presence":[]}))?;
    let watcher = token(json!({"sub":"w","exp":exp,"subscribe":["room"]}))?;
    let get = |tok: &str| {
        s.http
            .get(s.url("/api/channels/room/presence"))
            .bearer_auth(tok)
            .send()
    };
    let mut ws = tokio_tungstenite::connect_async(format!("{}?token={alice}", s.ws_url()))
        .await?
        .0;
    use futures_util::{SinkExt, StreamExt};
    let mut ask = async |op: Value| -> Result<Value> {
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            op.to_string(),
        ))
        .await?;
        match within("reply", ws.next()).await? {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                Ok(serde_json::from_str(&t)?)
            }
            other => bail!("{other:?}"),
        }
    };
    // Another id than the token's sub is refused; none means the sub.
    let r = ask(json!({"op":"subscribe","channel":"room","client":"mallory"})).await?;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    let r = ask(json!({"op":"subscribe","channel":"room","presence":true})).await?;
    assert_eq!(r["op"], "subscribed");
    assert_eq!(r["presence_error"]["code"], "forbidden");
    let r = ask(json!({"op":"presence","channel":"room"})).await?;
    assert_eq!(r["code"], "forbidden");
    assert_eq!(get(&alice).await?.status(), 403);
    let resp = get(&watcher).await?;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await?;
    assert_eq!(ids(&body["members"]), ["alice"]);
    assert_eq!(
        s.http
            .get(s.url("/api/channels/room/presence"))
            .send()
            .await?
            .status(),
        401
    );
    s.shutdown().await
}

/// `(type, id)` of each change in a poll answer's `presence`.
fn poll_changes(answer: &Value) -> Vec<(String, String)> {
    answer["presence"]["changes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                    (s(&c["type"]), s(&c["member"]["id"]))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_long_poll_that_asked_for_presence_is_woken_by_joins_and_leaves() -> Result<()> {
    let s = TestServer::spawn().await?;
    let ch = "woken";
    // The list, and the version to wait from; with `wait`, asking for the
    // list is news enough to answer at once.
    let (_, p) = s
        .get_json(&format!("/api/channels/{ch}/messages?presence=0&wait=60"))
        .await?;
    assert_eq!(ids(&p["presence"]["members"]), Vec::<String>::new());
    let mut version = p["presence"]["version"].as_u64().context("version")?;
    let mut ws = None;
    for (step, want) in [("join", ("join", "ann")), ("leave", ("leave", "ann"))] {
        // A long poll waiting (60 s, beyond `within`'s bound) for a message
        // that never comes...
        let http = s.http.clone();
        let url = s.url(&format!(
            "/api/channels/{ch}/messages?since=0&wait=60&presence={version}"
        ));
        let waiting =
            tokio::spawn(async move { http.get(url).send().await?.json::<Value>().await });
        s.wait_stats("longpoll", |r| r["connections_open"] == 1)
            .await?;
        // ...is answered by the join, then by the leave.
        match step {
            "join" => {
                let mut w = Ws::connect(&s).await?;
                w.send(json!({"op":"subscribe","channel":ch,"client":"ann"}))
                    .await?;
                ws = Some(w);
            }
            _ => drop(ws.take()),
        }
        let answer = within("the woken long poll", waiting).await???;
        assert_eq!(answer["messages"], json!([]), "{answer}");
        assert_eq!(
            poll_changes(&answer),
            [(want.0.to_owned(), want.1.to_owned())],
            "{answer}"
        );
        version = answer["presence"]["version"].as_u64().context("version")?;
        s.wait_stats("longpoll", |r| r["connections_open"] == 0)
            .await?;
    }
    // Messages still wake it as before, with no presence news.
    let http = s.http.clone();
    let url = s.url(&format!(
        "/api/channels/{ch}/messages?since=0&wait=60&presence={version}"
    ));
    let waiting = tokio::spawn(async move { http.get(url).send().await?.json::<Value>().await });
    s.wait_stats("longpoll", |r| r["connections_open"] == 1)
        .await?;
    s.publish(ch, json!("hi")).await?;
    let answer = within("the long poll", waiting).await???;
    assert_eq!(answer["messages"][0]["data"], "hi", "{answer}");
    assert_eq!(poll_changes(&answer), [], "{answer}");
    s.shutdown().await
}
