//! The guest-side views: dom0 as an x86 PV kernel ([`PvGuest`]) or an arm64 1:1 kernel
//! ([`ArmGuest`]), and [`SimMemory`], the CPU's view of guest-physical memory.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use swiotlb_core::{BusAddr, PhysAddr, PhysMemory};

use crate::machine::{PAGE, PT_MACHINE_BASE, PTE_MFN_MASK, PTE_PRESENT};
use crate::{Inner, pattern_byte};

/// Runs a CPU access under the lock and panics (after releasing it) if the address is
/// unreachable: the simulator is a test double, and such an access is a bug in the code
/// under test.
fn cpu<T>(
    inner: &Inner,
    what: &str,
    f: impl FnOnce(&mut crate::machine::State, u64) -> Result<T, String>,
) -> T {
    let r = {
        let mut st = inner.lock();
        f(&mut st, inner.cfg.linear_base)
    };
    match r {
        Ok(v) => v,
        Err(e) => panic!("xen-sim: CPU {what}: {e}"),
    }
}

/// The CPU's view of dom0's guest-physical memory: on x86 PV through the linear-map page
/// table (a zapped page is unreachable, a remapped page reaches the new frame), on arm64
/// through stage 2. It applies the cache model.
///
/// # Panics
///
/// Every access to an unreachable address panics loudly, naming the address.
#[derive(Clone)]
pub struct SimMemory {
    pub(crate) inner: Arc<Inner>,
}

impl SimMemory {
    /// Reads `buf.len()` bytes at `phys`.
    pub fn read(&self, phys: PhysAddr, buf: &mut [u8]) {
        cpu(&self.inner, "read", |st, lb| {
            st.cpu_read(lb, phys.as_u64(), buf)
        });
    }

    /// Writes `data` at `phys`.
    pub fn write(&self, phys: PhysAddr, data: &[u8]) {
        cpu(&self.inner, "write", |st, lb| {
            st.cpu_write(lb, phys.as_u64(), data)
        });
    }
}

// SAFETY: `copy` and `fill` touch exactly the bytes asked for, in the simulator's own frame
// storage, under the machine's lock (so concurrent calls are serialised).
unsafe impl PhysMemory for SimMemory {
    unsafe fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
        let hook = self
            .inner
            .copy_hook
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let part = |from: usize, to: usize| {
            let mut buf = vec![0u8; to - from];
            // CAST: usize fits u64.
            let (s, d) = (src.as_u64() + from as u64, dst.as_u64() + from as u64);
            cpu(&self.inner, "copy", |st, lb| {
                st.cpu_read(lb, s, &mut buf)?;
                st.cpu_write(lb, d, &buf)
            });
        };
        let Some(hook) = hook else {
            part(0, len);
            return;
        };
        // With a hook: the copy in two halves, the hook before, between and after them,
        // without the machine's lock (a device may write meanwhile).
        hook(crate::CopyPoint::Before { dst, src, len });
        part(0, len / 2);
        hook(crate::CopyPoint::Middle { dst, src, len });
        part(len / 2, len);
        hook(crate::CopyPoint::After { dst, src, len });
    }

    unsafe fn fill(&self, dst: PhysAddr, byte: u8, len: usize) {
        cpu(&self.inner, "fill", |st, lb| {
            st.cpu_fill(lb, dst.as_u64(), byte, len)
        });
    }
}

// SAFETY: each copy goes through the caller's pointer (a slice made from it for the call
// only, which the contract allows: nobody else accesses the buffer meanwhile) and the
// simulator's frame storage of exactly `len` bytes, under the machine's lock.
unsafe impl swiotlb_core::engine::BufferMemory for SimMemory {
    unsafe fn copy_from_buffer(&self, dst: PhysAddr, src: std::ptr::NonNull<u8>, len: usize) {
        // SAFETY: the contract makes `src` valid for reads of `len` bytes, unwritten during
        // the call.
        let data = unsafe { std::slice::from_raw_parts(src.as_ptr(), len) };
        self.write(dst, data);
    }

    unsafe fn copy_to_buffer(&self, dst: std::ptr::NonNull<u8>, src: PhysAddr, len: usize) {
        // SAFETY: the contract makes `dst` valid for writes of `len` bytes, accessed by
        // nobody else during the call.
        let buf = unsafe { std::slice::from_raw_parts_mut(dst.as_ptr(), len) };
        self.read(src, buf);
    }
}

impl fmt::Debug for SimMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimMemory")
            .field("arch", &self.inner.cfg.arch)
            .finish_non_exhaustive()
    }
}

/// Methods shared by both guest views.
macro_rules! guest_common {
    () => {
        /// The CPU's view of guest-physical memory (a [`PhysMemory`]).
        #[must_use]
        pub fn memory(&self) -> SimMemory {
            SimMemory {
                inner: Arc::clone(&self.inner),
            }
        }

        /// Writes `data` at `phys` as the CPU.
        ///
        /// # Panics
        ///
        /// If the range is not reachable (see [`SimMemory`]).
        pub fn write(&self, phys: PhysAddr, data: &[u8]) {
            self.memory().write(phys, data);
        }

        /// Reads into `buf` from `phys` as the CPU.
        ///
        /// # Panics
        ///
        /// If the range is not reachable (see [`SimMemory`]).
        pub fn read(&self, phys: PhysAddr, buf: &mut [u8]) {
            self.memory().read(phys, buf);
        }

        /// Fills `len` bytes at `phys` with the deterministic pattern of `seed`
        /// ([`pattern_byte`]), as the CPU.
        ///
        /// # Panics
        ///
        /// If the range is not reachable (see [`SimMemory`]).
        pub fn fill_pattern(&self, phys: PhysAddr, len: usize, seed: u64) {
            let data: Vec<u8> = (0..len).map(|i| pattern_byte(seed, i)).collect();
            self.write(phys, &data);
        }

        /// Whether `len` bytes at `phys` hold the pattern of `seed` (read as the CPU).
        ///
        /// # Panics
        ///
        /// If the range is not reachable (see [`SimMemory`]).
        #[must_use]
        pub fn check_pattern(&self, phys: PhysAddr, len: usize, seed: u64) -> bool {
            let mut buf = vec![0u8; len];
            self.read(phys, &mut buf);
            buf.iter()
                .enumerate()
                .all(|(i, &b)| b == pattern_byte(seed, i))
        }
    };
}

/// dom0 as an x86 PV kernel sees itself: the P2M list it owns, the read-only M2P, and a
/// linear map whose page table `update_va_mapping` and `mmu_update` change.
#[derive(Clone)]
pub struct PvGuest {
    pub(crate) inner: Arc<Inner>,
}

impl PvGuest {
    guest_common!();

    /// The guest-owned P2M list (what `start_info.mfn_list` gives a real kernel), indexed by
    /// pfn: an MFN, `!0` (INVALID), or an MFN with the FOREIGN bit (1 << 63). The guest
    /// writes it; the simulator reads it in `check_invariants`.
    #[must_use]
    pub fn p2m(&self) -> &[AtomicU64] {
        &self.inner.p2m
    }

    /// The M2P, indexed by MFN: the owning guest's pfn, `!0` for frames no guest owns.
    /// Read-only to the guest by convention; the simulator writes it as Xen does.
    #[must_use]
    pub fn m2p(&self) -> &[AtomicU64] {
        &self.inner.m2p
    }

    /// dom0's page count (the P2M's length).
    #[must_use]
    pub fn nr_pages(&self) -> u64 {
        self.inner.cfg.dom0_pages
    }

    /// The virtual address of pseudo-physical address 0 in the linear map.
    #[must_use]
    pub fn linear_base(&self) -> u64 {
        self.inner.cfg.linear_base
    }

    /// The linear-map virtual address of `phys` (`linear_base + phys`).
    #[must_use]
    pub fn va_of(&self, phys: PhysAddr) -> u64 {
        self.inner.cfg.linear_base.wrapping_add(phys.as_u64())
    }

    /// The current PTE of linear-map page `pfn` (0 = not present; `None` past the map).
    #[must_use]
    pub fn pte(&self, pfn: u64) -> Option<u64> {
        let st = self.inner.lock();
        usize::try_from(pfn)
            .ok()
            .and_then(|p| st.pte.get(p).copied())
    }

    /// The machine address of the PTE of linear-map page `pfn`, for `mmu_update`'s
    /// `MMU_NORMAL_PT_UPDATE` or `GNTMAP_contains_pte`.
    #[must_use]
    pub fn pte_machine_addr(&self, pfn: u64) -> u64 {
        PT_MACHINE_BASE + 8 * pfn
    }

    /// The machine address the CPU reaches at `phys` through the page table (not the P2M),
    /// or `None` if the page is not mapped.
    #[must_use]
    pub fn machine_addr(&self, phys: PhysAddr) -> Option<BusAddr> {
        let pte = self.pte(phys.as_u64() / PAGE)?;
        (pte & PTE_PRESENT != 0)
            .then(|| BusAddr::new((pte & PTE_MFN_MASK) | (phys.as_u64() % PAGE)))
    }

    /// Hands out `n` fresh pseudo-physical pages for test buffers and pools.
    ///
    /// # Panics
    ///
    /// When dom0 has no `n` pages left (a test set-up mistake).
    #[must_use]
    pub fn alloc_pages(&self, n: u64) -> PhysAddr {
        self.alloc_aligned(n, 1)
    }

    /// As [`alloc_pages`](Self::alloc_pages), with the first pfn a multiple of
    /// `align_pages` (a power of two).
    ///
    /// # Panics
    ///
    /// When dom0 has no such range left, or `align_pages` is not a power of two.
    #[must_use]
    pub fn alloc_aligned(&self, n: u64, align_pages: u64) -> PhysAddr {
        assert!(
            align_pages.is_power_of_two(),
            "xen-sim: alignment {align_pages} not a power of two"
        );
        let mut st = self.inner.lock();
        let first = st
            .pv_next_pfn
            .div_ceil(align_pages)
            .checked_mul(align_pages);
        let end = first
            .and_then(|f| f.checked_add(n))
            .filter(|&e| e <= self.inner.cfg.dom0_pages);
        let Some(end) = end else {
            drop(st);
            panic!("xen-sim: PvGuest::alloc_aligned({n}, {align_pages}): dom0 has no pages left");
        };
        st.pv_next_pfn = end;
        PhysAddr::new((end - n) * PAGE)
    }
}

impl fmt::Debug for PvGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PvGuest")
            .field("nr_pages", &self.nr_pages())
            .finish_non_exhaustive()
    }
}

/// dom0 as an arm64 1:1 kernel sees itself: RAM at IPA = machine address, and a foreign
/// window where grant maps appear through stage 2.
#[derive(Clone)]
pub struct ArmGuest {
    pub(crate) inner: Arc<Inner>,
}

impl ArmGuest {
    guest_common!();

    /// dom0's RAM banks as `(IPA, bytes)`.
    #[must_use]
    pub fn ram_banks(&self) -> Vec<(PhysAddr, u64)> {
        let st = self.inner.lock();
        st.arm_banks
            .iter()
            .map(|&(b, n)| (PhysAddr::new(b * PAGE), n * PAGE))
            .collect()
    }

    /// Whether `phys` is dom0's own RAM.
    #[must_use]
    pub fn is_ram(&self, phys: PhysAddr) -> bool {
        let pfn = phys.as_u64() / PAGE;
        let st = self.inner.lock();
        st.arm_banks.iter().any(|&(b, n)| pfn >= b && pfn - b < n)
    }

    /// The IPA of the foreign-mapping window.
    #[must_use]
    pub fn foreign_window_base(&self) -> PhysAddr {
        PhysAddr::new(self.inner.cfg.foreign_window_base)
    }

    /// Pages in the foreign-mapping window.
    #[must_use]
    pub fn foreign_window_pages(&self) -> u64 {
        self.inner.cfg.foreign_window_pages
    }

    /// The machine address stage 2 maps `ipa` to, if any.
    #[must_use]
    pub fn stage2_lookup(&self, ipa: PhysAddr) -> Option<BusAddr> {
        let mut st = self.inner.lock();
        let idx = st.cpu_translate(0, ipa.as_u64()).ok()?;
        Some(BusAddr::new(
            st.layout.mfn(idx) * PAGE + ipa.as_u64() % PAGE,
        ))
    }

    /// Hands out `n` fresh contiguous pages of dom0's RAM (bank 0 first).
    ///
    /// # Panics
    ///
    /// When no bank has `n` pages left (a test set-up mistake).
    #[must_use]
    pub fn alloc_pages(&self, n: u64) -> PhysAddr {
        self.alloc_aligned(n, 1)
    }

    /// As [`alloc_pages`](Self::alloc_pages), with the first frame a multiple of
    /// `align_pages` (a power of two).
    ///
    /// # Panics
    ///
    /// When no bank has such a range left, or `align_pages` is not a power of two.
    #[must_use]
    pub fn alloc_aligned(&self, n: u64, align_pages: u64) -> PhysAddr {
        assert!(
            align_pages.is_power_of_two(),
            "xen-sim: alignment {align_pages} not a power of two"
        );
        let mut st = self.inner.lock();
        while st.arm_next.0 < st.arm_banks.len() {
            let (bank, used) = st.arm_next;
            let (base, frames) = st.arm_banks[bank];
            // Keep the first 16 pages of bank 0 for the kernel image, as a real dom0 would.
            let from = if bank == 0 { used.max(16) } else { used };
            let first = (base + from).div_ceil(align_pages).checked_mul(align_pages);
            let end = first.and_then(|f| f.checked_add(n));
            if let Some(end) = end.filter(|&e| e <= base + frames) {
                st.arm_next = (bank, end - base);
                return PhysAddr::new((end - n) * PAGE);
            }
            st.arm_next = (bank + 1, 0);
        }
        drop(st);
        panic!("xen-sim: ArmGuest::alloc_aligned({n}, {align_pages}): dom0 has no pages left");
    }

    /// Cleans the data cache for `len` bytes at `phys` (the kernel's `dcache_clean_poc`).
    ///
    /// # Panics
    ///
    /// If the range is not reachable.
    pub fn cache_clean(&self, phys: PhysAddr, len: usize) {
        self.maint(phys, len, true, false);
    }

    /// Invalidates the data cache for `len` bytes at `phys` (`dcache_inval_poc`).
    ///
    /// # Panics
    ///
    /// If the range is not reachable.
    pub fn cache_invalidate(&self, phys: PhysAddr, len: usize) {
        self.maint(phys, len, false, true);
    }

    /// Cleans and invalidates (`dcache_clean_inval_poc`).
    ///
    /// # Panics
    ///
    /// If the range is not reachable.
    pub fn cache_clean_invalidate(&self, phys: PhysAddr, len: usize) {
        self.maint(phys, len, true, true);
    }

    fn maint(&self, phys: PhysAddr, len: usize, clean: bool, inval: bool) {
        cpu(&self.inner, "cache maintenance", |st, lb| {
            st.cpu_walk(lb, phys.as_u64(), len, |st, idx, off, chunk, _, _| {
                st.cache_maint(idx, off, chunk, clean, inval);
            })
        });
    }
}

impl fmt::Debug for ArmGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArmGuest").finish_non_exhaustive()
    }
}
