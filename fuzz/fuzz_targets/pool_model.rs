//! The bounce pool driven by arbitrary operation sequences against its model (the model of
//! `crates/swiotlb-core/tests/model.rs`, shared through `tests/common/model.rs`): after every
//! step the pool's invariants hold, every live mapping's original and bounce bytes are what
//! the model says, and the slot count matches Linux's formula.

#![no_main]

#[path = "../../crates/swiotlb-core/tests/common/mod.rs"]
mod common;

use common::model::{Op, run};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ops = Op::decode_all(data);
    if let Err(e) = run(&ops) {
        panic!("the pool disagrees with the model: {e}\n{ops:?}");
    }
});
