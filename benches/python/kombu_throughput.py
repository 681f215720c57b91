"""Python kombu's publish and consume-with-ack rates for one transport URL and one body size:
the work of the shared baseline (`../shared/bench/kombu_baseline.py`), which has one body size
only, for the benchmarks' other sizes. Prints {"publish_rate": msgs/s, "consume_rate": msgs/s}
as JSON.

    python kombu_throughput.py URL N BODY_BYTES

The body is {"id": N, "payload": "x" * (BODY_BYTES - 36)} as JSON (about 10 bytes short of
BODY_BYTES; 100 gives the baseline's "x" * 64), published one by one, persistent, to a durable queue through a
direct exchange; then consumed with prefetch 100, each message acked. The exchange and queue
have names of their own, deleted at the end, so nothing else on the server is touched. An
`sqla+sqlite:///` URL names a file that is removed before and after.
"""
import json
import os
import sys
import time
import uuid

from kombu import Connection, Consumer, Exchange, Producer, Queue


def remove_sqlite(url):
    if url.startswith("sqla+sqlite:///"):
        path = url.split("sqla+sqlite:///", 1)[1]
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.remove(path + suffix)
            except FileNotFoundError:
                pass


def main():
    url, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    remove_sqlite(url)
    name = uuid.uuid4().hex
    ex = Exchange(f"bench_ex_{name}", type="direct")
    q = Queue(f"bench_q_{name}", exchange=ex, routing_key="bench")
    payload = "x" * max(size - 36, 0)
    with Connection(url) as conn:
        conn.ensure_connection(max_retries=3)
        if not url.startswith(("amqp", "pyamqp", "redis")):
            # The virtual transports' sleep when a poll finds nothing, as the baseline sets it.
            conn.transport.polling_interval = 0.001
        ch = conn.channel()
        bound = q(ch)
        bound.declare()
        producer = Producer(ch, exchange=ex, routing_key="bench", serializer="json")
        t0 = time.perf_counter()
        for i in range(n):
            producer.publish({"id": i, "payload": payload})
        # As the shared baseline: a passive declare closes the publish phase (on AMQP, the
        # broker has taken every message by its answer).
        try:
            bound.queue_declare(passive=True)
        except Exception:  # a virtual transport that reports no count
            pass
        publish = time.perf_counter() - t0

        seen = set()

        def on_message(body, message):
            seen.add(body["id"])
            message.ack()

        consumer = Consumer(conn.channel(), queues=[q], callbacks=[on_message], accept=["json"])
        consumer.qos(prefetch_count=100)
        t0 = time.perf_counter()
        with consumer:
            deadline = time.monotonic() + 600
            while len(seen) < n and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=5)
                except TimeoutError:
                    break
        consume = time.perf_counter() - t0
        try:
            bound.delete()
            ex(ch).delete()
        except Exception:  # a virtual transport without the queue any more
            pass
    remove_sqlite(url)
    if len(seen) != n:
        sys.exit(f"received {len(seen)} of {n}")
    print(json.dumps({"publish_rate": n / publish, "consume_rate": n / consume}))


if __name__ == "__main__":
    main()
