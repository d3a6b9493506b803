//! The part of [`Presence`] that only runs with Redis: writing this node's
//! leaves there, and the refresh round that keeps its members alive, reaps
//! the watched channels and writes back members reaped while it was late.

use std::collections::{BTreeMap, BTreeSet};

use super::redis::RedisPresence;
use super::{ChannelName, ClientId, Member, Presence};

impl Presence {
    /// Writes a leave of this node's to Redis, which tells it (if no other
    /// node holds the member) to every node.
    pub(super) fn write_leave(&self, channel: ChannelName, member: Member) {
        // Without a runtime (a drop at exit) the field expires instead.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        rt.spawn(async move {
            let Some(store) = &this.inner.store else {
                return;
            };
            let _turn = store.turn(&channel, &member.id).await;
            // Joined again while this waited its turn: the field is the
            // new join's.
            if this.inner.registry().contains(&channel, &member.id) {
                return;
            }
            if let Err(e) = store.leave(&channel, &member.id).await {
                // It expires there after the lapse anyway, leave and all.
                tracing::debug!(error = %e, "presence leave not written to redis");
            }
        });
    }

    /// One refresh round with Redis: every channel with members or
    /// watchers here, one script call each.
    pub(super) async fn refresh(&self) {
        let Some(store) = &self.inner.store else {
            return;
        };
        let mut by_channel: BTreeMap<ChannelName, Vec<ClientId>> = BTreeMap::new();
        for (ch, m) in self.inner.registry().all() {
            by_channel.entry(ch).or_default().push(m.id);
        }
        let watched: BTreeSet<ChannelName> = self.inner.told().watchers.keys().cloned().collect();
        for ch in watched {
            by_channel.entry(ch).or_default();
        }
        for (ch, ids) in by_channel {
            let missing = match store.refresh(&ch, &ids).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(channel = %ch, error = %e, "presence not refreshed in redis");
                    continue;
                }
            };
            for id in missing
                .iter()
                .filter_map(|s| ClientId::parse_stored(s).ok())
            {
                self.rejoin(store, &ch, id).await;
            }
        }
    }

    /// Writes again a member this node holds whose field was reaped.
    async fn rejoin(&self, store: &RedisPresence, channel: &ChannelName, id: ClientId) {
        let _turn = store.turn(channel, &id).await;
        let Some(member) = self
            .inner
            .registry()
            .members(channel)
            .into_iter()
            .find(|m| m.id == id)
        else {
            return;
        };
        if let Err(e) = store.rejoin(channel, &member).await {
            tracing::warn!(channel = %channel, error = %e, "presence member not rewritten in redis");
        }
    }
}
