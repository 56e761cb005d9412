//! The device DMA checks: QEMU's `edu` device (a PCI bus master with a 32-bit DMA mask,
//! behind `virt`'s cache-coherent host bridge) moves real bytes at the bus addresses the DMA
//! engine returns, and the CPU checks them. Under Xen nested in QEMU there is no IOMMU, so
//! a bus address is a machine address: a wrong translation makes the device read or write
//! the wrong memory, and an address above the mask makes QEMU print `EDU: clamping DMA`
//! (which fails the harness).
//!
//! The device's 4 KiB buffer is the only place it keeps bytes, so a check of what the device
//! read has it write the bytes back out to [`SCRATCH`], a page of dom0's own low memory
//! whose bus address is its physical address (1:1, checked by the `translate` check).

use super::checks::{Engine, Pool, cpu_read, grant_of};
use super::edu::{Edu, EduError};
use super::mem::{self, Grants};
use super::{BootInfo, say};
use aarch64_dom0::cpu;
use aarch64_dom0::edu::DMA_MASK;
use aarch64_dom0::layout::{ACK, ACK_AT, ACK_PAGE, LOW_PAGE, REPLY_AT, REPLY_LEN, REPLY_PAGE};
use aarch64_dom0::pattern;
use aarch64_dom0::report::Report;
use core::fmt::Write;
use core::ptr::addr_of;
use swiotlb_xen::{BusAddr, Device, DmaAttrs, DmaDirection, DmaMask, PhysAddr, SgEntry};
use xen_abi::ops;

type R = Report<super::XenConsole>;

/// The device checks, in order; if the device cannot be set up each is reported as failed.
const NAMES: [&str; 9] = [
    "dev-direct",
    "dev-bounced",
    "dev-sync-for-cpu",
    "dev-map-sg",
    "dev-coherent",
    "dev-foreign-to-device",
    "dev-foreign-low-page",
    "dev-foreign-from-device",
    "dev-foreign-domu-ack",
];

/// Four pages of dom0's RAM below 4 GiB (in `.bss`, in the first bank).
#[repr(C, align(4096))]
struct LowPages([u8; 4 * 4096]);
static mut LOW: LowPages = LowPages([0; 4 * 4096]);

/// The page the device writes what it read to, for the CPU to check.
#[repr(C, align(4096))]
struct Scratch([u8; 4096]);
static mut SCRATCH: Scratch = Scratch([0; 4096]);

/// How many bytes of dom0's first bank above 4 GiB the checks use.
const HIGH_BYTES: u64 = 4 * 4096;

/// The byte that marks memory the device has not written yet.
const UNTOUCHED: u8 = 0xee;

fn low() -> u64 {
    addr_of!(LOW) as u64
}

fn scratch() -> u64 {
    addr_of!(SCRATCH) as u64
}

/// Writes `pattern::byte(seed, i)` to byte `i` of `[addr, addr + len)`.
fn fill(addr: u64, len: usize, seed: usize) {
    for i in 0..len {
        // SAFETY: the callers pass dom0's own buffers (LOW, SCRATCH, the high bank's first
        // pages, a coherent allocation), which nothing else references and no DMA mapping
        // covers while the CPU writes them.
        unsafe {
            core::ptr::with_exposed_provenance_mut::<u8>(addr as usize + i)
                .write_volatile(pattern::byte(seed, i));
        }
    }
}

/// Writes `byte` to all of `[addr, addr + len)`.
fn set(addr: u64, len: usize, byte: u8) {
    // SAFETY: as in `fill`.
    unsafe {
        core::ptr::write_bytes(
            core::ptr::with_exposed_provenance_mut::<u8>(addr as usize),
            byte,
            len,
        )
    };
}

/// The first offset of `[addr, addr + len)` that does not hold `pattern::byte(seed, i)`.
fn mismatch(addr: u64, len: usize, seed: usize) -> Option<usize> {
    (0..len).find(|&i| {
        // SAFETY: as in `fill`, read only.
        let b =
            unsafe { core::ptr::with_exposed_provenance::<u8>(addr as usize + i).read_volatile() };
        b != pattern::byte(seed, i)
    })
}

/// Whether all of `[addr, addr + len)` still holds `byte`.
fn all_are(addr: u64, len: usize, byte: u8) -> bool {
    (0..len).all(|i| {
        // SAFETY: as in `fill`, read only.
        unsafe {
            core::ptr::with_exposed_provenance::<u8>(addr as usize + i).read_volatile() == byte
        }
    })
}

/// What the checks share.
struct Ctx<'a> {
    engine: &'a Engine,
    edu: Edu,
    dev: Device,
    mask: u64,
    pool: Pool,
    high: u64,
}

impl Ctx<'_> {
    /// Whether `[bus, bus + len)` lies in the bounce pool and below the mask.
    fn in_pool(&self, bus: BusAddr, len: usize) -> bool {
        let (b, n) = (bus.as_u64(), len as u64);
        b >= self.pool.0 && b + n <= self.pool.1 && b + n - 1 <= self.mask
    }

    /// Maps `[phys, phys + len)` for the device.
    fn map(&self, phys: u64, len: usize, dir: DmaDirection) -> Option<BusAddr> {
        // SAFETY: the callers map dom0's own buffers or mapped grant pages, which stay
        // valid and unreferenced until the unmap that follows in the same check.
        let res = unsafe {
            self.engine
                .map_page(&self.dev, PhysAddr::new(phys), len, dir, DmaAttrs::empty())
        };
        if let Err(e) = &res {
            say!("    map_page({phys:#x}, {len:#x}, {dir:?}): {e}");
        }
        res.ok()
    }

    fn unmap(&self, bus: BusAddr, len: usize, dir: DmaDirection) -> bool {
        self.engine
            .unmap_page(&self.dev, bus, len, dir, DmaAttrs::empty())
            .is_ok()
    }

    /// The device reads `len` bytes at `bus` into its buffer at `at`.
    fn dev_read(&mut self, bus: BusAddr, at: usize, len: usize) -> bool {
        report_edu(self.edu.read_memory(bus.as_u64(), at, len))
    }

    /// The device writes `len` bytes of its buffer at `at` to `bus`.
    fn dev_write(&mut self, at: usize, bus: u64, len: usize) -> bool {
        report_edu(self.edu.write_memory(at, bus, len))
    }
}

fn report_edu(res: Result<(), EduError>) -> bool {
    if let Err(e) = res {
        say!("    edu: {e}");
    }
    res.is_ok()
}

/// Finds and sets up the device (one check), then runs the device DMA checks.
pub(super) fn run(r: &mut R, engine: &Engine, pool: Pool, grants: &Grants, info: &BootInfo) {
    let probed = info.pci.map(|host| (host, Edu::probe(&host)));
    let edu = match probed {
        Some((host, Ok(edu))) => {
            r.check(
                "pci-edu",
                info.pci_mapped && edu.command() & 6 == 6,
                format_args!(
                    "ECAM {:#x}+{:#x} (bus {}), 32-bit window {:#x}+{:#x}, mapped as Device \
                     memory: {}; edu at {:02x}:{:02x}.{} with BAR0 {:#x} ({:#x} bytes), \
                     command {:#x} (memory, bus master); ident and liveness answer",
                    host.ecam.base,
                    host.ecam.size,
                    host.first_bus,
                    host.mem32.base,
                    host.mem32.size,
                    info.pci_mapped,
                    edu.bdf.0,
                    edu.bdf.1,
                    edu.bdf.2,
                    edu.bar,
                    edu.bar_size,
                    edu.command()
                ),
            );
            Some(edu)
        }
        Some((_, Err(e))) => {
            r.check("pci-edu", false, format_args!("{e}"));
            None
        }
        None => {
            r.check(
                "pci-edu",
                false,
                format_args!("no pci-host-ecam-generic host bridge in the device tree"),
            );
            None
        }
    };
    let high = mem::ram()
        .as_slice()
        .iter()
        .find(|b| b.base > DMA_MASK && b.size >= HIGH_BYTES)
        .map(|b| b.base);
    let (Some(edu), Some(high), Some(mask)) = (edu, high, DmaMask::try_from_raw(DMA_MASK)) else {
        for name in NAMES {
            r.check(
                name,
                false,
                format_args!("no device or no dom0 RAM above the mask"),
            );
        }
        super::grow::run(r, engine, None, None);
        return;
    };
    let mut c = Ctx {
        engine,
        edu,
        dev: Device::new(mask),
        mask: DMA_MASK,
        pool,
        high,
    };
    direct(r, &mut c);
    bounced(r, &mut c);
    sync_for_cpu(r, &mut c);
    map_sg(r, &mut c);
    coherent(r, &mut c);
    foreign(r, &mut c, grants);
    super::grow::run(r, engine, Some(&mut c.edu), Some(high));
    say!(
        "    edu: {} DMA commands, {:#x} bytes, slowest {} ms",
        c.edu.transfers,
        c.edu.bytes,
        c.edu.slowest_ms
    );
}

/// A buffer below the mask: direct (bus = phys), both directions.
fn direct(r: &mut R, c: &mut Ctx<'_>) {
    let (phys, len) = (low() + 0x80, 0x600);
    fill(phys, len, 21);
    let before = c.engine.stats();
    let to = c.map(phys, len, DmaDirection::ToDevice);
    let read = to.is_some_and(|b| c.dev_read(b, 0, len));
    let un_to = to.is_some_and(|b| c.unmap(b, len, DmaDirection::ToDevice));
    set(scratch(), len, UNTOUCHED);
    let out = c.dev_write(0, scratch(), len);
    let device_read = read && out && mismatch(scratch(), len, 21).is_none();
    // The other way: the device writes the bytes it holds (seed 21) into the buffer.
    set(phys, len, UNTOUCHED);
    let from = c.map(phys, len, DmaDirection::FromDevice);
    let wrote = from.is_some_and(|b| c.dev_write(0, b.as_u64(), len));
    let un_from = from.is_some_and(|b| c.unmap(b, len, DmaDirection::FromDevice));
    let device_wrote = wrote && mismatch(phys, len, 21).is_none();
    let stats = c.engine.stats();
    r.check(
        "dev-direct",
        to == Some(BusAddr::new(phys))
            && from == Some(BusAddr::new(phys))
            && stats.direct_maps == before.direct_maps + 2
            && stats.bounced_maps == before.bounced_maps
            && device_read
            && device_wrote
            && un_to
            && un_from,
        format_args!(
            "own buffer {phys:#x}+{len:#x} below the mask: ToDevice -> {to:?}, FromDevice -> \
             {from:?} (bus = phys, direct); the device read the CPU's bytes: {device_read}, \
             the CPU sees the device's write: {device_wrote}"
        ),
    );
}

/// A buffer above 4 GiB: bounced through the pool, at a bus address under the mask, both
/// directions; the buffer itself changes only when the bounce buffer is copied back.
fn bounced(r: &mut R, c: &mut Ctx<'_>) {
    let (phys, len) = (c.high + 0x100, 0x700);
    fill(phys, len, 22);
    let before = c.engine.stats();
    let to = c.map(phys, len, DmaDirection::ToDevice);
    let to_in_pool = to.is_some_and(|b| c.in_pool(b, len));
    let read = to_in_pool && to.is_some_and(|b| c.dev_read(b, 0, len));
    let un_to = to.is_some_and(|b| c.unmap(b, len, DmaDirection::ToDevice));
    set(scratch(), len, UNTOUCHED);
    let device_read =
        read && c.dev_write(0, scratch(), len) && mismatch(scratch(), len, 22).is_none();

    // FromDevice: the device gets new bytes (seed 23) from the scratch page, then writes
    // them to the mapping.
    fill(scratch(), len, 23);
    let loaded = c.dev_read(BusAddr::new(scratch()), 0, len);
    set(phys, len, UNTOUCHED);
    let from = c.map(phys, len, DmaDirection::FromDevice);
    let from_in_pool = from.is_some_and(|b| c.in_pool(b, len));
    let wrote = loaded && from_in_pool && from.is_some_and(|b| c.dev_write(0, b.as_u64(), len));
    let untouched_before_unmap = all_are(phys, len, UNTOUCHED);
    let un_from = from.is_some_and(|b| c.unmap(b, len, DmaDirection::FromDevice));
    let device_wrote = wrote && mismatch(phys, len, 23).is_none();
    let stats = c.engine.stats();
    r.check(
        "dev-bounced",
        to_in_pool
            && from_in_pool
            && stats.bounced_maps == before.bounced_maps + 2
            && device_read
            && device_wrote
            && untouched_before_unmap
            && un_to
            && un_from,
        format_args!(
            "own buffer {phys:#x}+{len:#x} above the mask: ToDevice -> {to:?}, FromDevice -> \
             {from:?} (in the pool {:#x}..{:#x}, under the mask: {to_in_pool}, \
             {from_in_pool}); the device read the CPU's bytes: {device_read}; the buffer \
             unchanged until the unmap: {untouched_before_unmap}, then holds the device's \
             write: {device_wrote}",
            c.pool.0, c.pool.1
        ),
    );
}

/// A partial `sync_single_for_cpu` of a bounced FromDevice mapping: the synced part holds
/// the device's bytes, the rest not yet; the unmap copies the rest.
fn sync_for_cpu(r: &mut R, c: &mut Ctx<'_>) {
    let (phys, len) = (c.high + 0x1040, 0xc00);
    let (part, part_len) = (0x400, 0x200);
    fill(scratch(), len, 24);
    let loaded = c.dev_read(BusAddr::new(scratch()), 0, len);
    set(phys, len, UNTOUCHED);
    let bus = c.map(phys, len, DmaDirection::FromDevice);
    let in_pool = bus.is_some_and(|b| c.in_pool(b, len));
    let wrote = loaded && in_pool && bus.is_some_and(|b| c.dev_write(0, b.as_u64(), len));
    let synced = bus.is_some_and(|b| {
        c.engine
            .sync_single_for_cpu(
                &c.dev,
                BusAddr::new(b.as_u64() + part),
                part_len,
                DmaDirection::FromDevice,
            )
            .is_ok()
    });
    // The synced part is the device's, the rest still what the CPU left.
    let part_ok = (0..part_len).all(|i| {
        let mut b = [0u8];
        cpu_read(phys + part + i as u64, &mut b);
        b[0] == pattern::byte(24, part as usize + i)
    });
    let rest_untouched = all_are(phys, part as usize, UNTOUCHED)
        && all_are(
            phys + part + part_len as u64,
            len - part as usize - part_len,
            UNTOUCHED,
        );
    let un = bus.is_some_and(|b| c.unmap(b, len, DmaDirection::FromDevice));
    let all_ok = mismatch(phys, len, 24).is_none();
    r.check(
        "dev-sync-for-cpu",
        in_pool && wrote && synced && part_ok && rest_untouched && un && all_ok,
        format_args!(
            "bounced FromDevice {phys:#x}+{len:#x} -> {bus:?}; device wrote {len:#x} bytes; \
             sync_single_for_cpu(+{part:#x}, {part_len:#x}): that part holds them: {part_ok}, \
             the rest not yet: {rest_untouched}; after the unmap all of it: {all_ok}"
        ),
    );
}

/// A scatter-gather list of one buffer below the mask and two above (one across a page
/// boundary), Bidirectional: the device reads every entry, then writes each entry's bytes
/// into the next entry; the unmap copies the bounced ones back.
fn map_sg(r: &mut R, c: &mut Ctx<'_>) {
    const N: usize = 3;
    const LEN: usize = 0x400;
    let phys = [low() + 0x1010, c.high + 0x2200, c.high + 0x2e00];
    let seeds = [25, 26, 27];
    let mut sg = [SgEntry::default(); N];
    for i in 0..N {
        fill(phys[i], LEN, seeds[i]);
        sg[i] = SgEntry::new(PhysAddr::new(phys[i]), LEN);
    }
    // SAFETY: the three buffers are dom0's own and unreferenced until unmap_sg below.
    let mapped = unsafe {
        c.engine.map_sg(
            &c.dev,
            &mut sg,
            DmaDirection::Bidirectional,
            DmaAttrs::empty(),
        )
    };
    let addressed = mapped == Ok(N)
        && sg[0].dma_address == BusAddr::new(phys[0])
        && sg[1..].iter().all(|e| c.in_pool(e.dma_address, LEN));
    let mut moved = addressed;
    for (i, e) in sg.iter().enumerate() {
        moved = moved && c.dev_read(e.dma_address, i * LEN, LEN);
    }
    set(scratch(), N * LEN, UNTOUCHED);
    let read_ok = moved
        && c.dev_write(0, scratch(), N * LEN)
        && (0..N).all(|i| mismatch(scratch() + (i * LEN) as u64, LEN, seeds[i]).is_none());
    // Entry i gets the bytes of entry i + 1 (cyclically).
    let mut wrote = read_ok;
    for (i, e) in sg.iter().enumerate() {
        wrote = wrote && c.dev_write(((i + 1) % N) * LEN, e.dma_address.as_u64(), LEN);
    }
    let unmapped = c
        .engine
        .unmap_sg(&c.dev, &sg, DmaDirection::Bidirectional, DmaAttrs::empty());
    let back = wrote && (0..N).all(|i| mismatch(phys[i], LEN, seeds[(i + 1) % N]).is_none());
    r.check(
        "dev-map-sg",
        addressed && read_ok && back && unmapped.is_ok(),
        format_args!(
            "map_sg of {:#x} (below the mask), {:#x}, {:#x} (above) -> {mapped:?} at {}, {}, \
             {} (direct, pool, pool: {addressed}); the device read every entry: {read_ok}; \
             wrote each entry's bytes into the next, seen after unmap_sg: {back}",
            phys[0], phys[1], phys[2], sg[0].dma_address, sg[1].dma_address, sg[2].dma_address
        ),
    );
}

/// A coherent allocation for the device: below its coherent mask; the device reads the
/// first half and writes it to the second.
fn coherent(r: &mut R, c: &mut Ctx<'_>) {
    let size = 0x2000;
    let half = 0x800;
    match c.engine.alloc_coherent(&c.dev, size) {
        Ok(a) => {
            let (p, b) = (a.phys().as_u64(), a.bus());
            fill(p, half, 28);
            let reachable = b.as_u64() + size as u64 - 1 <= c.mask;
            let moved =
                reachable && c.dev_read(b, 0, half) && c.dev_write(0, b.as_u64() + 0x1000, half);
            let seen = moved && mismatch(p + 0x1000, half, 28).is_none();
            // SAFETY: the allocation came from this engine; the device is done with it.
            let freed = unsafe { c.engine.free_coherent(&c.dev, a) };
            r.check(
                "dev-coherent",
                seen && freed.is_ok(),
                format_args!(
                    "alloc_coherent({size:#x}) -> phys {p:#x}, {b} (under the mask: \
                     {reachable}); the device copied {half:#x} bytes from +0 to +0x1000 in \
                     it, the CPU sees them: {seen}; free {}",
                    if freed.is_ok() { "ok" } else { "failed" }
                ),
            );
        }
        Err(e) => {
            r.check("dev-coherent", false, format_args!("alloc_coherent: {e}"));
        }
    }
}

/// How the DMA layer mapped a foreign page: direct at its machine address, or bounced.
fn how(c: &Ctx<'_>, bus: Option<BusAddr>, machine: u64, len: usize) -> (&'static str, bool) {
    let above = machine + len as u64 - 1 > c.mask;
    let ok = match bus {
        Some(b) if above => c.in_pool(b, len),
        Some(b) => b.as_u64() == machine,
        None => false,
    };
    (
        if above {
            "bounced (machine frame above the mask)"
        } else {
            "direct (machine frame under the mask)"
        },
        ok,
    )
}

/// The seed's scenario: the device reads a page the domU granted and writes the reply into
/// another, at the bus addresses the DMA layer returns for the pages' dom0 guest-physical
/// (grant-mapped) addresses; the domU checks the reply and acknowledges.
fn foreign(r: &mut R, c: &mut Ctx<'_>, grants: &Grants) {
    // The device reads the domU's page 0 (at +0x40) and the page it moved below 4 GiB (at
    // +0x10, up to the bytes `bounce-straddling-foreign` rewrote at +0xf80), and writes what
    // it read to dom0's scratch page. The first must be bounced (the domU's RAM is above
    // 4 GiB) and the second direct, so that a wrong machine frame shows.
    for (name, index, off, len, want_direct) in [
        ("dev-foreign-to-device", 0, 0x40, 0x400, false),
        ("dev-foreign-low-page", LOW_PAGE, 0x10, 0xf70, true),
    ] {
        let g = grant_of(grants, index);
        let bus = c.map(g.host + off, len, DmaDirection::ToDevice);
        let (kind, placed) = how(c, bus, g.bus + off, len);
        let direct = g.bus + off + len as u64 - 1 <= c.mask;
        let placed = placed && direct == want_direct;
        let read = placed && bus.is_some_and(|b| c.dev_read(b, 0, len));
        let un = bus.is_some_and(|b| c.unmap(b, len, DmaDirection::ToDevice));
        set(scratch(), len, UNTOUCHED);
        let out = read && c.dev_write(0, scratch(), len);
        let mut seen = [0u8; 0x1000];
        cpu_read(scratch(), &mut seen[..len]);
        let bad = pattern::first_mismatch(&seen[..len], g.index, off as usize, false);
        let ok = out && bad.is_none();
        if let Some(at) = bad {
            let mut direct = [0u8; 4];
            cpu_read(g.host + at as u64, &mut direct);
            say!(
                "    first difference at page offset {at:#x}: the device read {:02x?}, the \
                 page holds {direct:02x?}",
                &seen[at - off as usize..(at - off as usize + 4).min(len)]
            );
        }
        r.check(
            name,
            ok && un,
            format_args!(
                "domU page {} (machine {:#x}) at host {:#x}+{off:#x}, {len:#x} bytes: map_page \
                 -> {bus:?}, {kind}; the device read the domU's bytes: {ok} (dom0 saw {:02x} \
                 {:02x} {:02x} {:02x}..)",
                g.index, g.bus, g.host, seen[0], seen[1], seen[2], seen[3]
            ),
        );
    }

    // The reply: the device takes it from the scratch page and writes it into the domU's
    // reply page.
    let g = grant_of(grants, REPLY_PAGE);
    let off = REPLY_AT as u64;
    for i in 0..REPLY_LEN {
        // SAFETY: SCRATCH is dom0's own page, unreferenced; REPLY_LEN is below 4096.
        unsafe {
            core::ptr::with_exposed_provenance_mut::<u8>(scratch() as usize + i)
                .write_volatile(pattern::reply_byte(REPLY_PAGE, REPLY_AT + i));
        }
    }
    let loaded = c.dev_read(BusAddr::new(scratch()), 0, REPLY_LEN);
    let bus = c.map(g.host + off, REPLY_LEN, DmaDirection::FromDevice);
    let (kind, placed) = how(c, bus, g.bus + off, REPLY_LEN);
    let wrote = loaded && placed && bus.is_some_and(|b| c.dev_write(0, b.as_u64(), REPLY_LEN));
    let un = bus.is_some_and(|b| c.unmap(b, REPLY_LEN, DmaDirection::FromDevice));
    let mut back = [0u8; REPLY_LEN];
    cpu_read(g.host + off, &mut back);
    let cpu_sees = wrote && pattern::first_mismatch(&back, REPLY_PAGE, REPLY_AT, true).is_none();
    r.check(
        "dev-foreign-from-device",
        cpu_sees && un,
        format_args!(
            "domU page {REPLY_PAGE} (machine {:#x}) at host {:#x}+{off:#x}: map_page -> \
             {bus:?}, {kind}; the device wrote {REPLY_LEN:#x} reply bytes, dom0 sees them \
             through the grant mapping: {cpu_sees}",
            g.bus, g.host
        ),
    );

    // The domU saw the device's write (it acknowledges in another granted page).
    let g = grant_of(grants, ACK_PAGE);
    let start = cpu::millis();
    let mut ack = [0u8; 8];
    loop {
        cpu_read(g.host + ACK_AT as u64, &mut ack);
        if ack == ACK || cpu::millis() - start > 30_000 {
            break;
        }
        let _ = ops::sched_yield(&super::checks::XEN);
    }
    r.check(
        "dev-foreign-domu-ack",
        ack == ACK,
        format_args!(
            "the domU checked the device's reply and acknowledged after {} ms (dom0 read {:?})",
            cpu::millis() - start,
            core::str::from_utf8(&ack).unwrap_or("?")
        ),
    );
}
