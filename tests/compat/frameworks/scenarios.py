"""Stream-processing applications on two frameworks, run in the frameworks venv by
test_frameworks.py; each writes what it saw as JSON to the file named by its last argument.

quix BOOTSTRAP TOPIC OUT: Quix Streams (confluent-kafka) counts words per key, exactly-once,
in two runs; its local state is deleted between them, so the second run must restore the
counts from the changelog topic Quix keeps on the broker.

faust BOOTSTRAP TOPIC PER_WORD OUT: one Faust (aiokafka) worker counts words in a table after
a `group_by` (a repartition topic, and a changelog for the table), writing each count to an
output topic, until every word's count reaches PER_WORD; then it stops itself cleanly.
"""

import json
import os
import shutil
import signal
import sys
import tempfile
import time

WORDS = ["a", "b", "c"]


def quix(bootstrap, topic, out):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from quixstreams import Application

    words, counts = topic + "-words", topic + "-counts"
    state_dir = tempfile.mkdtemp(dir=os.path.dirname(out))

    def count(value, state):
        n = state.get("n", 0) + 1
        state.set("n", n)
        return {"word": value["word"], "n": n}

    def run(per_word):
        producer = Producer({"bootstrap.servers": bootstrap})
        for i in range(per_word * len(WORDS)):
            word = WORDS[i % len(WORDS)]
            producer.produce(words, key=word, value=json.dumps({"word": word}))
        assert producer.flush(30) == 0
        app = Application(
            broker_address=bootstrap,
            consumer_group=topic,
            auto_offset_reset="earliest",
            processing_guarantee="exactly-once",
            state_dir=state_dir,
        )
        sdf = app.dataframe(app.topic(words, value_deserializer="json"))
        sdf.apply(count, stateful=True).to_topic(app.topic(counts, value_serializer="json"))
        app.run(count=per_word * len(WORDS), timeout=60)

    run(50)
    shutil.rmtree(state_dir)
    run(50)

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic + "-check", "isolation.level": "read_committed"})
    _, end = consumer.get_watermark_offsets(TopicPartition(counts, 0), timeout=10)
    consumer.assign([TopicPartition(counts, 0, 0)])
    seen = {}
    deadline = time.time() + 30
    # Until the position passes the end: the last offsets are transaction markers.
    while time.time() < deadline and consumer.position([TopicPartition(counts, 0)])[0].offset < end:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            value = json.loads(message.value())
            seen.setdefault(value["word"], []).append(value["n"])
    consumer.close()
    app_group = Consumer({"bootstrap.servers": bootstrap, "group.id": topic})
    committed = app_group.committed([TopicPartition(words, 0)], timeout=10)[0].offset
    app_group.close()
    with open(out, "w") as f:
        json.dump({"counts": seen, "committed": committed}, f)


def faust_worker(bootstrap, topic, per_word, out):
    import faust

    app = faust.App(
        topic,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=tempfile.mkdtemp(dir=os.path.dirname(out)),
        web_enabled=False,
        topic_partitions=2,
    )
    words = app.topic(topic + "-words", value_type=str)
    counts_out = app.topic(topic + "-counts", value_type=str)
    table = app.Table("counts", default=int, partitions=2)
    started = time.time()

    @app.agent(words)
    async def count(stream):
        async for word in stream.group_by(lambda word: word, name="byword"):
            table[word] += 1
            await counts_out.send(key=word, value=f"{word}={table[word]}")

    @app.timer(0.2)
    async def done():
        reached = all(table[word] >= per_word for word in WORDS)
        if reached or time.time() - started > 60:
            with open(out, "w") as f:
                json.dump({"table": {word: table[word] for word in WORDS}}, f)
            os.kill(os.getpid(), signal.SIGTERM)

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


if __name__ == "__main__":
    scenario, *args = sys.argv[1:]
    if scenario == "quix":
        quix(*args)
    elif scenario == "faust":
        bootstrap, topic, per_word, out = args
        faust_worker(bootstrap, topic, int(per_word), out)
    else:
        sys.exit(f"unknown scenario {scenario}")
