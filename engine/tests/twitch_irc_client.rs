//! The `twitch-irc` crate — a real Twitch chat client library — talks to our server unmodified, through its own
//! transport trait pointed at our plain TCP IRC port.

mod common;

use std::time::Duration;

use common::TestServer;
use common::client::{Irc, register, tag};
use common::twitch_irc::{Client, point_at};
use twitch_irc::ClientConfig;
use twitch_irc::login::StaticLoginCredentials;
use twitch_irc::message::ServerMessage;

#[test]
fn twitch_irc_crate_reads_and_sends() {
    let server = TestServer::start(&["--shards", "2"]);
    point_at(server.irc);
    let token = register(server.http, "crate_user", "correct horse");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // An anonymous reader.
        let (mut incoming, reader) = Client::new(ClientConfig::default());
        reader.join("lobby".to_owned()).unwrap();

        // A logged-in sender using the same library.
        let credentials = StaticLoginCredentials::new("crate_user".to_owned(), Some(token.clone()));
        let (mut sender_incoming, sender) = Client::new(ClientConfig::new_simple(credentials));
        sender.join("lobby".to_owned()).unwrap();
        // Wait until both are in the room (the library reports JOINs with the membership capability).
        let joined = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(message) = sender_incoming.recv().await {
                if let ServerMessage::RoomState(_) = message {
                    return;
                }
            }
        })
        .await;
        assert!(joined.is_ok(), "sender joined");
        let reader_joined = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(message) = incoming.recv().await {
                if let ServerMessage::RoomState(_) = message {
                    return;
                }
            }
        })
        .await;
        assert!(reader_joined.is_ok(), "reader joined");

        sender
            .say("lobby".to_owned(), "sent by twitch-irc".to_owned())
            .await
            .unwrap();

        let received = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(message) = incoming.recv().await {
                if let ServerMessage::Privmsg(privmsg) = message {
                    return Some(privmsg);
                }
            }
            None
        })
        .await
        .expect("a PRIVMSG within 15 s")
        .expect("a PRIVMSG");
        assert_eq!(received.channel_login, "lobby");
        assert_eq!(received.sender.login, "crate_user");
        assert!(
            received.message_text.contains("sent"),
            "{}",
            received.message_text
        );
        assert_eq!(
            received
                .source
                .tags
                .0
                .get("twitchy/original")
                .cloned()
                .as_deref(),
            Some("sent by twitch-irc")
        );

        // The library sees the ack: a USERSTATE with the message id.
        let ack = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(message) = sender_incoming.recv().await {
                if let ServerMessage::UserState(state) = message
                    && state.source.tags.0.contains_key("id")
                {
                    return state;
                }
            }
            panic!("sender stream ended");
        })
        .await
        .expect("ack within 15 s");
        assert_eq!(
            ack.source.tags.0.get("id").cloned(),
            Some(received.message_id.clone())
        );
    });

    // Plain IRC clients see the same message in history.
    let mut viewer = Irc::tcp(server.irc);
    viewer.login_anonymous();
    viewer.join("lobby");
    let line = viewer.expect("history", |l| l.contains(" PRIVMSG #lobby "));
    assert_eq!(tag(&line, "historical").as_deref(), Some("1"));
}
