//! Decompression bombs must never make the decompressor allocate past the limit.
//!
//! A counting global allocator records, for the current thread only, the largest single
//! allocation and the peak of live bytes while decompression runs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

use kombu_serializers::{Compressor, Error, Registry, ZlibCompressor};

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
