//! The redb file behind the durable backend: schema, checksummed records
//! and the start-up verification.
//!
//! Two tables: `channels` maps a channel name to its epoch and head offset,
//! `messages` maps `(channel, offset)` to the message's timestamp and data.
//! Every record carries an FNV-1a checksum over its key and value, so a
//! record that redb reads back intact but that belongs elsewhere, or was
//! damaged before redb's own page checksums saw it, is still caught.
//! [`Store::open`] verifies redb's integrity and then every record; any
//! damage is a [`BackendError::Corrupt`] and the server does not start.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::super::BackendError;

/// The file inside `--data-dir`.
pub(super) const FILE: &str = "ladder.redb";

const CHANNELS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("channels");
const MESSAGES: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("messages");

/// Memory redb may use for its page cache. Its default (1 GiB) is meant for
/// a database that owns the machine; ours only serves cold loads.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A channel's durable header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Meta {
    /// The epoch the channel has had since it was first created.
    pub(super) epoch: String,
    /// The newest durable offset.
    pub(super) head: u64,
}

/// One retained message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) offset: u64,
    pub(super) ts: u64,
    pub(super) data: String,
}

/// An open data file.
#[derive(Debug)]
pub(super) struct Store {
    db: Database,
    path: PathBuf,
    history: u64,
}

fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        for &b in part.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn encode_meta(name: &str, m: &Meta) -> Vec<u8> {
    let mut v = m.head.to_le_bytes().to_vec();
    v.extend_from_slice(m.epoch.as_bytes());
    let sum = fnv(&[name.as_bytes(), &v]);
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

fn decode_meta(name: &str, v: &[u8]) -> Result<Meta, String> {
    let bad = || format!("channel {name:?}: header record is damaged");
    if v.len() < 16 {
        return Err(bad());
    }
    let (body, sum) = v.split_at(v.len() - 8);
    if fnv(&[name.as_bytes(), body]).to_le_bytes() != sum {
        return Err(bad());
    }
    let head = u64::from_le_bytes(body[..8].try_into().map_err(|_| bad())?);
    let epoch = std::str::from_utf8(&body[8..])
        .map_err(|_| bad())?
        .to_owned();
    Ok(Meta { epoch, head })
}

fn encode_entry(name: &str, offset: u64, ts: u64, data: &str) -> Vec<u8> {
    let mut v = ts.to_le_bytes().to_vec();
    v.extend_from_slice(data.as_bytes());
    let sum = fnv(&[name.as_bytes(), &offset.to_le_bytes(), &v]);
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

fn decode_entry(name: &str, offset: u64, v: &[u8]) -> Result<Entry, String> {
    let bad = || format!("channel {name:?}: message {offset} is damaged");
    if v.len() < 16 {
        return Err(bad());
    }
    let (body, sum) = v.split_at(v.len() - 8);
    if fnv(&[name.as_bytes(), &offset.to_le_bytes(), body]).to_le_bytes() != sum {
        return Err(bad());
    }
    let ts = u64::from_le_bytes(body[..8].try_into().map_err(|_| bad())?);
    let data = std::str::from_utf8(&body[8..])
        .map_err(|_| bad())?
        .to_owned();
    Ok(Entry { offset, ts, data })
}

impl Store {
    /// Opens (or creates) `dir/ladder.redb` and verifies all of it.
    pub(super) fn open(dir: &Path, history: usize) -> Result<Self, BackendError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            BackendError::Open(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE);
        let existed = path.exists();
        // redb checks its own page checksums on open (we ask it to every
        // time, not only after a crash). Some impossible states make debug
        // builds of redb panic rather than return an error; both mean the
        // same thing here.
        let opened = std::panic::catch_unwind(|| {
            Database::builder()
                .set_check_integrity_on_open(true)
                .set_cache_size(CACHE_BYTES)
                .create(&path)
        });
        let corrupt = |detail: String| BackendError::Corrupt {
            path: path.clone(),
            detail,
        };
        let db = match opened {
            Err(_) => return Err(corrupt("the storage engine could not read it".into())),
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(BackendError::Open(format!(
                    "{} is in use by another process",
                    path.display()
                )));
            }
            Ok(Err(e)) if existed => return Err(corrupt(e.to_string())),
            Ok(Err(e)) => return Err(BackendError::Open(format!("{}: {e}", path.display()))),
            Ok(Ok(db)) => db,
        };
        let store = Self {
            db,
            path,
            history: history.max(1) as u64,
        };
        store.init()?;
        store.verify()?;
        Ok(store)
    }

    /// The file's path, for messages.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// A write transaction that is durable once committed.
    pub(super) fn begin(&self) -> Result<WriteTransaction, BackendError> {
        self.db.begin_write().map_err(|e| self.io(e))
    }

    /// An I/O-level failure, as the hub reports it.
    pub(super) fn io(&self, e: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable(format!("{}: {e}", self.path.display()))
    }

    fn corrupt(&self, detail: impl Into<String>) -> BackendError {
        BackendError::Corrupt {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    fn init(&self) -> Result<(), BackendError> {
        let txn = self.begin()?;
        txn.open_table(CHANNELS)
            .map_err(|e| self.corrupt(e.to_string()))?;
        txn.open_table(MESSAGES)
            .map_err(|e| self.corrupt(e.to_string()))?;
        txn.commit().map_err(|e| self.io(e))
    }

    /// Reads every record back: checksums, and each channel's messages
    /// contiguous up to its head with nothing stray beyond it.
    fn verify(&self) -> Result<(), BackendError> {
        let c = |e: redb::Error| self.corrupt(e.to_string());
        let txn = self.db.begin_read().map_err(|e| c(e.into()))?;
        let channels = txn.open_table(CHANNELS).map_err(|e| c(e.into()))?;
        let messages = txn.open_table(MESSAGES).map_err(|e| c(e.into()))?;
        let mut metas = std::collections::HashMap::new();
        for row in channels.iter().map_err(|e| c(e.into()))? {
            let (k, v) = row.map_err(|e| c(e.into()))?;
            let meta = decode_meta(k.value(), v.value()).map_err(|d| self.corrupt(d))?;
            metas.insert(k.value().to_owned(), (meta, None::<u64>));
        }
        for row in messages.iter().map_err(|e| c(e.into()))? {
            let (k, v) = row.map_err(|e| c(e.into()))?;
            let (name, offset) = k.value();
            decode_entry(name, offset, v.value()).map_err(|d| self.corrupt(d))?;
            let Some((meta, last)) = metas.get_mut(name) else {
                return Err(self.corrupt(format!("message {offset} of unknown channel {name:?}")));
            };
            if offset > meta.head || last.is_some_and(|l| l + 1 != offset) {
                return Err(self.corrupt(format!(
                    "channel {name:?}: message {offset} is out of sequence"
                )));
            }
            *last = Some(offset);
        }
        for (name, (meta, last)) in &metas {
            if meta.head > 0 && *last != Some(meta.head) {
                return Err(self.corrupt(format!(
                    "channel {name:?}: head is {} but its messages end at {}",
                    meta.head,
                    last.unwrap_or(0)
                )));
            }
        }
        Ok(())
    }

    /// Loads a channel inside `txn`, creating its header with `fresh` if it
    /// has none. Returns the header, the retained messages (oldest first)
    /// and whether the header was created (so `txn` must be committed).
    pub(super) fn load(
        &self,
        txn: &WriteTransaction,
        name: &str,
        fresh: &str,
    ) -> Result<(Meta, Vec<Entry>, bool), BackendError> {
        let mut channels = txn.open_table(CHANNELS).map_err(|e| self.io(e))?;
        let existing = channels
            .get(name)
            .map_err(|e| self.io(e))?
            .map(|v| decode_meta(name, v.value()));
        let meta = match existing {
            Some(m) => m.map_err(|d| self.corrupt(d))?,
            None => {
                let meta = Meta {
                    epoch: fresh.to_owned(),
                    head: 0,
                };
                channels
                    .insert(name, encode_meta(name, &meta).as_slice())
                    .map_err(|e| self.io(e))?;
                return Ok((meta, Vec::new(), true));
            }
        };
        let mut messages = txn.open_table(MESSAGES).map_err(|e| self.io(e))?;
        let first = (meta.head + 1).saturating_sub(self.history).max(1);
        // --history may have been lowered since these were written.
        messages
            .retain_in((name, 0)..(name, first), |_, _| false)
            .map_err(|e| self.io(e))?;
        let mut entries = Vec::new();
        for row in messages
            .range((name, first)..=(name, meta.head))
            .map_err(|e| self.io(e))?
        {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let offset = k.value().1;
            let entry = decode_entry(name, offset, v.value()).map_err(|d| self.corrupt(d))?;
            if entries
                .last()
                .is_some_and(|l: &Entry| l.offset + 1 != offset)
            {
                return Err(self.corrupt(format!(
                    "channel {name:?}: message {offset} is out of sequence"
                )));
            }
            entries.push(entry);
        }
        if meta.head > 0 && entries.last().map(|e| e.offset) != Some(meta.head) {
            return Err(self.corrupt(format!(
                "channel {name:?}: messages up to its head are missing"
            )));
        }
        Ok((meta, entries, false))
    }

    /// Writes messages and headers inside `txn`, trimming history.
    pub(super) fn append(
        &self,
        txn: &WriteTransaction,
        batch: &[(&str, &str, u64, u64, &str)],
    ) -> Result<(), BackendError> {
        let mut channels = txn.open_table(CHANNELS).map_err(|e| self.io(e))?;
        let mut messages = txn.open_table(MESSAGES).map_err(|e| self.io(e))?;
        let mut heads: Vec<(&str, &str, u64)> = Vec::new();
        for &(name, epoch, offset, ts, data) in batch {
            insert_entry(&mut messages, name, offset, ts, data).map_err(|e| self.io(e))?;
            if offset > self.history {
                messages
                    .remove((name, offset - self.history))
                    .map_err(|e| self.io(e))?;
            }
            match heads.iter_mut().find(|h| h.0 == name) {
                Some(h) => h.2 = h.2.max(offset),
                None => heads.push((name, epoch, offset)),
            }
        }
        for (name, epoch, head) in heads {
            let meta = Meta {
                epoch: epoch.to_owned(),
                head,
            };
            channels
                .insert(name, encode_meta(name, &meta).as_slice())
                .map_err(|e| self.io(e))?;
        }
        Ok(())
    }
}

fn insert_entry(
    t: &mut Table<'_, (&'static str, u64), &'static [u8]>,
    name: &str,
    offset: u64,
    ts: u64,
    data: &str,
) -> Result<(), redb::StorageError> {
    t.insert(
        (name, offset),
        encode_entry(name, offset, ts, data).as_slice(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_detect_damage() {
        let m = Meta {
            epoch: "e1".into(),
            head: 7,
        };
        let mut v = encode_meta("c", &m);
        assert_eq!(decode_meta("c", &v), Ok(m));
        assert!(
            decode_meta("d", &v).is_err(),
            "a record moved to another key"
        );
        v[3] ^= 1;
        assert!(decode_meta("c", &v).is_err());
        let e = encode_entry("c", 3, 9, "{\"a\":1}");
        assert_eq!(decode_entry("c", 3, &e).unwrap().data, "{\"a\":1}");
        assert!(decode_entry("c", 4, &e).is_err());
    }
}
