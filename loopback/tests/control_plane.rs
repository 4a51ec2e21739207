//! The guest drivers over channels the control plane opened: a Linux-like
//! VMBus client finds the vmbfs and storvsp devices behind the real server
//! and software SynIC, opens their rings (storvsp's sub-channels too), the
//! vmbfs client reads every file and storvsc every sector, compared with
//! the bytes they came from, and UNLOAD is answered at the end.

use std::sync::Arc;

use vmbdev_block::{BlockDevice, MemoryDisk};
use vmbdev_device::bus::VmbusDevice;
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{Controller, LunAddress, StorvspConfig, StorvspDevice};
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_fs::MemoryTree;
use vmbdev_guest::storvsc::{DriverConfig, Storvsc};
use vmbdev_guest::vmbus::Direction;
use vmbdev_loopback::bus::{BusVm, BusVmConfig, BusVmbfsClient};
use vmbdev_protocol::vmbus::{MessageType, Version};

fn content(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8 ^ seed as u8)
        .collect()
}

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("EFI/BOOT/BOOTX64.EFI", content(123_457, 1)),
        ("EFI/empty.txt", Vec::new()),
        ("a/b/c/deep.bin", content(12_276, 2)),
        ("large.bin", content(3 << 20, 3)),
    ]
}

fn vmbfs_device(files: &[(&'static str, Vec<u8>)]) -> Arc<VmbfsDevice> {
    let mut tree = MemoryTree::builder();
    for (path, data) in files {
        tree.add_file(path, data.clone()).unwrap();
    }
    Arc::new(VmbfsDevice::new(VmbfsConfig {
        tree: Arc::new(tree.build()),
        rdma_enabled: true,
    }))
}

fn trace_types(vm: &BusVm, direction: Direction) -> Vec<MessageType> {
    vm.trace()
        .iter()
        .filter(|e| e.direction == direction)
        .map(|e| e.message_type)
        .collect()
}

#[test]
fn vmbfs_reads_every_file_over_a_channel_the_control_plane_opened() {
    let files = files();
    let device = vmbfs_device(&files);
    let vm = BusVm::new(BusVmConfig {
        trace: true,
        ..BusVmConfig::default()
    })
    .unwrap();
    let relid = vm.add_device(device.clone()).unwrap();
    let (version, offers) = vm.connect().unwrap();
    assert_eq!(version, Version::V5_3);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].instance_id, device.offer().instance_id);
    assert_eq!(
        vm.device_name(relid).as_deref(),
        Some(&*device.offer().name)
    );

    for rdma in [false, true] {
        let mut client = BusVmbfsClient::new(vm.vmbfs_bus(relid), rdma);
        futures_lite::future::block_on(async {
            client.open_volume().await.unwrap();
            assert!(vm.host_is_open(relid));
            for (path, data) in &files {
                assert_eq!(&client.read_all(path).await.unwrap(), data, "{path}");
            }
            client.close().await.unwrap();
        });
        assert!(!vm.host_is_open(relid));
        assert_eq!(vm.host_gpadl_count(), 0, "the ring was torn down");
    }
    vm.unload().unwrap();
    assert_eq!(vm.host_version(), None);

    use MessageType as M;
    let sent = trace_types(&vm, Direction::ToHost);
    let once = [
        M::GPADL_HEADER,
        M::OPEN_CHANNEL,
        M::CLOSE_CHANNEL,
        M::GPADL_TEARDOWN,
    ];
    let mut expected = vec![M::INITIATE_CONTACT, M::REQUEST_OFFERS];
    expected.extend(once);
    expected.extend(once);
    expected.push(M::UNLOAD);
    // The vmbfs ring (2 × (1 + its data pages)) fits in one header.
    let ring_pages = 2 + 2 * u64::from(device.offer().incoming_ring_pages);
    assert!(ring_pages <= 26, "{ring_pages}");
    assert_eq!(sent, expected);
    let received = trace_types(&vm, Direction::ToGuest);
    let once = [M::GPADL_CREATED, M::OPEN_CHANNEL_RESULT, M::GPADL_TORNDOWN];
    let mut expected = vec![
        M::VERSION_RESPONSE,
        M::OFFER_CHANNEL,
        M::ALL_OFFERS_DELIVERED,
    ];
    expected.extend(once);
    expected.extend(once);
    expected.push(M::UNLOAD_RESPONSE);
    assert_eq!(received, expected);
}

#[test]
fn storvsc_reads_every_sector_over_primary_and_sub_channels() {
    let bytes = content(4 << 20, 9);
    let disk: Arc<dyn BlockDevice> = Arc::new(MemoryDisk::new(bytes.clone()));
    let controller = Arc::new(Controller::new());
    controller.insert(
        LunAddress {
            path: 0,
            target: 0,
            lun: 0,
        },
        Arc::new(ScsiDisk::new(disk)),
    );
    let config = StorvspConfig {
        max_sub_channels: 3,
        multi_channel: true,
        ..StorvspConfig::default()
    };
    let device = Arc::new(StorvspDevice::new(config, controller).unwrap());
    let vm = BusVm::new(BusVmConfig {
        trace: true,
        ring_pages: Some(16),
        executor_threads: 2,
        ..BusVmConfig::default()
    })
    .unwrap();
    let relid = vm.add_device(device.clone()).unwrap();
    vm.connect().unwrap();
    let (primary, _) = vm.open(relid).unwrap();
    let opener = vm.storvsc_opener(relid).unwrap();
    let driver = futures_lite::future::block_on(Storvsc::connect(
        primary,
        vm.memory().clone(),
        vm.pages().clone(),
        opener.as_ref(),
        &DriverConfig {
            cpus: 4,
            ..DriverConfig::default()
        },
    ))
    .unwrap();
    assert_eq!(driver.channel_count(), 4, "the primary and 3 sub-channels");
    let offers = vm.offers();
    let mut indexes: Vec<u16> = offers.iter().map(|o| o.sub_channel_index).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, [0, 1, 2, 3]);
    assert!(
        offers
            .iter()
            .all(|o| o.instance_id == device.offer().instance_id)
    );
    let relids: Vec<u32> = offers.iter().map(|o| o.relid).collect();
    assert_eq!(vm.open_relids(), relids);
    assert!(relids.iter().all(|&r| vm.host_is_open(r)));

    let disk = driver.disk(0).unwrap();
    let sectors = (bytes.len() / 512) as u64;
    let mut read = Vec::with_capacity(bytes.len());
    futures_lite::future::block_on(async {
        for lba in (0..sectors).step_by(256) {
            read.extend(disk.read(lba, 256.min(sectors - lba)).await.unwrap());
        }
    });
    assert!(read == bytes, "every sector as the disk holds it");
    drop(disk);
    drop(driver);

    vm.unload().unwrap();
    assert_eq!(vm.host_version(), None);
    assert_eq!(vm.host_gpadl_count(), 0);
    assert!(relids.iter().all(|&r| !vm.host_is_open(r)));
    let received = trace_types(&vm, Direction::ToGuest);
    assert_eq!(received.last(), Some(&MessageType::UNLOAD_RESPONSE));
    let offers = received
        .iter()
        .filter(|&&t| t == MessageType::OFFER_CHANNEL)
        .count();
    assert_eq!(offers, 4);
    let opens = received
        .iter()
        .filter(|&&t| t == MessageType::OPEN_CHANNEL_RESULT)
        .count();
    assert_eq!(opens, 4);
    // Rings of 2 × 17 pages: each GPADL is a header of 26 pfns and a body
    // of the other 8.
    let sent = trace_types(&vm, Direction::ToHost);
    let count = |kind| sent.iter().filter(|&&t| t == kind).count();
    assert_eq!(count(MessageType::GPADL_HEADER), 4);
    assert_eq!(count(MessageType::GPADL_BODY), 4);
}
