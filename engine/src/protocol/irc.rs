//! Generic IRC message parsing and encoding (RFC 1459 framing with IRCv3 message tags).
//!
//! [`Message::parse`] borrows everything from the line: the tag section stays raw and is only
//! split and unescaped when a tag is asked for, so parsing allocates nothing per tag (the single
//! allocation is the parameter list). [`encode`] writes a complete line into the caller's buffer.

use std::borrow::Cow;

use super::tags::{
    escape_tag_value_bytes, is_valid_raw_tag_value, is_valid_tag_key, unescape_tag_value,
};

/// Most parameters a message may carry (RFC 1459): after 14 middle parameters, the rest of the
/// line is the last parameter even without a leading `:`.
pub const PARAMS_MAX: usize = 15;

/// Why a line is not an IRC message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line is empty or holds only spaces.
    #[error("empty line")]
    Empty,
    /// The line has tags and/or a prefix but no command.
    #[error("no command")]
    NoCommand,
    /// The command is neither letters nor a three-digit numeric.
    #[error("invalid command")]
    InvalidCommand,
    /// The tag section has an empty or invalid key, or a value with a forbidden byte.
    #[error("malformed tags")]
    MalformedTags,
    /// The line holds a NUL, CR or LF byte.
    #[error("forbidden control character")]
    ForbiddenCharacter,
}

/// One parsed IRC message, borrowing from its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// The raw (still escaped) tag section without the leading `@`.
    pub tags: Option<&'a str>,
    /// The prefix without the leading `:`.
    pub prefix: Option<&'a str>,
    /// The command as sent (commands are case-insensitive; compare with
    /// `eq_ignore_ascii_case`).
    pub command: &'a str,
    /// Middle parameters followed by the trailing parameter, if any.
    pub params: Vec<&'a str>,
}

/// Splits `input` at the first space, returning the token and the rest after the space run.
fn split_token(input: &str) -> (&str, &str) {
    match input.find(' ') {
        Some(space) => (&input[..space], input[space..].trim_start_matches(' ')),
        None => (input, ""),
    }
}

impl<'a> Message<'a> {
    /// Parses one line (a trailing `\r\n` or `\n` is tolerated).
    pub fn parse(line: &'a str) -> Result<Message<'a>, ParseError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if has_line_breaking_byte(line.as_bytes()) {
            return Err(ParseError::ForbiddenCharacter);
        }
        let mut rest = line.trim_start_matches(' ');
        if rest.is_empty() {
            return Err(ParseError::Empty);
        }

        let mut tags = None;
        if let Some(after_at) = rest.strip_prefix('@') {
            let (raw_tags, after) = split_token(after_at);
            validate_tags(raw_tags)?;
            tags = Some(raw_tags);
            rest = after;
        }

        let mut prefix = None;
        if let Some(after_colon) = rest.strip_prefix(':') {
            let (raw_prefix, after) = split_token(after_colon);
            prefix = Some(raw_prefix);
            rest = after;
        }

        let (command, mut rest) = split_token(rest);
        if command.is_empty() {
            return Err(ParseError::NoCommand);
        }
        let is_word = command.bytes().all(|b| b.is_ascii_alphabetic());
        let is_numeric = command.len() == 3 && command.bytes().all(|b| b.is_ascii_digit());
        if !is_word && !is_numeric {
            return Err(ParseError::InvalidCommand);
        }

        let mut params = Vec::new();
        while !rest.is_empty() {
            if let Some(trailing) = rest.strip_prefix(':') {
                params.push(trailing);
                break;
            }
            if params.len() == PARAMS_MAX - 1 {
                params.push(rest);
                break;
            }
            let (middle, after) = split_token(rest);
            params.push(middle);
            rest = after;
        }

        Ok(Message {
            tags,
            prefix,
            command,
            params,
        })
    }

    /// Iterates over the raw `(key, value)` pairs of the tag section; a key without `=` has an
    /// empty value.
    pub fn raw_tags(&self) -> RawTags<'a> {
        RawTags {
            rest: self.tags.unwrap_or(""),
        }
    }

    /// The unescaped value of tag `key`; the last occurrence wins, as IRCv3 asks.
    pub fn tag(&self, key: &str) -> Option<Cow<'a, str>> {
        self.raw_tags()
            .filter(|(k, _)| *k == key)
            .last()
            .map(|(_, value)| unescape_tag_value(value))
    }

    /// The parameter at `index`, if present.
    pub fn param(&self, index: usize) -> Option<&'a str> {
        self.params.get(index).copied()
    }
}

/// Whether `bytes` holds NUL, CR or LF. Written as a fold without early exit so the compiler
/// can vectorize it; lines are short, so scanning to the end costs less than branching per byte.
fn has_line_breaking_byte(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |found, &b| {
        found | (b == b'\0') | (b == b'\r') | (b == b'\n')
    })
}

/// Iterator over the `(key, raw value)` pairs of a tag section, skipping empty items.
///
/// It works on bytes: `;` and `=` are ASCII, so every split falls on a character boundary.
#[derive(Debug, Clone)]
pub struct RawTags<'a> {
    rest: &'a str,
}

impl<'a> Iterator for RawTags<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let bytes = self.rest.as_bytes();
            let end = bytes.iter().position(|&b| b == b';').unwrap_or(bytes.len());
            let item = &self.rest[..end];
            self.rest = self.rest.get(end + 1..).unwrap_or("");
            // An empty item (`a=1;;b=2` or a trailing `;`) carries nothing; tolerate it like
            // most servers do.
            if item.is_empty() {
                continue;
            }
            return Some(match item.as_bytes().iter().position(|&b| b == b'=') {
                Some(equals) => (&item[..equals], &item[equals + 1..]),
                None => (item, ""),
            });
        }
    }
}

/// Checks every key. Values need no check here: the tag section ends at the first space,
/// items end at `;`, and `parse` has already refused NUL, CR and LF anywhere in the line.
fn validate_tags(raw_tags: &str) -> Result<(), ParseError> {
    let all_keys_valid = RawTags { rest: raw_tags }.all(|(key, value)| {
        debug_assert!(is_valid_raw_tag_value(value));
        is_valid_tag_key(key)
    });
    if all_keys_valid {
        Ok(())
    } else {
        Err(ParseError::MalformedTags)
    }
}

/// Appends `text` with every byte in `forbidden` replaced by `replacement`, so that no caller
/// input can end the line early or split a parameter.
#[inline]
fn push_sanitized(out: &mut Vec<u8>, text: &str, forbidden: fn(u8) -> bool, replacement: u8) {
    let bytes = text.as_bytes();
    let mut run_start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if forbidden(byte) {
            out.extend_from_slice(&bytes[run_start..index]);
            out.push(replacement);
            run_start = index + 1;
        }
    }
    out.extend_from_slice(&bytes[run_start..]);
}

fn is_line_breaking(byte: u8) -> bool {
    matches!(byte, b'\0' | b'\r' | b'\n')
}

fn is_param_breaking(byte: u8) -> bool {
    matches!(byte, b'\0' | b'\r' | b'\n' | b' ')
}

/// Appends a middle parameter, token or prefix: spaces and line breaks become `_`, and an empty
/// value becomes `*` so the parameter count survives.
pub(crate) fn push_middle(out: &mut Vec<u8>, middle: &str) {
    if middle.is_empty() {
        out.push(b'*');
        return;
    }
    if let Some(rest) = middle.strip_prefix(':') {
        // A leading colon would turn a middle parameter into the trailing one.
        out.push(b'_');
        push_sanitized(out, rest, is_param_breaking, b'_');
    } else {
        push_sanitized(out, middle, is_param_breaking, b'_');
    }
}

/// Appends trailing-parameter text: CR, LF and NUL become spaces so text can never inject a line.
pub(crate) fn push_trailing(out: &mut Vec<u8>, text: &str) {
    push_sanitized(out, text, is_line_breaking, b' ');
}

/// Appends `;key=value` (or `@key=value` for the first tag) with the value escaped.
pub(crate) fn push_tag(out: &mut Vec<u8>, first: bool, key: &str, value: &str) {
    out.push(if first { b'@' } else { b';' });
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    escape_tag_value_bytes(value, out);
}

/// Appends one complete `\r\n`-terminated line.
///
/// Tag values are escaped. Inputs that would break the framing are neutralised rather than
/// trusted: spaces and line breaks in middle parameters and the prefix become `_`, an empty
/// middle parameter becomes `*`, and line breaks in the trailing parameter become spaces. For
/// inputs without such bytes, `Message::parse` of the output gives back exactly the inputs.
pub fn encode(
    out: &mut Vec<u8>,
    tags: &[(&str, &str)],
    prefix: Option<&str>,
    command: &str,
    middle: &[&str],
    trailing: Option<&str>,
) {
    for (index, (key, value)) in tags.iter().enumerate() {
        push_tag(out, index == 0, key, value);
    }
    if !tags.is_empty() {
        out.push(b' ');
    }
    if let Some(prefix) = prefix {
        out.push(b':');
        push_sanitized(out, prefix, is_param_breaking, b'_');
        out.push(b' ');
    }
    push_sanitized(out, command, is_param_breaking, b'_');
    for param in middle {
        out.push(b' ');
        push_middle(out, param);
    }
    if let Some(trailing) = trailing {
        out.extend_from_slice(b" :");
        push_trailing(out, trailing);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_rng::TestRng;

    struct Case {
        line: &'static str,
        tags: Option<&'static str>,
        prefix: Option<&'static str>,
        command: &'static str,
        params: &'static [&'static str],
    }

    #[test]
    fn parses_table() {
        let cases = [
            Case {
                line: "PING",
                tags: None,
                prefix: None,
                command: "PING",
                params: &[],
            },
            Case {
                line: "PING :tmi.twitch.tv\r\n",
                tags: None,
                prefix: None,
                command: "PING",
                params: &["tmi.twitch.tv"],
            },
            Case {
                line: "NICK justinfan123",
                tags: None,
                prefix: None,
                command: "NICK",
                params: &["justinfan123"],
            },
            Case {
                line: "CAP REQ :twitch.tv/tags twitch.tv/commands",
                tags: None,
                prefix: None,
                command: "CAP",
                params: &["REQ", "twitch.tv/tags twitch.tv/commands"],
            },
            Case {
                line: "@client-nonce=abc;reply-parent-msg-id=x-1 PRIVMSG #room :hello there",
                tags: Some("client-nonce=abc;reply-parent-msg-id=x-1"),
                prefix: None,
                command: "PRIVMSG",
                params: &["#room", "hello there"],
            },
            Case {
                line: "@badges=;color= :nick!nick@nick.tmi.twitch.tv PRIVMSG #r ::) colon",
                tags: Some("badges=;color="),
                prefix: Some("nick!nick@nick.tmi.twitch.tv"),
                command: "PRIVMSG",
                params: &["#r", ":) colon"],
            },
            Case {
                line: ":tmi.twitch.tv 001 nick :Welcome, GLHF!",
                tags: None,
                prefix: Some("tmi.twitch.tv"),
                command: "001",
                params: &["nick", "Welcome, GLHF!"],
            },
            Case {
                line: "  JOIN   #a,#b  ",
                tags: None,
                prefix: None,
                command: "JOIN",
                params: &["#a,#b"],
            },
            Case {
                line: "PRIVMSG #a :",
                tags: None,
                prefix: None,
                command: "PRIVMSG",
                params: &["#a", ""],
            },
            Case {
                line: "PRIVMSG #a :  spaced  ",
                tags: None,
                prefix: None,
                command: "PRIVMSG",
                params: &["#a", "  spaced  "],
            },
            Case {
                line: "@ PING",
                tags: Some(""),
                prefix: None,
                command: "PING",
                params: &[],
            },
            Case {
                line: "@flag;k=v PING",
                tags: Some("flag;k=v"),
                prefix: None,
                command: "PING",
                params: &[],
            },
            Case {
                line: "privmsg #a b",
                tags: None,
                prefix: None,
                command: "privmsg",
                params: &["#a", "b"],
            },
            Case {
                line: "X 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
                tags: None,
                prefix: None,
                command: "X",
                params: &[
                    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14",
                    "15 16",
                ],
            },
        ];
        for case in cases {
            let message = Message::parse(case.line).unwrap_or_else(|error| {
                panic!("{:?} failed to parse: {error}", case.line);
            });
            assert_eq!(message.tags, case.tags, "tags of {:?}", case.line);
            assert_eq!(message.prefix, case.prefix, "prefix of {:?}", case.line);
            assert_eq!(message.command, case.command, "command of {:?}", case.line);
            assert_eq!(message.params, case.params, "params of {:?}", case.line);
        }
    }

    #[test]
    fn rejects_table() {
        let cases = [
            ("", ParseError::Empty),
            ("   ", ParseError::Empty),
            ("\r\n", ParseError::Empty),
            ("@a=b", ParseError::NoCommand),
            ("@a=b ", ParseError::NoCommand),
            (":prefix", ParseError::NoCommand),
            ("@a=b :prefix ", ParseError::NoCommand),
            (":", ParseError::NoCommand),
            ("@", ParseError::NoCommand),
            ("PRIV-MSG #a", ParseError::InvalidCommand),
            ("1234 x", ParseError::InvalidCommand),
            ("#a", ParseError::InvalidCommand),
            ("@=v PING", ParseError::MalformedTags),
            ("@a b=c PING", ParseError::InvalidCommand),
            ("@k\u{e9}=v PING", ParseError::MalformedTags),
            ("PING\0x", ParseError::ForbiddenCharacter),
            ("PING a\rb", ParseError::ForbiddenCharacter),
        ];
        for (line, expected) in cases {
            assert_eq!(Message::parse(line), Err(expected), "{line:?}");
        }
    }

    #[test]
    fn tag_lookup_unescapes_and_last_wins() {
        let message =
            Message::parse("@a=x\\sy;flag;b=1;a=z\\:w;nonce=\\\\ok\\ PRIVMSG #r :t").unwrap();
        assert_eq!(message.tag("a").as_deref(), Some("z;w"));
        assert_eq!(message.tag("flag").as_deref(), Some(""));
        assert_eq!(message.tag("b").as_deref(), Some("1"));
        assert_eq!(message.tag("nonce").as_deref(), Some("\\ok"));
        assert_eq!(message.tag("missing"), None);
        assert_eq!(Message::parse("PING").unwrap().tag("a"), None);
        // A trailing lone backslash is well-formed on the wire and dropped when unescaped.
        let message = Message::parse("@k=v\\ PING").unwrap();
        assert_eq!(message.tag("k").as_deref(), Some("v"));
    }

    #[test]
    fn encodes_exact_bytes() {
        let mut out = Vec::new();
        encode(
            &mut out,
            &[("msg-id", "msg_ratelimit"), ("x", "a b;c")],
            Some("tmi.twitch.tv"),
            "NOTICE",
            &["#room"],
            Some("Slow down"),
        );
        assert_eq!(
            out,
            b"@msg-id=msg_ratelimit;x=a\\sb\\:c :tmi.twitch.tv NOTICE #room :Slow down\r\n"
        );
        out.clear();
        encode(&mut out, &[], None, "PING", &[], None);
        assert_eq!(out, b"PING\r\n");
    }

    #[test]
    fn encode_neutralises_injection() {
        let mut out = Vec::new();
        encode(
            &mut out,
            &[("k", "v\r\nQUIT")],
            Some("evil host"),
            "PRIVMSG",
            &["#a b", "", ":x"],
            Some("hi\r\nQUIT :bye\0"),
        );
        let line = std::str::from_utf8(&out).unwrap();
        assert_eq!(line.matches("\r\n").count(), 1, "{line:?}");
        assert!(line.ends_with("\r\n"));
        let message = Message::parse(line).unwrap();
        assert_eq!(message.tag("k").as_deref(), Some("v\r\nQUIT"));
        assert_eq!(message.prefix, Some("evil_host"));
        assert_eq!(message.params, ["#a_b", "*", "_x", "hi  QUIT :bye "]);
    }

    #[test]
    fn random_encode_parse_round_trip() {
        let seed = 0x1dc_2024_u64;
        println!("encode/parse round-trip seed: {seed:#x}");
        let mut rng = TestRng::new(seed);
        let value_alphabet = [
            'a', 'Z', '0', ';', ' ', '\\', '\r', '\n', ':', '=', '@', 'ß', '😀',
        ];
        let token_alphabet = ['a', 'b', '#', '0', '!', '@', '.', 'é', ':', ','];
        let text_alphabet = ['a', ' ', ':', '@', '#', '\\', ';', 'ü', '!'];
        let mut out = Vec::new();
        for _ in 0..5_000 {
            let random_string = |rng: &mut TestRng, alphabet: &[char], len_max: u64| -> String {
                let len = rng.below(len_max + 1) as usize;
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                    .collect()
            };
            let tag_count = rng.below(4) as usize;
            let tag_values: Vec<String> = (0..tag_count)
                .map(|_| random_string(&mut rng, &value_alphabet, 12))
                .collect();
            let tag_keys = ["id", "client-nonce", "twitchy/original", "+draft/reply"];
            let tags: Vec<(&str, &str)> = tag_values
                .iter()
                .enumerate()
                .map(|(index, value)| (tag_keys[index], value.as_str()))
                .collect();
            let prefix = (rng.below(2) == 0).then_some("nick!nick@nick.tmi.twitch.tv");
            let middle_count = rng.below(4) as usize;
            let middles: Vec<String> = (0..middle_count)
                .map(|_| {
                    // Middle parameters may not be empty or start with ':'.
                    let mut middle = random_string(&mut rng, &token_alphabet, 8);
                    middle.insert(0, 'm');
                    middle
                })
                .collect();
            let middle_refs: Vec<&str> = middles.iter().map(String::as_str).collect();
            let trailing = (rng.below(2) == 0).then(|| random_string(&mut rng, &text_alphabet, 20));

            out.clear();
            encode(
                &mut out,
                &tags,
                prefix,
                "PRIVMSG",
                &middle_refs,
                trailing.as_deref(),
            );
            let line = std::str::from_utf8(&out).expect("encoder writes UTF-8");
            let message = Message::parse(line)
                .unwrap_or_else(|error| panic!("seed {seed:#x}: {line:?} did not parse: {error}"));
            assert_eq!(message.prefix, prefix, "seed {seed:#x}: {line:?}");
            assert_eq!(message.command, "PRIVMSG");
            for (key, value) in &tags {
                assert_eq!(
                    message.tag(key).as_deref(),
                    Some(*value),
                    "seed {seed:#x}: tag {key} of {line:?}"
                );
            }
            let mut expected_params = middle_refs.clone();
            if let Some(trailing) = &trailing {
                expected_params.push(trailing);
            }
            assert_eq!(message.params, expected_params, "seed {seed:#x}: {line:?}");
        }
    }
}
