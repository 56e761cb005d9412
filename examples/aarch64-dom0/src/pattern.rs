//! The data the domU writes into the pages it grants, and dom0's check of it.
//!
//! Each page starts with a 16-byte header (the magic, the page's index and its guest frame
//! number as the domU sees it) followed by bytes that depend on the page index and the
//! offset, so a page read at the wrong place, a shifted copy or a stale bounce buffer shows.

/// The magic at the start of every granted page.
pub const MAGIC: [u8; 8] = *b"DOMU-PG\0";

/// The size of the header.
pub const HEADER: usize = 16;

/// The byte at `offset` (at least [`HEADER`]) of page `index`.
#[must_use]
pub const fn byte(index: usize, offset: usize) -> u8 {
    // CAST: truncation to a byte is the point of the pattern.
    (index.wrapping_mul(0x3b) ^ offset.wrapping_mul(7) ^ (offset >> 8)) as u8
}

/// The byte dom0's simulated device writes back at `offset` of page `index` (a different
/// pattern, so that a transfer that did not happen shows).
#[must_use]
pub const fn reply_byte(index: usize, offset: usize) -> u8 {
    !byte(index, offset) ^ 0x5a
}

/// Fills `page` as page `index` whose guest frame number is `gfn`.
pub fn fill(page: &mut [u8], index: usize, gfn: u64) {
    page[..8].copy_from_slice(&MAGIC);
    // CAST: the index is tiny (at most a few pages).
    page[8..12].copy_from_slice(&(index as u32).to_le_bytes());
    // CAST: a guest frame number of a 48-bit IPA fits in 32 bits.
    page[12..16].copy_from_slice(&(gfn as u32).to_le_bytes());
    for (off, b) in page.iter_mut().enumerate().skip(HEADER) {
        *b = byte(index, off);
    }
}

/// What the header of a page says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The page's index.
    pub index: u32,
    /// The domU's guest frame number of the page.
    pub gfn: u32,
}

/// Reads the header, or `None` if the magic is missing.
#[must_use]
pub fn header(page: &[u8]) -> Option<Header> {
    if page.len() < HEADER || page[..8] != MAGIC {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]]);
    Some(Header {
        index: word(8),
        gfn: word(12),
    })
}

/// The first offset in `bytes` (which sit at `offset` of page `index`) that does not hold the
/// pattern, if any. `reply` selects [`reply_byte`] instead of [`byte`].
#[must_use]
pub fn first_mismatch(bytes: &[u8], index: usize, offset: usize, reply: bool) -> Option<usize> {
    bytes.iter().enumerate().find_map(|(i, &b)| {
        let off = offset + i;
        let want = if reply {
            reply_byte(index, off)
        } else {
            byte(index, off)
        };
        (b != want).then_some(off)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_differ_and_check_round_trips() {
        let mut a = [0u8; 4096];
        let mut b = [0u8; 4096];
        fill(&mut a, 0, 0x40123);
        fill(&mut b, 1, 0x40124);
        assert_ne!(a[HEADER..], b[HEADER..]);
        assert_eq!(
            header(&a),
            Some(Header {
                index: 0,
                gfn: 0x40123
            })
        );
        assert_eq!(first_mismatch(&a[HEADER..], 0, HEADER, false), None);
        assert_eq!(first_mismatch(&a[100..200], 0, 100, false), None);
        // The same bytes read as the other page, or shifted by one, do not match.
        assert!(first_mismatch(&a[HEADER..], 1, HEADER, false).is_some());
        assert!(first_mismatch(&a[101..200], 0, 100, false).is_some());
        // Nor does the reply pattern.
        assert!(first_mismatch(&a[HEADER..], 0, HEADER, true).is_some());
        a[3000] ^= 1;
        assert_eq!(first_mismatch(&a[HEADER..], 0, HEADER, false), Some(3000));
        a[0] = 0;
        assert_eq!(header(&a), None);
    }

    #[test]
    fn reply_differs_from_data_everywhere() {
        for i in 0..4 {
            for off in 0..4096 {
                assert_ne!(byte(i, off), reply_byte(i, off));
            }
        }
    }
}
