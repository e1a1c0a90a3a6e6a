//! The crate's error type: a kind to act on plus the underlying cause.

use std::fmt;

/// What went wrong, in the terms the client acts on (the circuit breaker counts `Connect`, `Http`, `Status` and
/// `Timeout`; `Decode` means the endpoint answered but not in the expected format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A configuration value out of range.
    InvalidConfig,
    /// An endpoint URL that is not `http://host:port[/prefix]`.
    InvalidEndpoint,
    /// The TCP connection could not be made.
    Connect,
    /// The HTTP exchange failed (connection reset, protocol error, body too large).
    Http,
    /// The endpoint answered with a non-success status.
    Status(u16),
    /// The endpoint did not answer in time.
    Timeout,
    /// The response body was not a completion response.
    Decode,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::InvalidConfig => f.write_str("invalid config"),
            ErrorKind::InvalidEndpoint => f.write_str("invalid endpoint"),
            ErrorKind::Connect => f.write_str("connect failed"),
            ErrorKind::Http => f.write_str("http error"),
            ErrorKind::Status(status) => write!(f, "http status {status}"),
            ErrorKind::Timeout => f.write_str("timed out"),
            ErrorKind::Decode => f.write_str("undecodable response"),
        }
    }
}

/// An error of the inference client.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct Error {
    pub kind: ErrorKind,
    detail: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Error {
            kind,
            detail: detail.into(),
            source: None,
        }
    }

    pub fn with_source(
        kind: ErrorKind,
        detail: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error {
            kind,
            detail: detail.into(),
            source: Some(source.into()),
        }
    }
}
