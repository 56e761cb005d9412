//! [`X86PvPlatform`]: the `swiotlb_core::Platform` of an x86_64 PV guest.

use arrayvec::ArrayVec;
use core::fmt;
use core::ops::RangeInclusive;
use swiotlb_core::hooks::{Stranded, StrandedFrame};
use swiotlb_core::{
    Bfn, BusAddr, Pfn, PhysAddr, PhysMemory, Platform, PlatformError, XEN_PAGE_SHIFT, XEN_PAGE_SIZE,
};
use xen_abi::{
    DOMID_SELF, GuestHandle, HYPERVISOR_MEMORY_OP, HYPERVISOR_MMU_UPDATE, HYPERVISOR_MMUEXT_OP,
    HYPERVISOR_MULTICALL, HYPERVISOR_UPDATE_VA_MAPPING, Hypercall, MMUEXT_TLB_FLUSH_ALL, MmuUpdate,
    MmuextOp, MulticallEntry, UVMF_ALL, UVMF_INVLPG, UVMF_TLB_FLUSH, XENMEM_EXCHANGE,
    XenMemoryExchange, XenMemoryReservation,
};

use crate::error::X86PvError;
use crate::p2m::{self, INVALID_M2P_ENTRY, INVALID_P2M_ENTRY, P2mEntry};
// `core`'s atomics, or loom's under `--cfg loom` (the platform's own loom models).
use swiotlb_core::lock::atomic::{AtomicU32, AtomicU64, Ordering};
use swiotlb_core::lock::{IrqHook, SeqRange, SpinLock};

/// Entries per multicall batch (Linux's `MC_BATCH`). The batch lives on the stack:
/// `32 * 64` bytes.
pub const MC_BATCH: usize = 32;

/// Requests per `mmu_update` list (one PTE each). The list lives on the stack with the
/// pages' target frames: `128 * (16 + 8)` bytes (the deepest frame of a zap or remap is
/// about 6 to 9 KiB in a release build, the multicall path's included).
pub const MMU_BATCH: usize = 128;

/// Xen's `MAX_ORDER` on x86: the largest extent order `XENMEM_exchange` can accept at all.
///
/// The order a domain may really use is Xen's `max_order()` of the calling domain, set by the
/// `memop-max-order=<domU>,<ctldom>,<hwdom>,<ptdom>` boot option (x86 defaults `9,18,12,12`):
/// the largest of the values that apply to it, so 18 (1 GiB) for a dom0, which is the control
/// and the hardware domain, and 9 (2 MiB) for an ordinary domU. An exchange above it fails
/// with `-EPERM` before anything is exchanged; the platform then remembers the limit (see
/// [`X86PvPlatform::max_order`]).
pub const XEN_MAX_ORDER: u32 = 20;

/// The smallest order Xen's `max_order()` can return: a refusal with `EPERM` at or below it
/// is not about the order (an XSM policy, a foreign domain), so it teaches nothing.
const MIN_LIMIT_ORDER: u32 = 0;

/// PTE bit: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// PTE bit: writable.
pub const PTE_RW: u64 = 1 << 1;
/// PTE bit: accessed.
pub const PTE_ACCESSED: u64 = 1 << 5;
/// PTE bit: dirty.
pub const PTE_DIRTY: u64 = 1 << 6;
/// PTE bit: no-execute.
pub const PTE_NX: u64 = 1 << 63;
/// The machine-frame bits of an x86_64 PTE.
pub const PTE_MFN_MASK: u64 = 0x000f_ffff_ffff_f000;
/// The default flags of a remapped page: present, writable, accessed, dirty and
/// no-execute, Linux's `PAGE_KERNEL` without the global bit. DMA buffers hold data, never
/// code, so NX is set; a kernel on a CPU without NX passes other flags to
/// [`X86PvPlatform::with_pte_flags`].
pub const DEFAULT_PTE_FLAGS: u64 = PTE_PRESENT | PTE_RW | PTE_ACCESSED | PTE_DIRTY | PTE_NX;

/// Placed in a multicall entry's `result` before the call: Xen overwrites it for every
/// entry it performs.
const NOT_RUN: i64 = i64::MIN;
/// `EIO`, reported when Xen returns success without doing what was asked.
const EIO: i32 = 5;

/// `ENOMEM`: Xen has no memory that satisfies the exchange's address limit.
const ENOMEM: i32 = swiotlb_core::hooks::ENOMEM;
/// `EPERM`: Xen's answer to an exchange whose order is above the domain's `memop-max-order`.
const EPERM: i32 = 1;
/// `EINVAL`, reported for a multicall entry that failed without an error code.
const EINVAL: i32 = 22;
/// `ERESTART`: Xen's internal "preempted" code. Xen turns it into a continuation and a guest
/// never sees it; a call that returns it anyway is resubmitted from its `done` count.
const ERESTART: i32 = 85;

/// The x86 PV platform: translation through the kernel's P2M and Xen's M2P, and
/// machine-contiguous regions through `XENMEM_exchange`.
///
/// The kernel provides every resource: the P2M (`start_info.mfn_list`, indexed by pfn), the
/// M2P (Xen's read-only table at `MACH2PHYS_VIRT_START`, indexed by mfn), the base of the
/// linear map (pfn `p` is mapped at `linear_base + p * 4096`), the hypercall trap and a
/// [`PhysMemory`] to zero regions. The platform writes only the P2M entries of regions it is
/// asked to change, and only while it holds its lock.
///
/// # Invariants
///
/// `p2m` is this domain's P2M, `m2p` is Xen's M2P, and `linear_base` maps every pfn of the
/// P2M at `linear_base + pfn * 4096` (established by [`new`](Self::new)'s caller).
/// `max_order <= XEN_MAX_ORDER` and `xen_order <= XEN_MAX_ORDER`; `xen_order` only goes
/// down.
pub struct X86PvPlatform<'a, H, M> {
    p2m: &'a [AtomicU64],
    m2p: &'a [AtomicU64],
    linear_base: u64,
    hyp: H,
    mem: M,
    pte_flags: u64,
    /// The largest order the kernel allows ([`with_max_order`](Self::with_max_order)).
    max_order: u32,
    /// The largest order Xen has not refused: [`XEN_MAX_ORDER`] until an exchange of a
    /// larger order fails with `EPERM`, then one less than that order.
    xen_order: AtomicU32,
    lock: SpinLock<()>,
    transition: SeqRange,
    stranded_hook: Option<fn(StrandedFrame)>,
}

impl<H, M> fmt::Debug for X86PvPlatform<'_, H, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X86PvPlatform")
            .field("p2m_len", &self.p2m.len())
            .field("m2p_len", &self.m2p.len())
            .field("linear_base", &format_args!("{:#x}", self.linear_base))
            .field("pte_flags", &format_args!("{:#x}", self.pte_flags))
            .field("max_order", &self.max_order)
            .field("xen_order", &self.xen_order.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The outcome of one page after an exchange, as the M2P tells it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resolved {
    /// Mapped to the frame the exchange produced.
    New(u64),
    /// Mapped to its frame from before the exchange.
    Old(u64),
    /// No frame of the domain is assigned to it.
    Nothing,
}

impl Resolved {
    fn mfn(self) -> Option<u64> {
        match self {
            Self::New(m) | Self::Old(m) => Some(m),
            Self::Nothing => None,
        }
    }
}

/// The result of a remap: every page left without a frame (a mapping that failed even
/// retried alone, and the pages the caller had no frame for), the errno of the first
/// mapping that failed, and whether the TLB was flushed.
#[derive(Clone, Copy, Debug, Default)]
struct RemapReport {
    first_errno: Option<i32>,
    stranded: Stranded,
}

impl<'a, H: Hypercall, M: PhysMemory> X86PvPlatform<'a, H, M> {
    /// Creates the platform over the kernel's tables.
    ///
    /// Defaults: PTE flags [`DEFAULT_PTE_FLAGS`], largest order [`XEN_MAX_ORDER`].
    ///
    /// # Safety
    ///
    /// - `p2m` is this domain's P2M (entry `pfn` holds the machine frame of `pfn` in Linux's
    ///   encoding), no other code writes the entries of a region while it is passed to
    ///   [`create_contiguous`](Self::create_contiguous) or
    ///   [`destroy_contiguous`](Self::destroy_contiguous), and Xen may read and write it
    ///   through its address (it is ordinary guest memory mapped in this address space);
    /// - `m2p` is Xen's machine-to-phys table;
    /// - pfn `p` of the P2M is mapped at `linear_base + p * 4096`, and `mem` reaches the
    ///   same memory by physical address;
    /// - `hyp` performs hypercalls as this domain.
    pub unsafe fn new(
        p2m: &'a [AtomicU64],
        m2p: &'a [AtomicU64],
        linear_base: u64,
        hyp: H,
        mem: M,
    ) -> Self {
        // INVARIANT: the tables and the base are the caller's promise; the order is the
        // constant maximum.
        Self {
            p2m,
            m2p,
            linear_base,
            hyp,
            mem,
            pte_flags: DEFAULT_PTE_FLAGS,
            max_order: XEN_MAX_ORDER,
            xen_order: AtomicU32::new(XEN_MAX_ORDER),
            lock: SpinLock::new(()),
            transition: SeqRange::new(),
            stranded_hook: None,
        }
    }

    /// Sets the interrupt hook of the lock that serialises
    /// [`create_contiguous`](Self::create_contiguous) and
    /// [`destroy_contiguous`](Self::destroy_contiguous) (Linux's `xen_reservation_lock`, taken
    /// with `spin_lock_irqsave`): with a hook that masks, they may be called from interrupt
    /// context. Translations take no lock and are interrupt-safe without it. See
    /// [`swiotlb_core::lock`].
    #[must_use]
    pub fn with_irq_hook(mut self, hook: IrqHook) -> Self {
        self.lock.set_irq_hook(hook);
        self
    }

    /// Sets a hook called once for every stranded page of a damaged region (a page left
    /// without a frame after a remap that failed even retried alone, or after a partial
    /// exchange), as it is found: the error ([`X86PvError::RemapFailed`],
    /// [`X86PvError::PartialExchange`], `PlatformError::RegionDamaged`) counts them all but
    /// lists only the first [`STRANDED_LISTED`](swiotlb_core::hooks::STRANDED_LISTED), so a
    /// kernel that wants every one (to log it, or to give a frame it still owns back later)
    /// records them here. The hook runs with the platform's lock held, in the context of
    /// the call that failed (interrupt context if that is where it came from): it must not
    /// block or call back into the platform.
    #[must_use]
    pub fn with_stranded_hook(mut self, hook: fn(StrandedFrame)) -> Self {
        self.stranded_hook = Some(hook);
        self
    }

    /// Sets the flags of the PTEs written when pages are remapped. The frame bits of
    /// `flags` are ignored and the present bit is always set. Use it for a CPU without NX
    /// (clear [`PTE_NX`]), or to add the global bit.
    #[must_use]
    pub fn with_pte_flags(mut self, flags: u64) -> Self {
        self.pte_flags = (flags & !PTE_MFN_MASK) | PTE_PRESENT;
        self
    }

    /// Sets the largest order accepted, at most [`XEN_MAX_ORDER`] (larger values are
    /// clamped). There is no need to know Xen's limit for the domain (its `memop-max-order`,
    /// see [`XEN_MAX_ORDER`]): the platform learns it from Xen's answers
    /// ([`max_order`](Self::max_order)).
    #[must_use]
    pub fn with_max_order(mut self, order: u32) -> Self {
        // INVARIANT: clamped to the constant maximum.
        self.max_order = order.min(XEN_MAX_ORDER);
        self
    }

    /// The largest order [`create_contiguous`](Self::create_contiguous) accepts: the one set
    /// with [`with_max_order`](Self::with_max_order), lowered by what Xen refused.
    ///
    /// Xen refuses an exchange above the domain's `memop-max-order` with `EPERM` and
    /// exchanges nothing; no hypercall tells the limit. So when an exchange of order `N`
    /// fails that way, the platform remembers that Xen allows at most `N - 1` (atomically,
    /// for every CPU) and the create fails with [`X86PvError::OrderRefused`]; from then on
    /// an order above it fails with [`X86PvError::OrderTooLarge`] before any hypercall. The
    /// limit only goes down, one refusal at a time, so it is the largest order Xen has not
    /// refused. [`destroy_contiguous`](Self::destroy_contiguous) is bound only by
    /// `with_max_order`: a region Xen made contiguous can always be given back.
    #[must_use]
    pub fn max_order(&self) -> u32 {
        self.max_order.min(self.xen_order.load(Ordering::Relaxed))
    }

    /// The PTE flags of remapped pages.
    #[must_use]
    pub fn pte_flags(&self) -> u64 {
        self.pte_flags
    }

    /// The hypercall implementation.
    #[must_use]
    pub fn hypercall(&self) -> &H {
        &self.hyp
    }

    /// `pfn_to_bfn`: the machine frame of `pfn` (Linux's `pfn_to_mfn`: own, foreign and
    /// identity frames translate, an INVALID entry does not; a pfn beyond the P2M is an
    /// identity frame). `None` also for a page of a region in transition.
    #[must_use]
    pub fn pfn_to_mfn(&self, pfn: Pfn) -> Option<Bfn> {
        let p = pfn.as_u64();
        let (_, mfn) = self
            .transition
            .read(|| p2m::pfn_to_mfn(self.p2m, p).map(|m| (p, m)))?;
        Bfn::try_new(mfn)
    }

    /// `bfn_to_local_pfn`: the domain's own pfn of machine frame `bfn`, through the M2P and
    /// the round-trip check. `None` for foreign, identity, unowned frames and the frames of
    /// a region in transition.
    #[must_use]
    pub fn mfn_to_local_pfn(&self, bfn: Bfn) -> Option<Pfn> {
        let m = bfn.as_u64();
        let (pfn, _) = self
            .transition
            .read(|| p2m::mfn_to_local_pfn(self.p2m, self.m2p, m).map(|p| (p, m)))?;
        Pfn::try_new(pfn)
    }

    /// Whether the `len` bytes at `phys` are machine-contiguous: every 4 KiB frame of the
    /// range translates, and each to the frame after the previous one (the negation of
    /// Linux's `range_straddles_page_boundary`). An empty range is contiguous; a range
    /// that wraps the address space is not.
    #[must_use]
    pub fn is_bus_contiguous(&self, phys: PhysAddr, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let Some(last) = phys.checked_last(len) else {
            return false;
        };
        let (first, last) = (phys.frame(), last.frame());
        let Some(b0) = self.pfn_to_mfn(first) else {
            return false;
        };
        let frames = last.as_u64() - first.as_u64();
        (1..=frames).all(|i| {
            let want = b0.as_u64().checked_add(i);
            first
                .checked_add(i)
                .and_then(|p| self.pfn_to_mfn(p))
                .is_some_and(|b| Some(b.as_u64()) == want)
        })
    }

    /// Makes the `2^order` pages at `phys` machine-contiguous below `2^address_bits` and
    /// returns the bus address of `phys`; the contents are zeroed. See the crate docs for
    /// the protocol, and [`X86PvError`] for the state each error leaves.
    ///
    /// # Safety
    ///
    /// As [`Platform::create_contiguous_region`]: the caller owns the region exclusively
    /// (no CPU reference, no device access) for the duration of the call.
    pub unsafe fn create_contiguous(
        &self,
        phys: PhysAddr,
        order: u32,
        address_bits: u32,
    ) -> Result<BusAddr, X86PvError> {
        // SAFETY: the caller's contract is `create_contiguous_rising`'s.
        let r = unsafe { self.create_contiguous_rising(phys, order, address_bits, address_bits) };
        r.map(|(bus, _)| bus)
    }

    /// Makes the `2^order` pages at `phys` machine-contiguous below the lowest limit
    /// `2^bits`, for `bits` rising from `min_bits` to `max_bits`, that Xen can satisfy, and
    /// returns the bus address of `phys` with the `bits` used; the contents are zeroed.
    ///
    /// The pages are unmapped once, the exchange is asked again with the next limit for as
    /// long as Xen answers `ENOMEM` without exchanging anything, and the pages are remapped
    /// once: a refused limit costs one hypercall, where Linux's fix-up (a whole
    /// `xen_create_contiguous_region` per limit) pays the unmapping and remapping again.
    ///
    /// # Safety
    ///
    /// As [`create_contiguous`](Self::create_contiguous).
    pub unsafe fn create_contiguous_rising(
        &self,
        phys: PhysAddr,
        order: u32,
        min_bits: u32,
        max_bits: u32,
    ) -> Result<(BusAddr, u32), X86PvError> {
        let (pfn0, n) = self.region(phys, order, self.max_order())?;
        let min = order + XEN_PAGE_SHIFT;
        for bits in [min_bits, max_bits] {
            if !(min..=64).contains(&bits) || min_bits > max_bits {
                return Err(X86PvError::AddressBits { bits, min, max: 64 });
            }
        }
        self.check_local(pfn0, n)?;
        // SAFETY: the caller owns the region exclusively; `region` checked it is inside the
        // P2M, which the kernel maps and `mem` reaches.
        unsafe { self.zero(phys, n) };
        let _guard = self.lock.lock();
        self.transition.open(pfn0, n);
        let r = self.create_locked(pfn0, n, order, min_bits..=max_bits);
        self.transition.close();
        r
    }

    /// Gives back a region made contiguous by [`create_contiguous`](Self::create_contiguous):
    /// exchanges its extent for `2^order` frames anywhere. The contents are zeroed.
    ///
    /// # Safety
    ///
    /// As [`create_contiguous`](Self::create_contiguous).
    pub unsafe fn destroy_contiguous(&self, phys: PhysAddr, order: u32) -> Result<(), X86PvError> {
        let (pfn0, n) = self.region(phys, order, self.max_order)?;
        self.check_local(pfn0, n)?;
        let e0 = self.p2m_load(pfn0);
        for i in 1..n {
            let found = self.p2m_load(pfn0 + i);
            let expected = e0.wrapping_add(i);
            if found != expected {
                return Err(X86PvError::NotContiguous {
                    pfn: pfn_of(pfn0 + i),
                    expected,
                    found,
                });
            }
        }
        // SAFETY: as in `create_contiguous`.
        unsafe { self.zero(phys, n) };
        let _guard = self.lock.lock();
        self.transition.open(pfn0, n);
        let r = self.destroy_locked(pfn0, n, order, e0);
        self.transition.close();
        r
    }

    fn create_locked(
        &self,
        pfn0: u64,
        n: u64,
        order: u32,
        limits: RangeInclusive<u32>,
    ) -> Result<(BusAddr, u32), X86PvError> {
        self.zap_or_restore(pfn0, n)?;
        // The input list is the region's own P2M entries: they hold exactly the frames
        // being given up, in order, and stay untouched until an exchange succeeds. The
        // output list is the GPFN of the extent's first page, which Xen overwrites with
        // the extent's first frame.
        let mut out: u64;
        let mut bits = *limits.start();
        let (rc, x) = loop {
            out = pfn0;
            let mut x = XenMemoryExchange {
                in_: XenMemoryReservation {
                    extent_start: GuestHandle::new(self.p2m_ptr(pfn0)),
                    nr_extents: n,
                    extent_order: 0,
                    mem_flags: 0,
                    domid: DOMID_SELF,
                },
                out: XenMemoryReservation {
                    extent_start: GuestHandle::new(&raw mut out),
                    nr_extents: 1,
                    extent_order: order,
                    // CAST: `bits <= 64` was checked; it fits the 8-bit field.
                    mem_flags: xen_abi::mem_flags(bits as u8, xen_abi::XenMemFlags::empty()),
                    domid: DOMID_SELF,
                },
                nr_exchanged: 0,
            };
            let rc = self.exchange(&mut x);
            // Nothing below this limit and nothing exchanged: the pages are still the
            // domain's and still unmapped, so the next limit costs one more exchange only.
            // Xen is not taken at its word: every frame must still be the page's (an
            // exchange that failed after taking frames leaves unresolved pages, which a
            // retry must not hide).
            if errno_of(rc) == ENOMEM
                && x.nr_exchanged == 0
                && bits < *limits.end()
                && (0..n).all(|i| self.m2p_load(self.p2m_load(pfn0 + i)) == pfn0 + i)
            {
                bits += 1;
                continue;
            }
            break (rc, x);
        };
        // Each page goes to the frame the M2P assigns it: the new extent's if Xen exchanged
        // it, its old frame otherwise.
        let resolve = |i: u64| {
            let pfn = pfn0 + i;
            if let Some(m) = out.checked_add(i)
                && x.nr_exchanged != 0
                && self.m2p_load(m) == pfn
            {
                return Resolved::New(m);
            }
            let old = self.p2m_load(pfn);
            if self.m2p_load(old) == pfn {
                Resolved::Old(old)
            } else {
                Resolved::Nothing
            }
        };
        let mut counts = [0u64; 3];
        let report = self.remap(pfn0, n, |i| {
            let r = resolve(i);
            counts[match r {
                Resolved::New(_) => 0,
                Resolved::Old(_) => 1,
                Resolved::Nothing => 2,
            }] += 1;
            r.mfn()
        });
        let errno = errno_of(rc);
        if counts[0] == n {
            remap_result(&report)?;
            let below = out
                .checked_add(n)
                .and_then(|end| end.checked_mul(XEN_PAGE_SIZE))
                .is_some_and(|end| bits == 64 || end <= 1u64 << bits);
            if !out.is_multiple_of(n) || !below {
                return Err(X86PvError::ExtentOutOfRange {
                    mfn: out,
                    order,
                    bits,
                });
            }
            let bfn = Bfn::try_new(out).ok_or(X86PvError::ExtentOutOfRange {
                mfn: out,
                order,
                bits,
            })?;
            return Ok((bfn.start(), bits));
        }
        if counts[1] == n {
            remap_result(&report)?;
            if errno == EPERM && x.nr_exchanged == 0 && order > MIN_LIMIT_ORDER {
                // Above the domain's memop-max-order: remember it, so that no later create
                // pays the unmapping and remapping to hear it again.
                self.xen_order.fetch_min(order - 1, Ordering::Relaxed);
                return Err(X86PvError::OrderRefused {
                    order,
                    max: self.max_order(),
                });
            }
            return Err(X86PvError::ExchangeFailed {
                errno: if errno == 0 { EIO } else { errno },
                nr_exchanged: x.nr_exchanged,
                nr_extents: n,
            });
        }
        Err(X86PvError::PartialExchange {
            errno,
            nr_exchanged: x.nr_exchanged,
            nr_extents: n,
            unresolved: counts[2],
            stranded: report.stranded,
        })
    }

    fn destroy_locked(&self, pfn0: u64, n: u64, order: u32, e0: u64) -> Result<(), X86PvError> {
        self.zap_or_restore(pfn0, n)?;
        // The output list is the region's own P2M entries, loaded with the GPFNs; Xen
        // overwrites each with the page's new frame, which is then its final P2M value. The
        // old frames are `e0 + i`, so nothing else needs to be kept.
        for i in 0..n {
            self.p2m[idx(pfn0 + i)].store(pfn0 + i, Ordering::Relaxed);
        }
        let mut inp = e0;
        let mut x = XenMemoryExchange {
            in_: XenMemoryReservation {
                extent_start: GuestHandle::new(&raw mut inp),
                nr_extents: 1,
                extent_order: order,
                mem_flags: 0,
                domid: DOMID_SELF,
            },
            out: XenMemoryReservation {
                extent_start: GuestHandle::new(self.p2m_ptr(pfn0)),
                nr_extents: n,
                extent_order: 0,
                mem_flags: 0,
                domid: DOMID_SELF,
            },
            nr_exchanged: 0,
        };
        let rc = self.exchange(&mut x);
        let resolve = |i: u64| {
            let pfn = pfn0 + i;
            let new = self.p2m_load(pfn);
            if x.nr_exchanged != 0 && self.m2p_load(new) == pfn {
                return Resolved::New(new);
            }
            match e0.checked_add(i) {
                Some(old) if self.m2p_load(old) == pfn => Resolved::Old(old),
                _ => Resolved::Nothing,
            }
        };
        let mut counts = [0u64; 3];
        let report = self.remap(pfn0, n, |i| {
            let r = resolve(i);
            counts[match r {
                Resolved::New(_) => 0,
                Resolved::Old(_) => 1,
                Resolved::Nothing => 2,
            }] += 1;
            r.mfn()
        });
        let errno = errno_of(rc);
        if counts[0] == n {
            return remap_result(&report);
        }
        if counts[1] == n {
            remap_result(&report)?;
            return Err(X86PvError::ExchangeFailed {
                errno: if errno == 0 { EIO } else { errno },
                nr_exchanged: x.nr_exchanged,
                nr_extents: 1,
            });
        }
        Err(X86PvError::PartialExchange {
            errno,
            nr_exchanged: x.nr_exchanged,
            nr_extents: 1,
            unresolved: counts[2],
            stranded: report.stranded,
        })
    }

    /// Unmaps the `n` pages from `pfn0` without a flush (the remap flushes), in batches: an
    /// `mmu_update` list of up to [`MMU_BATCH`] entries for the pages whose PTE the kernel
    /// locates ([`Hypercall::pte_machine_addr`]), a multicall of up to [`MC_BATCH`]
    /// `update_va_mapping` entries for the others. On a failure, maps every page that may
    /// have been unmapped back to its P2M frame (the P2M is not changed by the zap): those of
    /// the batches issued so far, but for the pages of an `mmu_update` list from the failed
    /// request on, which Xen did not perform; and reports the failure.
    fn zap_or_restore(&self, pfn0: u64, n: u64) -> Result<(), X86PvError> {
        let mut start = 0;
        while start < n {
            let (end, failed) = self.zap_batch(pfn0, start, n);
            if let Some((i, errno, unmapped)) = failed {
                let report = self.remap(pfn0, unmapped, |j| Some(self.p2m_load(pfn0 + j)));
                remap_result(&report)?;
                return Err(X86PvError::ZapFailed {
                    pfn: pfn_of(pfn0 + i),
                    errno,
                });
            }
            start = end;
        }
        Ok(())
    }

    /// Unmaps the pages of one batch from `start` (see
    /// [`zap_or_restore`](Self::zap_or_restore)): its end, and on a failure the failed page,
    /// the errno and the end of the pages that may have been unmapped. Not inlined, so that
    /// its batch is off the stack when the caller restores.
    #[inline(never)]
    #[allow(clippy::type_complexity)]
    fn zap_batch(&self, pfn0: u64, start: u64, n: u64) -> (u64, Option<(u64, i32, u64)>) {
        let addrs = self.pte_addrs(pfn0, start, n);
        if addrs.is_empty() {
            let end = n.min(start + MC_BATCH as u64);
            let mut batch: ArrayVec<MulticallEntry, MC_BATCH> = (start..end)
                .map(|i| uvm_entry(self.va_of(pfn0 + i), 0, 0))
                .collect();
            let rc = self.multicall(&mut batch);
            let failed = batch
                .iter()
                .zip(start..)
                .find_map(|(e, i)| (e.result != 0).then(|| (i, entry_errno(e.result, rc))));
            // Entries run independently: any page of the batch may be unmapped.
            (end, failed.map(|(i, errno)| (i, errno, end)))
        } else {
            let first = self.mmu_update(&addrs);
            // CAST: k < MMU_BATCH.
            let failed = self
                .mmu_update_rest(&addrs, 0, first)
                .err()
                .map(|(k, errno)| (start + k as u64, errno));
            // Xen stops the list at the failed request: the pages from it on are still
            // mapped.
            // CAST: at most MMU_BATCH entries.
            let end = start + addrs.len() as u64;
            (end, failed.map(|(i, errno)| (i, errno, i)))
        }
    }

    /// Maps page `i` (of the `n` from `pfn0`) to frame `mfn_of(i)` and sets its P2M entry;
    /// `None` leaves the page unmapped with an INVALID P2M entry. In batches as the zap
    /// ([`zap_or_restore`](Self::zap_or_restore)); the TLB of every CPU is flushed once, by
    /// the last batch: its last multicall entry (`UVMF_TLB_FLUSH | UVMF_ALL`), or an
    /// `MMUEXT_TLB_FLUSH_ALL` in the same multicall as its `mmu_update` list. An entry that
    /// fails is retried alone once (the rest of an `mmu_update` list, which Xen stops at
    /// the failure, is resubmitted); if that fails too the page is left unmapped with an
    /// INVALID P2M entry. Every page left unmapped is recorded in the report's stranded
    /// pages, with the frame it should have had. When the flush fails (even retried), the
    /// TLB is flushed with `MMUEXT_TLB_FLUSH_ALL`, so that no CPU keeps a translation of a
    /// frame the region gave up.
    #[inline(never)]
    fn remap<F: FnMut(u64) -> Option<u64>>(&self, pfn0: u64, n: u64, mut mfn_of: F) -> RemapReport {
        let mut report = RemapReport::default();
        let mut flushed = n == 0;
        let mut start = 0;
        while start < n {
            let mut addrs = self.pte_addrs(pfn0, start, n);
            let end = if addrs.is_empty() {
                n.min(start + MC_BATCH as u64)
            } else {
                // CAST: at most MMU_BATCH entries.
                start + addrs.len() as u64
            };
            // INVALID_P2M_ENTRY for a page without a frame (no frame number is all ones).
            let mut targets: ArrayVec<u64, MMU_BATCH> = ArrayVec::new();
            for i in start..end {
                targets.push(mfn_of(i).unwrap_or(INVALID_P2M_ENTRY));
            }
            let target = |k: usize| Some(targets[k]).filter(|&m| m != INVALID_P2M_ENTRY);
            // The mutant of `cargo xtask xen-qemu mutants`: page i is mapped to the frame of
            // page i^1 while its P2M entry stays right, so the CPU and a device see different
            // memory.
            let pte_of = |k: usize| {
                #[cfg(swiotlb_mutant = "crosswise_remap")]
                let k = if k ^ 1 < targets.len() { k ^ 1 } else { k };
                self.pte(target(k))
            };
            // Page `start + k` mapped (errno 0) or not: its P2M entry and the report.
            let mut settle = |k: usize, errno: i32| {
                // CAST: k < MMU_BATCH.
                let pfn = pfn0 + start + k as u64;
                if errno != 0 {
                    report.first_errno.get_or_insert(errno);
                }
                let entry = match (target(k), errno) {
                    (Some(m), 0) => m,
                    (target, _) => {
                        let (pfn, bfn) = (pfn_of(pfn), target.and_then(Bfn::try_new));
                        report.stranded.push(pfn, bfn);
                        if let Some(hook) = self.stranded_hook {
                            hook(StrandedFrame { pfn, bfn });
                        }
                        INVALID_P2M_ENTRY
                    }
                };
                self.p2m[idx(pfn)].store(entry, Ordering::Release);
            };
            if addrs.is_empty() {
                flushed |= self.remap_by_va(pfn0, start, end, n, pte_of, &mut settle);
            } else {
                for (k, r) in addrs.iter_mut().enumerate() {
                    r.val = pte_of(k);
                }
                flushed |= self.remap_by_pte(&addrs, end == n, &mut settle);
            }
            start = end;
        }
        if !flushed {
            flushed = self.flush_all() == 0;
        }
        report.stranded.set_flushed(flushed);
        report
    }

    /// Remaps pages `start..end` (of the `n` from `pfn0`) to `pte_of(k)` with one multicall
    /// of `update_va_mapping` entries, the last page of the region flushing every TLB, and
    /// retries each failed entry alone. Settles each page with its errno (0: mapped), in
    /// order; returns whether the flush happened.
    #[inline(never)]
    fn remap_by_va(
        &self,
        pfn0: u64,
        start: u64,
        end: u64,
        n: u64,
        pte_of: impl Fn(usize) -> u64,
        settle: &mut impl FnMut(usize, i32),
    ) -> bool {
        let last_flags = if n == 1 {
            UVMF_INVLPG | UVMF_ALL
        } else {
            UVMF_TLB_FLUSH | UVMF_ALL
        };
        let mut flushed = false;
        let batch_of = |(k, i): (usize, u64)| {
            let flags = if i + 1 == n { last_flags } else { 0 };
            uvm_entry(self.va_of(pfn0 + i), pte_of(k), flags)
        };
        let mut batch: ArrayVec<MulticallEntry, MC_BATCH> =
            (start..end).enumerate().map(batch_of).collect();
        let rc = self.multicall(&mut batch);
        for ((k, e), i) in batch.iter().enumerate().zip(start..) {
            let mut errno = if e.result == 0 {
                0
            } else {
                entry_errno(e.result, rc)
            };
            if errno != 0 {
                let flags = if i + 1 == n {
                    last_flags
                } else {
                    UVMF_INVLPG | UVMF_ALL
                };
                let rc = self.update_va_mapping(self.va_of(pfn0 + i), pte_of(k), flags);
                errno = if rc == 0 { 0 } else { entry_errno(rc, rc) };
            }
            if i + 1 == n {
                flushed = errno == 0;
            }
            settle(k, errno);
        }
        flushed
    }

    /// Writes the PTEs of `reqs` with `mmu_update`, in one multicall with an
    /// `MMUEXT_TLB_FLUSH_ALL` when `flush`. Xen stops a list at the first request that
    /// fails: that one is retried alone and the rest of the list is resubmitted. Settles each
    /// request with its errno (0: written), in order; returns whether the flush happened.
    #[inline(never)]
    fn remap_by_pte(
        &self,
        reqs: &[MmuUpdate],
        flush: bool,
        settle: &mut impl FnMut(usize, i32),
    ) -> bool {
        let (mut outcome, flushed) = if flush {
            self.mmu_update_and_flush(reqs)
        } else {
            (self.mmu_update(reqs), false)
        };
        let mut off = 0;
        while off < reqs.len() {
            match self.mmu_update_rest(reqs, off, outcome) {
                Ok(()) => {
                    (off..reqs.len()).for_each(|k| settle(k, 0));
                    break;
                }
                Err((k, _)) => {
                    (off..k).for_each(|k| settle(k, 0));
                    let (done, rc) = self.mmu_update(&reqs[k..=k]);
                    let errno = match (done, errno_of(rc)) {
                        (1, _) => 0,
                        (_, 0) => EIO,
                        (_, e) => e,
                    };
                    settle(k, errno);
                    off = k + 1;
                    if off < reqs.len() {
                        outcome = self.mmu_update(&reqs[off..]);
                    }
                }
            }
        }
        flushed
    }

    /// The `mmu_update` requests that clear the PTEs of pages `start..` of the `n` from
    /// `pfn0`, as far as the kernel locates them without a gap, at most [`MMU_BATCH`]; empty
    /// when it does not locate the first one.
    fn pte_addrs(&self, pfn0: u64, start: u64, n: u64) -> ArrayVec<MmuUpdate, MMU_BATCH> {
        let mut reqs = ArrayVec::new();
        for i in start..n.min(start + MMU_BATCH as u64) {
            match self
                .hyp
                .pte_machine_addr(self.va_of(pfn0 + i))
                .and_then(|a| MmuUpdate::normal(a, 0))
            {
                Some(r) => reqs.push(r),
                None => break,
            }
        }
        reqs
    }

    /// Carries on with `reqs[off..]` after a submission that had `outcome` (`(done, rc)`):
    /// resubmits what is left while Xen reports progress without an error (a preempted call
    /// that returned `-ERESTART` or a short count, rather than continuing itself), up to the
    /// end or the request that failed, `Err((index, errno))`.
    fn mmu_update_rest(
        &self,
        reqs: &[MmuUpdate],
        mut off: usize,
        mut outcome: (usize, i64),
    ) -> Result<(), (usize, i32)> {
        loop {
            let (done, rc) = outcome;
            let done = done.min(reqs.len() - off);
            off += done;
            if off == reqs.len() {
                return Ok(());
            }
            let preempted = rc >= 0 || rc == -i64::from(ERESTART);
            if !preempted || done == 0 {
                // An error, or no progress: the request at `off` failed.
                let errno = match errno_of(rc) {
                    0 | ERESTART => EIO,
                    e => e,
                };
                return Err((off, errno));
            }
            outcome = self.mmu_update(&reqs[off..]);
        }
    }

    /// One `mmu_update` of `reqs`: the count Xen reports done and its result.
    fn mmu_update(&self, reqs: &[MmuUpdate]) -> (usize, i64) {
        let mut done = 0u32;
        // CAST: at most MMU_BATCH entries.
        let nr = reqs.len() as u64;
        // SAFETY: the list and the count are valid for the call; each request writes a PTE of
        // a page of a region the caller owns exclusively (the kernel located it), to a frame
        // of the domain or to nothing.
        let rc = unsafe {
            self.hyp.hypercall(
                HYPERVISOR_MMU_UPDATE,
                [
                    addr_of(reqs.as_ptr().cast_mut()),
                    nr,
                    addr_of(&raw mut done),
                    u64::from(DOMID_SELF),
                    0,
                ],
            )
        };
        // CAST: u32 fits usize.
        (done as usize, rc)
    }

    /// `mmu_update(reqs)` and `MMUEXT_TLB_FLUSH_ALL` in one multicall: the list's outcome
    /// (as [`mmu_update`](Self::mmu_update)) and whether the flush succeeded.
    fn mmu_update_and_flush(&self, reqs: &[MmuUpdate]) -> ((usize, i64), bool) {
        let mut done = 0u32;
        let op = MmuextOp::new(MMUEXT_TLB_FLUSH_ALL, 0, 0);
        let mut batch = [
            MulticallEntry::mmu_update(reqs, &raw mut done, DOMID_SELF),
            MulticallEntry::mmuext_op(
                core::slice::from_ref(&op),
                core::ptr::null_mut(),
                DOMID_SELF,
            ),
        ];
        let rc = self.multicall(&mut batch);
        let result = |e: &MulticallEntry| match e.result {
            NOT_RUN if rc < 0 => rc,
            NOT_RUN => -i64::from(EINVAL),
            r => r,
        };
        // CAST: u32 fits usize.
        ((done as usize, result(&batch[0])), result(&batch[1]) == 0)
    }

    /// Flushes the TLB of every CPU (`MMUEXT_TLB_FLUSH_ALL`), for a remap whose flushing
    /// last entry failed.
    fn flush_all(&self) -> i64 {
        let op = MmuextOp::new(MMUEXT_TLB_FLUSH_ALL, 0, 0);
        // SAFETY: one flush operation, read by Xen from the local for the call's duration;
        // no success count.
        unsafe {
            self.hyp.hypercall(
                HYPERVISOR_MMUEXT_OP,
                [
                    addr_of((&raw const op).cast_mut()),
                    1,
                    0,
                    u64::from(DOMID_SELF),
                    0,
                ],
            )
        }
    }

    /// Checks the order (at most `max`) and alignment and that the region lies in the P2M;
    /// returns the first pfn and the page count.
    fn region(&self, phys: PhysAddr, order: u32, max: u32) -> Result<(u64, u64), X86PvError> {
        if order > max {
            return Err(X86PvError::OrderTooLarge { order, max });
        }
        // `max <= max_order <= 20`, so the shifts cannot overflow.
        let n = 1u64 << order;
        let align = XEN_PAGE_SIZE << order;
        if !phys.is_aligned(align) {
            return Err(X86PvError::Misaligned { phys, align });
        }
        let pfn0 = phys.frame().as_u64();
        // CAST: usize is 64 bits on the targets this crate supports.
        let p2m_len = self.p2m.len() as u64;
        if pfn0.checked_add(n).is_none_or(|end| end > p2m_len) {
            return Err(X86PvError::BeyondP2m {
                first: phys.frame(),
                frames: n,
                p2m_len,
            });
        }
        Ok((pfn0, n))
    }

    /// Checks that every page of the region is backed by a local frame.
    fn check_local(&self, pfn0: u64, n: u64) -> Result<(), X86PvError> {
        for pfn in pfn0..pfn0 + n {
            let entry = self.p2m_load(pfn);
            if !matches!(P2mEntry::decode(entry), P2mEntry::Local(_)) {
                return Err(X86PvError::NotLocal {
                    pfn: pfn_of(pfn),
                    entry,
                });
            }
        }
        Ok(())
    }

    /// Zeroes the `n` pages at `phys`.
    ///
    /// # Safety
    ///
    /// The caller owns the pages exclusively and they are in the P2M.
    unsafe fn zero(&self, phys: PhysAddr, n: u64) {
        // CAST: `n <= 2^20`, so `n * 4096 <= 2^32` fits usize on 64-bit targets.
        let len = (n * XEN_PAGE_SIZE) as usize;
        // SAFETY: the caller owns the range; `mem` reaches the region (`new`'s contract).
        unsafe { self.mem.fill(phys, 0, len) };
    }

    fn p2m_load(&self, pfn: u64) -> u64 {
        self.p2m[idx(pfn)].load(Ordering::Acquire)
    }

    fn m2p_load(&self, mfn: u64) -> u64 {
        usize::try_from(mfn)
            .ok()
            .and_then(|i| self.m2p.get(i))
            .map_or(INVALID_M2P_ENTRY, |e| e.load(Ordering::Acquire))
    }

    /// The address of P2M entry `pfn`, as Xen reads and writes guest lists.
    fn p2m_ptr(&self, pfn: u64) -> *mut u64 {
        // `AtomicU64` has the layout of `u64` and permits writes through a shared
        // reference, so Xen may read and write the entries through this pointer.
        self.p2m[idx(pfn)..].as_ptr().cast::<u64>().cast_mut()
    }

    fn va_of(&self, pfn: u64) -> u64 {
        self.linear_base.wrapping_add(pfn << XEN_PAGE_SHIFT)
    }

    fn pte(&self, mfn: Option<u64>) -> u64 {
        mfn.map_or(0, |m| {
            ((m << XEN_PAGE_SHIFT) & PTE_MFN_MASK) | self.pte_flags
        })
    }

    fn exchange(&self, x: &mut XenMemoryExchange) -> i64 {
        // SAFETY: `x` and its lists (a local or the region's P2M entries, which are
        // ordinary memory of this address space) are valid for the call; the exchange
        // gives up frames the caller owns exclusively and has unmapped.
        unsafe {
            self.hyp.hypercall(
                HYPERVISOR_MEMORY_OP,
                [u64::from(XENMEM_EXCHANGE), addr_of(x), 0, 0, 0],
            )
        }
    }

    fn multicall(&self, batch: &mut [MulticallEntry]) -> i64 {
        for e in batch.iter_mut() {
            e.result = NOT_RUN;
        }
        // CAST: at most MC_BATCH entries.
        let nr = batch.len() as u64;
        // SAFETY: the entries are valid for the call; each is an update_va_mapping of a page
        // of a region the caller owns exclusively, or an mmu_update of such pages' PTEs with a
        // TLB flush, whose lists the caller keeps alive for the call.
        unsafe {
            self.hyp.hypercall(
                HYPERVISOR_MULTICALL,
                [addr_of(batch.as_mut_ptr()), nr, 0, 0, 0],
            )
        }
    }

    fn update_va_mapping(&self, va: u64, pte: u64, flags: u64) -> i64 {
        // SAFETY: update_va_mapping takes no pointer; it maps a page of a region the caller
        // owns exclusively to a frame of the domain (or unmaps it).
        unsafe {
            self.hyp
                .hypercall(HYPERVISOR_UPDATE_VA_MAPPING, [va, pte, flags, 0, 0])
        }
    }
}

// SAFETY: `pfn_to_bfn` and `bfn_to_local_pfn` follow Linux's P2M/M2P rules over the tables
// `new`'s caller vouched for; the round trip rejects frames that are not the domain's own.
// `create_contiguous_region` returns only an extent Xen allocated for the region, checked
// aligned and below the limit, after remapping every page to it. Changes to shared state
// (P2M entries, mappings) happen under the spin lock; readers see pages in transition as
// untranslatable.
unsafe impl<H: Hypercall + Sync, M: PhysMemory> Platform for X86PvPlatform<'_, H, M> {
    fn pfn_to_bfn(&self, pfn: Pfn) -> Option<Bfn> {
        self.pfn_to_mfn(pfn)
    }

    fn bfn_to_local_pfn(&self, bfn: Bfn) -> Option<Pfn> {
        self.mfn_to_local_pfn(bfn)
    }

    /// The P2M frame by frame up to the first break; past the end of the P2M every frame is
    /// an identity frame (`raw_entry`), so the rest of a range that reaches it in step is one
    /// run, answered without a walk.
    fn contiguous_run(&self, pfn: Pfn, max_frames: u64) -> Option<(Bfn, u64)> {
        let b0 = self.pfn_to_mfn(pfn)?;
        let room = Pfn::MAX.as_u64() - pfn.as_u64() + 1;
        let max = max_frames.clamp(1, room);
        // CAST: usize fits in u64.
        let p2m_end = self.p2m.len() as u64;
        let mut n = 1;
        while n < max {
            // Cannot overflow: n < max <= room.
            let p = pfn.as_u64() + n;
            let want = b0.as_u64().checked_add(n);
            if p >= p2m_end {
                // Identity from here on: contiguous to the end exactly when in step now.
                if want == Some(p) {
                    n = max;
                }
                break;
            }
            if self.pfn_to_mfn(Pfn::new(p)).map(Bfn::as_u64) != want {
                break;
            }
            n += 1;
        }
        Some((b0, n))
    }

    /// The M2P frame by frame up to the first break; past the end of the M2P no frame
    /// translates back, so the rest of a range that reaches it untranslated is one run,
    /// answered without a walk (a range's cost is bounded by the machine's frames, not by
    /// its size).
    fn local_run(&self, bfn: Bfn, max_frames: u64) -> (Option<Pfn>, u64) {
        let room = Bfn::MAX.as_u64() - bfn.as_u64() + 1;
        let max = max_frames.clamp(1, room);
        // CAST: usize fits in u64.
        let m2p_end = self.m2p.len() as u64;
        let first = self.mfn_to_local_pfn(bfn);
        let mut n = 1;
        while n < max {
            // Cannot overflow: n < max <= room.
            let b = bfn.as_u64() + n;
            if b >= m2p_end {
                // Nothing translates back from here on.
                if first.is_none() {
                    n = max;
                }
                break;
            }
            let next = self.mfn_to_local_pfn(Bfn::new(b));
            let same = match first {
                Some(p) => next.is_some() && next == p.checked_add(n),
                None => next.is_none(),
            };
            if !same {
                break;
            }
            n += 1;
        }
        (first, n)
    }

    unsafe fn create_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
        address_bits: u32,
    ) -> Result<BusAddr, PlatformError> {
        // SAFETY: the trait's contract is `create_contiguous`'s.
        Ok(unsafe { self.create_contiguous(phys, order, address_bits) }?)
    }

    unsafe fn create_contiguous_region_rising(
        &self,
        phys: PhysAddr,
        order: u32,
        min_bits: u32,
        max_bits: u32,
    ) -> Result<(BusAddr, u32), PlatformError> {
        // SAFETY: the trait's contract is `create_contiguous_rising`'s.
        Ok(unsafe { self.create_contiguous_rising(phys, order, min_bits, max_bits) }?)
    }

    unsafe fn destroy_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
    ) -> Result<(), PlatformError> {
        // SAFETY: the trait's contract is `destroy_contiguous`'s.
        Ok(unsafe { self.destroy_contiguous(phys, order) }?)
    }
}

fn uvm_entry(va: u64, pte: u64, flags: u64) -> MulticallEntry {
    MulticallEntry {
        op: u64::from(HYPERVISOR_UPDATE_VA_MAPPING),
        result: 0,
        args: [va, pte, flags, 0, 0, 0],
    }
}

/// The exposed address of `p`, as a guest handle or hypercall argument.
fn addr_of<T>(p: *mut T) -> u64 {
    // CAST: usize is 64 bits on the targets this crate supports.
    p.expose_provenance() as u64
}

fn idx(pfn: u64) -> usize {
    // CAST: only called for pfns checked to be inside the P2M slice.
    pfn as usize
}

fn pfn_of(pfn: u64) -> Pfn {
    Pfn::try_new(pfn).unwrap_or(Pfn::MAX)
}

/// The positive errno of a hypercall result (0 for success or a positive result).
fn errno_of(rc: i64) -> i32 {
    if rc >= 0 {
        0
    } else {
        i32::try_from(rc.unsigned_abs()).unwrap_or(i32::MAX)
    }
}

/// The errno of a failed multicall entry: its result, or the multicall's own error if Xen
/// did not run it.
fn entry_errno(result: i64, multicall_rc: i64) -> i32 {
    let rc = if result == NOT_RUN {
        multicall_rc
    } else {
        result
    };
    match errno_of(rc) {
        0 => EINVAL,
        e => e,
    }
}

/// `Ok` when every page the remap was given a frame for is mapped and the TLB was flushed;
/// otherwise [`X86PvError::RemapFailed`] with every stranded page. The pages the caller had
/// no frame for (an exchange's unresolved pages) are in the report too but are the caller's
/// error, so a remap with only those is `Ok` here when it flushed.
fn remap_result(report: &RemapReport) -> Result<(), X86PvError> {
    match report.first_errno {
        None if report.stranded.flushed() => Ok(()),
        errno => Err(X86PvError::RemapFailed {
            errno: errno.unwrap_or(EIO),
            stranded: report.stranded,
        }),
    }
}
