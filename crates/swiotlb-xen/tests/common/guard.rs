//! Guard bytes: ranges of guest-physical memory filled with a pattern and compared byte for
//! byte, by machine address (so the check does not go through the code under test), after
//! every operation, with only the ranges an operation may change excluded. Shared by the
//! bad-input catalogue and the adversarial device.

use swiotlb_core::{BusAddr, PhysAddr};
use xen_sim::{SimMemory, Xen};

use super::{PAGE, pattern, same};

/// How a test reaches a guest-physical page by machine address.
pub type Machine<'a> = &'a dyn Fn(PhysAddr) -> BusAddr;

/// Reads `len` bytes of guest-physical memory at `phys` by machine address (raw, outside the
/// cache model and the CPU's page table).
pub fn read_raw(xen: &Xen, machine: Machine<'_>, phys: PhysAddr, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    let mut at = 0;
    while at < len {
        // CAST: usize fits u64.
        let p = PhysAddr::new(phys.as_u64() + at as u64);
        let n = (len - at).min((PAGE - p.frame_offset()) as usize);
        assert!(
            xen.read_machine(machine(p), &mut out[at..at + n]),
            "{p} unreadable"
        );
        at += n;
    }
    out
}

/// A guarded range of guest-physical memory.
#[derive(Clone, Copy)]
pub struct Guarded<'a> {
    pub xen: &'a Xen,
    pub machine: Machine<'a>,
    pub start: PhysAddr,
    pub len: usize,
}

impl Guarded<'_> {
    /// Fills the range with the guard pattern of `seed`, through the CPU (on arm64 the lines
    /// stay dirty in the simulated cache until something cleans them).
    pub fn fill(&self, cpu: &SimMemory, seed: u64) {
        cpu.write(self.start, &pattern(seed, self.len));
    }

    /// The range's bytes now, by machine address.
    pub fn bytes(&self) -> Vec<u8> {
        read_raw(self.xen, self.machine, self.start, self.len)
    }

    /// Reads the range through the CPU, so that the cache model reports a line whose dirty
    /// data was discarded (`CpuReadDiscarded`), which `check` then catches.
    pub fn cpu_read(&self, cpu: &SimMemory) {
        let mut b = vec![0; self.len];
        cpu.read(self.start, &mut b);
    }

    /// Whether `p` lies in the range, as an offset.
    fn offset(&self, p: PhysAddr) -> Option<usize> {
        let off = p.as_u64().checked_sub(self.start.as_u64())?;
        // CAST: usize fits u64; the offset is below `len` when it fits.
        (off < self.len as u64).then_some(off as usize)
    }

    /// Asserts that the range is `before` except inside `allowed` (`(start, len)` ranges,
    /// clipped to the range).
    #[track_caller]
    pub fn assert_unchanged(&self, before: &[u8], allowed: &[(PhysAddr, usize)], what: &str) {
        let mut after = self.bytes();
        let mut want = before.to_vec();
        for &(p, n) in allowed {
            // CAST: usize fits u64.
            let lo = self
                .offset(p)
                .unwrap_or(if p < self.start { 0 } else { self.len });
            let end = PhysAddr::new(p.as_u64().saturating_add(n as u64));
            let hi = self
                .offset(end)
                .unwrap_or(if end <= self.start { 0 } else { self.len });
            if lo < hi {
                after[lo..hi].fill(0);
                want[lo..hi].fill(0);
            }
        }
        same(&after, &want, what);
    }
}
