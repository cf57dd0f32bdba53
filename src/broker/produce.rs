//! Produce: validate batches, append them in one write, answer per acks.
//!
//! acks=0 gets no response; acks=1 is answered once the write is in SlateDB's memory;
//! acks=all (-1) once it is durable in the object store, which is also when consumers
//! can first read it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::config::topic_config_value;
use super::{storage_error, str_bytes, AppendTurn, Broker};
use crate::log::batch::{self, BatchError, BatchView};
use crate::log::producers::SequenceError;
use crate::log::{now_ms, AppendOutcome, AppendReceipt, PartitionAppend, PartitionLog};

/// Where a partition's answer comes from once the append is done.
enum Outcome {
    Failed(ResponseError, Option<String>),
    /// Handed to the log; `append` indexes the appends of this request.
    Submitted {
        append: usize,
        log_append_time: i64,
        partition: Arc<PartitionLog>,
    },
}

pub async fn handle(
    broker: &Broker,
    version: i16,
    turn: &AppendTurn,
    request: ProduceRequest,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    let mut appends: Vec<PartitionAppend> = Vec::new();
    let mut submitted: HashSet<(uuid::Uuid, i32)> = HashSet::new();
    let mut outcomes: Vec<Vec<(i32, Outcome)>> = Vec::new();
    for topic_data in &request.topic_data {
        let topic = broker.log.topic(&topic_data.name);
        let mut topic_outcomes = Vec::new();
        for partition_data in &topic_data.partition_data {
            let index = partition_data.index;
            let outcome = if !matches!(acks, -1..=1) {
                Outcome::Failed(ResponseError::InvalidRequiredAcks, None)
            } else if let Some((topic, partition)) = topic
                .as_ref()
                .and_then(|t| t.partition(index).map(|p| (t, p.clone())))
            {
                if !submitted.insert((partition.topic_id, partition.index)) {
                    let message = "a partition appears more than once in the request".to_string();
                    topic_outcomes.push((
                        index,
                        Outcome::Failed(ResponseError::InvalidRequest, Some(message)),
                    ));
                    continue;
                }
                let prepared =
                    prepare(&topic.configs, partition_data.records.as_ref()).and_then(|prepared| {
                        check_transaction(broker, &topic.name, index, &prepared.0)?;
                        Ok(prepared)
                    });
                match prepared {
                    Ok((batches, log_append_time)) => {
                        appends.push(PartitionAppend {
                            partition: partition.clone(),
                            batches,
                        });
                        Outcome::Submitted {
                            append: appends.len() - 1,
                            log_append_time,
                            partition,
                        }
                    }
                    Err((error, message)) => {
                        tracing::debug!(topic = %topic.name, partition = index, %message, "rejected produce");
                        Outcome::Failed(error, Some(message))
                    }
                }
            } else {
                Outcome::Failed(ResponseError::UnknownTopicOrPartition, None)
            };
            topic_outcomes.push((index, outcome));
        }
        outcomes.push(topic_outcomes);
    }

    let appended = if appends.is_empty() {
        Ok(Vec::new())
    } else {
        let sizes: Vec<(u64, u64)> = appends.iter().map(|a| batch_sizes(&a.batches)).collect();
        // Large batches are written to their objects before this request's turn, side by
        // side with the requests ahead of it; only offsets are handed out in order.
        let staged = broker.log.stage(appends).await;
        turn.wait().await;
        let appended = match staged {
            Ok(staged) => broker.log.append_staged(staged).await,
            Err(e) => Err(e),
        };
        turn.appended();
        match appended {
            Ok(receipt) => {
                let outcomes = receipt.outcomes.clone();
                for (outcome, (records, bytes)) in outcomes.iter().zip(&sizes) {
                    if matches!(outcome, AppendOutcome::Appended { .. }) {
                        broker.metrics.produced_records.inc_by(*records);
                        broker.metrics.produced_bytes.inc_by(*bytes);
                    }
                }
                let durable = match acks {
                    -1 => await_durable(receipt, request.timeout_ms).await,
                    _ => Ok(()),
                };
                durable.map(|()| outcomes)
            }
            Err(e) => Err(storage_error(&e)),
        }
    };
    if acks == 0 {
        return None;
    }

    let mut response = ProduceResponse::default();
    for (topic_data, topic_outcomes) in request.topic_data.iter().zip(outcomes) {
        let mut topic_response = TopicProduceResponse::default();
        topic_response.name = topic_data.name.clone();
        topic_response.topic_id = topic_data.topic_id;
        for (index, outcome) in topic_outcomes {
            let mut partition = PartitionProduceResponse::default();
            partition.index = index;
            partition.log_start_offset = -1;
            match (outcome, &appended) {
                (Outcome::Failed(error, message), _) => {
                    partition.error_code = error.code();
                    partition.error_message = message.map(str_bytes);
                }
                (Outcome::Submitted { .. }, Err(error)) => partition.error_code = error.code(),
                (
                    Outcome::Submitted {
                        append,
                        log_append_time,
                        partition: log,
                    },
                    Ok(appended),
                ) => {
                    let base_offset = match appended[append] {
                        AppendOutcome::Appended { base_offset } => Ok(base_offset),
                        AppendOutcome::Duplicate {
                            base_offset,
                            last_offset,
                        } if acks == -1 => {
                            await_high_watermark(broker, &log, last_offset, request.timeout_ms)
                                .await
                                .map(|()| base_offset)
                        }
                        AppendOutcome::Duplicate { base_offset, .. } => Ok(base_offset),
                        AppendOutcome::Refused(SequenceError::StaleEpoch) => {
                            Err(ResponseError::InvalidProducerEpoch)
                        }
                        AppendOutcome::Refused(SequenceError::OutOfOrder) => {
                            Err(ResponseError::OutOfOrderSequenceNumber)
                        }
                        AppendOutcome::Unreadable(ref reason) => {
                            partition.error_message = Some(str_bytes(reason.clone()));
                            Err(invalid_record(version))
                        }
                    };
                    match base_offset {
                        Ok(base_offset) => {
                            partition.base_offset = base_offset;
                            partition.log_append_time_ms = log_append_time;
                            if let Ok(offsets) = broker.log.offsets(&log).await {
                                partition.log_start_offset = offsets.log_start_offset;
                            }
                        }
                        Err(error) => partition.error_code = error.code(),
                    }
                }
            }
            topic_response.partition_responses.push(partition);
        }
        response.responses.push(topic_response);
    }
    Some(response)
}

/// Records and bytes of one partition's validated batches, for the metrics.
fn batch_sizes(batches: &[Bytes]) -> (u64, u64) {
    batches.iter().fold((0, 0), |(records, bytes), b| {
        let count = BatchView::new(b).map_or(0, |v| v.record_count().max(0) as u64);
        (records + count, bytes + b.len() as u64)
    })
}

/// A batch whose records fail validation: INVALID_RECORD, which clients do not retry, from
/// Produce v8 (KIP-467) on; CORRUPT_MESSAGE before it, as Kafka answers.
fn invalid_record(version: i16) -> ResponseError {
    if version >= 8 {
        ResponseError::InvalidRecord
    } else {
        ResponseError::CorruptMessage
    }
}

/// Validates a partition's records against its topic's configs; stamps the append time on
/// `LogAppendTime` topics. Returns the batches and the append time (-1 for CreateTime).
fn prepare(
    configs: &std::collections::BTreeMap<String, String>,
    records: Option<&Bytes>,
) -> Result<(Vec<Bytes>, i64), (ResponseError, String)> {
    let records = records.ok_or((ResponseError::CorruptMessage, "no records".to_string()))?;
    let max_bytes = topic_config_value(configs, "max.message.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1_048_588);
    let batches = batch::split_and_validate(records, max_bytes).map_err(|e| {
        let code = match e {
            BatchError::Corrupt(_) => ResponseError::CorruptMessage,
            BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
            BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
        };
        (code, e.to_string())
    })?;
    if topic_config_value(configs, "message.timestamp.type") == Some("LogAppendTime") {
        let now = now_ms();
        let stamped = batches
            .iter()
            .map(|b| batch::stamp_log_append_time(b, now))
            .collect();
        return Ok((stamped, now));
    }
    Ok((batches, -1))
}

/// Transactional batches are accepted only on partitions their producer added to its open
/// transaction: a batch outside one would hold the partition's last stable offset back
/// forever, since no marker would ever end it.
fn check_transaction(
    broker: &Broker,
    topic: &str,
    partition: i32,
    batches: &[Bytes],
) -> Result<(), (ResponseError, String)> {
    for view in batches.iter().filter_map(|b| BatchView::new(b)) {
        if view.is_transactional() {
            broker
                .txns
                .check_produce(view.producer_id(), view.producer_epoch(), topic, partition)
                .map_err(|e| {
                    let message = "the partition is not in the producer's open transaction";
                    (e, message.to_string())
                })?;
        }
    }
    Ok(())
}

/// Waits until a partition's records up to `last_offset` are durable: an idempotent
/// producer's retry is answered with acks=all only once the original batch is.
async fn await_high_watermark(
    broker: &Broker,
    partition: &PartitionLog,
    last_offset: i64,
    timeout_ms: i32,
) -> Result<(), ResponseError> {
    let mut watch = broker
        .log
        .watch_high_watermark(partition)
        .await
        .map_err(|e| storage_error(&e))?;
    let timeout = durability_timeout(timeout_ms);
    let durable = tokio::time::timeout(timeout, watch.wait_for(|hwm| *hwm > last_offset))
        .await
        .map(|waited| waited.map(|_| ()));
    match durable {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ResponseError::KafkaStorageError),
        Err(_) => Err(ResponseError::RequestTimedOut),
    }
}

async fn await_durable(receipt: AppendReceipt, timeout_ms: i32) -> Result<(), ResponseError> {
    let timeout = durability_timeout(timeout_ms);
    match tokio::time::timeout(timeout, receipt.durable()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(storage_error(&e)),
        Err(_) => Err(ResponseError::RequestTimedOut),
    }
}

/// How long acks=all waits for durability. At least a second: Kafka answers a
/// single-replica acks=all produce without waiting, so clients may send tiny timeouts that
/// would otherwise expire before the next WAL flush.
fn durability_timeout(timeout_ms: i32) -> Duration {
    Duration::from_millis(timeout_ms.max(1000) as u64)
}
