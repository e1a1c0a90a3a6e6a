//! One connection's outbound queue and the framing of what it writes.
//!
//! The queue holds IRC lines as shared [`Bytes`] (a chat line is encoded once per shard and the same bytes are
//! queued to every viewer) plus already-framed WebSocket control frames. [`OutQueue::take`] turns everything
//! queued into one buffer for one socket write; on WebSocket, consecutive lines become one text frame, the way
//! Twitch batches several IRC lines per frame. Framing happens here and only here.
//!
//! A chat line or an acknowledgement carries a [`Stamp`]: when its message was sequenced or sent. When the line is
//! taken for a socket write, its latency goes into the shard's histograms, so the measured time ends where the
//! bytes are handed to the socket.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use crate::metrics::ShardMetrics;
use crate::protocol::ws::{ServerFrame, encode_frame_header};

/// Bytes gathered into one socket write.
pub const WRITE_GATHER_BYTES_MAX: usize = 64 * 1024;
/// An idle queue keeps at most this many slots of capacity; more is given back.
const QUEUE_IDLE_CAPACITY_MAX: usize = 8;
/// An owned buffer with more spare capacity than this is shrunk before it is queued, so a queue holds (and is
/// charged for) about what it will write.
const OWNED_SLACK_BYTES_MAX: usize = 64;
/// What each queued item costs beyond its bytes: its slot in the queue and, for an owned buffer, the allocator's
/// own bookkeeping. Charged so that many tiny replies (PONGs to a client that never reads) cannot hold far more
/// memory than the queue limit says.
pub const ITEM_OVERHEAD_BYTES: usize = std::mem::size_of::<OutItem>() + 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
}

/// What a queued line measures when it is written, with the start time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    None,
    /// A chat line for a viewer: since its message was sequenced.
    Delivery(u64),
    /// A send acknowledgement: since the client's PRIVMSG was received.
    Ack(u64),
}

#[derive(Debug)]
enum OutItem {
    /// Complete IRC lines, with what they are charged against the queue limit.
    Lines(Bytes, Stamp, usize),
    /// An already framed WebSocket control frame, with its charge.
    Frame(Bytes, usize),
}

impl OutItem {
    fn len(&self) -> usize {
        match self {
            OutItem::Lines(b, ..) | OutItem::Frame(b, _) => b.len(),
        }
    }

    fn charge(&self) -> usize {
        match self {
            OutItem::Lines(_, _, charge) | OutItem::Frame(_, charge) => *charge,
        }
    }
}

/// Shrinks a buffer with much spare capacity, so what is queued is what is charged.
fn trimmed(mut buffer: Vec<u8>) -> Vec<u8> {
    if buffer.capacity() > buffer.len() + OWNED_SLACK_BYTES_MAX {
        buffer.shrink_to_fit();
    }
    buffer
}

fn record(stamp: Stamp, now_ms: u64, metrics: &ShardMetrics) {
    match stamp {
        Stamp::None => {}
        Stamp::Delivery(since_ms) => metrics
            .delivery_latency
            .record_ms(now_ms.saturating_sub(since_ms)),
        Stamp::Ack(since_ms) => metrics
            .ack_latency
            .record_ms(now_ms.saturating_sub(since_ms)),
    }
}

/// A connection's queue of bytes to write, with what it holds in memory.
#[derive(Debug, Default)]
pub struct OutQueue {
    items: VecDeque<OutItem>,
    /// The memory the queue holds for this connection: each owned buffer by its capacity, each shared line by its
    /// length (its allocation is shared by every viewer), plus [`ITEM_OVERHEAD_BYTES`] per item.
    bytes: usize,
    /// The shard's total over all its queues, kept by every queue as it changes.
    total: Option<Rc<Cell<usize>>>,
}

impl Drop for OutQueue {
    fn drop(&mut self) {
        self.set_bytes(0);
    }
}

impl OutQueue {
    /// A queue whose bytes also count in the shard's `total`.
    pub fn counted(total: Rc<Cell<usize>>) -> OutQueue {
        OutQueue {
            items: VecDeque::new(),
            bytes: 0,
            total: Some(total),
        }
    }

    fn set_bytes(&mut self, bytes: usize) {
        if let Some(total) = &self.total {
            total.set(total.get() + bytes - self.bytes);
        }
        self.bytes = bytes;
    }

    /// What the queue holds in memory (the figure the queue limit applies to), not just the bytes to write.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What queuing this shared line would add.
    pub fn shared_charge(lines: &Bytes) -> usize {
        lines.len() + ITEM_OVERHEAD_BYTES
    }

    /// What queuing this owned buffer would add (after trimming its spare capacity).
    pub fn owned_charge(buffer: &[u8], capacity: usize) -> usize {
        let capacity = if capacity > buffer.len() + OWNED_SLACK_BYTES_MAX {
            buffer.len()
        } else {
            capacity
        };
        capacity + ITEM_OVERHEAD_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queues lines shared with other viewers (a fanned-out chat line), whose latency is measured when they are
    /// taken for writing.
    pub fn push_stamped(&mut self, lines: Bytes, stamp: Stamp) {
        if lines.is_empty() {
            return;
        }
        let charge = Self::shared_charge(&lines);
        self.set_bytes(self.bytes + charge);
        self.items.push_back(OutItem::Lines(lines, stamp, charge));
    }

    /// Queues lines for this connection alone (replies, notices, history), charged by what they hold.
    pub fn push_owned(&mut self, lines: Vec<u8>, stamp: Stamp) {
        if lines.is_empty() {
            return;
        }
        let lines = trimmed(lines);
        let charge = lines.capacity() + ITEM_OVERHEAD_BYTES;
        self.set_bytes(self.bytes + charge);
        self.items
            .push_back(OutItem::Lines(Bytes::from(lines), stamp, charge));
    }

    /// Queues an already framed WebSocket control frame.
    pub fn push_frame(&mut self, frame: Vec<u8>) {
        let frame = trimmed(frame);
        let charge = frame.capacity() + ITEM_OVERHEAD_BYTES;
        self.set_bytes(self.bytes + charge);
        self.items
            .push_back(OutItem::Frame(Bytes::from(frame), charge));
    }

    pub fn clear(&mut self) {
        self.items = VecDeque::new();
        self.set_bytes(0);
    }

    /// Moves queued bytes into `out` (framed for `transport`), up to about [`WRITE_GATHER_BYTES_MAX`] (a single
    /// larger item still goes whole). Returns the number of bytes taken for writing. Stamped lines record their latency
    /// up to `now_ms` in `metrics`.
    pub fn take(
        &mut self,
        transport: Transport,
        out: &mut Vec<u8>,
        now_ms: u64,
        metrics: &ShardMetrics,
    ) -> usize {
        let mut taken = 0;
        let mut released = 0;
        while let Some(item) = self.items.front() {
            if taken > 0 && taken + item.len() > WRITE_GATHER_BYTES_MAX {
                break;
            }
            match (transport, item) {
                (Transport::Tcp, OutItem::Lines(b, stamp, charge)) => {
                    record(*stamp, now_ms, metrics);
                    out.extend_from_slice(b);
                    taken += b.len();
                    released += charge;
                    self.items.pop_front();
                }
                (_, OutItem::Frame(b, charge)) => {
                    out.extend_from_slice(b);
                    taken += b.len();
                    released += charge;
                    self.items.pop_front();
                }
                (Transport::WebSocket, OutItem::Lines(..)) => {
                    // One text frame for the run of line items at the front.
                    let mut payload = 0;
                    let mut count = 0;
                    for item in &self.items {
                        match item {
                            OutItem::Lines(b, ..)
                                if count == 0
                                    || taken + payload + b.len() <= WRITE_GATHER_BYTES_MAX =>
                            {
                                payload += b.len();
                                count += 1;
                            }
                            _ => break,
                        }
                    }
                    encode_frame_header(ServerFrame::Text, payload, out);
                    for item in self.items.drain(..count) {
                        released += item.charge();
                        if let OutItem::Lines(b, stamp, _) = item {
                            record(stamp, now_ms, metrics);
                            out.extend_from_slice(&b);
                        }
                    }
                    taken += payload;
                }
            }
        }
        self.set_bytes(self.bytes - released);
        if self.items.is_empty() && self.items.capacity() > QUEUE_IDLE_CAPACITY_MAX {
            self.items = VecDeque::new();
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ws::decode_server_frames;

    #[test]
    fn websocket_lines_share_one_frame_and_control_frames_stay_whole() {
        let mut queue = OutQueue::default();
        queue.push_stamped(Bytes::from_static(b"A\r\n"), Stamp::None);
        queue.push_stamped(Bytes::from_static(b"B\r\n"), Stamp::None);
        queue.push_frame(vec![0x8a, 0]);
        queue.push_stamped(Bytes::from_static(b"C\r\n"), Stamp::None);
        assert!(queue.bytes() >= 11 + 4 * ITEM_OVERHEAD_BYTES);
        let mut out = Vec::new();
        let metrics = ShardMetrics::default();
        assert_eq!(queue.take(Transport::WebSocket, &mut out, 0, &metrics), 11);
        assert!(queue.is_empty());
        assert_eq!(queue.bytes(), 0);
        let (frames, used) = decode_server_frames(&out);
        assert_eq!(used, out.len());
        assert_eq!(
            frames,
            vec![
                (1, b"A\r\nB\r\n".to_vec()),
                (10, vec![]),
                (1, b"C\r\n".to_vec())
            ]
        );
    }

    #[test]
    fn tcp_gathers_up_to_the_limit() {
        let mut queue = OutQueue::default();
        let line = Bytes::from(vec![b'x'; 1000]);
        for _ in 0..100 {
            queue.push_stamped(line.clone(), Stamp::None);
        }
        let mut out = Vec::new();
        let metrics = ShardMetrics::default();
        let first = queue.take(Transport::Tcp, &mut out, 0, &metrics);
        assert_eq!(first, out.len());
        assert!((WRITE_GATHER_BYTES_MAX - 1000..=WRITE_GATHER_BYTES_MAX).contains(&first));
        let mut rest = Vec::new();
        while !queue.is_empty() {
            queue.take(Transport::WebSocket, &mut rest, 0, &metrics);
        }
        assert_eq!(queue.bytes(), 0);
    }

    #[test]
    fn stamped_lines_record_their_latency_when_taken() {
        let metrics = ShardMetrics::default();
        for transport in [Transport::Tcp, Transport::WebSocket] {
            let mut queue = OutQueue::default();
            queue.push_stamped(Bytes::from_static(b"A\r\n"), Stamp::Delivery(1_000));
            queue.push_stamped(Bytes::from_static(b"B\r\n"), Stamp::Ack(1_003));
            queue.push_owned(b"C\r\n".to_vec(), Stamp::None);
            let mut out = Vec::new();
            queue.take(transport, &mut out, 1_005, &metrics);
        }
        assert_eq!(metrics.delivery_latency.count(), 2);
        assert_eq!(metrics.ack_latency.count(), 2);
        let mut text = String::new();
        crate::metrics::render(std::slice::from_ref(&metrics), &mut text);
        // 5 ms twice for deliveries, 2 ms twice for acks.
        assert!(
            text.contains("twitchy_delivery_latency_seconds_sum 0.01\n"),
            "{text}"
        );
        assert!(
            text.contains("twitchy_ack_latency_seconds_sum 0.004\n"),
            "{text}"
        );
    }

    #[test]
    fn owned_replies_are_charged_by_what_they_hold_and_given_back_when_written() {
        let mut queue = OutQueue::default();
        // A tiny reply in a big buffer is trimmed, so it holds (and is charged) little more than its length.
        let mut pong = Vec::with_capacity(4096);
        pong.extend_from_slice(b":tmi.twitch.tv PONG tmi.twitch.tv\r\n");
        let len = pong.len();
        assert_eq!(
            OutQueue::owned_charge(&pong, pong.capacity()),
            len + ITEM_OVERHEAD_BYTES
        );
        queue.push_owned(pong, Stamp::None);
        let one = queue.bytes();
        assert!((len + ITEM_OVERHEAD_BYTES..len + ITEM_OVERHEAD_BYTES + 16).contains(&one));
        // Many tiny replies cost their overhead too: a limit in bytes bounds the memory they hold.
        for _ in 0..999 {
            queue.push_owned(
                b":tmi.twitch.tv PONG tmi.twitch.tv\r\n".to_vec(),
                Stamp::None,
            );
        }
        assert!(
            queue.bytes() >= 1000 * (len + ITEM_OVERHEAD_BYTES),
            "{}",
            queue.bytes()
        );
        // A buffer with little slack is kept (and charged) whole.
        let mut snug = Vec::with_capacity(100);
        snug.extend_from_slice(&[b'x'; 90]);
        assert_eq!(
            OutQueue::owned_charge(&snug, snug.capacity()),
            100 + ITEM_OVERHEAD_BYTES
        );
        let metrics = ShardMetrics::default();
        let mut out = Vec::new();
        while !queue.is_empty() {
            queue.take(Transport::Tcp, &mut out, 0, &metrics);
        }
        assert_eq!(queue.bytes(), 0, "everything charged is given back");
        assert_eq!(out.len(), 1000 * len);
    }
}
