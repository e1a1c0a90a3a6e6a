//! Sign-in hardening against the real binary: password guessing locks the account (429 with `Retry-After`),
//! registrations are limited per address, an unknown login costs the same password work as a known one, and a full
//! hashing queue answers 503 at once instead of queueing.

mod common;

use common::TestServer;
use common::client::{HttpResponse, http, register};

const PASSWORD: &str = "correct horse";

fn post_credentials(server: &TestServer, path: &str, user: &str, password: &str) -> HttpResponse {
    http(
        server.http,
        "POST",
        path,
        Some(&format!(
            r#"{{"username":"{user}","password":"{password}"}}"#
        )),
    )
}

fn login(server: &TestServer, user: &str, password: &str) -> HttpResponse {
    post_credentials(server, "/api/login", user, password)
}

fn try_register(server: &TestServer, user: &str) -> HttpResponse {
    post_credentials(server, "/api/register", user, PASSWORD)
}

fn counter(server: &TestServer, line_prefix: &str) -> u64 {
    let text = http(server.http, "GET", "/metrics", None).body;
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_prefix} in /metrics"))
}

#[test]
fn guessing_a_password_locks_the_account_with_retry_after() {
    let server = TestServer::start(&["--login-failures-per-account-max", "3"]);
    register(server.http, "alice_guarded", PASSWORD);
    register(server.http, "bob_neighbour", PASSWORD);
    for attempt in 0..3 {
        let wrong = login(&server, "alice_guarded", "not the password");
        assert_eq!(wrong.status, 401, "attempt {attempt}: {}", wrong.body);
    }
    // Locked: even the right password is refused now, with a time to come back.
    let locked = login(&server, "alice_guarded", PASSWORD);
    assert_eq!(locked.status, 429, "{}", locked.body);
    let retry: u64 = locked
        .header("retry-after")
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert!(
        locked.json()["error"]
            .as_str()
            .unwrap()
            .contains("try again")
    );
    // Another account from the same address is not affected.
    assert_eq!(login(&server, "bob_neighbour", PASSWORD).status, 200);
    assert!(counter(&server, "twitchy_auth_refused_total{reason=\"throttled\"}") >= 1);
}

#[test]
fn spraying_one_password_over_accounts_locks_the_address() {
    let server = TestServer::start(&["--login-failures-per-ip-max", "4"]);
    register(server.http, "carol_sprayed", PASSWORD);
    for i in 0..4 {
        assert_eq!(
            login(&server, &format!("victim_{i}"), "guess guess").status,
            401
        );
    }
    let refused = login(&server, "carol_sprayed", PASSWORD);
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.header("retry-after").is_some());
}

#[test]
fn registrations_are_limited_per_address_unless_loopback_is_exempt() {
    let server = TestServer::start(&["--registrations-per-ip-max", "2"]);
    assert_eq!(try_register(&server, "first_account").status, 201);
    assert_eq!(try_register(&server, "second_account").status, 201);
    let third = try_register(&server, "third_account");
    assert_eq!(third.status, 429, "{}", third.body);
    assert!(third.header("retry-after").is_some());
    // The refused name was not created.
    assert_eq!(login(&server, "third_account", PASSWORD).status, 401);

    let exempt = TestServer::start(&[
        "--registrations-per-ip-max",
        "2",
        "--limits-exempt-loopback",
    ]);
    for name in ["first_account", "second_account", "third_account"] {
        assert_eq!(try_register(&exempt, name).status, 201, "{name}");
    }
}

#[test]
fn an_unknown_login_costs_the_same_password_work_as_a_known_one() {
    let server = TestServer::start(&[]);
    register(server.http, "dave_exists", PASSWORD);
    let verify = "twitchy_auth_password_operations_total{op=\"verify\"}";
    let before = counter(&server, verify);
    assert_eq!(login(&server, "dave_exists", "wrong password").status, 401);
    assert_eq!(counter(&server, verify), before + 1);
    let unknown = login(&server, "nobody_here", "wrong password");
    assert_eq!(unknown.status, 401);
    // Same answer, and a verification was run for the unknown login too.
    assert_eq!(
        unknown.body,
        login(&server, "dave_exists", "wrong again").body
    );
    assert_eq!(counter(&server, verify), before + 3);
}

#[test]
fn a_full_hashing_queue_answers_503_at_once_and_recovers() {
    let server = TestServer::start(&[
        "--auth-threads",
        "1",
        "--auth-queue-max",
        "1",
        "--limits-exempt-loopback",
    ]);
    let addr = server.http;
    let answers: Vec<HttpResponse> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                scope.spawn(move || {
                    http(
                        addr,
                        "POST",
                        "/api/register",
                        Some(&format!(
                            r#"{{"username":"burst_user_{i}","password":"{PASSWORD}"}}"#
                        )),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = answers.iter().filter(|a| a.status == 201).count();
    let busy: Vec<&HttpResponse> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(created + busy.len(), answers.len(), "only 201 or 503");
    assert!(created >= 1);
    assert!(
        !busy.is_empty(),
        "16 registrations at once never filled a queue of 1"
    );
    for answer in &busy {
        assert!(
            answer.json()["error"]
                .as_str()
                .unwrap()
                .contains("try again")
        );
    }
    assert!(counter(&server, "twitchy_auth_refused_total{reason=\"busy\"}") >= busy.len() as u64);
    // Once the burst is over, sign-ins work again.
    let later = try_register(&server, "after_the_burst");
    assert_eq!(later.status, 201, "{}", later.body);
}
