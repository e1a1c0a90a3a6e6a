//! The coalescing writer over stores that are slow, failing or panicking on purpose.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{block_on, messages};
use twitchy_storage::{
    AccountRecord, AppendOutcome, CoalescerConfig, Health, MessageId, MessageRecord, StorageError,
    StorageService, Store, TokenRecord,
};

/// An in-memory store that records every batch it was given. Accounts and tokens are not kept (creation succeeds,
/// lookups find nothing); deletions, settings and renames are, so the handle's new requests can be checked.
#[derive(Default)]
struct MemoryStore {
    messages: Mutex<Vec<MessageRecord>>,
    batch_sizes: Mutex<Vec<usize>>,
    deleted: Mutex<HashSet<MessageId>>,
    settings: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Logins renamed so far, old to new; an account exists for any login named `exists_*`.
    renamed: Mutex<Vec<(String, String)>>,
    /// Recognise resends (same room, user, nonce and text) as a cluster store does, instead of the trait's
    /// default of storing everything.
    recognise_resends: bool,
    /// Answer one outcome too few (a broken store).
    short_outcomes: bool,
}

impl Store for MemoryStore {
    fn append_messages(&self, batch: &[MessageRecord]) -> twitchy_storage::Result<()> {
        self.batch_sizes.lock().unwrap().push(batch.len());
        self.messages.lock().unwrap().extend_from_slice(batch);
        Ok(())
    }
    fn append_messages_with_outcomes(
        &self,
        batch: &[MessageRecord],
    ) -> twitchy_storage::Result<Vec<AppendOutcome>> {
        if !self.recognise_resends {
            self.append_messages(batch)?;
            let mut outcomes = vec![AppendOutcome::Stored; batch.len()];
            if self.short_outcomes {
                outcomes.pop();
            }
            return Ok(outcomes);
        }
        self.batch_sizes.lock().unwrap().push(batch.len());
        let mut messages = self.messages.lock().unwrap();
        let mut outcomes = Vec::with_capacity(batch.len());
        for record in batch {
            let earlier = messages.iter().find(|m| {
                !record.client_nonce.is_empty()
                    && (&m.room, m.user_id, &m.client_nonce, &m.original)
                        == (
                            &record.room,
                            record.user_id,
                            &record.client_nonce,
                            &record.original,
                        )
            });
            match earlier {
                Some(m) => outcomes.push(AppendOutcome::Duplicate { original: m.id }),
                None => {
                    messages.push(record.clone());
                    outcomes.push(AppendOutcome::Stored);
                }
            }
        }
        Ok(outcomes)
    }
    fn recent_messages(
        &self,
        room: &str,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<MessageRecord>> {
        let all: Vec<_> = self
            .messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.room == room && !self.deleted.lock().unwrap().contains(&m.id))
            .cloned()
            .collect();
        Ok(all[all.len().saturating_sub(limit)..].to_vec())
    }
    fn messages_before(
        &self,
        room: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<MessageRecord>> {
        let mut all: Vec<_> = self
            .messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| {
                m.room == room
                    && before.is_none_or(|b| m.id < b)
                    && !self.deleted.lock().unwrap().contains(&m.id)
            })
            .cloned()
            .collect();
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }
    fn messages_after(
        &self,
        room: &str,
        after: MessageId,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<MessageRecord>> {
        Ok(self
            .messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| {
                m.room == room && m.id > after && !self.deleted.lock().unwrap().contains(&m.id)
            })
            .take(limit)
            .cloned()
            .collect())
    }
    fn create_account(&self, _: &AccountRecord) -> twitchy_storage::Result<()> {
        Ok(())
    }
    fn account(&self, _: &str) -> twitchy_storage::Result<Option<AccountRecord>> {
        Ok(None)
    }
    fn put_token(&self, _: [u8; 32], _: &TokenRecord, _: usize) -> twitchy_storage::Result<()> {
        Ok(())
    }
    fn token(&self, _: [u8; 32]) -> twitchy_storage::Result<Option<TokenRecord>> {
        Ok(None)
    }
    fn revoke_token(&self, _: [u8; 32]) -> twitchy_storage::Result<bool> {
        Ok(false)
    }
    fn rename_account(&self, old: &str, new: &str) -> twitchy_storage::Result<AccountRecord> {
        if !old.starts_with("exists_") {
            return Err(StorageError::NotFound(old.into()));
        }
        if new.starts_with("exists_") {
            return Err(StorageError::AlreadyExists);
        }
        self.renamed.lock().unwrap().push((old.into(), new.into()));
        Ok(AccountRecord {
            login: new.into(),
            user_id: 7,
            password_hash: String::new(),
            color: String::new(),
            created_unix_ms: 0,
        })
    }
    fn delete_message(&self, room: &str, id: MessageId) -> twitchy_storage::Result<bool> {
        let exists = self
            .messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.room == room && m.id == id);
        if exists {
            self.deleted.lock().unwrap().insert(id);
        }
        Ok(exists)
    }
    fn put_setting(&self, key: &str, value: &[u8]) -> twitchy_storage::Result<()> {
        self.settings
            .lock()
            .unwrap()
            .insert(key.into(), value.to_vec());
        Ok(())
    }
    fn delete_setting(&self, key: &str) -> twitchy_storage::Result<()> {
        self.settings.lock().unwrap().remove(key);
        Ok(())
    }
    fn settings(
        &self,
        prefix: &str,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .settings
            .lock()
            .unwrap()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// Wraps a store; `append_messages` announces that it was entered, then waits until the gate is opened.
struct GatedStore {
    inner: MemoryStore,
    /// Once the gate opens, fail instead of writing.
    fail_after_gate: std::sync::atomic::AtomicBool,
    open: Mutex<bool>,
    opened: Condvar,
    entered: flume::Sender<usize>,
}

impl GatedStore {
    fn new() -> (Arc<GatedStore>, flume::Receiver<usize>) {
        let (entered, rx) = flume::unbounded();
        let store = GatedStore {
            inner: MemoryStore::default(),
            fail_after_gate: Default::default(),
            open: Mutex::new(false),
            opened: Condvar::new(),
            entered,
        };
        (Arc::new(store), rx)
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl Store for GatedStore {
    fn append_messages(&self, batch: &[MessageRecord]) -> twitchy_storage::Result<()> {
        let _ = self.entered.send(batch.len());
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        drop(open);
        if self.fail_after_gate.load(Ordering::SeqCst) {
            return Err(StorageError::Io("injected write failure".into()));
        }
        self.inner.append_messages(batch)
    }
    fn recent_messages(
        &self,
        room: &str,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<MessageRecord>> {
        self.inner.recent_messages(room, limit)
    }
    fn messages_before(
        &self,
        room: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<MessageRecord>> {
        self.inner.messages_before(room, before, limit)
    }
    fn messages_after(
        &self,
        room: &str,
        after: MessageId,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<MessageRecord>> {
        self.inner.messages_after(room, after, limit)
    }
    fn create_account(&self, a: &AccountRecord) -> twitchy_storage::Result<()> {
        self.inner.create_account(a)
    }
    fn account(&self, l: &str) -> twitchy_storage::Result<Option<AccountRecord>> {
        self.inner.account(l)
    }
    fn put_token(&self, t: [u8; 32], r: &TokenRecord, max: usize) -> twitchy_storage::Result<()> {
        self.inner.put_token(t, r, max)
    }
    fn token(&self, t: [u8; 32]) -> twitchy_storage::Result<Option<TokenRecord>> {
        self.inner.token(t)
    }
    fn revoke_token(&self, t: [u8; 32]) -> twitchy_storage::Result<bool> {
        self.inner.revoke_token(t)
    }
    fn rename_account(&self, old: &str, new: &str) -> twitchy_storage::Result<AccountRecord> {
        self.inner.rename_account(old, new)
    }
    fn delete_message(&self, room: &str, id: MessageId) -> twitchy_storage::Result<bool> {
        self.inner.delete_message(room, id)
    }
    fn put_setting(&self, key: &str, value: &[u8]) -> twitchy_storage::Result<()> {
        self.inner.put_setting(key, value)
    }
    fn delete_setting(&self, key: &str) -> twitchy_storage::Result<()> {
        self.inner.delete_setting(key)
    }
    fn settings(
        &self,
        prefix: &str,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<(String, Vec<u8>)>> {
        self.inner.settings(prefix, limit)
    }
}

/// Fails every batch from the `fail_from`-th on (counting from zero), the way a full disk or a poisoned journal
/// does; reads panic when `panic_reads` is set.
struct FailingStore {
    inner: MemoryStore,
    batches: AtomicUsize,
    fail_from: usize,
    /// Space was freed: writes and recovery probes succeed again.
    healed: std::sync::atomic::AtomicBool,
    recover_calls: AtomicUsize,
    panic_writes: bool,
    panic_reads: bool,
}

impl FailingStore {
    fn new(fail_from: usize) -> FailingStore {
        FailingStore {
            inner: MemoryStore::default(),
            batches: AtomicUsize::new(0),
            fail_from,
            healed: Default::default(),
            recover_calls: AtomicUsize::new(0),
            panic_writes: false,
            panic_reads: false,
        }
    }
}

impl Store for FailingStore {
    fn append_messages(&self, batch: &[MessageRecord]) -> twitchy_storage::Result<()> {
        if self.batches.fetch_add(1, Ordering::SeqCst) >= self.fail_from
            && !self.healed.load(Ordering::SeqCst)
        {
            if self.panic_writes {
                panic!("injected panic in append_messages");
            }
            return Err(StorageError::Io(
                "No space left on device (os error 28)".into(),
            ));
        }
        self.inner.append_messages(batch)
    }
    fn recent_messages(
        &self,
        room: &str,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<MessageRecord>> {
        if self.panic_reads && room == "boom" {
            panic!("injected panic in recent_messages");
        }
        self.inner.recent_messages(room, limit)
    }
    fn messages_before(
        &self,
        room: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<MessageRecord>> {
        self.inner.messages_before(room, before, limit)
    }
    fn messages_after(
        &self,
        room: &str,
        after: MessageId,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<MessageRecord>> {
        self.inner.messages_after(room, after, limit)
    }
    fn create_account(&self, a: &AccountRecord) -> twitchy_storage::Result<()> {
        self.inner.create_account(a)
    }
    fn account(&self, l: &str) -> twitchy_storage::Result<Option<AccountRecord>> {
        self.inner.account(l)
    }
    fn put_token(&self, t: [u8; 32], r: &TokenRecord, max: usize) -> twitchy_storage::Result<()> {
        self.inner.put_token(t, r, max)
    }
    fn token(&self, t: [u8; 32]) -> twitchy_storage::Result<Option<TokenRecord>> {
        self.inner.token(t)
    }
    fn revoke_token(&self, t: [u8; 32]) -> twitchy_storage::Result<bool> {
        self.inner.revoke_token(t)
    }
    fn rename_account(&self, old: &str, new: &str) -> twitchy_storage::Result<AccountRecord> {
        self.inner.rename_account(old, new)
    }
    fn delete_message(&self, room: &str, id: MessageId) -> twitchy_storage::Result<bool> {
        self.inner.delete_message(room, id)
    }
    fn put_setting(&self, key: &str, value: &[u8]) -> twitchy_storage::Result<()> {
        self.inner.put_setting(key, value)
    }
    fn delete_setting(&self, key: &str) -> twitchy_storage::Result<()> {
        self.inner.delete_setting(key)
    }
    fn settings(
        &self,
        prefix: &str,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<(String, Vec<u8>)>> {
        self.inner.settings(prefix, limit)
    }
    fn recover(&self) -> twitchy_storage::Result<()> {
        self.recover_calls.fetch_add(1, Ordering::SeqCst);
        if self.healed.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(StorageError::Io(
                "No space left on device (os error 28)".into(),
            ))
        }
    }
}

/// Polls `f` until it holds, for at most ten seconds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn a_full_queue_answers_busy_and_memory_stays_bounded() {
    let (store, entered) = GatedStore::new();
    let config = CoalescerConfig {
        queue_messages_max: 8,
        batch_wait_us_max: 0,
        ..CoalescerConfig::default()
    };
    let service = StorageService::start(store.clone(), config);
    let h = service.handle();
    let msgs = messages("forsen", 0, 1_700_000_000_000, 20);

    let mut acks = vec![h.append(msgs[0].clone()).unwrap()];
    // The writer now holds message 0 inside the (stalled) store, so the queue has all 8 slots free.
    assert_eq!(entered.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
    for m in &msgs[1..9] {
        acks.push(h.append(m.clone()).unwrap());
    }
    assert_eq!(h.queue_depth(), 8);
    for m in &msgs[9..12] {
        assert_eq!(h.append(m.clone()).unwrap_err(), StorageError::Busy);
    }
    let text = h.metrics_text();
    assert_eq!(metric(&text, "twitchy_storage_busy_rejections_total"), 3.0);
    assert_eq!(metric(&text, "twitchy_storage_queue_depth"), 8.0);

    store.open();
    for ack in acks {
        block_on(ack).unwrap();
    }
    // Rejected messages were not written; accepted ones were, in order.
    assert_eq!(*store.inner.messages.lock().unwrap(), msgs[..9].to_vec());
    // With room again, appends are accepted.
    block_on(h.append(msgs[12].clone()).unwrap()).unwrap();
    service.shutdown().unwrap();
}

#[test]
fn batches_close_on_size_bytes_and_time() {
    // Count limit: 1 message stalls the writer, 25 queue up, then drain as 10 + 10 + 5 (the last closed by the
    // time window).
    let (store, entered) = GatedStore::new();
    let config = CoalescerConfig {
        batch_messages_max: 10,
        batch_wait_us_max: 50_000,
        ..CoalescerConfig::default()
    };
    let service = StorageService::start(store.clone(), config);
    let h = service.handle();
    let msgs = messages("forsen", 0, 1_700_000_000_000, 26);
    let mut acks = vec![h.append(msgs[0].clone()).unwrap()];
    assert_eq!(entered.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
    acks.extend(msgs[1..].iter().map(|m| h.append(m.clone()).unwrap()));
    store.open();
    for ack in acks {
        block_on(ack).unwrap();
    }
    assert_eq!(*store.inner.batch_sizes.lock().unwrap(), vec![1, 10, 10, 5]);
    let text = h.metrics_text();
    assert_eq!(metric(&text, "twitchy_storage_batches_total"), 4.0);
    assert_eq!(metric(&text, "twitchy_storage_messages_total"), 26.0);
    assert_eq!(
        metric(&text, "twitchy_storage_batch_messages_bucket{le=\"1\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "twitchy_storage_batch_messages_bucket{le=\"8\"}"),
        2.0
    );
    assert_eq!(
        metric(&text, "twitchy_storage_batch_messages_bucket{le=\"16\"}"),
        4.0
    );
    service.shutdown().unwrap();

    // Byte limit: messages of ~1.1 KB with a 3000-byte limit make batches of three.
    let (store, entered) = GatedStore::new();
    let config = CoalescerConfig {
        batch_bytes_max: 3000,
        batch_wait_us_max: 50_000,
        ..CoalescerConfig::default()
    };
    let service = StorageService::start(store.clone(), config);
    let h = service.handle();
    let mut msgs = messages("forsen", 0, 1_700_000_000_000, 10);
    for m in &mut msgs {
        m.text = "x".repeat(1000);
    }
    let mut acks = vec![h.append(msgs[0].clone()).unwrap()];
    assert_eq!(entered.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
    acks.extend(msgs[1..].iter().map(|m| h.append(m.clone()).unwrap()));
    store.open();
    for ack in acks {
        block_on(ack).unwrap();
    }
    assert_eq!(*store.inner.batch_sizes.lock().unwrap(), vec![1, 3, 3, 3]);
    service.shutdown().unwrap();
}

/// Waits for every acknowledgement on another thread, at most `limit`; panics if one is missing by then.
fn wait_for_acks(acks: Vec<twitchy_storage::AppendAck>, limit: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for ack in acks {
            block_on(ack).unwrap();
        }
        let _ = tx.send(());
    });
    rx.recv_timeout(limit)
        .expect("the acknowledgements did not arrive in time");
}

#[test]
fn a_full_batch_is_written_before_its_window_closes_and_shutdown_cuts_the_window_short() {
    // The writer sleeps through a batch's window; a handle wakes it once a full batch is queued. With a one-minute
    // window, the acknowledgements of a full batch can only arrive within the test's limit through that wake-up.
    let store = Arc::new(MemoryStore::default());
    let config = CoalescerConfig {
        batch_messages_max: 5,
        batch_wait_us_max: 60_000_000,
        shutdown_ms_max: 20_000,
        ..CoalescerConfig::default()
    };
    let service = StorageService::start(store.clone(), config);
    let h = service.handle();
    let msgs = messages("forsen", 0, 1_700_000_000_000, 13);
    for batch in msgs[..10].chunks(5) {
        // The first message alone, so that the writer takes it and goes to sleep with the queue empty; then the
        // four that fill the batch.
        let mut acks = vec![h.append(batch[0].clone()).unwrap()];
        std::thread::sleep(Duration::from_millis(100));
        acks.extend(batch[1..].iter().map(|m| h.append(m.clone()).unwrap()));
        wait_for_acks(acks, Duration::from_secs(20));
    }
    assert_eq!(*store.batch_sizes.lock().unwrap(), vec![5, 5]);
    // Three more wait for their window, which shutdown cuts short (within its 20-second limit, or it fails): they
    // are written and acknowledged.
    let acks: Vec<_> = msgs[10..]
        .iter()
        .map(|m| h.append(m.clone()).unwrap())
        .collect();
    service.shutdown().unwrap();
    wait_for_acks(acks, Duration::from_secs(1));
    assert_eq!(*store.batch_sizes.lock().unwrap(), vec![5, 5, 3]);
}

#[test]
fn messages_queued_while_the_writer_sleeps_through_the_window_join_that_batch() {
    // One message opens a two-second window; nine more arrive 100 ms later, while the writer sleeps. All ten are one
    // batch: what arrived during the window is taken when it closes, not left for the next one.
    let store = Arc::new(MemoryStore::default());
    let config = CoalescerConfig {
        batch_wait_us_max: 2_000_000,
        ..CoalescerConfig::default()
    };
    let service = StorageService::start(store.clone(), config);
    let h = service.handle();
    let msgs = messages("forsen", 0, 1_700_000_000_000, 10);
    let mut acks = vec![h.append(msgs[0].clone()).unwrap()];
    std::thread::sleep(Duration::from_millis(100));
    acks.extend(msgs[1..].iter().map(|m| h.append(m.clone()).unwrap()));
    wait_for_acks(acks, Duration::from_secs(30));
    assert_eq!(*store.batch_sizes.lock().unwrap(), vec![10]);
    assert_eq!(*store.messages.lock().unwrap(), msgs);
    service.shutdown().unwrap();
}

#[test]
fn shutdown_writes_everything_queued_then_refuses() {
    let (store, entered) = GatedStore::new();
    let service = StorageService::start(store.clone(), CoalescerConfig::default());
    let h = service.handle();
    let msgs = messages("forsen", 0, 1_700_000_000_000, 100);
    let mut acks = vec![h.append(msgs[0].clone()).unwrap()];
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    acks.extend(msgs[1..].iter().map(|m| h.append(m.clone()).unwrap()));

    let stopper = std::thread::spawn(move || service.shutdown());
    // Shutdown closes the handles at once but waits for the stalled batch; once the store moves, everything
    // queued is written and acknowledged.
    while block_on(h.account("x")) != Err(StorageError::Closed) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(h.append(msgs[0].clone()).unwrap_err(), StorageError::Closed);
    store.open();
    stopper.join().unwrap().unwrap();
    for ack in acks {
        block_on(ack).unwrap();
    }
    assert_eq!(
        *store.inner.messages.lock().unwrap(),
        msgs,
        "everything queued before shutdown is stored"
    );
    assert_eq!(
        block_on(h.recent_messages("forsen", 10)).unwrap_err(),
        StorageError::Closed
    );
    assert_eq!(
        block_on(h.account("alice")).unwrap_err(),
        StorageError::Closed
    );
}

#[test]
fn a_failing_store_fails_its_batches_and_keeps_what_was_acknowledged() {
    let store = Arc::new(FailingStore::new(3));
    // Batches close on size only (the window is far longer than the test), so each group of ten appends below is
    // exactly one batch however the threads are scheduled.
    let config = CoalescerConfig {
        batch_messages_max: 10,
        batch_wait_us_max: 60_000_000,
        ..CoalescerConfig::default()
    };
    let service = StorageService::start(store.clone(), config);
    let h = service.handle();
    let msgs = messages("forsen", 0, 1_700_000_000_000, 100);

    // One batch at a time, so batch boundaries are known: batches 0..3 succeed, the fourth fails, and from then on
    // appends are refused at once (nothing queued, so nothing to show or acknowledge) until the store recovers.
    let mut acked = Vec::new();
    let mut refused = 0;
    for (i, chunk) in msgs.chunks(10).enumerate() {
        let mut acks = Vec::new();
        for m in chunk {
            match h.append(m.clone()) {
                Ok(ack) => acks.push((m, ack)),
                Err(StorageError::Unavailable(reason)) => {
                    assert!(i > 3, "refused before the failure: {reason}");
                    assert!(reason.contains("No space left"), "{reason}");
                    refused += 1;
                }
                Err(e) => panic!("append {i}: {e}"),
            }
        }
        for (m, ack) in acks {
            match block_on(ack) {
                Ok(()) => acked.push(m.clone()),
                Err(e) => {
                    assert_eq!(i, 3, "batch {i} failed: {e}");
                    assert!(
                        matches!(e, StorageError::Io(ref s) if s.contains("No space left")),
                        "{e}"
                    );
                }
            }
        }
    }
    assert_eq!(
        refused, 60,
        "every append after the failed batch is refused"
    );
    assert_eq!(
        acked,
        msgs[..30].to_vec(),
        "exactly the batches before the failure were acknowledged"
    );
    assert_eq!(*store.inner.messages.lock().unwrap(), acked);
    let health = h.health();
    assert!(
        matches!(&health, Health::Unavailable(r) if r.contains("No space left")),
        "{health:?}"
    );
    assert!(!h.is_healthy());
    let text = h.metrics_text();
    assert_eq!(metric(&text, "twitchy_storage_errors_total"), 1.0);
    assert_eq!(metric(&text, "twitchy_storage_messages_total"), 30.0);
    assert_eq!(
        metric(&text, "twitchy_storage_unavailable_rejections_total"),
        60.0
    );
    assert_eq!(
        metric(&text, "twitchy_storage_healthy{state=\"unavailable\"}"),
        0.0
    );
    // Reads keep working from what was stored.
    assert_eq!(block_on(h.recent_messages("forsen", 100)).unwrap(), acked);

    // The writer keeps probing; once space is freed the store takes writes again without a restart.
    eventually("recovery probes", || {
        store.recover_calls.load(Ordering::SeqCst) >= 2
    });
    assert!(!h.is_healthy(), "still failing while the probes fail");
    store.healed.store(true, Ordering::SeqCst);
    eventually("healthy again", || h.is_healthy());
    // Ten: one whole batch, so the (long) window does not hold it back.
    let later = messages("forsen", 1, 1_800_000_000_000, 10);
    let acks: Vec<_> = later.iter().map(|m| h.append(m.clone()).unwrap()).collect();
    for ack in acks {
        block_on(ack).unwrap();
    }
    assert_eq!(
        metric(
            &h.metrics_text(),
            "twitchy_storage_healthy{state=\"healthy\"}"
        ),
        1.0
    );
    // The failed batch never shows up: only what was acknowledged is stored.
    let stored = block_on(h.messages_before("forsen", None, 1000)).unwrap();
    assert_eq!(stored.len(), 40);
    assert!(stored.iter().all(|m| !msgs[30..].contains(m)));
    service.shutdown().unwrap();
}

#[test]
fn a_batch_failing_during_shutdown_is_reported_by_shutdown() {
    let (store, entered) = GatedStore::new();
    store.fail_after_gate.store(true, Ordering::SeqCst);
    // Batches of two and a window far longer than the test: batch boundaries come only from the size limit and
    // from the stop item, never from the clock.
    let config = CoalescerConfig {
        batch_messages_max: 2,
        batch_wait_us_max: 60_000_000,
        ..CoalescerConfig::default()
    };
    let service = StorageService::start(store.clone(), config);
    let h = service.handle();
    let msgs = messages("forsen", 0, 1_700_000_000_000, 3);
    let first: Vec<_> = msgs[..2]
        .iter()
        .map(|m| h.append(m.clone()).unwrap())
        .collect();
    assert_eq!(entered.recv_timeout(Duration::from_secs(10)).unwrap(), 2);
    let last = h.append(msgs[2].clone()).unwrap();
    let stopper = std::thread::spawn(move || service.shutdown());
    // Wait until shutdown has closed the handle and queued its stop item behind the last message.
    while block_on(h.account("x")) != Err(StorageError::Closed) || h.queue_depth() < 2 {
        std::thread::sleep(Duration::from_millis(1));
    }
    store.open();
    assert!(
        matches!(stopper.join().unwrap(), Err(StorageError::Io(_))),
        "the drain's failure is reported"
    );
    for ack in first {
        assert!(matches!(block_on(ack), Err(StorageError::Io(_))));
    }
    assert!(matches!(block_on(last), Err(StorageError::Io(_))));
    assert!(store.inner.messages.lock().unwrap().is_empty());
}

#[test]
fn a_panicking_store_fails_acks_without_taking_the_service_down() {
    let store = Arc::new(FailingStore {
        panic_writes: true,
        panic_reads: true,
        ..FailingStore::new(1)
    });
    let service = StorageService::start(
        store.clone(),
        CoalescerConfig {
            read_threads: 1,
            ..CoalescerConfig::default()
        },
    );
    let h = service.handle();
    let msgs = messages("forsen", 0, 1_700_000_000_000, 3);
    block_on(h.append(msgs[0].clone()).unwrap()).unwrap();
    assert!(matches!(
        block_on(h.append(msgs[1].clone()).unwrap()),
        Err(StorageError::Io(_))
    ));
    // After a panic the store's state is unknown: nothing more is accepted, the store is not called again, and the
    // health says the process must be restarted.
    assert!(matches!(
        h.append(msgs[2].clone()),
        Err(StorageError::Unavailable(_))
    ));
    assert!(matches!(h.health(), Health::Failed(_)), "{:?}", h.health());
    assert_eq!(store.batches.load(Ordering::SeqCst), 2);
    // A panicking read fails that request; the single read thread survives and serves the next one.
    assert!(block_on(h.recent_messages("boom", 1)).is_err());
    assert_eq!(
        block_on(h.recent_messages("forsen", 10)).unwrap(),
        msgs[..1].to_vec()
    );
    assert_eq!(
        metric(&h.metrics_text(), "twitchy_storage_errors_total"),
        2.0
    );
    service.shutdown().unwrap();
}

#[test]
fn acks_resolve_on_another_thread_and_dropped_acks_are_harmless() {
    let store = Arc::new(MemoryStore::default());
    let service = StorageService::start(store.clone(), CoalescerConfig::default());
    let h = service.handle();
    let msgs = messages("forsen", 0, 1_700_000_000_000, 1000);
    std::thread::scope(|s| {
        for part in msgs.chunks(250) {
            let h = h.clone();
            s.spawn(move || {
                let acks: Vec<_> = part.iter().map(|m| h.append(m.clone()).unwrap()).collect();
                // Half the callers stop waiting; their messages are still written.
                for (i, ack) in acks.into_iter().enumerate() {
                    if i % 2 == 0 {
                        block_on(ack).unwrap();
                    }
                }
            });
        }
    });
    service.shutdown().unwrap();
    let mut stored = store.messages.lock().unwrap().clone();
    stored.sort_by_key(|m| m.id);
    assert_eq!(stored, msgs);
}

/// A store whose history reads block until released, and whose token lookups answer at once.
struct SlowHistory {
    inner: MemoryStore,
    release: Mutex<bool>,
    released: Condvar,
}

impl Store for SlowHistory {
    fn append_messages(&self, batch: &[MessageRecord]) -> twitchy_storage::Result<()> {
        self.inner.append_messages(batch)
    }
    fn recent_messages(
        &self,
        room: &str,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<MessageRecord>> {
        let mut release = self.release.lock().unwrap();
        while !*release {
            release = self.released.wait(release).unwrap();
        }
        drop(release);
        self.inner.recent_messages(room, limit)
    }
    fn messages_before(
        &self,
        room: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<MessageRecord>> {
        self.inner.messages_before(room, before, limit)
    }
    fn messages_after(
        &self,
        room: &str,
        after: MessageId,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<MessageRecord>> {
        self.inner.messages_after(room, after, limit)
    }
    fn create_account(&self, a: &AccountRecord) -> twitchy_storage::Result<()> {
        self.inner.create_account(a)
    }
    fn account(&self, l: &str) -> twitchy_storage::Result<Option<AccountRecord>> {
        self.inner.account(l)
    }
    fn put_token(&self, t: [u8; 32], r: &TokenRecord, max: usize) -> twitchy_storage::Result<()> {
        self.inner.put_token(t, r, max)
    }
    fn token(&self, _: [u8; 32]) -> twitchy_storage::Result<Option<TokenRecord>> {
        Ok(Some(TokenRecord {
            login: "alice".into(),
            issued_unix_ms: 0,
            expires_unix_ms: u64::MAX,
        }))
    }
    fn revoke_token(&self, t: [u8; 32]) -> twitchy_storage::Result<bool> {
        self.inner.revoke_token(t)
    }
    fn rename_account(&self, old: &str, new: &str) -> twitchy_storage::Result<AccountRecord> {
        self.inner.rename_account(old, new)
    }
    fn delete_message(&self, room: &str, id: MessageId) -> twitchy_storage::Result<bool> {
        self.inner.delete_message(room, id)
    }
    fn put_setting(&self, key: &str, value: &[u8]) -> twitchy_storage::Result<()> {
        self.inner.put_setting(key, value)
    }
    fn delete_setting(&self, key: &str) -> twitchy_storage::Result<()> {
        self.inner.delete_setting(key)
    }
    fn settings(
        &self,
        prefix: &str,
        limit: usize,
    ) -> twitchy_storage::Result<Vec<(String, Vec<u8>)>> {
        self.inner.settings(prefix, limit)
    }
}

#[test]
fn a_flood_of_history_reads_does_not_starve_logins() {
    let store = Arc::new(SlowHistory {
        inner: MemoryStore::default(),
        release: Mutex::new(false),
        released: Condvar::new(),
    });
    let config = CoalescerConfig {
        read_threads: 1,
        history_queue_requests_max: 8,
        auth_threads: 1,
        ..CoalescerConfig::default()
    };
    let service = StorageService::start(store.clone(), config);
    let h = service.handle();
    // History reads pile up behind a stuck one until their own queue is full and the rest answer Busy.
    let stuck: Vec<_> = (0..20)
        .map(|_| {
            let reader = h.clone();
            std::thread::spawn(move || block_on(reader.recent_messages("forsen", 10)))
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stuck.iter().filter(|t| t.is_finished()).count() < 11 {
        assert!(
            std::time::Instant::now() < deadline,
            "the history queue is bounded"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // Token lookups have their own queue and thread: answered while history is jammed.
    for _ in 0..50 {
        assert_eq!(
            block_on(h.login_for_token([1; 32])).unwrap().as_deref(),
            Some("alice")
        );
    }
    // Settings scans share the history queue, so they are refused too; settings writes go through the account
    // write pool and are answered.
    assert_eq!(
        block_on(h.settings("room/forsen/", 10)),
        Err(StorageError::Busy)
    );
    // Forward history pages are history reads: refused with them.
    assert_eq!(
        block_on(h.messages_after("forsen", MessageId(0), 10)),
        Err(StorageError::Busy)
    );
    block_on(h.put_setting("room/forsen/modes", b"{}".to_vec())).unwrap();
    assert_eq!(
        store
            .inner
            .settings
            .lock()
            .unwrap()
            .get("room/forsen/modes"),
        Some(&b"{}".to_vec())
    );
    *store.release.lock().unwrap() = true;
    store.released.notify_all();
    let results: Vec<_> = stuck.into_iter().map(|t| t.join().unwrap()).collect();
    let busy = results
        .iter()
        .filter(|r| **r == Err(StorageError::Busy))
        .count();
    // Eight queued and (once the thread has taken one) one in progress; the rest refused.
    assert!((11..=12).contains(&busy), "{busy} refused");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 20 - busy);
    service.shutdown().unwrap();
}

#[test]
fn moderation_requests_go_through_the_handle_and_answer() {
    let store = Arc::new(MemoryStore::default());
    let service = StorageService::start(store.clone(), CoalescerConfig::default());
    let h = service.handle();
    let msgs = messages("forsen", 0, 1_700_000_000_000, 10);
    let acks: Vec<_> = msgs.iter().map(|m| h.append(m.clone()).unwrap()).collect();
    for ack in acks {
        block_on(ack).unwrap();
    }

    assert!(block_on(h.delete_message("forsen", msgs[9].id)).unwrap());
    assert!(!block_on(h.delete_message("xqc", msgs[8].id)).unwrap());
    assert_eq!(
        block_on(h.recent_messages("forsen", 3)).unwrap(),
        msgs[6..9].to_vec(),
        "the deleted newest message is gone and the page is filled from older ones"
    );
    assert!(block_on(h.delete_message("forsen", msgs[2].id)).unwrap());
    assert_eq!(
        block_on(h.messages_after("forsen", msgs[0].id, 3)).unwrap(),
        vec![msgs[1].clone(), msgs[3].clone(), msgs[4].clone()],
        "forward pages go through the handle, skip deleted messages and fill up with newer ones"
    );
    assert!(matches!(
        block_on(h.messages_after("", msgs[0].id, 3)),
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        block_on(h.delete_message("", msgs[0].id)),
        Err(StorageError::Invalid(_))
    ));

    block_on(h.put_setting("room/forsen/modes", b"{\"slow\":30}".to_vec())).unwrap();
    block_on(h.put_setting("room/forsen/ban/42", b"{}".to_vec())).unwrap();
    block_on(h.put_setting("room/xqc/modes", b"{}".to_vec())).unwrap();
    assert_eq!(
        block_on(h.settings("room/forsen/", 10)).unwrap(),
        vec![
            ("room/forsen/ban/42".to_string(), b"{}".to_vec()),
            ("room/forsen/modes".to_string(), b"{\"slow\":30}".to_vec()),
        ]
    );
    // One key: the exact one, not a longer key that starts with it.
    block_on(h.put_setting("room/forsen/ban/420", b"{\"x\":1}".to_vec())).unwrap();
    assert_eq!(
        block_on(h.setting("room/forsen/ban/42")).unwrap(),
        Some(b"{}".to_vec())
    );
    block_on(h.delete_setting("room/forsen/ban/42")).unwrap();
    assert_eq!(block_on(h.setting("room/forsen/ban/42")).unwrap(), None);
    block_on(h.delete_setting("room/forsen/ban/420")).unwrap();
    assert_eq!(block_on(h.settings("room/forsen/", 10)).unwrap().len(), 1);

    let moved = block_on(h.rename_account("exists_a", "newname")).unwrap();
    assert_eq!(moved.login, "newname");
    assert_eq!(
        *store.renamed.lock().unwrap(),
        vec![("exists_a".to_string(), "newname".to_string())]
    );
    assert_eq!(
        block_on(h.rename_account("exists_a", "exists_b")),
        Err(StorageError::AlreadyExists)
    );
    assert!(matches!(
        block_on(h.rename_account("ghost", "newname")),
        Err(StorageError::NotFound(_))
    ));

    service.shutdown().unwrap();
    assert_eq!(
        block_on(h.put_setting("room/forsen/modes", Vec::new())),
        Err(StorageError::Closed)
    );
}

#[test]
fn a_resend_is_acknowledged_with_the_original_id_when_the_store_recognises_it() {
    let store = Arc::new(MemoryStore {
        recognise_resends: true,
        ..MemoryStore::default()
    });
    let service = StorageService::start(store.clone(), CoalescerConfig::default());
    let handle = service.handle();
    let batch = messages("lobby", 0, 1_700_000_000_000, 3);
    let mut first = batch[0].clone();
    first.client_nonce = "n1".into();
    let mut resend = batch[1].clone();
    resend.client_nonce = "n1".into();
    resend.original = first.original.clone();
    resend.user_id = first.user_id;
    assert_eq!(
        block_on(handle.append(first.clone()).unwrap().outcome()).unwrap(),
        AppendOutcome::Stored
    );
    assert_eq!(
        block_on(handle.append(resend.clone()).unwrap().outcome()).unwrap(),
        AppendOutcome::Duplicate { original: first.id }
    );
    // The plain acknowledgement is Ok for both; only `outcome` tells them apart.
    block_on(handle.append(resend).unwrap()).unwrap();
    assert_eq!(store.messages.lock().unwrap().len(), 1);
    service.shutdown().unwrap();

    // A store that does not recognise resends answers Stored for everything (the trait's default).
    let plain = Arc::new(MemoryStore::default());
    let service = StorageService::start(plain.clone(), CoalescerConfig::default());
    let acks: Vec<_> = batch
        .iter()
        .map(|m| service.handle().append(m.clone()).unwrap().outcome())
        .collect();
    for ack in acks {
        assert_eq!(block_on(ack).unwrap(), AppendOutcome::Stored);
    }
    service.shutdown().unwrap();
}

#[test]
fn a_store_answering_the_wrong_number_of_outcomes_acknowledges_nothing() {
    let store = Arc::new(MemoryStore {
        short_outcomes: true,
        ..MemoryStore::default()
    });
    let service = StorageService::start(store, CoalescerConfig::default());
    let handle = service.handle();
    let result = block_on(
        handle
            .append(messages("lobby", 0, 1_700_000_000_000, 1)[0].clone())
            .unwrap(),
    );
    assert!(matches!(result, Err(StorageError::Io(_))), "{result:?}");
    assert!(
        matches!(handle.health(), Health::Failed(_)),
        "{:?}",
        handle.health()
    );
    let _ = service.shutdown();
}
