"""A kafka-python consumer group against Fjord.

Usage: group_consumer.py BOOTSTRAP TOPIC GROUP EXPECTED
Two members in one group consume TOPIC; together they must read EXPECTED
records exactly once, and their committed offsets must reach the end.
Prints one JSON line with what happened.
"""
import json
import sys
import threading
import time

from kafka import KafkaConsumer, TopicPartition

bootstrap, topic, group, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seen = []
assignments = {}
lock = threading.Lock()


def member(name, stop):
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=200,
    )
    try:
        while not stop.is_set():
            batch = consumer.poll(timeout_ms=200)
            with lock:
                assignments[name] = sorted(tp.partition for tp in consumer.assignment())
                for records in batch.values():
                    seen.extend((r.partition, r.offset) for r in records)
            if batch:
                consumer.commit()
    finally:
        consumer.close()


stop = threading.Event()
threads = [threading.Thread(target=member, args=(f"m{i}", stop)) for i in range(2)]
for t in threads:
    t.start()
deadline = time.time() + 60
while time.time() < deadline:
    with lock:
        both = len(assignments) == 2 and all(assignments.values())
        done = len(seen) >= expected
    if both and done:
        break
    time.sleep(0.1)
stop.set()
for t in threads:
    t.join()

check = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
partitions = sorted(check.partitions_for_topic(topic))
committed = {p: check.committed(TopicPartition(topic, p)) for p in partitions}
check.close()
print(json.dumps({
    "records": len(seen),
    "distinct": len(set(seen)),
    "assignments": assignments,
    "committed": committed,
}))
