//! Decompression bombs must never make the decompressor allocate past the limit.
//!
//! Covers every compressor `Registry::default()` ships (zlib, bzip2, lzma, brotli, zstd).
//!
//! A counting global allocator records, for the current thread only, the largest single
//! allocation and the peak of live bytes while decompression runs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

use kombu_serializers::{
    BrotliCompressor, Bzip2Compressor, Compressor, Error, LzmaCompressor, Registry, ZlibCompressor,
    ZstdCompressor,
};

struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(grow: isize, request: usize) {
    let _ = TRACKING.try_with(|tracking| {
        if tracking.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + grow);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
            LARGEST.with(|m| m.set(m.get().max(request)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping only
// touches const-initialised thread-local `Cell`s, which never allocate.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as isize, layout.size());
        // SAFETY: forwarded unchanged; the caller upholds GlobalAlloc's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as isize, layout.size());
        // SAFETY: forwarded unchanged; the caller upholds GlobalAlloc's contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-(layout.size() as isize), 0);
        // SAFETY: forwarded unchanged; the caller upholds GlobalAlloc's contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size as isize - layout.size() as isize, new_size);
        // SAFETY: forwarded unchanged; the caller upholds GlobalAlloc's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns its result with (largest single allocation, peak live bytes).
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, isize) {
    LIVE.with(|c| c.set(0));
    PEAK.with(|c| c.set(0));
    LARGEST.with(|c| c.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    (out, LARGEST.with(Cell::get), PEAK.with(Cell::get))
}

fn zeros_compressed(mib: usize) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        enc.write_all(&chunk).unwrap();
    }
    enc.finish().unwrap()
}

const MIB: usize = 1 << 20;
/// Room for the inflater's own state (window, tables) on top of the output buffer.
const SLACK: isize = 256 * 1024;

#[test]
fn bomb_never_allocates_past_the_limit() {
    let bomb = zeros_compressed(200);
    let (result, largest, peak) = measure(|| ZlibCompressor.decompress(&bomb, MIB));
    let err = result.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit, .. } if limit == MIB),
        "{err:?}"
    );
    assert!(peak > 0, "the counting allocator saw nothing");
    assert!(
        largest <= MIB,
        "largest single allocation was {largest} bytes"
    );
    assert!(peak <= MIB as isize + SLACK, "peak live bytes were {peak}");
}

#[test]
fn exact_limit_output_fits_in_the_limit() {
    let data = vec![0u8; MIB];
    let compressed = ZlibCompressor.compress(&data).unwrap();
    let (result, largest, peak) =
        measure(|| Registry::default().decompress(&compressed, "gzip", MIB));
    assert_eq!(result.unwrap().len(), MIB);
    assert!(peak > 0, "the counting allocator saw nothing");
    assert!(
        largest <= MIB,
        "largest single allocation was {largest} bytes"
    );
    assert!(peak <= MIB as isize + SLACK, "peak live bytes were {peak}");
}

/// `mib` MiB of zeros compressed with `name`, streamed (the zeros are never held at once).
fn zero_bomb(name: &str, mib: usize) -> Vec<u8> {
    let chunk = vec![0u8; MIB];
    match name {
        "bzip2" => {
            let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
            for _ in 0..mib {
                enc.write_all(&chunk).unwrap();
            }
            enc.finish().unwrap()
        }
        "lzma" => {
            // Preset 0 keeps the (unoptimised in tests) C encoder fast; decoding is the same.
            let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 0);
            for _ in 0..mib {
                enc.write_all(&chunk).unwrap();
            }
            enc.finish().unwrap()
        }
        "brotli" => {
            let mut out = Vec::new();
            {
                // Python's default window (2^22).
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

/// Decompresses a 200 MiB bomb against a 1 MiB limit; the output buffer must stay within the
/// limit, and everything the decoder allocates through Rust's allocator within
/// `decoder_state` more. (liblzma and libzstd allocate their own state with C `malloc`, which
/// this allocator does not see; their output buffer is still ours and is counted.)
fn check_bomb(c: &dyn Compressor, decoder_state: isize) {
    let bomb = zero_bomb(c.name(), 200);
    assert!(
        bomb.len() < MIB,
        "{} bomb is {} bytes",
        c.name(),
        bomb.len()
    );
    let (result, largest, peak) = measure(|| c.decompress(&bomb, MIB));
    let err = result.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit, ref compression } if limit == MIB && compression == c.name()),
        "{err:?}"
    );
    eprintln!("{}: largest {largest}, peak {peak}", c.name());
    assert!(peak > 0, "the counting allocator saw nothing");
    assert!(
        largest as isize <= (MIB as isize).max(decoder_state),
        "{}: largest single allocation was {largest} bytes",
        c.name()
    );
    assert!(
        peak <= MIB as isize + decoder_state + SLACK,
        "{}: peak live bytes were {peak}",
        c.name()
    );

    // Output of exactly the limit is accepted within the same bound; one byte less is refused.
    let exact = c.compress(&vec![0u8; MIB]).unwrap();
    let (result, _, peak) = measure(|| c.decompress(&exact, MIB));
    assert_eq!(result.unwrap().len(), MIB);
    assert!(
        peak <= MIB as isize + decoder_state + SLACK,
        "{}: peak live bytes were {peak}",
        c.name()
    );
    assert!(matches!(
        c.decompress(&exact, MIB - 1),
        Err(Error::TooLarge { limit, .. }) if limit == MIB - 1
    ));
}

#[test]
fn bzip2_bomb_never_allocates_past_the_limit() {
    // libbz2-rs-sys allocates its block array in Rust: 4 bytes per byte of a 900k block.
    check_bomb(&Bzip2Compressor, 3_600_000);
}

#[test]
fn lzma_bomb_never_allocates_past_the_limit() {
    check_bomb(&LzmaCompressor, 0);
}

#[test]
fn brotli_bomb_never_allocates_past_the_limit() {
    // The brotli decoder's ring buffer is its window: 4 MiB (2^22) for this bomb.
    check_bomb(&BrotliCompressor, 4 * MIB as isize + 1024);
}

#[test]
fn zstd_bomb_never_allocates_past_the_limit() {
    check_bomb(&ZstdCompressor, 0);
}
