//! QEMU's `edu` PCI device (vendor 0x1234, device 0x11e8; QEMU's `docs/specs/edu.txt`):
//! found on PCI bus 0 through the configuration ports 0xCF8/0xCFC, its BAR0 mapped uncached,
//! and its DMA engine driven by polling.
//!
//! The DMA engine copies between machine memory and a 4 KiB buffer inside the device
//! (device addresses `0x40000..0x41000`): source at BAR0 `0x80`, destination at `0x88`,
//! count at `0x90`, command at `0x98` (bit 0 starts and stays set until the transfer is done,
//! bit 1 set means from the device to memory). Under Xen nested in QEMU there is no IOMMU, so
//! the address the device is given is a machine address. An address outside the device's
//! DMA mask is not refused: QEMU clamps it (`addr & dma_mask`), prints `EDU: clamping DMA`,
//! and the device really accesses that other memory. QEMU 7.2 refuses (and stops on) a
//! transfer of the whole buffer, so one transfer moves at most [`MAX_TRANSFER`] bytes. Each
//! transfer completes on a 100 ms timer of QEMU's virtual clock.

use crate::console::Line;
use crate::fmt_line;
use crate::mmu::{MMIO_FLAGS, Mmu};
use crate::pci;

/// The device's DMA mask in bits: the harness starts QEMU with
/// `-device edu,dma_mask=0xfffffff` (`xtask/src/xen_qemu/x86_64.rs`), QEMU's default.
pub const DMA_MASK_BITS: u32 = 28;
/// PCI vendor of QEMU's devices.
const VENDOR: u16 = 0x1234;
/// PCI device id of `edu`.
const DEVICE: u16 = 0x11e8;
/// The device address of the DMA buffer.
pub const BUFFER: u64 = 0x40000;
/// The DMA buffer's size.
pub const BUFFER_SIZE: usize = 4096;
/// The most bytes one transfer moves (QEMU 7.2's bound check refuses the whole buffer).
pub const MAX_TRANSFER: usize = BUFFER_SIZE - 1;
/// BAR0's size.
pub const BAR_SIZE: u64 = 1 << 20;
/// Where BAR0 is mapped: the last 2 MiB of the 1 GiB slot of `VIRT_BASE`, far above dom0's
/// pseudo-physical memory (checked at probe).
pub const BAR_VA: u64 = crate::VIRT_BASE + (1 << 30) - (2 << 20);

/// Register: identification, `0x010000ed` (version 1.0).
const REG_ID: u64 = 0x00;
/// Register: liveness check (reads back the bitwise inverse of what was written).
const REG_LIVENESS: u64 = 0x04;
/// Register: DMA source address.
const REG_DMA_SRC: u64 = 0x80;
/// Register: DMA destination address.
const REG_DMA_DST: u64 = 0x88;
/// Register: DMA byte count.
const REG_DMA_CNT: u64 = 0x90;
/// Register: DMA command.
const REG_DMA_CMD: u64 = 0x98;
/// Command bit: start (cleared by the device when the transfer is done).
const CMD_RUN: u64 = 1;
/// Command bit: from the device's buffer to memory (clear: memory to the buffer).
const CMD_TO_MEMORY: u64 = 2;
/// Polls of the command register before a transfer counts as hung (a transfer takes about
/// 100 ms; one poll, an MMIO read QEMU emulates, takes a microsecond or more).
const POLL_LIMIT: u64 = 200_000_000;

/// The `edu` device, found and mapped.
pub struct Edu {
    /// DMA transfers done.
    pub transfers: core::cell::Cell<u32>,
}

impl Edu {
    /// Finds the device on bus 0, enables memory decoding and bus mastering, maps BAR0 at
    /// [`BAR_VA`] (uncached) and checks the identification and liveness registers.
    pub fn probe(mmu: &Mmu<'_>, nr_pages: u64) -> Result<(Self, Line), Line> {
        ensure_below(nr_pages)?;
        pci::set_iopl()?;
        let (found, seen) = pci::find(VENDOR, DEVICE);
        let function = found.ok_or_else(|| {
            fmt_line!("no device {VENDOR:04x}:{DEVICE:04x} among {seen} on bus 0")
        })?;
        let bar0 = pci::read(function, 0x10);
        if bar0 & 1 != 0 || (bar0 >> 1) & 3 != 0 {
            return Err(fmt_line!("BAR0 {bar0:#x} is not a 32-bit memory BAR"));
        }
        let bar = u64::from(bar0 & !0xf);
        if bar == 0 || bar % BAR_SIZE != 0 {
            return Err(fmt_line!("BAR0 at {bar:#x}: not assigned or misaligned"));
        }
        let (command, now) = pci::enable_memory_and_master(function)?;
        // SAFETY: BAR_VA is a range nothing else maps; BAR0 is I/O memory dom0 may map.
        let tables = unsafe { mmu.map(BAR_VA, bar >> 12, BAR_SIZE >> 12, MMIO_FLAGS) }?;
        let edu = Self {
            transfers: core::cell::Cell::new(0),
        };
        let id = edu.read32(REG_ID);
        if id != 0x0100_00ed {
            return Err(fmt_line!(
                "identification register {id:#x}, expected 0x10000ed"
            ));
        }
        edu.write32(REG_LIVENESS, 0x1234_5678);
        let live = edu.read32(REG_LIVENESS);
        if live != !0x1234_5678 {
            return Err(fmt_line!(
                "liveness register {live:#x} after writing 0x12345678"
            ));
        }
        let line = fmt_line!(
            "edu at 00:{:02x}.0 ({seen} devices on bus 0), BAR0 {bar:#x} (1 MiB) mapped \
             uncached at {BAR_VA:#x} ({tables} new L1 table(s)), command {command:#x} -> {now:#x} \
             (memory, bus master), id {id:#x}, liveness ok; iopl 3 through PHYSDEVOP_set_iopl",
            function.device
        );
        Ok((edu, line))
    }

    /// The register's address.
    fn reg(offset: u64) -> u64 {
        BAR_VA + offset
    }

    fn read32(&self, offset: u64) -> u32 {
        let p: *const u32 = core::ptr::with_exposed_provenance(Self::reg(offset) as usize);
        // SAFETY: BAR0 is mapped uncached at BAR_VA; a 4-byte register read.
        unsafe { p.read_volatile() }
    }

    fn write32(&self, offset: u64, value: u32) {
        let p: *mut u32 = core::ptr::with_exposed_provenance_mut(Self::reg(offset) as usize);
        // SAFETY: as in `read32`.
        unsafe { p.write_volatile(value) }
    }

    fn read64(&self, offset: u64) -> u64 {
        let p: *const u64 = core::ptr::with_exposed_provenance(Self::reg(offset) as usize);
        // SAFETY: as in `read32`; the DMA registers take 8-byte accesses.
        unsafe { p.read_volatile() }
    }

    fn write64(&self, offset: u64, value: u64) {
        let p: *mut u64 = core::ptr::with_exposed_provenance_mut(Self::reg(offset) as usize);
        // SAFETY: as in `read64`.
        unsafe { p.write_volatile(value) }
    }

    /// Runs one transfer and waits for it.
    fn transfer(&self, src: u64, dst: u64, len: usize, cmd: u64) -> Result<(), Line> {
        if len == 0 || len > MAX_TRANSFER {
            return Err(fmt_line!("transfer of {len} bytes"));
        }
        if self.read64(REG_DMA_CMD) & CMD_RUN != 0 {
            return Err(fmt_line!("the DMA engine is busy"));
        }
        self.write64(REG_DMA_SRC, src);
        self.write64(REG_DMA_DST, dst);
        // CAST: at most 4095.
        self.write64(REG_DMA_CNT, len as u64);
        // The memory the device reads must be written before the command.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.write64(REG_DMA_CMD, cmd | CMD_RUN);
        let mut polls = 0u64;
        while self.read64(REG_DMA_CMD) & CMD_RUN != 0 {
            polls += 1;
            if polls == POLL_LIMIT {
                return Err(fmt_line!(
                    "transfer {src:#x} -> {dst:#x} ({len} bytes) hung"
                ));
            }
            core::hint::spin_loop();
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.transfers.set(self.transfers.get() + 1);
        Ok(())
    }

    /// The device reads `len` bytes at bus address `bus` into its buffer at `offset`.
    pub fn read_memory(&self, bus: u64, offset: usize, len: usize) -> Result<(), Line> {
        check_buffer(offset, len)?;
        // CAST: offset < 4096.
        self.transfer(bus, BUFFER + offset as u64, len, 0)
    }

    /// The device writes `len` bytes of its buffer at `offset` to bus address `bus`.
    pub fn write_memory(&self, offset: usize, bus: u64, len: usize) -> Result<(), Line> {
        check_buffer(offset, len)?;
        // CAST: offset < 4096.
        self.transfer(BUFFER + offset as u64, bus, len, CMD_TO_MEMORY)
    }
}

/// Refuses a range outside the device's buffer (QEMU would stop).
fn check_buffer(offset: usize, len: usize) -> Result<(), Line> {
    if offset.checked_add(len).is_none_or(|end| end > MAX_TRANSFER) {
        return Err(fmt_line!("buffer range {offset}+{len} beyond the device's"));
    }
    Ok(())
}

/// Refuses a BAR window that dom0's pseudo-physical memory would reach.
fn ensure_below(nr_pages: u64) -> Result<(), Line> {
    if crate::VIRT_BASE + (nr_pages << 12) > BAR_VA {
        return Err(fmt_line!(
            "{nr_pages} pages reach the BAR window at {BAR_VA:#x}"
        ));
    }
    Ok(())
}
