"""Python kombu's side of the MongoDB interop tests (transports/mongodb/tests/python_interop.rs).

Every command takes kombu's URL first, naming the test's own database
(``mongodb://HOST:PORT/DATABASE``: kombu takes the database from the path), and talks to it
through kombu's MongoDB transport, as a Python service would; ``docs`` and ``indexes`` read
the collections with pymongo. Results go to stdout as one JSON document.

    publish URL QUEUE            one message of every kind: json (headers, properties, priority
                                 5), text, raw bytes, msgpack, yaml, and json compressed with
                                 zlib, bzip2, lzma, brotli and zstd (10 messages)
    publish_pickle URL QUEUE     one pickle message ({"b": b"\\x01\\x02\\xff", "n": 1})
    put URL QUEUE BODY...        each BODY as a JSON string, default exchange
    priorities URL QUEUE P...    {"p": P, "i": its index} with priority P, in the order given
    bind URL                     declare direct exchange py.direct (queue pyd, key rk.direct)
                                 and topic exchange py.topic (queue pyt, keys stock.*.usd, #.eur)
    publish_routed URL           publish through rs.direct (key rk.direct) and rs.topic (keys
                                 stock.nyse.usd, stock.usd, fx.spot.eur), exchanges Rust bound
    consume URL QUEUE N SECS     consume up to N messages with a Consumer (drain_events) for at
                                 most SECS seconds, ack each
    drain URL QUEUE              take every ready message (Queue.get), ack each, in order
    size URL QUEUE               the queue's size as kombu reports it (queue_declare passive)
    purge URL QUEUE              purge the queue as kombu does; how many it removed
    dead_letters URL QUEUE       take every message of a dead-letter queue kombu-rs filled:
                                 raw bodies (base64), content types and headers
    ttl_publish URL QUEUE        with ttl=True: declare QUEUE and publish "short" (expiration
                                 0.2 s), "kept" (none) and "long" (expiration 600 s); declare
                                 QUEUE.ttl with x-message-ttl 200 ms and publish "q-short"
                                 (none) and "q-long" (expiration 600 s) to it
    ttl_put URL QUEUE BODY       with ttl=True: publish BODY to QUEUE (declared by another)
    docs URL QUEUE               pymongo: the queue's documents in `messages` (no payload;
                                 expire_at as Unix milliseconds)
    indexes URL                  pymongo: the indexes of `messages` ({name: expireAfterSeconds})
    fanout_consume URL EXCHANGE QUEUE N
                                 consume N messages from QUEUE bound to the fanout EXCHANGE,
                                 printing READY on stderr once its tailable cursor is open
    fanout_publish URL EXCHANGE N
                                 publish {"i": i} for i < N to the fanout EXCHANGE
"""

import base64
import json
import os
import socket
import sys
import time

import pymongo
from kombu import Connection, Consumer, Exchange, Producer, Queue

# The interop cases, shared with the other transports and mirrored on the Rust side
# (test-support/python/kombu_rs_interop.py and test-support/src/interop.rs).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "..", "..", "test-support", "python"))
from kombu_rs_interop import publish_cases  # noqa: E402

ACCEPT = ["json", "msgpack", "yaml", "text/plain", "application/data"]


def connection(url, **options):
    return Connection(url, transport_options=options)


def publish(url, queue_name):
    with connection(url) as conn:
        channel = conn.channel()
        producer = Producer(channel)
        published = publish_cases(producer, queue_name, declare=[Queue(queue_name)])
        channel.close()
    print(json.dumps({"published": published}))


def publish_pickle(url, queue_name):
    with connection(url) as conn:
        channel = conn.channel()
        Producer(channel).publish({"b": b"\x01\x02\xff", "n": 1}, routing_key=queue_name,
                                  serializer="pickle", headers={"case": "pickle"},
                                  declare=[Queue(queue_name)])
        channel.close()
    print(json.dumps({"published": 1}))


def put(url, queue_name, *bodies):
    with connection(url) as conn:
        channel = conn.channel()
        producer = Producer(channel)
        for body in bodies:
            producer.publish(body, routing_key=queue_name, serializer="json")
        channel.close()
    print(json.dumps({"published": len(bodies)}))


def priorities(url, queue_name, *pris):
    with connection(url) as conn:
        channel = conn.channel()
        producer = Producer(channel)
        for i, p in enumerate(pris):
            producer.publish({"p": int(p), "i": i}, routing_key=queue_name, serializer="json",
                             priority=int(p))
        channel.close()
    print(json.dumps({"published": len(pris)}))


def bind(url):
    with connection(url) as conn:
        channel = conn.channel()
        direct = Exchange("py.direct", type="direct")
        Queue("pyd", exchange=direct, routing_key="rk.direct")(channel).declare()
        topic = Exchange("py.topic", type="topic")
        Queue("pyt", exchange=topic, routing_key="stock.*.usd")(channel).declare()
        Queue("pyt", exchange=topic, routing_key="#.eur")(channel).declare()
        channel.close()
    print(json.dumps({"bound": True}))


def publish_routed(url):
    with connection(url) as conn:
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
        "redelivered": bool(message.delivery_info.get("redelivered")),
        "delivery_info": {
            "exchange": message.delivery_info.get("exchange"),
            "routing_key": message.delivery_info.get("routing_key"),
        },
        "properties": {
            k: message.properties.get(k)
            for k in ("correlation_id", "reply_to", "priority", "message_id", "delivery_mode",
                      "expiration")
        },
    }
    if isinstance(payload, bytes):
        out["payload_b64"] = base64.b64encode(payload).decode("ascii")
    else:
        out["payload"] = payload
    return out


def consume(url, queue_name, n, seconds):
    n = int(n)
    got = []
    deadline = time.monotonic() + float(seconds)
    with connection(url, polling_interval=0.1) as conn:

        def on_message(body, message):
            got.append(describe(message))
            message.ack()

        with Consumer(conn, [Queue(queue_name)], accept=ACCEPT, callbacks=[on_message]):
            while len(got) < n and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=min(1, max(0.1, deadline - time.monotonic())))
                except socket.timeout:
                    pass
    print(json.dumps({"messages": got}))


def drain(url, queue_name):
    got = []
    with connection(url) as conn:
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


def size(url, queue_name):
    with connection(url) as conn:
        channel = conn.channel()
        ok = channel.queue_declare(queue=queue_name, passive=True)
        channel.close()
    print(json.dumps({"size": ok.message_count}))


def purge(url, queue_name):
    with connection(url) as conn:
        channel = conn.channel()
        purged = Queue(queue_name)(channel).purge()
        channel.close()
    print(json.dumps({"purged": purged}))


def dead_letters(url, queue_name):
    got = []
    with connection(url) as conn:
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


def ttl_publish(url, queue_name):
    with connection(url, ttl=True) as conn:
        channel = conn.channel()
        producer = Producer(channel)
        queue = Queue(queue_name)
        queue(channel).declare()
        producer.publish("short", routing_key=queue_name, serializer="json", expiration=0.2)
        producer.publish("kept", routing_key=queue_name, serializer="json")
        producer.publish("long", routing_key=queue_name, serializer="json", expiration=600)
        short_lived = queue_name + ".ttl"
        Queue(short_lived, message_ttl=0.2)(channel).declare()
        producer.publish("q-short", routing_key=short_lived, serializer="json")
        producer.publish("q-long", routing_key=short_lived, serializer="json", expiration=600)
        channel.close()
    print(json.dumps({"published": 5}))


def ttl_put(url, queue_name, body):
    with connection(url, ttl=True) as conn:
        channel = conn.channel()
        Producer(channel).publish(body, routing_key=queue_name, serializer="json")
        channel.close()
    print(json.dumps({"published": 1}))


def database(url):
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000)
    return client, client.get_default_database()


def docs(url, queue_name):
    client, db = database(url)
    out = []
    for doc in db["messages"].find({"queue": queue_name}).sort([("_id", 1)]):
        payload = json.loads(doc["payload"])
        expire_at = doc.get("expire_at")
        out.append({
            "body": base64.b64decode(payload["body"]).decode("utf-8", "replace"),
            "priority": doc.get("priority"),
            "expire_at_ms": (int(expire_at.timestamp() * 1000) if expire_at is not None
                             else None),
        })
    client.close()
    print(json.dumps({"docs": out, "now_ms": int(time.time() * 1000)}))


def indexes(url):
    client, db = database(url)
    out = {ix["name"]: ix.get("expireAfterSeconds") for ix in db["messages"].list_indexes()}
    client.close()
    print(json.dumps({"indexes": out}))


def fanout_consume(url, exchange_name, queue_name, n):
    """Consumes n messages from a queue bound to a fanout exchange (kombu: a tailable cursor
    on the broadcast collection, opened at bind), printing READY on stderr once bound."""
    n = int(n)
    got = []
    deadline = time.monotonic() + 60
    exchange = Exchange(exchange_name, type="fanout")
    queue = Queue(queue_name, exchange=exchange, routing_key="")
    with connection(url, polling_interval=0.1) as conn:

        def on_message(body, message):
            got.append(describe(message))
            message.ack()

        with Consumer(conn, [queue], accept=ACCEPT, callbacks=[on_message]):
            print("READY", file=sys.stderr, flush=True)
            while len(got) < n and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except socket.timeout:
                    pass
    print(json.dumps({"messages": got}))


def fanout_publish(url, exchange_name, n):
    exchange = Exchange(exchange_name, type="fanout")
    with connection(url) as conn:
        channel = conn.channel()
        producer = Producer(channel, exchange=exchange, routing_key="")
        for i in range(int(n)):
            producer.publish({"i": i}, serializer="json")
        channel.close()
    print(json.dumps({"published": int(n)}))


def main(argv):
    command, args = argv[1], argv[2:]
    {
        "publish": publish,
        "publish_pickle": publish_pickle,
        "put": put,
        "priorities": priorities,
        "bind": bind,
        "publish_routed": publish_routed,
        "consume": consume,
        "drain": drain,
        "size": size,
        "purge": purge,
        "dead_letters": dead_letters,
        "ttl_publish": ttl_publish,
        "ttl_put": ttl_put,
        "docs": docs,
        "indexes": indexes,
        "fanout_consume": fanout_consume,
        "fanout_publish": fanout_publish,
    }[command](*args)


if __name__ == "__main__":
    main(sys.argv)
