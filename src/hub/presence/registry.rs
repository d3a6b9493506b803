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
//! The joins and leaves it returns are numbered and told by the feed
//! (`super::feed`), not here.

use std::collections::{BTreeMap, HashMap};

use super::member::{ClientId, Info, Member, PresenceError};
use crate::hub::ChannelName;

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

/// One channel's members on this node.
type Roster = BTreeMap<ClientId, Entry>;

/// Every channel's members on this node.
#[derive(Debug)]
pub struct Registry {
    rosters: HashMap<ChannelName, Roster>,
    max_members: usize,
}

impl Registry {
    /// An empty registry allowing `max_members` per channel.
    pub fn new(max_members: usize) -> Self {
        Self {
            rosters: HashMap::new(),
            max_members,
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
        let roster = self.rosters.entry(channel.clone()).or_default();
        if let Some(e) = roster.get_mut(id) {
            // The latest info wins; a second tab is no new member.
            e.info = info.clone();
            add(e);
            return Ok(None);
        }
        if roster.len() >= self.max_members {
            if roster.is_empty() {
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
        roster.insert(id.clone(), e);
        Ok(Some(Change::Join(Member {
            id: id.clone(),
            info: info.clone(),
        })))
    }

    /// Removes one holder of `id`; the member leaves if that was the last
    /// and no lease runs past `now`.
    pub fn release(&mut self, channel: &ChannelName, id: &ClientId, now: u64) -> Option<Change> {
        let roster = self.rosters.get_mut(channel)?;
        let e = roster.get_mut(id)?;
        e.holders = e.holders.saturating_sub(1);
        if e.present(now) {
            return None;
        }
        self.remove(channel, id)
    }

    fn remove(&mut self, channel: &ChannelName, id: &ClientId) -> Option<Change> {
        let roster = self.rosters.get_mut(channel)?;
        let e = roster.remove(id)?;
        if roster.is_empty() {
            self.rosters.remove(channel);
        }
        Some(Change::Leave(Member {
            id: id.clone(),
            info: e.info,
        }))
    }

    /// Ends every lease that ran out by `now` on a member with no holder.
    pub fn expire(&mut self, now: u64) -> Vec<(ChannelName, Change)> {
        let lapsed: Vec<(ChannelName, ClientId)> = self
            .rosters
            .iter()
            .flat_map(|(ch, r)| {
                r.iter()
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
            r.iter()
                .map(|(id, e)| Member {
                    id: id.clone(),
                    info: e.info.clone(),
                })
                .collect()
        })
    }

    /// Every member this node holds, for refreshing a shared store.
    pub fn all(&self) -> Vec<(ChannelName, Member)> {
        self.rosters
            .iter()
            .flat_map(|(ch, r)| {
                r.iter().map(move |(id, e)| {
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
            .is_some_and(|r| r.contains_key(id))
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

    #[test]
    fn holders_of_one_id_are_one_member() {
        let mut r = Registry::new(10);
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
        let mut r = Registry::new(10);
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
        let mut r = Registry::new(2);
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
        let mut none = Registry::new(0);
        assert!(none.hold(&a, &id("x"), &Info::empty()).is_err());
        assert!(none.all().is_empty());
    }

    #[test]
    fn an_emptied_channel_is_forgotten() {
        let mut r = Registry::new(10);
        let a = ch("a");
        r.hold(&a, &id("x"), &Info::empty()).unwrap();
        r.release(&a, &id("x"), 0);
        r.hold(&ch("b"), &id("y"), &Info::empty()).unwrap();
        assert!(r.members(&a).is_empty());
        assert_eq!(r.all().len(), 1);
        assert!(r.contains(&ch("b"), &id("y")));
    }
}
