//! Mapping frames at new virtual addresses: dom0 RAM outside Xen's initial mapping, and the
//! `edu` device's MMIO registers.
//!
//! Xen's initial page tables map the kernel image, `start_info`, the P2M and the page tables
//! themselves (all at `VIRT_BASE + pfn * 4096`), rounded up to 4 MiB; every level above the
//! L1 tables exists for the whole 1 GiB slot of `VIRT_BASE`, but no L1 table exists beyond
//! the initial mapping. A PV guest cannot write its page tables: to map a page there this
//! module takes a zeroed page of its `.bss`, maps it read-only (Xen refuses a page table
//! with a writable mapping), hooks it into the L2 table with `mmu_update`
//! (`MMU_NORMAL_PT_UPDATE`, Xen validates it as an L1 table), and then maps each page with
//! `update_va_mapping`.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use swiotlb_xen::x86_pv::{PTE_ACCESSED, PTE_DIRTY, PTE_MFN_MASK, PTE_NX, PTE_PRESENT, PTE_RW};
use xen_abi::{DOMID_SELF, MmuUpdate, UVMF_INVLPG};

use crate::checks::{Env, phys_of};
use crate::console::Line;
use crate::hyp::Counted;
use crate::{VIRT_BASE, fmt_line};

/// `start_info.pt_base`: the virtual address of the initial L4 table.
const START_INFO_PT_BASE: usize = 88;
/// PTE bit: user (Xen sets it itself on a 64-bit PV guest's entries; set here as Linux does).
const PTE_USER: u64 = 1 << 2;
/// PTE bit: write-through.
pub const PTE_PWT: u64 = 1 << 3;
/// PTE bit: cache disable.
pub const PTE_PCD: u64 = 1 << 4;
/// The flags of a page of RAM mapped here: present, writable, accessed, dirty, no-execute
/// (the library's default for remapped pages).
pub const RAM_FLAGS: u64 = PTE_PRESENT | PTE_RW | PTE_ACCESSED | PTE_DIRTY | PTE_NX;
/// The flags of an MMIO page: as RAM, uncached (PCD and PWT: PAT entry 3, UC).
pub const MMIO_FLAGS: u64 = RAM_FLAGS | PTE_PCD | PTE_PWT;
/// Entries per table.
const ENTRIES: u64 = 512;

/// Pages that can become L1 tables (each maps 2 MiB).
const TABLES: usize = 4;

/// Page-aligned pages for new L1 tables.
#[repr(C, align(4096))]
struct Tables([[u8; 4096]; TABLES]);

/// The pages for L1 tables, reached only through raw pointers until they become tables.
static mut L1_TABLES: Tables = Tables([[0; 4096]; TABLES]);
/// How many of [`L1_TABLES`] are in use.
static USED_TABLES: AtomicUsize = AtomicUsize::new(0);

/// The virtual address of the initial L4 table, for [`linear_pte_maddr`] (0 until
/// [`Mmu::new`] ran).
static L4_VA: AtomicU64 = AtomicU64::new(0);
/// Xen's M2P (address and entries), for [`linear_pte_maddr`]'s walk.
static M2P: (AtomicU64, AtomicU64) = (AtomicU64::new(0), AtomicU64::new(0));

/// The machine address of the L1 entry that maps `va`, by a walk of the kernel's page
/// tables (L4 to L1, each table found through the M2P at `VIRT_BASE + pfn * 4096`, where
/// Xen's initial mapping puts them); `None` before [`Mmu::new`], for an address no L1 table
/// covers, or a table outside the initial mapping. The platform's `mmu_update` lists name
/// PTEs by it ([`crate::hyp::Counted`]'s `pte_machine_addr`).
pub fn linear_pte_maddr(va: u64) -> Option<u64> {
    let l4 = L4_VA.load(Ordering::Acquire);
    let (m2p, m2p_len) = (M2P.0.load(Ordering::Acquire), M2P.1.load(Ordering::Acquire));
    if l4 == 0 || m2p == 0 {
        return None;
    }
    let table_va = |entry: u64| {
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        let mfn = (entry & PTE_MFN_MASK) >> 12;
        if mfn >= m2p_len {
            return None;
        }
        let p: *const u64 = core::ptr::with_exposed_provenance((m2p + mfn * 8) as usize);
        // SAFETY: Xen's M2P is mapped read-only at `m2p` with `m2p_len` entries.
        let pfn = unsafe { p.read_volatile() };
        // Only the initial mapping is reached this way (1 GiB from VIRT_BASE).
        (pfn < (1 << 18)).then_some(VIRT_BASE + (pfn << 12))
    };
    let l3 = table_va(Mmu::entry(l4, (va >> 39) % ENTRIES))?;
    let l2 = table_va(Mmu::entry(l3, (va >> 30) % ENTRIES))?;
    let l2e = Mmu::entry(l2, (va >> 21) % ENTRIES);
    // A 2 MiB page (PSE) has no L1 entry.
    if l2e & PTE_PRESENT == 0 || l2e & (1 << 7) != 0 {
        return None;
    }
    Some((l2e & PTE_MFN_MASK) + ((va >> 12) % ENTRIES) * 8)
}

/// The kernel's page tables, found from `start_info.pt_base`.
pub struct Mmu<'e> {
    env: &'e Env,
    /// Virtual address of the initial L4 table.
    l4: u64,
}

impl<'e> Mmu<'e> {
    /// Finds the initial L4 table.
    ///
    /// # Safety
    ///
    /// `start_info` is Xen's page, mapped.
    pub unsafe fn new(env: &'e Env, start_info: *const u8) -> Self {
        // SAFETY: the caller's promise; pt_base is an aligned u64 inside the page.
        let l4 = unsafe { start_info.add(START_INFO_PT_BASE).cast::<u64>().read() };
        let m2p = env.m2p.as_ptr().expose_provenance() as u64;
        M2P.1.store(env.m2p.len() as u64, Ordering::Release);
        M2P.0.store(m2p, Ordering::Release);
        L4_VA.store(l4, Ordering::Release);
        Self { env, l4 }
    }

    /// The virtual address of the page-table page at machine address `maddr`: page tables
    /// are dom0 pages of the initial mapping, so the M2P gives their pfn.
    fn table_va(&self, maddr: u64) -> Result<u64, Line> {
        let mfn = (maddr & PTE_MFN_MASK) >> 12;
        let pfn = self.env.m2p_raw(mfn);
        if self.env.p2m_raw(pfn) != mfn {
            return Err(fmt_line!(
                "page table frame {mfn:#x} is not ours (M2P {pfn:#x})"
            ));
        }
        Ok(VIRT_BASE + (pfn << 12))
    }

    /// Reads entry `index` of the table at virtual address `table`.
    fn entry(table: u64, index: u64) -> u64 {
        let p: *const u64 = core::ptr::with_exposed_provenance((table + index * 8) as usize);
        // SAFETY: `table` is a page-table page of the initial mapping (mapped read-only);
        // Xen may change entries, hence the volatile read.
        unsafe { p.read_volatile() }
    }

    /// The machine address of the L2 table covering `va` and the L2 index; every level
    /// above must be present (it is, for the 1 GiB slot of `VIRT_BASE`).
    fn l2_of(&self, va: u64) -> Result<(u64, u64), Line> {
        let l4e = Self::entry(self.l4, (va >> 39) % ENTRIES);
        if l4e & PTE_PRESENT == 0 {
            return Err(fmt_line!("no L3 table for {va:#x}"));
        }
        let l3 = self.table_va(l4e)?;
        let l3e = Self::entry(l3, (va >> 30) % ENTRIES);
        if l3e & PTE_PRESENT == 0 {
            return Err(fmt_line!("no L2 table for {va:#x}"));
        }
        Ok((l3e & PTE_MFN_MASK, (va >> 21) % ENTRIES))
    }

    /// Whether an L1 table covers the 2 MiB of `va` (Xen's initial mapping, or one made
    /// here).
    pub fn has_l1(&self, va: u64) -> Result<bool, Line> {
        let (l2_maddr, index) = self.l2_of(va)?;
        let l2 = self.table_va(l2_maddr)?;
        Ok(Self::entry(l2, index) & PTE_PRESENT != 0)
    }

    /// Makes sure an L1 table maps the 2 MiB of `va`, creating one if needed. Returns
    /// whether it created one.
    fn ensure_l1(&self, va: u64) -> Result<bool, Line> {
        let (l2_maddr, index) = self.l2_of(va)?;
        let l2 = self.table_va(l2_maddr)?;
        let l2e = Self::entry(l2, index);
        if l2e & PTE_PRESENT != 0 {
            return Ok(false);
        }
        let n = USED_TABLES.fetch_add(1, Ordering::Relaxed);
        if n >= TABLES {
            return Err(fmt_line!("no page left for an L1 table (for {va:#x})"));
        }
        // SAFETY: page n of the static is claimed by the counter and used only here.
        let page: *mut u8 = unsafe { (&raw mut L1_TABLES.0[n]).cast() };
        // SAFETY: the page is mapped writable and owned by this function.
        unsafe { page.write_bytes(0, 4096) };
        let pfn = phys_of(page).frame().as_u64();
        let mfn = self.env.p2m_raw(pfn);
        let page_va = page.addr() as u64;
        // Read-only first: Xen refuses to take a page with a writable mapping as a table.
        // SAFETY: the page is the kernel's own and no reference covers it; it stays mapped.
        unsafe {
            xen_abi::ops::update_va_mapping(
                &Counted,
                page_va,
                (mfn << 12) | (RAM_FLAGS & !PTE_RW),
                UVMF_INVLPG,
            )
        }
        .map_err(|e| fmt_line!("mapping L1 page {page_va:#x} read-only: {e}"))?;
        let req = MmuUpdate::normal(
            l2_maddr + index * 8,
            (mfn << 12) | PTE_PRESENT | PTE_RW | PTE_USER | PTE_ACCESSED,
        )
        .ok_or_else(|| fmt_line!("misaligned L2 entry"))?;
        // SAFETY: the entry covers 2 MiB nothing maps yet; the new table is empty.
        unsafe { xen_abi::ops::mmu_update(&Counted, &[req], DOMID_SELF) }
            .map_err(|e| fmt_line!("hooking an L1 table for {va:#x}: {e}"))?;
        Ok(true)
    }

    /// Maps the `n` frames from `mfn` at the `n` pages from `va` with `flags`; returns how
    /// many L1 tables it created.
    ///
    /// # Safety
    ///
    /// Nothing else maps the pages at `va`; the frames are RAM of this domain or I/O memory
    /// dom0 may map.
    pub unsafe fn map(&self, va: u64, mfn: u64, n: u64, flags: u64) -> Result<u32, Line> {
        let mut created = 0;
        for i in 0..n {
            let page = va + (i << 12);
            created += u32::from(self.ensure_l1(page)?);
            // SAFETY: the caller's promise; an L1 table now covers the page.
            unsafe {
                xen_abi::ops::update_va_mapping(
                    &Counted,
                    page,
                    ((mfn + i) << 12) | flags,
                    UVMF_INVLPG,
                )
            }
            .map_err(|e| fmt_line!("mapping {page:#x} to frame {:#x}: {e}", mfn + i))?;
        }
        Ok(created)
    }
}
