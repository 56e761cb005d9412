//! A simulated Xen machine for tests (work in progress).
