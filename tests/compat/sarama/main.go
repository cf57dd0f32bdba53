// Sarama scenarios against a real broker, run by tests/compat/test_sarama.py as
// `sarama-scenarios <scenario> <bootstrap> <topic>`. Each prints what the client saw as one
// JSON document on stdout; the Python test asserts on it.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/Shopify/sarama"
)

type record struct {
	Partition int32             `json:"partition"`
	Offset    int64             `json:"offset"`
	Key       *string           `json:"key"`
	Value     *string           `json:"value"`
	Headers   map[string]string `json:"headers"`
}

func text(b []byte) *string {
	if b == nil {
		return nil
	}
	s := string(b)
	return &s
}

func recordOf(m *sarama.ConsumerMessage) record {
	headers := map[string]string{}
	for _, h := range m.Headers {
		headers[string(h.Key)] = string(h.Value)
	}
	return record{m.Partition, m.Offset, text(m.Key), text(m.Value), headers}
}

func config() *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = "shale-compat"
	c.Version = sarama.V2_1_0_0
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Partitioner = sarama.NewManualPartitioner
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.MaxWaitTime = 100 * time.Millisecond
	c.Metadata.Retry.Backoff = 100 * time.Millisecond
	return c
}

func must(err error, what string) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
		os.Exit(1)
	}
}

// Produces keyed records with headers (plain and gzip), reads them back from one
// partition, and reads the topic through the admin client.
func roundTrip(bootstrap, topic string) map[string]interface{} {
	admin, err := sarama.NewClusterAdmin([]string{bootstrap}, config())
	must(err, "admin")
	defer admin.Close()
	retention := "3600000"
	must(admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 2, ReplicationFactor: 1, ConfigEntries: map[string]*string{"retention.ms": &retention}}, false), "create topic")
	sent := []int64{}
	for _, codec := range []sarama.CompressionCodec{sarama.CompressionNone, sarama.CompressionGZIP} {
		c := config()
		c.Producer.Compression = codec
		producer, err := sarama.NewSyncProducer([]string{bootstrap}, c)
		must(err, "producer")
		messages := []*sarama.ProducerMessage{}
		for i := 0; i < 5; i++ {
			messages = append(messages, &sarama.ProducerMessage{
				Topic:     topic,
				Partition: 1,
				Key:       sarama.StringEncoder(fmt.Sprintf("k%d", i)),
				Value:     sarama.StringEncoder(fmt.Sprintf("v%d-%d", codec, i)),
				Headers:   []sarama.RecordHeader{{Key: []byte("h"), Value: []byte(fmt.Sprint(i))}},
			})
		}
		must(producer.SendMessages(messages), "send")
		for _, m := range messages {
			sent = append(sent, m.Offset)
		}
		producer.Close()
	}
	consumer, err := sarama.NewConsumer([]string{bootstrap}, config())
	must(err, "consumer")
	defer consumer.Close()
	partition, err := consumer.ConsumePartition(topic, 1, sarama.OffsetOldest)
	must(err, "consume partition")
	read := []record{}
	for len(read) < 10 {
		select {
		case m := <-partition.Messages():
			read = append(read, recordOf(m))
		case err := <-partition.Errors():
			must(err, "consuming")
		case <-time.After(20 * time.Second):
			must(fmt.Errorf("%d of 10 records", len(read)), "consume timed out")
		}
	}
	partition.Close()
	client, err := sarama.NewClient([]string{bootstrap}, config())
	must(err, "client")
	defer client.Close()
	newest, err := client.GetOffset(topic, 1, sarama.OffsetNewest)
	must(err, "newest offset")
	// Sarama 1.22's ListTopics and DescribeConfig ask DescribeConfigs v0, which Kafka 4.0
	// dropped (KIP-896) and Shale still serves.
	listed, err := admin.ListTopics()
	must(err, "list topics")
	entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{"cleanup.policy", "retention.ms"}})
	must(err, "describe config")
	configs := map[string]interface{}{}
	for _, e := range entries {
		configs[e.Name] = map[string]interface{}{"value": e.Value, "default": e.Default}
	}
	topics, err := admin.DescribeTopics([]string{topic})
	must(err, "describe topics")
	must(admin.CreatePartitions(topic, 3, nil, false), "create partitions")
	grown, err := admin.DescribeTopics([]string{topic})
	must(err, "describe topics")
	must(admin.DeleteRecords(topic, map[int32]int64{1: 4}), "delete records")
	must(client.RefreshMetadata(topic), "refresh metadata")
	oldest, err := client.GetOffset(topic, 1, sarama.OffsetOldest)
	must(err, "oldest offset")
	must(admin.DeleteTopic(topic), "delete topic")
	return map[string]interface{}{
		"sent":       sent,
		"read":       read,
		"newest":     newest,
		"partitions": len(topics[0].Partitions),
		"listed":     listed[topic].NumPartitions,
		"configs":    configs,
		"grown":      len(grown[0].Partitions),
		"oldest":     oldest,
	}
}

type handler struct {
	mu       sync.Mutex
	seen     []record
	want     int
	done     chan struct{}
	doneOnce sync.Once
}

func (h *handler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (h *handler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h *handler) ConsumeClaim(session sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		h.mu.Lock()
		h.seen = append(h.seen, recordOf(m))
		n := len(h.seen)
		h.mu.Unlock()
		session.MarkMessage(m, "")
		if n >= h.want {
			h.doneOnce.Do(func() { close(h.done) })
		}
	}
	return nil
}

// Reads `want` records with a consumer group, committing what it read.
func consumeGroup(bootstrap, topic, group string, want int) []record {
	c := config()
	// Sarama 1.22 commits with OffsetCommit v1 (dropped by Kafka 4.0, KIP-896), as no
	// Consumer.Offsets.Retention is set.
	c.Consumer.Offsets.CommitInterval = 100 * time.Millisecond
	g, err := sarama.NewConsumerGroup([]string{bootstrap}, group, c)
	must(err, "consumer group")
	h := &handler{want: want, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for ctx.Err() == nil {
			if err := g.Consume(ctx, []string{topic}, h); err != nil && ctx.Err() == nil {
				fmt.Fprintf(os.Stderr, "group consume: %v\n", err)
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	select {
	case <-h.done:
	case <-time.After(30 * time.Second):
		must(fmt.Errorf("%d of %d records", len(h.seen), want), "group timed out")
	}
	// Let the last marks be committed before leaving.
	time.Sleep(300 * time.Millisecond)
	cancel()
	must(g.Close(), "close group")
	h.mu.Lock()
	defer h.mu.Unlock()
	sort.Slice(h.seen, func(i, j int) bool {
		if h.seen[i].Partition != h.seen[j].Partition {
			return h.seen[i].Partition < h.seen[j].Partition
		}
		return h.seen[i].Offset < h.seen[j].Offset
	})
	return h.seen
}

// A consumer group reads a topic, commits, and a later member resumes after the commits.
func group(bootstrap, topic string) map[string]interface{} {
	admin, err := sarama.NewClusterAdmin([]string{bootstrap}, config())
	must(err, "admin")
	defer admin.Close()
	must(admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 3, ReplicationFactor: 1}, false), "create topic")
	producer, err := sarama.NewSyncProducer([]string{bootstrap}, config())
	must(err, "producer")
	defer producer.Close()
	send := func(partition int32, value string) {
		_, _, err := producer.SendMessage(&sarama.ProducerMessage{Topic: topic, Partition: partition, Value: sarama.StringEncoder(value)})
		must(err, "send")
	}
	for i := 0; i < 12; i++ {
		send(int32(i%3), fmt.Sprintf("m%d", i))
	}
	groupID := "g-" + topic
	first := consumeGroup(bootstrap, topic, groupID, 12)
	offsets, err := admin.ListConsumerGroupOffsets(groupID, map[string][]int32{topic: {0, 1, 2}})
	must(err, "group offsets")
	committed := map[int32]int64{}
	for p, block := range offsets.Blocks[topic] {
		committed[p] = block.Offset
	}
	send(1, "after")
	resumed := consumeGroup(bootstrap, topic, groupID, 1)
	groups, err := admin.ListConsumerGroups()
	must(err, "list groups")
	return map[string]interface{}{
		"first":     first,
		"committed": committed,
		"resumed":   resumed,
		"listed":    groups[groupID],
	}
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: sarama-scenarios <scenario> <bootstrap> <topic>")
		os.Exit(2)
	}
	scenarios := map[string]func(string, string) map[string]interface{}{
		"roundTrip": roundTrip,
		"group":     group,
	}
	run, ok := scenarios[os.Args[1]]
	if !ok {
		must(fmt.Errorf("unknown scenario %s", os.Args[1]), "scenario")
	}
	out, err := json.Marshal(run(os.Args[2], os.Args[3]))
	must(err, "json")
	fmt.Println(string(out))
}
