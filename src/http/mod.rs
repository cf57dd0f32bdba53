//! The HTTP/JSON API (`--http`): event-store reads and writes over the same key logs Kafka
//! clients use. Records appended here are ordinary Kafka records, and records produced by
//! Kafka clients appear in the key streams and the global log.
//!
//! - `GET /v1/topics/{topic}/keys/{key}/records?from=&limit=&wait_ms=`: one key's records
//! - `GET /v1/topics/{topic}/keys/{key}/count`: the key's version (its record count)
//! - `POST /v1/topics/{topic}/keys/{key}/records`: append, optionally if the key's version is
//!   `expected_version` (409 with the current version otherwise)
//! - `GET /v1/log?from=&limit=&wait_ms=`: every topic's records in global-sequence order
//! - `GET /v1/topics/{topic}/records?from=&limit=&since_ms=&until_ms=`: one topic's
//!   records in global-sequence order, or looked up by time range
//! - `GET /v1/topics/{topic}/count?partition=&since_ms=&until_ms=`: records in a topic or
//!   partition, optionally in a time range
//!
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text, see `broker::metrics`)
//!
//! Reads take `since_ms`/`until_ms` to keep only records with timestamps in that range.
//!
//! With `--sasl-users`, every request needs HTTP Basic credentials of one of those users;
//! with `--tls-cert`, the API is served over TLS (HTTPS) with the same certificate.

mod murmur2;
mod tls;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::Request;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::log::streams::{StreamPage, StreamRecord};
use crate::log::{now_ms, LogError, Topic};

/// Largest request body: one record of up to Kafka's default `max.message.bytes`, as JSON.
const MAX_BODY_BYTES: usize = 2 << 20;
/// Longest a read may wait for new records.
const MAX_WAIT_MS: u64 = 60_000;
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// Serves the HTTP API on `listener` until the process ends, over TLS when the Kafka
/// listener has it.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/v1/topics/{topic}/keys/{key}/records",
            get(key_records).post(append),
        )
        .route("/v1/topics/{topic}/keys/{key}/count", get(key_count))
        .route("/v1/topics/{topic}/count", get(topic_count))
        .route("/v1/topics/{topic}/records", get(topic_records))
        .route("/v1/log", get(global_log))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(broker.clone(), require_user))
        .with_state(broker.clone());
    match broker.config.tls.clone() {
        Some(settings) => {
            let idle = broker.config.connections_max_idle;
            axum::serve(tls::TlsListener::new(listener, settings, idle)?, app).await
        }
        None => axum::serve(listener, app).await,
    }
}

/// With `--sasl-users`, lets through only requests with one of those users' name and
/// password as HTTP Basic credentials; 401 otherwise, as Kafka clients are refused.
async fn require_user(State(broker): State<Arc<Broker>>, request: Request, next: Next) -> Response {
    let Some(users) = &broker.config.sasl_users else {
        return next.run(request).await;
    };
    let credentials = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok());
    match credentials.as_deref().and_then(|c| c.split_once(':')) {
        Some((name, password)) if users.check_password(name, password) => next.run(request).await,
        _ => {
            let mut refused =
                ApiError::new(StatusCode::UNAUTHORIZED, "credentials required").into_response();
            refused.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"shale\""),
            );
            refused
        }
    }
}

/// The broker's metrics for a Prometheus scrape.
async fn metrics(State(broker): State<Arc<Broker>>) -> Response {
    let text = broker.metrics.render(&broker).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// An error answered as `{"error": message}` (plus fields such as the current version).
struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::VersionConflict { current } => ApiError {
                status: StatusCode::CONFLICT,
                body: json!({ "error": "version conflict", "current_version": current }),
            },
            LogError::UnknownTopic(topic) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("unknown topic {topic:?}"))
            }
            other => {
                tracing::error!(error = %other, "HTTP API storage failure");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string())
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct ReadParams {
    #[serde(default)]
    from: u64,
    limit: Option<usize>,
    #[serde(default)]
    wait_ms: u64,
    encoding: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct CountParams {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    partition: Option<i32>,
}

/// Record timestamps from `since_ms` (inclusive) to `until_ms` (exclusive).
#[derive(Debug, Default, Clone, Copy)]
struct TimeRange {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
}

impl TimeRange {
    fn contains(&self, timestamp: i64) -> bool {
        self.since_ms.is_none_or(|since| timestamp >= since)
            && self.until_ms.is_none_or(|until| timestamp < until)
    }

    fn is_set(&self) -> bool {
        self.since_ms.is_some() || self.until_ms.is_some()
    }
}

#[derive(Debug, Deserialize)]
struct WriteParams {
    encoding: Option<String>,
}

/// How keys, values and headers appear in JSON: UTF-8 text, or base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Text,
    Base64,
}

impl Encoding {
    fn parse(name: Option<&str>) -> Result<Self, ApiError> {
        match name {
            None | Some("utf8") | Some("text") => Ok(Encoding::Text),
            Some("base64") => Ok(Encoding::Base64),
            Some(other) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown encoding {other:?}: use base64, or leave it out for UTF-8 text"),
            )),
        }
    }

    fn show(self, bytes: &Option<Bytes>) -> Value {
        match (bytes, self) {
            (None, _) => Value::Null,
            (Some(b), Encoding::Text) => Value::String(String::from_utf8_lossy(b).into_owned()),
            (Some(b), Encoding::Base64) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(b))
            }
        }
    }

    fn read(self, field: &str, value: &Value) -> Result<Option<Bytes>, ApiError> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) => match self {
                Encoding::Text => Ok(Some(Bytes::from(s.clone()))),
                Encoding::Base64 => base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map(|b| Some(Bytes::from(b)))
                    .map_err(|e| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("{field} is not base64: {e}"),
                        )
                    }),
            },
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{field} must be a string or null"),
            )),
        }
    }
}

fn record_json(record: &StreamRecord, encoding: Encoding) -> Value {
    let headers: serde_json::Map<String, Value> = record
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), encoding.show(v)))
        .collect();
    json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "sequence": record.sequence,
        "timestamp": record.timestamp,
        "key": encoding.show(&record.key),
        "value": encoding.show(&record.value),
        "headers": headers,
    })
}

fn limit(params: &ReadParams) -> Result<usize, ApiError> {
    match params.limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

fn indexed_topic(broker: &Broker, name: &str) -> Result<Arc<Topic>, ApiError> {
    let topic = broker
        .log
        .topic(name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown topic {name:?}")))?;
    if !topic.policy.key_index {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("topic {name:?} has shale.key.index=false: it keeps no key streams"),
        ));
    }
    Ok(topic)
}

/// Reads with `read` and, while it finds nothing and `wait_ms` allows, waits for appends.
async fn read_waiting<F, Fut>(
    broker: &Broker,
    wait_ms: u64,
    read: F,
) -> Result<StreamPage, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<StreamPage, LogError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
    let mut appended = broker.log.watch_appends();
    loop {
        appended.borrow_and_update();
        let page = read().await?;
        if !page.records.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(page);
        }
        if tokio::time::timeout_at(deadline, appended.changed())
            .await
            .is_err()
        {
            return Ok(page);
        }
    }
}

/// A page as JSON, keeping only records in the time range (`next` still moves past the
/// others, so paging goes on).
fn page_json(page: StreamPage, time: TimeRange, encoding: Encoding) -> Json<Value> {
    let records: Vec<Value> = page
        .records
        .iter()
        .filter(|r| time.contains(r.timestamp))
        .map(|r| record_json(r, encoding))
        .collect();
    Json(json!({ "records": records, "next": page.next }))
}

async fn key_records(
    State(broker): State<Arc<Broker>>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((topic, key)) = path.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let Query(params) = params.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let encoding = Encoding::parse(params.encoding.as_deref())?;
    let limit = limit(&params)?;
    let topic = indexed_topic(&broker, &topic)?;
    let page = read_waiting(&broker, params.wait_ms, || {
        broker
            .log
            .key_records(&topic, key.as_bytes(), params.from, limit)
    })
    .await?;
    Ok(page_json(page, time_range(&params), encoding))
}

fn time_range(params: &ReadParams) -> TimeRange {
    TimeRange {
        since_ms: params.since_ms,
        until_ms: params.until_ms,
    }
}

/// A key's version (its record count), or with `since_ms`/`until_ms` how many of its
/// records have timestamps in that range (which reads them).
async fn key_count(
    State(broker): State<Arc<Broker>>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<CountParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((topic, key)) = path.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let Query(params) = params.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let topic = indexed_topic(&broker, &topic)?;
    let time = TimeRange {
        since_ms: params.since_ms,
        until_ms: params.until_ms,
    };
    let count = if time.is_set() {
        let mut count = 0u64;
        let mut from = 0;
        loop {
            let page = broker
                .log
                .key_records(&topic, key.as_bytes(), from, MAX_LIMIT)
                .await?;
            count += page
                .records
                .iter()
                .filter(|r| time.contains(r.timestamp))
                .count() as u64;
            if page.next == from {
                break;
            }
            from = page.next;
        }
        count
    } else {
        broker.log.key_version(&topic, key.as_bytes()).await?
    };
    Ok(Json(
        json!({ "topic": topic.name, "key": key, "count": count }),
    ))
}

/// Records in a topic (or one `partition`), optionally with timestamps in a range: offsets
/// from the log start (or the first record at `since_ms`) to the high watermark (or the
/// first record at `until_ms`), found from batch headers without reading records.
async fn topic_count(
    State(broker): State<Arc<Broker>>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<CountParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let Query(params) = params.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let topic = broker
        .log
        .topic(&name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown topic {name:?}")))?;
    let partitions: Vec<_> = match params.partition {
        Some(index) => vec![topic.partition(index).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no partition {index} in {name:?}"),
            )
        })?],
        None => topic.partitions.clone(),
    };
    let mut counts = serde_json::Map::new();
    let mut total = 0i64;
    for partition in partitions {
        let offsets = broker.log.offsets(&partition).await?;
        let at = |timestamp: Option<i64>, default: i64| {
            let broker = &broker;
            let partition = &partition;
            async move {
                match timestamp {
                    None => Ok::<i64, LogError>(default),
                    Some(ts) => Ok(broker
                        .log
                        .offset_for_timestamp(partition, ts)
                        .await?
                        .map_or(offsets.high_watermark, |(offset, _)| offset)),
                }
            }
        };
        let start = at(params.since_ms, offsets.log_start_offset).await?;
        let end = at(params.until_ms, offsets.high_watermark).await?;
        let count = (end - start).max(0);
        total += count;
        counts.insert(partition.index.to_string(), json!(count));
    }
    Ok(Json(
        json!({ "topic": topic.name, "count": total, "partitions": counts }),
    ))
}

/// One topic's records in global-sequence order, paged like the global log; with
/// `since_ms`/`until_ms`, a look-up by time that skips the topic's older sealed segments.
async fn topic_records(
    State(broker): State<Arc<Broker>>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let Query(params) = params.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let encoding = Encoding::parse(params.encoding.as_deref())?;
    let limit = limit(&params)?;
    let topic = broker
        .log
        .topic(&name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown topic {name:?}")))?;
    let page = read_waiting(&broker, params.wait_ms, || {
        broker
            .log
            .sequence_records(Some(&topic), params.from, limit, params.since_ms)
    })
    .await?;
    Ok(page_json(page, time_range(&params), encoding))
}

async fn global_log(
    State(broker): State<Arc<Broker>>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let encoding = Encoding::parse(params.encoding.as_deref())?;
    let limit = limit(&params)?;
    let page = read_waiting(&broker, params.wait_ms, || {
        broker.log.sequence_records(None, params.from, limit, None)
    })
    .await?;
    Ok(page_json(page, time_range(&params), encoding))
}

async fn append(
    State(broker): State<Arc<Broker>>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<WriteParams>, QueryRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((topic_name, key)) = path.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let Query(params) = params.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let Json(body) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let encoding = Encoding::parse(params.encoding.as_deref())?;
    let Value::Object(fields) = &body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "value" | "headers" | "expected_version"))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown field {unknown:?}: expected value, headers, expected_version"),
        ));
    }
    let value = encoding.read("value", fields.get("value").unwrap_or(&Value::Null))?;
    let mut headers = BTreeMap::new();
    match fields.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, v) in map {
                headers.insert(name.clone(), encoding.read("header value", v)?);
            }
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "headers must be an object",
            ));
        }
    }
    let expected = match fields.get("expected_version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "expected_version must be a non-negative integer",
            )
        })?),
    };
    let topic = match broker.log.topic(&topic_name) {
        Some(topic) => topic,
        None => broker
            .topic_or_auto_create(&topic_name, true)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("topic {topic_name:?}: {e:?}"),
                )
            })?,
    };
    let topic = indexed_topic(&broker, &topic.name)?;
    let partition_count = topic.partitions.len() as u32;
    let index = murmur2::partition_for(key.as_bytes(), partition_count);
    let partition = topic
        .partition(index)
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "topic has no partitions"))?;
    let key_bytes = Bytes::from(key.clone());
    let batch = encode_record(key_bytes.clone(), value, headers)?;
    let appended = broker
        .log
        .append_to_key(&topic, &partition, key_bytes, batch, expected)
        .await?;
    Ok(Json(json!({
        "topic": topic.name,
        "partition": appended.partition,
        "offset": appended.offset,
        "version": appended.version,
    })))
}

/// One record as a magic-v2 batch, like a non-idempotent Kafka producer sends it.
fn encode_record(
    key: Bytes,
    value: Option<Bytes>,
    headers: BTreeMap<String, Option<Bytes>>,
) -> Result<Bytes, ApiError> {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: now_ms(),
        key: Some(key),
        value,
        headers: headers
            .into_iter()
            .map(|(k, v)| (kafka_protocol::protocol::StrBytes::from_string(k), v))
            .collect(),
    };
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(&mut batch, std::iter::once(&record), &options).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("cannot encode the record: {e}"),
        )
    })?;
    Ok(batch.freeze())
}
