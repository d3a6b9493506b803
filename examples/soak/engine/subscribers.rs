//! Subscribers on every rung, their records and resume positions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::wt::{WtClient, WtLines, wt_connect};
use super::{Backoff, Rng, Rung, STEP};

/// One thing a subscriber was told, in arrival order.
#[derive(Debug, Clone)]
pub(crate) enum Rec {
    /// `subscribed` (WebSocket, WebTransport): the epoch in force.
    Subscribed(String),
    /// A message, with the epoch it belongs to.
    Msg(String, u64),
    /// `truncated`: a gap, and possibly a new epoch.
    Trunc(String, u64),
    /// `lagged`: dropped for being slow; resumes after the last offset.
    Lagged,
}

/// A subscriber's resume position and record.
pub(crate) struct SubState {
    pub(crate) rung: Rung,
    pub(crate) channel: String,
    pub(crate) recs: Vec<Rec>,
    pub(crate) epoch: Option<String>,
    pub(crate) last: u64,
    /// Shared with the controller, which waits for the final marker.
    pub(crate) progress: Arc<Mutex<(Option<String>, u64)>>,
    pub(crate) resumes: u64,
    pub(crate) reconnects: u64,
}

impl SubState {
    pub(crate) fn msg(&mut self, epoch: &str, offset: u64) {
        self.recs.push(Rec::Msg(epoch.to_owned(), offset));
        if self.epoch.as_deref() != Some(epoch) {
            self.epoch = Some(epoch.to_owned());
        }
        self.last = offset;
        self.publish_progress();
    }

    pub(crate) fn truncated(&mut self, epoch: &str, oldest: u64) {
        self.recs.push(Rec::Trunc(epoch.to_owned(), oldest));
        self.epoch = Some(epoch.to_owned());
        self.last = oldest.saturating_sub(1);
        self.publish_progress();
    }

    pub(crate) fn subscribed(&mut self, epoch: &str) {
        self.recs.push(Rec::Subscribed(epoch.to_owned()));
        if self.epoch.is_none() {
            self.epoch = Some(epoch.to_owned());
        }
    }

    pub(crate) fn publish_progress(&self) {
        *self.progress.lock().expect("progress lock") = (self.epoch.clone(), self.last);
    }
}

/// How one connection of a subscriber ended.
pub(crate) enum Ended {
    /// Killed on purpose: resume at once.
    Killed,
    /// The soak is over.
    Stopped,
}

pub(crate) struct Endpoints {
    pub(crate) http: String,
}

impl Endpoints {
    pub(crate) fn ws(&self) -> String {
        format!("{}/api/ws", self.http.replacen("http", "ws", 1))
    }
}

pub(crate) async fn subscriber(
    mut st: SubState,
    ep: Arc<Endpoints>,
    stop: CancellationToken,
    kill_every: (f64, f64),
    seed: u64,
) -> SubState {
    let mut rng = Rng::new(seed);
    let mut backoff = Backoff::new(seed ^ 0x9e37);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(2)
        .build()
        .expect("http client");
    let mut wt = None;
    loop {
        let kill_at = Instant::now() + rng.secs(kill_every);
        let run = async {
            match st.rung {
                Rung::Poll | Rung::LongPoll => poll_session(&mut st, &ep, &http, kill_at).await,
                Rung::Sse => sse_session(&mut st, &ep, &http, kill_at).await,
                Rung::WebSocket => ws_session(&mut st, &ep, kill_at).await,
                Rung::WebTransport => wt_session(&mut st, &ep, &http, &mut wt, kill_at).await,
            }
        };
        let ended = tokio::select! {
            () = stop.cancelled() => Ok(Ended::Stopped),
            r = run => r,
        };
        match ended {
            Ok(Ended::Stopped) => return st,
            Ok(Ended::Killed) => {
                st.resumes += 1;
                backoff.reset();
            }
            Err(_) => {
                st.reconnects += 1;
                wt = None;
                tokio::select! {
                    () = stop.cancelled() => return st,
                    () = backoff.wait() => {}
                }
            }
        }
    }
}

pub(crate) async fn poll_session(
    st: &mut SubState,
    ep: &Endpoints,
    http: &reqwest::Client,
    kill_at: Instant,
) -> Result<Ended> {
    let wait = if st.rung == Rung::LongPoll {
        "&wait=2"
    } else {
        ""
    };
    while Instant::now() < kill_at {
        let mut url = format!(
            "{}/api/channels/{}/messages?since={}{wait}",
            ep.http, st.channel, st.last
        );
        if let Some(e) = &st.epoch {
            url.push_str(&format!("&epoch={e}"));
        }
        let resp = timeout(STEP, http.get(&url).send()).await??;
        ensure!(resp.status() == 200, "poll answered {}", resp.status());
        let page: Value = timeout(STEP, resp.json()).await??;
        let epoch = page["epoch"].as_str().context("epoch")?.to_owned();
        if let Some(t) = page.get("truncated") {
            let te = t["epoch"].as_str().context("truncated.epoch")?;
            st.truncated(te, t["oldest"].as_u64().context("oldest")?);
        }
        let msgs = page["messages"].as_array().context("messages")?;
        for m in msgs {
            st.msg(&epoch, m["offset"].as_u64().context("offset")?);
        }
        if msgs.is_empty() && st.rung == Rung::Poll {
            sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(Ended::Killed)
}

pub(crate) async fn sse_session(
    st: &mut SubState,
    ep: &Endpoints,
    http: &reqwest::Client,
    kill_at: Instant,
) -> Result<Ended> {
    let url = format!("{}/api/channels/{}/events", ep.http, st.channel);
    let req = match &st.epoch {
        // What a browser's EventSource sends back.
        Some(e) => http
            .get(&url)
            .header("Last-Event-ID", format!("{e}:{}", st.last)),
        None => http.get(format!("{url}?since={}", st.last)),
    };
    let resp = timeout(STEP, req.send()).await??;
    ensure!(resp.status() == 200, "sse answered {}", resp.status());
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    loop {
        let chunk = tokio::select! {
            () = tokio::time::sleep_until(kill_at) => return Ok(Ended::Killed),
            c = timeout(Duration::from_secs(20), body.next()) => c?,
        };
        let Some(chunk) = chunk else {
            bail!("event stream ended")
        };
        buf.push_str(std::str::from_utf8(&chunk?)?);
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, "message".to_owned(), None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    v.clone_into(&mut event);
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(v)?);
                }
            }
            let Some(data) = data else { continue };
            match event.as_str() {
                "message" => {
                    let id = id.context("message without id")?;
                    let (epoch, offset) = id.rsplit_once(':').context("id form")?;
                    ensure!(
                        data["offset"].as_u64() == Some(offset.parse()?),
                        "id and offset differ"
                    );
                    st.msg(epoch, offset.parse()?);
                }
                "truncated" => st.truncated(
                    data["epoch"].as_str().context("epoch")?,
                    data["oldest"].as_u64().context("oldest")?,
                ),
                "lagged" => {
                    st.recs.push(Rec::Lagged);
                    bail!("lagged");
                }
                other => bail!("event {other}: {data}"),
            }
        }
    }
}

pub(crate) fn subscribe_op(st: &SubState) -> Value {
    let mut op = json!({"op": "subscribe", "channel": st.channel, "since": st.last});
    if let Some(e) = &st.epoch {
        op["epoch"] = json!(e);
    }
    op
}

/// Handles one server → client op of a subscribing connection; `epoch` is
/// the one in force on this connection (message objects carry none).
pub(crate) fn on_op(st: &mut SubState, epoch: &mut Option<String>, op: &Value) -> Result<()> {
    match op["op"].as_str() {
        Some("subscribed") => {
            let e = op["epoch"].as_str().context("epoch")?;
            *epoch = Some(e.to_owned());
            st.subscribed(e);
        }
        Some("truncated") => {
            let e = op["epoch"].as_str().context("epoch")?;
            *epoch = Some(e.to_owned());
            st.truncated(e, op["oldest"].as_u64().context("oldest")?);
        }
        Some("message") => {
            let e = epoch.clone().context("message before subscribed")?;
            st.msg(&e, op["offset"].as_u64().context("offset")?);
        }
        Some("lagged") => {
            st.recs.push(Rec::Lagged);
            bail!("lagged");
        }
        _ => bail!("unexpected {op}"),
    }
    Ok(())
}

pub(crate) async fn ws_session(
    st: &mut SubState,
    ep: &Endpoints,
    kill_at: Instant,
) -> Result<Ended> {
    let (mut ws, _) = timeout(STEP, tokio_tungstenite::connect_async(ep.ws())).await??;
    ws.send(Message::text(subscribe_op(st).to_string())).await?;
    let mut epoch = None;
    loop {
        let frame = tokio::select! {
            () = tokio::time::sleep_until(kill_at) => return Ok(Ended::Killed),
            f = timeout(Duration::from_secs(40), ws.next()) => f?,
        };
        match frame {
            Some(Ok(Message::Text(t))) => on_op(st, &mut epoch, &serde_json::from_str(&t)?)?,
            Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("socket ended"),
        }
    }
}

pub(crate) async fn wt_session(
    st: &mut SubState,
    ep: &Endpoints,
    http: &reqwest::Client,
    wt: &mut Option<WtClient>,
    kill_at: Instant,
) -> Result<Ended> {
    // A killed subscriber drops its stream; the session is kept unless it
    // failed (then it is replaced).
    if wt
        .as_ref()
        .is_none_or(|(_, c)| c.quic_connection().close_reason().is_some())
    {
        *wt = Some(wt_connect(ep, http).await?);
    }
    let conn = &wt.as_ref().context("session")?.1;
    let mut lines = WtLines::open(conn).await?;
    lines.send(&subscribe_op(st)).await?;
    let mut epoch = None;
    loop {
        let op = tokio::select! {
            () = tokio::time::sleep_until(kill_at) => return Ok(Ended::Killed),
            l = timeout(Duration::from_secs(40), lines.next()) => l??,
        };
        on_op(st, &mut epoch, &op)?;
    }
}
