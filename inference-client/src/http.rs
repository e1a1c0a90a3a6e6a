//! A shard-local HTTP/1.1 client for one endpoint: hyper 1.x connections over glommio TCP streams, kept alive in a
//! small idle pool.
//!
//! Architecture invariant: a [`LocalHttpClient`] and its connections live and die on the shard that made them;
//! nothing here is `Send`. HTTP/1.1 carries one request at a time per connection, so the number of connections is
//! bounded by the caller's in-flight request limit; the idle pool keeps at most `connections_idle_max` of them.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;

use crate::rt::GlommioIo;
use crate::{Error, ErrorKind};

/// An endpoint URL, parsed: `http://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    /// The URL as configured, for metrics labels and logs.
    pub base: String,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (empty for none), prepended to every request path.
    pub path_prefix: String,
}

impl EndpointUrl {
    /// Parses a base URL. Only plain `http` is supported: endpoints sit on a private network next to the shards.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let invalid = |why: &str| Error::new(ErrorKind::InvalidEndpoint, format!("{url:?}: {why}"));
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| invalid("must start with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(invalid("needs a host and no credentials"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unclosed IPv6 bracket"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().map_err(|_| invalid("bad port"))?,
                None if after.is_empty() => 80,
                None => return Err(invalid("junk after IPv6 address")),
            };
            (host.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_owned(),
                    port.parse().map_err(|_| invalid("bad port"))?,
                ),
                None => (authority.to_owned(), 80),
            }
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("bad host"));
        }
        if path.contains(['?', '#']) || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("bad path"));
        }
        Ok(EndpointUrl {
            base: url.to_owned(),
            host,
            port,
            path_prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves the address. An IP literal needs no lookup; a host name is looked up off the shard (cached, see
    /// [`crate::dns`]), waiting at most `timeout`, so a silent DNS server cannot stall the shard.
    async fn resolve(&self, timeout: Duration) -> Result<SocketAddr, Error> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let lookup = async {
            crate::dns::Resolver::global()
                .resolve(&self.host, self.port)
                .await
                .map_err(|source| {
                    Error::with_source(
                        ErrorKind::Connect,
                        format!("resolving {}", self.host),
                        source,
                    )
                })
        };
        let timer = async {
            glommio::timer::Timer::new(timeout).await;
            Err(Error::new(
                ErrorKind::Timeout,
                format!("resolving {} after {} ms", self.host, timeout.as_millis()),
            ))
        };
        futures_lite::future::or(lookup, timer).await
    }
}

/// Limits of one endpoint's client.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub connect_timeout_ms: u64,
    pub connections_idle_max: usize,
    pub response_bytes_max: usize,
}

/// A response: status and the whole body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// The HTTP client of one endpoint on one shard.
pub struct LocalHttpClient {
    url: EndpointUrl,
    host_header: String,
    limits: HttpLimits,
    idle: RefCell<Vec<SendRequest<Full<Bytes>>>>,
    /// Connections whose driver task is still running.
    connections_open: Rc<Cell<usize>>,
}

impl std::fmt::Debug for LocalHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHttpClient")
            .field("url", &self.url.base)
            .field("idle", &self.idle.borrow().len())
            .field("connections_open", &self.connections_open.get())
            .finish()
    }
}

impl LocalHttpClient {
    pub fn new(url: EndpointUrl, limits: HttpLimits) -> Self {
        let host_header = url.host_header();
        LocalHttpClient {
            url,
            host_header,
            limits,
            idle: RefCell::new(Vec::new()),
            connections_open: Rc::new(Cell::new(0)),
        }
    }

    pub fn url(&self) -> &EndpointUrl {
        &self.url
    }

    pub fn connections_open(&self) -> usize {
        self.connections_open.get()
    }

    /// Drops every idle connection, e.g. after the endpoint failed: they are likely dead too.
    pub fn close_idle(&self) {
        self.idle.borrow_mut().clear();
    }

    /// Sends one request and reads the whole response, or fails after `timeout`. A request that times out takes
    /// its connection with it (hyper closes a connection whose response is abandoned).
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let exchange = self.exchange(method, path, body);
        let timer = async {
            glommio::timer::Timer::new(timeout).await;
            Err(Error::new(
                ErrorKind::Timeout,
                format!("{} {path} after {} ms", self.url.base, timeout.as_millis()),
            ))
        };
        futures_lite::future::or(exchange, timer).await
    }

    async fn exchange(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response, Error> {
        let has_body = body.is_some();
        let (mut sender, reused) = self.sender().await?;
        let body = body.unwrap_or_default();
        let build = |body: Bytes| {
            let mut builder = http::Request::builder()
                .method(method.clone())
                .uri(format!("{}{path}", self.url.path_prefix))
                .header(http::header::HOST, &self.host_header);
            if has_body {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            }
            builder
                .body(Full::new(body))
                .map_err(|source| Error::with_source(ErrorKind::Http, "building request", source))
        };
        let request = build(body.clone())?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            // A pooled connection the server closed while it sat idle (its keep-alive timeout) fails before the
            // request was processed: that is no fault of the endpoint, so the request goes once more on a fresh
            // connection.
            Err(error)
                if reused
                    && (error.is_canceled()
                        || error.is_incomplete_message()
                        || error.is_closed()) =>
            {
                log::debug!(
                    "{}: pooled connection was closed ({error}); retrying",
                    self.url.base
                );
                sender = self.connect().await?;
                sender.send_request(build(body)?).await.map_err(|source| {
                    Error::with_source(ErrorKind::Http, format!("{} {path}", self.url.base), source)
                })?
            }
            Err(source) => {
                return Err(Error::with_source(
                    ErrorKind::Http,
                    format!("{} {path}", self.url.base),
                    source,
                ));
            }
        };
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), self.limits.response_bytes_max)
            .collect()
            .await
            .map_err(|source| {
                Error::with_source(
                    ErrorKind::Http,
                    format!("{} {path} body", self.url.base),
                    source,
                )
            })?
            .to_bytes();
        // The connection goes back to the pool only once the whole response was read, so it is clean for reuse.
        let mut idle = self.idle.borrow_mut();
        if !sender.is_closed() && idle.len() < self.limits.connections_idle_max {
            idle.push(sender);
        }
        Ok(Response { status, body })
    }

    /// A connection ready for a request, and whether it came from the pool: an idle one if any is still alive,
    /// else a new one.
    async fn sender(&self) -> Result<(SendRequest<Full<Bytes>>, bool), Error> {
        loop {
            let candidate = self.idle.borrow_mut().pop();
            let Some(mut sender) = candidate else { break };
            if sender.is_closed() {
                continue;
            }
            if sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
        }
        Ok((self.connect().await?, false))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Error> {
        let timeout = Duration::from_millis(self.limits.connect_timeout_ms.max(1));
        let addr = self.url.resolve(timeout).await?;
        let stream = glommio::net::TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(|source| {
                Error::with_source(
                    ErrorKind::Connect,
                    self.url.base.clone(),
                    std::io::Error::from(source),
                )
            })?;
        // Requests are small and latency-bound: send them without waiting to coalesce.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(GlommioIo::new(stream))
            .await
            .map_err(|source| {
                Error::with_source(
                    ErrorKind::Http,
                    format!("{} handshake", self.url.base),
                    source,
                )
            })?;
        let open = Rc::clone(&self.connections_open);
        open.set(open.get() + 1);
        let base = self.url.base.clone();
        glommio::spawn_local(async move {
            if let Err(error) = connection.await {
                log::debug!("connection to {base} ended: {error}");
            }
            open.set(open.get() - 1);
        })
        .detach();
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoint_urls() {
        let url = EndpointUrl::parse("http://127.0.0.1:18000").expect("valid");
        assert_eq!(
            (url.host.as_str(), url.port, url.path_prefix.as_str()),
            ("127.0.0.1", 18000, "")
        );
        let url = EndpointUrl::parse("http://vllm.internal/api/").expect("valid");
        assert_eq!(
            (url.host.as_str(), url.port, url.path_prefix.as_str()),
            ("vllm.internal", 80, "/api")
        );
        let url = EndpointUrl::parse("http://[::1]:9000/x").expect("valid");
        assert_eq!((url.host.as_str(), url.port), ("::1", 9000));
        assert_eq!(url.host_header(), "[::1]:9000");
        for bad in [
            "",
            "127.0.0.1:1",
            "https://a:1",
            "http://",
            "http://a:b",
            "http://a:99999",
            "http://u@a:1",
            "http://[::1",
            "http://a:1/x?y",
            "http://a b:1",
        ] {
            let error = EndpointUrl::parse(bad).expect_err(bad);
            assert_eq!(error.kind, ErrorKind::InvalidEndpoint);
        }
    }
}
