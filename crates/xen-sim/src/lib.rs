//! # xen-sim
//!
//! A simulated Xen machine for host tests. It implements [`xen_abi::Hypercall`] by decoding
//! the same `#[repr(C)]` structures the native traps pass, so the marshalling code that runs
//! on real Xen is the code the tests run, and it checks the guest as strictly as Xen would.
//!
//! What it models (details and the list of simplifications: the project's
//! `docs/simulator.md`):
//!
//! - machine memory in 4 KiB frames, in a region below 4 GiB and one above, owned per
//!   domain (dom0 = 0, a domU = 1) or free;
//! - x86 PV ([`SimArch::X86Pv`]): dom0's scrambled P2M (guest-owned, [`PvGuest::p2m`]), the
//!   M2P, and the linear-map page table that `update_va_mapping` and `mmu_update` change and
//!   through which the CPU ([`PvGuest::memory`]) reaches memory;
//! - arm64 ([`SimArch::Arm64`]): a 1:1 dom0 and a stage-2 foreign window where grant maps
//!   appear ([`ArmGuest`]);
//! - `XENMEM_exchange`, `multicall`, `update_va_mapping`, `mmu_update`, grant map/unmap,
//!   `GNTTABOP_cache_flush`, `xen_version`, `console_io`, `sched_op`, with Xen's checks and
//!   error codes (matched against real Xen 4.17 where it was observed);
//! - DMA devices ([`SimDevice`]) that reach memory by bus address only, within their mask,
//!   and a cache model for non-coherent devices ([`CacheViolation`]);
//! - an invariant checker ([`Xen::check_invariants`]), fault injection ([`Fault`]) and
//!   counters per operation ([`Counters`]).
//!
//! ```
//! use xen_abi::{Hypercall, HYPERVISOR_XEN_VERSION, XENVER_VERSION};
//! use xen_sim::{SimConfig, Xen};
//!
//! let xen = Xen::new(SimConfig::x86_pv());
//! // SAFETY: XENVER_version takes no pointer.
//! let v = unsafe { xen.dom0().hypercall(HYPERVISOR_XEN_VERSION, [u64::from(XENVER_VERSION), 0, 0, 0, 0]) };
//! assert_eq!(v, 4 << 16 | 17);
//! xen.check_invariants().unwrap();
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use swiotlb_core::{Bfn, BusAddr, DmaMask};
use xen_abi::{DomId, GrantRef};

mod config;
mod device;
mod fault;
mod grant;
mod guest;
mod hypercall;
mod invariants;
mod machine;
mod rng;

pub use config::{SimArch, SimConfig};
pub use device::{Adversary, CacheViolation, CacheViolationKind, DmaFault, SimDevice};
pub use fault::{Counters, Fault, OpName, SimOp};
pub use grant::DomU;
pub use guest::{ArmGuest, PvGuest, SimMemory};
pub use hypercall::Domain;
pub use invariants::{P2M_FOREIGN_BIT, P2M_IDENTITY_BIT, Violation};
pub use machine::TlbViolation;

use machine::{DOM0, DOMU, OWNER_FREE, PAGE, State};

/// `INVALID_P2M_ENTRY` (and the M2P's value for frames no guest owns).
pub const INVALID_ENTRY: u64 = !0;

/// An error of the simulator's own (non-hypercall) API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The configuration is inconsistent.
    #[error("invalid simulator configuration: {why}")]
    Config {
        /// What is wrong.
        why: &'static str,
    },
    /// The domU has no such page.
    #[error("the domU has no page {pfn:#x}")]
    NoSuchPage {
        /// The pfn asked for.
        pfn: u64,
    },
    /// The grant reference is not in use.
    #[error("grant ref {gref} is not granted")]
    NotGranted {
        /// The ref.
        gref: GrantRef,
    },
    /// The grant is still mapped by the grantee.
    #[error("grant ref {gref} is still mapped")]
    GrantInUse {
        /// The ref.
        gref: GrantRef,
    },
    /// An access past the end of a 4 KiB page.
    #[error("{len:#x} bytes at offset {offset:#x} leave the page")]
    OutOfPage {
        /// The offset.
        offset: usize,
        /// The length.
        len: usize,
    },
    /// The operation needs the other architecture.
    #[error("not available on {arch:?}")]
    WrongArch {
        /// The machine's architecture.
        arch: SimArch,
    },
}

/// The shared machine: configuration, the lock-protected state and the guest-owned tables.
pub(crate) struct Inner {
    pub(crate) cfg: SimConfig,
    pub(crate) state: Mutex<State>,
    pub(crate) p2m: Box<[AtomicU64]>,
    pub(crate) m2p: Box<[AtomicU64]>,
    /// Run at the copy points of every [`PhysMemory::copy`](swiotlb_core::PhysMemory::copy)
    /// through [`SimMemory`] ([`Xen::on_cpu_copy`]).
    pub(crate) copy_hook: std::sync::RwLock<Option<CopyHook>>,
}

/// A function run at each [`CopyPoint`] of the CPU's copies.
pub type CopyHook = Arc<dyn Fn(CopyPoint) + Send + Sync>;

/// Where in a CPU copy (`PhysMemory::copy` of [`SimMemory`], the pool's bounce copies) a
/// [`Xen::on_cpu_copy`] hook runs: before any byte is read, half-way (the first half of the
/// source has been read and written, the second not yet), and after the last byte is
/// written. The machine's lock is not held, so the hook may do DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyPoint {
    /// Before the copy of `len` bytes from `src` to `dst` (guest-physical addresses).
    Before {
        /// Destination.
        dst: swiotlb_core::PhysAddr,
        /// Source.
        src: swiotlb_core::PhysAddr,
        /// Length.
        len: usize,
    },
    /// Half-way through it.
    Middle {
        /// Destination.
        dst: swiotlb_core::PhysAddr,
        /// Source.
        src: swiotlb_core::PhysAddr,
        /// Length.
        len: usize,
    },
    /// After it.
    After {
        /// Destination.
        dst: swiotlb_core::PhysAddr,
        /// Source.
        src: swiotlb_core::PhysAddr,
        /// Length.
        len: usize,
    },
}

impl Inner {
    /// Locks the state. A panic of the simulator (a loud test failure) does not make later
    /// inspection impossible, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The deterministic test pattern: byte `i` of the pattern of `seed`.
#[must_use]
pub fn pattern_byte(seed: u64, i: usize) -> u8 {
    // CAST: usize fits u64; the truncation to u8 is the point.
    let x = (i as u64 ^ seed.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (i as u8)
}

/// A simulated Xen machine. Cheap to clone (a shared handle); `Send + Sync`.
#[derive(Clone)]
pub struct Xen {
    inner: Arc<Inner>,
}

impl Xen {
    /// Builds the machine of `cfg`.
    ///
    /// # Panics
    ///
    /// If the configuration is inconsistent; use [`try_new`](Self::try_new) to get the error.
    #[must_use]
    pub fn new(cfg: SimConfig) -> Self {
        match Self::try_new(cfg) {
            Ok(x) => x,
            Err(e) => panic!("xen-sim: {e}"),
        }
    }

    /// Builds the machine of `cfg`.
    ///
    /// # Errors
    ///
    /// [`SimError::Config`] if the configuration is inconsistent.
    pub fn try_new(cfg: SimConfig) -> Result<Self, SimError> {
        cfg.validate()?;
        let built = State::build(&cfg);
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                state: Mutex::new(built.state),
                p2m: built.p2m,
                m2p: built.m2p,
                copy_hook: std::sync::RwLock::new(None),
            }),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// The architecture.
    #[must_use]
    pub fn arch(&self) -> SimArch {
        self.inner.cfg.arch
    }

    /// dom0's hypercall interface.
    #[must_use]
    pub fn dom0(&self) -> Domain {
        Domain {
            inner: Arc::clone(&self.inner),
            id: DOM0,
            locates_ptes: true,
        }
    }

    /// The domU's hypercall interface.
    #[must_use]
    pub fn domu(&self) -> Domain {
        Domain {
            inner: Arc::clone(&self.inner),
            id: DOMU,
            locates_ptes: true,
        }
    }

    /// The domU's guest side (grants, page contents).
    #[must_use]
    pub fn domu_guest(&self) -> DomU {
        DomU {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Grants the domU's next `n` pages to dom0 (see [`DomU::grant_pages`]).
    ///
    /// # Panics
    ///
    /// If the domU has fewer than `n` pages left to grant.
    #[must_use]
    pub fn domu_grant(&self, n: usize) -> Vec<GrantRef> {
        self.domu_guest().grant_pages(n)
    }

    /// dom0 as an x86 PV kernel sees itself.
    ///
    /// # Panics
    ///
    /// On an arm64 machine; use [`try_pv_guest`](Self::try_pv_guest) to get an error.
    #[must_use]
    pub fn pv_guest(&self) -> PvGuest {
        match self.try_pv_guest() {
            Ok(g) => g,
            Err(e) => panic!("xen-sim: pv_guest(): {e}"),
        }
    }

    /// dom0 as an x86 PV kernel sees itself.
    ///
    /// # Errors
    ///
    /// [`SimError::WrongArch`] on an arm64 machine.
    pub fn try_pv_guest(&self) -> Result<PvGuest, SimError> {
        match self.arch() {
            SimArch::X86Pv => Ok(PvGuest {
                inner: Arc::clone(&self.inner),
            }),
            arch => Err(SimError::WrongArch { arch }),
        }
    }

    /// dom0 as an arm64 1:1 kernel sees itself.
    ///
    /// # Panics
    ///
    /// On an x86 PV machine; use [`try_arm_guest`](Self::try_arm_guest) to get an error.
    #[must_use]
    pub fn arm_guest(&self) -> ArmGuest {
        match self.try_arm_guest() {
            Ok(g) => g,
            Err(e) => panic!("xen-sim: arm_guest(): {e}"),
        }
    }

    /// dom0 as an arm64 1:1 kernel sees itself.
    ///
    /// # Errors
    ///
    /// [`SimError::WrongArch`] on an x86 PV machine.
    pub fn try_arm_guest(&self) -> Result<ArmGuest, SimError> {
        match self.arch() {
            SimArch::Arm64 => Ok(ArmGuest {
                inner: Arc::clone(&self.inner),
            }),
            arch => Err(SimError::WrongArch { arch }),
        }
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn counters(&self) -> Counters {
        self.inner.lock().counters.clone()
    }

    /// Zeroes the counters.
    pub fn reset_counters(&self) {
        self.inner.lock().counters = Counters::default();
    }

    /// Arms a fault (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        self.inner.lock().faults.inject(fault);
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        self.inner.lock().faults.clear();
    }

    /// The faults armed and not yet fired.
    #[must_use]
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.inner.lock().faults.pending()
    }

    /// Checks every invariant (see [`Violation`]). Call it after every step of a test.
    ///
    /// # Errors
    ///
    /// The first broken invariant found.
    pub fn check_invariants(&self) -> Result<(), Violation> {
        self.inner.check()
    }

    /// Runs `hook` at every [`CopyPoint`] of the CPU's copies (`None`: no hook), so that a
    /// test can make a device write while the CPU copies (see
    /// [`Adversary`]).
    pub fn on_cpu_copy(&self, hook: Option<CopyHook>) {
        *self
            .inner
            .copy_hook
            .write()
            .unwrap_or_else(PoisonError::into_inner) = hook;
    }

    /// Adds a DMA device with `mask`, cache-coherent or not.
    #[must_use]
    pub fn device(&self, mask: DmaMask, coherent: bool) -> SimDevice {
        let id = self.inner.lock().add_device(mask, coherent);
        SimDevice {
            inner: Arc::clone(&self.inner),
            id,
        }
    }

    /// Everything the domains wrote with `console_io` (domU lines prefixed `(d1) `).
    #[must_use]
    pub fn console_output(&self) -> String {
        self.inner.lock().console.clone()
    }

    /// The reason given to `SCHEDOP_shutdown`, if dom0 shut down.
    #[must_use]
    pub fn shutdown_reason(&self) -> Option<u32> {
        self.inner.lock().shutdown
    }

    /// Every cache violation recorded so far (device and CPU side).
    #[must_use]
    pub fn cache_violations(&self) -> Vec<CacheViolation> {
        self.inner.lock().cache_violations.clone()
    }

    /// Forgets the recorded cache violations (also those of each device).
    pub fn clear_cache_violations(&self) {
        let mut st = self.inner.lock();
        st.cache_violations.clear();
        for d in &mut st.devices {
            d.violations.clear();
        }
    }

    /// CPU accesses through a PTE that changed without a TLB flush since (x86 PV).
    #[must_use]
    pub fn tlb_violations(&self) -> Vec<TlbViolation> {
        self.inner.lock().tlb_violations.clone()
    }

    /// The machine frames [`Fault::ExchangeLosesFrames`] took from a domain (and freed),
    /// in the order they were taken. The invariants count them as the only frames a domain
    /// may have lost.
    #[must_use]
    pub fn lost_frames(&self) -> Vec<Bfn> {
        let st = self.inner.lock();
        st.lost_frames.iter().map(|&m| Bfn::new(m)).collect()
    }

    /// Free machine frames.
    #[must_use]
    pub fn free_frames(&self) -> u64 {
        self.free_frames_below(u64::MAX)
    }

    /// Free machine frames lying entirely below machine address `limit`.
    #[must_use]
    pub fn free_frames_below(&self, limit: u64) -> u64 {
        let st = self.inner.lock();
        // CAST: usize fits u64.
        (0..st.layout.total())
            .filter(|&i| st.owner[i] == OWNER_FREE && (st.layout.mfn(i) + 1) * PAGE <= limit)
            .count() as u64
    }

    /// Takes every free frame lying entirely below machine address `limit` away from the
    /// free pool (as Xen's own allocations would), so that exchanges below it fail with
    /// `-ENOMEM`. Returns how many frames were taken.
    pub fn hog_free_frames_below(&self, limit: u64) -> u64 {
        let mut st = self.inner.lock();
        let mut n = 0;
        for i in 0..st.layout.total() {
            if st.owner[i] == OWNER_FREE && (st.layout.mfn(i) + 1) * PAGE <= limit {
                st.owner[i] = xen_abi::DOMID_XEN;
                n += 1;
            }
        }
        n
    }

    /// The owner of machine frame `bfn`: `Some(domid)` (`DOMID_XEN` for hogged frames),
    /// `None` if free or not RAM.
    #[must_use]
    pub fn owner_of(&self, bfn: Bfn) -> Option<DomId> {
        let st = self.inner.lock();
        st.layout
            .index(bfn.as_u64())
            .map(|i| st.owner[i])
            .filter(|&o| o != OWNER_FREE)
    }

    /// Reads machine memory directly, for inspection by tests (no cache-model effect).
    /// Returns `false` (and reads nothing) if any byte is not RAM.
    pub fn read_machine(&self, bus: BusAddr, buf: &mut [u8]) -> bool {
        let st = self.inner.lock();
        let mut done = 0usize;
        let mut chunks = Vec::new();
        while done < buf.len() {
            // CAST: usize fits u64.
            let Some(a) = bus.as_u64().checked_add(done as u64) else {
                return false;
            };
            let Some(idx) = st.layout.index(a / PAGE) else {
                return false;
            };
            // CAST: a % PAGE < 4096.
            let off = (a % PAGE) as usize;
            let chunk = (4096 - off).min(buf.len() - done);
            chunks.push((idx, off, done, chunk));
            done += chunk;
        }
        for (idx, off, at, chunk) in chunks {
            st.raw_read(idx, off, &mut buf[at..at + chunk]);
        }
        true
    }
}

impl fmt::Debug for Xen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Xen")
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync() {
        assert_send_sync::<Xen>();
        assert_send_sync::<Domain>();
        assert_send_sync::<PvGuest>();
        assert_send_sync::<ArmGuest>();
        assert_send_sync::<SimDevice>();
        assert_send_sync::<SimMemory>();
        assert_send_sync::<DomU>();
    }
}
