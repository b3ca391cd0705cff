"""kafka-python's transactional producer against Fjord.

Usage: transactions.py BOOTSTRAP TOPIC GROUP
A transaction of three records commits, one of two aborts, and a third
commits two records together with a consumer group's offsets
(send_offsets_to_transaction). A read_committed consumer must read exactly
the five committed records, a read_uncommitted one all seven, and the
group's committed offset must be the one sent in the transaction.
Prints one JSON line with what happened.
"""
import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

bootstrap, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
tp = TopicPartition(topic, 0)

producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id="py-tx", max_block_ms=30000)
producer.init_transactions()

producer.begin_transaction()
for i in range(3):
    producer.send(topic, value=f"committed-{i}".encode(), partition=0)
producer.commit_transaction()

producer.begin_transaction()
for i in range(2):
    producer.send(topic, value=f"aborted-{i}".encode(), partition=0)
# In the log before the abort (an abort drops records not yet sent).
producer.flush()
producer.abort_transaction()

producer.begin_transaction()
for i in range(2):
    producer.send(topic, value=f"with-offsets-{i}".encode(), partition=0)
producer.send_offsets_to_transaction({tp: OffsetAndMetadata(42, "", -1)}, group)
producer.commit_transaction()
producer.close()


def read(isolation, expected):
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
    )
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    values = []
    deadline = time.time() + 30
    while len(values) < expected and time.time() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            values.extend(r.value.decode() for r in batch)
    consumer.close()
    return values


committed = read("read_committed", 5)
uncommitted = read("read_uncommitted", 7)
offsets = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
group_offset = offsets.committed(tp)
offsets.close()
print(json.dumps({"read_committed": committed, "read_uncommitted": uncommitted, "group_offset": group_offset}))
