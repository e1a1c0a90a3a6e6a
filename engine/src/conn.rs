//! The connection driver: moves bytes between one client socket and the shard core, nothing more.
//!
//! One task per connection alternates between writing what the core queued for it (everything queued since the
//! last write goes out as one socket write) and waiting for the client's bytes or a wake-up from the core. It reads
//! into the shard's shared buffer only when bytes are ready, and borrows a write buffer only while writing, so an
//! idle connection holds no buffers. The core decides everything: when to stop reading (backpressure), when to
//! close, what to write; the task ends when the core says the connection is finished or cut, or the socket fails.

use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::core::ConnId;
pub use crate::core::Transport;
use crate::ip_limit::IpSlot;
use crate::metrics::ShardMetrics;
use crate::shard::{ConnHandle, Shard};
use crate::tls::EdgeStream;

/// How long a closing connection may take to say goodbye (a TLS close_notify) before its socket is dropped.
const CLOSE_MS_MAX: u64 = 1_000;

enum Wait {
    /// The client sent bytes (already handed to the core).
    Read,
    /// The client closed its side or the socket failed.
    Eof,
    /// The core has something for this connection.
    Woken,
}

/// Serves one client connection until it ends.
pub async fn serve(shard: Rc<Shard>, stream: EdgeStream, transport: Transport, slot: IpSlot) {
    let opened = shard.open_conn(transport, stream.direct_fd());
    serve_opened(shard, stream, opened, Bytes::new(), slot).await;
}

/// Serves a connection already registered with [`Shard::open_conn`] (`None`: it was refused, and the socket is
/// closed right away). `preread` holds bytes already read (after an HTTP upgrade).
pub async fn serve_opened(
    shard: Rc<Shard>,
    mut stream: EdgeStream,
    opened: Option<(ConnId, Rc<ConnHandle>)>,
    preread: Bytes,
    // Held for the connection's life: its place under the per-address limit.
    _slot: IpSlot,
) {
    let Some((id, handle)) = opened else {
        // Over the connection limit (or shutting down): the socket is dropped (closed) right away.
        return;
    };
    if !preread.is_empty() {
        shard.conn_input(id, &preread);
    }
    // The bytes may share the HTTP parser's whole read buffer: let it go now, not when the connection ends.
    drop(preread);
    loop {
        let pending = handle.pending.borrow_mut().take();
        if let Some(bytes) = pending {
            // What a direct write of the shard's flusher left when the socket was full.
            let written = write_or_cut(&handle, &mut stream, &bytes).await;
            handle.writing.set(false);
            if !written {
                break;
            }
        }
        if !flush(&shard, id, &handle, &mut stream).await {
            break;
        }
        if handle.cut.get() || shard.core.borrow().conn_finished(id) {
            break;
        }
        let wants_read = shard.core.borrow().conn_wants_read(id);
        let woken = async {
            handle.wake.wait().await;
            Wait::Woken
        };
        let wait = if wants_read {
            futures_lite::future::or(read_into_core(&shard, id, &mut stream), woken).await
        } else {
            woken.await
        };
        if matches!(wait, Wait::Eof) {
            break;
        }
    }
    shard.forget_socket(id);
    futures_lite::future::or(
        async {
            let _ = stream.close().await;
        },
        glommio::timer::sleep(std::time::Duration::from_millis(CLOSE_MS_MAX)),
    )
    .await;
    drop(stream);
    shard.close_conn(id);
}

/// Waits until the client's bytes are ready, reads them into the shard's shared buffer and feeds them to the core
/// before yielding again, so the buffer is never held across an await.
async fn read_into_core<S: AsyncRead + Unpin>(shard: &Rc<Shard>, id: u64, stream: &mut S) -> Wait {
    std::future::poll_fn(|cx| {
        let mut scratch = shard.read_scratch.borrow_mut();
        match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Wait::Eof),
            Poll::Ready(Ok(n)) => {
                // The core and the pump never touch the read buffer, so it stays borrowed meanwhile.
                shard.conn_input(id, &scratch[..n]);
                Poll::Ready(Wait::Read)
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Writes everything the core has queued for the connection, one socket write per batch. Returns false when the
/// socket failed or the core cut the connection.
async fn flush<S: AsyncWrite + Unpin>(
    shard: &Rc<Shard>,
    id: u64,
    handle: &ConnHandle,
    stream: &mut S,
) -> bool {
    loop {
        if handle.cut.get() {
            return false;
        }
        let mut buffer = shard.take_write_buffer();
        if shard
            .core
            .borrow_mut()
            .take_writes(id, &mut buffer, crate::shard::unix_ms())
            == 0
        {
            shard.give_write_buffer(buffer);
            return true;
        }
        ShardMetrics::inc(&shard.metrics().socket_writes_total);
        handle.writing.set(true);
        let written = write_or_cut(handle, stream, &buffer).await;
        handle.writing.set(false);
        shard.give_write_buffer(buffer);
        if !written {
            return false;
        }
        // Wakes that arrived during the write are covered by taking again now.
    }
}

/// Writes all of `bytes`, unless the socket fails or the core cuts the connection meanwhile.
async fn write_or_cut<S: AsyncWrite + Unpin>(
    handle: &ConnHandle,
    stream: &mut S,
    bytes: &[u8],
) -> bool {
    let cut = async {
        loop {
            handle.wake.wait().await;
            if handle.cut.get() {
                return Err(std::io::Error::other("cut"));
            }
        }
    };
    // The flush matters for TLS, which may keep encrypted bytes until asked; for plain TCP it does nothing.
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    futures_lite::future::or(write, cut).await.is_ok()
}
