//! A small OpenAI-compatible HTTP/1.1 server on std threads, bound to 127.0.0.1:0, whose behaviour a test steers:
//! answer, fail with a status, answer garbage, answer slowly, hang, or die (close the listener and every
//! connection, as a killed process would).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the server answers completion requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// `styled: <message> <STYLE_TAIL>` per prompt: passes the quality gate in every style.
    Echo = 0,
    /// HTTP 500.
    Fail = 1,
    /// Completions made only of control and replacement characters.
    Garbage = 2,
    /// Completions with control characters around real text.
    Dirty = 3,
    /// Read the request, never answer.
    Hang = 4,
    /// A 200 whose body is not JSON.
    Malformed = 5,
    /// The message itself, unchanged: the quality gate's echo.
    Parrot = 6,
    /// The chat template's own tokens: the quality gate's prompt leak.
    Leak = 7,
    /// The test's own function of the message (see [`FakeServer::set_transform`]).
    Transform = 8,
}

/// Turns the message of a prompt into the completion's text.
pub type Transform = Box<dyn Fn(&str) -> String + Send + Sync>;

/// Emoji that mark each style (brainrot, pirate, shakespeare, corporate) for the quality gate.
pub const STYLE_TAIL: &str = "💀🦜🎭🤝";

/// The message of a prompt: the last user turn of a ChatML prompt after its instruction, or a plain prompt's last
/// `Message:` line.
fn message_of(prompt: &str) -> String {
    if let Some(turn) = prompt
        .rsplit("<|im_start|>user\n")
        .next()
        .filter(|_| prompt.contains("<|im_start|>"))
    {
        let turn = turn.split("<|im_end|>").next().unwrap_or("");
        return turn
            .split_once(": ")
            .map_or(turn, |(_, message)| message)
            .to_owned();
    }
    prompt
        .rsplit("Message: ")
        .next()
        .and_then(|rest| rest.split('\n').next())
        .unwrap_or("")
        .to_owned()
}

#[derive(Default)]
struct Shared {
    mode: AtomicU8,
    delay_ms: AtomicU64,
    /// Extra time per prompt of a request.
    per_prompt_us: AtomicU64,
    /// Whether requests are served one at a time, which gives the server a fixed capacity like a real GPU.
    serial: AtomicBool,
    gate: Mutex<()>,
    /// Whether a connection's second request is met by closing the connection unanswered, like a server whose
    /// keep-alive timeout expired just as the client reused the connection.
    close_reused: AtomicBool,
    health_ok: AtomicBool,
    stopped: AtomicBool,
    requests: AtomicU64,
    prompts: AtomicU64,
    health_requests: AtomicU64,
    batch_sizes: Mutex<Vec<usize>>,
    /// The message of every prompt answered, in order: what the model was shown.
    messages: Mutex<Vec<String>>,
    transform: Mutex<Option<Transform>>,
    connections: Mutex<Vec<TcpStream>>,
}

pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeServer {
    pub fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        shared.health_ok.store(true, Ordering::SeqCst);
        let accept_shared = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || {
            while !accept_shared.stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_nodelay(true);
                        if let Ok(clone) = stream.try_clone() {
                            accept_shared.connections.lock().unwrap().push(clone);
                        }
                        let shared = Arc::clone(&accept_shared);
                        std::thread::spawn(move || serve_connection(stream, shared));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            // The listener drops here: new connections are refused, like a dead process's port.
        });
        FakeServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Answers each prompt with `transform` of its message, from now on.
    pub fn set_transform(&self, transform: impl Fn(&str) -> String + Send + Sync + 'static) {
        *self.shared.transform.lock().unwrap() = Some(Box::new(transform));
        self.set_mode(Mode::Transform);
    }

    /// The messages of the prompts answered so far, in order.
    pub fn messages(&self) -> Vec<String> {
        self.shared.messages.lock().unwrap().clone()
    }

    pub fn set_delay_ms(&self, delay_ms: u64) {
        self.shared.delay_ms.store(delay_ms, Ordering::SeqCst);
    }

    /// Serves one request at a time, each taking `delay_ms` plus `per_prompt_us` per prompt: a server with a
    /// capacity of about `1e6 / per_prompt_us` prompts per second for large batches.
    pub fn set_capacity(&self, per_prompt_us: u64) {
        self.shared
            .per_prompt_us
            .store(per_prompt_us, Ordering::SeqCst);
        self.shared.serial.store(true, Ordering::SeqCst);
    }

    pub fn set_close_reused(&self, close: bool) {
        self.shared.close_reused.store(close, Ordering::SeqCst);
    }

    pub fn set_health_ok(&self, ok: bool) {
        self.shared.health_ok.store(ok, Ordering::SeqCst);
    }

    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn prompts(&self) -> u64 {
        self.shared.prompts.load(Ordering::SeqCst)
    }

    pub fn health_requests(&self) -> u64 {
        self.shared.health_requests.load(Ordering::SeqCst)
    }

    pub fn batch_sizes(&self) -> Vec<usize> {
        self.shared.batch_sizes.lock().unwrap().clone()
    }

    /// Kills the server: the listener closes and every open connection is shut down.
    pub fn kill(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for connection in self.shared.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port with nothing listening on it (bound, then released).
pub fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(clone) => clone,
        Err(_) => return,
    });
    let mut writer = stream;
    let mut served = 0u64;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        served += 1;
        if served > 1 && shared.close_reused.load(Ordering::SeqCst) {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
        let (status, response) = if request_line.starts_with("GET /health") {
            shared.health_requests.fetch_add(1, Ordering::SeqCst);
            if shared.health_ok.load(Ordering::SeqCst) {
                (200, String::new())
            } else {
                (503, String::new())
            }
        } else if request_line.starts_with("POST /v1/completions") {
            match complete(&body, &shared) {
                Some(answer) => answer,
                None => {
                    // Hang: hold the connection open without answering until the server dies.
                    while !shared.stopped.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    return;
                }
            }
        } else {
            (404, "{\"error\":\"not found\"}".to_owned())
        };
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let reason = if status == 200 { "OK" } else { "Error" };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            response.len()
        );
        if writer.write_all(head.as_bytes()).is_err()
            || writer.write_all(response.as_bytes()).is_err()
        {
            return;
        }
    }
}

fn complete(body: &[u8], shared: &Shared) -> Option<(u16, String)> {
    let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let prompts: Vec<String> = match &request["prompt"] {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().unwrap_or("").to_owned())
            .collect(),
        serde_json::Value::String(prompt) => vec![prompt.clone()],
        _ => Vec::new(),
    };
    shared.requests.fetch_add(1, Ordering::SeqCst);
    shared
        .prompts
        .fetch_add(prompts.len() as u64, Ordering::SeqCst);
    shared.batch_sizes.lock().unwrap().push(prompts.len());
    let delay = Duration::from_millis(shared.delay_ms.load(Ordering::SeqCst))
        + Duration::from_micros(shared.per_prompt_us.load(Ordering::SeqCst) * prompts.len() as u64);
    if shared.serial.load(Ordering::SeqCst) {
        let _serving = shared.gate.lock().unwrap();
        std::thread::sleep(delay);
    } else if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    shared
        .messages
        .lock()
        .unwrap()
        .extend(prompts.iter().map(|prompt| message_of(prompt)));
    let mode = shared.mode.load(Ordering::SeqCst);
    if mode == Mode::Hang as u8 {
        return None;
    }
    if mode == Mode::Fail as u8 {
        return Some((500, "{\"error\":\"boom\"}".to_owned()));
    }
    if mode == Mode::Malformed as u8 {
        return Some((200, "<html>not json".to_owned()));
    }
    let transform = shared.transform.lock().unwrap();
    let choices: Vec<serde_json::Value> = prompts
        .iter()
        .enumerate()
        .map(|(index, prompt)| {
            let message = message_of(prompt);
            let text = match mode {
                m if m == Mode::Garbage as u8 => "\u{1}\u{FFFD}\u{7}\u{1b}\u{FFFD}".to_owned(),
                m if m == Mode::Dirty as u8 => {
                    format!("\u{1b}[31m styled:\u{7} {message} {STYLE_TAIL}\u{FFFD}\n")
                }
                m if m == Mode::Parrot as u8 => format!(" {message}"),
                m if m == Mode::Leak as u8 => format!("<|im_start|>assistant\n{message}"),
                m if m == Mode::Transform as u8 => transform
                    .as_ref()
                    .map_or_else(String::new, |transform| transform(&message)),
                _ => format!(" styled: {message} {STYLE_TAIL}"),
            };
            serde_json::json!({"index": index, "text": text, "finish_reason": "stop"})
        })
        .collect();
    Some((
        200,
        serde_json::json!({"id": "cmpl-fake", "object": "text_completion", "choices": choices})
            .to_string(),
    ))
}
