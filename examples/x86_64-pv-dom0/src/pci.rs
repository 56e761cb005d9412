//! PCI configuration space through the ports 0xCF8/0xCFC (configuration mechanism #1),
//! which Xen emulates for a PV dom0 once it has I/O privilege: the `edu` probe and
//! virtio-drivers' [`PciRoot`](virtio_drivers::transport::pci::bus::PciRoot) (through
//! [`PortCam`]) both use it.

use core::arch::asm;

use swiotlb_xen_virtio::virtio_drivers::transport::pci::bus::{
    ConfigurationAccess, DeviceFunction,
};
use xen_abi::{HYPERVISOR_PHYSDEV_OP, Hypercall, PHYSDEVOP_SET_IOPL};

use crate::console::Line;
use crate::fmt_line;
use crate::hyp::Counted;

/// Sets the vCPU's I/O privilege level to 3 (`PHYSDEVOP_set_iopl`), so that Xen emulates
/// the kernel's `in` and `out` instructions instead of raising #GP (a PV kernel runs in
/// ring 3).
pub fn set_iopl() -> Result<(), Line> {
    let mut iopl: u32 = 3;
    // SAFETY: Xen reads the one u32 of `struct physdev_set_iopl` at the pointer.
    let rc = unsafe {
        Counted.hypercall(
            HYPERVISOR_PHYSDEV_OP,
            [
                u64::from(PHYSDEVOP_SET_IOPL),
                (&raw mut iopl).addr() as u64,
                0,
                0,
                0,
            ],
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(fmt_line!("PHYSDEVOP_set_iopl(3) returned {rc}"))
    }
}

/// `out dx, eax`.
fn outl(port: u16, value: u32) {
    // SAFETY: port I/O to the PCI configuration ports only (callers), which Xen emulates.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    };
}

/// `in eax, dx`.
fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as in `outl`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nostack, preserves_flags))
    };
    value
}

/// The CONFIG_ADDRESS value of register `offset` of `f`.
fn address(f: DeviceFunction, offset: u8) -> u32 {
    0x8000_0000
        | (u32::from(f.bus) << 16)
        | (u32::from(f.device) << 11)
        | (u32::from(f.function) << 8)
        | u32::from(offset & 0xfc)
}

/// Reads the 32-bit configuration register at `offset` of `f`.
pub fn read(f: DeviceFunction, offset: u8) -> u32 {
    outl(0xcf8, address(f, offset));
    inl(0xcfc)
}

/// Writes the 32-bit configuration register at `offset` of `f`.
pub fn write(f: DeviceFunction, offset: u8, value: u32) {
    outl(0xcf8, address(f, offset));
    outl(0xcfc, value);
}

/// Finds function 0 of the device `vendor:device` on bus 0; also returns how many devices
/// answered.
pub fn find(vendor: u16, device: u16) -> (Option<DeviceFunction>, u32) {
    let mut found = None;
    let mut seen = 0;
    for slot in 0..32 {
        let f = DeviceFunction {
            bus: 0,
            device: slot,
            function: 0,
        };
        let id = read(f, 0);
        if id & 0xffff == 0xffff {
            continue;
        }
        seen += 1;
        if found.is_none() && id == (u32::from(device) << 16) | u32::from(vendor) {
            found = Some(f);
        }
    }
    (found, seen)
}

/// Turns on memory decoding and bus mastering of `f` (the status half is left alone);
/// returns the command register before and after.
pub fn enable_memory_and_master(f: DeviceFunction) -> Result<(u32, u32), Line> {
    let command = read(f, 0x04) & 0xffff;
    write(f, 0x04, command | 0x6);
    let now = read(f, 0x04) & 0xffff;
    if now & 0x6 != 0x6 {
        return Err(fmt_line!(
            "{f}: command register {now:#x}: memory/bus master not on"
        ));
    }
    Ok((command, now))
}

/// Configuration mechanism #1 as virtio-drivers' [`ConfigurationAccess`].
#[derive(Debug)]
pub struct PortCam(());

impl PortCam {
    /// The ports, once [`set_iopl`] succeeded.
    pub fn new() -> Self {
        Self(())
    }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, device_function: DeviceFunction, register_offset: u8) -> u32 {
        read(device_function, register_offset)
    }

    fn write_word(&mut self, device_function: DeviceFunction, register_offset: u8, data: u32) {
        write(device_function, register_offset, data);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        Self(())
    }
}
