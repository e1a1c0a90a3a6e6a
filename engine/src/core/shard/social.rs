//! Typing indicators and reactions, whispers (the user directory, storage first, delivery to every connection or
//! the inbox), and room membership (JOIN/PART batches and NAMES).

use super::*;

/// A whisper waiting for its recipient's id, then for its durable write.
#[derive(Debug)]
pub(super) struct WhisperJob {
    submit: Box<WhisperSubmit>,
    stored: Option<Arc<Whisper>>,
    /// Set once the whisper is durable and its recipient had no connection: the inbox write is what is waited for.
    inboxing: bool,
}

/// Whispers handed to a connection from its inbox at login, at most.
pub const INBOX_READ_MAX: usize = 100;
/// Messages per room whose reactions are counted (the newest).
pub const REACTED_MESSAGES_MAX: usize = 1_000;
/// Different reactions one message may collect.
pub const REACTIONS_PER_MESSAGE_MAX: usize = 20;
/// Users counted per reaction of one message.
pub const REACTING_USERS_PER_EMOJI_MAX: usize = 100_000;

impl ShardCore {
    // ----- typing indicators and reactions -----

    pub(super) fn tag_from_conn(
        &mut self,
        id: ConnId,
        room: usize,
        typing: Option<Typing>,
        react: Option<Reaction>,
        now_ms: u64,
    ) {
        let Some(identity) = self.conn(id).and_then(|c| c.session.identity()) else {
            return;
        };
        let submit = Box::new(TagSubmit {
            room,
            origin: Origin {
                shard: self.cfg.shard,
                conn: id,
            },
            user_id: identity.user_id,
            login: identity.login.clone(),
            display_name: identity.display_name.clone(),
            typing,
            react,
        });
        self.send_peer(
            home_shard(room, self.cfg.shard_count),
            PeerMsg::Tag(submit),
            now_ms,
        );
    }

    /// A typing indicator or reaction at the room's home: a reaction counts once per user and emoji, for a message
    /// the home still has (others are dropped: no count for a message that is not there), and its counts are kept
    /// beside the message; both are relayed to the room.
    pub(super) fn tag_home(&mut self, submit: TagSubmit, now_ms: u64) {
        let room = submit.room;
        let TagSubmit {
            origin,
            user_id,
            login,
            display_name,
            typing,
            react,
            ..
        } = submit;
        let mut relayed_react = None;
        if let Some(reaction) = react {
            let home = self.home_room(room);
            let Some(message) = home.recent_by_id(&reaction.msg_id) else {
                // Only the room's newest messages take reactions; the sender is told, not left guessing.
                let reply = CommandReply {
                    kind: ReplyKind::NotFound,
                    msg_id: "msg_reaction_not_found",
                    text: format!(
                        "Your reaction was not sent: only the last {DELETABLE_MESSAGES_MAX} messages of a room take reactions."
                    ),
                    notice: true,
                };
                let msg = PeerMsg::CommandReply {
                    to: CommandFrom::Conn(origin),
                    room,
                    reply,
                };
                return self.send_peer(origin.shard, msg, now_ms);
            };
            let id = message.record.id;
            if !home.reactions.contains_key(&id) {
                if home.reaction_order.len() >= REACTED_MESSAGES_MAX
                    && let Some(oldest) = home.reaction_order.pop_front()
                {
                    home.reactions.remove(&oldest);
                }
                home.reaction_order.push_back(id);
            }
            let counts = home.reactions.entry(id).or_default();
            if !counts.contains_key(&reaction.emoji) && counts.len() >= REACTIONS_PER_MESSAGE_MAX {
                return;
            }
            let entry = counts.entry(reaction.emoji.clone()).or_default();
            if entry.users.len() < REACTING_USERS_PER_EMOJI_MAX {
                entry.users.insert(user_id);
            }
            let count = entry.count();
            let stored: BTreeMap<&str, u32> = counts
                .iter()
                .map(|(e, c)| (e.as_str(), c.count()))
                .collect();
            let value = json(&stored);
            let key = keys::reactions(&self.cfg.rooms[room].name, id);
            self.outputs.push_back(Output::PutSetting {
                ticket: 0,
                key,
                value: Some(value),
            });
            relayed_react = Some((reaction.emoji, reaction.msg_id, count));
        }
        if typing.is_none() && relayed_react.is_none() {
            return;
        }
        let event = RoomEvent::Tag {
            origin,
            login,
            display_name,
            user_id,
            typing,
            react: relayed_react,
        };
        self.broadcast(room, event, now_ms);
    }

    // ----- whispers -----

    pub(super) fn whisper_from_conn(
        &mut self,
        id: ConnId,
        to_login: String,
        text: String,
        now_ms: u64,
    ) {
        let Some(identity) = self.conn(id).and_then(|c| c.session.identity()) else {
            return;
        };
        let submit = Box::new(WhisperSubmit {
            from: Actor {
                user_id: identity.user_id,
                login: identity.login.clone(),
                display_name: identity.display_name.clone(),
                color: identity.color.clone(),
            },
            origin: Origin {
                shard: self.cfg.shard,
                conn: id,
            },
            to_login,
            text,
        });
        let home = user_home(&submit.to_login, self.cfg.shard_count);
        self.send_peer(home, PeerMsg::Whisper(submit), now_ms);
    }

    pub(super) fn refuse_whisper(
        &mut self,
        to: Origin,
        msg_id: &'static str,
        text: impl Into<std::borrow::Cow<'static, str>>,
        now_ms: u64,
    ) {
        let text = text.into();
        self.send_peer(
            to.shard,
            PeerMsg::WhisperRefused {
                conn: to.conn,
                msg_id,
                text,
            },
            now_ms,
        );
    }

    /// A whisper at the recipient's user home: rate limit, look the recipient up, store it; delivery follows in
    /// [`ShardCore::write_done`].
    pub(super) fn whisper_home(&mut self, submit: Box<WhisperSubmit>, now_ms: u64) {
        let origin = submit.origin;
        // Whispers have their own window per sender, apart from any room's.
        let rate_key = submit.from.user_id.wrapping_mul(1024).wrapping_add(1023);
        if !self.rate.try_acquire(rate_key, false, now_ms) {
            return self.refuse_whisper(
                origin,
                msg_id::RATELIMIT,
                "Your whisper was not sent because you are sending whispers too quickly.",
                now_ms,
            );
        }
        if self.whispers.len() >= COMMANDS_IN_FLIGHT_MAX {
            return self.refuse_whisper(origin, msg_id::TRY_AGAIN, BUSY_TEXT, now_ms);
        }
        let ticket = self.ticket();
        let login = submit.to_login.clone();
        self.whispers.insert(
            ticket,
            WhisperJob {
                submit,
                stored: None,
                inboxing: false,
            },
        );
        self.outputs
            .push_back(Output::ResolveUser { ticket, login });
    }

    pub(super) fn whisper_resolved(&mut self, job: WhisperJob, resolved: Resolved, now_ms: u64) {
        let origin = job.submit.origin;
        let to_id = match resolved {
            Ok(Some(user_id)) => user_id,
            Ok(None) => {
                return self.refuse_whisper(
                    origin,
                    "whisper_invalid_recipient",
                    "That user does not exist.",
                    now_ms,
                );
            }
            Err(_) => {
                return self.refuse_whisper(
                    origin,
                    msg_id::TRY_AGAIN,
                    COMMAND_UNAVAILABLE_TEXT,
                    now_ms,
                );
            }
        };
        let submit = job.submit;
        let whisper = Arc::new(Whisper {
            id: self.ids.next_id(now_ms).to_string(),
            from_id: submit.from.user_id,
            from_login: submit.from.login.clone(),
            from_display_name: submit.from.display_name.clone(),
            from_color: submit.from.color.clone(),
            to_id,
            to_login: submit.to_login.clone(),
            text: submit.text.clone(),
            sent_unix_ms: now_ms,
        });
        let key = keys::whisper(&whisper.thread_id(), &whisper.id);
        let value = json(&*whisper);
        let ticket = self.ticket();
        self.whispers.insert(
            ticket,
            WhisperJob {
                submit,
                stored: Some(whisper),
                inboxing: false,
            },
        );
        self.outputs.push_back(Output::PutSetting {
            ticket,
            key,
            value: Some(value),
        });
    }

    /// A whisper is durable (or, for an offline recipient, also in their inbox): deliver it to every connection of
    /// the recipient, acknowledge it to the sender (its own line back), and index the conversation for both. An
    /// offline recipient's inbox entry is written before the acknowledgement, so a login after the ack finds it.
    pub(super) fn whisper_stored(
        &mut self,
        mut job: WhisperJob,
        result: Result<(), StorageError>,
        now_ms: u64,
    ) {
        let origin = job.submit.origin;
        let whisper = job.stored.clone().expect("a stored whisper");
        if result.is_err() {
            if job.inboxing {
                // The whisper is stored; only the delivery at next login is lost. It still counts as unread.
                log::warn!(
                    "whisper {} could not be put in {}'s inbox",
                    whisper.id,
                    whisper.to_login
                );
            } else {
                return self.refuse_whisper(
                    origin,
                    msg_id::TRY_AGAIN,
                    COMMAND_UNAVAILABLE_TEXT,
                    now_ms,
                );
            }
        }
        let recipients = self
            .online
            .get(&whisper.to_login)
            .cloned()
            .unwrap_or_default();
        if recipients.is_empty() && !job.inboxing && result.is_ok() {
            job.inboxing = true;
            let ticket = self.ticket();
            let key = keys::inbox(whisper.to_id, &whisper.id);
            let value = json(&*whisper);
            self.whispers.insert(ticket, job);
            self.outputs.push_back(Output::PutSetting {
                ticket,
                key,
                value: Some(value),
            });
            return;
        }
        if job.inboxing && !recipients.is_empty() {
            // The recipient logged in while the inbox entry was written: hand it over now instead.
            self.outputs.push_back(Output::PutSetting {
                ticket: 0,
                key: keys::inbox(whisper.to_id, &whisper.id),
                value: None,
            });
        }
        for at in &recipients {
            let msg = PeerMsg::WhisperTo {
                conn: at.conn,
                whisper: whisper.clone(),
            };
            self.send_peer(at.shard, msg, now_ms);
        }
        let echo = PeerMsg::WhisperTo {
            conn: origin.conn,
            whisper: whisper.clone(),
        };
        self.send_peer(origin.shard, echo, now_ms);
        // The conversation list follows (ticket 0: nobody waits); a failed entry costs the listing, never the
        // whisper, which stays in its thread.
        for (key, login) in [
            (
                keys::conversation(whisper.to_id, whisper.from_id),
                &whisper.from_login,
            ),
            (
                keys::conversation(whisper.from_id, whisper.to_id),
                &whisper.to_login,
            ),
        ] {
            self.outputs.push_back(Output::PutSetting {
                ticket: 0,
                key,
                value: Some(json(&serde_json::json!({ "login": login }))),
            });
        }
    }

    /// Tells a user's home that connection `id` of theirs logged in (`online`) or closed.
    pub(super) fn tell_user_home(
        &mut self,
        id: ConnId,
        login: String,
        user_id: u64,
        online: bool,
        now_ms: u64,
    ) {
        let home = user_home(&login, self.cfg.shard_count);
        let at = Origin {
            shard: self.cfg.shard,
            conn: id,
        };
        let msg = PeerMsg::UserSeen {
            login,
            user_id,
            at,
            online,
        };
        self.send_peer(home, msg, now_ms);
    }

    /// One of a user's connections logged in or closed (at the user's home): keep the directory whispers are
    /// delivered by, and hand a new connection what waited in the user's inbox.
    pub(super) fn user_seen(&mut self, login: String, user_id: u64, at: Origin, online: bool) {
        if online {
            let entry = self.online.entry(login.clone()).or_default();
            if !entry.contains(&at) {
                entry.push(at);
            }
            let ticket = self.ticket();
            self.inbox_reads.insert(ticket, at);
            self.outputs.push_back(Output::ReadSettings {
                ticket,
                prefix: keys::inbox_prefix(user_id),
                limit: INBOX_READ_MAX,
            });
        } else if let Some(entry) = self.online.get_mut(&login) {
            entry.retain(|o| *o != at);
            if entry.is_empty() {
                self.online.remove(&login);
            }
        }
    }

    /// The answer to an [`Output::ReadSettings`]: a new connection's waiting whispers are delivered to it, then
    /// taken out of the inbox.
    pub fn settings_read(
        &mut self,
        ticket: u64,
        result: Result<Vec<(String, Vec<u8>)>, StorageError>,
        now_ms: u64,
    ) {
        let Some(at) = self.inbox_reads.remove(&ticket) else {
            return;
        };
        let Ok(entries) = result else {
            // Left in the inbox for the next login.
            return;
        };
        for (key, value) in entries {
            if self.inbox_removing.values().any(|k| *k == key) {
                continue;
            }
            let whisper = serde_json::from_slice::<Whisper>(&value);
            if let Ok(whisper) = whisper {
                let msg = PeerMsg::WhisperTo {
                    conn: at.conn,
                    whisper: Arc::new(whisper),
                };
                self.send_peer(at.shard, msg, now_ms);
            } else {
                log::warn!("inbox entry {key:?} is not a whisper; removed");
            }
            let ticket = self.ticket();
            self.inbox_removing.insert(ticket, key.clone());
            self.outputs.push_back(Output::PutSetting {
                ticket,
                key,
                value: None,
            });
        }
    }

    /// Writes a whisper to one of this shard's connections.
    pub(super) fn whisper_to_conn(&mut self, id: ConnId, whisper: &Whisper, now_ms: u64) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        let thread_id = whisper.thread_id();
        let line = crate::protocol::twitch::WhisperLine {
            from_login: &whisper.from_login,
            from_display_name: &whisper.from_display_name,
            from_color: &whisper.from_color,
            from_id: whisper.from_id,
            to_login: &whisper.to_login,
            text: &whisper.text,
            message_id: &whisper.id,
            thread_id: &thread_id,
            emotes: &crate::protocol::emotes::emotes_tag(&whisper.text),
        };
        let mut out = Vec::new();
        conn.session.encode_whisper(&line, &mut out);
        self.push_owned(id, out, now_ms);
    }

    // ----- membership -----

    /// A logged-in user's connection came to or left a room (home shard): the first connection is a JOIN, the
    /// last one leaving a PART, sent in the next batch.
    pub(super) fn presence(&mut self, room: usize, login: String, joined: bool) {
        let home = self.home_room(room);
        if joined {
            let count = home.members.entry(login.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                home.membership_pending.push((login, true));
            }
        } else if let Some(count) = home.members.get_mut(&login) {
            *count -= 1;
            if *count == 0 {
                home.members.remove(&login);
                home.membership_pending.push((login, false));
            }
        }
    }

    /// Sends each home room's batch of JOINs and PARTs to its subscribers (from the tick).
    pub(super) fn flush_membership(&mut self, now_ms: u64) {
        for room in 0..self.home.len() {
            let Some(home) = self.home[room].as_mut() else {
                continue;
            };
            let listed = home.members.len() <= MEMBERSHIP_LIST_MAX;
            if home.membership_pending.is_empty() && listed == home.members_listed {
                continue;
            }
            let pending = std::mem::take(&mut home.membership_pending);
            let was_listed = std::mem::replace(&mut home.members_listed, listed);
            if !listed && !was_listed {
                continue;
            }
            // A user who came and went within one batch is neither.
            let mut joined = Vec::new();
            let mut parted = Vec::new();
            for (login, join) in pending {
                let (this, other) = if join {
                    (&mut joined, &mut parted)
                } else {
                    (&mut parted, &mut joined)
                };
                if let Some(at) = other.iter().position(|l| *l == login) {
                    other.swap_remove(at);
                } else {
                    this.push(login);
                }
            }
            self.broadcast(
                room,
                RoomEvent::Membership {
                    joined,
                    parted,
                    listed,
                },
                now_ms,
            );
        }
    }
}
