//! Line framing for both transports.
//!
//! Plain TCP delivers a byte stream of `\n`-terminated lines (Twitch clients send `\r\n`; a bare
//! `\n` is accepted too). [`LineBuffer`] collects bytes and hands out complete lines, returning
//! `None` (incomplete) until a terminator arrives. WebSocket delivers whole text frames holding one
//! or more lines; [`split_frame_lines`] splits a frame and treats the frame end as a line end.
//! Neither does any IO.

/// Longest accepted line in bytes, terminator excluded: Twitch allows 8191 bytes of tags plus a
/// classic 512-byte IRC line.
pub const LINE_BYTES_MAX_DEFAULT: usize = 8191 + 512;

/// Why a line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line is longer than the buffer's `line_bytes_max`; the rest of it is skipped.
    #[error("line longer than the limit")]
    TooLong,
    /// The line is not valid UTF-8.
    #[error("line is not valid UTF-8")]
    InvalidUtf8,
}

/// Collects a TCP byte stream and yields complete lines.
///
/// Memory is bounded: at most `line_bytes_max` bytes of an unterminated line are kept (plus
/// whatever complete lines a single `push` delivered, which the caller drains right away).
#[derive(Debug)]
pub struct LineBuffer {
    buffer: Vec<u8>,
    /// Offset of the first byte not yet returned.
    start: usize,
    /// Offset from which to look for the next `\n`; everything in `start..scanned` has none.
    scanned: usize,
    /// True after a `TooLong` until the end of that line has been seen and dropped.
    skipping: bool,
    line_bytes_max: usize,
}

impl LineBuffer {
    /// Creates a buffer that rejects lines longer than `line_bytes_max` bytes (terminator
    /// excluded).
    pub fn new(line_bytes_max: usize) -> Self {
        LineBuffer {
            buffer: Vec::new(),
            start: 0,
            scanned: 0,
            skipping: false,
            line_bytes_max,
        }
    }

    /// Appends bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        // Reclaim the already-consumed prefix before growing, so a long-lived connection keeps
        // a buffer the size of its longest read rather than of its whole history.
        if self.start > 0
            && (self.start == self.buffer.len() || self.start >= self.buffer.len() / 2)
        {
            self.buffer.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Frees the buffer when it holds nothing, so an idle connection keeps no memory here.
    pub fn release_if_empty(&mut self) {
        if self.start == self.buffer.len() && !self.skipping {
            self.buffer = Vec::new();
            self.start = 0;
            self.scanned = 0;
        }
    }

    /// Bytes held for lines not yet returned.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// Returns the next complete, non-empty line without its terminator, `Some(Err(_))` for a
    /// rejected line, or `None` when more bytes are needed.
    pub fn next_line(&mut self) -> Option<Result<String, LineError>> {
        loop {
            let newline = self.buffer[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|offset| self.scanned + offset);
            let Some(newline) = newline else {
                self.scanned = self.buffer.len();
                if self.skipping {
                    // Drop the skipped bytes now; nothing of this line will ever be returned.
                    self.start = self.buffer.len();
                    return None;
                }
                // A line of exactly `line_bytes_max` bytes may be waiting for the `\n` of its
                // `\r\n`, so a pending `\r` does not count against the limit.
                let pending = &self.buffer[self.start..];
                let pending_bytes_max = match pending.last() {
                    Some(b'\r') => self.line_bytes_max + 1,
                    _ => self.line_bytes_max,
                };
                if pending.len() > pending_bytes_max {
                    self.start = self.buffer.len();
                    self.skipping = true;
                    return Some(Err(LineError::TooLong));
                }
                return None;
            };
            let line_start = self.start;
            self.start = newline + 1;
            self.scanned = self.start;
            if self.skipping {
                self.skipping = false;
                continue;
            }
            let mut line = &self.buffer[line_start..newline];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if line.is_empty() {
                continue;
            }
            if line.len() > self.line_bytes_max {
                return Some(Err(LineError::TooLong));
            }
            return Some(match std::str::from_utf8(line) {
                Ok(text) => Ok(text.to_owned()),
                Err(_) => Err(LineError::InvalidUtf8),
            });
        }
    }
}

/// Splits one WebSocket text frame into its lines: `\n` or `\r\n` separated, the frame end
/// counting as a line end, empty lines left out.
pub fn split_frame_lines(frame_text: &str) -> impl Iterator<Item = &str> {
    frame_text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(buffer: &mut LineBuffer) -> Vec<Result<String, LineError>> {
        std::iter::from_fn(|| buffer.next_line()).collect()
    }

    #[test]
    fn splits_crlf_and_lf_lines() {
        let mut buffer = LineBuffer::new(64);
        buffer.push(b"PING\r\nNICK a\nJOIN #b\r\n");
        assert_eq!(
            drain(&mut buffer),
            vec![
                Ok("PING".to_owned()),
                Ok("NICK a".to_owned()),
                Ok("JOIN #b".to_owned())
            ]
        );
        assert_eq!(buffer.buffered_bytes(), 0);
    }

    #[test]
    fn incomplete_until_terminator_even_across_pushes() {
        let mut buffer = LineBuffer::new(64);
        for byte in b"PRIVMSG #a :hi" {
            buffer.push(&[*byte]);
            assert_eq!(buffer.next_line(), None);
        }
        buffer.push(b"\r");
        assert_eq!(buffer.next_line(), None);
        buffer.push(b"\n");
        assert_eq!(buffer.next_line(), Some(Ok("PRIVMSG #a :hi".to_owned())));
        assert_eq!(buffer.next_line(), None);
    }

    #[test]
    fn skips_empty_lines() {
        let mut buffer = LineBuffer::new(64);
        buffer.push(b"\r\n\n\r\nPING\r\n\r\n");
        assert_eq!(drain(&mut buffer), vec![Ok("PING".to_owned())]);
    }

    #[test]
    fn too_long_line_is_reported_once_and_skipped() {
        let mut buffer = LineBuffer::new(8);
        buffer.push(b"0123456789");
        assert_eq!(buffer.next_line(), Some(Err(LineError::TooLong)));
        assert_eq!(buffer.next_line(), None);
        // The rest of the long line keeps being dropped without a second error.
        buffer.push(b"abcdefghijklmnop");
        assert_eq!(buffer.next_line(), None);
        assert_eq!(buffer.buffered_bytes(), 0);
        buffer.push(b"xyz\r\nPING\r\n");
        assert_eq!(drain(&mut buffer), vec![Ok("PING".to_owned())]);
    }

    #[test]
    fn line_at_the_limit_split_inside_its_terminator() {
        let mut buffer = LineBuffer::new(4);
        buffer.push(b"1234\r");
        assert_eq!(buffer.next_line(), None);
        buffer.push(b"\n");
        assert_eq!(buffer.next_line(), Some(Ok("1234".to_owned())));
        buffer.push(b"1234");
        assert_eq!(buffer.next_line(), None);
        buffer.push(b"5");
        assert_eq!(buffer.next_line(), Some(Err(LineError::TooLong)));
    }

    #[test]
    fn too_long_complete_line_in_one_push() {
        let mut buffer = LineBuffer::new(4);
        buffer.push(b"12345\r\nok\r\n1234\r\n");
        assert_eq!(
            drain(&mut buffer),
            vec![
                Err(LineError::TooLong),
                Ok("ok".to_owned()),
                Ok("1234".to_owned())
            ]
        );
    }

    #[test]
    fn invalid_utf8_is_reported_and_the_next_line_still_parses() {
        let mut buffer = LineBuffer::new(64);
        buffer.push(b"PRIVMSG #a :\xff\xfe\r\nPING\r\n");
        assert_eq!(
            drain(&mut buffer),
            vec![Err(LineError::InvalidUtf8), Ok("PING".to_owned())]
        );
    }

    #[test]
    fn memory_stays_bounded_over_many_lines() {
        let mut buffer = LineBuffer::new(64);
        for _ in 0..10_000 {
            buffer.push(b"PING :x\r\nPI");
            while let Some(line) = buffer.next_line() {
                assert_eq!(line, Ok("PING :x".to_owned()));
            }
            buffer.push(b"NG :x\r\n");
            assert_eq!(buffer.next_line(), Some(Ok("PING :x".to_owned())));
        }
        assert!(
            buffer.buffer.capacity() < 1024,
            "capacity {}",
            buffer.buffer.capacity()
        );
    }

    #[test]
    fn frame_lines() {
        let cases: [(&str, &[&str]); 6] = [
            ("PING", &["PING"]),
            ("PING\r\n", &["PING"]),
            (
                "CAP REQ :a\r\nPASS x\r\nNICK y",
                &["CAP REQ :a", "PASS x", "NICK y"],
            ),
            ("a\nb\r\n\r\nc\r", &["a", "b", "c"]),
            ("", &[]),
            ("\r\n\r\n", &[]),
        ];
        for (frame, expected) in cases {
            assert_eq!(
                split_frame_lines(frame).collect::<Vec<_>>(),
                expected,
                "{frame:?}"
            );
        }
    }
}
