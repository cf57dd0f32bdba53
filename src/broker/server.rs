//! Accepting connections and serving their requests.
//!
//! Each connection reads frames as fast as the client sends them and the broker's request
//! budget allows (see `protocol::budget`), and runs up to [`MAX_IN_FLIGHT`] requests at
//! once (each on its own task, so a produce waiting for durability does not hold up the
//! next one), writing responses back in request order as Kafka requires. A frame that
//! cannot be served closes only its own connection. SaslHandshake and SaslAuthenticate are
//! the exception: the connection answers them itself, in turn, since they decide what it
//! may serve next (see `sasl`). A connection with nothing in progress that reads no whole
//! request for `connections.max.idle.ms` is closed, and so is one whose client reads no
//! answer for that long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};

use super::sasl::Authenticator;
use super::{sasl_authenticate, sasl_handshake, AppendTurn, Broker, RequestContext};
use crate::protocol::budget::{ByteBudget, Share};
use crate::protocol::frame::FrameReader;
use crate::protocol::{self, Incoming, ResponseFrame};

/// Requests one connection may have in progress; Kafka clients send at most 5 by default.
const MAX_IN_FLIGHT: usize = 32;

/// How long a connection whose client stopped sending still waits to answer what it asked.
/// A client that only shut down its sending side gets those answers; one that went away
/// with a long-polling fetch pending (its wait can be 24 days) frees its socket and its
/// connection slot by then. Kafka closes such a connection at once.
const ANSWER_AFTER_EOF: Duration = Duration::from_secs(5);

/// Largest frame read from a connection that has yet to authenticate, as Kafka's
/// `sasl.server.max.receive.size`: a client without credentials cannot make the broker
/// hold much of its request budget.
const MAX_FRAME_BEFORE_AUTHENTICATION: usize = 512 << 10;

/// How long a connection whose SASL exchange failed stays open after its answer, as Kafka's
/// `connection.failed.authentication.delay.ms` (100 ms by default).
const FAILED_AUTHENTICATION_CLOSE_DELAY: Duration = Duration::from_millis(100);

/// Accepts connections until `shutdown` resolves, at most `max_connections` at a time.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(broker.config.max_connections as usize));
    let budget = ByteBudget::new(
        broker.config.queued_max_request_bytes as usize,
        "--queued-max-request-bytes",
    );
    loop {
        // Wait for a free slot before accepting, so excess clients queue in the backlog.
        let slot = tokio::select! {
            () = &mut shutdown => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let broker = broker.clone();
                    let budget = budget.clone();
                    broker.metrics.connections_accepted.inc();
                    broker.metrics.connections.inc();
                    tokio::spawn(async move {
                        if let Err(reason) = open_connection(broker.clone(), socket, peer, &budget).await {
                            tracing::info!(%peer, %reason, "closed connection");
                        }
                        broker.metrics.connections.dec();
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// An answer (none to a produce with acks=0), and the budget shares it holds until it is
/// written: its request's, and those of the records read for it.
struct Answer {
    frame: Option<ResponseFrame>,
    held: Vec<Share>,
}

type Response = Result<Answer, String>;

/// Serves a connection: over TLS when the listener has it, after the handshake (which gets
/// as long as an idle connection), else on the socket's own halves.
async fn open_connection(
    broker: Arc<Broker>,
    socket: TcpStream,
    peer: SocketAddr,
    budget: &ByteBudget,
) -> Result<(), String> {
    let Some(tls) = broker.config.tls.clone() else {
        let (reader, writer) = socket.into_split();
        return run_connection(broker, reader, writer, peer, budget).await;
    };
    let limit = broker.config.connections_max_idle;
    let stream = match tokio::time::timeout(
        limit,
        tokio_rustls::TlsAcceptor::from(tls.current()).accept(socket),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
        Err(_) => return Err(format!("no TLS handshake in {} ms", limit.as_millis())),
    };
    let (reader, writer) = tokio::io::split(stream);
    run_connection(broker, reader, writer, peer, budget).await
}

async fn run_connection<R, W>(
    broker: Arc<Broker>,
    reader: R,
    writer: W,
    peer: SocketAddr,
    budget: &ByteBudget,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut auth = Authenticator::new(broker.config.sasl_users.clone(), broker.scram.clone());
    let mut frames = FrameReader::new(reader, frame_limit(&broker, &auth), budget);
    let mut writer = BufWriter::new(writer);
    let mut in_flight: FuturesOrdered<JoinHandle<Response>> = FuturesOrdered::new();
    // What the next produce request waits on before it appends: the last one's turn.
    let mut last_produce: Option<oneshot::Receiver<()>> = None;
    let mut reading = true;
    // The SASL exchange failed: the connection ends once its answer is written.
    let mut refused = false;
    let gave_up = tokio::time::sleep(ANSWER_AFTER_EOF);
    tokio::pin!(gave_up);
    let idle_limit = broker.config.connections_max_idle;
    let idle = tokio::time::sleep(idle_limit);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            frame = frames.next(), if reading && in_flight.len() < MAX_IN_FLIGHT => match frame {
                Some(Ok(frame)) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_limit);
                    let incoming = protocol::decode_request(frame.bytes).map_err(|e| e.to_string())?;
                    let incoming = match incoming {
                        Incoming::Request { header, body } if is_sasl(&body) => {
                            let started = std::time::Instant::now();
                            let (answer, close) = answer_sasl(&mut auth, &header, *body);
                            broker.metrics.request(api_of(&header), started.elapsed());
                            frames.set_max_frame_bytes(frame_limit(&broker, &auth));
                            if close {
                                // A failed exchange: answer, then end the connection.
                                reading = false;
                                refused = true;
                            }
                            in_flight.push_back(tokio::spawn(std::future::ready(answer)));
                            continue;
                        }
                        Incoming::Request { header, .. } if !auth.may_serve(api_of(&header)) => {
                            return Err(format!(
                                "{:?} before SASL authentication",
                                api_of(&header)
                            ));
                        }
                        other => other,
                    };
                    let turn = if incoming.is_produce() {
                        let (turn, next) = AppendTurn::after(last_produce.take());
                        last_produce = Some(next);
                        turn
                    } else {
                        AppendTurn::default()
                    };
                    let respond = respond(broker.clone(), incoming, peer, turn, frame.share);
                    in_flight.push_back(tokio::spawn(respond));
                }
                Some(Err(e)) => return Err(format!("bad frame: {e}")),
                // The client is done sending; answer what it already asked, for a while.
                None => {
                    reading = false;
                    gave_up.as_mut().reset(tokio::time::Instant::now() + ANSWER_AFTER_EOF);
                }
            },
            Some(done) = in_flight.next() => {
                let written = async {
                    write_response(&mut writer, done).await?;
                    // Write every response that is already finished before one flush.
                    while let Some(Some(done)) = in_flight.next().now_or_never() {
                        write_response(&mut writer, done).await?;
                    }
                    writer.flush().await.map_err(|e| e.to_string())
                };
                // A client that stops reading its answers would hold their budget shares
                // for as long as it keeps the connection; it gets as long as an idle one.
                idle.as_mut().reset(tokio::time::Instant::now() + idle_limit);
                tokio::select! {
                    written = written => written?,
                    () = &mut idle => {
                        return Err(format!("answers not read for {} ms", idle_limit.as_millis()));
                    }
                }
                idle.as_mut().reset(tokio::time::Instant::now() + idle_limit);
            },
            // Counted from the last whole request or answer, so a client that stalls in
            // the middle of a request is closed too, and its budget share comes back.
            () = &mut idle, if reading && in_flight.is_empty() => {
                return Err(format!("idle for {} ms", idle_limit.as_millis()));
            },
            () = &mut gave_up, if !reading && !in_flight.is_empty() => return Ok(()),
            // Not reading and nothing left to answer.
            else => {
                if refused {
                    // Closed at once, the answer can be lost with the connection
                    // (kafka-python reports only "socket disconnected"); Kafka delays the close
                    // too (`connection.failed.authentication.delay.ms`).
                    tokio::time::sleep(FAILED_AUTHENTICATION_CLOSE_DELAY).await;
                    return Err("SASL exchange failed".to_string());
                }
                return Ok(());
            }
        }
    }
}

fn frame_limit(broker: &Broker, auth: &Authenticator) -> usize {
    let limit = broker.config.max_request_bytes as usize;
    if auth.authenticated() {
        limit
    } else {
        limit.min(MAX_FRAME_BEFORE_AUTHENTICATION)
    }
}

fn is_sasl(body: &RequestKind) -> bool {
    matches!(
        body,
        RequestKind::SaslHandshake(_) | RequestKind::SaslAuthenticate(_)
    )
}

fn api_of(header: &RequestHeader) -> ApiKey {
    ApiKey::try_from(header.request_api_key).expect("the codec decodes only known APIs")
}

/// SaslHandshake and SaslAuthenticate change the connection's state, which the requests
/// after them depend on, so they are answered here, in turn, not on tasks of their own.
/// Returns the answer and whether the connection must close after it.
fn answer_sasl(
    auth: &mut Authenticator,
    header: &RequestHeader,
    body: RequestKind,
) -> (Response, bool) {
    let (response, close) = match body {
        RequestKind::SaslHandshake(request) => {
            let (response, close) =
                sasl_handshake::handle(auth, header.request_api_version, request);
            (ResponseKind::SaslHandshake(response), close)
        }
        RequestKind::SaslAuthenticate(request) => {
            let (response, close) = sasl_authenticate::handle(auth, request);
            (ResponseKind::SaslAuthenticate(response), close)
        }
        _ => unreachable!("answer_sasl is only given SASL requests"),
    };
    (encode(header, response, Vec::new()), close)
}

/// The answer to the request `header` starts, holding `held` until it is written.
fn encode(header: &RequestHeader, response: ResponseKind, held: Vec<Share>) -> Response {
    let api = api_of(header);
    protocol::encode_response(
        header.correlation_id,
        api,
        header.request_api_version,
        response,
    )
    .map(|frame| Answer {
        frame: Some(frame),
        held,
    })
    .map_err(|e| format!("encoding {api:?} response: {e}"))
}

async fn write_response(
    writer: &mut BufWriter<impl AsyncWrite + Unpin>,
    done: Result<Response, tokio::task::JoinError>,
) -> Result<(), String> {
    let answer = done.map_err(|e| format!("request handler failed: {e}"))??;
    for piece in answer.frame.iter().flat_map(|frame| &frame.pieces) {
        writer.write_all(piece).await.map_err(|e| e.to_string())?;
    }
    // Written (or copied into the writer's buffer): the answer's shares go back.
    drop(answer.held);
    Ok(())
}

async fn respond(
    broker: Arc<Broker>,
    incoming: Incoming,
    peer: SocketAddr,
    append_turn: AppendTurn,
    request_share: Share,
) -> Response {
    match incoming {
        Incoming::ApiVersionsTooNew { correlation_id } => {
            protocol::encode_api_versions_too_new(correlation_id)
                .map(|frame| Answer {
                    frame: Some(frame),
                    held: vec![request_share],
                })
                .map_err(|e| e.to_string())
        }
        Incoming::Request { header, body } => {
            let started = std::time::Instant::now();
            let context = RequestContext {
                client_id: header
                    .client_id
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                peer,
                append_turn,
                held: std::sync::Mutex::new(vec![request_share]),
            };
            let response = broker.handle(&context, &header, *body).await;
            broker.metrics.request(api_of(&header), started.elapsed());
            let held = context
                .held
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match response {
                Some(response) => encode(&header, response, held),
                None => Ok(Answer { frame: None, held }),
            }
        }
    }
}
