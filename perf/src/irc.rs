//! The few pieces of the Twitch IRC dialect the load generator and the naive
//! baseline server need: a line splitter, a borrowed line parser, and the
//! `client-nonce` format that carries a message's intended send time.
//!
//! Everything here is sans-IO: bytes in, values out, no clock.

/// Longest IRC line accepted, tags included. Twitch allows 8 KiB of tags plus
/// 512 bytes of message; anything longer is a protocol error, not a chat line.
pub const LINE_BYTES_MAX: usize = 16 * 1024;

/// Splits a byte stream into `\n`-terminated lines (a preceding `\r` is dropped).
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    start: usize,
}

/// A line that grew past [`LINE_BYTES_MAX`] without a terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong;

impl LineBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete line without its terminator, or `Ok(None)`
    /// when more bytes are needed.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, LineTooLong> {
        let pending = &self.buf[self.start..];
        match pending.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let begin = self.start;
                self.start += pos + 1;
                let mut end = begin + pos;
                if end > begin && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                Ok(Some(&self.buf[begin..end]))
            }
            None if pending.len() > LINE_BYTES_MAX => Err(LineTooLong),
            None => Ok(None),
        }
    }

    /// Bytes held that do not yet form a complete line.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len() - self.start
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// One parsed IRC line, borrowing from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// The raw tag section without the leading `@`, empty when absent.
    pub tags: &'a str,
    /// The prefix without the leading `:`, empty when absent.
    pub prefix: &'a str,
    pub command: &'a str,
    /// Middle parameters followed by the trailing one, if any.
    pub params: Vec<&'a str>,
}

impl<'a> Line<'a> {
    /// Parses one line (without `\r\n`). Returns `None` for an empty or
    /// malformed line rather than guessing.
    pub fn parse(line: &'a str) -> Option<Line<'a>> {
        let mut rest = line;
        let mut tags = "";
        if let Some(after) = rest.strip_prefix('@') {
            let (t, r) = after.split_once(' ')?;
            tags = t;
            rest = r.trim_start_matches(' ');
        }
        let mut prefix = "";
        if let Some(after) = rest.strip_prefix(':') {
            let (p, r) = after.split_once(' ')?;
            prefix = p;
            rest = r.trim_start_matches(' ');
        }
        let (command, mut rest) = match rest.split_once(' ') {
            Some((c, r)) => (c, r),
            None => (rest, ""),
        };
        if command.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches(' ');
            if rest.is_empty() {
                break;
            }
            if let Some(trailing) = rest.strip_prefix(':') {
                params.push(trailing);
                break;
            }
            match rest.split_once(' ') {
                Some((p, r)) => {
                    params.push(p);
                    rest = r;
                }
                None => {
                    params.push(rest);
                    break;
                }
            }
        }
        Some(Line {
            tags,
            prefix,
            command,
            params,
        })
    }

    /// The raw (still escaped) value of tag `key`; `Some("")` for a key
    /// without a value.
    pub fn tag(&self, key: &str) -> Option<&'a str> {
        if self.tags.is_empty() {
            return None;
        }
        self.tags
            .split(';')
            .find_map(|kv| match kv.split_once('=') {
                Some((k, v)) if k == key => Some(v),
                None if kv == key => Some(""),
                _ => None,
            })
    }

    /// The nick part of the prefix (`nick!user@host`).
    pub fn nick(&self) -> &'a str {
        self.prefix.split('!').next().unwrap_or("")
    }

    pub fn param(&self, index: usize) -> Option<&'a str> {
        self.params.get(index).copied()
    }
}

/// What a sent message's `client-nonce` carries, so that the receiving side
/// can tell which run, sender and sequence a delivery belongs to and how long
/// it took since it was *meant* to be sent (counting from the intended time
/// rather than the actual write keeps send-side queueing in the figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    pub run: u32,
    pub sender: u32,
    pub seq: u64,
    /// Intended send time in microseconds since the load generator's origin.
    pub sent_us: u64,
}

impl Nonce {
    /// Encodes as `tp<run>s<sender>q<seq>t<us>`: only characters that need no
    /// escaping in an IRCv3 tag value.
    pub fn encode(&self) -> String {
        format!(
            "tp{}s{}q{}t{}",
            self.run, self.sender, self.seq, self.sent_us
        )
    }

    pub fn decode(text: &str) -> Option<Nonce> {
        let rest = text.strip_prefix("tp")?;
        let (run, rest) = rest.split_once('s')?;
        let (sender, rest) = rest.split_once('q')?;
        let (seq, sent_us) = rest.split_once('t')?;
        Some(Nonce {
            run: run.parse().ok()?,
            sender: sender.parse().ok()?,
            seq: seq.parse().ok()?,
            sent_us: sent_us.parse().ok()?,
        })
    }
}

/// Escapes an IRCv3 tag value (`;`, space, `\`, CR, LF).
pub fn escape_tag_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            ';' => out.push_str("\\:"),
            ' ' => out.push_str("\\s"),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_pushes_and_strips_crlf() {
        let mut lines = LineBuffer::new();
        lines.push(b"PING :a\r\nPRIV");
        assert_eq!(lines.next_line().unwrap(), Some(&b"PING :a"[..]));
        assert_eq!(lines.next_line().unwrap(), None);
        lines.push(b"MSG #r :x\nbare\r\n");
        assert_eq!(lines.next_line().unwrap(), Some(&b"PRIVMSG #r :x"[..]));
        assert_eq!(lines.next_line().unwrap(), Some(&b"bare"[..]));
        assert_eq!(lines.next_line().unwrap(), None);
        assert_eq!(lines.pending_bytes(), 0);
    }

    #[test]
    fn rejects_an_unterminated_line_past_the_limit() {
        let mut lines = LineBuffer::new();
        lines.push(&vec![b'a'; LINE_BYTES_MAX + 1]);
        assert_eq!(lines.next_line(), Err(LineTooLong));
    }

    #[test]
    fn parses_table_of_lines() {
        struct Case {
            input: &'static str,
            tags: &'static str,
            prefix: &'static str,
            command: &'static str,
            params: &'static [&'static str],
        }
        let cases = [
            Case {
                input: "PING :tmi.twitch.tv",
                tags: "",
                prefix: "",
                command: "PING",
                params: &["tmi.twitch.tv"],
            },
            Case {
                input: "@id=1;client-nonce=abc :u!u@u.tmi.twitch.tv PRIVMSG #room :hello there",
                tags: "id=1;client-nonce=abc",
                prefix: "u!u@u.tmi.twitch.tv",
                command: "PRIVMSG",
                params: &["#room", "hello there"],
            },
            Case {
                input: ":tmi.twitch.tv 366 justinfan1 #room :End of /NAMES list",
                tags: "",
                prefix: "tmi.twitch.tv",
                command: "366",
                params: &["justinfan1", "#room", "End of /NAMES list"],
            },
            Case {
                input: "RECONNECT",
                tags: "",
                prefix: "",
                command: "RECONNECT",
                params: &[],
            },
            Case {
                input: ":tmi.twitch.tv CAP * ACK :twitch.tv/tags twitch.tv/commands",
                tags: "",
                prefix: "tmi.twitch.tv",
                command: "CAP",
                params: &["*", "ACK", "twitch.tv/tags twitch.tv/commands"],
            },
        ];
        for case in cases {
            let line = Line::parse(case.input).expect(case.input);
            assert_eq!(line.tags, case.tags, "{}", case.input);
            assert_eq!(line.prefix, case.prefix, "{}", case.input);
            assert_eq!(line.command, case.command, "{}", case.input);
            assert_eq!(line.params, case.params, "{}", case.input);
        }
    }

    #[test]
    fn malformed_lines_are_none_not_panics() {
        for input in ["", "@tagsonly", ":prefixonly", "@a=b :p", "   "] {
            assert_eq!(Line::parse(input), None, "{input:?}");
        }
    }

    #[test]
    fn finds_tags_and_nick() {
        let line =
            Line::parse("@msg-id=msg_ratelimit;flag :nick!nick@host NOTICE #r :slow").unwrap();
        assert_eq!(line.tag("msg-id"), Some("msg_ratelimit"));
        assert_eq!(line.tag("flag"), Some(""));
        assert_eq!(line.tag("msg"), None);
        assert_eq!(line.nick(), "nick");
        assert_eq!(line.param(1), Some("slow"));
    }

    #[test]
    fn nonce_round_trips_and_rejects_garbage() {
        let nonce = Nonce {
            run: 7,
            sender: 12,
            seq: 99_000,
            sent_us: 1_234_567,
        };
        assert_eq!(Nonce::decode(&nonce.encode()), Some(nonce));
        for bad in ["", "tp", "tp1s2q3", "tp1s2q3tx", "xx1s2q3t4", "tp-1s2q3t4"] {
            assert_eq!(Nonce::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn escapes_tag_values() {
        assert_eq!(escape_tag_value("a b;c\\d"), "a\\sb\\:c\\\\d");
    }
}
