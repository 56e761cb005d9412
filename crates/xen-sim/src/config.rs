//! The machine's configuration.

use std::fmt;

/// The architecture the simulated Xen behaves as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SimArch {
    /// An x86_64 PV dom0: scrambled P2M, M2P, linear-map page table, `XENMEM_exchange`,
    /// `update_va_mapping`, `mmu_update`.
    #[default]
    X86Pv,
    /// An arm64 1:1 (direct-mapped) dom0: IPA equals machine address for its own RAM, grant
    /// maps appear in a foreign window through stage 2, `XENMEM_exchange` is refused with
    /// `-EOPNOTSUPP` and the PV-only MMU hypercalls with `-ENOSYS`.
    Arm64,
}

/// Configuration of a simulated machine. Build it with [`SimConfig::x86_pv`],
/// [`SimConfig::arm64`] or [`Default`] (x86 PV), then adjust with the `with_*` methods.
///
/// Machine memory is two regions of 4 KiB frames: one below 4 GiB starting at a non-zero
/// base, one at or above 4 GiB, so that DMA masks and `address_bits` matter.
#[derive(Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// The architecture.
    pub arch: SimArch,
    /// Machine address of the region below 4 GiB (4 KiB aligned).
    pub low_base: u64,
    /// Frames in the region below 4 GiB.
    pub low_frames: u64,
    /// Machine address of the region at or above 4 GiB (4 KiB aligned).
    pub high_base: u64,
    /// Frames in the region at or above 4 GiB.
    pub high_frames: u64,
    /// Pages of dom0.
    pub dom0_pages: u64,
    /// Pages of the domU (the domain that grants pages to dom0).
    pub domu_pages: u64,
    /// Seed of the deterministic PRNG that scrambles the P2M and picks frames.
    pub seed: u64,
    /// Whether `GNTTABOP_cache_flush` exists; `false` simulates an old Xen (`-ENOSYS`). On
    /// x86 from Xen 4.21 on (`xen_version >= (4, 21)`) it never exists, whatever this says:
    /// Xen builds the operation for Arm only (`CONFIG_HAS_GRANT_CACHE_FLUSH`) and answers
    /// `-ENOSYS` (see [`has_cache_flush`](Self::has_cache_flush)).
    pub cache_flush: bool,
    /// Largest extent order of `XENMEM_exchange` for the domU (Xen's `max_order()` of an
    /// ordinary domain: the first value of `memop-max-order`, default 9, a 2 MiB superpage).
    /// Above it the exchange fails with `-EPERM` before anything else is checked.
    pub max_order_unprivileged: u32,
    /// Largest extent order for dom0, the control and hardware domain (Xen's `max_order()`:
    /// the largest `memop-max-order` value that applies, 18 with x86's defaults
    /// `9,18,12,12`). See [`with_memop_max_order`](SimConfig::with_memop_max_order).
    pub max_order_privileged: u32,
    /// The version `XENVER_version` reports, as `(major, minor)`.
    pub xen_version: (u16, u16),
    /// x86 PV: the virtual address of pseudo-physical address 0 in dom0's linear map (Linux's
    /// `PAGE_OFFSET`).
    pub linear_base: u64,
    /// arm64: the IPA of dom0's foreign-mapping window (where grant maps may be placed).
    pub foreign_window_base: u64,
    /// arm64: the number of 4 KiB pages in the foreign-mapping window.
    pub foreign_window_pages: u64,
}

impl SimConfig {
    /// The default x86 PV machine: 64 MiB at 16 MiB, 64 MiB at 4 GiB, a 64 MiB dom0 with a
    /// scrambled P2M, a 1 MiB domU, cache flush available.
    #[must_use]
    pub fn x86_pv() -> Self {
        Self {
            arch: SimArch::X86Pv,
            low_base: 16 << 20,
            low_frames: 16384,
            high_base: 1 << 32,
            high_frames: 16384,
            dom0_pages: 16384,
            domu_pages: 256,
            seed: 0x5eed_0f0e_0017,
            cache_flush: true,
            max_order_unprivileged: 9,
            max_order_privileged: 18,
            xen_version: (4, 17),
            linear_base: 0xffff_8880_0000_0000,
            foreign_window_base: 0x8_0000_0000,
            foreign_window_pages: 4096,
        }
    }

    /// The default arm64 machine: as [`x86_pv`](Self::x86_pv) but a 1:1 dom0 with one bank
    /// below 4 GiB and one above, and a foreign window at IPA 32 GiB.
    #[must_use]
    pub fn arm64() -> Self {
        Self {
            arch: SimArch::Arm64,
            ..Self::x86_pv()
        }
    }

    /// Sets the architecture.
    #[must_use]
    pub fn with_arch(mut self, arch: SimArch) -> Self {
        self.arch = arch;
        self
    }

    /// Sets the region below 4 GiB.
    #[must_use]
    pub fn with_low(mut self, base: u64, frames: u64) -> Self {
        self.low_base = base;
        self.low_frames = frames;
        self
    }

    /// Sets the region above 4 GiB.
    #[must_use]
    pub fn with_high(mut self, base: u64, frames: u64) -> Self {
        self.high_base = base;
        self.high_frames = frames;
        self
    }

    /// Sets dom0's page count.
    #[must_use]
    pub fn with_dom0_pages(mut self, pages: u64) -> Self {
        self.dom0_pages = pages;
        self
    }

    /// Sets the domU's page count.
    #[must_use]
    pub fn with_domu_pages(mut self, pages: u64) -> Self {
        self.domu_pages = pages;
        self
    }

    /// Sets the PRNG seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets whether `GNTTABOP_cache_flush` exists (on x86 before Xen 4.21; see
    /// [`has_cache_flush`](Self::has_cache_flush)).
    #[must_use]
    pub fn with_cache_flush(mut self, available: bool) -> Self {
        self.cache_flush = available;
        self
    }

    /// Sets the version `XENVER_version` reports. It also decides what exists: on x86,
    /// `GNTTABOP_cache_flush` is gone from 4.21 on.
    #[must_use]
    pub fn with_xen_version(mut self, major: u16, minor: u16) -> Self {
        self.xen_version = (major, minor);
        self
    }

    /// Whether `GNTTABOP_cache_flush` exists on this machine: [`cache_flush`](Self::cache_flush),
    /// except on x86 from Xen 4.21 on, where Xen no longer builds it (it was only ever
    /// needed on Arm) and answers `-ENOSYS`, the answer of an old Xen.
    ///
    /// ```
    /// use xen_sim::SimConfig;
    ///
    /// assert!(SimConfig::x86_pv().with_xen_version(4, 20).has_cache_flush());
    /// assert!(!SimConfig::x86_pv().with_xen_version(4, 21).has_cache_flush());
    /// assert!(SimConfig::arm64().with_xen_version(4, 21).has_cache_flush());
    /// ```
    #[must_use]
    pub fn has_cache_flush(&self) -> bool {
        self.cache_flush && !(self.arch == SimArch::X86Pv && self.xen_version >= (4, 21))
    }

    /// Sets the exchange order limits of the domU and of dom0 directly.
    #[must_use]
    pub fn with_max_orders(mut self, unprivileged: u32, privileged: u32) -> Self {
        self.max_order_unprivileged = unprivileged;
        self.max_order_privileged = privileged;
        self
    }

    /// Sets the exchange order limits as Xen's `memop-max-order=<domU>,<ctldom>,<hwdom>,<ptdom>`
    /// boot option does (x86 defaults `9,18,12,12`, Arm `9,18,10,10`), with Xen's
    /// `max_order()`: a domain gets the largest of the values that apply to it, capped at
    /// Xen's `MAX_ORDER` (20). The domU is an ordinary domain; dom0 is the control and the
    /// hardware domain with I/O capabilities, so every value applies to it.
    ///
    /// ```
    /// use xen_sim::SimConfig;
    ///
    /// let c = SimConfig::x86_pv().with_memop_max_order(9, 18, 12, 12);
    /// assert_eq!((c.max_order_unprivileged, c.max_order_privileged), (9, 18));
    /// let c = SimConfig::x86_pv().with_memop_max_order(9, 4, 10, 4);
    /// assert_eq!((c.max_order_unprivileged, c.max_order_privileged), (9, 10));
    /// ```
    #[must_use]
    pub fn with_memop_max_order(self, domu: u32, ctldom: u32, hwdom: u32, ptdom: u32) -> Self {
        const MAX_ORDER: u32 = 20;
        let dom0 = domu.max(ctldom).max(hwdom).max(ptdom);
        self.with_max_orders(domu.min(MAX_ORDER), dom0.min(MAX_ORDER))
    }

    /// Checks the configuration; the simulator refuses inconsistent machines.
    pub(crate) fn validate(&self) -> Result<(), crate::SimError> {
        let bad = |why: &'static str| Err(crate::SimError::Config { why });
        const PAGE: u64 = 4096;
        if !self.low_base.is_multiple_of(PAGE) || !self.high_base.is_multiple_of(PAGE) {
            return bad("region bases must be 4 KiB aligned");
        }
        if self.low_base == 0 {
            return bad("the low region must start above machine address 0");
        }
        let low_end = self
            .low_frames
            .checked_mul(PAGE)
            .and_then(|s| s.checked_add(self.low_base));
        match low_end {
            Some(end) if end <= 1 << 32 => {}
            _ => return bad("the low region must end at or below 4 GiB"),
        }
        if self.high_base < 1 << 32 {
            return bad("the high region must start at or above 4 GiB");
        }
        let high_end = self
            .high_frames
            .checked_mul(PAGE)
            .and_then(|s| s.checked_add(self.high_base));
        match high_end {
            Some(end) if end <= 1 << 36 => {}
            _ => return bad("the high region must end at or below 64 GiB"),
        }
        if self.low_frames == 0 {
            return bad("the low region must not be empty");
        }
        let total = self.low_frames + self.high_frames;
        let needed = self.dom0_pages.checked_add(self.domu_pages);
        match needed {
            Some(n) if n <= total => {}
            _ => return bad("dom0 and domU pages exceed the machine's frames"),
        }
        if self.dom0_pages < 512 {
            return bad("dom0 needs at least 512 pages");
        }
        if self.max_order_unprivileged > 30 || self.max_order_privileged > 30 {
            return bad("exchange order limits above 30 are not supported");
        }
        if self.arch == SimArch::Arm64 {
            let low_half = self.dom0_pages / 2;
            if low_half > self.low_frames || self.dom0_pages - low_half > self.high_frames {
                return bad("arm64: half of dom0 must fit in each region");
            }
            let wend = self
                .foreign_window_pages
                .checked_mul(PAGE)
                .and_then(|s| s.checked_add(self.foreign_window_base));
            let mem_end = high_end.unwrap_or(u64::MAX);
            match wend {
                Some(_)
                    if self.foreign_window_base.is_multiple_of(PAGE)
                        && self.foreign_window_base >= mem_end => {}
                _ => return bad("arm64: the foreign window must be aligned and above all RAM"),
            }
        } else {
            let lin_end = self
                .dom0_pages
                .checked_mul(PAGE)
                .and_then(|s| s.checked_add(self.linear_base));
            if lin_end.is_none() || !self.linear_base.is_multiple_of(PAGE) {
                return bad("x86: the linear map must be aligned and not wrap");
            }
        }
        Ok(())
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self::x86_pv()
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("arch", &self.arch)
            .field(
                "low",
                &format_args!("{:#x}+{} frames", self.low_base, self.low_frames),
            )
            .field(
                "high",
                &format_args!("{:#x}+{} frames", self.high_base, self.high_frames),
            )
            .field("dom0_pages", &self.dom0_pages)
            .field("domu_pages", &self.domu_pages)
            .field("seed", &format_args!("{:#x}", self.seed))
            .field("cache_flush", &self.cache_flush)
            .field("max_order_unprivileged", &self.max_order_unprivileged)
            .field("max_order_privileged", &self.max_order_privileged)
            .finish_non_exhaustive()
    }
}
