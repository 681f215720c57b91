"""Python kombu's side of the SQLite interop tests (transports/sqlite/tests/python_interop.rs).

Every command takes the SQLite file as its first argument and talks to it through kombu's
SQLAlchemy transport (``sqla+sqlite:///<file>``), exactly as a Python service would. Results go
to stdout as one JSON document.

    publish DB QUEUE           publish one message of every kind to QUEUE (json with headers and
                               properties, text/plain, raw bytes, msgpack, zlib json; and one
                               through the direct exchange py.direct)
    put DB QUEUE BODY...       publish each BODY as a JSON string to QUEUE (default exchange)
    declare DB QUEUE           declare QUEUE (kombu's kombu_queue row), publish nothing
    nonfinite DB QUEUE         one json message with NaN, Infinity, -Infinity and a lone
                               surrogate in its headers and body (default exchange)
    consume DB QUEUE N         consume N messages from QUEUE with a Consumer, ack each, print them
    take_ack DB QUEUE          take one message from QUEUE, ack it, print it
    drain DB QUEUE             take every ready message from QUEUE (no wait), ack each, print them
    take_close DB QUEUE N      take N messages from QUEUE without settling them and close the
                               channel: kombu restores them as new rows marked redelivered
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
from kombu_rs_interop import BYTES, HEADERS, NESTED, TEXT  # noqa: E402

ACCEPT = ["json", "msgpack", "text/plain", "application/data"]
DIRECT_EXCHANGE = "py.direct"
DIRECT_KEY = "rk.direct"


def url(db):
    return "sqla+sqlite:///" + db


def publish(db, queue_name):
    with Connection(url(db)) as conn:
        channel = conn.channel()
        queue = Queue(queue_name)
        producer = Producer(channel)
        # Default exchange, routing key = queue name.
        producer.publish(
            NESTED,
            routing_key=queue_name,
            serializer="json",
            headers=dict(HEADERS, case="json"),
            correlation_id="cid-1",
            reply_to="replies",
            priority=5,
            message_id="mid-1",
            declare=[queue],
        )
        producer.publish(
            TEXT,
            routing_key=queue_name,
            content_type="text/plain",
            content_encoding="utf-8",
            headers={"case": "text"},
        )
        producer.publish(
            BYTES,
            routing_key=queue_name,
            content_type="application/data",
            content_encoding="binary",
            headers={"case": "bytes"},
        )
        producer.publish(
            {"id": 4, "kind": "msgpack", "list": [1, 2, 3], "f": 1.5, "s": "\u00e9"},
            routing_key=queue_name,
            serializer="msgpack",
            headers={"case": "msgpack"},
        )
        producer.publish(
            {"id": 5, "kind": "zlib", "data": "x" * 2000},
            routing_key=queue_name,
            serializer="json",
            compression="zlib",
            headers={"case": "zlib"},
        )
        # Through a direct exchange: kombu routes with the binding it declared itself (on this
        # channel, in memory). Declared explicitly: `declare=[...]` would skip it, since kombu
        # caches declarations by hash and a Queue's hash is its name alone.
        direct = Exchange(DIRECT_EXCHANGE, type="direct")
        Queue(queue_name, exchange=direct, routing_key=DIRECT_KEY)(channel).declare()
        Producer(channel, exchange=direct).publish(
            {"id": 6, "kind": "direct"},
            routing_key=DIRECT_KEY,
            serializer="json",
            headers={"case": "direct"},
        )
        channel.close()
    print(json.dumps({"published": 6}))


def put(db, queue_name, *bodies):
    with Connection(url(db)) as conn:
        channel = conn.channel()
        producer = Producer(channel)
        for body in bodies:
            producer.publish(body, routing_key=queue_name, serializer="json", declare=[Queue(queue_name)])
        channel.close()
    print(json.dumps({"published": len(bodies)}))


def declare(db, queue_name):
    with Connection(url(db)) as conn:
        channel = conn.channel()
        Queue(queue_name)(channel).declare()
        channel.close()
    print(json.dumps({"declared": queue_name}))


def nonfinite(db, queue_name):
    # What json.dumps writes beyond RFC JSON, in the headers (so the envelope) and the body.
    with Connection(url(db)) as conn:
        channel = conn.channel()
        Producer(channel).publish(
            {"x": float("nan"), "hi": float("inf"), "lo": float("-inf"), "s": "a\ud800b"},
            routing_key=queue_name, serializer="json",
            headers={"score": float("nan"), "who": "a\ud800b"})
        channel.close()
    print(json.dumps({"published": 1}))


def describe(message):
    payload = message.decode()
    out = {
        "headers": message.headers,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "delivery_info": {
            "exchange": message.delivery_info.get("exchange"),
            "routing_key": message.delivery_info.get("routing_key"),
        },
        "properties": {
            k: message.properties.get(k)
            for k in ("correlation_id", "reply_to", "priority", "message_id", "delivery_mode")
        },
    }
    if isinstance(payload, bytes):
        out["payload_b64"] = base64.b64encode(payload).decode("ascii")
    else:
        out["payload"] = payload
    return out


def consume(db, queue_name, n):
    n = int(n)
    got = []
    deadline = time.monotonic() + 60
    with Connection(url(db)) as conn:

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


def take_ack(db, queue_name):
    with Connection(url(db)) as conn:
        channel = conn.channel()
        message = Queue(queue_name)(channel).get(no_ack=False, accept=ACCEPT)
        out = None
        if message is not None:
            out = describe(message)
            message.ack()
        channel.close()
    print(json.dumps({"message": out}))


def drain(db, queue_name):
    got = []
    with Connection(url(db)) as conn:
        channel = conn.channel()
        queue = Queue(queue_name)(channel)
        while True:
            message = queue.get(no_ack=False, accept=ACCEPT)
            if message is None:
                break
            got.append(describe(message))
            message.ack()
        channel.close()
    print(json.dumps({"messages": got}))


def take_close(db, queue_name, n):
    taken = []
    with Connection(url(db)) as conn:
        channel = conn.channel()
        queue = Queue(queue_name)(channel)
        for _ in range(int(n)):
            message = queue.get(no_ack=False, accept=ACCEPT)
            if message is None:
                break
            taken.append(message.headers.get("case"))
        # Unsettled: closing the channel restores them (kombu's generic virtual restore).
        channel.close()
    print(json.dumps({"taken": taken}))


def main(argv):
    command, args = argv[1], argv[2:]
    {"publish": publish, "put": put, "declare": declare, "nonfinite": nonfinite, "consume": consume, "take_ack": take_ack, "drain": drain, "take_close": take_close}[command](*args)


if __name__ == "__main__":
    main(sys.argv)
