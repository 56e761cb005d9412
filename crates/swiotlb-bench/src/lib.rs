//! Benchmarks of the swiotlb pool (work in progress).
