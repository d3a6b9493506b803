//! Line framing for WebTransport streams: [`LineBuf`] splits whatever
//! chunks QUIC delivers into `\n`-terminated lines, bounded in length.

/// Splits a byte stream into lines, refusing to buffer a line longer than
/// `limit` (so a client cannot make us hold a gigabyte without a newline).
#[derive(Debug)]
pub struct LineBuf {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    limit: usize,
}

impl LineBuf {
    /// An empty buffer that refuses lines longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            limit,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line without its `\n`; `Err(limit)` when a line
    /// is longer than the limit.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, usize> {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                self.scanned = 0;
                if end > self.limit {
                    return Err(self.limit);
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                Ok(Some(line))
            }
            None if self.buf.len() > self.limit => Err(self.limit),
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_and_are_bounded() {
        let mut lines = LineBuf::new(8);
        lines.push(b"ab");
        assert_eq!(lines.next_line(), Ok(None));
        lines.push(b"c\nde\n\nf");
        assert_eq!(lines.next_line(), Ok(Some(b"abc".to_vec())));
        assert_eq!(lines.next_line(), Ok(Some(b"de".to_vec())));
        assert_eq!(lines.next_line(), Ok(Some(Vec::new())));
        assert_eq!(lines.next_line(), Ok(None));
        lines.push(b"12345678");
        assert_eq!(lines.next_line(), Err(8));

        let mut lines = LineBuf::new(4);
        lines.push(b"123456\n");
        assert_eq!(lines.next_line(), Err(4));
    }
}
