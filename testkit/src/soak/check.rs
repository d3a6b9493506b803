//! The check of every subscriber's record, and the printed figures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use anyhow::{Result, ensure};

use super::subscribers::Rec;

/// What one subscriber's record shows.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    /// Messages delivered.
    pub delivered: u64,
    /// `truncated` announcements.
    pub truncations: u64,
    /// `lagged` announcements.
    pub lagged: u64,
    /// Gaps (or epoch changes) nobody announced: must be 0.
    pub unannounced: u64,
    /// Offsets delivered twice or out of order: must be 0.
    pub duplicates: u64,
    /// Acked messages this subscriber never got.
    pub acked_missing: u64,
    /// Of those, how many no announced gap covers: must be 0.
    pub acked_missing_unexplained: u64,
}

pub(crate) fn verify(recs: &[Rec], acked: Option<&HashMap<String, Vec<u64>>>) -> Verdict {
    let mut v = Verdict::default();
    let mut cur: Option<String> = None;
    let mut last = 0u64;
    let mut gap_ok = false;
    let mut pending_epoch = false;
    let mut delivered: HashSet<(&str, u64)> = HashSet::new();
    // Announced gaps: (epoch, first, last) offsets inclusive.
    let mut covered: Vec<(String, u64, u64)> = Vec::new();
    let mut seen_epochs: HashSet<&str> = HashSet::new();
    let mut told_of_new_epoch = false;
    for r in recs {
        match r {
            Rec::Subscribed(e) => match &cur {
                None => cur = Some(e.clone()),
                Some(c) if c != e => pending_epoch = true,
                Some(_) => {}
            },
            Rec::Trunc(e, oldest) => {
                v.truncations += 1;
                if cur.as_ref() != Some(e) {
                    if let Some(old) = cur.take() {
                        covered.push((old, last + 1, u64::MAX));
                    }
                    cur = Some(e.clone());
                    last = 0;
                    told_of_new_epoch = true;
                }
                if *oldest > last + 1 {
                    covered.push((e.clone(), last + 1, oldest - 1));
                }
                gap_ok = true;
                pending_epoch = false;
            }
            Rec::Lagged => {
                v.lagged += 1;
                gap_ok = true;
            }
            Rec::Msg(e, o) => {
                seen_epochs.insert(e);
                if cur.is_none() {
                    cur = Some(e.clone());
                }
                if pending_epoch || cur.as_ref() != Some(e) {
                    v.unannounced += 1;
                    cur = Some(e.clone());
                    pending_epoch = false;
                } else if *o <= last {
                    v.duplicates += 1;
                    continue;
                } else if *o > last + 1 {
                    if gap_ok {
                        covered.push((e.clone(), last + 1, o - 1));
                    } else {
                        v.unannounced += 1;
                    }
                }
                v.delivered += 1;
                delivered.insert((e, *o));
                last = *o;
                gap_ok = false;
            }
        }
    }
    for (epoch, offsets) in acked.into_iter().flatten() {
        for o in offsets {
            if delivered.contains(&(epoch.as_str(), *o)) {
                continue;
            }
            v.acked_missing += 1;
            let in_gap = covered
                .iter()
                .any(|(e, lo, hi)| e == epoch && (*lo..=*hi).contains(o));
            // An epoch that came and went while this subscriber was away:
            // it was told when it came back (`truncated` with a new epoch).
            let unseen_epoch = !seen_epochs.contains(epoch.as_str())
                && cur.as_deref() != Some(epoch.as_str())
                && told_of_new_epoch;
            if !(in_gap || unseen_epoch) {
                v.acked_missing_unexplained += 1;
            }
        }
    }
    v
}

/// The figures of a run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Seconds of faults.
    pub secs: u64,
    /// Extra server arguments.
    pub server_args: Vec<String>,
    /// The seed.
    pub seed: u64,
    /// Acked publishes.
    pub published: u64,
    /// Publish attempts that failed (server down, connection lost).
    pub publish_failures: u64,
    /// Server stops by SIGTERM.
    pub restarts_graceful: u64,
    /// Server stops by SIGKILL.
    pub restarts_killed: u64,
    /// Per rung: subscribers' summed verdicts, resumes and reconnects.
    pub rungs: BTreeMap<String, (Verdict, u64, u64)>,
    /// Whether every subscriber caught up with the final marker.
    pub caught_up: bool,
    /// Truncations are failures (durable history).
    pub expect_no_truncation: bool,
}

impl Report {
    /// The sum over rungs.
    pub fn total(&self) -> (Verdict, u64, u64) {
        let mut t = (Verdict::default(), 0, 0);
        for (v, r, c) in self.rungs.values() {
            t.0.delivered += v.delivered;
            t.0.truncations += v.truncations;
            t.0.lagged += v.lagged;
            t.0.unannounced += v.unannounced;
            t.0.duplicates += v.duplicates;
            t.0.acked_missing += v.acked_missing;
            t.0.acked_missing_unexplained += v.acked_missing_unexplained;
            t.1 += r;
            t.2 += c;
        }
        t
    }

    /// Fails unless the guarantees held.
    pub fn check(&self) -> Result<()> {
        let (t, _, _) = self.total();
        ensure!(
            self.caught_up,
            "a subscriber never caught up with the end marker"
        );
        ensure!(t.unannounced == 0, "{} unannounced gaps", t.unannounced);
        ensure!(t.duplicates == 0, "{} duplicates or reorders", t.duplicates);
        ensure!(
            t.acked_missing_unexplained == 0,
            "{} acked messages never delivered and not announced",
            t.acked_missing_unexplained
        );
        ensure!(self.published > 0, "nothing was published");
        for (rung, (v, _, _)) in &self.rungs {
            ensure!(v.delivered > 0, "{rung}: nothing delivered");
        }
        if self.expect_no_truncation {
            ensure!(
                t.truncations == 0,
                "{} truncations with durable history",
                t.truncations
            );
            ensure!(
                t.acked_missing == 0,
                "{} acked messages lost",
                t.acked_missing
            );
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, resumes, reconnects) = self.total();
        writeln!(
            f,
            "soak: {} s of faults, seed {}, server args {:?}",
            self.secs, self.seed, self.server_args
        )?;
        writeln!(
            f,
            "server restarts            {} ({} SIGTERM, {} SIGKILL)",
            self.restarts_graceful + self.restarts_killed,
            self.restarts_graceful,
            self.restarts_killed
        )?;
        writeln!(f, "published (acked)          {}", self.published)?;
        writeln!(f, "publish attempts failed    {}", self.publish_failures)?;
        writeln!(f, "delivered                  {}", t.delivered)?;
        writeln!(f, "resumes (killed, since)    {resumes}")?;
        writeln!(f, "reconnects (after errors)  {reconnects}")?;
        writeln!(
            f,
            "announced gaps             {} (truncated {}, lagged {})",
            t.truncations + t.lagged,
            t.truncations,
            t.lagged
        )?;
        writeln!(f, "unannounced gaps           {}", t.unannounced)?;
        writeln!(f, "duplicates / reorders      {}", t.duplicates)?;
        writeln!(
            f,
            "acked, never delivered     {} ({} covered by an announced gap, {} unexplained)",
            t.acked_missing,
            t.acked_missing - t.acked_missing_unexplained,
            t.acked_missing_unexplained
        )?;
        writeln!(f, "caught up at the end       {}", self.caught_up)?;
        writeln!(
            f,
            "{:<13} {:>9} {:>8} {:>10} {:>10} {:>11} {:>8}",
            "rung", "delivered", "resumes", "reconnects", "truncated", "unannounced", "missing"
        )?;
        for (rung, (v, r, c)) in &self.rungs {
            writeln!(
                f,
                "{rung:<13} {:>9} {r:>8} {c:>10} {:>10} {:>11} {:>8}",
                v.delivered, v.truncations, v.unannounced, v.acked_missing
            )?;
        }
        Ok(())
    }
}
