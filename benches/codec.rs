//! Serializer and compressor throughput: kombu-rs's `Registry` against the underlying crate
//! called directly with the same settings, in the same run, with mimalloc as the global
//! allocator (both sides).
//!
//! ```text
//! cargo bench --bench codec              # ~0.15 s per side, row and round (about 2 minutes)
//! cargo bench --bench codec -- 0.3       # scale the time per measurement (here 0.3×)
//! cargo bench --bench codec -- zlib 64   # only rows whose name contains every word given
//! ```
//!
//! One operation is an encode plus a decode (serializers) or a compress plus a decompress
//! (compressors). MB/s counts the serialized body (serializers) or the uncompressed input
//! (compressors) once per operation.
//!
//! - Serializers: `registry.encode(&value, name)` + `registry.decode::<T>(body, content type,
//!   encoding, accept list)` against `serde_json` through `kombu_serializers::PythonFormatter`
//!   (what the registry does; plain `serde_json::to_vec` is an extra row, the ceiling),
//!   `rmp_serde::to_vec_named` / `from_slice`, `serde_norway::to_string` / `from_slice`, and a
//!   copy in and a copy out (plus UTF-8 validation for text) for `raw` and `text`.
//! - Compressors: `registry.compress` + `registry.decompress(.., DEFAULT_MAX_DECOMPRESSED_SIZE)`
//!   against flate2 (zlib level 6), bzip2 (level 9, multi-stream decoder), liblzma (XZ preset 6,
//!   CRC64, auto decoder), brotli (quality 11, lgwin 22) and zstd (level 3, bulk compress,
//!   stream decoder) called directly, decompressing with `read_to_end`. An extra zlib row
//!   compares with miniz_oxide (`compress_to_vec_zlib` level 6), flate2's default backend,
//!   which the workspace replaced by C zlib for byte identity with Python.
//!
//! Each measure runs ours and the direct call alternately (which goes first alternates too),
//! 5 rounds, and prints the medians.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kombu_serializers::{Accept, DEFAULT_MAX_DECOMPRESSED_SIZE, PythonFormatter, Registry};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

const ROUNDS: usize = 5;

/// The ~100-byte message: kombu's benchmark body plus a couple of fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Small {
    id: u64,
    payload: String,
    ok: bool,
}

/// One record of the ~64 KiB message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u64,
    name: String,
    email: String,
    active: bool,
    score: i64,
    tags: Vec<String>,
}

/// The ~64 KiB message: 480 records of about 135 bytes of JSON each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Large {
    batch: u64,
    records: Vec<Record>,
}

fn small() -> Small {
    Small {
        id: 123_456,
        payload: "x".repeat(64),
        ok: true,
    }
}

fn large() -> Large {
    const FIRST: [&str; 8] = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ];
    const LAST: [&str; 6] = ["smith", "jones", "brown", "taylor", "wilson", "evans"];
    const TAGS: [&str; 7] = ["new", "vip", "eu", "us", "beta", "trial", "staff"];
    // A small LCG so the data is varied but the same in every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let records = (0..480)
        .map(|i| {
            let first = FIRST[(next() % 8) as usize];
            let last = LAST[(next() % 6) as usize];
            let ntags = (next() % 3) as usize + 1;
            Record {
                id: 1_000_000 + i,
                name: format!("{first} {last}"),
                email: format!("{first}.{last}{}@example.com", next() % 1000),
                active: next() % 4 != 0,
                score: (next() % 100_000) as i64 - 50_000,
                tags: (0..ntags)
                    .map(|_| TAGS[(next() % 7) as usize].to_owned())
                    .collect(),
            }
        })
        .collect();
    Large { batch: 7, records }
}

/// One row: `ours` and `direct` each perform one operation and return the bytes it counts.
struct Row<'a> {
    name: String,
    ours: Box<dyn FnMut() -> usize + 'a>,
    direct: Box<dyn FnMut() -> usize + 'a>,
}

fn row<'a>(
    name: impl Into<String>,
    ours: impl FnMut() -> usize + 'a,
    direct: impl FnMut() -> usize + 'a,
) -> Row<'a> {
    Row {
        name: name.into(),
        ours: Box::new(ours),
        direct: Box::new(direct),
    }
}

fn python_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut ser).unwrap();
    out
}

fn serializer_rows<'a, T>(
    registry: &'a Registry,
    accept: &'a Accept,
    size: &str,
    value: &'a T,
) -> Vec<Row<'a>>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let ours = move |serializer: &'static str| {
        move || {
            let encoded = registry.encode(black_box(value), serializer).unwrap();
            let back: T = registry
                .decode(
                    &encoded.body,
                    Some(&encoded.content_type),
                    Some(&encoded.content_encoding),
                    Some(accept),
                )
                .unwrap();
            black_box(&back);
            encoded.body.len()
        }
    };
    // Check that every serializer round-trips the value before timing anything.
    for serializer in ["json", "msgpack", "yaml"] {
        let encoded = registry.encode(value, serializer).unwrap();
        let back: T = registry
            .decode(
                &encoded.body,
                Some(&encoded.content_type),
                Some(&encoded.content_encoding),
                Some(accept),
            )
            .unwrap();
        assert_eq!(&back, value, "{serializer} round trip");
    }
    vec![
        row(format!("json {size}"), ours("json"), move || {
            let body = python_json(black_box(value));
            let back: T = serde_json::from_slice(&body).unwrap();
            black_box(&back);
            body.len()
        }),
        row(
            format!("json {size} vs plain serde_json"),
            ours("json"),
            move || {
                let body = serde_json::to_vec(black_box(value)).unwrap();
                let back: T = serde_json::from_slice(&body).unwrap();
                black_box(&back);
                body.len()
            },
        ),
        row(format!("msgpack {size}"), ours("msgpack"), move || {
            let body = rmp_serde::to_vec_named(black_box(value)).unwrap();
            let back: T = rmp_serde::from_slice(&body).unwrap();
            black_box(&back);
            body.len()
        }),
        row(format!("yaml {size}"), ours("yaml"), move || {
            let body = serde_norway::to_string(black_box(value)).unwrap();
            let back: T = serde_norway::from_slice(body.as_bytes()).unwrap();
            black_box(&back);
            body.len()
        }),
    ]
}

fn raw_text_rows<'a>(
    registry: &'a Registry,
    accept: &'a Accept,
    size: &str,
    body: &'a [u8],
    text: &'a str,
) -> Vec<Row<'a>> {
    let bytes_value = Bytes::copy_from_slice(body);
    vec![
        row(
            format!("raw {size}"),
            move || {
                let encoded = registry.encode(black_box(&bytes_value), "raw").unwrap();
                let back: Bytes = registry
                    .decode(
                        &encoded.body,
                        Some(&encoded.content_type),
                        Some(&encoded.content_encoding),
                        Some(accept),
                    )
                    .unwrap();
                black_box(&back);
                encoded.body.len()
            },
            move || {
                let encoded = Bytes::copy_from_slice(black_box(body));
                let back = Bytes::copy_from_slice(&encoded);
                black_box(&back);
                encoded.len()
            },
        ),
        row(
            format!("text {size}"),
            move || {
                let encoded = registry.encode(black_box(text), "text").unwrap();
                let back: String = registry
                    .decode(
                        &encoded.body,
                        Some(&encoded.content_type),
                        Some(&encoded.content_encoding),
                        Some(accept),
                    )
                    .unwrap();
                black_box(&back);
                encoded.body.len()
            },
            move || {
                let encoded = Bytes::copy_from_slice(black_box(text).as_bytes());
                let back = std::str::from_utf8(&encoded).unwrap().to_owned();
                black_box(&back);
                encoded.len()
            },
        ),
    ]
}

fn read_all(mut reader: impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    out
}

fn direct_zlib(data: &[u8]) -> usize {
    let mut enc = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 16),
        flate2::Compression::new(6),
    );
    enc.write_all(data).unwrap();
    let compressed = enc.finish().unwrap();
    let back = read_all(flate2::read::ZlibDecoder::new(&compressed[..]));
    assert_eq!(back.len(), data.len());
    data.len()
}

/// flate2's default backend before the workspace switched it to C zlib (whose output matches
/// Python's `zlib.compress` byte for byte): not a baseline for ours, a comparison of backends.
fn miniz_zlib(data: &[u8]) -> usize {
    let compressed = miniz_oxide::deflate::compress_to_vec_zlib(data, 6);
    let back = miniz_oxide::inflate::decompress_to_vec_zlib(&compressed).unwrap();
    assert_eq!(back.len(), data.len());
    data.len()
}

fn direct_bzip2(data: &[u8]) -> usize {
    let mut enc = bzip2::write::BzEncoder::new(
        Vec::with_capacity(data.len() / 2 + 64),
        bzip2::Compression::new(9),
    );
    enc.write_all(data).unwrap();
    let compressed = enc.finish().unwrap();
    let back = read_all(bzip2::read::MultiBzDecoder::new(&compressed[..]));
    assert_eq!(back.len(), data.len());
    data.len()
}

fn direct_lzma(data: &[u8]) -> usize {
    let stream =
        liblzma::stream::Stream::new_easy_encoder(6, liblzma::stream::Check::Crc64).unwrap();
    let mut enc =
        liblzma::write::XzEncoder::new_stream(Vec::with_capacity(data.len() / 2 + 64), stream);
    enc.write_all(data).unwrap();
    let compressed = enc.finish().unwrap();
    let stream =
        liblzma::stream::Stream::new_auto_decoder(128 << 20, liblzma::stream::CONCATENATED)
            .unwrap();
    let back = read_all(liblzma::read::XzDecoder::new_stream(
        &compressed[..],
        stream,
    ));
    assert_eq!(back.len(), data.len());
    data.len()
}

fn direct_brotli(data: &[u8]) -> usize {
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        ..Default::default()
    };
    let mut compressed = Vec::with_capacity(data.len() / 2 + 64);
    brotli::enc::BrotliCompress(&mut &data[..], &mut compressed, &params).unwrap();
    let back = read_all(brotli::Decompressor::new(&compressed[..], 16 * 1024));
    assert_eq!(back.len(), data.len());
    data.len()
}

fn direct_zstd(data: &[u8]) -> usize {
    let compressed = zstd::bulk::compress(data, 3).unwrap();
    let back = read_all(zstd::stream::read::Decoder::with_buffer(&compressed[..]).unwrap());
    assert_eq!(back.len(), data.len());
    data.len()
}

fn compressor_rows<'a>(registry: &'a Registry, size: &str, data: &'a [u8]) -> Vec<Row<'a>> {
    let ours = move |name: &'static str| {
        move || {
            let (compressed, header) = registry.compress(black_box(data), name).unwrap();
            let back = registry
                .decompress(&compressed, &header, DEFAULT_MAX_DECOMPRESSED_SIZE)
                .unwrap();
            assert_eq!(back.len(), data.len());
            data.len()
        }
    };
    type Direct = fn(&[u8]) -> usize;
    let direct: [(&'static str, Direct); 5] = [
        ("zlib", direct_zlib),
        ("bzip2", direct_bzip2),
        ("lzma", direct_lzma),
        ("brotli", direct_brotli),
        ("zstd", direct_zstd),
    ];
    let mut rows: Vec<Row<'a>> = direct
        .into_iter()
        .map(|(name, f)| {
            row(format!("{name} {size}"), ours(name), move || {
                f(black_box(data))
            })
        })
        .collect();
    rows.insert(
        1,
        row(
            format!("zlib {size} vs miniz_oxide"),
            ours("zlib"),
            move || miniz_zlib(black_box(data)),
        ),
    );
    rows
}

/// Runs `f` `iters` times; returns the time taken and the bytes counted.
fn time(f: &mut dyn FnMut() -> usize, iters: u64) -> (Duration, u64) {
    let mut bytes = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        bytes += f() as u64;
    }
    (start.elapsed(), bytes)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn fmt_rate(v: f64) -> String {
    if v >= 100.0 {
        let s = format!("{v:.0}");
        // Thousands separators.
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.1}")
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let scale: f64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1.0);
    let filters: Vec<&String> = args.iter().filter(|a| a.parse::<f64>().is_err()).collect();
    let target = Duration::from_secs_f64(0.15 * scale);

    let registry = Registry::default();
    let accept = registry
        .accept(["json", "msgpack", "yaml", "raw", "text"])
        .unwrap();
    let small_value = small();
    let large_value = large();
    let small_json = python_json(&small_value);
    let large_json = python_json(&large_value);
    let small_text = String::from_utf8(small_json.clone()).unwrap();
    let large_text = String::from_utf8(large_json.clone()).unwrap();
    let small_label = format!("{} B", small_json.len());
    let large_label = format!("{:.0} KiB", large_json.len() as f64 / 1024.0);

    let mut rows = Vec::new();
    rows.extend(serializer_rows(
        &registry,
        &accept,
        &small_label,
        &small_value,
    ));
    rows.extend(serializer_rows(
        &registry,
        &accept,
        &large_label,
        &large_value,
    ));
    rows.extend(raw_text_rows(
        &registry,
        &accept,
        &small_label,
        &small_json,
        &small_text,
    ));
    rows.extend(raw_text_rows(
        &registry,
        &accept,
        &large_label,
        &large_json,
        &large_text,
    ));
    rows.extend(compressor_rows(&registry, &small_label, &small_json));
    rows.extend(compressor_rows(&registry, &large_label, &large_json));
    rows.retain(|r| filters.iter().all(|f| r.name.contains(f.as_str())));

    println!(
        "codec: encode+decode / compress+decompress; messages: {} bytes of JSON ({:?}) and {} \
         bytes ({} records); mimalloc; ~{:.0} ms per side, row and round; median of {ROUNDS} \
         rounds",
        small_json.len(),
        String::from_utf8_lossy(&small_json),
        large_json.len(),
        large_value.records.len(),
        target.as_secs_f64() * 1000.0,
    );

    // Calibrate: iterations so that the direct call takes about `target`.
    let mut iters = Vec::with_capacity(rows.len());
    for r in rows.iter_mut() {
        (r.ours)();
        let mut n = 1u64;
        loop {
            let (d, _) = time(&mut r.direct, n);
            if d >= target / 4 || n >= 1 << 30 {
                let per = d.as_secs_f64() / n as f64;
                iters.push(((target.as_secs_f64() / per) as u64).max(1));
                break;
            }
            n *= 2;
        }
    }

    let mut ours: Vec<Vec<(f64, f64)>> = vec![Vec::new(); rows.len()];
    let mut direct: Vec<Vec<(f64, f64)>> = vec![Vec::new(); rows.len()];
    for round in 0..ROUNDS {
        for (i, r) in rows.iter_mut().enumerate() {
            let n = iters[i];
            let measure = |f: &mut dyn FnMut() -> usize| {
                let (d, bytes) = time(f, n);
                let s = d.as_secs_f64();
                (n as f64 / s, bytes as f64 / s / 1e6)
            };
            if round % 2 == 0 {
                ours[i].push(measure(&mut r.ours));
                direct[i].push(measure(&mut r.direct));
            } else {
                direct[i].push(measure(&mut r.direct));
                ours[i].push(measure(&mut r.ours));
            }
        }
    }

    println!();
    println!(
        "| {:<34} | {:>12} | {:>9} | {:>12} | {:>11} | {:>11} |",
        "row", "ours ops/s", "ours MB/s", "direct ops/s", "direct MB/s", "ours/direct"
    );
    println!(
        "|{:-<36}|{:->14}|{:->11}|{:->14}|{:->13}|{:->13}|",
        "", "", "", "", "", ""
    );
    for (i, r) in rows.iter().enumerate() {
        let o_ops = median(ours[i].iter().map(|x| x.0).collect());
        let o_mb = median(ours[i].iter().map(|x| x.1).collect());
        let d_ops = median(direct[i].iter().map(|x| x.0).collect());
        let d_mb = median(direct[i].iter().map(|x| x.1).collect());
        // Ratio of the per-round ratios' median: less sensitive to a noisy round than a ratio
        // of medians.
        let ratio = median(
            ours[i]
                .iter()
                .zip(&direct[i])
                .map(|(o, d)| o.0 / d.0)
                .collect(),
        );
        println!(
            "| {:<34} | {:>12} | {:>9} | {:>12} | {:>11} | {:>11.2} |",
            r.name,
            fmt_rate(o_ops),
            fmt_rate(o_mb),
            fmt_rate(d_ops),
            fmt_rate(d_mb),
            ratio
        );
    }
    println!("\nops/s: one encode+decode or compress+decompress; ratio < 1: ours is slower.");
}
