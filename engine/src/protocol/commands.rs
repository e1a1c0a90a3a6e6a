//! Twitch's chat commands (`/timeout`, `/ban`, `/delete`, `/slow`, `/mod`, `/color`, …): parsing of the text a client
//! sends as a PRIVMSG, and the roles that decide who may run them.
//!
//! Clients such as tmi.js send moderation as a PRIVMSG whose text starts with `/` (or `.`), and wait for the NOTICE
//! `msg-id` Twitch answers with. Parsing is pure: a usage error is answered by the session at once, with Twitch's
//! `usage_*` id, and only well-formed commands reach the room's home shard, which checks permissions and state.

/// A user's standing in one room. Ordered: each role may do what the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Role {
    #[default]
    Viewer,
    Vip,
    Moderator,
    Broadcaster,
}

impl Role {
    /// The Twitch badge the role carries (`badges` tag), empty for a plain viewer.
    pub fn badge(self) -> &'static str {
        match self {
            Role::Viewer => "",
            Role::Vip => "vip/1",
            Role::Moderator => "moderator/1",
            Role::Broadcaster => "broadcaster/1",
        }
    }

    /// Twitch's `mod` tag: 1 for moderators only (the broadcaster carries the broadcaster badge and `mod=0`).
    pub fn mod_tag(self) -> bool {
        self == Role::Moderator
    }

    /// Whether the role may moderate (timeouts, bans, deletes, modes, AutoMod).
    pub fn moderates(self) -> bool {
        self >= Role::Moderator
    }

    /// The stored name of a role granted by `/mod` or `/vip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Vip => "vip",
            Role::Moderator => "mod",
            Role::Broadcaster => "broadcaster",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "viewer" => Some(Role::Viewer),
            "vip" => Some(Role::Vip),
            "mod" => Some(Role::Moderator),
            "broadcaster" => Some(Role::Broadcaster),
            _ => None,
        }
    }
}

/// Default `/timeout` length, as on Twitch.
pub const TIMEOUT_SECS_DEFAULT: u32 = 600;
/// Longest `/timeout`: two weeks, as on Twitch.
pub const TIMEOUT_SECS_MAX: u32 = 14 * 24 * 3600;
/// Default `/slow` interval, as on Twitch.
pub const SLOW_SECS_DEFAULT: u32 = 30;
/// Longest `/slow` interval, as on Twitch.
pub const SLOW_SECS_MAX: u32 = 120;
/// Longest reason kept with a timeout or ban.
pub const REASON_CHARS_MAX: usize = 200;

/// A well-formed chat command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatCommand {
    Timeout {
        user: String,
        seconds: u32,
        reason: String,
    },
    Untimeout {
        user: String,
    },
    Ban {
        user: String,
        reason: String,
    },
    Unban {
        user: String,
    },
    Delete {
        message_id: String,
    },
    Clear,
    Slow {
        seconds: u32,
    },
    SlowOff,
    EmoteOnly(bool),
    UniqueChat(bool),
    Mod {
        user: String,
    },
    Unmod {
        user: String,
    },
    Vip {
        user: String,
    },
    Unvip {
        user: String,
    },
    Mods,
    Vips,
    /// `#RRGGBB`, upper case.
    Color {
        color: String,
    },
    AutoModAdd {
        phrase: String,
    },
    AutoModRemove {
        phrase: String,
    },
    AutoModAllow {
        held_id: u64,
    },
    AutoModDeny {
        held_id: u64,
    },
    /// Not typed in chat (never parsed): the HTTP API's read of a room's moderation state, for its moderators.
    ModerationState,
    /// Not typed in chat (never parsed): the HTTP API's page of a room's logged-in users (after `after`, at most
    /// `limit`) and its viewer counts.
    Chatters {
        after: String,
        limit: usize,
    },
}

impl ChatCommand {
    /// The command's name as typed, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ChatCommand::Timeout { .. } => "timeout",
            ChatCommand::Untimeout { .. } => "untimeout",
            ChatCommand::Ban { .. } => "ban",
            ChatCommand::Unban { .. } => "unban",
            ChatCommand::Delete { .. } => "delete",
            ChatCommand::Clear => "clear",
            ChatCommand::Slow { .. } => "slow",
            ChatCommand::SlowOff => "slowoff",
            ChatCommand::EmoteOnly(true) => "emoteonly",
            ChatCommand::EmoteOnly(false) => "emoteonlyoff",
            ChatCommand::UniqueChat(true) => "uniquechat",
            ChatCommand::UniqueChat(false) => "uniquechatoff",
            ChatCommand::Mod { .. } => "mod",
            ChatCommand::Unmod { .. } => "unmod",
            ChatCommand::Vip { .. } => "vip",
            ChatCommand::Unvip { .. } => "unvip",
            ChatCommand::Mods => "mods",
            ChatCommand::Vips => "vips",
            ChatCommand::Color { .. } => "color",
            ChatCommand::AutoModAdd { .. } => "automod_add",
            ChatCommand::AutoModRemove { .. } => "automod_remove",
            ChatCommand::AutoModAllow { .. } => "automod_allow",
            ChatCommand::AutoModDeny { .. } => "automod_deny",
            ChatCommand::ModerationState => "moderation_state",
            ChatCommand::Chatters { .. } => "chatters",
        }
    }

    /// Whether the command only reads (the HTTP API's queries): not rate-limited.
    pub fn is_query(&self) -> bool {
        matches!(
            self,
            ChatCommand::ModerationState | ChatCommand::Chatters { .. }
        )
    }

    /// Whether the command concerns the user alone (their colour) rather than the room.
    pub fn is_personal(&self) -> bool {
        matches!(self, ChatCommand::Color { .. })
    }
}

/// A command typed wrongly: answered with Twitch's `usage_*` id and a line on how to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub msg_id: &'static str,
    pub text: &'static str,
}

/// Twitch's named chat colours (the ones non-Turbo users may pick), with their RGB values.
pub const NAMED_COLORS: [(&str, &str); 15] = [
    ("blue", "#0000FF"),
    ("blueviolet", "#8A2BE2"),
    ("cadetblue", "#5F9EA0"),
    ("chocolate", "#D2691E"),
    ("coral", "#FF7F50"),
    ("dodgerblue", "#1E90FF"),
    ("firebrick", "#B22222"),
    ("goldenrod", "#DAA520"),
    ("green", "#008000"),
    ("hotpink", "#FF69B4"),
    ("orangered", "#FF4500"),
    ("red", "#FF0000"),
    ("seagreen", "#2E8B57"),
    ("springgreen", "#00FF7F"),
    ("yellowgreen", "#9ACD32"),
];

/// `#RRGGBB` (any case, `#` optional) or one of Twitch's colour names, as `#RRGGBB` in upper case.
pub fn parse_color(text: &str) -> Option<String> {
    let text = text.trim();
    let hex = text.strip_prefix('#').unwrap_or(text);
    if hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(format!("#{}", hex.to_ascii_uppercase()));
    }
    let lower = text.to_ascii_lowercase();
    NAMED_COLORS
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, rgb)| (*rgb).to_owned())
}

/// Twitch's login rule for a target user: `@name` accepted, 1 to 25 ASCII letters, digits and `_`; lowercased.
pub fn parse_user(arg: &str) -> Option<String> {
    let name = arg.strip_prefix('@').unwrap_or(arg);
    let valid = (1..=25).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    valid.then(|| name.to_ascii_lowercase())
}

/// A duration as Twitch's `/timeout` takes it: plain seconds or a number with `s`, `m`, `h`, `d` or `w`.
pub fn parse_duration_secs(arg: &str) -> Option<u64> {
    let (digits, unit_secs) = match arg.as_bytes().last()? {
        b's' => (&arg[..arg.len() - 1], 1),
        b'm' => (&arg[..arg.len() - 1], 60),
        b'h' => (&arg[..arg.len() - 1], 3600),
        b'd' => (&arg[..arg.len() - 1], 86_400),
        b'w' => (&arg[..arg.len() - 1], 604_800),
        _ => (arg, 1),
    };
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(unit_secs)
}

fn reason_of(rest: &[&str]) -> String {
    rest.join(" ").chars().take(REASON_CHARS_MAX).collect()
}

const USAGE_TIMEOUT: Usage = Usage {
    msg_id: "usage_timeout",
    text: "Usage: \"/timeout <username> [duration][time unit] [reason]\" - Temporarily prevent a user from chatting. \
           Duration (optional, default=10 minutes) must be a positive integer; time unit (optional, default=s) must \
           be one of s, m, h, d, w; maximum duration is 2 weeks.",
};

fn user_arg(args: &[&str], usage: Usage) -> Result<String, Usage> {
    args.first().and_then(|arg| parse_user(arg)).ok_or(usage)
}

fn usage(msg_id: &'static str, text: &'static str) -> Usage {
    Usage { msg_id, text }
}

/// Parses the text of a chat command (starting with `/` or `.`). `None`: not a command this server runs (the caller
/// answers `unrecognized_cmd`).
pub fn parse(text: &str) -> Option<Result<ChatCommand, Usage>> {
    let body = text.strip_prefix('/').or_else(|| text.strip_prefix('.'))?;
    let mut words = body.split_whitespace();
    let name = words.next()?.to_ascii_lowercase();
    let args: Vec<&str> = words.collect();
    let user_usage = |msg_id: &'static str, text: &'static str| {
        let usage = usage(msg_id, text);
        move |args: &[&str]| user_arg(args, usage.clone())
    };
    let command = match name.as_str() {
        "timeout" => (|| {
            let user = user_arg(&args, USAGE_TIMEOUT)?;
            let (seconds, rest) = match args.get(1) {
                Some(arg) => match parse_duration_secs(arg) {
                    Some(secs) => (secs, &args[2..]),
                    // Twitch reads a non-duration second word as the start of the reason.
                    None if !arg.bytes().next().is_some_and(|b| b.is_ascii_digit()) => {
                        (u64::from(TIMEOUT_SECS_DEFAULT), &args[1..])
                    }
                    None => return Err(USAGE_TIMEOUT),
                },
                None => (u64::from(TIMEOUT_SECS_DEFAULT), &args[1..]),
            };
            if seconds == 0 || seconds > u64::from(TIMEOUT_SECS_MAX) {
                return Err(usage(
                    "bad_timeout_duration",
                    "Failed to time out the user: the duration must be between 1 second and 2 weeks.",
                ));
            }
            Ok(ChatCommand::Timeout {
                user,
                seconds: seconds as u32,
                reason: reason_of(rest),
            })
        })(),
        "untimeout" => user_usage(
            "usage_untimeout",
            "Usage: \"/untimeout <username>\" - Removes a timeout on a user.",
        )(&args)
        .map(|user| ChatCommand::Untimeout { user }),
        "ban" => user_usage(
            "usage_ban",
            "Usage: \"/ban <username> [reason]\" - Permanently prevent a user from chatting. Reason is optional and \
             will be shown to the target user and other moderators. Use \"/unban\" to remove a ban.",
        )(&args)
        .map(|user| ChatCommand::Ban {
            user,
            reason: reason_of(&args[1..]),
        }),
        "unban" => user_usage(
            "usage_unban",
            "Usage: \"/unban <username>\" - Removes a ban on a user.",
        )(&args)
        .map(|user| ChatCommand::Unban { user }),
        "delete" => match args.as_slice() {
            [id] if (1..=64).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                Ok(ChatCommand::Delete {
                    message_id: (*id).to_owned(),
                })
            }
            _ => Err(usage(
                "usage_delete",
                "Usage: \"/delete <msg id>\" - Deletes the specified message.",
            )),
        },
        "clear" => Ok(ChatCommand::Clear),
        "slow" => match args.first() {
            None => Ok(ChatCommand::Slow {
                seconds: SLOW_SECS_DEFAULT,
            }),
            Some(arg) => match arg.parse::<u32>() {
                Ok(seconds) if (1..=SLOW_SECS_MAX).contains(&seconds) => {
                    Ok(ChatCommand::Slow { seconds })
                }
                _ => Err(usage(
                    "usage_slow_on",
                    "Usage: \"/slow [duration]\" - Enables slow mode (limit how often users may send messages). \
                     Duration (optional, default=30) must be a positive number of seconds, at most 120.",
                )),
            },
        },
        "slowoff" => Ok(ChatCommand::SlowOff),
        "emoteonly" => Ok(ChatCommand::EmoteOnly(true)),
        "emoteonlyoff" => Ok(ChatCommand::EmoteOnly(false)),
        "uniquechat" | "r9kbeta" => Ok(ChatCommand::UniqueChat(true)),
        "uniquechatoff" | "r9kbetaoff" => Ok(ChatCommand::UniqueChat(false)),
        "mod" => user_usage(
            "usage_mod",
            "Usage: \"/mod <username>\" - Grant moderator status to a user.",
        )(&args)
        .map(|user| ChatCommand::Mod { user }),
        "unmod" => user_usage(
            "usage_unmod",
            "Usage: \"/unmod <username>\" - Revoke moderator status from a user.",
        )(&args)
        .map(|user| ChatCommand::Unmod { user }),
        "vip" => user_usage(
            "usage_vip",
            "Usage: \"/vip <username>\" - Grant VIP status to a user.",
        )(&args)
        .map(|user| ChatCommand::Vip { user }),
        "unvip" => user_usage(
            "usage_unvip",
            "Usage: \"/unvip <username>\" - Revoke VIP status from a user.",
        )(&args)
        .map(|user| ChatCommand::Unvip { user }),
        "mods" => Ok(ChatCommand::Mods),
        "vips" => Ok(ChatCommand::Vips),
        "color" => match args.as_slice() {
            [color] => parse_color(color)
                .map(|color| ChatCommand::Color { color })
                .ok_or_else(|| usage("usage_color", COLOR_USAGE)),
            _ => Err(usage("usage_color", COLOR_USAGE)),
        },
        "automod" => {
            let automod_usage = || {
                usage(
                    "usage_automod",
                    "Usage: \"/automod add <phrase>\", \"/automod remove <phrase>\", \"/automod allow <held id>\" \
                     or \"/automod deny <held id>\".",
                )
            };
            match args.split_first() {
                Some((verb, rest)) if !rest.is_empty() => {
                    let held_id = || {
                        match rest {
                            [id] => id.parse::<u64>().ok(),
                            _ => None,
                        }
                        .ok_or_else(automod_usage)
                    };
                    match verb.to_ascii_lowercase().as_str() {
                        "add" => Ok(ChatCommand::AutoModAdd {
                            phrase: rest.join(" "),
                        }),
                        "remove" => Ok(ChatCommand::AutoModRemove {
                            phrase: rest.join(" "),
                        }),
                        "allow" | "approve" => {
                            held_id().map(|held_id| ChatCommand::AutoModAllow { held_id })
                        }
                        "deny" => held_id().map(|held_id| ChatCommand::AutoModDeny { held_id }),
                        _ => Err(automod_usage()),
                    }
                }
                _ => Err(automod_usage()),
            }
        }
        _ => return None,
    };
    Some(command)
}

const COLOR_USAGE: &str = "Usage: \"/color <color>\" - Change your username color. Color must be in hex (#000000) or \
                           one of the following: Blue, BlueViolet, CadetBlue, Chocolate, Coral, DodgerBlue, \
                           Firebrick, GoldenRod, Green, HotPink, OrangeRed, Red, SeaGreen, SpringGreen, YellowGreen.";

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> ChatCommand {
        parse(text)
            .unwrap_or_else(|| panic!("{text:?} not a command"))
            .unwrap_or_else(|usage| panic!("{text:?}: {usage:?}"))
    }

    fn usage_id(text: &str) -> &'static str {
        parse(text)
            .unwrap_or_else(|| panic!("{text:?} not a command"))
            .expect_err(text)
            .msg_id
    }

    #[test]
    fn commands_parse_as_twitch_reads_them() {
        let table: &[(&str, ChatCommand)] = &[
            (
                "/timeout @Bob",
                ChatCommand::Timeout {
                    user: "bob".into(),
                    seconds: 600,
                    reason: String::new(),
                },
            ),
            (
                ".timeout bob 10m spamming links",
                ChatCommand::Timeout {
                    user: "bob".into(),
                    seconds: 600,
                    reason: "spamming links".into(),
                },
            ),
            (
                "/timeout bob 1w",
                ChatCommand::Timeout {
                    user: "bob".into(),
                    seconds: 604_800,
                    reason: String::new(),
                },
            ),
            (
                "/timeout bob being rude",
                ChatCommand::Timeout {
                    user: "bob".into(),
                    seconds: 600,
                    reason: "being rude".into(),
                },
            ),
            (
                "/ban bob  go away ",
                ChatCommand::Ban {
                    user: "bob".into(),
                    reason: "go away".into(),
                },
            ),
            ("/unban BOB", ChatCommand::Unban { user: "bob".into() }),
            (
                "/delete 0190c6a4-7c2b-7000-8000-000000000001",
                ChatCommand::Delete {
                    message_id: "0190c6a4-7c2b-7000-8000-000000000001".into(),
                },
            ),
            ("/slow", ChatCommand::Slow { seconds: 30 }),
            ("/slow 5", ChatCommand::Slow { seconds: 5 }),
            ("/SLOWOFF", ChatCommand::SlowOff),
            ("/r9kbeta", ChatCommand::UniqueChat(true)),
            ("/uniquechatoff", ChatCommand::UniqueChat(false)),
            ("/emoteonly", ChatCommand::EmoteOnly(true)),
            (
                "/color dodgerblue",
                ChatCommand::Color {
                    color: "#1E90FF".into(),
                },
            ),
            (
                "/color #00ff7f",
                ChatCommand::Color {
                    color: "#00FF7F".into(),
                },
            ),
            (
                "/automod add buy followers",
                ChatCommand::AutoModAdd {
                    phrase: "buy followers".into(),
                },
            ),
            (
                "/automod allow 17",
                ChatCommand::AutoModAllow { held_id: 17 },
            ),
            (
                "/vip carol",
                ChatCommand::Vip {
                    user: "carol".into(),
                },
            ),
            ("/mods", ChatCommand::Mods),
        ];
        for (text, want) in table {
            assert_eq!(&ok(text), want, "{text}");
        }
    }

    #[test]
    fn malformed_commands_get_twitchs_usage_ids() {
        let table = [
            ("/timeout", "usage_timeout"),
            ("/timeout bob 10x", "usage_timeout"),
            ("/timeout bob 0", "bad_timeout_duration"),
            ("/timeout bob 3w", "bad_timeout_duration"),
            ("/timeout b!b", "usage_timeout"),
            ("/ban", "usage_ban"),
            ("/delete", "usage_delete"),
            ("/delete a b", "usage_delete"),
            ("/delete <script>", "usage_delete"),
            ("/slow 0", "usage_slow_on"),
            ("/slow 121", "usage_slow_on"),
            ("/slow fast", "usage_slow_on"),
            ("/color", "usage_color"),
            ("/color mauve", "usage_color"),
            ("/color #12345", "usage_color"),
            ("/automod", "usage_automod"),
            ("/automod add", "usage_automod"),
            ("/automod allow x", "usage_automod"),
            ("/automod dance now", "usage_automod"),
            ("/mod", "usage_mod"),
        ];
        for (text, want) in table {
            assert_eq!(usage_id(text), want, "{text}");
        }
    }

    #[test]
    fn unknown_commands_are_not_parsed() {
        for text in ["/me waves", "/w bob hi", "/followers", "hello", "/"] {
            assert!(parse(text).is_none(), "{text}");
        }
    }

    #[test]
    fn roles_carry_twitchs_badges_and_mod_tag() {
        assert_eq!(Role::Broadcaster.badge(), "broadcaster/1");
        assert!(!Role::Broadcaster.mod_tag() && Role::Broadcaster.moderates());
        assert!(Role::Moderator.mod_tag() && Role::Moderator.moderates());
        assert!(!Role::Vip.moderates() && Role::Vip > Role::Viewer);
        for role in [Role::Viewer, Role::Vip, Role::Moderator, Role::Broadcaster] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
    }
}
