//! The memory backend: the ring is the whole log.
//!
//! Offsets are numbered under the channel's write lock and the message is
//! visible the moment the lock is released — today's behaviour and speed.
//! Nothing survives a restart; the fresh epoch a restarted server hands out
//! is what tells resuming clients (`truncated`).

use std::sync::Arc;

use super::{Appended, BackendError, LogBackend, Snapshot};
use crate::hub::{Channel, ChannelName, Epoch, IdempotencyKey, Published};
use crate::protocol::Data;

/// In-memory logs only.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MemoryBackend;

impl LogBackend for MemoryBackend {
    async fn open(&self, _name: &ChannelName, fresh: &Epoch) -> Result<Snapshot, BackendError> {
        Ok(Snapshot {
            epoch: fresh.clone(),
            head: 0,
            messages: Vec::new(),
            hold: None,
        })
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
        let msg = {
            let mut log = ch.write();
            if log.is_evicted() {
                return Ok(Appended::Evicted);
            }
            log.append(data, now)
        };
        // Notify outside the lock: waking many readers is O(readers).
        ch.notify(msg.offset());
        Ok(Appended::Done(Published {
            epoch: msg.epoch().clone(),
            offset: msg.offset(),
        }))
    }

    fn ready(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn close(&self) {}
}
