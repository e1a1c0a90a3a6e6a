//! WebSocket framing after the handshake, sans-IO.
//!
//! [`WsDecoder`] takes the bytes a client sent and returns whole messages (text and binary, with fragmented
//! messages reassembled), pings and closes; frame headers are parsed by tungstenite's [`FrameHeader`]. Server
//! frames are written by [`encode_frame_header`]: the engine puts several IRC lines in one text frame, the way
//! Twitch does, so one socket write carries a whole batch of lines.
//!
//! Memory is bounded and released when idle: the decoder keeps at most one incomplete frame (at most
//! `message_bytes_max` of payload) and frees its buffer whenever it holds no partial frame, so an idle connection
//! costs nothing here.

use std::io::Cursor;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Close codes the server sends (RFC 6455 section 7.4.1).
pub mod close_code {
    /// Normal closure, the answer to a client's close.
    pub const NORMAL: u16 = 1000;
    /// The client broke the protocol (unmasked frame, bad opcode, bad continuation, bad control frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message larger than the server accepts.
    pub const TOO_BIG: u16 = 1009;
}

/// Longest control frame payload (RFC 6455).
const CONTROL_PAYLOAD_BYTES_MAX: u64 = 125;

/// What the client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// A whole text message.
    Text(String),
    /// A whole binary message (IRC clients do not send these; the engine treats UTF-8 ones as text).
    Binary(Vec<u8>),
    /// A ping, to be answered with a pong carrying the payload.
    Ping(Vec<u8>),
    /// The client closed; answer with a close frame and end the connection.
    Close,
    /// The client broke the protocol: send a close frame with this code and end the connection.
    Fail(u16),
}

/// Decodes client frames. Feed it bytes with [`WsDecoder::push`], then call [`WsDecoder::next_event`] until `None`.
#[derive(Debug)]
pub struct WsDecoder {
    buffer: Vec<u8>,
    start: usize,
    message: Vec<u8>,
    message_opcode: Option<Data>,
    message_bytes_max: usize,
    failed: bool,
}

impl WsDecoder {
    pub fn new(message_bytes_max: usize) -> WsDecoder {
        WsDecoder {
            buffer: Vec::new(),
            start: 0,
            message: Vec::new(),
            message_opcode: None,
            message_bytes_max,
            failed: false,
        }
    }

    /// Appends bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes held for frames not yet complete.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len() - self.start + self.message.len()
    }

    /// Frees the buffers when nothing is held, so idle connections keep no memory here.
    pub fn release_if_idle(&mut self) {
        if self.start == self.buffer.len() {
            self.buffer = Vec::new();
            self.start = 0;
        }
        if self.message_opcode.is_none() {
            self.message = Vec::new();
        }
    }

    fn fail(&mut self, code: u16) -> Option<WsEvent> {
        self.failed = true;
        self.buffer = Vec::new();
        self.start = 0;
        self.message = Vec::new();
        Some(WsEvent::Fail(code))
    }

    /// The next complete event, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Option<WsEvent> {
        loop {
            if self.failed {
                return None;
            }
            let mut cursor = Cursor::new(&self.buffer[self.start..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return None,
                Err(_) => return self.fail(close_code::PROTOCOL_ERROR),
            };
            let header_bytes = cursor.position() as usize;
            let Some(mask) = header.mask else {
                // Clients must mask every frame (RFC 6455 section 5.1).
                return self.fail(close_code::PROTOCOL_ERROR);
            };
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return self.fail(close_code::PROTOCOL_ERROR);
            }
            let is_control = matches!(header.opcode, OpCode::Control(_));
            if is_control && (length > CONTROL_PAYLOAD_BYTES_MAX || !header.is_final) {
                return self.fail(close_code::PROTOCOL_ERROR);
            }
            if !is_control && length > (self.message_bytes_max - self.message.len()) as u64 {
                return self.fail(close_code::TOO_BIG);
            }
            let length = length as usize;
            let available = self.buffer.len() - self.start - header_bytes;
            if available < length {
                return None;
            }
            let payload_start = self.start + header_bytes;
            let payload = &mut self.buffer[payload_start..payload_start + length];
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i & 3];
            }
            self.start = payload_start + length;
            let payload = &self.buffer[payload_start..payload_start + length];
            match header.opcode {
                OpCode::Control(Control::Ping) => return Some(WsEvent::Ping(payload.to_vec())),
                OpCode::Control(Control::Pong) => continue,
                OpCode::Control(Control::Close) => {
                    self.failed = true;
                    return Some(WsEvent::Close);
                }
                OpCode::Control(_) => return self.fail(close_code::PROTOCOL_ERROR),
                OpCode::Data(Data::Continue) => {
                    if self.message_opcode.is_none() {
                        return self.fail(close_code::PROTOCOL_ERROR);
                    }
                    self.message.extend_from_slice(payload);
                }
                OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                    if self.message_opcode.is_some() {
                        return self.fail(close_code::PROTOCOL_ERROR);
                    }
                    if header.is_final {
                        // The common case, one frame per message: no reassembly copy.
                        return self.finish(data, payload.to_vec());
                    }
                    self.message_opcode = Some(data);
                    self.message.extend_from_slice(payload);
                }
                OpCode::Data(_) => return self.fail(close_code::PROTOCOL_ERROR),
            }
            if header.is_final {
                let data = self.message_opcode.take().unwrap_or(Data::Text);
                let message = std::mem::take(&mut self.message);
                return self.finish(data, message);
            }
        }
    }

    fn finish(&mut self, data: Data, payload: Vec<u8>) -> Option<WsEvent> {
        match data {
            Data::Text => match String::from_utf8(payload) {
                Ok(text) => Some(WsEvent::Text(text)),
                Err(_) => self.fail(close_code::INVALID_PAYLOAD),
            },
            _ => Some(WsEvent::Binary(payload)),
        }
    }
}

/// Opcodes of the frames the server writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFrame {
    Text,
    Pong,
    Close,
}

/// Writes an unmasked server frame header for a payload of `length` bytes.
pub fn encode_frame_header(kind: ServerFrame, length: usize, out: &mut Vec<u8>) {
    let opcode = match kind {
        ServerFrame::Text => OpCode::Data(Data::Text),
        ServerFrame::Pong => OpCode::Control(Control::Pong),
        ServerFrame::Close => OpCode::Control(Control::Close),
    };
    let header = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    header
        .format(length as u64, out)
        .expect("writing to a Vec cannot fail");
}

/// A whole server control frame: a pong echoing `payload`, or a close with `code`.
pub fn encode_control(kind: ServerFrame, payload: &[u8], out: &mut Vec<u8>) {
    encode_frame_header(kind, payload.len(), out);
    out.extend_from_slice(payload);
}

/// A close frame carrying `code`.
pub fn encode_close(code: u16, out: &mut Vec<u8>) {
    encode_control(ServerFrame::Close, &code.to_be_bytes(), out);
}

/// A masked client frame, for tests and load generators that speak to the server.
pub fn encode_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Splits server bytes into frames: `(opcode, payload)` pairs and the bytes left over. For tests.
pub fn decode_server_frames(bytes: &[u8]) -> (Vec<(u8, Vec<u8>)>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 2 {
        let opcode = bytes[at] & 0x0f;
        let len7 = (bytes[at + 1] & 0x7f) as usize;
        let (len, header) = match len7 {
            126 if bytes.len() - at >= 4 => (
                u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                4,
            ),
            127 if bytes.len() - at >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[at + 2..at + 10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            126 | 127 => break,
            n => (n, 2),
        };
        if bytes.len() - at < header + len {
            break;
        }
        frames.push((opcode, bytes[at + header..at + header + len].to_vec()));
        at += header + len;
    }
    (frames, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    fn events(decoder: &mut WsDecoder) -> Vec<WsEvent> {
        std::iter::from_fn(|| decoder.next_event()).collect()
    }

    #[test]
    fn whole_and_split_text_frames() {
        let mut bytes = Vec::new();
        encode_client_frame(1, b"PING :a\r\n", MASK, &mut bytes);
        encode_client_frame(1, "héllo".as_bytes(), MASK, &mut bytes);
        // Byte by byte: every prefix is incomplete until the frame ends.
        let mut decoder = WsDecoder::new(1024);
        let mut seen = Vec::new();
        for b in &bytes {
            decoder.push(std::slice::from_ref(b));
            seen.extend(events(&mut decoder));
        }
        assert_eq!(
            seen,
            vec![
                WsEvent::Text("PING :a\r\n".into()),
                WsEvent::Text("héllo".into())
            ]
        );
        decoder.release_if_idle();
        assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn fragmented_message_with_ping_between() {
        let mut bytes = Vec::new();
        // Text, not final.
        bytes.extend_from_slice(&[0x01, 0x80 | 3]);
        bytes.extend_from_slice(&MASK);
        bytes.extend(b"abc".iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
        encode_client_frame(9, b"p", MASK, &mut bytes);
        // Continuation, final.
        encode_client_frame(0, b"def", MASK, &mut bytes);
        let mut decoder = WsDecoder::new(1024);
        decoder.push(&bytes);
        assert_eq!(
            events(&mut decoder),
            vec![WsEvent::Ping(b"p".to_vec()), WsEvent::Text("abcdef".into())]
        );
    }

    #[test]
    fn protocol_errors_get_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            // Unmasked.
            (vec![0x81, 0x01, b'a'], close_code::PROTOCOL_ERROR),
            // Continuation without a start.
            (
                {
                    let mut b = Vec::new();
                    encode_client_frame(0, b"x", MASK, &mut b);
                    b
                },
                close_code::PROTOCOL_ERROR,
            ),
            // Invalid UTF-8 text.
            (
                {
                    let mut b = Vec::new();
                    encode_client_frame(1, &[0xff, 0xfe], MASK, &mut b);
                    b
                },
                close_code::INVALID_PAYLOAD,
            ),
            // Too big.
            (
                {
                    let mut b = Vec::new();
                    encode_client_frame(1, &[b'a'; 100], MASK, &mut b);
                    b
                },
                close_code::TOO_BIG,
            ),
            // Reserved opcode.
            (
                {
                    let mut b = Vec::new();
                    encode_client_frame(3, b"", MASK, &mut b);
                    b
                },
                close_code::PROTOCOL_ERROR,
            ),
        ];
        for (bytes, code) in cases {
            let mut decoder = WsDecoder::new(64);
            decoder.push(&bytes);
            assert_eq!(events(&mut decoder), vec![WsEvent::Fail(code)], "{bytes:?}");
            // Nothing more is decoded after a failure.
            decoder.push(&bytes);
            assert_eq!(decoder.next_event(), None);
        }
    }

    #[test]
    fn server_frames_round_trip() {
        let mut out = Vec::new();
        let long = "x".repeat(70_000);
        for payload in ["", "a\r\nb\r\n", "x".repeat(300).as_str(), long.as_str()] {
            out.clear();
            encode_frame_header(ServerFrame::Text, payload.len(), &mut out);
            out.extend_from_slice(payload.as_bytes());
            let (frames, used) = decode_server_frames(&out);
            assert_eq!(used, out.len());
            assert_eq!(frames, vec![(1, payload.as_bytes().to_vec())]);
        }
        out.clear();
        encode_close(close_code::TOO_BIG, &mut out);
        assert_eq!(out, vec![0x88, 2, 0x03, 0xf1]);
    }
}
