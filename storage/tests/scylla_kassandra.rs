//! The ScyllaDB store's schema creation and write path over real CQL (protocol v4), against an in-process
//! `kassandra` node on 127.0.0.1 and an ephemeral port.
//!
//! The node ignores `ORDER BY`, `LIMIT` and clustering-column ranges, so reads are not tested here; they are
//! tested against a real cluster in `scylla_cluster.rs`. What is checked here is what the store sends: the
//! keyspace and tables, every acknowledged message in its `(room, bucket)` partition exactly once with all its
//! columns, and the bucket and epoch index rows; settings, message deletion markers and account renames.
//!
//! The node has no lightweight transactions either: it parses `INSERT ... IF NOT EXISTS` as a plain upsert and
//! answers without the `[applied]` row. The test node below stands in for them: an INSERT into `accounts` (the
//! only table written with `IF NOT EXISTS`) is applied only if the login is free, and answered with `[applied]`.
//! Settings scans that go deeper than a scope (`room/lobby/ban/`) bind a clustering range (`setting_key >= ?`),
//! which the node cannot parse, so they are tested in `scylla_cluster.rs` only.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use kassandra::KassandraSession;
use kassandra::cql::query::QueryString;
use kassandra::cql::schema::column::ColumnType;
use kassandra::cql::value::CqlValue;
use kassandra::frame::consistency::Consistency;
use kassandra::frame::request::Request;
use kassandra::frame::request::batch::{BatchStatement, BatchType};
use kassandra::frame::request::query::Query;
use kassandra::frame::response::Response;
use kassandra::frame::response::result::{
    ColumnSpec, QueryResult, ResultMetadata, Row, Rows, TableSpec,
};
use kassandra::frame::value::FrameValue;
use kassandra::frame::{request_stream, response_sink};

mod common;

use common::{block_on, message};
use twitchy_storage::scylla_store::{BUCKETS_PER_EPOCH, bucket_of, epoch_of};
use twitchy_storage::{
    CoalescerConfig, MessageId, MessageIdGen, MessageRecord, ScyllaStore, StorageService, Store,
    StoreConfig, TokenRecord, open_store,
};

/// What the node saw of one BATCH request.
#[derive(Debug, Clone)]
struct SeenBatch {
    unlogged: bool,
    local_quorum: bool,
    statements: usize,
    /// The distinct values bound to the first two markers (room and bucket of a message insert).
    partitions: BTreeSet<(Vec<u8>, Vec<u8>)>,
}

/// The session, the batches seen, how many of the next BATCH requests to fail (fault injection), and the ids of
/// the prepared INSERTs into `accounts` (the lightweight transactions the node is made to answer).
type Shared = (
    Mutex<KassandraSession>,
    Mutex<Vec<SeenBatch>>,
    std::sync::atomic::AtomicUsize,
    Mutex<HashSet<u128>>,
);

/// An in-memory CQL node served on its own thread; dropped, it stops serving.
struct Node {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    fn start() -> Node {
        let shared: Arc<Shared> = Arc::new((
            Mutex::new(KassandraSession::new()),
            Mutex::new(Vec::new()),
            std::sync::atomic::AtomicUsize::new(0),
            Mutex::new(HashSet::new()),
        ));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::task::spawn_local(serve_client(stream, Arc::clone(&served)));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        let addr = addr_rx.recv().unwrap();
        Node {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs a CQL statement directly on the node (bypassing the network) and returns its rows.
    fn rows(&self, cql: &str) -> Vec<Vec<Option<CqlValue>>> {
        let mut query = Query::simple(cql).unwrap();
        // One page with everything: the node's default page is 500 rows.
        query.parameters.result_page_size = Some(usize::MAX);
        let mut session = self.shared.0.lock().unwrap();
        match session.process(query).unwrap() {
            QueryResult::Rows(rows) => rows.rows.into_iter().map(|r| r.columns).collect(),
            other => panic!("{cql}: expected rows, got {other:?}"),
        }
    }

    /// Runs a CQL write directly on the node.
    fn exec(&self, cql: &str) {
        let query = Query::simple(cql).unwrap();
        self.shared.0.lock().unwrap().process(query).unwrap();
    }

    /// Answers the next `n` BATCH requests with a server error instead of applying them.
    fn fail_batches(&self, n: usize) {
        self.shared.2.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// BATCH requests still to be failed.
    fn batches_to_fail(&self) -> usize {
        self.shared.2.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every BATCH request the node has answered so far.
    fn batches(&self) -> Vec<SeenBatch> {
        self.shared.1.lock().unwrap().clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One client connection: decode request frames, answer each from the shared session.
async fn serve_client(mut stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let (mut read, mut write) = stream.split();
    let mut requests = request_stream(&mut read);
    let mut responses = response_sink(&mut write);
    while let Some(Ok((frame, opcode, data))) = requests.next().await {
        let response = match Request::deserialize(opcode, &data, frame.flags) {
            Ok(request) => answer(&shared, request),
            Err(e) => Response::Error(e),
        };
        if responses.send((response, frame.stream)).await.is_err() {
            break;
        }
    }
}

fn answer(shared: &Shared, request: Request<'_>) -> Response {
    if matches!(request, Request::Batch(_))
        && shared
            .2
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
    {
        return Response::Error(kassandra::frame::response::error::Error::new(
            kassandra::error::DbError::Overloaded,
            "injected failure",
        ));
    }
    if let Request::Batch(b) = &request {
        // Statements with fewer than two markers (a rename's batch has some) count as empty values.
        let bytes = |v: Option<&FrameValue<'_>>| match v {
            Some(FrameValue::Some(b)) => b.to_vec(),
            _ => Vec::new(),
        };
        let partitions = b
            .statements
            .iter()
            .map(|s| match s {
                BatchStatement::Query { values, .. } | BatchStatement::Prepared { values, .. } => {
                    (bytes(values.first()), bytes(values.get(1)))
                }
            })
            .collect();
        shared.1.lock().unwrap().push(SeenBatch {
            unlogged: matches!(b.batch_type, BatchType::Unlogged),
            local_quorum: matches!(b.consistency, Consistency::LocalQuorum),
            statements: b.statements.len(),
            partitions,
        });
    }
    let mut s = shared.0.lock().unwrap();
    let result = match request {
        Request::StartUp(_) | Request::Register { .. } => return Response::Ready,
        Request::Options => return Response::options(),
        Request::Query(q) => s.process(q),
        Request::Prepare(q) => {
            let lwt = matches!(&q, QueryString::Insert(i) if i.table == "accounts");
            let prepared = s.prepare(q);
            if let (true, Ok(QueryResult::Prepared(p))) = (lwt, &prepared) {
                shared.3.lock().unwrap().insert(p.id);
            }
            prepared
        }
        Request::Execute(e)
            if e.id
                .try_into()
                .is_ok_and(|id| shared.3.lock().unwrap().contains(&u128::from_be_bytes(id))) =>
        {
            if_not_exists(&mut s, e)
        }
        Request::Execute(e) => s.execute(e),
        Request::Batch(b) => s.process_batch(b),
        Request::AuthResponse => {
            return Response::Error(kassandra::frame::response::error::Error::new(
                kassandra::error::DbError::ProtocolError,
                "authentication is not supported",
            ));
        }
    };
    match result {
        Ok(r) => Response::Result(r),
        Err(e) => Response::Error(e),
    }
}

/// `INSERT INTO accounts ... IF NOT EXISTS` as a cluster answers it: applied only if the login (the first bound
/// value) has no row, with the `[applied]` column either way.
fn if_not_exists(
    s: &mut KassandraSession,
    e: kassandra::frame::request::execute::Execute<'_>,
) -> Result<QueryResult, kassandra::frame::response::error::Error> {
    let FrameValue::Some(login) = e.parameters.data[0] else {
        panic!("an account insert without a login");
    };
    let login = std::str::from_utf8(login).unwrap().replace('\'', "''");
    let cql = format!("SELECT login FROM chat.accounts WHERE login = '{login}'");
    let mut query = Query::simple(&cql).unwrap();
    query.parameters.result_page_size = Some(usize::MAX);
    let QueryResult::Rows(existing) = s.process(query)? else {
        panic!("a select answered without rows");
    };
    let applied = existing.rows.is_empty();
    if applied {
        s.execute(e)?;
    }
    Ok(QueryResult::Rows(Rows {
        metadata: ResultMetadata {
            global_spec: Some(TableSpec {
                ks_name: "chat".into(),
                table_name: "accounts".into(),
            }),
            paging_state: None,
            col_specs: vec![ColumnSpec::new("[applied]", ColumnType::Boolean)],
        },
        rows: vec![Row {
            columns: vec![Some(CqlValue::Boolean(applied))],
        }],
    }))
}

fn text(v: &Option<CqlValue>) -> String {
    match v {
        Some(CqlValue::Text(s)) => s.clone(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn bigint(v: &Option<CqlValue>) -> i64 {
    match v {
        Some(CqlValue::BigInt(n)) => *n,
        other => panic!("expected bigint, got {other:?}"),
    }
}

fn blob(v: &Option<CqlValue>) -> Vec<u8> {
    match v {
        Some(CqlValue::Blob(b)) => b.clone(),
        other => panic!("expected blob, got {other:?}"),
    }
}

#[test]
fn schema_is_created_on_first_start_and_reopening_keeps_it() {
    let node = Node::start();
    let config = StoreConfig::Scylla {
        nodes: vec![node.addr.to_string()],
        keyspace: "chat".into(),
        replication_factor: 1,
    };
    let store = open_store(&config).unwrap();
    let tables: BTreeSet<String> = node
        .rows("SELECT keyspace_name, table_name FROM system_schema.tables")
        .iter()
        .filter(|r| text(&r[0]) == "chat")
        .map(|r| text(&r[1]))
        .collect();
    let expected: BTreeSet<String> = [
        "accounts",
        "deleted_messages",
        "login_sessions",
        "messages",
        "room_buckets",
        "room_epochs",
        "sessions",
        "settings",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(tables, expected);
    let keyspaces = node.rows("SELECT keyspace_name FROM system_schema.keyspaces");
    assert!(keyspaces.iter().any(|r| text(&r[0]) == "chat"));

    // Writing then connecting again (IF NOT EXISTS everywhere) must neither fail nor lose data.
    let mut ids = MessageIdGen::new(0, 0);
    let m = message(ids.next_id(1_700_000_000_000), "forsen", 1);
    store.append_messages(std::slice::from_ref(&m)).unwrap();
    drop(store);
    let _again = open_store(&config).unwrap();
    assert_eq!(node.rows("SELECT id FROM chat.messages").len(), 1);
}

#[test]
fn bad_configuration_is_an_error_not_a_panic() {
    let node = Node::start();
    let addr = node.addr.to_string();
    for (nodes, keyspace, rf) in [
        (vec![addr.clone()], "bad keyspace;", 1),
        (vec![addr.clone()], "chat", 0),
        (vec![], "chat", 1),
    ] {
        let err = ScyllaStore::connect(&nodes, keyspace, rf).unwrap_err();
        assert!(
            matches!(err, twitchy_storage::StorageError::Invalid(_)),
            "{err}"
        );
    }
    // Nothing listens on a port that was just freed: a clear IO error.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = ScyllaStore::connect(&[free.to_string()], "chat", 1).unwrap_err();
    assert!(matches!(err, twitchy_storage::StorageError::Io(_)), "{err}");
}

#[test]
fn coalesced_writes_land_once_per_partition_with_their_index_rows() {
    let node = Node::start();
    let store = Arc::new(ScyllaStore::connect(&[node.addr.to_string()], "chat", 1).unwrap());
    // Small batches so that many coalesced batches, partitions and index-cache hits are exercised.
    let config = CoalescerConfig {
        batch_messages_max: 64,
        ..CoalescerConfig::default()
    };
    let service = StorageService::start(store, config);
    let h = service.handle();

    // Three rooms, messages spread over several one-second buckets, including a bucket on each side of an epoch
    // boundary, and one long message so a partition spans several UNLOGGED batches.
    let epoch_edge_ms = (BUCKETS_PER_EPOCH as u64 * 1700) * 1000;
    let mut written: Vec<MessageRecord> = Vec::new();
    let mut gens: Vec<MessageIdGen> = (0..3).map(|shard| MessageIdGen::new(0, shard)).collect();
    for n in 0..900u64 {
        let room = ["forsen", "xqc", "a"][(n % 3) as usize];
        let ms = epoch_edge_ms - 2_500 + n * 7;
        let mut m = message(gens[(n % 3) as usize].next_id(ms), room, n);
        if n == 450 {
            m.text = "long ".repeat(20_000);
        }
        written.push(m);
    }
    let acks: Vec<_> = written
        .iter()
        .map(|m| h.append(m.clone()).unwrap())
        .collect();
    for ack in acks {
        block_on(ack).unwrap();
    }
    service.shutdown().unwrap();

    // Every message exactly once, in the partition its id says, with every column intact.
    let rows = node.rows(
        "SELECT room, bucket, id, user_id, login, display_name, color, badges, body, original, styled_by \
         FROM chat.messages",
    );
    assert_eq!(rows.len(), written.len());
    let by_id: HashMap<Vec<u8>, &MessageRecord> = written
        .iter()
        .map(|m| (m.id.to_be_bytes().to_vec(), m))
        .collect();
    let mut seen = BTreeSet::new();
    for r in &rows {
        let id = blob(&r[2]);
        let m = by_id.get(&id).expect("a stored id was written");
        assert!(seen.insert(id.clone()), "stored once");
        assert_eq!(text(&r[0]), m.room);
        assert_eq!(bigint(&r[1]), bucket_of(m.id));
        assert_eq!(MessageId::from_be_bytes(id.try_into().unwrap()), m.id);
        assert_eq!(bigint(&r[3]) as u64, m.user_id);
        let strings: Vec<String> = r[4..].iter().map(text).collect();
        assert_eq!(
            strings,
            [
                &m.login,
                &m.display_name,
                &m.color,
                &m.badges,
                &m.text,
                &m.original,
                &m.styled_by
            ]
            .map(|s| s.clone())
        );
    }

    // Batches were UNLOGGED, at LOCAL_QUORUM, and each covered one partition; a long message split a partition.
    let batches = node.batches();
    assert!(!batches.is_empty());
    for b in &batches {
        assert!(b.unlogged && b.local_quorum, "{b:?}");
        assert_eq!(b.partitions.len(), 1, "one partition per batch: {b:?}");
    }
    assert!(batches.iter().map(|b| b.statements).sum::<usize>() <= written.len());
    assert!(
        batches.iter().any(|b| b.statements > 10),
        "coalescing produced multi-row batches"
    );

    // The index names exactly the non-empty buckets and epochs of each room.
    let want_buckets: BTreeSet<(String, i64, i64)> = written
        .iter()
        .map(|m| (m.room.clone(), epoch_of(bucket_of(m.id)), bucket_of(m.id)))
        .collect();
    let got_buckets: BTreeSet<(String, i64, i64)> = node
        .rows("SELECT room, epoch, bucket FROM chat.room_buckets")
        .iter()
        .map(|r| (text(&r[0]), bigint(&r[1]), bigint(&r[2])))
        .collect();
    assert_eq!(got_buckets, want_buckets);
    let epochs: BTreeSet<i64> = want_buckets.iter().map(|(_, e, _)| *e).collect();
    assert_eq!(epochs.len(), 2, "the messages straddle an epoch boundary");
    let want_epochs: BTreeSet<(String, i64)> = want_buckets
        .iter()
        .map(|(r, e, _)| (r.clone(), *e))
        .collect();
    let got_epochs: BTreeSet<(String, i64)> = node
        .rows("SELECT room, epoch FROM chat.room_epochs")
        .iter()
        .map(|r| (text(&r[0]), bigint(&r[1])))
        .collect();
    assert_eq!(got_epochs, want_epochs);
}

#[test]
fn tokens_expire_are_capped_and_revoked_over_cql() {
    let node = Node::start();
    let store = ScyllaStore::connect(&[node.addr.to_string()], "chat", 1).unwrap();
    let grant = |issued: u64| TokenRecord {
        login: "alice".into(),
        issued_unix_ms: issued,
        expires_unix_ms: issued + 1000,
    };
    store.put_token([9; 32], &grant(1000), 2).unwrap();
    let rows = node.rows("SELECT token, login, issued_unix_ms, expires_unix_ms FROM chat.sessions");
    assert_eq!(rows.len(), 1);
    assert_eq!(blob(&rows[0][0]), vec![9; 32]);
    assert_eq!(text(&rows[0][1]), "alice");
    assert_eq!(bigint(&rows[0][3]), 2000);
    assert_eq!(store.token([9; 32]).unwrap(), Some(grant(1000)));
    // A cap of two live tokens: the third grant revokes the oldest.
    store.put_token([8; 32], &grant(1500), 2).unwrap();
    store.put_token([7; 32], &grant(1600), 2).unwrap();
    assert_eq!(store.token([9; 32]).unwrap(), None);
    assert_eq!(store.token([8; 32]).unwrap(), Some(grant(1500)));
    assert_eq!(store.token([7; 32]).unwrap(), Some(grant(1600)));
    // A grant after the others expired removes them.
    store.put_token([6; 32], &grant(5000), 10).unwrap();
    assert_eq!(store.token([8; 32]).unwrap(), None);
    assert_eq!(store.token([7; 32]).unwrap(), None);
    assert_eq!(node.rows("SELECT token FROM chat.login_sessions").len(), 1);
    assert!(store.revoke_token([6; 32]).unwrap());
    assert!(!store.revoke_token([6; 32]).unwrap());
    assert_eq!(store.token([6; 32]).unwrap(), None);
    assert!(node.rows("SELECT token FROM chat.sessions").is_empty());
}

/// The rows of `chat.messages`, by id, with how often each id is stored.
fn stored_counts(node: &Node) -> HashMap<Vec<u8>, usize> {
    let mut counts = HashMap::new();
    for r in node.rows("SELECT id FROM chat.messages") {
        *counts.entry(blob(&r[0])).or_insert(0) += 1;
    }
    counts
}

#[test]
fn a_failed_batch_is_retried_with_the_same_ids_and_stored_once() {
    let node = Node::start();
    let store = ScyllaStore::connect(&[node.addr.to_string()], "chat", 1).unwrap();
    let mut ids = MessageIdGen::new(0, 0);
    // Three rooms: three partition batches per append, of which some fail and some succeed.
    let batch: Vec<MessageRecord> = (0..60u64)
        .map(|n| {
            let room = ["forsen", "xqc", "a"][(n % 3) as usize];
            message(ids.next_id(1_700_000_000_000 + n), room, n)
        })
        .collect();
    node.fail_batches(2);
    store.append_messages(&batch).unwrap();
    assert_eq!(node.batches_to_fail(), 0, "the injected failures were hit");
    let counts = stored_counts(&node);
    assert_eq!(counts.len(), batch.len());
    assert!(counts.values().all(|&c| c == 1), "each message once");

    // A cluster that keeps failing: the batch fails within the retry budget, with nothing acknowledged...
    let more: Vec<MessageRecord> = (0..30u64)
        .map(|n| message(ids.next_id(1_700_000_100_000 + n), "forsen", n))
        .collect();
    node.fail_batches(usize::MAX);
    let started = std::time::Instant::now();
    assert!(store.append_messages(&more).is_err());
    assert!(
        started.elapsed()
            < std::time::Duration::from_millis(
                twitchy_storage::scylla_store::APPEND_RETRY_BUDGET_MS + 2_000
            ),
        "bounded by the retry budget"
    );
    // ...and the sender's resend of the same messages stores each once.
    node.fail_batches(0);
    store.append_messages(&more).unwrap();
    let counts = stored_counts(&node);
    assert_eq!(counts.len(), batch.len() + more.len());
    assert!(counts.values().all(|&c| c == 1), "each message once");
}

#[test]
fn settings_are_written_to_their_scope_and_listed_over_cql() {
    let node = Node::start();
    let store = ScyllaStore::connect(&[node.addr.to_string()], "chat", 1).unwrap();
    for (key, value) in [
        ("room/lobby/role/7", "mod"),
        ("room/lobby/ban/42", "ban42"),
        ("room/lobby/modes", "{\"slow\":30}"),
        ("room/lobby/ban/41", "ban41"),
        ("room/other/modes", "{}"),
        ("user/42/profile", "profile"),
    ] {
        store.put_setting(key, value.as_bytes()).unwrap();
    }
    // Partitioned by the first two segments, keyed by the whole key.
    let mut rows: Vec<(String, String, Vec<u8>)> = node
        .rows("SELECT scope, setting_key, setting_value FROM chat.settings")
        .iter()
        .map(|r| (text(&r[0]), text(&r[1]), blob(&r[2])))
        .collect();
    rows.sort();
    assert_eq!(rows.len(), 6);
    assert_eq!(
        rows[0],
        (
            "room/lobby".into(),
            "room/lobby/ban/41".into(),
            b"ban41".to_vec()
        )
    );
    assert_eq!(
        rows[5],
        (
            "user/42".into(),
            "user/42/profile".into(),
            b"profile".to_vec()
        )
    );

    let keys = |prefix: &str, limit: usize| -> Vec<String> {
        store
            .settings(prefix, limit)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(
        keys("room/lobby/", 100),
        [
            "room/lobby/ban/41",
            "room/lobby/ban/42",
            "room/lobby/modes",
            "room/lobby/role/7"
        ]
    );
    // The limit holds even though this node ignores LIMIT (the page size and the reader bound it).
    assert_eq!(keys("room/lobby/", 3).len(), 3);
    assert_eq!(keys("user/42/", 100), ["user/42/profile"]);
    assert!(keys("room/nobody/", 100).is_empty());

    store.put_setting("room/lobby/modes", b"{}").unwrap();
    store.delete_setting("room/lobby/ban/41").unwrap();
    assert_eq!(
        store.settings("room/lobby/", 100).unwrap(),
        vec![
            ("room/lobby/ban/42".to_string(), b"ban42".to_vec()),
            ("room/lobby/modes".to_string(), b"{}".to_vec()),
            ("room/lobby/role/7".to_string(), b"mod".to_vec()),
        ]
    );
    assert!(matches!(
        store.put_setting("room/lobby", b"x"),
        Err(twitchy_storage::StorageError::Invalid(_))
    ));
    assert!(matches!(
        store.settings("room/", 10),
        Err(twitchy_storage::StorageError::Invalid(_))
    ));
}

#[test]
fn a_deleted_message_gets_a_marker_in_its_bucket() {
    let node = Node::start();
    let store = ScyllaStore::connect(&[node.addr.to_string()], "chat", 1).unwrap();
    let mut ids = MessageIdGen::new(0, 0);
    let batch: Vec<MessageRecord> = (0..10u64)
        .map(|n| message(ids.next_id(1_700_000_000_000 + n * 400), "forsen", n))
        .collect();
    store.append_messages(&batch).unwrap();
    assert!(store.delete_message("forsen", batch[3].id).unwrap());
    assert!(
        store.delete_message("forsen", batch[3].id).unwrap(),
        "again: still found"
    );
    assert!(
        !store.delete_message("xqc", batch[4].id).unwrap(),
        "another room's"
    );
    assert!(
        !store
            .delete_message("forsen", MessageId(batch[4].id.0 + 1))
            .unwrap(),
        "never written"
    );
    let markers: Vec<(String, i64, Vec<u8>)> = node
        .rows("SELECT room, bucket, id FROM chat.deleted_messages")
        .iter()
        .map(|r| (text(&r[0]), bigint(&r[1]), blob(&r[2])))
        .collect();
    assert_eq!(
        markers,
        vec![(
            "forsen".to_string(),
            bucket_of(batch[3].id),
            batch[3].id.to_be_bytes().to_vec()
        )]
    );
    // The message itself stays stored; reads skip it (tested against the history model and a real cluster).
    assert_eq!(stored_counts(&node).len(), batch.len());
}

#[test]
fn a_rename_moves_the_account_and_its_sessions_in_one_logged_batch() {
    let node = Node::start();
    let store = ScyllaStore::connect(&[node.addr.to_string()], "chat", 1).unwrap();
    let account = |login: &str, user_id: u64| twitchy_storage::AccountRecord {
        login: login.into(),
        user_id,
        password_hash: format!("hash{user_id}"),
        color: "#1E90FF".into(),
        created_unix_ms: 1_700_000_000_000 + user_id,
    };
    store.create_account(&account("alice", 1)).unwrap();
    store.create_account(&account("bob_b", 2)).unwrap();
    assert_eq!(
        store.create_account(&account("alice", 3)),
        Err(twitchy_storage::StorageError::AlreadyExists)
    );
    let grant = |login: &str, issued: u64| TokenRecord {
        login: login.into(),
        issued_unix_ms: issued,
        expires_unix_ms: issued + 60_000,
    };
    store.put_token([1; 32], &grant("alice", 1000), 3).unwrap();
    store.put_token([2; 32], &grant("alice", 2000), 3).unwrap();
    store.put_token([9; 32], &grant("bob_b", 1000), 3).unwrap();
    let batches_before = node.batches().len();

    let moved = store.rename_account("alice", "alicia").unwrap();
    assert_eq!(
        moved,
        twitchy_storage::AccountRecord {
            login: "alicia".into(),
            ..account("alice", 1)
        }
    );
    let batches = node.batches();
    assert_eq!(batches.len(), batches_before + 1, "one batch");
    assert!(!batches[batches_before].unlogged, "a LOGGED batch");
    assert!(batches[batches_before].local_quorum);

    assert_eq!(store.account("alicia").unwrap(), Some(moved));
    assert_eq!(store.account("alice").unwrap(), None);
    assert_eq!(store.token([1; 32]).unwrap(), Some(grant("alicia", 1000)));
    assert_eq!(store.token([2; 32]).unwrap(), Some(grant("alicia", 2000)));
    assert_eq!(store.token([9; 32]).unwrap(), Some(grant("bob_b", 1000)));
    let mut sessions: Vec<(String, Vec<u8>)> = node
        .rows("SELECT login, token FROM chat.login_sessions")
        .iter()
        .map(|r| (text(&r[0]), blob(&r[1])))
        .collect();
    sessions.sort();
    assert_eq!(
        sessions,
        vec![
            ("alicia".to_string(), vec![1; 32]),
            ("alicia".to_string(), vec![2; 32]),
            ("bob_b".to_string(), vec![9; 32]),
        ]
    );
    // The reservation mark is cleared ('' = finished): the row is a plain account again.
    let renamed_from: Vec<Option<CqlValue>> = node
        .rows("SELECT renamed_from FROM chat.accounts WHERE login = 'alicia'")
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect();
    assert_eq!(renamed_from, vec![Some(CqlValue::Text(String::new()))]);

    // The cap counts the moved sessions: a grant beyond three revokes the oldest moved one.
    store.put_token([3; 32], &grant("alicia", 3000), 3).unwrap();
    store.put_token([4; 32], &grant("alicia", 4000), 3).unwrap();
    assert_eq!(store.token([1; 32]).unwrap(), None);
    assert!(store.revoke_token([2; 32]).unwrap());

    assert_eq!(
        store.rename_account("alicia", "bob_b"),
        Err(twitchy_storage::StorageError::AlreadyExists)
    );
    assert!(matches!(
        store.rename_account("alice", "alice2"),
        Err(twitchy_storage::StorageError::NotFound(_))
    ));
    // The old login is free again.
    store.create_account(&account("alice", 5)).unwrap();
    assert_eq!(store.account("alice").unwrap().unwrap().user_id, 5);
}

#[test]
fn a_rename_cut_off_after_its_claim_is_finished_by_retrying_it() {
    let node = Node::start();
    let store = ScyllaStore::connect(&[node.addr.to_string()], "chat", 1).unwrap();
    let carol = twitchy_storage::AccountRecord {
        login: "carol".into(),
        user_id: 7,
        password_hash: "hash7".into(),
        color: "#FF0000".into(),
        created_unix_ms: 1_700_000_000_007,
    };
    store.create_account(&carol).unwrap();
    // What a crash between the claim (the lightweight transaction) and the logged batch leaves behind.
    node.exec(
        "INSERT INTO chat.accounts (login, user_id, password_hash, color, created_unix_ms, renamed_from) \
         VALUES ('carol2', 7, 'hash7', '#FF0000', 1700000000007, 'carol')",
    );
    assert_eq!(
        store.account("carol").unwrap(),
        Some(carol.clone()),
        "the old login still owns it"
    );
    assert_eq!(
        store.account("carol2").unwrap(),
        None,
        "a reservation is not an account"
    );
    assert!(matches!(
        store.rename_account("carol2", "carol3"),
        Err(twitchy_storage::StorageError::NotFound(_))
    ));
    assert_eq!(
        store.create_account(&twitchy_storage::AccountRecord {
            login: "carol2".into(),
            user_id: 8,
            ..carol.clone()
        }),
        Err(twitchy_storage::StorageError::AlreadyExists),
        "and not free for someone else"
    );
    // Another account cannot take over the reservation; the same rename, retried, finishes.
    let mut dave = carol.clone();
    dave.login = "dave".into();
    dave.user_id = 9;
    store.create_account(&dave).unwrap();
    assert_eq!(
        store.rename_account("dave", "carol2"),
        Err(twitchy_storage::StorageError::AlreadyExists)
    );
    let moved = store.rename_account("carol", "carol2").unwrap();
    assert_eq!(moved.user_id, 7);
    assert_eq!(store.account("carol2").unwrap(), Some(moved));
    assert_eq!(store.account("carol").unwrap(), None);
}
