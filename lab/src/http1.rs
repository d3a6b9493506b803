//! The HTTP/1.1 proxy behind the `no-upgrade` and `buffering-proxy`
//! conditions. Entry point: [`proxy`], one client connection.
//!
//! It reads each request head, refuses upgrades when told to, forwards the
//! request, then forwards the response head at once and its body either as
//! it comes or held back, the way a proxy with response buffering holds it:
//! until the body ends or the buffer is full. Requests on a connection are
//! served one after another (browsers do not pipeline).

use std::io;
use std::sync::atomic::Ordering;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};

use crate::link::{Activity, RelayStats};
use crate::tcp::pipe;

/// Largest request or response head accepted; a proxy has such a limit too.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size line (hex size plus extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// What the proxy does differently from a transparent one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpPolicy {
    pub(crate) refuse_upgrade: bool,
    pub(crate) buffer_bytes: Option<usize>,
}

const REFUSED: &[u8] = b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 37\r\nconnection: close\r\n\r\nthe proxy does not allow any upgrade\n";

/// How a message's body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The parts of a head the proxy acts on.
#[derive(Debug)]
struct Head {
    raw: Vec<u8>,
    framing: Framing,
    upgrade: bool,
    close: bool,
    status: u16,
}

/// Serves one client connection until either side closes it.
pub(crate) async fn proxy<CR, CW, UR, UW>(
    client_r: CR,
    mut client_w: CW,
    up_r: UR,
    mut up_w: UW,
    policy: HttpPolicy,
    activity: &Activity,
    stats: &RelayStats,
) -> io::Result<()>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let mut client_r = BufReader::new(client_r);
    let mut up_r = BufReader::new(up_r);
    loop {
        let Some(raw) = read_head(&mut client_r, activity).await? else {
            return up_w.shutdown().await;
        };
        let req = parse_request(raw)?;
        if req.upgrade && policy.refuse_upgrade {
            stats.refused_upgrades.fetch_add(1, Ordering::Relaxed);
            client_w.write_all(REFUSED).await?;
            return client_w.shutdown().await;
        }
        let head_only = req.raw.starts_with(b"HEAD ");
        up_w.write_all(&req.raw).await?;
        copy_body(
            &mut client_r,
            &mut Out::direct(&mut up_w),
            req.framing,
            activity,
        )
        .await?;
        up_w.flush().await?;

        let Some(raw) = read_head(&mut up_r, activity).await? else {
            return client_w.shutdown().await;
        };
        let resp = parse_response(raw, head_only)?;
        client_w.write_all(&resp.raw).await?;
        client_w.flush().await?;
        if resp.status == 101 {
            // Switched protocols: from here on both ways are plain bytes.
            let up = pipe(client_r, up_w, activity);
            let down = pipe(up_r, client_w, activity);
            return tokio::try_join!(up, down).map(|_| ());
        }
        let mut out = match policy.buffer_bytes {
            Some(limit) => Out::held(&mut client_w, limit),
            None => Out::direct(&mut client_w),
        };
        // While the body streams the client has nothing to say; its EOF
        // means it went away, and the upstream response must go too (a
        // held-back event stream would otherwise live on unseen).
        let body = copy_body(&mut up_r, &mut out, resp.framing, activity);
        tokio::select! {
            r = body => r?,
            gone = client_closed(&mut client_r) => if gone {
                return up_w.shutdown().await;
            },
        }
        out.finish().await?;
        if resp.close || req.close || resp.framing == Framing::UntilClose {
            return client_w.shutdown().await;
        }
    }
}

/// Resolves `true` when the client has closed its side, and never resolves
/// while it merely sent more bytes (they stay buffered for the next
/// request).
async fn client_closed<R: AsyncBufRead + Unpin>(r: &mut R) -> bool {
    match r.fill_buf().await {
        Ok([]) | Err(_) => true,
        Ok(_) => std::future::pending().await,
    }
}

/// Reads up to and including the blank line that ends a head. `None` when
/// the peer closed before sending anything.
async fn read_head<R: AsyncBufRead + Unpin>(
    r: &mut R,
    activity: &Activity,
) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a head",
                ))
            };
        }
        activity.touch();
        let before = head.len();
        head.extend_from_slice(available);
        // Search from just before the new bytes, in case the terminator
        // straddles two reads.
        let from = before.saturating_sub(3);
        if let Some(at) = find(&head[from..], b"\r\n\r\n") {
            let end = from + at + 4;
            r.consume(end - before);
            head.truncate(end);
            return Ok(Some(head));
        }
        let n = available.len();
        r.consume(n);
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn parse_request(raw: Vec<u8>) -> io::Result<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(invalid("bad request head")),
    }
    let (framing, upgrade, close) = scan(req.headers, false)?;
    let framing = if framing == Framing::UntilClose {
        Framing::None
    } else {
        framing
    };
    Ok(Head {
        raw,
        framing,
        upgrade,
        close,
        status: 0,
    })
}

fn parse_response(raw: Vec<u8>, head_only: bool) -> io::Result<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(invalid("bad response head")),
    }
    let status = resp.code.unwrap_or(0);
    let (mut framing, upgrade, close) = scan(resp.headers, true)?;
    if head_only || (100..200).contains(&status) || status == 204 || status == 304 {
        framing = Framing::None;
    }
    Ok(Head {
        raw,
        framing,
        upgrade,
        close,
        status,
    })
}

/// Framing, "asks to upgrade" and "asks to close" from a head's headers.
fn scan(headers: &[httparse::Header<'_>], response: bool) -> io::Result<(Framing, bool, bool)> {
    let mut framing = if response {
        Framing::UntilClose
    } else {
        Framing::None
    };
    let (mut upgrade, mut close) = (false, false);
    for h in headers {
        let value = std::str::from_utf8(h.value).map_err(|_| invalid("header is not text"))?;
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().contains("chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            let n = value
                .trim()
                .parse()
                .map_err(|_| invalid("bad content-length"))?;
            framing = Framing::Length(n);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    Ok((framing, upgrade, close))
}

/// Where a body goes: straight through, or held back up to a limit.
struct Out<'a, W> {
    w: &'a mut W,
    /// Held bytes and the limit at which they are let go.
    held: Option<(Vec<u8>, usize)>,
}

impl<'a, W: AsyncWrite + Unpin> Out<'a, W> {
    fn direct(w: &'a mut W) -> Self {
        Self { w, held: None }
    }

    fn held(w: &'a mut W, limit: usize) -> Self {
        Self {
            w,
            held: Some((Vec::new(), limit.max(1))),
        }
    }

    async fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.held {
            None => {
                self.w.write_all(bytes).await?;
                self.w.flush().await
            }
            Some((buf, limit)) => {
                buf.extend_from_slice(bytes);
                if buf.len() >= *limit {
                    self.w.write_all(buf).await?;
                    buf.clear();
                    self.w.flush().await?;
                }
                Ok(())
            }
        }
    }

    /// The body ended: let go of whatever is held.
    async fn finish(&mut self) -> io::Result<()> {
        if let Some((buf, _)) = &mut self.held
            && !buf.is_empty()
        {
            self.w.write_all(buf).await?;
            buf.clear();
        }
        self.w.flush().await
    }
}

/// Copies one body, delimited by `framing`, from `r` to `out` (chunked
/// framing is passed on as it is, size lines included).
async fn copy_body<R, W>(
    r: &mut R,
    out: &mut Out<'_, W>,
    framing: Framing,
    activity: &Activity,
) -> io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match framing {
        Framing::None => Ok(()),
        Framing::Length(n) => copy_exact(r, out, n, activity).await,
        Framing::UntilClose => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                activity.touch();
                out.put(&buf[..n]).await?;
            }
        }
        Framing::Chunked => loop {
            let line = read_line(r, activity).await?;
            out.put(&line).await?;
            let text = std::str::from_utf8(&line).map_err(|_| invalid("bad chunk size"))?;
            let hex = text.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(hex, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Trailers, if any, then the blank line that ends the body.
                loop {
                    let line = read_line(r, activity).await?;
                    out.put(&line).await?;
                    if line == b"\r\n" {
                        return Ok(());
                    }
                }
            }
            copy_exact(r, out, size + 2, activity).await?;
        },
    }
}

async fn copy_exact<R, W>(
    r: &mut R,
    out: &mut Out<'_, W>,
    mut n: u64,
    activity: &Activity,
) -> io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while n > 0 {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body cut short",
            ));
        }
        activity.touch();
        let take = available
            .len()
            .min(usize::try_from(n).unwrap_or(usize::MAX));
        let chunk = available[..take].to_vec();
        r.consume(take);
        out.put(&chunk).await?;
        n -= take as u64;
    }
    Ok(())
}

async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, activity: &Activity) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut limited = r.take(MAX_CHUNK_LINE as u64);
    limited.read_until(b'\n', &mut line).await?;
    if !line.ends_with(b"\n") {
        return Err(invalid("chunk line too long or cut short"));
    }
    activity.touch();
    Ok(line)
}
