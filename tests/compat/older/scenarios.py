"""Scenarios for older Python client releases, run by tests/compat/test_older_clients.py as
`python scenarios.py <scenario> <bootstrap> <topic>` in the venv of older/requirements.txt.
Each prints what the client saw as one JSON document."""

import asyncio
import json
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as AioTopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic


def kafka_python(bootstrap, topic):
    """kafka-python 2.0.2: admin, keyed gzip produce, a group consumer's commits."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1)])
    configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    cleanup = [c[1] for c in configs[0].resources[0][4] if c[0] == "cleanup.policy"]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip")
    sent = [producer.send(topic, key=b"k%d" % (i % 3), value=b"v%d" % i) for i in range(30)]
    producer.flush()
    offsets = sorted((f.get(10).partition, f.get(10).offset) for f in sent)
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="g-" + topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
    )
    values = sorted(m.value.decode() for m in consumer)
    consumer.commit()
    consumer.close()
    committed = admin.list_consumer_group_offsets("g-" + topic)
    groups = dict(admin.list_consumer_groups())
    admin.delete_topics([topic])
    return {
        "cleanup": cleanup,
        "offsets": offsets,
        "values": values,
        "committed": sorted((tp.partition, om.offset) for tp, om in committed.items()),
        "group": groups.get("g-" + topic),
        "listed_after_delete": topic in admin.list_topics(),
    }


async def aiokafka_transactions(bootstrap, topic):
    """aiokafka 0.8.1: a transactional producer (commit and abort) and a read_committed
    group consumer that commits."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="tx-" + topic)
    await producer.start()
    async with producer.transaction():
        for i in range(3):
            await producer.send(topic, b"kept%d" % i)
    await producer.begin_transaction()
    await producer.send_and_wait(topic, b"dropped")
    await producer.abort_transaction()
    async with producer.transaction():
        await producer.send(topic, b"last")
    await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="g-" + topic,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        seen = []
        while len(seen) < 4:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 20)
            seen += [(r.offset, r.value.decode()) for records in batch.values() for r in records]
        await consumer.commit()
        committed = await consumer.committed(AioTopicPartition(topic, 0))
    finally:
        await consumer.stop()
    return {"seen": seen, "committed": committed}


if __name__ == "__main__":
    scenario, bootstrap, topic = sys.argv[1:]
    if scenario == "kafka_python":
        result = kafka_python(bootstrap, topic)
    else:
        result = asyncio.run(aiokafka_transactions(bootstrap, topic))
    print(json.dumps(result))
