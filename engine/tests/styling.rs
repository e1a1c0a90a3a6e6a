//! The engine styles messages through the LLM when endpoints are configured, and falls back to the local rewriter
//! when they fail. An in-process OpenAI-compatible server stands in for vLLM; the real model (SmolLM2-135M-Instruct
//! on llama.cpp's server, started by `inference-client/model-server/serve.sh`) styles end to end, or the server at
//! `VLLM_URL` when it is set.

mod common;
#[path = "../../inference-client/tests/model_server/mod.rs"]
#[allow(dead_code)]
mod model_server;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::TestServer;
use common::client::{Irc, http, register, tag, trailing};

/// A minimal OpenAI-compatible completions server: every prompt of a request gets `reply`.
struct FakeLlm {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeLlm {
    fn start(reply: &'static str) -> FakeLlm {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let count = count.clone();
                std::thread::spawn(move || serve(stream, reply, &count));
            }
        });
        FakeLlm {
            addr,
            requests,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(stream: TcpStream, reply: &str, count: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let response = if request_line.starts_with("POST /v1/completions") {
            count.fetch_add(1, Ordering::SeqCst);
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let prompts = request["prompt"].as_array().map(|p| p.len()).unwrap_or(1);
            let choices: Vec<serde_json::Value> = (0..prompts)
                .map(
                    |i| serde_json::json!({ "index": i, "text": reply, "finish_reason": "length" }),
                )
                .collect();
            serde_json::json!({ "id": "cmpl-test", "object": "text_completion", "model": "tiny", "choices": choices })
                .to_string()
        } else {
            "{}".to_string()
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            response.len()
        );
        if writer
            .write_all(head.as_bytes())
            .and_then(|_| writer.write_all(response.as_bytes()))
            .is_err()
        {
            return;
        }
    }
}

fn llm_total(server: &TestServer) -> u64 {
    let text = http(server.http, "GET", "/metrics", None).body;
    text.lines()
        .filter(|l| l.starts_with("twitchy_styled_llm_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn send_and_receive(server: &TestServer, user: &str, texts: &[&str]) -> Vec<String> {
    let token = register(server.http, user, "correct horse");
    let mut viewer = Irc::ws(server.http);
    viewer.login_anonymous();
    viewer.join("tavern");
    let mut sender = Irc::tcp(server.irc);
    sender.login(user, &token);
    sender.join("tavern");
    let mut styled = Vec::new();
    for text in texts {
        sender.send(&format!("PRIVMSG #tavern :{text}"));
        let line = viewer.expect("styled PRIVMSG", |l| l.contains(" PRIVMSG #tavern "));
        assert_eq!(tag(&line, "twitchy/original").as_deref(), Some(*text));
        styled.push(trailing(&line).to_string());
        sender.expect("ack", |l| l.contains("USERSTATE") && tag(l, "id").is_some());
    }
    styled
}

#[test]
fn configured_llm_styles_messages() {
    // The reply keeps the messages' words and adds the style's, so the quality gate lets it through.
    let llm = FakeLlm::start(" hello there and how are you, says the LLM, ahoy!\u{7}\u{1b}[31m");
    let server = TestServer::start(&["--shards", "2", "--vllm", &llm.url()]);
    let styled = send_and_receive(&server, "llm_user", &["hello there", "how are you"]);
    for text in &styled {
        // The model's text, sanitised: control characters and escape sequences are gone.
        assert!(
            text.contains("hello there and how are you, says the LLM, ahoy!"),
            "{text}"
        );
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
    assert!(llm.requests.load(Ordering::SeqCst) >= 1);
    assert_eq!(llm_total(&server), 2);
}

#[test]
fn dead_llm_falls_back_to_the_local_rewriter() {
    // Nothing listens here: every request fails and every message is styled locally, within the deadline.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--vllm",
        &url,
        "--style-deadline-ms",
        "100",
    ]);
    let styled = send_and_receive(&server, "local_user", &["still styled", "even now"]);
    assert!(
        styled[0].contains("still styled") && styled[0] != "still styled",
        "{}",
        styled[0]
    );
    assert_eq!(llm_total(&server), 0);
}

#[test]
fn real_model_styles_through_the_engine() {
    // The real model by default; a vLLM server instead when `VLLM_URL` names one.
    let (_model, url, model) = match std::env::var("VLLM_URL") {
        Ok(url) => (
            None,
            url,
            std::env::var("VLLM_MODEL").unwrap_or_else(|_| "tiny".into()),
        ),
        Err(_) => {
            let server = model_server::ModelServer::start();
            let url = server.url.clone();
            (Some(server), url, model_server::MODEL.to_owned())
        }
    };
    // A CPU-sized deadline: the first message of a style computes its prompt prefix (seconds on two cores).
    let deadline_ms = 10_000;
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--vllm",
        &url,
        "--vllm-model",
        &model,
        "--style-deadline-ms",
        &deadline_ms.to_string(),
    ]);
    let texts = [
        "hello from the engine",
        "that last play was amazing",
        "my internet keeps lagging",
    ];
    let started = std::time::Instant::now();
    let styled = send_and_receive(&server, "model_user", &texts);
    for (original, text) in texts.iter().zip(&styled) {
        println!("{original:?} -> {text:?}");
        // Whatever styled it, the viewer gets clean text: no control characters, no template tokens.
        assert!(
            !text.is_empty()
                && text.chars().count() <= 500
                && !text.chars().any(char::is_control)
                && !text.contains("<|"),
            "{text:?}"
        );
        assert_ne!(text, original);
    }
    assert!(
        started.elapsed() < Duration::from_millis(texts.len() as u64 * (deadline_ms + 1_000)),
        "{:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        llm_total(&server) >= 1,
        "at least one message styled by the model"
    );
}
