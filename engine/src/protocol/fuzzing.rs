//! One entry point that runs arbitrary bytes through every protocol layer and checks the
//! invariants that must hold for any input.
//!
//! The `parse_line` fuzz target in `engine/fuzz` calls [`exercise`], and a unit test feeds it
//! seeded pseudo-random inputs so CI covers the same path without a fuzzing toolchain. The
//! checks are assertions: any input that breaks one is a bug worth a crash report.

use std::rc::Rc;

use super::commands::Role;
use super::irc::{self, Message};
use super::line::{LineBuffer, split_frame_lines};
use super::session::{Action, Identity, RoomState, Session, SessionConfig};
use super::tags::{escape_tag_value, unescape_tag_value};
use super::twitch::RoomModes;

/// Line limit used while fuzzing: small, so the too-long paths are reached often.
const FUZZ_LINE_BYTES_MAX: usize = 300;

/// How far one input got, so the seeded test can check that its inputs reach deep states.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    pub lines: u64,
    pub authenticated: u64,
    pub rooms_joined: u64,
    pub privmsgs: u64,
    pub closes: u64,
}

impl std::ops::AddAssign for Reached {
    fn add_assign(&mut self, other: Reached) {
        self.lines += other.lines;
        self.authenticated += other.authenticated;
        self.rooms_joined += other.rooms_joined;
        self.privmsgs += other.privmsgs;
        self.closes += other.closes;
    }
}

/// Feeds `data` to the framing, the parser, the tag unescaper and a session driven by a
/// simulated engine, asserting the protocol's invariants along the way.
///
/// The first byte picks the transport (WebSocket frames or a TCP stream) and the TCP chunk
/// size, so the fuzzer explores both framings and every split of a line across reads.
pub fn exercise(data: &[u8]) -> Reached {
    let Some((&mode, body)) = data.split_first() else {
        return Reached::default();
    };
    let config = Rc::new(SessionConfig {
        message_chars_max: 40,
        joins_per_window_max: 3,
        join_window_ms: 50,
        rooms_joined_max: 4,
        line_bytes_max: FUZZ_LINE_BYTES_MAX,
        ..SessionConfig::default()
    });
    let mut driver = Driver {
        session: Session::new(Rc::clone(&config)),
        config,
        now_ms: 0,
        actions: Vec::new(),
        reached: Reached::default(),
    };
    if mode & 1 == 0 {
        let text = String::from_utf8_lossy(body);
        // A `\0` splits the input into several frames, as separate WebSocket messages would.
        for frame in text.split('\0') {
            for line in split_frame_lines(frame) {
                driver.line(line);
            }
        }
    } else {
        let chunk_bytes = usize::from(mode >> 1) % 64 + 1;
        let mut buffer = LineBuffer::new(FUZZ_LINE_BYTES_MAX);
        for chunk in body.chunks(chunk_bytes) {
            buffer.push(chunk);
            while let Some(line) = buffer.next_line() {
                match line {
                    Ok(line) => driver.line(&line),
                    Err(error) => {
                        driver.session.handle_line_error(error, &mut driver.actions);
                        driver.settle();
                    }
                }
            }
            assert!(
                buffer.buffered_bytes() <= FUZZ_LINE_BYTES_MAX + chunk_bytes,
                "the line buffer holds {} bytes",
                buffer.buffered_bytes()
            );
        }
    }
    driver.reached
}

/// A session plus a stand-in for the engine that answers its requests deterministically.
struct Driver {
    session: Session,
    config: Rc<SessionConfig>,
    now_ms: u64,
    actions: Vec<Action>,
    reached: Reached,
}

impl Driver {
    fn line(&mut self, line: &str) {
        self.reached.lines += 1;
        check_parse(line);
        self.now_ms += 7;
        let was_closed = self.session.is_closed();
        self.session
            .handle_line(line, self.now_ms, &mut self.actions);
        if was_closed {
            assert!(
                self.actions.is_empty(),
                "a closed session produced {:?}",
                self.actions
            );
        }
        self.settle();
    }

    /// Answers engine requests until none are left, checking every action. JOINs are
    /// answered after the whole batch, as the real engine answers them asynchronously.
    fn settle(&mut self) {
        let mut joins = Vec::new();
        while !self.actions.is_empty() {
            let actions = std::mem::take(&mut self.actions);
            for action in actions {
                match action {
                    Action::Reply(bytes) => check_reply(&bytes),
                    Action::Authenticate { login, token } => {
                        // Even-length tokens are "valid", so both answers get exercised.
                        if token.len() % 2 == 0 {
                            let identity = Identity {
                                display_name: login.to_uppercase(),
                                login,
                                user_id: token.len() as u64,
                                color: "#00FF00".to_owned(),
                                badges: "subscriber/1".to_owned(),
                                is_mod: token.len() % 4 == 0,
                            };
                            self.reached.authenticated += 1;
                            self.session.authenticated(identity, &mut self.actions);
                        } else {
                            self.session.authentication_failed(&mut self.actions);
                        }
                    }
                    Action::Join { room } => {
                        assert!(super::session::is_valid_room_name(&room), "JOIN {room:?}");
                        joins.push(room);
                    }
                    Action::Part { room } => {
                        assert!(super::session::is_valid_room_name(&room), "PART {room:?}");
                    }
                    Action::Privmsg { room, text, .. } => {
                        assert!(self.session.identity().is_some(), "anonymous PRIVMSG");
                        assert!(
                            self.session.joined_rooms().any(|joined| joined == room),
                            "PRIVMSG to unjoined {room:?}"
                        );
                        self.reached.privmsgs += 1;
                        let chars = text.chars().count();
                        assert!((1..=self.config.message_chars_max).contains(&chars));
                    }
                    Action::TagMsg {
                        room,
                        typing,
                        react,
                    } => {
                        assert!(self.session.identity().is_some(), "anonymous TAGMSG");
                        assert!(super::session::is_valid_room_name(&room), "TAGMSG {room:?}");
                        assert!(typing.is_some() || react.is_some());
                    }
                    Action::Whisper { to, text } => {
                        assert!(self.session.identity().is_some(), "anonymous WHISPER");
                        assert!(!to.is_empty() && !text.is_empty());
                    }
                    Action::Command { room, .. } => {
                        assert!(self.session.identity().is_some(), "anonymous command");
                        assert!(
                            self.session.joined_rooms().any(|joined| joined == room),
                            "command to unjoined {room:?}"
                        );
                    }
                    Action::Close => {
                        self.reached.closes += 1;
                        assert!(self.session.is_closed());
                    }
                }
            }
            for room in joins.drain(..) {
                if room.len() % 3 == 0 {
                    self.session.join_failed(&room, &mut self.actions);
                } else {
                    let state = RoomState {
                        room_id: room.len() as u64,
                        role: if room.len() % 2 == 0 {
                            Role::Moderator
                        } else {
                            Role::Viewer
                        },
                        modes: RoomModes {
                            slow_secs: (room.len() % 5) as u32,
                            emote_only: room.len() % 7 == 0,
                            r9k: false,
                        },
                        members: vec!["someone_else".to_owned()],
                    };
                    self.session.joined(&room, &state, &mut self.actions);
                    if self.session.joined_rooms().any(|joined| joined == room) {
                        self.reached.rooms_joined += 1;
                    }
                }
            }
        }
        assert!(self.session.joined_rooms().count() <= self.config.rooms_joined_max);
    }
}

/// Every reply is whole `\r\n`-terminated lines, each of which parses.
fn check_reply(bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).expect("replies are UTF-8");
    assert!(text.ends_with("\r\n"), "unterminated reply {text:?}");
    for line in text[..text.len() - 2].split("\r\n") {
        assert!(
            !line.contains(['\r', '\n', '\0']),
            "stray control byte in {line:?}"
        );
        if let Err(error) = Message::parse(line) {
            panic!("reply line {line:?} does not parse: {error}");
        }
    }
}

/// Whatever parses must unescape safely and survive an encode → parse round trip.
fn check_parse(line: &str) {
    let Ok(message) = Message::parse(line) else {
        return;
    };
    let mut escaped = String::new();
    let tags: Vec<(&str, std::borrow::Cow<'_, str>)> = message
        .raw_tags()
        .map(|(key, raw)| {
            let value = unescape_tag_value(raw);
            escaped.clear();
            escape_tag_value(&value, &mut escaped);
            assert_eq!(unescape_tag_value(&escaped), value);
            (key, value)
        })
        .collect();
    let tag_refs: Vec<(&str, &str)> = tags
        .iter()
        .map(|(key, value)| (*key, value.as_ref()))
        .collect();
    let (middle, trailing) = match message.params.split_last() {
        Some((last, middle)) => (middle, Some(*last)),
        None => (&[][..], None),
    };
    let mut out = Vec::new();
    irc::encode(
        &mut out,
        &tag_refs,
        message.prefix,
        message.command,
        middle,
        trailing,
    );
    let encoded = std::str::from_utf8(&out).expect("encoder writes UTF-8");
    let reparsed = Message::parse(encoded)
        .unwrap_or_else(|error| panic!("re-encoded {encoded:?} does not parse: {error}"));
    assert_eq!(reparsed.prefix, message.prefix, "{encoded:?}");
    assert_eq!(reparsed.command, message.command, "{encoded:?}");
    assert_eq!(reparsed.params, message.params, "{encoded:?}");
    for (key, _) in message.raw_tags() {
        assert_eq!(
            reparsed.tag(key),
            message.tag(key),
            "tag {key} of {encoded:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_rng::TestRng;

    /// Fragments that steer random inputs into the interesting states.
    const FRAGMENTS: [&[u8]; 24] = [
        b"CAP LS 302\r\n",
        b"CAP REQ :twitch.tv/tags twitch.tv/commands\r\n",
        b"CAP REQ :twitch.tv/membership bogus\r\n",
        b"CAP END\r\n",
        b"PASS oauth:ab\r\n",
        b"PASS abc\r\n",
        b"NICK bob\r\n",
        b"NICK justinfan123\r\n",
        b"JOIN #ab,#abc,#abcd\r\n",
        b"JOIN #a\r\n",
        b"PART #ab\r\n",
        b"@client-nonce=x\\sy PRIVMSG #ab :hi there\r\n",
        b"PRIVMSG #abcd :this one is definitely longer than forty characters\r\n",
        b"PRIVMSG #abcd ::)\r\n",
        b"PING\r\n",
        b"PING :x\r\n",
        b"@bad key=1 PRIVMSG\r\n",
        b"WHO #a\r\n",
        b":prefix\r\n",
        b"\xff\xfe\r\n",
        b"\n",
        b"\0",
        b"@a=b\\",
        b"QUIT\r\n",
    ];

    #[test]
    fn seeded_random_inputs_keep_invariants() {
        let seed = 0xf022_1a7e_u64;
        println!("protocol fuzz stand-in seed: {seed:#x}");
        let mut rng = TestRng::new(seed);
        let mut input = Vec::new();
        let mut reached = Reached::default();
        for case in 0..100_000u32 {
            input.clear();
            input.push(rng.next_u64() as u8);
            // Most inputs start registered so that the random rest reaches rooms and messages.
            match rng.below(4) {
                0 => {}
                1 => input.extend_from_slice(b"NICK justinfan7\r\nJOIN #ab\r\n"),
                _ => input.extend_from_slice(
                    b"CAP REQ :twitch.tv/tags twitch.tv/commands\r\nPASS oauth:ab\r\nNICK bob\r\nJOIN #ab\r\n",
                ),
            }
            let pieces = rng.below(12);
            for _ in 0..pieces {
                if rng.below(3) == 0 {
                    let len = rng.below(40);
                    input.extend((0..len).map(|_| rng.next_u64() as u8));
                } else {
                    let fragment = FRAGMENTS[rng.below(FRAGMENTS.len() as u64) as usize];
                    input.extend_from_slice(fragment);
                }
            }
            // A panic names the seed and case so the input can be rebuilt.
            match std::panic::catch_unwind(|| exercise(&input)) {
                Ok(case_reached) => reached += case_reached,
                Err(_) => panic!(
                    "seed {seed:#x}, case {case}: input {:?} broke an invariant",
                    String::from_utf8_lossy(&input)
                ),
            }
        }
        println!("reached: {reached:?}");
        // The inputs must get past registration and into rooms, or the run proves little.
        assert!(reached.lines > 100_000, "{reached:?}");
        assert!(reached.authenticated > 1_000, "{reached:?}");
        assert!(reached.rooms_joined > 1_000, "{reached:?}");
        assert!(reached.privmsgs > 1_000, "{reached:?}");
        assert!(reached.closes > 1_000, "{reached:?}");
    }

    #[test]
    fn long_lines_reach_the_too_long_paths() {
        let mut input = vec![1u8];
        input.extend(std::iter::repeat_n(b'A', FUZZ_LINE_BYTES_MAX * 3));
        input.extend_from_slice(b"\r\nPING\r\n");
        exercise(&input);
        let mut input = vec![0u8];
        input.extend(std::iter::repeat_n(b'A', FUZZ_LINE_BYTES_MAX * 3));
        exercise(&input);
    }
}
