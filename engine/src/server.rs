//! Starting and stopping the whole server: storage, styler, listeners, one glommio executor per shard.
//!
//! Start order: storage → styler → listeners (bound here, one `SO_REUSEPORT` socket per shard per port, so the
//! kernel spreads connections over shards) → shards. Stop order is the reverse: shards stop accepting, finish the
//! messages they sequenced (acks included), tell clients to `RECONNECT`, exit; then storage flushes and stops.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use glommio::net::TcpListener;
use glommio::{CpuSet, LocalExecutorBuilder, Placement, PoolPlacement};
use socket2::{Domain, Protocol, Socket, Type};
use twitchy_inference::StylerConfig;
use twitchy_storage::{CoalescerConfig, StorageService, StoreConfig};

use crate::auth::{AuthConfig, AuthService};
use crate::config::{AUTH_THREADS_AUTO_MAX, Args, derived_room_id, load_rooms};
use crate::conn::{self, Transport};
use crate::core::RoomInfo;
use crate::http::Listener;
use crate::metrics::{ShardMetrics, ViewerCounts};
use crate::placement;
use crate::shard::{
    CLOSE_GRACE_MS, INBOUND_CHANNEL_BATCHES_MAX, LocalNotify, PeerBatch, Shard, Shared,
};
use crate::stall;
use crate::throttle::Limits;
use crate::tls::{Carries, EdgeStream};

/// Pending connections per listening socket.
pub const LISTEN_BACKLOG: i32 = 1024;
/// How long shutdown waits for in-flight messages to become durable.
pub const SHUTDOWN_DRAIN_MS_MAX: u64 = 5_000;

/// Addresses the server listens on.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub http: SocketAddr,
    pub irc: SocketAddr,
    /// The IRC-over-TLS listener, with `--irc-tls`.
    pub irc_tls: Option<SocketAddr>,
    /// Whether the HTTP listener speaks TLS (`https://`, `wss://`).
    pub tls: bool,
    /// The metrics listener, with `--metrics-addr`.
    pub metrics: Option<SocketAddr>,
}

fn bind_one(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// Binds `count` sockets to one address with `SO_REUSEPORT`; port 0 is resolved by the first.
fn bind_group(addr: SocketAddr, count: usize) -> anyhow::Result<(SocketAddr, Vec<OwnedFd>)> {
    let first = bind_one(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let actual = first
        .local_addr()?
        .as_socket()
        .context("not an inet socket")?;
    let mut fds = vec![OwnedFd::from(first)];
    for _ in 1..count {
        fds.push(OwnedFd::from(
            bind_one(actual).with_context(|| format!("cannot listen on {actual}"))?,
        ));
    }
    Ok((actual, fds))
}

#[derive(Debug)]
struct StallReporter {
    threshold: Duration,
}

/// Reports tasks that run past the preemption budget by more than the threshold (logged as warnings with the
/// stalled task's backtrace by glommio's default handler).
impl glommio::StallDetectionHandler for StallReporter {
    fn threshold(&self, _queue: glommio::TaskQueueHandle, _expected: Duration) -> Option<Duration> {
        Some(self.threshold)
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("shards", &self.shard_count)
            .finish_non_exhaustive()
    }
}

enum Event {
    Ready(usize, Result<(), String>),
    Exited(usize),
    Signal(i32),
    /// The store cannot recover in this process: exit non-zero so a supervisor restarts it.
    StorageFailed(String),
}

/// How often the watchdog checks the store's health.
const STORAGE_WATCHDOG_MS: u64 = 1_000;
/// How long every shard may take to load its rooms and start serving before the server gives up and exits.
pub const STARTUP_MS_MAX: u64 = 30_000;

/// Reports a shard's end to the main thread when dropped, also when its executor could not be built and the shard's
/// code never ran.
struct ExitReport {
    index: usize,
    events: mpsc::Sender<Event>,
}

impl Drop for ExitReport {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Exited(self.index));
    }
}

/// The name of shard `index`'s thread; [`abort_on_shard_panic`] recognises shard threads by it.
pub fn shard_thread_name(index: usize) -> String {
    format!("{SHARD_THREAD_PREFIX}{index}")
}

const SHARD_THREAD_PREFIX: &str = "shard-";

/// Makes a panic on a shard thread abort the whole process, after the usual panic message.
///
/// glommio does not catch a panicking task: the panic unwinds out of the executor and ends the shard's thread, while
/// the other shards, the storage threads and the listening sockets of the dead shard's siblings live on. Clients
/// whose room is homed on the dead shard would then wait forever, and `/healthz` could not tell. A shard's state
/// after a panic cannot be trusted either, so the process stops at once (SIGABRT, a non-zero exit) for its
/// supervisor to restart it; what was acknowledged is durable, and clients resend the rest with their nonces.
pub fn abort_on_shard_panic() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let thread = std::thread::current();
            if let Some(name) = thread.name()
                && name.starts_with(SHARD_THREAD_PREFIX)
            {
                log::error!("{name} panicked: aborting the process so that it restarts whole");
                std::process::abort();
            }
        }));
    });
}

/// Runs the server until SIGINT or SIGTERM; `on_ready` is called with the bound addresses once every shard serves.
pub fn run(args: Args, on_ready: impl FnOnce(Bound)) -> anyhow::Result<()> {
    abort_on_shard_panic();
    // A huge-page fault zeroes 2 MiB on the faulting thread: the storage writer (and any shard) would stall on it
    // for milliseconds while it holds a batch of acknowledgements.
    if !twitchy_storage::disable_transparent_huge_pages() {
        log::warn!("could not turn transparent huge pages off; latency tails may be longer");
    }
    let rooms = load_rooms(args.config.as_ref())?;
    let allowed = placement::allowed_cpus();
    let chosen = if args.cpus.trim().is_empty() {
        Vec::new()
    } else {
        placement::parse_cpu_list(&args.cpus)?
    };
    let plan = placement::plan(&allowed, &chosen, args.shards)?;
    let shard_count = plan.shard_cpus.len();
    if shard_count > usize::from(twitchy_storage::id::SHARD_ID_MAX) + 1 {
        bail!("at most {} shards", twitchy_storage::id::SHARD_ID_MAX + 1);
    }
    if !plan.helper_cpus.is_empty() {
        // Threads inherit their creator's CPU set: the storage and styler threads started below stay off the
        // shard CPUs. Shards pin themselves explicitly.
        placement::pin_current_thread(&plan.helper_cpus)
            .context("cannot restrict helper threads to the spare CPUs")?;
    }
    log::info!(
        "{shard_count} shards on CPUs {:?}; helper threads on {:?}",
        plan.shard_cpus,
        if plan.helper_cpus.is_empty() {
            &allowed
        } else {
            &plan.helper_cpus
        }
    );

    let store_config = match args.store.as_str() {
        "scylla" => {
            if args.scylla_nodes.is_empty() {
                bail!("--store scylla needs --scylla-nodes");
            }
            StoreConfig::Scylla {
                nodes: args.scylla_nodes.clone(),
                keyspace: args.scylla_keyspace.clone(),
                replication_factor: args.scylla_replication_factor,
            }
        }
        _ => StoreConfig::Embedded {
            dir: args.data_dir.clone(),
        },
    };
    let nats = if args.cluster.trim().is_empty() {
        None
    } else {
        let servers = args
            .cluster
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let mut config = twitchy_storage::NatsConfig::new(servers, args.node_id);
        config.replicas = args.cluster_replicas.max(1);
        config.retention_age_ms = args.cluster_retention_days.max(1) * 24 * 3600 * 1000;
        config.retention_bytes = args.cluster_retention_bytes.max(1 << 20);
        Some(Arc::new(join_cluster(&config)?))
    };
    let store: Arc<dyn twitchy_storage::Store> = match &nats {
        Some(nats) => nats.clone(),
        None => twitchy_storage::open_store(&store_config).context("cannot open the store")?,
    };
    let cluster = match &nats {
        Some(nats) => Some(cluster_start(nats, &rooms, shard_count)?),
        None => None,
    };
    let storage = StorageService::start(
        store,
        CoalescerConfig {
            batch_wait_us_max: args.storage_batch_wait_us,
            queue_messages_max: args.storage_queue_messages_max,
            token_ttl_ms: args.token_ttl_days.max(1) * 24 * 3600 * 1000,
            tokens_per_login_max: args.tokens_per_login_max.max(1),
            ..CoalescerConfig::default()
        },
    );

    // After the CPU restriction above, so the hashing threads stay off the shard CPUs when there are spare ones.
    let auth = AuthService::start(AuthConfig {
        threads: if args.auth_threads > 0 {
            args.auth_threads
        } else {
            plan.helper_cpus.len().clamp(1, AUTH_THREADS_AUTO_MAX)
        },
        queue_max: args.auth_queue_max,
        limits: Limits {
            failures_per_account_max: args.login_failures_per_account_max.max(1),
            failures_per_ip_max: args.login_failures_per_ip_max.max(1),
            registrations_per_ip_max: args.registrations_per_ip_max,
            window_ms: args.sign_in_window_secs.max(1) * 1000,
            exempt_loopback: args.limits_exempt_loopback,
            ..Limits::default()
        },
    })
    .context("cannot start the password-hashing threads")?;

    let styler_config = StylerConfig {
        vllm_endpoints: args.vllm.clone(),
        model: args.vllm_model.clone(),
        deadline_ms: args.style_deadline_ms,
        chat_template: args
            .vllm_chat_template
            .parse()
            .context("--vllm-chat-template")?,
        batch_prompts_max: args.style_batch_prompts_max,
        requests_in_flight_per_endpoint_max: args.style_requests_in_flight_max,
        // Emote codes survive styling, so the `emotes` tag computed from the styled text points at them.
        protected_words: crate::protocol::emotes::GLOBAL_EMOTES
            .iter()
            .map(|(_, code)| (*code).to_owned())
            .collect(),
        ..StylerConfig::default()
    };
    styler_config
        .validate()
        .context("invalid styler settings")?;
    let styler_factory = twitchy_inference::styler_factory(styler_config);

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let certs = crate::tls::CertStore::open(cert, key).context("--tls-cert/--tls-key")?;
            Some(
                crate::tls::TlsTerminator::new(certs, args.tls_handshake_timeout_ms)
                    .context("cannot set up TLS")?,
            )
        }
        _ => None,
    };

    let (http_addr, http_fds) = bind_group(args.http, shard_count)?;
    let (irc_addr, irc_fds) = bind_group(args.irc, shard_count)?;
    let (irc_tls_addr, irc_tls_fds) = match args.irc_tls {
        Some(addr) => {
            let (bound, fds) = bind_group(addr, shard_count)?;
            (Some(bound), fds.into_iter().map(Some).collect())
        }
        None => (None, (0..shard_count).map(|_| None).collect::<Vec<_>>()),
    };
    let (metrics_addr, metrics_fds) = match args.metrics_addr {
        Some(addr) => {
            let (bound, fds) = bind_group(addr, shard_count)?;
            (Some(bound), fds.into_iter().map(Some).collect())
        }
        None => (None, (0..shard_count).map(|_| None).collect::<Vec<_>>()),
    };

    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shard_count)
        .map(|_| flume::bounded::<PeerBatch>(INBOUND_CHANNEL_BATCHES_MAX))
        .unzip();
    let room_ids: Vec<u64> = rooms
        .iter()
        .map(|r| r.id.unwrap_or_else(|| derived_room_id(&r.name)))
        .collect();
    let room_index = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), i))
        .collect();
    let room_infos = rooms
        .iter()
        .zip(&room_ids)
        .map(|(r, &id)| RoomInfo {
            name: r.name.clone(),
            id,
            style: r.style.clone(),
            moderators: r.moderators.clone(),
            broadcaster: r.broadcaster.clone(),
            vips: r.vips.clone(),
            automod: r.automod,
            banned_phrases: r.banned_phrases.clone(),
        })
        .collect();
    let shared = Arc::new(Shared {
        ip_connections: crate::ip_limit::IpConnections::new(
            args.connections_per_ip_max,
            args.limits_exempt_loopback,
        ),
        metrics: (0..shard_count).map(|_| ShardMetrics::default()).collect(),
        viewers: Arc::new(ViewerCounts::new(shard_count, rooms.len())),
        rooms,
        room_infos,
        room_ids,
        room_index,
        shard_count,
        storage: storage.handle(),
        auth,
        styler_factory,
        inbound: senders.clone(),
        args: args.clone(),
        tls: tls.clone(),
        cluster,
    });

    let (events, event_rx) = mpsc::channel::<Event>();
    let drained = Arc::new(AtomicUsize::new(0));
    let stop_flag = Arc::new(AtomicBool::new(false));
    let first_polls: Arc<[AtomicBool]> = (0..shard_count).map(|_| AtomicBool::new(false)).collect();
    let mut executors = Vec::new();
    for (index, ((((receiver, http_fd), irc_fd), irc_tls_fd), metrics_fd)) in receivers
        .into_iter()
        .zip(http_fds)
        .zip(irc_fds)
        .zip(irc_tls_fds)
        .zip(metrics_fds)
        .enumerate()
    {
        let shared = shared.clone();
        let events = events.clone();
        let drained = drained.clone();
        let stop = stop_flag.clone();
        let cpu = plan.shard_cpus[index];
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&shard_thread_name(index))
            .io_memory(args.io_memory_kib * 1024)
            .preempt_timer(Duration::from_millis(args.task_preempt_ms.max(1)));
        if !plan.helper_cpus.is_empty() {
            // Password hashing runs on the blocking pool: keep it off the shard CPUs too.
            let helpers = plan.helper_cpus.clone();
            let cpus = CpuSet::online()
                .map_err(|err| anyhow::anyhow!("cannot read the CPU topology: {err}"))?
                .filter(|l| helpers.contains(&l.cpu));
            builder = builder.blocking_thread_pool_placement(PoolPlacement::Fenced(1, cpus));
        }
        if args.detect_stalls_ms > 0 {
            builder = builder.detect_stalls(Some(Box::new(StallReporter {
                threshold: Duration::from_millis(args.detect_stalls_ms),
            })));
        }
        let exit_report = ExitReport {
            index,
            events: events.clone(),
        };
        let first_poll = first_polls.clone();
        let handle = builder
            .spawn(move || async move {
                first_poll[index].store(true, Ordering::SeqCst);
                let _exit_report = exit_report;
                shard_main(ShardStart {
                    index,
                    shared,
                    inbound: receiver,
                    http_fd,
                    irc_fd,
                    irc_tls_fd,
                    metrics_fd,
                    events,
                    drained,
                    stop,
                })
                .await;
            })
            .map_err(|err| anyhow::anyhow!("cannot start shard {index}: {err}"))?;
        executors.push(handle);
    }

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let signal_handle = signals.handle();
    let signal_events = events.clone();
    let reload_certs = tls.as_ref().map(|tls| tls.certs.clone());
    let signal_thread = std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == signal_hook::consts::SIGHUP {
                // SIGHUP reloads the TLS certificate and key; it never stops the server.
                match &reload_certs {
                    Some(certs) => match certs.reload() {
                        Ok(()) => log::info!("SIGHUP: TLS certificate reloaded"),
                        Err(err) => {
                            log::error!(
                                "SIGHUP: TLS certificate not reloaded, keeping the old one: {err}"
                            )
                        }
                    },
                    None => log::info!("SIGHUP: no TLS certificate to reload"),
                }
                continue;
            }
            let _ = signal_events.send(Event::Signal(signal));
            break;
        }
    });

    let watchdog_stop = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let storage = storage.handle();
        let events = events.clone();
        let stop = watchdog_stop.clone();
        std::thread::Builder::new()
            .name("storage-watchdog".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let twitchy_storage::Health::Failed(reason) = storage.health() {
                        let _ = events.send(Event::StorageFailed(reason));
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(STORAGE_WATCHDOG_MS));
                }
            })?
    };

    let mut ready = vec![false; shard_count];
    let mut failure = None;
    let startup_deadline = Instant::now() + Duration::from_millis(STARTUP_MS_MAX);
    while ready.contains(&false) && failure.is_none() {
        let wait = startup_deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(stall::FIRST_POLL_WAIT_MS));
        let event = event_rx.recv_timeout(wait);
        if matches!(event, Err(mpsc::RecvTimeoutError::Timeout))
            && Instant::now() < startup_deadline
        {
            for (shard, polled) in first_polls.iter().enumerate() {
                if !polled.load(Ordering::SeqCst) {
                    // The executor never ran the shard: wake it (see `stall`). glommio names the thread
                    // "<name>-<executor id>".
                    match stall::interrupt_threads_named(&format!("shard-{shard}-")) {
                        Ok(n) => {
                            log::warn!("shard {shard} has not run yet; interrupted {n} thread(s)")
                        }
                        Err(err) => {
                            log::warn!("shard {shard} has not run yet; cannot interrupt it: {err}")
                        }
                    }
                }
            }
            continue;
        }
        match event {
            Ok(Event::Ready(shard, Ok(()))) => ready[shard] = true,
            Ok(Event::Ready(shard, Err(err))) => {
                failure = Some(format!("shard {shard} failed to start: {err}"))
            }
            Ok(Event::Exited(shard)) => {
                failure = Some(format!("shard {shard} exited during start"))
            }
            Ok(Event::Signal(_)) => failure = Some("interrupted during start".into()),
            Ok(Event::StorageFailed(reason)) => {
                failure = Some(format!("storage failed and cannot recover: {reason}"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let waiting: Vec<usize> = (0..shard_count).filter(|&s| !ready[s]).collect();
                // A shard that cannot start cannot be told to stop either: leave its thread behind and exit.
                log::error!("shards {waiting:?} did not start within {STARTUP_MS_MAX} ms; exiting");
                bail!("shards {waiting:?} did not start within {STARTUP_MS_MAX} ms");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => failure = Some("all shards exited".into()),
        }
    }
    if failure.is_none() {
        on_ready(Bound {
            http: http_addr,
            irc: irc_addr,
            irc_tls: irc_tls_addr,
            tls: tls.is_some(),
            metrics: metrics_addr,
        });
        loop {
            match event_rx.recv() {
                Ok(Event::Signal(signal)) => {
                    log::info!("signal {signal}: shutting down");
                    break;
                }
                Ok(Event::Exited(shard)) => {
                    failure = Some(format!("shard {shard} exited unexpectedly"));
                    break;
                }
                Ok(Event::StorageFailed(reason)) => {
                    log::error!("storage failed and cannot recover in this process: {reason}");
                    failure = Some(format!("storage failed: {reason}"));
                    break;
                }
                Ok(Event::Ready(..)) => {}
                Err(_) => break,
            }
        }
    }

    stop_flag.store(true, Ordering::SeqCst);
    for sender in &senders {
        // An empty batch wakes the inbound loop, which then sees the stop flag.
        let _ = sender.send_timeout(Vec::new(), Duration::from_secs(5));
    }
    for handle in executors {
        let _ = handle.join();
    }
    signal_handle.close();
    let _ = signal_thread.join();
    watchdog_stop.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    drop(shared);
    storage
        .shutdown()
        .context("storage did not shut down cleanly")?;
    log::info!("stopped");
    match failure {
        Some(reason) => bail!(reason),
        None => Ok(()),
    }
}

/// How long a starting node keeps trying to join its cluster (servers starting, leaders being elected).
pub const CLUSTER_JOIN_MS_MAX: u64 = 60_000;

fn join_cluster(
    config: &twitchy_storage::NatsConfig,
) -> anyhow::Result<twitchy_storage::NatsStore> {
    let deadline = Instant::now() + Duration::from_millis(CLUSTER_JOIN_MS_MAX);
    let mut wait_ms = 100;
    loop {
        match twitchy_storage::NatsStore::connect(config) {
            Ok(store) => return Ok(store),
            Err(err) if Instant::now() < deadline => {
                log::warn!("cannot join the cluster yet, trying again in {wait_ms} ms: {err}");
                std::thread::sleep(Duration::from_millis(wait_ms));
                wait_ms = (wait_ms * 2).min(2_000);
            }
            Err(err) => return Err(err).context("cannot join the cluster"),
        }
    }
}

/// Messages per room a cluster node reads back at start: the last-10 history and what `/delete`, replies and
/// reactions can still find (resends are recognised by the log's own duplicate window).
pub const CLUSTER_HISTORY_MESSAGES_MAX: usize = crate::core::DELETABLE_MESSAGES_MAX;
/// Setting changes, or deletions, a shard's watch of them may hold before it waits for the shard.
pub const CLUSTER_WATCH_CHANGES_MAX: usize = 4_096;
/// Committed messages a room's feed may hold before the feed waits for the room's home shard.
pub const CLUSTER_FEED_MESSAGES_MAX: usize = 65_536;

/// Reads each room's newest messages from the shared log with the sequence its feed continues from, and starts
/// one feed per room (its own consumer on the broker, so each room's lag is its own and shows in `/metrics`).
fn cluster_start(
    nats: &twitchy_storage::NatsStore,
    rooms: &[crate::config::RoomConfig],
    shard_count: usize,
) -> anyhow::Result<crate::shard::ClusterStart> {
    // The watches first: the shards read their rooms' settings and last messages after this, so a change made
    // meanwhile is in both (applying it twice changes nothing) rather than in neither.
    let mut watches = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let settings = nats
            .setting_changes("room", CLUSTER_WATCH_CHANGES_MAX)
            .context("cannot watch the rooms' settings")?;
        let deletions = nats
            .deletions(None, CLUSTER_WATCH_CHANGES_MAX)
            .context("cannot watch the rooms' deletions")?;
        watches.push(std::sync::Mutex::new(Some((settings, deletions))));
    }
    let mut histories = Vec::with_capacity(rooms.len());
    let mut feed_from_seq = Vec::with_capacity(rooms.len());
    for room in rooms {
        let history = nats
            .recent_with_seq(&room.name, CLUSTER_HISTORY_MESSAGES_MAX)
            .with_context(|| format!("cannot read #{}'s history from the cluster", room.name))?;
        feed_from_seq.push(history.next_seq);
        let records = history
            .messages
            .into_iter()
            .map(|item| item.record)
            .collect();
        histories.push(std::sync::Mutex::new(Some(records)));
    }
    let mut feeds = Vec::with_capacity(rooms.len());
    for (room, &from_seq) in rooms.iter().zip(&feed_from_seq) {
        let feed = nats
            .feed(
                twitchy_storage::FeedRooms::Rooms(vec![room.name.clone()]),
                Some(from_seq),
                CLUSTER_FEED_MESSAGES_MAX,
            )
            .with_context(|| format!("cannot start #{}'s cluster feed", room.name))?;
        feeds.push(std::sync::Mutex::new(Some(feed)));
    }
    Ok(crate::shard::ClusterStart {
        rooms: histories,
        feed_from_seq,
        feeds,
        watches,
    })
}

struct ShardStart {
    index: usize,
    shared: Arc<Shared>,
    inbound: flume::Receiver<PeerBatch>,
    http_fd: OwnedFd,
    irc_fd: OwnedFd,
    irc_tls_fd: Option<OwnedFd>,
    metrics_fd: Option<OwnedFd>,
    events: mpsc::Sender<Event>,
    drained: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

async fn shard_main(start: ShardStart) {
    let ShardStart {
        index,
        shared,
        inbound,
        http_fd,
        irc_fd,
        irc_tls_fd,
        metrics_fd,
        events,
        drained,
        stop,
    } = start;
    let shard_count = shared.shard_count;
    let _guard = glommio::spawn_local(async {
        loop {
            glommio::timer::sleep(Duration::from_millis(stall::EXECUTOR_GUARD_MS)).await;
        }
    });
    let shard = Shard::new(index, shared);
    if let Err(err) = shard.load_history().await {
        let _ = events.send(Event::Ready(index, Err(err.to_string())));
        return;
    }
    let _tasks = shard.start();

    // SAFETY: the descriptors are bound, listening TCP sockets created for this shard and owned by nobody else.
    let http_listener = unsafe { TcpListener::from_raw_fd(http_fd.into_raw_fd()) };
    // SAFETY: as above.
    let irc_listener = unsafe { TcpListener::from_raw_fd(irc_fd.into_raw_fd()) };
    let http_accept = glommio::spawn_local(accept_loop(
        shard.clone(),
        http_listener,
        Accept::Http(Listener::Main),
    ));
    let irc_accept = glommio::spawn_local(accept_loop(shard.clone(), irc_listener, Accept::Irc));
    let irc_tls_accept = irc_tls_fd.map(|fd| {
        // SAFETY: as above.
        let listener = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
        glommio::spawn_local(accept_loop(shard.clone(), listener, Accept::IrcTls))
    });
    let metrics_accept = metrics_fd.map(|fd| {
        // SAFETY: as above.
        let listener = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
        glommio::spawn_local(accept_loop(
            shard.clone(),
            listener,
            Accept::Http(Listener::Metrics),
        ))
    });

    let stopped = Rc::new(LocalNotify::default());
    let inbound_shard = shard.clone();
    let inbound_stopped = stopped.clone();
    let _inbound_task = glommio::spawn_local(async move {
        let mut notified = false;
        while let Ok(batch) = inbound.recv_async().await {
            if !batch.is_empty() {
                inbound_shard.receive(batch);
            }
            if !notified && stop.load(Ordering::SeqCst) {
                notified = true;
                inbound_shard.begin_shutdown();
                inbound_stopped.notify();
            }
        }
    });
    let _ = events.send(Event::Ready(index, Ok(())));

    stopped.wait().await;
    // Stop accepting: dropping the accept tasks closes this shard's listening sockets.
    drop(http_accept);
    drop(irc_accept);
    drop(irc_tls_accept);
    drop(metrics_accept);
    // Finish what this shard sequenced, then wait for every shard to do the same so that acks from other homes
    // still reach this shard's clients.
    let drain = shard.drain_in_flight();
    let timeout = glommio::timer::sleep(Duration::from_millis(SHUTDOWN_DRAIN_MS_MAX));
    futures_lite::future::or(drain, timeout).await;
    drained.fetch_add(1, Ordering::SeqCst);
    let mut waited_ms = 0;
    while drained.load(Ordering::SeqCst) < shard_count && waited_ms < SHUTDOWN_DRAIN_MS_MAX {
        glommio::timer::sleep(Duration::from_millis(10)).await;
        waited_ms += 10;
    }
    // Let the last cross-shard acks land, then tell every client to reconnect and let writers flush.
    glommio::timer::sleep(Duration::from_millis(50)).await;
    shard.close_all();
    let mut waited_ms = 0;
    while shard.connection_count() > 0 && waited_ms < CLOSE_GRACE_MS + 500 {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        waited_ms += 20;
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy)]
enum Accept {
    /// HTTP (with TLS on the main listener when configured).
    Http(Listener),
    Irc,
    IrcTls,
}

impl Accept {
    /// The TLS protocol this listener's connections start with, if any.
    fn tls(self, shard: &Shard) -> Option<(&crate::tls::TlsTerminator, Carries)> {
        let tls = shard.shared.tls.as_ref()?;
        match self {
            Accept::Http(Listener::Main) => Some((tls, Carries::Http)),
            Accept::IrcTls => Some((tls, Carries::Irc)),
            Accept::Http(Listener::Metrics) | Accept::Irc => None,
        }
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, serves: Accept) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let peer = stream.peer_addr().map(|addr| addr.ip());
                let slot = match peer {
                    Ok(ip) => shard.shared.ip_connections.try_acquire(ip),
                    // The peer already went away; the connection will end at its first read.
                    Err(_) => Some(crate::ip_limit::IpSlot::unlimited()),
                };
                let send_buffer_bytes = shard.shared.args.socket_send_buffer_bytes;
                if send_buffer_bytes > 0 {
                    set_send_buffer(&stream, send_buffer_bytes);
                }
                glommio::spawn_local(serve_accepted(shard.clone(), stream, serves, slot)).detach();
            }
            Err(err) => {
                // Usually out of file descriptors: back off instead of spinning.
                log::warn!("accept failed: {err}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One accepted connection: the TLS handshake where the listener has one, then HTTP or IRC; or, over its
/// address's limit (`slot` is `None`), the refusal.
async fn serve_accepted(
    shard: Rc<Shard>,
    stream: glommio::net::TcpStream,
    serves: Accept,
    slot: Option<crate::ip_limit::IpSlot>,
) {
    if slot.is_none() {
        ShardMetrics::inc(&shard.metrics().ip_refusals_total);
    }
    if matches!(serves, Accept::Irc | Accept::IrcTls) {
        let _ = stream.set_nodelay(true);
    }
    let stream = match serves.tls(&shard) {
        None => EdgeStream::Plain(stream),
        Some((tls, carries)) => match crate::tls::accept(tls, stream, carries).await {
            Ok(stream) => {
                ShardMetrics::inc(&shard.metrics().tls_handshakes_total);
                stream
            }
            Err(crate::tls::AcceptError::PlainText) => {
                ShardMetrics::inc(&shard.metrics().tls_plain_text_total);
                return;
            }
            Err(err) => {
                log::debug!("TLS handshake: {err:?}");
                ShardMetrics::inc(&shard.metrics().tls_handshake_failures_total);
                return;
            }
        },
    };
    let Some(slot) = slot else {
        refuse_per_ip(stream, serves).await;
        return;
    };
    match serves {
        Accept::Http(listener) => crate::http::serve(shard, stream, listener, slot).await,
        Accept::Irc | Accept::IrcTls => conn::serve(shard, stream, Transport::Tcp, slot).await,
    }
}

/// A connection over its address's limit: HTTP gets `429` with `Retry-After`, IRC a NOTICE; then it is closed.
async fn refuse_per_ip(mut stream: EdgeStream, serves: Accept) {
    match serves {
        Accept::Http(_) => crate::http::refuse_over_limit(stream).await,
        Accept::Irc | Accept::IrcTls => {
            let mut line = Vec::new();
            crate::protocol::twitch::encode_notice(
                None,
                Some(crate::protocol::twitch::msg_id::TOO_MANY_CONNECTIONS),
                "Too many connections from your address; close some and try again.",
                crate::protocol::twitch::SERVER_NAME_DEFAULT,
                true,
                &mut line,
            );
            crate::http::write_final(&mut stream, &line).await;
            let _ = stream.tcp().shutdown(std::net::Shutdown::Both).await;
        }
    }
}

fn set_send_buffer(stream: &glommio::net::TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        log::warn!("SO_SNDBUF: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD_ENV: &str = "TWITCHY_TEST_SHARD_PANIC_CHILD";

    /// A task that panics on a shard thread must take the process down. The panic happens in a child process (this
    /// test binary run again), which must die by SIGABRT instead of carrying on without its shard.
    #[test]
    fn a_panicking_shard_task_aborts_the_process() {
        if std::env::var_os(CHILD_ENV).is_some() {
            abort_on_shard_panic();
            let shard = LocalExecutorBuilder::new(Placement::Unbound)
                .name(&shard_thread_name(0))
                .io_memory(512 * 1024)
                .spawn(|| async {
                    glommio::spawn_local(async { panic!("a bug in a shard task") }).detach();
                    glommio::timer::sleep(Duration::from_secs(5)).await;
                })
                .expect("start a shard");
            let _ = shard.join();
            // Reached only if the panic did not abort the process.
            println!("the process survived its shard");
            std::process::exit(0);
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "server::tests::a_panicking_shard_task_aborts_the_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGABRT),
            "status {:?}\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        assert!(stderr.contains("a bug in a shard task"), "{stderr}");
        assert!(!stdout.contains("survived"), "{stdout}");
    }
}
