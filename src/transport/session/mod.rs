//! The JSON ops shared by WebSocket and WebTransport streams.
//!
//! An [`OpSession`] is one conversation: a WebSocket, or one WebTransport
//! bidirectional stream. It parses ops, runs them against the hub, and
//! multiplexes its subscriptions. The adapter owns the socket and decides
//! framing; this module decides meaning; its presence side (joins, tabs,
//! watching) is in `presence`.

mod presence;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::ReusableBoxFuture;

use crate::auth::Grant;
use crate::context::Ctx;
use crate::hub::presence::members_json;
use crate::hub::{ChannelName, Event, Position, PresenceEvent, Subscription};
use crate::protocol::{self, ClientOp, DeliveryMode, ErrorCode, ProtocolError};
use crate::stats::Transport;

/// One subscription as a stream of events. It can be paused: its
/// deliveries are then made by someone else (see
/// [`crate::transport::websocket`]'s direct writes), and it neither reads nor
/// asks to be woken until resumed.
pub(crate) struct SubStream {
    sub: Subscription,
    mode: DeliveryMode,
    paused: bool,
    /// The wait for the next publish, allocated once and reused; replaced
    /// (so no longer registered for wake-ups) when it fires or on pause.
    wait: ReusableBoxFuture<'static, ()>,
}

impl SubStream {
    fn new(sub: Subscription, mode: DeliveryMode) -> Self {
        let wait = ReusableBoxFuture::new(sub.changed_owned());
        Self {
            sub,
            mode,
            paused: false,
            wait,
        }
    }

    /// The subscription itself.
    pub(crate) fn subscription(&self) -> &Subscription {
        &self.sub
    }

    /// How its messages are delivered.
    pub(crate) fn mode(&self) -> DeliveryMode {
        self.mode
    }

    /// Stops reading and being woken until [`Self::resume`].
    pub(crate) fn pause(&mut self) {
        if !self.paused {
            self.paused = true;
            self.wait.set(self.sub.changed_owned());
        }
    }

    /// Reads again, after the messages up to `delivered` that were written
    /// while paused.
    pub(crate) fn resume(&mut self, delivered: u64) {
        self.sub.advance_to(delivered);
        self.paused = false;
    }

    /// Whether it is paused.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }
}

impl Stream for SubStream {
    type Item = (DeliveryMode, Event);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.paused {
            return Poll::Pending;
        }
        loop {
            if let Some(ev) = this.sub.try_next() {
                return Poll::Ready(Some((this.mode, ev)));
            }
            ready!(this.wait.poll(cx));
            this.wait.set(this.sub.changed_owned());
        }
    }
}

/// Who is talking: what their token allows and their publish-rate budget.
/// One per connection (a WebSocket, a WebTransport session); cloning shares
/// the budget, so a session's streams draw from one rate.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    /// What the connection's token allows.
    pub(crate) grant: Grant,
    publish_limiter: Option<Arc<governor::DefaultDirectRateLimiter>>,
}

impl Credentials {
    /// Credentials for a new connection holding `grant`.
    pub(crate) fn new(ctx: &Ctx, grant: Grant) -> Self {
        Self {
            grant,
            publish_limiter: crate::limits::connection_publish_limiter(ctx.cfg.publish_rate)
                .map(Arc::new),
        }
    }

    /// When the grant runs out, as a timer deadline (`None` = never).
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.grant
            .remaining()
            .map(|left| tokio::time::Instant::now() + left)
    }

    fn may_publish(&self, ctx: &Ctx) -> Result<(), ProtocolError> {
        match &self.publish_limiter {
            Some(l) if l.check().is_err() => Err(ProtocolError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} publishes per second on this connection",
                    ctx.cfg.publish_rate
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The error sent when a connection's token runs out.
pub(crate) fn token_expired() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Unauthorized,
        "token expired; reconnect with a new token",
    )
}

/// One conversation's state: its subscriptions.
pub(crate) struct OpSession {
    ctx: Ctx,
    transport: Transport,
    creds: Credentials,
    /// Boxed: the map's vector grows by several entries at once, and an
    /// idle connection should not carry room for subscriptions it lacks.
    subs: StreamMap<ChannelName, Box<SubStream>>,
    /// Presence: the members this conversation holds (dropping one
    /// leaves), the channels whose joins and leaves it asked for, and the
    /// snapshots waiting to be sent.
    presence: Option<Box<presence::SessionPresence>>,
}

impl std::fmt::Debug for OpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpSession")
            .field("transport", &self.transport)
            .field("subscriptions", &self.subs.len())
            .finish()
    }
}

impl OpSession {
    /// A session with no subscriptions yet, acting with `creds`.
    pub(crate) fn new(ctx: Ctx, transport: Transport, creds: Credentials) -> Self {
        Self {
            ctx,
            transport,
            creds,
            subs: StreamMap::new(),
            presence: None,
        }
    }

    /// Whether any subscription is active (when not, [`Self::next_event`]
    /// would never return).
    pub(crate) fn has_subscriptions(&self) -> bool {
        !self.subs.is_empty()
    }

    /// Runs one op and returns the reply frame (JSON, no framing).
    pub(crate) async fn handle(&mut self, text: &str) -> Bytes {
        // Anything far beyond the message limit is refused before parsing.
        let max = self.ctx.cfg.max_message_bytes();
        if text.len() > max + 1024 {
            let e = ProtocolError::new(
                ErrorCode::TooLarge,
                format!(
                    "op is {} bytes; message data is limited to {max}",
                    text.len()
                ),
            );
            return protocol::error_frame(&e, None);
        }
        let (op, id) = match ClientOp::parse(text, max) {
            Ok(parsed) => parsed,
            Err(e) => return protocol::error_frame(&e.error, e.id.as_deref()),
        };
        // Boxed: the hub's futures (backend I/O included) are large, and
        // inline they would sit in every idle connection's task forever.
        match Box::pin(self.run(op, id.as_deref())).await {
            Ok(reply) => reply,
            Err(e) => protocol::error_frame(&e, id.as_deref()),
        }
    }

    async fn run(
        &mut self,
        op: ClientOp,
        id: Option<&serde_json::value::RawValue>,
    ) -> Result<Bytes, ProtocolError> {
        match op {
            ClientOp::Subscribe {
                channel,
                since,
                epoch,
                delivery,
                presence,
            } => {
                if delivery == DeliveryMode::Datagram && self.transport != Transport::WebTransport {
                    return Err(ProtocolError::new(
                        ErrorCode::BadRequest,
                        "datagram delivery needs WebTransport",
                    ));
                }
                self.creds.grant.can_subscribe(&channel)?;
                let who = self.subscriber_identity(&presence)?;
                let limit = self.ctx.cfg.max_subscriptions;
                if self.subs.len() >= limit && !self.subs.contains_key(&channel) {
                    return Err(ProtocolError::new(
                        ErrorCode::RateLimited,
                        format!("at most {limit} subscriptions per connection"),
                    ));
                }
                let sub = self
                    .ctx
                    .hub
                    .subscribe(&channel, &Position { since, epoch })
                    .await?;
                let (epoch, head) = (sub.epoch().clone(), sub.head());
                // Replaces an earlier subscription to the same channel.
                self.subs
                    .insert(channel.clone(), Box::new(SubStream::new(sub, delivery)));
                let joined = self.join_presence(&channel, who, &presence).await;
                Ok(match joined {
                    Ok(()) => protocol::subscribed_frame(&channel, &epoch, head),
                    Err(e) => protocol::subscribed_frame_presence_error(&channel, &epoch, head, &e),
                })
            }
            ClientOp::Unsubscribe { channel } => {
                self.subs.remove(&channel);
                self.leave_presence(&channel);
                Ok(protocol::unsubscribed_frame(&channel))
            }
            ClientOp::PresenceJoin {
                channel,
                tab,
                client,
                info,
            } => {
                let info = info.as_deref().map(serde_json::value::RawValue::get);
                self.join_tab(&channel, &tab, client.as_deref(), info)
                    .await?;
                Ok(protocol::presence_tab_frame(id, &channel, &tab, true))
            }
            ClientOp::PresenceLeave { channel, tab } => {
                self.leave_tab(&channel, &tab)?;
                Ok(protocol::presence_tab_frame(id, &channel, &tab, false))
            }
            ClientOp::Presence { channel } => {
                self.creds.grant.can_read_presence(&channel)?;
                let members = self.ctx.hub.presence().members(&channel).await?;
                Ok(protocol::presence_frame(&channel, &members_json(&members)))
            }
            ClientOp::Publish { channel, data, key } => {
                self.creds.grant.can_publish(&channel)?;
                self.creds.may_publish(&self.ctx)?;
                let p = self
                    .ctx
                    .hub
                    .publish_with(&channel, &data, key.as_ref())
                    .await?;
                Ok(protocol::published_frame(id, &channel, &p.epoch, p.offset))
            }
            ClientOp::Echo { data } => Ok(protocol::echo_frame(&data)),
        }
    }

    /// Drops every subscription (the token that allowed them expired).
    pub(crate) fn unsubscribe_all(&mut self) {
        self.subs.clear();
        self.presence = None;
    }

    /// Every subscription, by channel.
    pub(crate) fn streams_mut(&mut self) -> impl Iterator<Item = (&ChannelName, &mut SubStream)> {
        self.subs.iter_mut().map(|(k, v)| (&*k, &mut **v))
    }

    /// The subscription to `channel`, if any.
    pub(crate) fn stream_mut(&mut self, channel: &ChannelName) -> Option<&mut SubStream> {
        self.streams_mut()
            .find(|(name, _)| *name == channel)
            .map(|(_, s)| s)
    }

    /// Waits for the next event of any subscription, presence events
    /// included. Cancel-safe.
    pub(crate) async fn next_event(&mut self) -> Option<(ChannelName, DeliveryMode, Event)> {
        let presence = |ch, ev| Some((ch, DeliveryMode::Stream, Event::Presence(ev)));
        let Some(p) = self.presence.as_deref_mut() else {
            let (ch, (mode, ev)) = self.subs.next().await?;
            return Some((ch, mode, ev));
        };
        if let Some((ch, ev)) = p.pending.pop_front() {
            return presence(ch, ev);
        }
        tokio::select! {
            next = self.subs.next() => next.map(|(ch, (mode, ev))| (ch, mode, ev)),
            Some((ch, change)) = p.watching.next(), if !p.watching.is_empty() => match change {
                Ok(c) => presence(ch, PresenceEvent::Change(c)),
                // Fell behind the joins and leaves: the list as it is now.
                Err(BroadcastStreamRecvError::Lagged(_)) => {
                    let members = self.ctx.hub.presence().resync(&ch).await;
                    presence(ch, PresenceEvent::Snapshot(members))
                }
            },
        }
    }

    /// The next event if one is ready now.
    pub(crate) fn try_next_event(&mut self) -> Option<(ChannelName, DeliveryMode, Event)> {
        self.next_event().now_or_never().flatten()
    }
}
