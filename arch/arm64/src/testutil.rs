//! Helpers shared by the unit tests.

use crate::foreign::{EntryStorage, ForeignEntry, ForeignTable, ForeignTableError};
use swiotlb_core::{Bfn, Pfn};

/// Safe access to the table's unsafe mutators for tables that no device ever sees.
pub(crate) trait TableTestExt {
    /// [`ForeignTable::insert`].
    fn ins(&self, pfn: Pfn, mfn: Bfn, nr_pages: u64) -> Result<(), ForeignTableError>;
    /// [`ForeignTable::remove`].
    fn rm(&self, pfn: Pfn) -> Result<ForeignEntry, ForeignTableError>;
    /// [`ForeignTable::clear`].
    fn clr(&self);
}

impl<S: EntryStorage> TableTestExt for ForeignTable<S> {
    fn ins(&self, pfn: Pfn, mfn: Bfn, nr_pages: u64) -> Result<(), ForeignTableError> {
        // SAFETY: unit-test tables only answer lookups; no device uses their translations.
        unsafe { self.insert(pfn, mfn, nr_pages) }
    }

    fn rm(&self, pfn: Pfn) -> Result<ForeignEntry, ForeignTableError> {
        // SAFETY: as in `ins`.
        unsafe { self.remove(pfn) }
    }

    fn clr(&self) {
        // SAFETY: as in `ins`.
        unsafe { self.clear() }
    }
}
