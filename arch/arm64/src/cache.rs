//! Cache maintenance: the kernel's hook for its own pages, and the direction rules.
//!
//! A non-coherent device does not snoop the CPU caches, so before it reads memory the CPU's
//! dirty lines must be cleaned to the point of coherency, and before the CPU reads what the
//! device wrote its stale lines must be invalidated. dom0 does this itself for its own pages
//! (by virtual address, through [`CacheOps`]); for foreign pages it has no mapping Xen lets
//! it maintain, so it asks Xen with `GNTTABOP_cache_flush`, one 4 KiB page per request.
//!
//! The direction rules are Linux's:
//!
//! | When | Local page ([`CacheOps`], arm64 `arch_sync_dma_*`) | Foreign page (`GNTTABOP_cache_flush`, `xen_dma_sync_*`) |
//! |---|---|---|
//! | for the device, `ToDevice` | clean | `GNTTAB_CACHE_CLEAN` |
//! | for the device, `Bidirectional` | clean | `GNTTAB_CACHE_CLEAN` |
//! | for the device, `FromDevice` | clean | `GNTTAB_CACHE_INVAL` |
//! | for the CPU, `ToDevice` | nothing | nothing |
//! | for the CPU, `FromDevice` / `Bidirectional` | invalidate | `GNTTAB_CACHE_INVAL` |
//!
//! For a range the DMA engine cannot check against a mapping (the unmap or sync of a direct
//! mapping, whose length is the caller's word), the platform's preserving hooks
//! (`Platform::sync_for_cpu_preserving`, `sync_for_device_preserving`) replace every
//! invalidate in this table by a clean and invalidate ([`CacheOps::clean_invalidate`],
//! `GNTTAB_CACHE_CLEAN | GNTTAB_CACHE_INVAL`), so that no dirty line is ever discarded: a
//! length too large costs time, never another owner's data. Linux trusts the length.

use swiotlb_core::{DmaDirection, PhysAddr};
use xen_abi::{GNTTAB_CACHE_CLEAN, GNTTAB_CACHE_INVAL};

/// The kernel's cache maintenance for its own (local) memory, by physical address.
///
/// Implementations typically translate `phys` through the kernel's linear map and run
/// `dc cvac` (clean) or `dc ivac`/`dc civac` (invalidate) over every cache line of the range,
/// followed by `dsb sy`, as Linux's `dcache_clean_poc` and `dcache_inval_poc` do.
///
/// The platform calls these only for non-coherent devices, only for frames that are dom0's
/// own, and only for ranges the DMA layer is mapping or syncing.
pub trait CacheOps: Sync {
    /// Whether this implementation maintains caches. [`NoCacheOps`] says `false`, and the
    /// platform then refuses cache maintenance of local pages instead of skipping it.
    const AVAILABLE: bool = true;

    /// Writes dirty lines covering `[phys, phys + len)` back to the point of coherency.
    fn clean(&self, phys: PhysAddr, len: usize);

    /// Invalidates the lines covering `[phys, phys + len)`, so that the CPU next reads what
    /// the device wrote. Lines only partly inside the range must be cleaned before they are
    /// invalidated (as `dcache_inval_poc` does), so that bytes outside it are kept.
    fn invalidate(&self, phys: PhysAddr, len: usize);

    /// Writes dirty lines covering `[phys, phys + len)` back and invalidates them, line by
    /// line in one operation (`dc civac`, Linux's `dcache_clean_inval_poc`), so that no
    /// data the CPU wrote is lost, even by a CPU writing the range meanwhile. Used where the
    /// range's extent could not be checked (a direct mapping's unmap or sync).
    fn clean_invalidate(&self, phys: PhysAddr, len: usize);
}

/// No cache maintenance, for systems whose DMA devices are all coherent.
///
/// With it the platform returns [`swiotlb_core::PlatformError::Unsupported`] if asked to
/// maintain local pages for a non-coherent device, rather than silently doing nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoCacheOps;

impl CacheOps for NoCacheOps {
    const AVAILABLE: bool = false;

    fn clean(&self, _phys: PhysAddr, _len: usize) {}

    fn invalidate(&self, _phys: PhysAddr, _len: usize) {}

    fn clean_invalidate(&self, _phys: PhysAddr, _len: usize) {}
}

/// The maintenance a range needs at one point of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Maintenance {
    /// What to do to local pages.
    pub(crate) local: LocalOp,
    /// The `GNTTAB_CACHE_*` bits for foreign pages.
    pub(crate) foreign: u32,
}

/// A local cache operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LocalOp {
    /// [`CacheOps::clean`].
    Clean,
    /// [`CacheOps::invalidate`].
    Invalidate,
    /// [`CacheOps::clean_invalidate`].
    CleanInvalidate,
}

impl LocalOp {
    /// Runs this operation through `ops`.
    pub(crate) fn run<C: CacheOps + ?Sized>(self, ops: &C, phys: PhysAddr, len: usize) {
        match self {
            Self::Clean => ops.clean(phys, len),
            Self::Invalidate => ops.invalidate(phys, len),
            Self::CleanInvalidate => ops.clean_invalidate(phys, len),
        }
    }
}

impl Maintenance {
    /// The same maintenance without any discarding: every invalidate becomes a clean and
    /// invalidate (for a range whose extent nobody checked).
    #[must_use]
    pub(crate) const fn preserving(self) -> Self {
        let local = match self.local {
            LocalOp::Invalidate => LocalOp::CleanInvalidate,
            other => other,
        };
        let foreign = if self.foreign & GNTTAB_CACHE_INVAL != 0 {
            self.foreign | GNTTAB_CACHE_CLEAN
        } else {
            self.foreign
        };
        Self { local, foreign }
    }
}

/// What `sync_for_device` (and map) does: Linux's `arch_sync_dma_for_device` for local
/// pages, `xen_dma_sync_for_device` for foreign ones.
#[must_use]
pub(crate) const fn for_device(dir: DmaDirection) -> Maintenance {
    Maintenance {
        local: LocalOp::Clean,
        foreign: match dir {
            DmaDirection::FromDevice => GNTTAB_CACHE_INVAL,
            DmaDirection::ToDevice | DmaDirection::Bidirectional => GNTTAB_CACHE_CLEAN,
        },
    }
}

/// What `sync_for_cpu` (and unmap) does: nothing for `ToDevice`, invalidate otherwise.
#[must_use]
pub(crate) const fn for_cpu(dir: DmaDirection) -> Option<Maintenance> {
    match dir {
        DmaDirection::ToDevice => None,
        DmaDirection::FromDevice | DmaDirection::Bidirectional => Some(Maintenance {
            local: LocalOp::Invalidate,
            foreign: GNTTAB_CACHE_INVAL,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_rules_follow_linux() {
        assert_eq!(
            for_device(DmaDirection::ToDevice).foreign,
            GNTTAB_CACHE_CLEAN
        );
        assert_eq!(
            for_device(DmaDirection::Bidirectional).foreign,
            GNTTAB_CACHE_CLEAN
        );
        assert_eq!(
            for_device(DmaDirection::FromDevice).foreign,
            GNTTAB_CACHE_INVAL
        );
        for dir in [
            DmaDirection::ToDevice,
            DmaDirection::FromDevice,
            DmaDirection::Bidirectional,
        ] {
            assert_eq!(for_device(dir).local, LocalOp::Clean);
        }
        assert_eq!(for_cpu(DmaDirection::ToDevice), None);
        let m = for_cpu(DmaDirection::FromDevice).unwrap();
        assert_eq!(
            (m.local, m.foreign),
            (LocalOp::Invalidate, GNTTAB_CACHE_INVAL)
        );
        assert_eq!(for_cpu(DmaDirection::Bidirectional), Some(m));
    }

    #[test]
    fn preserving_maintenance_never_invalidates_without_cleaning() {
        let both = GNTTAB_CACHE_CLEAN | GNTTAB_CACHE_INVAL;
        let m = for_cpu(DmaDirection::FromDevice).unwrap().preserving();
        assert_eq!((m.local, m.foreign), (LocalOp::CleanInvalidate, both));
        let m = for_device(DmaDirection::FromDevice).preserving();
        assert_eq!((m.local, m.foreign), (LocalOp::Clean, both));
        let m = for_device(DmaDirection::ToDevice).preserving();
        assert_eq!((m.local, m.foreign), (LocalOp::Clean, GNTTAB_CACHE_CLEAN));
    }
}
