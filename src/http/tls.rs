//! The HTTP API over TLS, with the Kafka listener's certificate: with `--tls-cert`, the
//! HTTP Basic credentials of `--sasl-users` and the records read do not cross the network
//! in the clear while Kafka clients' do not either.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::broker::tls::Tls;

/// Connections that finished their TLS handshake, for axum to serve. Handshakes run on
/// tasks of their own, so a client that stalls in one holds up no other.
pub struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener`, giving each handshake up to `handshake_timeout`.
    pub fn new(
        listener: TcpListener,
        tls: Arc<Tls>,
        handshake_timeout: Duration,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (handshaken, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            while !handshaken.is_closed() {
                let (socket, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = TlsAcceptor::from(tls.current());
                let handshaken = handshaken.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            let _ = handshaken.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "HTTP TLS handshake failed")
                        }
                        Err(_) => tracing::info!(%peer, "no HTTP TLS handshake in time"),
                    }
                });
            }
        });
        Ok(TlsListener {
            handshaken: ready,
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accepting task only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
