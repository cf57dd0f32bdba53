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
