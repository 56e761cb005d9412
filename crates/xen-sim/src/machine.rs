//! The machine state behind the lock: frames, ownership, contents, page table, stage 2,
//! grant tables, the cache model, devices, counters and faults.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use swiotlb_core::{BusAddr, DmaMask, PhysAddr};
use xen_abi::{DomId, GrantRef};

use crate::config::{SimArch, SimConfig};
use crate::device::{CacheViolation, CacheViolationKind, DmaFault};
use crate::fault::{Counters, Faults};
use crate::rng::SplitMix64;

/// 4 KiB.
pub(crate) const PAGE: u64 = 4096;
/// Cache line size of the cache model.
pub(crate) const LINE: u64 = 64;
/// Owner value of a free frame.
pub(crate) const OWNER_FREE: DomId = u16::MAX;
/// dom0's id.
pub(crate) const DOM0: DomId = 0;
/// The domU's id.
pub(crate) const DOMU: DomId = 1;
/// `INVALID_P2M_ENTRY` / `INVALID_M2P_ENTRY`.
pub(crate) const INVALID: u64 = !0;
/// x86 PTE present bit.
pub(crate) const PTE_PRESENT: u64 = 1 << 0;
/// x86 PTE writable bit.
pub(crate) const PTE_RW: u64 = 1 << 1;
/// x86-64 PTE frame bits (bits 12..=51).
pub(crate) const PTE_MFN_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Machine address of the L1 page table that maps dom0's linear map: the entry of pfn `p`
/// is at `PT_MACHINE_BASE + 8 * p`. It lies above all RAM, in frames Xen keeps typed as
/// page tables, which no device reaches.
pub(crate) const PT_MACHINE_BASE: u64 = 0x80_0000_0000;

/// Where machine frames are: a frame index `0..total` covers the low region and then the
/// high region.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub(crate) low_base_mfn: u64,
    pub(crate) low_frames: u64,
    pub(crate) high_base_mfn: u64,
    pub(crate) high_frames: u64,
}

impl Layout {
    pub(crate) fn new(cfg: &SimConfig) -> Self {
        Self {
            low_base_mfn: cfg.low_base / PAGE,
            low_frames: cfg.low_frames,
            high_base_mfn: cfg.high_base / PAGE,
            high_frames: cfg.high_frames,
        }
    }

    pub(crate) fn total(&self) -> usize {
        // CAST: validated configurations have at most 2^24 frames.
        (self.low_frames + self.high_frames) as usize
    }

    /// The frame index of `mfn`, if it is RAM.
    pub(crate) fn index(&self, mfn: u64) -> Option<usize> {
        // CAST: indices are below total(), which fits usize.
        if mfn >= self.low_base_mfn && mfn - self.low_base_mfn < self.low_frames {
            Some((mfn - self.low_base_mfn) as usize)
        } else if mfn >= self.high_base_mfn && mfn - self.high_base_mfn < self.high_frames {
            Some((self.low_frames + mfn - self.high_base_mfn) as usize)
        } else {
            None
        }
    }

    /// The MFN of frame index `idx`.
    pub(crate) fn mfn(&self, idx: usize) -> u64 {
        // CAST: usize fits in u64 on every supported host.
        let i = idx as u64;
        if i < self.low_frames {
            self.low_base_mfn + i
        } else {
            self.high_base_mfn + (i - self.low_frames)
        }
    }

    /// One past the highest MFN of RAM.
    pub(crate) fn mfn_end(&self) -> u64 {
        if self.high_frames == 0 {
            self.low_base_mfn + self.low_frames
        } else {
            self.high_base_mfn + self.high_frames
        }
    }
}

/// A v1 grant entry of the domU's table (only the fields the simulator needs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct GrantEntry {
    /// The domain allowed to map it.
    pub(crate) grantee: DomId,
    /// The granting domain's frame (its pfn; the simulator resolves it at map time).
    pub(crate) pfn: u64,
    /// `GTF_readonly`.
    pub(crate) readonly: bool,
}

/// Where a grant mapping is visible in the mapping domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostMap {
    /// Not mapped for the CPU (`GNTMAP_device_map` only).
    None,
    /// x86 PV: the PTE of linear-map pfn `.0` points at the frame.
    Pte(u64),
    /// arm64: stage 2 maps IPA frame `.0` to the frame.
    Stage2(u64),
}

/// One maptrack entry: a grant mapped by a domain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mapping {
    pub(crate) granter: DomId,
    pub(crate) gref: GrantRef,
    pub(crate) mfn: u64,
    pub(crate) host_addr: u64,
    pub(crate) readonly: bool,
    pub(crate) host: HostMap,
}

/// Per-domain state.
#[derive(Clone, Debug, Default)]
pub(crate) struct DomState {
    /// Whether the domain has I/O capabilities (larger exchange orders).
    pub(crate) privileged: bool,
    /// The simulator-kept P2M of a domain whose guest side the simulator plays (the domU).
    pub(crate) p2m: Vec<u64>,
    /// The domain's grant table (refs 0..8 reserved, as on Xen).
    pub(crate) grants: Vec<Option<GrantEntry>>,
    /// Live mappings per granted ref of this domain's table.
    pub(crate) active: BTreeMap<GrantRef, u32>,
    /// Grants this domain has mapped, indexed by handle.
    pub(crate) maptrack: Vec<Option<Mapping>>,
}

/// A simulated DMA device.
#[derive(Clone, Debug)]
pub(crate) struct DeviceState {
    pub(crate) mask: DmaMask,
    pub(crate) coherent: bool,
    pub(crate) faults: Vec<DmaFault>,
    pub(crate) violations: Vec<CacheViolation>,
    pub(crate) bytes_read: u64,
    pub(crate) bytes_written: u64,
}

/// A CPU access through a PTE changed without a TLB flush since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbViolation {
    /// The pseudo-physical frame accessed.
    pub pfn: u64,
    /// Its virtual address in the linear map.
    pub va: u64,
}

/// Everything behind the machine's lock.
pub(crate) struct State {
    pub(crate) arch: SimArch,
    pub(crate) layout: Layout,
    /// Frame contents, `total * 4096` bytes.
    pub(crate) data: Vec<u8>,
    /// Owner of each frame index.
    pub(crate) owner: Vec<DomId>,
    /// Present PTEs referencing each frame index.
    pub(crate) mapcount: Vec<u32>,
    /// Cache model, one bit per 64-byte line: CPU-dirty (not cleaned).
    pub(crate) dirty: Vec<u64>,
    /// Cache model: a device wrote the line, the CPU may hold a stale copy.
    pub(crate) stale: Vec<u64>,
    /// Cache model: dirty CPU data was invalidated without a clean (architecturally lost).
    pub(crate) lost: Vec<u64>,
    pub(crate) doms: Vec<DomState>,
    /// x86 PV: dom0's linear-map PTEs, one per pfn.
    pub(crate) pte: Vec<u64>,
    /// x86 PV: pfns whose PTE changed since the last flush covering them.
    pub(crate) tlb_pending: BTreeSet<u64>,
    pub(crate) tlb_violations: Vec<TlbViolation>,
    /// arm64: dom0's RAM banks, `(first frame, frames)` (IPA = machine address).
    pub(crate) arm_banks: Vec<(u64, u64)>,
    /// arm64: the foreign window of stage 2, IPA frame to MFN.
    pub(crate) stage2: BTreeMap<u64, u64>,
    /// x86 PV: the linear map's base virtual address.
    pub(crate) linear_base: u64,
    /// `(major, minor)` reported by `XENVER_version`.
    pub(crate) version: (u16, u16),
    pub(crate) counters: Counters,
    pub(crate) faults: Faults,
    pub(crate) console: String,
    pub(crate) shutdown: Option<u32>,
    pub(crate) devices: Vec<DeviceState>,
    pub(crate) cache_violations: Vec<CacheViolation>,
    /// Frames of the machine (conserved).
    pub(crate) total_frames: u64,
    /// Guest-side allocators: next free pfn (x86) or `(bank, frame offset)` (arm64).
    pub(crate) pv_next_pfn: u64,
    pub(crate) arm_next: (usize, u64),
    /// The domU's next page to grant with `DomU::grant_pages`.
    pub(crate) domu_next_grant: u64,
    /// Frames each domain owned at boot (exchanges conserve them), indexed like `doms`,
    /// less those a [`crate::Fault::ExchangeLosesFrames`] took.
    pub(crate) expected_owned: Vec<u64>,
    /// The frames [`crate::Fault::ExchangeLosesFrames`] took from a domain, in order.
    pub(crate) lost_frames: Vec<u64>,
}

/// What [`State::build`] produces besides the state: the guest-owned tables.
pub(crate) struct Built {
    pub(crate) state: State,
    pub(crate) p2m: Box<[AtomicU64]>,
    pub(crate) m2p: Box<[AtomicU64]>,
}

impl State {
    /// Builds the machine of `cfg` (already validated).
    pub(crate) fn build(cfg: &SimConfig) -> Built {
        let layout = Layout::new(cfg);
        let total = layout.total();
        let mut rng = SplitMix64::new(cfg.seed);
        let mut owner = vec![OWNER_FREE; total];
        // CAST: validated sizes fit usize.
        let low = layout.low_frames as usize;
        let dom0_pages = cfg.dom0_pages as usize;
        let domu_pages = cfg.domu_pages as usize;

        let mut arm_banks = Vec::new();
        // The end of the frames dom0 was scattered over; the domU fills holes below it.
        let mut dom0_window_end = total;
        let dom0_frames: Vec<usize> = match cfg.arch {
            SimArch::X86Pv => {
                // Take a quarter of dom0 at random from the upper half of the low region
                // and the rest at random from a window at the start of the high region
                // (an eighth larger than needed), leaving the lower half of the low region
                // and the top of the high region free and contiguous for exchanges.
                let low_take = (dom0_pages / 4).min(low / 2);
                let high = total - low;
                let high_need = dom0_pages - low_take;
                let window = (high_need + high_need / 8).min(high);
                let mut upper: Vec<usize> = (low / 2..low).collect();
                rng.shuffle(&mut upper);
                let mut in_window: Vec<usize> = (low..low + window).collect();
                rng.shuffle(&mut in_window);
                let mut order: Vec<usize> = upper[..low_take].to_vec();
                order.extend_from_slice(&in_window);
                order.extend(low + window..total);
                order.extend_from_slice(&upper[low_take..]);
                order.extend((0..low / 2).rev());
                order.truncate(dom0_pages);
                // Scramble: pseudo-physical neighbours are not machine neighbours.
                rng.shuffle(&mut order);
                dom0_window_end = low + window;
                order
            }
            SimArch::Arm64 => {
                let in_low = dom0_pages / 2;
                let in_high = dom0_pages - in_low;
                arm_banks.push((layout.low_base_mfn, in_low as u64));
                if in_high > 0 {
                    arm_banks.push((layout.high_base_mfn, in_high as u64));
                }
                (0..in_low).chain(low..low + in_high).collect()
            }
        };
        for &i in &dom0_frames {
            owner[i] = DOM0;
        }
        // The domU: random free frames among dom0's (outside the lower half of the low
        // region), then whatever is left.
        let mut cands: Vec<usize> = (low / 2..dom0_window_end)
            .filter(|&i| owner[i] == OWNER_FREE)
            .collect();
        rng.shuffle(&mut cands);
        if cands.len() < domu_pages {
            cands.extend((dom0_window_end..total).filter(|&i| owner[i] == OWNER_FREE));
            cands.extend((0..low / 2).rev().filter(|&i| owner[i] == OWNER_FREE));
        }
        let domu_frames: Vec<usize> = cands.into_iter().take(domu_pages).collect();
        for &i in &domu_frames {
            owner[i] = DOMU;
        }

        let pv = cfg.arch == SimArch::X86Pv;
        let m2p_len = if pv { layout.mfn_end() } else { 0 };
        // CAST: validated: at most 2^24 entries.
        let m2p: Box<[AtomicU64]> = (0..m2p_len as usize)
            .map(|_| AtomicU64::new(INVALID))
            .collect();
        let mut mapcount = vec![0u32; total];
        let mut pte = Vec::new();
        let p2m: Box<[AtomicU64]> = if pv {
            pte.reserve(dom0_pages);
            dom0_frames
                .iter()
                .enumerate()
                .map(|(pfn, &i)| {
                    let mfn = layout.mfn(i);
                    // CAST: mfn < m2p_len and pfn < dom0_pages, both fit usize/u64.
                    m2p[mfn as usize].store(pfn as u64, Ordering::Relaxed);
                    pte.push(mfn << 12 | PTE_PRESENT | PTE_RW);
                    mapcount[i] = 1;
                    AtomicU64::new(mfn)
                })
                .collect()
        } else {
            Box::new([])
        };
        let domu_p2m: Vec<u64> = domu_frames.iter().map(|&i| layout.mfn(i)).collect();
        if pv {
            for (pfn, &mfn) in domu_p2m.iter().enumerate() {
                // CAST: as above.
                m2p[mfn as usize].store(pfn as u64, Ordering::Relaxed);
            }
        }
        let doms = vec![
            DomState {
                privileged: true,
                ..DomState::default()
            },
            DomState {
                privileged: false,
                p2m: domu_p2m,
                ..DomState::default()
            },
        ];
        let state = State {
            arch: cfg.arch,
            layout,
            data: vec![0u8; total * PAGE as usize],
            owner,
            mapcount,
            dirty: vec![0; total],
            stale: vec![0; total],
            lost: vec![0; total],
            doms,
            pte,
            tlb_pending: BTreeSet::new(),
            tlb_violations: Vec::new(),
            arm_banks,
            stage2: BTreeMap::new(),
            linear_base: cfg.linear_base,
            version: cfg.xen_version,
            counters: Counters::default(),
            faults: Faults::default(),
            console: String::new(),
            shutdown: None,
            devices: Vec::new(),
            cache_violations: Vec::new(),
            total_frames: total as u64,
            pv_next_pfn: 256,
            arm_next: (0, 0),
            domu_next_grant: 0,
            expected_owned: vec![cfg.dom0_pages, cfg.domu_pages],
            lost_frames: Vec::new(),
        };
        Built { state, p2m, m2p }
    }

    /// Index of the domain `id` in `doms`, for the domains the machine has.
    pub(crate) fn dom_index(&self, id: DomId) -> Option<usize> {
        let i = usize::from(id);
        (i < self.doms.len()).then_some(i)
    }

    /// The byte range of frame `idx` in `data`.
    fn frame_bytes(idx: usize) -> std::ops::Range<usize> {
        // CAST: PAGE fits usize.
        let p = PAGE as usize;
        idx * p..(idx + 1) * p
    }

    /// Zeroes frame `idx` and forgets its cache state (Xen scrubs freed pages).
    pub(crate) fn scrub(&mut self, idx: usize) {
        self.data[Self::frame_bytes(idx)].fill(0);
        self.dirty[idx] = 0;
        self.stale[idx] = 0;
        self.lost[idx] = 0;
    }

    /// Copies out of frame `idx` at `off` (no cache-model effect).
    pub(crate) fn raw_read(&self, idx: usize, off: usize, buf: &mut [u8]) {
        let start = Self::frame_bytes(idx).start + off;
        buf.copy_from_slice(&self.data[start..start + buf.len()]);
    }

    /// Copies into frame `idx` at `off` (no cache-model effect).
    pub(crate) fn raw_write(&mut self, idx: usize, off: usize, src: &[u8]) {
        let start = Self::frame_bytes(idx).start + off;
        self.data[start..start + src.len()].copy_from_slice(src);
    }

    /// Fills part of frame `idx` (no cache-model effect).
    pub(crate) fn raw_fill(&mut self, idx: usize, off: usize, len: usize, byte: u8) {
        let start = Self::frame_bytes(idx).start + off;
        self.data[start..start + len].fill(byte);
    }

    // ---- cache model -------------------------------------------------------------------

    /// The line bits touched by `off..off + len` in a frame, and those fully covered.
    fn line_masks(off: usize, len: usize) -> (u64, u64) {
        if len == 0 {
            return (0, 0);
        }
        // CAST: LINE fits usize.
        let line = LINE as usize;
        let first = off / line;
        let last = (off + len - 1) / line;
        let span = |a: usize, b: usize| -> u64 {
            if a > b {
                0
            } else {
                let n = b - a + 1;
                let bits = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
                bits << a
            }
        };
        let touched = span(first, last);
        let full_first = off.div_ceil(line);
        let end = off + len;
        let full = if end / line == 0 {
            0
        } else {
            span(full_first, end / line - 1)
        };
        (touched, full & touched)
    }

    fn machine_addr(&self, idx: usize, off: usize) -> BusAddr {
        // CAST: off < 4096.
        BusAddr::new((self.layout.mfn(idx) << 12) + off as u64)
    }

    /// A CPU read of `len` bytes at `off` in frame `idx`, reached at `phys`.
    pub(crate) fn cache_cpu_read(&mut self, idx: usize, off: usize, len: usize, phys: PhysAddr) {
        let (touched, _) = Self::line_masks(off, len);
        let kind = if self.stale[idx] & touched != 0 {
            Some(CacheViolationKind::CpuReadStale)
        } else if self.lost[idx] & touched != 0 {
            Some(CacheViolationKind::CpuReadDiscarded)
        } else {
            None
        };
        if let Some(kind) = kind {
            let bus = self.machine_addr(idx, off);
            self.cache_violations.push(CacheViolation {
                kind,
                bus,
                phys: Some(phys),
                len,
                device: None,
            });
        }
    }

    /// A CPU write of `len` bytes at `off` in frame `idx`.
    pub(crate) fn cache_cpu_write(&mut self, idx: usize, off: usize, len: usize) {
        let (touched, full) = Self::line_masks(off, len);
        self.dirty[idx] |= touched;
        self.stale[idx] &= !full;
        self.lost[idx] &= !full;
    }

    /// Cache maintenance by the CPU or by `GNTTABOP_cache_flush`.
    pub(crate) fn cache_maint(
        &mut self,
        idx: usize,
        off: usize,
        len: usize,
        clean: bool,
        inval: bool,
    ) {
        let (touched, _) = Self::line_masks(off, len);
        if clean {
            self.dirty[idx] &= !touched;
        }
        if inval {
            let discarded = self.dirty[idx] & touched;
            self.lost[idx] |= discarded;
            self.dirty[idx] &= !discarded;
            self.stale[idx] &= !touched;
        }
    }

    /// A device access for the cache model; returns the violation found, if any.
    pub(crate) fn cache_device(
        &mut self,
        idx: usize,
        off: usize,
        len: usize,
        write: bool,
        device: usize,
    ) -> Option<CacheViolation> {
        let (touched, full) = Self::line_masks(off, len);
        let kind = if write {
            let k = (self.dirty[idx] & touched != 0)
                .then_some(CacheViolationKind::DeviceWriteOverDirty);
            self.stale[idx] |= touched;
            self.lost[idx] &= !full;
            k
        } else if self.dirty[idx] & touched != 0 {
            Some(CacheViolationKind::DeviceReadDirty)
        } else if self.lost[idx] & touched != 0 {
            Some(CacheViolationKind::DeviceReadDiscarded)
        } else {
            None
        };
        kind.map(|kind| CacheViolation {
            kind,
            bus: self.machine_addr(idx, off),
            phys: None,
            len,
            device: Some(device),
        })
    }

    // ---- CPU translation -----------------------------------------------------------------

    /// Translates a guest physical address for a CPU access: x86 PV through dom0's linear
    /// map page table, arm64 through stage 2. Returns the frame index, or a description of
    /// why the address is unreachable.
    pub(crate) fn cpu_translate(&mut self, linear_base: u64, phys: u64) -> Result<usize, String> {
        let pfn = phys / PAGE;
        match self.arch {
            SimArch::X86Pv => {
                let va = linear_base.wrapping_add(pfn * PAGE);
                // CAST: compared against a usize length first.
                if pfn >= self.pte.len() as u64 {
                    return Err(format!(
                        "phys {phys:#x} (pfn {pfn:#x}) is beyond dom0's {} pages",
                        self.pte.len()
                    ));
                }
                let pte = self.pte[pfn as usize];
                if pte & PTE_PRESENT == 0 {
                    return Err(format!(
                        "phys {phys:#x}: the PTE of va {va:#x} (pfn {pfn:#x}) is not present \
                         (the page is zapped)"
                    ));
                }
                if self.tlb_pending.contains(&pfn) {
                    self.tlb_violations.push(TlbViolation { pfn, va });
                }
                let mfn = (pte & PTE_MFN_MASK) >> 12;
                self.layout
                    .index(mfn)
                    .ok_or_else(|| format!("phys {phys:#x}: PTE {pte:#x} points outside RAM"))
            }
            SimArch::Arm64 => {
                let local = self
                    .arm_banks
                    .iter()
                    .any(|&(base, n)| pfn >= base && pfn - base < n);
                let mfn = if local {
                    Some(pfn)
                } else {
                    self.stage2.get(&pfn).copied()
                };
                match mfn.and_then(|m| self.layout.index(m)) {
                    Some(idx) => Ok(idx),
                    None => Err(format!(
                        "IPA {phys:#x} is neither dom0 RAM nor a mapped foreign-window page"
                    )),
                }
            }
        }
    }

    /// Walks `len` bytes at `phys` frame by frame: `f(frame index, offset in frame, chunk
    /// length, offset in the buffer, phys of the chunk)`.
    pub(crate) fn cpu_walk(
        &mut self,
        linear_base: u64,
        phys: u64,
        len: usize,
        mut f: impl FnMut(&mut Self, usize, usize, usize, usize, PhysAddr),
    ) -> Result<(), String> {
        let mut done = 0usize;
        while done < len {
            // CAST: done < len, a usize.
            let p = phys
                .checked_add(done as u64)
                .ok_or_else(|| format!("phys {phys:#x} + {len:#x} wraps"))?;
            // CAST: p % PAGE < 4096.
            let off = (p % PAGE) as usize;
            let chunk = (PAGE as usize - off).min(len - done);
            let idx = self.cpu_translate(linear_base, p)?;
            f(self, idx, off, chunk, done, PhysAddr::new(p));
            done += chunk;
        }
        Ok(())
    }

    /// A CPU read through the guest's translation, with the cache model.
    pub(crate) fn cpu_read(
        &mut self,
        linear_base: u64,
        phys: u64,
        buf: &mut [u8],
    ) -> Result<(), String> {
        let len = buf.len();
        self.cpu_walk(linear_base, phys, len, |st, idx, off, chunk, at, p| {
            st.cache_cpu_read(idx, off, chunk, p);
            st.raw_read(idx, off, &mut buf[at..at + chunk]);
        })
    }

    /// A CPU write through the guest's translation, with the cache model.
    pub(crate) fn cpu_write(
        &mut self,
        linear_base: u64,
        phys: u64,
        src: &[u8],
    ) -> Result<(), String> {
        self.cpu_walk(
            linear_base,
            phys,
            src.len(),
            |st, idx, off, chunk, at, _| {
                st.cache_cpu_write(idx, off, chunk);
                st.raw_write(idx, off, &src[at..at + chunk]);
            },
        )
    }

    /// A CPU fill through the guest's translation, with the cache model.
    pub(crate) fn cpu_fill(
        &mut self,
        linear_base: u64,
        phys: u64,
        byte: u8,
        len: usize,
    ) -> Result<(), String> {
        self.cpu_walk(linear_base, phys, len, |st, idx, off, chunk, _, _| {
            st.cache_cpu_write(idx, off, chunk);
            st.raw_fill(idx, off, chunk, byte);
        })
    }

    /// Registers a device.
    pub(crate) fn add_device(&mut self, mask: DmaMask, coherent: bool) -> usize {
        self.devices.push(DeviceState {
            mask,
            coherent,
            faults: Vec::new(),
            violations: Vec::new(),
            bytes_read: 0,
            bytes_written: 0,
        });
        self.devices.len() - 1
    }

    /// Checks a device access of `len` bytes at `bus` and returns the frames it touches as
    /// `(index, offset, chunk)`, or the fault (recorded).
    pub(crate) fn device_frames(
        &mut self,
        device: usize,
        bus: BusAddr,
        len: usize,
        write: bool,
    ) -> Result<Vec<(usize, usize, usize)>, DmaFault> {
        let mask = self.devices[device].mask;
        // CAST: usize fits u64.
        let fault = if len == 0 {
            Some(DmaFault::Empty { bus })
        } else if !mask.covers(bus, len as u64) {
            Some(DmaFault::BeyondMask {
                bus,
                len,
                mask,
                write,
            })
        } else {
            None
        };
        if let Some(f) = fault {
            self.devices[device].faults.push(f);
            return Err(f);
        }
        let mut frames = Vec::new();
        let mut done = 0usize;
        while done < len {
            // CAST: done < len; no wrap (checked by covers()).
            let a = bus.as_u64() + done as u64;
            // CAST: a % PAGE < 4096.
            let off = (a % PAGE) as usize;
            let chunk = (PAGE as usize - off).min(len - done);
            let idx = match self.layout.index(a / PAGE) {
                Some(i) if self.dom_index(self.owner[i]).is_some() => i,
                Some(_) => {
                    let f = DmaFault::NotOwned {
                        bus: BusAddr::new(a),
                        write,
                    };
                    self.devices[device].faults.push(f);
                    return Err(f);
                }
                None => {
                    let f = DmaFault::NoMemory {
                        bus: BusAddr::new(a),
                        write,
                    };
                    self.devices[device].faults.push(f);
                    return Err(f);
                }
            };
            frames.push((idx, off, chunk));
            done += chunk;
        }
        Ok(frames)
    }

    /// Records a cache violation of a device (on the device and the machine).
    pub(crate) fn record_device_violation(&mut self, device: usize, v: CacheViolation) {
        self.devices[device].violations.push(v);
        self.cache_violations.push(v);
    }

    /// Finds the lowest free, naturally aligned run of `2^order` frames whose end is at or
    /// below `limit` (a machine address; `u64::MAX` for none). Returns the frame index.
    pub(crate) fn find_free_extent(&self, order: u32, limit: u64) -> Option<usize> {
        let n = 1u64 << order;
        let regions = [
            (0usize, self.layout.low_base_mfn, self.layout.low_frames),
            // CAST: low_frames fits usize.
            (
                self.layout.low_frames as usize,
                self.layout.high_base_mfn,
                self.layout.high_frames,
            ),
        ];
        for (first_idx, base, frames) in regions {
            let mut mfn = base.div_ceil(n) * n;
            while mfn + n <= base + frames {
                let end = (mfn + n).checked_mul(PAGE)?;
                if end - 1 > limit {
                    return None;
                }
                // CAST: offsets inside a region fit usize.
                let start = first_idx + (mfn - base) as usize;
                let run = &self.owner[start..start + n as usize];
                match run.iter().rposition(|&o| o != OWNER_FREE) {
                    None => return Some(start),
                    // Skip past the last busy frame, to the next aligned start.
                    Some(busy) => {
                        let next = mfn + busy as u64 + 1;
                        mfn = next.div_ceil(n) * n;
                    }
                }
            }
        }
        None
    }

    /// The maptrack entry of `dom` mapping `mfn`, if any.
    pub(crate) fn mapped_grant(&self, dom: usize, mfn: u64) -> Option<&Mapping> {
        self.doms[dom]
            .maptrack
            .iter()
            .flatten()
            .find(|m| m.mfn == mfn)
    }
}
