//! HTTP on the main port, through hyper: the JSON API, metrics, the web client, and the WebSocket upgrade.
//!
//! Every error is a 4xx/5xx with a JSON body `{"error": "..."}`. `/healthz` answers 503 with a JSON reason while
//! storage is failing; `POST /api/logout` revokes the presented token. With `--metrics-addr`, `/metrics` is served
//! only there (see [`Listener`]).
//!
//! Limits: every HTTP connection counts against the shard's connection limit (with chat connections); one over
//! it is answered `429` with `Retry-After` and closed. A request head must arrive within the header timeout
//! (else `408` and close), a body within the body timeout from the end of its head (a body trickling in is cut with
//! `408`), and a keep-alive connection idle longer than the keep-alive timeout is closed. Request bodies are capped
//! at [`REQUEST_BODY_BYTES_MAX`]. The deadlines are decided by [`HttpTimeouts`], a plain function of the
//! connection's phase and the time, so they are unit-tested without sockets.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use twitchy_inference::rt::{GlommioIo, GlommioTimer};
use twitchy_storage::{Health, MessageId, MessageRecord};

use crate::conn::{self, Transport};
use crate::core::moderation::keys;
use crate::core::{Actor, CommandReply, ReplyKind};
use crate::ip_limit::IpSlot;
use crate::metrics::ShardMetrics;
use crate::protocol::commands::{self, ChatCommand};
use crate::protocol::session::Identity;
use crate::shard::{LocalNotify, Shard};
use crate::tls::EdgeStream;

pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024;
/// History page size: default and maximum.
pub const HISTORY_PAGE_DEFAULT: usize = 50;
pub const HISTORY_PAGE_MAX: usize = 100;
/// Connections a shard serves at once on the metrics listener (`--metrics-addr`); more are closed at once.
pub const METRICS_CONNECTIONS_PER_SHARD_MAX: usize = 16;
/// What a refused connection's client is told to wait before it tries again, in seconds.
pub const RETRY_AFTER_SECS: u64 = 1;
/// How long a refused connection is read (and what it sent discarded) after its `429`, so that closing it does not
/// reset the connection before the client read the answer.
const REFUSED_DRAIN_MS: u64 = 500;
const REFUSED_DRAIN_BYTES_MAX: usize = 16 * 1024;

/// The web client's pages and assets may load scripts and styles only from this server, talk only to it (the
/// WebSocket included) and never be framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");
/// The global emotes' images, in the order of [`crate::protocol::emotes::GLOBAL_EMOTES`] (ids 1 to 24). Vector
/// images: one file serves every scale.
const EMOTE_SVGS: [&str; 24] = [
    include_str!("../web/emotes/1.svg"),
    include_str!("../web/emotes/2.svg"),
    include_str!("../web/emotes/3.svg"),
    include_str!("../web/emotes/4.svg"),
    include_str!("../web/emotes/5.svg"),
    include_str!("../web/emotes/6.svg"),
    include_str!("../web/emotes/7.svg"),
    include_str!("../web/emotes/8.svg"),
    include_str!("../web/emotes/9.svg"),
    include_str!("../web/emotes/10.svg"),
    include_str!("../web/emotes/11.svg"),
    include_str!("../web/emotes/12.svg"),
    include_str!("../web/emotes/13.svg"),
    include_str!("../web/emotes/14.svg"),
    include_str!("../web/emotes/15.svg"),
    include_str!("../web/emotes/16.svg"),
    include_str!("../web/emotes/17.svg"),
    include_str!("../web/emotes/18.svg"),
    include_str!("../web/emotes/19.svg"),
    include_str!("../web/emotes/20.svg"),
    include_str!("../web/emotes/21.svg"),
    include_str!("../web/emotes/22.svg"),
    include_str!("../web/emotes/23.svg"),
    include_str!("../web/emotes/24.svg"),
];
/// Emote images never change under an id: clients may keep them for a week without asking again.
const EMOTE_CACHE_CONTROL: &str = "public, max-age=604800, immutable";

type Body = Full<Bytes>;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The main port: API, web client, WebSocket, and `/metrics` unless it has its own address.
    Main,
    /// `--metrics-addr`: `/metrics` (and `/healthz`) only, outside the chat connection limit.
    Metrics,
}

/// Where an HTTP connection is between requests, with times in milliseconds of the driver's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpPhase {
    /// Waiting for a request since `since_ms` (the connection opened or the last response was ready).
    Idle { since_ms: u64 },
    /// The first bytes of a request head arrived at `since_ms` (or the connection opened then).
    Head { since_ms: u64 },
    /// A request is being handled; its body has its own deadline inside the handler.
    Request,
}

/// Which deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    KeepAlive,
    Header,
}

/// The HTTP deadlines of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    pub header_ms: u64,
    pub body_ms: u64,
    pub keep_alive_ms: u64,
}

impl HttpTimeouts {
    /// When the connection must be closed in `phase`, and why; `None` while a request is handled.
    pub fn deadline(&self, phase: HttpPhase) -> Option<(u64, Expiry)> {
        match phase {
            HttpPhase::Idle { since_ms } => {
                Some((since_ms + self.keep_alive_ms, Expiry::KeepAlive))
            }
            HttpPhase::Head { since_ms } => Some((since_ms + self.header_ms, Expiry::Header)),
            HttpPhase::Request => None,
        }
    }

    /// The phase after bytes arrived: the first bytes while idle start the header deadline.
    pub fn on_bytes(phase: HttpPhase, now_ms: u64) -> HttpPhase {
        match phase {
            HttpPhase::Idle { .. } => HttpPhase::Head { since_ms: now_ms },
            other => other,
        }
    }
}

/// One connection's phase, shared by its reader, its request handler and its deadline watcher.
struct ConnTimers {
    epoch: Instant,
    phase: Cell<HttpPhase>,
    /// Requests handled so far.
    requests: Cell<u64>,
    changed: LocalNotify,
}

impl ConnTimers {
    fn new() -> ConnTimers {
        ConnTimers {
            epoch: Instant::now(),
            // A new connection owes its first request head at once: the header deadline runs from the connect.
            phase: Cell::new(HttpPhase::Head { since_ms: 0 }),
            requests: Cell::new(0),
            changed: LocalNotify::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn set(&self, phase: HttpPhase) {
        if self.phase.replace(phase) != phase {
            self.changed.notify();
        }
    }

    /// Resolves when the connection's current deadline passes.
    async fn expired(&self, timeouts: HttpTimeouts) -> Expiry {
        loop {
            match timeouts.deadline(self.phase.get()) {
                None => self.changed.wait().await,
                Some((at_ms, expiry)) => {
                    let now_ms = self.now_ms();
                    if now_ms >= at_ms {
                        return expiry;
                    }
                    let sleep = glommio::timer::sleep(Duration::from_millis(at_ms - now_ms));
                    futures_lite::future::or(sleep, self.changed.wait()).await;
                }
            }
        }
    }
}

/// The socket as hyper reads it: notes when the first bytes of a request head arrive. The stream is shared so that
/// it can be taken back after hyper's connection is dropped (to answer `408`, or after an upgrade); only one of
/// them uses it at a time, and no borrow is held across an await.
struct TimedStream {
    inner: Rc<RefCell<EdgeStream>>,
    timers: Rc<ConnTimers>,
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut *this.inner.borrow_mut()).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            let timers = &this.timers;
            timers.set(HttpTimeouts::on_bytes(timers.phase.get(), timers.now_ms()));
        }
        result
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.inner.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner.borrow_mut()).poll_close(cx)
    }
}

/// What one request's handler needs besides the request.
struct RequestCtx<'a> {
    shard: Rc<Shard>,
    listener: Listener,
    upgraded: &'a Cell<bool>,
    /// The client's address, for the per-address sign-in limits.
    peer_ip: IpAddr,
    /// The whole body must have arrived by then.
    body_deadline: Instant,
}

/// Serves HTTP/1.1 on one accepted connection (keep-alive), and hands the socket to the WebSocket driver after an
/// upgrade. hyper's own upgrade machinery needs `Send` IO, which shard-local sockets are not, so the connection is
/// run "without shutdown" and the socket (with any bytes hyper read past the request) is taken back from it.
pub async fn serve(shard: Rc<Shard>, stream: EdgeStream, listener: Listener, slot: IpSlot) {
    let admitted = match listener {
        Listener::Main => shard.http_open(),
        Listener::Metrics => shard.metrics_conn_open(METRICS_CONNECTIONS_PER_SHARD_MAX),
    };
    if !admitted {
        if listener == Listener::Main {
            refuse(stream).await;
        }
        return;
    }
    let upgraded = serve_admitted(&shard, stream, listener).await;
    match listener {
        Listener::Main => shard.http_closed(),
        Listener::Metrics => shard.metrics_conn_closed(),
    }
    if let Some((stream, read_buf)) = upgraded {
        // The connection stops counting as HTTP and counts as chat from here, with no await in between, so the
        // freed place cannot be taken meanwhile.
        let opened = shard.open_conn(Transport::WebSocket, stream.direct_fd());
        // A fresh task for the WebSocket: this one, sized for hyper's connection state, ends here, so a
        // long-lived WebSocket does not keep that memory.
        glommio::spawn_local(conn::serve_opened(shard, stream, opened, read_buf, slot)).detach();
    }
}

/// Serves requests until the connection ends; after a WebSocket upgrade, returns the socket and the bytes hyper
/// read past the request.
async fn serve_admitted(
    shard: &Rc<Shard>,
    stream: EdgeStream,
    listener: Listener,
) -> Option<(EdgeStream, Bytes)> {
    let _ = stream.tcp().set_nodelay(true);
    let peer_ip = stream
        .tcp()
        .peer_addr()
        .map(|addr| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let args = &shard.shared.args;
    let timeouts = HttpTimeouts {
        header_ms: args.http_header_timeout_ms.max(1),
        body_ms: args.http_body_timeout_ms.max(1),
        keep_alive_ms: args.http_keep_alive_timeout_ms.max(1),
    };
    let timers = Rc::new(ConnTimers::new());
    let upgraded = Rc::new(Cell::new(false));
    let service_shard = shard.clone();
    let service_upgraded = upgraded.clone();
    let service_timers = timers.clone();
    let service = hyper::service::service_fn(move |req| {
        let shard = service_shard.clone();
        let upgraded = service_upgraded.clone();
        let timers = service_timers.clone();
        let response: Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>>>> =
            Box::pin(async move {
                timers.set(HttpPhase::Request);
                let ctx = RequestCtx {
                    shard,
                    listener,
                    peer_ip,
                    upgraded: &upgraded,
                    body_deadline: Instant::now() + Duration::from_millis(timeouts.body_ms),
                };
                let mut response = route(&ctx, req).await;
                response.headers_mut().insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                timers.requests.set(timers.requests.get() + 1);
                timers.set(HttpPhase::Idle {
                    since_ms: timers.now_ms(),
                });
                Ok(response)
            });
        response
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(GlommioTimer)
        // The deadlines are kept by `ConnTimers`, which also answers 408; hyper's own would only close.
        .header_read_timeout(None)
        .max_buf_size(64 * 1024);
    let stream = Rc::new(RefCell::new(stream));
    let timed = TimedStream {
        inner: stream.clone(),
        timers: timers.clone(),
    };
    let mut connection = Box::pin(
        builder
            .serve_connection(GlommioIo::new(timed), service)
            .without_shutdown(),
    );
    enum Ended<T> {
        Served(T),
        Expired(Expiry),
    }
    let ended =
        futures_lite::future::or(async { Ended::Served(connection.as_mut().await) }, async {
            Ended::Expired(timers.expired(timeouts).await)
        })
        .await;
    // hyper's connection (and its handle on the stream) goes first, so the stream can be taken back.
    drop(connection);
    let mut answer_408 = false;
    let mut read_buf = None;
    match ended {
        Ended::Served(Ok(parts)) if upgraded.get() => read_buf = Some(parts.read_buf),
        Ended::Served(Ok(_)) => {}
        Ended::Served(Err(err)) => log::debug!("http connection ended: {err}"),
        // Only before the first response: later, a response may still be partly unwritten.
        Ended::Expired(Expiry::Header) => answer_408 = timers.requests.get() == 0,
        Ended::Expired(Expiry::KeepAlive) => {}
    }
    let mut stream = Rc::try_unwrap(stream).ok()?.into_inner();
    if let Some(read_buf) = read_buf {
        return Some((stream, read_buf));
    }
    if answer_408 {
        let answer = raw_error(
            StatusCode::REQUEST_TIMEOUT,
            "request head not received in time",
            None,
        );
        write_final(&mut stream, &answer).await;
    }
    None
}

/// How long a last answer on a connection being closed may take to write.
const FINAL_WRITE_MS_MAX: u64 = 1_000;

/// Writes a connection's last bytes (and, for TLS, its close_notify), giving up after [`FINAL_WRITE_MS_MAX`].
pub async fn write_final(stream: &mut EdgeStream, bytes: &[u8]) {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await?;
        if stream.is_tls() {
            stream.close().await?;
        }
        Ok::<(), std::io::Error>(())
    };
    futures_lite::future::or(
        async {
            let _ = write.await;
        },
        glommio::timer::sleep(Duration::from_millis(FINAL_WRITE_MS_MAX)),
    )
    .await;
}

/// A complete `Connection: close` error response, written directly to a socket hyper does not serve.
fn raw_error(status: StatusCode, message: &str, retry_after_secs: Option<u64>) -> Vec<u8> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    if let Some(secs) = retry_after_secs {
        out.push_str(&format!("Retry-After: {secs}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out.into_bytes()
}

/// Answers a connection over the limit with `429` and closes it. What the client sent meanwhile is read and
/// discarded for a short while first, so that the close does not reset the connection before it read the answer.
/// Answers a connection over a limit with `429` and `Retry-After`, then closes it.
pub async fn refuse_over_limit(stream: EdgeStream) {
    refuse(stream).await;
}

async fn refuse(mut stream: EdgeStream) {
    let response = raw_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many connections; try again shortly",
        Some(RETRY_AFTER_SECS),
    );
    write_final(&mut stream, &response).await;
    let _ = stream.tcp().shutdown(std::net::Shutdown::Write).await;
    let drain = async {
        let mut scratch = [0u8; 1024];
        let mut drained = 0;
        while drained < REFUSED_DRAIN_BYTES_MAX {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    futures_lite::future::or(
        drain,
        glommio::timer::sleep(Duration::from_millis(REFUSED_DRAIN_MS)),
    )
    .await;
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
    }
    json(status, &ErrorBody { error: message })
}

fn text(content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `GET /api/emotes`: `[{"id","code","url","urls":{"1x","2x","4x"}}]`.
fn emotes_list() -> Response<Body> {
    let list: Vec<serde_json::Value> = crate::protocol::emotes::GLOBAL_EMOTES
        .iter()
        .map(|(id, code)| {
            let url = format!("/emotes/{id}.svg");
            serde_json::json!({
                "id": id, "code": code, "url": url,
                "urls": {"1x": url, "2x": url, "4x": url},
            })
        })
        .collect();
    json(StatusCode::OK, &list)
}

/// `GET /emotes/{id}.svg`: an emote's image, cacheable for a week.
fn emote_image(file: &str) -> Response<Body> {
    let image = file
        .strip_suffix(".svg")
        .and_then(|id| {
            crate::protocol::emotes::GLOBAL_EMOTES
                .iter()
                .position(|(emote_id, _)| *emote_id == id)
        })
        .map(|index| EMOTE_SVGS[index]);
    let Some(svg) = image else {
        return error(StatusCode::NOT_FOUND, "no such emote");
    };
    let mut response = text("image/svg+xml", svg);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(EMOTE_CACHE_CONTROL),
    );
    response
}

/// A page or asset of the web client, with its Content-Security-Policy.
fn web_asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut response = text(content_type, body);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

async fn route(ctx: &RequestCtx<'_>, req: Request<Incoming>) -> Response<Body> {
    let shard = &ctx.shard;
    ShardMetrics::inc(&shard.metrics().http_requests_total);
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if ctx.listener == Listener::Metrics {
        return match (&method, segments.as_slice()) {
            (&Method::GET, ["metrics"]) => metrics(shard),
            (&Method::GET, ["healthz"]) => healthz(shard),
            (_, ["metrics"] | ["healthz"]) => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "this address serves only /metrics and /healthz",
            ),
        };
    }
    if is_websocket_upgrade(&req) {
        return if path == "/" {
            websocket_upgrade(req, ctx.upgraded)
        } else {
            error(StatusCode::NOT_FOUND, "WebSocket IRC is served at /")
        };
    }
    let separate_metrics = shard.shared.args.metrics_addr.is_some();
    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => web_asset("text/html; charset=utf-8", INDEX_HTML),
        (&Method::GET, ["assets", "app.js"]) => web_asset("text/javascript; charset=utf-8", APP_JS),
        (&Method::GET, ["assets", "style.css"]) => web_asset("text/css; charset=utf-8", STYLE_CSS),
        (&Method::GET, ["healthz"]) => healthz(shard),
        (_, ["metrics"]) if separate_metrics => error(
            StatusCode::NOT_FOUND,
            "metrics are served on the metrics address",
        ),
        (&Method::GET, ["metrics"]) => metrics(shard),
        (&Method::GET, ["api", "rooms"]) => rooms(shard),
        (&Method::GET, ["api", "emotes"]) => emotes_list(),
        (&Method::GET, ["emotes", file]) => emote_image(file),
        (&Method::GET, ["api", "rooms", room, "messages"]) => {
            history(shard, room, req.uri().query()).await
        }
        (&Method::POST, ["api", "register"]) => account(ctx, req, true).await,
        (&Method::POST, ["api", "login"]) => account(ctx, req, false).await,
        (&Method::POST, ["api", "logout"]) => logout(ctx, req).await,
        (&Method::POST, ["api", "rooms", room, "moderation"]) => {
            moderation_command(ctx, room, req).await
        }
        (&Method::GET, ["api", "rooms", room, "moderation"]) => {
            moderation_state(ctx, room, req).await
        }
        (&Method::POST, ["api", "account", "username"]) => account_username(ctx, req).await,
        (&Method::GET, ["api", "rooms", room, "chatters"]) => {
            chatters(shard, room, req.uri().query()).await
        }
        (&Method::GET, ["api", "whispers"]) => whisper_conversations(shard, &req).await,
        (&Method::GET, ["api", "whispers", peer]) => {
            whisper_thread(shard, &req, peer, req.uri().query()).await
        }
        (&Method::POST, ["api", "whispers", peer, "read"]) => whisper_read(shard, &req, peer).await,
        (&Method::POST, ["api", "account", "color"]) => account_color(ctx, req).await,
        (
            _,
            [""]
            | ["healthz"]
            | ["metrics"]
            | ["api", "rooms"]
            | ["api", "rooms", _, "messages"]
            | ["api", "emotes"]
            | ["emotes", _],
        )
        | (_, ["api", "rooms", _, "moderation" | "chatters"])
        | (_, ["api", "whispers"] | ["api", "whispers", _] | ["api", "whispers", _, "read"])
        | (_, ["api", "account", "username" | "color"])
        | (_, ["api", "register" | "login" | "logout"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Reads a whole request body: at most [`REQUEST_BODY_BYTES_MAX`], all of it by `deadline`. Past the deadline the
/// answer is `408` and the connection closes (the rest of the body is never read).
async fn read_body(body: Incoming, deadline: Instant) -> Result<Bytes, Response<Body>> {
    let collect = async {
        match Limited::new(body, REQUEST_BODY_BYTES_MAX).collect().await {
            Ok(body) => Ok(body.to_bytes()),
            Err(_) => Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large or unreadable",
            )),
        }
    };
    let timeout = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        let mut response = error(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Err(response)
    };
    futures_lite::future::or(collect, timeout).await
}

/// `200 {"status":"ok"}` while storage takes writes; `503 {"status":"unavailable"|"failed","error":...}` while it
/// does not. "unavailable" clears by itself (the store keeps trying to recover); "failed" needs a restart.
fn healthz(shard: &Shard) -> Response<Body> {
    match shard.shared.storage.health() {
        Health::Healthy => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
        Health::Unavailable(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({
                "status": "unavailable",
                "component": "storage",
                "error": format!("storage is unavailable: {reason}"),
            }),
        ),
        Health::Failed(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({
                "status": "failed",
                "component": "storage",
                "error": format!("storage has failed and needs a restart: {reason}"),
            }),
        ),
    }
}

fn metrics(shard: &Shard) -> Response<Body> {
    let shared = &shard.shared;
    let mut out = String::with_capacity(16 * 1024);
    crate::metrics::render(&shared.metrics, &mut out);
    out.push_str("# HELP twitchy_room_viewers Viewers in a room over all shards\n# TYPE twitchy_room_viewers gauge\n");
    for (index, room) in shared.rooms.iter().enumerate() {
        out.push_str(&format!(
            "twitchy_room_viewers{{room=\"{}\"}} {}\n",
            room.name,
            shared.viewers.total(index)
        ));
    }
    out.push_str(&shared.storage.metrics_text());
    out.push_str(&shared.styler_factory.metrics_text());
    out.push_str(&shared.auth.metrics_text());
    if let Some(tls) = &shared.tls {
        let (ok, failed) = tls.certs.reload_counts();
        out.push_str(&format!(
            "# HELP twitchy_tls_reloads_total Certificate reloads (SIGHUP) by result\n\
             # TYPE twitchy_tls_reloads_total counter\n\
             twitchy_tls_reloads_total{{result=\"ok\"}} {ok}\n\
             twitchy_tls_reloads_total{{result=\"failed\"}} {failed}\n"
        ));
    }
    text("text/plain; version=0.0.4", out)
}

fn rooms(shard: &Shard) -> Response<Body> {
    #[derive(Serialize)]
    struct Room<'a> {
        name: &'a str,
        id: u64,
        style: &'a str,
        description: &'a str,
        viewers: u64,
    }
    let shared = &shard.shared;
    let rooms: Vec<Room<'_>> = shared
        .rooms
        .iter()
        .enumerate()
        .map(|(index, room)| Room {
            name: &room.name,
            id: shared.room_ids[index],
            style: &room.style,
            description: twitchy_inference::style_description(&room.style).unwrap_or(""),
            viewers: shared.viewers.total(index),
        })
        .collect();
    json(StatusCode::OK, &rooms)
}

/// A stored message as the history API returns it.
#[derive(Serialize)]
struct HistoryMessage<'a> {
    id: String,
    room: &'a str,
    user_id: u64,
    login: &'a str,
    display_name: &'a str,
    color: &'a str,
    badges: &'a str,
    /// The styled text; for a `/me` message the text inside the ACTION, with `action` true.
    text: &'a str,
    action: bool,
    /// Twitch's `emotes` tag value for `text`.
    emotes: String,
    original: &'a str,
    styled_by: &'a str,
    sent_unix_ms: u64,
}

impl<'a> From<&'a MessageRecord> for HistoryMessage<'a> {
    fn from(r: &'a MessageRecord) -> Self {
        let inner = crate::core::action_inner(&r.text);
        let text = inner.unwrap_or(&r.text);
        HistoryMessage {
            id: r.id.to_string(),
            room: &r.room,
            user_id: r.user_id,
            login: &r.login,
            display_name: &r.display_name,
            color: &r.color,
            badges: &r.badges,
            text,
            action: inner.is_some(),
            emotes: crate::protocol::emotes::emotes_tag(text),
            original: &r.original,
            styled_by: &r.styled_by,
            sent_unix_ms: r.id.unix_ms(),
        }
    }
}

async fn history(shard: &Shard, room: &str, query: Option<&str>) -> Response<Body> {
    let Some(index) = shard.shared.room(room) else {
        return error(StatusCode::NOT_FOUND, "no such room");
    };
    let pairs = match query_pairs(query, &["before", "after", "limit"]) {
        Ok(pairs) => pairs,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let mut before = None;
    let mut after = None;
    let mut limit = HISTORY_PAGE_DEFAULT;
    for (key, value) in pairs {
        if key == "limit" {
            match limit_param(value, HISTORY_PAGE_MAX) {
                Ok(n) => limit = n,
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            }
            continue;
        }
        let Ok(id) = value.parse::<MessageId>() else {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("{key} must be a message id"),
            );
        };
        if key == "before" {
            before = Some(id);
        } else {
            after = Some(id);
        }
    }
    let name = &shard.shared.rooms[index].name;
    let page = match (before, after) {
        (Some(_), Some(_)) => {
            return error(StatusCode::BAD_REQUEST, "use before or after, not both");
        }
        // Catching up: oldest first, from just after the last message the client saw.
        (None, Some(after)) => {
            shard
                .shared
                .storage
                .messages_after(name, after, limit)
                .await
        }
        (before, None) => {
            shard
                .shared
                .storage
                .messages_before(name, before, limit)
                .await
        }
    };
    match page {
        Ok(records) => {
            let mut messages = Vec::with_capacity(records.len());
            for record in &records {
                let mut value = serde_json::to_value(HistoryMessage::from(record))
                    .unwrap_or(serde_json::Value::Null);
                // What is kept beside a message: its reply link and reaction counts (absent when there are none).
                for (field, key) in [
                    ("reply", keys::reply(name, record.id)),
                    ("reactions", keys::reactions(name, record.id)),
                ] {
                    let stored: Result<Option<serde_json::Value>, _> =
                        crate::shard::json_setting(&shard.shared.storage, &key).await;
                    if let Ok(Some(stored)) = stored {
                        value[field] = stored;
                    }
                }
                messages.push(value);
            }
            json(StatusCode::OK, &serde_json::json!({ "messages": messages }))
        }
        Err(err) => {
            log::warn!("history read failed: {err}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "history is unavailable, try again",
            )
        }
    }
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

async fn account(ctx: &RequestCtx<'_>, req: Request<Incoming>, register: bool) -> Response<Body> {
    let shard = &ctx.shard;
    let body = match read_body(req.into_body(), ctx.body_deadline).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let Ok(credentials) = serde_json::from_slice::<Credentials>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"username\": ..., \"password\": ...}",
        );
    };
    let (auth, storage) = (&shard.shared.auth, &shard.shared.storage);
    let result = if register {
        auth.register(
            storage,
            ctx.peer_ip,
            &credentials.username,
            &credentials.password,
        )
        .await
    } else {
        auth.login(
            storage,
            ctx.peer_ip,
            &credentials.username,
            &credentials.password,
        )
        .await
    };
    match result {
        Ok(token) => {
            let status = if register {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let login = credentials.username.to_ascii_lowercase();
            let mut body = serde_json::json!({ "token": token, "login": login });
            if register {
                // The case the user typed is their display name.
                body["display_name"] = credentials.username.clone().into();
            }
            json(status, &body)
        }
        Err(err) => {
            let mut response = error(
                StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST),
                &err.to_string(),
            );
            if let crate::auth::AuthError::Throttled(retry) = err {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry.seconds()));
            }
            response
        }
    }
}

#[derive(Deserialize)]
struct LogoutBody {
    token: String,
}

/// The token to revoke: `Authorization: Bearer <token>`, or a JSON body `{"token": ...}`.
async fn presented_token(
    req: Request<Incoming>,
    body_deadline: Instant,
) -> Result<String, Response<Body>> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "expected Authorization: Bearer <token>",
                )
            });
    }
    let body = read_body(req.into_body(), body_deadline).await?;
    serde_json::from_slice::<LogoutBody>(&body)
        .map(|b| b.token)
        .map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "expected Authorization: Bearer <token> or JSON {\"token\": ...}",
            )
        })
}

/// `POST /api/logout`: revokes the presented token. `200 {"revoked":true}`; `401` if it was not a live token;
/// `503` if storage cannot answer (the token is then still valid).
async fn logout(ctx: &RequestCtx<'_>, req: Request<Incoming>) -> Response<Body> {
    let shard = &ctx.shard;
    let token = match presented_token(req, ctx.body_deadline).await {
        Ok(token) => token,
        Err(response) => return response,
    };
    match crate::auth::logout(&shard.shared.storage, &token).await {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "revoked": true })),
        Err(err) => error(
            StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST),
            &err.to_string(),
        ),
    }
}

/// The identity behind `Authorization: Bearer <token>`, or the error response (401, or 503 when storage cannot
/// tell).
async fn bearer<B>(shard: &Shard, req: &Request<B>) -> Result<Identity, Response<Body>> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "expected Authorization: Bearer <token>",
            )
        })?;
    crate::auth::bearer_identity(&shard.shared.storage, token)
        .await
        .map_err(|err| auth_error(&err))
}

fn auth_error(err: &crate::auth::AuthError) -> Response<Body> {
    error(
        StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST),
        &err.to_string(),
    )
}

/// A command's answer as JSON: `200 {"msg_id","message"}`, or `{"error","msg_id"}` with 403 (no permission),
/// 404 (no such user or message), 400 (cannot apply) or 503 (not saved, try again).
fn command_response(reply: &CommandReply) -> Response<Body> {
    let status = match reply.kind {
        ReplyKind::Done => StatusCode::OK,
        ReplyKind::Forbidden => StatusCode::FORBIDDEN,
        ReplyKind::NotFound => StatusCode::NOT_FOUND,
        ReplyKind::Invalid => StatusCode::BAD_REQUEST,
        ReplyKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = if reply.kind == ReplyKind::Done {
        serde_json::json!({ "msg_id": reply.msg_id, "message": reply.text })
    } else {
        serde_json::json!({ "error": reply.text, "msg_id": reply.msg_id })
    };
    json(status, &body)
}

async fn run_api_command(
    shard: &Rc<Shard>,
    room: usize,
    identity: &Identity,
    command: ChatCommand,
) -> Result<CommandReply, Response<Body>> {
    let actor = Actor {
        user_id: identity.user_id,
        login: identity.login.clone(),
        display_name: identity.display_name.clone(),
        color: identity.color.clone(),
    };
    shard
        .api_command(room, actor, command)
        .await
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "shutting down, try again"))
}

/// The token's user and the request's JSON body, or the error response (401, 408, 413, or 400 naming `expected`).
async fn bearer_and_body<T: serde::de::DeserializeOwned>(
    ctx: &RequestCtx<'_>,
    req: Request<Incoming>,
    expected: &str,
) -> Result<(Identity, T), Response<Body>> {
    let identity = bearer(&ctx.shard, &req).await?;
    let body = read_body(req.into_body(), ctx.body_deadline).await?;
    let value = serde_json::from_slice::<T>(&body).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("expected JSON {expected}"),
        )
    })?;
    Ok((identity, value))
}

#[derive(Deserialize)]
struct CommandBody {
    command: String,
}

/// `POST /api/rooms/{room}/moderation {"command": "/timeout bob 600"}`: the chat command, run as the token's user.
async fn moderation_command(
    ctx: &RequestCtx<'_>,
    room: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let shard = &ctx.shard;
    let Some(index) = shard.shared.room(room) else {
        return error(StatusCode::NOT_FOUND, "no such room");
    };
    let expected = "{\"command\": \"/timeout <user> [seconds] [reason]\"}";
    let (identity, CommandBody { command }) = match bearer_and_body(ctx, req, expected).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let command = command.trim();
    let text = if command.starts_with('/') || command.starts_with('.') {
        command.to_owned()
    } else {
        format!("/{command}")
    };
    let command = match commands::parse(&text) {
        Some(Ok(command)) => command,
        Some(Err(usage)) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": usage.text, "msg_id": usage.msg_id }),
            );
        }
        None => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": "unrecognized command", "msg_id": "unrecognized_cmd" }),
            );
        }
    };
    match run_api_command(shard, index, &identity, command).await {
        Ok(reply) => command_response(&reply),
        Err(response) => response,
    }
}

/// `GET /api/rooms/{room}/moderation`: modes, roles, bans, AutoMod phrases and held messages, for moderators.
async fn moderation_state(
    ctx: &RequestCtx<'_>,
    room: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let shard = &ctx.shard;
    let Some(index) = shard.shared.room(room) else {
        return error(StatusCode::NOT_FOUND, "no such room");
    };
    let identity = match bearer(shard, &req).await {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    match run_api_command(shard, index, &identity, ChatCommand::ModerationState).await {
        Ok(reply) if reply.kind == ReplyKind::Done => {
            let state: serde_json::Value =
                serde_json::from_str(&reply.text).unwrap_or(serde_json::Value::Null);
            json(StatusCode::OK, &state)
        }
        Ok(reply) => command_response(&reply),
        Err(response) => response,
    }
}

/// Query parameters as key/value pairs; `Err` names the first unknown one.
fn query_pairs<'q>(
    query: Option<&'q str>,
    known: &[&str],
) -> Result<Vec<(&'q str, &'q str)>, String> {
    let mut pairs = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !known.contains(&key) {
            return Err(format!("unknown query parameter {key:?}"));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn limit_param(value: &str, max: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("limit must be a number from 1 to {max}")),
    }
}

/// Logins per page of the chatters list.
const CHATTERS_PAGE_MAX: usize = 1_000;

/// `GET /api/rooms/{room}/chatters?after=<login>&limit=<n>`: the room's logged-in users in login order, a page at a
/// time (`next` is the `after` of the next page), and the counts of logged-in users and anonymous connections,
/// over every shard (the room's home keeps them).
async fn chatters(shard: &Rc<Shard>, room: &str, query: Option<&str>) -> Response<Body> {
    let Some(index) = shard.shared.room(room) else {
        return error(StatusCode::NOT_FOUND, "no such room");
    };
    let pairs = match query_pairs(query, &["after", "limit"]) {
        Ok(pairs) => pairs,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let mut after = String::new();
    let mut limit = 100;
    for (key, value) in pairs {
        match key {
            "after" => after = value.to_ascii_lowercase(),
            _ => match limit_param(value, CHATTERS_PAGE_MAX) {
                Ok(n) => limit = n,
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            },
        }
    }
    let anyone = Identity {
        login: String::new(),
        display_name: String::new(),
        user_id: 0,
        color: String::new(),
        badges: String::new(),
        is_mod: false,
    };
    match run_api_command(
        shard,
        index,
        &anyone,
        ChatCommand::Chatters { after, limit },
    )
    .await
    {
        Ok(reply) if reply.kind == ReplyKind::Done => {
            let page: serde_json::Value =
                serde_json::from_str(&reply.text).unwrap_or(serde_json::Value::Null);
            json(StatusCode::OK, &page)
        }
        Ok(reply) => command_response(&reply),
        Err(response) => response,
    }
}

/// Whispers read per conversation for the API (the newest are what a client shows).
const WHISPER_THREAD_READ_MAX: usize = 2_000;
/// Conversations listed per user.
const WHISPER_CONVERSATIONS_MAX: usize = 500;

fn storage_unavailable(err: &twitchy_storage::StorageError) -> Response<Body> {
    log::warn!("whisper read failed: {err}");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "whispers are unavailable, try again",
    )
}

/// A user's whispers with one peer, oldest first (at most [`WHISPER_THREAD_READ_MAX`], the newest).
async fn whisper_thread_of(
    shard: &Shard,
    me: u64,
    peer: u64,
) -> Result<Vec<crate::core::Whisper>, Response<Body>> {
    let prefix =
        crate::core::moderation::keys::whisper_thread_prefix(&crate::core::thread_id(me, peer));
    let entries = shard
        .shared
        .storage
        .settings(&prefix, WHISPER_THREAD_READ_MAX)
        .await
        .map_err(|e| storage_unavailable(&e))?;
    Ok(entries
        .into_iter()
        .filter_map(|(_, value)| serde_json::from_slice::<crate::core::Whisper>(&value).ok())
        .collect())
}

/// The id up to which `me` has read the conversation with `peer` (empty: nothing read).
async fn read_marker(shard: &Shard, me: u64, peer: u64) -> Result<String, Response<Body>> {
    let key = crate::core::moderation::keys::read_marker(me, peer);
    let marker = shard
        .shared
        .storage
        .setting(&key)
        .await
        .map_err(|e| storage_unavailable(&e))?;
    Ok(marker
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_default())
}

/// `GET /api/whispers`: the token's user's conversations, `[{"login","user_id","unread","last_id"}]`, newest
/// first; `unread` counts the peer's whispers after the user's read marker.
async fn whisper_conversations<B>(shard: &Rc<Shard>, req: &Request<B>) -> Response<Body> {
    let me = match bearer(shard, req).await {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    let prefix = crate::core::moderation::keys::conversations_prefix(me.user_id);
    let peers = match shard
        .shared
        .storage
        .settings(&prefix, WHISPER_CONVERSATIONS_MAX)
        .await
    {
        Ok(entries) => entries,
        Err(err) => return storage_unavailable(&err),
    };
    let mut conversations = Vec::new();
    for (key, value) in peers {
        let Some(peer) = key.rsplit('/').next().and_then(|id| id.parse::<u64>().ok()) else {
            continue;
        };
        let login = serde_json::from_slice::<serde_json::Value>(&value)
            .ok()
            .and_then(|v| v["login"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let thread = match whisper_thread_of(shard, me.user_id, peer).await {
            Ok(thread) => thread,
            Err(response) => return response,
        };
        let read = match read_marker(shard, me.user_id, peer).await {
            Ok(read) => read,
            Err(response) => return response,
        };
        let unread = thread
            .iter()
            .filter(|w| w.from_id == peer && w.id > read)
            .count();
        let last_id = thread.last().map(|w| w.id.clone()).unwrap_or_default();
        conversations.push(serde_json::json!({
            "login": login, "user_id": peer, "unread": unread, "last_id": last_id,
        }));
    }
    conversations.sort_by(|a, b| b["last_id"].as_str().cmp(&a["last_id"].as_str()));
    json(
        StatusCode::OK,
        &serde_json::json!({ "conversations": conversations }),
    )
}

/// The user id of a login, or the error response.
async fn peer_id(shard: &Shard, login: &str) -> Result<u64, Response<Body>> {
    match shard
        .shared
        .storage
        .account(&login.to_ascii_lowercase())
        .await
    {
        Ok(Some(account)) => Ok(account.user_id),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, "no such user")),
        Err(err) => Err(storage_unavailable(&err)),
    }
}

/// Whispers per page of a conversation.
const WHISPER_PAGE_MAX: usize = 100;

/// `GET /api/whispers/{login}?before=<id>&limit=<n>`: the conversation with `login`, newest first, paged with
/// `before`; plus the user's read marker.
async fn whisper_thread<B>(
    shard: &Rc<Shard>,
    req: &Request<B>,
    peer: &str,
    query: Option<&str>,
) -> Response<Body> {
    let me = match bearer(shard, req).await {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    let pairs = match query_pairs(query, &["before", "limit"]) {
        Ok(pairs) => pairs,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let mut before = None;
    let mut limit = 50;
    for (key, value) in pairs {
        match key {
            "before" => before = Some(value.to_owned()),
            _ => match limit_param(value, WHISPER_PAGE_MAX) {
                Ok(n) => limit = n,
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            },
        }
    }
    let peer = match peer_id(shard, peer).await {
        Ok(id) => id,
        Err(response) => return response,
    };
    let thread = match whisper_thread_of(shard, me.user_id, peer).await {
        Ok(thread) => thread,
        Err(response) => return response,
    };
    let read = match read_marker(shard, me.user_id, peer).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let page: Vec<serde_json::Value> = thread
        .iter()
        .rev()
        .filter(|w| before.as_ref().is_none_or(|b| w.id < *b))
        .take(limit)
        .map(|w| {
            let mut value = serde_json::to_value(w).unwrap_or_default();
            value["emotes"] = crate::protocol::emotes::emotes_tag(&w.text).into();
            value
        })
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({ "whispers": page, "read_up_to": read }),
    )
}

/// `POST /api/whispers/{login}/read?up_to=<id>`: marks the conversation read up to that whisper (to its newest
/// when `up_to` is left out).
async fn whisper_read(shard: &Rc<Shard>, req: &Request<Incoming>, peer: &str) -> Response<Body> {
    let me = match bearer(shard, req).await {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    let peer = match peer_id(shard, peer).await {
        Ok(id) => id,
        Err(response) => return response,
    };
    let pairs = match query_pairs(req.uri().query(), &["up_to"]) {
        Ok(pairs) => pairs,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let up_to = match pairs.first() {
        // A whisper id: the marker is compared with ids, so anything else would read as "all" or "none".
        Some((_, id)) => match id.parse::<MessageId>() {
            Ok(id) => id.to_string(),
            Err(_) => return error(StatusCode::BAD_REQUEST, "up_to must be a whisper id"),
        },
        None => match whisper_thread_of(shard, me.user_id, peer).await {
            Ok(thread) => thread.last().map(|w| w.id.clone()).unwrap_or_default(),
            Err(response) => return response,
        },
    };
    let key = crate::core::moderation::keys::read_marker(me.user_id, peer);
    match shard
        .shared
        .storage
        .put_setting(&key, up_to.clone().into_bytes())
        .await
    {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "read_up_to": up_to })),
        Err(err) => storage_unavailable(&err),
    }
}

#[derive(Deserialize)]
struct UsernameBody {
    username: String,
}

/// `POST /api/account/username {"username": "NewName"}`: renames the token's user; the id and tokens stay.
async fn account_username(ctx: &RequestCtx<'_>, req: Request<Incoming>) -> Response<Body> {
    let shard = &ctx.shard;
    let (identity, UsernameBody { username }) =
        match bearer_and_body(ctx, req, "{\"username\": ...}").await {
            Ok(found) => found,
            Err(response) => return response,
        };
    match crate::auth::rename(&shard.shared.storage, &identity, &username).await {
        Ok(login) => json(
            StatusCode::OK,
            &serde_json::json!({ "login": login, "display_name": username, "user_id": identity.user_id }),
        ),
        Err(err) => auth_error(&err),
    }
}

#[derive(Deserialize)]
struct ColorBody {
    color: String,
}

/// `POST /api/account/color {"color": "#1E90FF" | "DodgerBlue"}`: the token's user's chat colour, as `/color`.
async fn account_color(ctx: &RequestCtx<'_>, req: Request<Incoming>) -> Response<Body> {
    let shard = &ctx.shard;
    let expected = "{\"color\": \"#RRGGBB\" or a Twitch colour name}";
    let (identity, body) = match bearer_and_body::<ColorBody>(ctx, req, expected).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(color) = commands::parse_color(&body.color) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("expected JSON {expected}"),
        );
    };
    // The same path as `/color` in chat: this shard's connections of the user take the new colour at once.
    let Some(room) = (0..shard.shared.rooms.len()).next() else {
        return error(StatusCode::NOT_FOUND, "no rooms");
    };
    match run_api_command(
        shard,
        room,
        &identity,
        ChatCommand::Color {
            color: color.clone(),
        },
    )
    .await
    {
        Ok(reply) if reply.kind == ReplyKind::Done => {
            json(StatusCode::OK, &serde_json::json!({ "color": color }))
        }
        Ok(reply) => command_response(&reply),
        Err(response) => response,
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn websocket_upgrade(req: Request<Incoming>, upgraded: &Cell<bool>) -> Response<Body> {
    let headers = req.headers();
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "unsupported WebSocket version (13 required)",
        );
    }
    let offers_irc = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("irc"));
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    upgraded.set(true);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if offers_irc {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("irc"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_connection_phase() {
        let timeouts = HttpTimeouts {
            header_ms: 10,
            body_ms: 20,
            keep_alive_ms: 30,
        };
        // A new connection owes its head from the start; between requests the keep-alive timeout runs, and the
        // first byte of the next request starts its header deadline.
        assert_eq!(
            timeouts.deadline(HttpPhase::Head { since_ms: 0 }),
            Some((10, Expiry::Header))
        );
        let idle = HttpPhase::Idle { since_ms: 100 };
        assert_eq!(timeouts.deadline(idle), Some((130, Expiry::KeepAlive)));
        let head = HttpTimeouts::on_bytes(idle, 105);
        assert_eq!(head, HttpPhase::Head { since_ms: 105 });
        assert_eq!(timeouts.deadline(head), Some((115, Expiry::Header)));
        // More bytes of the same head do not move its deadline.
        assert_eq!(HttpTimeouts::on_bytes(head, 109), head);
        // While a request is handled, only its body deadline (kept by the handler) applies.
        assert_eq!(timeouts.deadline(HttpPhase::Request), None);
        assert_eq!(
            HttpTimeouts::on_bytes(HttpPhase::Request, 200),
            HttpPhase::Request
        );
    }

    #[test]
    fn raw_errors_are_complete_json_responses() {
        let raw = raw_error(StatusCode::TOO_MANY_REQUESTS, "too many", Some(1));
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nRetry-After: 1"), "{head}");
        assert!(head.contains("\r\nConnection: close"), "{head}");
        assert!(
            head.ends_with(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert_eq!(body, r#"{"error":"too many"}"#);
    }
}
