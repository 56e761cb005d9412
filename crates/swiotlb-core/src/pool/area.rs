//! Per-slot metadata ([`Slot`]) and per-area state.
//!
//! All metadata lives out of band, in storage the caller provides: nothing is ever read back
//! from the pool memory, which a device (or another domain) may write at any time.

use crate::error::Error;
use crate::lock::SpinLock;
use crate::lock::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use crate::lock::const_fn_unless_loom;

/// Marks a slot whose `orig` is unset (Linux's `INVALID_PHYS_ADDR`).
pub(crate) const INVALID_PHYS: u64 = u64::MAX;

/// [`AreaState::reuse`] when there is no freed run to try.
pub(crate) const NO_REUSE: usize = usize::MAX;

/// Slot states.
pub(crate) mod state {
    /// Free.
    pub(crate) const FREE: u8 = 0;
    /// A pad slot in front of the first data slot of an allocation.
    pub(crate) const PAD: u8 = 1;
    /// A data slot after the first of a mapping or allocation.
    pub(crate) const BODY: u8 = 2;
    /// The first data slot of a streaming mapping whose copy-in is still running.
    pub(crate) const RESERVED: u8 = 3;
    /// The first data slot of a live streaming mapping.
    pub(crate) const HEAD: u8 = 4;
    /// The first data slot of a streaming mapping that an unmap has claimed.
    pub(crate) const UNMAPPING: u8 = 5;
    /// The first slot of a coherent allocation ([`super::super::BouncePool::alloc`]).
    pub(crate) const COHERENT: u8 = 6;
}

/// The out-of-band metadata of one 2 KiB slot (Linux's `io_tlb_slot`, plus what this port
/// needs to detect bad unmaps and to skip full segments quickly).
///
/// A pool needs one `Slot` per 2 KiB slot, in storage the caller provides (an array, a
/// `&'static` slice, or with feature `alloc` a boxed slice the pool allocates). The fields
/// are private; the pool initialises them in its constructor, so any `Slot` value will do.
///
/// The fields are atomics so that the pool can work through `&self` from many CPUs. Every
/// write happens under the lock of the slot's area, except the state change of a mapping's
/// first slot that marks the end of its copy-in (made by the mapper, which owns the slots)
/// and the decrement of `busy` when a sync's copy is done.
#[derive(Debug, Default)]
pub struct Slot {
    /// Linux's `orig_addr`: where the original bytes that belong at this slot's data
    /// position live; [`INVALID_PHYS`] for free and pad slots.
    pub(crate) orig: AtomicU64,
    /// On slots `b + 2 r` and `b + 2 r + 1`, where `b` is the first slot of the area and
    /// `r` the segment's index in it: the low and high halves of segment `s`'s free bitmap,
    /// where bit `i` is set when slot `128 s + i` is free (`search::bitmap_slot`). The
    /// bitmaps replace Linux's per-slot free counts, which they determine exactly (see
    /// [`super::BouncePool::free_count`]); unused on the other slots.
    pub(crate) free_bits: AtomicU64,
    /// On the first data slot: the mapping (or allocation) size in bytes.
    pub(crate) size: AtomicU32,
    /// On data slots: the byte offset of the data inside the slot (the kept low bits of the
    /// original address below 2 KiB).
    pub(crate) offset: AtomicU16,
    /// On data slots: the index of this slot among the allocation's data slots (0 for the
    /// first).
    pub(crate) k: AtomicU16,
    /// On the first data slot: the number of pad slots in front of it (Linux's `pad_slots`).
    pub(crate) pad: AtomicU16,
    /// On the first data slot: the number of slots of the allocation, pad slots included.
    pub(crate) nslots: AtomicU16,
    /// On the first data slot of a streaming mapping: the number of syncs copying its bytes
    /// outside the area lock. Raised under the lock (only while the slot is a `HEAD`),
    /// lowered without it when the copy is done; an unmap waits for it to reach zero.
    pub(crate) busy: AtomicU16,
    /// One of the [`state`] values.
    pub(crate) state: AtomicU8,
    /// On slot `b + 2 r` (the slot holding the low half of segment `s`'s free bitmap, see
    /// `free_bits`): 1 when segment `s` is joined to segment `s + 1` (the two are
    /// bus-contiguous and in the same area, so a run may cross from one into the other), 0
    /// otherwise and on every other slot. Written only by
    /// [`super::BouncePool::set_segment_joins`] (which has the pool to itself), read under the
    /// area lock by searches of more than a segment. It fills the byte the other fields left
    /// free, so a `Slot` stays 32 bytes.
    pub(crate) join: AtomicU8,
}

impl Slot {
    const_fn_unless_loom! {
        /// A slot value for static storage, e.g. `[const { Slot::new() }; 1024]`.
        #[must_use]
        pub fn new() -> Self {
            Self {
                orig: AtomicU64::new(INVALID_PHYS),
                free_bits: AtomicU64::new(0),
                size: AtomicU32::new(0),
                offset: AtomicU16::new(0),
                k: AtomicU16::new(0),
                pad: AtomicU16::new(0),
                nslots: AtomicU16::new(0),
                busy: AtomicU16::new(0),
                state: AtomicU8::new(state::FREE),
                join: AtomicU8::new(0),
            }
        }
    }

    /// Frees a slot of a released allocation (the caller holds the area lock): only the
    /// fields a reader looks at before it has seen a non-free state. Every other field is
    /// written by the map or allocation that next takes the slot before it publishes the
    /// slot's state, and `busy` is already zero (an unmap frees only once no sync is
    /// pinning the mapping).
    #[inline]
    pub(crate) fn release(&self) {
        debug_assert_eq!(self.busy.load(Ordering::Relaxed), 0);
        self.orig.store(INVALID_PHYS, Ordering::Relaxed);
        self.state.store(state::FREE, Ordering::Release);
    }

    /// Resets the slot to free (the caller holds the area lock or owns the pool).
    #[inline]
    pub(crate) fn clear(&self) {
        self.orig.store(INVALID_PHYS, Ordering::Relaxed);
        self.size.store(0, Ordering::Relaxed);
        self.offset.store(0, Ordering::Relaxed);
        self.k.store(0, Ordering::Relaxed);
        self.pad.store(0, Ordering::Relaxed);
        self.nslots.store(0, Ordering::Relaxed);
        self.busy.store(0, Ordering::Relaxed);
        self.join.store(0, Ordering::Relaxed);
        self.state.store(state::FREE, Ordering::Release);
    }
}

/// The mutable state of one area, protected by the area's lock.
#[derive(Debug)]
pub(crate) struct AreaState {
    /// Slots allocated in this area.
    pub(crate) used: usize,
    /// Where the next search starts, relative to the area (Linux's `index`).
    pub(crate) index: usize,
    /// The global index of the first slot of the run this area freed last, [`NO_REUSE`]
    /// before the first free: the candidate a map tries before it searches
    /// ([`super::search::Plan::fits_at`]), so that a map following an unmap takes the slots
    /// (and the cache lines of metadata and bounce memory) the unmap just gave back.
    pub(crate) reuse: usize,
    /// The largest `used` of this area since construction or the last
    /// [`reset_high_water`](super::BouncePool::reset_high_water).
    pub(crate) high: usize,
}

/// One area: a lock, its statistics and its failure counters.
///
/// Every counter of the pool lives in an area, so that a map, unmap or sync writes (and
/// reads for writing) only the cache lines of the area it works in, which with one area per
/// CPU no other CPU touches; [`super::BouncePool::stats`] sums the areas. Aligned to 128
/// bytes (a pair of cache lines, which x86's adjacent-line prefetcher fetches together) so
/// that areas used by different CPUs share no line.
#[repr(align(128))]
pub(crate) struct Area {
    pub(crate) lock: SpinLock<AreaState>,
    /// A copy of `AreaState::used`, stored under `lock` and read without it by
    /// [`super::BouncePool::stats`] and on the rare high-water updates.
    pub(crate) used: AtomicUsize,
    /// A copy of `AreaState::high`, stored under `lock`.
    pub(crate) high: AtomicUsize,
    /// Counters written only under `lock` (plain load and store, no read-modify-write) and
    /// read without it by [`super::BouncePool::stats`].
    pub(crate) maps: AtomicU64,
    pub(crate) unmaps: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) bytes_bounced: AtomicU64,
    pub(crate) overflow_attempts: AtomicU64,
    pub(crate) allocs: AtomicU64,
    pub(crate) frees: AtomicU64,
    /// Failures of requests that concerned this area (the CPU hint's area for maps and
    /// allocations, the address's area for the others), counted without the lock.
    pub(crate) fails: FailCounters,
}

/// Failed requests by cause ([`super::Stats`]'s `fail_*`).
#[derive(Debug)]
pub(crate) struct FailCounters {
    pub(crate) full: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) not_mapped: AtomicU64,
}

impl FailCounters {
    const_fn_unless_loom! {
        pub(crate) fn new() -> Self {
            Self {
                full: AtomicU64::new(0),
                too_large: AtomicU64::new(0),
                invalid: AtomicU64::new(0),
                not_mapped: AtomicU64::new(0),
            }
        }
    }

    /// Counts a failure by its cause and passes the error on.
    #[cold]
    pub(crate) fn count(&self, err: Error) -> Error {
        let counter = match err {
            Error::PoolFull { .. } => &self.full,
            Error::TooLarge { .. } | Error::ExceedsSegment { .. } => &self.too_large,
            Error::NotInPool { .. } | Error::NotMapped { .. } | Error::SyncOutOfRange { .. } => {
                &self.not_mapped
            }
            _ => &self.invalid,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        err
    }
}

impl Area {
    const_fn_unless_loom! {
        pub(crate) fn new() -> Self {
            Self {
                lock: SpinLock::new(AreaState {
                    used: 0,
                    index: 0,
                    reuse: NO_REUSE,
                    high: 0,
                }),
                used: AtomicUsize::new(0),
                high: AtomicUsize::new(0),
                maps: AtomicU64::new(0),
                unmaps: AtomicU64::new(0),
                syncs: AtomicU64::new(0),
                bytes_bounced: AtomicU64::new(0),
                overflow_attempts: AtomicU64::new(0),
                allocs: AtomicU64::new(0),
                frees: AtomicU64::new(0),
                fails: FailCounters::new(),
            }
        }
    }
}

/// Adds `n` to a counter that only the holder of the area lock writes.
#[inline]
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}
