//! The `shale` binary: `shale serve` runs a Kafka-compatible broker.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use shale::broker::config::{BrokerConfig, ServeArgs};
use shale::broker::group_coordinator::{GroupConfig, GroupCoordinator};
use shale::broker::sasl::{SaslUsers, ScramCredentials};
use shale::broker::txn_coordinator::{TxnConfig, TxnCoordinator};
use shale::broker::{server, tls, Broker};
use shale::log::{producers, retention, LogStore, TopicDefaults};
use shale::storage::slatedb_log::BackpressureWarnings;
use shale::storage::{self, StorageSettings, StoreLocation};
use tokio::net::TcpListener;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Parser)]
#[command(
    name = "shale",
    version,
    about = "A Kafka-compatible broker on SlateDB"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
}

fn main() -> ExitCode {
    let Command::Serve(args) = Cli::parse().command;
    let filter = match EnvFilter::try_new(&args.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("error: invalid --log filter {:?}: {e}", args.log);
            return ExitCode::from(2);
        }
    };
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(filter.and(BackpressureWarnings::default()));
    tracing_subscriber::registry().with(output).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let sasl_users = args
        .sasl_users
        .as_deref()
        .map(SaslUsers::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--sasl-users (SHALE_SASL_USERS): {e}"))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = Arc::new(tls::Tls::load(cert, key, args.tls_client_ca.as_deref())?);
            reload_tls_on_hangup(tls.clone());
            Some(tls)
        }
        _ => None,
    };
    let location = StoreLocation::parse(args.store.as_deref(), &args.data_dir)?;
    let settings = StorageSettings {
        flush_interval: Duration::from_millis(args.flush_interval_ms),
        reclaim_delay: Duration::from_millis(args.reclaim_delay_ms),
        recent_objects_bytes: args.object_cache_mb.map(|mb| (mb as usize) << 20),
        direct_io: args.direct_io,
        object_min_bytes: args.object_min_kb.map(|kb| (kb as usize) << 10),
    };
    let store = storage::open(&location, &settings).await?;
    storage::heap::spawn_idle_trim();
    let defaults = TopicDefaults {
        retention_ms: args.retention_ms,
        retention_bytes: args.retention_bytes,
        segment_bytes: args.segment_bytes,
        segment_ms: args.segment_ms,
        key_index: args.key_index,
    };
    let log = LogStore::open(store, defaults).await?;
    retention::spawn(
        &log,
        Duration::from_millis(args.retention_check_interval_ms),
    );
    producers::spawn_expiry(&log, Duration::from_millis(args.producer_id_expiration_ms));
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let bound = listener.local_addr()?;
    let (advertised_host, advertised_port) = advertised(args.advertise.as_deref(), bound)?;
    let config = BrokerConfig {
        node_id: 0,
        advertised_host,
        advertised_port,
        auto_create_topics: args.auto_create_topics,
        default_partitions: args.default_partitions,
        max_request_bytes: args.max_request_bytes,
        queued_max_request_bytes: args.queued_max_request_bytes,
        fetch_memory_bytes: args.fetch_memory_bytes,
        connections_max_idle: Duration::from_millis(args.connections_max_idle_ms),
        max_connections: args.max_connections,
        producer_id_expiration: Duration::from_millis(args.producer_id_expiration_ms),
        transactional_id_expiration: Duration::from_millis(args.transactional_id_expiration_ms),
        offsets_retention: Duration::from_millis(args.offsets_retention_ms),
        sasl_users,
        tls,
    };
    tracing::info!(
        "Shale listening on {bound} ({}advertised as {}:{}), data in {location}, ready in {} ms",
        if config.tls.is_some() { "TLS, " } else { "" },
        config.advertised_host,
        config.advertised_port,
        started.elapsed().as_millis()
    );
    let groups = GroupCoordinator::start(log.clone(), group_config(&args)?).await?;
    let txn_config = TxnConfig {
        max_timeout_ms: args.transaction_max_timeout_ms,
        id_expiration_ms: i64::try_from(args.transactional_id_expiration_ms).unwrap_or(i64::MAX),
    };
    let txns = TxnCoordinator::start(log.clone(), groups.clone(), txn_config).await?;
    let scram = Arc::new(ScramCredentials::load(&log).await?);
    let broker = Arc::new(Broker::new(log.clone(), groups, txns, config, scram));
    if let Some(address) = args.http {
        let http = TcpListener::bind(address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {address}: {e}"))?;
        tracing::info!(
            "HTTP API listening on {}{}",
            http.local_addr()?,
            if broker.config.tls.is_some() {
                " (HTTPS)"
            } else {
                ""
            }
        );
        let broker = broker.clone();
        tokio::spawn(async move {
            if let Err(e) = shale::http::serve(broker, http).await {
                tracing::error!(error = %e, "the HTTP API stopped");
            }
        });
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let accepting = tokio::spawn(server::serve(broker, listener, async {
        let _ = stopped.await;
    }));
    tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!("{signal}: shutting down");
            let _ = stop.send(());
            let _ = accepting.await;
            log.close().await?;
            tracing::info!("all acknowledged data is durable; bye");
            Ok(())
        }
        reason = log.closed() => {
            anyhow::bail!(
                "the store closed under this broker ({reason:?}); if Fenced, another broker \
                 opened the same data location and took over. Stopping."
            )
        }
    }
}

fn group_config(args: &ServeArgs) -> anyhow::Result<GroupConfig> {
    if args.group_min_session_timeout_ms > args.group_max_session_timeout_ms {
        anyhow::bail!(
            "--group-min-session-timeout-ms ({}) must not exceed --group-max-session-timeout-ms ({})",
            args.group_min_session_timeout_ms,
            args.group_max_session_timeout_ms
        );
    }
    Ok(GroupConfig {
        min_session_timeout: Duration::from_millis(args.group_min_session_timeout_ms),
        max_session_timeout: Duration::from_millis(args.group_max_session_timeout_ms),
        initial_rebalance_delay: Duration::from_millis(args.group_initial_rebalance_delay_ms),
        offsets_retention: Duration::from_millis(args.offsets_retention_ms),
    })
}

/// The host and port clients are told to connect to.
fn advertised(
    advertise: Option<&str>,
    bound: std::net::SocketAddr,
) -> anyhow::Result<(String, i32)> {
    match advertise {
        Some(address) => {
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| anyhow::anyhow!("--advertise must be host:port, not {address:?}"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| anyhow::anyhow!("--advertise port must be a number, not {port:?}"))?;
            Ok((
                host.trim_matches(|c| c == '[' || c == ']').to_string(),
                i32::from(port),
            ))
        }
        None if bound.ip().is_unspecified() => {
            tracing::warn!("listening on all interfaces; advertising 127.0.0.1 (set --advertise for remote clients)");
            Ok(("127.0.0.1".to_string(), i32::from(bound.port())))
        }
        None => Ok((bound.ip().to_string(), i32::from(bound.port()))),
    }
}

/// Reads the TLS files again on every SIGHUP, so a renewed certificate is served to new
/// connections without a restart.
fn reload_tls_on_hangup(tls: Arc<tls::Tls>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let hangup = tokio::signal::unix::SignalKind::hangup();
        let Ok(mut hangups) = tokio::signal::unix::signal(hangup) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate and key read again"),
                Err(e) => {
                    tracing::error!("SIGHUP: {e:#}; still serving the previous certificate")
                }
            }
        }
    });
}

async fn shutdown_signal() -> &'static str {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(terminate) => terminate,
                Err(_) => {
                    let _ = interrupt.await;
                    return "interrupt";
                }
            };
        tokio::select! {
            _ = interrupt => "interrupt",
            _ = terminate.recv() => "terminate",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
        "interrupt"
    }
}
