//! The `zlib` compressor.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;

use crate::error::{Error, Result};
use crate::registry::Compressor;

/// Content type that kombu writes to the `compression` header for zlib.
pub const ZLIB_CONTENT_TYPE: &str = "application/x-gzip";

/// Compression level kombu (Python's `zlib.compress` default) uses.
const ZLIB_LEVEL: u32 = 6;

/// kombu's `zlib` compression (aliases `zlib` and `gzip`, header value `application/x-gzip`).
///
/// Despite the `gzip` alias and content type this is a zlib stream (RFC 1950, header `78 9c`),
/// not the gzip file format, compressed at level 6 like Python's `zlib.compress`.
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
