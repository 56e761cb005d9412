//! A `virtio-blk-device` on the `virt` machine's virtio-mmio, driven by virtio-drivers'
//! `VirtIOBlk` (a driver nobody here wrote) over the `swiotlb-xen-virtio` adapter and the
//! engine: the virtqueue is the engine's coherent allocation, every request buffer is mapped
//! by the engine, and QEMU's virtio-blk device does the DMA at the bus addresses the engine
//! returns.
//!
//! The kernel declares the disk a 32-bit DMA device (as a driver does for a device with 32
//! address lines; QEMU's virtio-blk itself has more), the mask of the `edu` checks: a
//! buffer in dom0's bank above 4 GiB is then bounced through the pool below the mask, and a
//! buffer in the first bank is mapped directly. The harness makes the disk image
//! (`xen-qemu-disk`'s content, generation 0); dom0 reads it, writes `WRITE_SECTORS` sectors
//! of generation 1 from `WRITE_FIRST` from above the mask, reads them back, and the harness
//! checks the image after the boot.

use super::checks::{Engine, PAGES, Pages, Plat};
use super::mem::{self, IdentityMemory};
use super::{BootInfo, XenConsole};
use aarch64_dom0::edu::DMA_MASK;
use aarch64_dom0::report::Report;
use core::ptr::{NonNull, addr_of_mut};
use core::sync::atomic::{AtomicPtr, Ordering};
use swiotlb_xen::{BounceReason, Device, DmaMask, PhysAddr, Slot};
use swiotlb_xen_virtio::virtio_drivers::device::blk::{SECTOR_SIZE, VirtIOBlk};
use swiotlb_xen_virtio::virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use swiotlb_xen_virtio::virtio_drivers::transport::{DeviceType, Transport};
use swiotlb_xen_virtio::{SwiotlbHal, SwiotlbKernel};
use xen_qemu_disk::{SECTORS as DISK_SECTORS, WRITE_FIRST, WRITE_SECTORS, first_mismatch};

type R = Report<XenConsole>;

/// The checks after the probe, in order; reported as failed if there is no disk.
const NAMES: [&str; 4] = [
    "dev-virtio-blk-read",
    "dev-virtio-blk-read-bounced",
    "dev-virtio-blk-write",
    "virtio-blk-release",
];

/// A page of dom0's first bank (below the mask): the direct reads land here.
#[repr(C, align(4096))]
struct LowBuf([u8; 4 * 4096]);
static mut LOW_BUF: LowBuf = LowBuf([0; 4 * 4096]);

/// The CPU (= physical) address of [`LOW_BUF`].
fn low() -> u64 {
    addr_of_mut!(LOW_BUF).addr() as u64
}

/// Where the bounced buffers start in dom0's first bank above 4 GiB (past what the `edu`
/// checks use).
const HIGH_OFFSET: u64 = 0x10_0000;
/// Their size.
const HIGH_BYTES: usize = 16384;

/// The engine while [`run`] drives the device, null otherwise.
static ENGINE: AtomicPtr<Engine> = AtomicPtr::new(core::ptr::null_mut());

/// The device as the engine sees it: a 32-bit mask, cache-coherent (`virt`'s virtio-mmio is
/// `dma-coherent`).
static DEVICE: Device = Device::new(match DmaMask::try_from_raw(DMA_MASK) {
    Some(m) => m,
    None => panic!("not a mask"),
});

/// The kernel, as the adapter sees it.
struct Kernel;

/// The driver.
type Blk = VirtIOBlk<SwiotlbHal<Kernel>, MmioTransport<'static>>;

// SAFETY: `engine` returns the engine `run` published, which outlives every driver (the
// driver is dropped before `run` withdraws it) and whose page allocator keeps records; dom0
// is 1:1 and its RAM is identity-mapped, so a physical address is the CPU's address both
// ways (only RAM of dom0's banks translates); MMIO is identity-mapped as Device memory.
unsafe impl SwiotlbKernel for Kernel {
    type Platform = Plat;
    type Memory = IdentityMemory;
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
        // CAST: usize is 64 bits on aarch64.
        NonNull::new(core::ptr::with_exposed_provenance_mut(
            phys.as_u64() as usize
        ))
        .expect("RAM is not at 0")
    }

    fn virt_to_phys(buf: NonNull<[u8]>) -> Option<PhysAddr> {
        // CAST: usize is 64 bits on aarch64.
        let addr = buf.cast::<u8>().as_ptr().addr() as u64;
        mem::in_ram(addr, buf.len() as u64).then_some(PhysAddr::new(addr))
    }

    unsafe fn mmio_phys_to_virt(paddr: u64, _size: usize) -> NonNull<u8> {
        // CAST: as above; the first gigabyte (the devices) is identity-mapped.
        NonNull::new(core::ptr::with_exposed_provenance_mut(paddr as usize)).expect("not null")
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

/// The first virtio-mmio transport of the device tree with a block device behind it: its
/// transport, its base, and how many transports were looked at.
fn find(info: &BootInfo) -> Option<(MmioTransport<'static>, u64, usize)> {
    let (list, len) = &info.virtio_mmio;
    for (n, r) in list[..*len].iter().enumerate() {
        if r.base.saturating_add(r.size) > aarch64_dom0::layout::LOW_DEVICES_SIZE || r.size < 0x100
        {
            continue;
        }
        // CAST: usize is 64 bits on aarch64.
        let header = NonNull::new(core::ptr::with_exposed_provenance_mut::<VirtIOHeader>(
            r.base as usize,
        ))?;
        // SAFETY: the device tree names the region a virtio-mmio transport; it lies in the
        // first gigabyte, identity-mapped as Device memory for the kernel's lifetime, and
        // nothing else uses it.
        let t = unsafe { MmioTransport::new(header, r.size as usize) };
        if let Ok(t) = t
            && t.device_type() == DeviceType::Block
        {
            return Some((t, r.base, n + 1));
        }
    }
    None
}

/// The engine's direct maps, bounced maps, and maps bounced for the mask.
fn maps(eng: &Engine) -> (u64, u64, u64) {
    let s = eng.stats();
    (
        s.direct_maps,
        s.bounced_maps,
        s.bounced_by_reason[BounceReason::OutsideMask.index()],
    )
}

/// Describes the first wrong byte of `buf`, if any.
fn wrong(buf: &[u8], generation: u8, first: u64) -> Option<(u64, usize, u8, u8)> {
    first_mismatch(buf, generation, first)
}

/// The checks: the driver over the engine, reads direct and bounced, a bounced write read
/// back, and the driver's release.
pub(super) fn run(r: &mut R, engine: &Engine, info: &BootInfo) {
    let high = mem::ram()
        .as_slice()
        .iter()
        .find(|b| b.base > DMA_MASK && b.size >= HIGH_OFFSET + HIGH_BYTES as u64)
        .map(|b| b.base + HIGH_OFFSET);
    let published = Published::new(engine);
    let used0 = PAGES.used();
    let s0 = engine.stats();
    let found = find(info);
    let (blk, base, looked) = match (found, high) {
        (Some((t, base, looked)), Some(_)) => (Blk::new(t), base, looked),
        (found, _) => {
            r.check(
                "virtio-blk",
                false,
                format_args!(
                    "{} virtio-mmio transports in the device tree, a block device: {}, dom0 \
                     RAM above the mask: {}",
                    info.virtio_mmio.1,
                    found.is_some(),
                    high.is_some()
                ),
            );
            for name in NAMES {
                r.check(name, false, format_args!("no disk"));
            }
            return;
        }
    };
    let mut blk = match blk {
        Ok(blk) => blk,
        Err(e) => {
            r.check("virtio-blk", false, format_args!("VirtIOBlk::new: {e}"));
            for name in NAMES {
                r.check(name, false, format_args!("no disk"));
            }
            return;
        }
    };
    let high = high.unwrap_or_default();
    let s1 = engine.stats();
    r.check(
        "virtio-blk",
        blk.capacity() == DISK_SECTORS,
        format_args!(
            "virtio-mmio transport {looked} of {} at {base:#x}: virtio-drivers' VirtIOBlk over \
             SwiotlbHal, {} sectors (the image has {DISK_SECTORS}), virtqueue in {} coherent \
             allocation(s) of the engine, pages {used0:#x} -> {:#x}",
            info.virtio_mmio.1,
            blk.capacity(),
            s1.coherent_allocs - s0.coherent_allocs,
            PAGES.used()
        ),
    );
    read_direct(r, engine, &mut blk);
    read_bounced(r, engine, &mut blk, high);
    write_bounced(r, engine, &mut blk, high);
    drop(blk);
    drop(published);
    let s2 = engine.stats();
    let (allocs, frees) = (
        s1.coherent_allocs - s0.coherent_allocs,
        s2.coherent_frees - s1.coherent_frees,
    );
    r.check(
        "virtio-blk-release",
        PAGES.used() == used0 && frees == allocs && allocs > 0,
        format_args!(
            "the driver dropped: {frees} of {allocs} coherent allocation(s) freed through \
             dma_dealloc (free_coherent_at), pages {:#x} (before: {used0:#x})",
            PAGES.used()
        ),
    );
}

/// `len` bytes at CPU address `addr` as a slice.
///
/// # Safety
///
/// The range is dom0's RAM, mapped, and nothing else references it while the slice lives.
unsafe fn slice(addr: u64, len: usize) -> &'static mut [u8] {
    // SAFETY: the caller's promise.
    unsafe {
        core::slice::from_raw_parts_mut(core::ptr::with_exposed_provenance_mut(addr as usize), len)
    }
}

/// Reads 8 sectors into a page below the mask: mapped directly.
fn read_direct(r: &mut R, engine: &Engine, blk: &mut Blk) {
    // SAFETY: LOW_BUF is this module's, in dom0's first bank; referenced only here.
    let buf = unsafe { slice(low(), 4096) };
    buf.fill(0xee);
    let (d0, b0, _) = maps(engine);
    let res = blk.read_blocks(0, buf);
    let (d1, b1, _) = maps(engine);
    let bad = wrong(buf, 0, 0);
    r.check(
        "dev-virtio-blk-read",
        res.is_ok() && d1 > d0 && bad.is_none(),
        format_args!(
            "sectors 0..8 into {:#x} (below the mask): {res:?}, {} direct map(s), {} bounced \
             (request header and status included); first wrong byte (sector, offset, got, \
             want): {bad:?}",
            buf.as_ptr().addr(),
            d1 - d0,
            b1 - b0
        ),
    );
}

/// Reads 32 sectors into 16 KiB above the mask: bounced.
fn read_bounced(r: &mut R, engine: &Engine, blk: &mut Blk, high: u64) {
    // SAFETY: the high range is dom0's RAM (found in its banks), used by this module only.
    let buf = unsafe { slice(high, HIGH_BYTES) };
    buf.fill(0xee);
    let (_, _, m0) = maps(engine);
    let res = blk.read_blocks(16, buf);
    let (_, _, m1) = maps(engine);
    let bad = wrong(buf, 0, 16);
    r.check(
        "dev-virtio-blk-read-bounced",
        res.is_ok() && m1 > m0 && bad.is_none(),
        format_args!(
            "sectors 16..48 into {high:#x}+{HIGH_BYTES:#x} (above the mask): {res:?}, {} \
             bounced for the mask, copied back at unshare; first wrong byte: {bad:?}",
            m1 - m0
        ),
    );
}

/// Writes generation 1 to sectors `WRITE_FIRST..` from above the mask (bounced) and reads it
/// back below it; the harness checks the image after the boot.
fn write_bounced(r: &mut R, engine: &Engine, blk: &mut Blk, high: u64) {
    let len = (WRITE_SECTORS as usize) * SECTOR_SIZE;
    // SAFETY: as in `read_bounced`; LOW_BUF is this module's, referenced only here.
    let (out, back) = unsafe { (slice(high, len), slice(low(), len)) };
    xen_qemu_disk::fill(out, 1, WRITE_FIRST);
    let (_, _, m0) = maps(engine);
    let wrote = blk.write_blocks(WRITE_FIRST as usize, out);
    let (_, _, m1) = maps(engine);
    let flushed = blk.flush();
    back.fill(0xee);
    let read = blk.read_blocks(WRITE_FIRST as usize, back);
    let bad = wrong(back, 1, WRITE_FIRST);
    r.check(
        "dev-virtio-blk-write",
        wrote.is_ok() && flushed.is_ok() && read.is_ok() && m1 > m0 && bad.is_none(),
        format_args!(
            "sectors {WRITE_FIRST}..{} written from above the mask ({wrote:?}, {} bounced), \
             flushed ({flushed:?}), read back below it ({read:?}); first wrong byte: {bad:?} \
             (the harness checks the image after the boot)",
            WRITE_FIRST + WRITE_SECTORS,
            m1 - m0
        ),
    );
}
