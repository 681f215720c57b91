use std::io::Write;

use super::unhex;
use crate::{Compressor, DEFAULT_MAX_DECOMPRESSED_SIZE, Error, Registry, ZlibCompressor};

#[test]
fn metadata_and_lookup() {
    assert_eq!(ZlibCompressor.name(), "zlib");
    assert_eq!(ZlibCompressor.aliases(), &["zlib", "gzip"]);
    assert_eq!(ZlibCompressor.content_type(), "application/x-gzip");
    let registry = Registry::default();
    for key in ["zlib", "gzip", "application/x-gzip"] {
        assert_eq!(registry.compressor(key).unwrap().name(), "zlib", "{key}");
    }
    let err = registry.compressor("lz4").unwrap_err();
    assert!(matches!(err, Error::UnknownCompression { ref name } if name == "lz4"));
    assert_eq!(
        err.to_string(),
        "no compression named or typed \"lz4\" is registered"
    );
}

#[test]
fn output_matches_python_zlib_compress_level_6() {
    // base64(zlib.compress(b'{"hello": "compressed"}', 6))
    //   == "eJyrVspIzcnJV7JSUErOzy0oSi0uTk1RqgUAXtcIJA=="
    let out = ZlibCompressor
        .compress(br#"{"hello": "compressed"}"#)
        .unwrap();
    assert_eq!(
        out,
        unhex("789cab56ca48cdc9c957b252504acecf2d284a2d2e4e4d51aa05005ed70824")
    );
    // zlib.compress(b'{"hello": "world", "n": 1}', 6).hex()
    let out = ZlibCompressor
        .compress(br#"{"hello": "world", "n": 1}"#)
        .unwrap();
    assert_eq!(
        out,
        unhex("789cab56ca48cdc9c957b252502acf2fca4951d25150ca03f20c6b016ecb07a0")
    );
    // zlib.compress(b'', 6).hex()
    assert_eq!(
        ZlibCompressor.compress(b"").unwrap(),
        unhex("789c030000000001")
    );
}

#[test]
fn registry_compress_returns_the_content_type_header() {
    let registry = Registry::default();
    for alias in ["zlib", "gzip", "application/x-gzip"] {
        let (body, header) = registry.compress(b"payload", alias).unwrap();
        assert_eq!(header, "application/x-gzip");
        assert_eq!(&body[..2], &[0x78, 0x9c], "a zlib stream, not gzip");
        let back = registry.decompress(&body, &header, 1024).unwrap();
        assert_eq!(&back[..], b"payload");
    }
}

#[test]
fn decompresses_python_output() {
    // zlib.compress(bytes(range(256)) * 40, 6).hex()
    let python = unhex(concat!(
        "789c6360646266616563e7e0e4e2e6e1e5e3171014121611151397909492969195935750545256515553",
        "d7d0d4d2d6d1d5d33730343236313533b7b0b4b2b6b1b5b37770747276717573f7f0f4f2f6f1f5f30f08",
        "0c0a0e090d0b8f888c8a8e898d8b4f484c4a4e494d4bcfc8cccacec9cdcb2f282c2a2e292d2bafa8acaa",
        "aea9adab6f686c6a6e696d6befe8eceaeee9edeb9f3071d2e42953a74d9f3173d6ec3973e7cd5fb070d1",
        "e2254b972d5fb172d5ea356bd7addfb071d3e62d5bb76ddfb173d7ee3d7bf7ed3f70f0d0e123478f1d3f",
        "71f2d4e93367cf9dbf70f1d2e52b57af5dbf71f3d6ed3b77efdd7ff0f0d1e3274f9f3d7ff1f2d5eb376f",
        "dfbdfff0f1d3e72f5fbf7dfff1f3d7ef3f7ffffd6718f5ffa8ff47fd3feaff51ff8ffa7fd4ffa3fe1ff5",
        "ffa8ff47fd3feaff51ff8ffa7fd4ffa3fe1ff5ffa8ff47fd3feaff51ff8ffa7fd4ffa3fe1ff5ffa8ff47",
        "fd3feaff51ff8ffa7fd4ffa3fe1ff5ffa8ff47fd3feaff51ff8ffa7f08fa1f00f475ed1e",
    ));
    let expected: Vec<u8> = (0..=255u8).cycle().take(256 * 40).collect();
    assert_eq!(
        ZlibCompressor.decompress(&python, 1 << 20).unwrap(),
        expected
    );
}

#[test]
fn round_trips_larger_input() {
    let data: Vec<u8> = (0..200_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let compressed = ZlibCompressor.compress(&data).unwrap();
    assert!(compressed.len() < data.len());
    assert_eq!(
        ZlibCompressor.decompress(&compressed, data.len()).unwrap(),
        data
    );
}

#[test]
fn exact_limit_is_allowed_one_more_byte_is_not() {
    let data = vec![7u8; 100_000];
    let compressed = ZlibCompressor.compress(&data).unwrap();
    assert_eq!(
        ZlibCompressor.decompress(&compressed, 100_000).unwrap(),
        data
    );
    let err = ZlibCompressor.decompress(&compressed, 99_999).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { ref compression, limit: 99_999 } if compression == "zlib")
    );
    assert_eq!(
        err.to_string(),
        "zlib decompressed output exceeds the limit of 99999 bytes"
    );
    // Empty output with a zero limit.
    let empty = ZlibCompressor.compress(b"").unwrap();
    assert_eq!(ZlibCompressor.decompress(&empty, 0).unwrap(), b"");
    assert!(matches!(
        ZlibCompressor.decompress(&ZlibCompressor.compress(b"x").unwrap(), 0),
        Err(Error::TooLarge { limit: 0, .. })
    ));
}

/// 200 MiB of zeros, compressed as a stream (without holding the 200 MiB in memory).
fn zero_bomb(mib: usize) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        enc.write_all(&chunk).unwrap();
    }
    enc.finish().unwrap()
}

#[test]
fn bomb_is_refused_at_the_limit() {
    let bomb = zero_bomb(200);
    assert!(bomb.len() < 1 << 20, "bomb is {} bytes", bomb.len());
    let limit = 1 << 20;
    let err = ZlibCompressor.decompress(&bomb, limit).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit: l, .. } if l == limit),
        "{err:?}"
    );
    let err = Registry::default()
        .decompress(&bomb, "application/x-gzip", DEFAULT_MAX_DECOMPRESSED_SIZE)
        .unwrap_err();
    assert!(matches!(
        err,
        Error::TooLarge {
            limit: DEFAULT_MAX_DECOMPRESSED_SIZE,
            ..
        }
    ));
}

#[test]
fn corrupt_input_is_an_error_not_a_panic() {
    let good = ZlibCompressor.compress(&[42u8; 5000]).unwrap();
    // Not a zlib stream at all.
    let err = ZlibCompressor
        .decompress(b"definitely not zlib", 1 << 20)
        .unwrap_err();
    assert!(
        matches!(err, Error::Decompress { ref compression, .. } if compression == "zlib"),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("zlib decompression failed"),
        "{err}"
    );
    // Truncated stream.
    let err = ZlibCompressor
        .decompress(&good[..good.len() - 6], 1 << 20)
        .unwrap_err();
    assert!(matches!(err, Error::Decompress { .. }), "{err:?}");
    // Corrupted checksum.
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let err = ZlibCompressor.decompress(&bad, 1 << 20).unwrap_err();
    assert!(matches!(err, Error::Decompress { .. }), "{err:?}");
    // Empty input (Python: zlib.error).
    let err = ZlibCompressor.decompress(b"", 1 << 20).unwrap_err();
    assert!(matches!(err, Error::Decompress { .. }), "{err:?}");
}

/// Python kombu compresses with `zlib.compress(body)` (C zlib, level 6). flate2's default
/// backend, miniz_oxide, produces different (valid) streams even for 100 bytes, so the workspace
/// builds flate2 on the C zlib (feature `zlib`, the system libz), which writes the same bytes.
///
/// `tests/data/zlib_python_64k.bin` is `zlib.compress(gen(65536))` from CPython 3.11 with zlib
/// 1.2.13, where `gen` is (the same as [`python_like_records`]):
///
/// ```python
/// WORDS = ["alpha", "beta", "gamma", "delta", "eu-west", "us-east", "retry", "urgent"]
/// def gen(n):
///     state = 0x9E3779B97F4A7C15
///     M = (1 << 64) - 1
///     def nxt():
///         nonlocal state
///         state = (state * 6364136223846793005 + 1442695040888963407) & M
///         return state >> 33
///     out = bytearray()
///     i = 0
///     while len(out) < n:
///         user = nxt() % 5000; score = nxt() % 100000; token = nxt(); word = WORDS[nxt() % 8]
///         out += ('{"id": %d, "user": "user%d", "score": %d, "token": "%08x", "tags": ["%s"]}, '
///                 % (i, user, score, token, word)).encode()
///         i += 1
///     return bytes(out[:n])
/// ```
#[test]
fn zlib_output_is_byte_identical_to_python_for_64_kib() {
    let input = python_like_records(65536);
    assert_eq!(
        &input[..86],
        br#"{"id": 0, "user": "user1944", "score": 72678, "token": "59e24825", "tags": ["beta"]}, "#
    );
    let python: &[u8] = include_bytes!("../../tests/data/zlib_python_64k.bin");
    assert_eq!(python.len(), 12586);
    let ours = ZlibCompressor.compress(&input).unwrap();
    assert!(
        ours == python,
        "zlib output differs from Python's zlib.compress"
    );
    assert_eq!(
        ZlibCompressor
            .decompress(python, DEFAULT_MAX_DECOMPRESSED_SIZE)
            .unwrap(),
        input
    );
}

/// The same for 1 MiB, against the length and FNV-1a-64 hash of Python's output
/// (`zlib.compress(gen(1 << 20))`: 195,854 bytes), so the vector need not be stored.
#[test]
fn zlib_output_is_byte_identical_to_python_for_1_mib() {
    let ours = ZlibCompressor
        .compress(&python_like_records(1 << 20))
        .unwrap();
    let fnv1a = ours.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    assert_eq!((ours.len(), fnv1a), (195_854, 0x0ecf_02e1_92b6_d9e4));
}

/// `n` bytes of JSON-like records with pseudo-random fields; the same bytes as `gen(n)` in the
/// Python script quoted in [`zlib_output_is_byte_identical_to_python_for_64_kib`].
fn python_like_records(n: usize) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "alpha", "beta", "gamma", "delta", "eu-west", "us-east", "retry", "urgent",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let mut out = Vec::with_capacity(n + 128);
    let mut i = 0u64;
    while out.len() < n {
        let user = next() % 5000;
        let score = next() % 100_000;
        let token = next();
        let word = WORDS[(next() % 8) as usize];
        write!(
            out,
            r#"{{"id": {i}, "user": "user{user}", "score": {score}, "token": "{token:08x}", "tags": ["{word}"]}}, "#
        )
        .unwrap();
        i += 1;
    }
    out.truncate(n);
    out
}
