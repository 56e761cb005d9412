//! The checks, in order. Each prints one line; a check whose precondition failed is not
//! skipped silently but reported as failed.

use super::hyp::{Flush, Traced};
use super::mem::{self, Device as SimDevice, Grant, Grants, IdentityMemory};
use super::{BootInfo, XenConsole, devchecks, say};
use aarch64_dom0::cpu::{self, IdentityCacheOps};
use aarch64_dom0::layout::{
    DOM0_RAM_BASE, DOMU_ID, FIRST_REF, FOREIGN_WINDOW, NR_GRANTS, REPLY_PAGE, SIM_REPLY_AT,
    SIM_REPLY_LEN,
};
use aarch64_dom0::pattern;
use aarch64_dom0::report::Report;
use core::fmt::Write;
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use swiotlb_xen::arm64::{
    Arm64Config, Arm64Platform, BoundedForeignStorage, BoundedForeignTable, DomainMapping,
    ProbeOptions,
};
use swiotlb_xen::init::{InitOptions, init};
use swiotlb_xen::{
    Bfn, BlockState, BusAddr, Device, DmaAttrs, DmaDirection, DmaEngine, DmaError, DmaMask,
    PageAllocator, Pfn, PhysAddr, Platform, PlatformError, SgEntry, Slot,
};
use xen_abi::{
    Errno, GNTMAP_HOST_MAP, GNTST_OKAY, GNTTAB_CACHE_CLEAN, GNTTAB_CACHE_INVAL, GnttabCacheFlush,
    GnttabMapGrantRef, GnttabUnmapGrantRef, XENFEAT_DIRECT_MAPPED, XenMemoryExchange,
    XenMemoryReservation, ops,
};

type R = Report<XenConsole>;
type Table = BoundedForeignStorage<64>;
pub(super) type Plat = Arm64Platform<'static, Traced, IdentityCacheOps, IdentityMemory, Table>;

/// The traced native hypercall every check goes through.
pub(super) static XEN: Traced = Traced::new();
static FOREIGN: BoundedForeignTable<64> = BoundedForeignTable::new();
static MEMORY: IdentityMemory = IdentityMemory;

/// A 16 KiB naturally aligned region of dom0's own RAM for the direct checks.
#[repr(C, align(16384))]
struct Region([u8; 16384]);
static mut REGION: Region = Region([0; 16384]);

/// The bounce pool: 1 MiB of dom0's RAM (the facade's smallest), aligned to its size.
const NSLABS: usize = 512;
#[repr(C, align(1048576))]
struct PoolMem([u8; NSLABS * 2048]);
static mut POOL_MEM: PoolMem = PoolMem([0; NSLABS * 2048]);
static SLOTS: [Slot; NSLABS] = [const { Slot::new() }; NSLABS];

/// Buffers of dom0's own to map (local frames).
#[repr(C, align(4096))]
struct Buf([u8; 3 * 4096]);
static mut BUF: Buf = Buf([0; 3 * 4096]);

/// The kernel's page allocator for coherent allocations: 16 pages of dom0's RAM, handed out
/// as naturally aligned power-of-two runs from a bitmap.
#[repr(C, align(65536))]
struct CoherentPages([u8; 16 * 4096]);
static mut COHERENT_PAGES: CoherentPages = CoherentPages([0; 16 * 4096]);

/// The kernel's page allocator (a bitmap over `COHERENT_PAGES`), with the records
/// [`PageAllocator::block_state`] needs (each live block's order, whether the engine
/// exchanged it), so that virtio-drivers' `dma_dealloc` can free from addresses.
pub(super) struct Pages {
    used: AtomicU32,
    /// Per page: the order of the live block starting there, or [`NO_BLOCK`].
    starts: [AtomicU8; 16],
    /// Per page: set when the block starting there was made contiguous by the engine.
    exchanged: AtomicU32,
}

/// `starts` of a page where no live block starts.
const NO_BLOCK: u8 = u8::MAX;

pub(super) static PAGES: Pages = Pages {
    used: AtomicU32::new(0),
    starts: [const { AtomicU8::new(NO_BLOCK) }; 16],
    exchanged: AtomicU32::new(0),
};

impl Pages {
    fn base() -> u64 {
        addr_of!(COHERENT_PAGES) as u64
    }

    /// The bitmap of pages in use.
    pub(super) fn used(&self) -> u32 {
        self.used.load(Ordering::Acquire)
    }

    /// The page index of `phys` if it is a page of the region.
    fn index(phys: PhysAddr) -> Option<usize> {
        let offset = phys.as_u64().checked_sub(Self::base())?;
        // CAST: checked below 16.
        (offset % 4096 == 0 && offset / 4096 < 16).then_some((offset / 4096) as usize)
    }
}

// SAFETY: hands out naturally aligned runs of the static region, each to one caller (the
// bitmap is updated with compare-and-swap), zeroed; the region is dom0's RAM, which the
// platform's PhysMemory reaches. pfn_valid answers true exactly for dom0's RAM banks.
unsafe impl PageAllocator for Pages {
    fn alloc_pages(&self, order: u32) -> Option<PhysAddr> {
        if order > 4 {
            return None;
        }
        let n = 1u32 << order;
        let mask = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
        let mut at = 0;
        while at + n <= 16 {
            let bits = mask << at;
            let cur = self.used.load(Ordering::Acquire);
            if cur & bits == 0
                && self
                    .used
                    .compare_exchange(cur, cur | bits, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                // CAST: order <= 4; at < 16.
                self.starts[at as usize].store(order as u8, Ordering::Release);
                let phys = Self::base() + u64::from(at) * 4096;
                // SAFETY: the run was just claimed by this call and lies in the region.
                unsafe {
                    core::ptr::write_bytes(
                        core::ptr::with_exposed_provenance_mut::<u8>(phys as usize),
                        0,
                        (n as usize) * 4096,
                    );
                }
                return Some(PhysAddr::new(phys));
            }
            at += n;
        }
        None
    }

    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        let Some(at) = Self::index(phys).filter(|_| order <= 4) else {
            return;
        };
        let n = 1u32 << order;
        let mask = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
        self.starts[at].store(NO_BLOCK, Ordering::Release);
        self.exchanged.fetch_and(!(1 << at), Ordering::AcqRel);
        self.used.fetch_and(!(mask << at), Ordering::AcqRel);
    }

    fn pfn_valid(&self, pfn: Pfn) -> bool {
        mem::in_ram(pfn.start().as_u64(), 4096)
    }

    fn set_exchanged(&self, phys: PhysAddr, order: u32) {
        if let Some(at) = Self::index(phys)
            && u32::from(self.starts[at].load(Ordering::Acquire)) == order
        {
            self.exchanged.fetch_or(1 << at, Ordering::AcqRel);
        }
    }

    fn block_state(&self, phys: PhysAddr, order: u32) -> Option<BlockState> {
        let live = Self::index(phys)
            .filter(|&i| u32::from(self.starts[i].load(Ordering::Acquire)) == order);
        Some(match live {
            Some(i) => BlockState::Allocated {
                exchanged: self.exchanged.load(Ordering::Acquire) & (1 << i) != 0,
            },
            None => BlockState::Free,
        })
    }
}

/// The checks that the domU's grants are needed for, with what they need.
struct Mapped {
    grants: Grants,
    /// The map requests, for the unmap.
    handles: [(u64, u64, u32); NR_GRANTS],
}

fn window_addr(slot: usize) -> u64 {
    FOREIGN_WINDOW + (slot as u64) * 4096
}

/// The domU's page index held by window slot `slot`: the grants are mapped in reverse, so
/// that consecutive window frames hold pages whose machine frames are not consecutive.
fn index_of_slot(slot: usize) -> usize {
    NR_GRANTS - 1 - slot
}

pub fn run(r: &mut R, info: &BootInfo) {
    boot_checks(r);
    ram_checks(r, info);
    let Some(platform) = platform_checks(r) else {
        r.note(format_args!(
            "    no platform: the remaining checks cannot run"
        ));
        return;
    };
    own_memory_checks(r, &platform);
    let Some(mapped) = grant_checks(r, &platform) else {
        r.note(format_args!(
            "    no grants: the remaining checks cannot run"
        ));
        return;
    };
    engine_checks(r, platform, &mapped, info);
}

/// The banks as ` base..end` each, for a check line.
struct BankList<'a>(&'a [aarch64_dom0::fdt::Range]);

impl core::fmt::Display for BankList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0
            .iter()
            .try_for_each(|b| write!(f, " {:#x}..{:#x}", b.base, b.end()))
    }
}

/// dom0's RAM as the device tree Xen gave it says: the bank the kernel runs in lies below
/// 4 GiB, and another bank lies above (for the buffers a 32-bit device cannot reach).
fn ram_checks(r: &mut R, info: &BootInfo) {
    let banks = mem::ram();
    let image = addr_of!(REGION) as u64;
    let low = banks
        .as_slice()
        .iter()
        .any(|b| b.base == DOM0_RAM_BASE && b.contains(image, 4096) && b.end() <= 1 << 32);
    let high = banks.as_slice().iter().any(|b| b.base >= 1 << 32);
    let list = BankList(banks.as_slice());
    r.check(
        "ram-banks",
        info.dtb.1 > 0 && info.banks.len == banks.len && low && high,
        format_args!(
            "device tree at {:#x} ({:#x} bytes): {} bank(s){list}; the kernel's below 4 GiB: \
             {low}, one above: {high}",
            info.dtb.0, info.dtb.1, banks.len
        ),
    );
}

fn boot_checks(r: &mut R) {
    let sctlr: u64;
    // SAFETY: reading SCTLR_EL1 has no side effect.
    unsafe { core::arch::asm!("mrs {}, sctlr_el1", out(reg) sctlr, options(nomem, nostack)) };
    let on = sctlr & 1 != 0 && sctlr & 4 != 0 && sctlr & (1 << 12) != 0;
    r.check(
        "boot",
        on,
        format_args!(
            "loaded 1:1 at {DOM0_RAM_BASE:#x}, MMU and caches on (SCTLR_EL1 {sctlr:#x}), \
             counter {} Hz",
            cpu::counter_hz()
        ),
    );
    match ops::xen_version(&XEN) {
        Ok(v) => {
            r.set_xen_version(u32::from(v.major), u32::from(v.minor));
            r.check(
                "xen-version",
                v.major == 4 && v.minor >= 15,
                format_args!("XENVER_version: Xen {v}"),
            )
        }
        Err(e) => r.check("xen-version", false, format_args!("{e}")),
    };
}

fn platform_checks(r: &mut R) -> Option<Plat> {
    match ops::has_feature(&XEN, XENFEAT_DIRECT_MAPPED) {
        Ok(set) => r.check(
            "direct-mapped",
            set,
            format_args!(
                "XENFEAT_direct_mapped (17) {}",
                if set { "set" } else { "clear" }
            ),
        ),
        Err(e) => r.check("direct-mapped", false, format_args!("{e}")),
    };
    // SAFETY: XEN traps to the Xen this kernel runs on; IdentityMemory reaches dom0's RAM 1:1,
    // where contiguous regions are made; the mapping comes from Xen's own answer.
    let probed = unsafe {
        Arm64Platform::probe(
            &XEN,
            &FOREIGN,
            IdentityCacheOps,
            &MEMORY,
            ProbeOptions::initial_domain(),
        )
    };
    match probed {
        Ok(p) => {
            let c = p.config();
            r.check(
                "probe",
                c.mapping == DomainMapping::Direct && c.cache_flush,
                format_args!(
                    "Arm64Platform::probe: mapping {:?}, GNTTABOP_cache_flush {}",
                    c.mapping,
                    if c.cache_flush { "present" } else { "absent" }
                ),
            );
            Some(p)
        }
        Err(e) => {
            r.check("probe", false, format_args!("{e}"));
            None
        }
    }
}

fn flush(addr: u64, offset: u16, length: u16, op: u32) -> Result<(), Errno> {
    let mut req = GnttabCacheFlush::by_bus_addr(addr, offset, length, op);
    // SAFETY: the page is dom0's own scratch region or a granted page that nothing else uses
    // during the checks; a clean-and-invalidate loses no data.
    unsafe { ops::cache_flush(&XEN, &mut req) }.map_err(|e| e.errno)
}

fn own_memory_checks(r: &mut R, platform: &Plat) {
    let region = addr_of!(REGION) as u64;
    let res = flush(region, 0, 4096, GNTTAB_CACHE_CLEAN | GNTTAB_CACHE_INVAL);
    r.check(
        "cache-flush-own",
        res.is_ok(),
        format_args!("GNTTABOP_cache_flush CLEAN|INVAL of own page {region:#x}: {res:?}"),
    );
    let res = flush(region, 0x800, 0x900, GNTTAB_CACHE_CLEAN);
    r.check(
        "cache-flush-crossing",
        res == Err(Errno::EINVAL),
        format_args!("offset 0x800 + length 0x900 > 4096: {res:?} (EINVAL expected)"),
    );

    // XENMEM_exchange is PV-only: Xen on Arm refuses it, so contiguity must come from the 1:1
    // map.
    let mut frame_in = [region >> 12];
    let mut frame_out = [region >> 12];
    let mut xchg = XenMemoryExchange {
        in_: XenMemoryReservation::with_frames(&mut frame_in, 0, 0),
        out: XenMemoryReservation::with_frames(&mut frame_out, 0, 32),
        nr_exchanged: 0,
    };
    // SAFETY: both lists are live locals; the frame is dom0's scratch page, unused; Xen on Arm
    // refuses the operation before looking at it (and if it did exchange, the identity check
    // below the call would show it).
    let res = unsafe { ops::memory_exchange(&XEN, &mut xchg) };
    r.check(
        "exchange-refused",
        matches!(res, Err(ref e) if e.errno == Errno::new(95)) && xchg.nr_exchanged == 0,
        format_args!(
            "XENMEM_exchange: {} (EOPNOTSUPP, -95 expected), {} exchanged",
            match &res {
                Ok(()) => "succeeded",
                Err(_) => "refused",
            },
            xchg.nr_exchanged
        ),
    );
    if let Err(e) = res {
        say!("    XENMEM_exchange -> {e}");
    }

    // The identity contiguous region: bus = phys, zeroed, refused past the address limit.
    // SAFETY: REGION is dom0's own and referenced nowhere; it is written through a raw pointer.
    unsafe { core::ptr::write_bytes(addr_of_mut!(REGION).cast::<u8>(), 0xa5, 16384) };
    let phys = PhysAddr::new(region);
    // SAFETY: the region is 16 KiB aligned and owned by these checks alone.
    let res = unsafe { platform.create_contiguous_region(phys, 2, 32) };
    // SAFETY: reading the region back through a raw pointer, nothing else uses it.
    let zeroed = unsafe { (*addr_of!(REGION)).0.iter().all(|&b| b == 0) };
    r.check(
        "contiguous-identity",
        res == Ok(BusAddr::new(region)) && zeroed,
        format_args!(
            "create_contiguous_region({region:#x}, order 2, 32 bits): {res:?}, zeroed {zeroed}"
        ),
    );
    // SAFETY: as above.
    let bits = unsafe { platform.create_contiguous_region(phys, 2, 30) };
    // SAFETY: as above; the same region and order.
    let destroyed = unsafe { platform.destroy_contiguous_region(phys, 2) };
    r.check(
        "contiguous-limits",
        matches!(
            bits,
            Err(PlatformError::AddressBits {
                bits: 30,
                min: 31,
                ..
            })
        ) && destroyed.is_ok(),
        format_args!("a 1:1 region at {region:#x} below 2^30: {bits:?}; destroy: {destroyed:?}"),
    );
}

fn grant_checks(r: &mut R, platform: &Plat) -> Option<Mapped> {
    // Wait until the domU has granted its last page (it fills the entries in order).
    let start = cpu::millis();
    let last = FIRST_REF + NR_GRANTS as u32 - 1;
    let mut tries = 0u32;
    let waited = loop {
        tries += 1;
        let mut probe = GnttabMapGrantRef::new(window_addr(0), GNTMAP_HOST_MAP, last, DOMU_ID);
        // SAFETY: window frame 0 is in dom0's foreign window, unused until the real map.
        let res = unsafe { ops::grant_map(&XEN, core::slice::from_mut(&mut probe)) };
        if res.is_ok() && probe.status == GNTST_OKAY {
            let mut un =
                GnttabUnmapGrantRef::new(probe.host_addr, probe.dev_bus_addr, probe.handle);
            // SAFETY: the mapping was just made and nothing uses it.
            let _ = unsafe { ops::grant_unmap(&XEN, core::slice::from_mut(&mut un)) };
            break Some(cpu::millis() - start);
        }
        if cpu::millis() - start > 60_000 {
            break None;
        }
        let _ = ops::sched_yield(&XEN);
    };
    r.check(
        "domu-granted",
        waited.is_some(),
        format_args!(
            "domain {DOMU_ID} granted ref {last} after {} ms ({tries} map attempts)",
            waited.unwrap_or(60_000)
        ),
    );
    waited?;

    // Map every grant, in reverse order across the window, with GNTMAP_host_map alone (Xen
    // on Arm refuses GNTMAP_device_map).
    let mut reqs = [GnttabMapGrantRef::default(); NR_GRANTS];
    for (slot, req) in reqs.iter_mut().enumerate() {
        // CAST: a small index.
        let gref = FIRST_REF + index_of_slot(slot) as u32;
        *req = GnttabMapGrantRef::new(window_addr(slot), GNTMAP_HOST_MAP, gref, DOMU_ID);
    }
    // SAFETY: the window frames are dom0's foreign window, which holds nothing else.
    let res = unsafe { ops::grant_map(&XEN, &mut reqs) };
    let statuses_ok = reqs.iter().all(|q| q.status == GNTST_OKAY);
    let buses_ok = reqs.iter().enumerate().all(|(i, q)| {
        q.dev_bus_addr != 0
            && q.dev_bus_addr & 0xfff == 0
            && q.dev_bus_addr != q.host_addr
            && !mem::in_ram(q.dev_bus_addr, 4096)
            && reqs[..i].iter().all(|p| p.dev_bus_addr != q.dev_bus_addr)
    });
    r.check(
        "grant-map",
        res.is_ok() && statuses_ok && buses_ok,
        format_args!(
            "GNTTABOP_map_grant_ref x{NR_GRANTS} (GNTMAP_host_map): {:?}, statuses {:?}, \
             dev_bus_addr {:#x} {:#x} {:#x} {:#x} at host_addr {:#x}..",
            res.map_err(|e| e.errno),
            reqs.map(|q| q.status),
            reqs[0].dev_bus_addr,
            reqs[1 % NR_GRANTS].dev_bus_addr,
            reqs[2 % NR_GRANTS].dev_bus_addr,
            reqs[3 % NR_GRANTS].dev_bus_addr,
            reqs[0].host_addr,
        ),
    );
    if res.is_err() || !statuses_ok {
        return None;
    }
    let mut grants = Grants::default();
    let mut handles = [(0, 0, 0); NR_GRANTS];
    for (slot, q) in reqs.iter().enumerate() {
        grants.list[slot] = Grant {
            index: index_of_slot(slot),
            host: q.host_addr,
            bus: q.dev_bus_addr,
        };
        handles[slot] = (q.host_addr, q.dev_bus_addr, q.handle);
    }
    grants.len = NR_GRANTS;

    // The CPU reads the domU's data through the window.
    let mut bad = None;
    let mut gfn_differs = true;
    for g in &grants.list {
        // SAFETY: the page is mapped at `g.host` (status okay) and only read here.
        let page = unsafe {
            core::slice::from_raw_parts(
                core::ptr::with_exposed_provenance::<u8>(g.host as usize),
                4096,
            )
        };
        let h = pattern::header(page);
        let ok = h.is_some_and(|h| h.index as usize == g.index)
            && pattern::first_mismatch(&page[pattern::HEADER..], g.index, pattern::HEADER, false)
                .is_none();
        if let Some(h) = h {
            gfn_differs &= u64::from(h.gfn) << 12 != g.bus;
        }
        if !ok && bad.is_none() {
            bad = Some((g.index, h));
        }
    }
    // SAFETY: as above.
    let h0 = pattern::header(unsafe {
        core::slice::from_raw_parts(
            core::ptr::with_exposed_provenance::<u8>(grants.list[0].host as usize),
            16,
        )
    });
    r.check(
        "domu-data",
        bad.is_none(),
        format_args!(
            "{NR_GRANTS} pages read through the window; page {} (domU gfn {:#x}) is machine \
             {:#x} at host {:#x}; first bad page: {bad:?}",
            grants.list[0].index,
            h0.map_or(0, |h| h.gfn),
            grants.list[0].bus,
            grants.list[0].host,
        ),
    );
    r.check(
        "machine-not-guest",
        gfn_differs,
        format_args!("every dev_bus_addr differs from the domU's guest address of the page"),
    );

    // Record them in the foreign table.
    // SAFETY: the requests are the unchanged results of this domain's map through XEN, and
    // nothing has used the mappings for DMA yet.
    let summary = unsafe { platform.record_grant_maps(&mut reqs) };
    r.check(
        "record-grant-maps",
        summary.recorded == NR_GRANTS && summary.all_recorded() && FOREIGN.len() == NR_GRANTS,
        format_args!(
            "recorded {}, skipped {}, failed {}; table holds {}",
            summary.recorded,
            summary.skipped,
            summary.failed,
            FOREIGN.len()
        ),
    );
    let translates = grants.list.iter().all(|g| {
        platform.pfn_to_bfn(PhysAddr::new(g.host).frame()) == Some(BusAddr::new(g.bus).frame())
            && platform.bfn_to_local_pfn(Bfn::new(g.host >> 12)).is_none()
    });
    let own = Pfn::new(DOM0_RAM_BASE >> 12);
    let own_identity = platform.pfn_to_bfn(own) == Some(Bfn::new(own.as_u64()))
        && platform.bfn_to_local_pfn(Bfn::new(own.as_u64())) == Some(own);
    r.check(
        "translate",
        translates && own_identity,
        format_args!(
            "pfn_to_bfn(window frame) = machine frame for every grant, the window frames are \
             not local; own frame {:#x} translates 1:1",
            own.as_u64()
        ),
    );
    let truth = grants.list[1].bus == grants.list[0].bus + 4096;
    let answer = platform.is_bus_contiguous(PhysAddr::new(grants.list[0].host), 8192);
    r.check(
        "contiguity",
        answer == truth && platform.is_bus_contiguous(PhysAddr::new(grants.list[0].host + 16), 4000),
        format_args!(
            "window frames 0-1 hold machine {:#x}, {:#x}: bus-contiguous {answer} ({truth} expected)",
            grants.list[0].bus, grants.list[1].bus
        ),
    );
    let noncoherent = Device::new(DmaMask::FULL).with_coherent(false);
    let coherent = Device::new(DmaMask::FULL);
    let g = grants.list[0];
    let (host, bus) = (PhysAddr::new(g.host), BusAddr::new(g.bus));
    // SAFETY: the same configuration as the probed platform, with the cache flush declared
    // absent: answers only, no device sees them.
    let no_flush = unsafe {
        Arm64Platform::new(
            &XEN,
            &FOREIGN,
            IdentityCacheOps,
            &MEMORY,
            Arm64Config::new(DomainMapping::Direct, false),
        )
    };
    r.check(
        "needs-bounce",
        !platform.needs_bounce(&noncoherent, host, bus)
            && no_flush.needs_bounce(&noncoherent, host, bus)
            && !no_flush.needs_bounce(&coherent, host, bus),
        format_args!(
            "foreign page, non-coherent device: bounce only without GNTTABOP_cache_flush; \
             never for a coherent device"
        ),
    );

    // The platform's cache maintenance of a foreign page, through the real hypercall: known
    // by its host address (whose frame differs from the bus frame), then by bus address
    // alone (`None`, as the engine hands it over at unmap and sync).
    let before = XEN.flush_counts();
    let res = platform.sync_for_device(
        &noncoherent,
        Some(PhysAddr::new(g.host + 0x100)),
        BusAddr::new(g.bus + 0x100),
        0x300,
        DmaDirection::ToDevice,
    );
    let last = XEN.last_flush();
    let want = Flush {
        bus: g.bus,
        offset: 0x100,
        length: 0x300,
        op: GNTTAB_CACHE_CLEAN,
        rc: 0,
    };
    r.check(
        "sync-for-device-foreign",
        res.is_ok() && last == Some(want) && XEN.flush_counts().0 == before.0 + 1,
        format_args!("ToDevice at +0x100, 0x300 bytes: {res:?}, Xen saw {last:?}"),
    );
    let res = platform.sync_for_cpu(
        &noncoherent,
        None,
        BusAddr::new(g.bus),
        4096,
        DmaDirection::FromDevice,
    );
    let last = XEN.last_flush();
    let want = Flush {
        bus: g.bus,
        offset: 0,
        length: 4096,
        op: GNTTAB_CACHE_INVAL,
        rc: 0,
    };
    r.check(
        "sync-for-cpu-foreign",
        res.is_ok() && last == Some(want),
        format_args!("FromDevice, whole page, by bus address alone: {res:?}, Xen saw {last:?}"),
    );
    Some(Mapped { grants, handles })
}

/// The DMA engine of the checks.
pub(super) type Engine = DmaEngine<Plat, IdentityMemory, &'static [Slot], &'static Pages>;

/// The bounce pool's bus (= physical) range: start and end.
pub(super) type Pool = (u64, u64);

/// The grant in `grants` holding the domU's page `index`.
pub(super) fn grant_of(grants: &Grants, index: usize) -> Grant {
    grants.list[..grants.len]
        .iter()
        .copied()
        .find(|g| g.index == index)
        .unwrap_or_default()
}

/// Reads `len` bytes at CPU address `addr` (1:1) into `out`.
pub(super) fn cpu_read(addr: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        // SAFETY: the callers pass addresses of mapped window pages or dom0's own buffers.
        *b = unsafe { core::ptr::with_exposed_provenance::<u8>(addr as usize + i).read_volatile() };
    }
}

fn engine_checks(r: &mut R, platform: Plat, mapped: &Mapped, info: &BootInfo) {
    let grants = &mapped.grants;
    // The pool lies in `.bss`, in dom0's first bank: below 4 GiB, so a 32-bit device
    // reaches it (1:1: bus = phys).
    #[cfg(not(swiotlb_mutant = "pool_above_mask"))]
    let (pool_base, options) = (addr_of!(POOL_MEM) as u64, InitOptions::default());
    // The mutant of `cargo xtask xen-qemu mutants` on arm64: the kernel places the pool in
    // its bank above 4 GiB (1 MiB in, past the device checks' buffers) and lifts init's
    // address limit, so init accepts it and every bounce lands out of the device's reach.
    #[cfg(swiotlb_mutant = "pool_above_mask")]
    let (pool_base, options) = (
        mem::ram()
            .as_slice()
            .iter()
            .find(|b| b.base >= 1 << 32 && b.size >= 2 << 20)
            .map_or(addr_of!(POOL_MEM) as u64, |b| b.base + (1 << 20)),
        InitOptions::default().with_max_address_bits(64),
    );
    let pool_bytes = NSLABS * 2048;
    // SAFETY: the pool's memory is dom0's RAM (POOL_MEM, or for the mutant a part of the high
    // bank nothing else uses), given to the pool alone from now on (no reference);
    // IdentityMemory reaches it, every buffer mapped below (dom0's RAM and the foreign
    // window) and the coherent pages, all in the platform's (1:1) physical space; nothing
    // else changes the pool's translation.
    let built = unsafe {
        init(
            platform,
            IdentityMemory,
            PhysAddr::new(pool_base),
            pool_bytes,
            &SLOTS[..],
            &PAGES,
            options,
        )
    };
    let (engine, report): (Engine, _) = match built {
        Ok(b) => b,
        Err(e) => {
            r.check(
                "pool-init",
                false,
                format_args!("swiotlb_xen::init::init: {e}"),
            );
            return;
        }
    };
    let pool_end = pool_base + pool_bytes as u64;
    r.check(
        "pool-init",
        report.bytes == pool_bytes
            && report.halvings == 0
            && report.create_failures == 0
            && report
                .chunks
                .iter()
                .all(|c| c.bus.as_u64() == c.phys.as_u64())
            && report.bus_top == BusAddr::new(pool_end - 1),
        format_args!(
            "swiotlb_xen::init::init ({} platform): {:#x} bytes at {pool_base:#x} in {} \
             chunk(s), {} create_contiguous_region call(s) (1:1: nothing to exchange), \
             bus top {}",
            swiotlb_xen::native::ARCH,
            report.bytes,
            report.chunks.len(),
            report.create_calls,
            report.bus_top
        ),
    );
    let dev32 = Device::new(DmaMask::BITS_32).with_coherent(false);
    let mask30 = DmaMask::from_bits(30).unwrap_or(DmaMask::BITS_32);
    r.check(
        "dma-supported",
        engine.dma_supported(&dev32, DmaMask::BITS_32) && !engine.dma_supported(&dev32, mask30),
        format_args!(
            "a 32-bit device reaches the pool, a 30-bit one does not; max_mapping_size {:#x}",
            engine.max_mapping_size(&dev32)
        ),
    );

    let device = SimDevice { grants };
    let noncoherent = Device::new(DmaMask::FULL).with_coherent(false);

    // 1. A foreign page, ToDevice: direct, the machine address, flushed through Xen.
    let g = grant_of(grants, 0);
    let before = engine.stats();
    let flushes = XEN.flush_counts().0;
    // SAFETY: the window page stays mapped until after the unmap below and nothing holds a
    // reference to it.
    let res = unsafe {
        engine.map_page(
            &noncoherent,
            PhysAddr::new(g.host + 0x40),
            0x400,
            DmaDirection::ToDevice,
            DmaAttrs::empty(),
        )
    };
    let last = XEN.last_flush();
    let mut seen = [0u8; 0x400];
    let read = res.is_ok_and(|b| device.read(b.as_u64(), &mut seen));
    let data_ok = read && pattern::first_mismatch(&seen, g.index, 0x40, false).is_none();
    let want = Flush {
        bus: g.bus,
        offset: 0x40,
        length: 0x400,
        op: GNTTAB_CACHE_CLEAN,
        rc: 0,
    };
    r.check(
        "map-foreign-to-device",
        res == Ok(BusAddr::new(g.bus + 0x40))
            && last == Some(want)
            && XEN.flush_counts().0 == flushes + 1
            && engine.stats().direct_maps == before.direct_maps + 1
            && data_ok,
        format_args!(
            "map_page(host {:#x}, 0x400, ToDevice) -> {res:?} (machine {:#x} expected), \
             Xen flushed {last:?}, device read the domU's bytes: {data_ok}",
            g.host + 0x40,
            g.bus + 0x40
        ),
    );
    let un = res.map(|b| {
        engine.unmap_page(
            &noncoherent,
            b,
            0x400,
            DmaDirection::ToDevice,
            DmaAttrs::empty(),
        )
    });
    r.check(
        "unmap-foreign-to-device",
        matches!(un, Ok(Ok(()))) && XEN.flush_counts().0 == flushes + 1,
        format_args!("unmap_page: {un:?}, no flush for the CPU after ToDevice"),
    );

    // 2. A foreign page, FromDevice: INVAL before the device writes and after, the CPU then
    //    sees what the device wrote (outside the bytes the domU waits for: the real device
    //    writes those).
    let g = grant_of(grants, REPLY_PAGE);
    let phys = PhysAddr::new(g.host + SIM_REPLY_AT as u64);
    // SAFETY: as above.
    let res = unsafe {
        engine.map_page(
            &noncoherent,
            phys,
            SIM_REPLY_LEN,
            DmaDirection::FromDevice,
            DmaAttrs::empty(),
        )
    };
    let map_flush = XEN.last_flush();
    let wrote = res.is_ok_and(|b| {
        device.write(b.as_u64(), SIM_REPLY_LEN, |i| {
            pattern::reply_byte(REPLY_PAGE, SIM_REPLY_AT + i)
        })
    });
    let un = res.map(|b| {
        engine.unmap_page(
            &noncoherent,
            b,
            SIM_REPLY_LEN,
            DmaDirection::FromDevice,
            DmaAttrs::empty(),
        )
    });
    let unmap_flush = XEN.last_flush();
    let mut back = [0u8; SIM_REPLY_LEN];
    cpu_read(phys.as_u64(), &mut back);
    let cpu_sees = pattern::first_mismatch(&back, REPLY_PAGE, SIM_REPLY_AT, true).is_none();
    let flushed =
        |f: Option<Flush>, op| f.is_some_and(|f| f.bus == g.bus && f.op == op && f.rc == 0);
    // The map invalidates the foreign page for the device; the unmap of a direct mapping,
    // whose size the engine cannot check against a record, cleans and invalidates (the
    // preserving hook: a size too large cannot discard anybody's dirty lines), where Linux
    // only invalidates (docs/engine.md).
    let preserving = GNTTAB_CACHE_CLEAN | GNTTAB_CACHE_INVAL;
    r.check(
        "map-foreign-from-device",
        res == Ok(BusAddr::new(g.bus + SIM_REPLY_AT as u64))
            && wrote
            && matches!(un, Ok(Ok(())))
            && flushed(map_flush, GNTTAB_CACHE_INVAL)
            && flushed(unmap_flush, preserving)
            && cpu_sees,
        format_args!(
            "map_page(FromDevice) -> {res:?}, device wrote {SIM_REPLY_LEN:#x} bytes, unmap {un:?}; \
             INVAL at map {map_flush:?}, CLEAN|INVAL at unmap {unmap_flush:?}; CPU sees the \
             write: {cpu_sees}"
        ),
    );

    // 3. A range across two window frames whose machine frames are not consecutive: bounced
    //    through the pool (local memory: the kernel's cache hook, no hypercall), bytes copied
    //    in, the device's write copied back to both foreign pages.
    let (g0, g1) = (grants.list[0], grants.list[1]);
    let straddles = g1.bus != g0.bus + 4096;
    let phys = PhysAddr::new(g0.host + 0xf80);
    let flushes = XEN.flush_counts().0;
    let before = engine.stats();
    // What the CPU sees there before the map (the domU's header and pattern, as left by the
    // checks above).
    let mut original = [0u8; 0x100];
    cpu_read(phys.as_u64(), &mut original);
    // SAFETY: as above; both window pages stay mapped until after the unmap.
    let res = unsafe {
        engine.map_page(
            &noncoherent,
            phys,
            0x100,
            DmaDirection::Bidirectional,
            DmaAttrs::empty(),
        )
    };
    let in_pool = res.is_ok_and(|b| (pool_base..pool_end).contains(&b.as_u64()));
    let mut seen = [0u8; 0x100];
    let read = res.is_ok_and(|b| device.read(b.as_u64(), &mut seen));
    let copied_in = read && seen == original;
    let wrote = res.is_ok_and(|b| {
        device.write(b.as_u64(), 0x100, |i| {
            if i < 0x80 {
                pattern::reply_byte(g0.index, 0xf80 + i)
            } else {
                pattern::reply_byte(g1.index, i - 0x80)
            }
        })
    });
    let un = res.map(|b| {
        engine.unmap_page(
            &noncoherent,
            b,
            0x100,
            DmaDirection::Bidirectional,
            DmaAttrs::empty(),
        )
    });
    let mut a = [0u8; 0x80];
    let mut b = [0u8; 0x80];
    cpu_read(g0.host + 0xf80, &mut a);
    cpu_read(g1.host, &mut b);
    let copied_back = pattern::first_mismatch(&a, g0.index, 0xf80, true).is_none()
        && pattern::first_mismatch(&b, g1.index, 0, true).is_none();
    let stats = engine.stats();
    r.check(
        "bounce-straddling-foreign",
        straddles
            && in_pool
            && copied_in
            && wrote
            && matches!(un, Ok(Ok(())))
            && copied_back
            && stats.bounced_maps == before.bounced_maps + 1
            && XEN.flush_counts().0 == flushes,
        format_args!(
            "host {:#x}+0x100 over machine {:#x} / {:#x} -> {res:?} in the pool: {in_pool}; \
             copied in {copied_in}, back {copied_back}; unmap {un:?}; no Xen flush for the \
             local bounce buffer",
            phys.as_u64(),
            g0.bus,
            g1.bus
        ),
    );

    // 4. dom0's own memory: the identity path, or a bounce when forced; a device that
    //    cannot reach the pool gets an error and nothing stays mapped.
    let buf = addr_of_mut!(BUF).cast::<u8>();
    // SAFETY: BUF is dom0's own and referenced nowhere.
    unsafe {
        for i in 0..3 * 4096 {
            buf.add(i).write_volatile(pattern::byte(7, i));
        }
    }
    let phys = PhysAddr::new(buf as u64 + 0x800);
    // SAFETY: BUF stays valid and unreferenced until the unmaps below.
    let direct = unsafe {
        engine.map_page(
            &dev32,
            phys,
            0x2000,
            DmaDirection::ToDevice,
            DmaAttrs::empty(),
        )
    };
    let un = direct
        .map(|b| engine.unmap_page(&dev32, b, 0x2000, DmaDirection::ToDevice, DmaAttrs::empty()));
    r.check(
        "map-own-identity",
        direct == Ok(BusAddr::new(phys.as_u64())) && matches!(un, Ok(Ok(()))),
        format_args!(
            "own buffer {:#x}+0x2000 for a 32-bit device -> {direct:?} (bus = phys); unmap {un:?}",
            phys.as_u64()
        ),
    );
    let forced = Device::new(DmaMask::BITS_32)
        .with_coherent(false)
        .with_force_bounce(true);
    // SAFETY: as above.
    let res = unsafe {
        engine.map_page(
            &forced,
            phys,
            0x2000,
            DmaDirection::ToDevice,
            DmaAttrs::empty(),
        )
    };
    let mut seen = [0u8; 0x2000];
    let copied = res.is_ok_and(|b| {
        (pool_base..pool_end).contains(&b.as_u64()) && device.read(b.as_u64(), &mut seen)
    }) && pattern::first_mismatch(&seen, 7, 0x800, false).is_none();
    let un = res.map(|b| {
        engine.unmap_page(
            &forced,
            b,
            0x2000,
            DmaDirection::ToDevice,
            DmaAttrs::empty(),
        )
    });
    r.check(
        "map-own-forced-bounce",
        copied && matches!(un, Ok(Ok(()))),
        format_args!(
            "forced bounce -> {res:?}, the pool copy holds the buffer: {copied}; unmap {un:?}"
        ),
    );
    let dev30 = Device::new(mask30).with_coherent(false);
    // SAFETY: as above.
    let res = unsafe {
        engine.map_page(
            &dev30,
            phys,
            0x100,
            DmaDirection::ToDevice,
            DmaAttrs::empty(),
        )
    };
    let used = engine.pool().map_or(usize::MAX, |p| p.stats().used);
    r.check(
        "map-unreachable",
        matches!(res, Err(DmaError::BounceUnreachable { .. })) && used == 0,
        format_args!("a 30-bit device and a pool above 1 GiB: {res:?}; slots in use {used}"),
    );

    // 5. Coherent memory: the identity, nothing exchanged.
    let res = engine.alloc_coherent(&dev32, 0x3000);
    match res {
        Ok(a) => {
            let (p, b, sz, ord, ex) = (a.phys(), a.bus(), a.size(), a.order(), a.is_exchanged());
            let mut z = [1u8; 64];
            cpu_read(p.as_u64() + 0x3000 - 64, &mut z);
            // SAFETY: the allocation came from this engine and nothing uses it.
            let freed = unsafe { engine.free_coherent(&dev32, a) };
            r.check(
                "coherent-identity",
                b.as_u64() == p.as_u64()
                    && !ex
                    && sz == 0x3000
                    && ord == 2
                    && z == [0; 64]
                    && freed.is_ok(),
                format_args!(
                    "alloc_coherent(0x3000) -> {p}, {b} (identity), {sz:#x} bytes, \
                     order {ord}, exchanged {ex}, zeroed; free {}",
                    if freed.is_ok() { "ok" } else { "failed" }
                ),
            );
        }
        Err(e) => {
            r.check(
                "coherent-identity",
                false,
                format_args!("alloc_coherent: {e}"),
            );
        }
    }

    // 6. The real device: the edu DMA checks, the domU's grants still mapped.
    devchecks::run(r, &engine, (pool_base, pool_end), grants, info);
    super::virtio::run(r, &engine, info);

    // 7. A scatter-gather list of every granted page and one page of dom0's own,
    //    Bidirectional: each foreign entry maps to its machine address with one Xen flush per
    //    page (CLEAN), a partial sync for the CPU flushes only its range (INVAL), the unmap
    //    invalidates every foreign page again; the local page goes through the kernel's hook.
    let own = PhysAddr::new(buf as u64);
    let mut sg = [SgEntry::default(); NR_GRANTS + 1];
    for (e, g) in sg.iter_mut().zip(&grants.list) {
        *e = SgEntry::new(PhysAddr::new(g.host), 4096);
    }
    sg[NR_GRANTS] = SgEntry::new(own, 4096);
    let mut snapshot = [[0u8; 4096]; NR_GRANTS + 1];
    for (e, snap) in sg.iter().zip(snapshot.iter_mut()) {
        cpu_read(e.phys.as_u64(), snap);
    }
    let flushes = XEN.flush_counts().0;
    // SAFETY: the window pages and BUF stay mapped and unreferenced until unmap_sg below (the
    // domU is idle after its acknowledgement).
    let res = unsafe {
        engine.map_sg(
            &noncoherent,
            &mut sg,
            DmaDirection::Bidirectional,
            DmaAttrs::empty(),
        )
    };
    let map_flushes = XEN.flush_counts().0 - flushes;
    let addressed = sg[..NR_GRANTS]
        .iter()
        .zip(&grants.list)
        .all(|(e, g)| e.dma_address.as_u64() == g.bus)
        && sg[NR_GRANTS].dma_address.as_u64() == own.as_u64();
    let mut seen = [0u8; 4096];
    let device_sees = sg
        .iter()
        .zip(&snapshot)
        .all(|(e, snap)| device.read(e.dma_address.as_u64(), &mut seen) && seen == *snap);
    let g = grants.list[1];
    let partial = engine.sync_single_for_cpu(
        &noncoherent,
        BusAddr::new(g.bus + 0x200),
        0x100,
        DmaDirection::Bidirectional,
    );
    let partial_flush = XEN.last_flush();
    let unmapped = engine.unmap_sg(
        &noncoherent,
        &sg,
        DmaDirection::Bidirectional,
        DmaAttrs::empty(),
    );
    let total = XEN.flush_counts().0 - flushes;
    let nr = NR_GRANTS as u64;
    r.check(
        "map-sg-foreign",
        res == Ok(NR_GRANTS + 1)
            && addressed
            && device_sees
            && map_flushes == nr
            && partial.is_ok()
            && partial_flush
                == Some(Flush {
                    bus: g.bus,
                    offset: 0x200,
                    length: 0x100,
                    // A sync of a direct mapping: the preserving hook, as at unmap.
                    op: GNTTAB_CACHE_CLEAN | GNTTAB_CACHE_INVAL,
                    rc: 0,
                })
            && unmapped.is_ok()
            && total == 2 * nr + 1,
        format_args!(
            "map_sg of {NR_GRANTS} granted pages + 1 own page -> {res:?}, each at its machine \
             (own: 1:1) address: {addressed}, device reads match: {device_sees}; Xen flushes: \
             {map_flushes} at map, partial sync {partial_flush:?}, {total} in all \
             ({} expected); unmap_sg {unmapped:?}",
            2 * nr + 1
        ),
    );

    // 8. Unmap the grants and clear the table; the window frames translate 1:1 again, and
    //    Xen refuses to flush a page dom0 no longer holds.
    let mut unmaps = mapped
        .handles
        .map(|(h, b, handle)| GnttabUnmapGrantRef::new(h, b, handle));
    // SAFETY: nothing uses the mappings any more (every DMA mapping was unmapped above).
    let res = unsafe { ops::grant_unmap(&XEN, &mut unmaps) };
    let platform = engine.platform();
    // SAFETY: the requests are the results of that unmap; the window frames are not used for
    // DMA again.
    let cleared = unsafe { platform.clear_grant_unmaps(&unmaps) };
    let w = Pfn::new(FOREIGN_WINDOW >> 12);
    r.check(
        "unmap-and-clear",
        res.is_ok()
            && unmaps.iter().all(|u| u.status == GNTST_OKAY)
            && cleared.cleared == NR_GRANTS
            && FOREIGN.is_empty()
            && platform.pfn_to_bfn(w) == Some(Bfn::new(w.as_u64())),
        format_args!(
            "GNTTABOP_unmap_grant_ref: {:?}, statuses {:?}; cleared {}, table empty {}",
            res.map_err(|e| e.errno),
            unmaps.map(|u| u.status),
            cleared.cleared,
            FOREIGN.is_empty()
        ),
    );
    let g = grants.list[0];
    let direct = flush(g.bus, 0, 64, GNTTAB_CACHE_CLEAN);
    let through = engine.sync_single_for_device(
        &noncoherent,
        BusAddr::new(g.bus),
        64,
        DmaDirection::ToDevice,
    );
    r.check(
        "flush-after-unmap",
        direct == Err(Errno::EINVAL)
            && matches!(
                through,
                Err(DmaError::CacheMaintenance {
                    source: PlatformError::Hypercall {
                        op: "GNTTABOP_cache_flush",
                        errno: 22
                    },
                    ..
                })
            ),
        format_args!(
            "GNTTABOP_cache_flush of the unmapped page: {direct:?}; through the engine: {through:?}"
        ),
    );
    let s = engine.stats();
    let (n, failed) = XEN.flush_counts();
    say!(
        "    engine: {} direct maps, {} bounced, {} map failures; Xen cache flushes {n} ({failed} refused)",
        s.direct_maps,
        s.bounced_maps,
        s.map_failures
    );
}
