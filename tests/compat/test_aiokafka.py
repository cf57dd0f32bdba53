"""aiokafka 0.14: bootstraps with ApiVersions v0, produces with v7, fetches with v11."""

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
