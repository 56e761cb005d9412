//! Lookup in arm64's foreign table (`swiotlb_xen_arm64::UnboundedForeignTable`, a sorted
//! array under a reader-writer spin lock, binary search) against a `BTreeMap` keyed by first
//! frame (the obvious Rust baseline; Linux's own is an rbtree under an rwlock).
//!
//! The table holds `n` disjoint entries of 1 to 4 frames, one in every 8 frames from a base,
//! with random machine frames; the queries are 4096 random frames over the same span, so
//! about a third hit an entry. Both structures must answer every query the same
//! ([`ForeignCase::check`]); the time reported is the median per lookup.

use std::collections::BTreeMap;
use std::hint::black_box;

use swiotlb_core::{Bfn, Pfn};
use swiotlb_xen_arm64::{ForeignTableError, UnboundedForeignTable};

use crate::compare::Timing;
use crate::harness::median_ns;
use crate::rng::SplitMix64;

/// The first dom0 frame of the table's span.
const BASE_PFN: u64 = 0x10_0000;
/// Frames per entry slot in the span.
const SPACING: u64 = 8;
/// Queries per timed call.
pub const QUERIES: usize = 4096;

/// A foreign table and its `BTreeMap` twin, filled alike, with the queries to time.
pub struct ForeignCase {
    table: UnboundedForeignTable,
    btree: BTreeMap<u64, (u64, u64)>,
    queries: Vec<Pfn>,
}

impl ForeignCase {
    /// `n` entries and [`QUERIES`] queries from `seed`.
    ///
    /// # Errors
    ///
    /// If the table refuses an entry (out of memory).
    pub fn new(n: usize, seed: u64) -> Result<Self, ForeignTableError> {
        let mut rng = SplitMix64::new(seed);
        let table = UnboundedForeignTable::try_with_capacity(n)?;
        let mut btree = BTreeMap::new();
        // CAST: n fits u64.
        for i in 0..n as u64 {
            let pfn = BASE_PFN + i * SPACING + rng.range(0, 3);
            let nr = rng.range(1, 4);
            let mfn = rng.range(0x1000, 0xf_ffff_0000);
            // In increasing order, so each insert appends (the table's insert moves the
            // tail, O(n), which a random order would pay n times).
            // SAFETY: the table hands translations to no device here; it is only read.
            unsafe { table.insert(Pfn::new(pfn), Bfn::new(mfn), nr)? };
            btree.insert(pfn, (mfn, nr));
        }
        let span = n as u64 * SPACING;
        let queries = (0..QUERIES)
            .map(|_| Pfn::new(BASE_PFN + rng.range(0, span.max(1) - 1)))
            .collect();
        Ok(Self {
            table,
            btree,
            queries,
        })
    }

    /// Entries in the table.
    #[must_use]
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The baseline's answer: the machine frame of `pfn` if an entry contains it.
    #[must_use]
    pub fn btree_lookup(&self, pfn: Pfn) -> Option<Bfn> {
        let p = pfn.as_u64();
        let (&first, &(mfn, nr)) = self.btree.range(..=p).next_back()?;
        (p < first + nr).then(|| Bfn::new(mfn + (p - first)))
    }

    /// The table's answer.
    #[must_use]
    pub fn table_lookup(&self, pfn: Pfn) -> Option<Bfn> {
        self.table.lookup(pfn)
    }

    /// Checks that both answer every query alike, and returns how many hit.
    ///
    /// # Errors
    ///
    /// The first query they disagree on.
    pub fn check(&self) -> Result<usize, String> {
        let mut hits = 0;
        for &q in &self.queries {
            let (a, b) = (self.table_lookup(q), self.btree_lookup(q));
            if a != b {
                return Err(format!("{q}: table says {a:?}, BTreeMap says {b:?}"));
            }
            hits += usize::from(a.is_some());
        }
        Ok(hits)
    }

    /// Median nanoseconds per lookup: `(table, btree)`.
    #[must_use]
    pub fn time(&self, t: Timing) -> (f64, f64) {
        // CAST: QUERIES is small.
        let per = QUERIES as f64;
        let table = median_ns(
            || {
                for &q in &self.queries {
                    black_box(self.table.lookup(black_box(q)));
                }
            },
            t.batches,
            t.batch_time,
        );
        let btree = median_ns(
            || {
                for &q in &self.queries {
                    black_box(self.btree_lookup(black_box(q)));
                }
            },
            t.batches,
            t.batch_time,
        );
        (table / per, btree / per)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_btree_agree() {
        let c = ForeignCase::new(10_000, 3).unwrap();
        assert_eq!(c.len(), 10_000);
        let hits = c.check().unwrap();
        // Entries cover 2.5 of every 8 frames on average.
        assert!(hits > QUERIES / 5 && hits < QUERIES / 2, "{hits} hits");
        // The edges of an entry.
        let (&first, &(mfn, nr)) = c.btree.iter().nth(77).unwrap();
        assert_eq!(c.table_lookup(Pfn::new(first)), Some(Bfn::new(mfn)));
        assert_eq!(
            c.table_lookup(Pfn::new(first + nr - 1)),
            Some(Bfn::new(mfn + nr - 1))
        );
        assert_eq!(c.btree_lookup(Pfn::new(first + nr)), None);
        assert_eq!(c.table_lookup(Pfn::new(first + nr)), None);
        assert_eq!(c.table_lookup(Pfn::new(BASE_PFN - 1)), None);
    }
}
