//! Shale's benchmark: starts the broker with a fresh data folder, drives it with librdkafka,
//! and writes what it measured to `docs/benchmarks.md`.
//!
//! Figures: produce and consume throughput (1 KiB records, acks=all, linger 5 ms, 1 and 8
//! partitions; produce also with the payload lent to librdkafka, not copied), produce-ack
//! and end-to-end latency from an open-loop fixed-rate producer with a tailing consumer
//! (counted from each record's *scheduled* send time, so a stalled broker cannot hide),
//! produce of small appends (one 50 KiB record per batch, the journal's group commit at
//! work), startup time, idle and peak memory, metadata latency with many partitions,
//! and the machine's own limits (loopback TCP, disk write+fdatasync, and what the producer
//! sends to a sink that stores nothing, payload copied and lent) to compare against.
//! Every figure is the median of `--runs` runs.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

mod sink;

/// The pause between the throughput runs and the latency runs. Right after the throughput
/// runs (gigabytes written, freed and deleted), the first latency row measured 1k msgs/s
/// e2e p99 of 7.7-18.9 ms, over 10 ms in 5 of 6 runs; after this pause 7.7-7.9 ms, as in
/// latency-only runs. The latency runs start a new broker each, so what they would
/// measure otherwise is the machine settling after the previous process, not the broker
/// (docs/performance.md).
const SETTLE_BEFORE_LATENCY: Duration = Duration::from_secs(45);

#[derive(Parser, Debug)]
#[command(about = "Benchmark a Shale broker on 127.0.0.1 with librdkafka")]
struct Args {
    /// The shale binary (default: `shale` beside this benchmark's binary).
    #[arg(long)]
    shale: Option<PathBuf>,
    /// Records per throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Size of each record value.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per fixed-rate latency run.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Largest partition count for the metadata test (a multiple of 1000).
    #[arg(long, default_value_t = 100_000)]
    max_partitions: i32,
    /// Run only these sections (comma-separated: limits, startup, throughput, appends,
    /// clients, latency, metadata); all of them by default. For quick before/after
    /// comparisons.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Section>,
    /// Do not pin the broker and the client to different cores.
    #[arg(long)]
    no_pin: bool,
    /// Where to write the report.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Limits,
    Startup,
    Throughput,
    Appends,
    Keyed,
    Clients,
    Latency,
    Metadata,
}

/// Producers, each to a topic of its own, in the many-clients run: enough that requests
/// waiting on the disk would take the broker past the memory target without its budgets.
const MANY_PRODUCERS: usize = 16;

/// Consumers in the many-clients run, three per producer's topic.
const MANY_CONSUMERS: usize = 48;

/// What each of those consumers asks for per fetch (`fetch.message.max.bytes`; librdkafka's
/// default is 1 MiB): large fetches, so that without a budget their answers would add up.
const MANY_CONSUMERS_FETCH_BYTES: usize = 8 << 20;

/// The small-appends run: records of 50 KiB, each the only record of its batch
/// (`batch.size` leaves no room for a second), so every partition's append in a produce
/// request is one batch object of ~50 KB. Objects of that size take the broker's journal
/// (from 16 KiB to 256 KiB); with 8 partitions a request stages 8 of them at once, and
/// requests in flight overlap: the workload group commit is for.
const SMALL_APPEND_RECORD_BYTES: usize = 50 << 10;
const SMALL_APPEND_BATCH_BYTES: usize = SMALL_APPEND_RECORD_BYTES + 1024;
const SMALL_APPEND_RECORDS: usize = 20_000;

/// The keyed-produce run: the throughput workload's records with a key each, over this many
/// keys and [`KEYED_PARTITIONS`] partitions. Every keyed record adds an entry to the key
/// index, which lives in SlateDB's memtables until flushed: the workload that takes the
/// broker's memory furthest. Enough records that its memory levels off within the run.
const KEYED_RECORDS: usize = 3_000_000;
const KEYED_KEYS: usize = 1000;
const KEYED_PARTITIONS: i32 = 8;

impl Args {
    fn runs(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let shale = match &args.shale {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("shale"),
    };
    if !shale.exists() {
        bail!(
            "{} not found: run `cargo build --release` first",
            shale.display()
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = !args.no_pin && cores >= 2;
    if pin {
        // The client gets core 1; brokers are started on core 0.
        Command::new("taskset")
            .args(["-p", "-c", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .context("taskset")?;
    }
    let bench = Bench {
        shale,
        pin,
        args,
        data_root: tempfile::tempdir()?,
    };
    let mut report = Report::default();
    report.line(&machine_description(cores, pin));

    let mut limits = None;
    if bench.args.runs(Section::Limits) {
        report.section("Machine limits");
        let loopback = median(bench.args.runs, || loopback_gbps(2 << 30));
        // The probe files stay until all runs are done, so no run writes into pages another
        // one just freed: a broker's new data does not either.
        let probes = tempfile::tempdir()?;
        let mut probe = 0;
        let mut next_probe = || {
            probe += 1;
            probes.path().join(format!("probe-{probe}"))
        };
        let new_data = median(bench.args.runs, || {
            disk_gbps(&next_probe(), 1 << 30, Pages::New)
        });
        let disk = median(bench.args.runs, || {
            disk_gbps(&next_probe(), 512 << 20, Pages::Cached)
        });
        let disk_read = median(bench.args.runs, || {
            disk_read_gbps(&next_probe(), 512 << 20).unwrap_or(0.0)
        });
        let disk_objects = median(bench.args.runs, || {
            // Thousands of files: kept with the brokers' data folders until the benchmark
            // ends, as deleting them would slow the file creation of the runs after it.
            let folder = tempfile::tempdir_in(bench.data_root.path())
                .expect("probe folder")
                .keep();
            disk_objects_gbps(&folder, 1024, OBJECT_WRITERS).unwrap_or(0.0)
        });
        drop(probes);
        let start_sink = |partitions| {
            sink::start(
                partitions,
                bench.args.records,
                bench.args.record_bytes,
                bench.pin.then_some(0),
            )
        };
        let sink = start_sink(1)?;
        let sink_of_8 = start_sink(8)?;
        let mut client_runs = Vec::new();
        let mut client_8_runs = Vec::new();
        let mut consumer_runs = Vec::new();
        let mut consumer_8_runs = Vec::new();
        let mut client_lent_runs = Vec::new();
        for _ in 0..bench.args.runs {
            client_runs.push(bench.produce_all(&sink, "sink", 1, Payload::Copied)? / 1e3);
            consumer_runs.push(bench.consume_all(&sink, "sink", 1)? / 1e3);
            client_lent_runs.push(bench.produce_all(&sink, "sink", 1, Payload::Lent)? / 1e3);
            client_8_runs.push(bench.produce_all(&sink_of_8, "sink", 8, Payload::Copied)? / 1e3);
            consumer_8_runs.push(bench.consume_all(&sink_of_8, "sink", 8)? / 1e3);
        }
        let client = median_of(client_runs);
        let client_8 = median_of(client_8_runs);
        let consumer = median_of(consumer_runs);
        let consumer_8 = median_of(consumer_8_runs);
        let client_lent = median_of(client_lent_runs);
        report.line(&format!(
            "- loopback TCP, one connection: **{loopback:.2} GB/s**"
        ));
        report.line(&format!(
            "- new data to disk, 1 MiB write + fdatasync to a new file: **{new_data:.2} GB/s**"
        ));
        report.line(&format!(
            "- the disk itself, the same rewriting a file already in the page cache: **{disk:.2} GB/s**"
        ));
        if disk_objects > 0.0 {
            report.line(&format!(
                "- the disk as Shale writes batch objects: new 1 MiB files with direct I/O, each \
                 followed by fdatasync and a sync of its folder, {OBJECT_WRITERS} at a time: \
                 **{disk_objects:.2} GB/s**"
            ));
        }
        if disk_read > 0.0 {
            report.line(&format!(
                "- the disk read back, 1 MiB reads one after another with direct I/O (past the \
                 page cache): **{disk_read:.2} GB/s**"
            ));
        }
        report.line(&format!(
            "- the client itself: the produce workload below (1 partition) sent to a sink that \
             acknowledges without storing, on the broker's core: **{client:.2} GB/s**"
        ));
        report.line(&format!(
            "- the client itself: the produce workload below over 8 partitions, to a sink of 8 \
             partitions: **{client_8:.2} GB/s**"
        ));
        report.line(&format!(
            "- the client itself, its payload not copied (as librdkafka's own \
             `rdkafka_performance` sends): the same produce workload to the same sink: \
             **{client_lent:.2} GB/s**"
        ));
        report.line(&format!(
            "- the client itself: the consume workload below (1 partition) from the same sink, \
             answering fetches from one batch in memory: **{consumer:.2} GB/s**"
        ));
        report.line(&format!(
            "- the client itself: the consume workload below over 8 partitions, from the sink \
             of 8: **{consumer_8:.2} GB/s**"
        ));
        report.line(
            "\nThe first two write figures differ by what the page cache costs: new data needs \
             pages of memory, and a VM whose host hands memory over lazily makes the first touch \
             of a page slow (see docs/performance.md). The first is what a broker writing \
             through the page cache gets when no recently freed pages are at hand. Shale writes \
             batch objects with direct I/O, past the page cache, one new file each: the third \
             figure is the disk's rate for that pattern, file creation and syncs included, and \
             so the disk's ceiling for produce. It reads them back with direct I/O too, so the \
             read figure bounds a consumer reading from the beginning of a partition.",
        );
        limits = Some(MachineLimits {
            loopback,
            disk,
            disk_read,
            disk_objects,
            client,
            client_8,
            client_lent,
            consumer,
            consumer_8,
        });
    }
    if bench.args.runs(Section::Startup) {
        startup_and_memory(&bench, &mut report)?;
    }
    if bench.args.runs(Section::Throughput) {
        throughput(&bench, &mut report, limits)?;
    }
    if bench.args.runs(Section::Appends) {
        small_appends(&bench, &mut report)?;
    }
    if bench.args.runs(Section::Keyed) {
        keyed_produce(&bench, &mut report)?;
    }
    if bench.args.runs(Section::Clients) {
        many_clients(&bench, &mut report)?;
    }
    if bench.args.runs(Section::Latency) {
        if [Section::Throughput, Section::Appends, Section::Clients]
            .into_iter()
            .any(|section| bench.args.runs(section))
        {
            std::thread::sleep(SETTLE_BEFORE_LATENCY);
        }
        latency(&bench, &mut report)?;
    }
    if bench.args.runs(Section::Metadata) {
        report.section("Metadata with many partitions");
        report.line("| partitions | Metadata (all topics) ms | broker RSS MB |");
        report.line("|---|---|---|");
        for (total, ms, rss) in bench.metadata()? {
            report.line(&format!("| {total} | {ms:.1} | {rss:.0} |"));
            if total == 100_000 {
                report.target(
                    "100k partitions: Metadata for all of them <= 200 ms, RSS <= 1 GB",
                    format!("{ms:.1} ms, {rss:.0} MB"),
                    ms <= 200.0 && rss <= 1000.0,
                    "",
                );
            }
        }
    }
    report.targets_section();

    print!("{}", report.text);
    if let Some(dir) = bench.args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&bench.args.out, report.render())?;
    eprintln!("wrote {}", bench.args.out.display());
    Ok(())
}

fn startup_and_memory(bench: &Bench, report: &mut Report) -> Result<()> {
    report.section("Startup and memory");
    let mut startups = Vec::new();
    let mut idle_rss = Vec::new();
    for _ in 0..bench.args.runs.max(5) {
        let broker = bench.start_broker(&[])?;
        startups.push(broker.startup.as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(500));
        idle_rss.push(broker.rss_mb().0);
    }
    let startup = median_of(startups);
    let idle = median_of(idle_rss);
    report.line(&format!(
        "- startup (process start to accepting connections): **{startup:.1} ms**"
    ));
    report.line(&format!("- idle RSS: **{idle:.1} MB**"));
    report.target(
        "startup to accepting connections <= 50 ms",
        format!("{startup:.1} ms"),
        startup <= 50.0,
        "",
    );
    report.target(
        "idle RSS <= 30 MB",
        format!("{idle:.1} MB"),
        idle <= 30.0,
        "",
    );
    Ok(())
}

fn small_appends(bench: &Bench, report: &mut Report) -> Result<()> {
    report.section(&format!(
        "Small appends ({SMALL_APPEND_RECORDS} records of {SMALL_APPEND_RECORD_BYTES} B, one \
         per batch: batch.size={SMALL_APPEND_BATCH_BYTES}, acks=all, linger.ms=5)"
    ));
    report.line(
        "Every append is one batch object of ~50 KB, written to the broker's journal and \
         acknowledged after its `fdatasync`; the appends of a request's partitions and of the \
         requests in flight share that sync. Closed loop, payload copied, a fresh broker per \
         run.\n",
    );
    report.line("| partitions | produce MB/s | appends/s | produce CPU broker / client % |");
    report.line("|---|---|---|---|");
    for partitions in [1, 8] {
        let runs: Vec<(f64, CpuShare)> = (0..bench.args.runs)
            .map(|_| bench.small_appends(partitions))
            .collect::<Result<_>>()?;
        let pick = |f: fn(&(f64, CpuShare)) -> f64| median_of(runs.iter().map(f).collect());
        let mbps = pick(|r| r.0);
        report.line(&format!(
            "| {partitions} | {mbps:.0} | {:.0} | {:.0} / {:.0} |",
            mbps * 1e6 / SMALL_APPEND_RECORD_BYTES as f64,
            pick(|r| r.1.broker),
            pick(|r| r.1.client),
        ));
    }
    Ok(())
}

fn keyed_produce(bench: &Bench, report: &mut Report) -> Result<()> {
    report.section(&format!(
        "Keyed produce ({KEYED_RECORDS} records of {} B over {KEYED_KEYS} keys, \
         {KEYED_PARTITIONS} partitions, acks=all, linger.ms=5)",
        bench.args.record_bytes
    ));
    report.line(
        "Each record adds an entry to the topic's key index (on by default), which SlateDB \
         holds in memory until it is flushed to an L0 table; past SlateDB's bound on \
         unflushed writes, appends wait for flushes. Closed loop, payload copied, a fresh \
         broker per run.\n",
    );
    report.line(
        "| produce MB/s | produce msgs/s | produce CPU broker / client % | peak broker RSS MB |",
    );
    report.line("|---|---|---|---|");
    let runs: Vec<(f64, CpuShare, f64)> = (0..bench.args.runs)
        .map(|_| bench.keyed_produce())
        .collect::<Result<_>>()?;
    let pick = |f: fn(&(f64, CpuShare, f64)) -> f64| median_of(runs.iter().map(f).collect());
    let mbps = pick(|r| r.0);
    let peak = pick(|r| r.2);
    report.line(&format!(
        "| {mbps:.0} | {:.0} | {:.0} / {:.0} | {peak:.0} |",
        mbps * 1e6 / bench.args.record_bytes as f64,
        pick(|r| r.1.broker),
        pick(|r| r.1.client),
    ));
    report.target(
        "RSS under produce <= 500 MB, with keyed records (key index on)",
        format!("{peak:.0} MB at the peak"),
        peak <= 500.0,
        "the key index's entries in SlateDB's memtables: up to 64 MiB of unflushed writes, \
         4-5 times that in memory (see docs/performance.md)",
    );
    Ok(())
}

fn many_clients(bench: &Bench, report: &mut Report) -> Result<()> {
    report.section("Memory with many clients");
    let runs: Vec<ManyClients> = (0..bench.args.runs)
        .map(|_| bench.many_clients())
        .collect::<Result<_>>()?;
    let median_at = |phase: usize, field: fn(&(f64, f64)) -> f64| {
        median_of(runs.iter().map(|run| field(&run.phases[phase])).collect())
    };
    let restart = median_of(runs.iter().map(|run| run.restart_ms).collect());
    let records = bench.args.records / MANY_PRODUCERS;
    report.line(&format!(
        "- {MANY_PRODUCERS} producers at once (payload lent), each {records} records of {} B \
         to a topic of its own: peak broker RSS **{:.0} MB** ({:.0} MB/s in all)",
        bench.args.record_bytes,
        median_at(0, |r| r.0),
        median_at(0, |r| r.1),
    ));
    report.line(&format!(
        "- then the broker is killed (SIGKILL) and started again on the same data: it accepts \
         connections after **{restart:.1} ms** (what SlateDB had not flushed is replayed first)"
    ));
    report.line(&format!(
        "- and {MANY_CONSUMERS} consumers at once, three per topic, each reading its topic \
         from the beginning with fetches of up to {} MiB: peak broker RSS **{:.0} MB** \
         ({:.0} MB/s in all)",
        MANY_CONSUMERS_FETCH_BYTES >> 20,
        median_at(1, |r| r.0),
        median_at(1, |r| r.1),
    ));
    report.line(
        "The broker holds at most `--queued-max-request-bytes` of requests and \
         `--fetch-memory-bytes` of fetched records at once (128 MiB each by default), \
         whatever the number of clients.",
    );
    Ok(())
}

/// The machine's own limits, in GB/s, to put produce against.
#[derive(Clone, Copy)]
struct MachineLimits {
    loopback: f64,
    disk: f64,
    /// Direct-I/O reads of data not in memory.
    disk_read: f64,
    /// New batch objects written as Shale writes them, several at once.
    disk_objects: f64,
    /// What the producer sends to a sink.
    client: f64,
    /// The same over 8 partitions.
    client_8: f64,
    /// The same, librdkafka reading each payload in place instead of copying it.
    client_lent: f64,
    /// What the consumer reads from a sink.
    consumer: f64,
    /// The same over 8 partitions.
    consumer_8: f64,
}

fn throughput(bench: &Bench, report: &mut Report, limits: Option<MachineLimits>) -> Result<()> {
    report.section(&format!(
        "Throughput ({} records of {} B, acks=all, linger.ms=5, no compression)",
        bench.args.records, bench.args.record_bytes
    ));
    report.line(
        "Each phase's clock starts once its client has connected and loaded the topic's \
         metadata (as kcat does); consume counts from the assignment, offset look-up \
         included. CPU columns: the share of one core the broker / the client (librdkafka \
         and the benchmark, on their own core) used during that phase.\n",
    );
    report.line("| partitions | produce MB/s | produce msgs/s | produce CPU broker / client % | consume MB/s | consume CPU broker / client % | peak broker RSS MB |");
    report.line("|---|---|---|---|---|---|---|");
    let mut best_produce_mbps: f64 = 0.0;
    let mut produce_of_8_mbps = 0.0;
    let mut best_consume_mbps: f64 = 0.0;
    let mut consume_of_8_mbps = 0.0;
    let mut best_lent_mbps: f64 = 0.0;
    let mut peak_rss_mb: f64 = 0.0;
    let mut lent_rows = Vec::new();
    let mut in_memory = Vec::new();
    for partitions in [1, 8] {
        let mut runs = Vec::new();
        for _ in 0..bench.args.runs {
            runs.push(bench.throughput(partitions)?);
        }
        let pick = |f: fn(&Throughput) -> f64| median_of(runs.iter().map(f).collect());
        in_memory.push(median_of(
            (0..bench.args.runs)
                .map(|_| bench.consume_in_memory(partitions))
                .collect::<Result<_>>()?,
        ));
        peak_rss_mb = peak_rss_mb.max(pick(|t| t.peak_rss_mb));
        best_produce_mbps = best_produce_mbps.max(pick(|t| t.produce_mbps));
        if partitions == 8 {
            produce_of_8_mbps = pick(|t| t.produce_mbps);
            consume_of_8_mbps = pick(|t| t.consume_mbps);
        }
        best_consume_mbps = best_consume_mbps.max(pick(|t| t.consume_mbps));
        report.line(&format!(
            "| {partitions} | {:.0} | {:.0} | {:.0} / {:.0} | {:.0} | {:.0} / {:.0} | {:.0} |",
            pick(|t| t.produce_mbps),
            pick(|t| t.produce_msgs),
            pick(|t| t.produce_cpu.broker),
            pick(|t| t.produce_cpu.client),
            pick(|t| t.consume_mbps),
            pick(|t| t.consume_cpu.broker),
            pick(|t| t.consume_cpu.client),
            pick(|t| t.peak_rss_mb),
        ));
        best_lent_mbps = best_lent_mbps.max(pick(|t| t.produce_lent_mbps));
        lent_rows.push(format!(
            "| {partitions} | {:.0} | {:.0} / {:.0} |",
            pick(|t| t.produce_lent_mbps),
            pick(|t| t.produce_lent_cpu.broker),
            pick(|t| t.produce_lent_cpu.client),
        ));
    }
    report.line(
        "\nThe same produce workload with the payload lent to librdkafka instead of copied per \
         message (as librdkafka's own `rdkafka_performance` sends, the client the produce \
         target was set against), to a second topic of the same broker after consume:\n",
    );
    report.line("| partitions | produce MB/s, payload not copied | CPU broker / client % |");
    report.line("|---|---|---|");
    for row in lent_rows {
        report.line(&row);
    }
    let [consume_in_memory, consume_in_memory_8] = in_memory[..] else {
        unreachable!("one figure per partition count")
    };
    report.line(&format!(
        "\nThe same consume workload from a broker whose store is in memory (`--store \
         memory://`), produced to it just before, so that no disk is read: \
         **{consume_in_memory:.0} / {consume_in_memory_8:.0} MB/s** (1 / 8 partitions): the \
         same read path, with the batches in memory instead of on the disk."
    ));
    report.target(
        "RSS under the produce test <= 500 MB",
        format!("{peak_rss_mb:.0} MB at the peak"),
        peak_rss_mb <= 500.0,
        "",
    );
    if let Some(limits) = limits {
        let share = |mbps: f64, gbps: f64| 100.0 * mbps / (gbps * 1000.0);
        // A limit the probe could not measure (no direct I/O there) is 0 and left out.
        let and_share_of = |mbps: f64, gbps: f64, what: &str| {
            if gbps > 0.0 {
                format!(" and {:.0}% of {what}", share(mbps, gbps))
            } else {
                String::new()
            }
        };
        report.line(&format!(
            "\nThe best produce figure is {:.0}% of what the client sends to a sink ({:.0}% on 8 \
             partitions, against the sink of 8), {:.0}% of loopback TCP and {:.0}% of the \
             disk's own rate{}. The best consume figure is {:.0}% of what the client reads from \
             a sink ({:.0}% on 8 partitions, against the sink of 8){}.",
            share(best_produce_mbps, limits.client),
            share(produce_of_8_mbps, limits.client_8),
            share(best_produce_mbps, limits.loopback),
            share(best_produce_mbps, limits.disk),
            and_share_of(
                best_produce_mbps,
                limits.disk_objects,
                "its rate for batch objects"
            ),
            share(best_consume_mbps, limits.consumer),
            share(consume_of_8_mbps, limits.consumer_8),
            and_share_of(best_consume_mbps, limits.disk_read, "the disk's read rate"),
        ));
        report.line(&format!(
            "With the payload not copied, the best produce figure is {:.0}% of what that client \
             sends to the sink{}.",
            share(best_lent_mbps, limits.client_lent),
            and_share_of(
                best_lent_mbps,
                limits.disk_objects,
                "the disk's rate for batch objects"
            ),
        ));
    }
    let client_ceilings = limits.map_or(String::new(), |l| {
        format!(
            "the client to a sink that stores nothing: {:.2} GB/s with its payload copied, \
             {:.2} lent",
            l.client, l.client_lent
        )
    });
    report.target(
        "produce >= 1 GB/s on one producer (payload lent, as `rdkafka_performance` sends)",
        format!("{best_lent_mbps:.0} MB/s"),
        best_lent_mbps >= 1000.0,
        &client_ceilings,
    );
    report.target(
        "the same with the payload copied per message (the `rdkafka` crate)",
        format!("{best_produce_mbps:.0} MB/s"),
        best_produce_mbps >= 1000.0,
        &client_ceilings,
    );
    let disk_read = limits
        .filter(|l| l.disk_read > 0.0)
        .map_or(String::new(), |l| {
            format!(
                "the disk read with direct I/O, 1 MiB at a time: {:.2} GB/s; ",
                l.disk_read
            )
        });
    let consumer = limits.map_or(String::new(), |l| {
        format!("; the client from a sink: {:.2} GB/s", l.consumer)
    });
    report.target(
        "consume >= 1.5 GB/s",
        format!("{best_consume_mbps:.0} MB/s"),
        best_consume_mbps >= 1500.0,
        &format!(
            "{disk_read}the same broker with its store in memory: \
             {consume_in_memory:.0} MB/s{consumer}"
        ),
    );
    Ok(())
}

fn latency(bench: &Bench, report: &mut Report) -> Result<()> {
    report.section(&format!(
        "Latency (open loop, 1 partition, {} s per rate, from the scheduled send time)",
        bench.args.latency_secs
    ));
    report.line(&format!(
        "Rows with committers add that many threads committing consumer-group offsets \
         synchronously in a loop during the run, to show commits do not stall produce. Every \
         run starts a fresh broker; after the throughput runs the benchmark waits {} s before \
         the first one, for the machine to settle.\n",
        SETTLE_BEFORE_LATENCY.as_secs()
    ));
    report.line("| rate msgs/s | committers | commits/s | ack p50 ms | ack p99 | ack p99.9 | ack max | e2e p50 ms | e2e p99 | e2e p99.9 | e2e max |");
    report.line("|---|---|---|---|---|---|---|---|---|---|---|");
    for (rate, committers) in [(1_000u64, 0), (10_000, 0), (1_000, 8)] {
        let mut runs = Vec::new();
        for _ in 0..bench.args.runs {
            runs.push(bench.latency(rate, committers)?);
        }
        let pick = |f: fn(&Latency) -> f64| median_of(runs.iter().map(f).collect());
        report.line(&format!(
            "| {rate} | {committers} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            pick(|l| l.commits_per_sec),
            pick(|l| l.ack[0]),
            pick(|l| l.ack[1]),
            pick(|l| l.ack[2]),
            pick(|l| l.ack[3]),
            pick(|l| l.e2e[0]),
            pick(|l| l.e2e[1]),
            pick(|l| l.e2e[2]),
            pick(|l| l.e2e[3]),
        ));
        if committers == 0 {
            let (ack, e2e) = (pick(|l| l.ack[1]), pick(|l| l.e2e[1]));
            let e2e_max = if rate == 1_000 { 10.0 } else { 20.0 };
            report.target(
                if rate == 1_000 {
                    "end-to-end p99 <= 10 ms at 1k msgs/s, produce-ack p99 <= 10 ms"
                } else {
                    "end-to-end p99 <= 20 ms at 10k msgs/s, produce-ack p99 <= 10 ms"
                },
                format!("e2e {e2e:.1} ms, ack {ack:.1} ms"),
                e2e <= e2e_max && ack <= 10.0,
                "",
            );
        }
    }
    Ok(())
}

struct Bench {
    shale: PathBuf,
    pin: bool,
    args: Args,
    /// Every broker's data folder, kept until the benchmark ends. A journal-less ext4 (this
    /// VM's) skips the inodes deleted in the last minutes each time it creates a file, so
    /// deleting a run's thousands of files would slow the file creation of the runs after
    /// it (docs/performance.md).
    data_root: tempfile::TempDir,
}

struct Broker {
    child: Child,
    bootstrap: String,
    startup: Duration,
    data: PathBuf,
}

impl Broker {
    /// (current RSS, peak RSS) in MB, from /proc.
    fn rss_mb(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn cpu_secs(&self) -> f64 {
        process_cpu_secs(self.child.id())
    }
}

/// CPU time (user + system, all threads) a process has used so far, from /proc. Both sides
/// are measured so a report shows which one was busy: a side near 100% of its core is the
/// limit; two sides well below it are waiting on each other or on the disk.
fn process_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which ends with the last ')': utime and stime are the
    // 12th and 13th, in USER_HZ ticks (100 per second on Linux).
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    ticks as f64 / 100.0
}

/// What share of one core the broker and this client used over a timed phase, in percent.
#[derive(Clone, Copy)]
struct CpuShare {
    broker: f64,
    client: f64,
}

struct CpuClock {
    broker: f64,
    client: f64,
    started: Instant,
}

impl CpuClock {
    fn start(broker: &Broker) -> Self {
        CpuClock {
            broker: broker.cpu_secs(),
            client: process_cpu_secs(std::process::id()),
            started: Instant::now(),
        }
    }

    fn share(&self, broker: &Broker) -> CpuShare {
        let wall = self.started.elapsed().as_secs_f64();
        CpuShare {
            broker: 100.0 * (broker.cpu_secs() - self.broker) / wall,
            client: 100.0 * (process_cpu_secs(std::process::id()) - self.client) / wall,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Throughput {
    produce_mbps: f64,
    produce_msgs: f64,
    /// Produce with the payload lent to librdkafka, not copied: after consume, to a second
    /// topic of the same broker.
    produce_lent_mbps: f64,
    produce_lent_cpu: CpuShare,
    consume_mbps: f64,
    peak_rss_mb: f64,
    produce_cpu: CpuShare,
    consume_cpu: CpuShare,
}

/// What a produce run sends.
#[derive(Clone, Copy)]
struct Workload {
    records: usize,
    record_bytes: usize,
    /// librdkafka's `batch.size`, where not its default.
    batch_bytes: Option<usize>,
    /// Records are keyed, cycling through this many keys (0: no keys); only with the
    /// payload copied.
    keys: usize,
}

/// What the many-clients run measured.
struct ManyClients {
    /// Peak broker RSS (MB) and MB/s in all: the producers', then the consumers'.
    phases: [(f64, f64); 2],
    /// From the restart after the producers (and a SIGKILL) to accepting connections.
    restart_ms: f64,
}

/// p50, p99, p99.9, max in ms.
struct Latency {
    ack: [f64; 4],
    e2e: [f64; 4],
    commits_per_sec: f64,
}

impl Bench {
    fn start_broker(&self, extra: &[&str]) -> Result<Broker> {
        let data = tempfile::tempdir_in(self.data_root.path())?.keep();
        self.start_broker_in(data, extra)
    }

    /// A broker on the data folder `data`, new or left by an earlier one.
    fn start_broker_in(&self, data: PathBuf, extra: &[&str]) -> Result<Broker> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let listen = format!("127.0.0.1:{port}");
        let mut command = if self.pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(&self.shale);
            c
        } else {
            Command::new(&self.shale)
        };
        command
            .args(["serve", "--listen", &listen, "--log", "warn", "--data-dir"])
            .arg(&data)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let started = Instant::now();
        let child = command.spawn().context("starting shale")?;
        loop {
            if TcpStream::connect(&listen).is_ok() {
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("broker did not start");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(Broker {
            child,
            bootstrap: listen,
            startup: started.elapsed(),
            data,
        })
    }

    fn throughput(&self, partitions: i32) -> Result<Throughput> {
        let broker = self.start_broker(&[])?;
        let topic = "throughput";
        let (produce_mbps, produce_cpu) =
            self.produce_phase(&broker, topic, partitions, Payload::Copied, self.workload())?;
        let peak_rss_mb = broker.rss_mb().1;

        let consume_clock = CpuClock::start(&broker);
        let consume_mbps = self.consume_all(&broker.bootstrap, topic, partitions)?;
        let consume_cpu = consume_clock.share(&broker);

        let (produce_lent_mbps, produce_lent_cpu) = self.produce_phase(
            &broker,
            "throughput-lent",
            partitions,
            Payload::Lent,
            self.workload(),
        )?;
        Ok(Throughput {
            produce_mbps,
            produce_msgs: produce_mbps * 1e6 / self.args.record_bytes as f64,
            produce_lent_mbps,
            produce_lent_cpu,
            consume_mbps,
            peak_rss_mb,
            produce_cpu,
            consume_cpu,
        })
    }

    /// MB/s and how busy each side was, producing the small-appends workload to a fresh
    /// broker.
    fn small_appends(&self, partitions: i32) -> Result<(f64, CpuShare)> {
        let broker = self.start_broker(&[])?;
        let workload = Workload {
            records: SMALL_APPEND_RECORDS,
            record_bytes: SMALL_APPEND_RECORD_BYTES,
            batch_bytes: Some(SMALL_APPEND_BATCH_BYTES),
            keys: 0,
        };
        self.produce_phase(
            &broker,
            "small-appends",
            partitions,
            Payload::Copied,
            workload,
        )
    }

    /// MB/s, how busy each side was and the broker's peak RSS in MB, producing the keyed
    /// workload to a fresh broker.
    fn keyed_produce(&self) -> Result<(f64, CpuShare, f64)> {
        let broker = self.start_broker(&[])?;
        let workload = Workload {
            records: KEYED_RECORDS,
            keys: KEYED_KEYS,
            ..self.workload()
        };
        let (mbps, cpu) = self.produce_phase(
            &broker,
            "keyed",
            KEYED_PARTITIONS,
            Payload::Copied,
            workload,
        )?;
        Ok((mbps, cpu, broker.rss_mb().1))
    }

    /// Creates `topic` and produces `workload` to it: MB/s and how busy each side was.
    fn produce_phase(
        &self,
        broker: &Broker,
        topic: &str,
        partitions: i32,
        payload_use: Payload,
        workload: Workload,
    ) -> Result<(f64, CpuShare)> {
        create_topics(&broker.bootstrap, &[(topic.to_string(), partitions)])?;
        let clock = CpuClock::start(broker);
        let mbps = self.produce(&broker.bootstrap, topic, partitions, payload_use, workload)?;
        Ok((mbps, clock.share(broker)))
    }

    /// Produces the throughput workload to `topic` (spread over its partitions) as fast as
    /// the producer goes, every record acknowledged; returns MB/s.
    fn produce_all(
        &self,
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        payload_use: Payload,
    ) -> Result<f64> {
        self.produce(bootstrap, topic, partitions, payload_use, self.workload())
    }

    /// [`Bench::produce_all`] of `records` records.
    fn produce_records(
        &self,
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        payload_use: Payload,
        records: usize,
    ) -> Result<f64> {
        let workload = Workload {
            records,
            ..self.workload()
        };
        self.produce(bootstrap, topic, partitions, payload_use, workload)
    }

    /// The throughput workload: `--records` records of `--record-bytes`.
    fn workload(&self) -> Workload {
        Workload {
            records: self.args.records,
            record_bytes: self.args.record_bytes,
            batch_bytes: None,
            keys: 0,
        }
    }

    /// Produces `workload` to `topic` (spread over its partitions) as fast as the producer
    /// goes, every record acknowledged; returns MB/s.
    fn produce(
        &self,
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        payload_use: Payload,
        workload: Workload,
    ) -> Result<f64> {
        let Workload {
            records,
            record_bytes,
            batch_bytes,
            keys,
        } = workload;
        // Declared before the producer so that it is dropped after it: records lent from it
        // may still be queued when an error returns early, and dropping the producer
        // purges them and stops librdkafka's threads.
        let payload = vec![b'x'; record_bytes];
        let acked = Arc::new(AckCounter::default());
        let mut config = producer_config(bootstrap);
        if let Some(bytes) = batch_bytes {
            config.set("batch.size", bytes.to_string());
        }
        let producer: ThreadedProducer<Acks> = config.create_with_context(Acks {
            acked: acked.clone(),
            latency: None,
        })?;
        connect(producer.client(), topic)?;
        let started = Instant::now();
        let keys: Vec<Vec<u8>> = (0..keys).map(|k| format!("key-{k}").into_bytes()).collect();
        match payload_use {
            Payload::Copied if !keys.is_empty() => {
                for i in 0..records {
                    let record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, 0)
                        .key(&keys[i % keys.len()][..])
                        .payload(&payload[..])
                        .partition((i % partitions as usize) as i32);
                    send(&producer, record);
                }
            }
            Payload::Copied => {
                for i in 0..records {
                    let record = BaseRecord::<(), [u8], usize>::with_opaque_to(topic, 0)
                        .payload(&payload[..])
                        .partition((i % partitions as usize) as i32);
                    send(&producer, record);
                }
            }
            Payload::Lent => {
                ensure!(
                    keys.is_empty(),
                    "keyed records are only sent with the payload copied"
                );
                send_lent(&producer, topic, partitions, &payload, records)?
            }
        }
        producer.flush(Duration::from_secs(120))?;
        let secs = started.elapsed().as_secs_f64();
        let (ok, failed) = acked.counts();
        if failed > 0 || ok != records {
            bail!("{failed} records failed, {ok} acknowledged of {records}");
        }
        Ok((records * record_bytes) as f64 / 1e6 / secs)
    }

    /// Consumes the throughput workload from the beginning of `topic`'s partitions; returns
    /// MB/s.
    fn consume_all(&self, bootstrap: &str, topic: &str, partitions: i32) -> Result<f64> {
        let config = consumer_config(bootstrap);
        self.consume_records(&config, topic, partitions, self.args.records)
    }

    /// [`Bench::consume_all`] of the first `records` records.
    fn consume_records(
        &self,
        config: &ClientConfig,
        topic: &str,
        partitions: i32,
        records: usize,
    ) -> Result<f64> {
        let consumer: BaseConsumer = config.create()?;
        connect(consumer.client(), topic)?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        let started = Instant::now();
        consumer.assign(&assignment)?;
        let mut read = 0;
        while read < records {
            match consumer.poll(Duration::from_secs(10)) {
                Some(Ok(_)) => read += 1,
                Some(Err(e)) => bail!("consume: {e}"),
                None => bail!("consume stalled after {read} records"),
            }
        }
        let secs = started.elapsed().as_secs_f64();
        Ok((records * self.args.record_bytes) as f64 / 1e6 / secs)
    }

    /// Consume MB/s of the throughput workload from a broker whose store is in memory,
    /// produced to it first: the broker's read path with no disk under it.
    fn consume_in_memory(&self, partitions: i32) -> Result<f64> {
        let broker = self.start_broker(&["--store", "memory://"])?;
        let topic = "in-memory";
        create_topics(&broker.bootstrap, &[(topic.to_string(), partitions)])?;
        self.produce_all(&broker.bootstrap, topic, partitions, Payload::Copied)?;
        self.consume_all(&broker.bootstrap, topic, partitions)
    }

    /// [`MANY_PRODUCERS`] producers at once, each to a topic of its own, then, after a
    /// SIGKILL and a restart, [`MANY_CONSUMERS`] consumers at once reading those topics from
    /// the beginning.
    fn many_clients(&self) -> Result<ManyClients> {
        let broker = self.start_broker(&[])?;
        let topics: Vec<(String, i32)> = (0..MANY_PRODUCERS)
            .map(|i| (format!("many-{i}"), 1))
            .collect();
        create_topics(&broker.bootstrap, &topics)?;
        let records = self.args.records / MANY_PRODUCERS;
        let megabytes = (records * self.args.record_bytes) as f64 / 1e6;
        let started = Instant::now();
        std::thread::scope(|scope| {
            let producers: Vec<_> = topics
                .iter()
                .map(|(topic, _)| {
                    scope.spawn(|| {
                        self.produce_records(&broker.bootstrap, topic, 1, Payload::Lent, records)
                    })
                })
                .collect();
            producers
                .into_iter()
                .try_for_each(|p| p.join().expect("a producer thread panicked").map(drop))
        })?;
        let produced = (
            broker.rss_mb().1,
            megabytes * MANY_PRODUCERS as f64 / started.elapsed().as_secs_f64(),
        );
        // A new broker on the same data, so that the memory the producers' requests took
        // (which the allocator keeps) does not count as the consumers'. Dropped, the broker
        // is killed: its successor's start is a restart after a crash.
        let data = broker.data.clone();
        drop(broker);
        let broker = self.start_broker_in(data, &[])?;
        let restart_ms = broker.startup.as_secs_f64() * 1e3;
        let mut config = consumer_config(&broker.bootstrap);
        config.set(
            "fetch.message.max.bytes",
            MANY_CONSUMERS_FETCH_BYTES.to_string(),
        );
        let started = Instant::now();
        std::thread::scope(|scope| {
            let consumers: Vec<_> = (0..MANY_CONSUMERS)
                .map(|i| {
                    let (topic, config) = (&topics[i % MANY_PRODUCERS].0, &config);
                    scope.spawn(move || self.consume_records(config, topic, 1, records))
                })
                .collect();
            consumers
                .into_iter()
                .try_for_each(|c| c.join().expect("a consumer thread panicked").map(drop))
        })?;
        let consumed = (
            broker.rss_mb().1,
            megabytes * MANY_CONSUMERS as f64 / started.elapsed().as_secs_f64(),
        );
        Ok(ManyClients {
            phases: [produced, consumed],
            restart_ms,
        })
    }

    fn latency(&self, rate: u64, committers: usize) -> Result<Latency> {
        let broker = self.start_broker(&[])?;
        let topic = "latency";
        create_topics(&broker.bootstrap, &[(topic.to_string(), 1)])?;
        let interval = Duration::from_nanos(1_000_000_000 / rate);
        let total = (rate * self.args.latency_secs) as usize;
        let scheduled = move |i: usize| interval * i as u32;

        let consumer: BaseConsumer = consumer_config(&broker.bootstrap).create()?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let acks = Arc::new(AckCounter::default());
        let latency = Arc::new(AckLatency {
            histogram: Mutex::new(Histogram::<u64>::new(3)?),
            start: Mutex::new(Instant::now() + Duration::from_secs(3600)),
            interval,
        });
        let producer: ThreadedProducer<Acks> = producer_config(&broker.bootstrap)
            .create_with_context(Acks {
                acked: acks.clone(),
                latency: Some(latency.clone()),
            })?;

        // librdkafka needs a moment after assign() before it fetches; the clock starts only
        // once the tailing consumer has received a warm-up record.
        let mut payload = vec![b'x'; self.args.record_bytes];
        payload[..8].copy_from_slice(&WARM_UP.to_be_bytes());
        send(
            &producer,
            BaseRecord::<(), [u8], usize>::with_opaque_to(topic, usize::MAX).payload(&payload[..]),
        );
        let warm_until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                if index_of(&message?) == WARM_UP {
                    break;
                }
            }
            if Instant::now() > warm_until {
                bail!("the consumer never received the warm-up record");
            }
        }
        let start = Instant::now();
        let committing = Arc::new(AtomicBool::new(true));
        let commit_threads: Vec<_> = (0..committers)
            .map(|i| {
                let config = consumer_config(&broker.bootstrap);
                let committing = committing.clone();
                std::thread::spawn(move || commit_in_a_loop(config, topic, i, &committing))
            })
            .collect();
        *latency
            .start
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))? = start;

        let done = Arc::new(AtomicBool::new(false));
        let tail = {
            let done = done.clone();
            std::thread::spawn(move || -> Result<Histogram<u64>> {
                let mut e2e = Histogram::<u64>::new(3)?;
                while (e2e.len() as usize) < total && !done.load(Ordering::Relaxed) {
                    if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                        let late = start
                            .elapsed()
                            .saturating_sub(scheduled(index_of(&message?) as usize));
                        e2e.record(late.as_micros() as u64)?;
                    }
                }
                Ok(e2e)
            })
        };
        for i in 0..total {
            let at = scheduled(i);
            let now = start.elapsed();
            if at > now {
                std::thread::sleep(at - now);
            }
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            send(
                &producer,
                BaseRecord::<(), [u8], usize>::with_opaque_to(topic, i).payload(&payload[..]),
            );
        }
        producer.flush(Duration::from_secs(60))?;
        committing.store(false, Ordering::Relaxed);
        let mut commits = 0;
        for thread in commit_threads {
            commits += thread
                .join()
                .map_err(|_| anyhow::anyhow!("committer panicked"))??;
        }
        let commits_per_sec = commits as f64 / start.elapsed().as_secs_f64();
        let wait_until = Instant::now() + Duration::from_secs(30);
        while !tail.is_finished() && Instant::now() < wait_until {
            std::thread::sleep(Duration::from_millis(10));
        }
        done.store(true, Ordering::Relaxed);
        let e2e = tail
            .join()
            .map_err(|_| anyhow::anyhow!("tail thread panicked"))??;
        if e2e.len() < total as u64 {
            bail!("the tailing consumer saw {} of {total} records", e2e.len());
        }
        let ack = latency
            .histogram
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        Ok(Latency {
            ack: percentiles(&ack),
            e2e: percentiles(&e2e),
            commits_per_sec,
        })
    }

    /// (partitions, Metadata ms, RSS MB) at 10k and `max_partitions`.
    fn metadata(&self) -> Result<Vec<(i32, f64, f64)>> {
        let broker = self.start_broker(&[])?;
        let per_topic = 1000;
        let mut created = 0;
        let mut results = Vec::new();
        let consumer: BaseConsumer = consumer_config(&broker.bootstrap).create()?;
        let mut targets = vec![
            10_000.min(self.args.max_partitions),
            self.args.max_partitions,
        ];
        targets.dedup();
        for target in targets {
            let topics: Vec<(String, i32)> = (created / per_topic..target / per_topic)
                .map(|t| (format!("many-{t:04}"), per_topic))
                .collect();
            create_topics(&broker.bootstrap, &topics)?;
            created = target;
            let ms = median(self.args.runs.max(3), || {
                let started = Instant::now();
                let metadata = consumer.fetch_metadata(None, Duration::from_secs(60));
                let elapsed = started.elapsed().as_secs_f64() * 1e3;
                let count: usize =
                    metadata.map_or(0, |m| m.topics().iter().map(|t| t.partitions().len()).sum());
                assert_eq!(count as i32, target, "metadata should list every partition");
                elapsed
            });
            results.push((target, ms, broker.rss_mb().0));
        }
        Ok(results)
    }
}

/// Commits offsets of its own group synchronously until told to stop; returns how many.
fn commit_in_a_loop(
    mut config: ClientConfig,
    topic: &str,
    id: usize,
    running: &AtomicBool,
) -> Result<u64> {
    let consumer: BaseConsumer = config.set("group.id", format!("committer-{id}")).create()?;
    let mut commits = 0u64;
    while running.load(Ordering::Relaxed) {
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(topic, 0, Offset::Offset(commits as i64))?;
        consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync)?;
        commits += 1;
    }
    Ok(commits)
}

/// The index the warm-up record of a latency run carries.
const WARM_UP: u64 = u64::MAX;

/// The index a latency-run record carries in its first 8 bytes.
fn index_of(message: &rdkafka::message::BorrowedMessage<'_>) -> u64 {
    message
        .payload()
        .and_then(|p| p.get(..8))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// How the producer hands librdkafka a record's payload.
#[derive(Clone, Copy)]
enum Payload {
    /// Copied per message, as the `rdkafka` crate's `send` always does.
    Copied,
    /// Lent: librdkafka reads it in place until it is sent, as its own benchmark tool
    /// (`rdkafka_performance`) does by default. The reference for the produce target.
    Lent,
}

/// Sends `records` records of `payload`, spread over `partitions`, through librdkafka's C
/// API with the payload lent (neither copied nor freed by librdkafka), waiting while its
/// queue is full. The caller keeps `payload` alive until the producer is flushed or
/// dropped, on every path. Delivery reports reach the producer's context with opaque 0.
fn send_lent(
    producer: &ThreadedProducer<Acks>,
    topic: &str,
    partitions: i32,
    payload: &[u8],
    records: usize,
) -> Result<()> {
    use rdkafka::bindings as rd;
    let name = std::ffi::CString::new(topic)?;
    // SAFETY: the client is alive for the whole call; the handle is released below.
    let handle = unsafe {
        rd::rd_kafka_topic_new(
            producer.client().native_ptr(),
            name.as_ptr(),
            std::ptr::null_mut(),
        )
    };
    if handle.is_null() {
        bail!("librdkafka refused a handle for topic {topic}");
    }
    let mut failed = None;
    'records: for i in 0..records {
        let partition = (i % partitions as usize) as i32;
        loop {
            // SAFETY: flags 0 lend the payload: librdkafka only reads it, and the caller
            // keeps it alive until the producer is flushed or dropped. The handle is valid
            // until the topic is destroyed after this loop.
            let queued = unsafe {
                rd::rd_kafka_produce(
                    handle,
                    partition,
                    0,
                    payload.as_ptr() as *mut std::ffi::c_void,
                    payload.len(),
                    std::ptr::null(),
                    0,
                    std::ptr::null_mut(),
                )
            };
            if queued == 0 {
                break;
            }
            // SAFETY: reads the calling thread's last librdkafka error.
            let error = unsafe { rd::rd_kafka_last_error() };
            if error != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__QUEUE_FULL {
                failed = Some(error);
                break 'records;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    // SAFETY: the handle came from rd_kafka_topic_new and is not used after this; queued
    // messages keep their own reference to the topic.
    unsafe { rd::rd_kafka_topic_destroy(handle) };
    match failed {
        Some(error) => bail!("librdkafka refused a record: {error:?}"),
        None => Ok(()),
    }
}

/// Sends a record, waiting while librdkafka's queue is full.
fn send<K: ToBytes + ?Sized>(
    producer: &ThreadedProducer<Acks>,
    mut record: BaseRecord<'_, K, [u8], usize>,
) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
}

#[derive(Default)]
struct AckCounter {
    counts: Mutex<(usize, usize)>,
}

impl AckCounter {
    fn counts(&self) -> (usize, usize) {
        self.counts.lock().map(|c| *c).unwrap_or_default()
    }
}

struct Acks {
    acked: Arc<AckCounter>,
    latency: Option<Arc<AckLatency>>,
}

/// Where a latency run records ack latency.
struct AckLatency {
    histogram: Mutex<Histogram<u64>>,
    /// The run's start, set once the consumer is warm.
    start: Mutex<Instant>,
    interval: Duration,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        if let Ok(mut counts) = self.acked.counts.lock() {
            if result.is_ok() {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
        if let Some(latency) = &self.latency {
            let Ok(start) = latency.start.lock().map(|o| *o) else {
                return;
            };
            if index == usize::MAX {
                return;
            }
            let late = start
                .elapsed()
                .saturating_sub(latency.interval * index as u32);
            if let Ok(mut h) = latency.histogram.lock() {
                let _ = h.record(late.as_micros() as u64);
            }
        }
    }
}

/// Connects `client` to the broker and loads `topic`'s partition leaders before a clock
/// starts, as kcat does. A consumer assigned a partition whose leader it does not know yet
/// looks up its start offset only when a 500 ms retry timer fires (librdkafka 2.12), which
/// would be counted against the broker.
fn connect<C: ClientContext>(client: &rdkafka::client::Client<C>, topic: &str) -> Result<()> {
    client.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    Ok(())
}

fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000");
    config
}

fn consumer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "shale-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "500")
        .set("check.crcs", "false");
    config
}

fn create_topics(bootstrap: &str, topics: &[(String, i32)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    for chunk in topics.chunks(50) {
        let new: Vec<NewTopic> = chunk
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let results = futures_executor(admin.create_topics(&new, &AdminOptions::new()))?;
        for result in results {
            result.map_err(|(name, e)| anyhow::anyhow!("creating {name}: {e}"))?;
        }
    }
    Ok(())
}

/// Drives one admin future to completion on this thread.
fn futures_executor<F: std::future::Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(future)
}

fn percentiles(h: &Histogram<u64>) -> [f64; 4] {
    let ms = |us: u64| us as f64 / 1000.0;
    [
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    ]
}

/// GB/s through one loopback TCP connection.
fn loopback_gbps(bytes: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let reader = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        while total < bytes {
            match socket.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    });
    let mut socket = TcpStream::connect(address).expect("connect");
    let chunk = vec![7u8; 1 << 20];
    let started = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        socket.write_all(&chunk).expect("write");
        sent += chunk.len();
    }
    drop(socket);
    let _ = reader.join();
    bytes as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// GB/s writing 1 MiB chunks with an fdatasync after each, in the temp folder.
/// Whether a disk probe writes into pages the page cache already holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pages {
    New,
    Cached,
}

/// GB/s of 1 MiB writes, each followed by fdatasync, to a new file or over one already in
/// the page cache.
fn disk_gbps(path: &std::path::Path, bytes: usize, pages: Pages) -> f64 {
    let file = File::create(path).expect("create");
    let chunk = vec![3u8; 1 << 20];
    if pages == Pages::Cached {
        let mut at = 0;
        while at < bytes {
            file.write_all_at(&chunk, at as u64).expect("write");
            at += chunk.len();
        }
        file.sync_data().expect("fdatasync");
    }
    let started = Instant::now();
    let mut at = 0;
    while at < bytes {
        file.write_all_at(&chunk, at as u64).expect("write");
        file.sync_data().expect("fdatasync");
        at += chunk.len();
    }
    bytes as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// GB/s of 1 MiB reads, one after another, of a file written beforehand, past the page
/// cache (`O_DIRECT`), as Shale reads batch objects: what a consumer reading data that is
/// not in memory gets at most. `None` where the file system refuses direct I/O.
#[cfg(target_os = "linux")]
fn disk_read_gbps(path: &std::path::Path, bytes: usize) -> Option<f64> {
    use std::os::unix::fs::OpenOptionsExt;
    const CHUNK: usize = 1 << 20;
    let file = File::create(path).expect("create");
    let data = vec![3u8; CHUNK];
    let mut at = 0;
    while at < bytes {
        file.write_all_at(&data, at as u64).expect("write");
        at += CHUNK;
    }
    file.sync_data().expect("fdatasync");
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    // Direct I/O wants a buffer aligned to the block size.
    let mut buffer = vec![0u8; CHUNK + 4096];
    let start = buffer.as_ptr().align_offset(4096);
    let aligned = &mut buffer[start..start + CHUNK];
    let started = Instant::now();
    let mut at = 0;
    while at < bytes {
        direct.read_exact_at(aligned, at as u64).ok()?;
        at += CHUNK;
    }
    Some(bytes as f64 / started.elapsed().as_secs_f64() / 1e9)
}

/// Batch objects written at once by the disk probe: about as many as a broker has in
/// flight under the produce workload (8-10 requests of ~1 MB each, measured).
const OBJECT_WRITERS: usize = 8;

/// GB/s of `objects` new 1 MiB files in `folder`, written as Shale writes batch objects in a
/// local folder (`O_DIRECT`, fdatasync, then a sync of the folder so the file's name is
/// durable too), `writers` at a time: the disk's rate for the produce path's own pattern,
/// file creation included. `None` if a write fails, as where the file system refuses
/// direct I/O: the report then leaves this limit out.
#[cfg(target_os = "linux")]
fn disk_objects_gbps(folder: &std::path::Path, objects: usize, writers: usize) -> Option<f64> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::AtomicUsize;
    const OBJECT: usize = 1 << 20;
    let next = AtomicUsize::new(0);
    let refused = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..writers {
            scope.spawn(|| {
                // Direct I/O wants a buffer aligned to the block size.
                let buffer = vec![5u8; OBJECT + 4096];
                let start = buffer.as_ptr().align_offset(4096);
                let aligned = &buffer[start..start + OBJECT];
                loop {
                    let object = next.fetch_add(1, Ordering::Relaxed);
                    if object >= objects || refused.load(Ordering::Relaxed) {
                        return;
                    }
                    let written = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(folder.join(format!("{object:016x}")))
                        .and_then(|file| {
                            file.write_all_at(aligned, 0)?;
                            file.sync_data()
                        })
                        .and_then(|()| File::open(folder)?.sync_all());
                    if written.is_err() {
                        refused.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    (!refused.load(Ordering::Relaxed))
        .then(|| (objects * OBJECT) as f64 / elapsed.as_secs_f64() / 1e9)
}

#[cfg(not(target_os = "linux"))]
fn disk_objects_gbps(_: &std::path::Path, _: usize, _: usize) -> Option<f64> {
    None
}

/// Shale reads batch objects with direct I/O only on Linux; elsewhere there is no such
/// limit to report.
#[cfg(not(target_os = "linux"))]
fn disk_read_gbps(_: &std::path::Path, _: usize) -> Option<f64> {
    None
}

fn median(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    median_of((0..runs.max(1)).map(|_| f()).collect())
}

fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn machine_description(cores: usize, pinned: bool) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: {cpu}, {cores} cores, {memory:.0} GiB RAM, Linux {}. Broker on the local-folder store \
         (fsync on), client librdkafka {}.{}",
        kernel.trim(),
        rdkafka::util::get_rdkafka_version().1,
        if pinned { " Broker pinned to core 0, client to core 1." } else { "" }
    )
}

#[derive(Default)]
struct Report {
    text: String,
    /// The performance targets this run measured, for the summary at the end.
    targets: Vec<TargetRow>,
}

/// One performance target with this run's figure, and what bounds that figure where the
/// run measured it.
struct TargetRow {
    target: &'static str,
    figure: String,
    met: bool,
    bound: String,
}

impl Report {
    fn target(&mut self, target: &'static str, figure: String, met: bool, bound: &str) {
        self.targets.push(TargetRow {
            target,
            figure,
            met,
            bound: bound.to_string(),
        });
    }

    /// The targets of this run's sections, met or not, with the limits measured beside them.
    fn targets_section(&mut self) {
        if self.targets.is_empty() {
            return;
        }
        self.section("Against the targets");
        self.line(
            "The performance bar (issue #6), this run's figures against it, and for each \
             figure that falls short the limits this run measured that bound it (see \
             \"Machine limits\"; the analysis is in `docs/performance.md`).\n",
        );
        self.line("| target | this run | met | what bounds it here |");
        self.line("|---|---|---|---|");
        for row in std::mem::take(&mut self.targets) {
            let bound = if row.met { "" } else { &row.bound };
            self.line(&format!(
                "| {} | {} | {} | {bound} |",
                row.target,
                row.figure,
                if row.met { "yes" } else { "no" },
            ));
        }
    }

    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        eprintln!("{line}");
    }

    fn section(&mut self, title: &str) {
        self.line(&format!("\n## {title}\n"));
    }

    fn render(&self) -> String {
        format!(
            "# Benchmarks\n\nGenerated by `cargo build --release --workspace && cargo run --release -p shale-bench` \
             (see README). Each figure is the median of several runs against a fresh broker. On a \
             shared VM the same command has given figures 2-3x apart from one invocation to the \
             next (the machine limits below move with them): compare runs made on the same \
             machine at the same time, and read the ratios to the machine limits. Where the \
             targets are out of reach, and why: `docs/performance.md`.\n\n{}",
            self.text
        )
    }
}
