#!/usr/bin/env python3
"""Codec interop between Python kombu / Celery and kombu-rs (driven by serializers/tests/interop.rs).

    kombu_codec.py make         print vectors made by kombu and Celery (JSON on stdout)
    kombu_codec.py check FILE   decode the vectors kombu-rs wrote to FILE with kombu and Celery,
                                re-encode their expected values with kombu, and print a report

Every body is one serializer x one compression (or none), as kombu's Producer would put it on
a broker: `kombu.serialization.dumps`, then `kombu.compression.compress`.
"""

import base64
import datetime
import decimal
import hashlib
import hmac
import json
import os
import sys
import tempfile
import uuid

from kombu import compression
from kombu.serialization import dumps, enable_insecure_serializers, loads

enable_insecure_serializers(["json", "msgpack", "yaml", "pickle"])

SERIALIZERS = ["json", "msgpack", "yaml", "pickle"]
COMPRESSIONS = [None, "zlib", "bzip2", "lzma", "brotli", "zstd"]
ACCEPT = [
    "application/json",
    "application/x-msgpack",
    "application/x-yaml",
    "application/x-python-serialize",
    "application/data",
    "text/plain",
]

# Keys in sorted order: kombu-rs writes maps of `serde_json::Value` sorted, Python in insertion
# order, so sorted keys let the bytes be compared.
COMMON = {
    "big": 2**40,
    "bool": True,
    "date_like": "2024-01-02",
    "empty_list": [],
    "empty_map": {},
    "float": 0.1,
    "int": 42,
    "list": [1, "two", None, True, 2.5, -0.0],
    "neg": -7,
    "nested": {"a": [1.5, False, {"deep": ["x"]}], "b": {"c": "d"}},
    "none": None,
    "str": "h\u00e9llo \u2713 \"q\" 'a' \\ / \n\ttab \U0001f600",
    "yes": "yes",
}
TEXT = "h\u00e9llo \u2713 plain text"
BYTES = b"\x00\xff\x01binary\x80"
TAGGED = {
    "at": datetime.time(1, 2, 3, 450),
    "blob": b"\xff\x00\x01",
    "day": datetime.date(2024, 1, 2),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "price": decimal.Decimal("1.50"),
    "text_bytes": b"abc",
    "when": datetime.datetime(2024, 1, 2, 3, 4, 5, 678900, tzinfo=datetime.timezone.utc),
    "when_offset": datetime.datetime(
        2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    ),
}


def b64(data):
    return base64.b64encode(data).decode("ascii")


def encode(value, serializer, compression_alias):
    """What kombu's Producer does: (content_type, content_encoding, header or None, body)."""
    content_type, content_encoding, body = dumps(value, serializer=serializer)
    if isinstance(body, str):
        body = body.encode(content_encoding or "utf-8")
    header = None
    if compression_alias:
        body, header = compression.compress(body, compression_alias)
    return content_type, content_encoding, header, body


def vector(vid, expect, value, serializer, compression_alias):
    content_type, content_encoding, header, body = encode(value, serializer, compression_alias)
    return {
        "id": vid,
        "expect": expect,
        "content_type": content_type,
        "content_encoding": content_encoding,
        "compression": header,
        "body": b64(body),
    }


def make_identity(common_name, serial):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "NZ"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Celery Workers"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def celery_secure_serializer(key_pem=None, cert_pem=None, store_pems=()):
    from celery.security.certificate import Certificate, FSCertStore
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer

    store = None
    if store_pems:
        folder = tempfile.mkdtemp(prefix="kombu-rs-certs-")
        for i, pem in enumerate(store_pems):
            with open(os.path.join(folder, f"{i}.pem"), "wb") as f:
                f.write(pem)
        store = FSCertStore(folder)
    return SecureSerializer(
        key_pem and PrivateKey(key_pem),
        cert_pem and Certificate(cert_pem),
        store,
        digest="sha256",
        serializer="json",
    )


def make():
    vectors = []
    for compression_alias in COMPRESSIONS:
        c = compression_alias or "none"
        for serializer in SERIALIZERS:
            vectors.append(
                vector(f"{serializer}/{c}", "common", COMMON, serializer, compression_alias)
            )
        vectors.append(vector(f"text/{c}", "text", TEXT, None, compression_alias))
        vectors.append(vector(f"raw/{c}", "bytes", BYTES, None, compression_alias))
        vectors.append(vector(f"tagged/{c}", "tagged", TAGGED, "json", compression_alias))

    from celery.security.certificate import Certificate

    key_pem, cert_pem = make_identity("python-producer", 2**70 + 5)
    signed = celery_secure_serializer(key_pem, cert_pem).serialize(COMMON)
    out = {
        "common": COMMON,
        "vectors": vectors,
        "auth": {
            "cert_pem": cert_pem.decode("ascii"),
            "signer_id": Certificate(cert_pem).get_id(),
            # The message body as Celery puts it on the wire (already base64 text).
            "body": signed if isinstance(signed, str) else signed.decode("ascii"),
        },
    }
    json.dump(out, sys.stdout)


def same(a, b):
    """Equality that tells -0.0 from 0.0 and floats from ints, like byte comparison would."""
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and (a == b and str(a) == str(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def check(path):
    with open(path) as f:
        spec = json.load(f)
    expected = {"common": spec["common"], "text": TEXT, "bytes": BYTES, "tagged": TAGGED}
    results = []
    for v in spec["vectors"]:
        result = {"id": v["id"], "decoded": False, "bytes_equal": None, "error": None}
        try:
            body = base64.b64decode(v["body"])
            plain = body
            if v["compression"]:
                plain = compression.decompress(body, v["compression"])
            value = loads(plain, v["content_type"], v["content_encoding"], accept=ACCEPT)
            want = expected[v["expect"]]
            if not same(value, want):
                result["error"] = f"decoded {value!r}, expected {want!r}"
            else:
                result["decoded"] = True
            if v.get("python_serializer") is not None or v["expect"] in ("text", "bytes"):
                _, _, _, ours = encode(want, v.get("python_serializer"), v.get("python_compression"))
                result["bytes_equal"] = ours == body
                if ours != body:
                    result["python_body"] = b64(ours)
        except Exception as e:  # reported to the Rust test, which fails on it
            result["error"] = f"{type(e).__name__}: {e}"
        results.append(result)

    if "auth" in spec:
        a = spec["auth"]
        result = {"id": "auth", "decoded": False, "bytes_equal": None, "error": None}
        try:
            s = celery_secure_serializer(store_pems=[a["cert_pem"].encode("ascii")])
            value = s.deserialize(a["body"])
            if same(value, spec["common"]):
                result["decoded"] = True
            else:
                result["error"] = f"decoded {value!r}"
            # Tampering must be refused by Celery too.
            raw = bytearray(base64.b64decode(a["body"]))
            raw[-2] ^= 1
            try:
                s.deserialize(base64.b64encode(bytes(raw)))
                result["error"] = "Celery accepted a tampered body"
                result["decoded"] = False
            except Exception:
                pass
        except Exception as e:
            result["error"] = f"{type(e).__name__}: {e}"
        results.append(result)

    if "hmac" in spec:
        h = spec["hmac"]
        result = {"id": "hmac", "decoded": False, "bytes_equal": None, "error": None}
        try:
            f = base64.b64decode(h["body"]).split(b"\x00\x01", 4)
            key = bytes.fromhex(h["secret_hex"])
            assert base64.b64decode(f[0]).decode() == h["key_id"], "key id"
            mac = hmac.new(key, b"\x00\x01".join([f[0], f[2], f[3], f[4]]), hashlib.sha256)
            if not hmac.compare_digest(mac.digest(), base64.b64decode(f[1])):
                raise ValueError("bad signature")
            value = loads(f[4], f[2].decode(), f[3].decode(), accept=ACCEPT)
            if same(value, spec["common"]):
                result["decoded"] = True
            else:
                result["error"] = f"decoded {value!r}"
        except Exception as e:
            result["error"] = f"{type(e).__name__}: {e}"
        results.append(result)

    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1:2] == ["make"]:
        make()
    elif sys.argv[1:2] == ["check"] and len(sys.argv) == 3:
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
