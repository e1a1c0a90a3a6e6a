//! The `twitch-irc` crate — a real Twitch chat client library — pointed at a test server's plain TCP IRC port
//! through its own transport trait. One server per test binary: the library makes connections from a type, so the
//! address is a process-wide setting.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use twitch_irc::TwitchIRCClient;
use twitch_irc::login::StaticLoginCredentials;
use twitch_irc::message::ServerMessage;
use twitch_irc::transport::tcp::{MakeConnection, TCPTransport, TCPTransportConnectError};

static SERVER_IRC: OnceLock<SocketAddr> = OnceLock::new();

/// Plain TCP to the test server instead of irc.chat.twitch.tv.
pub struct LocalServer;

#[async_trait::async_trait]
impl MakeConnection for LocalServer {
    type Socket = tokio::net::TcpStream;

    async fn new_socket() -> Result<Self::Socket, TCPTransportConnectError> {
        let addr = *SERVER_IRC.get().expect("point_at was called");
        Ok(tokio::net::TcpStream::connect(addr).await?)
    }
}

/// A `twitch-irc` client of the test server.
pub type Client = TwitchIRCClient<TCPTransport<LocalServer>, StaticLoginCredentials>;

/// Points every `twitch-irc` client of this test binary at `addr` (once).
pub fn point_at(addr: SocketAddr) {
    SERVER_IRC
        .set(addr)
        .expect("one twitch-irc server per test binary");
}

/// The first incoming message `pick` accepts, within 15 s; panics naming `what` otherwise.
pub async fn next_matching<T>(
    incoming: &mut UnboundedReceiver<ServerMessage>,
    what: &str,
    pick: impl Fn(ServerMessage) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(message) = incoming.recv().await {
            if let Some(found) = pick(message) {
                return found;
            }
        }
        panic!("stream ended before {what}");
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 15 s"))
}
