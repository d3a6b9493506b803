//! The presence registry: who is in each channel, as this node knows it.
//! Sans-IO: no locks, no tasks, no clock of its own — every call that
//! depends on time is handed `now` (unix ms), so the tests drive time.
//!
//! A member is *present* while it has a holder (a live subscription on a
//! WebSocket, WebTransport stream or event stream) or an unexpired lease
//! (a poll, which refreshes its lease each time it asks). Several holders
//! of one id — two tabs of one user — are one member: it joins with the
//! first and leaves with the last.
//!
//! Every join and leave is numbered from one counter for the whole
//! registry, never from the channel's message offsets, so presence never
//! disturbs resuming a channel. The last [`RECENT`] changes per channel are
//! kept, so a poller can ask for the changes after the version it last saw
//! ([`Registry::since`]) and gets a fresh snapshot when they are gone.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::member::{ClientId, Info, Member, PresenceError};
use crate::hub::ChannelName;

/// Changes remembered per channel for pollers asking "what changed".
pub const RECENT: usize = 64;

/// One join or leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The member arrived (its first holder or lease).
    Join(Member),
    /// The member left (its last holder went and its lease ran out).
    Leave(Member),
}

impl Change {
    /// `join` or `leave`: the event's name on every transport.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Join(_) => "join",
            Self::Leave(_) => "leave",
        }
    }

    /// Who joined or left.
    pub fn member(&self) -> &Member {
        match self {
            Self::Join(m) | Self::Leave(m) => m,
        }
    }
}

/// What a poller gets for "changes after version V".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Every change after V, oldest first (possibly none).
    Changes(Vec<Change>),
    /// V is unknown here or too old: the whole member list instead.
    Snapshot(Vec<Member>),
}

#[derive(Debug)]
struct Entry {
    info: Info,
    /// Live subscriptions holding the member.
    holders: u32,
    /// Unix ms until which a poll keeps the member present; 0 = none.
    lease: u64,
}

impl Entry {
    fn present(&self, now: u64) -> bool {
        self.holders > 0 || self.lease > now
    }
}

#[derive(Debug)]
struct Roster {
    members: BTreeMap<ClientId, Entry>,
    /// Changes after this version are all in `recent`.
    floor: u64,
    /// The version of the newest change.
    version: u64,
    recent: VecDeque<(u64, Change)>,
}

impl Roster {
    fn new(version: u64) -> Self {
        Self {
            members: BTreeMap::new(),
            floor: version,
            version,
            recent: VecDeque::new(),
        }
    }

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

/// Every channel's members on this node.
#[derive(Debug)]
pub struct Registry {
    rosters: HashMap<ChannelName, Roster>,
    max_members: usize,
    /// The last version handed out, in any channel.
    version: u64,
}

impl Registry {
    /// An empty registry allowing `max_members` per channel. Versions start
    /// after `first_version`: pass something that grows across restarts
    /// (the start time in µs), so a version from an earlier run is never
    /// mistaken for one of this run.
    pub fn new(max_members: usize, first_version: u64) -> Self {
        Self {
            rosters: HashMap::new(),
            max_members,
            version: first_version,
        }
    }

    /// Adds a holder (a live subscription) of `id` in `channel`.
    pub fn hold(
        &mut self,
        channel: &ChannelName,
        id: &ClientId,
        info: &Info,
    ) -> Result<Option<Change>, PresenceError> {
        self.enter(channel, id, info, |e| e.holders += 1)
    }

    /// Lets a poll keep `id` present in `channel` until `until` (unix ms).
    pub fn lease(
        &mut self,
        channel: &ChannelName,
        id: &ClientId,
        info: &Info,
        until: u64,
    ) -> Result<Option<Change>, PresenceError> {
        self.enter(channel, id, info, |e| e.lease = e.lease.max(until))
    }

    fn enter(
        &mut self,
        channel: &ChannelName,
        id: &ClientId,
        info: &Info,
        add: impl FnOnce(&mut Entry),
    ) -> Result<Option<Change>, PresenceError> {
        let version = self.version;
        let roster = self
            .rosters
            .entry(channel.clone())
            .or_insert_with(|| Roster::new(version));
        if let Some(e) = roster.members.get_mut(id) {
            // The latest info wins; a second tab is no new member.
            e.info = info.clone();
            add(e);
            return Ok(None);
        }
        if roster.members.len() >= self.max_members {
            if roster.members.is_empty() {
                self.rosters.remove(channel);
            }
            return Err(PresenceError::Full(self.max_members));
        }
        let mut e = Entry {
            info: info.clone(),
            holders: 0,
            lease: 0,
        };
        add(&mut e);
        roster.members.insert(id.clone(), e);
        let change = Change::Join(Member {
            id: id.clone(),
            info: info.clone(),
        });
        self.version += 1;
        roster.record(self.version, change.clone());
        Ok(Some(change))
    }

    /// Removes one holder of `id`; the member leaves if that was the last
    /// and no lease runs past `now`.
    pub fn release(&mut self, channel: &ChannelName, id: &ClientId, now: u64) -> Option<Change> {
        let roster = self.rosters.get_mut(channel)?;
        let e = roster.members.get_mut(id)?;
        e.holders = e.holders.saturating_sub(1);
        if e.present(now) {
            return None;
        }
        self.remove(channel, id)
    }

    fn remove(&mut self, channel: &ChannelName, id: &ClientId) -> Option<Change> {
        let roster = self.rosters.get_mut(channel)?;
        let e = roster.members.remove(id)?;
        let change = Change::Leave(Member {
            id: id.clone(),
            info: e.info,
        });
        self.version += 1;
        roster.record(self.version, change.clone());
        // An empty roster is dropped: a poller's version then no longer
        // matches anything and it is sent the (empty) snapshot.
        if roster.members.is_empty() {
            self.rosters.remove(channel);
        }
        Some(change)
    }

    /// Ends every lease that ran out by `now` on a member with no holder.
    pub fn expire(&mut self, now: u64) -> Vec<(ChannelName, Change)> {
        let lapsed: Vec<(ChannelName, ClientId)> = self
            .rosters
            .iter()
            .flat_map(|(ch, r)| {
                r.members
                    .iter()
                    .filter(|(_, e)| !e.present(now))
                    .map(move |(id, _)| (ch.clone(), id.clone()))
            })
            .collect();
        lapsed
            .into_iter()
            .filter_map(|(ch, id)| self.remove(&ch, &id).map(|c| (ch, c)))
            .collect()
    }

    /// The members of `channel`, ordered by id.
    pub fn members(&self, channel: &ChannelName) -> Vec<Member> {
        self.rosters.get(channel).map_or_else(Vec::new, |r| {
            r.members
                .iter()
                .map(|(id, e)| Member {
                    id: id.clone(),
                    info: e.info.clone(),
                })
                .collect()
        })
    }

    /// The version a poller should ask from next time for `channel`.
    pub fn version(&self, channel: &ChannelName) -> u64 {
        self.rosters
            .get(channel)
            .map_or(self.version, |r| r.version)
    }

    /// The changes in `channel` after version `after`, or a snapshot when
    /// they cannot all be told.
    pub fn since(&self, channel: &ChannelName, after: u64) -> Since {
        match self.rosters.get(channel) {
            Some(r) if (r.floor..=r.version).contains(&after) => Since::Changes(
                r.recent
                    .iter()
                    .filter(|(v, _)| *v > after)
                    .map(|(_, c)| c.clone())
                    .collect(),
            ),
            // No roster, and nothing happened anywhere since `after`.
            None if after == self.version => Since::Changes(Vec::new()),
            _ => Since::Snapshot(self.members(channel)),
        }
    }

    /// Every member this node holds, for refreshing a shared store.
    pub fn all(&self) -> Vec<(ChannelName, Member)> {
        self.rosters
            .iter()
            .flat_map(|(ch, r)| {
                r.members.iter().map(move |(id, e)| {
                    (
                        ch.clone(),
                        Member {
                            id: id.clone(),
                            info: e.info.clone(),
                        },
                    )
                })
            })
            .collect()
    }

    /// Whether `id` is present in `channel` on this node.
    pub fn contains(&self, channel: &ChannelName, id: &ClientId) -> bool {
        self.rosters
            .get(channel)
            .is_some_and(|r| r.members.contains_key(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }
    fn id(s: &str) -> ClientId {
        ClientId::parse(s).unwrap()
    }
    fn info(s: &str) -> Info {
        Info::parse(s, 256).unwrap()
    }
    fn ids(ms: &[Member]) -> Vec<&str> {
        ms.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn holders_of_one_id_are_one_member() {
        let mut r = Registry::new(10, 0);
        let (a, ann) = (ch("a"), id("ann"));
        let j = r.hold(&a, &ann, &info(r#"{"tab":1}"#)).unwrap();
        assert_eq!(j.map(|c| c.kind()), Some("join"));
        // A second tab: no event, its info is now the member's.
        assert_eq!(r.hold(&a, &ann, &info(r#"{"tab":2}"#)).unwrap(), None);
        assert_eq!(r.members(&a)[0].info.as_str(), r#"{"tab":2}"#);
        assert_eq!(r.release(&a, &ann, 0), None);
        let left = r.release(&a, &ann, 0).unwrap();
        assert_eq!((left.kind(), left.member().id.as_str()), ("leave", "ann"));
        assert!(r.members(&a).is_empty());
        // Releasing what is not held is harmless.
        assert_eq!(r.release(&a, &ann, 0), None);
    }

    #[test]
    fn a_lease_lapses_only_when_its_time_has_passed() {
        let mut r = Registry::new(10, 0);
        let (a, pat) = (ch("a"), id("pat"));
        assert!(r.lease(&a, &pat, &Info::empty(), 1_000).unwrap().is_some());
        // Polling again pushes the lease on; an earlier one never shortens it.
        assert_eq!(r.lease(&a, &pat, &Info::empty(), 2_000).unwrap(), None);
        assert_eq!(r.lease(&a, &pat, &Info::empty(), 1_500).unwrap(), None);
        assert!(r.expire(1_999).is_empty());
        let gone = r.expire(2_000);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1.kind(), "leave");
        // A holder keeps a lapsed lease's member present; leaving after the
        // lease ran out is immediate.
        r.lease(&a, &pat, &Info::empty(), 3_000).unwrap();
        r.hold(&a, &pat, &Info::empty()).unwrap();
        assert!(r.expire(5_000).is_empty());
        assert!(r.release(&a, &pat, 5_000).is_some());
    }

    #[test]
    fn a_full_channel_refuses_new_members_but_not_known_ones() {
        let mut r = Registry::new(2, 0);
        let a = ch("a");
        r.hold(&a, &id("x"), &Info::empty()).unwrap();
        r.hold(&a, &id("y"), &Info::empty()).unwrap();
        assert_eq!(
            r.hold(&a, &id("z"), &Info::empty()),
            Err(PresenceError::Full(2))
        );
        assert_eq!(r.hold(&a, &id("x"), &Info::empty()), Ok(None));
        // Other channels have their own limit.
        assert!(
            r.hold(&ch("b"), &id("z"), &Info::empty())
                .unwrap()
                .is_some()
        );
        // A limit of zero refuses everyone and leaves no empty roster.
        let mut none = Registry::new(0, 0);
        assert!(none.hold(&a, &id("x"), &Info::empty()).is_err());
        assert!(none.all().is_empty());
    }

    #[test]
    fn pollers_get_the_changes_since_their_version_or_a_snapshot() {
        let mut r = Registry::new(10, 1000);
        let a = ch("a");
        // Nothing has happened: an up-to-date version gets no changes.
        let v0 = r.version(&a);
        assert_eq!(r.since(&a, v0), Since::Changes(vec![]));
        r.hold(&a, &id("x"), &Info::empty()).unwrap();
        r.hold(&a, &id("y"), &Info::empty()).unwrap();
        let v2 = r.version(&a);
        r.release(&a, &id("x"), 0);
        let Since::Changes(c) = r.since(&a, v2) else {
            panic!("expected changes")
        };
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].kind(), c[0].member().id.as_str()), ("leave", "x"));
        let Since::Changes(c) = r.since(&a, v0) else {
            panic!("expected changes")
        };
        assert_eq!(
            c.iter().map(Change::kind).collect::<Vec<_>>(),
            ["join", "join", "leave"]
        );
        // A version from an earlier run (smaller than this run's start) or
        // from the future gets the snapshot.
        assert_eq!(r.since(&a, 5), Since::Snapshot(r.members(&a)));
        assert_eq!(r.since(&a, u64::MAX), Since::Snapshot(r.members(&a)));
        // Other channels' changes move the shared counter, not this roster's.
        r.hold(&ch("b"), &id("q"), &Info::empty()).unwrap();
        assert!(matches!(r.since(&a, r.version(&a)), Since::Changes(c) if c.is_empty()));
    }

    #[test]
    fn changes_older_than_the_ring_turn_into_a_snapshot() {
        let mut r = Registry::new(1000, 0);
        let a = ch("a");
        r.hold(&a, &id("keep"), &Info::empty()).unwrap();
        let v = r.version(&a);
        for i in 0..RECENT {
            r.hold(&a, &id(&format!("m{i}")), &Info::empty()).unwrap();
        }
        // Exactly RECENT changes after `v`: all still told.
        assert!(matches!(r.since(&a, v), Since::Changes(c) if c.len() == RECENT));
        r.hold(&a, &id("one-more"), &Info::empty()).unwrap();
        let Since::Snapshot(all) = r.since(&a, v) else {
            panic!("expected a snapshot")
        };
        assert_eq!(all.len(), RECENT + 2);
        assert_eq!(ids(&all)[0], "keep");
    }

    #[test]
    fn an_emptied_channel_sends_pollers_an_empty_snapshot() {
        let mut r = Registry::new(10, 0);
        let a = ch("a");
        r.hold(&a, &id("x"), &Info::empty()).unwrap();
        let v = r.version(&a);
        r.release(&a, &id("x"), 0);
        r.hold(&ch("b"), &id("y"), &Info::empty()).unwrap();
        assert_eq!(r.since(&a, v), Since::Snapshot(vec![]));
        assert_eq!(r.all().len(), 1);
        assert!(r.contains(&ch("b"), &id("y")));
    }
}
