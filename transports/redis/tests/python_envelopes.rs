//! Envelopes written by Python kombu read back in Rust as Python meant them: a property test
//! whose cases Python generates (seeded, so a failure repeats): random Unicode bodies, header
//! tables of random names and values (strings, integers, finite floats, booleans, lists,
//! nested tables), and properties. Python builds each envelope the way its virtual channel
//! does before storing it (`prepare_message`, `encode_body` to base64, `delivery_info`,
//! `delivery_tag`) and serializes it with kombu's JSON; Rust's envelope parser must give the
//! same body bytes, headers and properties. The Rust-writes-Rust-reads half is the envelope
//! module's own property test.

use kombu_core::Headers;
use kombu_core::transport::virtual_transport::envelope;
use serde_json::Value as Json;

const CASES: usize = 300;

const SCRIPT: &str = r#"
import json, random, sys
from kombu import Connection
from kombu.utils.json import dumps

rng = random.Random(int(sys.argv[1]))
alphabet = "abcXYZ019 _-.:/\u00e9\u00df\u4e2d\u6587\U0001F600\u0000\n\"\\"

def text(n=12):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))

def value(depth=0):
    kind = rng.randint(0, 6 if depth < 3 else 4)
    if kind == 0: return text()
    if kind == 1: return rng.randint(-2**53, 2**53)
    if kind == 2: return rng.uniform(-1e9, 1e9)
    if kind == 3: return rng.choice([True, False])
    if kind == 4: return None
    if kind == 5: return [value(depth + 1) for _ in range(rng.randint(0, 4))]
    return {text(6): value(depth + 1) for _ in range(rng.randint(0, 4))}

with Connection("memory://") as conn:
    channel = conn.default_channel
    for i in range(int(sys.argv[2])):
        body = text(200)
        headers = {text(8): value() for _ in range(rng.randint(0, 6))}
        properties = {}
        if rng.random() < 0.5: properties["correlation_id"] = text(20)
        if rng.random() < 0.5: properties["reply_to"] = text(20)
        priority = rng.randint(0, 9)
        message = channel.prepare_message(
            body.encode("utf-8"), priority, "application/json", "utf-8", headers, properties)
        message["body"], encoding = channel.encode_body(message["body"], "base64")
        props = message["properties"]
        props.update(body_encoding=encoding,
                     delivery_info={"exchange": text(8), "routing_key": text(8)},
                     delivery_tag="tag-%d" % i)
        print(json.dumps({"envelope": dumps(message), "body": body, "headers": headers,
                          "priority": priority, "properties": properties,
                          "delivery_info": props["delivery_info"]}))
"#;

fn headers_json(h: &Headers) -> Json {
    serde_json::to_value(h).expect("headers as JSON")
}

#[test]
fn envelopes_python_writes_read_back_as_python_meant() {
    let Some(python) = kombu_test_support::python() else {
        return;
    };
    let seed = std::env::var("KOMBU_PROPTEST_SEED").unwrap_or_else(|_| "20261206".to_owned());
    let out = std::process::Command::new(python)
        .args(["-c", SCRIPT, &seed, &CASES.to_string()])
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "the Python generator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8(out.stdout).expect("UTF-8 output");
    let mut n = 0;
    for line in lines.lines() {
        let case: Json = serde_json::from_str(line).expect("a case");
        let raw = case["envelope"].as_str().expect("the envelope");
        let env = envelope::decode(raw.as_bytes())
            .unwrap_or_else(|e| panic!("seed {seed}, case {n}: {e:#}\n{raw}"));
        let m = &env.message;
        let body = case["body"].as_str().expect("body");
        assert_eq!(
            m.body.as_ref(),
            body.as_bytes(),
            "seed {seed}, case {n}: body"
        );
        assert_eq!(
            headers_json(&m.headers),
            case["headers"],
            "seed {seed}, case {n}: headers"
        );
        assert_eq!(
            m.properties.priority.map(u64::from),
            case["priority"].as_u64(),
            "seed {seed}, case {n}: priority"
        );
        assert_eq!(
            m.properties.correlation_id.as_deref(),
            case["properties"]["correlation_id"].as_str(),
            "seed {seed}, case {n}: correlation_id"
        );
        assert_eq!(
            m.properties.reply_to.as_deref(),
            case["properties"]["reply_to"].as_str(),
            "seed {seed}, case {n}: reply_to"
        );
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            env.exchange,
            case["delivery_info"]["exchange"]
                .as_str()
                .expect("exchange")
        );
        assert_eq!(
            env.routing_key,
            case["delivery_info"]["routing_key"]
                .as_str()
                .expect("routing key")
        );
        n += 1;
    }
    assert_eq!(n, CASES, "every case checked");
}
