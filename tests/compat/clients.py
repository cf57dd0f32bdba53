"""Small helpers around confluent-kafka (librdkafka) shared by the compat tests."""

import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topic(bootstrap, name, partitions=1, config=None):
    client = admin(bootstrap)
    futures = client.create_topics([NewTopic(name, partitions, 1, config=config or {})])
    futures[name].result(15)


def produce(bootstrap, topic, messages, **config):
    """Produces (partition, key, value, headers, timestamp) tuples with acks=all and
    returns the delivery reports as (partition, offset, value, error)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, **config})
    reports = []

    def delivered(err, msg):
        reports.append((msg.partition(), msg.offset(), msg.value(), err))

    for partition, key, value, headers, timestamp in messages:
        kwargs = {"key": key, "value": value, "headers": headers, "on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        producer.produce(topic, **kwargs)
    assert producer.flush(30) == 0
    return reports


def consume(bootstrap, topic, partition, count, offset=0, timeout=30, **config):
    """Reads `count` messages of one partition from `offset` without a consumer group."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False, **config}
    )
    consumer.assign([TopicPartition(topic, partition, offset)])
    messages = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            messages.append(msg)
    finally:
        consumer.close()
    return messages


async def aiokafka_round_trip(bootstrap, topic, value, **security):
    """Sends `value` with aiokafka (acks=all), then reads partition 0 from the beginning;
    `security` is aiokafka's connection settings (SASL, TLS). Returns the sent offset and
    the values read."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as AioTopicPartition

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **security)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", **security)
    await consumer.start()
    try:
        tp = AioTopicPartition(topic, 0)
        consumer.assign([tp])
        batch = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=5000), 20)
    finally:
        await consumer.stop()
    return sent.offset, [r.value for r in batch.get(tp, [])]


def kafka_python_values(bootstrap, topic, count, **security):
    """The first `count` values of partition 0, read with kafka-python by assignment;
    `security` is kafka-python's connection settings (SASL, TLS)."""
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KafkaTopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=10000, **security
    )
    consumer.assign([KafkaTopicPartition(topic, 0)])
    values = [m.value for _, m in zip(range(count), consumer)]
    consumer.close()
    return values


def confluent_round_trip(config, topic, count=5):
    """Produces `count` values with acks=all, then reads them back in a group and commits."""
    producer = Producer({**config, "acks": "all"})
    for i in range(count):
        producer.produce(topic, value=f"m{i}".encode())
    assert producer.flush(30) == 0
    consumer = Consumer({**config, "group.id": "g-" + topic, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    values = []
    deadline = time.monotonic() + 30
    while len(values) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None:
            assert msg.error() is None, msg.error()
            values.append(msg.value())
    committed = consumer.commit(asynchronous=False)
    consumer.close()
    return values, [(tp.partition, tp.offset) for tp in committed]
