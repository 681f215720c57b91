"""Writes the seed inputs of the fuzz corpora (fuzz/corpus/<target>/seed-*) with Python kombu.

Run with the venv of scripts/python-env (kombu, msgpack, PyYAML, brotli) and the `zstd`
command: `"$KOMBU_PYTHON" fuzz/seeds.py`. Rewrites the seed files (the envelopes get fresh
UUID delivery tags).
"""

import bz2
import datetime
import hashlib
import json
import lzma
import os
import pickle
import struct
import subprocess
import sys
import zlib

import brotli
import msgpack
import yaml
from kombu import Connection, Exchange, Queue
from kombu.utils.json import dumps

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- envelope: what kombu's virtual transport stores (Redis, SQLite) ------------------------
def envelopes():
    captured = []
    with Connection("memory://") as conn:
        ch = conn.default_channel
        ch._put = lambda queue, message, **kw: captured.append(dumps(message))
        ch._put_fanout = lambda exchange, message, routing_key, **kw: captured.append(dumps(message))
        q = Queue("fuzz", Exchange("fuzz", "direct"), "fuzz")
        q(ch).declare()
        prod = conn.Producer(ch)
        prod.publish({"hello": "wörld", "n": [1, 2.5, None, True]}, exchange="fuzz",
                     routing_key="fuzz", serializer="json")
        prod.publish(b"\x00\xffraw", exchange="fuzz", routing_key="fuzz", serializer=None,
                     content_type="application/data", content_encoding="binary")
        prod.publish("text", exchange="fuzz", routing_key="fuzz", compression="zlib",
                     priority=9, expiration=30, headers={"x-int": 1 << 40, "x-list": [1, "a"],
                                                         "x-map": {"k": {"n": -1}}},
                     correlation_id="c1", reply_to="r", message_id="m1")
        prod.publish([1, 2, 3], exchange="fuzz", routing_key="fuzz", serializer="msgpack",
                     delivery_mode=1)
        # A Celery task message (protocol 2).
        prod.publish([[2, 2], {}, {"callbacks": None, "errbacks": None, "chain": None,
                                   "chord": None}],
                     exchange="fuzz", routing_key="fuzz", serializer="json",
                     headers={"lang": "py", "task": "tasks.add", "id": "d5f4", "root_id": "d5f4",
                              "parent_id": None, "group": None, "retries": 0, "eta": None,
                              "expires": None, "timelimit": [None, None], "argsrepr": "(2, 2)",
                              "kwargsrepr": "{}", "origin": "gen1@host", "ignore_result": False},
                     priority=0)
    for i, m in enumerate(captured):
        write("envelope", f"kombu-{i}", m)
    # Shapes older kombu versions and the restore paths write, and what json.dumps adds.
    write("envelope", "redelivered", json.dumps({
        "body": "aGk=", "content-encoding": "utf-8", "content-type": "text/plain",
        "headers": {"redelivered": True}, "properties": {
            "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "q",
                                                  "redelivered": True},
            "priority": 0, "body_encoding": "base64", "delivery_tag": 7}, "redelivered": True}))
    write("envelope", "plain-body", '{"body": "{\\"a\\": 1}", "content-type": "application/json",'
          ' "properties": {"delivery_tag": "t"}}')
    write("envelope", "nan-header", '{"body": "", "headers": {"x": NaN, "y": -Infinity, '
          '"s": "\\ud800"}, "properties": {"priority": 300, "delivery_mode": 9}}')


# --- url: every transport, options, failover lists ----------------------------------------
def urls():
    for i, u in enumerate([
        "amqp://guest:guest@localhost:5672//",
        "amqp://user:s%40cret@rabbit:5672/%2Fvh?heartbeat=10&confirm_publish=yes",
        "amqps://u:p@[::1]:5671/vh?ssl_ca_certs=/tmp/ca.pem&connect_timeout=2.5",
        "pyamqp://h1//;pyamqp://h2//; amqp://a:b@h3:5673/x",
        "redis://localhost:6379/0",
        "redis://:SECRET@h:6380/1?visibility_timeout=1.5&priority_steps=0,3,6,9&sep=x",
        "rediss://user:pw@redis.example:6380/0?ssl_cert_reqs=required",
        "redis+socket:///tmp/redis.sock?virtual_host=2",
        "sentinel://:pw@s1:26379;sentinel://:pw@s2:26379?master_name=kombu-test",
        "sqlite:///tmp/kombu.db",
        "sqla+sqlite:////abs/path/kombu.db?polling_interval=0.1",
        "sqlite://:memory:",
        "memory://",
        "memory://a;memory://b",
        "redis://SECRET@h1/0;redis://SECRET@h2/0",
    ]):
        write("url", str(i), u)


# --- amqp_headers: field tables (even first byte) and basic properties (odd) -----------------
def shortstr(s):
    b = s.encode()
    return bytes([len(b)]) + b


def longstr(b):
    return struct.pack(">I", len(b)) + b


def value(v):
    if v is None:
        return b"V"
    if isinstance(v, bool):
        return b"t" + bytes([v])
    if isinstance(v, int):
        if -(1 << 31) <= v < (1 << 31):
            return b"I" + struct.pack(">i", v)
        return b"l" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"d" + struct.pack(">d", v)
    if isinstance(v, str):
        return b"S" + longstr(v.encode())
    if isinstance(v, bytes):
        return b"x" + longstr(v)
    if isinstance(v, list):
        return b"A" + longstr(b"".join(value(x) for x in v))
    if isinstance(v, dict):
        return b"F" + table(v)
    raise TypeError(v)


def table(d):
    return longstr(b"".join(shortstr(k) + value(v) for k, v in d.items()))


def amqp():
    celery = {"lang": "py", "task": "tasks.add", "id": "d5f4", "retries": 0, "eta": None,
              "timelimit": [None, None], "argsrepr": "(2, 2)", "ignore_result": False,
              "compression": "application/x-gzip", "x-big": 1 << 40, "x-bytes": b"\x00\xff",
              "x-f": 1.5, "x-map": {"k": [1, "a", {"n": None}]}}
    write("amqp_headers", "table-celery", b"\x00" + table(celery))
    write("amqp_headers", "table-empty", b"\x00" + table({}))
    # Other field types py-amqp and RabbitMQ write: short-short, short, unsigned, timestamp,
    # decimal, float, short string.
    other = (shortstr("b") + b"b\xff" + shortstr("B") + b"B\xff" + shortstr("s") + b"s\x80\x00"
             + shortstr("u") + b"u\xff\xff" + shortstr("i") + b"i\xff\xff\xff\xff"
             + shortstr("T") + b"T" + struct.pack(">Q", 1700000000)
             + shortstr("D") + b"D\x02" + struct.pack(">I", 12345)
             + shortstr("f") + b"f" + struct.pack(">f", 0.5) + shortstr("ss") + b"s" + b"\x00\x01"
             + shortstr("sh") + b"s" + shortstr("short")[:1])
    write("amqp_headers", "table-types", b"\x00" + longstr(other))
    # Basic properties: flags, then content type, encoding, headers, delivery mode, priority,
    # correlation id, reply to, expiration, message id, timestamp, type, user id, app id.
    flags = 0xFFF8
    props = (struct.pack(">H", flags) + shortstr("application/json") + shortstr("utf-8")
             + table(celery) + b"\x02" + b"\x09" + shortstr("corr") + shortstr("reply")
             + shortstr("30000") + shortstr("mid") + struct.pack(">Q", 1700000000)
             + shortstr("task") + shortstr("guest") + shortstr("app"))
    write("amqp_headers", "props-all", b"\x01" + props)
    write("amqp_headers", "props-ct", b"\x01" + struct.pack(">H", 0x8000)
          + shortstr("application/x-msgpack"))
    write("amqp_headers", "props-exp", b"\x01" + struct.pack(">H", 0x0100) + shortstr(" 12 "))


# --- decompress: byte 0 picks the compressor (zlib, bzip2, lzma, brotli, zstd), byte 1 the
# bound (0, 1, 7, 256, 4096, 65536) ---------------------------------------------------------
def compressed():
    payload = json.dumps({"body": "x" * 300, "n": list(range(50))}).encode()
    zstd = lambda b: subprocess.run(["zstd", "-q", "-c", "-3"], input=b, check=True,
                                    capture_output=True).stdout
    codecs = [("zlib", zlib.compress), ("bzip2", bz2.compress), ("lzma", lzma.compress),
              ("brotli", brotli.compress), ("zstd", zstd)]
    for i, (name, compress) in enumerate(codecs):
        write("decompress", f"{name}-fits", bytes([i, 4]) + compress(payload))
        write("decompress", f"{name}-toolarge", bytes([i, 3]) + compress(payload))
        write("decompress", f"{name}-bomb", bytes([i, 5]) + compress(b"\x00" * 200000))
        write("decompress", f"{name}-empty", bytes([i, 0]) + compress(b""))
    write("decompress", "lzma-alone", bytes([2, 4])
          + lzma.compress(payload, format=lzma.FORMAT_ALONE))
    write("decompress", "bzip2-concat", bytes([1, 4]) + bz2.compress(b"ab") + bz2.compress(b"cd"))


# --- deserialize: byte 0 picks the serializer (json, raw, text, msgpack, yaml, pickle, hmac,
# in registration order) ----------------------------------------------------------------------
def serialized():
    value = {"args": [2, 2], "kwargs": {"x": 1.5, "s": "wörld", "n": None, "b": True},
             "big": 1 << 62, "neg": -7, "list": [[], {}, [1, [2, [3]]]]}
    write("deserialize", "json", b"\x00" + dumps(value).encode())
    write("deserialize", "json-nan", b"\x00" + b'{"x": NaN, "y": [Infinity, -Infinity], "s": "\\ud800"}')
    write("deserialize", "json-tags", b"\x00" + dumps({"d": datetime.datetime(2026, 1, 2, 3, 4, 5)}).encode())
    write("deserialize", "raw", b"\x01" + b"\x00\xff raw bytes")
    write("deserialize", "text", b"\x02" + "plain text ünïcode".encode())
    write("deserialize", "msgpack", b"\x03" + msgpack.packb(value, use_bin_type=True))
    write("deserialize", "msgpack-bin", b"\x03" + msgpack.packb([b"\x00\x01", 1.0e300, -1], use_bin_type=True))
    write("deserialize", "yaml", b"\x04" + yaml.safe_dump(value).encode())
    write("deserialize", "yaml-anchors", b"\x04" + b"a: &x [1, 2]\nb: *x\nc: !!binary AAE=\n")
    write("deserialize", "pickle", b"\x05" + pickle.dumps(value, protocol=2))
    write("deserialize", "pickle-p4", b"\x05" + pickle.dumps([value, b"bytes", (1, 2), {1, 2}], protocol=4))
    # hmac (kombu-rs's own format) under the secret the target registers: 32 bytes of 7.
    import base64, hmac as hmac_
    for i, (ct, ce, body) in enumerate([("application/json", "utf-8", dumps(value).encode()),
                                        ("application/x-msgpack", "binary",
                                         msgpack.packb(value, use_bin_type=True))]):
        kid = base64.b64encode(b"fuzz")
        sep = b"\x00\x01"
        mac = hmac_.new(bytes([7] * 32), sep.join([kid, ct.encode(), ce.encode(), body]),
                        hashlib.sha256).digest()
        fields = sep.join([kid, base64.b64encode(mac), ct.encode(), ce.encode(), body])
        write("deserialize", f"hmac-{i}", b"\x06" + base64.b64encode(fields))
    write("deserialize", "pickle-p0", b"\x05" + pickle.dumps({"a": [1, 2.5, "s"]}, protocol=0))


envelopes()
urls()
amqp()
compressed()
serialized()
print("seeds written under", os.path.join(HERE, "corpus"), file=sys.stderr)
