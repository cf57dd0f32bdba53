// KafkaJS scenarios against a real broker, run by tests/compat/test_kafkajs.py as
// `node scenarios.js <scenario> <bootstrap> <topic>`. Each prints what the client saw as
// one JSON document on stdout; the Python test asserts on it.

const {
  Kafka,
  logLevel,
  CompressionTypes,
  ConfigResourceTypes,
} = require('kafkajs')

const [scenario, bootstrap, topic] = process.argv.slice(2)

// SASL, when the test sets it: KAFKAJS_SASL=mechanism:username:password.
const sasl = process.env.KAFKAJS_SASL
  ? (([mechanism, username, ...password]) => ({ mechanism, username, password: password.join(':') }))(
      process.env.KAFKAJS_SASL.split(':')
    )
  : undefined

// TLS, when the test sets it: KAFKAJS_TLS_CA=path of the CA's PEM certificate.
const ssl = process.env.KAFKAJS_TLS_CA
  ? { ca: [require('fs').readFileSync(process.env.KAFKAJS_TLS_CA)] }
  : undefined

const kafka = new Kafka({
  clientId: 'shale-compat',
  brokers: [bootstrap],
  logLevel: logLevel.NOTHING,
  retry: { retries: 3, initialRetryTime: 100 },
  sasl,
  ssl,
})

const text = (buffer) => (buffer === null ? null : buffer.toString())

function headersOf(message) {
  return Object.fromEntries(
    Object.entries(message.headers || {}).map(([name, value]) => [name, text(value)])
  )
}

function withTimeout(promise, ms, what) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// Runs a consumer of `groupId` until `count` messages arrived; returns them in arrival order.
async function consumeCount(groupId, count, options = {}) {
  const consumer = kafka.consumer({ groupId, maxWaitTimeInMs: 100, ...options })
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  const seen = []
  let done
  const finished = new Promise((resolve) => {
    done = resolve
  })
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      seen.push({
        partition,
        offset: Number(message.offset),
        key: text(message.key),
        value: text(message.value),
        headers: headersOf(message),
      })
      if (seen.length >= count) done()
    },
  })
  if (count > 0) await withTimeout(finished, 30000, `${count} messages for ${groupId}`)
  await consumer.disconnect()
  return seen
}

const scenarios = {
  // Keyed records with headers, plain and gzip, into a topic KafkaJS creates; read back by a
  // consumer group from the beginning.
  async roundTrip() {
    const admin = kafka.admin()
    await admin.connect()
    const created = await admin.createTopics({
      topics: [{ topic, numPartitions: 3 }],
      waitForLeaders: true,
    })
    const producer = kafka.producer()
    await producer.connect()
    const sent = []
    for (const compression of [CompressionTypes.None, CompressionTypes.GZIP]) {
      const messages = []
      for (let i = 0; i < 10; i++) {
        messages.push({
          key: `key-${i % 3}`,
          value: `value-${compression}-${i}`,
          headers: { source: 'kafkajs', n: String(i) },
        })
      }
      const answers = await producer.send({ topic, acks: -1, compression, messages })
      sent.push(...answers.map((a) => ({ partition: a.partition, errorCode: a.errorCode, baseOffset: Number(a.baseOffset) })))
    }
    await producer.send({ topic, messages: [{ key: 'nulls', value: null }] })
    await producer.disconnect()
    const consumed = await consumeCount(`g-${topic}`, 21)
    const offsets = await admin.fetchTopicOffsets(topic)
    await admin.disconnect()
    return {
      created,
      sent,
      consumed,
      offsets: offsets.map((o) => ({ partition: o.partition, low: Number(o.low), high: Number(o.high) })),
    }
  },

  // Two members share a topic's partitions; what they commit is where the group resumes.
  async group() {
    const admin = kafka.admin()
    await admin.connect()
    await admin.createTopics({ topics: [{ topic, numPartitions: 4 }], waitForLeaders: true })
    const groupId = `g-${topic}`
    const members = [0, 1].map(() => kafka.consumer({ groupId, maxWaitTimeInMs: 100, heartbeatInterval: 500 }))
    const assignments = [[], []]
    const seen = [[], []]
    for (const [i, member] of members.entries()) {
      member.on(member.events.GROUP_JOIN, (event) => {
        assignments[i] = (event.payload.memberAssignment[topic] || []).slice().sort()
      })
      await member.connect()
      await member.subscribe({ topics: [topic], fromBeginning: true })
      await member.run({
        eachMessage: async ({ partition, message }) => {
          seen[i].push({ partition, offset: Number(message.offset), value: text(message.value) })
        },
      })
    }
    // Wait for a generation in which both members hold partitions.
    const balanced = async () => {
      while (assignments[0].length === 0 || assignments[1].length === 0 || assignments[0].length + assignments[1].length !== 4) {
        await new Promise((r) => setTimeout(r, 100))
      }
    }
    await withTimeout(balanced(), 30000, 'both members assigned')
    const producer = kafka.producer()
    await producer.connect()
    const messages = []
    for (let i = 0; i < 40; i++) messages.push({ partition: i % 4, value: `m${i}` })
    await producer.send({ topic, acks: -1, messages })
    const all = async () => {
      while (seen[0].length + seen[1].length < 40) await new Promise((r) => setTimeout(r, 100))
    }
    await withTimeout(all(), 30000, '40 messages over two members')
    for (const member of members) await member.disconnect()
    const committed = await admin.fetchOffsets({ groupId, topics: [topic] })
    const described = await admin.describeGroups([groupId])
    // Messages produced while the group was away are all the next member gets.
    await producer.send({ topic, acks: -1, messages: [{ partition: 2, value: 'after' }] })
    await producer.disconnect()
    const resumed = await consumeCount(groupId, 1)
    const groups = await admin.listGroups()
    await admin.disconnect()
    return {
      assignments,
      seen,
      committed: committed[0].partitions.map((p) => ({ partition: p.partition, offset: Number(p.offset) })),
      state: described.groups[0].state,
      resumed,
      listed: groups.groups.filter((g) => g.groupId === groupId).map((g) => g.protocolType),
    }
  },

  // The admin client: topics, partitions, configs, cluster, records, groups.
  async admin() {
    const admin = kafka.admin()
    await admin.connect()
    const created = await admin.createTopics({
      topics: [{ topic, numPartitions: 2, configEntries: [{ name: 'retention.ms', value: '3600000' }] }],
      waitForLeaders: true,
    })
    const again = await admin.createTopics({ topics: [{ topic, numPartitions: 2 }] })
    await admin.createPartitions({ topicPartitions: [{ topic, count: 3 }] })
    const metadata = await admin.fetchTopicMetadata({ topics: [topic] })
    const described = await admin.describeConfigs({
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ['retention.ms'] }],
      includeSynonyms: false,
    })
    await admin.alterConfigs({
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'retention.bytes', value: '1048576' }] }],
    })
    const configs = await admin.describeConfigs({
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ['retention.ms', 'retention.bytes', 'cleanup.policy'] }],
      includeSynonyms: false,
    })
    const cluster = await admin.describeCluster()
    const producer = kafka.producer()
    await producer.connect()
    const messages = []
    for (let i = 0; i < 10; i++) messages.push({ partition: 0, value: `r${i}` })
    await producer.send({ topic, acks: -1, messages })
    await producer.disconnect()
    await admin.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: '4' }] })
    const afterDelete = await admin.fetchTopicOffsets(topic)
    const groupId = `g-${topic}`
    await admin.setOffsets({ groupId, topic, partitions: [{ partition: 0, offset: '7' }] })
    const fetched = await admin.fetchOffsets({ groupId, topics: [topic] })
    const resumed = await consumeCount(groupId, 3)
    const deletedGroups = await admin.deleteGroups([groupId])
    const listedBefore = await admin.listTopics()
    await admin.deleteTopics({ topics: [topic] })
    const listedAfter = await admin.listTopics()
    let badTopic
    try {
      await admin.createTopics({ topics: [{ topic: 'bad topic!', numPartitions: 1 }] })
      badTopic = 'created'
    } catch (e) {
      badTopic = (e.errors && e.errors[0] && e.errors[0].type) || e.type || e.message
    }
    await admin.disconnect()
    return {
      created,
      again,
      partitions: metadata.topics[0].partitions.map((p) => p.partitionId).sort(),
      createdConfig: described.resources[0].configEntries[0].configValue,
      configs: Object.fromEntries(configs.resources[0].configEntries.map((c) => [c.configName, c.configValue])),
      brokers: cluster.brokers.length,
      clusterId: cluster.clusterId,
      controller: cluster.controller,
      afterDelete: afterDelete
        .filter((o) => o.partition === 0)
        .map((o) => ({ low: Number(o.low), high: Number(o.high) }))[0],
      fetched: fetched[0].partitions.filter((p) => p.partition === 0).map((p) => Number(p.offset))[0],
      resumed: resumed.map((m) => m.offset),
      deletedGroups: deletedGroups.map((g) => g.errorCode),
      listedBefore: listedBefore.includes(topic),
      listedAfter: listedAfter.includes(topic),
      badTopic,
    }
  },

  // What KafkaJS reports for requests the broker refuses, and topics it creates by producing.
  async errors() {
    const admin = kafka.admin()
    await admin.connect()
    await admin.createTopics({
      topics: [{ topic, numPartitions: 1, configEntries: [{ name: 'max.message.bytes', value: '2000' }] }],
      waitForLeaders: true,
    })
    const producer = kafka.producer()
    await producer.connect()
    const errorOf = async (send) => {
      try {
        await send()
        return 'sent'
      } catch (e) {
        return e.type || (e.cause && e.cause.type) || `${e.name}: ${e.message}`
      }
    }
    const tooLarge = await errorOf(() =>
      producer.send({ topic, acks: -1, messages: [{ value: 'x'.repeat(5000) }] })
    )
    const fits = await producer.send({ topic, acks: -1, messages: [{ value: 'x'.repeat(500) }] })
    const autoCreated = await producer.send({ topic: `${topic}-auto`, acks: -1, messages: [{ value: 'new' }] })
    const badName = await errorOf(() => producer.send({ topic: 'no spaces allowed', messages: [{ value: 'v' }] }))
    await producer.disconnect()
    const listed = await admin.listTopics()
    await admin.disconnect()
    return {
      tooLarge,
      fits: fits.map((a) => Number(a.baseOffset)),
      autoCreated: autoCreated.map((a) => [a.topicName, Number(a.baseOffset)]),
      autoListed: listed.includes(`${topic}-auto`),
      badName,
    }
  },

  // Produce and consume in a group over an authenticated connection (KAFKAJS_SASL) or TLS
  // (KAFKAJS_TLS_CA), or what KafkaJS reports when the broker refuses the credentials.
  async sasl() {
    const producer = kafka.producer()
    try {
      await producer.connect()
    } catch (e) {
      return { refused: e.name, message: e.message }
    }
    const sent = await producer.send({ topic, acks: -1, messages: [{ value: 'a' }, { value: 'b' }] })
    await producer.disconnect()
    const read = await consumeCount(`g-${topic}`, 2)
    return { sent: sent.map((a) => Number(a.baseOffset)), read: read.map((m) => [m.offset, m.value]) }
  },

  // Transactions: committed, aborted, and offsets sent with a transaction; an idempotent
  // producer beside them. A read_committed consumer sees only what was committed.
  async transactions() {
    const admin = kafka.admin()
    await admin.connect()
    await admin.createTopics({ topics: [{ topic, numPartitions: 1 }], waitForLeaders: true })
    const idempotent = kafka.producer({ idempotent: true, maxInFlightRequests: 1 })
    await idempotent.connect()
    const plain = await idempotent.send({ topic, acks: -1, messages: [{ value: 'idem-0' }, { value: 'idem-1' }] })
    await idempotent.disconnect()
    const producer = kafka.producer({ transactionalId: `tx-${topic}`, idempotent: true, maxInFlightRequests: 1 })
    await producer.connect()
    const committed = await producer.transaction()
    await committed.send({ topic, messages: [{ value: 'kept-0' }, { value: 'kept-1' }] })
    await committed.sendOffsets({
      consumerGroupId: `g-${topic}`,
      topics: [{ topic, partitions: [{ partition: 0, offset: '2' }] }],
    })
    await committed.commit()
    const aborted = await producer.transaction()
    await aborted.send({ topic, messages: [{ value: 'dropped' }] })
    await aborted.abort()
    const last = await producer.transaction()
    await last.send({ topic, messages: [{ value: 'kept-2' }] })
    await last.commit()
    await producer.disconnect()
    const offsets = await admin.fetchOffsets({ groupId: `g-${topic}`, topics: [topic] })
    const end = await admin.fetchTopicOffsets(topic)
    await admin.disconnect()
    const readCommitted = await consumeCount(`rc-${topic}`, 5)
    const readUncommitted = await consumeCount(`ru-${topic}`, 6, { readUncommitted: true })
    return {
      plain: plain.map((a) => Number(a.baseOffset)),
      sentOffsets: offsets[0].partitions.map((p) => Number(p.offset)),
      high: Number(end[0].high),
      readCommitted: readCommitted.map((m) => [m.offset, m.value]),
      readUncommitted: readUncommitted.map((m) => [m.offset, m.value]),
    }
  },
}

async function main() {
  const run = scenarios[scenario]
  if (!run) throw new Error(`unknown scenario ${scenario}`)
  const result = await withTimeout(run(), 90000, scenario)
  process.stdout.write(JSON.stringify(result) + '\n')
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`${e.stack || e}\n`)
    process.exit(1)
  }
)
