// Twitchy Chat web client.
//
// The page speaks the same Twitch IRC dialect as every other client, over a WebSocket with the `irc`
// subprotocol. It keeps no framework and no build step: one module-less script, DOM built with
// createElement/textContent only, so chat text can never become markup.
//
// Layout of this file: limits, IRC line codec (pure functions), small helpers, then the app: rooms,
// auth, the connection with reconnect and backoff, and the batched renderer.
'use strict';

(() => {
  // Every buffer and timer has a named limit; the unit is the last word of the name.
  const LIMITS = {
    messageCharsMax: 500,
    // Lines kept in the DOM while the reader follows the bottom of the chat.
    linesPinnedMax: 250,
    // Lines kept while the reader has scrolled up to read; trimmed from the top beyond this.
    linesScrolledMax: 1000,
    // Incoming items waiting for the next animation frame; the oldest are dropped beyond this,
    // since a flood that large would be trimmed before anyone could read it.
    renderQueueItemsMax: 2000,
    seenIdsMax: 5000,
    backoffMsMin: 500,
    backoffMsMax: 30000,
    roomsRefreshMs: 10000,
    historyPageMessagesMax: 50,
    ackWaitMs: 15000,
    // How long an acknowledged own message waits for its styled echo before asking the HTTP API.
    echoWaitMs: 400,
    ownLookupMessagesMax: 50,
    idlePingMs: 60000,
    pongWaitMs: 20000,
    toastMs: 3500,
    composerErrorMs: 8000,
    // Messages in the AutoMod queue shown to a moderator; the oldest leave the view beyond this.
    heldItemsMax: 100,
    // How long an own message held by AutoMod waits for a moderator's decision before it is forgotten.
    heldWaitMs: 30 * 60 * 1000,
    // Ids of own messages deleted by their author, remembered to word the deletion.
    selfDeletesMax: 200,
    // A typing indicator is sent at most this often while the user types, and a received one is shown this long.
    typingSendEveryMs: 3000,
    typingShowMs: 6000,
    // The server relays at most 10 client-tag messages (typing, reactions) per connection in 5 s and drops the rest
    // silently; the page keeps under that, with typing indicators allowed only part of it so reactions get through.
    tagMsgsPerWindowMax: 10,
    tagMsgWindowMs: 5000,
    typingTagMsgsPerWindowMax: 6,
    // Reactions waiting for room under that limit; more are dropped.
    reactionsQueuedMax: 20,
    // Messages whose reaction counts are remembered (the newest); reactions to older ones are not shown.
    reactedMessagesMax: 500,
    // Characters of a parent message shown above a reply and in the "Replying to" bar.
    replyPreviewCharsMax: 120,
    // Names one viewer-list request asks for (the API's largest page) and names the list keeps.
    chattersPageMax: 1000,
    chattersShownMax: 1000,
    // The viewer list's counts are asked for again this often while it is open (JOIN and PART keep the names live).
    chattersRefreshMs: 30000,
    // Whispers shown per conversation (the newest), and conversations listed.
    whisperThreadMessagesMax: 100,
    whisperConversationsMax: 200,
    // Live whispers arriving together cause one refresh of the conversation list.
    whisperRefreshDelayMs: 250,
    // Catching up after a reconnect: at most this many messages, none older than the window, in pages of this size.
    catchUpMessagesMax: 1000,
    catchUpWindowMs: 10 * 60 * 1000,
    catchUpPageMessages: 100,
  };

  // Reactions offered on each line (a small fixed set, as in Twitch's quick reactions).
  const REACTION_EMOJIS = ['👍', '😂', '🔥', '❤️'];

  const TOKEN_KEY = 'twitchy.auth';

  // Timeout length offered as a one-click action on each line, in seconds (Twitch's default).
  const TIMEOUT_ACTION_SECS = 600;

  // Chat commands that may also start with "." (as on Twitch); any text starting with "/" is a command except /me.
  const CHAT_COMMANDS = new Set([
    'timeout', 'untimeout', 'ban', 'unban', 'delete', 'clear', 'slow', 'slowoff', 'emoteonly', 'emoteonlyoff',
    'uniquechat', 'uniquechatoff', 'r9kbeta', 'r9kbetaoff', 'mod', 'unmod', 'vip', 'unvip', 'mods', 'vips',
    'color', 'automod',
  ]);

  // Twitch's named chat colours, offered in the settings.
  const TWITCH_COLORS = [
    ['Blue', '#0000FF'], ['BlueViolet', '#8A2BE2'], ['CadetBlue', '#5F9EA0'], ['Chocolate', '#D2691E'],
    ['Coral', '#FF7F50'], ['DodgerBlue', '#1E90FF'], ['Firebrick', '#B22222'], ['GoldenRod', '#DAA520'],
    ['Green', '#008000'], ['HotPink', '#FF69B4'], ['OrangeRed', '#FF4500'], ['Red', '#FF0000'],
    ['SeaGreen', '#2E8B57'], ['SpringGreen', '#00FF7F'], ['YellowGreen', '#9ACD32'],
  ];

  // NOTICE msg-ids that report a command that worked, shown as plain status lines rather than errors.
  const NOTICE_OK_IDS = new Set([
    'slow_on', 'slow_off', 'emote_only_on', 'emote_only_off', 'r9k_on', 'r9k_off', 'color_changed',
    'automod_allowed', 'automod_denied', 'automod_phrase_added', 'automod_phrase_removed', 'room_mods', 'no_mods',
    'no_vips', 'automod_message_approved',
  ]);

  // Refused sends that the chat itself explains (modes, timeouts, bans, AutoMod), beside the refused line.
  const REFUSAL_TEXT = {
    msg_slowmode: ['slow mode', 'This room is in slow mode; wait a little before sending again.'],
    msg_timedout: ['you are timed out', 'You are timed out in this room.'],
    msg_banned: ['you are banned', 'You are banned from talking in this room.'],
    msg_emoteonly: ['emote-only mode', 'This room is in emote-only mode.'],
    msg_r9k: ['not unique', 'This room is in unique-chat mode and your message repeats a recent one.'],
    msg_rejected: ['held for moderators', 'Your message is being checked by mods and has not been sent.'],
    msg_rejected_mandatory: ['blocked by AutoMod', "Your message wasn't posted due to the channel's moderation settings."],
  };

  const AUTOMOD_REASONS = {
    caps: 'too many capitals',
    repeated_words: 'repeated words',
    repeated_chars: 'repeated characters',
    link: 'link',
    duplicate: 'duplicate message',
    phrase: 'blocked phrase',
  };

  // ---------------------------------------------------------------------------------------------
  // IRC line codec (IRCv3 message tags, Twitch dialect).

  const TAG_UNESCAPES = { ':': ';', s: ' ', r: '\r', n: '\n', '\\': '\\' };
  const TAG_ESCAPES = { '\\': '\\\\', ';': '\\:', ' ': '\\s', '\r': '\\r', '\n': '\\n' };

  function unescapeTagValue(value) {
    if (!value.includes('\\')) return value;
    let out = '';
    for (let i = 0; i < value.length; i++) {
      const c = value[i];
      if (c !== '\\') {
        out += c;
        continue;
      }
      i++;
      // A trailing lone backslash is dropped, as IRCv3 specifies.
      if (i >= value.length) break;
      const next = value[i];
      out += TAG_UNESCAPES[next] ?? next;
    }
    return out;
  }

  function escapeTagValue(value) {
    return value.replace(/[\\; \r\n]/g, (c) => TAG_ESCAPES[c]);
  }

  // Parses one IRC line into { tags, prefix, command, params } or returns null for a malformed line.
  function parseIrcLine(line) {
    const tags = Object.create(null);
    let i = 0;
    if (line.startsWith('@')) {
      const end = line.indexOf(' ');
      if (end < 0) return null;
      for (const part of line.slice(1, end).split(';')) {
        if (!part) continue;
        const eq = part.indexOf('=');
        if (eq < 0) tags[part] = '';
        else tags[part.slice(0, eq)] = unescapeTagValue(part.slice(eq + 1));
      }
      i = end + 1;
    }
    while (line[i] === ' ') i++;
    let prefix = '';
    if (line[i] === ':') {
      const end = line.indexOf(' ', i);
      if (end < 0) return null;
      prefix = line.slice(i + 1, end);
      i = end + 1;
    }
    while (line[i] === ' ') i++;
    const params = [];
    let command = '';
    const cmdEnd = line.indexOf(' ', i);
    if (cmdEnd < 0) {
      command = line.slice(i);
      i = line.length;
    } else {
      command = line.slice(i, cmdEnd);
      i = cmdEnd + 1;
    }
    if (!command) return null;
    while (i < line.length) {
      while (line[i] === ' ') i++;
      if (i >= line.length) break;
      if (line[i] === ':') {
        params.push(line.slice(i + 1));
        break;
      }
      const end = line.indexOf(' ', i);
      if (end < 0) {
        params.push(line.slice(i));
        break;
      }
      params.push(line.slice(i, end));
      i = end + 1;
    }
    return { tags, prefix, command: command.toUpperCase(), params };
  }

  function nickOf(prefix) {
    const bang = prefix.indexOf('!');
    return (bang < 0 ? prefix : prefix.slice(0, bang)).toLowerCase();
  }

  // Lines sent by the client never contain CR or LF: chat text is a single IRC line.
  function oneLine(text) {
    return text.replace(/[\r\n]+/g, ' ');
  }

  // ---------------------------------------------------------------------------------------------
  // Helpers.

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function charCount(text) {
    // Counts code points, so an emoji counts once, matching the server's character limit.
    let n = 0;
    for (const _ of text) n++;
    return n;
  }

  function randomNonce() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  const DEFAULT_COLORS = [
    '#FF0000', '#0000FF', '#008000', '#B22222', '#FF7F50', '#9ACD32', '#FF4500', '#2E8B57',
    '#DAA520', '#D2691E', '#5F9EA0', '#1E90FF', '#FF69B4', '#8A2BE2', '#00FF7F',
  ];

  function hashString(text) {
    let h = 2166136261;
    for (let i = 0; i < text.length; i++) {
      h ^= text.charCodeAt(i);
      h = Math.imul(h, 16777619);
    }
    return h >>> 0;
  }

  function relativeLuminance([r, g, b]) {
    const lin = (c) => {
      const s = c / 255;
      return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
    };
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  }

  const colorCache = new Map();
  const COLOR_CACHE_MAX = 2000;

  // Name colors are chosen by users; dark ones are lightened until they read well on the dark theme.
  function readableColor(color, login) {
    const key = `${color}|${color ? '' : login}`;
    const cached = colorCache.get(key);
    if (cached) return cached;
    let hex = /^#[0-9a-fA-F]{6}$/.test(color || '') ? color : DEFAULT_COLORS[hashString(login || '') % DEFAULT_COLORS.length];
    let rgb = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    for (let step = 0; step < 12 && relativeLuminance(rgb) < 0.2; step++) {
      rgb = rgb.map((c) => Math.round(c + (255 - c) * 0.15));
    }
    const out = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
    if (colorCache.size >= COLOR_CACHE_MAX) colorCache.clear();
    colorCache.set(key, out);
    return out;
  }

  const BADGES = {
    broadcaster: { glyph: '▶', label: 'Broadcaster' },
    moderator: { glyph: '⚔', label: 'Moderator' },
    vip: { glyph: '◆', label: 'VIP' },
    subscriber: { glyph: '★', label: 'Subscriber' },
    founder: { glyph: '✦', label: 'Founder' },
    staff: { glyph: '✱', label: 'Staff' },
    admin: { glyph: '⛨', label: 'Admin' },
    global_mod: { glyph: '⚒', label: 'Global moderator' },
    partner: { glyph: '✓', label: 'Verified' },
    verified: { glyph: '✓', label: 'Verified' },
    turbo: { glyph: '⚡', label: 'Turbo' },
    premium: { glyph: '♛', label: 'Prime' },
    bits: { glyph: '◈', label: 'Cheer' },
  };

  // Accepts the IRC form ("moderator/1,subscriber/12") and the JSON forms (a list of strings or objects).
  function parseBadges(value) {
    if (!value) return [];
    const items = Array.isArray(value) ? value : String(value).split(',');
    const out = [];
    for (const item of items) {
      if (!item) continue;
      if (typeof item === 'object') {
        if (item.name) out.push({ name: String(item.name), version: String(item.version ?? '') });
        continue;
      }
      const [name, version = ''] = String(item).split('/');
      if (name) out.push({ name, version });
    }
    return out;
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

  // ---------------------------------------------------------------------------------------------
  // Application state.

  const state = {
    rooms: [],
    room: null,
    auth: loadAuth(),
    me: freshMe(),
    // The current room's modes, from ROOMSTATE.
    modes: { slow: 0, emoteOnly: false, r9k: false },
    // Messages held by AutoMod in the current room, by held id (moderators only).
    held: new Map(),
    // Ids of own messages this page deleted, so their lines read "message deleted" rather than "by a moderator".
    selfDeletes: new Set(),
    // Own messages by client nonce: { nonce, room, text, status, styled, id, el, timer, reason }.
    own: new Map(),
    seenIds: new Set(),
    renderQueue: [],
    framePending: false,
    pinned: true,
    unseenBelow: 0,
    oldestId: null,
    noOlder: false,
    loadingOlder: false,
    // The newest message id seen in the current room: where catching up after a reconnect starts.
    lastId: '',
    // While catching up after a reconnect: { room, afterId, held: [messages that arrived meanwhile] }.
    catchUp: null,
    // The message the next send replies to: { id, login, displayName, text }.
    replyTo: null,
    // Reaction counts by message id: Map(emoji → count); and this user's own reactions, as "id emoji".
    reactions: new Map(),
    myReactions: new Set(),
    // Who is typing in the current room: login → { name, timer }.
    typers: new Map(),
    // The current room's logged-in viewers, from the chatters API, NAMES, JOIN and PART.
    chatters: { room: null, names: new Set(), anonymous: 0, loading: false, pending: [], timer: 0 },
    // The global emotes from /api/emotes, loaded when the picker first opens.
    emotes: null,
    // Whispers: conversations by peer login ({ login, unread, lastId }), the open conversation and its lines.
    whispers: { conversations: new Map(), open: null, ids: new Set(), pending: [], refreshTimer: 0 },
  };

  // Who this page chats as: display name, colour and badges from USERSTATE, the user id from GLOBALUSERSTATE, and the
  // room roles that decide which moderation actions are offered.
  function freshMe() {
    return { displayName: '', color: '', badges: [], userId: '', isMod: false, isBroadcaster: false };
  }

  function loadAuth() {
    try {
      const raw = localStorage.getItem(TOKEN_KEY);
      if (!raw) return null;
      const parsed = JSON.parse(raw);
      if (typeof parsed?.username === 'string' && typeof parsed?.token === 'string') return parsed;
    } catch (_) {
      // A corrupt or unavailable store just means "not logged in".
    }
    return null;
  }

  function saveAuth(auth) {
    try {
      if (auth) localStorage.setItem(TOKEN_KEY, JSON.stringify(auth));
      else localStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      // Private modes may refuse storage; the session still works until reload.
    }
  }

  function rememberId(id) {
    if (!id) return;
    state.seenIds.add(id);
    if (state.seenIds.size > LIMITS.seenIdsMax) {
      // Sets iterate in insertion order, so the first entry is the oldest.
      state.seenIds.delete(state.seenIds.values().next().value);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // DOM references.

  const ui = {
    app: $('app'),
    conn: $('conn'),
    connText: $('conn-text'),
    roomsToggle: $('rooms-toggle'),
    sidebar: $('sidebar'),
    scrim: $('scrim'),
    roomList: $('room-list'),
    roomsError: $('rooms-error'),
    roomTitle: $('room-title'),
    roomStyle: $('room-style'),
    roomViewers: $('room-viewers'),
    roomDesc: $('room-desc'),
    banner: $('banner'),
    bannerText: $('banner-text'),
    bannerAction: $('banner-action'),
    log: $('log'),
    lines: $('lines'),
    loadOlder: $('load-older'),
    moreBelow: $('more-below'),
    composer: $('composer'),
    composerError: $('composer-error'),
    input: $('input'),
    send: $('send'),
    counter: $('counter'),
    guestBar: $('guest-bar'),
    authAnon: $('auth-anon'),
    authUser: $('auth-user'),
    meName: $('me-name'),
    dialog: $('auth-dialog'),
    authForm: $('auth-form'),
    authTitle: $('auth-title'),
    authUsername: $('auth-username'),
    authPassword: $('auth-password'),
    authError: $('auth-error'),
    authSubmit: $('auth-submit'),
    tabLogin: $('tab-login'),
    tabSignup: $('tab-signup'),
    toast: $('toast'),
    roomModes: $('room-modes'),
    automodQueue: $('automod-queue'),
    automodTitle: $('automod-title'),
    automodList: $('automod-list'),
    settings: $('settings-dialog'),
    colorForm: $('color-form'),
    colorSwatches: $('color-swatches'),
    colorInput: $('settings-color'),
    colorPreview: $('color-preview'),
    colorSave: $('color-save'),
    colorMsg: $('color-msg'),
    usernameForm: $('username-form'),
    usernameInput: $('settings-username'),
    usernameSave: $('username-save'),
    usernameMsg: $('username-msg'),
    typing: $('typing'),
    replyBar: $('reply-bar'),
    replyText: $('reply-text'),
    replyCancel: $('reply-cancel'),
    emoteButton: $('emote-button'),
    emotePicker: $('emote-picker'),
    emotePickerStatus: $('emote-picker-status'),
    emoteGrid: $('emote-grid'),
    chattersButton: $('btn-chatters'),
    chattersPanel: $('chatters-panel'),
    chattersCounts: $('chatters-counts'),
    chattersList: $('chatters-list'),
    whispersButton: $('btn-whispers'),
    whispersUnread: $('whispers-unread'),
    whispersPanel: $('whispers-panel'),
    whispersTitle: $('whispers-title'),
    whisperBack: $('whisper-back'),
    whisperHome: $('whisper-home'),
    whisperNew: $('whisper-new'),
    whisperTo: $('whisper-to'),
    whispersEmpty: $('whispers-empty'),
    whisperList: $('whisper-list'),
    whisperThread: $('whisper-thread'),
    whisperMessages: $('whisper-messages'),
    whisperError: $('whisper-error'),
    whisperForm: $('whisper-form'),
    whisperInput: $('whisper-input'),
  };

  // ---------------------------------------------------------------------------------------------
  // Toasts, banner and composer errors.

  let toastTimer = 0;
  function toast(text) {
    ui.toast.textContent = text;
    ui.toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      ui.toast.hidden = true;
    }, LIMITS.toastMs);
  }

  let composerErrorTimer = 0;
  function showComposerError(text, kind, sticky) {
    ui.composerError.textContent = text;
    ui.composerError.dataset.kind = kind || 'error';
    ui.composerError.hidden = false;
    clearTimeout(composerErrorTimer);
    if (!sticky) {
      composerErrorTimer = setTimeout(() => {
        ui.composerError.hidden = true;
      }, LIMITS.composerErrorMs);
    }
  }

  function clearComposerError(kind) {
    if (kind && ui.composerError.dataset.kind !== kind) return;
    clearTimeout(composerErrorTimer);
    ui.composerError.hidden = true;
  }

  function setBanner(text, withAction) {
    if (!text) {
      ui.banner.hidden = true;
      return;
    }
    ui.bannerText.textContent = text;
    ui.bannerAction.hidden = !withAction;
    ui.banner.hidden = false;
  }

  function setConnState(kind, text) {
    ui.conn.dataset.state = kind;
    ui.connText.textContent = text;
  }

  // ---------------------------------------------------------------------------------------------
  // Rooms.

  function roomByName(name) {
    return state.rooms.find((r) => r.name === name) || null;
  }

  function formatViewers(n) {
    const v = Number(n) || 0;
    return v === 1 ? '1 viewer' : `${v.toLocaleString()} viewers`;
  }

  function renderRooms() {
    const existing = new Map();
    for (const li of ui.roomList.children) existing.set(li.dataset.room, li);
    const wanted = new Set(state.rooms.map((r) => r.name));
    for (const [name, li] of existing) {
      if (!wanted.has(name)) li.remove();
    }
    state.rooms.forEach((room, index) => {
      let li = existing.get(room.name);
      if (!li) {
        li = el('li', 'room-item');
        li.dataset.room = room.name;
        const button = el('button', 'room');
        button.type = 'button';
        const top = el('span', 'room-top');
        top.append(el('span', 'room-name'), el('span', 'room-viewers'));
        button.append(top, el('span', 'room-style'), el('span', 'room-desc-short'));
        button.addEventListener('click', () => {
          selectRoom(room.name);
          closeSidebar();
        });
        li.append(button);
      }
      if (ui.roomList.children[index] !== li) ui.roomList.insertBefore(li, ui.roomList.children[index] || null);
      const button = li.firstChild;
      button.querySelector('.room-name').textContent = `#${room.name}`;
      const viewers = button.querySelector('.room-viewers');
      viewers.textContent = String(Number(room.viewers) || 0);
      viewers.title = formatViewers(room.viewers);
      button.querySelector('.room-style').textContent = room.style || '';
      button.querySelector('.room-desc-short').textContent = room.description || '';
      button.setAttribute('aria-label', `#${room.name}, ${room.style || 'chat'}, ${formatViewers(room.viewers)}`);
      if (room.name === state.room) button.setAttribute('aria-current', 'true');
      else button.removeAttribute('aria-current');
    });
    renderRoomHead();
  }

  function renderRoomHead() {
    const room = roomByName(state.room);
    ui.roomTitle.textContent = state.room ? `#${state.room}` : 'Twitchy Chat';
    document.title = state.room ? `#${state.room} · Twitchy Chat` : 'Twitchy Chat';
    ui.roomStyle.hidden = !room?.style;
    ui.roomStyle.textContent = room?.style || '';
    ui.roomViewers.hidden = !room;
    ui.roomViewers.textContent = room ? formatViewers(room.viewers) : '';
    ui.roomDesc.textContent = room?.description || '';
  }

  let roomsTimer = 0;
  async function refreshRooms() {
    clearTimeout(roomsTimer);
    try {
      const response = await fetch('/api/rooms', { headers: { Accept: 'application/json' } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const rooms = await response.json();
      if (!Array.isArray(rooms)) throw new Error('unexpected response');
      state.rooms = rooms
        .filter((r) => r && typeof r.name === 'string')
        .map((r) => ({
          name: r.name,
          style: typeof r.style === 'string' ? r.style : '',
          description: typeof r.description === 'string' ? r.description : '',
          viewers: Number(r.viewers) || 0,
        }));
      ui.roomsError.hidden = true;
      renderRooms();
      if (!state.room && state.rooms.length) selectRoom(roomFromHash() || defaultRoom());
    } catch (err) {
      ui.roomsError.textContent = 'Could not load rooms; retrying…';
      ui.roomsError.hidden = false;
    }
    roomsTimer = setTimeout(refreshRooms, LIMITS.roomsRefreshMs);
  }

  function defaultRoom() {
    return (roomByName('lobby') || state.rooms[0]).name;
  }

  function roomFromHash() {
    const name = decodeURIComponent(location.hash.replace(/^#\/?/, '')).toLowerCase();
    return roomByName(name) ? name : null;
  }

  function selectRoom(name) {
    if (!name || name === state.room) return;
    const previous = state.room;
    state.room = name;
    if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
    // The first room keeps what was said before it was chosen (e.g. a refused login).
    if (previous) resetLines();
    state.lastId = '';
    state.catchUp = null;
    resetRoomState();
    renderRooms();
    addSystemLine(`Joining #${name}…`);
    conn.switchRoom(previous, name);
  }

  function openSidebar() {
    ui.app.classList.add('nav-open');
    ui.scrim.hidden = false;
    ui.roomsToggle.setAttribute('aria-expanded', 'true');
    const current = ui.roomList.querySelector('[aria-current="true"]') || ui.roomList.querySelector('button');
    current?.focus();
  }

  function closeSidebar() {
    if (!ui.app.classList.contains('nav-open')) return;
    ui.app.classList.remove('nav-open');
    ui.scrim.hidden = true;
    ui.roomsToggle.setAttribute('aria-expanded', 'false');
  }

  // ---------------------------------------------------------------------------------------------
  // Rendering: incoming items are queued and drawn once per animation frame.

  function enqueue(item) {
    state.renderQueue.push(item);
    const excess = state.renderQueue.length - LIMITS.renderQueueItemsMax;
    if (excess > 0) state.renderQueue.splice(0, excess);
    if (!state.framePending) {
      state.framePending = true;
      requestAnimationFrame(flush);
    }
  }

  function flush() {
    state.framePending = false;
    const items = state.renderQueue;
    state.renderQueue = [];
    if (!items.length) return;
    const pinned = state.pinned;
    const fragment = document.createDocumentFragment();
    let added = 0;
    for (const item of items) {
      const node = renderItem(item);
      if (node) {
        fragment.append(node);
        added++;
      }
    }
    ui.lines.append(fragment);
    trimLines(pinned ? LIMITS.linesPinnedMax : LIMITS.linesScrolledMax);
    if (pinned) {
      scrollToBottom();
    } else if (added) {
      state.unseenBelow += added;
      ui.moreBelow.textContent = `More messages below (${state.unseenBelow})`;
      ui.moreBelow.hidden = false;
    }
    updateLoadOlder();
  }

  function trimLines(max) {
    let excess = ui.lines.childElementCount - max;
    while (excess-- > 0) ui.lines.firstElementChild.remove();
    const first = ui.lines.querySelector('.line.msg[data-id]');
    state.oldestId = first ? first.dataset.id : null;
  }

  function scrollToBottom() {
    ui.log.scrollTop = ui.log.scrollHeight;
    state.pinned = true;
    state.unseenBelow = 0;
    ui.moreBelow.hidden = true;
  }

  function resetLines() {
    state.renderQueue = [];
    ui.lines.replaceChildren();
    // Ids only deduplicate within one view of a room: rejoining a room shows its history again.
    state.seenIds.clear();
    state.oldestId = null;
    state.noOlder = false;
    state.unseenBelow = 0;
    state.pinned = true;
    ui.moreBelow.hidden = true;
    updateLoadOlder();
  }

  function updateLoadOlder() {
    const first = ui.lines.querySelector('.line.msg[data-id]');
    state.oldestId = first ? first.dataset.id : null;
    ui.loadOlder.hidden = state.noOlder || !state.oldestId || ui.lines.childElementCount >= LIMITS.linesScrolledMax;
  }

  function renderItem(item) {
    switch (item.kind) {
      case 'msg':
        if (item.room !== state.room) return null;
        return renderMessage(item);
      case 'system':
        return renderSystem(item.text, item.tone, item.msgId);
      default:
        return null;
    }
  }

  function renderSystem(text, tone, msgId) {
    const line = el('div', `line system ${tone || ''}`.trim());
    if (msgId) line.dataset.msgId = msgId;
    line.append(el('span', 'system-text', text));
    return line;
  }

  function addSystemLine(text, tone, msgId) {
    enqueue({ kind: 'system', text, tone, msgId });
  }

  // Builds one chat line. Every piece of message data goes through textContent or an attribute.
  function renderMessage(m) {
    const line = el('div', 'line msg');
    if (m.id) line.dataset.id = m.id;
    if (m.reply?.id) line.append(renderReplyParent(m.reply));
    line.dataset.login = m.login;
    if (m.userId) line.dataset.userId = m.userId;
    if (m.historical) line.classList.add('historical');
    if (m.own) line.classList.add('own');
    const mine = !!m.own || isMine(m.login, m.userId);
    if (mine) line.classList.add('mine');

    const sent = new Date(m.sentMs || Date.now());
    const ts = el('time', 'ts', timeFormat.format(sent));
    ts.dateTime = sent.toISOString();
    ts.title = dateTimeFormat.format(sent);
    line.append(ts);

    const badges = parseBadges(m.badges);
    // Which actions a moderator gets on this line depends on the author's role (see the stylesheet).
    if (badges.some((b) => b.name === 'broadcaster')) line.classList.add('from-broadcaster');
    if (badges.some((b) => b.name === 'moderator')) line.classList.add('from-mod');
    if (m.login) line.append(renderActions(m.displayName || m.login, mine));
    if (badges.length) {
      const wrap = el('span', 'badges');
      for (const badge of badges) {
        const known = BADGES[badge.name];
        const label = known ? known.label : badge.name.replace(/[_-]+/g, ' ');
        const icon = el('span', `badge badge-${known ? badge.name : 'other'}`, known ? known.glyph : label.charAt(0).toUpperCase());
        icon.title = badge.version && badge.name === 'subscriber' ? `${label} (${badge.version} months)` : label;
        icon.setAttribute('role', 'img');
        icon.setAttribute('aria-label', icon.title);
        wrap.append(icon);
      }
      line.append(wrap);
    }

    const name = el('span', 'name', m.displayName || m.login);
    name.style.color = readableColor(m.color, m.login);
    if (m.displayName && m.displayName.toLowerCase() !== m.login) name.title = m.login;
    line.append(name);

    // A `/me` line reads as Twitch shows it: the whole text in the author's colour, in italics, with no colon.
    let text = m.text ?? '';
    let action = !!m.action;
    const inner = actionInner(text);
    if (inner !== null) {
      text = inner;
      action = true;
    }
    line.append(action ? ' ' : el('span', 'colon', ': '));
    const body = el('span', 'text');
    fillText(body, text, m.emotes);
    if (action) {
      line.classList.add('action');
      body.classList.add('action');
      body.style.color = name.style.color;
    }
    line.append(body);

    const original = m.original ?? '';
    const originalBox = el('span', 'original');
    originalBox.append(el('span', 'original-label', 'original'), el('span', 'original-text', original));
    if (original && original !== m.text) {
      line.classList.add('has-original');
      body.title = `Original: ${original}`;
    }
    line.append(originalBox);

    if (m.own) line.append(el('span', 'status'));
    line.append(renderTools(m.displayName || m.login), el('span', 'reactions'));
    if (m.id) renderReactions(line, m.id);
    if (m.deleted) showDeleted(line, m.deleted);
    return line;
  }

  // The text inside a CTCP ACTION (`\x01ACTION waves\x01`), or null for any other text.
  function actionInner(text) {
    const match = /^\u0001ACTION (.*?)\u0001?$/s.exec(text || '');
    return match ? match[1] : null;
  }

  // Twitch's `emotes` tag, "id:start-end,start-end/id:start-end": inclusive offsets in code points (not UTF-16
  // units) into the shown text. Returns the ranges in text order, dropping malformed, overlapping and out-of-text
  // ones, so a wrong tag can never hide or repeat text.
  function parseEmotesTag(tag, length) {
    const ranges = [];
    if (!tag) return ranges;
    for (const group of String(tag).split('/')) {
      const colon = group.indexOf(':');
      if (colon <= 0) continue;
      const id = group.slice(0, colon);
      if (!/^[A-Za-z0-9_-]{1,64}$/.test(id)) continue;
      for (const range of group.slice(colon + 1).split(',')) {
        const match = /^(\d+)-(\d+)$/.exec(range);
        if (!match) continue;
        const start = Number(match[1]);
        const end = Number(match[2]);
        if (start <= end && end < length) ranges.push({ id, start, end });
      }
    }
    ranges.sort((a, b) => a.start - b.start);
    const kept = [];
    let next = 0;
    for (const range of ranges) {
      if (range.start < next) continue;
      kept.push(range);
      next = range.end + 1;
    }
    return kept;
  }

  // Fills `node` with `text`, its emote codes (per the `emotes` tag) drawn as images whose alt text is the code.
  function fillText(node, text, emotesTag) {
    const chars = Array.from(text);
    const ranges = parseEmotesTag(emotesTag, chars.length);
    if (!ranges.length) {
      node.textContent = text;
      return;
    }
    node.replaceChildren();
    let at = 0;
    for (const range of ranges) {
      if (range.start > at) node.append(chars.slice(at, range.start).join(''));
      node.append(emoteImage(range.id, chars.slice(range.start, range.end + 1).join('')));
      at = range.end + 1;
    }
    if (at < chars.length) node.append(chars.slice(at).join(''));
  }

  function emoteImage(id, code) {
    const img = document.createElement('img');
    img.className = 'emote';
    img.src = `/emotes/${encodeURIComponent(id)}.svg`;
    img.alt = code;
    img.title = code;
    img.dataset.emoteId = id;
    return img;
  }

  // "Replying to @name: text" above a reply.
  function renderReplyParent(reply) {
    const parent = el('div', 'reply-parent');
    parent.dataset.parentId = reply.id;
    const who = reply.displayName || reply.login;
    parent.append(el('span', 'reply-parent-label', `Replying to @${who}: `), el('span', 'reply-parent-body', preview(reply.body)));
    parent.title = `Replying to @${who}: ${reply.body}`;
    return parent;
  }

  function preview(text) {
    const chars = Array.from(actionInner(text) ?? text ?? '');
    return chars.length > LIMITS.replyPreviewCharsMax ? `${chars.slice(0, LIMITS.replyPreviewCharsMax).join('')}…` : chars.join('');
  }

  // Reply and react, for anyone signed in (the stylesheet hides them from guests and on lines without an id).
  function renderTools(name) {
    const wrap = el('span', 'tools');
    const reply = el('button', 'tool tool-reply', '↩');
    reply.type = 'button';
    reply.dataset.action = 'reply';
    reply.title = `Reply to ${name}`;
    reply.setAttribute('aria-label', reply.title);
    const react = el('button', 'tool tool-react', '☺');
    react.type = 'button';
    react.dataset.action = 'react';
    react.title = `React to the message from ${name}`;
    react.setAttribute('aria-label', react.title);
    react.setAttribute('aria-expanded', 'false');
    wrap.append(reply, react);
    return wrap;
  }

  // The moderation buttons of one line. Every line gets them; the stylesheet shows them only to moderators (the
  // app carries `can-moderate`), so a role granted or revoked later applies to lines already on screen. The
  // author's own lines get only "delete".
  function renderActions(name, mine) {
    const wrap = el('span', 'actions');
    const button = (action, glyph, label, modOnly) => {
      const b = el('button', `act act-${action}${modOnly ? ' act-mod' : ''}`, glyph);
      b.type = 'button';
      b.dataset.action = action;
      b.title = label;
      b.setAttribute('aria-label', label);
      wrap.append(b);
    };
    button('delete', '✕', mine ? 'Delete your message' : `Delete this message from ${name}`, !mine);
    if (!mine) {
      button('timeout', '◔', `Time out ${name} for 10 minutes`, true);
      button('ban', '⊘', `Ban ${name}`, true);
    }
    return wrap;
  }

  // Whether a line was written by the account this page is logged in as (by user id when known, since the login
  // can change).
  function isMine(login, userId) {
    if (!state.auth) return false;
    if (userId && state.me.userId) return userId === state.me.userId;
    return !!login && login === state.auth.username;
  }

  function showDeleted(line, text) {
    line.classList.add('deleted');
    line.classList.remove('show-original', 'has-original');
    const body = line.querySelector('.text');
    body.textContent = text;
    body.removeAttribute('title');
    // The removed text is not kept in the page, not even as the "original".
    line.querySelector('.original-text').textContent = '';
  }

  function addChatMessage(m) {
    // While catching up after a reconnect, lines of the room wait until the missed ones are shown before them.
    if (state.catchUp && m.room === state.catchUp.room) {
      state.catchUp.held.push(m);
      return;
    }
    if (m.id) {
      if (state.seenIds.has(m.id)) return;
      rememberId(m.id);
      if (m.room === state.room) noteSeen(m.id);
    }
    enqueue({ kind: 'msg', ...m });
  }

  // Message ids are time-ordered and of fixed width, so the newest is the greatest string.
  function noteSeen(id) {
    if (id && id > state.lastId) state.lastId = id;
  }

  // ---------------------------------------------------------------------------------------------
  // Own messages: pending until the server's USERSTATE acknowledgement carries our nonce.

  const OWN_STATUS_TEXT = { pending: 'sending…', acked: '', failed: 'not sent', held: 'held for moderators' };

  function applyOwnStatus(entry) {
    const line = entry.el;
    if (!line) return;
    line.classList.toggle('pending', entry.status === 'pending');
    line.classList.toggle('acked', entry.status === 'acked');
    line.classList.toggle('failed', entry.status === 'failed');
    line.classList.toggle('held', entry.status === 'held');
    if (entry.id) line.dataset.id = entry.id;
    line.dataset.nonce = entry.nonce;
    if ((entry.status === 'failed' || entry.status === 'held') && entry.failMsgId) line.dataset.msgId = entry.failMsgId;
    else delete line.dataset.msgId;
    const status = line.querySelector('.status');
    if (status) {
      status.textContent = entry.status === 'failed' && entry.reason ? `not sent: ${entry.reason}` : OWN_STATUS_TEXT[entry.status];
      if (entry.status === 'pending') status.title = 'Waiting for the server to confirm';
      else if (entry.status === 'failed' || entry.status === 'held') status.title = entry.failText || entry.reason;
      else status.title = '';
    }
    if (entry.styled !== null && !line.classList.contains('deleted')) {
      const body = line.querySelector('.text');
      fillText(body, actionInner(entry.styled) ?? entry.styled, entry.emotes);
      if (entry.styled !== entry.text) {
        line.classList.add('has-original');
        body.title = `Original: ${entry.text}`;
      }
    }
  }

  function setOwnStatus(entry, status, reason) {
    entry.status = status;
    entry.reason = reason || '';
    clearTimeout(entry.timer);
    if (status !== 'pending') {
      // Forget settled entries after a while; their lines keep the final state. A held message waits for a
      // moderator, which can take much longer.
      const keepMs = status === 'held' ? LIMITS.heldWaitMs : LIMITS.ackWaitMs * 4;
      entry.timer = setTimeout(() => state.own.delete(entry.nonce), keepMs);
    }
    applyOwnStatus(entry);
  }

  // A refusal NOTICE carries no nonce (as on Twitch), but refusals are immediate while accepted
  // messages wait for styling and storage, so the newest unechoed pending message is the one refused.
  function newestUnechoedPending(room) {
    let found = null;
    for (const entry of state.own.values()) {
      if (entry.status === 'pending' && entry.styled === null && entry.room === room) found = entry;
    }
    return found;
  }

  // The own line is drawn at once, not on the next frame, so it shows "pending" from the moment
  // the message leaves; lines already queued are drawn first to keep the order.
  function drawOwnLine(entry) {
    flush();
    entry.el = renderMessage({
      id: entry.id,
      login: state.auth?.username || '',
      userId: state.me.userId,
      displayName: state.me.displayName || state.auth?.username || '',
      color: state.me.color,
      badges: state.me.badges,
      text: entry.styled ?? entry.text,
      original: actionInner(entry.text) ?? entry.text,
      emotes: entry.emotes,
      reply: entry.reply,
      sentMs: Date.now(),
      own: true,
    });
    applyOwnStatus(entry);
    ui.lines.append(entry.el);
    trimLines(LIMITS.linesPinnedMax);
    scrollToBottom();
    updateLoadOlder();
  }

  // Without echo-message the server does not send a user's own PRIVMSG back, so the styled text
  // is read from the room's recent history by the acknowledged id.
  async function fetchOwnStyled(entry) {
    if (entry.styled !== null || !entry.id) return;
    try {
      const url = `/api/rooms/${encodeURIComponent(entry.room)}/messages?limit=${LIMITS.ownLookupMessagesMax}`;
      const response = await fetch(url, { headers: { Accept: 'application/json' } });
      if (!response.ok) return;
      const body = await response.json();
      const found = (Array.isArray(body?.messages) ? body.messages : []).find((m) => m && String(m.id) === entry.id);
      if (found && entry.styled === null && typeof found.text === 'string') {
        entry.styled = found.action ? `\u0001ACTION ${found.text}\u0001` : found.text;
        entry.emotes = typeof found.emotes === 'string' ? found.emotes : '';
        applyOwnStatus(entry);
      }
    } catch (_) {
      // The typed text stays on screen; only the styled version is missing.
    }
  }

  function sendChat(rawText) {
    const text = oneLine(rawText).trim();
    if (!text) return false;
    const count = charCount(text);
    if (count > LIMITS.messageCharsMax) {
      showComposerError(`Your message is ${count} characters; the limit is ${LIMITS.messageCharsMax}.`, 'length', true);
      return false;
    }
    if (!state.auth) {
      showComposerError('Log in or sign up to chat.', 'auth');
      return false;
    }
    if (!conn.isReady()) {
      showComposerError('Not connected right now; your message was kept. It can be sent once chat reconnects.', 'conn');
      return false;
    }
    if (isChatCommand(text)) return sendCommand(text);
    let body = text;
    const me = /^\/me\s+(.+)$/i.exec(text);
    if (me) body = `\u0001ACTION ${me[1]}\u0001`;
    const nonce = randomNonce();
    const reply = state.replyTo && state.replyTo.room === state.room ? state.replyTo : null;
    const entry = {
      nonce,
      room: state.room,
      text: body,
      status: 'pending',
      styled: null,
      emotes: '',
      reply: reply ? { id: reply.id, login: reply.login, displayName: reply.displayName, body: reply.text } : null,
      id: null,
      el: null,
      timer: 0,
      reason: '',
      failMsgId: '',
      failText: '',
    };
    entry.timer = setTimeout(() => {
      if (entry.status === 'pending') setOwnStatus(entry, 'failed', 'no confirmation from the server');
    }, LIMITS.ackWaitMs);
    state.own.set(nonce, entry);
    const tags = [`client-nonce=${escapeTagValue(nonce)}`];
    if (reply) tags.push(`reply-parent-msg-id=${escapeTagValue(reply.id)}`);
    conn.send(`@${tags.join(';')} PRIVMSG #${state.room} :${body}`);
    typingDone();
    cancelReply();
    drawOwnLine(entry);
    return true;
  }

  // A chat command ("/timeout bob", ".ban bob") rather than a message; "/me" is a message.
  function isChatCommand(text) {
    const match = /^([/.])(\w+)/.exec(text);
    if (!match || match[2].toLowerCase() === 'me') return false;
    return match[1] === '/' || CHAT_COMMANDS.has(match[2].toLowerCase());
  }

  // Sends a chat command to the current room. The server answers with a NOTICE (and, for moderation, with the
  // CLEARCHAT / CLEARMSG / ROOMSTATE every viewer gets), so no own line is drawn for it.
  function sendCommand(text) {
    if (!state.auth) {
      showComposerError('Log in or sign up to chat.', 'auth');
      return false;
    }
    if (!conn.isReady()) {
      showComposerError('Not connected right now. Try again once chat reconnects.', 'conn');
      return false;
    }
    conn.send(`PRIVMSG #${state.room} :${oneLine(text)}`);
    return true;
  }

  // ---------------------------------------------------------------------------------------------
  // Moderation: actions on chat lines, deletions, timeouts and clears, room modes, the AutoMod queue.

  function onLineAction(button) {
    const line = button.closest('.line.msg');
    if (!line) return;
    const id = line.dataset.id || '';
    const login = line.dataset.login || '';
    switch (button.dataset.action) {
      case 'delete':
        if (!id) return;
        if (line.classList.contains('mine')) rememberSelfDelete(id);
        sendCommand(`/delete ${id}`);
        break;
      case 'timeout':
        if (login) sendCommand(`/timeout ${login} ${TIMEOUT_ACTION_SECS}`);
        break;
      case 'ban':
        if (login) sendCommand(`/ban ${login}`);
        break;
      case 'reply':
        if (id) startReply(line);
        break;
      case 'react':
        toggleReactPicker(line, button);
        break;
      case 'react-with':
        if (id) sendReaction(id, button.dataset.emoji || '');
        closeReactPicker();
        break;
      default:
        break;
    }
  }

  function rememberSelfDelete(id) {
    state.selfDeletes.add(id);
    if (state.selfDeletes.size > LIMITS.selfDeletesMax) {
      state.selfDeletes.delete(state.selfDeletes.values().next().value);
    }
  }

  // The USERSTATE for the room says whether this account moderates it: `mod=1`, or the broadcaster badge (Twitch
  // gives the broadcaster `mod=0`).
  function applyRole(tags) {
    if (!state.auth) return;
    const badges = parseBadges(tags.badges || '');
    const wasModerator = canModerate();
    if ('mod' in tags || 'badges' in tags) {
      state.me.isBroadcaster = badges.some((b) => b.name === 'broadcaster');
      state.me.isMod = tags.mod === '1' || badges.some((b) => b.name === 'moderator');
    }
    if (tags['user-id']) state.me.userId = tags['user-id'];
    renderRole();
    if (canModerate() && !wasModerator) loadHeld(state.room);
    if (!canModerate() && wasModerator) clearHeld();
  }

  function canModerate() {
    return !!state.auth && (state.me.isMod || state.me.isBroadcaster);
  }

  function renderRole() {
    ui.app.classList.toggle('can-moderate', canModerate());
    ui.app.classList.toggle('is-broadcaster', !!state.auth && state.me.isBroadcaster);
  }

  // Leaving a room (or logging out) forgets the roles and the queue that belonged to it.
  function resetRoomState() {
    state.me.isMod = false;
    state.me.isBroadcaster = false;
    renderRole();
    clearHeld();
    state.modes = { slow: 0, emoteOnly: false, r9k: false };
    renderModes();
    cancelReply();
    closeReactPicker();
    clearTypers();
    typing.room = null;
  }

  // Queued lines not yet drawn are changed too, so a deletion that arrives in the same frame as its message wins.
  function forEachMessage(match, apply) {
    for (const item of state.renderQueue) {
      if (item.kind === 'msg' && match(item)) item.deleted = apply(null, item);
    }
    for (const line of ui.lines.querySelectorAll('.line.msg')) {
      if (match({ id: line.dataset.id || '', login: line.dataset.login || '', userId: line.dataset.userId || '' })) {
        showDeleted(line, apply(line, null));
      }
    }
  }

  function markDeleted(id) {
    if (!id) return;
    const text = state.selfDeletes.has(id) ? 'message deleted' : 'message deleted by a moderator';
    forEachMessage((m) => m.id === id, () => text);
  }

  function formatDuration(seconds) {
    const units = [[604800, 'week'], [86400, 'day'], [3600, 'hour'], [60, 'minute'], [1, 'second']];
    for (const [size, name] of units) {
      if (seconds >= size && seconds % size === 0) {
        const n = seconds / size;
        return `${n} ${name}${n === 1 ? '' : 's'}`;
      }
    }
    return `${seconds} seconds`;
  }

  // CLEARCHAT: with a login, that user was timed out or banned and their lines are hidden; without one, a
  // moderator cleared the chat.
  function clearChat(login, tags) {
    if (!login) {
      resetLines();
      addSystemLine('Chat was cleared by a moderator', 'info', 'clearchat');
      return;
    }
    const userId = tags['target-user-id'] || '';
    forEachMessage(
      (m) => (userId && m.userId ? m.userId === userId : m.login === login),
      () => '<message deleted>',
    );
    const seconds = Number(tags['ban-duration']) || 0;
    const me = isMine(login, userId);
    let text;
    if (seconds > 0) {
      text = me ? `You have been timed out for ${formatDuration(seconds)}.` : `${login} has been timed out for ${formatDuration(seconds)}.`;
    } else {
      text = me ? 'You have been banned from this room.' : `${login} has been banned.`;
    }
    addSystemLine(text, me ? 'warn' : 'info', seconds > 0 ? 'timeout' : 'ban');
  }

  // ROOMSTATE: the JOIN's carries every mode and only sets them; later ones carry what changed and are announced.
  function applyRoomState(tags, initial) {
    const next = initial ? { slow: 0, emoteOnly: false, r9k: false } : { ...state.modes };
    if ('slow' in tags) next.slow = Math.max(0, Number(tags.slow) || 0);
    if ('emote-only' in tags) next.emoteOnly = tags['emote-only'] === '1';
    if ('r9k' in tags) next.r9k = tags.r9k === '1';
    const before = state.modes;
    state.modes = next;
    renderModes();
    if (initial) return;
    if (next.slow !== before.slow) {
      addSystemLine(next.slow ? `Slow mode on: ${next.slow} s` : 'Slow mode off', 'info', 'roomstate-slow');
    }
    if (next.emoteOnly !== before.emoteOnly) {
      addSystemLine(`Emote-only mode ${next.emoteOnly ? 'on' : 'off'}`, 'info', 'roomstate-emote-only');
    }
    if (next.r9k !== before.r9k) {
      addSystemLine(`Unique-chat mode ${next.r9k ? 'on' : 'off'}`, 'info', 'roomstate-r9k');
    }
  }

  function renderModes() {
    const chips = [];
    if (state.modes.slow) chips.push(['slow', `Slow mode: ${state.modes.slow} s`]);
    if (state.modes.emoteOnly) chips.push(['emote-only', 'Emote-only']);
    if (state.modes.r9k) chips.push(['r9k', 'Unique chat']);
    ui.roomModes.replaceChildren(
      ...chips.map(([key, text]) => {
        const chip = el('span', 'mode-chip', text);
        chip.dataset.mode = key;
        return chip;
      }),
    );
    ui.roomModes.hidden = chips.length === 0;
  }

  // AutoMod queue (moderators only): held messages with Allow / Deny.

  function addHeld(item) {
    if (!item.heldId || state.held.has(item.heldId)) return;
    const li = el('li', 'held');
    li.dataset.heldId = item.heldId;
    const head = el('div', 'held-head');
    const name = el('span', 'name', item.displayName || item.login);
    name.style.color = readableColor(item.color || '', item.login);
    const reason = AUTOMOD_REASONS[item.reason] || item.reason || 'flagged';
    head.append(name, el('span', 'held-reason', `held: ${reason}`));
    const text = el('p', 'held-text', item.text);
    const actions = el('div', 'held-actions');
    const who = item.displayName || item.login;
    for (const [verb, label, cls] of [['allow', 'Allow', 'primary'], ['deny', 'Deny', 'ghost']]) {
      const button = el('button', `btn small ${cls} held-${verb}`, label);
      button.type = 'button';
      button.dataset.verb = verb;
      button.setAttribute('aria-label', `${label} the message from ${who}`);
      actions.append(button);
    }
    li.append(head, text, actions);
    state.held.set(item.heldId, li);
    ui.automodList.append(li);
    while (state.held.size > LIMITS.heldItemsMax) {
      const [oldest, node] = state.held.entries().next().value;
      node.remove();
      state.held.delete(oldest);
    }
    renderHeldCount();
  }

  function removeHeld(heldId) {
    const li = state.held.get(heldId);
    if (!li) return;
    li.remove();
    state.held.delete(heldId);
    renderHeldCount();
  }

  function clearHeld() {
    state.held.clear();
    ui.automodList.replaceChildren();
    renderHeldCount();
  }

  function renderHeldCount() {
    const n = state.held.size;
    ui.automodTitle.textContent = `Held by AutoMod (${n})`;
    ui.automodQueue.hidden = n === 0;
  }

  function onHeldAction(button) {
    const li = button.closest('.held');
    if (!li) return;
    if (sendCommand(`/automod ${button.dataset.verb} ${li.dataset.heldId}`)) {
      // The item leaves when the server says it was resolved (automod-resolved), for every moderator at once.
      for (const b of li.querySelectorAll('button')) b.disabled = true;
    }
  }

  // Messages already held when this page became a moderator come from the moderation API.
  async function loadHeld(room) {
    const token = state.auth?.token;
    if (!token || !room) return;
    try {
      const response = await fetch(`/api/rooms/${encodeURIComponent(room)}/moderation`, {
        headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
      });
      if (!response.ok) return;
      const body = await response.json();
      if (room !== state.room || !canModerate()) return;
      for (const h of Array.isArray(body?.held) ? body.held : []) {
        if (!h) continue;
        addHeld({
          heldId: String(h.held_id ?? ''),
          login: String(h.login || ''),
          displayName: String(h.display_name || h.login || ''),
          reason: String(h.reason || ''),
          text: String(h.text ?? ''),
        });
      }
    } catch (_) {
      // Live automod-held notices still fill the queue.
    }
  }

  function onUserNotice(msg, room) {
    const tags = msg.tags;
    const msgId = tags['msg-id'] || '';
    if (msgId === 'automod-held') {
      if (room === state.room && canModerate()) {
        addHeld({
          heldId: tags['held-id'] || '',
          login: tags.login || '',
          displayName: tags['display-name'] || tags.login || '',
          color: tags.color || '',
          reason: tags.reason || '',
          text: msg.params[1] ?? '',
        });
      }
      return;
    }
    if (msgId === 'automod-resolved') {
      if (room === state.room) removeHeld(tags['held-id'] || '');
      return;
    }
    if (room === state.room) {
      const text = tags['system-msg'] || msg.params[1] || '';
      if (text) addSystemLine(text, 'info', msgId);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Chat features: emote picker, replies, reactions, typing indicators, the viewer list, whispers, and catching up
  // after a reconnect.

  function lineById(id) {
    return id ? ui.lines.querySelector(`.line.msg[data-id="${CSS.escape(id)}"]`) : null;
  }

  // The text a line shows, emote images read back as their codes.
  function shownText(node) {
    let text = '';
    for (const child of node?.childNodes || []) text += child.nodeType === Node.TEXT_NODE ? child.textContent : child.alt || '';
    return text;
  }

  // Makes `container`'s children one per key, in order, keeping the nodes of keys already there (`node.dataset.key`),
  // so that a refresh does not take focus or a click target away. `create(key)` builds a node; `update(node, key)`
  // brings one up to date.
  function syncList(container, keys, create, update) {
    const existing = new Map();
    for (const node of container.children) existing.set(node.dataset.key, node);
    const wanted = new Set(keys);
    for (const [key, node] of existing) {
      if (!wanted.has(key)) node.remove();
    }
    keys.forEach((key, index) => {
      let node = existing.get(key);
      if (!node) {
        node = create(key);
        node.dataset.key = key;
      }
      update(node, key);
      if (container.children[index] !== node) container.insertBefore(node, container.children[index] || null);
    });
  }

  function authHeaders() {
    return { Authorization: `Bearer ${state.auth?.token || ''}`, Accept: 'application/json' };
  }

  // Emote picker: the global emotes from /api/emotes; choosing one inserts its code at the caret.

  // A URL from the API is used only when it stays on this server (the page's CSP allows images from here only).
  function sameOriginPath(url, fallback) {
    return typeof url === 'string' && /^\/[^/\\]/.test(url) ? url : fallback;
  }

  async function loadEmotes() {
    if (state.emotes) return state.emotes;
    const response = await fetch('/api/emotes', { headers: { Accept: 'application/json' } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const list = await response.json();
    state.emotes = (Array.isArray(list) ? list : [])
      .filter((e) => e && typeof e.code === 'string' && e.code && e.id !== undefined && e.id !== null)
      .map((e) => {
        const id = String(e.id);
        return { id, code: e.code, url: sameOriginPath(e.url, `/emotes/${encodeURIComponent(id)}.svg`) };
      });
    return state.emotes;
  }

  // The `emotes` tag for text the server sent without one (whispers from the HTTP API): whole words that are
  // codes, at code-point offsets, as the server computes it.
  function localEmotesTag(text) {
    if (!state.emotes) return '';
    const ids = new Map(state.emotes.map((e) => [e.code, e.id]));
    const found = new Map();
    let at = 0;
    for (const word of text.split(' ')) {
      const length = Array.from(word).length;
      const id = ids.get(word);
      if (id !== undefined) {
        if (!found.has(id)) found.set(id, []);
        found.get(id).push(`${at}-${at + length - 1}`);
      }
      at += length + 1;
    }
    return [...found].map(([id, ranges]) => `${id}:${ranges.join(',')}`).join('/');
  }

  async function toggleEmotePicker(wanted) {
    const open = wanted ?? ui.emotePicker.hidden;
    ui.emotePicker.hidden = !open;
    ui.emoteButton.setAttribute('aria-expanded', String(open));
    if (!open || ui.emoteGrid.childElementCount) return;
    ui.emotePickerStatus.hidden = false;
    ui.emotePickerStatus.textContent = 'Loading emotes…';
    try {
      const emotes = await loadEmotes();
      if (ui.emoteGrid.childElementCount) return;
      for (const emote of emotes) {
        const button = el('button', 'emote-choice');
        button.type = 'button';
        button.dataset.code = emote.code;
        button.title = emote.code;
        button.setAttribute('aria-label', `Insert ${emote.code}`);
        const img = document.createElement('img');
        img.className = 'emote';
        img.src = emote.url;
        img.alt = emote.code;
        button.append(img);
        ui.emoteGrid.append(button);
      }
      ui.emotePickerStatus.hidden = true;
    } catch (_) {
      ui.emotePickerStatus.textContent = 'Could not load the emotes. Close and open the picker to try again.';
    }
  }

  function insertAtCaret(code) {
    const input = ui.input;
    const start = input.selectionStart ?? input.value.length;
    const end = input.selectionEnd ?? start;
    const before = input.value.slice(0, start);
    const after = input.value.slice(end);
    // Codes are matched as whole words, so the inserted one is kept apart from its neighbours.
    const lead = before && !/\s$/.test(before) ? ' ' : '';
    const trail = after.startsWith(' ') ? '' : ' ';
    input.value = `${before}${lead}${code}${trail}${after}`;
    const caret = before.length + lead.length + code.length + trail.length;
    input.focus();
    input.setSelectionRange(caret, caret);
    updateCounter();
    onComposerTyping();
  }

  // Replies: the next message carries `reply-parent-msg-id`; the bar above the input says to what.

  function startReply(line) {
    if (!state.auth || !line.dataset.id || line.classList.contains('deleted')) return;
    state.replyTo = {
      room: state.room,
      id: line.dataset.id,
      login: line.dataset.login || '',
      displayName: line.querySelector('.name')?.textContent || line.dataset.login || '',
      text: shownText(line.querySelector('.text')),
    };
    ui.replyText.textContent = `Replying to @${state.replyTo.login}: ${preview(state.replyTo.text)}`;
    ui.replyBar.hidden = false;
    ui.input.focus();
  }

  function cancelReply() {
    state.replyTo = null;
    ui.replyBar.hidden = true;
    ui.replyText.textContent = '';
  }

  // Reactions: a TAGMSG with `+draft/react` and `+draft/reply`; the server counts once per user and emoji and says
  // the count in `twitchy/reaction-count`. A sender never gets its own back, so its own count is added here.

  function setReactionCount(id, emoji, count) {
    let counts = state.reactions.get(id);
    if (!counts) {
      counts = new Map();
      state.reactions.set(id, counts);
      if (state.reactions.size > LIMITS.reactedMessagesMax) state.reactions.delete(state.reactions.keys().next().value);
    }
    counts.set(emoji, count);
    const line = lineById(id);
    if (line) renderReactions(line, id);
  }

  function renderReactions(line, id) {
    const wrap = line.querySelector('.reactions');
    const counts = state.reactions.get(id);
    if (!wrap || !counts) return;
    wrap.replaceChildren();
    for (const [emoji, count] of counts) {
      if (!(count > 0)) continue;
      const mine = state.myReactions.has(`${id} ${emoji}`);
      const chip = el('button', `reaction${mine ? ' mine' : ''}`);
      chip.type = 'button';
      chip.dataset.action = 'react-with';
      chip.dataset.emoji = emoji;
      chip.append(el('span', 'reaction-emoji', emoji), el('span', 'reaction-count', String(count)));
      chip.setAttribute('aria-label', `${emoji}: ${count} ${count === 1 ? 'reaction' : 'reactions'}`);
      chip.setAttribute('aria-pressed', String(mine));
      wrap.append(chip);
    }
  }

  // Client-tag messages sent in the current window, and reactions waiting for room in it.
  const tagMsgs = { sentMs: [], queue: [], timer: 0 };

  function tagMsgRoom(kind) {
    const now = Date.now();
    while (tagMsgs.sentMs.length && now - tagMsgs.sentMs[0] >= LIMITS.tagMsgWindowMs) tagMsgs.sentMs.shift();
    const max = kind === 'typing' ? LIMITS.typingTagMsgsPerWindowMax : LIMITS.tagMsgsPerWindowMax;
    return tagMsgs.sentMs.length < max;
  }

  // Sends a TAGMSG if the window has room for it; returns whether it went.
  function sendTagMsg(line, kind) {
    if (!conn.isReady() || !tagMsgRoom(kind)) return false;
    tagMsgs.sentMs.push(Date.now());
    conn.send(line);
    return true;
  }

  function flushReactions() {
    clearTimeout(tagMsgs.timer);
    while (tagMsgs.queue.length) {
      const next = tagMsgs.queue[0];
      if (next.room !== state.room) {
        tagMsgs.queue.shift();
        continue;
      }
      if (!sendTagMsg(next.line, 'reaction')) break;
      tagMsgs.queue.shift();
    }
    if (tagMsgs.queue.length) {
      const waitMs = Math.max(50, LIMITS.tagMsgWindowMs - (Date.now() - (tagMsgs.sentMs[0] || 0)));
      tagMsgs.timer = setTimeout(flushReactions, waitMs);
    }
  }

  function sendReaction(id, emoji) {
    if (!emoji || !state.auth || !conn.isReady()) return;
    if (tagMsgs.queue.length >= LIMITS.reactionsQueuedMax) return;
    tagMsgs.queue.push({
      room: state.room,
      line: `@+draft/react=${escapeTagValue(emoji)};+draft/reply=${escapeTagValue(id)} TAGMSG #${state.room}`,
    });
    flushReactions();
    const key = `${id} ${emoji}`;
    if (state.myReactions.has(key)) return;
    state.myReactions.add(key);
    if (state.myReactions.size > LIMITS.reactedMessagesMax * REACTION_EMOJIS.length) {
      state.myReactions.delete(state.myReactions.values().next().value);
    }
    setReactionCount(id, emoji, (state.reactions.get(id)?.get(emoji) || 0) + 1);
  }

  let reactPicker = null;

  function toggleReactPicker(line, button) {
    const wasHere = reactPicker && line.contains(reactPicker);
    closeReactPicker();
    if (wasHere || !state.auth || !line.dataset.id) return;
    reactPicker = el('span', 'react-picker');
    reactPicker.setAttribute('role', 'group');
    reactPicker.setAttribute('aria-label', 'Reactions');
    for (const emoji of REACTION_EMOJIS) {
      const choice = el('button', 'tool react-choice', emoji);
      choice.type = 'button';
      choice.dataset.action = 'react-with';
      choice.dataset.emoji = emoji;
      choice.setAttribute('aria-label', `React with ${emoji}`);
      reactPicker.append(choice);
    }
    button.setAttribute('aria-expanded', 'true');
    button.after(reactPicker);
    reactPicker.firstChild.focus();
  }

  function closeReactPicker() {
    if (!reactPicker) return;
    reactPicker.parentNode?.querySelector('.tool-react')?.setAttribute('aria-expanded', 'false');
    reactPicker.remove();
    reactPicker = null;
  }

  // Typing indicators: `+typing=active` at most every few seconds while the input has text, `+typing=done` when it
  // is sent or cleared. Commands are not announced.

  const typing = { sentMs: 0, room: null };

  function onComposerTyping() {
    const text = ui.input.value.trim();
    if (!text) {
      typingDone();
      return;
    }
    // A command being typed ("/", "/ti", "/timeout …") says nothing either way.
    if ((text.startsWith('/') && !/^\/me\s/i.test(text)) || isChatCommand(text)) return;
    if (!state.auth || !conn.isReady()) return;
    const now = Date.now();
    if (typing.room === state.room && now - typing.sentMs < LIMITS.typingSendEveryMs) return;
    if (!sendTagMsg(`@+typing=active TAGMSG #${state.room}`, 'typing')) return;
    typing.sentMs = now;
    typing.room = state.room;
  }

  function typingDone() {
    if (!typing.room) return;
    const room = typing.room;
    typing.room = null;
    typing.sentMs = 0;
    if (room === state.room) sendTagMsg(`@+typing=done TAGMSG #${room}`, 'typing');
  }

  function showTyper(login, name) {
    const known = state.typers.get(login);
    if (known) clearTimeout(known.timer);
    const timer = setTimeout(() => hideTyper(login), LIMITS.typingShowMs);
    state.typers.set(login, { name, timer });
    renderTypers();
  }

  function hideTyper(login) {
    const known = state.typers.get(login);
    if (!known) return;
    clearTimeout(known.timer);
    state.typers.delete(login);
    renderTypers();
  }

  function clearTypers() {
    for (const { timer } of state.typers.values()) clearTimeout(timer);
    state.typers.clear();
    renderTypers();
  }

  function renderTypers() {
    const names = [...state.typers.values()].map((t) => t.name);
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = 'Several people are typing…';
    ui.typing.textContent = text;
    ui.typing.classList.toggle('active', !!text);
  }

  function onTagMsg(msg, room) {
    if (!room || room !== state.room) return;
    const tags = msg.tags;
    const login = nickOf(msg.prefix);
    const react = tags['+draft/react'];
    const parent = tags['+draft/reply'];
    if (react && parent) {
      const count = Number(tags['twitchy/reaction-count']);
      const known = state.reactions.get(parent)?.get(react) || 0;
      setReactionCount(parent, react, Number.isInteger(count) && count > 0 ? count : known + 1);
    }
    const status = tags['+typing'];
    // This account typing in another tab is not news.
    if (!status || isMine(login, tags['user-id'] || '')) return;
    if (status === 'active') showTyper(login, tags['display-name'] || login);
    else hideTyper(login);
  }

  // The viewer list: logged-in users from the chatters API (with the counts), then kept live by NAMES, JOIN and
  // PART (the `twitch.tv/membership` capability). Anonymous viewers are only counted, as on Twitch.

  function isAnonymousLogin(login) {
    return /^justinfan\d+$/.test(login);
  }

  function resetChatters(room) {
    const c = state.chatters;
    clearTimeout(c.timer);
    c.room = room;
    c.names = new Set();
    c.loggedIn = 0;
    c.anonymous = 0;
    c.loaded = false;
    c.loading = false;
    c.pending = [];
    renderChatters();
  }

  function chatterJoined(room, login) {
    const c = state.chatters;
    if (room !== c.room || !login || isAnonymousLogin(login)) return;
    if (c.loading) c.pending.push(['join', login]);
    if (c.names.has(login)) return;
    c.loggedIn++;
    if (c.names.size < LIMITS.chattersShownMax) c.names.add(login);
    renderChatters();
  }

  function chatterLeft(room, login) {
    const c = state.chatters;
    if (room !== c.room || !login) return;
    if (c.loading) c.pending.push(['part', login]);
    if (!c.names.delete(login)) return;
    c.loggedIn = Math.max(0, c.loggedIn - 1);
    renderChatters();
  }

  async function loadChatters() {
    const room = state.room;
    const c = state.chatters;
    if (!room || c.room !== room || c.loading) return;
    clearTimeout(c.timer);
    c.loading = true;
    c.pending = [];
    try {
      const response = await fetch(`/api/rooms/${encodeURIComponent(room)}/chatters?limit=${LIMITS.chattersPageMax}`, {
        headers: { Accept: 'application/json' },
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      if (c.room !== room) return;
      const names = new Set(
        (Array.isArray(body?.chatters) ? body.chatters : [])
          .filter((n) => typeof n === 'string' && n)
          .map((n) => n.toLowerCase())
          .slice(0, LIMITS.chattersShownMax),
      );
      // JOINs and PARTs that arrived while the request was out are newer than its answer.
      for (const [kind, login] of c.pending) {
        if (kind === 'join') names.add(login);
        else names.delete(login);
      }
      // This page is in the room even if its JOIN reached the room's home after the request.
      const me = state.auth?.username;
      if (me) names.add(me);
      c.names = names;
      c.loggedIn = body?.next ? Math.max(Number(body.logged_in) || 0, names.size) : names.size;
      c.anonymous = Math.max(0, Number(body?.anonymous) || 0);
      c.loaded = true;
    } catch (_) {
      // The names from NAMES, JOIN and PART stay; the counts are tried again with the next refresh.
    } finally {
      c.loading = false;
      c.pending = [];
      renderChatters();
      if (c.room === room && !ui.chattersPanel.hidden) c.timer = setTimeout(loadChatters, LIMITS.chattersRefreshMs);
    }
  }

  function renderChatters() {
    if (ui.chattersPanel.hidden) return;
    const c = state.chatters;
    const loggedIn = Math.max(c.loggedIn, c.names.size);
    ui.chattersCounts.textContent = c.loaded || loggedIn
      ? `${loggedIn} logged in · ${c.anonymous} anonymous`
      : 'Loading viewers…';
    ui.chattersCounts.dataset.loggedIn = String(loggedIn);
    ui.chattersCounts.dataset.anonymous = String(c.anonymous);
    const me = state.auth?.username || '';
    // Whether a name gets a whisper button depends on who is logged in, so it is part of the key.
    const keys = [...c.names].sort().map((login) => `${state.auth && login !== me ? 'w' : '-'}${login}`);
    syncList(
      ui.chattersList,
      keys,
      (key) => {
        const login = key.slice(1);
        const li = el('li', 'chatter');
        li.dataset.login = login;
        const name = el('span', 'chatter-name', login);
        name.style.color = readableColor('', login);
        li.append(name);
        if (key.startsWith('w')) {
          const whisper = el('button', 'act chatter-whisper', '✉');
          whisper.type = 'button';
          whisper.dataset.whisper = login;
          whisper.title = `Whisper to ${login}`;
          whisper.setAttribute('aria-label', whisper.title);
          li.append(whisper);
        }
        return li;
      },
      () => {},
    );
  }

  function toggleChatters(wanted) {
    const open = wanted ?? ui.chattersPanel.hidden;
    if (open) togglePanel(ui.whispersPanel, ui.whispersButton, false);
    togglePanel(ui.chattersPanel, ui.chattersButton, open);
    if (open) {
      renderChatters();
      loadChatters();
    } else {
      clearTimeout(state.chatters.timer);
    }
  }

  function togglePanel(panel, button, open) {
    panel.hidden = !open;
    button.setAttribute('aria-expanded', String(open));
  }

  // Whispers: the conversations and their unread counts come from the HTTP API; live WHISPER lines keep them
  // current, and the API is asked again shortly after, so counts settle on the server's (which also sees whispers
  // read in another tab).

  const W = state.whispers;

  function resetWhispers() {
    clearTimeout(W.refreshTimer);
    W.conversations = new Map();
    W.open = null;
    W.ids = new Set();
    W.pending = [];
    ui.whisperMessages.replaceChildren();
    showWhisperHome();
    renderWhisperList();
  }

  async function loadWhisperList() {
    if (!state.auth) return;
    const token = state.auth.token;
    try {
      const response = await fetch('/api/whispers', { headers: authHeaders() });
      if (!response.ok) return;
      const body = await response.json();
      if (state.auth?.token !== token) return;
      const next = new Map();
      for (const c of (Array.isArray(body?.conversations) ? body.conversations : []).slice(0, LIMITS.whisperConversationsMax)) {
        if (!c || typeof c.login !== 'string' || !c.login) continue;
        const login = c.login.toLowerCase();
        next.set(login, { login, unread: Math.max(0, Number(c.unread) || 0), lastId: String(c.last_id || '') });
      }
      // A conversation on screen is read as whispers arrive; a read marker still on its way may not be counted yet.
      const viewing = viewingWhispers();
      if (viewing && next.has(viewing)) next.get(viewing).unread = 0;
      else if (viewing && W.conversations.has(viewing)) next.set(viewing, { ...W.conversations.get(viewing), unread: 0 });
      W.conversations = next;
      renderWhisperList();
    } catch (_) {
      // Live whispers still update the list; the next refresh corrects the counts.
    }
  }

  function scheduleWhisperRefresh() {
    clearTimeout(W.refreshTimer);
    W.refreshTimer = setTimeout(loadWhisperList, LIMITS.whisperRefreshDelayMs);
  }

  // The login whose conversation is on screen, or null.
  function viewingWhispers() {
    return !ui.whispersPanel.hidden && !ui.whisperThread.hidden ? W.open : null;
  }

  function renderWhisperList() {
    const conversations = [...W.conversations.values()].sort((a, b) => (a.lastId < b.lastId ? 1 : a.lastId > b.lastId ? -1 : 0));
    const total = conversations.reduce((sum, c) => sum + c.unread, 0);
    ui.whispersUnread.textContent = total > 99 ? '99+' : String(total);
    ui.whispersUnread.hidden = total === 0;
    ui.whispersButton.setAttribute('aria-label', total ? `Whispers, ${total} unread` : 'Whispers');
    ui.whispersEmpty.hidden = conversations.length > 0;
    syncList(
      ui.whisperList,
      conversations.map((c) => c.login),
      (login) => {
        const li = el('li', 'conversation');
        li.dataset.login = login;
        const open = el('button', 'conversation-open');
        open.type = 'button';
        open.dataset.whisper = login;
        const name = el('span', 'conversation-name', login);
        name.style.color = readableColor('', login);
        const badge = el('span', 'count-badge unread');
        open.append(name, badge);
        li.append(open);
        return li;
      },
      (li, login) => {
        const unread = W.conversations.get(login)?.unread || 0;
        const badge = li.querySelector('.unread');
        badge.textContent = unread > 99 ? '99+' : String(unread);
        badge.hidden = unread === 0;
        li.firstChild.setAttribute('aria-label', unread ? `${login}, ${unread} unread` : login);
      },
    );
  }

  function toggleWhispers(wanted) {
    const open = wanted ?? ui.whispersPanel.hidden;
    if (open) togglePanel(ui.chattersPanel, ui.chattersButton, false);
    togglePanel(ui.whispersPanel, ui.whispersButton, open);
    if (open) {
      if (W.open && !ui.whisperThread.hidden) openConversation(W.open);
      else loadWhisperList();
    }
  }

  function showWhisperHome() {
    ui.whisperThread.hidden = true;
    ui.whisperHome.hidden = false;
    ui.whisperBack.hidden = true;
    ui.whispersTitle.textContent = 'Whispers';
    ui.whisperError.hidden = true;
  }

  async function openConversation(login) {
    if (!state.auth) return;
    const peer = login.trim().replace(/^@/, '').toLowerCase();
    if (!/^[a-z0-9_]{1,25}$/.test(peer)) {
      toast('That is not a valid username.');
      return;
    }
    if (ui.whispersPanel.hidden) togglePanel(ui.whispersPanel, ui.whispersButton, true);
    togglePanel(ui.chattersPanel, ui.chattersButton, false);
    const same = W.open === peer;
    W.open = peer;
    ui.whisperHome.hidden = true;
    ui.whisperThread.hidden = false;
    ui.whisperBack.hidden = false;
    ui.whispersTitle.textContent = `Whispers with ${peer}`;
    ui.whisperError.hidden = true;
    if (!same) {
      W.ids = new Set();
      W.pending = [];
      ui.whisperMessages.replaceChildren();
    }
    ui.whisperInput.focus();
    const known = W.conversations.get(peer);
    if (known) known.unread = 0;
    renderWhisperList();
    try {
      const response = await fetch(`/api/whispers/${encodeURIComponent(peer)}?limit=${LIMITS.whisperThreadMessagesMax}`, {
        headers: authHeaders(),
      });
      if (W.open !== peer) return;
      if (response.status === 404) {
        showWhisperError(`There is no user called ${peer}.`);
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      // Stored whispers come without an `emotes` tag; the codes are found with the emote list.
      await loadEmotes().catch(() => null);
      if (W.open !== peer) return;
      // The API answers newest first; the conversation reads oldest first.
      const whispers = (Array.isArray(body?.whispers) ? body.whispers : []).slice().reverse();
      const fragment = document.createDocumentFragment();
      for (const w of whispers) {
        if (!w || !w.id || W.ids.has(String(w.id))) continue;
        const from = String(w.from_login || '').toLowerCase();
        fragment.append(
          whisperLine({
            id: String(w.id),
            from,
            name: String(w.from_display_name || from),
            color: String(w.from_color || ''),
            text: String(w.text ?? ''),
            emotes: typeof w.emotes === 'string' ? w.emotes : localEmotesTag(String(w.text ?? '')),
            sentMs: Number(w.sent_unix_ms) || Date.now(),
            mine: from === state.auth?.username,
          }),
        );
      }
      ui.whisperMessages.prepend(fragment);
      ui.whisperMessages.scrollTop = ui.whisperMessages.scrollHeight;
      if (whispers.length) markWhispersRead(peer);
    } catch (_) {
      showWhisperError('Could not load this conversation. Close and open it to try again.');
    }
  }

  async function markWhispersRead(peer, upTo) {
    try {
      const query = upTo ? `?up_to=${encodeURIComponent(upTo)}` : '';
      await fetch(`/api/whispers/${encodeURIComponent(peer)}/read${query}`, { method: 'POST', headers: authHeaders() });
    } catch (_) {
      // The conversation stays counted as unread on the server; it is marked again when next opened.
    }
    scheduleWhisperRefresh();
  }

  function whisperLine(w) {
    const li = el('li', `whisper${w.mine ? ' mine' : ''}`);
    if (w.id) {
      li.dataset.id = w.id;
      W.ids.add(w.id);
    }
    const sent = new Date(w.sentMs);
    const ts = el('time', 'ts', timeFormat.format(sent));
    ts.dateTime = sent.toISOString();
    ts.title = dateTimeFormat.format(sent);
    const name = el('span', 'name', w.name || w.from);
    name.style.color = readableColor(w.color, w.from);
    const body = el('span', 'text');
    fillText(body, w.text, w.emotes);
    li.append(ts, name, el('span', 'colon', ': '), body, el('span', 'status'));
    return li;
  }

  function appendWhisper(li) {
    const list = ui.whisperMessages;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 32;
    list.append(li);
    while (list.childElementCount > LIMITS.whisperThreadMessagesMax) list.firstElementChild.remove();
    if (atBottom || li.classList.contains('mine')) list.scrollTop = list.scrollHeight;
  }

  function showWhisperError(text) {
    ui.whisperError.textContent = text;
    ui.whisperError.hidden = false;
  }

  function sendWhisper() {
    const peer = W.open;
    const text = oneLine(ui.whisperInput.value).trim();
    if (!peer || !text || !state.auth) return;
    if (charCount(text) > LIMITS.messageCharsMax) {
      showWhisperError(`Whispers can be at most ${LIMITS.messageCharsMax} characters.`);
      return;
    }
    if (!conn.isOpen()) {
      showWhisperError('Not connected right now. Try again once chat reconnects.');
      return;
    }
    ui.whisperError.hidden = true;
    conn.send(`WHISPER ${peer} :${text}`);
    const li = whisperLine({
      id: '',
      from: state.auth.username,
      name: state.me.displayName || state.auth.username,
      color: state.me.color,
      text,
      sentMs: Date.now(),
      mine: true,
    });
    li.classList.add('pending');
    li.querySelector('.status').textContent = 'sending…';
    const pending = { peer, text, li, timer: 0 };
    pending.timer = setTimeout(() => failWhisper(pending, 'no confirmation from the server'), LIMITS.ackWaitMs);
    W.pending.push(pending);
    appendWhisper(li);
    ui.whisperInput.value = '';
  }

  function failWhisper(pending, reason) {
    const at = W.pending.indexOf(pending);
    if (at >= 0) W.pending.splice(at, 1);
    clearTimeout(pending.timer);
    pending.li.classList.remove('pending');
    pending.li.classList.add('failed');
    pending.li.querySelector('.status').textContent = `not sent: ${reason}`;
  }

  // A WHISPER line: from the peer, or this account's own coming back as the acknowledgement.
  function onWhisper(msg) {
    if (!state.auth) return;
    const me = state.auth.username;
    const from = nickOf(msg.prefix);
    const to = (msg.params[0] || '').toLowerCase();
    const mine = from === me;
    const peer = mine ? to : from;
    if (!peer) return;
    const id = msg.tags['message-id'] || '';
    const text = msg.params[1] ?? '';
    const conversation = W.conversations.get(peer) || { login: peer, unread: 0, lastId: '' };
    if (id > conversation.lastId) conversation.lastId = id;
    W.conversations.set(peer, conversation);
    const viewing = viewingWhispers() === peer;
    if (!mine && !viewing) conversation.unread++;
    if (mine) {
      const at = W.pending.findIndex((p) => p.peer === peer && p.text === text);
      if (at >= 0) {
        const [pending] = W.pending.splice(at, 1);
        clearTimeout(pending.timer);
        pending.li.classList.remove('pending');
        pending.li.querySelector('.status').textContent = '';
        if (id) {
          pending.li.dataset.id = id;
          W.ids.add(id);
        }
        fillText(pending.li.querySelector('.text'), text, msg.tags.emotes || '');
        renderWhisperList();
        return;
      }
    }
    if (W.open === peer && !(id && W.ids.has(id))) {
      appendWhisper(
        whisperLine({
          id,
          from,
          name: msg.tags['display-name'] || from,
          color: msg.tags.color || '',
          text,
          emotes: msg.tags.emotes || '',
          sentMs: Number(msg.tags['tmi-sent-ts']) || Date.now(),
          mine,
        }),
      );
    }
    renderWhisperList();
    if (!mine) {
      if (viewing) markWhispersRead(peer, id);
      else scheduleWhisperRefresh();
    }
  }

  // A NOTICE without a room while a whisper waits for its echo is that whisper's refusal.
  function onWhisperRefused(text) {
    const pending = W.pending[0];
    if (!pending) return false;
    failWhisper(pending, text);
    showWhisperError(text);
    return true;
  }

  // Catching up after a reconnect: lines of the room are held while the messages missed since the last one seen are
  // read from the history API (oldest first, a page at a time, bounded), then shown once each, then the held ones.

  // The smallest message id issued at `ms` (ids are UUIDv7: the time in milliseconds leads).
  function idAtMs(ms) {
    const hex = Math.max(0, Math.floor(ms)).toString(16).padStart(12, '0').slice(-12);
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-7000-8000-000000000000`;
  }

  function messageFromApi(m, room, historical) {
    return {
      room,
      id: m.id ? String(m.id) : '',
      login: String(m.login || ''),
      userId: m.user_id ? String(m.user_id) : '',
      displayName: String(m.display_name || m.login || ''),
      color: String(m.color || ''),
      badges: m.badges,
      text: String(m.text ?? ''),
      action: m.action === true,
      emotes: typeof m.emotes === 'string' ? m.emotes : '',
      original: String(m.original ?? ''),
      sentMs: Number(m.sent_unix_ms) || Date.now(),
      historical,
      // The history API keeps a reply's link beside the message, as the live tags carry it.
      reply:
        m.reply && typeof m.reply.parent_msg_id === 'string'
          ? {
              id: m.reply.parent_msg_id,
              login: String(m.reply.parent_login || ''),
              displayName: String(m.reply.parent_display_name || m.reply.parent_login || ''),
              body: String(m.reply.parent_body || ''),
            }
          : null,
    };
  }

  function holdForCatchUp(room) {
    state.catchUp = { room, afterId: state.lastId, held: [], started: false };
  }

  async function runCatchUp() {
    const run = state.catchUp;
    if (!run || run.started) return;
    run.started = true;
    let after = run.afterId;
    const floor = idAtMs(Date.now() - LIMITS.catchUpWindowMs);
    const skippedOld = after < floor;
    if (skippedOld) after = floor;
    const missed = [];
    let more = false;
    let failed = false;
    try {
      while (missed.length < LIMITS.catchUpMessagesMax) {
        const limit = Math.min(LIMITS.catchUpPageMessages, LIMITS.catchUpMessagesMax - missed.length);
        const query = `after=${encodeURIComponent(after)}&limit=${limit}`;
        const response = await fetch(`/api/rooms/${encodeURIComponent(run.room)}/messages?${query}`, {
          headers: { Accept: 'application/json' },
        });
        if (state.catchUp !== run) return;
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const body = await response.json();
        if (state.catchUp !== run) return;
        const page = (Array.isArray(body?.messages) ? body.messages : []).filter((m) => m && m.id && String(m.id) > after);
        missed.push(...page);
        more = page.length >= limit;
        if (!more) break;
        after = String(page[page.length - 1].id);
      }
    } catch (_) {
      failed = true;
    }
    if (state.catchUp !== run) return;
    state.catchUp = null;
    const fresh = missed.filter((m) => !state.seenIds.has(String(m.id)));
    if (skippedOld) {
      addSystemLine('You were offline for more than 10 minutes; older missed messages are not shown.', 'info', 'catch-up-skipped');
    }
    if (fresh.length) {
      const n = fresh.length;
      addSystemLine(`${n} message${n === 1 ? '' : 's'} sent while you were offline:`, 'info', 'catch-up');
    }
    for (const m of fresh) addChatMessage(messageFromApi(m, run.room, false));
    if (more) addSystemLine('More messages were missed than can be shown here.', 'info', 'catch-up-truncated');
    if (failed) addSystemLine('Could not load the messages sent while you were offline.', 'warn', 'catch-up-failed');
    for (const m of run.held) addChatMessage(m);
  }

  // ---------------------------------------------------------------------------------------------
  // Connection: WebSocket + Twitch IRC, with reconnect and exponential backoff.

  const conn = (() => {
    let ws = null;
    let registered = false;
    let joinedRoom = null;
    // Set once the server confirmed the current JOIN with ROOMSTATE or the end of NAMES.
    let joinConfirmed = false;
    // Set once the current JOIN's ROOMSTATE (which carries every mode) arrived; later ones are changes.
    let roomStateSeen = false;
    let attempt = 0;
    let everJoined = false;
    let retryTimer = 0;
    let countdownTimer = 0;
    let idleTimer = 0;
    let pongTimer = 0;
    let nick = '';
    let generation = 0;
    // Set when the connection was lost after a JOIN: the next JOIN of the room catches up on what was missed.
    let catchUpWanted = false;

    function url() {
      return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
    }

    function rawSend(line) {
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(`${line}\r\n`);
    }

    function connect() {
      clearTimeout(retryTimer);
      clearInterval(countdownTimer);
      const gen = ++generation;
      registered = false;
      joinedRoom = null;
      setConnState('connecting', attempt ? 'Reconnecting…' : 'Connecting…');
      let socket;
      try {
        socket = new WebSocket(url(), 'irc');
      } catch (err) {
        scheduleReconnect('Could not open a connection');
        return;
      }
      ws = socket;
      socket.binaryType = 'arraybuffer';
      socket.onopen = () => {
        if (gen !== generation) return;
        rawSend('CAP REQ :twitch.tv/tags twitch.tv/commands twitch.tv/membership');
        // Asked separately because a CAP REQ is all-or-nothing: a server without IRCv3
        // echo-message refuses only this line, and own messages then get their styled text from
        // the HTTP API instead of the echo.
        rawSend('CAP REQ :echo-message');
        if (state.auth) {
          nick = state.auth.username;
          rawSend(`PASS oauth:${state.auth.token}`);
        } else {
          nick = `justinfan${Math.floor(10000 + Math.random() * 89999)}`;
        }
        rawSend(`NICK ${nick}`);
        armIdle();
      };
      const decoder = new TextDecoder();
      socket.onmessage = (event) => {
        if (gen !== generation) return;
        armIdle();
        const data = typeof event.data === 'string' ? event.data : decoder.decode(event.data);
        for (const line of data.split(/\r?\n/)) {
          if (!line) continue;
          const msg = parseIrcLine(line);
          if (msg) handle(msg);
        }
      };
      socket.onclose = () => {
        if (gen !== generation) return;
        ws = null;
        onLost('Connection lost');
      };
      socket.onerror = () => {
        // The close event follows and carries the reconnect.
      };
    }

    function onLost(reason) {
      registered = false;
      joinedRoom = null;
      // Whatever is said while away is read back after the next JOIN of this room (see runCatchUp); a catch-up that
      // was still running starts over from the last line it showed.
      state.catchUp = null;
      if (everJoined && state.room && state.lastId) catchUpWanted = true;
      clearTimeout(idleTimer);
      clearTimeout(pongTimer);
      for (const entry of state.own.values()) {
        if (entry.status === 'pending') setOwnStatus(entry, 'failed', 'connection lost before confirmation');
      }
      if (everJoined) addSystemLine(`${reason}. Reconnecting…`, 'warn');
      scheduleReconnect(reason);
    }

    function scheduleReconnect(reason) {
      clearTimeout(retryTimer);
      clearInterval(countdownTimer);
      const base = Math.min(LIMITS.backoffMsMax, LIMITS.backoffMsMin * 2 ** Math.min(attempt, 16));
      // Jitter spreads reconnects out after a server restart so viewers do not arrive all at once.
      const delayMs = Math.round(base * (0.5 + Math.random() * 0.5));
      attempt++;
      const due = Date.now() + delayMs;
      const show = () => {
        const seconds = Math.max(0, Math.ceil((due - Date.now()) / 1000));
        setConnState('offline', 'Offline');
        setBanner(`${reason}. Reconnecting in ${seconds} s (attempt ${attempt})…`, true);
      };
      show();
      countdownTimer = setInterval(show, 250);
      retryTimer = setTimeout(() => {
        clearInterval(countdownTimer);
        setBanner(`${reason}. Reconnecting now (attempt ${attempt})…`, false);
        connect();
      }, delayMs);
    }

    // Drops the socket and opens a new one at once, e.g. after logging in or out.
    function restart() {
      generation++;
      if (ws) {
        ws.onclose = null;
        try {
          ws.close(1000);
        } catch (_) {
          // Closing an already closed socket is harmless.
        }
        ws = null;
      }
      attempt = 0;
      everJoined = false;
      catchUpWanted = false;
      state.catchUp = null;
      state.lastId = '';
      resetWhispers();
      clearTimeout(idleTimer);
      clearTimeout(pongTimer);
      connect();
    }

    function armIdle() {
      clearTimeout(idleTimer);
      clearTimeout(pongTimer);
      // A quiet connection is probed with PING; if nothing at all comes back, it is dead.
      idleTimer = setTimeout(() => {
        rawSend('PING :tmi.twitch.tv');
        pongTimer = setTimeout(() => {
          if (ws) {
            const dead = ws;
            ws = null;
            generation++;
            try {
              dead.close();
            } catch (_) {
              // Ignored: the socket is being abandoned.
            }
            onLost('Connection timed out');
          }
        }, LIMITS.pongWaitMs);
      }, LIMITS.idlePingMs);
    }

    function join() {
      if (!registered || !state.room || joinedRoom === state.room) return;
      joinedRoom = state.room;
      joinConfirmed = false;
      roomStateSeen = false;
      if (catchUpWanted && state.lastId) holdForCatchUp(state.room);
      catchUpWanted = false;
      resetChatters(state.room);
      rawSend(`JOIN #${state.room}`);
    }

    function switchRoom(previous) {
      if (!registered) return;
      if (previous && joinedRoom === previous) rawSend(`PART #${previous}`);
      joinedRoom = null;
      join();
    }

    function onJoined() {
      const wasReconnect = everJoined && attempt > 0;
      attempt = 0;
      everJoined = true;
      clearTimeout(retryTimer);
      clearInterval(countdownTimer);
      setConnState('open', 'Live');
      setBanner(null);
      if (wasReconnect) {
        addSystemLine(`Reconnected to #${state.room}.`, 'ok');
        toast('Reconnected');
      } else {
        addSystemLine(`Welcome to #${state.room}!`, 'ok');
      }
      // The viewer count now includes this connection.
      refreshRooms();
      loadChatters();
      runCatchUp();
    }

    function handle(msg) {
      const target = msg.params[0] || '';
      const room = target.startsWith('#') ? target.slice(1).toLowerCase() : null;
      switch (msg.command) {
        case 'PING':
          rawSend(`PONG :${msg.params[msg.params.length - 1] || 'tmi.twitch.tv'}`);
          break;
        case 'PONG':
          break;
        case 'RECONNECT':
          // The server is about to go away: leave now and come back with backoff.
          generation++;
          if (ws) {
            try {
              ws.close(1000);
            } catch (_) {
              // Ignored: the socket is being replaced.
            }
            ws = null;
          }
          onLost('The server asked us to reconnect');
          break;
        case '001':
        case '376':
        case 'GLOBALUSERSTATE':
          if (msg.command === 'GLOBALUSERSTATE') applyMe(msg.tags);
          if (!registered) {
            registered = true;
            setConnState('connecting', 'Joining…');
            join();
            loadWhisperList();
          }
          break;
        case 'USERSTATE':
          onUserState(msg, room);
          break;
        case 'ROOMSTATE':
        case '366':
          if (msg.command === 'ROOMSTATE' && room === state.room && room === joinedRoom) {
            applyRoomState(msg.tags, !roomStateSeen);
            roomStateSeen = true;
          }
          if (room === state.room && room === joinedRoom && !joinConfirmed) {
            joinConfirmed = true;
            onJoined();
          }
          break;
        case 'PRIVMSG':
          onPrivmsg(msg, room);
          break;
        case 'NOTICE':
          onNotice(msg, room);
          break;
        case 'USERNOTICE':
          onUserNotice(msg, room);
          break;
        case 'CLEARMSG':
          if (room === state.room) markDeleted(msg.tags['target-msg-id']);
          break;
        case 'CLEARCHAT':
          if (room === state.room) clearChat(msg.params[1] ? msg.params[1].toLowerCase() : null, msg.tags);
          break;
        case 'JOIN':
          if (room) chatterJoined(room, nickOf(msg.prefix));
          break;
        case 'PART':
          if (room) {
            chatterLeft(room, nickOf(msg.prefix));
            if (room === state.room) hideTyper(nickOf(msg.prefix));
          }
          break;
        case '353': {
          // NAMES: "<me> = #room :name name …".
          const namesRoom = (msg.params[2] || '').replace(/^#/, '').toLowerCase();
          for (const name of (msg.params[3] || '').split(' ')) chatterJoined(namesRoom, name.toLowerCase());
          break;
        }
        case 'TAGMSG':
          onTagMsg(msg, room);
          break;
        case 'WHISPER':
          onWhisper(msg);
          break;
        default:
          break;
      }
    }

    function applyMe(tags) {
      if (!state.auth) return;
      if (tags['display-name']) state.me.displayName = tags['display-name'];
      if ('color' in tags) state.me.color = tags.color;
      if ('badges' in tags) state.me.badges = tags.badges;
      if (tags['user-id']) state.me.userId = tags['user-id'];
      ui.meName.textContent = state.me.displayName || state.auth.username;
    }

    function onUserState(msg, room) {
      const nonce = msg.tags['client-nonce'];
      if (nonce && state.own.has(nonce)) {
        const entry = state.own.get(nonce);
        if (msg.tags.id) {
          entry.id = msg.tags.id;
          rememberId(entry.id);
          if (entry.room === state.room) noteSeen(entry.id);
        }
        setOwnStatus(entry, 'acked');
        if (entry.styled === null) setTimeout(() => fetchOwnStyled(entry), LIMITS.echoWaitMs);
        return;
      }
      if (room === state.room) {
        applyMe(msg.tags);
        applyRole(msg.tags);
      }
    }

    function onPrivmsg(msg, room) {
      if (!room) return;
      const tags = msg.tags;
      const nonce = tags['client-nonce'];
      const entry = nonce ? state.own.get(nonce) : undefined;
      const text = msg.params[1] ?? '';
      const original = tags['twitchy/original'] ?? '';
      const login = nickOf(msg.prefix);
      const emotes = tags.emotes || '';
      if (room === state.room) hideTyper(login);
      const heldEntry = entry ? null : ownHeldMatching(room, login, tags['user-id'] || '', original);
      if (heldEntry) {
        // A message AutoMod held and a moderator allowed arrives like any other; its pending line takes it.
        heldEntry.styled = text;
        heldEntry.emotes = emotes;
        if (tags.id) {
          heldEntry.id = tags.id;
          rememberId(tags.id);
        }
        setOwnStatus(heldEntry, 'acked');
        return;
      }
      if (entry) {
        // Our own message, echoed styled: update the pending line instead of adding a second one.
        entry.styled = text;
        entry.emotes = emotes;
        if (tags.id) {
          entry.id = tags.id;
          rememberId(tags.id);
        }
        // A replayed historical copy proves the message was stored even if the ack was lost.
        if (tags.historical === '1' || entry.status === 'failed' || entry.status === 'held') setOwnStatus(entry, 'acked');
        else applyOwnStatus(entry);
        return;
      }
      if (room !== state.room) return;
      const sentMs = Number(tags['tmi-sent-ts']) || Date.now();
      addChatMessage({
        room,
        id: tags.id || '',
        login,
        userId: tags['user-id'] || '',
        displayName: tags['display-name'] || login,
        color: tags.color || '',
        badges: tags.badges || '',
        text,
        emotes,
        original,
        sentMs,
        historical: tags.historical === '1',
        reply: tags['reply-parent-msg-id']
          ? {
              id: tags['reply-parent-msg-id'],
              login: tags['reply-parent-user-login'] || '',
              displayName: tags['reply-parent-display-name'] || tags['reply-parent-user-login'] || '',
              body: tags['reply-parent-msg-body'] || '',
            }
          : null,
      });
    }

    function onNotice(msg, room) {
      const text = msg.params[msg.params.length - 1] || '';
      const msgId = msg.tags['msg-id'] || '';
      if (!registered && (room === null || msg.params[0] === '*') && (msgId === 'login_unavailable' || /try again/i.test(text))) {
        // The server could not check the token (storage trouble), which says nothing about the token: keep it,
        // and reconnect with backoff.
        addSystemLine(`${text}. Keeping your session and retrying…`, 'warn', msgId || 'login_unavailable');
        if (ws) ws.close();
        return;
      }
      if (!registered && (room === null || msg.params[0] === '*') && /auth|login|password|token/i.test(text)) {
        // The stored token was refused (expired, or the account is gone): fall back to reading as a guest.
        if (state.auth) {
          saveAuth(null);
          state.auth = null;
          renderAuth();
          toast('Your session has expired. Please log in again.');
          addSystemLine(`${text} Please log in again.`, 'error', msgId || 'login_failed');
          restart();
          return;
        }
      }
      // Whisper refusals come without a room.
      if (!room && registered && (msgId.startsWith('whisper_') || W.pending.length) && onWhisperRefused(text || msgId)) return;
      if (room && room !== state.room) return;
      if (msgId === 'automod_message_approved' || msgId === 'automod_message_denied') {
        onOwnHeldResolved(msgId, text);
        return;
      }
      const nonce = msg.tags['client-nonce'];
      let entry = nonce ? state.own.get(nonce) : null;
      if (!entry && msgId.startsWith('msg_')) entry = newestUnechoedPending(state.room);
      const refusal = msgId in REFUSAL_TEXT;
      if (entry && entry.status === 'pending') {
        // The refused line itself says why; the full text goes above the input box.
        entry.failMsgId = msgId;
        entry.failText = describeNotice(msgId, text);
        setOwnStatus(entry, msgId === 'msg_rejected' ? 'held' : 'failed', shortReason(msgId, text));
      } else if (!refusal) {
        addSystemLine(text || msgId, noticeTone(msgId), msgId || 'notice');
      }
      // Refusals by the room's rules (modes, timeouts, bans, AutoMod) also get a line in the chat, in the
      // server's words, so the reason stays readable after the composer message goes away.
      if (refusal) addSystemLine(describeNotice(msgId, text), msgId === 'msg_rejected' ? 'warn' : 'error', msgId);
      if (entry || msgId.startsWith('msg_')) showComposerError(describeNotice(msgId, text), msgId || 'notice');
    }

    // The author of a held message hears whether a moderator allowed or denied it (the NOTICE does not say which
    // message; held messages are resolved one at a time, so the oldest waiting one is taken).
    function onOwnHeldResolved(msgId, text) {
      let entry = null;
      for (const e of state.own.values()) {
        if (e.status === 'held' && e.room === state.room) {
          entry = e;
          break;
        }
      }
      if (msgId === 'automod_message_denied') {
        if (entry) setOwnStatus(entry, 'failed', 'denied by a moderator');
        addSystemLine(text || 'A moderator denied your message.', 'error', msgId);
      } else {
        // The allowed message itself follows like any other and takes over the held line (see onPrivmsg).
        if (entry) entry.approved = true;
        addSystemLine(text || 'A moderator allowed your message.', 'ok', msgId);
      }
    }

    function isReady() {
      return !!ws && ws.readyState === WebSocket.OPEN && registered && joinedRoom === state.room;
    }

    // Registered, whatever the room: enough for a whisper.
    function isOpen() {
      return !!ws && ws.readyState === WebSocket.OPEN && registered;
    }

    function reconnectNow() {
      if (ws) return;
      attempt = Math.max(0, attempt - 1);
      connect();
    }

    return { connect, restart, switchRoom, send: rawSend, isReady, isOpen, reconnectNow };
  })();

  function noticeTone(msgId) {
    return NOTICE_OK_IDS.has(msgId) || msgId.endsWith('_success') ? 'ok' : 'error';
  }

  // The own message held by AutoMod that a delivered PRIVMSG is: same author, same room, same original text.
  function ownHeldMatching(room, login, userId, original) {
    if (!isMine(login, userId)) return null;
    let oldest = null;
    for (const entry of state.own.values()) {
      if (entry.room !== room || !(entry.status === 'held' || entry.approved) || entry.styled !== null) continue;
      if (original && entry.text === original) return entry;
      if (!original && !oldest) oldest = entry;
    }
    return oldest;
  }

  function shortReason(msgId, text) {
    if (REFUSAL_TEXT[msgId]) return REFUSAL_TEXT[msgId][0];
    switch (msgId) {
      case 'msg_ratelimit':
        return 'sending too fast';
      case 'msg_too_long':
        return 'too long';
      case 'msg_login_required':
        return 'log in first';
      default:
        return text || msgId;
    }
  }

  function describeNotice(msgId, text) {
    if (REFUSAL_TEXT[msgId]) return text || REFUSAL_TEXT[msgId][1];
    switch (msgId) {
      case 'msg_ratelimit':
        return text || 'You are sending messages too quickly. Wait a moment and try again.';
      case 'msg_too_long':
        return text || `Messages can be at most ${LIMITS.messageCharsMax} characters.`;
      default:
        return text || msgId;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Earlier messages over the HTTP API.

  async function loadOlder() {
    if (state.loadingOlder || !state.oldestId || !state.room) return;
    state.loadingOlder = true;
    ui.loadOlder.disabled = true;
    const room = state.room;
    try {
      const query = `before=${encodeURIComponent(state.oldestId)}&limit=${LIMITS.historyPageMessagesMax}`;
      const response = await fetch(`/api/rooms/${encodeURIComponent(room)}/messages?${query}`);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      if (room !== state.room) return;
      const messages = Array.isArray(body?.messages) ? body.messages : [];
      const fragment = document.createDocumentFragment();
      // The API returns newest first; the log reads oldest first.
      for (const m of messages.slice().reverse()) {
        if (!m || (m.id && state.seenIds.has(String(m.id)))) continue;
        if (m.id) rememberId(String(m.id));
        fragment.append(renderMessage(messageFromApi(m, room, true)));
      }
      const before = ui.log.scrollHeight;
      ui.lines.prepend(fragment);
      // Keep the lines the reader was looking at in place.
      ui.log.scrollTop += ui.log.scrollHeight - before;
      if (!messages.length) {
        state.noOlder = true;
        ui.lines.prepend(renderSystem('This is the beginning of the chat.', 'info'));
      }
    } catch (err) {
      addSystemLine('Could not load earlier messages.', 'error');
    } finally {
      state.loadingOlder = false;
      ui.loadOlder.disabled = false;
      updateLoadOlder();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Auth: sign up / log in over the HTTP API; the token lives in localStorage.

  let authMode = 'signup';

  function setAuthMode(mode) {
    authMode = mode;
    const signup = mode === 'signup';
    ui.tabSignup.setAttribute('aria-selected', String(signup));
    ui.tabLogin.setAttribute('aria-selected', String(!signup));
    ui.authTitle.textContent = signup ? 'Create an account' : 'Welcome back';
    ui.authSubmit.textContent = signup ? 'Sign up' : 'Log in';
    ui.authPassword.autocomplete = signup ? 'new-password' : 'current-password';
    ui.authError.hidden = true;
  }

  function openAuth(mode) {
    setAuthMode(mode);
    ui.authPassword.value = '';
    if (!ui.dialog.open) ui.dialog.showModal();
    ui.authUsername.focus();
  }

  function authFail(text) {
    ui.authError.textContent = text;
    ui.authError.hidden = false;
  }

  async function submitAuth(event) {
    event.preventDefault();
    const username = ui.authUsername.value.trim().toLowerCase();
    const password = ui.authPassword.value;
    if (!/^[a-z0-9_]{4,25}$/.test(username)) {
      authFail('Usernames are 4–25 characters long and use only letters, digits and underscores.');
      ui.authUsername.focus();
      return;
    }
    // The server counts password length in UTF-8 bytes.
    const pwBytes = new TextEncoder().encode(password).length;
    if (pwBytes < 8 || pwBytes > 128) {
      authFail('Passwords must be 8 to 128 characters long.');
      ui.authPassword.focus();
      return;
    }
    ui.authSubmit.disabled = true;
    const mode = authMode;
    try {
      const response = await fetch(mode === 'signup' ? '/api/register' : '/api/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ username, password }),
      });
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
      if (response.ok && typeof body?.token === 'string') {
        state.auth = { username, token: body.token };
        state.me = freshMe();
        resetRoomState();
        saveAuth(state.auth);
        ui.dialog.close();
        ui.authUsername.value = username;
        ui.authPassword.value = '';
        renderAuth();
        toast(mode === 'signup' ? `Welcome, ${username}!` : `Logged in as ${username}`);
        conn.restart();
        resetLines();
        addSystemLine(`Joining #${state.room} as ${username}…`);
        ui.input.focus();
        return;
      }
      const serverText = typeof body?.error === 'string' ? body.error : '';
      if (response.status === 409) authFail(`The username “${username}” is taken. Pick another one, or log in.`);
      else if (response.status === 401) authFail('Wrong username or password.');
      else if (response.status === 429) authFail(serverText || 'Too many attempts. Wait a moment and try again.');
      else if (response.status === 400) authFail(serverText || 'That username or password is not valid.');
      else authFail(serverText || `Something went wrong (HTTP ${response.status}). Try again.`);
    } catch (err) {
      authFail('Cannot reach the server. Check your connection and try again.');
    } finally {
      ui.authSubmit.disabled = false;
    }
  }

  function logout() {
    // Revoke the token on the server too; logging out locally does not wait for it (or need it to succeed).
    const token = state.auth?.token;
    if (token) {
      fetch('/api/logout', {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
      }).catch(() => {});
    }
    saveAuth(null);
    state.auth = null;
    state.me = freshMe();
    resetRoomState();
    renderAuth();
    toast('Logged out');
    conn.restart();
    resetLines();
    addSystemLine(`Joining #${state.room} as a guest…`);
  }

  function renderAuth() {
    const loggedIn = !!state.auth;
    ui.authAnon.hidden = loggedIn;
    ui.authUser.hidden = !loggedIn;
    ui.composer.hidden = !loggedIn;
    ui.guestBar.hidden = loggedIn;
    ui.meName.textContent = loggedIn ? state.me.displayName || state.auth.username : '';
    ui.app.classList.toggle('logged-in', loggedIn);
    if (!loggedIn && ui.settings.open) ui.settings.close();
    if (!loggedIn) {
      togglePanel(ui.whispersPanel, ui.whispersButton, false);
      toggleEmotePicker(false);
    }
    renderRole();
    updateCounter();
  }

  // ---------------------------------------------------------------------------------------------
  // Settings: name colour and username, over the account API with the Bearer token.

  function renderSwatches() {
    for (const [name, hex] of TWITCH_COLORS) {
      const swatch = el('button', 'swatch');
      swatch.type = 'button';
      swatch.dataset.color = hex;
      swatch.title = name;
      swatch.setAttribute('aria-label', name);
      swatch.setAttribute('aria-pressed', 'false');
      swatch.style.backgroundColor = hex;
      ui.colorSwatches.append(swatch);
    }
  }

  function selectColor(hex) {
    const value = /^#[0-9a-fA-F]{6}$/.test(hex || '') ? hex.toUpperCase() : '#1E90FF';
    ui.colorInput.value = value.toLowerCase();
    for (const swatch of ui.colorSwatches.children) {
      swatch.setAttribute('aria-pressed', String(swatch.dataset.color === value));
    }
    const named = TWITCH_COLORS.find(([, h]) => h === value);
    ui.colorPreview.textContent = named ? `${named[0]} (${value})` : value;
    ui.colorPreview.style.color = readableColor(value, '');
  }

  function settingsMessage(node, text, ok) {
    node.textContent = text;
    node.dataset.kind = ok ? 'ok' : 'error';
    node.hidden = false;
  }

  function openSettings() {
    if (!state.auth) return;
    ui.colorMsg.hidden = true;
    ui.usernameMsg.hidden = true;
    selectColor(state.me.color);
    ui.usernameInput.value = state.me.displayName || state.auth.username;
    if (!ui.settings.open) ui.settings.showModal();
  }

  // POSTs JSON to the account API; returns { status, body } (body null when not JSON) or throws when offline.
  async function accountRequest(path, payload) {
    const response = await fetch(path, {
      method: 'POST',
      headers: {
        Authorization: `Bearer ${state.auth?.token || ''}`,
        'Content-Type': 'application/json',
        Accept: 'application/json',
      },
      body: JSON.stringify(payload),
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { status: response.status, body };
  }

  function apiError(status, body, fallback) {
    if (typeof body?.error === 'string' && body.error) return body.error;
    if (status === 401) return 'Your session has expired. Please log in again.';
    return `${fallback} (HTTP ${status}).`;
  }

  async function submitColor(event) {
    event.preventDefault();
    if (!state.auth) return;
    const color = ui.colorInput.value.toUpperCase();
    ui.colorSave.disabled = true;
    try {
      const { status, body } = await accountRequest('/api/account/color', { color });
      if (status === 200) {
        state.me.color = typeof body?.color === 'string' ? body.color : color;
        selectColor(state.me.color);
        settingsMessage(ui.colorMsg, `Your colour is now ${state.me.color}.`, true);
        toast('Colour saved');
      } else {
        settingsMessage(ui.colorMsg, apiError(status, body, 'The colour could not be saved'), false);
      }
    } catch (_) {
      settingsMessage(ui.colorMsg, 'Cannot reach the server. Check your connection and try again.', false);
    } finally {
      ui.colorSave.disabled = false;
    }
  }

  async function submitUsername(event) {
    event.preventDefault();
    if (!state.auth) return;
    const wanted = ui.usernameInput.value.trim();
    if (!wanted) {
      settingsMessage(ui.usernameMsg, 'Enter the new username.', false);
      ui.usernameInput.focus();
      return;
    }
    ui.usernameSave.disabled = true;
    try {
      const { status, body } = await accountRequest('/api/account/username', { username: wanted });
      if (status === 200 && typeof body?.login === 'string') {
        const displayName = typeof body.display_name === 'string' && body.display_name ? body.display_name : body.login;
        // The token stays valid; the new login is what the next NICK says, so the connection is made again now.
        state.auth = { username: body.login, token: state.auth.token };
        saveAuth(state.auth);
        state.me.displayName = displayName;
        renderAuth();
        settingsMessage(ui.usernameMsg, `Your username is now ${displayName}.`, true);
        toast(`You are now ${displayName}`);
        addSystemLine(`You are now chatting as ${displayName}.`, 'ok', 'username_changed');
        conn.restart();
      } else if (status === 409) {
        const serverText = typeof body?.error === 'string' ? body.error : '';
        settingsMessage(ui.usernameMsg, serverText || `The username “${wanted}” is taken.`, false);
      } else {
        settingsMessage(ui.usernameMsg, apiError(status, body, 'The username could not be changed'), false);
      }
    } catch (_) {
      settingsMessage(ui.usernameMsg, 'Cannot reach the server. Check your connection and try again.', false);
    } finally {
      ui.usernameSave.disabled = false;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Composer.

  function updateCounter() {
    const count = charCount(oneLine(ui.input.value).trim());
    ui.counter.textContent = `${count}/${LIMITS.messageCharsMax}`;
    const over = count > LIMITS.messageCharsMax;
    ui.counter.classList.toggle('near', !over && count > LIMITS.messageCharsMax - 50);
    ui.counter.classList.toggle('over', over);
    ui.input.setAttribute('aria-invalid', String(over));
    ui.send.disabled = over;
    if (over) {
      showComposerError(`Your message is ${count} characters; the limit is ${LIMITS.messageCharsMax}. Remove ${count - LIMITS.messageCharsMax} to send it.`, 'length', true);
    } else {
      clearComposerError('length');
    }
    // Grow with the text, up to a few lines.
    ui.input.style.height = 'auto';
    ui.input.style.height = `${Math.min(ui.input.scrollHeight, 120)}px`;
  }

  function submitComposer(event) {
    event?.preventDefault();
    if (sendChat(ui.input.value)) {
      ui.input.value = '';
      typingDone();
      updateCounter();
      scrollToBottom();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring.

  function init() {
    renderAuth();
    setAuthMode('signup');

    ui.input.addEventListener('input', () => {
      updateCounter();
      onComposerTyping();
    });
    ui.input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submitComposer();
      } else if (event.key === 'Escape' && state.replyTo) {
        cancelReply();
      }
    });
    ui.replyCancel.addEventListener('click', () => {
      cancelReply();
      ui.input.focus();
    });
    ui.emoteButton.addEventListener('click', () => toggleEmotePicker());
    ui.emoteGrid.addEventListener('click', (event) => {
      const choice = event.target.closest('button[data-code]');
      if (choice) insertAtCaret(choice.dataset.code);
    });
    ui.chattersButton.addEventListener('click', () => toggleChatters());
    $('chatters-close').addEventListener('click', () => toggleChatters(false));
    ui.whispersButton.addEventListener('click', () => toggleWhispers());
    $('whispers-close').addEventListener('click', () => toggleWhispers(false));
    ui.whisperBack.addEventListener('click', () => {
      W.open = null;
      showWhisperHome();
      loadWhisperList();
    });
    // Opening a conversation: from the list, from the viewer list, or by name.
    for (const container of [ui.whisperList, ui.chattersList]) {
      container.addEventListener('click', (event) => {
        const button = event.target.closest('button[data-whisper]');
        if (button) openConversation(button.dataset.whisper);
      });
    }
    ui.whisperNew.addEventListener('submit', (event) => {
      event.preventDefault();
      const login = ui.whisperTo.value;
      if (!login.trim()) return;
      ui.whisperTo.value = '';
      openConversation(login);
    });
    ui.whisperForm.addEventListener('submit', (event) => {
      event.preventDefault();
      sendWhisper();
    });
    ui.composer.addEventListener('submit', submitComposer);

    ui.log.addEventListener('scroll', () => {
      const distance = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight;
      state.pinned = distance <= 32;
      if (state.pinned) {
        state.unseenBelow = 0;
        ui.moreBelow.hidden = true;
      }
    }, { passive: true });
    new ResizeObserver(() => {
      if (state.pinned) ui.log.scrollTop = ui.log.scrollHeight;
    }).observe(ui.log);
    ui.moreBelow.addEventListener('click', scrollToBottom);
    ui.loadOlder.addEventListener('click', loadOlder);

    // Tapping (or pressing Enter on) a message reveals its original, unstyled text.
    ui.lines.addEventListener('click', (event) => {
      const action = event.target.closest('button[data-action]');
      if (action) {
        onLineAction(action);
        return;
      }
      if (window.getSelection && String(window.getSelection()).length) return;
      const line = event.target.closest('.line.msg');
      if (line && !line.classList.contains('deleted')) line.classList.toggle('show-original');
    });
    ui.automodList.addEventListener('click', (event) => {
      const button = event.target.closest('button[data-verb]');
      if (button) onHeldAction(button);
    });

    $('btn-login').addEventListener('click', () => openAuth('login'));
    $('btn-signup').addEventListener('click', () => openAuth('signup'));
    $('guest-login').addEventListener('click', () => openAuth('login'));
    $('guest-signup').addEventListener('click', () => openAuth('signup'));
    $('btn-logout').addEventListener('click', logout);
    $('btn-settings').addEventListener('click', openSettings);
    $('settings-close').addEventListener('click', () => ui.settings.close());
    ui.colorForm.addEventListener('submit', submitColor);
    ui.colorInput.addEventListener('input', () => selectColor(ui.colorInput.value));
    ui.colorSwatches.addEventListener('click', (event) => {
      const swatch = event.target.closest('button[data-color]');
      if (swatch) selectColor(swatch.dataset.color);
    });
    ui.usernameForm.addEventListener('submit', submitUsername);
    renderSwatches();
    $('auth-cancel').addEventListener('click', () => ui.dialog.close());
    ui.tabLogin.addEventListener('click', () => setAuthMode('login'));
    ui.tabSignup.addEventListener('click', () => setAuthMode('signup'));
    ui.authForm.addEventListener('submit', submitAuth);
    ui.bannerAction.addEventListener('click', () => conn.reconnectNow());

    ui.roomsToggle.addEventListener('click', () => {
      if (ui.app.classList.contains('nav-open')) closeSidebar();
      else openSidebar();
    });
    ui.scrim.addEventListener('click', closeSidebar);
    document.addEventListener('keydown', (event) => {
      if (event.key !== 'Escape') return;
      closeSidebar();
      closeReactPicker();
      if (!ui.emotePicker.hidden) toggleEmotePicker(false);
    });
    window.addEventListener('hashchange', () => {
      const name = roomFromHash();
      if (name) selectRoom(name);
    });

    conn.connect();
    refreshRooms();
  }

  init();
})();
