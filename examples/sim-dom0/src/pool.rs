//! The bounce pool, set up by the facade's Xen initialisation policy
//! (`swiotlb_xen::init`), and given back at the end.

use std::fmt::Write as _;

use swiotlb_core::engine::{DmaEngine, PoolGrowth};
use swiotlb_core::{PhysAddr, Platform, Slot};
use swiotlb_xen::init::{self, InitOptions, InitReport};
use xen_sim::SimMemory;

use crate::sim::SimPages;
use crate::{Failure, backend};

/// The engine of the demo: the platform `P`, the simulated CPU's memory, slot metadata on
/// the heap, and the simulated kernel's page allocator.
pub type Engine<'a, P> = DmaEngine<P, SimMemory, Box<[Slot]>, &'a SimPages>;

/// Bytes in a MiB.
const MIB: u64 = 1 << 20;

/// Gives `mib` MiB of dom0 memory, aligned to its size (rounded up to a power of two) so
/// that the policy needs the fewest chunks, to the facade's initialisation, and returns the
/// engine and what the initialisation did.
///
/// `alloc(pages, align)` hands out `pages` pages of dom0 aligned to `align` pages. The pool
/// has `nareas` areas (each CPU searches its own first; a mapping lies in one area, so
/// fewer areas allow longer mappings).
///
/// # Errors
///
/// [`Failure::Setup`] with the policy's error.
pub fn init<'a, P: Platform>(
    platform: P,
    mem: &SimMemory,
    mib: u64,
    pages: &'a SimPages,
    nareas: usize,
    alloc: impl Fn(u64, u64) -> PhysAddr,
) -> Result<(Engine<'a, P>, InitReport), Failure> {
    let nr = mib * MIB / 4096;
    let region = alloc(nr, nr.next_power_of_two());
    // CAST: a few MiB.
    let bytes = (mib * MIB) as usize;
    let storage: Box<[Slot]> = (0..bytes / 2048).map(|_| Slot::new()).collect();
    // SAFETY: the region is fresh dom0 memory given to the pool alone; the simulated CPU's
    // memory reaches it and every buffer the backend maps, in the platform's physical
    // space, as the page allocator's pages; only the policy changes its translation.
    unsafe {
        init::init(
            platform,
            mem.clone(),
            region,
            bytes,
            storage,
            pages,
            InitOptions::default().with_nareas(nareas),
        )
    }
    .map(|(engine, report)| (engine.with_cpu_hint(backend::current_cpu), report))
    .map_err(|e| Failure::Setup(format!("swiotlb-xen pool initialisation: {e}")))
}

/// Takes the engine apart and gives the pool's exchanged chunks back (an engine that grew
/// must have given its grown pools back before: they go with its growth state `G`).
///
/// # Errors
///
/// [`Failure::Verify`] if a chunk cannot be given back.
pub fn release<P: Platform, G: PoolGrowth<SimMemory>>(
    engine: DmaEngine<P, SimMemory, Box<[Slot]>, &SimPages, G>,
    report: &InitReport,
) -> Result<(), Failure> {
    let (platform, pool, _) = engine.into_parts();
    drop(pool);
    // SAFETY: the engine and its pool are gone, no device holds a bounce address, and the
    // chunks were not given back before.
    unsafe { init::release(&platform, report) }
        .map_err(|e| Failure::Verify(format!("giving the pool back: {e}")))
}

/// One line saying what the initialisation did.
#[must_use]
pub fn summary(r: &InitReport) -> String {
    // CAST: pool sizes fit u64.
    let mut s = format!(
        "{} MiB at {} (asked {} MiB), {} slots",
        r.bytes as u64 / MIB,
        r.phys,
        r.requested_bytes as u64 / MIB,
        r.nslabs
    );
    let exchanged = r.exchanged().count();
    let kept = r.chunks.len() - exchanged;
    let _ = write!(s, "; {} chunk(s)", r.chunks.len());
    if let Some((lo, hi)) = r.order_range() {
        if lo == hi {
            let _ = write!(s, " of order {lo}");
        } else {
            let _ = write!(s, " of orders {lo}..={hi}");
        }
    }
    match r.max_address_bits_used() {
        Some(bits) => {
            let _ = write!(s, ", {exchanged} exchanged below 2^{bits}");
        }
        None => s.push_str(", none exchanged"),
    }
    if kept > 0 && exchanged > 0 {
        let _ = write!(s, ", {kept} already contiguous");
    }
    let _ = write!(
        s,
        "; {} create_contiguous_region_rising call(s), {} failed, {} halving(s)",
        r.create_calls, r.create_failures, r.halvings
    );
    s
}
