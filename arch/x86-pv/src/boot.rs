//! Finding the tables a PV kernel is given: the P2M from `start_info` and the M2P at its
//! fixed mapping, as Linux's `xen_start_kernel` and `xen_setup_machphys_mapping` do.

use core::sync::atomic::AtomicU64;

use xen_abi::{HYPERVISOR_MEMORY_OP, Hypercall, MACH2PHYS_VIRT_START, XENMEM_MACHPHYS_MAPPING};

/// Offset of `nr_pages` in the x86_64 `start_info` page.
pub const START_INFO_NR_PAGES: usize = 32;
/// Offset of `mfn_list` (the P2M's virtual address) in the x86_64 `start_info` page.
pub const START_INFO_MFN_LIST: usize = 104;
/// The end of the x86_64 M2P area (`MACH2PHYS_VIRT_END`).
pub const MACH2PHYS_VIRT_END: u64 = 0xffff_8040_0000_0000;
/// The M2P entries the x86_64 area can hold (`MACH2PHYS_NR_ENTRIES`), the bound Linux uses
/// when `XENMEM_machphys_mapping` is not available.
pub const MACH2PHYS_NR_ENTRIES: u64 = (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) >> 3;

/// `struct xen_machphys_mapping` (24 bytes): where Xen maps the M2P, and its last valid
/// frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenMachphysMapping {
    /// Start of the M2P mapping.
    pub v_start: u64,
    /// End of the M2P mapping.
    pub v_end: u64,
    /// The largest machine frame the M2P covers.
    pub max_mfn: u64,
}

const _: () = assert!(core::mem::size_of::<XenMachphysMapping>() == 24);

/// The M2P's place and length: what `XENMEM_machphys_mapping` answers, or
/// ([`MACH2PHYS_VIRT_START`], [`MACH2PHYS_NR_ENTRIES`]) when Xen refuses it, as Linux
/// falls back. The answer is bounded by the mapping's size.
#[must_use]
pub fn m2p_location<H: Hypercall>(hyp: &H) -> (u64, u64) {
    let mut m = XenMachphysMapping::default();
    // CAST: usize is 64 bits on the targets this crate supports.
    let arg = (&raw mut m).expose_provenance() as u64;
    // SAFETY: `m` is a live, writable `xen_machphys_mapping`, the only memory the call writes.
    let rc = unsafe {
        hyp.hypercall(
            HYPERVISOR_MEMORY_OP,
            [u64::from(XENMEM_MACHPHYS_MAPPING), arg, 0, 0, 0],
        )
    };
    if rc != 0 || m.v_end <= m.v_start {
        return (MACH2PHYS_VIRT_START, MACH2PHYS_NR_ENTRIES);
    }
    let room = (m.v_end - m.v_start) / 8;
    (m.v_start, m.max_mfn.saturating_add(1).min(room))
}

/// The P2M named by a `start_info` page: `nr_pages` entries at `mfn_list`.
///
/// # Safety
///
/// `start_info` points at the `start_info` page Xen passed to the kernel (in `%rsi` at
/// entry), and its `mfn_list` is mapped, writable and not otherwise borrowed for `'a`.
#[must_use]
pub unsafe fn p2m_from_start_info<'a>(start_info: *const u8) -> &'a [AtomicU64] {
    // SAFETY: the fields lie inside the start_info page (caller contract); `read_unaligned`
    // needs no alignment.
    let (nr_pages, mfn_list) = unsafe {
        (
            start_info
                .add(START_INFO_NR_PAGES)
                .cast::<u64>()
                .read_unaligned(),
            start_info
                .add(START_INFO_MFN_LIST)
                .cast::<u64>()
                .read_unaligned(),
        )
    };
    // CAST: usize is 64 bits on the targets this crate supports.
    let p = core::ptr::with_exposed_provenance::<AtomicU64>(mfn_list as usize);
    // SAFETY: Xen maps `nr_pages` 8-byte entries at `mfn_list`, aligned (caller contract).
    // CAST: usize is 64 bits on the targets this crate supports.
    unsafe { core::slice::from_raw_parts(p, nr_pages as usize) }
}

/// The M2P at `v_start` with `entries` entries, as [`m2p_location`] returns them.
///
/// # Safety
///
/// The range is Xen's M2P mapping in this address space. It is read-only: the platform
/// only loads from it (atomic loads of read-only memory are allowed).
#[must_use]
pub unsafe fn m2p_at<'a>(v_start: u64, entries: u64) -> &'a [AtomicU64] {
    // CAST: usize is 64 bits on the targets this crate supports.
    let p = core::ptr::with_exposed_provenance::<AtomicU64>(v_start as usize);
    // SAFETY: the caller guarantees the mapping; Xen aligns it to a page.
    // CAST: usize is 64 bits on the targets this crate supports.
    unsafe { core::slice::from_raw_parts(p, entries as usize) }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Answer(Option<XenMachphysMapping>);
    // SAFETY: writes only the `xen_machphys_mapping` the argument points at.
    unsafe impl Hypercall for Answer {
        unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
            assert_eq!(op, HYPERVISOR_MEMORY_OP);
            assert_eq!(args[0], u64::from(XENMEM_MACHPHYS_MAPPING));
            match self.0 {
                Some(m) => {
                    let p = core::ptr::with_exposed_provenance_mut::<XenMachphysMapping>(
                        args[1] as usize,
                    );
                    // SAFETY: the caller passed a live mapping struct.
                    unsafe { p.write(m) };
                    0
                }
                None => -38,
            }
        }
    }

    #[test]
    fn m2p_location_uses_xen_s_answer_or_linux_s_fallback() {
        assert_eq!(MACH2PHYS_NR_ENTRIES, 1 << 35);
        assert_eq!(
            m2p_location(&Answer(None)),
            (MACH2PHYS_VIRT_START, MACH2PHYS_NR_ENTRIES)
        );
        let m = XenMachphysMapping {
            v_start: MACH2PHYS_VIRT_START,
            v_end: MACH2PHYS_VIRT_END,
            max_mfn: 0x1_ffff,
        };
        assert_eq!(
            m2p_location(&Answer(Some(m))),
            (MACH2PHYS_VIRT_START, 0x2_0000)
        );
        // A max_mfn beyond the mapping is bounded by it.
        let small = XenMachphysMapping {
            v_end: MACH2PHYS_VIRT_START + 4096,
            max_mfn: u64::MAX,
            ..m
        };
        assert_eq!(
            m2p_location(&Answer(Some(small))),
            (MACH2PHYS_VIRT_START, 512)
        );
    }

    #[test]
    fn p2m_from_start_info_reads_nr_pages_and_mfn_list() {
        let p2m = [5u64, 6, 7].map(AtomicU64::new);
        let mut page = [0u8; 1168];
        page[START_INFO_NR_PAGES..START_INFO_NR_PAGES + 8].copy_from_slice(&3u64.to_le_bytes());
        let addr = p2m.as_ptr().expose_provenance() as u64;
        page[START_INFO_MFN_LIST..START_INFO_MFN_LIST + 8].copy_from_slice(&addr.to_le_bytes());
        // SAFETY: `page` is laid out as start_info and names `p2m`, which outlives the slice.
        let t = unsafe { p2m_from_start_info(page.as_ptr()) };
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].load(core::sync::atomic::Ordering::Relaxed), 7);
    }
}
