//! The storvsc guest-driver behaviours against a storvsp device in a child
//! process, through the proxy on a VMM side with memfd memory and eventfd
//! doorbells: init, INQUIRY, READ of every sector checked against the
//! image file, sub-channels, and save/restore across a server restart.

mod common;

use std::sync::Arc;

use common::{SECTOR, ServerProcess, check_sectors, connect_storvsc, within, write_image};
use vmbdev_device::bus::VmbusDevice;
use vmbdev_remote::vmm::EventfdVm;

#[test]
fn storvsc_reads_every_sector_over_sub_channels_and_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("disk.raw");
    let sectors = 8192;
    let image = write_image(&image_path, sectors);
    let mut server = ServerProcess::spawn("storvsp", &image_path);
    let remote: Arc<dyn VmbusDevice> = Arc::new(server.connect());
    let offer = remote.offer();
    assert_eq!(offer.name, "storvsp");
    assert_eq!(offer.max_sub_channels, 4);

    let vm = Arc::new(EventfdVm::new(remote.clone(), 8192, 16, 4, true).unwrap());
    let primary = vm.open_channel(0).unwrap();
    let driver = connect_storvsc(&vm, primary, 3);
    // Linux asks for cpus - 1 sub-channels; the request travelled from
    // the device process to this VMM.
    assert_eq!(vm.offered_sub_channels(), 2);
    assert_eq!(driver.channel_count(), 3);
    let disk = driver.disk(0).unwrap();
    assert!(disk.inquiry().present());
    assert_eq!(disk.inquiry().vendor, "Msft");
    assert_eq!(disk.capacity(), (sectors as u64, SECTOR as u32));
    check_sectors(&driver, &image, 0, sectors as u64, 32);

    // Quiesce, save, and move to a new process restored from the state.
    for (index, result) in vm.suspend() {
        result.unwrap_or_else(|e| panic!("channel {index}: {e}"));
    }
    let saved = remote.save().unwrap();
    drop(remote);
    server.kill();
    let mut second = ServerProcess::spawn("storvsp", &image_path);
    let restored: Arc<dyn VmbusDevice> = Arc::new(second.connect());
    restored.restore(&saved).unwrap();
    vm.resume(restored.clone()).unwrap();
    // The same driver on the same rings: no new handshake.
    check_sectors(&driver, &image, 1000, 3000, 32);
    for (index, result) in vm.suspend() {
        result.unwrap_or_else(|e| panic!("channel {index} after restore: {e}"));
    }
    // A truncated state is refused by the device with its own error.
    assert!(restored.restore(&saved[..saved.len() - 1]).is_err());
}

#[test]
fn kill_9_ends_every_open_storvsp_task_with_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("disk.raw");
    let image = write_image(&image_path, 2048);
    let mut server = ServerProcess::spawn("storvsp", &image_path);
    let remote: Arc<dyn VmbusDevice> = Arc::new(server.connect());
    let vm = Arc::new(EventfdVm::new(remote.clone(), 8192, 16, 4, true).unwrap());
    let primary = vm.open_channel(0).unwrap();
    let driver = connect_storvsc(&vm, primary, 2);
    check_sectors(&driver, &image, 0, 256, 32);
    server.kill();
    // Every task ends: the proxy saw the socket end.
    let ended = within(async {
        while !vm.all_ended() {
            async_io::Timer::after(std::time::Duration::from_millis(5)).await;
        }
    });
    assert!(
        ended.is_some(),
        "a channel task outlived the device process"
    );
    let results = vm.finished();
    assert_eq!(results.len(), 2);
    for (index, result) in results {
        let error = result.expect_err("a dead device cannot end a channel cleanly");
        let remote_error = error
            .protocol_error::<vmbdev_remote::RemoteError>()
            .unwrap_or_else(|| panic!("channel {index}: {error}"));
        assert!(matches!(
            remote_error,
            vmbdev_remote::RemoteError::ConnectionLost
        ));
    }
    // Control calls fail at once instead of waiting.
    assert!(remote.save().is_err());
    assert!(remote.close(0).is_err());
}
