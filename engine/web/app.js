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
  };

  const TOKEN_KEY = 'twitchy.auth';

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
    me: { displayName: '', color: '', badges: [] },
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
    if (m.historical) line.classList.add('historical');
    if (m.own) line.classList.add('own');

    const sent = new Date(m.sentMs || Date.now());
    const ts = el('time', 'ts', timeFormat.format(sent));
    ts.dateTime = sent.toISOString();
    ts.title = dateTimeFormat.format(sent);
    line.append(ts);

    const badges = parseBadges(m.badges);
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
    return line;
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

  const OWN_STATUS_TEXT = { pending: 'sending…', acked: '', failed: 'not sent' };

  function applyOwnStatus(entry) {
    const line = entry.el;
    if (!line) return;
    line.classList.toggle('pending', entry.status === 'pending');
    line.classList.toggle('acked', entry.status === 'acked');
    line.classList.toggle('failed', entry.status === 'failed');
    if (entry.id) line.dataset.id = entry.id;
    line.dataset.nonce = entry.nonce;
    if (entry.status === 'failed' && entry.failMsgId) line.dataset.msgId = entry.failMsgId;
    else delete line.dataset.msgId;
    const status = line.querySelector('.status');
    if (status) {
      status.textContent = entry.status === 'failed' && entry.reason ? `not sent: ${entry.reason}` : OWN_STATUS_TEXT[entry.status];
      if (entry.status === 'pending') status.title = 'Waiting for the server to confirm';
      else if (entry.status === 'failed') status.title = entry.failText || entry.reason;
      else status.title = '';
    }
    if (entry.styled !== null) {
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
      // Forget settled entries after a while; their lines keep the final state.
      entry.timer = setTimeout(() => state.own.delete(entry.nonce), LIMITS.ackWaitMs * 4);
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

  // ---------------------------------------------------------------------------------------------
  // Connection: WebSocket + Twitch IRC, with reconnect and exponential backoff.

  const conn = (() => {
    let ws = null;
    let registered = false;
    let joinedRoom = null;
    // Set once the server confirmed the current JOIN with ROOMSTATE or the end of NAMES.
    let joinConfirmed = false;
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
          if (room === state.room) {
            const text = msg.tags['system-msg'] || msg.params[1] || '';
            if (text) addSystemLine(text, 'info', msg.tags['msg-id']);
          }
          break;
        case 'CLEARMSG':
          if (room === state.room) markDeleted(msg.tags['target-msg-id']);
          break;
        case 'CLEARCHAT':
          if (room === state.room) clearChat(msg.params[1] ? msg.params[1].toLowerCase() : null);
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
      if (room === state.room) applyMe(msg.tags);
    }

    function onPrivmsg(msg, room) {
      if (!room) return;
      const tags = msg.tags;
      const nonce = tags['client-nonce'];
      const entry = nonce ? state.own.get(nonce) : undefined;
      const text = msg.params[1] ?? '';
      if (entry) {
        // Our own message, echoed styled: update the pending line instead of adding a second one.
        entry.styled = text;
        if (tags.id) {
          entry.id = tags.id;
          rememberId(tags.id);
        }
        // A replayed historical copy proves the message was stored even if the ack was lost.
        if (tags.historical === '1' || entry.status === 'failed') setOwnStatus(entry, 'acked');
        else applyOwnStatus(entry);
        return;
      }
      if (room !== state.room) return;
      const sentMs = Number(tags['tmi-sent-ts']) || Date.now();
      addChatMessage({
        room,
        id: tags.id || '',
        login: nickOf(msg.prefix),
        displayName: tags['display-name'] || nickOf(msg.prefix),
        color: tags.color || '',
        badges: tags.badges || '',
        text,
        original: tags['twitchy/original'] ?? '',
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
      const nonce = msg.tags['client-nonce'];
      let entry = nonce ? state.own.get(nonce) : null;
      if (!entry && msgId.startsWith('msg_')) entry = newestUnechoedPending(state.room);
      if (entry && entry.status === 'pending') {
        // The refused line itself says why; the full text goes above the input box.
        entry.failMsgId = msgId;
        entry.failText = describeNotice(msgId, text);
        setOwnStatus(entry, 'failed', shortReason(msgId, text));
      } else {
        addSystemLine(text || msgId, 'error', msgId || 'notice');
      }
      if (entry || msgId.startsWith('msg_')) showComposerError(describeNotice(msgId, text), msgId || 'notice');
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

  function shortReason(msgId, text) {
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
    switch (msgId) {
      case 'msg_ratelimit':
        return text || 'You are sending messages too quickly. Wait a moment and try again.';
      case 'msg_too_long':
        return text || `Messages can be at most ${LIMITS.messageCharsMax} characters.`;
      default:
        return text || msgId;
    }
  }

  function markDeleted(id) {
    if (!id) return;
    for (const line of ui.lines.querySelectorAll('.line.msg')) {
      if (line.dataset.id === id) {
        line.classList.add('deleted');
        line.querySelector('.text').textContent = '<message deleted>';
      }
    }
  }

  function clearChat(login) {
    if (!login) {
      resetLines();
      addSystemLine('Chat was cleared by a moderator.', 'info');
      return;
    }
    for (const line of ui.lines.querySelectorAll('.line.msg')) {
      if (line.dataset.login === login) {
        line.classList.add('deleted');
        line.querySelector('.text').textContent = '<message deleted>';
      }
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
        state.me = { displayName: '', color: '', badges: [] };
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
    state.me = { displayName: '', color: '', badges: [] };
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
    updateCounter();
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
      if (window.getSelection && String(window.getSelection()).length) return;
      const line = event.target.closest('.line.msg');
      if (line) line.classList.toggle('show-original');
    });

    $('btn-login').addEventListener('click', () => openAuth('login'));
    $('btn-signup').addEventListener('click', () => openAuth('signup'));
    $('guest-login').addEventListener('click', () => openAuth('login'));
    $('guest-signup').addEventListener('click', () => openAuth('signup'));
    $('btn-logout').addEventListener('click', logout);
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
