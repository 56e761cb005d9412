//! Live mappings per device and their age: what tells a leak from a burst.
//!
//! A pool given a clock ([`BouncePool::set_mapping_clock`]) records, for each mapping or
//! coherent allocation it makes, the device's [`tag`](crate::Device::tag) and the clock's
//! reading, in the tail of its metadata storage ([`slots_with_ages`] slots instead of
//! `nslabs`): one record per first data slot, two records per tail [`Slot`], written under
//! the area lock the map holds anyway. Nothing is shared between CPUs beyond what the map
//! already writes: a 64-byte line of records holds those of four consecutive slots (of one
//! area when the storage is 64-byte aligned), so it is written only by the holder of that
//! area's lock, as the slots' own metadata is (no pool-wide counter). Nothing is written at unmap (a record counts only while its slot is a live
//! first data slot), and without a clock the map pays one predictable branch.
//!
//! [`BouncePool::live_mappings`] walks the live first data slots under each area's lock in
//! turn (a cold path) and sums them per device: mappings, bytes and the age of the oldest.
//! A leak is a device whose oldest age keeps growing from one report to the next; a burst
//! has many young mappings and an oldest age that stays small.

use super::BouncePool;
use super::area::{Slot, state};
use crate::hooks::PhysMemory;
use crate::lock::atomic::Ordering;
use arrayvec::ArrayVec;
use core::fmt;

/// The clock of the mapping records: any monotonic count (TSC cycles, `CNTVCT_EL0` ticks,
/// nanoseconds); ages are reported in its unit. Called on the map path, with an area lock
/// not yet taken but possibly in interrupt context: it must be safe there and cheap (a
/// counter register read).
pub type MappingClock = fn() -> u64;

/// The metadata storage a pool of `nslabs` slots needs to record its mappings' devices and
/// ages ([`BouncePool::set_mapping_clock`]): `nslabs` slots for the pool and one more per two
/// slots for the records (48 bytes per 2 KiB slot instead of 32).
#[must_use]
pub const fn slots_with_ages(nslabs: usize) -> usize {
    nslabs + nslabs.div_ceil(2)
}

/// Distinct devices a [`LiveReport`] lists one by one; the mappings of any further device
/// are summed in [`LiveReport::other`].
pub const MAX_REPORTED_DEVICES: usize = 16;

/// The live mappings of one device ([`LiveReport`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceLive {
    /// The device's [`tag`](crate::Device::tag).
    pub tag: u16,
    /// Live streaming mappings and coherent allocations of the pool(s).
    pub mappings: usize,
    /// Their bytes (the sizes mapped or allocated).
    pub bytes: u64,
    /// The age of the oldest, in the clock's unit (the report's `now` less the clock's
    /// reading at its map; 0 if the clock read later than `now`).
    pub oldest: u64,
}

impl DeviceLive {
    fn add(&mut self, bytes: u64, age: u64) {
        self.mappings += 1;
        self.bytes += bytes;
        self.oldest = self.oldest.max(age);
    }

    fn merge(&mut self, o: &DeviceLive) {
        self.mappings += o.mappings;
        self.bytes += o.bytes;
        self.oldest = self.oldest.max(o.oldest);
    }
}

/// The live mappings of a pool (or of an engine's pools) per device, with the age of each
/// device's oldest ([`BouncePool::live_mappings`],
/// [`DmaEngine::live_mappings`](crate::DmaEngine::live_mappings)). Allocation-free.
///
/// A snapshot: each area is read under its own lock, one after the other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LiveReport {
    /// The clock reading the ages are measured from.
    pub now: u64,
    /// The mappings of devices beyond the first [`MAX_REPORTED_DEVICES`], summed (its `tag`
    /// is 0 and means nothing).
    pub other: DeviceLive,
    devices: ArrayVec<DeviceLive, MAX_REPORTED_DEVICES>,
}

impl LiveReport {
    /// An empty report at `now`.
    #[must_use]
    pub fn new(now: u64) -> Self {
        Self {
            now,
            ..Self::default()
        }
    }

    /// The devices with live mappings, by tag.
    #[must_use]
    pub fn devices(&self) -> &[DeviceLive] {
        &self.devices
    }

    /// The entry of the device tagged `tag`, if it has live mappings in the report.
    #[must_use]
    pub fn device(&self, tag: u16) -> Option<&DeviceLive> {
        self.devices.iter().find(|d| d.tag == tag)
    }

    /// All live mappings of the report.
    #[must_use]
    pub fn mappings(&self) -> usize {
        self.devices.iter().map(|d| d.mappings).sum::<usize>() + self.other.mappings
    }

    /// The entry of `tag`, made if there is room (kept sorted by tag), else `other`.
    fn entry(&mut self, tag: u16) -> &mut DeviceLive {
        match self.devices.binary_search_by_key(&tag, |d| d.tag) {
            Ok(i) => &mut self.devices[i],
            Err(i) if !self.devices.is_full() => {
                self.devices.insert(
                    i,
                    DeviceLive {
                        tag,
                        ..DeviceLive::default()
                    },
                );
                &mut self.devices[i]
            }
            Err(_) => &mut self.other,
        }
    }

    /// Adds another report's mappings (of another pool, read with the same `now`).
    pub fn merge(&mut self, o: &LiveReport) {
        for d in &o.devices {
            self.entry(d.tag).merge(d);
        }
        self.other.merge(&o.other);
    }
}

impl fmt::Display for LiveReport {
    /// `live mappings: N`, then one line per device: `device T: M mappings, B bytes, oldest
    /// A`, and a line for the devices beyond the listed ones if any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "live mappings: {}", self.mappings())?;
        for d in &self.devices {
            write!(
                f,
                "\n  device {}: {} mappings, {} bytes, oldest {}",
                d.tag, d.mappings, d.bytes, d.oldest
            )?;
        }
        if self.other.mappings > 0 {
            let o = &self.other;
            write!(
                f,
                "\n  other devices: {} mappings, {} bytes, oldest {}",
                o.mappings, o.bytes, o.oldest
            )?;
        }
        Ok(())
    }
}

/// Records in `tail` (the storage after the pool's slots) that the mapping whose first data
/// slot is `head` is the device `tag`'s, made at `time`. The caller holds `head`'s area lock
/// (the record's two halves belong to slots `2i` and `2i + 1`, always of one area).
#[inline]
pub(super) fn record(tail: &[Slot], head: usize, tag: u16, time: u64) {
    if let Some(r) = tail.get(head / 2) {
        if head.is_multiple_of(2) {
            r.orig.store(time, Ordering::Relaxed);
            r.offset.store(tag, Ordering::Relaxed);
        } else {
            r.free_bits.store(time, Ordering::Relaxed);
            r.k.store(tag, Ordering::Relaxed);
        }
    }
}

/// The record of first data slot `head`: its device tag and map time.
fn read(tail: &[Slot], head: usize) -> Option<(u16, u64)> {
    let r = tail.get(head / 2)?;
    Some(if head.is_multiple_of(2) {
        (
            r.offset.load(Ordering::Relaxed),
            r.orig.load(Ordering::Relaxed),
        )
    } else {
        (
            r.k.load(Ordering::Relaxed),
            r.free_bits.load(Ordering::Relaxed),
        )
    })
}

impl<M: PhysMemory, S: AsRef<[Slot]>> BouncePool<M, S> {
    /// The records' storage after the pool's slots, when the pool records ages.
    pub(super) fn records(&self) -> Option<&[Slot]> {
        self.clock?;
        let tail = self.storage.as_ref().get(self.nslabs..)?;
        (tail.len() >= slots_with_ages(self.nslabs) - self.nslabs).then_some(tail)
    }

    /// Makes the pool record, for every mapping and coherent allocation from now on, its
    /// device's [`tag`](crate::Device::tag) and `clock`'s reading, for
    /// [`live_mappings`](Self::live_mappings). The storage must hold
    /// [`slots_with_ages`]`(nslabs)` slots; the records live after the first `nslabs`. Live
    /// mappings made before the call count with age 0 from the clock's zero.
    ///
    /// # Errors
    ///
    /// [`Error::StorageTooSmall`](crate::Error::StorageTooSmall) with the length needed
    /// (nothing changed).
    pub fn set_mapping_clock(&mut self, clock: MappingClock) -> Result<(), crate::Error> {
        let all = self.storage.as_ref();
        let need = slots_with_ages(self.nslabs);
        let Some(tail) = all.get(self.nslabs..need) else {
            return Err(crate::Error::StorageTooSmall {
                have: all.len(),
                need,
            });
        };
        for r in tail {
            r.orig.store(0, Ordering::Relaxed);
            r.free_bits.store(0, Ordering::Relaxed);
            r.offset.store(0, Ordering::Relaxed);
            r.k.store(0, Ordering::Relaxed);
        }
        self.clock = Some(clock);
        Ok(())
    }

    /// The pool with `clock` recording its mappings' devices and ages; see
    /// [`set_mapping_clock`](Self::set_mapping_clock).
    ///
    /// # Errors
    ///
    /// As for [`set_mapping_clock`](Self::set_mapping_clock).
    pub fn with_mapping_clock(mut self, clock: MappingClock) -> Result<Self, crate::Error> {
        self.set_mapping_clock(clock)?;
        Ok(self)
    }

    /// The clock of the mapping records, if the pool records them.
    #[must_use]
    pub fn mapping_clock(&self) -> Option<MappingClock> {
        self.clock
    }

    /// The pool's live mappings and coherent allocations per device with the age of each
    /// device's oldest at `now` (a reading of the pool's clock), read under each area's lock
    /// in turn. `None` if the pool records no ages (no
    /// [`set_mapping_clock`](Self::set_mapping_clock)) or its storage shrank. Cold: it
    /// reads every slot's state; never call it from the map path.
    #[must_use]
    pub fn live_mappings(&self, now: u64) -> Option<LiveReport> {
        let mut r = LiveReport::new(now);
        self.add_live_mappings(&mut r)?;
        Some(r)
    }

    /// Adds this pool's live mappings to `r`, whose `now` the ages are measured from.
    pub(crate) fn add_live_mappings(&self, r: &mut LiveReport) -> Option<()> {
        let tail = self.records()?;
        let slots = self.slots().ok()?;
        for (a, area) in self.areas.iter().enumerate() {
            let base = a * self.area_nslabs;
            let st = area.lock.lock();
            for (i, s) in slots[base..base + self.area_nslabs].iter().enumerate() {
                let live = matches!(
                    s.state.load(Ordering::Relaxed),
                    state::RESERVED | state::HEAD | state::UNMAPPING | state::COHERENT
                );
                if !live {
                    continue;
                }
                let Some((tag, time)) = read(tail, base + i) else {
                    continue;
                };
                let bytes = u64::from(s.size.load(Ordering::Relaxed));
                let age = r.now.saturating_sub(time);
                r.entry(tag).add(bytes, age);
            }
            drop(st);
        }
        Some(())
    }
}
