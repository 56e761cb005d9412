//! The checks, one console line each, and the verdict.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use swiotlb_xen::x86_pv::{X86PvError, X86PvPlatform, boot as pvboot, p2m as p2menc};
use swiotlb_xen::{Bfn, BufferMemory, Pfn, PhysAddr, PhysMemory, PlatformError};
use xen_abi::{DOMID_SELF, Errno, GuestHandle, XENMEM_CURRENT_RESERVATION, XenMemoryExchange};

use crate::console::Line;
use crate::edu::DMA_MASK_BITS;
use crate::hyp::{COUNTERS, Counted, Counts};
use crate::mmu::{Mmu, RAM_FLAGS};
use crate::{VIRT_BASE, fmt_line, kprintln};

/// The platform the checks use: the native trap (counted) and the kernel's memory.
pub type Pv = X86PvPlatform<'static, Counted, KernelMemory>;

/// The outcome of one check: details to print either way.
pub type Outcome = Result<Line, Line>;

/// A page-aligned, `ALIGN`-aligned block of `.bss`.
#[repr(C, align(65536))]
pub struct Block64K<const N: usize>(pub [u8; N]);

/// A 64 KiB region (order 4) for the contiguous-region checks.
static mut REGION: Block64K<65536> = Block64K([0; 65536]);

/// Xen's `start_info` magic for a 64-bit PV guest (followed by a version suffix or NUL).
const START_INFO_MAGIC: &[u8] = b"xen-3.0-x86_64";
/// The frames below the device's DMA mask.
pub const MASK_FRAMES: u64 = 1 << (DMA_MASK_BITS - 12);
/// The pages of the low window: dom0 RAM below the device's mask, for the direct maps.
pub const LOW_PAGES: u64 = 16;

/// A 64 KiB block of `.bss` made contiguous below the mask when dom0 owns no RAM there
/// outside its initial mapping (the low window's fallback).
static mut LOW_FALLBACK: Block64K<65536> = Block64K([0; 65536]);

/// Xen's version as `major << 16 | minor`, once known (for the panic handler's verdict).
pub static XEN_VERSION: AtomicU32 = AtomicU32::new(0);

/// The verdict line's prefix: `XEN-QEMU x86_64 xen-<major>.<minor>`.
pub fn verdict_prefix() -> Line {
    let v = XEN_VERSION.load(Ordering::Relaxed);
    if v == 0 {
        fmt_line!("XEN-QEMU x86_64 xen-unknown")
    } else {
        fmt_line!("XEN-QEMU x86_64 xen-{}.{}", v >> 16, v & 0xffff)
    }
}

/// The check lines printed so far.
#[derive(Debug, Default)]
pub struct Report {
    ok: u32,
    failed: u32,
    device: u32,
}

impl Report {
    /// Prints the line of check `name` and counts it.
    pub fn record(&mut self, name: &str, outcome: Outcome) {
        self.device += u32::from(name.starts_with("dev-"));
        match outcome {
            Ok(details) => {
                self.ok += 1;
                kprintln!("XEN-QEMU x86_64 check {name}: ok {details}");
            }
            Err(details) => {
                self.failed += 1;
                kprintln!("XEN-QEMU x86_64 check {name}: FAIL {details}");
            }
        }
    }

    /// The final line.
    pub fn verdict(&self) -> Line {
        let prefix = verdict_prefix();
        if self.failed == 0 && self.ok > 0 {
            fmt_line!(
                "{prefix}: PASS ({} checks, {} device DMA checks)",
                self.ok,
                self.device
            )
        } else {
            fmt_line!(
                "{prefix}: FAIL ({} of {} checks failed, {} device DMA checks)",
                self.failed,
                self.ok + self.failed,
                self.device
            )
        }
    }
}

/// Fails the check with a formatted message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(fmt_line!($($arg)*));
        }
    };
}
pub(crate) use ensure;

/// What the kernel was given at boot.
pub struct Env {
    /// The P2M (`start_info.mfn_list`).
    pub p2m: &'static [AtomicU64],
    /// Xen's M2P.
    pub m2p: &'static [AtomicU64],
    /// The low window: [`LOW_PAGES`] pages, machine-contiguous below the device's mask.
    pub low: PhysAddr,
    /// Whether the low window is dom0's own RAM (else the library exchanged it).
    pub low_is_own: bool,
}

/// The CPU's view of the memory the library copies: the kernel image and the low window,
/// both mapped at `VIRT_BASE + phys`.
#[derive(Clone, Copy, Debug)]
pub struct KernelMemory {
    /// The windows, as `[start, end)` physical addresses.
    windows: [(u64, u64); 2],
}

impl KernelMemory {
    /// The image and the low window at `low`.
    pub fn new(low: PhysAddr) -> Self {
        Self {
            windows: [
                (0, image_end().as_u64()),
                (low.as_u64(), low.as_u64() + (LOW_PAGES << 12)),
            ],
        }
    }

    /// Whether `phys..phys + len` lies in one window.
    pub fn reaches(&self, phys: PhysAddr, len: usize) -> bool {
        let start = phys.as_u64();
        start.checked_add(len as u64).is_some_and(|end| {
            self.windows
                .iter()
                .any(|&(lo, hi)| lo <= start && end <= hi)
        })
    }

    /// The CPU address of `phys`; panics (the kernel's FAIL) if the library asks for memory
    /// outside the windows, which would be a bug in the library or the checks.
    fn ptr(&self, phys: PhysAddr, len: usize) -> *mut u8 {
        assert!(self.reaches(phys, len), "{phys}+{len:#x} is not mapped");
        virt_of(phys)
    }
}

// SAFETY: both windows are mapped at VIRT_BASE + phys for the kernel's lifetime (the image by
// Xen, the low window by `setup`); `copy` and `fill` touch exactly the ranges asked for, and
// refuse (panic) anything outside the windows.
unsafe impl PhysMemory for KernelMemory {
    unsafe fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
        let (d, s) = (self.ptr(dst, len), self.ptr(src, len));
        // SAFETY: both ranges are mapped; the caller guarantees they do not overlap and that
        // no reference covers them.
        unsafe { core::ptr::copy_nonoverlapping(s, d, len) };
    }

    unsafe fn fill(&self, dst: PhysAddr, byte: u8, len: usize) {
        let d = self.ptr(dst, len);
        // SAFETY: as in `copy`.
        unsafe { d.write_bytes(byte, len) };
    }
}

// SAFETY: the pool side of each copy is a window range (as in `PhysMemory`); the buffer side
// is the caller's pointer, used as given.
unsafe impl BufferMemory for KernelMemory {
    unsafe fn copy_from_buffer(&self, dst: PhysAddr, src: core::ptr::NonNull<u8>, len: usize) {
        let d = self.ptr(dst, len);
        // SAFETY: `dst` is mapped and unreferenced, `src` valid for reads and disjoint (the
        // caller's promise).
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), d, len) };
    }

    unsafe fn copy_to_buffer(&self, dst: core::ptr::NonNull<u8>, src: PhysAddr, len: usize) {
        let s = self.ptr(src, len);
        // SAFETY: as in `copy_from_buffer`, the other way.
        unsafe { core::ptr::copy_nonoverlapping(s, dst.as_ptr(), len) };
    }
}

/// The pseudo-physical address of a kernel virtual address.
pub fn phys_of<T>(p: *const T) -> PhysAddr {
    PhysAddr::new(p.addr() as u64 - VIRT_BASE)
}

/// The kernel virtual address of a pseudo-physical address.
pub fn virt_of(phys: PhysAddr) -> *mut u8 {
    core::ptr::with_exposed_provenance_mut((phys.as_u64() + VIRT_BASE) as usize)
}

impl Env {
    /// The raw P2M word of `pfn`.
    pub fn p2m_raw(&self, pfn: u64) -> u64 {
        p2menc::raw_entry(self.p2m, pfn)
    }

    /// The M2P word of `mfn` (INVALID beyond the table).
    pub fn m2p_raw(&self, mfn: u64) -> u64 {
        usize::try_from(mfn)
            .ok()
            .and_then(|i| self.m2p.get(i))
            .map_or(p2menc::INVALID_M2P_ENTRY, |e| e.load(Ordering::Acquire))
    }

    /// Whether `pfn` is a local frame whose M2P entry points back at it.
    pub fn round_trips(&self, pfn: u64) -> bool {
        let raw = self.p2m_raw(pfn);
        matches!(p2menc::P2mEntry::decode(raw), p2menc::P2mEntry::Local(_))
            && self.m2p_raw(raw) == pfn
    }
}

/// The pseudo-physical end of the kernel image (`_end` in `link.ld`), page-aligned.
pub fn image_end() -> PhysAddr {
    unsafe extern "C" {
        /// The end of the image (`link.ld`), page-aligned.
        static _end: u8;
    }
    // Only the address of the linker symbol is taken.
    phys_of(&raw const _end)
}

/// `XENMEM_current_reservation`: the pages the domain owns.
pub fn reservation() -> Result<u64, xen_abi::XenError> {
    let mut domid = DOMID_SELF;
    // SAFETY: Xen reads the one domid_t at the pointer.
    unsafe { xen_abi::ops::memory_op(&Counted, XENMEM_CURRENT_RESERVATION, &raw mut domid) }
}

/// Runs every check and returns the verdict line.
pub fn run(start_info: *const u8) -> Line {
    kprintln!("x86_64-pv-dom0: started, start_info at {start_info:p}");
    let mut report = Report::default();
    let (env, pv) = match setup(start_info) {
        Ok((env, pv, details)) => {
            report.record("boot", Ok(details));
            (env, pv)
        }
        Err(details) => {
            report.record("boot", Err(details));
            return report.verdict();
        }
    };
    // REGION is used by these checks only, one at a time, never through a reference.
    let region = phys_of(&raw const REGION);
    let created = contiguous_create(&env, &pv, region);
    let bus = created.as_ref().ok().map(|(_, _, bus)| *bus);
    let old = created.as_ref().ok().map(|(_, old, _)| *old);
    report.record("create-contiguous", created.map(|(l, _, _)| l));
    report.record(
        "destroy-contiguous",
        contiguous_destroy(&env, &pv, region, bus),
    );
    report.record("exchange-refused", exchange_refused(&env, &pv, region, old));
    report.record("bad-input-platform", bad_input_platform(&env, &pv, region));
    report.record("cache-flush-probe", cache_flush_probe());
    // SAFETY: start_info is Xen's page.
    let mmu = unsafe { Mmu::new(&env, start_info) };
    let edu = match crate::edu::Edu::probe(&mmu, env.p2m.len() as u64) {
        Ok((edu, details)) => {
            report.record("pci-edu", Ok(details));
            Some(edu)
        }
        Err(details) => {
            report.record("pci-edu", Err(details));
            None
        }
    };
    let virtio = match crate::virtio::probe(&mmu) {
        Ok((probe, details)) => {
            report.record("pci-virtio-blk", Ok(details));
            Some(probe)
        }
        Err(details) => {
            report.record("pci-virtio-blk", Err(details));
            None
        }
    };
    crate::dma::run(&env, pv, edu.as_ref(), virtio, &mut report);
    report.verdict()
}

/// Finds the tables, builds the platform and checks every P2M entry against the M2P.
fn setup(start_info: *const u8) -> Result<(Env, Pv, Line), Line> {
    // SAFETY: Xen passes the start_info page, mapped, in %rsi; the magic is its first bytes.
    let magic = unsafe { core::slice::from_raw_parts(start_info, START_INFO_MAGIC.len()) };
    ensure!(
        magic == START_INFO_MAGIC,
        "start_info magic {:?}, expected {:?}",
        core::str::from_utf8(magic).unwrap_or("?"),
        "xen-3.0-x86_64"
    );
    let version = xen_abi::ops::xen_version(&Counted).map_err(|e| fmt_line!("{e}"))?;
    XEN_VERSION.store(
        (u32::from(version.major) << 16) | u32::from(version.minor),
        Ordering::Relaxed,
    );
    // SAFETY: start_info is Xen's page and the P2M it names is mapped and writable; nothing
    // else in this kernel writes it.
    let p2m = unsafe { pvboot::p2m_from_start_info(start_info) };
    let (m2p_start, m2p_entries) = pvboot::m2p_location(&Counted);
    // SAFETY: Xen maps the M2P read-only at the place it reported.
    let m2p = unsafe { pvboot::m2p_at(m2p_start, m2p_entries) };
    let image_end = image_end();
    let mut env = Env {
        p2m,
        m2p,
        low: PhysAddr::new(0),
        low_is_own: false,
    };
    crate::pages::NR_PAGES.store(p2m.len() as u64, Ordering::Relaxed);
    let (mut min, mut max, mut below, mut breaks) = (u64::MAX, 0, 0u64, 0u64);
    let mut runs = Line::new();
    let mut run_start = 0;
    for pfn in 0..p2m.len() as u64 {
        ensure!(
            env.round_trips(pfn),
            "pfn {pfn:#x}: P2M {:#x}, M2P of it {:#x}",
            env.p2m_raw(pfn),
            env.m2p_raw(env.p2m_raw(pfn))
        );
        let mfn = env.p2m_raw(pfn);
        min = min.min(mfn);
        max = max.max(mfn);
        below += u64::from(mfn < MASK_FRAMES);
        let last = pfn + 1 == p2m.len() as u64;
        if pfn > 0 && mfn != env.p2m_raw(pfn - 1).wrapping_add(1) {
            breaks += 1;
            push_run(&mut runs, &env, run_start, pfn);
            run_start = pfn;
        }
        if last {
            push_run(&mut runs, &env, run_start, pfn + 1);
        }
    }
    kprintln!("x86_64-pv-dom0: P2M runs (pfns -> mfns): {runs}");
    // The low window: dom0's own RAM below the mask, mapped here, else an exchanged block.
    // SAFETY: start_info is Xen's page.
    let mmu = unsafe { Mmu::new(&env, start_info) };
    let how = match own_low_run(&env, &mmu)? {
        Some(pfn) => {
            let mfn = env.p2m_raw(pfn);
            // SAFETY: pages pfn.. are dom0's RAM that no mapping reaches yet (no L1 table
            // covers them), mapped at their linear address.
            let tables = unsafe { mmu.map(VIRT_BASE + (pfn << 12), mfn, LOW_PAGES, RAM_FLAGS) }?;
            env.low = Pfn::new(pfn).start();
            env.low_is_own = true;
            fmt_line!(
                "own RAM: pfns {pfn:#x}.. on frames {mfn:#x}.. mapped ({tables} new L1 table(s))"
            )
        }
        None => {
            env.low = phys_of(&raw const LOW_FALLBACK);
            fmt_line!("no own RAM below the mask: {} exchanged", env.low)
        }
    };
    // SAFETY: the P2M is this domain's, the M2P Xen's, the linear base the initial mapping's
    // (and the low window's); `Counted` traps as this domain.
    let pv =
        unsafe { X86PvPlatform::new(p2m, m2p, VIRT_BASE, Counted, KernelMemory::new(env.low)) };
    if !env.low_is_own {
        // SAFETY: the fallback block is a static only the low window's users touch.
        unsafe { pv.create_contiguous(env.low, 4, DMA_MASK_BITS) }
            .map_err(|e| fmt_line!("making the low window contiguous: {e}"))?;
    }
    let low_mfn = env.p2m_raw(env.low.frame().as_u64());
    ensure!(
        low_mfn + LOW_PAGES <= MASK_FRAMES && pv.is_bus_contiguous(env.low, LOW_PAGES << 12),
        "low window on frames {low_mfn:#x}.. is not contiguous below the mask"
    );
    usable(env.low, (LOW_PAGES << 12) as usize, 0x6b)?;
    let line = fmt_line!(
        "Xen {version}, {} pages, P2M/M2P round trip for every pfn, mfns {min:#x}..={max:#x} \
         ({below} below the device's 2^{DMA_MASK_BITS} mask, {breaks} machine \
         discontinuities), M2P at {m2p_start:#x} ({m2p_entries} entries), image end \
         {image_end}; low window: {how}",
        p2m.len()
    );
    Ok((env, pv, line))
}

/// Appends run `pfn0..end` of the P2M to `runs` (as `pfn0..end -> mfn..`), marking runs
/// below the device's mask.
fn push_run(runs: &mut Line, env: &Env, pfn0: u64, end: u64) {
    let m0 = env.p2m_raw(pfn0);
    let below = if m0 + (end - pfn0) <= MASK_FRAMES {
        " (below mask)"
    } else if m0 < MASK_FRAMES {
        " (straddles mask)"
    } else {
        ""
    };
    let sep = if runs.is_empty() { "" } else { ", " };
    let item = fmt_line!(
        "{sep}{pfn0:#x}..{end:#x} -> {m0:#x}..{:#x}{below}",
        m0 + (end - pfn0)
    );
    if runs.try_push_str(&item).is_err() && !runs.ends_with("...") {
        let _ = runs.try_push_str(" ...");
    }
}

/// The first pfn of [`LOW_PAGES`] pages of dom0's RAM that are machine-contiguous below the
/// mask and lie where no L1 table exists yet (outside Xen's initial mapping), if any.
fn own_low_run(env: &Env, mmu: &Mmu<'_>) -> Result<Option<u64>, Line> {
    let nr = env.p2m.len() as u64;
    let mut pfn = image_end().frame().as_u64().next_multiple_of(LOW_PAGES);
    while pfn + LOW_PAGES <= nr {
        let m0 = env.p2m_raw(pfn);
        let fits =
            m0 + LOW_PAGES <= MASK_FRAMES && (1..LOW_PAGES).all(|i| env.p2m_raw(pfn + i) == m0 + i);
        if fits && !mmu.has_l1(VIRT_BASE + (pfn << 12))? {
            return Ok(Some(pfn));
        }
        pfn += LOW_PAGES;
    }
    Ok(None)
}

/// The machine frames of the `n` pages from `pfn0`.
fn frames<const N: usize>(env: &Env, pfn0: u64) -> [u64; N] {
    core::array::from_fn(|i| env.p2m_raw(pfn0 + i as u64))
}

/// Checks that the `n` pages from `pfn0` read back a pattern written through the CPU.
fn usable(phys: PhysAddr, len: usize, seed: u8) -> Result<(), Line> {
    let p = virt_of(phys);
    for i in (0..len).step_by(512) {
        // SAFETY: the region is mapped (checked by the caller's P2M checks) and owned by the
        // check; raw volatile accesses, no references.
        unsafe { p.add(i).write_volatile(seed ^ (i >> 9) as u8) };
    }
    for i in (0..len).step_by(512) {
        // SAFETY: as above.
        let got = unsafe { p.add(i).read_volatile() };
        ensure!(
            got == seed ^ (i >> 9) as u8,
            "byte {i} of {phys} reads {got:#x} after a write"
        );
    }
    Ok(())
}

/// Whether the `len` bytes at `phys` read as zero.
fn zeroed(phys: PhysAddr, len: usize) -> bool {
    let p = virt_of(phys);
    // SAFETY: as in `usable`.
    (0..len).all(|i| unsafe { p.add(i).read_volatile() } == 0)
}

/// `create_contiguous_region` of the 64 KiB region below the device's mask with the real
/// exchange.
fn contiguous_create(env: &Env, pv: &Pv, region: PhysAddr) -> Result<(Line, [u64; 16], u64), Line> {
    let pfn0 = region.frame().as_u64();
    let old: [u64; 16] = frames(env, pfn0);
    usable(region, 65536, 0x5a)?;
    let before_pages = reservation().map_err(|e| fmt_line!("{e}"))?;
    let c0 = COUNTERS.snapshot();
    // SAFETY: the region is a static only this check touches, through raw pointers.
    let bus = unsafe { pv.create_contiguous(region, 4, DMA_MASK_BITS) }
        .map_err(|e| fmt_line!("create_contiguous({region}, 4, {DMA_MASK_BITS}): {e}"))?;
    let calls = COUNTERS.snapshot().since(c0);
    let b0 = bus.frame().as_u64();
    ensure!(
        b0 % 16 == 0 && b0 + 16 <= MASK_FRAMES,
        "extent {bus} not aligned to 64 KiB or not below the 2^{DMA_MASK_BITS} mask"
    );
    for i in 0..16u64 {
        let pfn = pfn0 + i;
        ensure!(
            env.p2m_raw(pfn) == b0 + i && env.m2p_raw(b0 + i) == pfn,
            "page {i}: P2M {:#x}, M2P {:#x}, expected {:#x} <-> {pfn:#x}",
            env.p2m_raw(pfn),
            env.m2p_raw(b0 + i),
            b0 + i
        );
        ensure!(
            pv.mfn_to_local_pfn(Bfn::new(b0 + i)) == Some(Pfn::new(pfn)),
            "bfn_to_local_pfn({:#x}) does not give {pfn:#x}",
            b0 + i
        );
        let o = old[i as usize];
        ensure!(
            env.m2p_raw(o) != pfn && pv.mfn_to_local_pfn(Bfn::new(o)).is_none(),
            "old frame {o:#x} of page {i} still maps to it"
        );
    }
    ensure!(
        pv.is_bus_contiguous(region, 65536),
        "is_bus_contiguous says no"
    );
    ensure!(zeroed(region, 65536), "the region was not zeroed");
    usable(region, 65536, 0xa5)?;
    let after_pages = reservation().map_err(|e| fmt_line!("{e}"))?;
    ensure!(
        before_pages == after_pages,
        "reservation {before_pages} pages before, {after_pages} after"
    );
    ensure!(calls.exchanges == 1, "{} exchanges", calls.exchanges);
    let line = fmt_line!(
        "order 4 at {region}: frames {:#x}..{:#x} (scattered: {}) -> extent {bus}, below the mask, \
         P2M and M2P agree, old frames released, zeroed, mapped, reservation {after_pages} \
         pages unchanged; {} hypercalls ({} exchange, {} multicalls)",
        old[0],
        old[15],
        old.windows(2).any(|w| w[1] != w[0] + 1),
        calls.total,
        calls.exchanges,
        calls.multicalls
    );
    Ok((line, old, bus.as_u64()))
}

/// `destroy_contiguous_region` of the region made contiguous before.
fn contiguous_destroy(env: &Env, pv: &Pv, region: PhysAddr, bus: Option<u64>) -> Outcome {
    let Some(bus) = bus else {
        return Err(fmt_line!("nothing to destroy: create failed"));
    };
    let pfn0 = region.frame().as_u64();
    let b0 = bus >> 12;
    let before_pages = reservation().map_err(|e| fmt_line!("{e}"))?;
    let c0 = COUNTERS.snapshot();
    // SAFETY: as in `contiguous_create`.
    unsafe { pv.destroy_contiguous(region, 4) }
        .map_err(|e| fmt_line!("destroy_contiguous({region}, 4): {e}"))?;
    let calls = COUNTERS.snapshot().since(c0);
    let new: [u64; 16] = frames(env, pfn0);
    for i in 0..16u64 {
        let pfn = pfn0 + i;
        ensure!(
            env.round_trips(pfn),
            "page {i}: P2M {:#x} does not round-trip",
            env.p2m_raw(pfn)
        );
        ensure!(
            new[i as usize] != b0 + i,
            "page {i} is still on extent frame {:#x}",
            b0 + i
        );
        ensure!(
            env.m2p_raw(b0 + i) != pfn,
            "extent frame {:#x} still maps to page {i}",
            b0 + i
        );
    }
    ensure!(zeroed(region, 65536), "the region was not zeroed");
    usable(region, 65536, 0x3c)?;
    let after_pages = reservation().map_err(|e| fmt_line!("{e}"))?;
    ensure!(
        before_pages == after_pages,
        "reservation {before_pages} pages before, {after_pages} after"
    );
    Ok(fmt_line!(
        "extent {bus:#x} given back: pages now on frames {:#x} (first) to {:#x} (last), P2M/M2P agree, extent \
         frames no longer ours, reservation {after_pages} unchanged; {} hypercalls ({} exchange)",
        new[0],
        new[15],
        calls.total,
        calls.exchanges
    ))
}

/// An exchange Xen refuses: below 2^12 (only frame 0), and a frame the domain gave back.
fn exchange_refused(env: &Env, pv: &Pv, region: PhysAddr, old: Option<[u64; 16]>) -> Outcome {
    let pfn0 = region.frame().as_u64();
    let before: [u64; 16] = frames(env, pfn0);
    let c0 = COUNTERS.snapshot();
    // SAFETY: as in `contiguous_create`.
    let r = unsafe { pv.create_contiguous(region, 0, 12) };
    let calls = COUNTERS.snapshot().since(c0);
    let Err(X86PvError::ExchangeFailed {
        errno,
        nr_exchanged: 0,
        nr_extents: 1,
    }) = r
    else {
        return Err(fmt_line!("create below 2^12: {r:?}"));
    };
    let text = fmt_line!("{}", PlatformError::from(r.unwrap_err()));
    // Xen has no free frame below 2^12 (frame 0 is never handed out): ENOMEM.
    ensure!(
        text.contains("XENMEM_exchange") && errno == 12,
        "expected ENOMEM (12) from XENMEM_exchange: {text}"
    );
    ensure!(calls.exchanges == 1, "{} exchanges", calls.exchanges);
    let after: [u64; 16] = frames(env, pfn0);
    ensure!(before == after, "P2M changed by a refused exchange");
    ensure!(
        (0..16).all(|i| env.round_trips(pfn0 + i)),
        "M2P inconsistent after the refusal"
    );
    usable(region, 4096, 0x11)?;
    // A frame the domain no longer owns (one it gave back in the create check).
    let Some(old) = old else {
        return Err(fmt_line!("no released frame to try: create failed"));
    };
    let mut inp = old[0];
    let mut out = pfn0;
    let mut x = XenMemoryExchange::default();
    x.in_.extent_start = GuestHandle::new(&raw mut inp);
    x.in_.nr_extents = 1;
    x.in_.domid = DOMID_SELF;
    x.out.extent_start = GuestHandle::new(&raw mut out);
    x.out.nr_extents = 1;
    x.out.domid = DOMID_SELF;
    // SAFETY: both lists are locals valid for the call; the input frame is not this domain's,
    // so Xen must refuse and change nothing of ours.
    let raw = unsafe { xen_abi::ops::memory_exchange(&Counted, &mut x) };
    let Err(e) = raw else {
        return Err(fmt_line!("Xen exchanged frame {:#x} we do not own", old[0]));
    };
    // Xen refuses an input frame the domain does not own with EINVAL.
    ensure!(
        e.op == "XENMEM_exchange" && e.errno == Errno::EINVAL && x.nr_exchanged == 0,
        "{e} (expected EINVAL), nr_exchanged {}",
        x.nr_exchanged
    );
    ensure!(
        frames::<16>(env, pfn0) == after,
        "P2M changed by the refused raw exchange"
    );
    Ok(fmt_line!(
        "below 2^12: `{text}` (ExchangeFailed errno {errno}, region unchanged and usable, \
         {} hypercalls); foreign frame {:#x}: `{e}`",
        calls.total,
        old[0]
    ))
}

/// `GNTTABOP_cache_flush`'s zeroed probe (length 0, op 0: Xen touches no memory or cache),
/// Linux's `xen_mm_init` test: 0 (present) before Xen 4.21, `ENOSYS` from 4.21 on, where x86
/// no longer has the operation. Both are normal on x86, whose DMA is coherent and whose
/// platform never asks; an answer that is neither, or not the release's, fails.
fn cache_flush_probe() -> Outcome {
    let v = XEN_VERSION.load(Ordering::Relaxed);
    let version = xen_abi::ops::XenVersion {
        major: u16::try_from(v >> 16).unwrap_or(u16::MAX),
        minor: u16::try_from(v & 0xffff).unwrap_or(u16::MAX),
    };
    let mut req = xen_abi::GnttabCacheFlush::probe();
    let c0 = COUNTERS.snapshot();
    // SAFETY: the zeroed request cleans and invalidates nothing.
    let r = unsafe { xen_abi::ops::cache_flush(&Counted, &mut req) };
    let calls = COUNTERS.snapshot().since(c0);
    ensure!(calls.total == 1, "{} hypercalls for one probe", calls.total);
    match (r, version.x86_has_cache_flush()) {
        (Ok(()), true) => Ok(fmt_line!(
            "Xen {version}: the zeroed GNTTABOP_cache_flush answers 0, present (x86 DMA never \
             uses it)"
        )),
        (Err(e), false) if e.errno == Errno::ENOSYS => Ok(fmt_line!(
            "Xen {version}: `{e}`, normal: x86 Xen has no GNTTABOP_cache_flush from 4.21 on, \
             and x86 DMA never needs it"
        )),
        (r, present) => Err(fmt_line!(
            "Xen {version}: zeroed GNTTABOP_cache_flush gave {r:?}, expected {}",
            if present { "0" } else { "ENOSYS" }
        )),
    }
}

/// Bad arguments to the platform: documented errors, no hypercall, nothing changed.
fn bad_input_platform(env: &Env, pv: &Pv, region: PhysAddr) -> Outcome {
    let pfn0 = region.frame().as_u64();
    // A pair of pages on non-adjacent frames, for a destroy that must be refused: the region
    // usually has one after the destroy check; if Xen handed out adjacent frames, move page 1.
    if (0..8).all(|i| env.p2m_raw(pfn0 + 2 * i + 1) == env.p2m_raw(pfn0 + 2 * i) + 1) {
        let page1 = PhysAddr::new(region.as_u64() + 4096);
        // SAFETY: the region is the checks' static, not in use.
        unsafe { pv.create_contiguous(page1, 0, 32) }
            .map_err(|e| fmt_line!("moving page 1: {e}"))?;
    }
    let before: [u64; 16] = frames(env, pfn0);
    let c0 = COUNTERS.snapshot();
    let nr = env.p2m.len() as u64;
    let misaligned = PhysAddr::new(region.as_u64() + 4096);
    let beyond = PhysAddr::new(nr << 12);
    // SAFETY: every call below is refused before any change (checked after).
    let results = unsafe {
        [
            pv.create_contiguous(misaligned, 4, 32),
            pv.create_contiguous(region, 21, 64),
            pv.create_contiguous(region, 4, 15),
            pv.create_contiguous(region, 4, 65),
            pv.create_contiguous(beyond, 0, 32),
        ]
    };
    let expected = [
        X86PvError::Misaligned {
            phys: misaligned,
            align: 65536,
        },
        X86PvError::OrderTooLarge { order: 21, max: 20 },
        X86PvError::AddressBits {
            bits: 15,
            min: 16,
            max: 64,
        },
        X86PvError::AddressBits {
            bits: 65,
            min: 16,
            max: 64,
        },
        X86PvError::BeyondP2m {
            first: Pfn::new(nr),
            frames: 1,
            p2m_len: nr,
        },
    ];
    for (got, want) in results.iter().zip(&expected) {
        ensure!(*got == Err(*want), "got {got:?}, expected {want:?}");
    }
    // Destroying a region that is not machine-contiguous: two pages with non-adjacent frames
    // if the region has them (it is scattered after the destroy check, unless Xen handed out
    // adjacent frames).
    let i = (0..8)
        .find(|&i| before[2 * i + 1] != before[2 * i] + 1)
        .ok_or_else(|| fmt_line!("no scattered pair"))?;
    let at = PhysAddr::new(region.as_u64() + (2 * i as u64) * 4096);
    // SAFETY: refused before any change.
    let got = unsafe { pv.destroy_contiguous(at, 1) };
    let Err(refused @ X86PvError::NotContiguous { .. }) = got else {
        return Err(fmt_line!("destroy of a scattered pair: {got:?}"));
    };
    let calls = COUNTERS.snapshot().since(c0);
    ensure!(calls == Counts::default(), "{} hypercalls", calls.total);
    ensure!(frames::<16>(env, pfn0) == before, "P2M changed");
    Ok(fmt_line!(
        "misaligned, order 21, address bits 15 and 65, beyond the P2M: the documented errors; \
         destroy of the scattered pair at {at}: `{refused}`; 0 hypercalls, P2M unchanged"
    ))
}
