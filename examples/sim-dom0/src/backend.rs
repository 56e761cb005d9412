//! The backend: dom0 serving the guest's network and block traffic to one DMA device
//! through the DMA engine, verifying every byte.
//!
//! The device learns where to read and write only from a descriptor ring in coherent memory
//! (`alloc_coherent`), as a real NIC or disk controller does; the ring is reached by its bus
//! address. Requests are handled in batches of up to the queue depth: all mapped, then the
//! device works through the ring, then all unmapped and completed, so that many mappings are
//! live at once (the pool's high-water mark shows it).

use std::time::{Duration, Instant};

use swiotlb_core::Error as PoolError;
use swiotlb_core::engine::{CoherentAlloc, DmaEngine, DmaError, PageAllocator, SgEntry};
use swiotlb_core::pool::Slot;
use swiotlb_core::{BusAddr, Device, DmaAttrs, DmaDirection, PhysAddr, Platform};
use xen_abi::{DomId, GrantRef};
use xen_sim::{DomU, SimDevice, SimMemory, Xen};

use crate::Failure;
use crate::grants::{GrantMapper, MappedGrant};
use crate::workload::{Kind, Request, SKB_BYTES, Workload, payload};

/// Bytes of one descriptor: bus address (8), length (4), flags (4), little-endian.
pub const DESC_BYTES: usize = 16;
/// Descriptors in the ring.
pub const RING_ENTRIES: usize = 1024;
/// Descriptor flag: the device writes the buffer (else it reads it).
const DESC_WRITE: u32 = 1;

/// How a run goes.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Transfers to perform.
    pub transfers: u64,
    /// Seed of the workload and payloads.
    pub seed: u64,
    /// Requests in flight at once.
    pub queue_depth: usize,
    /// Check the simulator's and the pool's invariants every this many transfers.
    pub check_every: u64,
    /// Corrupt one byte of this transfer in the device (to prove the failure path).
    pub corrupt: Option<u64>,
    /// Print a progress line to stderr every this often (never if `None`).
    pub progress: Option<Duration>,
    /// The name of the run in progress lines.
    pub label: String,
}

/// What the backend works with, besides the engine.
pub struct Target<'a> {
    /// The machine.
    pub xen: &'a Xen,
    /// dom0's CPU view of its memory.
    pub mem: SimMemory,
    /// The DMA device.
    pub device: SimDevice,
    /// The device as the DMA layer knows it.
    pub dev: Device,
    /// How dom0 maps the guest's grants.
    pub grants: &'a dyn GrantMapper,
    /// The guest.
    pub domu: DomU,
    /// The guest's domain id.
    pub domu_id: DomId,
    /// Pages the guest granted to dom0 for its traffic.
    pub domu_refs: Vec<GrantRef>,
    /// dom0's socket buffers ([`SKB_BYTES`] each).
    pub skbs: Vec<PhysAddr>,
    /// What the kernel does after the CPU wrote coherent memory that a non-coherent device
    /// will read (nothing on a real uncached mapping; the simulator's single cache model
    /// needs a clean, see `docs/demo.md`).
    pub coherent_written: &'a dyn Fn(PhysAddr, usize),
}

/// What a run did, beyond the engine's and the simulator's own counters.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Transfers per kind, in [`Kind::ALL`] order.
    pub per_kind: [u64; 4],
    /// Payload bytes moved (each byte once, whatever the direction).
    pub payload_bytes: u64,
    /// DMA segments the device processed (one per packet, one per sg entry).
    pub segments: u64,
    /// Bytes the device read and wrote.
    pub device_bytes: u64,
    /// Times the invariants were checked.
    pub checks: u64,
    /// Requests whose mapping found the pool full and were retried after the requests in
    /// flight completed.
    pub deferred: u64,
    /// Bus address of the descriptor ring, and whether it had to be exchanged.
    pub ring: Option<(BusAddr, bool)>,
    /// Wall time of the transfers.
    pub elapsed: Duration,
}

/// One request in flight.
struct InFlight {
    req: Request,
    data: Vec<u8>,
    refs: Vec<usize>,
    grants: Vec<MappedGrant>,
    skb: Option<usize>,
    sg: Vec<SgEntry>,
    dir: DmaDirection,
}

/// Free lists of the guest's granted pages and of dom0's socket buffers.
struct Free {
    refs: Vec<usize>,
    skbs: Vec<usize>,
}

/// Runs the workload. Every byte the device reads is compared with what the guest sent, and
/// every byte the device writes is compared with what the guest receives.
///
/// # Errors
///
/// [`Failure::Verify`] for a wrong byte, a DMA fault, a cache violation or a broken
/// invariant; [`Failure::Dma`] for a failed DMA operation.
pub fn run<P, S, A>(
    engine: &DmaEngine<P, SimMemory, S, A>,
    t: &Target<'_>,
    opts: &RunOptions,
) -> Result<RunStats, Failure>
where
    P: Platform,
    S: AsRef<[Slot]>,
    A: PageAllocator,
{
    let mut stats = RunStats::default();
    let ring = engine
        .alloc_coherent(&t.dev, RING_ENTRIES * DESC_BYTES)
        .map_err(|e| Failure::Dma(format!("alloc_coherent of the descriptor ring: {e}")))?;
    stats.ring = Some((ring.bus(), ring.is_exchanged()));
    let result = run_with_ring(engine, t, opts, &ring, &mut stats);
    // SAFETY: the device is idle and the CPU holds no reference to the ring.
    let freed = unsafe { engine.free_coherent(&t.dev, ring) };
    result?;
    freed.map_err(|e| Failure::Dma(format!("free_coherent of the descriptor ring: {e}")))?;
    check(engine, t, &mut stats)?;
    Ok(stats)
}

fn run_with_ring<P, S, A>(
    engine: &DmaEngine<P, SimMemory, S, A>,
    t: &Target<'_>,
    opts: &RunOptions,
    ring: &CoherentAlloc,
    stats: &mut RunStats,
) -> Result<(), Failure>
where
    P: Platform,
    S: AsRef<[Slot]>,
    A: PageAllocator,
{
    let mut workload = Workload::new(opts.seed);
    let mut free = Free {
        refs: (0..t.domu_refs.len()).rev().collect(),
        skbs: (0..t.skbs.len()).rev().collect(),
    };
    let mut cursor = 0usize;
    let start = Instant::now();
    let mut last_progress = start;
    let mut done = 0u64;
    let mut next_check = opts.check_every;
    let mut deferred = None;
    while done < opts.transfers {
        let want = (opts.transfers - done).min(opts.queue_depth as u64);
        let mut batch = Vec::new();
        while (batch.len() as u64) < want {
            let req = deferred.take().unwrap_or_else(|| workload.next_request());
            match prepare(engine, t, opts, req, &mut free)? {
                Prepared::Ready(f) => batch.push(f),
                // The pool is full: run what is in flight first, then try again, as a
                // driver does on a DMA mapping error. With nothing in flight it is a real
                // failure.
                Prepared::PoolFull(req, e) if batch.is_empty() => {
                    return Err(Failure::Dma(format!(
                        "{} #{}: the pool is full with nothing in flight: {e}",
                        req.kind.name(),
                        req.id
                    )));
                }
                Prepared::PoolFull(req, _) => {
                    stats.deferred += 1;
                    deferred = Some(req);
                    break;
                }
            }
        }
        let n = batch.len() as u64;
        device_pass(t, opts, ring, &mut cursor, &batch, stats)?;
        for f in batch {
            complete(engine, t, f, &mut free, stats)?;
        }
        done += n;
        if done >= next_check || done == opts.transfers {
            check(engine, t, stats)?;
            next_check = done + opts.check_every;
        }
        if let Some(every) = opts.progress
            && last_progress.elapsed() >= every
        {
            last_progress = Instant::now();
            eprintln!(
                "sim-dom0: {}: {done}/{} transfers, {:.1} MiB, {:.1} s",
                opts.label,
                opts.transfers,
                mib(stats.payload_bytes),
                start.elapsed().as_secs_f64()
            );
        }
    }
    stats.elapsed = start.elapsed();
    Ok(())
}

/// What [`prepare`] made of a request.
enum Prepared {
    /// Mapped and ready for the device.
    Ready(InFlight),
    /// The bounce pool had no room: nothing stays mapped, the request is handed back.
    PoolFull(Request, DmaError),
}

/// Whether a mapping failed only for want of free slots.
fn pool_full(e: &DmaError) -> bool {
    matches!(
        e,
        DmaError::Bounce {
            source: PoolError::PoolFull { .. },
            ..
        }
    )
}

/// Maps the guest's pages and the request's buffers (the CPU side before the device runs).
fn prepare<P, S, A>(
    engine: &DmaEngine<P, SimMemory, S, A>,
    t: &Target<'_>,
    opts: &RunOptions,
    req: Request,
    free: &mut Free,
) -> Result<Prepared, Failure>
where
    P: Platform,
    S: AsRef<[Slot]>,
    A: PageAllocator,
{
    let data = payload(opts.seed, req.id, req.len);
    let npages = if req.kind.is_block() {
        req.segments.len()
    } else {
        1
    };
    if free.refs.len() < npages {
        return Err(Failure::Setup(format!(
            "the guest has no {npages} free granted pages"
        )));
    }
    let refs = free.refs.split_off(free.refs.len() - npages);
    let grefs: Vec<GrantRef> = refs.iter().map(|&i| t.domu_refs[i]).collect();
    let dir = if req.kind.to_device() {
        DmaDirection::ToDevice
    } else {
        DmaDirection::FromDevice
    };
    // The guest fills what it sends, before dom0 maps it.
    if req.kind == Kind::NetTx {
        guest_write(t, grefs[0], 0, &data)?;
    } else if req.kind == Kind::BlockWrite {
        let mut at = 0;
        for (seg, &gref) in req.segments.iter().zip(&grefs) {
            guest_write(t, gref, seg.offset, &data[at..at + seg.len])?;
            at += seg.len;
        }
    }
    let grants = t
        .grants
        .map(t.domu_id, &grefs)
        .map_err(|e| Failure::Setup(e.to_string()))?;
    let mut f = InFlight {
        req,
        data,
        refs,
        grants,
        skb: None,
        sg: Vec::new(),
        dir,
    };
    if f.req.kind.is_block() {
        f.sg = f
            .req
            .segments
            .iter()
            .zip(&f.grants)
            .map(|(seg, g)| SgEntry::new(offset(g.phys, seg.offset), seg.len))
            .collect();
        // SAFETY: the granted pages stay mapped until `complete`, which unmaps the sg
        // list first; nothing references them (all access is by physical address).
        match unsafe { engine.map_sg(&t.dev, &mut f.sg, dir, DmaAttrs::empty()) } {
            Ok(_) => {}
            // map_sg unmapped what it had mapped before the failing entry.
            Err(e) if pool_full(&e.source) => return give_back(t, f, free, e.source),
            Err(e) => {
                return Err(Failure::Dma(format!(
                    "map_sg of {} #{} ({} entries): {e}",
                    f.req.kind.name(),
                    f.req.id,
                    f.sg.len()
                )));
            }
        }
    } else {
        let skb = free
            .skbs
            .pop()
            .ok_or_else(|| Failure::Setup("no free socket buffer".to_owned()))?;
        f.skb = Some(skb);
        let at = offset(t.skbs[skb], f.req.skb_offset);
        if f.req.kind == Kind::NetTx {
            // netback copies the packet out of the guest's page into its own buffer.
            let mut buf = vec![0u8; f.req.len];
            t.mem.read(f.grants[0].phys, &mut buf);
            t.mem.write(at, &buf);
        }
        // SAFETY: the socket buffer is dom0's own and stays allocated and unreferenced
        // until `complete` unmaps it.
        let bus = match unsafe { engine.map_page(&t.dev, at, f.req.len, dir, DmaAttrs::empty()) } {
            Ok(bus) => bus,
            Err(e) if pool_full(&e) => return give_back(t, f, free, e),
            Err(e) => {
                return Err(Failure::Dma(format!(
                    "map_page of {} #{} ({} bytes at {at}): {e}",
                    f.req.kind.name(),
                    f.req.id,
                    f.req.len
                )));
            }
        };
        let mut e = SgEntry::new(at, f.req.len);
        e.dma_address = bus;
        e.dma_length = f.req.len;
        f.sg.push(e);
    }
    Ok(Prepared::Ready(f))
}

/// Undoes a [`prepare`] whose DMA mapping failed for a full pool: unmaps the grants and
/// gives the pages and the socket buffer back.
fn give_back(
    t: &Target<'_>,
    f: InFlight,
    free: &mut Free,
    e: DmaError,
) -> Result<Prepared, Failure> {
    t.grants
        .unmap(&f.grants)
        .map_err(|e| Failure::Setup(e.to_string()))?;
    free.refs.extend(&f.refs);
    free.skbs.extend(f.skb);
    Ok(Prepared::PoolFull(f.req, e))
}

/// The device: posts every segment of the batch to the ring (CPU), then reads each
/// descriptor from the ring and performs it (device), checking what it reads.
fn device_pass(
    t: &Target<'_>,
    opts: &RunOptions,
    ring: &CoherentAlloc,
    cursor: &mut usize,
    batch: &[InFlight],
    stats: &mut RunStats,
) -> Result<(), Failure> {
    for f in batch {
        // Post the request's segments.
        let first = *cursor;
        for e in &f.sg {
            let mut d = [0u8; DESC_BYTES];
            d[..8].copy_from_slice(&e.dma_address.as_u64().to_le_bytes());
            // CAST: a segment is at most 64 KiB.
            d[8..12].copy_from_slice(&(e.dma_length as u32).to_le_bytes());
            let flags = if f.req.kind.to_device() {
                0
            } else {
                DESC_WRITE
            };
            d[12..].copy_from_slice(&flags.to_le_bytes());
            let at = offset(ring.phys(), (*cursor % RING_ENTRIES) * DESC_BYTES);
            t.mem.write(at, &d);
            (t.coherent_written)(at, DESC_BYTES);
            *cursor += 1;
        }
        // The device fetches the descriptors and performs them.
        let mut at = 0usize;
        for i in first..*cursor {
            let bus = BusAddr::new(ring.bus().as_u64() + ((i % RING_ENTRIES) * DESC_BYTES) as u64);
            let d = t
                .device
                .read(bus, DESC_BYTES)
                .map_err(|e| Failure::Verify(format!("descriptor fetch: {e}")))?;
            let addr = BusAddr::new(u64::from_le_bytes(d[..8].try_into().unwrap_or_default()));
            // CAST: u32 fits usize.
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default()) as usize;
            let writes =
                u32::from_le_bytes(d[12..].try_into().unwrap_or_default()) & DESC_WRITE != 0;
            let expected = &f.data[at..at + len];
            let corrupt = opts.corrupt == Some(f.req.id) && at == 0;
            if writes {
                let mut out = expected.to_vec();
                if corrupt {
                    out[len / 2] ^= 0x40;
                }
                t.device.write(addr, &out).map_err(|e| {
                    Failure::Verify(format!(
                        "{} #{}: device write: {e}",
                        f.req.kind.name(),
                        f.req.id
                    ))
                })?;
            } else {
                let mut got = t.device.read(addr, len).map_err(|e| {
                    Failure::Verify(format!(
                        "{} #{}: device read: {e}",
                        f.req.kind.name(),
                        f.req.id
                    ))
                })?;
                if corrupt {
                    got[len / 2] ^= 0x40;
                }
                compare(&f.req, "the device read", at, expected, &got)?;
            }
            at += len;
            stats.segments += 1;
            // CAST: usize fits u64.
            stats.device_bytes += len as u64;
        }
    }
    Ok(())
}

/// Unmaps the request, lets the guest check what it received, and gives its pages back.
fn complete<P, S, A>(
    engine: &DmaEngine<P, SimMemory, S, A>,
    t: &Target<'_>,
    f: InFlight,
    free: &mut Free,
    stats: &mut RunStats,
) -> Result<(), Failure>
where
    P: Platform,
    S: AsRef<[Slot]>,
    A: PageAllocator,
{
    let what = || format!("{} #{}", f.req.kind.name(), f.req.id);
    if f.req.kind.is_block() {
        engine
            .unmap_sg(&t.dev, &f.sg, f.dir, DmaAttrs::empty())
            .map_err(|e| Failure::Dma(format!("unmap_sg of {}: {e}", what())))?;
    } else {
        let e = f.sg[0];
        engine
            .unmap_page(
                &t.dev,
                e.dma_address,
                e.dma_length,
                f.dir,
                DmaAttrs::empty(),
            )
            .map_err(|e| Failure::Dma(format!("unmap_page of {}: {e}", what())))?;
    }
    if f.req.kind == Kind::NetRx {
        // netback copies the received packet into the guest's page.
        let mut buf = vec![0u8; f.req.len];
        t.mem.read(f.sg[0].phys, &mut buf);
        t.mem.write(f.grants[0].phys, &buf);
    }
    t.grants
        .unmap(&f.grants)
        .map_err(|e| Failure::Setup(e.to_string()))?;
    // The guest checks what it received, through its own CPU.
    match f.req.kind {
        Kind::NetRx => {
            let page = guest_read(t, t.domu_refs[f.refs[0]])?;
            compare(&f.req, "the guest received", 0, &f.data, &page[..f.req.len])?;
        }
        Kind::BlockRead => {
            let mut at = 0;
            for (seg, &r) in f.req.segments.iter().zip(&f.refs) {
                let page = guest_read(t, t.domu_refs[r])?;
                let got = &page[seg.offset..seg.offset + seg.len];
                compare(
                    &f.req,
                    "the guest received",
                    at,
                    &f.data[at..at + seg.len],
                    got,
                )?;
                at += seg.len;
            }
        }
        Kind::NetTx | Kind::BlockWrite => {}
    }
    free.refs.extend(&f.refs);
    free.skbs.extend(f.skb);
    let k = Kind::ALL.iter().position(|&k| k == f.req.kind).unwrap_or(0);
    stats.per_kind[k] += 1;
    // CAST: usize fits u64.
    stats.payload_bytes += f.req.len as u64;
    Ok(())
}

/// Checks the simulator's and the pool's invariants, and that nothing went wrong on the
/// device or in the caches.
fn check<P, S, A>(
    engine: &DmaEngine<P, SimMemory, S, A>,
    t: &Target<'_>,
    stats: &mut RunStats,
) -> Result<(), Failure>
where
    P: Platform,
    S: AsRef<[Slot]>,
    A: PageAllocator,
{
    stats.checks += 1;
    t.xen
        .check_invariants()
        .map_err(|v| Failure::Verify(format!("simulator invariant broken: {v}")))?;
    if let Some(pool) = engine.pool() {
        pool.check_invariants()
            .map_err(|v| Failure::Verify(format!("pool invariant broken: {v:?}")))?;
    }
    if let Some(v) = t.xen.cache_violations().first() {
        return Err(Failure::Verify(format!("cache violation: {v}")));
    }
    if let Some(v) = t.xen.tlb_violations().first() {
        return Err(Failure::Verify(format!("TLB violation: {v:?}")));
    }
    if let Some(fault) = t.device.faults().first() {
        return Err(Failure::Verify(format!("device DMA fault: {fault}")));
    }
    Ok(())
}

fn guest_write(t: &Target<'_>, gref: GrantRef, at: usize, data: &[u8]) -> Result<(), Failure> {
    t.domu
        .write_page(gref, at, data)
        .map_err(|e| Failure::Setup(format!("guest write to grant {gref}: {e}")))
}

fn guest_read(t: &Target<'_>, gref: GrantRef) -> Result<Vec<u8>, Failure> {
    t.domu
        .read_page(gref)
        .map_err(|e| Failure::Setup(format!("guest read of grant {gref}: {e}")))
}

/// Compares `got` with `expected` (bytes `at..` of the request's payload).
fn compare(
    req: &Request,
    who: &str,
    at: usize,
    expected: &[u8],
    got: &[u8],
) -> Result<(), Failure> {
    match expected.iter().zip(got).position(|(a, b)| a != b) {
        None if expected.len() == got.len() => Ok(()),
        None => Err(Failure::Verify(format!(
            "{} #{} ({} bytes): {who} {} bytes at offset {at}, expected {}",
            req.kind.name(),
            req.id,
            req.len,
            got.len(),
            expected.len()
        ))),
        Some(i) => Err(Failure::Verify(format!(
            "{} #{} ({} bytes): {who} {:#04x} at byte {}, expected {:#04x}",
            req.kind.name(),
            req.id,
            req.len,
            got[i],
            at + i,
            expected[i]
        ))),
    }
}

fn offset(p: PhysAddr, by: usize) -> PhysAddr {
    // CAST: usize fits u64; the simulated addresses are far from the top.
    PhysAddr::new(p.as_u64() + by as u64)
}

/// Bytes in MiB.
#[must_use]
pub fn mib(bytes: u64) -> f64 {
    // CAST: byte counts stay far below 2^53.
    bytes as f64 / f64::from(1u32 << 20)
}

/// The socket buffers' size, for the set-up.
pub const SKB_PAGES: u64 = (SKB_BYTES / 4096) as u64;
