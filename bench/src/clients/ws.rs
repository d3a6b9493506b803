//! WebSocket subscribers and the publisher connection: Ladder's JSON ops
//! (also spoken by the Node `ws` peer) or Socket.IO v4, framed by hand.
//!
//! Engine.IO v4 over WebSocket, as used here: the server opens with
//! `0{…handshake…}`; the client joins the default namespace with `40` and
//! gets `40{…}`; an event is `42["name",arg]`, with an ack id
//! `42<id>["name",arg]` answered by `43<id>[…]`; the server pings with `2`
//! and the client answers `3`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use ladder_testkit::ws::{WsOptions, open};
use tokio_tungstenite::tungstenite::Message;

use super::{Kind, Ready, SubCtx, complete, deliver, set_ready};
use crate::sys::src_ip;
use crate::track::Tracker;

/// A client WebSocket over a plain TCP stream (the test kit's).
pub type Ws = ladder_testkit::ws::WsStream;

/// Opens a WebSocket to Ladder / the `ws` peer (`/api/ws`) or Socket.IO,
/// from `src`, with the kit's small buffers so that 50 000 client sockets
/// fit in the load machine (tungstenite's defaults are 128 KiB of read
/// buffer per socket).
pub async fn connect(http: SocketAddr, kind: Kind, src: std::net::IpAddr) -> Result<Ws> {
    let url = match kind {
        Kind::SocketIo => format!("ws://{http}/socket.io/?EIO=4&transport=websocket"),
        _ => format!("ws://{http}/api/ws"),
    };
    let opts = WsOptions {
        src,
        small_buffers: true,
        // A bound, not a target: connects queue behind thousands of others.
        wait: Duration::from_secs(60),
    };
    let mut ws = open(&url, &opts).await?;
    if kind == Kind::SocketIo {
        let open = next_text(&mut ws).await?;
        if !open.starts_with('0') {
            bail!("expected an Engine.IO open packet, got {open:?}");
        }
        ws.send(Message::text("40")).await?;
        loop {
            let t = next_text(&mut ws).await?;
            if t.starts_with("40") {
                break;
            }
        }
    }
    Ok(ws)
}

/// The next text frame, answering Engine.IO pings on the way.
pub async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if t.as_str() == "2" {
                    ws.send(Message::text("3")).await?;
                    continue;
                }
                return Ok(t.as_str().to_owned());
            }
            Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// The subscribe request in the peer's framing.
pub fn subscribe_frame(kind: Kind, channel: &str) -> String {
    match kind {
        Kind::SocketIo => format!("420[\"subscribe\",{{\"channel\":\"{channel}\"}}]"),
        _ => format!("{{\"op\":\"subscribe\",\"channel\":\"{channel}\",\"since\":0}}"),
    }
}

/// A publish request with ack id `id`, in the peer's framing.
pub fn publish_frame(kind: Kind, channel: &str, data: &str, id: u64) -> String {
    match kind {
        Kind::SocketIo => {
            format!("42{id}[\"publish\",{{\"channel\":\"{channel}\",\"data\":{data}}}]")
        }
        _ => {
            format!("{{\"op\":\"publish\",\"channel\":\"{channel}\",\"data\":{data},\"id\":{id}}}")
        }
    }
}

/// Whether a frame acknowledges a publish or subscribe.
pub fn is_ack(kind: Kind, frame: &str) -> bool {
    match kind {
        Kind::SocketIo => frame.starts_with("43"),
        _ => frame.starts_with("{\"op\":\"published\"") || frame.contains("\"op\":\"published\""),
    }
}

pub(super) async fn subscriber(
    ctx: &SubCtx,
    i: usize,
    ready: &mut Option<Ready>,
    t: &mut Tracker,
) -> Result<()> {
    let mut ws = connect(ctx.target.http, ctx.kind, src_ip(i, ctx.src_ips)).await?;
    ws.send(Message::text(subscribe_frame(ctx.kind, &ctx.channel)))
        .await?;
    loop {
        let f = next_text(&mut ws).await?;
        if f.contains("subscribed") || f.starts_with("430") {
            break;
        }
        if f.contains("\"error\"") {
            bail!("subscribe refused: {f}");
        }
    }
    set_ready(ready);
    let mut stop = ctx.stop.clone();
    if i < ctx.slow {
        // A stalled reader: keep the socket open, never read it.
        t.slow = true;
        let _ = stop.changed().await;
        return Ok(());
    }
    while !complete(ctx, t) {
        let msg = tokio::select! {
            _ = stop.changed() => break,
            m = ws.next() => m,
        };
        match msg {
            Some(Ok(Message::Text(f))) => {
                let b = f.as_bytes();
                if ctx.kind == Kind::SocketIo && b == b"2" {
                    ws.send(Message::text("3")).await?;
                } else if b.starts_with(b"{\"op\":\"lagged\"") {
                    t.lagged = true;
                    break;
                } else {
                    deliver(ctx, i, t, b);
                }
            }
            Some(Ok(Message::Close(c))) => {
                if !*ctx.stop.borrow() {
                    bail!("closed by server: {c:?}");
                }
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}
