//! The backend: dom0 serving the guest's network and block traffic to one DMA device
//! through the DMA engine, verifying every byte.
//!
//! The device learns where to read and write only from descriptor rings in coherent memory
//! (`alloc_coherent`), as a real multi-queue NIC or disk controller does; a ring is reached
//! by its bus address. Each backend CPU (a thread) owns one queue: its ring, its socket
//! buffers and its share of the guest's pages; all share the engine, its pool and the grant
//! mappings. A queue handles requests in batches of up to the queue depth: all mapped, then
//! the device works through the ring, then all unmapped and completed, so that many mappings
//! are live at once (the pool's high-water mark shows it).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard};
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
    /// Backend CPUs (threads), one queue each.
    pub cpus: usize,
    /// Requests in flight at once per queue.
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
    pub grants: &'a (dyn GrantMapper + Sync),
    /// The guest.
    pub domu: DomU,
    /// The guest's domain id.
    pub domu_id: DomId,
    /// Pages the guest granted to dom0 for its traffic.
    pub domu_refs: Vec<GrantRef>,
    /// dom0's socket buffers ([`SKB_BYTES`] each), shared out between the queues.
    pub skbs: Vec<PhysAddr>,
    /// What the kernel does after the CPU wrote coherent memory that a non-coherent device
    /// will read (nothing on a real uncached mapping; the simulator's single cache model
    /// needs a clean, see `docs/demo.md`).
    pub coherent_written: &'a (dyn Fn(PhysAddr, usize) + Sync),
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
    /// Bus address of each queue's descriptor ring, and whether it had to be exchanged.
    pub rings: Vec<(BusAddr, bool)>,
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

/// Free lists of the guest's granted pages and of dom0's socket buffers (indices into the
/// target's lists).
struct Free {
    refs: Vec<usize>,
    skbs: Vec<usize>,
}

impl RunStats {
    /// Adds another queue's counts.
    fn merge(&mut self, o: RunStats) {
        for (a, b) in self.per_kind.iter_mut().zip(o.per_kind) {
            *a += b;
        }
        self.payload_bytes += o.payload_bytes;
        self.segments += o.segments;
        self.device_bytes += o.device_bytes;
        self.checks += o.checks;
        self.deferred += o.deferred;
        self.rings.extend(o.rings);
    }
}

thread_local! {
    /// The backend CPU this thread stands for.
    static CPU: Cell<usize> = const { Cell::new(0) };
}

/// The backend CPU the calling thread stands for: the engine's CPU hint, which picks the
/// pool area a bounce searches first (Linux's `raw_smp_processor_id()`).
#[must_use]
pub fn current_cpu() -> usize {
    CPU.with(Cell::get)
}

/// What the queues share: progress for the progress line, a stop flag raised by a queue
/// that failed, and the lock that makes the invariant checks see a quiet machine.
#[derive(Debug, Default)]
struct Shared {
    done: AtomicU64,
    bytes: AtomicU64,
    in_flight: AtomicU64,
    stop: AtomicBool,
    /// The first failure of any queue, in time.
    failure: Mutex<Option<Failure>>,
    /// Held for reading by a queue while it has DMA operations under way (a batch between
    /// its first map and its last unmap, a coherent allocation or free), and for writing by
    /// an invariant check: the simulator's and the pool's invariants hold between
    /// operations, not in the middle of one on another CPU.
    quiet: RwLock<()>,
}

impl Shared {
    /// Records a queue's failure (the first one is kept) and stops the other queues.
    fn fail(&self, e: Failure) {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(e);
        self.stop.store(true, Ordering::Relaxed);
    }

    fn busy(&self) -> RwLockReadGuard<'_, ()> {
        self.quiet.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the invariant checks with every other queue between operations.
    fn check<P, S, A>(
        &self,
        engine: &DmaEngine<P, SimMemory, S, A>,
        t: &Target<'_>,
        stats: &mut RunStats,
    ) -> Result<(), Failure>
    where
        P: Platform,
        S: AsRef<[Slot]>,
        A: PageAllocator,
    {
        let _quiet = self.quiet.write().unwrap_or_else(PoisonError::into_inner);
        check(engine, t, stats)
    }
}

/// How long a queue with nothing in flight waits for the others to free pool slots.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// Runs the workload on `opts.cpus` queues, one thread each. Every byte the device reads
/// is compared with what the guest sent, and every byte the device writes with what the
/// guest receives.
///
/// # Errors
///
/// [`Failure::Verify`] for a wrong byte, a DMA fault, a cache violation or a broken
/// invariant; [`Failure::Dma`] for a failed DMA operation. With several queues, the first
/// failure is returned; the other queues stop at their next batch.
pub fn run<P, S, A>(
    engine: &DmaEngine<P, SimMemory, S, A>,
    t: &Target<'_>,
    opts: &RunOptions,
) -> Result<RunStats, Failure>
where
    P: Platform,
    S: AsRef<[Slot]> + Sync,
    A: PageAllocator,
{
    let cpus = opts.cpus.max(1);
    let shared = Shared::default();
    let start = Instant::now();
    let results: Vec<Option<RunStats>> = std::thread::scope(|scope| {
        let queues: Vec<_> = (0..cpus)
            .map(|cpu| {
                let shared = &shared;
                scope.spawn(move || {
                    CPU.with(|c| c.set(cpu));
                    let r = run_queue(engine, t, opts, cpu, shared, start);
                    match r {
                        Ok(stats) => Some(stats),
                        Err(e) => {
                            shared.fail(e);
                            None
                        }
                    }
                })
            })
            .collect();
        queues
            .into_iter()
            .map(|q| {
                q.join().unwrap_or_else(|_| {
                    shared.fail(Failure::Verify("a backend thread panicked".to_owned()));
                    None
                })
            })
            .collect()
    });
    if let Some(e) = shared
        .failure
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        return Err(e);
    }
    let mut stats = RunStats::default();
    for r in results.into_iter().flatten() {
        stats.merge(r);
    }
    stats.elapsed = start.elapsed();
    check(engine, t, &mut stats)?;
    Ok(stats)
}

/// One queue: its descriptor ring, its share of the transfers, the guest's pages and the
/// socket buffers.
fn run_queue<P, S, A>(
    engine: &DmaEngine<P, SimMemory, S, A>,
    t: &Target<'_>,
    opts: &RunOptions,
    cpu: usize,
    shared: &Shared,
    start: Instant,
) -> Result<RunStats, Failure>
where
    P: Platform,
    S: AsRef<[Slot]>,
    A: PageAllocator,
{
    let cpus = opts.cpus.max(1);
    let mut stats = RunStats::default();
    let busy = shared.busy();
    let ring = engine
        .alloc_coherent(&t.dev, RING_ENTRIES * DESC_BYTES)
        .map_err(|e| Failure::Dma(format!("alloc_coherent of a descriptor ring: {e}")))?;
    drop(busy);
    stats.rings.push((ring.bus(), ring.is_exchanged()));
    let share = |n: usize, i: usize| (n * i / cpus)..(n * (i + 1) / cpus);
    let mut free = Free {
        refs: share(t.domu_refs.len(), cpu).rev().collect(),
        skbs: share(t.skbs.len(), cpu).rev().collect(),
    };
    // CAST: usize fits u64.
    let (cpus64, cpu64) = (cpus as u64, cpu as u64);
    let transfers = opts.transfers / cpus64 + u64::from(cpu64 < opts.transfers % cpus64);
    // Transfer ids cpu, cpu + cpus, ...: unique across queues.
    let mut workload = Workload::with_ids(opts.seed, cpu64, cpus64);
    let result = run_with_ring(
        engine,
        t,
        opts,
        &ring,
        &mut workload,
        &mut free,
        transfers,
        shared,
        start,
        &mut stats,
    );
    let busy = shared.busy();
    // SAFETY: the device is idle on this ring and the CPU holds no reference to it.
    let freed = unsafe { engine.free_coherent(&t.dev, ring) };
    drop(busy);
    result?;
    freed.map_err(|e| Failure::Dma(format!("free_coherent of a descriptor ring: {e}")))?;
    Ok(stats)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one queue's state, named at the one call"
)]
fn run_with_ring<P, S, A>(
    engine: &DmaEngine<P, SimMemory, S, A>,
    t: &Target<'_>,
    opts: &RunOptions,
    ring: &CoherentAlloc,
    workload: &mut Workload,
    free: &mut Free,
    transfers: u64,
    shared: &Shared,
    start: Instant,
    stats: &mut RunStats,
) -> Result<(), Failure>
where
    P: Platform,
    S: AsRef<[Slot]>,
    A: PageAllocator,
{
    let mut cursor = 0usize;
    let mut last_progress = start;
    let mut done = 0u64;
    let mut next_check = opts.check_every;
    let mut deferred = None;
    let mut waiting_since: Option<Instant> = None;
    while done < transfers && !shared.stop.load(Ordering::Relaxed) {
        // CAST: usize fits u64 (here and for the batch's length).
        let want = (transfers - done).min(opts.queue_depth as u64);
        let mut batch = Vec::new();
        let mut busy = Some(shared.busy());
        while (batch.len() as u64) < want {
            let req = deferred.take().unwrap_or_else(|| workload.next_request());
            match prepare(engine, t, opts, req, free)? {
                Prepared::Ready(f) => batch.push(f),
                // The pool is full: run what is in flight first, then try again, as a
                // driver does on a DMA mapping error.
                Prepared::PoolFull(req, _) if !batch.is_empty() => {
                    stats.deferred += 1;
                    deferred = Some(req);
                    break;
                }
                // Nothing of this queue in flight: wait for the other queues to free
                // slots; with nothing in flight anywhere it is a real failure.
                Prepared::PoolFull(req, e) => {
                    if shared.stop.load(Ordering::Relaxed) {
                        // Another queue failed; its failure is the one to report.
                        return Ok(());
                    }
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if shared.in_flight.load(Ordering::Relaxed) == 0 || since.elapsed() > POOL_WAIT
                    {
                        return Err(Failure::Dma(format!(
                            "{} #{}: the pool is full with nothing of this queue in flight: {e}",
                            req.kind.name(),
                            req.id
                        )));
                    }
                    stats.deferred += 1;
                    deferred = Some(req);
                    // Let a check run meanwhile.
                    drop(busy.take());
                    std::thread::sleep(Duration::from_millis(1));
                    busy = Some(shared.busy());
                }
            }
        }
        waiting_since = None;
        // CAST: usize fits u64.
        let n = batch.len() as u64;
        let bytes_before = stats.payload_bytes;
        shared.in_flight.fetch_add(n, Ordering::Relaxed);
        let r = device_pass(t, opts, ring, &mut cursor, &batch, stats).and_then(|()| {
            batch
                .into_iter()
                .try_for_each(|f| complete(engine, t, f, free, stats))
        });
        shared.in_flight.fetch_sub(n, Ordering::Relaxed);
        drop(busy);
        r?;
        done += n;
        shared.done.fetch_add(n, Ordering::Relaxed);
        shared
            .bytes
            .fetch_add(stats.payload_bytes - bytes_before, Ordering::Relaxed);
        if done >= next_check || done == transfers {
            shared.check(engine, t, stats)?;
            next_check = done + opts.check_every;
        }
        if let Some(every) = opts.progress.filter(|_| current_cpu() == 0)
            && last_progress.elapsed() >= every
        {
            last_progress = Instant::now();
            eprintln!(
                "sim-dom0: {}: {}/{} transfers, {:.1} MiB, {:.1} s",
                opts.label,
                shared.done.load(Ordering::Relaxed),
                opts.transfers,
                mib(shared.bytes.load(Ordering::Relaxed)),
                start.elapsed().as_secs_f64()
            );
        }
    }
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
            // CAST: an offset in the 16 KiB ring fits u64.
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
// CAST: 2 fits u64.
pub const SKB_PAGES: u64 = (SKB_BYTES / 4096) as u64;
