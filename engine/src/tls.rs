//! TLS termination with rustls: `https://` and `wss://` on the HTTP listener, and IRC over TLS on its own listener.
//!
//! One [`CertStore`] holds the certificate and key read from PEM files; every shard's handshakes ask it for the
//! current pair, so a reload (on SIGHUP) swaps it for new connections without touching open ones. A reload that
//! fails (unreadable file, key not matching the certificate) keeps the previous pair and is logged and counted.
//!
//! A TLS listener peeks at a new connection's first byte: a TLS handshake record starts with 22; anything else is a
//! client speaking plain text to a TLS port, which gets a plain-text explanation (an HTTP `400` with a JSON body,
//! or an IRC NOTICE) instead of a handshake failure it cannot read. The handshake has a deadline.
//!
//! Architecture invariant: nothing here knows about chat. [`EdgeStream`] is a byte stream to the connection
//! drivers; only a plain one offers its socket for the shard's direct writes (a TLS stream must encrypt, so its
//! task writes).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 22;
/// Certificates read from one PEM file at most.
pub const CERT_CHAIN_CERTS_MAX: usize = 16;

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Certificates { path: PathBuf, reason: String },
    #[error("cannot read a private key from {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain and its private key from PEM files and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|err| TlsError::Certificates {
            path: cert.to_owned(),
            reason: err.to_string(),
        })?
        .take(CERT_CHAIN_CERTS_MAX)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Certificates {
            path: cert.to_owned(),
            reason: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificates {
            path: cert.to_owned(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|err| TlsError::Key {
        path: key.to_owned(),
        reason: err.to_string(),
    })?;
    CertifiedKey::from_der(chain, private_key, &provider()).map_err(|err| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: err.to_string(),
    })
}

/// The current certificate and key, shared by every shard; replaced whole by [`CertStore::reload`].
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl CertStore {
    /// Loads the pair; an error here stops the server from starting.
    pub fn open(cert_path: &Path, key_path: &Path) -> Result<Arc<CertStore>, TlsError> {
        let key = load_certified_key(cert_path, key_path)?;
        Ok(Arc::new(CertStore {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(key)),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }))
    }

    /// Reads the files again. On success new handshakes use the new pair; on failure the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(err)
            }
        }
    }

    /// Reloads that succeeded and that failed, for `/metrics`.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What the listeners hand to rustls: one configuration per protocol, one certificate store behind both.
#[derive(Debug, Clone)]
pub struct TlsTerminator {
    pub certs: Arc<CertStore>,
    http: Arc<ServerConfig>,
    irc: Arc<ServerConfig>,
    handshake_ms: u64,
}

impl TlsTerminator {
    pub fn new(certs: Arc<CertStore>, handshake_ms: u64) -> Result<TlsTerminator, rustls::Error> {
        let config = |alpn: Vec<Vec<u8>>| -> Result<Arc<ServerConfig>, rustls::Error> {
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(certs.clone());
            config.alpn_protocols = alpn;
            Ok(Arc::new(config))
        };
        Ok(TlsTerminator {
            http: config(vec![b"http/1.1".to_vec()])?,
            irc: config(Vec::new())?,
            certs,
            handshake_ms: handshake_ms.max(1),
        })
    }
}

/// Which protocol a TLS listener carries (for ALPN and for the plain-text refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    Http,
    Irc,
}

/// How a TLS accept ended when it did not produce a stream.
#[derive(Debug)]
pub enum AcceptError {
    /// The client spoke plain text to a TLS port; it was told so and the socket is closed.
    PlainText,
    /// No handshake within the deadline.
    Timeout,
    /// The handshake failed, or the client went away.
    Failed(io::Error),
}

/// Completes the server side of a TLS handshake on `stream`, within the terminator's deadline.
pub async fn accept(
    terminator: &TlsTerminator,
    stream: TcpStream,
    carries: Carries,
) -> Result<EdgeStream, AcceptError> {
    let deadline = Duration::from_millis(terminator.handshake_ms);
    let handshake = async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(0) => return Err(AcceptError::Failed(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
                refuse_plain_text(&stream, carries);
                return Err(AcceptError::PlainText);
            }
            Ok(_) => {}
            Err(err) => return Err(AcceptError::Failed(err.into())),
        }
        let config = match carries {
            Carries::Http => terminator.http.clone(),
            Carries::Irc => terminator.irc.clone(),
        };
        futures_rustls::TlsAcceptor::from(config)
            .accept(stream)
            .await
            .map(|tls| EdgeStream::Tls(Box::new(tls)))
            .map_err(AcceptError::Failed)
    };
    let timeout = async {
        glommio::timer::sleep(deadline).await;
        Err(AcceptError::Timeout)
    };
    futures_lite::future::or(handshake, timeout).await
}

/// Tells a plain-text client of a TLS port what went wrong, in its own protocol.
fn refuse_plain_text(stream: &TcpStream, carries: Carries) {
    let answer = match carries {
        Carries::Http => {
            let body = r#"{"error":"this port speaks TLS: use https:// or wss://"}"#;
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        Carries::Irc => {
            let mut line = Vec::new();
            crate::protocol::twitch::encode_notice(
                None,
                None,
                "This port speaks TLS; connect with TLS, or use the plain IRC port.",
                crate::protocol::twitch::SERVER_NAME_DEFAULT,
                true,
                &mut line,
            );
            line
        }
    };
    let _ = crate::shard::send_now(stream.as_raw_fd(), &answer);
    let _ = stream_shutdown(stream);
}

fn stream_shutdown(stream: &TcpStream) -> io::Result<()> {
    // SAFETY: shutdown(2) on a socket this stream owns; the stream still closes it when dropped.
    if unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A client connection as the drivers see it: plain TCP, or TLS over TCP.
pub enum EdgeStream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl EdgeStream {
    /// The socket, for the shard's direct writes: only a plain stream has one (TLS bytes must be encrypted first).
    pub fn direct_fd(&self) -> Option<RawFd> {
        match self {
            EdgeStream::Plain(stream) => Some(stream.as_raw_fd()),
            EdgeStream::Tls(_) => None,
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            EdgeStream::Plain(stream) => stream,
            EdgeStream::Tls(tls) => tls.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, EdgeStream::Tls(_))
    }
}

impl AsyncRead for EdgeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            EdgeStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            EdgeStream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for EdgeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            EdgeStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            EdgeStream::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EdgeStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            EdgeStream::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EdgeStream::Plain(stream) => Pin::new(stream).poll_close(cx),
            EdgeStream::Tls(tls) => Pin::new(&mut **tls).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    #[test]
    fn a_matching_pair_loads_and_mismatched_or_missing_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = write_pair(dir.path(), "a");
        let (_, key_b) = write_pair(dir.path(), "b");
        let loaded = load_certified_key(&cert_a, &key_a).unwrap();
        assert_eq!(loaded.cert.len(), 1);

        let err = load_certified_key(&cert_a, &key_b).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        let err = load_certified_key(&dir.path().join("none.crt"), &key_a).unwrap_err();
        assert!(matches!(err, TlsError::Certificates { .. }), "{err}");
        let err = load_certified_key(&cert_a, &cert_a).unwrap_err();
        assert!(matches!(err, TlsError::Key { .. }), "{err}");
        std::fs::write(dir.path().join("empty.crt"), "").unwrap();
        let err = load_certified_key(&dir.path().join("empty.crt"), &key_a).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn a_reload_swaps_the_pair_and_a_failed_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "live");
        let store = CertStore::open(&cert, &key).unwrap();
        let first = store.current().cert[0].clone();

        let (cert_new, key_new) = write_pair(dir.path(), "next");
        std::fs::copy(&cert_new, &cert).unwrap();
        std::fs::copy(&key_new, &key).unwrap();
        store.reload().unwrap();
        let second = store.current().cert[0].clone();
        assert_ne!(first, second);
        assert_eq!(store.reload_counts(), (1, 0));

        // A half-replaced pair (new key, old certificate) is refused; the last good pair keeps serving.
        let (_, key_other) = write_pair(dir.path(), "other");
        std::fs::copy(&key_other, &key).unwrap();
        assert!(store.reload().is_err());
        assert_eq!(store.current().cert[0], second);
        assert_eq!(store.reload_counts(), (1, 1));
    }
}
