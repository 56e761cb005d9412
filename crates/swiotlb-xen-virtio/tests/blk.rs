//! virtio-drivers' real `VirtIOBlk` driver through `SwiotlbHal`, on a simulated x86 PV dom0
//! and an arm64 dom0, against a small virtio-blk device over the simulator's memory: the
//! device reads the split virtqueue (descriptors, available ring) and the requests at the
//! bus addresses the adapter gave, through a simulated 32-bit DMA device (which faults on
//! anything outside its mask), serves them from a RAM disk and writes the data, the status
//! and the used ring back the same way.

#[macro_use]
mod support;

use support::*;
use swiotlb_core::engine::BounceReason;
use swiotlb_core::{BusAddr, DmaMask};
use swiotlb_xen_virtio::SwiotlbHal;
use virtio_drivers::device::blk::{SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr, Result};
use xen_sim::SimDevice;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// `VIRTIO_F_VERSION_1`: the only feature the device offers.
const VERSION_1: u64 = 1 << 32;
/// `VIRTQ_DESC_F_NEXT`.
const DESC_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
const DESC_WRITE: u16 = 2;
/// Requests `VIRTIO_BLK_T_IN` and `VIRTIO_BLK_T_OUT`.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
/// Status `VIRTIO_BLK_S_OK` and `VIRTIO_BLK_S_UNSUPP`.
const S_OK: u8 = 0;
const S_UNSUPP: u8 = 2;
/// Sectors of the RAM disk.
const SECTORS: usize = 64;

/// One split virtqueue as the driver set it up.
#[derive(Clone, Copy, Debug)]
struct Queue {
    size: u16,
    desc: u64,
    driver: u64,
    device: u64,
    last_avail: u16,
}

/// A virtio-blk device (modern layout, one queue) whose DMA goes through a simulated
/// device; it serves every request inside `notify`.
struct FakeBlk<M: Machine> {
    world: &'static World<M>,
    status: DeviceStatus,
    config: [u8; 64],
    queue: Option<Queue>,
    disk: Vec<u8>,
    requests: usize,
}

impl<M: Machine> FakeBlk<M> {
    fn new(world: &'static World<M>) -> Self {
        let mut config = [0u8; 64];
        // CAST: a small constant.
        config[..8].copy_from_slice(&(SECTORS as u64).to_le_bytes());
        Self {
            world,
            status: DeviceStatus::empty(),
            config,
            queue: None,
            disk: pattern(99, SECTORS * SECTOR_SIZE),
            requests: 0,
        }
    }

    fn read(dev: &SimDevice, bus: u64, len: usize) -> Vec<u8> {
        dev.read(BusAddr::new(bus), len)
            .unwrap_or_else(|f| panic!("device read at {bus:#x}: {f:?}"))
    }

    fn write(dev: &SimDevice, bus: u64, data: &[u8]) {
        dev.write(BusAddr::new(bus), data)
            .unwrap_or_else(|f| panic!("device write at {bus:#x}: {f:?}"));
    }

    fn u16_at(dev: &SimDevice, bus: u64) -> u16 {
        u16::from_le_bytes(Self::read(dev, bus, 2).try_into().unwrap())
    }

    /// Serves every request the driver made available.
    fn serve(&mut self, dev: &SimDevice) {
        let q = self.queue.as_mut().expect("a queue is set up");
        let avail = Self::u16_at(dev, q.driver + 2);
        while q.last_avail != avail {
            let slot = u64::from(q.last_avail % q.size);
            let head = Self::u16_at(dev, q.driver + 4 + 2 * slot);
            // The chain: (bus address, length, device-writable).
            let mut chain = Vec::new();
            let mut i = head;
            loop {
                let d = Self::read(dev, q.desc + 16 * u64::from(i), 16);
                let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
                let len = u32::from_le_bytes(d[8..12].try_into().unwrap()) as usize;
                let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
                chain.push((addr, len, flags & DESC_WRITE != 0));
                if flags & DESC_NEXT == 0 {
                    break;
                }
                i = u16::from_le_bytes(d[14..16].try_into().unwrap());
            }
            let (hdr, data, status) =
                (chain[0], &chain[1..chain.len() - 1], chain[chain.len() - 1]);
            assert!(
                !hdr.2 && status.2 && status.1 == 1,
                "request layout {chain:?}"
            );
            let h = Self::read(dev, hdr.0, 16);
            let kind = u32::from_le_bytes(h[0..4].try_into().unwrap());
            let sector = u64::from_le_bytes(h[8..16].try_into().unwrap()) as usize;
            let mut at = sector * SECTOR_SIZE;
            let mut written = 1;
            let mut code = S_OK;
            for &(addr, len, writable) in data {
                match (kind, writable) {
                    (T_IN, true) => {
                        Self::write(dev, addr, &self.disk[at..at + len]);
                        written += len;
                    }
                    (T_OUT, false) => {
                        self.disk[at..at + len].copy_from_slice(&Self::read(dev, addr, len));
                    }
                    _ => code = S_UNSUPP,
                }
                at += len;
            }
            Self::write(dev, status.0, &[code]);
            let used = Self::u16_at(dev, q.device + 2);
            let elem = q.device + 4 + 8 * u64::from(used % q.size);
            // CAST: request sizes are small.
            let mut e = u32::from(head).to_le_bytes().to_vec();
            e.extend((written as u32).to_le_bytes());
            Self::write(dev, elem, &e);
            Self::write(dev, q.device + 2, &used.wrapping_add(1).to_le_bytes());
            q.last_avail = q.last_avail.wrapping_add(1);
            self.requests += 1;
        }
    }
}

impl<M: Machine> Transport for FakeBlk<M> {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }

    fn read_device_features(&mut self) -> u64 {
        VERSION_1
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        assert_eq!(driver_features, VERSION_1);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        assert_eq!(queue, 0);
        16
    }

    fn notify(&mut self, queue: u16) {
        assert_eq!(queue, 0);
        let world = self.world;
        world.as_device(|dev| self.serve(dev));
    }

    fn get_status(&self) -> DeviceStatus {
        self.status
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.status = status;
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        assert_eq!(guest_page_size, 4096);
    }

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        assert_eq!(queue, 0);
        self.queue = Some(Queue {
            size: u16::try_from(size).unwrap(),
            desc: descriptors,
            driver: driver_area,
            device: device_area,
            last_avail: 0,
        });
    }

    fn queue_unset(&mut self, queue: u16) {
        assert_eq!(queue, 0);
        self.queue = None;
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        queue == 0 && self.queue.is_some()
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }

    fn read_config_generation(&self) -> u32 {
        0
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T> {
        let end = offset + size_of::<T>();
        T::read_from_bytes(
            self.config
                .get(offset..end)
                .ok_or(Error::ConfigSpaceTooSmall)?,
        )
        .map_err(|_| Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<()> {
        let _ = (offset, value);
        Err(Error::Unsupported)
    }
}

/// Reads and writes sectors through `VirtIOBlk<SwiotlbHal<K>>` and checks every byte, the
/// direct and bounced maps, and that everything is given back.
fn blk_reads_and_writes_sectors<K: HasWorld>() {
    let w = K::world();
    let free_before = w.m.xen().free_frames();
    let mut blk =
        VirtIOBlk::<SwiotlbHal<K>, _>::new(FakeBlk::new(w)).expect("the driver initialises");
    assert_eq!(blk.capacity(), SECTORS as u64);
    assert!(
        w.engine.pages().live() > 0,
        "the virtqueue is in coherent memory"
    );

    // A buffer in dom0 RAM below 4 GiB (mapped directly) and one outside the linear map
    // (always bounced); the request headers and status bytes on virtio-drivers' stack are
    // bounced too.
    let low = loop {
        let (phys, ram) = w.ram(1);
        if w.m.machine(phys) < 1 << 32 {
            break &mut ram[..2 * SECTOR_SIZE];
        }
    };
    let mut host = vec![0u8; 2 * SECTOR_SIZE];

    // Read sectors 3 and 4 into each.
    let direct_before = w.engine.stats().direct_maps;
    blk.read_blocks(3, low).expect("read into dom0 RAM");
    same(low, &disk_sectors(3, 2), "sectors read directly");
    assert_eq!(w.engine.stats().direct_maps, direct_before + 1);
    blk.read_blocks(3, &mut host)
        .expect("read into host memory");
    same(&host, &disk_sectors(3, 2), "sectors read through the pool");

    // Write new bytes from each and read them back the other way.
    let a = pattern(1, 2 * SECTOR_SIZE);
    let b = pattern(2, 2 * SECTOR_SIZE);
    low.copy_from_slice(&a);
    blk.write_blocks(10, low).expect("write from dom0 RAM");
    host.copy_from_slice(&b);
    blk.write_blocks(20, &host).expect("write from host memory");
    blk.read_blocks(10, &mut host).expect("read back");
    same(&host, &a, "sectors 10-11");
    blk.read_blocks(20, low).expect("read back");
    same(low, &b, "sectors 20-21");
    w.check();
    assert_eq!(pool_used(&w.engine), 0, "every bounce was given back");

    let st = w.engine.stats();
    assert!(st.direct_maps >= 3, "{st:?}");
    // Header and status of each of the six requests, and the three host-memory buffers.
    assert_eq!(
        st.bounced_by_reason[BounceReason::Untranslatable.index()],
        6 * 2 + 3,
        "{st:?}"
    );
    assert_eq!(st.map_failures + st.unmap_sync_failures, 0);

    // Dropping the driver frees the virtqueue (virtio-drivers asserts that `dma_dealloc`
    // succeeds).
    drop(blk);
    assert_eq!(w.engine.pages().live(), 0);
    assert_eq!(
        w.m.xen().free_frames(),
        free_before,
        "no machine frame lost"
    );
    w.check();
}

#[test]
fn virtio_blk_reads_and_writes_sectors_through_the_adapter_on_x86_pv() {
    kernel!(K, Pv, DmaMask::BITS_32);
    blk_reads_and_writes_sectors::<K>();
}

#[test]
fn virtio_blk_reads_and_writes_sectors_through_the_adapter_on_arm64() {
    kernel!(K, Arm, DmaMask::BITS_32);
    blk_reads_and_writes_sectors::<K>();
}

/// `n` sectors from `first` of the RAM disk's initial contents.
fn disk_sectors(first: usize, n: usize) -> Vec<u8> {
    pattern(99, SECTORS * SECTOR_SIZE)[first * SECTOR_SIZE..(first + n) * SECTOR_SIZE].to_vec()
}
