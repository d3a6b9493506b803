//! WebTransport subscribers: one session each, spread over a few client
//! endpoints (UDP sockets on different 127.0.0.x addresses), subscribing on
//! one bidirectional stream; messages arrive as lines on that stream or, in
//! datagram mode, as datagrams (and on the stream when one does not fit).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ladder_testkit::wt::{EndpointOptions, endpoint};
use wtransport::Endpoint;
use wtransport::endpoint::endpoint_side::Client;

pub use ladder_testkit::wt::digest;

use super::{Kind, Ready, SubCtx, complete, deliver, set_ready};
use crate::sys::src_ip;
use crate::track::Tracker;

/// Kernel buffer asked for per client socket: one socket carries thousands
/// of sessions, and a publish reaches all of them at once. The kernel caps
/// it at `net.core.rmem_max` / `wmem_max`.
const UDP_BUFFER: usize = 32 << 20;

/// `n` client endpoints trusting exactly the certificate `hash`, on
/// 127.0.0.1..=127.0.0.`src_ips` in turn, with `UDP_BUFFER`-sized
/// buffers.
pub fn endpoints(n: usize, src_ips: usize, hash: &str) -> Result<Vec<Endpoint<Client>>> {
    (0..n)
        .map(|k| {
            let opts = EndpointOptions {
                bind: Some(SocketAddr::new(src_ip(k, src_ips), 0)),
                udp_buffer: UDP_BUFFER,
                keep_alive: Some(Duration::from_secs(5)),
                idle_timeout: None,
            };
            endpoint(hash, &opts)
        })
        .collect()
}

pub(super) async fn subscriber(
    ctx: &SubCtx,
    i: usize,
    ready: &mut Option<Ready>,
    t: &mut Tracker,
) -> Result<()> {
    let (url, _) = ctx.target.wt.as_ref().context("no WebTransport URL")?;
    let ep = &ctx.wt_endpoints[i % ctx.wt_endpoints.len()];
    let conn = ep.connect(url.as_str()).await.context("wt connect")?;
    let (mut send, mut recv) = conn.open_bi().await?.await?;
    let dgram = ctx.kind == Kind::WtDatagram;
    let delivery = if dgram {
        ",\"delivery\":\"datagram\""
    } else {
        ""
    };
    let sub = format!(
        "{{\"op\":\"subscribe\",\"channel\":\"{}\",\"since\":0{delivery}}}\n",
        ctx.channel
    );
    send.write_all(sub.as_bytes()).await?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut stop = ctx.stop.clone();
    let mut subscribed = false;
    while !complete(ctx, t) {
        tokio::select! {
            _ = stop.changed() => break,
            d = conn.receive_datagram(), if dgram && subscribed => {
                let d = d?;
                deliver(ctx, i, t, &d.payload());
            }
            n = recv.read(&mut chunk) => {
                let Some(n) = n? else { bail!("stream finished") };
                buf.extend_from_slice(&chunk[..n]);
                let mut start = 0;
                while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                    let line = &buf[start..start + nl];
                    start += nl + 1;
                    if line.starts_with(b"{\"op\":\"message\"") {
                        deliver(ctx, i, t, line);
                    } else if line.starts_with(b"{\"op\":\"subscribed\"") {
                        subscribed = true;
                        set_ready(ready);
                    } else if line.starts_with(b"{\"op\":\"lagged\"") {
                        t.lagged = true;
                        return Ok(());
                    } else if line.starts_with(b"{\"op\":\"error\"") {
                        bail!("{}", String::from_utf8_lossy(line));
                    }
                }
                buf.drain(..start);
            }
        }
    }
    conn.close(0u32.into(), b"done");
    Ok(())
}
