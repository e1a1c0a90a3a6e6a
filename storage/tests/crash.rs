//! Crash test: a child process writes acknowledged messages at full speed through the coalescer into the
//! embedded store, printing each acknowledged id, and is killed with SIGKILL at a random moment. After every kill
//! the store is reopened (recovery) and every acknowledged message must be there exactly once, intact.
//!
//! Then a few rounds of the same with a child that writes and deletes settings and deletes messages, printing
//! each change once it returned `Ok`: after every kill, each printed setting has its value, each printed
//! deletion holds, and no deleted message is read back.
//!
//! This file is its own test harness (`harness = false`): run without `TWITCHY_CRASH_CHILD_DIR` it is the parent
//! (the test); with it, it is the child writer (`TWITCHY_CRASH_KIND=settings` for the settings child).
//! `TWITCHY_CRASH_ROUNDS` (default 20; the settings rounds are a quarter of it, at least one) and
//! `TWITCHY_CRASH_SEED` (default: from the clock, always printed) control the run.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use twitchy_storage::{
    CoalescerConfig, EmbeddedStore, MessageId, MessageIdGen, MessageRecord, StorageError,
    StorageService, Store,
};

const CHILD_ENV: &str = "TWITCHY_CRASH_CHILD_DIR";
const KIND_ENV: &str = "TWITCHY_CRASH_KIND";
/// Messages the settings child appends, to delete them one by one.
const DELETABLE_MESSAGES: u64 = 2000;
const ROUND_ENV: &str = "TWITCHY_CRASH_ROUND";
const ROOMS: [&str; 4] = ["forsen", "xqc", "pokimane", "lirik"];
/// Producer threads in the child, each with its own id generator (shard).
const PRODUCERS: u16 = 2;
/// Acknowledgements a producer waits on at once.
const IN_FLIGHT_MAX: usize = 4096;

fn record(id: MessageId, shard: u16, n: u64) -> MessageRecord {
    MessageRecord {
        id,
        room: ROOMS[(n % ROOMS.len() as u64) as usize].to_owned(),
        user_id: u64::from(shard) << 32 | n,
        login: format!("writer{shard}"),
        display_name: format!("Writer{shard}"),
        color: "#8A2BE2".into(),
        badges: String::new(),
        text: format!("crash test message {id} no cap"),
        original: format!("crash test message {id}"),
        styled_by: "local".into(),
        client_nonce: String::new(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn child(dir: &str) {
    let round: u16 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.as_ref()).unwrap());
    let service = StorageService::start(store, CoalescerConfig::default());
    let producers: Vec<std::thread::JoinHandle<()>> = (0..PRODUCERS)
        .map(|p| {
            let h = service.handle();
            std::thread::spawn(move || {
                let shard = round * PRODUCERS + p;
                let mut ids = MessageIdGen::new(0, shard);
                let mut pending: VecDeque<(MessageId, twitchy_storage::AppendAck)> =
                    VecDeque::new();
                let mut out = String::new();
                let mut n = 0u64;
                loop {
                    while pending.len() < IN_FLIGHT_MAX {
                        let id = ids.next_id(now_ms());
                        match h.append(record(id, shard, n)) {
                            Ok(ack) => pending.push_back((id, ack)),
                            Err(StorageError::Busy) => break,
                            Err(e) => panic!("append: {e}"),
                        }
                        n += 1;
                    }
                    // Print only after the acknowledgement resolved Ok: a printed id is an acknowledged one.
                    for _ in 0..pending.len().min(256) {
                        let (id, ack) = pending.pop_front().unwrap();
                        futures_lite::future::block_on(ack).unwrap();
                        out.push_str(&format!("{id}\n"));
                    }
                    std::io::stdout().lock().write_all(out.as_bytes()).unwrap();
                    out.clear();
                }
            })
        })
        .collect();
    // The child writes until the parent kills it.
    let _running = (service, producers);
    loop {
        std::thread::park();
    }
}

/// The room's messages with id `>= since`, newest first, read a page at a time as a client would page back.
fn read_since(store: &EmbeddedStore, room: &str, since: MessageId) -> Vec<MessageRecord> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = store.messages_before(room, before, 10_000).unwrap();
        let Some(last) = page.last() else { return out };
        before = Some(last.id);
        let done = last.id < since;
        out.extend(page.into_iter().filter(|m| m.id >= since));
        if done {
            return out;
        }
    }
}

/// A small deterministic generator (PCG-style LCG) so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn parent() {
    let rounds: u16 = std::env::var("TWITCHY_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("TWITCHY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(now_ms);
    println!("crash test: {rounds} rounds, seed {seed} (set TWITCHY_CRASH_SEED={seed} to replay)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut acked: HashMap<MessageId, ()> = HashMap::new();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut ids = Vec::new();
            let mut first_tx = Some(first_tx);
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                // A line cut by the kill has no newline and fails to parse as a full id; it is not counted.
                if let Some(id) = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|s| s.parse::<MessageId>().ok())
                {
                    ids.push(id);
                    if let Some(tx) = first_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
            ids
        });
        // Kill at a random point once the child is writing.
        let spawned = Instant::now();
        first_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the child acknowledged nothing within 30 s");
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        // SAFETY: plain syscall on the pid of a child this test started and has not yet reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill failed");
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was killed, not finished");
        let round_ids = reader.join().unwrap();
        let new = round_ids.len();
        for &id in &round_ids {
            assert!(
                acked.insert(id, ()).is_none(),
                "an id was acknowledged twice: {id}"
            );
        }

        let ran_ms = spawned.elapsed().as_millis();
        // Recover and check: every acknowledged message present, exactly once, intact. Each round checks the
        // messages written since the round began (ids are time-ordered, so they are the newest); the last round
        // checks everything ever acknowledged.
        let verify = Instant::now();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let last_round = round + 1 == rounds;
        let since = if last_round {
            MessageId(0)
        } else {
            round_ids.iter().min().copied().unwrap_or(MessageId::MAX)
        };
        let mut stored = 0usize;
        let mut found = 0usize;
        for room in ROOMS {
            let messages = read_since(&store, room, since);
            assert!(
                messages.windows(2).all(|w| w[0].id > w[1].id),
                "unique and ordered"
            );
            for m in &messages {
                assert_eq!(m.room, room);
                assert_eq!(
                    m.text,
                    format!("crash test message {} no cap", m.id),
                    "intact record"
                );
                assert_eq!(m.original, format!("crash test message {}", m.id));
                if acked.contains_key(&m.id) {
                    found += 1;
                }
            }
            stored += messages.len();
        }
        let expected = if last_round {
            acked.len()
        } else {
            round_ids.len()
        };
        assert_eq!(
            found, expected,
            "round {round}: acknowledged messages lost after SIGKILL (seed {seed})"
        );
        println!(
            "round {round:2}: +{new:6} acked, {:8} acked total, {stored:8} read back, all acknowledged present \
             (child ran {ran_ms} ms, recovery and check {} ms)",
            acked.len(),
            verify.elapsed().as_millis()
        );
    }
    settings_parent((rounds / 4).max(1), &mut rng, dir.path());
    println!(
        "crash test passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The settings child: appends messages to delete, then loops: put a setting, every third step delete an
/// earlier one, every other step delete a message; each change is printed after it returned `Ok`.
fn settings_child(dir: &str) {
    let round: u16 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let store = EmbeddedStore::open(dir.as_ref()).unwrap();
    // Shards past those of the message rounds, so that no id repeats.
    let shard = 500 + round;
    let mut ids = MessageIdGen::new(0, shard);
    let doomed: Vec<MessageRecord> = (0..DELETABLE_MESSAGES)
        .map(|n| record(ids.next_id(now_ms()), shard, n))
        .collect();
    store.append_messages(&doomed).unwrap();
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        store
            .put_setting(&setting_key(round, n), &setting_value(n))
            .unwrap();
        writeln!(out, "put {n}").unwrap();
        if n % 3 == 2 {
            store.delete_setting(&setting_key(round, n - 2)).unwrap();
            writeln!(out, "del {}", n - 2).unwrap();
        }
        if n % 2 == 1 && n / 2 < DELETABLE_MESSAGES {
            let m = &doomed[(n / 2) as usize];
            assert!(store.delete_message(&m.room, m.id).unwrap());
            writeln!(out, "msg {} {}", m.room, m.id).unwrap();
        }
        out.flush().unwrap();
    }
}

fn setting_key(round: u16, n: u64) -> String {
    format!("crash/round{round}/key{n:08}")
}

fn setting_value(n: u64) -> Vec<u8> {
    format!(
        "{{\"n\":{n},\"pad\":\"{}\"}}",
        "x".repeat((n % 200) as usize)
    )
    .into_bytes()
}

fn settings_parent(rounds: u16, rng: &mut Rng, dir: &std::path::Path) {
    let exe = std::env::current_exe().unwrap();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, dir)
            .env(KIND_ENV, "settings")
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut text = Vec::new();
            let mut first_tx = Some(first_tx);
            let mut reader = BufReader::new(stdout);
            while reader.read_until(b'\n', &mut text).unwrap_or(0) > 0 {
                if let Some(tx) = first_tx.take() {
                    let _ = tx.send(());
                }
            }
            text
        });
        first_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the settings child changed nothing within 30 s");
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        // SAFETY: plain syscall on the pid of a child this test started and has not yet reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill failed");
        assert!(!child.wait().unwrap().success());
        // A last line cut by the kill has no newline; it is dropped (a cut "put 12" would read as "put 1").
        let text = String::from_utf8(reader.join().unwrap()).unwrap();
        let mut lines: Vec<&str> = text.split('\n').collect();
        lines.pop();

        let store = EmbeddedStore::open(dir).unwrap();
        let mut present = std::collections::BTreeMap::new();
        let mut deleted_messages = Vec::new();
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["put", n] => {
                    if let Ok(n) = n.parse::<u64>() {
                        present.insert(n, true);
                    }
                }
                ["del", n] => {
                    if let Ok(n) = n.parse::<u64>() {
                        present.insert(n, false);
                    }
                }
                ["msg", room, id] => {
                    if let Ok(id) = id.parse::<MessageId>() {
                        deleted_messages.push(((*room).to_owned(), id));
                    }
                }
                _ => {}
            }
        }
        let stored: HashMap<String, Vec<u8>> = store
            .settings(&format!("crash/round{round}/"), usize::MAX)
            .unwrap()
            .into_iter()
            .collect();
        let last_put = present.keys().max().copied().unwrap_or(0);
        for (&n, &kept) in &present {
            let key = setting_key(round, n);
            // Key n (n % 3 == 0) is deleted right after "put n+2" is printed: if the kill came between that
            // deletion and its line, the key is gone without a "del" line, and either state is correct.
            let maybe_deleted = n % 3 == 0 && last_put >= n + 2;
            if kept && !maybe_deleted {
                assert_eq!(
                    stored.get(&key),
                    Some(&setting_value(n)),
                    "settings round {round}: {key} was written and is lost after SIGKILL"
                );
            } else if !kept {
                assert!(
                    !stored.contains_key(&key),
                    "settings round {round}: {key} was deleted and is back after SIGKILL"
                );
            }
        }
        for (room, id) in &deleted_messages {
            let history = read_since(&store, room, *id);
            assert!(
                history.iter().all(|m| m.id != *id),
                "settings round {round}: deleted message {id} is back after SIGKILL"
            );
        }
        println!(
            "settings round {round}: {} settings changes and {} message deletions acknowledged, all held",
            present.len(),
            deleted_messages.len()
        );
    }
}

fn main() {
    match std::env::var(CHILD_ENV) {
        Ok(dir) if std::env::var(KIND_ENV).as_deref() == Ok("settings") => settings_child(&dir),
        Ok(dir) => child(&dir),
        Err(_) => parent(),
    }
}
