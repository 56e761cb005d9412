//! The guest's traffic: a seeded stream of network packets and block requests, and the bytes
//! each one carries.
//!
//! Everything here is deterministic in the seed, so a failing run can be repeated exactly.

/// A small, fast PRNG (splitmix64): deterministic on every host.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo <= hi);
        // CAST: the span is a usize, so the remainder fits one.
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// Fills `buf` with the payload of transfer `id` of the run seeded `seed`.
pub fn fill_payload(seed: u64, id: u64, buf: &mut [u8]) {
    let mut rng = Rng::new(seed ^ id.wrapping_mul(0xd134_2543_de82_ef95));
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let last = rng.next_u64().to_le_bytes();
    rest.copy_from_slice(&last[..rest.len()]);
}

/// The payload of transfer `id`, `len` bytes.
#[must_use]
pub fn payload(seed: u64, id: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_payload(seed, id, &mut v);
    v
}

/// What a transfer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A packet the guest sends: its bytes go from a guest page, through a dom0 socket
    /// buffer, to the device (`DMA_TO_DEVICE`).
    NetTx,
    /// A packet the device receives: it writes a dom0 socket buffer (`DMA_FROM_DEVICE`), and
    /// dom0 copies it into a guest page.
    NetRx,
    /// A block write: the device reads the guest's granted pages (an sg list, `DMA_TO_DEVICE`).
    BlockWrite,
    /// A block read: the device writes the guest's granted pages (an sg list,
    /// `DMA_FROM_DEVICE`).
    BlockRead,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 4] = [Kind::NetTx, Kind::NetRx, Kind::BlockWrite, Kind::BlockRead];

    /// A short name for reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Kind::NetTx => "net tx",
            Kind::NetRx => "net rx",
            Kind::BlockWrite => "block write",
            Kind::BlockRead => "block read",
        }
    }

    /// Whether the device reads the data (the guest is the source).
    #[must_use]
    pub const fn to_device(self) -> bool {
        matches!(self, Kind::NetTx | Kind::BlockWrite)
    }

    /// Whether the transfer is a block request (an sg list of granted pages).
    #[must_use]
    pub const fn is_block(self) -> bool {
        matches!(self, Kind::BlockWrite | Kind::BlockRead)
    }
}

/// One segment of a block request: a byte range of one granted guest page, in 512-byte
/// sectors as blkif's `first_sect..=last_sect` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset in the page, a multiple of 512.
    pub offset: usize,
    /// Bytes, a multiple of 512, with `offset + len <= 4096`.
    pub len: usize,
}

/// One transfer of the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Its number in the run (also the payload's seed).
    pub id: u64,
    /// What it is.
    pub kind: Kind,
    /// Net: the packet's length. Block: the request's total length.
    pub len: usize,
    /// Net: where the packet starts in its two-page dom0 socket buffer (so some packets
    /// straddle a page boundary). Unused for block requests.
    pub skb_offset: usize,
    /// Block: the segments, one guest page each. Empty for net packets.
    pub segments: Vec<Segment>,
}

/// The smallest and largest Ethernet frames the workload sends (without FCS).
pub const NET_LEN: (usize, usize) = (64, 1514);
/// The smallest and largest block request, in bytes.
pub const BLOCK_LEN: (usize, usize) = (4096, 64 * 1024);
/// Bytes in a sector.
pub const SECTOR: usize = 512;
/// The most segments a block request has (64 KiB starting mid-page).
pub const MAX_SEGMENTS: usize = BLOCK_LEN.1 / 4096 + 1;
/// Bytes in a dom0 socket buffer (two pages).
pub const SKB_BYTES: usize = 2 * 4096;

/// The seeded stream of requests.
#[derive(Clone, Debug)]
pub struct Workload {
    rng: Rng,
    next_id: u64,
    step: u64,
}

impl Workload {
    /// One of `step` streams of run `seed` whose ids do not collide: ids `first`,
    /// `first + step`, ...
    #[must_use]
    pub fn with_ids(seed: u64, first: u64, step: u64) -> Self {
        Self {
            rng: Rng::new(seed ^ first.wrapping_mul(0xa076_1d64_78bd_642f)),
            next_id: first,
            step: step.max(1),
        }
    }

    /// The next request: half network (as many sent as received), half block (as many
    /// reads as writes).
    pub fn next_request(&mut self) -> Request {
        let id = self.next_id;
        self.next_id += self.step;
        let r = &mut self.rng;
        let kind = Kind::ALL[r.range(0, 3)];
        if kind.is_block() {
            // 4 KiB..64 KiB, whole sectors; a quarter of the requests start mid-page.
            let sectors = r.range(BLOCK_LEN.0 / SECTOR, BLOCK_LEN.1 / SECTOR);
            let mut first = if r.chance(25) { r.range(1, 7) } else { 0 };
            let mut left = sectors;
            let mut segments = Vec::new();
            while left > 0 {
                let n = left.min(8 - first);
                segments.push(Segment {
                    offset: first * SECTOR,
                    len: n * SECTOR,
                });
                left -= n;
                first = 0;
            }
            Request {
                id,
                kind,
                len: sectors * SECTOR,
                skb_offset: 0,
                segments,
            }
        } else {
            // Bimodal, as real traffic: small packets (ACKs) and full frames.
            let len = match r.range(0, 9) {
                0..=2 => r.range(NET_LEN.0, 127),
                3..=4 => r.range(128, 1023),
                _ => r.range(1024, NET_LEN.1),
            };
            // NET_IP_ALIGN-style offsets anywhere in the first page: some packets straddle.
            let skb_offset = r.range(0, 4095 / 64) * 64 + 2;
            Request {
                id,
                kind,
                len,
                skb_offset,
                segments: Vec::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_stay_within_their_limits() {
        let mut w = Workload::with_ids(7, 0, 1);
        let mut kinds = std::collections::BTreeMap::new();
        let mut straddles = 0;
        for _ in 0..4000 {
            let r = w.next_request();
            *kinds.entry(r.kind).or_insert(0) += 1;
            if r.kind.is_block() {
                assert!((BLOCK_LEN.0..=BLOCK_LEN.1).contains(&r.len));
                assert!(r.segments.len() <= MAX_SEGMENTS);
                assert_eq!(r.segments.iter().map(|s| s.len).sum::<usize>(), r.len);
                for s in &r.segments {
                    assert!(s.offset % SECTOR == 0 && s.len % SECTOR == 0 && s.len > 0);
                    assert!(s.offset + s.len <= 4096);
                }
            } else {
                assert!((NET_LEN.0..=NET_LEN.1).contains(&r.len));
                assert!(r.skb_offset + r.len <= SKB_BYTES);
                if r.skb_offset + r.len > 4096 {
                    straddles += 1;
                }
            }
        }
        assert_eq!(kinds.len(), 4);
        assert!(kinds.values().all(|&n| n > 800), "{kinds:?}");
        assert!(
            straddles > 50,
            "some packets must straddle a page: {straddles}"
        );
    }

    #[test]
    fn streams_have_distinct_ids_and_traffic() {
        let mut a = Workload::with_ids(7, 0, 2);
        let mut b = Workload::with_ids(7, 1, 2);
        let (ra, rb): (Vec<_>, Vec<_>) = (0..50)
            .map(|_| (a.next_request(), b.next_request()))
            .unzip();
        assert!(ra.iter().all(|r| r.id % 2 == 0) && rb.iter().all(|r| r.id % 2 == 1));
        assert_ne!(
            ra.iter().map(|r| r.kind).collect::<Vec<_>>(),
            rb.iter().map(|r| r.kind).collect::<Vec<_>>()
        );
    }

    #[test]
    fn payloads_are_deterministic_and_distinct() {
        assert_eq!(payload(1, 2, 100), payload(1, 2, 100));
        assert_ne!(payload(1, 2, 100), payload(1, 3, 100));
        assert_ne!(payload(1, 2, 100), payload(2, 2, 100));
        // A prefix of a longer payload is the shorter payload.
        assert_eq!(payload(1, 2, 13)[..], payload(1, 2, 100)[..13]);
    }
}
