//! The `twitchy` server binary.

use clap::Parser;
use twitchy_engine::config::Args;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let result = twitchy_engine::server::run(args, |bound| {
        let (http, ws) = if bound.tls {
            ("https", "wss")
        } else {
            ("http", "ws")
        };
        log::info!("web client at {http}://{}/", bound.http);
        // One machine-readable line on stdout: tests and scripts wait for it.
        let irc_tls = bound
            .irc_tls
            .map(|addr| format!(" irc_tls={addr}"))
            .unwrap_or_default();
        let metrics = bound
            .metrics
            .map(|addr| format!(" metrics=http://{addr}/metrics"))
            .unwrap_or_default();
        println!(
            "twitchy ready http={http}://{0}/ ws={ws}://{0}/ irc={1}{irc_tls}{metrics}",
            bound.http, bound.irc
        );
    });
    if let Err(err) = result {
        log::error!("{err:#}");
        std::process::exit(1);
    }
}
