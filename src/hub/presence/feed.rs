//! The presence feed: the joins and leaves told about each channel, as
//! watchers hear them and pollers ask for them. Sans-IO, like the registry:
//! it is handed every change and every `now`.
//!
//! The feed is apart from the registry because on one node the two tell
//! the same story, but with Redis they do not: the registry is this node's
//! members, while the feed is what happens in the channel on every node
//! (told by Redis, `super::redis`).
//!
//! Every change is numbered from one counter for the whole feed, never
//! from the channel's message offsets, so presence never disturbs resuming
//! a channel. The last [`RECENT`] changes per channel are kept, so a poller
//! can ask for the changes after the version it last saw ([`Feed::since`])
//! and is told to take a fresh snapshot when they are gone.

use std::collections::{HashMap, VecDeque};

use super::registry::Change;
use crate::hub::ChannelName;

/// Changes remembered per channel for pollers asking "what changed".
pub const RECENT: usize = 64;

/// What a poller gets for "changes after version V".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since<M> {
    /// Every change after V, oldest first (possibly none).
    Changes(Vec<Change>),
    /// V is unknown here or too old: the whole member list instead.
    Snapshot(M),
}

#[derive(Debug)]
struct Log {
    /// Changes after this version are all in `recent`.
    floor: u64,
    /// The version of the newest change.
    version: u64,
    recent: VecDeque<(u64, Change)>,
    /// When a poller last asked (unix ms), so the sweep keeps logs in use.
    used: u64,
}

impl Log {
    fn record(&mut self, version: u64, change: Change) {
        if self.recent.len() == RECENT
            && let Some((v, _)) = self.recent.pop_front()
        {
            self.floor = v;
        }
        self.version = version;
        self.recent.push_back((version, change));
    }
}

/// Every channel's recent changes on this node.
#[derive(Debug)]
pub struct Feed {
    logs: HashMap<ChannelName, Log>,
    /// The last version handed out, in any channel.
    version: u64,
}

impl Feed {
    /// An empty feed. Versions start after `first_version`: pass something
    /// that grows across restarts (the start time in µs), so a version from
    /// an earlier run is never mistaken for one of this run.
    pub fn new(first_version: u64) -> Self {
        Self {
            logs: HashMap::new(),
            version: first_version,
        }
    }

    /// Numbers a change and, if the channel has a log or `keep` asks for
    /// one, remembers it. A change not remembered still moves the counter,
    /// so a poller whose version predates it is sent a snapshot.
    pub fn record(&mut self, channel: &ChannelName, change: Change, keep: bool, now: u64) {
        self.version += 1;
        let version = self.version;
        if let Some(log) = self.logs.get_mut(channel) {
            log.record(version, change);
        } else if keep {
            let mut log = self.fresh_log(now);
            log.floor = version - 1;
            log.record(version, change);
            self.logs.insert(channel.clone(), log);
        }
    }

    fn fresh_log(&self, now: u64) -> Log {
        Log {
            floor: self.version,
            version: self.version,
            recent: VecDeque::new(),
            used: now,
        }
    }

    /// The changes in `channel` after version `after` — `None` for a
    /// poller with no version yet — or `Snapshot(())` when they cannot all
    /// be told; and the version to ask from next. The channel's log is kept
    /// from here on, so the next ask gets changes.
    pub fn since(
        &mut self,
        channel: &ChannelName,
        after: Option<u64>,
        now: u64,
    ) -> (Since<()>, u64) {
        let fresh = self.fresh_log(now);
        let log = self.logs.entry(channel.clone()).or_insert(fresh);
        log.used = now;
        let since = match after {
            Some(v) if (log.floor..=log.version).contains(&v) => Since::Changes(
                log.recent
                    .iter()
                    .filter(|(lv, _)| *lv > v)
                    .map(|(_, c)| c.clone())
                    .collect(),
            ),
            _ => Since::Snapshot(()),
        };
        (since, log.version)
    }

    /// Whether [`Self::since`] would tell a poller at `after` anything (a
    /// waiting long poll's question): changes, or a snapshot because
    /// `after` is unknown.
    pub fn has_news(&self, channel: &ChannelName, after: u64) -> bool {
        self.logs.get(channel).map_or(self.version, |l| l.version) != after
    }

    /// Forgets the logs no poller asked for since `idle_before` (unix ms)
    /// and that `keep` does not vouch for (a channel with watchers).
    pub fn sweep(&mut self, idle_before: u64, keep: impl Fn(&ChannelName) -> bool) {
        self.logs
            .retain(|ch, log| log.used >= idle_before || keep(ch));
    }

    /// How many channels have a log (for tests and the sweep's accounting).
    pub fn len(&self) -> usize {
        self.logs.len()
    }

    /// Whether no channel has a log.
    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::presence::{ClientId, Info, Member};

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }
    fn join(s: &str) -> Change {
        Change::Join(Member {
            id: ClientId::parse(s).unwrap(),
            info: Info::empty(),
        })
    }
    fn leave(s: &str) -> Change {
        Change::Leave(Member {
            id: ClientId::parse(s).unwrap(),
            info: Info::empty(),
        })
    }

    #[test]
    fn pollers_get_the_changes_since_their_version_or_a_snapshot() {
        let mut f = Feed::new(1000);
        let a = ch("a");
        // A first ask: the list, and a version to continue from.
        let (s, v0) = f.since(&a, None, 0);
        assert_eq!(s, Since::Snapshot(()));
        assert_eq!(f.since(&a, Some(v0), 0).0, Since::Changes(vec![]));
        f.record(&a, join("x"), true, 0);
        f.record(&a, join("y"), true, 0);
        let (_, v2) = f.since(&a, Some(v0), 0);
        f.record(&a, leave("x"), true, 0);
        assert_eq!(f.since(&a, Some(v2), 0).0, Since::Changes(vec![leave("x")]));
        let (Since::Changes(c), _) = f.since(&a, Some(v0), 0) else {
            panic!("expected changes")
        };
        assert_eq!(
            c.iter().map(Change::kind).collect::<Vec<_>>(),
            ["join", "join", "leave"]
        );
        // A version from an earlier run (smaller than this run's start) or
        // from the future gets the snapshot.
        assert_eq!(f.since(&a, Some(5), 0).0, Since::Snapshot(()));
        assert_eq!(f.since(&a, Some(u64::MAX), 0).0, Since::Snapshot(()));
        // Other channels' changes move the shared counter, not this log's.
        f.record(&ch("b"), join("q"), true, 0);
        let (_, v) = f.since(&a, None, 0);
        assert_eq!(f.since(&a, Some(v), 0).0, Since::Changes(vec![]));
        assert!(!f.has_news(&a, v));
        f.record(&a, join("z"), false, 0);
        assert!(f.has_news(&a, v));
    }

    #[test]
    fn changes_older_than_the_ring_turn_into_a_snapshot() {
        let mut f = Feed::new(0);
        let a = ch("a");
        let (_, v) = f.since(&a, None, 0);
        for i in 0..RECENT {
            f.record(&a, join(&format!("m{i}")), true, 0);
        }
        // Exactly RECENT changes after `v`: all still told.
        assert!(matches!(f.since(&a, Some(v), 0).0, Since::Changes(c) if c.len() == RECENT));
        f.record(&a, join("one-more"), true, 0);
        assert_eq!(f.since(&a, Some(v), 0).0, Since::Snapshot(()));
        assert!(f.has_news(&a, v));
    }

    #[test]
    fn unkept_changes_still_outdate_versions_and_idle_logs_go() {
        let mut f = Feed::new(0);
        let (a, b) = (ch("a"), ch("b"));
        let (_, v) = f.since(&a, None, 10);
        f.sweep(11, |_| false);
        assert!(f.is_empty());
        // Not kept (nobody watches b), but a's old version is now unknown.
        f.record(&b, join("x"), false, 20);
        assert!(f.is_empty());
        assert_eq!(f.since(&a, Some(v), 30).0, Since::Snapshot(()));
        // Watched channels stay however idle.
        f.sweep(100, |c| *c == a);
        assert_eq!(f.len(), 1);
    }
}
