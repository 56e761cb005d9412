//! Scatter-gather lists: Linux's `xen_swiotlb_map_sg` and friends.

use super::DmaEngine;
use super::error::{DmaError, SgError};
use super::pages::PageAllocator;
use super::stats::bump;
use crate::addr::{BusAddr, PhysAddr};
use crate::dma::{Device, DmaAttrs, DmaDirection};
use crate::hooks::{PhysMemory, Platform};
use crate::pool::Slot;

/// One entry of a scatter-gather list: the CPU side (`phys`, `length`) the caller fills in,
/// and the device side (`dma_address`, `dma_length`) that
/// [`map_sg`](DmaEngine::map_sg) fills in (Linux's `struct scatterlist` without the
/// chaining).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SgEntry {
    /// The physical address of the buffer.
    pub phys: PhysAddr,
    /// The buffer's length in bytes.
    pub length: usize,
    /// The bus address the device uses, after a successful map.
    pub dma_address: BusAddr,
    /// The mapped length (Linux's `sg_dma_len`), after a successful map; zero otherwise.
    pub dma_length: usize,
}

impl SgEntry {
    /// An unmapped entry for `length` bytes at `phys`.
    #[must_use]
    pub const fn new(phys: PhysAddr, length: usize) -> Self {
        Self {
            phys,
            length,
            dma_address: BusAddr::ZERO,
            dma_length: 0,
        }
    }
}

impl<P, M, S, A, G> DmaEngine<P, M, S, A, G>
where
    P: Platform,
    M: PhysMemory,
    S: AsRef<[Slot]>,
    A: PageAllocator,
    G: super::PoolGrowth<M>,
{
    /// Linux's `xen_swiotlb_map_sg`: maps every entry with [`map_page`](Self::map_page),
    /// filling in `dma_address` and `dma_length`, and returns the number of entries mapped
    /// (all of them; entries are never merged).
    ///
    /// On the first failure, the entries mapped before it are unmapped again (with
    /// [`DmaAttrs::SKIP_CPU_SYNC`]: the device never saw them), the `dma_length` of every
    /// entry up to the failing one is set to zero (Linux zeroes only the first), and the
    /// error says which entry failed and why.
    ///
    /// # Errors
    ///
    /// [`SgError`] with the failing entry's index and [`DmaError`].
    ///
    /// # Safety
    ///
    /// As [`map_page`](Self::map_page), for every entry's buffer.
    ///
    /// # Examples
    ///
    /// Two entries for a 32-bit device: the one below 4 GiB is mapped directly, the one above
    /// is bounced.
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::engine::SgEntry;
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    /// m.write(m.low(0), &[1; 100]);
    /// m.write(m.high(0), &[2; 200]);
    /// let mut sg = [SgEntry::new(m.low(0), 100), SgEntry::new(m.high(0), 200)];
    /// // SAFETY: both buffers are the machine's memory, covered by no reference until the unmap.
    /// assert_eq!(unsafe { engine.map_sg(&dev, &mut sg, dir, none) }?, 2);
    /// assert_eq!(sg[0].dma_address.as_u64(), m.low(0).as_u64());
    /// assert!(m.bounced(sg[1].dma_address));
    /// assert_eq!(m.device_read(sg[1].dma_address, 200), [2; 200]);
    /// engine.unmap_sg(&dev, &sg, dir, none)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn map_sg(
        &self,
        dev: &Device,
        sg: &mut [SgEntry],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<usize, SgError> {
        for i in 0..sg.len() {
            let e = sg[i];
            // SAFETY: the caller's promise covers every entry.
            match unsafe { self.map_page(dev, e.phys, e.length, dir, attrs) } {
                Ok(bus) => {
                    sg[i].dma_address = bus;
                    sg[i].dma_length = e.length;
                }
                Err(source) => {
                    let mut failures = 1;
                    for done in &mut sg[..i] {
                        let skip = attrs | DmaAttrs::SKIP_CPU_SYNC;
                        if self
                            .unmap_page(dev, done.dma_address, done.dma_length, dir, skip)
                            .is_err()
                        {
                            failures += 1;
                        }
                        done.dma_length = 0;
                    }
                    sg[i].dma_length = 0;
                    bump(&self.counters().sg_failures);
                    return Err(SgError {
                        index: i,
                        source,
                        unwound: i,
                        failures,
                    });
                }
            }
        }
        bump(&self.counters().sg_maps);
        Ok(sg.len())
    }

    /// Linux's `xen_swiotlb_unmap_sg`: [`unmap_page`](Self::unmap_page) of every entry's
    /// `dma_address` and `dma_length`. Goes on after a failing entry.
    ///
    /// # Errors
    ///
    /// [`SgError`] with the first failing entry and the number that failed.
    ///
    /// # Examples
    ///
    /// The device fills both entries of a receive list; the unmap copies the bounced one back.
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::engine::SgEntry;
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::FromDevice, DmaAttrs::empty());
    /// let mut sg = [SgEntry::new(m.low(1), 64), SgEntry::new(m.high(1), 64)];
    /// // SAFETY: both buffers are the machine's memory, covered by no reference until the unmap.
    /// unsafe { engine.map_sg(&dev, &mut sg, dir, none) }?;
    /// for (i, e) in sg.iter().enumerate() {
    ///     m.device_write(e.dma_address, &[i as u8 + 1; 64]);
    /// }
    /// engine.unmap_sg(&dev, &sg, dir, none)?;
    /// assert_eq!(m.read(m.low(1), 64), [1; 64]);
    /// assert_eq!(m.read(m.high(1), 64), [2; 64]); // copied back from the bounce buffer
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unmap_sg(
        &self,
        dev: &Device,
        sg: &[SgEntry],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), SgError> {
        each(sg, |e| {
            self.unmap_page(dev, e.dma_address, e.dma_length, dir, attrs)
        })
    }

    /// Linux's `xen_swiotlb_sync_sg_for_cpu`:
    /// [`sync_single_for_cpu`](Self::sync_single_for_cpu) of every entry's `dma_address`
    /// and `length`. Goes on after a failing entry.
    ///
    /// # Errors
    ///
    /// [`SgError`] with the first failing entry and the number that failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::engine::SgEntry;
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::FromDevice, DmaAttrs::empty());
    /// let mut sg = [SgEntry::new(m.high(4), 32), SgEntry::new(m.high(5), 32)];
    /// // SAFETY: both buffers are the machine's memory, covered by no reference until the unmap.
    /// unsafe { engine.map_sg(&dev, &mut sg, dir, none) }?;
    /// m.device_write(sg[1].dma_address, &[7; 32]);
    /// engine.sync_sg_for_cpu(&dev, &sg, dir)?; // the CPU may now read both buffers
    /// assert_eq!(m.read(m.high(5), 32), [7; 32]);
    /// engine.unmap_sg(&dev, &sg, dir, none)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sync_sg_for_cpu(
        &self,
        dev: &Device,
        sg: &[SgEntry],
        dir: DmaDirection,
    ) -> Result<(), SgError> {
        each(sg, |e| {
            self.sync_single_for_cpu(dev, e.dma_address, e.length, dir)
        })
    }

    /// Linux's `xen_swiotlb_sync_sg_for_device`:
    /// [`sync_single_for_device`](Self::sync_single_for_device) of every entry's
    /// `dma_address` and `length`. Goes on after a failing entry.
    ///
    /// # Errors
    ///
    /// [`SgError`] with the first failing entry and the number that failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::engine::SgEntry;
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    /// let mut sg = [SgEntry::new(m.high(6), 32)];
    /// // SAFETY: the buffer is the machine's memory, covered by no reference until the unmap.
    /// unsafe { engine.map_sg(&dev, &mut sg, dir, none) }?;
    /// engine.sync_sg_for_cpu(&dev, &sg, dir)?; // the CPU owns the buffer again
    /// m.write(m.high(6), &[9; 32]);
    /// engine.sync_sg_for_device(&dev, &sg, dir)?;
    /// assert_eq!(m.device_read(sg[0].dma_address, 32), [9; 32]);
    /// engine.unmap_sg(&dev, &sg, dir, none)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sync_sg_for_device(
        &self,
        dev: &Device,
        sg: &[SgEntry],
        dir: DmaDirection,
    ) -> Result<(), SgError> {
        each(sg, |e| {
            self.sync_single_for_device(dev, e.dma_address, e.length, dir)
        })
    }
}

/// Runs `f` on every entry and reports the first failure and the count.
fn each(
    sg: &[SgEntry],
    mut f: impl FnMut(&SgEntry) -> Result<(), DmaError>,
) -> Result<(), SgError> {
    let mut first: Option<(usize, DmaError)> = None;
    let mut failures = 0;
    for (i, e) in sg.iter().enumerate() {
        if let Err(err) = f(e) {
            failures += 1;
            first.get_or_insert((i, err));
        }
    }
    match first {
        None => Ok(()),
        Some((index, source)) => Err(SgError {
            index,
            source,
            unwound: 0,
            failures,
        }),
    }
}
