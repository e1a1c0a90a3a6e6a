//! A room's moderation state as its home shard keeps it (bans and timeouts, roles, chat modes, AutoMod and the
//! messages it holds), the copy every shard with viewers keeps for JOIN (roles and modes), and the durable form of
//! each piece (settings keys with JSON values).
//!
//! Every change is written to the store before it takes effect: the home asks for the write, and only when it is
//! durable does it apply the change, tell the subscribed shards and answer the moderator. So a ban that was
//! confirmed survives a restart, and one that failed never half-happened.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::automod::{AutoMod, AutoModConfig, AutoModReason};
use super::{Origin, Submit};
use crate::config::AutoModMode;
use crate::protocol::commands::Role;
use crate::protocol::twitch::{ReplyTags, RoomModes};

use super::RoomInfo;

/// Granted roles (`/mod`, `/vip` and their undoing) kept per room.
pub const ROLES_PER_ROOM_MAX: usize = 1_000;
/// Bans and timeouts kept per room.
pub const BANS_PER_ROOM_MAX: usize = 100_000;
/// Users whose last send time slow mode remembers per room; the oldest are forgotten first.
pub const SLOW_USERS_MAX: usize = 100_000;
/// Recent message fingerprints unique-chat mode compares against.
pub const R9K_MESSAGES_MAX: usize = 1_000;
/// Messages AutoMod may hold per room; past it the oldest is denied.
pub const HELD_PER_ROOM_MAX: usize = 100;
/// Settings read per room at start.
pub const SETTINGS_PER_ROOM_MAX: usize =
    BANS_PER_ROOM_MAX + ROLES_PER_ROOM_MAX + HELD_PER_ROOM_MAX + 16;

/// A ban (`until_unix_ms` None) or a timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub login: String,
    pub until_unix_ms: Option<u64>,
    #[serde(default)]
    pub reason: String,
}

impl Ban {
    pub fn active(&self, now_ms: u64) -> bool {
        self.until_unix_ms.is_none_or(|until| until > now_ms)
    }
}

/// A role granted (or taken away) in the room by the broadcaster; it overrides the rooms file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub login: String,
    pub role: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StoredModes {
    #[serde(default)]
    pub slow: u32,
    #[serde(default)]
    pub emote_only: bool,
    #[serde(default)]
    pub r9k: bool,
}

impl From<RoomModes> for StoredModes {
    fn from(m: RoomModes) -> StoredModes {
        StoredModes {
            slow: m.slow_secs,
            emote_only: m.emote_only,
            r9k: m.r9k,
        }
    }
}

impl From<StoredModes> for RoomModes {
    fn from(m: StoredModes) -> RoomModes {
        RoomModes {
            slow_secs: m.slow,
            emote_only: m.emote_only,
            r9k: m.r9k,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StoredAutoMod {
    pub phrases: Vec<String>,
}

/// A user's profile: the display name (the case they chose) and chat colour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Profile {
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub color: String,
}

/// A reply's link as stored (`reply/{room}/{id}`): the tags it was delivered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReply {
    pub parent_msg_id: String,
    pub parent_user_id: u64,
    pub parent_login: String,
    pub parent_display_name: String,
    pub parent_body: String,
    pub thread_msg_id: String,
    pub thread_login: String,
}

impl From<&ReplyTags> for StoredReply {
    fn from(r: &ReplyTags) -> StoredReply {
        StoredReply {
            parent_msg_id: r.parent_msg_id.clone(),
            parent_user_id: r.parent_user_id,
            parent_login: r.parent_login.clone(),
            parent_display_name: r.parent_display_name.clone(),
            parent_body: r.parent_body.clone(),
            thread_msg_id: r.thread_msg_id.clone(),
            thread_login: r.thread_login.clone(),
        }
    }
}

impl From<StoredReply> for ReplyTags {
    fn from(r: StoredReply) -> ReplyTags {
        ReplyTags {
            parent_msg_id: r.parent_msg_id,
            parent_user_id: r.parent_user_id,
            parent_login: r.parent_login,
            parent_display_name: r.parent_display_name,
            parent_body: r.parent_body,
            thread_msg_id: r.thread_msg_id,
            thread_login: r.thread_login,
        }
    }
}

/// Settings keys. `room/{room}/…` is read back per room at start.
pub mod keys {
    pub fn room_prefix(room: &str) -> String {
        format!("room/{room}/")
    }
    pub fn modes(room: &str) -> String {
        format!("room/{room}/modes")
    }
    pub fn ban(room: &str, user_id: u64) -> String {
        format!("room/{room}/ban/{user_id}")
    }
    pub fn held(room: &str, held_id: u64) -> String {
        format!("room/{room}/held/{held_id}")
    }
    pub fn role(room: &str, user_id: u64) -> String {
        format!("room/{room}/role/{user_id}")
    }
    pub fn automod(room: &str) -> String {
        format!("room/{room}/automod")
    }
    pub fn profile(user_id: u64) -> String {
        format!("user/{user_id}/profile")
    }
    /// A message's reaction counts, beside it.
    pub fn reactions(room: &str, id: twitchy_storage::MessageId) -> String {
        format!("react/{room}/{id}")
    }
    /// One whisper in its two users' thread.
    pub fn whisper(thread_id: &str, id: &str) -> String {
        format!("whisper/{thread_id}/{id}")
    }
    pub fn whisper_thread_prefix(thread_id: &str) -> String {
        format!("whisper/{thread_id}/")
    }
    /// That `user_id` has a conversation with `peer_id` (for the list of conversations).
    pub fn conversation(user_id: u64, peer_id: u64) -> String {
        format!("wconv/{user_id}/{peer_id}")
    }
    pub fn conversations_prefix(user_id: u64) -> String {
        format!("wconv/{user_id}/")
    }
    /// How far `user_id` has read the conversation with `peer_id` (a whisper id).
    pub fn read_marker(user_id: u64, peer_id: u64) -> String {
        format!("wread/{user_id}/{peer_id}")
    }
    pub fn read_markers_prefix(user_id: u64) -> String {
        format!("wread/{user_id}/")
    }
    /// A whisper not yet delivered to any connection of `user_id`.
    pub fn inbox(user_id: u64, id: &str) -> String {
        format!("inbox/{user_id}/{id}")
    }
    pub fn inbox_prefix(user_id: u64) -> String {
        format!("inbox/{user_id}/")
    }
    /// A reply's link to its parent, beside the message.
    pub fn reply(room: &str, id: twitchy_storage::MessageId) -> String {
        format!("reply/{room}/{id}")
    }
}

/// The role of a user in a room: the broadcaster from the rooms file, else a granted role, else the file's lists.
pub fn role_of(info: &RoomInfo, granted: &HashMap<u64, Role>, user_id: u64, login: &str) -> Role {
    if info.broadcaster.as_deref() == Some(login) {
        return Role::Broadcaster;
    }
    if let Some(&role) = granted.get(&user_id) {
        return role;
    }
    if info.moderators.iter().any(|m| m == login) {
        Role::Moderator
    } else if info.vips.iter().any(|v| v == login) {
        Role::Vip
    } else {
        Role::Viewer
    }
}

/// What every shard with viewers in a room knows of it, for JOIN: granted roles, modes and (while the room is small
/// enough to list) its logged-in users.
#[derive(Debug, Clone, Default)]
pub struct RoomView {
    pub modes: RoomModes,
    pub granted: HashMap<u64, Role>,
    pub members: Option<std::collections::BTreeSet<String>>,
}

/// A message AutoMod holds until a moderator allows or denies it.
#[derive(Debug)]
pub struct Held {
    pub submit: Box<Submit>,
    pub reason: AutoModReason,
}

/// A held message as stored (`room/{room}/held/{held_id}`), so a restart does not lose the moderators' queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHeld {
    pub user_id: u64,
    pub login: String,
    pub display_name: String,
    pub color: String,
    pub text: String,
    #[serde(default)]
    pub action: bool,
    #[serde(default)]
    pub reply_parent: Option<String>,
    pub reason: String,
}

impl StoredHeld {
    pub fn of(held: &Held) -> StoredHeld {
        let s = &held.submit;
        StoredHeld {
            user_id: s.user_id,
            login: s.login.clone(),
            display_name: s.display_name.clone(),
            color: s.color.clone(),
            text: s.text.clone(),
            action: s.action,
            reply_parent: s.reply_parent.clone(),
            reason: held.reason.as_str().to_owned(),
        }
    }
}

/// Why a send is refused by the room's rules: Twitch's `msg-id` and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub msg_id: &'static str,
    pub text: String,
}

/// What the room's rules say about a send.
#[derive(Debug, PartialEq, Eq)]
pub enum SendVerdict {
    Accept,
    Refuse(Refusal),
    /// AutoMod holds it for the moderators.
    Hold(AutoModReason),
}

/// The home shard's moderation state of one room.
#[derive(Debug)]
pub struct RoomModeration {
    /// The room's index, for messages restored from the held list.
    room: usize,
    pub view: RoomView,
    /// Logins of granted roles, for `/mods` and `/vips`.
    pub granted_logins: HashMap<u64, String>,
    pub bans: HashMap<u64, Ban>,
    automod_mode: AutoModMode,
    automod: AutoMod,
    slow_last_ms: HashMap<u64, u64>,
    slow_order: VecDeque<(u64, u64)>,
    r9k_seen: HashSet<u64>,
    r9k_order: VecDeque<u64>,
    pub held: BTreeMap<u64, Held>,
}

fn fingerprint(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    for word in text.split_whitespace() {
        word.to_lowercase().hash(&mut hasher);
    }
    hasher.finish()
}

impl RoomModeration {
    pub fn new(room: usize, info: &RoomInfo) -> RoomModeration {
        let mut automod = AutoMod::new(AutoModConfig::default());
        for phrase in &info.banned_phrases {
            if let Err(err) = automod.add_phrase(phrase) {
                log::warn!(
                    "room {}: banned phrase {phrase:?} ignored: {err}",
                    info.name
                );
            }
        }
        RoomModeration {
            room,
            view: RoomView::default(),
            granted_logins: HashMap::new(),
            bans: HashMap::new(),
            automod_mode: info.automod,
            automod,
            slow_last_ms: HashMap::new(),
            slow_order: VecDeque::new(),
            r9k_seen: HashSet::new(),
            r9k_order: VecDeque::new(),
            held: BTreeMap::new(),
        }
    }

    pub fn automod_mode(&self) -> AutoModMode {
        self.automod_mode
    }

    pub fn automod(&mut self) -> &mut AutoMod {
        &mut self.automod
    }

    pub fn phrases(&self) -> Vec<String> {
        self.automod.phrases().to_vec()
    }

    /// Loads one stored setting of the room (key without the `room/{room}/` prefix). Unknown or unreadable
    /// entries are logged and skipped: a bad entry must not keep the room from starting.
    pub fn restore(&mut self, key: &str, value: &[u8], now_ms: u64) {
        let user_id = |rest: &str| rest.parse::<u64>().ok();
        let result: Result<(), String> = (|| {
            if key == "modes" {
                let modes: StoredModes =
                    serde_json::from_slice(value).map_err(|e| e.to_string())?;
                self.view.modes = modes.into();
            } else if key == "automod" {
                let stored: StoredAutoMod =
                    serde_json::from_slice(value).map_err(|e| e.to_string())?;
                for phrase in stored.phrases {
                    self.automod
                        .add_phrase(&phrase)
                        .map_err(|e| e.to_string())?;
                }
            } else if let Some(rest) = key.strip_prefix("ban/") {
                let id = user_id(rest).ok_or("bad user id")?;
                let ban: Ban = serde_json::from_slice(value).map_err(|e| e.to_string())?;
                if ban.active(now_ms) {
                    self.bans.insert(id, ban);
                }
            } else if let Some(rest) = key.strip_prefix("held/") {
                let held_id = rest.parse::<u64>().map_err(|e| e.to_string())?;
                let stored: StoredHeld =
                    serde_json::from_slice(value).map_err(|e| e.to_string())?;
                let reason = AutoModReason::parse(&stored.reason).ok_or("unknown reason")?;
                let held = Held {
                    submit: Box::new(Submit {
                        room: self.room,
                        // The author's connection did not survive the restart; shard 0 has no such connection.
                        origin: Origin {
                            shard: 0,
                            conn: u64::MAX,
                        },
                        user_id: stored.user_id,
                        login: stored.login,
                        display_name: stored.display_name,
                        color: stored.color,
                        text: stored.text,
                        client_nonce: None,
                        sent_ms: now_ms,
                        action: stored.action,
                        reply_parent: stored.reply_parent,
                    }),
                    reason,
                };
                self.held.insert(held_id, held);
            } else if let Some(rest) = key.strip_prefix("role/") {
                let id = user_id(rest).ok_or("bad user id")?;
                let grant: Grant = serde_json::from_slice(value).map_err(|e| e.to_string())?;
                let role = Role::parse(&grant.role).ok_or("unknown role")?;
                self.set_role(id, &grant.login, role);
            } else {
                return Err("unknown key".into());
            }
            Ok(())
        })();
        if let Err(err) = result {
            log::warn!("moderation setting {key:?} skipped: {err}");
        }
    }

    pub fn set_role(&mut self, user_id: u64, login: &str, role: Role) {
        self.view.granted.insert(user_id, role);
        self.granted_logins.insert(user_id, login.to_owned());
    }

    /// Logins holding `role`, from the rooms file and grants, sorted.
    pub fn logins_with(&self, info: &RoomInfo, role: Role) -> Vec<String> {
        let file = match role {
            Role::Moderator => &info.moderators,
            Role::Vip => &info.vips,
            _ => return Vec::new(),
        };
        let revoked: HashSet<&str> = self
            .view
            .granted
            .iter()
            .filter(|(_, r)| **r != role)
            .filter_map(|(id, _)| self.granted_logins.get(id).map(String::as_str))
            .collect();
        let mut logins: Vec<String> = file
            .iter()
            .filter(|login| !revoked.contains(login.as_str()))
            .cloned()
            .chain(
                self.view
                    .granted
                    .iter()
                    .filter(|(_, r)| **r == role)
                    .filter_map(|(id, _)| self.granted_logins.get(id).cloned()),
            )
            .collect();
        logins.sort();
        logins.dedup();
        logins
    }

    /// The room's rules for a send by a user with `role`, before rate limiting. Records nothing: call
    /// [`RoomModeration::accepted`] when the message goes ahead.
    pub fn check_send(
        &mut self,
        room: &str,
        user_id: u64,
        role: Role,
        text: &str,
        now_ms: u64,
    ) -> SendVerdict {
        if let Some(ban) = self.bans.get(&user_id) {
            if ban.active(now_ms) {
                return SendVerdict::Refuse(match ban.until_unix_ms {
                    None => Refusal {
                        msg_id: "msg_banned",
                        text: format!("You are permanently banned from talking in {room}."),
                    },
                    Some(until) => Refusal {
                        msg_id: "msg_timedout",
                        text: format!(
                            "You are timed out for {} more seconds.",
                            until.saturating_sub(now_ms).div_ceil(1000)
                        ),
                    },
                });
            }
            self.bans.remove(&user_id);
        }
        if role.moderates() {
            return SendVerdict::Accept;
        }
        let modes = self.view.modes;
        if modes.slow_secs > 0
            && role < Role::Vip
            && let Some(&last_ms) = self.slow_last_ms.get(&user_id)
        {
            let wait_ms = u64::from(modes.slow_secs) * 1000;
            let since_ms = now_ms.saturating_sub(last_ms);
            if since_ms < wait_ms {
                return SendVerdict::Refuse(Refusal {
                    msg_id: "msg_slowmode",
                    text: format!(
                        "This room is in slow mode and you are sending messages too quickly. You will be able to \
                         talk again in {} seconds.",
                        (wait_ms - since_ms).div_ceil(1000)
                    ),
                });
            }
        }
        if modes.emote_only && !crate::protocol::emotes::is_emote_only(text) {
            return SendVerdict::Refuse(Refusal {
                msg_id: "msg_emoteonly",
                text: "This room is in emote-only mode. You can find your currently available emoticons using the \
                       smiley in the chat text area."
                    .into(),
            });
        }
        if modes.r9k && self.r9k_seen.contains(&fingerprint(text)) {
            return SendVerdict::Refuse(Refusal {
                msg_id: "msg_r9k",
                text: "The message you are attempting to send is a duplicate of a recent message. Please try \
                       something more unique."
                    .into(),
            });
        }
        if self.automod_mode != AutoModMode::Off
            && let Err(reason) = self.automod.check(user_id, text, role >= Role::Vip, now_ms)
        {
            return match self.automod_mode {
                AutoModMode::Hold => SendVerdict::Hold(reason),
                _ => SendVerdict::Refuse(Refusal {
                    msg_id: "msg_rejected_mandatory",
                    text: "Your message wasn't posted due to conflicts with the channel's moderation settings."
                        .into(),
                }),
            };
        }
        SendVerdict::Accept
    }

    /// A send went ahead: slow mode and unique chat remember it.
    pub fn accepted(&mut self, user_id: u64, text: &str, now_ms: u64) {
        if self.view.modes.slow_secs > 0 {
            if self.slow_order.len() >= SLOW_USERS_MAX
                && let Some((old_user, old_ms)) = self.slow_order.pop_front()
                && self.slow_last_ms.get(&old_user) == Some(&old_ms)
            {
                self.slow_last_ms.remove(&old_user);
            }
            self.slow_last_ms.insert(user_id, now_ms);
            self.slow_order.push_back((user_id, now_ms));
        }
        let print = fingerprint(text);
        if self.r9k_seen.insert(print) {
            self.r9k_order.push_back(print);
            if self.r9k_order.len() > R9K_MESSAGES_MAX
                && let Some(old) = self.r9k_order.pop_front()
            {
                self.r9k_seen.remove(&old);
            }
        }
    }

    /// Holds a message for the moderators; returns the held message evicted to make room (denied), if any.
    pub fn hold(&mut self, held_id: u64, held: Held) -> Option<(u64, Held)> {
        let evicted = if self.held.len() >= HELD_PER_ROOM_MAX {
            self.held.pop_first()
        } else {
            None
        };
        self.held.insert(held_id, held);
        evicted
    }

    /// The origin of a held message, to tell its author.
    pub fn held_origin(held: &Held) -> Origin {
        held.submit.origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RoomInfo {
        RoomInfo {
            name: "lobby".into(),
            id: 1,
            style: "pirate".into(),
            moderators: vec!["mo".into()],
            broadcaster: Some("bea".into()),
            vips: vec!["vic".into()],
            automod: AutoModMode::Block,
            banned_phrases: vec!["buy followers".into()],
        }
    }

    #[test]
    fn roles_come_from_the_file_and_grants_override_them() {
        let info = info();
        let mut room = RoomModeration::new(0, &info);
        let granted = |room: &RoomModeration| room.view.granted.clone();
        assert_eq!(role_of(&info, &granted(&room), 1, "bea"), Role::Broadcaster);
        assert_eq!(role_of(&info, &granted(&room), 2, "mo"), Role::Moderator);
        assert_eq!(role_of(&info, &granted(&room), 3, "vic"), Role::Vip);
        assert_eq!(role_of(&info, &granted(&room), 4, "zed"), Role::Viewer);
        room.set_role(2, "mo", Role::Viewer);
        room.set_role(4, "zed", Role::Moderator);
        assert_eq!(role_of(&info, &granted(&room), 2, "mo"), Role::Viewer);
        assert_eq!(role_of(&info, &granted(&room), 4, "zed"), Role::Moderator);
        assert_eq!(room.logins_with(&info, Role::Moderator), ["zed"]);
        assert_eq!(room.logins_with(&info, Role::Vip), ["vic"]);
        // The broadcaster cannot be demoted by a grant.
        room.set_role(1, "bea", Role::Viewer);
        assert_eq!(role_of(&info, &granted(&room), 1, "bea"), Role::Broadcaster);
    }

    #[test]
    fn bans_and_timeouts_refuse_until_they_end() {
        let mut room = RoomModeration::new(0, &info());
        room.bans.insert(
            7,
            Ban {
                login: "tim".into(),
                until_unix_ms: Some(10_000),
                reason: String::new(),
            },
        );
        room.bans.insert(
            8,
            Ban {
                login: "bob".into(),
                until_unix_ms: None,
                reason: String::new(),
            },
        );
        let refused = |room: &mut RoomModeration, user, now| match room.check_send(
            "lobby",
            user,
            Role::Viewer,
            "hello there",
            now,
        ) {
            SendVerdict::Refuse(r) => Some((r.msg_id, r.text)),
            _ => None,
        };
        assert_eq!(
            refused(&mut room, 7, 1_500),
            Some((
                "msg_timedout",
                "You are timed out for 9 more seconds.".into()
            ))
        );
        assert_eq!(refused(&mut room, 7, 10_000), None);
        assert!(!room.bans.contains_key(&7), "an ended timeout is forgotten");
        assert_eq!(refused(&mut room, 8, u64::MAX / 2).unwrap().0, "msg_banned");
    }

    #[test]
    fn modes_refuse_with_twitchs_ids_and_exempt_the_right_roles() {
        let mut room = RoomModeration::new(
            0,
            &RoomInfo {
                automod: AutoModMode::Off,
                ..info()
            },
        );
        room.view.modes = RoomModes {
            slow_secs: 10,
            emote_only: false,
            r9k: true,
        };
        let verdict = |room: &mut RoomModeration, user, role, text: &str, now| match room
            .check_send("lobby", user, role, text, now)
        {
            SendVerdict::Accept => "accept",
            SendVerdict::Refuse(r) => r.msg_id,
            SendVerdict::Hold(_) => "hold",
        };
        assert_eq!(
            verdict(&mut room, 1, Role::Viewer, "first words", 0),
            "accept"
        );
        room.accepted(1, "first words", 0);
        assert_eq!(
            verdict(&mut room, 1, Role::Viewer, "second", 5_000),
            "msg_slowmode"
        );
        assert_eq!(verdict(&mut room, 1, Role::Vip, "second", 5_000), "accept");
        assert_eq!(
            verdict(&mut room, 1, Role::Viewer, "second", 10_000),
            "accept"
        );
        assert_eq!(
            verdict(&mut room, 2, Role::Viewer, "First   WORDS", 10_000),
            "msg_r9k"
        );
        assert_eq!(
            verdict(&mut room, 2, Role::Moderator, "first words", 10_000),
            "accept"
        );
        room.view.modes.emote_only = true;
        assert_eq!(
            verdict(&mut room, 3, Role::Viewer, "hi twiGG", 10_000),
            "msg_emoteonly"
        );
        assert_eq!(
            verdict(&mut room, 3, Role::Viewer, "twiGG twiHype", 10_000),
            "accept"
        );
    }

    #[test]
    fn automod_blocks_or_holds_by_the_rooms_setting() {
        let mut block = RoomModeration::new(0, &info());
        match block.check_send("lobby", 5, Role::Viewer, "come buy followers now", 0) {
            SendVerdict::Refuse(r) => assert_eq!(r.msg_id, "msg_rejected_mandatory"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            block.check_send("lobby", 5, Role::Moderator, "come buy followers now", 0),
            SendVerdict::Accept
        );
        let mut hold = RoomModeration::new(
            0,
            &RoomInfo {
                automod: AutoModMode::Hold,
                ..info()
            },
        );
        assert_eq!(
            hold.check_send("lobby", 5, Role::Viewer, "come buy followers now", 0),
            SendVerdict::Hold(AutoModReason::Phrase)
        );
    }

    #[test]
    fn restore_reads_back_what_was_stored() {
        let mut room = RoomModeration::new(0, &info());
        let modes = StoredModes {
            slow: 30,
            emote_only: true,
            r9k: false,
        };
        room.restore("modes", &serde_json::to_vec(&modes).unwrap(), 0);
        let ban = Ban {
            login: "bob".into(),
            until_unix_ms: None,
            reason: "spam".into(),
        };
        room.restore("ban/9", &serde_json::to_vec(&ban).unwrap(), 0);
        let expired = Ban {
            login: "tim".into(),
            until_unix_ms: Some(5),
            reason: String::new(),
        };
        room.restore("ban/10", &serde_json::to_vec(&expired).unwrap(), 6);
        let grant = Grant {
            login: "zed".into(),
            role: "vip".into(),
        };
        room.restore("role/4", &serde_json::to_vec(&grant).unwrap(), 0);
        let phrases = StoredAutoMod {
            phrases: vec!["free gift".into()],
        };
        room.restore("automod", &serde_json::to_vec(&phrases).unwrap(), 0);
        room.restore("nonsense", b"{}", 0);
        room.restore("ban/x", b"{}", 0);
        assert_eq!(room.view.modes.slow_secs, 30);
        assert!(room.view.modes.emote_only);
        assert_eq!(room.bans.get(&9), Some(&ban));
        assert!(!room.bans.contains_key(&10));
        assert_eq!(room.view.granted.get(&4), Some(&Role::Vip));
        assert!(room.phrases().iter().any(|p| p.contains("free gift")));
    }
}
