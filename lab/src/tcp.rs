//! The TCP relay: accepts on its own port and forwards every connection to
//! a target, impaired as its [`TcpImpair`] says. Entry point:
//! [`TcpRelay::bind`].
//!
//! A plain relay copies bytes. With `refuse_upgrade` or `buffer_bytes` it
//! becomes an HTTP/1.1 proxy (`http1`) that reads every request and
//! response head. It never delays or drops bytes: a relay that ends TCP
//! cannot impair it faithfully, so `lossy-link` puts its delay and loss
//! on the [`wire`](crate::wire) behind the relay instead.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::http1::{self, HttpPolicy};
use crate::link::{Activity, NetworkSwitch, RelayStats, RoundRobin};

/// How a TCP relay impairs what goes through it.
#[derive(Debug, Clone, Default)]
pub struct TcpImpair {
    /// A connection silent this long in both directions is forgotten, as a
    /// NAT forgets a mapping: both ends get a reset (RST).
    pub idle_timeout: Option<Duration>,
    /// Answer `403` to any request that asks to `Upgrade` (a corporate
    /// proxy that does not pass WebSocket).
    pub refuse_upgrade: bool,
    /// Hold each response body until it ends or this many bytes are held
    /// (a proxy with response buffering on).
    pub buffer_bytes: Option<usize>,
}

impl TcpImpair {
    fn http_policy(&self) -> Option<HttpPolicy> {
        (self.refuse_upgrade || self.buffer_bytes.is_some()).then_some(HttpPolicy {
            refuse_upgrade: self.refuse_upgrade,
            buffer_bytes: self.buffer_bytes,
        })
    }
}

/// A running TCP relay. It stops when the shutdown token is cancelled.
#[derive(Debug)]
pub struct TcpRelay {
    addr: SocketAddr,
    stats: Arc<RelayStats>,
}

impl TcpRelay {
    /// Binds `listen` and starts relaying to `targets` (in turn, one per
    /// connection).
    pub async fn bind(
        listen: SocketAddr,
        targets: Vec<SocketAddr>,
        impair: TcpImpair,
        switch: NetworkSwitch,
        shutdown: CancellationToken,
    ) -> io::Result<Self> {
        if targets.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no target"));
        }
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let relay = Relay {
            targets: RoundRobin::new(targets),
            impair,
            switch,
            stats: stats.clone(),
        };
        tokio::spawn(Arc::new(relay).accept(listener, shutdown));
        Ok(Self { addr, stats })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }
}

struct Relay {
    targets: RoundRobin,
    impair: TcpImpair,
    switch: NetworkSwitch,
    stats: Arc<RelayStats>,
}

/// Why a relayed connection ended.
#[derive(Debug)]
enum End {
    Done(io::Result<()>),
    Idle,
    Switched,
    Shutdown,
}

impl Relay {
    async fn accept(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((client, peer)) => {
                    let relay = self.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        match relay.serve(client, shutdown).await {
                            End::Done(Err(error)) => {
                                debug!(%peer, %error, "relayed connection failed")
                            }
                            end => debug!(%peer, ?end, "relayed connection ended"),
                        }
                    });
                }
                // Out of descriptors or a connection reset before accept:
                // back off a moment rather than spin.
                Err(error) => {
                    debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn serve(&self, mut client: TcpStream, shutdown: CancellationToken) -> End {
        let cut = self.switch.cut_token();
        let (index, target) = self.targets.pick();
        self.stats.flows.fetch_add(1, Ordering::Relaxed);
        self.stats.count_target(index, self.targets.len());
        let mut upstream = match TcpStream::connect(target).await {
            Ok(s) => s,
            // Refused upstream: the client sees its connection reset, as
            // behind a real balancer whose node is down.
            Err(e) => {
                reset(&client);
                return End::Done(Err(e));
            }
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let activity = Activity::new();
        let end = {
            let (cr, cw) = client.split();
            let (ur, uw) = upstream.split();
            let work = async {
                match self.impair.http_policy() {
                    Some(policy) => {
                        http1::proxy(cr, cw, ur, uw, policy, &activity, &self.stats).await
                    }
                    None => {
                        let up = pipe(cr, uw, &activity);
                        let down = pipe(ur, cw, &activity);
                        tokio::try_join!(up, down).map(|_| ())
                    }
                }
            };
            tokio::select! {
                r = work => End::Done(r),
                () = activity.expired(self.impair.idle_timeout) => End::Idle,
                () = cut.cancelled() => End::Switched,
                () = shutdown.cancelled() => End::Shutdown,
            }
        };
        match end {
            End::Idle => {
                self.stats.idle_drops.fetch_add(1, Ordering::Relaxed);
                reset(&client);
                reset(&upstream);
            }
            End::Switched => {
                self.stats.switched.fetch_add(1, Ordering::Relaxed);
                reset(&client);
                reset(&upstream);
            }
            End::Done(_) | End::Shutdown => {}
        }
        end
    }
}

/// Makes the coming close of `stream` a reset (RST) instead of a FIN: what
/// a NAT or a vanished network path looks like to both ends.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Copies `from` to `to` until EOF, then closes `to`'s write side.
pub(crate) async fn pipe<R, W>(mut from: R, mut to: W, activity: &Activity) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        activity.touch();
        to.write_all(&buf[..n]).await?;
    }
}
