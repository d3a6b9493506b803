//! Tabs in presence: one connection joining several members of one identity
//! (`presence_join` / `presence_leave`, and `subscribe` with `join: false`),
//! as a browser's tabs sharing one connection do when each is counted.
//! They leave on `presence_leave` and when the connection ends; limits and
//! bad input get clear errors; with auth, every tab is the token's `sub`.

use anyhow::{Result, ensure};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::presence::next_presence;
use crate::wt_client::Wt;

/// `(id, tab)` of each member `GET /api/channels/{ch}/presence` lists, in
/// its order.
pub async fn members(s: &TestServer, ch: &str) -> Result<Vec<(String, Option<String>)>> {
    let (status, body) = s.get_json(&format!("/api/channels/{ch}/presence")).await?;
    ensure!(status == 200, "{status} {body}");
    Ok(pairs(&body["members"]))
}

pub fn pairs(list: &Value) -> Vec<(String, Option<String>)> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    let s = |v: &Value| v.as_str().map(str::to_owned);
                    (s(&m["id"]).unwrap_or_default(), s(&m["tab"]))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// No members.
pub fn none() -> Vec<(String, Option<String>)> {
    Vec::new()
}

pub fn tab(id: &str, t: &str) -> (String, Option<String>) {
    (id.to_owned(), Some(t.to_owned()))
}

/// Waits (bounded) until the members are exactly `want`.
pub async fn members_become(
    s: &TestServer,
    ch: &str,
    want: &[(String, Option<String>)],
) -> Result<()> {
    within(&format!("members of {ch} to become {want:?}"), async {
        loop {
            if members(s, ch).await? == want {
                return anyhow::Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await?
}

#[tokio::test]
async fn tabs_on_one_connection_are_members_each_and_leave_with_it() -> Result<()> {
    let s = TestServer::spawn().await?;
    let ch = "tabs";
    // The shared connection: subscribed once, joining nobody itself.
    let mut ws = Ws::connect(&s).await?;
    ws.send(json!({"op":"subscribe","channel":ch,"join":false,"presence":true}))
        .await?;
    assert_eq!(ws.recv().await?["op"], "subscribed");
    assert_eq!(next_presence(&mut ws).await?["members"], json!([]));
    for (t, n) in [("t1", 1), ("t2", 2)] {
        ws.send(
            json!({"op":"presence_join","channel":ch,"tab":t,"client":"ann","info":{"n":n},"id":n}),
        )
        .await?;
        // The watcher's join and the answer, in either order.
        let mut got = vec![next_presence(&mut ws).await?, next_presence(&mut ws).await?];
        got.sort_by_key(|v| v["op"].as_str().map(str::to_owned));
        assert_eq!(
            got,
            [
                json!({"op":"join","channel":ch,"member":{"id":"ann","tab":t,"info":{"n":n}}}),
                json!({"op":"presence_joined","id":n,"channel":ch,"tab":t}),
            ]
        );
    }
    assert_eq!(members(&s, ch).await?, [tab("ann", "t1"), tab("ann", "t2")]);
    // A plain member of the same id is one more.
    let mut plain = Ws::connect(&s).await?;
    plain
        .send(json!({"op":"subscribe","channel":ch,"client":"ann"}))
        .await?;
    plain.recv().await?;
    let plain_ann = json!({"id":"ann","info":{}});
    assert_eq!(
        next_presence(&mut ws).await?,
        json!({"op":"join","channel":ch,"member":plain_ann})
    );
    let ann = ("ann".to_owned(), None);
    assert_eq!(
        members(&s, ch).await?,
        [ann, tab("ann", "t1"), tab("ann", "t2")]
    );
    drop(plain);
    assert_eq!(
        next_presence(&mut ws).await?,
        json!({"op":"leave","channel":ch,"member":plain_ann})
    );
    // Joining a tab again updates its info; it never leaves meanwhile.
    ws.send(json!({"op":"presence_join","channel":ch,"tab":"t1","client":"ann","info":{"n":9}}))
        .await?;
    let r = loop {
        let f = next_presence(&mut ws).await?;
        ensure!(f["op"] != "leave", "{f}");
        if f["op"] == "presence_joined" {
            break f;
        }
    };
    assert_eq!(r["tab"], "t1");
    let (_, body) = s.get_json(&format!("/api/channels/{ch}/presence")).await?;
    assert_eq!(
        body["members"][0],
        json!({"id":"ann","tab":"t1","info":{"n":9}})
    );
    // One tab leaves; the other stays until the connection ends.
    ws.send(json!({"op":"presence_leave","channel":ch,"tab":"t1"}))
        .await?;
    let mut got = vec![next_presence(&mut ws).await?, next_presence(&mut ws).await?];
    got.sort_by_key(|v| v["op"].as_str().map(str::to_owned));
    assert_eq!(
        got,
        [
            json!({"op":"leave","channel":ch,"member":{"id":"ann","tab":"t1","info":{"n":9}}}),
            json!({"op":"presence_left","channel":ch,"tab":"t1"}),
        ]
    );
    assert_eq!(members(&s, ch).await?, [tab("ann", "t2")]);
    // Unsubscribing keeps the tabs (they are joined on their own)...
    ws.send(json!({"op":"unsubscribe","channel":ch})).await?;
    assert_eq!(ws.recv().await?["op"], "unsubscribed");
    assert_eq!(members(&s, ch).await?, [tab("ann", "t2")]);
    // ...and the connection's end takes them all: no ghosts.
    drop(ws);
    members_become(&s, ch, &[]).await?;

    // WebTransport: tabs joined on the control stream go with the session.
    let wt = Wt::connect(&s).await?;
    let mut control = wt.stream().await?;
    for t in ["w1", "w2"] {
        control
            .send(json!({"op":"presence_join","channel":ch,"tab":t,"client":"bo"}))
            .await?;
        assert_eq!(control.recv().await?["op"], "presence_joined");
    }
    assert_eq!(members(&s, ch).await?, [tab("bo", "w1"), tab("bo", "w2")]);
    wt.conn.close(0u32.into(), b"bye");
    drop((control, wt));
    members_become(&s, ch, &[]).await?;
    s.shutdown().await
}

#[tokio::test]
async fn tab_joins_are_limited_and_bad_ones_refused() -> Result<()> {
    let s = TestServer::spawn_with(|c| {
        c.max_presence = 3;
        c.max_presence_info = 32;
        c.max_subscriptions = 2;
    })
    .await?;
    let ch = "lim";
    let mut ws = Ws::connect(&s).await?;
    let big = json!({"name": "x".repeat(40)});
    let cases = [
        (
            json!({"op":"presence_join","channel":ch,"client":"a"}),
            "bad_request",
            "missing field `tab`",
        ),
        (
            json!({"op":"presence_join","channel":ch,"tab":"a b","client":"a"}),
            "bad_request",
            "tab may hold",
        ),
        (
            json!({"op":"presence_join","channel":ch,"tab":"t".repeat(65),"client":"a"}),
            "bad_request",
            "tab must be 1 to 64",
        ),
        (
            json!({"op":"presence_join","channel":ch,"tab":"t"}),
            "bad_request",
            "needs a `client`",
        ),
        (
            json!({"op":"presence_join","channel":ch,"tab":"t","client":"a b"}),
            "bad_request",
            "client id may hold",
        ),
        (
            json!({"op":"presence_join","channel":ch,"tab":"t","client":"a","info":big}),
            "too_large",
            "at most 32",
        ),
        (
            json!({"op":"presence_join","channel":"no such","tab":"t","client":"a"}),
            "bad_channel",
            "",
        ),
        (
            json!({"op":"presence_leave","channel":ch,"tab":""}),
            "bad_request",
            "tab must be",
        ),
        (
            json!({"op":"subscribe","channel":ch,"join":false,"client":"a"}),
            "bad_request",
            "takes no `client`",
        ),
    ];
    for (op, code, says) in cases {
        ws.send(op.clone()).await?;
        let r = ws.recv().await?;
        ensure!(
            r["op"] == "error"
                && r["code"] == code
                && r["message"].as_str().unwrap_or("").contains(says),
            "{op} answered {r}"
        );
    }
    assert_eq!(members(&s, ch).await?, none());
    // --max-subscriptions tab joins per connection; a known tab may rejoin.
    for t in ["t1", "t2"] {
        ws.send(json!({"op":"presence_join","channel":ch,"tab":t,"client":"a"}))
            .await?;
        assert_eq!(ws.recv().await?["op"], "presence_joined");
    }
    ws.send(json!({"op":"presence_join","channel":ch,"tab":"t3","client":"a"}))
        .await?;
    let r = ws.recv().await?;
    ensure!(
        r["code"] == "rate_limited"
            && r["message"]
                .as_str()
                .unwrap_or("")
                .contains("2 presence joins"),
        "{r}"
    );
    ws.send(json!({"op":"presence_join","channel":ch,"tab":"t1","client":"a"}))
        .await?;
    assert_eq!(ws.recv().await?["op"], "presence_joined");
    // --max-presence counts tabs as members.
    let mut other = Ws::connect(&s).await?;
    other
        .send(json!({"op":"presence_join","channel":ch,"tab":"t1","client":"b"}))
        .await?;
    assert_eq!(other.recv().await?["op"], "presence_joined");
    other
        .send(json!({"op":"presence_join","channel":ch,"tab":"t2","client":"b"}))
        .await?;
    let r = other.recv().await?;
    ensure!(
        r["code"] == "rate_limited" && r["message"].as_str().unwrap_or("").contains("3 members"),
        "{r}"
    );
    assert_eq!(
        members(&s, ch).await?,
        [tab("a", "t1"), tab("a", "t2"), tab("b", "t1")]
    );
    // Leaving a tab never joined is answered all the same.
    other
        .send(json!({"op":"presence_leave","channel":ch,"tab":"nope"}))
        .await?;
    assert_eq!(other.recv().await?["op"], "presence_left");
    s.shutdown().await
}

#[tokio::test]
async fn with_a_token_every_tab_is_its_sub() -> Result<()> {
    const SECRET: &str = "tabs-secret";
    let s = TestServer::spawn_with(|c| c.jwt_secret = Some(SECRET.into())).await?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 600;
    let claims = json!({"sub":"alice","exp":exp,"subscribe":["room"],"presence":["room"]});
    let token = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )?;
    let url = format!("{}?token={token}", s.ws_url());
    let mut ws = Ws::connect_with(&url, Default::default()).await?;
    // `join: false`: subscribed without the token's sub joining.
    ws.send(json!({"op":"subscribe","channel":"room","join":false}))
        .await?;
    assert_eq!(ws.recv().await?["op"], "subscribed");
    let get = || async {
        let resp = s
            .http
            .get(s.url("/api/channels/room/presence"))
            .bearer_auth(&token)
            .send()
            .await?;
        ensure!(resp.status() == 200, "{}", resp.status());
        anyhow::Ok(pairs(&resp.json::<Value>().await?["members"]))
    };
    assert_eq!(get().await?, none());
    // Each tab is a member with the sub as its id; another id is refused.
    for t in ["a", "b"] {
        ws.send(json!({"op":"presence_join","channel":"room","tab":t}))
            .await?;
        assert_eq!(ws.recv().await?["op"], "presence_joined");
    }
    assert_eq!(get().await?, [tab("alice", "a"), tab("alice", "b")]);
    for (op, code) in [
        (
            json!({"op":"presence_join","channel":"room","tab":"c","client":"mallory"}),
            "forbidden",
        ),
        (
            json!({"op":"presence_join","channel":"elsewhere","tab":"c"}),
            "forbidden",
        ),
    ] {
        ws.send(op.clone()).await?;
        let r = ws.recv().await?;
        ensure!(r["op"] == "error" && r["code"] == code, "{op} answered {r}");
    }
    assert_eq!(get().await?, [tab("alice", "a"), tab("alice", "b")]);
    drop(ws);
    within("the tabs to leave with the connection", async {
        while !get().await?.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    s.shutdown().await
}
