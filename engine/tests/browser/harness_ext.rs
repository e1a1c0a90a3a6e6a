//! Additions to the shared test harness for the browser tests: a front address that survives
//! server restarts, and a small HTTP/1.1 JSON client for the account API.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest time the proxy waits to reach the server for one connection.
const BACKEND_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Connections the proxy tracks at once; beyond this, new ones are refused (closed).
const PROXY_CONNECTIONS_MAX: usize = 256;
/// Largest HTTP response the JSON client reads.
const HTTP_RESPONSE_BYTES_MAX: usize = 1 << 20;

/// A TCP proxy on a fixed 127.0.0.1 port that forwards every connection to the current server.
///
/// `TestServer::restart` gives the server new ports, while a page keeps reconnecting to the host
/// it was loaded from; the page is loaded through this proxy, and the proxy is pointed at the
/// restarted server. While the server is down, connections are accepted and closed at once, which
/// the page sees exactly like a refused connection.
pub struct FrontProxy {
    /// The stable address to load the page from.
    pub addr: SocketAddr,
    backend: Arc<Mutex<SocketAddr>>,
    /// While set, new connections are closed at once, as if the server were down.
    cut: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    accept_thread: Option<JoinHandle<()>>,
}

impl FrontProxy {
    /// Starts a proxy on an ephemeral 127.0.0.1 port forwarding to `backend`.
    pub fn start(backend: SocketAddr) -> FrontProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let backend = Arc::new(Mutex::new(backend));
        let cut = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept_thread = {
            let backend = backend.clone();
            let cut = cut.clone();
            let stopping = stopping.clone();
            let connections = connections.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    if cut.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let target = *backend.lock().unwrap_or_else(|e| e.into_inner());
                    let timeout = Duration::from_millis(BACKEND_CONNECT_TIMEOUT_MS);
                    let Ok(server) = TcpStream::connect_timeout(&target, timeout) else {
                        // The server is down: closing the client is what a refused connection
                        // looks like to the page.
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    {
                        let mut tracked = connections.lock().unwrap_or_else(|e| e.into_inner());
                        tracked.retain(|s: &TcpStream| s.peer_addr().is_ok());
                        if tracked.len() + 2 > PROXY_CONNECTIONS_MAX {
                            let _ = client.shutdown(Shutdown::Both);
                            let _ = server.shutdown(Shutdown::Both);
                            continue;
                        }
                        if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                            tracked.push(c);
                            tracked.push(s);
                        }
                    }
                    pipe(client, server);
                }
            })
        };
        FrontProxy {
            addr,
            backend,
            cut,
            stopping,
            connections,
            accept_thread: Some(accept_thread),
        }
    }

    /// Points new connections at `backend` (existing ones stay where they are), and ends a [`FrontProxy::cut`].
    pub fn set_backend(&self, backend: SocketAddr) {
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = backend;
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Cuts the page off while the server keeps running: closes every connection through the proxy and refuses
    /// new ones until [`FrontProxy::set_backend`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// `http://<proxy>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for FrontProxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        for stream in self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copies bytes both ways; when either side ends, both sockets are shut down so the other side
/// sees the close too.
fn pipe(client: TcpStream, server: TcpStream) {
    let pairs = [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ];
    for (from, to) in pairs {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return;
        };
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
}

/// Sends `POST path` with a JSON body and returns the status code and the JSON body (Null when
/// the body is empty or not JSON).
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    request_json(addr, "POST", path, Some(body))
}

/// Sends `GET path` and returns the status code and the JSON body.
pub fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    request_json(addr, "GET", path, None)
}

fn request_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to server");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = Vec::new();
    stream
        .take(HTTP_RESPONSE_BYTES_MAX as u64)
        .read_to_end(&mut response)
        .expect("read response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of response headers");
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let mut payload = response[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        payload = dechunk(&payload);
    }
    (
        status,
        serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null),
    )
}

fn dechunk(mut input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = input.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&input[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        input = &input[line_end + 2..];
        if size == 0 || input.len() < size {
            break;
        }
        out.extend_from_slice(&input[..size]);
        input = input.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// Registers an account over the HTTP API and returns its token.
pub fn register(addr: SocketAddr, username: &str, password: &str) -> String {
    let (status, body) = post_json(
        addr,
        "/api/register",
        &serde_json::json!({ "username": username, "password": password }),
    );
    assert_eq!(status, 201, "register {username}: {body}");
    body["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {body}"))
        .to_owned()
}

/// Browser tests run one at a time in a test binary: one Chromium at a time is what two cores can carry.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the browser tests' one-at-a-time lock (a failed test does not poison it for the others).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The async runtime the WebDriver and IRC clients run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
