//! The storvsp request path allocates nothing per request once warm: a
//! counting global allocator watches 4 KiB GPA-direct READs driven by a
//! raw guest over an in-process ring (guest and device on this thread),
//! then the same reads through the storvsc guest driver and the loopback
//! VM (driver, completion and device threads all counted), and with the
//! driver and the device tasks sharing one thread; and 1 MiB READs
//! (a 256-page buffer, too long to store inline) through the driver.

use vmbdev_bench::ioperf::IoperfRig;

mod counting;

use counting::allocations_during;

// No test harness (`harness = false`): the counter is process-wide, and
// the harness allocates on its own threads while a test runs.
fn main() {
    storvsp_reads_allocate_nothing_per_request_once_warm();
    storvsc_driver_reads_allocate_nothing_per_request_once_warm(false, SMALL, &[1, 4, 32]);
    // One thread: the waiting requests read their own completions, taking
    // turns at the channel's reader.
    storvsc_driver_reads_allocate_nothing_per_request_once_warm(true, SMALL, &[1, 4, 32]);
    storvsc_driver_reads_allocate_nothing_per_request_once_warm(false, LARGE, &[1, 4, 8]);
    storvsc_driver_reads_allocate_nothing_per_request_once_warm(true, LARGE, &[1, 4, 8]);
}

/// A read's size in 512-byte sectors, and how many reads to measure (the
/// long run is three times that).
#[derive(Debug, Clone, Copy)]
struct ReadSize {
    sectors: u32,
    requests: u64,
}

/// 4 KiB: one guest page.
const SMALL: ReadSize = ReadSize {
    sectors: 8,
    requests: 1000,
};
/// 1 MiB: 256 guest pages.
const LARGE: ReadSize = ReadSize {
    sectors: 2048,
    requests: 200,
};

fn storvsp_reads_allocate_nothing_per_request_once_warm() {
    // The counter does count (else the zero below would prove nothing).
    let seen = allocations_during(|| drop(std::hint::black_box(vec![1u8; 100])));
    assert!(seen >= 1, "the counting allocator saw {seen} allocations");
    let mut rig = IoperfRig::new().unwrap();
    for depth in [1usize, 4, 32] {
        // Warm-up: first waits register listeners, the bounce buffer grows.
        assert_eq!(rig.run(50, depth).unwrap(), 50 * depth as u64);
        let iterations = (1000 / depth as u64).max(1);
        let mut good = 0;
        let allocations = allocations_during(|| good = rig.run(iterations, depth).unwrap());
        assert_eq!(good, iterations * depth as u64, "every READ succeeds");
        assert_eq!(
            allocations,
            0,
            "{allocations} allocations over {} requests at depth {depth}",
            iterations * depth as u64
        );
    }
}

fn storvsc_driver_reads_allocate_nothing_per_request_once_warm(
    one_thread: bool,
    size: ReadSize,
    depths: &[usize],
) {
    use futures_lite::future::block_on;
    use std::sync::Arc;
    use vmbdev_block::{BlockDevice, MemoryDisk};
    use vmbdev_device::scsi_disk::ScsiDisk;
    use vmbdev_device::storvsp::{Controller, LunAddress, StorvspConfig, StorvspDevice};
    use vmbdev_guest::storvsc::{Completions, DriverConfig, GuestProfile};
    use vmbdev_loopback::storvsp::{StorvspVm, StorvspVmConfig};

    let controller = Arc::new(Controller::new());
    let disk: Arc<dyn BlockDevice> =
        Arc::new(MemoryDisk::with_sector_sizes(vec![0x5a; 4 << 20], 512, 512));
    let lun = LunAddress {
        path: 0,
        target: 0,
        lun: 0,
    };
    controller.insert(lun, Arc::new(ScsiDisk::new(disk)));
    let device = Arc::new(StorvspDevice::new(StorvspConfig::default(), controller).unwrap());
    let executor = one_thread.then(|| Arc::new(vmbdev_ring::executor::Executor::new()));
    let config = DriverConfig {
        profile: GuestProfile::Linux,
        cpus: 1,
        buffer_offset: 0,
        completions: if one_thread {
            Completions::Polled
        } else {
            Completions::Thread
        },
    };
    let vm_config = StorvspVmConfig {
        executor: executor.clone(),
        ..StorvspVmConfig::default()
    };
    let (_vm, driver) = StorvspVm::start_with_storvsc(device, vm_config, &config).unwrap();
    let disk = driver.disk(0).unwrap();
    // Reads cycle through the 4 MiB disk (8192 sectors).
    let sectors = u64::from(size.sectors);
    let reads =
        |count: u64| (0..count).map(move |i| ((i * sectors) % (8192 - sectors), size.sectors));
    let run = |count: u64, depth: usize| {
        let work = disk.read_discard(reads(count), depth);
        match &executor {
            Some(executor) => block_on(executor.run(work)),
            None => block_on(work),
        }
        .unwrap()
    };
    // Every depth is measured before judging, so a failure shows them all.
    let mut measured = Vec::new();
    for &depth in depths {
        run(size.requests / 2, depth);
        // A batch allocates its window (a few boxes); the requests in it
        // allocate nothing, so three times the requests cost the same.
        let short = allocations_during(|| {
            run(size.requests, depth);
        });
        let long = allocations_during(|| {
            run(3 * size.requests, depth);
        });
        measured.push((depth, short, long));
    }
    let over: Vec<_> = measured
        .iter()
        .filter(|&&(depth, short, long)| long > short || short > depth + 4)
        .collect();
    assert!(
        over.is_empty(),
        "one thread {one_thread}, {size:?}: (depth, allocations for the requests, for three times as many) {measured:?}"
    );
}
