//! The presence side of an [`OpSession`]: the member its subscriptions
//! join as, the tabs it joins with `presence_join` (several members of one
//! identity on one conversation: the tabs of a browser sharing one
//! connection), and the channels whose joins and leaves it watches.
//!
//! Every member is held by a [`Held`] in [`SessionPresence`], so it leaves
//! when the conversation ends, whatever ended it.

use std::collections::{HashMap, VecDeque};

use tokio_stream::StreamMap;
use tokio_stream::wrappers::BroadcastStream;

use super::OpSession;
use crate::hub::presence::{Change, ClientId, Held, Info};
use crate::hub::{ChannelName, PresenceEvent};
use crate::protocol::{ErrorCode, PresenceAsk, ProtocolError};
use crate::transport::presence::identity;

/// Absent until first used, so conversations that never use presence
/// carry one pointer for it.
#[derive(Default)]
pub(super) struct SessionPresence {
    /// The member each subscription joined as.
    held: HashMap<ChannelName, Held>,
    /// The tabs joined by `presence_join`, by channel and tab; at most
    /// `--max-subscriptions` of them.
    tabs: HashMap<(ChannelName, String), Held>,
    pub(super) watching: StreamMap<ChannelName, BroadcastStream<Change>>,
    pub(super) pending: VecDeque<(ChannelName, PresenceEvent)>,
}

impl OpSession {
    /// Who a `subscribe` joins as: see [`identity`]; nobody with
    /// `join: false`, which takes no `client` or `info`.
    pub(super) fn subscriber_identity(
        &self,
        ask: &PresenceAsk,
    ) -> Result<Option<(ClientId, Info)>, ProtocolError> {
        let info = ask.info.as_deref().map(serde_json::value::RawValue::get);
        if ask.join {
            identity(&self.ctx, &self.creds.grant, ask.client.as_deref(), info)
        } else if ask.client.is_some() || info.is_some() {
            Err(ProtocolError::new(
                ErrorCode::BadRequest,
                "`join: false` subscribes without joining: it takes no `client` or `info`",
            ))
        } else {
            Ok(None)
        }
    }

    /// Joins `who` to the presence of a just-made subscription and, if it
    /// asked, starts telling it who is there. The subscription stands
    /// whatever this returns.
    pub(super) async fn join_presence(
        &mut self,
        channel: &ChannelName,
        who: Option<(ClientId, Info)>,
        ask: &PresenceAsk,
    ) -> Result<(), ProtocolError> {
        // A resubscription starts its presence afresh, snapshot included.
        self.leave_presence(channel);
        // Both are tried; the first failure is what the client is told.
        let held = match who {
            Some((id, info)) => match self.ctx.hub.presence().hold(channel, id, info).await {
                Ok(held) => {
                    self.presence
                        .get_or_insert_with(Default::default)
                        .held
                        .insert(channel.clone(), held);
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
            None => Ok(()),
        };
        let watched = match ask.events {
            true => self.watch_presence(channel).await,
            false => Ok(()),
        };
        held.and(watched)
    }

    /// Starts telling this conversation the members of `channel`, then
    /// their joins and leaves.
    async fn watch_presence(&mut self, channel: &ChannelName) -> Result<(), ProtocolError> {
        self.creds.grant.can_read_presence(channel)?;
        let (rx, local) = self.ctx.hub.presence().watch_from(channel);
        let members = crate::transport::presence::first_snapshot(&self.ctx, local, channel).await?;
        let p = self.presence.get_or_insert_with(Default::default);
        p.watching.insert(channel.clone(), BroadcastStream::new(rx));
        p.pending
            .push_back((channel.clone(), PresenceEvent::Snapshot(members)));
        Ok(())
    }

    /// Ends what a subscription to `channel` joined and watched (not its
    /// tabs: they go by `presence_leave` or with the conversation).
    pub(super) fn leave_presence(&mut self, channel: &ChannelName) {
        if let Some(p) = &mut self.presence {
            p.held.remove(channel);
            p.watching.remove(channel);
            p.pending.retain(|(c, _)| c != channel);
        }
    }

    /// `presence_join`: joins `channel` as tab `tab` of the identity a
    /// subscription would join as (the token's `sub` with auth, else
    /// `client`). Joining a tab again updates its `info` without a leave.
    pub(super) async fn join_tab(
        &mut self,
        channel: &ChannelName,
        tab: &str,
        client: Option<&str>,
        info: Option<&str>,
    ) -> Result<(), ProtocolError> {
        self.creds.grant.can_subscribe(channel)?;
        let Some((id, info)) = identity(&self.ctx, &self.creds.grant, client, info)? else {
            return Err(ProtocolError::new(
                ErrorCode::BadRequest,
                "`presence_join` needs a `client` id (or a token with a `sub`)",
            ));
        };
        let id = id.with_tab(tab)?;
        let key = (channel.clone(), tab.to_owned());
        let limit = self.ctx.cfg.max_subscriptions;
        let joined = self.presence.as_ref().map_or(0, |p| p.tabs.len());
        let known = self
            .presence
            .as_ref()
            .is_some_and(|p| p.tabs.contains_key(&key));
        if joined >= limit && !known {
            return Err(ProtocolError::new(
                ErrorCode::RateLimited,
                format!("at most {limit} presence joins per connection"),
            ));
        }
        let held = self.ctx.hub.presence().hold(channel, id, info).await?;
        // The new hold is in before the old one goes, so a tab joining
        // again stays (a new `client` for it: the old member leaves).
        self.presence
            .get_or_insert_with(Default::default)
            .tabs
            .insert(key, held);
        Ok(())
    }

    /// `presence_leave`: the tab joined by `presence_join` leaves (a tab
    /// not joined is no error: the answer is the same).
    pub(super) fn leave_tab(
        &mut self,
        channel: &ChannelName,
        tab: &str,
    ) -> Result<(), ProtocolError> {
        // Checked like a join's, so a bad name is told, not ignored.
        ClientId::check_tab(tab)?;
        if let Some(p) = &mut self.presence {
            p.tabs.remove(&(channel.clone(), tab.to_owned()));
        }
        Ok(())
    }
}
