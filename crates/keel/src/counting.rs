//! The process's allocator: mimalloc, counting the bytes the program holds, for INFO memory's
//! `used_memory`.
//!
//! mimalloc's own figure for this (its committed memory) is no use on Linux: it commits each
//! 1 GiB arena whole when it reserves it, so it said 1.00G for an empty server and for one of a
//! million keys alike. Its exact counters exist only in its debug builds.
//!
//! Every thread counts into a counter of its own (1,024 of them, each on its own cache line),
//! with a plain load and store: no locked instruction and no cache line shared between threads
//! on the allocation path. A byte freed by another thread than the one that allocated it goes
//! from that thread's counter, so a counter alone can be negative; their sum is exact. Threads
//! past the 1,024th share one counter, with an atomic add.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering::Relaxed};

use mimalloc::MiMalloc;

/// The alignment every block of mimalloc's has: its size classes are whole words and its
/// pages start aligned to 16 bytes (`MI_MAX_ALIGN_SIZE`).
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc, counting (see the module's comment).
pub struct Counting;

const COUNTERS: usize = 1024;

#[repr(align(64))]
struct Counter(AtomicIsize);

static COUNTERS_OF_THREADS: [Counter; COUNTERS] =
    [const { Counter(AtomicIsize::new(0)) }; COUNTERS];
/// For threads past the last counter, and for a thread whose locals are gone.
static SHARED: Counter = Counter(AtomicIsize::new(0));
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// The highest sum [`held`] has seen.
static PEAK: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's counter; `usize::MAX` until its first allocation.
    static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn count(bytes: isize) {
    let mine = MINE
        .try_with(|m| {
            if m.get() == usize::MAX {
                m.set(NEXT.fetch_add(1, Relaxed));
            }
            m.get()
        })
        .unwrap_or(usize::MAX);
    match COUNTERS_OF_THREADS.get(mine) {
        // Only this thread writes its own counter: no locked add needed.
        Some(c) => c.0.store(c.0.load(Relaxed) + bytes, Relaxed),
        None => {
            SHARED.0.fetch_add(bytes, Relaxed);
        }
    }
}

/// Bytes the program holds now (as requested: not the allocator's rounding or its free
/// memory), and the highest figure this has returned.
pub fn held() -> (u64, u64) {
    let sum: isize = (COUNTERS_OF_THREADS.iter())
        .chain(std::iter::once(&SHARED))
        .map(|c| c.0.load(Relaxed))
        .sum();
    // Read while other threads count, the sum can be off by what they did meanwhile.
    let now = sum.max(0) as u64;
    (now, PEAK.fetch_max(now, Relaxed).max(now))
}

// SAFETY: every call goes to mimalloc with the caller's arguments; counting only reads the
// layout's size and touches no memory of the allocation. A layout that asks for no more than
// word alignment goes to mimalloc's plain functions, whose blocks are all word-aligned (see
// `WORD`): the `mimalloc` crate sends every allocation through `mi_malloc_aligned`, whose
// alignment check cost some 100 instructions an allocation more (about 9 allocations a SET).
// Others keep the crate's aligned path. mi_free and mi_realloc take either kind of block.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = if layout.align() <= WORD {
            // SAFETY: see the impl's comment.
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast::<u8>() }
        } else {
            // SAFETY: forwarded as given.
            unsafe { MiMalloc.alloc(layout) }
        };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = if layout.align() <= WORD {
            // SAFETY: see the impl's comment.
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast::<u8>() }
        } else {
            // SAFETY: forwarded as given.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as given (mi_free whatever the alignment).
        unsafe { MiMalloc.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = if layout.align() <= WORD {
            // SAFETY: see the impl's comment; `ptr` is a mimalloc block.
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast::<u8>() }
        } else {
            // SAFETY: forwarded as given.
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout gets a block of its alignment, whichever of mimalloc's calls serves it,
    /// and a reallocation keeps the bytes and the alignment.
    #[test]
    #[allow(unsafe_code)]
    fn blocks_have_the_alignment_their_layouts_ask_for() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in (1..=96).chain([127, 1000, 1024, 1025, 4000, 70_000, 1 << 20]) {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a layout of non-zero size; each block is freed with its own layout.
                unsafe {
                    let p = Counting.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc({size}, {align})");
                    std::ptr::write_bytes(p, 0xa5, size);
                    let grown = Counting.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "realloc({size}, {align})");
                    assert!((0..size).all(|i| *grown.add(i) == 0xa5));
                    Counting.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    let z = Counting.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "alloc_zeroed({size}, {align})");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    Counting.dealloc(z, layout);
                }
            }
        }
    }

    #[test]
    fn the_sum_follows_what_threads_allocate_and_free_even_across_threads() {
        // This binary's allocator is the counting one. Other tests allocate meanwhile, so the
        // figures are compared with a margin far below the 64 MiB moved.
        const BIG: u64 = 64 << 20;
        const MARGIN: u64 = 8 << 20;
        let (before, _) = held();
        let big = vec![1u8; BIG as usize];
        let (during, peak) = held();
        assert!(during + MARGIN >= before + BIG, "{before} -> {during}");
        assert!(peak >= during);
        // Freed on another thread: that thread's counter goes negative, the sum comes back.
        std::thread::spawn(move || drop(big)).join().unwrap();
        let (after, peak) = held();
        assert!(after < during + MARGIN - BIG, "{during} -> {after}");
        assert!(peak >= during, "the peak stays");
    }
}
