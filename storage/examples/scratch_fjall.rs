use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use std::time::Instant;
use twitchy_storage::{MessageIdGen, MessageRecord};
fn message(ids: &mut MessageIdGen, n: u64) -> MessageRecord {
    MessageRecord {
        id: ids.next_id(1_700_000_000_000 + n / 50),
        room: format!("room{}", n % 64),
        user_id: n,
        login: format!("viewer{}", n % 10_000),
        display_name: format!("Viewer{}", n % 10_000),
        color: "#1E90FF".into(),
        badges: "subscriber/12".into(),
        text: "skibidi W stream fr fr no cap, that play was bussin".into(),
        original: "W stream, that play was great".into(),
        styled_by: "llm".into(),
    }
}
fn main() {
    let dir = std::path::Path::new("/work/tmp-scratch");
    let _ = std::fs::remove_dir_all(dir);
    let db = Database::builder(dir)
        .manual_journal_persist(true)
        .open()
        .unwrap();
    let ks = db
        .keyspace("messages", KeyspaceCreateOptions::default)
        .unwrap();
    let mut ids = MessageIdGen::new(0, 0);
    let batch = 4096;
    let mut n = 0;
    for round in 0..10 {
        let msgs: Vec<_> = (0..batch)
            .map(|_| {
                n += 1;
                message(&mut ids, n)
            })
            .collect();
        let t = Instant::now();
        let enc: Vec<_> = msgs
            .iter()
            .map(|m| twitchy_storage::codec::encode_message(m).unwrap())
            .collect();
        let enc_us = t.elapsed().as_micros();
        let t = Instant::now();
        let mut wb = db.batch();
        for (m, v) in msgs.iter().zip(&enc) {
            let mut key = Vec::with_capacity(40);
            key.push(m.room.len() as u8);
            key.extend_from_slice(m.room.as_bytes());
            key.extend_from_slice(&m.id.to_be_bytes());
            wb.insert(&ks, key, v.as_slice());
        }
        let build_us = t.elapsed().as_micros();
        let t = Instant::now();
        wb.commit().unwrap();
        let commit_us = t.elapsed().as_micros();
        let t = Instant::now();
        db.persist(PersistMode::SyncAll).unwrap();
        let sync_us = t.elapsed().as_micros();
        println!(
            "round {round}: encode {enc_us} us, build {build_us} us, commit {commit_us} us, fsync {sync_us} us"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
