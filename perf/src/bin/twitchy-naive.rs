//! The naive baseline server (see `twitchy_perf::naive`): prints a ready line
//! like Twitchy's and serves until killed.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Naive one-thread-per-connection chat server speaking Twitchy's dialect")]
struct Args {
    /// HTTP API and WebSocket address.
    #[arg(long, default_value = "127.0.0.1:8090")]
    http: std::net::SocketAddr,
    /// Plain-TCP IRC address.
    #[arg(long, default_value = "127.0.0.1:6690")]
    irc: std::net::SocketAddr,
    /// Messages one user may send per window.
    #[arg(long, env = "TWITCHY_RATE_LIMIT_MESSAGES", default_value_t = 20)]
    rate_limit_messages: u32,
    /// The rate-limit window.
    #[arg(long, env = "TWITCHY_RATE_LIMIT_WINDOW_MS", default_value_t = 30_000)]
    rate_limit_window_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    twitchy_perf::conn::raise_fd_limit();
    let bound = twitchy_perf::naive::start(twitchy_perf::naive::NaiveConfig {
        http: args.http,
        irc: args.irc,
        rate_limit_messages: args.rate_limit_messages,
        rate_limit_window_ms: args.rate_limit_window_ms,
    })?;
    println!(
        "twitchy-naive ready http=http://{0}/ ws=ws://{0}/ irc={1}",
        bound.http, bound.irc
    );
    loop {
        std::thread::park();
    }
}
