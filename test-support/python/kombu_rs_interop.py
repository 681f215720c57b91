"""The messages the transports' Python-interop tests exchange, on the Python side: the same
values as kombu_test_support::interop (../src/interop.rs) on the Rust side. Each
case is named in a `case` header. The tests' scripts import this module from here."""

TEXT = "h\u00e9llo \u2713 plain text"
BYTES = b"\x00\xff\x01binary\x80"
NESTED = {
    "id": 1,
    "nested": {
        "list": [1, 2.5, "three", None, True, False],
        "map": {"a": {"b": [{}, [], {"c": -7}]}},
        "unicode": "h\u00e9llo \u2713 \U0001f600",
    },
    "big": 12345678901234,
}
HEADERS = {"h-str": "v", "h-int": 42, "h-list": [1, "x", None], "h-map": {"k": "v"}, "h-bool": True}
COMPRESSIONS = ["zlib", "bzip2", "lzma", "brotli", "zstd"]


def compressed_body(kind):
    """The body of the case of compression `kind`."""
    return {"kind": kind, "data": "x" * 2000, "n": [1, 2, 3]}


def publish_cases(producer, queue_name, declare):
    """Publishes every case to `queue_name` on the default exchange; returns how many."""
    producer.publish(
        NESTED,
        routing_key=queue_name,
        serializer="json",
        headers=dict(HEADERS, case="json"),
        correlation_id="cid-1",
        reply_to="replies",
        priority=5,
        message_id="mid-1",
        declare=declare,
    )
    producer.publish(TEXT, routing_key=queue_name, content_type="text/plain",
                     content_encoding="utf-8", headers={"case": "text"})
    producer.publish(BYTES, routing_key=queue_name, content_type="application/data",
                     content_encoding="binary", headers={"case": "bytes"})
    producer.publish({"id": 4, "kind": "msgpack", "list": [1, 2, 3], "f": 1.5, "s": "\u00e9"},
                     routing_key=queue_name, serializer="msgpack", headers={"case": "msgpack"})
    producer.publish({"id": 5, "kind": "yaml", "list": [1, "two", None], "map": {"k": "v"}},
                     routing_key=queue_name, serializer="yaml", headers={"case": "yaml"})
    for kind in COMPRESSIONS:
        producer.publish(compressed_body(kind), routing_key=queue_name, serializer="json",
                         compression=kind, headers={"case": kind})
    return 5 + len(COMPRESSIONS)
