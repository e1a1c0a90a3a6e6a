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
  };

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

    let text = m.text ?? '';
    let action = false;
    const actionMatch = /^\u0001ACTION (.*?)\u0001?$/s.exec(text);
    if (actionMatch) {
      text = actionMatch[1];
      action = true;
    }
    if (!action) line.append(el('span', 'colon', ': '));
    const body = el('span', 'text', text);
    if (action) {
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
    if (m.deleted) showDeleted(line, m.deleted);
    return line;
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
    if (m.id) {
      if (state.seenIds.has(m.id)) return;
      rememberId(m.id);
    }
    enqueue({ kind: 'msg', ...m });
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
      const action = /^\u0001ACTION (.*?)\u0001?$/s.exec(entry.styled);
      body.textContent = action ? action[1] : entry.styled;
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
      original: entry.text,
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
        entry.styled = found.text;
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
    const entry = {
      nonce,
      room: state.room,
      text: body,
      status: 'pending',
      styled: null,
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
    conn.send(`@client-nonce=${escapeTagValue(nonce)} PRIVMSG #${state.room} :${body}`);
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
      const heldEntry = entry ? null : ownHeldMatching(room, login, tags['user-id'] || '', original);
      if (heldEntry) {
        // A message AutoMod held and a moderator allowed arrives like any other; its pending line takes it.
        heldEntry.styled = text;
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
        original,
        sentMs,
        historical: tags.historical === '1',
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

    function reconnectNow() {
      if (ws) return;
      attempt = Math.max(0, attempt - 1);
      connect();
    }

    return { connect, restart, switchRoom, send: rawSend, isReady, reconnectNow };
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
        fragment.append(
          renderMessage({
            room,
            id: m.id ? String(m.id) : '',
            login: String(m.login || ''),
            userId: m.user_id ? String(m.user_id) : '',
            displayName: String(m.display_name || m.login || ''),
            color: String(m.color || ''),
            badges: m.badges,
            text: String(m.text ?? ''),
            original: String(m.original ?? ''),
            sentMs: Number(m.sent_unix_ms) || Date.now(),
            historical: true,
          }),
        );
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
    if (!loggedIn && ui.settings.open) ui.settings.close();
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
      updateCounter();
      scrollToBottom();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring.

  function init() {
    renderAuth();
    setAuthMode('signup');

    ui.input.addEventListener('input', updateCounter);
    ui.input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submitComposer();
      }
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
      if (event.key === 'Escape') closeSidebar();
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
