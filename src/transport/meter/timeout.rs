//! The send timeout: a write that stays blocked for `--send-timeout` fails,
//! so a client that stops reading (an SSE subscriber, a big response) is
//! cut off and counted as lagged instead of holding its connection forever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

/// How long a write may stay blocked, and the timer of the one blocked now.
#[derive(Debug, Default)]
pub(super) struct SendTimeout {
    /// How long a write may stay blocked; `None` = forever.
    limit: Option<Duration>,
    /// Armed when a write first blocks, disarmed by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl SendTimeout {
    /// Writes may stay blocked for `limit` at most.
    pub(super) fn new(limit: Duration) -> Self {
        Self {
            limit: Some(limit),
            stalled: None,
        }
    }

    /// Tracks a write's outcome: a write still pending `limit` after it
    /// first blocked fails with `TimedOut`, after `on_timeout` has run.
    pub(super) fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<io::Result<T>>,
        on_timeout: impl FnOnce(),
    ) -> Poll<io::Result<T>> {
        let Poll::Pending = res else {
            self.stalled = None;
            return res;
        };
        let Some(limit) = self.limit else {
            return res;
        };
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            on_timeout();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "send timeout: the client stopped reading",
            )));
        }
        res
    }
}
