//! Host-name lookups off the shards, cached.
//!
//! `getaddrinfo` blocks, and with a silent DNS server it blocks for seconds; on a glommio shard that would stall
//! every connection the shard serves. So a lookup runs on a short-lived helper thread and the shard only awaits
//! its answer (bounded by the caller's connect timeout). Answers are cached for [`DNS_TTL_MS`]; after that the
//! cached address is still served at once while one refresh runs in the background, so a DNS outage does not take
//! a working endpoint away. At most one lookup per host runs at a time, and the cache is bounded.
//!
//! The lookup itself is a trait ([`Lookup`]) with the system resolver as the default, so tests can make it hang.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_channel::oneshot;

/// How long a resolved address is used before it is refreshed.
pub const DNS_TTL_MS: u64 = 30_000;
/// Host names cached at most (endpoints are few; this only bounds a misconfiguration).
pub const DNS_CACHE_ENTRIES_MAX: usize = 256;

/// Resolves a host name; blocking is allowed (it never runs on a shard).
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`getaddrinfo`).
#[derive(Debug, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

type Waiters = Vec<oneshot::Sender<io::Result<SocketAddr>>>;

#[derive(Default)]
struct Entry {
    address: Option<(SocketAddr, Instant)>,
    /// Set while a lookup runs: who waits for its answer.
    lookup_waiters: Option<Waiters>,
}

/// The process's cache of resolved endpoint names, shared by every shard.
pub struct Resolver {
    lookup: Arc<dyn Lookup>,
    entries: Mutex<HashMap<(String, u16), Entry>>,
}

impl Resolver {
    pub fn new(lookup: Arc<dyn Lookup>) -> Resolver {
        Resolver {
            lookup,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The process-wide resolver, with the system lookup unless [`Resolver::install`] chose another first.
    pub fn global() -> &'static Resolver {
        GLOBAL.get_or_init(|| Resolver::new(Arc::new(SystemLookup)))
    }

    /// Makes `lookup` the process-wide one (before the first lookup); `false` if the resolver already exists.
    pub fn install(lookup: Arc<dyn Lookup>) -> bool {
        GLOBAL.set(Resolver::new(lookup)).is_ok()
    }

    /// The address of `host:port`: from the cache, or from a lookup on a helper thread. Never blocks the caller's
    /// thread; the future ends when the lookup answers (bound it with a timeout).
    pub async fn resolve(&'static self, host: &str, port: u16) -> io::Result<SocketAddr> {
        let key = (host.to_owned(), port);
        let waiter = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if entries.len() >= DNS_CACHE_ENTRIES_MAX && !entries.contains_key(&key) {
                entries.retain(|_, e| e.lookup_waiters.is_some());
            }
            let entry = entries.entry(key.clone()).or_default();
            let fresh = entry
                .address
                .is_some_and(|(_, at)| at.elapsed() < Duration::from_millis(DNS_TTL_MS));
            match (entry.address, fresh) {
                (Some((address, _)), true) => return Ok(address),
                (Some((address, _)), false) => {
                    // Serve the known address now; refresh it in the background.
                    if entry.lookup_waiters.is_none() {
                        entry.lookup_waiters = Some(Vec::new());
                        self.spawn_lookup(key);
                    }
                    return Ok(address);
                }
                (None, _) => {
                    let (send, receive) = oneshot::channel();
                    match &mut entry.lookup_waiters {
                        Some(waiters) => waiters.push(send),
                        None => {
                            entry.lookup_waiters = Some(vec![send]);
                            self.spawn_lookup(key);
                        }
                    }
                    receive
                }
            }
        };
        waiter
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the lookup thread went away")))
    }

    fn spawn_lookup(&'static self, key: (String, u16)) {
        let spawned = std::thread::Builder::new()
            .name("dns-lookup".into())
            .spawn(move || self.run_lookup(key.clone()));
        if let Err(err) = spawned {
            log::warn!("cannot start a DNS lookup thread: {err}");
        }
    }

    fn run_lookup(&self, key: (String, u16)) {
        let result = self.lookup.lookup(&key.0, key.1).and_then(|addresses| {
            addresses.into_iter().next().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} resolves to no address", key.0),
                )
            })
        });
        let waiters = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let entry = entries.entry(key).or_default();
            if let Ok(address) = &result {
                entry.address = Some((*address, Instant::now()));
            }
            entry.lookup_waiters.take().unwrap_or_default()
        };
        for waiter in waiters {
            let answer = match &result {
                Ok(address) => Ok(*address),
                Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
            };
            let _ = waiter.send(answer);
        }
    }
}

static GLOBAL: OnceLock<Resolver> = OnceLock::new();

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        calls: AtomicUsize,
        delay: Duration,
    }

    impl Lookup for Counting {
        fn lookup(&self, _host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            Ok(vec![SocketAddr::from(([10, 0, 0, 7], port))])
        }
    }

    #[test]
    fn one_lookup_serves_every_waiter_and_the_cache_answers_after() {
        let lookup = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            delay: Duration::from_millis(100),
        });
        let resolver: &'static Resolver = Box::leak(Box::new(Resolver::new(lookup.clone())));
        let answers = futures_lite::future::block_on(async {
            let a = resolver.resolve("vllm.internal", 8000);
            let b = resolver.resolve("vllm.internal", 8000);
            futures_lite::future::zip(a, b).await
        });
        assert_eq!(answers.0.unwrap(), SocketAddr::from(([10, 0, 0, 7], 8000)));
        assert_eq!(answers.1.unwrap(), SocketAddr::from(([10, 0, 0, 7], 8000)));
        assert_eq!(
            lookup.calls.load(Ordering::SeqCst),
            1,
            "one lookup for both"
        );
        let cached = futures_lite::future::block_on(resolver.resolve("vllm.internal", 8000));
        assert!(cached.is_ok());
        assert_eq!(
            lookup.calls.load(Ordering::SeqCst),
            1,
            "answered from the cache"
        );
    }
}
