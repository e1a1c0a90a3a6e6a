//! TLS with a self-signed certificate: HTTPS for the API, WSS and IRC over TLS for chat (the `twitch-irc` crate
//! included), explanations for plain-text clients of TLS ports, a handshake deadline, and certificate reload on
//! SIGHUP (a bad pair keeps the old one).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::TestServer;
use common::client::{http, tag};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::client::IntoClientRequest;
use twitch_irc::login::StaticLoginCredentials;
use twitch_irc::message::ServerMessage;
use twitch_irc::transport::tcp::{MakeConnection, TCPTransport, TCPTransportConnectError};

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for `localhost`, written as PEM files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn make_pair(dir: &Path, name: &str) -> Pair {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
    Pair {
        cert,
        key,
        der: generated.cert.der().clone(),
    }
}

fn client_config(trusted: &[&CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add((*cert).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Connects and completes the handshake, trusting only `trusted`.
fn tls_connect(
    addr: SocketAddr,
    trusted: &[&CertificateDer<'static>],
) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn =
        ClientConnection::new(client_config(trusted), name).map_err(std::io::Error::other)?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// The certificate the server presented.
fn presented(stream: &TlsStream) -> CertificateDer<'static> {
    stream.conn.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// One HTTPS request with `Connection: close`: status and body.
fn https(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = tls_connect(addr, &[trusted]).expect("TLS handshake");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // A server's close_notify ends the stream cleanly; a reset after the body is tolerated.
    let _ = stream.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

fn register_tls(addr: SocketAddr, trusted: &CertificateDer<'static>, user: &str) -> String {
    let body = serde_json::json!({ "username": user, "password": "correct horse" }).to_string();
    let (status, body) = https(addr, trusted, "POST", "/api/register", Some(&body));
    assert_eq!(status, 201, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    value["token"].as_str().unwrap().to_owned()
}

/// Reads lines from an IRC-over-TLS connection until one matches.
fn expect_line(
    reader: &mut BufReader<TlsStream>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => panic!("connection ended before {what}; saw {seen:#?}"),
            Ok(_) => {}
        }
        let line = line.trim_end().to_owned();
        if pred(&line) {
            return line;
        }
        seen.push(line);
    }
}

fn tls_server(pair: &Pair, extra: &[&str]) -> TestServer {
    let mut args = vec![
        "--shards",
        "2",
        "--tls-cert",
        pair.cert.to_str().unwrap(),
        "--tls-key",
        pair.key.to_str().unwrap(),
        "--irc-tls",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

fn metric_total(server: &TestServer, name: &str) -> u64 {
    let text = http(server.metrics.unwrap(), "GET", "/metrics", None).body;
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

#[test]
fn https_wss_and_irc_over_tls_carry_chat_between_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let pair = make_pair(dir.path(), "server");
    let server = tls_server(&pair, &[]);
    let irc_tls = server.irc_tls.expect("an IRC-over-TLS listener");

    let (status, body) = https(server.http, &pair.der, "GET", "/healthz", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ok\""), "{body}");
    // The web client's page is served over HTTPS too.
    let (status, body) = https(server.http, &pair.der, "GET", "/", None);
    assert_eq!(status, 200);
    assert!(body.contains("<html") || body.contains("<!doctype") || body.contains("<!DOCTYPE"));

    let token = register_tls(server.http, &pair.der, "tls_sender");

    // A WSS viewer.
    let stream = tls_connect(server.http, &[&pair.der]).unwrap();
    let mut request = format!("wss://localhost:{}/", server.http.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "irc".parse().unwrap());
    let (mut ws, _) = tungstenite::client(request, stream).expect("WSS handshake");
    for line in [
        "CAP REQ :twitch.tv/tags twitch.tv/commands",
        "NICK justinfan777",
        "JOIN #lobby",
    ] {
        ws.send(tungstenite::Message::Text(line.into())).unwrap();
    }
    let mut ws_lines = Vec::new();
    let mut ws_expect = |what: &str, pred: &dyn Fn(&str) -> bool| -> String {
        loop {
            match ws
                .read()
                .unwrap_or_else(|e| panic!("WSS ended before {what}: {e}; saw {ws_lines:#?}"))
            {
                tungstenite::Message::Text(text) => {
                    for line in text.as_str().split("\r\n").filter(|l| !l.is_empty()) {
                        if pred(line) {
                            return line.to_owned();
                        }
                        ws_lines.push(line.to_owned());
                    }
                }
                _ => continue,
            }
        }
    };
    ws_expect("the WSS viewer's JOIN", &|l| l.contains(" 366 "));

    // A sender over IRC-over-TLS.
    let sender = tls_connect(irc_tls, &[&pair.der]).unwrap();
    let mut sender = BufReader::new(sender);
    for line in [
        "CAP REQ :twitch.tv/tags twitch.tv/commands".to_owned(),
        format!("PASS oauth:{token}"),
        "NICK tls_sender".to_owned(),
        "JOIN #lobby".to_owned(),
    ] {
        sender
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
    }
    expect_line(&mut sender, "login over TLS", |l| l.contains(" 001 "));
    expect_line(&mut sender, "JOIN over TLS", |l| l.contains("ROOMSTATE"));
    sender
        .get_mut()
        .write_all(b"@client-nonce=tls-1 PRIVMSG #lobby :sealed and delivered\r\n")
        .unwrap();
    let ack = expect_line(&mut sender, "the ack over TLS", |l| {
        l.contains("USERSTATE") && tag(l, "id").is_some()
    });
    let id = tag(&ack, "id").unwrap();

    let delivered = ws_expect("the message over WSS", &|l| l.contains(" PRIVMSG #lobby "));
    assert_eq!(tag(&delivered, "id").as_deref(), Some(id.as_str()));
    assert_eq!(
        tag(&delivered, "twitchy/original").as_deref(),
        Some("sealed and delivered")
    );
    assert!(metric_total(&server, "twitchy_tls_handshakes_total") >= 4);
}

#[test]
fn plain_text_clients_of_tls_ports_are_told_and_silent_handshakes_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let pair = make_pair(dir.path(), "server");
    let server = tls_server(&pair, &["--tls-handshake-timeout-ms", "500"]);

    // Plain HTTP to the HTTPS port: a readable 400 with a JSON body, not a handshake failure.
    let response = http(server.http, "GET", "/healthz", None);
    assert_eq!(response.status, 400, "{}", response.head);
    assert!(response.json()["error"].as_str().unwrap().contains("TLS"));

    // Plain IRC to the IRC-over-TLS port: a NOTICE saying so.
    let mut plain = TcpStream::connect(server.irc_tls.unwrap()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    plain.write_all(b"NICK justinfan1\r\n").unwrap();
    let mut answer = String::new();
    let _ = plain.read_to_string(&mut answer);
    assert!(
        answer.contains("NOTICE") && answer.contains("TLS"),
        "{answer:?}"
    );

    // A client that connects and never starts its handshake is closed at the deadline.
    let mut silent = TcpStream::connect(server.http).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    let read = silent.read(&mut buf);
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");

    // A client that does not trust the certificate fails its handshake; the server counts it.
    let pair_other = make_pair(dir.path(), "other");
    assert!(tls_connect(server.http, &[&pair_other.der]).is_err());
    assert_eq!(metric_total(&server, "twitchy_tls_plain_text_total"), 2);
    // The handshake failures: the silent client and the distrusting one (counted once it gives up).
    let mut failures = 0;
    for _ in 0..100 {
        failures = metric_total(&server, "twitchy_tls_handshake_failures_total");
        if failures >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(failures, 2);

    // The plain IRC port is still plain.
    let mut irc = common::client::Irc::tcp(server.irc);
    irc.login_anonymous();
    irc.join("lobby");
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_pair_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = make_pair(dir.path(), "first");
    // The server reads the files at these paths; they are replaced in place.
    let live_cert = dir.path().join("live.crt");
    let live_key = dir.path().join("live.key");
    std::fs::copy(&first.cert, &live_cert).unwrap();
    std::fs::copy(&first.key, &live_key).unwrap();
    let live = Pair {
        cert: live_cert.clone(),
        key: live_key.clone(),
        der: first.der.clone(),
    };
    let server = tls_server(&live, &[]);

    let before = tls_connect(server.http, &[&first.der]).unwrap();
    assert_eq!(presented(&before), first.der);
    // An IRC-over-TLS connection open across the reload keeps working.
    let open = tls_connect(server.irc_tls.unwrap(), &[&first.der]).unwrap();
    let mut open = BufReader::new(open);
    open.get_mut().write_all(b"NICK justinfan42\r\n").unwrap();
    expect_line(&mut open, "welcome", |l| l.contains(" 001 "));

    let second = make_pair(dir.path(), "second");
    std::fs::copy(&second.cert, &live_cert).unwrap();
    std::fs::copy(&second.key, &live_key).unwrap();
    hup(&server);
    let mut reloaded = false;
    for _ in 0..100 {
        if metric_total(&server, "twitchy_tls_reloads_total{result=\"ok\"}") == 1 {
            reloaded = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reloaded, "the reload was counted");
    let after = tls_connect(server.http, &[&second.der]).unwrap();
    assert_eq!(presented(&after), second.der);
    open.get_mut().write_all(b"PING :still-here\r\n").unwrap();
    expect_line(&mut open, "PONG on the connection opened before", |l| {
        l.contains("PONG") && l.contains("still-here")
    });

    // A key that does not match the certificate: refused, the second pair keeps serving.
    let third = make_pair(dir.path(), "third");
    std::fs::copy(&third.key, &live_key).unwrap();
    hup(&server);
    let mut failed = false;
    for _ in 0..100 {
        if metric_total(&server, "twitchy_tls_reloads_total{result=\"failed\"}") == 1 {
            failed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(failed, "the failed reload was counted");
    let still = tls_connect(server.http, &[&second.der]).unwrap();
    assert_eq!(presented(&still), second.der);
    let (status, _) = https(server.http, &second.der, "GET", "/healthz", None);
    assert_eq!(status, 200);
}

fn hup(server: &TestServer) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

// ----- the twitch-irc crate over TLS -----

static TLS_TARGET: OnceLock<(SocketAddr, CertificateDer<'static>)> = OnceLock::new();

/// The `twitch-irc` crate's TCP transport, over TLS to the test server (which it trusts by its certificate).
struct LocalTlsServer;

#[async_trait::async_trait]
impl MakeConnection for LocalTlsServer {
    type Socket = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

    async fn new_socket() -> Result<Self::Socket, TCPTransportConnectError> {
        let (addr, cert) = TLS_TARGET.get().expect("target set");
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(client_config(&[cert]));
        let name = ServerName::try_from("localhost").unwrap();
        Ok(connector.connect(name, tcp).await?)
    }
}

type TlsClient = twitch_irc::TwitchIRCClient<TCPTransport<LocalTlsServer>, StaticLoginCredentials>;

#[test]
fn the_twitch_irc_crate_chats_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pair = make_pair(dir.path(), "server");
    let server = tls_server(&pair, &[]);
    TLS_TARGET
        .set((server.irc_tls.unwrap(), pair.der.clone()))
        .unwrap();
    let token = register_tls(server.http, &pair.der, "tls_crate_user");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut reader_incoming, reader) = TlsClient::new(twitch_irc::ClientConfig::default());
        reader.join("lobby".to_owned()).unwrap();
        let credentials = StaticLoginCredentials::new("tls_crate_user".to_owned(), Some(token));
        let (mut sender_incoming, sender) =
            TlsClient::new(twitch_irc::ClientConfig::new_simple(credentials));
        sender.join("lobby".to_owned()).unwrap();
        for incoming in [&mut reader_incoming, &mut sender_incoming] {
            common::twitch_irc::next_matching(incoming, "ROOMSTATE over TLS", |m| {
                matches!(m, ServerMessage::RoomState(_)).then_some(())
            })
            .await;
        }
        sender
            .say("lobby".to_owned(), "over tls via twitch-irc".to_owned())
            .await
            .unwrap();
        let privmsg =
            common::twitch_irc::next_matching(&mut reader_incoming, "the PRIVMSG", |m| match m {
                ServerMessage::Privmsg(p) => Some(p),
                _ => None,
            })
            .await;
        assert_eq!(privmsg.sender.login, "tls_crate_user");
        assert_eq!(
            privmsg
                .source
                .tags
                .0
                .get("twitchy/original")
                .cloned()
                .as_deref(),
            Some("over tls via twitch-irc")
        );
    });
}
