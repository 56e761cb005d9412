//! Random map/unmap/sync/device-write sequences against a simple model: after every step the
//! pool's invariants hold, every live mapping's bytes (original and bounce) are what the
//! model says, and the slot count matches Linux's formula.

//!
//! The model itself lives in `tests/common/model.rs`, shared with the `pool_model` fuzz
//! target.

mod common;

use common::model::{BIG_MAX, NBUFS, NSLABS, Op, run};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NBUFS, 0..0x2000u64, 1..40_000usize, 0..3u8, 0..5u8, 0..4usize)
            .prop_map(|(buf, low, size, dir, kind, cpu)| Op::Map { buf, low, size, dir, kind, cpu }),
        // Beyond a segment: across joined segments, or too large.
        1 => (0..NBUFS, 0..0x2000u64, 200_000..BIG_MAX, 0..3u8, 0..5u8, 0..4usize)
            .prop_map(|(buf, low, size, dir, kind, cpu)| Op::Map { buf, low, size, dir, kind, cpu }),
        3 => (any::<usize>(), any::<bool>(), 0..3usize)
            .prop_map(|(pick, skip, extra)| Op::Unmap { pick, skip, extra }),
        1 => (any::<usize>(), any::<usize>(), 1..5000usize)
            .prop_map(|(pick, off, len)| Op::SyncCpu { pick, off, len }),
        1 => (any::<usize>(), any::<usize>(), 1..5000usize)
            .prop_map(|(pick, off, len)| Op::SyncDev { pick, off, len }),
        2 => (any::<usize>(), any::<usize>(), 1..3000usize, any::<u8>())
            .prop_map(|(pick, off, len, byte)| Op::DevWrite { pick, off, len, byte }),
        1 => (any::<usize>(), any::<usize>(), 1..3000usize, any::<u8>())
            .prop_map(|(pick, off, len, byte)| Op::CpuWrite { pick, off, len, byte }),
        1 => (0..NSLABS + 8, 0..2048u64).prop_map(|(slot, off)| Op::Bogus { slot, off }),
    ]
}

const CASES: u32 = if cfg!(miri) { 2 } else { 48 };
const MAX_OPS: usize = if cfg!(miri) { 12 } else { 80 };

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn pool_matches_model(ops in proptest::collection::vec(op(), 1..MAX_OPS)) {
        run(&ops).map_err(TestCaseError::fail)?;
    }
}
