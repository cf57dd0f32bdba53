"""aiokafka 0.14: bootstraps with ApiVersions v0, produces with v7, fetches with v11; its own
group coordination (join, sync, heartbeats, commits)."""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


async def round_trip(bootstrap, topic):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip")
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(topic, value=f"v{i}".encode(), key=b"k", headers=[("h", b"1")])
            for i in range(50)
        ]
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records = []
        while len(records) < 50:
            batch = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=1000), 20)
            records.extend(batch.get(tp, []))
        end = (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()
    return [m.offset for m in sent], records, end


def test_aiokafka_round_trips_records(broker, topic_name):
    offsets, records, end = asyncio.run(round_trip(broker.bootstrap, topic_name))
    assert offsets == list(range(50))
    assert [(r.offset, r.key, r.value, list(r.headers)) for r in records] == [
        (i, b"k", f"v{i}".encode(), [("h", b"1")]) for i in range(50)
    ]
    assert end == 50


async def transactions(bootstrap, topic):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="aio-" + topic)
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(3):
                await producer.send(topic, f"kept{i}".encode())
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"dropped")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"last")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", isolation_level="read_committed"
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records = []
        while len(records) < 4:
            batch = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=1000), 20)
            records.extend(batch.get(tp, []))
        end = (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()
    return [(r.offset, r.value) for r in records], end


def test_aiokafka_transactions_hide_aborted_records(broker, topic_name):
    records, end = asyncio.run(transactions(broker.bootstrap, topic_name))
    # 0-2 committed, 3 marker, 4 aborted, 5 marker, 6 committed, 7 marker.
    assert records == [(0, b"kept0"), (1, b"kept1"), (2, b"kept2"), (6, b"last")]
    assert end == 8


async def group_members(bootstrap, topic):
    """Two members of one group share a topic's partitions and commit; a later member
    resumes after the commits."""
    admin_producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await admin_producer.start()
    group = "g-" + topic

    def member():
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            heartbeat_interval_ms=300,
        )

    first, second = member(), member()
    await first.start()
    await second.start()
    try:
        # Both members hold partitions before anything is produced.
        async def balanced():
            while len(first.assignment()) + len(second.assignment()) != 4 or not (
                first.assignment() and second.assignment()
            ):
                await asyncio.gather(first.getmany(timeout_ms=100), second.getmany(timeout_ms=100))

        await asyncio.wait_for(balanced(), 30)
        for i in range(20):
            await admin_producer.send_and_wait(topic, f"m{i}".encode(), partition=i % 4)
        seen = {}

        async def drain(consumer):
            while sum(len(v) for v in seen.values()) < 20:
                batch = await consumer.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    seen.setdefault(tp.partition, []).extend(r.offset for r in records)

        await asyncio.wait_for(asyncio.gather(drain(first), drain(second)), 30)
        await first.commit()
        await second.commit()
        split = [sorted(tp.partition for tp in a) for a in (first.assignment(), second.assignment())]
    finally:
        await first.stop()
        await second.stop()
    await admin_producer.send_and_wait(topic, b"after", partition=3)
    await admin_producer.stop()
    later = member()
    await later.start()
    try:
        resumed = []
        while not resumed:
            batch = await asyncio.wait_for(later.getmany(timeout_ms=500), 20)
            resumed = [(tp.partition, r.offset, r.value) for tp, records in batch.items() for r in records]
        committed = {tp.partition: await later.committed(tp) for tp in later.assignment()}
    finally:
        await later.stop()
    return seen, split, resumed, committed


def test_aiokafka_group_members_share_partitions_commit_and_resume(broker, topic_name):
    from clients import create_topic

    create_topic(broker.bootstrap, topic_name, partitions=4)
    seen, split, resumed, committed = asyncio.run(group_members(broker.bootstrap, topic_name))
    assert {p: sorted(offsets) for p, offsets in seen.items()} == {p: list(range(5)) for p in range(4)}
    assert sorted(split[0] + split[1]) == [0, 1, 2, 3] and split[0] and split[1]
    assert resumed == [(3, 5, b"after")]
    assert committed == {0: 5, 1: 5, 2: 5, 3: 5}
