//! The bounce pool's initialisation and the engine over it.

use swiotlb_core::engine::DmaEngine;
use swiotlb_core::{BouncePool, PhysAddr, Platform, Slot};
use xen_sim::SimMemory;

use crate::Failure;
use crate::sim::SimPages;

/// What the initialisation did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// One line for the report.
    pub line: String,
    /// Slots in the pool.
    pub nslabs: usize,
    /// Bytes in the pool.
    pub bytes: u64,
}

/// The platform and the pool, ready for the engine.
pub struct Init<P> {
    /// The platform and the pool.
    pub pool: (P, BouncePool<SimMemory, Box<[Slot]>>),
    /// What was done.
    pub summary: Summary,
}

/// The engine of the demo.
pub type Engine<'a, P> = DmaEngine<P, SimMemory, Box<[Slot]>, &'a SimPages>;

/// Initialises a pool of `mib` MiB with memory from `alloc(pages)` (naturally aligned).
pub fn init<P: Platform>(
    platform: P,
    mem: &SimMemory,
    mib: u64,
    alloc: impl Fn(u64) -> PhysAddr,
) -> Result<Init<P>, Failure> {
    const SEG_PAGES: u64 = 64;
    let pages = mib * 256;
    let start = alloc(pages);
    for s in 0..pages / SEG_PAGES {
        let phys = PhysAddr::new(start.as_u64() + s * SEG_PAGES * 4096);
        // SAFETY: the region is fresh, naturally aligned and used by nobody else.
        unsafe { platform.create_contiguous_region(phys, 6, 32) }
            .map_err(|e| Failure::Setup(format!("pool segment {s}: {e}")))?;
    }
    // CAST: a few MiB of slots.
    let nslabs = (pages * 2) as usize;
    // SAFETY: the region belongs to the pool alone.
    let pool = unsafe { BouncePool::new_boxed(mem.clone(), start, nslabs, 4) }
        .map_err(|e| Failure::Setup(format!("pool: {e}")))?;
    Ok(Init {
        pool: (platform, pool),
        summary: Summary {
            line: format!("{mib} MiB at {start}, {} segments", pages / SEG_PAGES),
            nslabs,
            bytes: pages * 4096,
        },
    })
}

/// The engine over the platform and pool of `init`, with `pages` for coherent allocations.
pub fn engine<P: Platform>(
    parts: (P, BouncePool<SimMemory, Box<[Slot]>>),
    pages: &SimPages,
) -> Result<Engine<'_, P>, Failure> {
    let (platform, pool) = parts;
    // SAFETY: the pool and every buffer mapped are dom0's memory as the platform sees it,
    // reached by the same SimMemory, and the pool's translations stay fixed.
    unsafe { DmaEngine::new(platform, Some(pool), pages) }
        .map_err(|e| Failure::Setup(format!("engine: {e}")))
}
