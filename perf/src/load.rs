//! The load run: connect viewers and senders, send open loop at a set rate
//! for a set time, drain, and summarize. Also the idle-connection memory
//! mode.
//!
//! Everything runs on one thread (a tokio `LocalSet`), so the counters are
//! plain `RefCell`s and the server keeps the machine's other core.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{Semaphore, watch};
use tokio::time::sleep_until;

use crate::conn::{self, Conn, READ_CHUNK_BYTES, Target};
use crate::irc::{Line, Nonce};
use crate::scenario::{Scenario, Transport};
use crate::stats::{
    ConnectSummary, LatencySummary, MemorySummary, MemoryTarget, Ratio, Recorder, RunSummary,
    ServerSummary, TargetSummary, reconcile, spectrum,
};

/// Password every load-generator sender registers with.
const SENDER_PASSWORD: &str = "twitchy-perf-password";

/// Registrations in flight at once; the server hashes passwords, which is
/// deliberately slow.
const REGISTRATIONS_IN_FLIGHT_MAX: usize = 4;

/// Gap between all connections being joined and the first send, so the
/// servers finish sending history first.
const START_DELAY_MS: u64 = 300;

/// How often the drain checks whether everything has arrived.
const DRAIN_POLL_MS: u64 = 20;

/// Distinct connect-failure reasons kept for the report.
const FAILURE_SAMPLES_MAX: usize = 5;

/// Longest a connection task gets to finish after the stop signal.
const STOP_GRACE_MS: u64 = 2_000;

/// Words the message texts are made of, so the server's rewriter sees
/// ordinary chat rather than one repeated token.
const WORDS: &[&str] = &[
    "hello", "chat", "that", "play", "was", "amazing", "lol", "no", "way", "he", "did", "it",
    "again", "what", "a", "clutch", "gg", "wp", "let's", "go", "this", "stream", "is", "so",
    "good",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A full-speed viewer; the index is its slot in the delivery counters.
    Viewer {
        slot: usize,
    },
    SlowViewer,
    Sender {
        sender: u32,
    },
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Viewer { .. } => "viewers",
            Role::SlowViewer => "slow_viewers",
            Role::Sender { .. } => "senders",
        }
    }
}

#[derive(Debug)]
struct State {
    rec: Recorder,
    sent: Vec<u64>,
    acked: Vec<u64>,
    rejected: Vec<u64>,
    viewer_room: Vec<usize>,
    viewer_received: Vec<u64>,
    slow_deliveries: u64,
    history_lines: u64,
    notices: BTreeMap<String, u64>,
    reconnects: u64,
    disconnected: BTreeMap<String, u64>,
    joined: u64,
    failed: u64,
    failure_samples: Vec<String>,
    stopping: bool,
}

#[derive(Debug)]
struct Shared {
    origin: Instant,
    run: u32,
    scenario: Scenario,
    target: Target,
    rooms: Vec<String>,
    state: RefCell<State>,
    start: watch::Receiver<Option<u64>>,
    stop: watch::Receiver<bool>,
    connect_limit: Option<Semaphore>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    fn instant(&self, us: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.origin + Duration::from_micros(us))
    }
}

/// Options that are not part of the scenario itself.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Identifies this run's messages among any others in the rooms.
    pub run: u32,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

fn message_text(seq: u64, bytes: u32) -> String {
    let mut text = String::new();
    let mut i = seq as usize;
    while text.len() < bytes as usize {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS[i % WORDS.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    text.truncate(bytes as usize);
    text
}

/// Rooms for a run: the server's own first, then generated names.
fn pick_rooms(listed: &[String], count: u32) -> Vec<String> {
    (0..count as usize)
        .map(|i| {
            listed
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("perf_room_{i}"))
        })
        .collect()
}

/// Runs the scenario against each target in turn and compares them with
/// the first.
pub async fn run_scenario(
    scenario: &Scenario,
    targets: &[Target],
    options: &RunOptions,
) -> anyhow::Result<RunSummary> {
    scenario.validate().map_err(|e| anyhow!(e))?;
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut summaries = Vec::new();
    for target in targets {
        let local = tokio::task::LocalSet::new();
        let summary = local
            .run_until(run_target(scenario, target, options))
            .await
            .with_context(|| format!("target {}", target.name))?;
        summaries.push(summary);
    }
    let ratios = summaries
        .iter()
        .skip(1)
        .map(|t| Ratio::between(&summaries[0], t))
        .collect();
    Ok(RunSummary {
        kind: "scenario".into(),
        scenario: scenario.clone(),
        started_unix_s,
        targets: summaries,
        ratios,
    })
}

fn progress_bar(enabled: bool, len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

async fn register_senders(
    target: &Target,
    count: u32,
    progress: bool,
) -> anyhow::Result<Vec<(String, String)>> {
    let bar = progress_bar(
        progress,
        u64::from(count),
        "{prefix} registering senders [{bar:30}] {pos}/{len}",
    );
    bar.set_prefix(target.name.clone());
    let limit = Rc::new(Semaphore::new(REGISTRATIONS_IN_FLIGHT_MAX));
    let mut tasks = Vec::new();
    for i in 0..count {
        let limit = limit.clone();
        let addr = target.http;
        let bar = bar.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let _permit = limit.acquire().await?;
            let username = format!("tp_sender_{i}");
            let token = conn::register_or_login(addr, &username, SENDER_PASSWORD).await?;
            bar.inc(1);
            anyhow::Ok((username, token))
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await??);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The server's user and system CPU seconds so far, and its resident memory: summed over its processes, known
/// only if every one of them could be read.
fn server_figures(target: &Target) -> (Option<(f64, f64)>, Option<u64>) {
    if target.pids.is_empty() {
        return (None, None);
    }
    let cpu = target
        .pids
        .iter()
        .map(|&pid| conn::proc_cpu_times_s(pid))
        .try_fold((0.0, 0.0), |(user, system), times| {
            times.map(|(u, s)| (user + u, system + s))
        });
    let rss = target
        .pids
        .iter()
        .map(|&pid| conn::proc_rss_bytes(pid))
        .sum::<Option<u64>>();
    (cpu, rss)
}

fn log_len(target: &Target) -> Option<u64> {
    let path = target.log.as_ref()?;
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// Stall-detector reports the server logged since `from` bytes into its log.
fn stalls_since(target: &Target, from: Option<u64>) -> Stalls {
    let (Some(path), Some(from)) = (target.log.as_ref(), from) else {
        return Stalls::default();
    };
    let Ok(bytes) = std::fs::read(path) else {
        return Stalls::default();
    };
    scan_stalls(&String::from_utf8_lossy(
        bytes.get(from as usize..).unwrap_or(&[]),
    ))
}

#[derive(Debug, Default, PartialEq)]
struct Stalls {
    count: Option<u64>,
    ms_max: Option<f64>,
    samples: Vec<String>,
}

/// Counts glommio stall-detector lines (`[stall-detector -- executor N]
/// task queue Q went over-budget: 12.3ms ...`) and finds the worst overage.
/// The backtrace lines that follow each report are not counted.
fn scan_stalls(log: &str) -> Stalls {
    let mut stalls = Stalls {
        count: Some(0),
        ..Stalls::default()
    };
    for line in log.lines().filter(|l| l.contains("stall-detector")) {
        *stalls.count.get_or_insert(0) += 1;
        let overage_ms = line
            .split_once("over-budget:")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(parse_duration_ms);
        if let Some(ms) = overage_ms {
            stalls.ms_max = Some(stalls.ms_max.map_or(ms, |m: f64| m.max(ms)));
        }
        if stalls.samples.len() < 3 {
            let short = line.split(" Backtrace").next().unwrap_or(line);
            stalls.samples.push(short.chars().take(240).collect());
        }
    }
    stalls
}

/// Parses a Debug-printed `Duration` such as `591.7ms`, `12µs` or `1.2s`.
fn parse_duration_ms(text: &str) -> Option<f64> {
    let text = text.trim_end_matches(['.', ',', ')']);
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let value: f64 = text[..split].parse().ok()?;
    match &text[split..] {
        "ns" => Some(value / 1e6),
        "µs" | "us" => Some(value / 1e3),
        "ms" => Some(value),
        "s" => Some(value * 1e3),
        _ => None,
    }
}

async fn run_target(
    scenario: &Scenario,
    target: &Target,
    options: &RunOptions,
) -> anyhow::Result<TargetSummary> {
    if !target.viewers.is_empty() && scenario.transport != Transport::Ws {
        bail!(
            "target {}: viewers= addresses are HTTP (WebSocket) ones; use --transport ws",
            target.name
        );
    }
    let listed = conn::list_rooms(target.http).await?;
    let rooms = pick_rooms(&listed, scenario.rooms);
    let senders = register_senders(target, scenario.senders(), options.progress).await?;

    let (start_tx, start_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let fast_viewers = (scenario.rooms * scenario.viewers_per_room) as usize;
    let room_count = rooms.len();
    let shared = Rc::new(Shared {
        origin: Instant::now(),
        run: options.run,
        scenario: scenario.clone(),
        target: target.clone(),
        rooms,
        state: RefCell::new(State {
            rec: Recorder::new(0),
            sent: vec![0; room_count],
            acked: vec![0; room_count],
            rejected: vec![0; room_count],
            viewer_room: Vec::with_capacity(fast_viewers),
            viewer_received: vec![0; fast_viewers],
            slow_deliveries: 0,
            history_lines: 0,
            notices: BTreeMap::new(),
            reconnects: 0,
            disconnected: BTreeMap::new(),
            joined: 0,
            failed: 0,
            failure_samples: Vec::new(),
            stopping: false,
        }),
        start: start_rx,
        stop: stop_rx,
        connect_limit: (scenario.connect_concurrency > 0)
            .then(|| Semaphore::new(scenario.connect_concurrency as usize)),
    });

    // Viewers first, so that every message sent has its whole audience.
    let total = u64::from(scenario.viewers() + scenario.senders());
    let bar = progress_bar(
        options.progress,
        total,
        "{prefix} connecting [{bar:30}] {pos}/{len} {msg}",
    );
    bar.set_prefix(target.name.clone());
    let connect_began = Instant::now();
    let mut tasks = Vec::new();
    let mut viewer_index = 0u64;
    for room in 0..room_count {
        for _ in 0..scenario.viewers_per_room {
            let slot = {
                let mut st = shared.state.borrow_mut();
                st.viewer_room.push(room);
                st.viewer_room.len() - 1
            };
            viewer_index += 1;
            tasks.push(tokio::task::spawn_local(connection(
                shared.clone(),
                room,
                Role::Viewer { slot },
                None,
                viewer_index,
            )));
        }
        for _ in 0..scenario.slow_viewers_per_room {
            viewer_index += 1;
            tasks.push(tokio::task::spawn_local(connection(
                shared.clone(),
                room,
                Role::SlowViewer,
                None,
                viewer_index,
            )));
        }
    }
    wait_connected(&shared, u64::from(scenario.viewers()), &bar).await;
    for (i, credentials) in senders.into_iter().enumerate() {
        let room = i / scenario.senders_per_room.max(1) as usize;
        tasks.push(tokio::task::spawn_local(connection(
            shared.clone(),
            room,
            Role::Sender { sender: i as u32 },
            Some(credentials),
            i as u64,
        )));
    }
    wait_connected(&shared, total, &bar).await;
    let connect_s = connect_began.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // Send.
    let start_us = shared.now_us() + START_DELAY_MS * 1000;
    let end_us = start_us + scenario.duration_ms * 1000;
    shared.state.borrow_mut().rec.set_start(start_us);
    let log_from = log_len(target);
    let (cpu_before, rss_before) = server_figures(target);
    let loadgen_cpu_before = conn::self_cpu_s();
    let _ = start_tx.send(Some(start_us));
    let bar = progress_bar(
        options.progress,
        scenario.duration_ms,
        "{prefix} {elapsed_precise} [{bar:30}] {msg}",
    );
    bar.set_prefix(format!("{} {}", target.name, scenario.name));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let now = shared.now_us();
        if now >= end_us {
            break;
        }
        bar.set_position(now.saturating_sub(start_us) / 1000);
        let st = shared.state.borrow();
        let elapsed_s = (now.saturating_sub(start_us) as f64 / 1e6).max(1e-3);
        bar.set_message(format!(
            "sent {} delivered {} ({:.0}/s) p99 {:.1} ms",
            st.sent.iter().sum::<u64>(),
            st.rec.latency.len(),
            st.rec.latency.len() as f64 / elapsed_s,
            st.rec.latency.value_at_quantile(0.99) as f64 / 1000.0
        ));
    }
    bar.finish_and_clear();

    // Drain: wait until every full-speed viewer has what it should and every
    // message is acknowledged or refused, or until the limit.
    let drain_began = Instant::now();
    let drain_deadline = drain_began + Duration::from_millis(scenario.drain_ms_max);
    while Instant::now() < drain_deadline && !drained(&shared) {
        tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
    }
    let drain_ms = drain_began.elapsed().as_millis() as u64;
    let (cpu_after, rss_after) = server_figures(target);
    let loadgen_cpu_s = conn::self_cpu_s() - loadgen_cpu_before;
    let stalls = stalls_since(target, log_from);

    shared.state.borrow_mut().stopping = true;
    let _ = stop_tx.send(true);
    let grace = tokio::time::Instant::now() + Duration::from_millis(STOP_GRACE_MS);
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(grace, task).await.is_err() {
            abort.abort();
        }
    }

    let st = shared.state.borrow();
    let accepted: Vec<u64> = st
        .sent
        .iter()
        .zip(&st.rejected)
        .map(|(s, r)| s.saturating_sub(*r))
        .collect();
    let viewers: Vec<(usize, u64)> = st
        .viewer_room
        .iter()
        .copied()
        .zip(st.viewer_received.iter().copied())
        .collect();
    let (deliveries_expected, lost, duplicates) = reconcile(&accepted, &viewers);
    let sent: u64 = st.sent.iter().sum();
    let acked: u64 = st.acked.iter().sum();
    let rejected: u64 = st.rejected.iter().sum();
    let deliveries: u64 = st.viewer_received.iter().sum();
    let send_s = scenario.duration_ms as f64 / 1000.0;
    Ok(TargetSummary {
        target: target.name.clone(),
        connect: ConnectSummary {
            attempted: total,
            ok: st.joined,
            failed: st.failed,
            failure_samples: st.failure_samples.clone(),
            time: LatencySummary::of(&st.rec.connect),
            joined_per_s: st.joined as f64 / connect_s.max(1e-6),
        },
        send_s,
        sent,
        sends_per_s: sent as f64 / send_s,
        acked,
        rejected,
        unacked: sent.saturating_sub(acked + rejected),
        deliveries_expected,
        deliveries,
        lost,
        duplicates,
        deliveries_per_s: deliveries as f64 / send_s,
        latency: LatencySummary::of(&st.rec.latency),
        latency_spectrum: spectrum(&st.rec.latency),
        ack_latency: LatencySummary::of(&st.rec.ack_latency),
        notices: st.notices.clone(),
        reconnects: st.reconnects,
        disconnected: st.disconnected.clone(),
        slow_viewer_deliveries: st.slow_deliveries,
        history_lines: st.history_lines,
        drain_ms,
        loadgen_cpu_s,
        server: ServerSummary {
            cpu_s: cpu_before
                .zip(cpu_after)
                .map(|(b, a)| (a.0 + a.1) - (b.0 + b.1)),
            cpu_system_s: cpu_before.zip(cpu_after).map(|(b, a)| a.1 - b.1),
            rss_bytes_before: rss_before,
            rss_bytes_after: rss_after,
            stalls: stalls.count,
            stall_ms_max: stalls.ms_max,
            stall_samples: stalls.samples,
        },
        timeline: st.rec.timeline(),
    })
}

fn drained(shared: &Shared) -> bool {
    let st = shared.state.borrow();
    let sent: u64 = st.sent.iter().sum();
    let settled: u64 = st.acked.iter().sum::<u64>() + st.rejected.iter().sum::<u64>();
    if settled < sent {
        return false;
    }
    st.viewer_room
        .iter()
        .zip(&st.viewer_received)
        .all(|(&room, &received)| received >= st.sent[room].saturating_sub(st.rejected[room]))
}

async fn wait_connected(shared: &Shared, count: u64, bar: &ProgressBar) {
    loop {
        let (joined, failed) = {
            let st = shared.state.borrow();
            (st.joined, st.failed)
        };
        bar.set_position(joined + failed);
        bar.set_message(format!("{failed} failed"));
        if joined + failed >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fail(shared: &Shared, reason: String) {
    let mut st = shared.state.borrow_mut();
    st.failed += 1;
    if st.failure_samples.len() < FAILURE_SAMPLES_MAX && !st.failure_samples.contains(&reason) {
        st.failure_samples.push(reason);
    }
}

/// What one received line means for the connection that got it.
enum Event {
    None,
    Joined,
    JoinRefused(String),
    Closed,
}

fn handle_line(
    shared: &Shared,
    role: Role,
    room: usize,
    joined: bool,
    text: &str,
    now_us: u64,
    replies: &mut Vec<String>,
) -> Event {
    let Some(line) = Line::parse(text) else {
        return Event::None;
    };
    let channel = &shared.rooms[room];
    match line.command {
        "PRIVMSG" => {
            if line.tag("historical") == Some("1") {
                shared.state.borrow_mut().history_lines += 1;
                return Event::None;
            }
            let Some(nonce) = line.tag("client-nonce").and_then(Nonce::decode) else {
                return Event::None;
            };
            if nonce.run != shared.run {
                return Event::None;
            }
            let mut st = shared.state.borrow_mut();
            match role {
                Role::Viewer { slot } => {
                    st.viewer_received[slot] += 1;
                    st.rec.record_delivery(now_us, nonce.sent_us);
                }
                Role::SlowViewer => st.slow_deliveries += 1,
                Role::Sender { .. } => {}
            }
        }
        "USERSTATE" => {
            if let Role::Sender { sender } = role
                && let Some(nonce) = line.tag("client-nonce").and_then(Nonce::decode)
                && nonce.run == shared.run
                && nonce.sender == sender
            {
                let mut st = shared.state.borrow_mut();
                st.acked[room] += 1;
                st.rec.record_ack(now_us, nonce.sent_us);
            }
        }
        "PING" => {
            let token = line.param(0).unwrap_or("tmi.twitch.tv");
            replies.push(format!("PONG :{token}"));
        }
        "366"
            if line
                .params
                .iter()
                .any(|p| p.trim_start_matches('#') == channel) =>
        {
            return Event::Joined;
        }
        "NOTICE" => {
            let id = line.tag("msg-id").unwrap_or("none").to_string();
            let mut st = shared.state.borrow_mut();
            *st.notices.entry(id.clone()).or_default() += 1;
            if !joined {
                return Event::JoinRefused(format!(
                    "NOTICE {id}: {}",
                    line.params.last().unwrap_or(&"")
                ));
            }
            // A NOTICE to a sender while it sends answers one of its
            // messages: the server refused it.
            if matches!(role, Role::Sender { .. }) && st.sent[room] > 0 {
                st.rejected[room] += 1;
            }
        }
        "RECONNECT" => {
            shared.state.borrow_mut().reconnects += 1;
            return Event::Closed;
        }
        _ => {}
    }
    Event::None
}

/// Drains complete lines from the connection, handling each.
fn handle_lines(
    shared: &Shared,
    conn: &mut Conn,
    role: Role,
    room: usize,
    joined: &mut bool,
) -> anyhow::Result<Option<String>> {
    let now_us = shared.now_us();
    let mut replies = Vec::new();
    let mut outcome = None;
    while let Some(bytes) = conn.next_line().map_err(|_| anyhow!("line too long"))? {
        let text = String::from_utf8_lossy(bytes);
        match handle_line(shared, role, room, *joined, &text, now_us, &mut replies) {
            Event::None => {}
            Event::Joined => *joined = true,
            Event::JoinRefused(reason) => outcome = Some(reason),
            Event::Closed => outcome = Some("server sent RECONNECT".into()),
        }
    }
    for reply in replies {
        conn.queue_line(&reply);
    }
    Ok(outcome)
}

async fn connection(
    shared: Rc<Shared>,
    room: usize,
    role: Role,
    credentials: Option<(String, String)>,
    index: u64,
) {
    let began = Instant::now();
    let permit = match &shared.connect_limit {
        Some(limit) => limit.acquire().await.ok(),
        None => None,
    };
    let deadline = shared.instant(shared.now_us() + shared.scenario.connect_timeout_ms * 1000);
    let slow = role == Role::SlowViewer;
    let recv_buffer = slow.then_some(4096);
    // Viewers go to the target's viewer addresses in turn, when it has them (the nodes of a cluster).
    let spread;
    let target = match (&role, shared.target.viewers.len()) {
        (Role::Sender { .. }, _) | (_, 0) => &shared.target,
        (_, nodes) => {
            spread = Target {
                http: shared.target.viewers[index as usize % nodes],
                ..shared.target.clone()
            };
            &spread
        }
    };
    let opened = tokio::time::timeout_at(
        deadline,
        Conn::open(target, shared.scenario.transport, recv_buffer),
    )
    .await;
    let mut conn = match opened {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return fail(&shared, format!("{e:#}")),
        Err(_) => return fail(&shared, "connect timed out".into()),
    };
    let channel = shared.rooms[room].clone();
    conn.queue_line("CAP REQ :twitch.tv/tags twitch.tv/commands");
    match &credentials {
        Some((user, token)) => {
            conn.queue_line(&format!("PASS oauth:{token}"));
            conn.queue_line(&format!("NICK {user}"));
        }
        None => conn.queue_line(&format!(
            "NICK justinfan{}",
            10_000 + u64::from(shared.run % 1000) * 100_000 + index
        )),
    }
    conn.queue_line(&format!("JOIN #{channel}"));
    if let Err(e) = conn.flush().await {
        return fail(&shared, format!("write: {e}"));
    }

    let mut joined = false;
    let mut start = shared.start.clone();
    let mut stop = shared.stop.clone();
    let mut permit = permit;
    // While sending: (next intended send, interval, end of the window), in
    // microseconds since the origin.
    let mut sending: Option<(u64, u64, u64)> = None;
    let mut started = false;
    let mut seq = 0u64;
    let rate = shared.scenario.rate_per_sender();
    let mut slow_next = tokio::time::Instant::now();
    loop {
        let read_max = if slow && joined {
            shared.scenario.slow_read_bytes as usize
        } else {
            READ_CHUNK_BYTES
        };
        let next_send = sending.map(|(next, _, _)| shared.instant(next));
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = sleep_until(deadline), if !joined => {
                return fail(&shared, "join timed out".into());
            }
            _ = start.changed(), if matches!(role, Role::Sender { .. }) && !started && rate > 0.0 => {
                started = true;
                let start_us = start.borrow().unwrap_or(0);
                let Role::Sender { sender } = role else { unreachable!() };
                let senders = f64::from(shared.scenario.senders().max(1));
                let interval_us = 1e6 / rate;
                let phase_us = interval_us * f64::from(sender) / senders;
                let end_us = start_us + shared.scenario.duration_ms * 1000;
                sending = Some((start_us + phase_us as u64, interval_us.max(1.0) as u64, end_us));
            }
            _ = async { sleep_until(next_send.unwrap_or_else(tokio::time::Instant::now)).await }, if next_send.is_some() => {
                let Some((mut next, interval, end)) = sending else { continue };
                let Role::Sender { sender } = role else { continue };
                let now = shared.now_us();
                let mut batch = 0u64;
                while next <= now && next < end {
                    let nonce = Nonce { run: shared.run, sender, seq, sent_us: next };
                    let text = message_text(seq, shared.scenario.message_bytes);
                    conn.queue_line(&format!("@client-nonce={} PRIVMSG #{channel} :{text}", nonce.encode()));
                    seq += 1;
                    batch += 1;
                    next += interval;
                }
                sending = (next < end).then_some((next, interval, end));
                if conn.flush().await.is_err() {
                    break;
                }
                let mut st = shared.state.borrow_mut();
                st.sent[room] += batch;
                let now = shared.now_us();
                for _ in 0..batch {
                    st.rec.record_send(now);
                }
            }
            _ = sleep_until(slow_next), if slow && joined => {
                slow_next = tokio::time::Instant::now() + Duration::from_millis(shared.scenario.slow_read_interval_ms);
                match conn.fill(read_max).await {
                    Ok(true) => {}
                    Ok(false) | Err(_) => break,
                }
                if !matches!(handle_lines(&shared, &mut conn, role, room, &mut joined), Ok(None)) {
                    break;
                }
            }
            read = conn.fill(read_max), if !(slow && joined) => {
                match read {
                    Ok(true) => {}
                    Ok(false) => {
                        if !joined {
                            return fail(&shared, "server closed the connection before JOIN completed".into());
                        }
                        break;
                    }
                    Err(e) => {
                        if !joined {
                            return fail(&shared, format!("{e:#}"));
                        }
                        break;
                    }
                }
                let was_joined = joined;
                match handle_lines(&shared, &mut conn, role, room, &mut joined) {
                    Ok(None) => {}
                    Ok(Some(reason)) if !was_joined && !joined => return fail(&shared, reason),
                    Ok(Some(_)) | Err(_) => break,
                }
                if joined && !was_joined {
                    let mut st = shared.state.borrow_mut();
                    st.joined += 1;
                    st.rec.record_connect(began.elapsed().as_micros() as u64);
                    drop(st);
                    permit = None;
                }
                if conn.queued_bytes() > 0 && conn.flush().await.is_err() {
                    break;
                }
                // Under a flood every socket is always readable; yielding
                // after each batch keeps the timers (senders, the drain, the
                // progress bar) on time instead of behind a long run of reads.
                tokio::task::yield_now().await;
            }
        }
    }
    drop(permit);
    let mut st = shared.state.borrow_mut();
    if !st.stopping {
        *st.disconnected.entry(role.label().to_string()).or_default() += 1;
    }
}

/// Opens `connections` idle viewer connections to each target in turn and
/// reports how much the server's resident memory grew per connection.
pub async fn run_memory(
    targets: &[Target],
    connections: u64,
    transport: Transport,
    settle_ms: u64,
    progress: bool,
) -> anyhow::Result<MemorySummary> {
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut results = Vec::new();
    for target in targets {
        let local = tokio::task::LocalSet::new();
        let result = local
            .run_until(memory_target(
                target,
                connections,
                transport,
                settle_ms,
                progress,
            ))
            .await
            .with_context(|| format!("target {}", target.name))?;
        results.push(result);
    }
    let ratios = results
        .iter()
        .skip(1)
        .filter(|_| results[0].bytes_per_connection > 0.0)
        .map(|t| {
            (
                t.target.clone(),
                t.bytes_per_connection / results[0].bytes_per_connection,
            )
        })
        .collect();
    Ok(MemorySummary {
        kind: "memory".into(),
        started_unix_s,
        connections,
        joined_room: true,
        targets: results,
        ratios,
    })
}

async fn read_rss(target: &Target) -> anyhow::Result<(u64, String)> {
    if let [pid] = target.pids[..]
        && let Some(rss) = conn::proc_rss_bytes(pid)
    {
        return Ok((rss, format!("/proc/{pid}/status")));
    }
    let text = conn::metrics(target.http).await?;
    let rss = crate::http::prometheus_sum(&text, "process_resident_memory_bytes")
        .ok_or_else(|| anyhow!("no process_resident_memory_bytes in /metrics"))?;
    Ok((rss as u64, "/metrics".into()))
}

/// Connections opened at once in the memory mode.
const MEMORY_CONNECT_IN_FLIGHT_MAX: usize = 200;

/// How long the memory mode waits for one connection to finish joining.
const MEMORY_JOIN_TIMEOUT_MS: u64 = 15_000;

async fn memory_target(
    target: &Target,
    connections: u64,
    transport: Transport,
    settle_ms: u64,
    progress: bool,
) -> anyhow::Result<MemoryTarget> {
    let rooms = conn::list_rooms(target.http).await?;
    let room = rooms
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("the server lists no rooms"))?;
    tokio::time::sleep(Duration::from_millis(settle_ms)).await;
    let (rss_before, rss_source) = read_rss(target).await?;
    let bar = progress_bar(
        progress,
        connections,
        "{prefix} idle connections [{bar:30}] {pos}/{len}",
    );
    bar.set_prefix(target.name.clone());
    let limit = Rc::new(Semaphore::new(MEMORY_CONNECT_IN_FLIGHT_MAX));
    let mut tasks = Vec::new();
    for i in 0..connections {
        let limit = limit.clone();
        let target = target.clone();
        let room = room.clone();
        let bar = bar.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let _permit = limit.acquire().await?;
            let join = async {
                let mut conn = Conn::open(&target, transport, None).await?;
                conn.queue_line("CAP REQ :twitch.tv/tags twitch.tv/commands");
                conn.queue_line(&format!("NICK justinfan{}", 900_000 + i));
                conn.queue_line(&format!("JOIN #{room}"));
                conn.flush().await?;
                loop {
                    if !conn.fill(READ_CHUNK_BYTES).await? {
                        bail!("closed before JOIN completed");
                    }
                    while let Some(bytes) =
                        conn.next_line().map_err(|_| anyhow!("line too long"))?
                    {
                        let text = String::from_utf8_lossy(bytes);
                        if let Some(line) = Line::parse(&text)
                            && line.command == "366"
                        {
                            return anyhow::Ok(conn);
                        }
                    }
                }
            };
            let conn = tokio::time::timeout(Duration::from_millis(MEMORY_JOIN_TIMEOUT_MS), join)
                .await
                .map_err(|_| anyhow!("join timed out"))??;
            bar.inc(1);
            anyhow::Ok(conn)
        }));
    }
    let mut open = Vec::new();
    let mut failed = 0;
    for task in tasks {
        match task.await {
            Ok(Ok(conn)) => open.push(conn),
            _ => failed += 1,
        }
    }
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_millis(settle_ms)).await;
    let (rss_after, _) = read_rss(target).await?;
    let gauge = match conn::metrics(target.http).await {
        Ok(text) => crate::http::prometheus_sum(&text, "twitchy_connections")
            .or_else(|| crate::http::prometheus_sum(&text, "naive_connections")),
        Err(_) => None,
    };
    let open_count = open.len() as u64;
    drop(open);
    // Let the server notice the closes before the next target or exit.
    tokio::time::sleep(Duration::from_millis(settle_ms)).await;
    Ok(MemoryTarget {
        target: target.name.clone(),
        connections_requested: connections,
        connections_open: open_count,
        connect_failed: failed,
        rss_source,
        rss_bytes_before: rss_before,
        rss_bytes_after: rss_after,
        bytes_per_connection: if open_count > 0 {
            rss_after.saturating_sub(rss_before) as f64 / open_count as f64
        } else {
            0.0
        },
        server_connections_gauge: gauge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_texts_have_the_asked_length_and_vary() {
        for bytes in [1, 10, 60, 450] {
            assert_eq!(message_text(3, bytes).len(), bytes as usize);
        }
        assert_ne!(message_text(1, 60), message_text(2, 60));
        assert!(!message_text(5, 60).contains(['\r', '\n']));
    }

    #[test]
    fn finds_stall_reports_and_the_worst_overage() {
        let log = "[2026 WARN  glommio::executor::stall] [stall-detector -- executor 1] task queue default \
                   went over-budget: 15.2ms (budget: 110ms). Backtrace:    0: x\n\
                   3: glommio::executor::stall::handler\n\
                   [2026 WARN  glommio::executor::stall] [stall-detector -- executor 2] task queue default \
                   went over-budget: 591.717373ms (budget: 110ms). Backtrace: 0: y\n\
                   [2026 INFO twitchy] unrelated\n";
        let stalls = scan_stalls(log);
        assert_eq!(stalls.count, Some(2));
        assert_eq!(stalls.ms_max, Some(591.717373));
        assert_eq!(stalls.samples.len(), 2);
        assert!(stalls.samples[1].ends_with("(budget: 110ms)."));
        assert_eq!(scan_stalls("nothing here\n").count, Some(0));
        assert_eq!(parse_duration_ms("1.5s"), Some(1500.0));
        assert_eq!(parse_duration_ms("250µs"), Some(0.25));
        assert_eq!(parse_duration_ms("abc"), None);
    }

    #[test]
    fn rooms_come_from_the_server_first() {
        let listed = vec!["lobby".to_string(), "games".to_string()];
        assert_eq!(pick_rooms(&listed, 1), vec!["lobby"]);
        assert_eq!(
            pick_rooms(&listed, 3),
            vec!["lobby", "games", "perf_room_2"]
        );
    }
}
