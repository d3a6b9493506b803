//! Subscribers on every rung, their records and resume positions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use super::{Backoff, Rng, Rung, STEP};
use crate::http::{Sse, poll_page};
use crate::ws::{Ws, WsOptions};
use crate::wt::{EndpointOptions, Wt};
use crate::{Base, within_for};

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

/// Where the server is (the same across restarts).
pub(crate) struct Endpoints {
    /// `http://127.0.0.1:PORT`.
    pub(crate) http: String,
}

impl Base for Endpoints {
    fn base(&self) -> &str {
        &self.http
    }
}

/// A session's endpoint options: a killed server sends nothing, and
/// without keep-alives and a short idle timeout the client would wait out
/// QUIC's default idle period before noticing, and fall out of the history
/// meanwhile.
pub(crate) fn wt_options() -> EndpointOptions {
    EndpointOptions {
        keep_alive: Some(Duration::from_millis(500)),
        idle_timeout: Some(Duration::from_secs(2)),
        ..EndpointOptions::default()
    }
}

/// How long a quiet socket subscriber waits for its next frame (longer
/// than the server's 15 s heartbeat, so a live socket always has one).
const QUIET: Duration = Duration::from_secs(40);

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
                Rung::WebTransport => wt_session(&mut st, &ep, &mut wt, kill_at).await,
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
        let page = poll_page(http, &url, STEP).await?;
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
    let mut sse = match &st.epoch {
        // What a browser's EventSource sends back.
        Some(e) => {
            let id = format!("{e}:{}", st.last);
            Sse::open(http, &url, Some(&id), STEP).await?
        }
        None => Sse::open(http, &format!("{url}?since={}", st.last), None, STEP).await?,
    }
    // Heartbeats come every 15 s: a quiet 20 s means the server is gone.
    .with_wait(Duration::from_secs(20));
    loop {
        let ev = tokio::select! {
            () = tokio::time::sleep_until(kill_at) => return Ok(Ended::Killed),
            ev = sse.next() => ev?,
        };
        let Some(ev) = ev else {
            bail!("event stream ended")
        };
        let data: Value = serde_json::from_str(&ev.data)?;
        match ev.event.as_str() {
            "message" => {
                let id = ev.id.context("message without id")?;
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
    let opts = WsOptions {
        wait: STEP,
        ..WsOptions::default()
    };
    // Each frame waits at most the kit's 20 s: heartbeats come every 15 s.
    let mut ws = Ws::connect_with(&ep.ws_url(), opts).await?;
    ws.send(subscribe_op(st)).await?;
    let mut epoch = None;
    loop {
        let op = tokio::select! {
            () = tokio::time::sleep_until(kill_at) => return Ok(Ended::Killed),
            op = ws.recv() => op?,
        };
        on_op(st, &mut epoch, &op)?;
    }
}

pub(crate) async fn wt_session(
    st: &mut SubState,
    ep: &Endpoints,
    wt: &mut Option<Wt>,
    kill_at: Instant,
) -> Result<Ended> {
    // A killed subscriber drops its stream; the session is kept unless it
    // failed (then it is replaced).
    if wt.as_ref().is_none_or(Wt::is_closed) {
        *wt = Some(within_for(STEP, "wt session", Wt::connect_with(ep, "", &wt_options())).await??);
    }
    let session = wt.as_ref().context("session")?;
    let mut lines = within_for(STEP, "wt stream", session.stream())
        .await??
        .with_wait(QUIET);
    lines.send(subscribe_op(st)).await?;
    let mut epoch = None;
    loop {
        let op = tokio::select! {
            () = tokio::time::sleep_until(kill_at) => return Ok(Ended::Killed),
            l = lines.recv() => l?,
        };
        on_op(st, &mut epoch, &op)?;
    }
}
