//! A Redis that vanishes without closing the socket: a TCP relay between a
//! node and `redis-server` stops forwarding (the connections stay open, the
//! bytes stay in the kernel's buffers). The node notices by its PING,
//! tells its subscribers `lagged` and answers publishes 503; once the relay
//! forwards again every acknowledged message arrives exactly once, in
//! order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Redis, post};
use crate::helpers::*;

/// Forwards loopback TCP to a port until told to hold everything.
struct Relay {
    port: u16,
    hold: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (hold, held) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, held.clone()));
                tokio::spawn(pipe(sr, cw, held.clone()));
            }
        });
        Ok(Self { port, hold, task })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops forwarding, without closing anything.
    fn black_hole(&self) {
        self.hold.send_replace(true);
    }

    fn resume(&self) {
        self.hold.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction; while held, neither reads nor writes.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if held.wait_for(|h| !h).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Read just as the hole opened: hold these bytes too.
        if held.wait_for(|h| !h).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_redis_is_noticed_and_nothing_acknowledged_is_lost() -> Result<()> {
    let redis = Redis::start().await?;
    let relay = Relay::start(redis.port).await?;
    let url = relay.url();
    let a = TestServer::spawn_with(|c| c.redis = Some(url)).await?;
    let direct = redis.url();
    let b = TestServer::spawn_with(|c| c.redis = Some(direct)).await?;
    let ch = "hole";
    let mut acked: BTreeMap<u64, Value> = BTreeMap::new();
    let mut ws = Ws::connect(&a).await?;
    ws.subscribe(ch, Some(0)).await?;
    for i in 0..3 {
        let ack = b.publish(ch, json!({"before": i})).await?;
        acked.insert(
            ack["offset"].as_u64().context("offset")?,
            json!({"before": i}),
        );
    }
    let mut seen = pairs(&ws.messages_until(3).await?);

    relay.black_hole();
    let holed = Instant::now();
    // Published while A cannot hear: acknowledged by B all the same.
    for i in 0..5 {
        let ack = b.publish(ch, json!({"during": i})).await?;
        acked.insert(
            ack["offset"].as_u64().context("offset")?,
            json!({"during": i}),
        );
    }
    // A's subscriber is told, without the socket ever closing.
    let told = ws.recv().await?;
    let noticed = holed.elapsed();
    println!(
        "black hole noticed after {} ms (PING every 5 s, 2 s to answer)",
        noticed.as_millis()
    );
    assert_eq!(
        (told["op"].as_str(), told["offset"].as_u64()),
        (Some("lagged"), Some(3)),
        "{told}"
    );
    assert!(
        noticed < Duration::from_secs(20),
        "noticed at all (stated: within 7 s)"
    );
    // Once noticed, A answers publishes at once, without waiting on Redis.
    let asked = Instant::now();
    let (status, refused) = post(&a.http, &a.base, ch, &json!("refused")).await?;
    println!("publish refused after {} ms", asked.elapsed().as_millis());
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["error"]["code"], "unavailable");

    relay.resume();
    let back = Instant::now();
    let ack = within("A to accept publishes again", async {
        loop {
            let resp = a
                .http
                .post(a.url(&format!("/api/channels/{ch}/messages")))
                .header("Idempotency-Key", "after-the-hole")
                .json(&json!("after"))
                .send()
                .await?;
            if resp.status() == 201 {
                return anyhow::Ok(resp.json::<Value>().await?);
            }
            ensure!(resp.status() == 503, "{}", resp.status());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    println!(
        "A serving again {} ms after the relay resumed",
        back.elapsed().as_millis()
    );
    acked.insert(ack["offset"].as_u64().context("offset")?, json!("after"));
    let epoch = ack["epoch"].as_str().context("epoch")?.to_owned();

    let mut ws = Ws::connect(&a).await?;
    ws.send(json!({"op":"subscribe","channel":ch,"since":3,"epoch":epoch}))
        .await?;
    ensure!(ws.recv().await?["op"] == "subscribed");
    let last = *acked.keys().last().context("acks")?;
    seen.extend(pairs(&ws.messages_until(last).await?));
    let expected: Vec<(u64, Value)> = acked.into_iter().collect();
    assert_eq!(
        seen, expected,
        "every acknowledged message exactly once, in order"
    );
    Ok(())
}
