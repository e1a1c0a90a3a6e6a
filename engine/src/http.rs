//! HTTP on the main port, through hyper: the JSON API, metrics, the web client, and the WebSocket upgrade.
//!
//! Every error is a 4xx/5xx with a JSON body `{"error": "..."}`. `/healthz` answers 503 with a JSON reason while
//! storage is failing; `POST /api/logout` revokes the presented token. Request bodies are capped at
//! [`REQUEST_BODY_BYTES_MAX`]; a slow client has [`HEADER_READ_TIMEOUT_SECS`] to send its headers.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::net::TcpStream;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use twitchy_inference::rt::{GlommioIo, GlommioTimer};
use twitchy_storage::{Health, MessageId, MessageRecord};

use crate::conn::{self, Transport};
use crate::metrics::ShardMetrics;
use crate::shard::Shard;

pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024;
pub const HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// History page size: default and maximum.
pub const HISTORY_PAGE_DEFAULT: usize = 50;
pub const HISTORY_PAGE_MAX: usize = 100;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

type Body = Full<Bytes>;

/// Serves HTTP/1.1 on one accepted connection (keep-alive), and hands the socket to the WebSocket driver after an
/// upgrade. hyper's own upgrade machinery needs `Send` IO, which shard-local sockets are not, so the connection is
/// run "without shutdown" and the socket (with any bytes hyper read past the request) is taken back from it.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer_ip = stream
        .peer_addr()
        .map(|addr| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let upgraded = Rc::new(Cell::new(false));
    let service_shard = shard.clone();
    let service_upgraded = upgraded.clone();
    let service = hyper::service::service_fn(move |req| {
        let shard = service_shard.clone();
        let upgraded = service_upgraded.clone();
        let response: Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>>>> =
            Box::pin(async move { Ok(route(shard, req, peer_ip, &upgraded).await) });
        response
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(GlommioTimer)
        .header_read_timeout(Duration::from_secs(HEADER_READ_TIMEOUT_SECS))
        .max_buf_size(64 * 1024);
    match builder
        .serve_connection(GlommioIo::new(stream), service)
        .without_shutdown()
        .await
    {
        Ok(parts) if upgraded.get() => {
            // A fresh task for the WebSocket: this one, sized for hyper's connection state, ends here, so a
            // long-lived WebSocket does not keep that memory.
            glommio::spawn_local(conn::serve(
                shard,
                parts.io.into_inner(),
                Transport::WebSocket,
                parts.read_buf,
            ))
            .detach();
        }
        Ok(_) => {}
        Err(err) => log::debug!("http connection ended: {err}"),
    }
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

async fn route(
    shard: Rc<Shard>,
    req: Request<Incoming>,
    peer_ip: IpAddr,
    upgraded: &Cell<bool>,
) -> Response<Body> {
    ShardMetrics::inc(&shard.metrics().http_requests_total);
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if is_websocket_upgrade(&req) {
        return if path == "/" {
            websocket_upgrade(req, upgraded)
        } else {
            error(StatusCode::NOT_FOUND, "WebSocket IRC is served at /")
        };
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => text("text/html; charset=utf-8", INDEX_HTML),
        (&Method::GET, ["assets", "app.js"]) => text("text/javascript; charset=utf-8", APP_JS),
        (&Method::GET, ["assets", "style.css"]) => text("text/css; charset=utf-8", STYLE_CSS),
        (&Method::GET, ["healthz"]) => healthz(&shard),
        (&Method::GET, ["metrics"]) => metrics(&shard),
        (&Method::GET, ["api", "rooms"]) => rooms(&shard),
        (&Method::GET, ["api", "rooms", room, "messages"]) => {
            history(&shard, room, req.uri().query()).await
        }
        (&Method::POST, ["api", "register"]) => account(&shard, req, peer_ip, true).await,
        (&Method::POST, ["api", "login"]) => account(&shard, req, peer_ip, false).await,
        (&Method::POST, ["api", "logout"]) => logout(&shard, req).await,
        (
            _,
            [""] | ["healthz"] | ["metrics"] | ["api", "rooms"] | ["api", "rooms", _, "messages"],
        )
        | (_, ["api", "register" | "login" | "logout"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
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
    text: &'a str,
    original: &'a str,
    styled_by: &'a str,
    sent_unix_ms: u64,
}

impl<'a> From<&'a MessageRecord> for HistoryMessage<'a> {
    fn from(r: &'a MessageRecord) -> Self {
        HistoryMessage {
            id: r.id.to_string(),
            room: &r.room,
            user_id: r.user_id,
            login: &r.login,
            display_name: &r.display_name,
            color: &r.color,
            badges: &r.badges,
            text: &r.text,
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
    let mut before = None;
    let mut limit = HISTORY_PAGE_DEFAULT;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "before" => match value.parse::<MessageId>() {
                Ok(id) => before = Some(id),
                Err(_) => return error(StatusCode::BAD_REQUEST, "before must be a message id"),
            },
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=HISTORY_PAGE_MAX).contains(&n) => limit = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "limit must be a number from 1 to 100",
                    );
                }
            },
            _ => return error(StatusCode::BAD_REQUEST, "unknown query parameter"),
        }
    }
    let name = &shard.shared.rooms[index].name;
    match shard
        .shared
        .storage
        .messages_before(name, before, limit)
        .await
    {
        Ok(records) => {
            let messages: Vec<HistoryMessage<'_>> =
                records.iter().map(HistoryMessage::from).collect();
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

async fn account(
    shard: &Shard,
    req: Request<Incoming>,
    peer_ip: IpAddr,
    register: bool,
) -> Response<Body> {
    let body = match Limited::new(req.into_body(), REQUEST_BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large or unreadable",
            );
        }
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
            peer_ip,
            &credentials.username,
            &credentials.password,
        )
        .await
    } else {
        auth.login(
            storage,
            peer_ip,
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
            json(
                status,
                &serde_json::json!({ "token": token, "login": login }),
            )
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
async fn presented_token(req: Request<Incoming>) -> Result<String, Response<Body>> {
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
    let body = match Limited::new(req.into_body(), REQUEST_BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large or unreadable",
            ));
        }
    };
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
async fn logout(shard: &Shard, req: Request<Incoming>) -> Response<Body> {
    let token = match presented_token(req).await {
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
