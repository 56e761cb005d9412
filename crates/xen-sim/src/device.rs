//! DMA devices that reach memory by bus (machine) address only, and the cache model's
//! verdicts.

use std::fmt;
use std::sync::Arc;

use swiotlb_core::{BusAddr, DmaMask, PhysAddr};

use crate::Inner;

/// A DMA access the simulated device refused. Nothing was read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmaFault {
    /// Some byte of the access lies beyond the device's DMA mask.
    #[error("DMA {} of {len:#x} bytes at {bus} beyond {mask}", if *.write { "write" } else { "read" })]
    BeyondMask {
        /// Start of the access.
        bus: BusAddr,
        /// Its length.
        len: usize,
        /// The device's mask.
        mask: DmaMask,
        /// Whether it was a write.
        write: bool,
    },
    /// The access reaches a machine frame owned by no domain (a free or scrubbed frame, or
    /// one Xen keeps for itself).
    #[error("DMA {} at {bus}: frame owned by no domain", if *.write { "write" } else { "read" })]
    NotOwned {
        /// The first offending address.
        bus: BusAddr,
        /// Whether it was a write.
        write: bool,
    },
    /// The access reaches an address with no RAM behind it.
    #[error("DMA {} at {bus}: no RAM there", if *.write { "write" } else { "read" })]
    NoMemory {
        /// The first offending address.
        bus: BusAddr,
        /// Whether it was a write.
        write: bool,
    },
    /// A zero-length access.
    #[error("zero-length DMA at {bus}")]
    Empty {
        /// The address.
        bus: BusAddr,
    },
}

/// What the cache model caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheViolationKind {
    /// A non-coherent device read a line the CPU had written and nobody cleaned: the device
    /// would have read stale memory (a missing CLEAN before the device reads).
    DeviceReadDirty,
    /// A non-coherent device read a line whose dirty CPU data had been invalidated without a
    /// clean: memory never received the CPU's data.
    DeviceReadDiscarded,
    /// A non-coherent device wrote a line the CPU still held dirty: a later eviction would
    /// overwrite the device's data (a missing CLEAN or INVAL before the device writes).
    DeviceWriteOverDirty,
    /// The CPU read a line a non-coherent device wrote, without an INVAL since: it may read
    /// a stale cached copy (a missing INVAL before the CPU reads).
    CpuReadStale,
    /// The CPU read a line whose dirty data had been invalidated without a clean.
    CpuReadDiscarded,
}

/// A cache-coherency mistake caught by the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheViolation {
    /// What went wrong.
    pub kind: CacheViolationKind,
    /// Machine address of the start of the offending access within the frame.
    pub bus: BusAddr,
    /// The CPU's address for the access, for CPU-side violations.
    pub phys: Option<PhysAddr>,
    /// Bytes of the access within that frame.
    pub len: usize,
    /// The device, for device-side violations (its creation index).
    pub device: Option<usize>,
}

impl fmt::Display for CacheViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at {} ({:#x} bytes)", self.kind, self.bus, self.len)?;
        if let Some(p) = self.phys {
            write!(f, " CPU address {p}")?;
        }
        if let Some(d) = self.device {
            write!(f, " by device {d}")?;
        }
        Ok(())
    }
}

/// A simulated DMA device: it reaches machine memory by bus address, within its mask.
///
/// A non-coherent device takes part in the cache model: reading CPU-dirty lines, or writing
/// them, is recorded as a [`CacheViolation`]; its writes leave lines the CPU must invalidate
/// before reading. A coherent device sees memory as the CPU does.
#[derive(Clone)]
pub struct SimDevice {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: usize,
}

impl SimDevice {
    /// The device's index on its machine.
    #[must_use]
    pub fn id(&self) -> usize {
        self.id
    }

    /// The device's DMA mask.
    #[must_use]
    pub fn mask(&self) -> DmaMask {
        self.inner.lock().devices[self.id].mask
    }

    /// Whether the device is cache-coherent.
    #[must_use]
    pub fn coherent(&self) -> bool {
        self.inner.lock().devices[self.id].coherent
    }

    /// The `swiotlb_core::Device` describing this device (its mask as both the streaming and
    /// the coherent mask, its coherence), for the DMA engine under test.
    #[must_use]
    pub fn core_device(&self) -> swiotlb_core::Device {
        let (mask, coherent) = {
            let st = self.inner.lock();
            (st.devices[self.id].mask, st.devices[self.id].coherent)
        };
        swiotlb_core::Device::new(mask)
            .with_coherent_mask(mask)
            .with_coherent(coherent)
    }

    /// Reads `len` bytes at `bus`.
    ///
    /// # Errors
    ///
    /// A [`DmaFault`] (also recorded) when the range goes beyond the mask or reaches a frame
    /// owned by no domain; nothing is read then.
    pub fn read(&self, bus: BusAddr, len: usize) -> Result<Vec<u8>, DmaFault> {
        let mut st = self.inner.lock();
        let frames = st.device_frames(self.id, bus, len, false)?;
        let coherent = st.devices[self.id].coherent;
        let mut out = vec![0u8; len];
        let mut at = 0;
        for (idx, off, chunk) in frames {
            if !coherent && let Some(v) = st.cache_device(idx, off, chunk, false, self.id) {
                st.record_device_violation(self.id, v);
            }
            st.raw_read(idx, off, &mut out[at..at + chunk]);
            at += chunk;
        }
        // CAST: usize fits u64.
        st.devices[self.id].bytes_read += len as u64;
        Ok(out)
    }

    /// Writes `data` at `bus`.
    ///
    /// # Errors
    ///
    /// As for [`read`](Self::read); nothing is written then.
    pub fn write(&self, bus: BusAddr, data: &[u8]) -> Result<(), DmaFault> {
        let mut st = self.inner.lock();
        let frames = st.device_frames(self.id, bus, data.len(), true)?;
        let coherent = st.devices[self.id].coherent;
        let mut at = 0;
        for (idx, off, chunk) in frames {
            if !coherent && let Some(v) = st.cache_device(idx, off, chunk, true, self.id) {
                st.record_device_violation(self.id, v);
            }
            st.raw_write(idx, off, &data[at..at + chunk]);
            at += chunk;
        }
        // CAST: usize fits u64.
        st.devices[self.id].bytes_written += data.len() as u64;
        Ok(())
    }

    /// The faults recorded for this device.
    #[must_use]
    pub fn faults(&self) -> Vec<DmaFault> {
        self.inner.lock().devices[self.id].faults.clone()
    }

    /// The cache violations this device caused.
    #[must_use]
    pub fn violations(&self) -> Vec<CacheViolation> {
        self.inner.lock().devices[self.id].violations.clone()
    }

    /// Bytes read by DMA so far.
    #[must_use]
    pub fn bytes_read(&self) -> u64 {
        self.inner.lock().devices[self.id].bytes_read
    }

    /// Bytes written by DMA so far.
    #[must_use]
    pub fn bytes_written(&self) -> u64 {
        self.inner.lock().devices[self.id].bytes_written
    }
}

impl fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDevice")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// An adversarial DMA device: at every [`CopyPoint`](crate::CopyPoint) of the CPU's copies
/// (once installed with [`Adversary::install`]) or whenever [`strike`](Self::strike) is
/// called, it writes a fresh pattern over every one of its targets, whatever it was given:
/// the bounce slot while the CPU syncs or unmaps it, neighbouring slots, the rest of the
/// page, the whole pool. Its writes are ordinary DMA of a [`SimDevice`] (within its mask;
/// a refused write is recorded as the device's fault).
pub struct Adversary {
    device: SimDevice,
    targets: std::sync::Mutex<Vec<(BusAddr, usize)>>,
    strikes: std::sync::atomic::AtomicU64,
}

impl Adversary {
    /// An adversary writing through `device`, with no targets yet.
    #[must_use]
    pub fn new(device: SimDevice) -> Arc<Self> {
        Arc::new(Self {
            device,
            targets: std::sync::Mutex::new(Vec::new()),
            strikes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Sets the bus ranges it writes.
    pub fn aim(&self, targets: Vec<(BusAddr, usize)>) {
        *self
            .targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = targets;
    }

    /// Writes a fresh pattern (seeded by the strike count) over every target now.
    pub fn strike(&self) {
        let n = self
            .strikes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let targets = self
            .targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (i, (bus, len)) in targets.into_iter().enumerate() {
            // CAST: usize fits u64.
            let seed = 0xad00_0000 ^ (n << 8) ^ i as u64;
            let data: Vec<u8> = (0..len).map(|j| crate::pattern_byte(seed, j)).collect();
            let _ = self.device.write(bus, &data);
        }
    }

    /// How many times it struck.
    #[must_use]
    pub fn strikes(&self) -> u64 {
        self.strikes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The device it writes through.
    #[must_use]
    pub fn device(&self) -> &SimDevice {
        &self.device
    }

    /// Makes it strike at every copy point of the CPU's copies on `xen` (until
    /// `xen.on_cpu_copy(None)`).
    pub fn install(self: &Arc<Self>, xen: &crate::Xen) {
        let me = Arc::clone(self);
        xen.on_cpu_copy(Some(Arc::new(move |_| me.strike())));
    }
}

impl fmt::Debug for Adversary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adversary")
            .field("device", &self.device)
            .field("strikes", &self.strikes())
            .finish_non_exhaustive()
    }
}
