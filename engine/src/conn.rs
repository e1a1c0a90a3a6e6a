//! Client connections on a shard: the outbound queue, the TCP and WebSocket drivers, keepalive and slow-viewer
//! handling.
//!
//! A connection is three futures raced in one task: the reader (bytes → lines → [`Session`] → actions), the writer
//! (drains the outbound queue to the socket), and the keepalive/closer (PINGs idle clients, drops dead ones, and
//! bounds how long a closing connection may take to flush). When any of them ends, the connection ends.
//!
//! Architecture invariant: a viewer that falls behind by more than `outbound_queue_bytes_max` is disconnected (with
//! `RECONNECT`); pushing to a queue never waits, so one slow viewer never slows the shard or anyone else.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use crate::metrics::ShardMetrics;
use crate::protocol::line::{LineBuffer, LineError, split_frame_lines};
use crate::protocol::session::{Action, Session};
use crate::protocol::twitch;
use crate::shard::{ChatMessage, Shard, unix_ms};

/// Longest IRC line accepted from a client, tags included (Twitch: 8191 bytes of tags + 512).
pub const LINE_BYTES_MAX: usize = 8 * 1024;
/// Largest WebSocket message accepted from a client.
pub const WS_MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Socket read size.
pub const READ_CHUNK_BYTES: usize = 4 * 1024;
/// Bytes gathered into one socket write.
pub const WRITE_GATHER_BYTES_MAX: usize = 64 * 1024;
/// How long a closing connection may take to flush its last lines.
pub const CLOSE_GRACE_MS: u64 = 2_000;

/// A shard-local one-waiter event.
#[derive(Default)]
pub struct LocalNotify {
    notified: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl LocalNotify {
    pub fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.notified.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// How a closing connection says `RECONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Drop what is queued (the viewer is too slow for it anyway) and send `RECONNECT` next.
    Now,
    /// Send `RECONNECT` after what is already queued.
    AfterQueued,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
}

impl Transport {
    /// IRC lines as this transport sends them: raw on TCP, one text frame on WebSocket.
    pub fn frame(self, irc_lines: Vec<u8>) -> Bytes {
        match self {
            Transport::Tcp => Bytes::from(irc_lines),
            Transport::WebSocket => Bytes::from(ws_text_frame(&irc_lines)),
        }
    }
}

/// Wraps IRC bytes in one unmasked WebSocket text frame (server frames are the same for every viewer).
pub fn ws_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    let frame = Frame::message(
        Bytes::copy_from_slice(payload),
        OpCode::Data(Data::Text),
        true,
    );
    frame
        .format(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}

/// One chat message's line, encoded at most once per (tags, transport) variant on a shard and shared by reference
/// count with every viewer.
pub struct SharedLine<'a> {
    message: &'a ChatMessage,
    server: &'a str,
    variants: [OnceCell<Bytes>; 4],
}

impl<'a> SharedLine<'a> {
    pub fn new(message: &'a ChatMessage, server: &'a str) -> SharedLine<'a> {
        SharedLine {
            message,
            server,
            variants: Default::default(),
        }
    }

    pub fn bytes(&self, transport: Transport, with_tags: bool) -> Bytes {
        let index = usize::from(with_tags) * 2 + usize::from(transport == Transport::WebSocket);
        self.variants[index]
            .get_or_init(|| {
                let id = self.message.record.id.to_string();
                let mut line = Vec::with_capacity(512);
                twitch::encode_privmsg(
                    &self.message.chat_line(false, &id),
                    self.server,
                    with_tags,
                    &mut line,
                );
                transport.frame(line)
            })
            .clone()
    }
}

/// One client connection's shard-local state.
pub struct Conn {
    pub id: u64,
    pub transport: Transport,
    pub session: RefCell<Session>,
    /// Rooms joined (or being joined).
    pub rooms: RefCell<Vec<usize>>,
    /// Whether this client wants its own messages back (IRCv3 `echo-message`).
    pub echo: Cell<bool>,
    queue: RefCell<VecDeque<Bytes>>,
    queued_bytes: Cell<usize>,
    queue_bytes_max: usize,
    writable: LocalNotify,
    /// Notified by the writer after each socket write, for a reader waiting for its client to catch up.
    drained: LocalNotify,
    closing: Cell<bool>,
    closed: LocalNotify,
    last_rx_ms: Cell<u64>,
}

impl Conn {
    pub fn new(
        id: u64,
        transport: Transport,
        session: Session,
        queue_bytes_max: usize,
    ) -> Rc<Conn> {
        Rc::new(Conn {
            id,
            transport,
            session: RefCell::new(session),
            rooms: RefCell::default(),
            echo: Cell::new(false),
            queue: RefCell::default(),
            queued_bytes: Cell::new(0),
            queue_bytes_max,
            writable: LocalNotify::default(),
            drained: LocalNotify::default(),
            closing: Cell::new(false),
            closed: LocalNotify::default(),
            last_rx_ms: Cell::new(unix_ms()),
        })
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Queues a shared chat line. Returns false if the viewer is gone or was just dropped for being too slow.
    pub fn push_shared(&self, line: &SharedLine<'_>, metrics: &ShardMetrics) -> bool {
        if self.closing.get() {
            return false;
        }
        let with_tags = self.session.borrow().wants_tags();
        let bytes = line.bytes(self.transport, with_tags);
        self.push_bytes(bytes, metrics)
    }

    fn push_bytes(&self, bytes: Bytes, metrics: &ShardMetrics) -> bool {
        if self.queued_bytes.get() + bytes.len() > self.queue_bytes_max {
            self.disconnect_slow(metrics);
            return false;
        }
        self.enqueue(bytes);
        true
    }

    /// Appends to the outbound queue, which the caller has checked against its limit, and wakes the writer.
    fn enqueue(&self, bytes: Bytes) {
        self.queued_bytes.set(self.queued_bytes.get() + bytes.len());
        self.queue.borrow_mut().push_back(bytes);
        self.writable.notify();
    }

    /// Queues bytes meant for this client only (replies, acks, notices, history).
    pub fn push_owned(&self, irc_lines: Vec<u8>) {
        if self.closing.get() || irc_lines.is_empty() {
            return;
        }
        let bytes = self.transport.frame(irc_lines);
        // Replies count against the same limit: a client that never reads cannot grow our memory either.
        if self.queued_bytes.get() + bytes.len() > self.queue_bytes_max {
            self.close_with(Some(Reconnect::Now));
            return;
        }
        self.enqueue(bytes);
    }

    /// Runs reply actions produced outside the reader (join completion).
    pub fn run_replies(&self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Reply(bytes) => self.push_owned(bytes),
                Action::Close => self.close_with(None),
                other => log::debug!("unexpected action outside the reader: {other:?}"),
            }
        }
    }

    fn disconnect_slow(&self, metrics: &ShardMetrics) {
        ShardMetrics::inc(&metrics.slow_disconnects_total);
        self.close_with(Some(Reconnect::Now));
    }

    /// Starts closing: optionally drops what is queued and queues a last `RECONNECT`, and lets the writer flush
    /// within [`CLOSE_GRACE_MS`].
    pub fn close_with(&self, reconnect: Option<Reconnect>) {
        if self.closing.replace(true) {
            return;
        }
        if let Some(reconnect) = reconnect {
            let mut queue = self.queue.borrow_mut();
            if reconnect == Reconnect::Now {
                queue.clear();
                self.queued_bytes.set(0);
            }
            let bytes = self.reconnect_bytes();
            self.queued_bytes.set(self.queued_bytes.get() + bytes.len());
            queue.push_back(bytes);
        }
        self.writable.notify();
        self.closed.notify();
    }

    /// Server shutdown: flush what is queued (acks included), then `RECONNECT`, then close.
    pub fn shutdown_with_reconnect(&self) {
        self.close_with(Some(Reconnect::AfterQueued));
    }

    fn reconnect_bytes(&self) -> Bytes {
        let mut line = Vec::new();
        twitch::encode_reconnect(self.session.borrow().server_name(), &mut line);
        self.transport.frame(line)
    }

    fn touch(&self) {
        self.last_rx_ms.set(unix_ms());
    }
}

/// `Rc<RefCell<stream>>` split into a reader and a writer; glommio streams keep separate read and write sources, so
/// one read and one write may be pending at once. Borrows never cross an await.
struct Half<S>(Rc<RefCell<S>>);

impl<S: AsyncRead + Unpin> AsyncRead for Half<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Half<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Serves one client connection until it ends. `preread` holds bytes already read (after an HTTP upgrade).
pub async fn serve<S>(shard: Rc<Shard>, stream: S, transport: Transport, preread: Bytes)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let session = Session::new(shard.session_config.clone());
    let Some(conn) = shard.register_conn(|id| {
        Conn::new(
            id,
            transport,
            session,
            shard.shared.args.outbound_queue_bytes_max,
        )
    }) else {
        // Over the connection limit: the socket is dropped (closed) right away.
        return;
    };
    let stream = Rc::new(RefCell::new(stream));
    let reader = async {
        read_loop(&shard, &conn, Half(stream.clone()), preread).await;
        // The client stopped sending (or must be closed): flush what is queued within the grace period. The
        // writer or the keepalive ends the connection.
        conn.close_with(None);
        futures_lite::future::pending::<()>().await
    };
    let writer = write_loop(&conn, Half(stream.clone()));
    let keepalive = keepalive_loop(&shard, &conn);
    futures_lite::future::or(reader, futures_lite::future::or(writer, keepalive)).await;
    conn.closing.set(true);
    let _ = Half(stream).close().await;
    shard.unregister_conn(&conn);
}

async fn write_loop<S: AsyncWrite + Unpin>(conn: &Rc<Conn>, mut out: Half<S>) {
    let mut gather = Vec::with_capacity(0);
    loop {
        let first = conn.queue.borrow_mut().pop_front();
        let Some(first) = first else {
            if conn.closing.get() {
                return;
            }
            conn.writable.wait().await;
            continue;
        };
        let mut taken = first.len();
        let next_is_some = !conn.queue.borrow().is_empty();
        let result = if next_is_some {
            // Several lines are waiting: copy them into one buffer for a single write.
            gather.clear();
            gather.extend_from_slice(&first);
            {
                let mut queue = conn.queue.borrow_mut();
                while let Some(front) = queue.front() {
                    if gather.len() + front.len() > WRITE_GATHER_BYTES_MAX {
                        break;
                    }
                    gather.extend_from_slice(front);
                    taken += front.len();
                    queue.pop_front();
                }
            }
            conn.queued_bytes
                .set(conn.queued_bytes.get().saturating_sub(taken));
            out.write_all(&gather).await
        } else {
            conn.queued_bytes
                .set(conn.queued_bytes.get().saturating_sub(taken));
            out.write_all(&first).await
        };
        if gather.capacity() > WRITE_GATHER_BYTES_MAX * 2 {
            gather = Vec::new();
        }
        conn.drained.notify();
        if result.is_err() {
            return;
        }
    }
}

async fn keepalive_loop(shard: &Rc<Shard>, conn: &Rc<Conn>) {
    let ping_ms = shard.shared.args.idle_ping_secs.max(1) * 1000;
    let timeout_ms = shard.shared.args.idle_timeout_secs.max(1) * 1000;
    let mut pinged_at_rx = None;
    loop {
        let closed = async {
            conn.closed.wait().await;
            true
        };
        let tick = async {
            glommio::timer::sleep(Duration::from_millis(ping_ms.min(timeout_ms) / 2 + 1)).await;
            false
        };
        if futures_lite::future::or(closed, tick).await || conn.closing.get() {
            // Give the writer a bounded time to flush the last lines, then end the connection.
            glommio::timer::sleep(Duration::from_millis(CLOSE_GRACE_MS)).await;
            return;
        }
        let idle_ms = unix_ms().saturating_sub(conn.last_rx_ms.get());
        if idle_ms >= timeout_ms {
            ShardMetrics::inc(&shard.metrics().idle_disconnects_total);
            conn.close_with(None);
            continue;
        }
        if idle_ms >= ping_ms && pinged_at_rx != Some(conn.last_rx_ms.get()) {
            pinged_at_rx = Some(conn.last_rx_ms.get());
            let mut line = Vec::new();
            twitch::encode_ping(&shard.shared.args.server_name, &mut line);
            conn.push_owned(line);
        }
    }
}

async fn read_loop<S: AsyncRead + Unpin>(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    mut input: Half<S>,
    preread: Bytes,
) {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    match conn.transport {
        Transport::Tcp => {
            let mut lines = LineBuffer::new(LINE_BYTES_MAX);
            lines.push(&preread);
            loop {
                while let Some(line) = lines.next_line() {
                    match line {
                        Ok(line) => handle_line(shard, conn, &line).await,
                        Err(err) => notice_bad_line(shard, conn, err),
                    }
                    if conn.closing.get() {
                        return;
                    }
                }
                wait_for_client_to_catch_up(conn).await;
                match input.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        conn.touch();
                        lines.push(&chunk[..n]);
                    }
                }
            }
        }
        Transport::WebSocket => {
            let config = WebSocketConfig::default()
                .read_buffer_size(READ_CHUNK_BYTES)
                .max_message_size(Some(WS_MESSAGE_BYTES_MAX))
                .max_frame_size(Some(WS_MESSAGE_BYTES_MAX));
            let mut ws = WebSocketContext::new(Role::Server, Some(config));
            let mut io = MemIo::default();
            io.input.extend(&preread[..]);
            loop {
                loop {
                    let message = ws.read(&mut io);
                    if !io.output.is_empty() {
                        // Pongs and close replies generated by tungstenite go out in order with everything else.
                        let bytes = std::mem::take(&mut io.output);
                        push_raw(conn, bytes);
                    }
                    match message {
                        Ok(Message::Text(text)) => {
                            for line in split_frame_lines(text.as_str()) {
                                handle_line(shard, conn, line).await;
                                if conn.closing.get() {
                                    return;
                                }
                            }
                        }
                        Ok(Message::Binary(data)) => match std::str::from_utf8(&data) {
                            Ok(text) => {
                                for line in split_frame_lines(text) {
                                    handle_line(shard, conn, line).await;
                                }
                            }
                            Err(_) => notice_bad_line(shard, conn, LineError::InvalidUtf8),
                        },
                        Ok(Message::Close(_)) => {
                            conn.close_with(None);
                            return;
                        }
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                            break;
                        }
                        Err(err) => {
                            log::debug!("websocket conn {} ended: {err}", conn.id);
                            if !io.output.is_empty() {
                                push_raw(conn, std::mem::take(&mut io.output));
                            }
                            conn.close_with(None);
                            return;
                        }
                    }
                }
                wait_for_client_to_catch_up(conn).await;
                match input.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        conn.touch();
                        io.input.extend(&chunk[..n]);
                    }
                }
            }
        }
    }
}

/// Read-side backpressure: a client that sends faster than it reads its own replies (acks, notices) stops being
/// read once half its outbound limit is queued, until the writer has flushed below it. Such a client is slowed
/// down instead of being disconnected; a viewer that only receives is still dropped at the full limit.
async fn wait_for_client_to_catch_up(conn: &Conn) {
    while conn.queued_bytes.get() > conn.queue_bytes_max / 2 && !conn.closing.get() {
        conn.drained.wait().await;
    }
}

/// Queues already-framed bytes (WebSocket control frames) for this client.
fn push_raw(conn: &Conn, bytes: Vec<u8>) {
    if conn.closing.get() {
        return;
    }
    conn.enqueue(Bytes::from(bytes));
}

fn notice_bad_line(shard: &Shard, conn: &Conn, err: LineError) {
    let text = match err {
        LineError::TooLong => "Your line was too long and was ignored.",
        LineError::InvalidUtf8 => "Your line was not valid UTF-8 and was ignored.",
    };
    let mut out = Vec::new();
    twitch::encode_notice(
        None,
        None,
        text,
        &shard.shared.args.server_name,
        conn.session.borrow().wants_tags(),
        &mut out,
    );
    ShardMetrics::inc(&shard.metrics().notices_total);
    conn.push_owned(out);
}

/// Runs one client line through the session and carries out what it asks for.
async fn handle_line(shard: &Rc<Shard>, conn: &Rc<Conn>, line: &str) {
    let mut actions = Vec::new();
    conn.session
        .borrow_mut()
        .handle_line(line, unix_ms(), &mut actions);
    conn.echo.set(conn.session.borrow().wants_echo());
    let mut queue: VecDeque<Action> = actions.into();
    while let Some(action) = queue.pop_front() {
        match action {
            Action::Reply(bytes) => conn.push_owned(bytes),
            Action::Close => conn.close_with(None),
            Action::Authenticate { login, token } => {
                let mut more = Vec::new();
                match crate::auth::identity_for_token(&shard.shared.storage, &login, &token).await {
                    Some(identity) => conn.session.borrow_mut().authenticated(identity, &mut more),
                    None => conn.session.borrow_mut().authentication_failed(&mut more),
                }
                queue.extend(more);
            }
            Action::Join { room } => match shard.shared.room(&room) {
                Some(index) => shard.join(conn, index),
                None => {
                    let mut more = Vec::new();
                    conn.session.borrow_mut().join_failed(&room, &mut more);
                    queue.extend(more);
                }
            },
            Action::Part { room } => {
                if let Some(index) = shard.shared.room(&room) {
                    shard.part(conn, index);
                }
            }
            Action::Privmsg {
                room,
                text,
                client_nonce,
                ..
            } => match shard.shared.room(&room) {
                Some(index) if conn.rooms.borrow().contains(&index) => {
                    shard.submit(conn, index, text, client_nonce)
                }
                _ => {
                    let mut out = Vec::new();
                    twitch::encode_notice(
                        Some(&room),
                        Some(twitch::msg_id::CHANNEL_SUSPENDED),
                        "You must JOIN a channel before sending to it.",
                        &shard.shared.args.server_name,
                        conn.session.borrow().wants_tags(),
                        &mut out,
                    );
                    conn.push_owned(out);
                }
            },
        }
    }
}

/// In-memory duplex buffer that lets tungstenite's sans-IO context run over our async socket: reads return
/// `WouldBlock` when empty, writes append to `output`.
#[derive(Default)]
struct MemIo {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

impl Read for MemIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.read(buf)?;
        Ok(n)
    }
}

impl Write for MemIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
