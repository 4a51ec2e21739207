//! A scripted guest that drives the control plane the way a Linux 6.1
//! VMBus driver does (contact, offers, GPADL, open, I/O, close, teardown,
//! unload) against the vmbfs and storvsp devices on loopback memory, and
//! the guest drivers' own I/O over the channels it opened.

mod common;

use std::io::Write;
use std::sync::Arc;

use common::*;
use futures_lite::future::block_on;
use vmbdev_block::{BlockDevice, RawFile};
use vmbdev_device::bus::VmbusDevice;
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{Controller, LunAddress, StorvspConfig, StorvspDevice};
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_fs::MemoryTree;
use vmbdev_guest::storvsc::driver::NoSubChannels;
use vmbdev_guest::storvsc::{DriverConfig, Storvsc};
use vmbdev_guest::vmbfs as client;
use vmbdev_ring::{Endpoint, PageAllocator, PipeMessage, Side};
use vmbdev_vmbus::ServerConfig;
use vmbdev_vmbus::protocol::{
    CHANNEL_FLAG_NAMED_PIPE, MessageType, PIPE_MODE_MESSAGE, STATUS_SUCCESS, Version,
};
use zerocopy::FromBytes;

const FILE: &[u8] = b"served over a channel the control plane opened\n";

fn vmbfs_device() -> Arc<VmbfsDevice> {
    let mut tree = MemoryTree::builder();
    tree.add_file("EFI/hello.txt", FILE.to_vec()).unwrap();
    Arc::new(VmbfsDevice::new(VmbfsConfig {
        tree: Arc::new(tree.build()),
        rdma_enabled: false,
    }))
}

/// A storvsp device with one 1 MiB disk of known bytes, and those bytes.
fn storvsp_device(dir: &tempfile::TempDir, config: StorvspConfig) -> (Arc<StorvspDevice>, Vec<u8>) {
    let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let path = dir.path().join("disk.raw");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let disk: Arc<dyn BlockDevice> = Arc::new(RawFile::open_with_sector_size(&path, 512).unwrap());
    let controller = Arc::new(Controller::new());
    let lun = LunAddress {
        path: 0,
        target: 0,
        lun: 0,
    };
    controller.insert(lun, Arc::new(ScsiDisk::new(disk)));
    let device = StorvspDevice::new(config, controller).unwrap();
    (Arc::new(device), bytes)
}

/// Ring pages for `device` starting at `first` (at least `min_data` data
/// pages per half), and the downstream offset (the guest→host half's
/// pages, its control page included).
fn ring(device: &dyn VmbusDevice, first: u64, min_data: u32) -> (Vec<u64>, u32) {
    let offer = device.offer();
    let up = 1 + offer.incoming_ring_pages.max(min_data);
    let total = up + 1 + offer.outgoing_ring_pages.max(min_data);
    ((first..first + u64::from(total)).collect(), up)
}

/// The guest's endpoint over the ring the device of `relid` was opened on.
fn guest_endpoint(rig: &Rig, relid: u32, pages: &[u64], downstream: u32) -> Endpoint {
    let (to_host, to_guest) = &rig.host.doorbells[&relid];
    Endpoint::open(
        Side::Guest,
        &rig.memory,
        pages,
        downstream,
        bell(to_guest),
        bell(to_host),
    )
    .unwrap()
}

async fn vmbfs_request(endpoint: &mut Endpoint, request: &[u8]) -> Vec<u8> {
    endpoint.send_data(request).await.unwrap();
    match endpoint.recv_pipe(64 << 10).await.unwrap() {
        PipeMessage::Data(reply) => reply,
        other => panic!("unexpected pipe message {other:?}"),
    }
}

#[test]
fn linux_sequence_opens_vmbfs_and_storvsp_and_both_drivers_do_io() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(4096, ServerConfig::default());
    let vmbfs = vmbfs_device();
    let (storvsp, disk_bytes) = storvsp_device(&dir, StorvspConfig::default());
    let fs_relid = rig.add(vmbfs.clone());
    let disk_relid = rig.add(storvsp.clone());
    assert_eq!((fs_relid, disk_relid), (1, 2), "relids start at 1");

    let offers = rig.connect();
    assert_eq!(offers.len(), 2);
    for (offer, device) in offers.iter().zip([vmbfs.offer(), storvsp.offer()]) {
        assert_eq!(offer.offer.interface_id, device.interface_id);
        assert_eq!(offer.offer.instance_id, device.instance_id);
        assert_eq!(offer.offer.sub_channel_index.get(), 0);
        assert_eq!(offer.monitor_allocated, 0, "monitor pages are declined");
    }
    let fs_offer = &offers[0].offer;
    assert_eq!(fs_offer.flags.get(), CHANNEL_FLAG_NAMED_PIPE);
    assert_eq!(fs_offer.user_defined[..4], PIPE_MODE_MESSAGE.to_le_bytes());
    assert_eq!(offers[1].offer.flags.get(), 0);
    assert_ne!(offers[0].connection_id, offers[1].connection_id);

    // vmbfs: a ring large enough that Linux splits its GPADL into a header
    // and a body.
    let (fs_pages, fs_down) = ring(vmbfs.as_ref(), 100, 16);
    assert!(fs_pages.len() > HEADER_PFNS);
    assert_eq!(
        rig.create_gpadl(fs_relid, 0x1000, &fs_pages),
        STATUS_SUCCESS
    );
    assert_eq!(rig.open(fs_relid, 0x1000, fs_down), STATUS_SUCCESS);
    let mut fs = guest_endpoint(&rig, fs_relid, &fs_pages, fs_down);
    block_on(async {
        let reply = vmbfs_request(&mut fs, &client::version_request()).await;
        client::parse_version_response(&reply).unwrap();
        let path = client::child_path(
            &client::child_path(&client::root_path(), "EFI"),
            "hello.txt",
        );
        let (request, count) = client::read_request(&path, 0, 4096).unwrap();
        let reply = vmbfs_request(&mut fs, &request).await;
        assert_eq!(client::parse_read_response(&reply, count).unwrap(), FILE);
    });

    // storvsp: the Linux storvsc driver over the opened primary channel.
    let (disk_pages, disk_down) = ring(storvsp.as_ref(), 1000, 1);
    assert_eq!(
        rig.create_gpadl(disk_relid, 0x2000, &disk_pages),
        STATUS_SUCCESS
    );
    assert_eq!(rig.open(disk_relid, 0x2000, disk_down), STATUS_SUCCESS);
    let endpoint = guest_endpoint(&rig, disk_relid, &disk_pages, disk_down);
    let driver = block_on(Storvsc::connect(
        endpoint,
        rig.memory.clone(),
        PageAllocator::new(2048..4096, false),
        &NoSubChannels,
        &DriverConfig::default(),
    ))
    .unwrap();
    assert_eq!(driver.disks().len(), 1);
    let read = block_on(driver.disk(0).unwrap().read(8, 16)).unwrap();
    assert_eq!(read, disk_bytes[8 * 512..24 * 512]);
    drop(driver);

    // Close, tear down, unload: each answered once the devices let go.
    for (relid, gpadl) in [(fs_relid, 0x1000), (disk_relid, 0x2000)] {
        rig.post(&relid_message(MessageType::CLOSE_CHANNEL, relid))
            .unwrap();
        rig.join(relid).unwrap();
        rig.post(&teardown(relid, gpadl)).unwrap();
        rig.finish_teardowns();
        let torn = rig.expect(MessageType::GPADL_TORNDOWN);
        assert_eq!(u32_at(&torn, 8), gpadl);
        assert!(rig.registry.get(gpadl).is_err());
    }
    assert_eq!(rig.host.closed, [fs_relid, disk_relid]);
    rig.post(&header(MessageType::UNLOAD)).unwrap();
    rig.expect(MessageType::UNLOAD_RESPONSE);
    rig.expect_none();
    assert_eq!(rig.server.version(), None);
}

#[test]
fn teardown_of_an_open_ring_waits_until_the_device_released_it() {
    let mut rig = Rig::new(512, ServerConfig::default());
    let vmbfs = vmbfs_device();
    let relid = rig.add(vmbfs.clone());
    rig.connect();
    let (pages, down) = ring(vmbfs.as_ref(), 10, 1);
    assert_eq!(rig.create_gpadl(relid, 5, &pages), STATUS_SUCCESS);
    assert_eq!(rig.open(relid, 5, down), STATUS_SUCCESS);
    rig.post(&teardown(relid, 5)).unwrap();
    assert_eq!(rig.settle_teardowns(), 1, "the device still holds the ring");
    rig.expect_none();
    assert!(
        rig.registry.acquire(5).is_err(),
        "no new user once teardown began"
    );
    rig.post(&relid_message(MessageType::CLOSE_CHANNEL, relid))
        .unwrap();
    rig.join(relid).unwrap();
    rig.finish_teardowns();
    assert_eq!(u32_at(&rig.expect(MessageType::GPADL_TORNDOWN), 8), 5);
    assert_eq!(rig.server.gpadl_count(), 0);
}

#[test]
fn version_negotiation_walks_down_like_linux() {
    let four_vps = ServerConfig {
        vp_count: 4,
        ..ServerConfig::default()
    };
    let mut rig = Rig::new(64, four_vps);
    rig.add(Arc::new(Parked::default()));
    // Newer than any host knows, then the oldest, both refused.
    assert_eq!(rig.contact(Version(0x0006_0000)), 0);
    assert_eq!(rig.contact(Version(0x0001_0001)), 0);
    assert_eq!(rig.server.version(), None);
    rig.post_on(4, &initiate_contact(Version::V5_2, 3)).unwrap();
    let (vp, reply) = rig.host.inbox.pop_front().unwrap();
    assert_eq!(vp, 3, "the reply goes to the vCPU the guest named");
    assert_eq!(reply[8], 1);
    assert_eq!(u32_at(&reply, 12), 1, "later messages on connection 1");
    assert_eq!(rig.server.version(), Some(Version::V5_2));
    for version in Version::SUPPORTED {
        let mut rig = Rig::new(64, ServerConfig::default());
        assert_eq!(rig.contact(version), 1, "{version:x?}");
    }
}

#[test]
fn unload_closes_every_channel_and_answers_after_the_pages_are_free() {
    let mut rig = Rig::new(64, ServerConfig::default());
    let device = Arc::new(Parked::default());
    let relid = rig.add(device.clone());
    rig.connect();
    assert_eq!(rig.create_gpadl(relid, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    assert_eq!(rig.create_gpadl(relid, 2, &[20, 21]), STATUS_SUCCESS);
    assert_eq!(rig.open(relid, 1, 2), STATUS_SUCCESS);
    rig.post(&header(MessageType::UNLOAD)).unwrap();
    // The device was told to stop; its task ends and lets go of the ring.
    rig.join(relid).unwrap();
    rig.finish_teardowns();
    rig.expect(MessageType::UNLOAD_RESPONSE);
    rig.expect_none();
    assert_eq!(rig.server.gpadl_count(), 0);
    assert!(rig.registry.get(1).is_err() && rig.registry.get(2).is_err());
    // A kexec'd guest starts again from INITIATE_CONTACT and gets offers.
    assert_eq!(rig.connect().len(), 1);
}

#[test]
fn hot_remove_rescinds_and_the_relid_is_released() {
    let mut rig = Rig::new(64, ServerConfig::default());
    let device = Arc::new(Parked::default());
    let (id, relid) = rig.server.add_device(device, &mut rig.host).unwrap();
    rig.connect();
    assert_eq!(rig.create_gpadl(relid, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    assert_eq!(rig.open(relid, 1, 2), STATUS_SUCCESS);
    rig.server.remove_device(id, &mut rig.host);
    let rescind = rig.expect(MessageType::RESCIND_CHANNEL_OFFER);
    assert_eq!(u32_at(&rescind, 8), relid);
    rig.join(relid).unwrap();
    // The guest closes what it had and releases the relid.
    rig.post(&relid_message(MessageType::CLOSE_CHANNEL, relid))
        .unwrap();
    rig.post(&relid_message(MessageType::RELID_RELEASED, relid))
        .unwrap();
    rig.finish_teardowns();
    assert_eq!(rig.server.gpadl_count(), 0);
    assert!(rig.registry.get(1).is_err());
    rig.expect_none();
}

#[test]
fn modify_channel_retargets_and_is_acknowledged_on_5_3() {
    let four_vps = ServerConfig {
        vp_count: 4,
        ..ServerConfig::default()
    };
    let mut rig = Rig::new(64, four_vps);
    let relid = rig.add(Arc::new(Parked::default()));
    rig.connect();
    assert_eq!(rig.create_gpadl(relid, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    assert_eq!(rig.open(relid, 1, 2), STATUS_SUCCESS);
    rig.post(&modify(relid, 3)).unwrap();
    let reply = rig.expect(MessageType::MODIFY_CHANNEL_RESPONSE);
    assert_eq!((u32_at(&reply, 8), u32_at(&reply, 12)), (relid, 0));
    assert_eq!(rig.host.retargets.len(), 1);
    assert_eq!(rig.host.retargets[0].target_vp, 3);
    rig.post(&relid_message(MessageType::CLOSE_CHANNEL, relid))
        .unwrap();
    rig.post(&modify(relid, 1)).unwrap();
    let reply = rig.expect(MessageType::MODIFY_CHANNEL_RESPONSE);
    assert_ne!(u32_at(&reply, 12), 0, "a closed channel cannot move");
    assert_eq!(rig.host.retargets.len(), 1);
}

#[test]
fn a_device_added_after_the_offers_is_offered_at_once() {
    let mut rig = Rig::new(64, ServerConfig::default());
    rig.add(Arc::new(Parked::default()));
    assert_eq!(rig.connect().len(), 1);
    let relid = rig.add(Arc::new(Parked::default()));
    let offer = rig.expect(MessageType::OFFER_CHANNEL);
    assert_eq!(u32_at(&offer, 8 + 176), relid);
}

#[test]
fn a_reused_relid_below_a_stalled_offer_cursor_is_still_offered() {
    let mut rig = Rig::new(64, ServerConfig::default());
    let (first, one) = rig
        .server
        .add_device(Arc::new(Parked::default()), &mut rig.host)
        .unwrap();
    for _ in 0..2 {
        rig.add(Arc::new(Parked::default()));
    }
    assert_eq!(rig.contact(Version::V5_3), 1);
    // The guest takes one offer, then stops draining: the cursor stalls
    // past relid 1.
    rig.host.room = Some(1);
    rig.post(&header(MessageType::REQUEST_OFFERS)).unwrap();
    let offer = rig.expect(MessageType::OFFER_CHANNEL);
    assert_eq!(u32_at(&offer, 8 + 176), one);
    // While the cursor is stalled, relid 1 goes (its RESCIND waits in
    // the queue), is released, and a new device takes it.
    rig.server.remove_device(first, &mut rig.host);
    rig.post(&relid_message(MessageType::RELID_RELEASED, one))
        .unwrap();
    let again = rig.add(Arc::new(Parked::default()));
    assert_eq!(again, one, "the lowest free relid is reused");
    rig.host.room = None;
    rig.server.slot_freed(&mut rig.host);
    let mut offered = Vec::new();
    while let Some(message) = rig.next() {
        if message_type(&message) == MessageType::OFFER_CHANNEL {
            offered.push(u32_at(&message, 8 + 176));
        }
    }
    assert!(
        offered.contains(&one),
        "relid {one} offered again: {offered:?}"
    );
}

/// The guest's side of sub-channel opening: finds the offer of the index
/// storvsc asks for, builds its ring GPADL and opens it, as Linux does
/// when a sub-channel offer arrives.
struct SubChannelOpener {
    rig: std::sync::Mutex<Rig>,
    instance: vmbdev_device::bus::Guid,
    next_page: std::sync::atomic::AtomicU64,
    offers: std::sync::Mutex<Vec<vmbdev_vmbus::protocol::OfferChannel>>,
}

impl vmbdev_guest::storvsc::driver::ChannelOpener for SubChannelOpener {
    fn open_sub_channel(&self, index: u16) -> Result<Endpoint, String> {
        let mut rig = self.rig.lock().unwrap();
        let rig = &mut *rig;
        rig.server.offer_sub_channels(&mut rig.host);
        let mut offers = self.offers.lock().unwrap();
        // Every offer that arrived is kept: later indices are opened later.
        offers.extend(
            std::iter::from_fn(|| rig.next())
                .map(|m| vmbdev_vmbus::protocol::OfferChannel::read_from_bytes(&m).unwrap()),
        );
        let offer = offers
            .iter()
            .find(|o| {
                o.offer.instance_id == self.instance && o.offer.sub_channel_index.get() == index
            })
            .ok_or(format!("no offer of sub-channel {index}"))?;
        let relid = offer.child_relid.get();
        let first = self
            .next_page
            .fetch_add(64, std::sync::atomic::Ordering::Relaxed);
        let pages: Vec<u64> = (first..first + 10).collect();
        let gpadl = 0x3000 + u32::from(index);
        if rig.create_gpadl(relid, gpadl, &pages) != STATUS_SUCCESS
            || rig.open(relid, gpadl, 5) != STATUS_SUCCESS
        {
            return Err(format!("sub-channel {index} refused"));
        }
        Ok(guest_endpoint(rig, relid, &pages, 5))
    }
}

#[test]
fn storvsc_opens_the_sub_channels_storvsp_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(4096, ServerConfig::default());
    let config = StorvspConfig {
        max_sub_channels: 2,
        multi_channel: true,
        ..StorvspConfig::default()
    };
    let (storvsp, disk_bytes) = storvsp_device(&dir, config);
    let relid = rig.add(storvsp.clone());
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    rig.server.on_sub_channel_request(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let offers = rig.connect();
    assert_eq!(
        offers.len(),
        1,
        "sub-channels are offered only when asked for"
    );
    let (pages, down) = ring(storvsp.as_ref(), 100, 1);
    assert_eq!(rig.create_gpadl(relid, 0x2000, &pages), STATUS_SUCCESS);
    assert_eq!(rig.open(relid, 0x2000, down), STATUS_SUCCESS);
    let endpoint = guest_endpoint(&rig, relid, &pages, down);
    let memory = rig.memory.clone();
    let opener = SubChannelOpener {
        rig: std::sync::Mutex::new(rig),
        instance: storvsp.offer().instance_id,
        next_page: std::sync::atomic::AtomicU64::new(200),
        offers: std::sync::Mutex::default(),
    };
    let config = DriverConfig {
        cpus: 3,
        ..DriverConfig::default()
    };
    let driver = block_on(Storvsc::connect(
        endpoint,
        memory,
        PageAllocator::new(2048..4096, false),
        &opener,
        &config,
    ))
    .unwrap();
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(driver.channel_count(), 3);
    let disk = driver.disk(0).unwrap();
    let reads: Vec<(u64, u32)> = (0..12).map(|i| (i * 64, 64)).collect();
    let data = block_on(disk.read_many(&reads, 6)).unwrap();
    for (&(lba, count), got) in reads.iter().zip(&data) {
        let at = lba as usize * 512;
        assert_eq!(got[..], disk_bytes[at..at + count as usize * 512]);
    }
    let rig = opener.rig.into_inner().unwrap();
    for relid in 1..=3 {
        assert!(rig.server.is_open(relid), "relid {relid}");
    }
}

#[test]
fn saved_state_carries_an_open_channel_to_a_new_server() {
    let mut rig = Rig::new(512, ServerConfig::default());
    let relid = rig.add(vmbfs_device());
    rig.connect();
    let (pages, down) = ring(vmbfs_device().as_ref(), 10, 1);
    assert_eq!(rig.create_gpadl(relid, 1, &pages), STATUS_SUCCESS);
    assert_eq!(rig.open(relid, 1, down), STATUS_SUCCESS);
    let mut fs = guest_endpoint(&rig, relid, &pages, down);
    block_on(async {
        let reply = vmbfs_request(&mut fs, &client::version_request()).await;
        client::parse_version_response(&reply).unwrap();
    });
    // A data GPADL half sent when the VM is saved.
    let data: Vec<u64> = (100..140).collect();
    let mut pieces = gpadl_messages(relid, 2, &data).into_iter();
    rig.post(&pieces.next().unwrap()).unwrap();

    rig.server.suspend();
    rig.join(relid).unwrap();
    let saved = rig.server.save().unwrap();
    drop(fs);

    // A new VMM: new registry, new devices built the same way.
    let registry = vmbdev_ring::GpadlRegistry::new();
    let server = vmbdev_vmbus::Server::restore(
        rig.memory.clone(),
        registry.clone(),
        ServerConfig::default(),
        vec![vmbfs_device() as Arc<dyn VmbusDevice>],
        &saved,
    )
    .unwrap();
    let mut rig = Rig {
        server,
        host: TestHost::default(),
        memory: rig.memory.clone(),
        registry,
    };
    rig.server.resume(&mut rig.host).unwrap();
    assert!(rig.server.is_open(relid));
    assert_eq!(&*rig.registry.get(1).unwrap(), &pages[..]);
    // The channel goes on where it was: no new version exchange.
    let mut fs = guest_endpoint(&rig, relid, &pages, down);
    block_on(async {
        let path = client::child_path(
            &client::child_path(&client::root_path(), "EFI"),
            "hello.txt",
        );
        let (request, count) = client::read_request(&path, 0, 4096).unwrap();
        let reply = vmbfs_request(&mut fs, &request).await;
        assert_eq!(client::parse_read_response(&reply, count).unwrap(), FILE);
    });
    // The half-sent GPADL completes.
    for piece in pieces {
        rig.post(&piece).unwrap();
    }
    assert_eq!(
        created_status(&rig.expect(MessageType::GPADL_CREATED), relid, 2),
        0
    );
    assert_eq!(&*rig.registry.get(2).unwrap(), &data[..]);
    rig.post(&header(MessageType::UNLOAD)).unwrap();
    rig.join(relid).unwrap();
    rig.finish_teardowns();
    rig.expect(MessageType::UNLOAD_RESPONSE);
}

#[test]
fn damaged_saved_state_is_refused_without_leaving_gpadls_behind() {
    let mut rig = Rig::new(512, ServerConfig::default());
    let relid = rig.add(Arc::new(Parked::default()));
    rig.connect();
    assert_eq!(rig.create_gpadl(relid, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    assert_eq!(rig.open(relid, 1, 2), STATUS_SUCCESS);
    rig.server.suspend();
    rig.join(relid).unwrap();
    let saved = rig.server.save().unwrap();
    let restore = |bytes: &[u8], devices: usize| {
        let registry = vmbdev_ring::GpadlRegistry::new();
        let devices = (0..devices)
            .map(|_| Arc::new(Parked::default()) as Arc<dyn VmbusDevice>)
            .collect();
        let result = vmbdev_vmbus::Server::restore(
            rig.memory.clone(),
            registry.clone(),
            ServerConfig::default(),
            devices,
            bytes,
        );
        (result, registry)
    };
    assert!(restore(&saved, 1).0.is_ok());
    assert!(matches!(
        restore(&saved, 2).0,
        Err(vmbdev_vmbus::SavedStateError::DeviceCount { saved: 1, given: 2 })
    ));
    for len in 0..saved.len() {
        let (result, registry) = restore(&saved[..len], 1);
        assert!(result.is_err(), "a prefix of {len} bytes");
        assert!(registry.get(1).is_err());
    }
    for at in 0..saved.len() {
        for value in [0x00, 0xff, 0x7f] {
            let mut bytes = saved.clone();
            bytes[at] = value;
            let (result, registry) = restore(&bytes, 1);
            if result.is_err() {
                assert!(registry.get(1).is_err(), "byte {at} = {value:#x}");
            }
        }
    }
}

#[test]
fn resume_restarts_only_what_suspend_stopped_over_the_same_doorbells() {
    let mut rig = Rig::new(64, ServerConfig::default());
    let first = Arc::new(Parked::default());
    let second = Arc::new(Parked::default());
    let one = rig.add(first.clone());
    let two = rig.add(second.clone());
    rig.connect();
    assert_eq!(rig.create_gpadl(one, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    assert_eq!(rig.open(one, 1, 2), STATUS_SUCCESS);
    let bells = rig.host.doorbells[&one].clone();
    rig.server.suspend();
    rig.join(one).unwrap();
    // A channel opened while suspended runs from its open on.
    assert_eq!(rig.create_gpadl(two, 2, &[20, 21, 22, 23]), STATUS_SUCCESS);
    assert_eq!(rig.open(two, 2, 2), STATUS_SUCCESS);
    rig.server.resume(&mut rig.host).unwrap();
    assert_eq!(*first.opens.lock().unwrap(), 2, "the stopped one restarted");
    assert_eq!(
        *second.opens.lock().unwrap(),
        1,
        "the running one untouched"
    );
    assert!(rig.server.is_open(one) && rig.server.is_open(two));
    // Suspend closed no doorbells, so resume opened none.
    assert_eq!(rig.host.opened, [one, two]);
    assert!(rig.host.closed.is_empty());
    assert!(Arc::ptr_eq(&rig.host.doorbells[&one].0, &bells.0));
    // A resume with nothing suspended does nothing.
    rig.server.resume(&mut rig.host).unwrap();
    assert_eq!(*first.opens.lock().unwrap(), 2);
    assert_eq!(rig.host.opened, [one, two]);
    // A close after a resume closes the doorbells once.
    rig.post(&relid_message(MessageType::CLOSE_CHANNEL, one))
        .unwrap();
    rig.join(one).unwrap();
    assert_eq!(rig.host.closed, [one]);
}
