"""Python kombu (py-amqp) publishing with publisher confirms, one by one: the AMQP benchmark's
confirmed rows measured on the Python side (the shared baseline script publishes without
confirms, kombu's default). Prints {"confirmed_publish_rate": msgs/s} as JSON.

    python kombu_confirmed_publish.py amqp://guest:guest@127.0.0.1:5672// 2000

kombu has no batch publish: each publish waits for its confirm (py-amqp's confirm_publish).
Messages are the baseline's: {"id": N, "payload": "x" * 64} as JSON, persistent, to a durable
queue through a durable direct exchange.
"""
import json
import sys
import time
import uuid

from kombu import Connection, Exchange, Producer, Queue


def main():
    url, n = sys.argv[1], int(sys.argv[2])
    name = uuid.uuid4().hex
    ex = Exchange(f"bench_confirm_ex_{name}", type="direct")
    q = Queue(f"bench_confirm_q_{name}", exchange=ex, routing_key="bench")
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        ch = conn.channel()
        bound = q(ch)
        bound.declare()
        producer = Producer(ch, exchange=ex, routing_key="bench", serializer="json")
        payload = "x" * 64
        t0 = time.perf_counter()
        for i in range(n):
            producer.publish({"id": i, "payload": payload})
        elapsed = time.perf_counter() - t0
        bound.delete()
        ex(ch).delete()
    print(json.dumps({"confirmed_publish_rate": n / elapsed}))


if __name__ == "__main__":
    main()
