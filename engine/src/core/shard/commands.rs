//! Chat commands at the core: routing (personal commands on the sender's shard, room commands to the room's
//! home), permission and target checks at the home, the durable write, then the change, the room event and the
//! answer. Also the room events' delivery to each shard's viewers and the moderation state's restore.

use super::*;

/// What a command does once its write is durable.
#[derive(Debug)]
pub(super) enum Effect {
    Ban {
        user_id: u64,
        ban: Ban,
    },
    Unban {
        user_id: u64,
    },
    Role {
        user_id: u64,
        login: String,
        role: Role,
    },
    Modes(crate::protocol::twitch::RoomModes),
    Phrases {
        add: bool,
        phrase: String,
    },
    Delete {
        id: MessageId,
    },
    Color {
        user_id: u64,
        color: String,
    },
}

/// A command's durable write: the setting (`None` deletes it), what it changes, and its answer.
pub(super) type SettingWrite = (String, Option<Vec<u8>>, Effect, CommandReply);

/// A command waiting for a user lookup or its durable write.
#[derive(Debug)]
pub(super) struct CommandOp {
    submit: Box<CommandSubmit>,
    effect: Option<Effect>,
    success: Option<CommandReply>,
}

/// The role a message's sender had when it was sent, from its badges.
pub(super) fn role_of_message(message: &ChatMessage) -> Role {
    let badges = &message.record.badges;
    [Role::Broadcaster, Role::Moderator, Role::Vip]
        .into_iter()
        .find(|role| badges.split(',').any(|b| b == role.badge()))
        .unwrap_or(Role::Viewer)
}

/// NOTICE text when a command could not be saved.
pub(super) const COMMAND_UNAVAILABLE_TEXT: &str =
    "That could not be saved just now; please try again.";

pub(super) fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("settings serialise")
}

pub(super) fn done(msg_id: &'static str, text: String) -> CommandReply {
    CommandReply {
        kind: ReplyKind::Done,
        msg_id,
        text,
        notice: true,
    }
}

pub(super) fn failed(kind: ReplyKind, msg_id: &'static str, text: String) -> CommandReply {
    CommandReply {
        kind,
        msg_id,
        text,
        notice: true,
    }
}

/// The store could not look up or save what a command needs: try again.
pub(super) fn not_saved() -> CommandReply {
    failed(
        ReplyKind::Unavailable,
        msg_id::TRY_AGAIN,
        COMMAND_UNAVAILABLE_TEXT.into(),
    )
}

pub(super) fn no_permission() -> CommandReply {
    failed(
        ReplyKind::Forbidden,
        "no_permission",
        "You don't have permission to perform that action.".into(),
    )
}

impl ShardCore {
    // ----- chat commands -----

    /// A chat command from this shard's connection or API request: the user's own settings (`/color`) are done
    /// here, room commands go to the room's home.
    pub(super) fn command(
        &mut self,
        from: CommandFrom,
        room: usize,
        actor: Actor,
        command: ChatCommand,
        now_ms: u64,
    ) {
        let submit = Box::new(CommandSubmit {
            room,
            from,
            actor,
            command,
        });
        if submit.command.is_personal() {
            return self.personal_command(submit, now_ms);
        }
        let home = home_shard(room, self.cfg.shard_count);
        self.send_peer(home, PeerMsg::Command(submit), now_ms);
    }

    /// A command from the HTTP API by an authenticated user; answered with [`Output::ApiReply`] and `ticket`.
    pub fn api_command(
        &mut self,
        ticket: u64,
        room: usize,
        actor: Actor,
        command: ChatCommand,
        now_ms: u64,
    ) {
        let from = CommandFrom::Api {
            shard: self.cfg.shard,
            ticket,
        };
        self.command(from, room, actor, command, now_ms);
    }

    pub(super) fn personal_command(&mut self, submit: Box<CommandSubmit>, now_ms: u64) {
        let ChatCommand::Color { color } = &submit.command else {
            unreachable!("only /color is personal");
        };
        let profile = Profile {
            display_name: submit.actor.display_name.clone(),
            color: color.clone(),
        };
        let effect = Effect::Color {
            user_id: submit.actor.user_id,
            color: color.clone(),
        };
        let key = keys::profile(submit.actor.user_id);
        let success = done("color_changed", "Your color has been changed.".into());
        self.write_setting(submit, key, Some(json(&profile)), effect, success, now_ms);
    }

    /// Answers a command, on whichever shard it came from.
    pub(super) fn answer(&mut self, submit: &CommandSubmit, reply: CommandReply, now_ms: u64) {
        let metric = if reply.kind == ReplyKind::Done {
            &self.cfg.metrics[self.cfg.shard].commands_total
        } else {
            &self.cfg.metrics[self.cfg.shard].commands_refused_total
        };
        ShardMetrics::inc(metric);
        self.send_peer(
            submit.from.shard(),
            PeerMsg::CommandReply {
                to: submit.from,
                room: submit.room,
                reply,
            },
            now_ms,
        );
    }

    pub(super) fn command_answered(
        &mut self,
        to: CommandFrom,
        room: usize,
        reply: CommandReply,
        now_ms: u64,
    ) {
        match to {
            CommandFrom::Api { ticket, .. } => {
                self.outputs.push_back(Output::ApiReply { ticket, reply });
            }
            CommandFrom::Conn(origin) => {
                if !reply.notice {
                    return;
                }
                let name = &self.cfg.rooms[room].name;
                let Some(conn) = conn_in(&mut self.slots, origin.conn) else {
                    return;
                };
                let mut out = Vec::new();
                conn.session
                    .encode_notice(Some(name), reply.msg_id, &reply.text, &mut out);
                ShardMetrics::inc(&self.cfg.metrics[self.cfg.shard].notices_total);
                self.push_owned(origin.conn, out, now_ms);
            }
        }
    }

    /// A room command at the room's home: permission, then a user lookup if it names one, then the durable
    /// write, and only then the change, the event and the answer.
    pub(super) fn moderate(&mut self, submit: Box<CommandSubmit>, now_ms: u64) {
        let room = submit.room;
        let info = &self.cfg.rooms[room];
        let home = self.home[room].as_mut().expect("commands go to the home");
        let actor = &submit.actor;
        let role = role_of(
            info,
            &home.moderation.view.granted,
            actor.user_id,
            &actor.login,
        );
        let room_name = info.name.clone();
        let needs = match &submit.command {
            ChatCommand::Mods | ChatCommand::Vips | ChatCommand::Chatters { .. } => Role::Viewer,
            // Authors may delete their own messages; the rest is checked with the message.
            ChatCommand::Delete { .. } => Role::Viewer,
            ChatCommand::Mod { .. }
            | ChatCommand::Unmod { .. }
            | ChatCommand::Vip { .. }
            | ChatCommand::Unvip { .. } => Role::Broadcaster,
            _ => Role::Moderator,
        };
        if role < needs {
            return self.answer(&submit, no_permission(), now_ms);
        }
        // Commands count against the sender's message rate, as on Twitch.
        let rate_key = actor.user_id.wrapping_mul(1024).wrapping_add(room as u64);
        if !submit.command.is_query() && !self.rate.try_acquire(rate_key, role.moderates(), now_ms)
        {
            let reply = failed(
                ReplyKind::Unavailable,
                msg_id::RATELIMIT,
                "Your message was not sent because you are sending messages too quickly.".into(),
            );
            return self.answer(&submit, reply, now_ms);
        }
        if self.commands.len() >= COMMANDS_IN_FLIGHT_MAX {
            let reply = failed(ReplyKind::Unavailable, msg_id::TRY_AGAIN, BUSY_TEXT.into());
            return self.answer(&submit, reply, now_ms);
        }
        let moderation = &mut home.moderation;
        match &submit.command {
            ChatCommand::Chatters { after, limit } => {
                let mut logins: Vec<&String> = home
                    .members
                    .keys()
                    .filter(|l| l.as_str() > after.as_str())
                    .collect();
                logins.sort_unstable();
                let more = logins.len() > *limit;
                logins.truncate(*limit);
                let registered: u64 = home.members.values().map(|&n| u64::from(n)).sum();
                let viewers = self.cfg.viewers.total(room);
                let state = serde_json::json!({
                    "chatters": logins,
                    "next": if more { logins.last().map(|l| l.as_str()) } else { None },
                    "logged_in": home.members.len(),
                    "anonymous": viewers.saturating_sub(registered),
                    "connections": viewers,
                });
                let reply = done("chatters", state.to_string());
                self.answer(&submit, reply, now_ms)
            }
            ChatCommand::ModerationState => {
                let state = self.moderation_json(room, now_ms).expect("home room");
                let reply = done("moderation_state", state.to_string());
                self.answer(&submit, reply, now_ms)
            }
            ChatCommand::Mods | ChatCommand::Vips => {
                let (listed, some_id, none_id, what) = if submit.command == ChatCommand::Mods {
                    (Role::Moderator, "room_mods", "no_mods", "moderators")
                } else {
                    (Role::Vip, "vips_success", "no_vips", "VIPs")
                };
                let logins = moderation.logins_with(info, listed);
                let reply = if logins.is_empty() {
                    done(none_id, format!("There are no {what} of this channel."))
                } else {
                    done(
                        some_id,
                        format!("The {what} of this channel are: {}.", logins.join(", ")),
                    )
                };
                self.answer(&submit, reply, now_ms)
            }
            ChatCommand::Clear => {
                self.broadcast(room, RoomEvent::Clear { user: None }, now_ms);
                let mut reply = done("clear_success", "The chat was cleared.".into());
                reply.notice = false;
                self.answer(&submit, reply, now_ms)
            }
            ChatCommand::Slow { .. }
            | ChatCommand::SlowOff
            | ChatCommand::EmoteOnly(_)
            | ChatCommand::UniqueChat(_) => {
                let before = moderation.view.modes;
                let mut after = before;
                let (already, success) = match &submit.command {
                    ChatCommand::Slow { seconds } => {
                        after.slow_secs = *seconds;
                        (
                            None,
                            done(
                                "slow_on",
                                format!(
                                    "This room is now in slow mode. You may send messages every {seconds} seconds."
                                ),
                            ),
                        )
                    }
                    ChatCommand::SlowOff => {
                        after.slow_secs = 0;
                        (
                            (before.slow_secs == 0)
                                .then_some(("already_slow_off", "This room is not in slow mode.")),
                            done("slow_off", "This room is no longer in slow mode.".into()),
                        )
                    }
                    ChatCommand::EmoteOnly(on) => {
                        after.emote_only = *on;
                        if *on {
                            (
                                before.emote_only.then_some((
                                    "already_emote_only_on",
                                    "This room is already in emote-only mode.",
                                )),
                                done(
                                    "emote_only_on",
                                    "This room is now in emote-only mode.".into(),
                                ),
                            )
                        } else {
                            (
                                (!before.emote_only).then_some((
                                    "already_emote_only_off",
                                    "This room is not in emote-only mode.",
                                )),
                                done(
                                    "emote_only_off",
                                    "This room is no longer in emote-only mode.".into(),
                                ),
                            )
                        }
                    }
                    ChatCommand::UniqueChat(on) => {
                        after.r9k = *on;
                        if *on {
                            (
                                before.r9k.then_some((
                                    "already_r9k_on",
                                    "This room is already in unique-chat mode.",
                                )),
                                done("r9k_on", "This room is now in unique-chat mode.".into()),
                            )
                        } else {
                            (
                                (!before.r9k).then_some((
                                    "already_r9k_off",
                                    "This room is not in unique-chat mode.",
                                )),
                                done(
                                    "r9k_off",
                                    "This room is no longer in unique-chat mode.".into(),
                                ),
                            )
                        }
                    }
                    _ => unreachable!("mode commands only"),
                };
                if let Some((msg_id, text)) = already {
                    let reply = failed(ReplyKind::Invalid, msg_id, text.into());
                    return self.answer(&submit, reply, now_ms);
                }
                let key = keys::modes(&room_name);
                let value = json(&StoredModes::from(after));
                self.write_setting(
                    submit,
                    key,
                    Some(value),
                    Effect::Modes(after),
                    success,
                    now_ms,
                )
            }
            ChatCommand::AutoModAdd { phrase } | ChatCommand::AutoModRemove { phrase } => {
                let add = matches!(submit.command, ChatCommand::AutoModAdd { .. });
                // Try the change on a copy of the list: the real one changes only once the new list is durable.
                let mut trial = crate::core::automod::AutoMod::new(Default::default());
                for existing in moderation.phrases() {
                    let _ = trial.add_phrase(&existing);
                }
                let changed = if add {
                    match trial.add_phrase(phrase) {
                        Ok(changed) => changed,
                        Err(err) => {
                            let reply =
                                failed(ReplyKind::Invalid, "usage_automod", err.to_string());
                            return self.answer(&submit, reply, now_ms);
                        }
                    }
                } else {
                    trial.remove_phrase(phrase)
                };
                if !changed {
                    let text = if add {
                        "That phrase is already blocked."
                    } else {
                        "That phrase is not blocked."
                    };
                    let reply = failed(ReplyKind::Invalid, "automod_phrase_unchanged", text.into());
                    return self.answer(&submit, reply, now_ms);
                }
                let stored = StoredAutoMod {
                    phrases: trial.phrases().to_vec(),
                };
                let (msg_id, text) = if add {
                    (
                        "automod_phrase_added",
                        "The phrase was added to AutoMod's blocked terms.",
                    )
                } else {
                    (
                        "automod_phrase_removed",
                        "The phrase was removed from AutoMod's blocked terms.",
                    )
                };
                let effect = Effect::Phrases {
                    add,
                    phrase: phrase.clone(),
                };
                let key = keys::automod(&room_name);
                let value = json(&stored);
                self.write_setting(
                    submit,
                    key,
                    Some(value),
                    effect,
                    done(msg_id, text.into()),
                    now_ms,
                )
            }
            ChatCommand::AutoModAllow { held_id } | ChatCommand::AutoModDeny { held_id } => {
                let allowed = matches!(submit.command, ChatCommand::AutoModAllow { .. });
                let held_id = *held_id;
                let Some(held) = moderation.held.remove(&held_id) else {
                    let reply = failed(
                        ReplyKind::NotFound,
                        "automod_not_found",
                        "That message is no longer held (it was allowed, denied or expired)."
                            .into(),
                    );
                    return self.answer(&submit, reply, now_ms);
                };
                self.resolve_held(room, held_id, held, allowed, now_ms);
                let reply = if allowed {
                    done("automod_allowed", "The message was allowed.".into())
                } else {
                    done("automod_denied", "The message was denied.".into())
                };
                self.answer(&submit, reply, now_ms)
            }
            ChatCommand::Delete { message_id } => {
                let found = home.recent_by_id(message_id).cloned();
                let Some(message) = found else {
                    let reply = failed(
                        ReplyKind::NotFound,
                        "bad_delete_message_error",
                        format!(
                            "The message you specified was not found: only the last {DELETABLE_MESSAGES_MAX} messages of a room can be deleted."
                        ),
                    );
                    return self.answer(&submit, reply, now_ms);
                };
                let own = message.record.user_id == actor.user_id;
                let author_role = role_of_message(&message);
                let refusal = if own {
                    None
                } else if role < Role::Moderator {
                    Some(no_permission())
                } else if author_role == Role::Broadcaster {
                    Some(failed(
                        ReplyKind::Invalid,
                        "bad_delete_message_broadcaster",
                        "You cannot delete the broadcaster's messages.".into(),
                    ))
                } else if author_role == Role::Moderator && role < Role::Broadcaster {
                    Some(failed(
                        ReplyKind::Invalid,
                        "bad_delete_message_mod",
                        format!(
                            "You cannot delete messages from another moderator {}.",
                            message.record.login
                        ),
                    ))
                } else {
                    None
                };
                if let Some(reply) = refusal {
                    return self.answer(&submit, reply, now_ms);
                }
                let success = done(
                    "delete_message_success",
                    format!("The message from {} is now deleted.", message.record.login),
                );
                let ticket = self.ticket();
                let id = message.record.id;
                self.commands.insert(
                    ticket,
                    CommandOp {
                        submit,
                        effect: Some(Effect::Delete { id }),
                        success: Some(success),
                    },
                );
                self.outputs
                    .push_back(Output::DeleteMessage { ticket, room, id });
            }
            ChatCommand::Timeout { user, .. }
            | ChatCommand::Untimeout { user }
            | ChatCommand::Ban { user, .. }
            | ChatCommand::Unban { user }
            | ChatCommand::Mod { user }
            | ChatCommand::Unmod { user }
            | ChatCommand::Vip { user }
            | ChatCommand::Unvip { user } => {
                let is_self = *user == actor.login;
                let self_refusal = match &submit.command {
                    ChatCommand::Timeout { .. } if is_self => {
                        Some(("bad_timeout_self", "You cannot timeout yourself."))
                    }
                    ChatCommand::Ban { .. } if is_self => {
                        Some(("bad_ban_self", "You cannot ban yourself."))
                    }
                    _ => None,
                };
                if let Some((msg_id, text)) = self_refusal {
                    let reply = failed(ReplyKind::Invalid, msg_id, text.into());
                    return self.answer(&submit, reply, now_ms);
                }
                let ticket = self.ticket();
                let login = user.clone();
                self.commands.insert(
                    ticket,
                    CommandOp {
                        submit,
                        effect: None,
                        success: None,
                    },
                );
                self.outputs
                    .push_back(Output::ResolveUser { ticket, login });
            }
            ChatCommand::Color { .. } => unreachable!("personal commands stay on their shard"),
        }
    }

    pub(super) fn ticket(&mut self) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        ticket
    }

    /// Asks for a durable write; the command's effect and answer follow in [`ShardCore::write_done`].
    pub(super) fn write_setting(
        &mut self,
        submit: Box<CommandSubmit>,
        key: String,
        value: Option<Vec<u8>>,
        effect: Effect,
        success: CommandReply,
        _now_ms: u64,
    ) {
        let ticket = self.ticket();
        self.commands.insert(
            ticket,
            CommandOp {
                submit,
                effect: Some(effect),
                success: Some(success),
            },
        );
        self.outputs
            .push_back(Output::PutSetting { ticket, key, value });
    }

    /// The answer to an [`Output::ResolveUser`]: the command's target exists (or not); check it and write.
    pub fn user_resolved(&mut self, ticket: u64, resolved: Resolved, now_ms: u64) {
        if let Some(job) = self.whispers.remove(&ticket) {
            return self.whisper_resolved(job, resolved, now_ms);
        }
        let Some(op) = self.commands.remove(&ticket) else {
            return;
        };
        let submit = op.submit;
        let target_id = match resolved {
            Ok(Some(user_id)) => user_id,
            Ok(None) => {
                let reply = failed(
                    ReplyKind::NotFound,
                    "invalid_user",
                    "Invalid username.".into(),
                );
                return self.answer(&submit, reply, now_ms);
            }
            Err(_) => return self.answer(&submit, not_saved(), now_ms),
        };
        let room = submit.room;
        let info = &self.cfg.rooms[room];
        let room_name = info.name.clone();
        let moderation = &self.home[room].as_ref().expect("home").moderation;
        let actor_role = role_of(
            info,
            &moderation.view.granted,
            submit.actor.user_id,
            &submit.actor.login,
        );
        let (target_login, target_role) = match &submit.command {
            ChatCommand::Timeout { user, .. }
            | ChatCommand::Untimeout { user }
            | ChatCommand::Ban { user, .. }
            | ChatCommand::Unban { user }
            | ChatCommand::Mod { user }
            | ChatCommand::Unmod { user }
            | ChatCommand::Vip { user }
            | ChatCommand::Unvip { user } => (
                user.clone(),
                role_of(info, &moderation.view.granted, target_id, user),
            ),
            _ => unreachable!("only commands with a target are resolved"),
        };
        let ban = moderation
            .bans
            .get(&target_id)
            .filter(|b| b.active(now_ms))
            .cloned();
        let bans_full = moderation.bans.len() >= crate::core::moderation::BANS_PER_ROOM_MAX
            && !moderation.bans.contains_key(&target_id);
        let roles_full = moderation.view.granted.len()
            >= crate::core::moderation::ROLES_PER_ROOM_MAX
            && !moderation.view.granted.contains_key(&target_id);
        let adds_ban = matches!(
            submit.command,
            ChatCommand::Timeout { .. } | ChatCommand::Ban { .. }
        );
        let adds_role = matches!(
            submit.command,
            ChatCommand::Mod { .. }
                | ChatCommand::Unmod { .. }
                | ChatCommand::Vip { .. }
                | ChatCommand::Unvip { .. }
        );
        if (adds_ban && bans_full) || (adds_role && roles_full) {
            let reply = failed(
                ReplyKind::Invalid,
                "msg_list_full",
                "This room's list of bans or roles is full; remove some first.".into(),
            );
            return self.answer(&submit, reply, now_ms);
        }
        let invalid =
            |msg_id: &'static str, text: String| Err(failed(ReplyKind::Invalid, msg_id, text));
        let decided: Result<SettingWrite, CommandReply> = match &submit.command {
            ChatCommand::Timeout { reason, .. } | ChatCommand::Ban { reason, .. } => {
                let seconds = match &submit.command {
                    ChatCommand::Timeout { seconds, .. } => Some(*seconds),
                    _ => None,
                };
                let (verb, bad_broadcaster, bad_mod) = match seconds {
                    Some(_) => ("timeout", "bad_timeout_broadcaster", "bad_timeout_mod"),
                    None => ("ban", "bad_ban_broadcaster", "bad_ban_mod"),
                };
                if target_role == Role::Broadcaster {
                    invalid(
                        bad_broadcaster,
                        format!("You cannot {verb} the broadcaster."),
                    )
                } else if target_role == Role::Moderator && actor_role < Role::Broadcaster {
                    invalid(
                        bad_mod,
                        format!(
                            "You cannot {verb} moderator {target_login} unless you are the owner of this channel."
                        ),
                    )
                } else if ban.as_ref().is_some_and(|b| b.until_unix_ms.is_none()) {
                    invalid(
                        "already_banned",
                        format!("{target_login} is already banned in this channel."),
                    )
                } else {
                    let ban = Ban {
                        login: target_login.clone(),
                        until_unix_ms: seconds.map(|s| now_ms + u64::from(s) * 1000),
                        reason: reason.clone(),
                    };
                    let success = match seconds {
                        Some(s) => done(
                            "timeout_success",
                            format!("{target_login} has been timed out for {s} seconds."),
                        ),
                        None => done(
                            "ban_success",
                            format!("{target_login} is now banned from this channel."),
                        ),
                    };
                    Ok((
                        keys::ban(&room_name, target_id),
                        Some(json(&ban)),
                        Effect::Ban {
                            user_id: target_id,
                            ban,
                        },
                        success,
                    ))
                }
            }
            ChatCommand::Untimeout { .. } => match &ban {
                Some(Ban {
                    until_unix_ms: Some(_),
                    ..
                }) => Ok((
                    keys::ban(&room_name, target_id),
                    None,
                    Effect::Unban { user_id: target_id },
                    done(
                        "untimeout_success",
                        format!("{target_login} is no longer timed out in this channel."),
                    ),
                )),
                Some(_) => invalid(
                    "untimeout_banned",
                    format!(
                        "{target_login} is permanently banned; use \"/unban\" to remove a ban."
                    ),
                ),
                None => invalid(
                    "bad_untimeout_no_timeout",
                    format!("{target_login} is not timed out from this channel."),
                ),
            },
            ChatCommand::Unban { .. } => match &ban {
                Some(_) => Ok((
                    keys::ban(&room_name, target_id),
                    None,
                    Effect::Unban { user_id: target_id },
                    done(
                        "unban_success",
                        format!("{target_login} is no longer banned from this channel."),
                    ),
                )),
                None => invalid(
                    "bad_unban_no_ban",
                    format!("{target_login} is not banned from this channel."),
                ),
            },
            ChatCommand::Mod { .. }
            | ChatCommand::Unmod { .. }
            | ChatCommand::Vip { .. }
            | ChatCommand::Unvip { .. } => {
                let (role, result) = match &submit.command {
                    ChatCommand::Mod { .. } if target_role == Role::Moderator => (
                        Role::Moderator,
                        Err((
                            "bad_mod_mod",
                            format!("{target_login} is already a moderator of this channel."),
                        )),
                    ),
                    ChatCommand::Mod { .. } if ban.is_some() => (
                        Role::Moderator,
                        Err((
                            "bad_mod_banned",
                            format!("{target_login} is banned from this channel."),
                        )),
                    ),
                    ChatCommand::Mod { .. } => (
                        Role::Moderator,
                        Ok((
                            "mod_success",
                            format!(
                                "You have added {target_login} as a moderator of this channel."
                            ),
                        )),
                    ),
                    ChatCommand::Unmod { .. } if target_role != Role::Moderator => (
                        Role::Viewer,
                        Err((
                            "bad_unmod_mod",
                            format!("{target_login} is not a moderator of this channel."),
                        )),
                    ),
                    ChatCommand::Unmod { .. } => (
                        Role::Viewer,
                        Ok((
                            "unmod_success",
                            format!(
                                "You have removed {target_login} as a moderator of this channel."
                            ),
                        )),
                    ),
                    ChatCommand::Vip { .. } if target_role == Role::Vip => (
                        Role::Vip,
                        Err((
                            "bad_vip_grantee_already_vip",
                            format!("{target_login} is already a VIP of this channel."),
                        )),
                    ),
                    ChatCommand::Vip { .. } if ban.is_some() => (
                        Role::Vip,
                        Err((
                            "bad_vip_grantee_banned",
                            format!(
                                "{target_login} is banned in this channel and cannot be a VIP."
                            ),
                        )),
                    ),
                    ChatCommand::Vip { .. } => (
                        Role::Vip,
                        Ok((
                            "vip_success",
                            format!("You have added {target_login} as a VIP of this channel."),
                        )),
                    ),
                    ChatCommand::Unvip { .. } if target_role != Role::Vip => (
                        Role::Viewer,
                        Err((
                            "bad_unvip_grantee_not_vip",
                            format!("{target_login} is not a VIP of this channel."),
                        )),
                    ),
                    _ => (
                        Role::Viewer,
                        Ok((
                            "unvip_success",
                            format!("You have removed {target_login} as a VIP of this channel."),
                        )),
                    ),
                };
                if target_role == Role::Broadcaster {
                    invalid(
                        "bad_role_broadcaster",
                        "The broadcaster's role cannot be changed.".into(),
                    )
                } else {
                    match result {
                        Err((msg_id, text)) => invalid(msg_id, text),
                        Ok((msg_id, text)) => {
                            let grant = Grant {
                                login: target_login.clone(),
                                role: role.as_str().into(),
                            };
                            Ok((
                                keys::role(&room_name, target_id),
                                Some(json(&grant)),
                                Effect::Role {
                                    user_id: target_id,
                                    login: target_login.clone(),
                                    role,
                                },
                                done(msg_id, text),
                            ))
                        }
                    }
                }
            }
            _ => unreachable!("only commands with a target are resolved"),
        };
        match decided {
            Err(reply) => self.answer(&submit, reply, now_ms),
            Ok((key, value, effect, success)) => {
                self.write_setting(submit, key, value, effect, success, now_ms)
            }
        }
    }

    /// The answer to an [`Output::PutSetting`] or [`Output::DeleteMessage`]: the change is durable (apply it, tell
    /// the room, answer) or failed (answer "try again"; nothing changed).
    pub fn write_done(&mut self, ticket: u64, result: Result<(), StorageError>, now_ms: u64) {
        if let Some(job) = self.whispers.remove(&ticket) {
            return self.whisper_stored(job, result, now_ms);
        }
        if let Some(key) = self.inbox_removing.remove(&ticket) {
            if let Err(err) = result {
                // Delivered, but still in the inbox: the next login gets it again (at least once, never lost).
                log::warn!("inbox entry {key} not removed: {err}");
            }
            return;
        }
        let Some(op) = self.commands.remove(&ticket) else {
            return;
        };
        let submit = op.submit;
        if let Err(err) = result {
            log::warn!("/{} could not be saved: {err}", submit.command.name());
            return self.answer(&submit, not_saved(), now_ms);
        }
        let room = submit.room;
        match op.effect.expect("a write has an effect") {
            Effect::Color { user_id, color } => {
                // Every shard, this one included, before the answer: the user's next line anywhere has the colour.
                for shard in 0..self.cfg.shard_count {
                    let msg = PeerMsg::ColorChanged {
                        user_id,
                        color: color.clone(),
                    };
                    self.send_peer(shard, msg, now_ms);
                }
            }
            Effect::Ban { user_id, ban } => {
                let user = ClearUser {
                    login: ban.login.clone(),
                    user_id,
                    duration_secs: ban
                        .until_unix_ms
                        .map(|until| (until.saturating_sub(now_ms).div_ceil(1000)) as u32),
                };
                self.home_room(room).moderation.bans.insert(user_id, ban);
                self.broadcast(room, RoomEvent::Clear { user: Some(user) }, now_ms);
            }
            Effect::Unban { user_id } => {
                self.home_room(room).moderation.bans.remove(&user_id);
            }
            Effect::Role {
                user_id,
                login,
                role,
            } => {
                self.home_room(room)
                    .moderation
                    .set_role(user_id, &login, role);
                self.broadcast(room, RoomEvent::Role { user_id, role }, now_ms);
            }
            Effect::Modes(after) => {
                let moderation = &mut self.home_room(room).moderation;
                let before = moderation.view.modes;
                moderation.view.modes = after;
                if before != after {
                    self.broadcast(room, RoomEvent::Modes { before, after }, now_ms);
                }
            }
            Effect::Phrases { add, phrase } => {
                let automod = self.home_room(room).moderation.automod();
                if add {
                    let _ = automod.add_phrase(&phrase);
                } else {
                    automod.remove_phrase(&phrase);
                }
            }
            Effect::Delete { id } => {
                // Already gone (deleted twice at once, or seen in the log first): whoever removed it told the room.
                self.forget_deleted(room, id, now_ms);
            }
        }
        self.answer(&submit, op.success.expect("a write has an answer"), now_ms);
    }

    /// A held message is allowed (it goes on to styling, storage and delivery like any other, answered to nobody:
    /// its sender was told it is held) or denied; the moderators and the author are told.
    pub(super) fn resolve_held(
        &mut self,
        room: usize,
        held_id: u64,
        held: Held,
        allowed: bool,
        now_ms: u64,
    ) {
        let author = RoomModeration::held_origin(&held);
        self.outputs.push_back(Output::PutSetting {
            ticket: 0,
            key: keys::held(&self.cfg.rooms[room].name, held_id),
            value: None,
        });
        self.broadcast(room, RoomEvent::Resolved { held_id, allowed }, now_ms);
        let (msg_id, text) = if allowed {
            (
                "automod_message_approved",
                "A moderator approved your message; it was sent.",
            )
        } else {
            (
                "automod_message_denied",
                "A moderator denied your message; it was not sent.",
            )
        };
        let reply = CommandReply {
            kind: ReplyKind::Done,
            msg_id,
            text: text.into(),
            notice: true,
        };
        self.send_peer(
            author.shard,
            PeerMsg::CommandReply {
                to: CommandFrom::Conn(author),
                room,
                reply,
            },
            now_ms,
        );
        if allowed {
            let submit = held.submit;
            let role = self.role_in(room, submit.user_id, &submit.login);
            self.home_room(room)
                .moderation
                .accepted(submit.user_id, &submit.text, now_ms);
            self.start_styling(submit, role, Vec::new(), None, now_ms);
        }
    }

    /// Sends a room event to every subscribed shard (this one included), in order with the room's messages.
    pub(super) fn broadcast(&mut self, room: usize, event: RoomEvent, now_ms: u64) {
        let event = Arc::new(event);
        let subscribers = self.home_room(room).subscriber_shards();
        for shard in subscribers {
            self.send_peer(
                shard,
                PeerMsg::Event {
                    room,
                    event: event.clone(),
                    at_unix_ms: now_ms,
                },
                now_ms,
            );
        }
    }

    /// A room event on a shard with viewers: update the local copy, then tell each viewer it concerns.
    pub(super) fn event_local(
        &mut self,
        room: usize,
        event: &RoomEvent,
        at_unix_ms: u64,
        now_ms: u64,
    ) {
        let rooms = self.cfg.rooms.clone();
        let info = &rooms[room];
        let local = &mut self.rooms[room];
        if !matches!(local.subscription, Subscription::Ready) {
            // As with messages: a snapshot that includes it is on its way, or we no longer care.
            return;
        }
        match event {
            RoomEvent::Deleted { id, refill, .. } => {
                let held = local.recent.len();
                local.recent.retain(|m| m.record.id != *id);
                if let Some(refill) = refill
                    && local.recent.len() < held
                    && local.recent.len() < HISTORY_ON_JOIN
                    && local.recent.iter().all(|m| m.record.id != refill.record.id)
                {
                    local.recent.push_front(refill.clone());
                }
            }
            RoomEvent::Modes { after, .. } => local.view.modes = *after,
            RoomEvent::Role { user_id, role } => {
                local.view.granted.insert(*user_id, *role);
            }
            RoomEvent::Membership {
                joined,
                parted,
                listed,
            } => {
                if !listed {
                    local.view.members = None;
                } else {
                    let members = local.view.members.get_or_insert_with(Default::default);
                    for login in parted {
                        members.remove(login);
                    }
                    members.extend(joined.iter().cloned());
                }
            }
            _ => {}
        }
        let id_text = match event {
            RoomEvent::Deleted { id, .. } => id.to_string(),
            _ => String::new(),
        };
        let viewers = local.viewers.clone();
        let mut lines = Vec::new();
        for viewer in viewers {
            let Some(conn) = conn_in(&mut self.slots, viewer) else {
                continue;
            };
            if conn.closing_since_ms.is_some() {
                continue;
            }
            let session = &conn.session;
            // Only role changes and AutoMod's lines depend on who the viewer is; the rest skip the lookup.
            let viewer_role = || {
                session
                    .identity()
                    .map(|i| role_of(info, &self.rooms[room].view.granted, i.user_id, &i.login))
            };
            let mut out = Vec::new();
            match event {
                RoomEvent::Clear { user } => {
                    let target = match user {
                        None => ClearTarget::All,
                        Some(user) => ClearTarget::User {
                            login: &user.login,
                            user_id: user.user_id,
                            ban_duration_secs: user.duration_secs,
                        },
                    };
                    session.encode_clearchat(&info.name, info.id, target, at_unix_ms, &mut out);
                }
                RoomEvent::Deleted { login, text, .. } => {
                    session.encode_clearmsg(
                        &info.name, info.id, login, &id_text, text, at_unix_ms, &mut out,
                    );
                }
                RoomEvent::Modes { before, after } => {
                    session.encode_modes_change(&info.name, info.id, before, after, &mut out);
                }
                RoomEvent::Role { user_id, role } => {
                    if session.identity().is_some_and(|i| i.user_id == *user_id) {
                        let effective = viewer_role().unwrap_or(*role);
                        session.encode_role_change(&info.name, effective, &mut out);
                    }
                }
                RoomEvent::Held {
                    held_id,
                    login,
                    display_name,
                    user_id,
                    reason,
                    text,
                } => {
                    if viewer_role().is_some_and(Role::moderates) {
                        let held = HeldLine {
                            held_id: *held_id,
                            login,
                            display_name,
                            user_id: *user_id,
                            reason,
                            text,
                        };
                        session
                            .encode_automod(&info.name, info.id, &held, None, at_unix_ms, &mut out);
                    }
                }
                RoomEvent::Tag {
                    origin,
                    login,
                    display_name,
                    user_id,
                    typing,
                    react,
                } => {
                    let own = origin.shard == self.cfg.shard && origin.conn == viewer;
                    if !own {
                        let line = crate::protocol::twitch::TagLine {
                            room: &info.name,
                            room_id: info.id,
                            login,
                            display_name,
                            user_id: *user_id,
                            typing: typing.map(Typing::as_str),
                            react: react.as_ref().map(|(e, m, c)| (e.as_str(), m.as_str(), *c)),
                        };
                        session.encode_tagmsg(&line, &mut out);
                    }
                }
                RoomEvent::Membership { joined, parted, .. } => {
                    session.encode_membership(&info.name, joined, parted, &mut out);
                }
                RoomEvent::Resolved { held_id, allowed } => {
                    if viewer_role().is_some_and(Role::moderates) {
                        let held = HeldLine {
                            held_id: *held_id,
                            login: "",
                            display_name: "",
                            user_id: 0,
                            reason: "",
                            text: "",
                        };
                        session.encode_automod(
                            &info.name,
                            info.id,
                            &held,
                            Some(*allowed),
                            at_unix_ms,
                            &mut out,
                        );
                    }
                }
            }
            if !out.is_empty() {
                lines.push((viewer, out));
            }
        }
        for (viewer, out) in lines {
            self.push_owned(viewer, out, now_ms);
        }
    }

    /// Restores a home room's moderation state from its stored settings (keys under `room/{room}/`).
    pub fn restore_moderation(
        &mut self,
        room: usize,
        settings: Vec<(String, Vec<u8>)>,
        now_ms: u64,
    ) {
        let prefix = keys::room_prefix(&self.cfg.rooms[room].name);
        let moderation = &mut self.home_room(room).moderation;
        for (key, value) in settings {
            if let Some(rest) = key.strip_prefix(&prefix) {
                moderation.restore(rest, &value, now_ms);
            }
        }
    }

    /// Cluster mode: one of the room's settings was written (`value` Some) or deleted through some node (this one
    /// included), as the shared settings' watch reports it, in the order the changes were made. The home applies
    /// it and tells its viewers as for a change made here: CLEARCHAT for a new ban or timeout, ROOMSTATE for
    /// modes, USERSTATE for the user whose role changed; AutoMod's phrases are replaced by the list written. A
    /// change this home already applied (its own write coming back) changes nothing and tells no one. Held
    /// messages stay with the node whose AutoMod held them.
    pub fn shared_setting_changed(
        &mut self,
        room: usize,
        key: &str,
        value: Option<&[u8]>,
        now_ms: u64,
    ) {
        let prefix = keys::room_prefix(&self.cfg.rooms[room].name);
        let Some(rest) = key.strip_prefix(&prefix) else {
            return;
        };
        let moderation = &mut self.home_room(room).moderation;
        let mut event = None;
        if let Some(id) = rest.strip_prefix("ban/") {
            let Ok(user_id) = id.parse::<u64>() else {
                return;
            };
            let Some(value) = value else {
                moderation.bans.remove(&user_id);
                return;
            };
            let known = moderation.bans.contains_key(&user_id);
            moderation.restore(rest, value, now_ms);
            if let Some(ban) = moderation.bans.get(&user_id).filter(|_| !known) {
                event = Some(RoomEvent::Clear {
                    user: Some(ClearUser {
                        login: ban.login.clone(),
                        user_id,
                        duration_secs: ban
                            .until_unix_ms
                            .map(|until| (until.saturating_sub(now_ms).div_ceil(1000)) as u32),
                    }),
                });
            }
        } else if rest == "modes" {
            let Some(value) = value else {
                return;
            };
            let before = moderation.view.modes;
            moderation.restore(rest, value, now_ms);
            let after = moderation.view.modes;
            if before != after {
                event = Some(RoomEvent::Modes { before, after });
            }
        } else if let Some(id) = rest.strip_prefix("role/") {
            let (Ok(user_id), Some(value)) = (id.parse::<u64>(), value) else {
                return;
            };
            let before = moderation.view.granted.get(&user_id).copied();
            moderation.restore(rest, value, now_ms);
            match moderation.view.granted.get(&user_id).copied() {
                Some(role) if before != Some(role) => {
                    event = Some(RoomEvent::Role { user_id, role })
                }
                _ => {}
            }
        } else if rest == "automod" {
            let phrases = match value.map(serde_json::from_slice::<StoredAutoMod>) {
                Some(Ok(stored)) => stored.phrases,
                Some(Err(err)) => {
                    return log::warn!("shared setting {key:?} skipped: {err}");
                }
                None => Vec::new(),
            };
            let automod = moderation.automod();
            for phrase in automod.phrases().to_vec() {
                if !phrases.contains(&phrase) {
                    automod.remove_phrase(&phrase);
                }
            }
            for phrase in &phrases {
                if let Err(err) = automod.add_phrase(phrase) {
                    log::warn!("shared AutoMod phrase {phrase:?} skipped: {err}");
                }
            }
        }
        if let Some(event) = event {
            self.broadcast(room, event, now_ms);
        }
    }

    /// Cluster mode: a message of a room homed here was deleted, through this node or another. If the room's last
    /// messages still hold it, it leaves them (and the last-10 replay) and the room's viewers get CLEARMSG, as for
    /// a deletion made here; one made here already did that, and this finds nothing.
    pub fn deleted_in_log(&mut self, room: usize, id: MessageId, now_ms: u64) {
        self.forget_deleted(room, id, now_ms);
    }

    /// Takes a deleted message out of the room's last messages and tells the room (CLEARMSG), if it is there.
    fn forget_deleted(&mut self, room: usize, id: MessageId, now_ms: u64) {
        let home = self.home_room(room);
        let Some(at) = home.recent.iter().position(|m| m.record.id == id) else {
            return;
        };
        let message = home.recent.remove(at).expect("found");
        let refill = home
            .recent
            .len()
            .checked_sub(HISTORY_ON_JOIN)
            .map(|oldest| home.recent[oldest].clone());
        let event = RoomEvent::Deleted {
            id,
            login: message.record.login.clone(),
            text: message.record.text.clone(),
            refill,
        };
        self.broadcast(room, event, now_ms);
    }

    /// A room's moderation state for the HTTP API (home shard only), as JSON.
    pub fn moderation_json(&self, room: usize, now_ms: u64) -> Option<serde_json::Value> {
        let info = &self.cfg.rooms[room];
        let moderation = &self.home[room].as_ref()?.moderation;
        let mut banned: Vec<serde_json::Value> = moderation
            .bans
            .iter()
            .filter(|(_, ban)| ban.active(now_ms))
            .map(|(user_id, ban)| {
                serde_json::json!({
                    "login": ban.login, "user_id": user_id,
                    "until_unix_ms": ban.until_unix_ms, "reason": ban.reason,
                })
            })
            .collect();
        banned.sort_by(|a, b| a["login"].as_str().cmp(&b["login"].as_str()));
        let held: Vec<serde_json::Value> = moderation
            .held
            .iter()
            .map(|(held_id, held)| {
                serde_json::json!({
                    "held_id": held_id, "login": held.submit.login,
                    "text": held.submit.text, "reason": held.reason.as_str(),
                })
            })
            .collect();
        let modes = moderation.view.modes;
        Some(serde_json::json!({
            "modes": {"slow": modes.slow_secs, "emote_only": modes.emote_only, "r9k": modes.r9k},
            "broadcaster": info.broadcaster,
            "moderators": moderation.logins_with(info, Role::Moderator),
            "vips": moderation.logins_with(info, Role::Vip),
            "banned": banned,
            "automod": {"action": moderation.automod_mode().as_str(), "phrases": moderation.phrases()},
            "held": held,
        }))
    }

    /// The role of a user in a room, as this shard knows it (the home's view, or the local copy).
    pub fn role_in(&self, room: usize, user_id: u64, login: &str) -> Role {
        let info = &self.cfg.rooms[room];
        let granted = match &self.home[room] {
            Some(home) => &home.moderation.view.granted,
            None => &self.rooms[room].view.granted,
        };
        role_of(info, granted, user_id, login)
    }
}

#[cfg(test)]
mod shared_settings_tests {
    use super::*;
    use crate::protocol::session::Identity;

    /// One shard, one room (`lobby`, broadcaster `boss`), with an anonymous viewer, the broadcaster (user 1) and
    /// `ronni` (user 7) joined; styling, storage and setting writes complete at once.
    struct World {
        core: ShardCore,
        viewer: ConnId,
        boss: ConnId,
        ronni: ConnId,
    }

    impl World {
        fn new() -> World {
            let mut room = RoomInfo::for_tests("lobby", 1, "pirate");
            room.broadcaster = Some("boss".into());
            let mut core = ShardCore::new(CoreConfig::for_tests(0, 1, vec![room]));
            let viewer = core.conn_open(Transport::Tcp, 0).unwrap();
            core.conn_input(
                viewer,
                b"CAP REQ :twitch.tv/tags twitch.tv/commands\r\nNICK justinfan1\r\nJOIN #lobby\r\n",
                0,
            );
            let login = |core: &mut ShardCore, name: &str, user_id: u64| {
                let conn = core.conn_open(Transport::Tcp, 0).unwrap();
                let hello = format!(
                    "CAP REQ :twitch.tv/tags twitch.tv/commands\r\nPASS oauth:x\r\nNICK {name}\r\n"
                );
                core.conn_input(conn, hello.as_bytes(), 0);
                let identity = Identity {
                    login: name.into(),
                    display_name: name.into(),
                    user_id,
                    color: String::new(),
                    badges: String::new(),
                    is_mod: false,
                };
                core.auth_done(conn, AuthOutcome::Valid(identity), 0);
                conn
            };
            let boss = login(&mut core, "boss", 1);
            let ronni = login(&mut core, "ronni", 7);
            let mut world = World {
                core,
                viewer,
                boss,
                ronni,
            };
            world.pump(0);
            for conn in [boss, ronni] {
                world.core.conn_input(conn, b"JOIN #lobby\r\n", 0);
                world.pump(0);
            }
            for conn in [viewer, boss, ronni] {
                world.read(conn);
            }
            world
        }

        fn pump(&mut self, now_ms: u64) {
            while let Some(output) = self.core.pop_output() {
                match output {
                    Output::Style(r) => self.core.styled(r.ticket, r.text, StyledBy::Local, now_ms),
                    Output::Store { room, record } => {
                        self.core.stored(room, record.id, Ok(()), now_ms)
                    }
                    Output::ReadSettings { ticket, .. } => {
                        self.core.settings_read(ticket, Ok(Vec::new()), now_ms)
                    }
                    Output::PutSetting { ticket, .. } => {
                        self.core.write_done(ticket, Ok(()), now_ms)
                    }
                    _ => {}
                }
            }
        }

        fn read(&mut self, id: ConnId) -> String {
            let mut out = Vec::new();
            while self.core.take_writes(id, &mut out, 0) > 0 {}
            String::from_utf8(out).unwrap()
        }

        /// Settings written (or, with `None`, deleted) through some node, as the watch reports them.
        fn changed(&mut self, changes: &[(&str, Option<serde_json::Value>)], now_ms: u64) {
            for (key, value) in changes {
                let value = value.as_ref().map(json);
                let key = format!("room/lobby/{key}");
                self.core
                    .shared_setting_changed(0, &key, value.as_deref(), now_ms);
            }
            self.pump(now_ms);
        }

        fn state(&self) -> serde_json::Value {
            self.core.moderation_json(0, 0).unwrap()
        }
    }

    fn elsewhere(slow: u32) -> Vec<(&'static str, Option<serde_json::Value>)> {
        vec![
            ("modes", Some(serde_json::json!({"slow": slow}))),
            (
                "role/7",
                Some(serde_json::json!({"login": "ronni", "role": "mod"})),
            ),
            (
                "ban/9",
                Some(serde_json::json!({"login": "troll", "until_unix_ms": null})),
            ),
            (
                "automod",
                Some(serde_json::json!({"phrases": ["bad words"]})),
            ),
            ("held/5", Some(serde_json::json!({"not": "for this node"}))),
        ]
    }

    #[test]
    fn moderation_set_through_another_node_holds_here_and_this_nodes_viewers_are_told() {
        let mut w = World::new();
        w.changed(&elsewhere(30), 10);
        let seen = w.read(w.viewer);
        assert!(
            seen.contains("slow=30") && seen.contains("ROOMSTATE #lobby"),
            "{seen}"
        );
        assert!(seen.contains("CLEARCHAT #lobby :troll"), "{seen}");
        let ronni = w.read(w.ronni);
        assert!(
            ronni.contains("USERSTATE #lobby") && ronni.contains("mod=1"),
            "{ronni}"
        );
        let state = w.state();
        assert_eq!(state["modes"]["slow"], 30);
        assert_eq!(state["moderators"], serde_json::json!(["ronni"]));
        assert_eq!(state["banned"][0]["login"], "troll");
        assert_eq!(
            state["automod"]["phrases"],
            serde_json::json!(["bad words"])
        );
        assert_eq!(
            state["held"],
            serde_json::json!([]),
            "held stays where it was held"
        );

        // The same changes again: nothing new to tell anyone.
        w.changed(&elsewhere(30), 1_010);
        assert_eq!(w.read(w.viewer), "");
        assert_eq!(w.read(w.ronni), "");

        // The broadcaster sets slow mode here; its own write coming back through the watch changes nothing.
        w.core
            .conn_input(w.boss, b"PRIVMSG #lobby :/slow 5\r\n", 2_000);
        w.pump(2_000);
        assert!(w.read(w.viewer).contains("slow=5"));
        w.changed(&[("modes", Some(serde_json::json!({"slow": 5})))], 2_010);
        assert_eq!(w.read(w.viewer), "", "its own change, seen again");
        w.changed(&[("modes", Some(serde_json::json!({"slow": 60})))], 2_500);
        assert!(w.read(w.viewer).contains("slow=60"));

        // Lifted elsewhere: the ban deleted, the phrase list emptied, the role taken back.
        w.changed(
            &[
                ("ban/9", None),
                (
                    "role/7",
                    Some(serde_json::json!({"login": "ronni", "role": "viewer"})),
                ),
                ("automod", Some(serde_json::json!({"phrases": []}))),
            ],
            3_000,
        );
        let state = w.state();
        assert_eq!(state["banned"], serde_json::json!([]));
        assert_eq!(state["moderators"], serde_json::json!([]));
        assert_eq!(state["automod"]["phrases"], serde_json::json!([]));
        let ronni = w.read(w.ronni);
        assert!(
            ronni.contains("USERSTATE #lobby") && ronni.contains("mod=0"),
            "{ronni}"
        );
        // Another room's key is not this room's.
        w.core
            .shared_setting_changed(0, "room/other/modes", Some(b"{\"slow\":9}"), 3_100);
        w.pump(3_100);
        assert_eq!(w.state()["modes"]["slow"], 60);
    }
}
