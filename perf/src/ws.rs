//! A small sans-IO WebSocket (RFC 6455) codec: the client handshake, the
//! server's answer to it, and frame encoding/decoding.
//!
//! The load generator frames by hand instead of going through a WebSocket
//! library so that plain TCP and WebSocket connections share one read path
//! (socket bytes, then frames, then lines), and so that a read can be
//! cancelled at any point without losing bytes.

use base64::Engine as _;

/// Largest frame payload accepted. IRC lines are far smaller; a bigger frame
/// means a confused peer.
pub const FRAME_PAYLOAD_BYTES_MAX: u64 = 1024 * 1024;

/// Largest handshake (request or response head) accepted.
pub const HANDSHAKE_BYTES_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    /// Reserved opcode or reserved bits set.
    BadFrame,
    TooLarge,
    BadHandshake(String),
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::BadFrame => write!(f, "malformed websocket frame"),
            WsError::TooLarge => write!(f, "websocket frame or handshake too large"),
            WsError::BadHandshake(why) => write!(f, "bad websocket handshake: {why}"),
        }
    }
}

impl std::error::Error for WsError {}

/// Appends one frame to `out`. Clients must pass a mask, servers must not.
pub fn encode_frame(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    out.push(0x80 | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// Where one complete frame at the front of a buffer lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameAt {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    /// The payload's bytes (still masked, if `mask` is set), as offsets into the buffer.
    pub payload: std::ops::Range<usize>,
}

/// Reads the header of the frame at the front of `buf`: `Ok(None)` when the frame is not complete yet. Lets a
/// reader walk many frames in one buffer and remove them all at once, instead of moving the rest of the buffer
/// for every frame.
pub fn frame_at(buf: &[u8]) -> Result<Option<FrameAt>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(WsError::BadFrame);
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(WsError::BadFrame)?;
    let masked = b1 & 0x80 != 0;
    let mut header = 2usize;
    let len = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            header = 4;
            u64::from(u16::from_be_bytes([buf[2], buf[3]]))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            header = 10;
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buf[2..10]);
            u64::from_be_bytes(bytes)
        }
        n => u64::from(n),
    };
    if len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(WsError::TooLarge);
    }
    let mask_len = if masked { 4 } else { 0 };
    let total = header + mask_len + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let mask = masked.then(|| {
        [
            buf[header],
            buf[header + 1],
            buf[header + 2],
            buf[header + 3],
        ]
    });
    Ok(Some(FrameAt {
        fin: b0 & 0x80 != 0,
        opcode,
        mask,
        payload: header + mask_len..total,
    }))
}

/// Unmasks a payload in place.
pub fn unmask(payload: &mut [u8], key: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)`
/// when more bytes are needed. Masked payloads are unmasked.
pub fn decode_frame(buf: &mut Vec<u8>) -> Result<Option<Frame>, WsError> {
    let Some(at) = frame_at(buf)? else {
        return Ok(None);
    };
    let mut payload = buf[at.payload.clone()].to_vec();
    if let Some(key) = at.mask {
        unmask(&mut payload, key);
    }
    buf.drain(..at.payload.end);
    Ok(Some(Frame {
        fin: at.fin,
        opcode: at.opcode,
        payload,
    }))
}

/// The `Sec-WebSocket-Key` for a 16-byte nonce.
pub fn client_key(nonce: [u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

/// The opening GET of a client handshake asking for the `irc` subprotocol.
pub fn client_request(host: &str, path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: irc\r\n\r\n"
    )
}

/// Checks the server's answer to [`client_request`]. Returns the length of
/// the response head once it is complete (bytes after it are frames), or
/// `Ok(None)` when more bytes are needed.
pub fn check_server_response(buf: &[u8], key: &str) -> Result<Option<usize>, WsError> {
    let Some(head_len) = head_len(buf)? else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_len])
        .map_err(|_| WsError::BadHandshake("response head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if status.split(' ').nth(1) != Some("101") {
        return Err(WsError::BadHandshake(format!("status line {status:?}")));
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, v)| v.trim());
    if accept != Some(expected.as_str()) {
        return Err(WsError::BadHandshake("wrong Sec-WebSocket-Accept".into()));
    }
    Ok(Some(head_len))
}

/// The server's 101 answer for a client key, naming the `irc` subprotocol
/// when the client asked for it.
pub fn server_response(key: &str, irc_subprotocol: bool) -> String {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let protocol = if irc_subprotocol {
        "Sec-WebSocket-Protocol: irc\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    )
}

/// Length of an HTTP head ending in an empty line, `Ok(None)` if incomplete.
pub fn head_len(buf: &[u8]) -> Result<Option<usize>, WsError> {
    match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(pos) => Ok(Some(pos + 4)),
        None if buf.len() > HANDSHAKE_BYTES_MAX => Err(WsError::TooLarge),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_at_each_length_encoding() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let mut wire = Vec::new();
                encode_frame(Opcode::Text, &payload, mask, &mut wire);
                wire.extend_from_slice(b"next");
                // Feed byte by byte up to the end of the frame to check that
                // partial frames are never taken.
                let frame_len = wire.len() - 4;
                let mut buf = wire[..frame_len - 1].to_vec();
                assert_eq!(decode_frame(&mut buf), Ok(None), "len {len}");
                buf.push(wire[frame_len - 1]);
                buf.extend_from_slice(b"next");
                let frame = decode_frame(&mut buf).unwrap().unwrap();
                assert!(frame.fin);
                assert_eq!(frame.opcode, Opcode::Text);
                assert_eq!(frame.payload, payload, "len {len}");
                assert_eq!(buf, b"next");
            }
        }
    }

    #[test]
    fn rejects_reserved_bits_opcodes_and_huge_frames() {
        assert_eq!(decode_frame(&mut vec![0xC1, 0x00]), Err(WsError::BadFrame));
        assert_eq!(decode_frame(&mut vec![0x83, 0x00]), Err(WsError::BadFrame));
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(FRAME_PAYLOAD_BYTES_MAX + 1).to_be_bytes());
        assert_eq!(decode_frame(&mut huge), Err(WsError::TooLarge));
    }

    #[test]
    fn handshake_matches_the_rfc_example() {
        // The key and accept value are the worked example of RFC 6455 §1.3.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let response = server_response(key, true);
        assert!(response.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        let mut bytes = response.into_bytes();
        let head = bytes.len();
        bytes.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(check_server_response(&bytes, key), Ok(Some(head)));
        assert_eq!(check_server_response(&bytes[..head - 1], key), Ok(None));
        assert!(check_server_response(&bytes, "b3RoZXIga2V5IGhlcmUhIQ==").is_err());
        let refused = b"HTTP/1.1 400 Bad Request\r\n\r\n";
        assert!(check_server_response(refused, key).is_err());
    }

    #[test]
    fn tungstenite_reads_our_server_frames_and_we_read_its_client_frames() {
        use tungstenite::Message;
        use tungstenite::protocol::{Role, WebSocket};
        // Our unmasked server frame, read by a tungstenite client.
        let mut wire = Vec::new();
        encode_frame(Opcode::Text, b"PING :x\r\n", None, &mut wire);
        let mut client = WebSocket::from_raw_socket(std::io::Cursor::new(wire), Role::Client, None);
        assert_eq!(client.read().unwrap(), Message::text("PING :x\r\n"));
        // A tungstenite client frame (masked), read by our decoder.
        let mut client =
            WebSocket::from_raw_socket(std::io::Cursor::new(Vec::<u8>::new()), Role::Client, None);
        client.send(Message::text("PONG :x")).unwrap();
        let mut bytes = client.get_ref().get_ref().clone();
        let frame = decode_frame(&mut bytes).unwrap().unwrap();
        assert_eq!(frame.payload, b"PONG :x");
        assert!(bytes.is_empty());
    }
}
