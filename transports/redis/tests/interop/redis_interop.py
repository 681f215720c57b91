"""Python kombu's side of the Redis interop tests (transports/redis/tests/python_interop.rs).

Every command takes a key prefix first: kombu runs with
``transport_options={'global_keyprefix': PREFIX}`` against ``redis://127.0.0.1:6379/0`` (or
``$KOMBU_REDIS_URL``), so concurrent tests never share a key. Results go to stdout as one JSON
document.

    publish PREFIX QUEUE          one message of every kind: json (headers, properties, priority
                                  5), text, raw bytes, msgpack, yaml, and json compressed with
                                  zlib, bzip2, lzma, brotli and zstd (10 messages)
    put PREFIX QUEUE BODY...      each BODY as a JSON string, default exchange
    nonfinite PREFIX QUEUE        one json message with NaN, Infinity, -Infinity and a lone
                                  surrogate in its headers and body (default exchange)
    priorities PREFIX QUEUE P...  {"p": P} with priority P, in the order given
    bind PREFIX                   declare direct exchange py.direct (queue pyd, key rk.direct)
                                  and topic exchange py.topic (queue pyt, keys stock.*.usd, #.eur)
    publish_routed PREFIX         publish through rs.direct (key rk.direct) and rs.topic (keys
                                  stock.nyse.usd, stock.usd, fx.spot.eur), exchanges Rust bound
    consume PREFIX QUEUE N        consume N messages with a Consumer (drain_events), ack each
    take_ack PREFIX QUEUE         take one message (Queue.get), ack it, print it
    drain PREFIX QUEUE            take every ready message (Queue.get), ack each, in order
    take_exit PREFIX QUEUE N      take N messages unacked, print them, then os._exit(0)
    recover PREFIX QUEUE N        visibility_timeout=1: run restore_visible and take until N
                                  messages arrived (bounded), ack each
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

URL = os.environ.get("KOMBU_REDIS_URL", "redis://127.0.0.1:6379/0")
ACCEPT = ["json", "msgpack", "yaml", "text/plain", "application/data"]


def connection(prefix, **options):
    return Connection(URL, transport_options=dict(options, global_keyprefix=prefix))



def publish(prefix, queue_name):
    with connection(prefix) as conn:
        channel = conn.channel()
        producer = Producer(channel)
        queue = Queue(queue_name)
        published = publish_cases(producer, queue_name, declare=[queue])
        channel.close()
    print(json.dumps({"published": published}))


def put(prefix, queue_name, *bodies):
    with connection(prefix) as conn:
        channel = conn.channel()
        producer = Producer(channel)
        for body in bodies:
            producer.publish(body, routing_key=queue_name, serializer="json")
        channel.close()
    print(json.dumps({"published": len(bodies)}))


def nonfinite(prefix, queue_name):
    # What json.dumps writes beyond RFC JSON: NaN, Infinity, -Infinity, lone surrogates, in the
    # headers (so in kombu's envelope) and in the body.
    with connection(prefix) as conn:
        channel = conn.channel()
        producer = Producer(channel)
        producer.publish(
            {"x": float("nan"), "hi": float("inf"), "lo": float("-inf"), "s": "a\ud800b",
             "n": 1},
            routing_key=queue_name, serializer="json",
            headers={"score": float("nan"), "hi": float("inf"), "lo": float("-inf"),
                     "who": "a\ud800b"})
        channel.close()
    print(json.dumps({"published": 1}))


def priorities(prefix, queue_name, *pris):
    with connection(prefix) as conn:
        channel = conn.channel()
        producer = Producer(channel)
        for p in pris:
            producer.publish({"p": int(p)}, routing_key=queue_name, serializer="json",
                             priority=int(p))
        channel.close()
    print(json.dumps({"published": len(pris)}))


def bind(prefix):
    with connection(prefix) as conn:
        channel = conn.channel()
        direct = Exchange("py.direct", type="direct")
        Queue("pyd", exchange=direct, routing_key="rk.direct")(channel).declare()
        topic = Exchange("py.topic", type="topic")
        Queue("pyt", exchange=topic, routing_key="stock.*.usd")(channel).declare()
        Queue("pyt", exchange=topic, routing_key="#.eur")(channel).declare()
        channel.close()
    print(json.dumps({"bound": True}))


def publish_routed(prefix):
    with connection(prefix) as conn:
        channel = conn.channel()
        # kombu keeps exchange types in memory: a publisher declares the type it expects.
        direct = Exchange("rs.direct", type="direct")(channel)
        direct.declare()
        Producer(channel, exchange=direct).publish(
            {"via": "rs.direct", "rk": "rk.direct"}, routing_key="rk.direct", serializer="json")
        topic = Exchange("rs.topic", type="topic")(channel)
        topic.declare()
        producer = Producer(channel, exchange=topic)
        for rk in ["stock.nyse.usd", "stock.usd", "fx.spot.eur"]:
            producer.publish({"via": "rs.topic", "rk": rk}, routing_key=rk, serializer="json")
        channel.close()
    print(json.dumps({"published": 4}))


def describe(message):
    payload = message.decode()
    out = {
        "headers": message.headers,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "redelivered": bool(message.delivery_info.get("redelivered")
                            or (message.headers or {}).get("redelivered")),
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


def consume(prefix, queue_name, n):
    n = int(n)
    got = []
    deadline = time.monotonic() + 30
    with connection(prefix) as conn:

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


def drain(prefix, queue_name):
    got = []
    with connection(prefix) as conn:
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


def dead_letters(prefix, queue_name):
    """Reads a dead-letter queue kombu-rs filled: raw bodies (base64) and headers."""
    got = []
    with connection(prefix) as conn:
        channel = conn.channel()
        queue = Queue(queue_name)(channel)
        while True:
            message = queue.get(no_ack=False, accept=["application/octet-stream"])
            if message is None:
                break
            got.append({
                "body_b64": base64.b64encode(message.body).decode("ascii"),
                "content_type": message.content_type,
                "headers": message.headers,
            })
            message.ack()
        channel.close()
    print(json.dumps({"messages": got}))


def take_ack(prefix, queue_name):
    with connection(prefix) as conn:
        channel = conn.channel()
        message = Queue(queue_name)(channel).get(no_ack=False, accept=ACCEPT)
        out = None
        if message is not None:
            out = describe(message)
            message.ack()
        channel.close()
    print(json.dumps({"message": out}))


def take_exit(prefix, queue_name, n):
    taken = []
    conn = connection(prefix)
    channel = conn.channel()
    queue = Queue(queue_name)(channel)
    for _ in range(int(n)):
        message = queue.get(no_ack=False, accept=ACCEPT)
        if message is None:
            break
        taken.append(describe(message))
    sys.stdout.write(json.dumps({"messages": taken}) + "\n")
    sys.stdout.flush()
    # No ack, no close, no atexit: the messages stay in kombu's `unacked` hash.
    os._exit(0)


def recover(prefix, queue_name, n):
    n = int(n)
    got = []
    sweeps = 0
    deadline = time.monotonic() + 30
    with connection(prefix, visibility_timeout=1) as conn:
        channel = conn.channel()
        queue = Queue(queue_name)(channel)
        while len(got) < n and time.monotonic() < deadline:
            message = queue.get(no_ack=False, accept=ACCEPT)
            if message is not None:
                got.append(describe(message))
                message.ack()
                continue
            # What a consumer's empty polls do (every `unacked_restore_throttle` polls).
            channel.qos.restore_visible(num=100, interval=1)
            sweeps += 1
            time.sleep(0.1)
        channel.close()
    print(json.dumps({"messages": got, "sweeps": sweeps}))


def fanout_consume(prefix, exchange_name, queue_name, n):
    """Consumes n messages from a queue bound to a fanout exchange (kombu: PUB/SUB), printing
    READY on stderr once subscribed."""
    n = int(n)
    got = []
    deadline = time.monotonic() + 30
    exchange = Exchange(exchange_name, type="fanout")
    queue = Queue(queue_name, exchange=exchange, routing_key="")
    with connection(prefix) as conn:

        def on_message(body, message):
            got.append(describe(message))
            message.ack()

        with Consumer(conn, [queue], accept=ACCEPT, callbacks=[on_message]):
            # kombu subscribes on its first poll.
            try:
                conn.drain_events(timeout=0.3)
            except socket.timeout:
                pass
            print("READY", file=sys.stderr, flush=True)
            while len(got) < n and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except socket.timeout:
                    pass
    print(json.dumps({"messages": got}))


def fanout_publish(prefix, exchange_name, n):
    exchange = Exchange(exchange_name, type="fanout")
    with connection(prefix) as conn:
        producer = Producer(conn.channel(), exchange=exchange, routing_key="")
        for i in range(int(n)):
            producer.publish({"i": i}, serializer="json")
    print(json.dumps({"published": int(n)}))


def main(argv):
    command, args = argv[1], argv[2:]
    {
        "publish": publish,
        "put": put,
        "nonfinite": nonfinite,
        "priorities": priorities,
        "bind": bind,
        "publish_routed": publish_routed,
        "consume": consume,
        "drain": drain,
        "dead_letters": dead_letters,
        "take_ack": take_ack,
        "take_exit": take_exit,
        "recover": recover,
        "fanout_consume": fanout_consume,
        "fanout_publish": fanout_publish,
    }[command](*args)


if __name__ == "__main__":
    main(sys.argv)
