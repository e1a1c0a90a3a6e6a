//! Minimal sans-IO HTTP/1.1: building the load generator's few requests,
//! reading responses (Content-Length, chunked, or until close), and parsing
//! requests for the naive baseline server.

use crate::ws::{WsError, head_len};

/// Largest response or request body accepted; `/metrics` is the biggest body
/// the load generator reads and stays far below this.
pub const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    Malformed(String),
    TooLarge,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Malformed(why) => write!(f, "malformed HTTP message: {why}"),
            HttpError::TooLarge => write!(f, "HTTP message too large"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<WsError> for HttpError {
    fn from(_: WsError) -> Self {
        HttpError::TooLarge
    }
}

/// A request that asks the server to close the connection after answering,
/// so that a response without a length still ends.
pub fn request(method: &str, host: &str, path: &str, json_body: Option<&str>) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(body) = json_body {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// Header names and values in the order received.
type Headers = Vec<(String, String)>;

fn parse_headers(head: &str) -> Result<(&str, Headers), HttpError> {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| HttpError::Malformed(format!("header line {line:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok((first, headers))
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Parses a complete response. `eof` says whether the peer has closed, which
/// ends a body that has neither a length nor chunking. Returns `Ok(None)`
/// when more bytes are needed.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, HttpError> {
    let Some(head) = head_len(buf)? else {
        return if eof {
            Err(HttpError::Malformed(
                "connection closed inside the head".into(),
            ))
        } else {
            Ok(None)
        };
    };
    let head_text = std::str::from_utf8(&buf[..head])
        .map_err(|_| HttpError::Malformed("head is not UTF-8".into()))?;
    let (status_line, headers) = parse_headers(head_text)?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Malformed(format!("status line {status_line:?}")))?;
    let rest = &buf[head..];
    if let Some(len) = find_header(&headers, "content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| HttpError::Malformed("content-length".into()))?;
        if len > BODY_BYTES_MAX {
            return Err(HttpError::TooLarge);
        }
        return Ok((rest.len() >= len).then(|| Response {
            status,
            body: rest[..len].to_vec(),
        }));
    }
    let chunked = find_header(&headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return Ok(decode_chunked(rest)?.map(|body| Response { status, body }));
    }
    if rest.len() > BODY_BYTES_MAX {
        return Err(HttpError::TooLarge);
    }
    Ok(eof.then(|| Response {
        status,
        body: rest.to_vec(),
    }))
}

fn decode_chunked(mut rest: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&rest[..line_end])
            .map_err(|_| HttpError::Malformed("chunk size".into()))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed(format!("chunk size {size_text:?}")))?;
        if body.len() + size > BODY_BYTES_MAX {
            return Err(HttpError::TooLarge);
        }
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Parses a complete request with an optional Content-Length body. Returns
/// the request and the bytes it used, or `Ok(None)` when more are needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let Some(head) = head_len(buf)? else {
        return Ok(None);
    };
    let head_text = std::str::from_utf8(&buf[..head])
        .map_err(|_| HttpError::Malformed("head is not UTF-8".into()))?;
    let (request_line, headers) = parse_headers(head_text)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(format!(
            "request line {request_line:?}"
        )));
    };
    let len: usize = match find_header(&headers, "content-length") {
        Some(v) => v
            .parse()
            .map_err(|_| HttpError::Malformed("content-length".into()))?,
        None => 0,
    };
    if len > BODY_BYTES_MAX {
        return Err(HttpError::TooLarge);
    }
    if buf.len() < head + len {
        return Ok(None);
    }
    Ok(Some((
        Request {
            method: method.to_string(),
            path: path.to_string(),
            headers,
            body: buf[head..head + len].to_vec(),
        },
        head + len,
    )))
}

/// A complete response with a JSON (or text) body that closes the connection.
pub fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Status",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one sample's value from Prometheus text, summing every series of
/// the metric (`twitchy_connections{shard="0"}` and `{shard="1"}` add up).
pub fn prometheus_sum(text: &str, metric: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let value_text = if let Some(labelled) = rest.strip_prefix('{') {
            match labelled.split_once('}') {
                Some((_, v)) => v,
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest
        } else {
            // A longer metric name sharing the prefix.
            continue;
        };
        if let Some(value) = value_text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            found = true;
            sum += value;
        }
    }
    found.then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_content_length_chunked_and_close_delimited_bodies() {
        let fixed = b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(
            parse_response(fixed, false).unwrap(),
            Some(Response {
                status: 201,
                body: b"hello".to_vec()
            })
        );
        assert_eq!(parse_response(&fixed[..fixed.len() - 1], false), Ok(None));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false).unwrap().unwrap().body,
            b"abcde"
        );
        assert_eq!(parse_response(&chunked[..60], false), Ok(None));
        let until_close = b"HTTP/1.1 200 OK\r\n\r\nbody";
        assert_eq!(parse_response(until_close, false), Ok(None));
        assert_eq!(
            parse_response(until_close, true).unwrap().unwrap().body,
            b"body"
        );
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200", true).is_err());
    }

    #[test]
    fn parses_requests_with_bodies_and_waits_for_the_rest() {
        let wire = request("POST", "h", "/api/register", Some("{\"a\":1}"));
        let (req, used) = parse_request(&wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/api/register");
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.body, b"{\"a\":1}");
        assert_eq!(parse_request(&wire[..wire.len() - 2]), Ok(None));
        assert!(parse_request(b"GARBAGE\r\n\r\n").is_err());
    }

    #[test]
    fn sums_prometheus_series() {
        let text = "# HELP x\nprocess_resident_memory_bytes 1.5e6\n\
                    twitchy_connections{shard=\"0\"} 3\ntwitchy_connections{shard=\"1\"} 4\n\
                    twitchy_connections_total 99\n";
        assert_eq!(
            prometheus_sum(text, "process_resident_memory_bytes"),
            Some(1.5e6)
        );
        assert_eq!(prometheus_sum(text, "twitchy_connections"), Some(7.0));
        assert_eq!(prometheus_sum(text, "missing"), None);
    }
}
