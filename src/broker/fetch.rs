//! Fetch: read durable batches, or wait at the tail until some arrive.
//!
//! A fetch with too little data waits on the partitions' high-watermark watches, so it is
//! woken the moment an append becomes durable, and answers at `max_wait_ms` at the latest.
//! Fetch sessions (KIP-227) are not kept: every response is a full one (session id 0),
//! which clients handle by sending full requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{join_all, select_all};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{storage_error, Broker};
use crate::log::{FetchedRecords, Isolation, LogError, PartitionLog};

/// Kafka's isolation level for consumers that only read committed transactions.
const READ_COMMITTED: i8 = 1;

struct Wanted {
    partition: Option<Arc<PartitionLog>>,
    index: i32,
    fetch_offset: i64,
    max_bytes: usize,
}

pub async fn handle(broker: &Broker, version: i16, request: FetchRequest) -> FetchResponse {
    let mut response = FetchResponse::default();
    if request.session_id != 0 {
        // Shale never hands out a session id, so a client cannot hold one.
        response.error_code = ResponseError::FetchSessionIdNotFound.code();
        return response;
    }
    let wanted: Vec<Vec<Wanted>> = request
        .topics
        .iter()
        .map(|t| {
            let topic = broker.log.topic(&t.topic);
            t.partitions
                .iter()
                .map(|p| Wanted {
                    partition: topic
                        .as_ref()
                        .and_then(|t| t.partition(p.partition).cloned()),
                    index: p.partition,
                    fetch_offset: p.fetch_offset,
                    max_bytes: p.partition_max_bytes.max(0) as usize,
                })
                .collect()
        })
        .collect();

    let mut watches = Vec::new();
    for partition in wanted.iter().flatten().filter_map(|w| w.partition.as_ref()) {
        if let Ok(watch) = broker.log.watch_high_watermark(partition).await {
            watches.push(watch);
        }
    }
    let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let min_bytes = request.min_bytes.max(0) as usize;
    // v3+ caps the whole response; older versions only per partition.
    let response_max = if version >= 3 {
        request.max_bytes.max(0) as usize
    } else {
        usize::MAX
    };
    let isolation = if request.isolation_level == READ_COMMITTED {
        Isolation::ReadCommitted
    } else {
        Isolation::ReadUncommitted
    };
    loop {
        for watch in &mut watches {
            watch.borrow_and_update();
        }
        let (topics, bytes, failed) =
            read_all(broker, &request, &wanted, response_max, isolation).await;
        if bytes >= min_bytes || failed || Instant::now() >= deadline {
            response.responses = topics;
            return response;
        }
        if !wait_for_append(&mut watches, deadline).await {
            response.responses = topics;
            return response;
        }
    }
}

/// Waits until any high watermark moves (true) or the deadline passes (false).
async fn wait_for_append(watches: &mut [watch::Receiver<i64>], deadline: Instant) -> bool {
    if watches.is_empty() {
        tokio::time::sleep_until(deadline).await;
        return false;
    }
    let changes = select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
    tokio::select! {
        (changed, _, _) = changes => changed.is_ok(),
        () = tokio::time::sleep_until(deadline) => false,
    }
}

/// Reads every wanted partition once. Returns the response topics, the bytes read, and
/// whether any partition failed (a failure is answered at once, like data).
///
/// When every partition's limit fits in the response's, a remote store reads them at once,
/// each with its own limit: there a read may be a GET of tens of milliseconds, and one
/// after another they added up over many partitions. (A first batch larger than its
/// partition's limit, always returned whole, may then take the response past its limit by
/// that much, as Kafka allows.) Otherwise each partition's limit is cut to what the
/// response has left, and they are read in order; a local disk reads no faster several at
/// a time.
async fn read_all(
    broker: &Broker,
    request: &FetchRequest,
    wanted: &[Vec<Wanted>],
    response_max: usize,
    isolation: Isolation,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let limits_fit = wanted
        .iter()
        .flatten()
        .try_fold(0usize, |sum, want| sum.checked_add(want.max_bytes))
        .is_some_and(|sum| sum <= response_max);
    let mut read_at_once = if limits_fit && broker.log.reads_wait_on_network() {
        let reads = wanted
            .iter()
            .flatten()
            .map(|want| read_partition(broker, want, want.max_bytes, isolation));
        join_all(reads).await
    } else {
        Vec::new()
    }
    .into_iter();
    let read_committed = isolation == Isolation::ReadCommitted;
    let mut total = 0usize;
    let mut failed = false;
    let mut topics = Vec::with_capacity(wanted.len());
    for (topic, partitions) in request.topics.iter().zip(wanted) {
        let mut topic_response = FetchableTopicResponse::default();
        topic_response.topic = topic.topic.clone();
        topic_response.topic_id = topic.topic_id;
        for want in partitions {
            let read = match read_at_once.next() {
                Some(read) => read,
                None => {
                    let budget = want.max_bytes.min(response_max.saturating_sub(total));
                    read_partition(broker, want, budget, isolation).await
                }
            };
            let mut data = PartitionData::default();
            data.partition_index = want.index;
            data.aborted_transactions = read_committed.then(Vec::new);
            data.records = Some(Bytes::new());
            match read {
                None => {
                    data.error_code = ResponseError::UnknownTopicOrPartition.code();
                    failed = true;
                }
                Some(Ok(fetched)) => {
                    total += fetched.records.len();
                    data.high_watermark = fetched.offsets.high_watermark;
                    data.last_stable_offset = fetched.offsets.last_stable_offset;
                    data.log_start_offset = fetched.offsets.log_start_offset;
                    data.records = Some(fetched.records);
                    if read_committed {
                        data.aborted_transactions = Some(
                            fetched
                                .aborted
                                .iter()
                                .map(|a| {
                                    let mut aborted = AbortedTransaction::default();
                                    aborted.producer_id = a.producer_id.into();
                                    aborted.first_offset = a.first_offset;
                                    aborted
                                })
                                .collect(),
                        );
                    }
                }
                Some(Err(e)) => {
                    if let LogError::OffsetOutOfRange {
                        log_start_offset,
                        high_watermark,
                        ..
                    } = e
                    {
                        data.high_watermark = high_watermark;
                        data.last_stable_offset = high_watermark;
                        data.log_start_offset = log_start_offset;
                    }
                    data.error_code = storage_error(&e).code();
                    failed = true;
                }
            }
            topic_response.partitions.push(data);
        }
        topics.push(topic_response);
    }
    (topics, total, failed)
}

/// One partition's read with `budget` bytes; `None` for a partition the broker does not
/// have. The first batch is always returned whole, even past the budget, so a consumer can
/// get past a batch larger than its fetch size.
async fn read_partition(
    broker: &Broker,
    want: &Wanted,
    budget: usize,
    isolation: Isolation,
) -> Option<Result<FetchedRecords, LogError>> {
    let partition = want.partition.as_ref()?;
    Some(
        broker
            .log
            .read(partition, want.fetch_offset, budget, isolation)
            .await,
    )
}
