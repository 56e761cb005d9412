//! The device DMA checks: QEMU's `edu` device moves real bytes at the bus addresses the
//! engine returns, and the CPU verifies them through its own mapping (`VIRT_BASE + phys`),
//! never through the library's copies.
//!
//! The device reaches memory only below its 28-bit mask, so everything it writes for the
//! CPU to check goes through the low window (dom0 RAM below the mask, mapped directly by
//! the engine): [`load`] fills the device's buffer from there, [`store`] writes it back
//! there. A check that the CPU's view and the device's view of a mapping disagree (a wrong
//! bus address, a missing copy or sync, a frame the CPU does not see) fails on the bytes.

use swiotlb_xen::{
    BounceReason, BusAddr, Device, DmaAttrs, DmaDirection, DmaMask, PhysAddr, SgEntry,
};

use crate::checks::{Block64K, Env, Outcome, Report, ensure, phys_of, virt_of};
use crate::console::Line;
use crate::dma::{Engine, MASK, check_bounce, fill, holds, pattern};
use crate::edu::{DMA_MASK_BITS, Edu};
use crate::fmt_line;

/// Buffers above the device's mask (in the kernel image), 16 pages.
static mut DEV_BUF: Block64K<65536> = Block64K([0; 65536]);

/// Low-window page the device loads its buffer from.
const STAGE: u64 = 6;
/// Low-window page the device stores its buffer into for the CPU to check.
const VERIFY: u64 = 4;
/// The byte count of most transfers (crossing a page boundary wherever it starts past 1 KiB).
const LEN: usize = 3000;
/// The seed of the poison written where the device must write.
const POISON: u8 = 0xee;

/// What every check needs.
struct Ctx<'a> {
    env: &'a Env,
    eng: &'a Engine,
    edu: &'a Edu,
    dev: Device,
}

/// Page `k` of [`DEV_BUF`].
fn dev_page(k: u64) -> PhysAddr {
    PhysAddr::new(phys_of(&raw const DEV_BUF).as_u64() + k * 4096)
}

/// Checks that bytes `from..from + len` of the `phys` buffer hold pattern `seed` (indexed
/// from the buffer's start).
fn holds_part(what: &str, phys: PhysAddr, from: usize, len: usize, seed: u8) -> Result<(), Line> {
    let p = virt_of(phys);
    for i in from..from + len {
        // SAFETY: the checks pass ranges of mapped memory they own, unreferenced.
        let got = unsafe { p.add(i).read_volatile() };
        ensure!(
            got == pattern(seed, i),
            "{what} at {phys}: byte {i} is {got:#x}, expected {:#x} (seed {seed:#x})",
            pattern(seed, i)
        );
    }
    Ok(())
}

impl Ctx<'_> {
    /// Page `k` of the low window.
    fn low(&self, k: u64) -> PhysAddr {
        PhysAddr::new(self.env.low.as_u64() + k * 4096)
    }

    /// The bus address the P2M gives `phys`.
    fn p2m_bus(&self, phys: PhysAddr) -> u64 {
        (self.env.p2m_raw(phys.frame().as_u64()) << 12) + phys.frame_offset()
    }

    /// Maps `len` bytes at `phys`, which must be mapped directly (at the P2M's bus address).
    fn map_direct(&self, phys: PhysAddr, len: usize, dir: DmaDirection) -> Result<BusAddr, Line> {
        let s0 = self.eng.stats();
        // SAFETY: the checks map only their own statics or the low window, unreferenced.
        let bus = unsafe {
            self.eng
                .map_page(&self.dev, phys, len, dir, DmaAttrs::empty())
        }
        .map_err(|e| fmt_line!("map_page({phys}, {len}): {e}"))?;
        ensure!(
            self.eng.stats().direct_maps == s0.direct_maps + 1
                && bus.as_u64() == self.p2m_bus(phys),
            "{phys} not mapped directly: {bus}, the P2M says {:#x}",
            self.p2m_bus(phys)
        );
        Ok(bus)
    }

    /// Maps `len` bytes at `phys`, which must be bounced for `reason` into the pool, under
    /// the mask; returns the bus address and the bounce buffer's address.
    fn map_bounced(
        &self,
        phys: PhysAddr,
        len: usize,
        dir: DmaDirection,
        reason: BounceReason,
    ) -> Result<(BusAddr, PhysAddr), Line> {
        let s0 = self.eng.stats();
        // SAFETY: as in `map_direct`.
        let bus = unsafe {
            self.eng
                .map_page(&self.dev, phys, len, dir, DmaAttrs::empty())
        }
        .map_err(|e| fmt_line!("map_page({phys}, {len}): {e}"))?;
        let r = reason.index();
        ensure!(
            self.eng.stats().bounced_by_reason[r] == s0.bounced_by_reason[r] + 1,
            "{phys} not bounced as {reason:?} ({bus})"
        );
        let tlb = check_bounce(self.eng, bus, len, MASK)?;
        Ok((bus, tlb))
    }

    fn unmap(&self, bus: BusAddr, len: usize, dir: DmaDirection) -> Result<(), Line> {
        self.eng
            .unmap_page(&self.dev, bus, len, dir, DmaAttrs::empty())
            .map_err(|e| fmt_line!("unmap_page({bus}, {len}): {e}"))
    }

    /// Loads `len` bytes of pattern `seed` into the device's buffer at `offset`: the CPU
    /// writes them into the low window's staging page and the device reads them there.
    fn load(&self, offset: usize, len: usize, seed: u8) -> Result<(), Line> {
        let stage = self.low(STAGE);
        fill(stage, len, seed);
        let bus = self.map_direct(stage, len, DmaDirection::ToDevice)?;
        self.edu.read_memory(bus.as_u64(), offset, len)?;
        self.unmap(bus, len, DmaDirection::ToDevice)
    }

    /// The device writes `len` bytes of its buffer at `offset` into the low window's
    /// verification page (poisoned first); returns that page for the CPU to check.
    fn store(&self, offset: usize, len: usize) -> Result<PhysAddr, Line> {
        let verify = PhysAddr::new(self.low(VERIFY).as_u64() + 0x40);
        fill(verify, len, POISON);
        let bus = self.map_direct(verify, len, DmaDirection::FromDevice)?;
        self.edu.write_memory(offset, bus.as_u64(), len)?;
        self.unmap(bus, len, DmaDirection::FromDevice)?;
        Ok(verify)
    }
}

/// Runs the device DMA checks.
pub fn run(env: &Env, eng: &Engine, edu: Option<&Edu>, report: &mut Report) {
    type Check = fn(&Ctx<'_>) -> Outcome;
    let checks: [(&str, Check); 8] = [
        ("dev-direct", direct),
        ("dev-bounced-to-device", bounced_to_device),
        ("dev-bounced-from-device", bounced_from_device),
        ("dev-straddle", straddle),
        ("dev-sync-for-cpu", sync_for_cpu),
        ("dev-sync-partial", sync_partial),
        ("dev-map-sg", map_sg),
        ("dev-coherent", coherent),
    ];
    let Some(edu) = edu else {
        for (name, _) in checks {
            report.record(name, Err(fmt_line!("no edu device")));
        }
        return;
    };
    let ctx = Ctx {
        env,
        eng,
        edu,
        dev: Device::new(MASK),
    };
    let t0 = edu.transfers.get();
    for (name, check) in checks {
        let used = eng.pool().map_or(0, |p| p.stats().used);
        let outcome = check(&ctx).and_then(|line| {
            let now = eng.pool().map_or(0, |p| p.stats().used);
            ensure!(now == used, "{} slots left in use", now - used);
            Ok(line)
        });
        report.record(name, outcome);
    }
    crate::kprintln!(
        "x86_64-pv-dom0: the edu device ran {} DMA transfers",
        edu.transfers.get() - t0
    );
}

/// A buffer the engine maps directly (dom0 RAM below the mask, across a page boundary of
/// machine-adjacent frames): the device reads it and writes it back elsewhere.
fn direct(c: &Ctx<'_>) -> Outcome {
    let src = PhysAddr::new(c.low(0).as_u64() + 2000);
    fill(src, LEN, 0x31);
    let bus = c.map_direct(src, LEN, DmaDirection::ToDevice)?;
    c.edu.read_memory(bus.as_u64(), 0, LEN)?;
    c.unmap(bus, LEN, DmaDirection::ToDevice)?;
    let dst = PhysAddr::new(c.low(2).as_u64() + 0x123);
    fill(dst, LEN, POISON);
    let bus2 = c.map_direct(dst, LEN, DmaDirection::FromDevice)?;
    c.edu.write_memory(0, bus2.as_u64(), LEN)?;
    c.unmap(bus2, LEN, DmaDirection::FromDevice)?;
    holds("written back by the device", dst, LEN, 0x31)?;
    holds("source", src, LEN, 0x31)?;
    Ok(fmt_line!(
        "{} RAM {src}+{LEN} at {bus} (direct, frames {:#x}|{:#x}): the device read it and \
         wrote it to {dst} at {bus2} (direct); the CPU reads the same bytes",
        if c.env.low_is_own {
            "dom0's own"
        } else {
            "exchanged"
        },
        bus.as_u64() >> 12,
        (bus.as_u64() >> 12) + 1
    ))
}

/// A buffer above the mask mapped to the device: bounced; the device reads what the CPU
/// wrote.
fn bounced_to_device(c: &Ctx<'_>) -> Outcome {
    let orig = PhysAddr::new(dev_page(1).as_u64() + 0x345);
    fill(orig, LEN, 0x42);
    let dir = DmaDirection::ToDevice;
    let (bus, tlb) = c.map_bounced(orig, LEN, dir, BounceReason::OutsideMask)?;
    c.edu.read_memory(bus.as_u64(), 0, LEN)?;
    c.unmap(bus, LEN, dir)?;
    let got = c.store(0, LEN)?;
    holds("what the device read", got, LEN, 0x42)?;
    Ok(fmt_line!(
        "{orig}+{LEN} (bus {:#x}, above the mask) bounced to {bus} (pool {tlb}, under \
         {:#x}); the device read the CPU's bytes",
        c.p2m_bus(orig),
        MASK.as_u64()
    ))
}

/// A buffer above the mask mapped from the device: the device writes the bounce buffer, the
/// CPU sees the bytes in its buffer after `unmap_page`, not before.
fn bounced_from_device(c: &Ctx<'_>) -> Outcome {
    c.load(0, LEN, 0x53)?;
    let orig = PhysAddr::new(dev_page(3).as_u64() + 0x10);
    fill(orig, LEN, POISON);
    let dir = DmaDirection::FromDevice;
    let (bus, tlb) = c.map_bounced(orig, LEN, dir, BounceReason::OutsideMask)?;
    c.edu.write_memory(0, bus.as_u64(), LEN)?;
    holds("the buffer before unmap", orig, LEN, POISON)?;
    c.unmap(bus, LEN, dir)?;
    holds("the buffer after unmap", orig, LEN, 0x53)?;
    Ok(fmt_line!(
        "{orig}+{LEN} (above the mask) bounced to {bus} (pool {tlb}); the device wrote there, \
         the buffer was untouched until unmap_page copied the device's bytes back"
    ))
}

/// A buffer below the mask across two pages whose frames are not adjacent (page 13 of the
/// low window moved by an exchange): bounced as not contiguous, both directions.
fn straddle(c: &Ctx<'_>) -> Outcome {
    let pv = c.eng.platform();
    let (p12, p13) = (c.low(12), c.low(13));
    // SAFETY: the page is the low window's, not in use.
    unsafe { pv.create_contiguous(p13, 0, DMA_MASK_BITS) }
        .map_err(|e| fmt_line!("moving {p13}: {e}"))?;
    let (m12, m13) = (c.p2m_bus(p12) >> 12, c.p2m_bus(p13) >> 12);
    ensure!(
        m13 != m12 + 1 && m12 < MASK.as_u64() >> 12 && m13 < MASK.as_u64() >> 12,
        "frames {m12:#x} | {m13:#x}: adjacent or not below the mask"
    );
    let buf = PhysAddr::new(p13.as_u64() - 1500);
    fill(buf, LEN, 0x64);
    let (bus, tlb) = c.map_bounced(
        buf,
        LEN,
        DmaDirection::ToDevice,
        BounceReason::NotContiguous,
    )?;
    c.edu.read_memory(bus.as_u64(), 0, LEN)?;
    c.unmap(bus, LEN, DmaDirection::ToDevice)?;
    let got = c.store(0, LEN)?;
    holds("what the device read", got, LEN, 0x64)?;
    // From the device: its buffer holds the bytes it just read.
    fill(buf, LEN, POISON);
    let (bus2, _) = c.map_bounced(
        buf,
        LEN,
        DmaDirection::FromDevice,
        BounceReason::NotContiguous,
    )?;
    c.edu.write_memory(0, bus2.as_u64(), LEN)?;
    c.unmap(bus2, LEN, DmaDirection::FromDevice)?;
    holds("both pages after unmap", buf, LEN, 0x64)?;
    Ok(fmt_line!(
        "{buf}+{LEN} over frames {m12:#x} | {m13:#x} (below the mask, not adjacent): bounced \
         to {bus} (pool {tlb}) and {bus2}; the device read both pages' bytes and its writes \
         reached both pages"
    ))
}

/// `sync_single_for_cpu` of a whole mapping: the device writes the bounce buffer, the CPU's
/// buffer changes only at the sync, before unmap.
fn sync_for_cpu(c: &Ctx<'_>) -> Outcome {
    let orig = PhysAddr::new(dev_page(5).as_u64() + 0x80);
    fill(orig, LEN, POISON);
    let dir = DmaDirection::FromDevice;
    let (bus, _) = c.map_bounced(orig, LEN, dir, BounceReason::OutsideMask)?;
    let run = || -> Result<(), Line> {
        c.load(0, LEN, 0x86)?;
        c.edu.write_memory(0, bus.as_u64(), LEN)?;
        holds("the buffer before the sync", orig, LEN, POISON)?;
        c.eng
            .sync_single_for_cpu(&c.dev, bus, LEN, dir)
            .map_err(|e| fmt_line!("sync_single_for_cpu: {e}"))?;
        holds("the buffer after the sync", orig, LEN, 0x86)
    };
    let r = run();
    c.unmap(bus, LEN, dir)?;
    r?;
    holds("the buffer after unmap", orig, LEN, 0x86)?;
    Ok(fmt_line!(
        "{orig}+{LEN} bounced to {bus}: the device's write reached the CPU's buffer at \
         sync_single_for_cpu, before unmap_page"
    ))
}

/// A partial `sync_single_for_cpu` (bytes 1000..2200 of a 3000-byte mapping): the synced
/// part changes, the rest only at unmap.
fn sync_partial(c: &Ctx<'_>) -> Outcome {
    let orig = PhysAddr::new(dev_page(7).as_u64() + 0x40);
    fill(orig, LEN, 0x97);
    let dir = DmaDirection::Bidirectional;
    let (bus, _) = c.map_bounced(orig, LEN, dir, BounceReason::OutsideMask)?;
    let (from, part) = (1000usize, 1200usize);
    let run = || -> Result<(), Line> {
        c.load(0, LEN, 0xa8)?;
        c.edu.write_memory(0, bus.as_u64(), LEN)?;
        let at = BusAddr::new(bus.as_u64() + from as u64);
        c.eng
            .sync_single_for_cpu(&c.dev, at, part, dir)
            .map_err(|e| fmt_line!("sync_single_for_cpu({at}, {part}): {e}"))?;
        holds_part("the synced part", orig, from, part, 0xa8)?;
        holds_part("the part before it", orig, 0, from, 0x97)?;
        holds_part(
            "the part after it",
            orig,
            from + part,
            LEN - from - part,
            0x97,
        )
    };
    let r = run();
    c.unmap(bus, LEN, dir)?;
    r?;
    holds("the buffer after unmap", orig, LEN, 0xa8)?;
    Ok(fmt_line!(
        "{orig}+{LEN} bounced to {bus}, the device wrote it all: a sync of bytes \
         {from}..{} changed exactly those; unmap_page copied the rest",
        from + part
    ))
}

/// `map_sg` of three entries (two above the mask, one across a page boundary; one in the
/// low window, mapped directly): the device reads each entry, then writes each with the
/// next entry's bytes.
fn map_sg(c: &Ctx<'_>) -> Outcome {
    const N: usize = 3;
    const L: usize = 1300;
    let phys = [
        PhysAddr::new(dev_page(9).as_u64() + 3500),
        PhysAddr::new(dev_page(12).as_u64() + 0x10),
        PhysAddr::new(c.low(8).as_u64() + 0x200),
    ];
    let mut sg = phys.map(|p| SgEntry::new(p, L));
    for (i, p) in phys.iter().enumerate() {
        fill(*p, L, 0xb0 + i as u8);
    }
    let dir = DmaDirection::Bidirectional;
    // SAFETY: the entries are the checks' statics and the low window, unreferenced.
    let n = unsafe { c.eng.map_sg(&c.dev, &mut sg, dir, DmaAttrs::empty()) }
        .map_err(|e| fmt_line!("map_sg: {e}"))?;
    let run = || -> Result<(), Line> {
        ensure!(n == N, "map_sg mapped {n} entries");
        for (i, e) in sg.iter().enumerate() {
            ensure!(e.dma_length == L, "entry {i}: dma_length {}", e.dma_length);
            if i < 2 {
                check_bounce(c.eng, e.dma_address, L, MASK)
                    .map_err(|m| fmt_line!("entry {i}: {m}"))?;
            } else {
                ensure!(
                    e.dma_address.as_u64() == c.p2m_bus(e.phys),
                    "entry {i} not direct: {}",
                    e.dma_address
                );
            }
        }
        for (i, e) in sg.iter().enumerate() {
            c.edu.read_memory(e.dma_address.as_u64(), i * L, L)?;
        }
        for (i, e) in sg.iter().enumerate() {
            c.edu
                .write_memory(((i + 1) % N) * L, e.dma_address.as_u64(), L)?;
        }
        Ok(())
    };
    let r = run();
    c.eng
        .unmap_sg(&c.dev, &sg, dir, DmaAttrs::empty())
        .map_err(|e| fmt_line!("unmap_sg: {e}"))?;
    r?;
    for (i, p) in phys.iter().enumerate() {
        holds("entry after unmap_sg", *p, L, 0xb0 + ((i + 1) % N) as u8)?;
    }
    Ok(fmt_line!(
        "3 entries of {L} bytes at {}, {} (bounced) and {} (direct): the device read \
         each and wrote each with the next one's bytes; unmap_sg left them rotated",
        sg[0].dma_address,
        sg[1].dma_address,
        sg[2].dma_address
    ))
}

/// `alloc_coherent` for a device whose coherent mask is its 28-bit DMA mask: the pages are
/// exchanged below the mask; the device reads what the CPU wrote into the first page and
/// writes it into the second, at the returned bus address.
fn coherent(c: &Ctx<'_>) -> Outcome {
    let dev = Device::new(MASK).with_coherent_mask(MASK);
    let size = 8192;
    let a = c
        .eng
        .alloc_coherent(&dev, size)
        .map_err(|e| fmt_line!("alloc_coherent({size}): {e}"))?;
    let (phys, bus) = (a.phys(), a.bus());
    let exchanged = a.is_exchanged();
    let run = || -> Result<(), Line> {
        ensure!(
            exchanged,
            "pages at {phys} (above the mask) were not exchanged"
        );
        ensure!(
            MASK.covers(bus, size as u64),
            "coherent bus {bus} not under the mask"
        );
        ensure!(
            bus.as_u64() == c.p2m_bus(phys),
            "coherent bus {bus}, the P2M says {:#x}",
            c.p2m_bus(phys)
        );
        fill(phys, LEN, 0xc1);
        let second = PhysAddr::new(phys.as_u64() + 4096 + 0x100);
        fill(second, LEN, POISON);
        c.edu.read_memory(bus.as_u64(), 0, LEN)?;
        c.edu.write_memory(0, bus.as_u64() + 4096 + 0x100, LEN)?;
        holds("the second page", second, LEN, 0xc1)?;
        holds("the first page", phys, LEN, 0xc1)
    };
    let r = run();
    // SAFETY: the device is done with the allocation.
    unsafe { c.eng.free_coherent(&dev, a) }
        .map_err(|e| fmt_line!("free_coherent: {}", e.source))?;
    r?;
    Ok(fmt_line!(
        "8 KiB at {phys} (exchanged from above the mask) on {bus} under the {}-bit coherent mask: \
         the device read the CPU's bytes from page 0 and wrote them into page 1",
        DmaMask::bits(MASK)
    ))
}
