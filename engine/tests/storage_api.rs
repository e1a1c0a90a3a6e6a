//! Storage-facing HTTP API: health reporting, and logout revoking the presented token (over real sockets against
//! the real binary).

mod common;

use std::time::Duration;

use common::TestServer;
use common::client::{Irc, http, register};

const PASSWORD: &str = "correct horse battery";

#[test]
fn healthz_and_metrics_report_storage_health() {
    let server = TestServer::start(&["--shards", "1"]);
    let health = http(server.http, "GET", "/healthz", None);
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["status"], "ok");
    let metrics = http(server.http, "GET", "/metrics", None).body;
    assert!(
        metrics.contains("twitchy_storage_healthy{state=\"healthy\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("twitchy_storage_request_queue_depth{pool=\"auth\"}"));
}

#[test]
fn logout_revokes_the_presented_token() {
    let server = TestServer::start(&["--shards", "1"]);
    let token = register(server.http, "leaver", PASSWORD);
    let other = register(server.http, "stayer", PASSWORD);

    // The token works, then is revoked, then is refused as invalid (not as a storage problem).
    let mut irc = Irc::tcp(server.irc);
    irc.login("leaver", &token);
    let body = serde_json::json!({ "token": token }).to_string();
    let out = http(server.http, "POST", "/api/logout", Some(&body));
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(out.json()["revoked"], true);
    let mut refused = Irc::tcp(server.irc);
    refused.send(&format!("PASS oauth:{token}"));
    refused.send("NICK leaver");
    let notice = refused.expect("the refusal", |l| l.contains(" NOTICE "));
    assert!(notice.ends_with(":Login authentication failed"), "{notice}");

    // Logging out again, or with nothing, is a clear 4xx with a JSON error.
    for (body, status) in [
        (Some(body.as_str()), 401),
        (Some(r#"{"token":"not-a-token"}"#), 401),
        (Some("not json"), 400),
        (None, 400),
    ] {
        let out = http(server.http, "POST", "/api/logout", body);
        assert_eq!(out.status, status, "{body:?}: {}", out.body);
        assert!(out.json()["error"].is_string(), "{}", out.body);
    }
    assert_eq!(http(server.http, "GET", "/api/logout", None).status, 405);

    // Other tokens are untouched.
    let mut still = Irc::tcp(server.irc);
    still.login("stayer", &other);
    still.send("PING :alive");
    still.expect_within("PONG", Duration::from_secs(10), |l| l.ends_with(":alive"));
}
