//! Tests for the `bzip2`, `lzma`, `brotli` and `zstd` compressors. Python fixtures were produced
//! by CPython 3.11's `bz2` and `lzma` modules (`.hex()` of the output), with their defaults.

use std::io::Write;

use super::unhex;
use crate::{
    BrotliCompressor, Bzip2Compressor, Compressor, DEFAULT_MAX_DECOMPRESSED_SIZE, Error,
    LzmaCompressor, Registry, ZstdCompressor,
};

/// A compressor with its name, aliases, content type and output magic.
type Entry = (
    &'static dyn Compressor,
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static [u8],
);

/// Every new compressor with its name, aliases, content type and output magic (brotli has
/// none: a raw stream).
fn all() -> [Entry; 4] {
    [
        (
            &Bzip2Compressor,
            "bzip2",
            &["bzip2", "bzip"],
            "application/x-bz2",
            b"BZh9",
        ),
        (
            &LzmaCompressor,
            "lzma",
            &["lzma", "xz"],
            "application/x-lzma",
            &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00],
        ),
        (
            &BrotliCompressor,
            "brotli",
            &["brotli"],
            "application/x-brotli",
            b"",
        ),
        (
            &ZstdCompressor,
            "zstd",
            &["zstd", "zstandard"],
            "application/zstd",
            &[0x28, 0xb5, 0x2f, 0xfd],
        ),
    ]
}

/// `mib` MiB of zeros compressed with `name`, streamed (the zeros are never held at once).
fn zero_bomb(name: &str, mib: usize) -> Vec<u8> {
    let chunk = vec![0u8; 1 << 20];
    match name {
        "bzip2" => {
            let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
            for _ in 0..mib {
                enc.write_all(&chunk).unwrap();
            }
            enc.finish().unwrap()
        }
        "lzma" => {
            // Preset 0: the bundled C library is built unoptimised in test profiles, and preset 6
            // takes ~20 s over 200 MiB there. The decoder's work is the same.
            let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 0);
            for _ in 0..mib {
                enc.write_all(&chunk).unwrap();
            }
            enc.finish().unwrap()
        }
        "brotli" => {
            let mut out = Vec::new();
            {
                let mut enc = brotli::CompressorWriter::new(&mut out, 64 * 1024, 5, 22);
                for _ in 0..mib {
                    enc.write_all(&chunk).unwrap();
                }
                enc.flush().unwrap();
            }
            out
        }
        "zstd" => {
            let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            for _ in 0..mib {
                enc.write_all(&chunk).unwrap();
            }
            enc.finish().unwrap()
        }
        other => panic!("no bomb for {other}"),
    }
}

#[test]
fn metadata_and_lookup_by_every_alias_and_content_type() {
    let registry = Registry::default();
    for (c, name, aliases, content_type, _) in all() {
        assert_eq!(c.name(), name);
        assert_eq!(c.aliases(), aliases);
        assert_eq!(c.content_type(), content_type);
        for key in aliases.iter().copied().chain([content_type]) {
            let found = registry.compressor(key).unwrap();
            assert_eq!(found.name(), name, "{key}");
            assert_eq!(found.content_type(), content_type, "{key}");
        }
        // Compressing by any alias writes the content type, never the alias.
        for alias in aliases.iter().copied().chain([content_type]) {
            let (body, header) = registry.compress(b"payload", alias).unwrap();
            assert_eq!(header, content_type);
            let back = registry.decompress(&body, &header, 1024).unwrap();
            assert_eq!(&back[..], b"payload");
        }
    }
    assert_eq!(
        crate::known("application/x-bz2"),
        std::borrow::Cow::Borrowed("application/x-bz2")
    );
}

#[test]
fn output_starts_with_the_container_magic() {
    for (c, name, _, _, magic) in all() {
        for input in [&b""[..], b"x", br#"{"hello": "compressed"}"#] {
            let out = c.compress(input).unwrap();
            assert!(out.starts_with(magic), "{name}: {out:02x?}");
            assert_eq!(c.decompress(&out, input.len()).unwrap(), input, "{name}");
        }
    }
}

#[test]
fn zstd_frame_carries_the_content_size() {
    // Python's zstandard.ZstdDecompressor().decompress refuses frames without it.
    let data = vec![b'z'; 12_345];
    let out = ZstdCompressor.compress(&data).unwrap();
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(&out).unwrap(),
        Some(12_345)
    );
    let empty = ZstdCompressor.compress(b"").unwrap();
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(&empty).unwrap(),
        Some(0)
    );
}

#[test]
fn round_trips_larger_input() {
    let data: Vec<u8> = (0..50_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    for (c, name, ..) in all() {
        let compressed = c.compress(&data).unwrap();
        assert!(compressed.len() < data.len(), "{name}");
        assert_eq!(
            c.decompress(&compressed, data.len()).unwrap(),
            data,
            "{name}"
        );
    }
}

#[test]
fn bzip2_output_matches_python_bz2_compress() {
    // bz2.compress(b'{"hello": "compressed"}').hex()
    assert_eq!(
        Bzip2Compressor
            .compress(br#"{"hello": "compressed"}"#)
            .unwrap(),
        unhex(concat!(
            "425a6839314159265359465c8dd500000a9980500000100e46d80a2000314c00014c08f44f53",
            "285331ae105dec25f889ff705dc914e1424119723754",
        ))
    );
    // bz2.compress(b'').hex()
    assert_eq!(
        Bzip2Compressor.compress(b"").unwrap(),
        unhex("425a683917724538509000000000")
    );
}

#[test]
fn lzma_output_matches_python_lzma_compress() {
    // lzma.compress(b'{"hello": "compressed"}').hex()
    assert_eq!(
        LzmaCompressor
            .compress(br#"{"hello": "compressed"}"#)
            .unwrap(),
        unhex(concat!(
            "fd377a585a000004e6d6b4460200210116000000742fe5a30100167b2268656c6c6f223a2022",
            "636f6d70726573736564227d0000118b98b466c1c49f00012f17810849b11fb6f37d0100000000",
            "04595a",
        ))
    );
    // lzma.compress(b'').hex()
    assert_eq!(
        LzmaCompressor.compress(b"").unwrap(),
        unhex("fd377a585a000004e6d6b446000000001cdf44211fb6f37d010000000004595a")
    );
}

#[test]
fn decompresses_python_output() {
    let expected: Vec<u8> = (0..=255u8).cycle().take(256 * 40).collect();
    // bz2.compress(bytes(range(256)) * 40).hex()
    let bz2 = unhex(concat!(
        "425a6839314159265359fbeac7bc000013ffffffffffffffffffffffffffffffffffffffffffffff",
        "ffffffffffffffffffffffd003fe0000000126000980009800000000000000000000000000000000",
        "000000000000000000000000930004c0004c00000000000000000000000000000000000000000000",
        "00000000000049800260002600000000000000000000000000000000000000000000000000000000",
        "24c00130001300000000000000000000000000000000000000000000000000000000029555400000",
        "00000000000000000000000000000000000000000000000000000000001ff0980098089810981898",
        "2098289830983898409848985098589860986898709878988098889890989898a098a898b098b898",
        "c098c898d098d898e098e898f098f899009908991099189920992899309938994099489950995899",
        "60996899709978998099889990999899a099a899b099b899c099c899d099d899e099e899f099f89a",
        "009a089a109a189a209a289a309a389a409a489a509a589a609a689a709a789a809a889a909a989a",
        "a09aa89ab09ab89ac09ac89ad09ad89ae09ae89af09af89b009b089b109b189b209b289b309b389b",
        "409b489b509b589b609b689b709b789b809b889b909b989ba09ba89bb09bb89bc09bc89bd09bd89b",
        "e09be89bf09bf89c009c089c109c189c209c289c309c389c409c489c509c589c609c689c709c789c",
        "809c889c909c989ca09ca89cb09cb89cc09cc89cd09cd89ce09ce89cf09cf89d009d089d109d189d",
        "209d289d309d389d409d489d509d589d609d689d709d789d809d889d909d989da09da89db09db89d",
        "c09dc89dd09dd89de09de89df09df89e009e089e109e189e209e289e309e389e409e489e509e589e",
        "609e689e709e789e809e889e909e989ea09ea89eb09eb89ec09ec89ed09ed89ee09ee89ef09ef89f",
        "009f089f109f189f209f289f309f389f409f489f509f589f609f689f709f789f809f889f909f989f",
        "a09fa89fb09fb89fc09fc89fd09fd89fe09fe89ff09ff8bb9229c28487df563de0",
    ));
    assert_eq!(Bzip2Compressor.decompress(&bz2, 1 << 20).unwrap(), expected);
    // lzma.compress(bytes(range(256)) * 40).hex()
    let xz = unhex(concat!(
        "fd377a585a000004e6d6b4460200210116000000742fe5a3e027ff01135d00000052500a84f99bb2",
        "8021a969d627e03e065a5f048d53d404ba39570509c15524de9db871593160a19ff96f4973f2c8ea",
        "8cba1a8b29692180fe338366af466dec9e898a0b83f03c0e898e3fed5fe79e90d91cff32f4b2e039",
        "51b2d21415b4c571badb06e3799a9fbb38c1b000ac930baa0619031208155b9bc848f0322efe2da0",
        "87c8f0a4e0d251eb8d675692b24d84c5f18631df6a625bc2792dd9f73c73ba747407d83ca9562224",
        "a166f85a845f3067d2f64b492e7f20ebdbf8100e947877c73f6befb4cd95e26ff6446e06cf0b821a",
        "cbdb7af0578d98ff90c03ee6c1124175ee032896eb13fba728ccaf32bba40e25f258b0ded8561c66",
        "f0e21b3976f997ff8fa3c82ff4adf2db3831307ac0722a65a4000000958fe8b04b12619e0001af02",
        "805000000dbc3ad0b1c467fb020000000004595a",
    ));
    assert_eq!(LzmaCompressor.decompress(&xz, 1 << 20).unwrap(), expected);
    // (bz2.compress(b'abc') + bz2.compress(b'def')).hex(): bz2.decompress gives b'abcdef'.
    let two = unhex(concat!(
        "425a6839314159265359648cbb73000000010038002000219819846177245385090648cbb730",
        "425a6839314159265359423cb0f9000000010007002000219819846177245385090423cb0f90",
    ));
    assert_eq!(Bzip2Compressor.decompress(&two, 6).unwrap(), b"abcdef");
    assert!(matches!(
        Bzip2Compressor.decompress(&two, 5),
        Err(Error::TooLarge { limit: 5, .. })
    ));
    // (lzma.compress(b'abc') + lzma.compress(b'def')).hex(): lzma.decompress gives b'abcdef'.
    let two = unhex(concat!(
        "fd377a585a000004e6d6b4460200210116000000742fe5a301000261626300002776271a4a09d82c",
        "00011b030b2fb9101fb6f37d010000000004595a",
        "fd377a585a000004e6d6b4460200210116000000742fe5a301000264656600003a64f00bc421441b",
        "00011b030b2fb9101fb6f37d010000000004595a",
    ));
    assert_eq!(LzmaCompressor.decompress(&two, 6).unwrap(), b"abcdef");
    // lzma.compress(b'alone', format=lzma.FORMAT_ALONE).hex(): lzma.decompress accepts it.
    let alone = unhex("5d00008000ffffffffffffffff00309b0a4324d0b9addffffbd7a000");
    assert_eq!(LzmaCompressor.decompress(&alone, 100).unwrap(), b"alone");
}

#[test]
fn exact_limit_is_allowed_one_more_byte_is_not() {
    let data = vec![7u8; 100_000];
    for (c, name, ..) in all() {
        let compressed = c.compress(&data).unwrap();
        assert_eq!(c.decompress(&compressed, 100_000).unwrap(), data, "{name}");
        let err = c.decompress(&compressed, 99_999).unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { ref compression, limit: 99_999 } if compression == name),
            "{name}: {err:?}"
        );
        assert_eq!(
            super::chain(&err),
            format!("{name} decompressed output exceeds the limit of 99999 bytes")
        );
        let empty = c.compress(b"").unwrap();
        assert_eq!(c.decompress(&empty, 0).unwrap(), b"", "{name}");
        assert!(
            matches!(
                c.decompress(&c.compress(b"x").unwrap(), 0),
                Err(Error::TooLarge { limit: 0, .. })
            ),
            "{name}"
        );
    }
}

#[test]
fn bomb_is_refused_at_the_limit() {
    let limit = 1 << 20;
    for (c, name, _, content_type, _) in all() {
        let bomb = zero_bomb(name, 200);
        assert!(bomb.len() < 1 << 20, "{name} bomb is {} bytes", bomb.len());
        let err = c.decompress(&bomb, limit).unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { limit: l, ref compression } if l == limit && compression == name),
            "{name}: {err:?}"
        );
        let err = Registry::default()
            .decompress(&bomb, content_type, DEFAULT_MAX_DECOMPRESSED_SIZE)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    limit: DEFAULT_MAX_DECOMPRESSED_SIZE,
                    ..
                }
            ),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn corrupt_input_is_an_error_not_a_panic() {
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 13) as u8).collect();
    for (c, name, ..) in all() {
        let good = c.compress(&data).unwrap();
        let is_decompress_error = |r: crate::Result<Vec<u8>>| matches!(r, Err(Error::Decompress { ref compression, .. }) if compression == name);
        // Not compressed at all.
        let err = c
            .decompress(b"definitely not compressed", 1 << 20)
            .unwrap_err();
        assert!(
            super::chain(&err).starts_with(&format!("{name} decompression failed")),
            "{name}: {err}"
        );
        // Truncated.
        assert!(
            is_decompress_error(c.decompress(&good[..good.len() / 2], 1 << 20)),
            "{name}: truncated"
        );
        assert!(
            is_decompress_error(c.decompress(&good[..good.len() - 1], 1 << 20)),
            "{name}: last byte cut"
        );
        // Empty input.
        assert!(
            is_decompress_error(c.decompress(b"", 1 << 20)),
            "{name}: empty"
        );
        // Every single-byte corruption either fails cleanly or (where the format has no
        // checksum over that byte) decodes to something; it never panics.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x55;
            match c.decompress(&bad, 1 << 20) {
                Ok(_) | Err(Error::Decompress { .. }) | Err(Error::TooLarge { .. }) => {}
                Err(other) => panic!("{name}: unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn checksummed_formats_detect_corruption() {
    // bzip2 (block and stream CRC), xz (CRC64) and zstd (content size) reject a flipped
    // payload byte in the middle of the stream.
    let data = vec![42u8; 5000];
    for c in [
        &Bzip2Compressor as &dyn Compressor,
        &LzmaCompressor,
        &ZstdCompressor,
    ] {
        let mut bad = c.compress(&data).unwrap();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        let result = c.decompress(&bad, 1 << 20);
        assert!(
            !matches!(result, Ok(ref out) if *out == data),
            "{}: corruption went unnoticed",
            c.name()
        );
    }
}

#[test]
fn lzma_refuses_a_dictionary_over_the_decoder_memory_cap() {
    // Our own output for "hello" with the block header's LZMA2 dictionary byte raised from
    // 0x16 (8 MiB, preset 6) to 0x22 (512 MiB) and the header CRC32 fixed: valid XZ, but
    // decoding it would need more than the 128 MiB cap, so it is refused before allocating.
    let mut xz = LzmaCompressor.compress(b"hello").unwrap();
    assert_eq!(
        &xz[12..20],
        &[0x02, 0x00, 0x21, 0x01, 0x16, 0x00, 0x00, 0x00]
    );
    xz[16] = 0x22;
    let mut crc = flate2::Crc::new();
    crc.update(&xz[12..20]);
    xz[20..24].copy_from_slice(&crc.sum().to_le_bytes());
    let err = LzmaCompressor.decompress(&xz, 1 << 20).unwrap_err();
    assert!(
        matches!(err, Error::Decompress { ref compression, .. } if compression == "lzma"),
        "{err:?}"
    );
    assert!(super::chain(&err).contains("memory limit"), "{err}");
    // The same patch with the dictionary byte left at 8 MiB still decodes (the CRC is right).
    xz[16] = 0x16;
    let mut crc = flate2::Crc::new();
    crc.update(&xz[12..20]);
    xz[20..24].copy_from_slice(&crc.sum().to_le_bytes());
    assert_eq!(LzmaCompressor.decompress(&xz, 1 << 20).unwrap(), b"hello");
}

#[test]
fn zstd_decodes_concatenated_frames() {
    let mut two = ZstdCompressor.compress(b"abc").unwrap();
    two.extend(ZstdCompressor.compress(b"def").unwrap());
    assert_eq!(ZstdCompressor.decompress(&two, 6).unwrap(), b"abcdef");
    assert!(matches!(
        ZstdCompressor.decompress(&two, 5),
        Err(Error::TooLarge { limit: 5, .. })
    ));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Every registered compressor gives back exactly what it compressed when the bound is the
    /// data's own size, and refuses with `TooLarge` when the bound is one byte less.
    #[test]
    fn every_compressor_round_trips_at_the_bound(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
        repeat in 1usize..32,
    ) {
        // Repeated data compresses well, so the output is many times the input: the case the
        // bound is for.
        let data = data.repeat(repeat);
        let registry = crate::Registry::default();
        for compressor in registry.compressors() {
            let packed = compressor.compress(&data).expect("compress");
            let unpacked = compressor.decompress(&packed, data.len());
            proptest::prop_assert_eq!(unpacked.as_deref().ok(), Some(&data[..]), "{}", compressor.name());
            if !data.is_empty() {
                let refused = compressor.decompress(&packed, data.len() - 1);
                proptest::prop_assert!(
                    matches!(refused, Err(crate::Error::TooLarge { .. })),
                    "{} at {} - 1 bytes: {:?}", compressor.name(), data.len(), refused.map(|v| v.len())
                );
            }
        }
    }
}
