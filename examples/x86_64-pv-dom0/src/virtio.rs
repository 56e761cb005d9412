//! A `virtio-blk-pci` disk driven by virtio-drivers' `VirtIOBlk` (a driver nobody here
//! wrote) over the `swiotlb-xen-virtio` adapter and the engine: the virtqueues are the
//! engine's coherent allocations, every request buffer is mapped by the engine (bounced
//! when its pages are not machine-contiguous), and QEMU's virtio-blk device does the DMA at
//! the bus addresses the engine returns.
//!
//! The harness makes the disk image (`xen-qemu-disk`'s content, generation 0), the kernel
//! reads it, writes `WRITE_SECTORS` sectors of generation 1 from `WRITE_FIRST`, reads them
//! back, and the harness checks the image after the boot: only those sectors changed, to
//! exactly what the kernel wrote.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use swiotlb_xen::{BounceReason, Device, DmaMask, PhysAddr, Slot};
use swiotlb_xen_virtio::virtio_drivers::device::blk::{SECTOR_SIZE, VirtIOBlk};
use swiotlb_xen_virtio::virtio_drivers::transport::pci::PciTransport;
use swiotlb_xen_virtio::virtio_drivers::transport::pci::bus::{BarInfo, DeviceFunction, PciRoot};
use swiotlb_xen_virtio::{SwiotlbHal, SwiotlbKernel};
use xen_qemu_disk::{SECTORS as DISK_SECTORS, WRITE_FIRST, WRITE_SECTORS, first_mismatch};

use crate::checks::{Block64K, Env, KernelMemory, Outcome, Pv, Report, ensure, phys_of, virt_of};
use crate::console::Line;
use crate::dma::Engine;
use crate::edu::DMA_MASK_BITS;
use crate::fmt_line;
use crate::mmu::{MMIO_FLAGS, Mmu};
use crate::pages::{ALLOCATOR, Pages};
use crate::pci::{self, PortCam};

/// virtio's PCI vendor.
const VENDOR: u16 = 0x1af4;
/// A modern (virtio 1.0) block device: the harness starts QEMU with
/// `virtio-blk-pci,disable-legacy=on`.
const DEVICE_BLK: u16 = 0x1042;
/// Where the device's memory BARs are mapped: 256 KiB each, below the `edu` window.
const BAR_VA: u64 = crate::edu::BAR_VA - (2 << 20);
/// The window of one BAR.
const BAR_WINDOW: u64 = 256 << 10;

/// The buffers of the requests: 16 pages of `.bss`. Page 1 is moved to another machine
/// frame before the transfers, so pages 0..4 are not machine-contiguous (the engine
/// bounces them); page 8 is mapped directly.
static mut VIRTIO_BUF: Block64K<65536> = Block64K([0; 65536]);

/// The memory BARs of the device: physical (machine) base and size, 0 when not mapped.
static BARS: [(AtomicU64, AtomicU64); 6] = [const { (AtomicU64::new(0), AtomicU64::new(0)) }; 6];

/// The engine while [`run`] drives the device, null otherwise.
static ENGINE: AtomicPtr<Engine> = AtomicPtr::new(core::ptr::null_mut());

/// The device as the engine sees it: 64-bit DMA, cache-coherent (x86).
static DEVICE: Device = Device::new(DmaMask::FULL);

/// The kernel, as the adapter sees it.
struct Kernel;

/// The driver.
type Blk = VirtIOBlk<SwiotlbHal<Kernel>, PciTransport>;

// SAFETY: `engine` returns the engine `run` published, which outlives every driver (the
// driver is dropped before `run` withdraws it) and whose page allocator keeps records; the
// linear map `VIRT_BASE + phys` reaches the whole image (coherent pages, buffers, stack),
// both ways; `mmio_phys_to_virt` answers only inside the BARs `probe` mapped.
unsafe impl SwiotlbKernel for Kernel {
    type Platform = Pv;
    type Memory = KernelMemory;
    type Slots = &'static [Slot];
    type Pages = &'static Pages;

    fn engine() -> &'static Engine {
        let p = ENGINE.load(Ordering::Acquire);
        assert!(!p.is_null(), "virtio: no engine published");
        // SAFETY: non-null only while `run` holds the engine borrowed (see `Published`).
        unsafe { &*p }
    }

    fn device() -> &'static Device {
        &DEVICE
    }

    fn phys_to_virt(phys: PhysAddr, _len: usize) -> NonNull<u8> {
        NonNull::new(virt_of(phys)).expect("the linear map is not at 0")
    }

    fn virt_to_phys(buf: NonNull<[u8]>) -> Option<PhysAddr> {
        // CAST: usize is u64 here.
        let start = buf.cast::<u8>().as_ptr().addr() as u64;
        let phys = start.checked_sub(crate::VIRT_BASE)?;
        let end = phys.checked_add(buf.len() as u64)?;
        (end <= crate::checks::image_end().as_u64()).then_some(PhysAddr::new(phys))
    }

    unsafe fn mmio_phys_to_virt(paddr: u64, size: usize) -> NonNull<u8> {
        for (i, (base, len)) in BARS.iter().enumerate() {
            let (base, len) = (base.load(Ordering::Acquire), len.load(Ordering::Acquire));
            if len != 0 && base <= paddr && paddr + size as u64 <= base + len {
                let va = BAR_VA + i as u64 * BAR_WINDOW + (paddr - base);
                return NonNull::new(core::ptr::with_exposed_provenance_mut(va as usize))
                    .expect("not null");
            }
        }
        panic!("virtio: MMIO {paddr:#x}+{size:#x} is in no mapped BAR");
    }
}

/// Publishes the engine to [`Kernel::engine`] for as long as it lives (and borrows it as
/// long).
struct Published<'a>(core::marker::PhantomData<&'a Engine>);

impl<'a> Published<'a> {
    fn new(eng: &'a Engine) -> Self {
        ENGINE.store(core::ptr::from_ref(eng).cast_mut(), Ordering::Release);
        Self(core::marker::PhantomData)
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        ENGINE.store(core::ptr::null_mut(), Ordering::Release);
    }
}

/// The device, found and its BARs mapped.
pub struct Probe {
    root: PciRoot<PortCam>,
    function: DeviceFunction,
}

/// Finds the virtio-blk function on bus 0, turns on memory decoding and bus mastering and
/// maps its memory BARs uncached.
pub fn probe(mmu: &Mmu<'_>) -> Result<(Probe, Line), Line> {
    pci::set_iopl()?;
    let (found, seen) = pci::find(VENDOR, DEVICE_BLK);
    let function = found.ok_or_else(|| {
        fmt_line!("no device {VENDOR:04x}:{DEVICE_BLK:04x} among {seen} on bus 0")
    })?;
    let (command, now) = pci::enable_memory_and_master(function)?;
    let mut root = PciRoot::new(PortCam::new());
    let bars = root
        .bars(function)
        .map_err(|e| fmt_line!("{function}: reading the BARs: {e}"))?;
    let mut mapped = Line::new();
    for (i, bar) in bars.iter().enumerate() {
        let Some(BarInfo::Memory { address, size, .. }) = *bar else {
            continue;
        };
        ensure!(
            address != 0 && address % 4096 == 0 && size <= BAR_WINDOW,
            "{function}: BAR{i} at {address:#x} ({size:#x} bytes) unassigned or too large"
        );
        let va = BAR_VA + i as u64 * BAR_WINDOW;
        // SAFETY: the window is this BAR's alone; the frames are the device's I/O memory.
        unsafe { mmu.map(va, address >> 12, size.div_ceil(4096), MMIO_FLAGS) }?;
        BARS[i].0.store(address, Ordering::Release);
        BARS[i].1.store(size, Ordering::Release);
        let _ = mapped.try_push_str(&fmt_line!(" BAR{i} {address:#x}+{size:#x}"));
    }
    let line = fmt_line!(
        "virtio-blk at {function} ({seen} devices on bus 0), command {command:#x} -> {now:#x}, \
         mapped uncached:{mapped}"
    );
    Ok((Probe { root, function }, line))
}

/// Page `k` of [`VIRTIO_BUF`].
fn page(k: u64) -> PhysAddr {
    PhysAddr::new(phys_of(&raw const VIRTIO_BUF).as_u64() + k * 4096)
}

/// `len` bytes from page `k` of [`VIRTIO_BUF`] as a slice.
///
/// # Safety
///
/// Nothing else references those bytes while the slice lives.
unsafe fn buffer(k: u64, len: usize) -> &'static mut [u8] {
    // SAFETY: the caller's promise; the range is inside the static.
    unsafe { core::slice::from_raw_parts_mut(virt_of(page(k)), len) }
}

/// Checks that `buf` holds sectors `first..` of generation `generation`.
fn holds(what: &str, buf: &[u8], generation: u8, first: u64) -> Result<(), Line> {
    match first_mismatch(buf, generation, first) {
        None => Ok(()),
        Some((sector, at, got, want)) => Err(fmt_line!(
            "{what}: sector {sector} byte {at} is {got:#x}, expected {want:#x} (generation \
             {generation})"
        )),
    }
}

/// The engine's bounced and direct map counts.
fn maps(eng: &Engine) -> (u64, u64, u64) {
    let s = eng.stats();
    let straddle = s.bounced_by_reason[BounceReason::NotContiguous.index()];
    (s.direct_maps, s.bounced_maps, straddle)
}

/// The checks: the driver over the engine, reads direct and bounced, a bounced write read
/// back, and the driver's release.
pub fn run(env: &Env, eng: &Engine, probe: Option<Probe>, report: &mut Report) {
    let Some(mut probe) = probe else {
        report.record(
            "virtio-blk",
            Err(fmt_line!("no device (see pci-virtio-blk)")),
        );
        return;
    };
    let _ = env;
    let published = Published::new(eng);
    let used0 = ALLOCATOR.used();
    let s0 = eng.stats();
    let blk = PciTransport::new::<SwiotlbHal<Kernel>, PortCam>(&mut probe.root, probe.function)
        .map_err(|e| fmt_line!("PciTransport::new: {e}"))
        .and_then(|t| Blk::new(t).map_err(|e| fmt_line!("VirtIOBlk::new: {e}")));
    let mut blk = match blk {
        Ok(blk) => blk,
        Err(e) => {
            report.record("virtio-blk", Err(e));
            return;
        }
    };
    let s1 = eng.stats();
    report.record(
        "virtio-blk",
        if blk.capacity() == DISK_SECTORS {
            Ok(fmt_line!(
                "virtio-drivers' VirtIOBlk over SwiotlbHal: {} sectors, virtqueues in {} \
                 coherent allocation(s) of the engine ({} exchanged), pages {used0:#x} -> {:#x}",
                blk.capacity(),
                s1.coherent_allocs - s0.coherent_allocs,
                s1.coherent_exchanged - s0.coherent_exchanged,
                ALLOCATOR.used()
            ))
        } else {
            Err(fmt_line!(
                "capacity {} sectors, the harness's image has {DISK_SECTORS}",
                blk.capacity()
            ))
        },
    );
    report.record("dev-virtio-blk-read", read_direct(eng, &mut blk));
    report.record(
        "dev-virtio-blk-read-bounced",
        read_bounced(env, eng, &mut blk),
    );
    report.record("dev-virtio-blk-write", write_bounced(eng, &mut blk));
    drop(blk);
    drop(published);
    let s2 = eng.stats();
    report.record(
        "virtio-blk-release",
        if ALLOCATOR.used() == used0
            && s2.coherent_frees - s1.coherent_frees == s1.coherent_allocs - s0.coherent_allocs
        {
            Ok(fmt_line!(
                "the driver dropped: {} coherent allocation(s) freed through dma_dealloc \
                 (free_coherent_at), pages back to {used0:#x}",
                s2.coherent_frees - s1.coherent_frees
            ))
        } else {
            Err(fmt_line!(
                "pages {used0:#x} -> {:#x}, {} frees of {} allocations",
                ALLOCATOR.used(),
                s2.coherent_frees - s1.coherent_frees,
                s1.coherent_allocs - s0.coherent_allocs
            ))
        },
    );
}

/// Reads 8 sectors into one page (machine-contiguous): mapped directly.
fn read_direct(eng: &Engine, blk: &mut Blk) -> Outcome {
    // SAFETY: page 8.. is this check's alone.
    let buf = unsafe { buffer(8, 4096) };
    buf.fill(0xee);
    let (d0, b0, _) = maps(eng);
    blk.read_blocks(0, buf)
        .map_err(|e| fmt_line!("read_blocks(0, 4 KiB): {e}"))?;
    let (d1, b1, _) = maps(eng);
    ensure!(d1 > d0, "no direct map ({d0} -> {d1})");
    holds("direct read", buf, 0, 0)?;
    Ok(fmt_line!(
        "sectors 0..8 into one page at {}: {} direct map(s), {} bounced (request header and \
         status included), every byte as the harness wrote it",
        page(8),
        d1 - d0,
        b1 - b0
    ))
}

/// Makes page 1 of the buffers leave its machine neighbours, so a request across pages
/// 0..4 straddles a machine discontinuity.
fn straddle(env: &Env, eng: &Engine) -> Result<(), Line> {
    let (p0, p1) = (page(0).frame().as_u64(), page(1).frame().as_u64());
    if env.p2m_raw(p1) != env.p2m_raw(p0) + 1 {
        return Ok(());
    }
    // SAFETY: the page is one of this module's buffers, not in use.
    unsafe { eng.platform().create_contiguous(page(1), 0, DMA_MASK_BITS) }
        .map_err(|e| fmt_line!("moving page 1: {e}"))?;
    ensure!(
        env.p2m_raw(p1) != env.p2m_raw(p0) + 1,
        "pages 0 and 1 still machine-adjacent"
    );
    Ok(())
}

/// Reads 32 sectors into pages 0..4, which straddle a machine discontinuity: bounced.
fn read_bounced(env: &Env, eng: &Engine, blk: &mut Blk) -> Outcome {
    straddle(env, eng)?;
    // SAFETY: pages 0..4 are this check's alone.
    let buf = unsafe { buffer(0, 16384) };
    buf.fill(0xee);
    let (_, b0, n0) = maps(eng);
    blk.read_blocks(16, buf)
        .map_err(|e| fmt_line!("read_blocks(16, 16 KiB): {e}"))?;
    let (_, b1, n1) = maps(eng);
    ensure!(
        n1 > n0,
        "the straddling buffer was not bounced ({n0} -> {n1})"
    );
    holds("bounced read", buf, 0, 16)?;
    Ok(fmt_line!(
        "sectors 16..48 into 16 KiB at {} across machine frames {:#x} | {:#x}: {} bounced \
         for contiguity ({} in all), copied back at unshare, every byte as the harness wrote it",
        page(0),
        env.p2m_raw(page(0).frame().as_u64()),
        env.p2m_raw(page(1).frame().as_u64()),
        n1 - n0,
        b1 - b0
    ))
}

/// Writes generation 1 to sectors `WRITE_FIRST..` from the straddling pages (bounced) and
/// reads it back into other pages; the harness checks the image after the boot.
fn write_bounced(eng: &Engine, blk: &mut Blk) -> Outcome {
    let len = (WRITE_SECTORS as usize) * SECTOR_SIZE;
    // SAFETY: pages 0..4 and 8..12 are this check's alone.
    let (out, back) = unsafe { (buffer(0, len), buffer(8, len)) };
    xen_qemu_disk::fill(out, 1, WRITE_FIRST);
    let (_, _, n0) = maps(eng);
    blk.write_blocks(WRITE_FIRST as usize, out)
        .map_err(|e| fmt_line!("write_blocks({WRITE_FIRST}, 16 KiB): {e}"))?;
    let (_, _, n1) = maps(eng);
    ensure!(n1 > n0, "the straddling buffer was not bounced");
    blk.flush().map_err(|e| fmt_line!("flush: {e}"))?;
    back.fill(0xee);
    blk.read_blocks(WRITE_FIRST as usize, back)
        .map_err(|e| fmt_line!("read back: {e}"))?;
    holds("read back", back, 1, WRITE_FIRST)?;
    Ok(fmt_line!(
        "sectors {WRITE_FIRST}..{} written from the straddling pages (bounced), flushed, read \
         back into {}: every byte as written (the harness checks the image after the boot)",
        WRITE_FIRST + WRITE_SECTORS,
        page(8)
    ))
}
