//! One client connection: its socket (which a fault can reset), its upstream connection, and the
//! path of each request through the rules.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Shared;
use super::answer::Answer;
use super::body::{BoxError, ProxyBody, Tracked};
use super::s3::S3Request;
use super::upstream::UpstreamConnection;

pub(crate) struct Connection {
    pub shared: Arc<Shared>,
    /// Requests on one HTTP/1.1 connection come one after another, so this lock is never
    /// contended; it only lets each request's future own the upstream for a while.
    pub upstream: tokio::sync::Mutex<UpstreamConnection>,
    /// Set by a fault that resets the connection: the socket then fails every operation and
    /// closes with an RST.
    pub reset: Arc<AtomicBool>,
}

/// Serves one accepted client connection until it closes or the proxy shuts down.
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let reset = Arc::new(AtomicBool::new(false));
    let shutdown = shared.shutdown.clone();
    let upstream = UpstreamConnection::new(shared.upstream.clone(), shutdown.clone());
    let connection = Arc::new(Connection {
        shared,
        upstream: tokio::sync::Mutex::new(upstream),
        reset: Arc::clone(&reset),
    });
    let service = service_fn(move |request| Arc::clone(&connection).handle(request));
    let io = TokioIo::new(ResettableStream {
        inner: stream,
        reset,
    });
    let serving = http1::Builder::new()
        .keep_alive(true)
        // A Date header is the real server's to send (and a fault's to rewrite).
        .auto_date_header(false)
        .serve_connection(io, service);
    // Dropping the connection drops every request future and body in it: holds end, huge
    // listings stop.
    tokio::select! {
        _ = serving => {}
        () = shutdown.cancelled() => {}
    }
}

impl Connection {
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let s3 = S3Request::classify(
            request.method(),
            request.uri().path(),
            request.uri().query(),
        );
        let record = self.shared.stats.begin(&s3);
        let firing = self.shared.decide(&s3);
        if let Some(firing) = &firing {
            record.set_fault(firing.action.kind());
        }
        match self.answer(request, &s3, record.seq(), firing).await {
            Answer::Respond(response) => {
                record.set_status(response.status().as_u16());
                Ok(response.map(|body| Tracked::new(body, record).boxed_unsync()))
            }
            // hyper drops a connection whose service fails, without answering.
            Answer::Reset => {
                self.reset.store(true, Ordering::SeqCst);
                Err("fault proxy: connection reset before the answer".into())
            }
        }
    }
}

/// The accepted socket. Once `reset` is set it refuses all I/O, and closing it sends an RST
/// (SO_LINGER 0) instead of a FIN.
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl ResettableStream {
    fn is_reset(&self) -> bool {
        self.reset.load(Ordering::SeqCst)
    }
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "reset by a fault")
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A shutdown would send a FIN, and the client would take that as a clean end.
        if self.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.is_reset() {
            // With a zero linger time, close() discards unsent data and sends an RST.
            let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
        }
    }
}
