//! Fetch: read durable batches, or wait at the tail until some arrive.
//!
//! A fetch with too little data waits on the partitions' high-watermark watches, so it is
//! woken the moment an append becomes durable, and answers at `max_wait_ms` at the latest.
//! Fetch sessions (KIP-227) are not kept: every response is a full one (session id 0),
//! which clients handle by sending full requests.
//!
//! The records a fetch reads come out of the broker's fetch budget, held until the answer
//! is written. A partition that finds too little of it free is answered without records,
//! as if it had none yet, and the fetch waits for room as it waits for data.

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

use super::{storage_error, Broker, RequestContext};
use crate::log::{FetchedRecords, Isolation, LogError, PartitionLog, PartitionOffsets};
use crate::protocol::budget::Share;

/// Kafka's isolation level for consumers that only read committed transactions.
const READ_COMMITTED: i8 = 1;

/// A partition is read with less of the fetch budget than its limit, down to this much
/// (or its limit, if smaller); with less free it waits.
const LEAST_SHARE: usize = 1 << 20;

struct Wanted {
    partition: Option<Arc<PartitionLog>>,
    index: i32,
    fetch_offset: i64,
    max_bytes: usize,
}

/// What one pass over the wanted partitions read.
struct Pass {
    topics: Vec<FetchableTopicResponse>,
    bytes: usize,
    /// Some partition failed: answered at once, like data.
    failed: bool,
    /// Some partition was not read for want of the fetch budget.
    starved: bool,
    shares: Vec<Share>,
}

pub async fn handle(
    broker: &Broker,
    context: &RequestContext,
    version: i16,
    request: FetchRequest,
) -> FetchResponse {
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
        let pass = read_all(broker, &request, &wanted, response_max, isolation).await;
        let done = pass.bytes >= min_bytes || pass.failed || Instant::now() >= deadline;
        if done || !wait_for_more(broker, &mut watches, pass.starved, deadline).await {
            for share in pass.shares {
                context.hold(share);
            }
            broker.metrics.fetched_bytes.inc_by(pass.bytes as u64);
            response.responses = pass.topics;
            return response;
        }
    }
}

/// Waits until any high watermark moves or, for a fetch that went without records for want
/// of budget, until some comes back (true); or until the deadline passes (false).
async fn wait_for_more(
    broker: &Broker,
    watches: &mut [watch::Receiver<i64>],
    starved: bool,
    deadline: Instant,
) -> bool {
    let returned = broker.fetch_budget.returned();
    tokio::pin!(returned);
    if starved {
        returned.as_mut().enable();
        // Room may have come back since the partitions were read.
        if broker.fetch_budget.free() >= LEAST_SHARE {
            return true;
        }
    }
    let changes = async {
        if watches.is_empty() {
            return std::future::pending().await;
        }
        let (changed, _, _) = select_all(watches.iter_mut().map(|w| Box::pin(w.changed()))).await;
        // A closed watch: the partition is gone, and the fetch is answered.
        changed.is_ok()
    };
    tokio::select! {
        more = changes => more,
        () = &mut returned, if starved => true,
        () = tokio::time::sleep_until(deadline) => false,
    }
}

/// Reads every wanted partition once, each with a share of the fetch budget.
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
) -> Pass {
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
    let mut pass = Pass {
        topics: Vec::with_capacity(wanted.len()),
        bytes: 0,
        failed: false,
        starved: false,
        shares: Vec::new(),
    };
    for (topic, partitions) in request.topics.iter().zip(wanted) {
        let mut topic_response = FetchableTopicResponse::default();
        topic_response.topic = topic.topic.clone();
        topic_response.topic_id = topic.topic_id;
        for want in partitions {
            let read = match read_at_once.next() {
                Some(read) => read,
                None => {
                    let limit = want.max_bytes.min(response_max.saturating_sub(pass.bytes));
                    read_partition(broker, want, limit, isolation).await
                }
            };
            let mut data = PartitionData::default();
            data.partition_index = want.index;
            data.aborted_transactions = read_committed.then(Vec::new);
            data.records = Some(Bytes::new());
            match read {
                None => {
                    data.error_code = ResponseError::UnknownTopicOrPartition.code();
                    pass.failed = true;
                }
                Some(Ok(Budgeted::Starved(offsets))) => {
                    pass.starved = true;
                    data.high_watermark = offsets.high_watermark;
                    data.last_stable_offset = offsets.last_stable_offset;
                    data.log_start_offset = offsets.log_start_offset;
                }
                Some(Ok(Budgeted::Read(fetched, mut share))) => {
                    share.shrink_to(fetched.records.len());
                    pass.shares.push(share);
                    pass.bytes += fetched.records.len();
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
                    pass.failed = true;
                }
            }
            topic_response.partitions.push(data);
        }
        pass.topics.push(topic_response);
    }
    pass
}

/// A partition's read, or its offsets alone when the fetch budget had too little free.
enum Budgeted {
    Read(FetchedRecords, Share),
    Starved(PartitionOffsets),
}

/// One partition's read of up to `limit` bytes, as many as the fetch budget gives; `None`
/// for a partition the broker does not have. The first batch is always returned whole,
/// even past the limit, so a consumer can get past a batch larger than its fetch size.
async fn read_partition(
    broker: &Broker,
    want: &Wanted,
    limit: usize,
    isolation: Isolation,
) -> Option<Result<Budgeted, LogError>> {
    let partition = want.partition.as_ref()?;
    let Some(share) = broker.fetch_budget.try_take(limit, limit.min(LEAST_SHARE)) else {
        return Some(broker.log.offsets(partition).await.map(Budgeted::Starved));
    };
    let read = broker
        .log
        .read(partition, want.fetch_offset, share.bytes(), isolation)
        .await;
    Some(read.map(|fetched| Budgeted::Read(fetched, share)))
}
