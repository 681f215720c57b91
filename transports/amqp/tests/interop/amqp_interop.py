"""Python kombu's side (py-amqp) of the AMQP interop tests (transports/amqp/tests/python_interop.rs).

The broker is ``$KOMBU_AMQP_URL``. Results go to stdout as one JSON document.

    publish QUEUE             one message of every kind: json (headers, properties, priority 5),
                              text, raw bytes, msgpack, yaml, and json compressed with zlib,
                              bzip2, lzma, brotli and zstd (10 messages)
    consume QUEUE N           consume N messages with a Consumer (drain_events), ack each
    drain QUEUE...            take every ready message of each queue (basic_get), ack each
    declare PREFIX            declare the routing topology (see ``topology``) with kombu's
                              defaults, and the queues with arguments
    publish_routed PREFIX     publish through the topic, fanout and headers exchanges
"""

import base64
import json
import os
import socket
import sys
import time

from kombu import Connection, Consumer, Exchange, Producer, Queue

# The interop cases, shared with the other transports and mirrored on the Rust side
# (test-support/python/kombu_rs_interop.py and test-support/src/interop.rs).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "..", "..", "test-support", "python"))
from kombu_rs_interop import publish_cases  # noqa: E402

URL = os.environ.get("KOMBU_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
ACCEPT = ["json", "msgpack", "yaml", "text/plain", "application/data"]
HEADER_MESSAGES = [
    ("m1", {"format": "pdf", "type": "report"}),
    ("m2", {"format": "pdf", "type": "log"}),
    ("m3", {"format": "zip"}),
    ("m4", {}),
    ("m5", {"format": "pdf", "type": "report", "extra": "1"}),
]



def topology(prefix):
    """The exchanges and queues both sides declare, identically."""
    topic = Exchange(prefix + ".topic", type="topic")
    fanout = Exchange(prefix + ".fanout", type="fanout")
    headers = Exchange(prefix + ".headers", type="headers")
    return [
        Queue(prefix + ".t1", exchange=topic, routing_key="stock.*.usd"),
        Queue(prefix + ".t2", exchange=topic, routing_key="#.eur"),
        Queue(prefix + ".f1", exchange=fanout, routing_key="f1"),
        Queue(prefix + ".f2", exchange=fanout),
        Queue(prefix + ".hall", exchange=headers,
              binding_arguments={"x-match": "all", "format": "pdf", "type": "report"}),
        Queue(prefix + ".hany", exchange=headers,
              binding_arguments={"x-match": "any", "format": "zip", "type": "report"}),
        Queue(prefix + ".args", max_priority=10, message_ttl=60, expires=3600, max_length=100,
              queue_arguments={"x-dead-letter-exchange": prefix + ".dlx",
                               "x-dead-letter-routing-key": "dead"}),
        Queue(prefix + ".quorum", queue_arguments={"x-queue-type": "quorum"}),
    ]


def publish(queue_name):
    with Connection(URL) as conn:
        channel = conn.channel()
        producer = Producer(channel)
        queue = Queue(queue_name)
        published = publish_cases(producer, queue_name, declare=[queue])
        channel.close()
    print(json.dumps({"published": published}))


def describe(message):
    payload = message.decode()
    out = {
        "headers": message.headers,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "redelivered": bool(message.delivery_info.get("redelivered")),
        "delivery_info": {
            "exchange": message.delivery_info.get("exchange"),
            "routing_key": message.delivery_info.get("routing_key"),
        },
        "properties": {
            k: message.properties.get(k)
            for k in ("correlation_id", "reply_to", "priority", "message_id", "delivery_mode",
                      "expiration", "timestamp", "type", "app_id")
        },
    }
    if isinstance(payload, bytes):
        out["payload_b64"] = base64.b64encode(payload).decode("ascii")
    else:
        out["payload"] = payload
    return out


def consume(queue_name, n):
    n = int(n)
    got = []
    deadline = time.monotonic() + 30
    with Connection(URL) as conn:

        def on_message(body, message):
            got.append(describe(message))
            message.ack()

        with Consumer(conn, [Queue(queue_name)], accept=ACCEPT, callbacks=[on_message]):
            while len(got) < n and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except socket.timeout:
                    pass
    print(json.dumps({"messages": got}))


def drain(*queue_names):
    out = {}
    with Connection(URL) as conn:
        channel = conn.channel()
        for name in queue_names:
            got = []
            queue = Queue(name, no_declare=True)(channel)
            while True:
                message = queue.get(no_ack=False, accept=ACCEPT)
                if message is None:
                    break
                got.append(describe(message))
                message.ack()
            out[name] = got
        channel.close()
    print(json.dumps(out))


def declare(prefix):
    with Connection(URL) as conn:
        channel = conn.channel()
        for queue in topology(prefix):
            queue(channel).declare()
        channel.close()
    print(json.dumps({"declared": len(topology(prefix))}))


def publish_routed(prefix):
    with Connection(URL) as conn:
        channel = conn.channel()
        topic = Exchange(prefix + ".topic", type="topic")
        producer = Producer(channel, exchange=topic)
        for rk in ["stock.nyse.usd", "stock.usd", "fx.spot.eur"]:
            producer.publish({"via": "topic", "rk": rk}, routing_key=rk, serializer="json")
        fanout = Exchange(prefix + ".fanout", type="fanout")
        Producer(channel, exchange=fanout).publish(
            {"via": "fanout", "rk": "anything"}, routing_key="anything", serializer="json")
        headers = Exchange(prefix + ".headers", type="headers")
        producer = Producer(channel, exchange=headers)
        for body, hs in HEADER_MESSAGES:
            producer.publish({"via": "headers", "rk": body}, routing_key="", headers=hs,
                             serializer="json")
        channel.close()
    print(json.dumps({"published": 9}))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {
        "publish": publish,
        "consume": consume,
        "drain": drain,
        "declare": declare,
        "publish_routed": publish_routed,
    }[command](*args)
