//! The [`Compressor`] trait and the compressors kombu ships: `zlib`, `bzip2`, `lzma`, `brotli` and `zstd`.
//!
//! Every `decompress` goes through [`read_bounded`], so the output buffer never grows past the
//! caller's limit.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;

use crate::error::{Error, Result};

/// Object-safe compressor.
pub trait Compressor: Send + Sync + std::fmt::Debug + 'static {
    /// Canonical alias, e.g. `"zlib"`.
    fn name(&self) -> &str;

    /// Every alias, e.g. `["zlib", "gzip"]`.
    fn aliases(&self) -> &[&'static str];

    /// The MIME type written to the `compression` header, e.g. `"application/x-gzip"`.
    fn content_type(&self) -> &str;

    /// Compresses `data`.
    fn compress(&self, data: &[u8]) -> Result<Vec<u8>>;

    /// Decompresses `data`. Fails with [`Error::TooLarge`] when the output would exceed `limit`
    /// bytes (never allocates past it).
    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>>;
}

/// Content type that kombu writes to the `compression` header for zlib.
pub const ZLIB_CONTENT_TYPE: &str = "application/x-gzip";

/// Compression level kombu (Python's `zlib.compress` default) uses.
const ZLIB_LEVEL: u32 = 6;

/// kombu's `zlib` compression (aliases `zlib` and `gzip`, header value `application/x-gzip`).
///
/// Despite the `gzip` alias and content type this is a zlib stream (RFC 1950, header `78 9c`),
/// not the gzip file format, compressed at level 6 like Python's `zlib.compress`. flate2 is built
/// on C zlib (the workspace enables its `zlib` feature), so the bytes are the same as Python's;
/// flate2's default backend, miniz_oxide, writes different (valid) streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZlibCompressor;

impl Compressor for ZlibCompressor {
    fn name(&self) -> &str {
        "zlib"
    }

    fn aliases(&self) -> &[&'static str] {
        &["zlib", "gzip"]
    }

    fn content_type(&self) -> &str {
        ZLIB_CONTENT_TYPE
    }

    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        let wrap = |source| Error::Compress {
            compression: self.name().to_owned(),
            source,
        };
        let mut encoder = ZlibEncoder::new(
            Vec::with_capacity(data.len() / 2 + 16),
            Compression::new(ZLIB_LEVEL),
        );
        encoder.write_all(data).map_err(wrap)?;
        encoder.finish().map_err(wrap)
    }

    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>> {
        read_bounded(ZlibDecoder::new(data), limit, self.name())
    }
}

/// Content type that kombu writes to the `compression` header for bzip2.
pub const BZIP2_CONTENT_TYPE: &str = "application/x-bz2";

/// Content type that kombu writes to the `compression` header for lzma (an XZ container).
pub const LZMA_CONTENT_TYPE: &str = "application/x-lzma";

/// Content type that kombu writes to the `compression` header for brotli.
pub const BROTLI_CONTENT_TYPE: &str = "application/x-brotli";

/// Content type that kombu writes to the `compression` header for zstd.
pub const ZSTD_CONTENT_TYPE: &str = "application/zstd";

/// Block size Python's `bz2.compress` uses by default (`compresslevel=9`).
const BZIP2_LEVEL: u32 = 9;

/// Preset Python's `lzma.compress` uses by default.
const XZ_PRESET: u32 = 6;

/// Most memory the XZ decoder (the C library's dictionary and state, outside the output buffer)
/// may use. Every `xz`/`lzma.compress` preset up to `-9e` (64 MiB dictionary) fits; a hostile
/// header asking for a larger dictionary is refused instead of allocated.
const XZ_DECODER_MEMLIMIT: u64 = 128 * 1024 * 1024;

/// Quality Python's `brotli.compress` uses by default.
const BROTLI_QUALITY: i32 = 11;

/// Window (log2) Python's `brotli.compress` uses by default.
const BROTLI_LGWIN: i32 = 22;

/// Level Python's `zstandard.ZstdCompressor()` uses by default.
const ZSTD_LEVEL: i32 = 3;

/// kombu's `bzip2` compression (aliases `bzip2` and `bzip`, header value `application/x-bz2`).
///
/// A bzip2 stream (`BZh9...`) at block size 9, like Python's `bz2.compress`. Decompression
/// accepts concatenated streams, as `bz2.decompress` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bzip2Compressor;

impl Compressor for Bzip2Compressor {
    fn name(&self) -> &str {
        "bzip2"
    }

    fn aliases(&self) -> &[&'static str] {
        &["bzip2", "bzip"]
    }

    fn content_type(&self) -> &str {
        BZIP2_CONTENT_TYPE
    }

    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        let wrap = |source| Error::Compress {
            compression: self.name().to_owned(),
            source,
        };
        let mut encoder = bzip2::write::BzEncoder::new(
            Vec::with_capacity(data.len() / 2 + 64),
            bzip2::Compression::new(BZIP2_LEVEL),
        );
        encoder.write_all(data).map_err(wrap)?;
        encoder.finish().map_err(wrap)
    }

    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>> {
        read_bounded(bzip2::read::MultiBzDecoder::new(data), limit, self.name())
    }
}

/// kombu's `lzma` compression (aliases `lzma` and `xz`, header value `application/x-lzma`).
///
/// Despite the name this is the XZ container (magic `fd 37 7a 58 5a 00`), preset 6 with a
/// CRC64 check, like Python's `lzma.compress` defaults. Decompression accepts what
/// `lzma.decompress` does by default: XZ (concatenated streams too) or legacy `.lzma`. The
/// decoder's own memory (its dictionary) is capped at 128 MiB, enough for every preset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LzmaCompressor;

impl Compressor for LzmaCompressor {
    fn name(&self) -> &str {
        "lzma"
    }

    fn aliases(&self) -> &[&'static str] {
        &["lzma", "xz"]
    }

    fn content_type(&self) -> &str {
        LZMA_CONTENT_TYPE
    }

    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        let wrap = |source| Error::Compress {
            compression: self.name().to_owned(),
            source,
        };
        let stream =
            liblzma::stream::Stream::new_easy_encoder(XZ_PRESET, liblzma::stream::Check::Crc64)
                .map_err(|e| wrap(e.into()))?;
        let mut encoder =
            liblzma::write::XzEncoder::new_stream(Vec::with_capacity(data.len() / 2 + 64), stream);
        encoder.write_all(data).map_err(wrap)?;
        encoder.finish().map_err(wrap)
    }

    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>> {
        let stream = liblzma::stream::Stream::new_auto_decoder(
            XZ_DECODER_MEMLIMIT,
            liblzma::stream::CONCATENATED,
        )
        .map_err(|e| Error::Decompress {
            compression: self.name().to_owned(),
            source: e.into(),
        })?;
        read_bounded(
            liblzma::read::XzDecoder::new_stream(data, stream),
            limit,
            self.name(),
        )
    }
}

/// kombu's `brotli` compression (alias `brotli`, header value `application/x-brotli`).
///
/// A raw brotli stream at quality 11 with a 2^22-byte window, like Python's `brotli.compress`
/// defaults (quality 11 is slow for large bodies, but it is what kombu produces). The decoder
/// allocates its window (at most 16 MiB, 4 MiB for Python's default) besides the output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrotliCompressor;

impl Compressor for BrotliCompressor {
    fn name(&self) -> &str {
        "brotli"
    }

    fn aliases(&self) -> &[&'static str] {
        &["brotli"]
    }

    fn content_type(&self) -> &str {
        BROTLI_CONTENT_TYPE
    }

    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        let params = brotli::enc::BrotliEncoderParams {
            quality: BROTLI_QUALITY,
            lgwin: BROTLI_LGWIN,
            ..Default::default()
        };
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut input = data;
        brotli::enc::BrotliCompress(&mut input, &mut out, &params).map_err(|source| {
            Error::Compress {
                compression: self.name().to_owned(),
                source,
            }
        })?;
        Ok(out)
    }

    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>> {
        read_bounded(
            brotli::Decompressor::new(data, 16 * 1024),
            limit,
            self.name(),
        )
    }
}

/// kombu's `zstd` compression (aliases `zstd` and `zstandard`, header value `application/zstd`).
///
/// One Zstandard frame (magic `28 b5 2f fd`) at level 3 with the content size in the frame
/// header, like Python's `zstandard.ZstdCompressor().compress` (whose `decompress` requires that
/// size). Decompression accepts concatenated frames; the decoder refuses windows over 128 MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZstdCompressor;

impl Compressor for ZstdCompressor {
    fn name(&self) -> &str {
        "zstd"
    }

    fn aliases(&self) -> &[&'static str] {
        &["zstd", "zstandard"]
    }

    fn content_type(&self) -> &str {
        ZSTD_CONTENT_TYPE
    }

    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        zstd::bulk::compress(data, ZSTD_LEVEL).map_err(|source| Error::Compress {
            compression: self.name().to_owned(),
            source,
        })
    }

    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>> {
        let decoder =
            zstd::stream::read::Decoder::with_buffer(data).map_err(|source| Error::Decompress {
                compression: self.name().to_owned(),
                source,
            })?;
        read_bounded(decoder, limit, self.name())
    }
}

/// Reads a decompressing reader to the end, failing with [`Error::TooLarge`] as soon as more
/// than `limit` bytes come out. The output buffer never grows past `limit` bytes, so a
/// decompression bomb cannot make it allocate more than that.
pub(crate) fn read_bounded<R: Read>(reader: R, limit: usize, compression: &str) -> Result<Vec<u8>> {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut reader = reader.take(cap);
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(Error::Decompress {
                    compression: compression.to_owned(),
                    source,
                });
            }
        };
        let needed = out.len().saturating_add(n);
        if needed > limit {
            return Err(Error::TooLarge {
                compression: compression.to_owned(),
                limit,
            });
        }
        if needed > out.capacity() {
            // Grow geometrically, but never beyond the limit.
            let target = needed.max(out.capacity().saturating_mul(2)).min(limit);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    Ok(out)
}
