//! The real server: where it is, and one kept-alive HTTP/1.1 connection to it per client
//! connection.

use std::io;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::body::BoxError;

/// An `http://host:port` server (the proxy speaks plain HTTP only).
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub url: String,
    host: String,
    port: u16,
}

impl Upstream {
    pub fn parse(url: &str) -> io::Result<Self> {
        let invalid = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("upstream {url:?}: {why}"),
            )
        };
        let uri: http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid("expected http://host:port"));
        }
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16().unwrap_or(80),
        })
    }

    async fn connect(&self, shutdown: &CancellationToken) -> io::Result<SendRequest<Incoming>> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Ends when the sender is dropped and the last answer is read, or at shutdown.
            tokio::select! {
                _ = connection => {}
                () = shutdown.cancelled() => {}
            }
        });
        Ok(sender)
    }
}

/// The upstream side of one client connection, reconnected when the server drops it.
pub(crate) struct UpstreamConnection {
    upstream: Upstream,
    shutdown: CancellationToken,
    sender: Option<SendRequest<Incoming>>,
}

impl UpstreamConnection {
    pub fn new(upstream: Upstream, shutdown: CancellationToken) -> Self {
        Self {
            upstream,
            shutdown,
            sender: None,
        }
    }

    /// Sends the request, its body streamed. A request the old connection did not take (the
    /// server closed it while idle) is sent again on a new one.
    pub async fn send(
        &mut self,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, BoxError> {
        let mut request = request;
        for _ in 0..2 {
            let sender = self.ready_sender().await?;
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut failed) => {
                    self.sender = None;
                    match failed.take_message() {
                        Some(unsent) => request = unsent,
                        None => return Err(failed.into_error().into()),
                    }
                }
            }
        }
        Err("the upstream server closed two connections before taking the request".into())
    }

    /// The kept connection if it is still usable, else a new one.
    async fn ready_sender(&mut self) -> io::Result<&mut SendRequest<Incoming>> {
        if let Some(sender) = self.sender.as_mut()
            && sender.ready().await.is_err()
        {
            self.sender = None;
        }
        let sender = match self.sender.take() {
            Some(sender) => sender,
            None => {
                let mut sender = self.upstream.connect(&self.shutdown).await?;
                sender.ready().await.map_err(io::Error::other)?;
                sender
            }
        };
        Ok(self.sender.insert(sender))
    }
}
