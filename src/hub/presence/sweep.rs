//! The sweep of [`Presence`]: its task ([`Presence::run`]) ends lapsed
//! poll leases every third of the lapse and forgets what no watcher or
//! poller needs any more; with Redis it also refreshes this node's members
//! there and hears every node's joins and leaves.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Presence, Told, now_ms};

impl Presence {
    /// Ends the leases that ran out by `now`, and forgets what no watcher
    /// or poller needs any more.
    pub fn expire(&self, now: u64) -> usize {
        let mut reg = self.inner.registry();
        let lapsed = reg.expire(now);
        let n = lapsed.len();
        for (channel, change) in lapsed {
            self.changed(&channel, change);
        }
        drop(reg);
        let mut told = self.inner.told();
        // Channels whose watchers have all gone without an event since.
        told.watchers.retain(|_, tx| tx.receiver_count() > 0);
        let idle = now.saturating_sub(self.inner.cfg.lapse.as_millis() as u64);
        let Told { feed, watchers } = &mut *told;
        feed.sweep(idle, |ch| watchers.contains_key(ch));
        n
    }

    /// Ends lapsed leases every third of the lapse until `stop`; with
    /// Redis, also pushes this node's members on there, reaps the watched
    /// channels' expired members, and hears every node's joins and leaves.
    pub async fn run(self, stop: CancellationToken) {
        let period = (self.inner.cfg.lapse / 3).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sweep = async {
            loop {
                tick.tick().await;
                self.expire(now_ms());
                if self.inner.store.is_some() {
                    self.refresh().await;
                }
            }
        };
        let listen = async {
            match &self.inner.store {
                Some(store) => {
                    let inner = &self.inner;
                    store
                        .listen(stop.clone(), |ch, change| inner.tell(&ch, change))
                        .await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => {}
            () = sweep => {}
            () = listen => {}
        }
    }
}
