//! QEMU's `edu` PCI device (`hw/misc/edu.c`, `docs/specs/edu.txt`): what dom0 needs to find
//! it on the `virt` machine's ECAM host bridge and to drive its DMA engine.
//!
//! The device has one 1 MiB memory BAR (BAR0) of 32-bit registers below 0x80 and 64-bit DMA
//! registers from 0x80: source, destination, count and command. A transfer moves bytes
//! between system memory (a bus address, which the device masks with its `dma_mask`
//! property) and a 4 KiB buffer inside the device at device address [`DMA_BUFFER`]. Command
//! bit 0 starts it and stays set until it is done (a QEMU timer fires 100 ms of virtual
//! time later); bit 1 is the direction. QEMU 7.2's range check refuses a transfer that ends
//! exactly at the buffer's end, so at most [`MAX_TRANSFER`] bytes move per command.
//!
//! The constants and the configuration-space arithmetic are plain Rust, tested on the host;
//! the register accesses live in the dom0 kernel.

/// QEMU's PCI vendor id.
pub const VENDOR: u16 = 0x1234;
/// The `edu` device id.
pub const DEVICE: u16 = 0x11e8;
/// The identification register (BAR0 + 0): `0x010000ed` (version 1.0).
pub const REG_IDENT: u64 = 0x00;
/// What [`REG_IDENT`] reads.
pub const IDENT: u32 = 0x0100_00ed;
/// The liveness register (BAR0 + 4): reads back the bitwise inverse of what was written.
pub const REG_LIVENESS: u64 = 0x04;
/// The DMA source address (64 bits).
pub const REG_DMA_SRC: u64 = 0x80;
/// The DMA destination address (64 bits).
pub const REG_DMA_DST: u64 = 0x88;
/// The DMA byte count (64 bits).
pub const REG_DMA_COUNT: u64 = 0x90;
/// The DMA command (64 bits): [`CMD_START`] | direction.
pub const REG_DMA_CMD: u64 = 0x98;
/// Command bit 0: start; the device clears it when the transfer is done.
pub const CMD_START: u64 = 1;
/// Command bit 1: from the device's buffer to system memory (clear: from memory to the
/// buffer).
pub const CMD_TO_MEMORY: u64 = 2;
/// The device address of the internal buffer.
pub const DMA_BUFFER: u64 = 0x4_0000;
/// The internal buffer's size.
pub const DMA_BUFFER_SIZE: usize = 4096;
/// The most bytes one command may move (QEMU 7.2 refuses the full buffer, off by one).
pub const MAX_TRANSFER: usize = DMA_BUFFER_SIZE - 1;
/// The DMA mask the harness gives the device (`-device edu,dma_mask=0xffffffff`).
pub const DMA_MASK: u64 = 0xffff_ffff;

/// PCI configuration space: the vendor and device ids.
pub const CFG_ID: u64 = 0x00;
/// PCI configuration space: the command (low half) and status (high half) registers.
pub const CFG_COMMAND: u64 = 0x04;
/// PCI configuration space: BAR0.
pub const CFG_BAR0: u64 = 0x10;
/// Command register: memory space decoding.
pub const COMMAND_MEMORY: u32 = 1 << 1;
/// Command register: bus mastering (the device may DMA).
pub const COMMAND_BUS_MASTER: u32 = 1 << 2;

/// The ECAM offset of function `func` of device `dev` on bus `bus`.
#[must_use]
pub const fn ecam_offset(bus: u32, dev: u32, func: u32) -> u64 {
    ((bus as u64) << 20) | ((dev as u64) << 15) | ((func as u64) << 12)
}

/// The size a 32-bit memory BAR decodes, from what it reads back after all ones were
/// written; `None` for an I/O BAR, a 64-bit BAR or a BAR that decodes nothing.
#[must_use]
pub const fn bar32_size(readback: u32) -> Option<u64> {
    // Bit 0: I/O space; bits 2:1 = 0b10: 64-bit.
    if readback & 1 != 0 || (readback >> 1) & 3 == 2 {
        return None;
    }
    let mask = readback & !0xf;
    if mask == 0 {
        return None;
    }
    Some((!mask as u64 & 0xffff_ffff) + 1)
}

/// The lowest address at or above `base` aligned to `size` (a power of two), if the BAR then
/// fits below `limit`.
#[must_use]
pub const fn place_bar(base: u64, limit: u64, size: u64) -> Option<u64> {
    if !size.is_power_of_two() {
        return None;
    }
    let Some(at) = base.checked_add(size - 1) else {
        return None;
    };
    let at = at & !(size - 1);
    match at.checked_add(size) {
        Some(end) if end <= limit => Some(at),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_space_arithmetic() {
        assert_eq!(ecam_offset(0, 1, 0), 0x8000);
        assert_eq!(ecam_offset(1, 2, 3), 0x11_3000);
        // edu's BAR0: 1 MiB, 32-bit, non-prefetchable.
        assert_eq!(bar32_size(0xfff0_0000), Some(1 << 20));
        assert_eq!(bar32_size(0xfff0_0004), None, "64-bit");
        assert_eq!(bar32_size(0xffff_ff01), None, "I/O");
        assert_eq!(bar32_size(0), None);
        assert_eq!(
            place_bar(0x1000_0000, 0x3eff_0000, 1 << 20),
            Some(0x1000_0000)
        );
        assert_eq!(
            place_bar(0x1000_0001, 0x3eff_0000, 1 << 20),
            Some(0x1010_0000)
        );
        assert_eq!(place_bar(0x3ef0_0000, 0x3eff_0000, 1 << 20), None);
        assert_eq!(place_bar(0, 1 << 20, 3), None);
        assert_eq!(MAX_TRANSFER, 4095);
    }
}
