//! The `edu` device on the `virt` machine's PCI host bridge: found by a scan of the first
//! bus through the ECAM, given a BAR0 inside the bridge's 32-bit memory window (nothing
//! assigns BARs on arm `virt`), enabled for memory decoding and bus mastering, then driven
//! one DMA command at a time, polled until the device clears the start bit.

use aarch64_dom0::cpu;
use aarch64_dom0::edu::{
    CFG_BAR0, CFG_COMMAND, CFG_ID, CMD_START, CMD_TO_MEMORY, COMMAND_BUS_MASTER, COMMAND_MEMORY,
    DEVICE, DMA_BUFFER, IDENT, MAX_TRANSFER, REG_DMA_CMD, REG_DMA_COUNT, REG_DMA_DST, REG_DMA_SRC,
    REG_IDENT, REG_LIVENESS, VENDOR, bar32_size, ecam_offset, place_bar,
};
use aarch64_dom0::fdt::PciHost;
use core::fmt;

/// How long one DMA command may take before the driver gives up (QEMU's timer fires after
/// 100 ms of virtual time).
const DMA_TIMEOUT_MS: u64 = 5_000;

fn read32(addr: u64) -> u32 {
    // SAFETY: the callers pass addresses inside the ECAM or the device's BAR, which the
    // identity map maps as Device memory and Xen maps to dom0; a read has no side effect
    // on these registers.
    unsafe { core::ptr::with_exposed_provenance::<u32>(addr as usize).read_volatile() }
}

fn write32(addr: u64, v: u32) {
    // SAFETY: as in `read32`; the callers write registers whose meaning they know.
    unsafe { core::ptr::with_exposed_provenance_mut::<u32>(addr as usize).write_volatile(v) }
}

fn read64(addr: u64) -> u64 {
    // SAFETY: as in `read32`, for the device's 64-bit DMA registers.
    unsafe { core::ptr::with_exposed_provenance::<u64>(addr as usize).read_volatile() }
}

fn write64(addr: u64, v: u64) {
    // SAFETY: as in `write32`, for the device's 64-bit DMA registers.
    unsafe { core::ptr::with_exposed_provenance_mut::<u64>(addr as usize).write_volatile(v) }
}

/// Why the device could not be set up or a transfer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EduError {
    /// No `edu` device on the first bus.
    NotFound,
    /// BAR0 is not a 32-bit memory BAR.
    BadBar(u32),
    /// BAR0 does not fit the bridge's 32-bit window.
    NoRoom(u64),
    /// The identification or liveness register read something else.
    NotAlive {
        /// What the identification register read.
        ident: u32,
        /// What the liveness register read back after the inverse of this was written.
        liveness: u32,
    },
    /// A transfer does not fit the device's buffer.
    TooLong(usize),
    /// The device did not clear the start bit in time.
    Timeout {
        /// The command register when the driver gave up.
        cmd: u64,
    },
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => write!(f, "no edu device (1234:11e8) on the first bus"),
            Self::BadBar(v) => write!(f, "BAR0 reads {v:#x} after all ones: not a 32-bit BAR"),
            Self::NoRoom(size) => write!(f, "a {size:#x}-byte BAR0 does not fit the window"),
            Self::NotAlive { ident, liveness } => {
                write!(f, "ident {ident:#x}, liveness {liveness:#x}")
            }
            Self::TooLong(len) => write!(f, "{len:#x} bytes do not fit one command"),
            Self::Timeout { cmd } => write!(f, "DMA command still {cmd:#x} after the timeout"),
        }
    }
}

/// The `edu` device, set up.
#[derive(Clone, Copy, Debug)]
pub struct Edu {
    /// Where its configuration space is (CPU address).
    pub config: u64,
    /// Its bus, device and function numbers.
    pub bdf: (u32, u32, u32),
    /// Its BAR0 (CPU address) and size.
    pub bar: u64,
    /// The size BAR0 decodes.
    pub bar_size: u64,
    /// How many commands it ran.
    pub transfers: u64,
    /// How many bytes they moved.
    pub bytes: u64,
    /// The longest a command took, in ms.
    pub slowest_ms: u64,
}

impl Edu {
    /// Finds the device on the first bus of `host`, assigns BAR0 at the lowest suitable
    /// address of the 32-bit window, enables memory decoding and bus mastering, and checks
    /// the identification and liveness registers.
    ///
    /// # Errors
    ///
    /// [`EduError`] says what was not as expected.
    pub fn probe(host: &PciHost) -> Result<Self, EduError> {
        let bus = host.first_bus;
        let want = u32::from(VENDOR) | (u32::from(DEVICE) << 16);
        let (dev, config) = (0..32)
            .map(|d| (d, host.ecam.base + ecam_offset(bus, d, 0)))
            .find(|&(_, c)| read32(c + CFG_ID) == want)
            .ok_or(EduError::NotFound)?;
        // Memory decoding off while the BAR is sized and moved.
        let command = read32(config + CFG_COMMAND) & 0xffff;
        write32(
            config + CFG_COMMAND,
            command & !(COMMAND_MEMORY | COMMAND_BUS_MASTER),
        );
        write32(config + CFG_BAR0, u32::MAX);
        let readback = read32(config + CFG_BAR0);
        let size = bar32_size(readback).ok_or(EduError::BadBar(readback))?;
        let pci = place_bar(
            host.mem32_pci,
            host.mem32_pci.saturating_add(host.mem32.size),
            size,
        )
        .filter(|&p| p <= u64::from(u32::MAX))
        .ok_or(EduError::NoRoom(size))?;
        // CAST: checked to fit 32 bits just above.
        write32(config + CFG_BAR0, pci as u32);
        write32(
            config + CFG_COMMAND,
            command | COMMAND_MEMORY | COMMAND_BUS_MASTER,
        );
        let bar = host.mem32.base + (pci - host.mem32_pci);
        let ident = read32(bar + REG_IDENT);
        write32(bar + REG_LIVENESS, 0x1234_5678);
        let liveness = read32(bar + REG_LIVENESS);
        if ident != IDENT || liveness != !0x1234_5678 {
            return Err(EduError::NotAlive { ident, liveness });
        }
        Ok(Self {
            config,
            bdf: (bus, dev, 0),
            bar,
            bar_size: size,
            transfers: 0,
            bytes: 0,
            slowest_ms: 0,
        })
    }

    /// The PCI command register (memory decoding and bus mastering should be on).
    pub fn command(&self) -> u32 {
        read32(self.config + CFG_COMMAND) & 0xffff
    }

    fn run(&mut self, src: u64, dst: u64, len: usize, to_memory: bool) -> Result<(), EduError> {
        if len == 0 || len > MAX_TRANSFER {
            return Err(EduError::TooLong(len));
        }
        // What the CPU wrote reaches memory before the device reads it.
        cpu::full_barrier();
        write64(self.bar + REG_DMA_SRC, src);
        write64(self.bar + REG_DMA_DST, dst);
        // CAST: at most MAX_TRANSFER.
        write64(self.bar + REG_DMA_COUNT, len as u64);
        let cmd = CMD_START | if to_memory { CMD_TO_MEMORY } else { 0 };
        let start = cpu::millis();
        write64(self.bar + REG_DMA_CMD, cmd);
        loop {
            let now = read64(self.bar + REG_DMA_CMD);
            if now & CMD_START == 0 {
                break;
            }
            if cpu::millis() - start > DMA_TIMEOUT_MS {
                return Err(EduError::Timeout { cmd: now });
            }
            core::hint::spin_loop();
        }
        // What the device wrote is read after it finished.
        cpu::full_barrier();
        self.transfers += 1;
        // CAST: usize is 64 bits on aarch64.
        self.bytes += len as u64;
        self.slowest_ms = self.slowest_ms.max(cpu::millis() - start);
        Ok(())
    }

    /// The device reads `len` bytes of memory at bus address `bus` into its buffer at
    /// `offset`.
    ///
    /// # Errors
    ///
    /// [`EduError::TooLong`] if the bytes do not fit (or `len` is 0), or a timeout.
    pub fn read_memory(&mut self, bus: u64, offset: usize, len: usize) -> Result<(), EduError> {
        if offset.saturating_add(len) > MAX_TRANSFER {
            return Err(EduError::TooLong(offset.saturating_add(len)));
        }
        // CAST: offset is below the buffer's size.
        self.run(bus, DMA_BUFFER + offset as u64, len, false)
    }

    /// The device writes `len` bytes of its buffer at `offset` to memory at bus address
    /// `bus`.
    ///
    /// # Errors
    ///
    /// As [`Edu::read_memory`].
    pub fn write_memory(&mut self, offset: usize, bus: u64, len: usize) -> Result<(), EduError> {
        if offset.saturating_add(len) > MAX_TRANSFER {
            return Err(EduError::TooLong(offset.saturating_add(len)));
        }
        // CAST: offset is below the buffer's size.
        self.run(DMA_BUFFER + offset as u64, bus, len, true)
    }
}
