//! The durable backend: every channel's retained history, head offset and
//! epoch in one embedded redb file, written by a single committer thread.
//!
//! # Durability policy
//!
//! A publish is numbered under its channel's lock and queued to the
//! committer; it is acknowledged — and only then becomes visible to
//! subscribers — after the transaction holding it has been committed with
//! redb's `Durability::Immediate` (written and fsynced). So a message any
//! client has seen or had acknowledged survives a crash, and after a restart
//! numbering continues in the same epoch: nobody resuming is told
//! `truncated` for a restart.
//!
//! [`Fsync::Group`] (the default) puts every publish queued while the
//! previous commit ran, plus those arriving within `--group-commit-ms` of
//! the first (default 0: no extra wait), into one transaction: one fsync
//! for many publishes, at most 4096 per commit. [`Fsync::PerPublish`]
//! commits each publish on its own. Both acknowledge only after the fsync;
//! they differ in throughput under concurrency, not in what survives.
//!
//! # Eviction
//!
//! Evicting an idle channel only drops the in-memory ring; its file records
//! stay. The next use loads them again — same epoch, same head — so eviction
//! never changes numbering under the durable backend.
//!
//! # Failure
//!
//! If a commit fails (disk full, I/O error) the state on disk is unknown, so
//! the backend stops: that publish and every later one is refused with
//! `unavailable` until the server is restarted and has verified the file.

mod store;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use self::store::Store;
use super::{Appended, BackendError, LogBackend, Snapshot};
use crate::hub::{Channel, ChannelName, Epoch, IdempotencyKey, Published};
use crate::protocol::{Data, Message};

/// When a publish counts as durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// Each publish is its own committed, fsynced transaction.
    PerPublish,
    /// Concurrent publishes share one commit (bounded by
    /// `--group-commit-ms`); each is still acknowledged only after it.
    #[default]
    Group,
}

/// Most requests one commit carries, so a flood cannot make a batch (and
/// the latency of its first publish) unbounded.
const MAX_BATCH: usize = 4096;

/// A request to the committer thread.
enum Request {
    Open {
        name: ChannelName,
        fresh: Epoch,
        reply: oneshot::Sender<Result<Snapshot, BackendError>>,
    },
    Append {
        ch: Arc<Channel>,
        msg: Arc<Message>,
        data: Data,
        reply: oneshot::Sender<Result<Published, BackendError>>,
    },
    Close,
}

/// The embedded durable backend.
#[derive(Debug)]
pub(crate) struct DurableBackend {
    tx: Sender<Request>,
    /// Set once a commit failed; every later request is refused with it.
    failed: Arc<Mutex<Option<BackendError>>>,
    /// Transactions committed so far (shows group commit at work).
    commits: Arc<AtomicU64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Open { .. } => "Open",
            Self::Append { .. } => "Append",
            Self::Close => "Close",
        })
    }
}

impl DurableBackend {
    /// Opens and verifies the data file, then starts the committer.
    pub(crate) async fn open(
        dir: &Path,
        history: usize,
        fsync: Fsync,
        window: Duration,
    ) -> Result<Self, BackendError> {
        let dir = dir.to_owned();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir, history))
            .await
            .map_err(|e| BackendError::Open(e.to_string()))??;
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(Mutex::new(None));
        let commits = Arc::new(AtomicU64::new(0));
        let committer = Committer {
            store,
            history,
            failed: failed.clone(),
            commits: commits.clone(),
        };
        let window = match fsync {
            Fsync::Group => Some(window),
            Fsync::PerPublish => None,
        };
        let thread = std::thread::Builder::new()
            .name("ladder-commit".into())
            .spawn(move || committer.run(&rx, window))
            .map_err(|e| BackendError::Open(e.to_string()))?;
        Ok(Self {
            tx,
            failed,
            commits,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Transactions committed since the file was opened.
    #[cfg(test)]
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn failure(&self) -> Option<BackendError> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn stopped() -> BackendError {
        BackendError::Unavailable("the durable log is closed".into())
    }
}

impl LogBackend for DurableBackend {
    async fn open(&self, name: &ChannelName, fresh: &Epoch) -> Result<Snapshot, BackendError> {
        self.ready()?;
        let (reply, rx) = oneshot::channel();
        let req = Request::Open {
            name: name.clone(),
            fresh: fresh.clone(),
            reply,
        };
        self.tx.send(req).map_err(|_| Self::stopped())?;
        rx.await.map_err(|_| Self::stopped())?
    }

    async fn opened(&self, _ch: &Arc<Channel>) -> Result<(), BackendError> {
        Ok(())
    }

    async fn append(
        &self,
        ch: &Arc<Channel>,
        data: &Data,
        now: u64,
        _key: Option<&IdempotencyKey>,
    ) -> Result<Appended, BackendError> {
        self.ready()?;
        let (reply, rx) = oneshot::channel();
        {
            let mut log = ch.write();
            if log.is_evicted() {
                return Ok(Appended::Evicted);
            }
            let msg = log.reserve(data, now);
            // Queued under the channel lock, so the committer sees each
            // channel's offsets in order and never commits 6 without 5.
            let req = Request::Append {
                ch: ch.clone(),
                msg,
                data: data.clone(),
                reply,
            };
            self.tx.send(req).map_err(|_| Self::stopped())?;
        }
        rx.await.map_err(|_| Self::stopped())?.map(Appended::Done)
    }

    fn ready(&self) -> Result<(), BackendError> {
        self.failure().map_or(Ok(()), Err)
    }

    async fn close(&self) {
        let _ = self.tx.send(Request::Close);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            // Everything queued before `Close` is committed first.
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        tracing::debug!(
            commits = self.commits.load(Ordering::Relaxed),
            "durable log closed"
        );
    }
}

/// Owns the file; the only writer.
struct Committer {
    store: Store,
    history: usize,
    failed: Arc<Mutex<Option<BackendError>>>,
    commits: Arc<AtomicU64>,
}

impl Committer {
    fn run(self, rx: &Receiver<Request>, window: Option<Duration>) {
        let mut batch = Vec::new();
        let mut closing = false;
        while !closing {
            let Ok(first) = rx.recv() else { return };
            batch.push(first);
            if let Some(window) = window {
                let deadline = Instant::now() + window;
                while batch.len() < MAX_BATCH {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(r) => batch.push(r),
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
            closing = batch.iter().any(|r| matches!(r, Request::Close));
            self.process(std::mem::take(&mut batch));
        }
    }

    /// Runs one batch as one transaction and answers every request in it.
    fn process(&self, batch: Vec<Request>) {
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(e) = failed {
            return fail_all(batch, &e);
        }
        let txn = match self.store.begin() {
            Ok(t) => t,
            Err(e) => return self.fail(batch, e),
        };
        let mut opens = Vec::new();
        let mut rows = Vec::new();
        for req in &batch {
            match req {
                Request::Open { name, fresh, .. } => {
                    opens.push(
                        self.store
                            .load(&txn, name.as_str(), fresh.as_str())
                            .and_then(|(meta, entries, _)| {
                                snapshot(name, &meta, entries, self.history)
                            }),
                    );
                }
                Request::Append { msg, data, .. } => rows.push((
                    msg.channel().as_str(),
                    msg.epoch().as_str(),
                    msg.offset(),
                    msg.ts(),
                    data.as_str(),
                )),
                Request::Close => {}
            }
        }
        if let Err(e) = self.store.append(&txn, &rows) {
            drop(txn);
            return self.fail(batch, e);
        }
        drop(rows);
        if let Err(e) = txn.commit() {
            let e = self.store.io(e);
            return self.fail(batch, e);
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        let mut opens = opens.into_iter();
        for req in batch {
            match req {
                Request::Open { reply, .. } => {
                    let _ = reply.send(opens.next().unwrap_or_else(|| Err(self.store.io("lost"))));
                }
                Request::Append { ch, msg, reply, .. } => {
                    let ack = Published {
                        epoch: msg.epoch().clone(),
                        offset: msg.offset(),
                    };
                    // Visible only now that it is on disk, in offset order.
                    ch.commit(msg);
                    let _ = reply.send(Ok(ack));
                }
                Request::Close => {}
            }
        }
    }

    fn fail(&self, batch: Vec<Request>, e: BackendError) {
        tracing::error!(file = %self.store.path().display(), error = %e, "durable commit failed; refusing publishes until restart");
        *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.clone());
        fail_all(batch, &e);
    }
}

fn fail_all(batch: Vec<Request>, e: &BackendError) {
    for req in batch {
        match req {
            Request::Open { reply, .. } => drop(reply.send(Err(e.clone()))),
            Request::Append { reply, .. } => drop(reply.send(Err(e.clone()))),
            Request::Close => {}
        }
    }
}

/// Rebuilds the ring's contents from stored records.
fn snapshot(
    name: &ChannelName,
    meta: &store::Meta,
    entries: Vec<store::Entry>,
    history: usize,
) -> Result<Snapshot, BackendError> {
    let epoch = Epoch::new(&meta.epoch);
    let skip = entries.len().saturating_sub(history);
    let mut messages = Vec::with_capacity(entries.len() - skip);
    for e in entries.into_iter().skip(skip) {
        let data = Data::parse(e.data.as_bytes(), usize::MAX).map_err(|err| {
            BackendError::Unavailable(format!(
                "channel {name}: message {} unreadable: {}",
                e.offset, err.message
            ))
        })?;
        messages.push(Arc::new(Message::new(
            name.clone(),
            epoch.clone(),
            e.offset,
            e.ts,
            &data,
        )));
    }
    Ok(Snapshot {
        epoch,
        head: meta.head,
        messages,
        hold: None,
    })
}

#[cfg(test)]
mod tests;
