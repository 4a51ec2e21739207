//! A minimal "VMM side": plugs the vmbfs and storvsp devices into a device
//! bus of its own, using only the public API.
//!
//! What a VMM does, step by step:
//!
//! 1. builds the devices (vmbfs over a file tree, storvsp over a SCSI disk
//!    backed by an image), handing both the one thread pool that runs
//!    their blocking I/O, and reads their offers;
//! 2. when the guest opens a channel: registers the ring GPADL the guest
//!    sent, creates the two doorbells, builds an `OpenRequest` and calls
//!    `open`, then runs the returned task on its executor;
//! 3. offers sub-channels when a device asks (storvsp's
//!    CREATE_SUB_CHANNELS) and opens them like the primary;
//! 4. to save: closes the channels, awaits their tasks and calls `save`;
//!    to resume: `restore`, then opens the channels again;
//! 5. closes everything at shutdown.
//!
//! The "guest" here is the project's own guest drivers and a few raw vmbfs
//! messages, sharing the VMM's guest memory.
//!
//! Run it with `cargo run -p vmbdev-examples --example vmm`.

use std::sync::{Arc, Mutex};

use async_executor::{Executor, Task};
use vmbdev_block::{BlockDevice, RawFile};
use vmbdev_device::bus::{
    BusError, ChannelError, IoSpawner, OpenRequest, SubChannelControl, ThreadPool, VmbusDevice,
};
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{Controller, LunAddress, StorvspConfig, StorvspDevice};
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_fs::MemoryTree;
use vmbdev_guest::storvsc::{ChannelOpener, DriverConfig, Storvsc};
use vmbdev_guest::vmbfs as uefi;
use vmbdev_ring::{
    Doorbell, Endpoint, EventDoorbell, GpadlRegistry, GuestMemory, PageAllocator, PipeMessage,
    endpoint::Side,
};

/// The file the example serves over vmbfs.
pub const HELLO: &str = "hello from the VMM's vmbfs device\n";

/// Guest memory of the example VM.
const MEMORY_BYTES: u64 = 64 << 20;
/// Data pages per ring direction.
const RING_PAGES: u64 = 16;

/// What the example observed, for its test.
#[derive(Debug)]
pub struct Report {
    /// `\hello.txt` as read over vmbfs.
    pub file_bytes: Vec<u8>,
    /// Whether sectors read over storvsp equal the image.
    pub sectors_match: bool,
    /// Sub-channels storvsp asked for and the guest opened.
    pub sub_channels: usize,
    /// `\hello.txt` read again after save and restore.
    pub after_restore_bytes: Vec<u8>,
}

/// An error of the example.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The VMM's device bus: guest memory, GPADLs, and an executor thread
/// running channel tasks.
struct Bus {
    memory: GuestMemory,
    gpadls: GpadlRegistry,
    pages: PageAllocator,
    next_gpadl: Mutex<u32>,
    executor: Arc<Executor<'static>>,
}

impl Bus {
    fn new() -> Result<Arc<Self>, Error> {
        let memory = GuestMemory::new(MEMORY_BYTES)?;
        let executor = Arc::new(Executor::new());
        let runner = executor.clone();
        // The VMM's executor thread: it polls channel tasks for the life of
        // the process (a real VMM owns and stops its own executor).
        std::thread::spawn(move || {
            futures_lite::future::block_on(runner.run(futures_lite::future::pending::<()>()))
        });
        let page_count = memory.page_count();
        Ok(Arc::new(Self {
            pages: PageAllocator::new(0..page_count, true),
            memory,
            gpadls: GpadlRegistry::new(),
            next_gpadl: Mutex::new(1),
            executor,
        }))
    }

    /// The guest's side of opening a channel: it allocates ring pages and
    /// sends them as a GPADL; the VMM registers it, opens the device and
    /// runs its task. Returns the guest endpoint and the task.
    fn open_channel(
        &self,
        device: &Arc<dyn VmbusDevice>,
        index: u16,
        sub_channels: Arc<dyn SubChannelControl>,
    ) -> Result<(Endpoint, Task<Result<(), ChannelError>>), Error> {
        // Guest: 1 control page + data pages per direction, zeroed.
        let ring = self.pages.alloc(2 * (1 + RING_PAGES))?;
        for &page in &ring {
            self.memory.fill(page << 12, 4096, 0)?;
        }
        let handle = {
            let mut next = self.next_gpadl.lock().map_err(|_| "gpadl lock")?;
            *next += 1;
            *next
        };
        let downstream_offset = (1 + RING_PAGES) as u32;
        // VMM: the guest's GPADL message arrives; register it.
        self.gpadls.register(&self.memory, handle, ring)?;
        let to_device = Arc::new(EventDoorbell::new());
        let to_guest = Arc::new(EventDoorbell::new());
        let mut request = OpenRequest::from_gpadl(
            self.memory.clone(),
            self.gpadls.clone(),
            handle,
            downstream_offset,
            to_device.clone(),
            to_guest.clone(),
        )?;
        request.sub_channels = sub_channels;
        let task = self.executor.spawn(device.open(index, request)?);
        // Guest: its side of the same rings.
        let to_device: Arc<dyn Doorbell> = to_device;
        let to_guest: Arc<dyn Doorbell> = to_guest;
        let guest = Endpoint::open_gpadl(
            Side::Guest,
            &self.memory,
            &self.gpadls,
            handle,
            downstream_offset,
            to_guest,
            to_device,
        )?;
        Ok((guest, task))
    }
}

/// The bus side of sub-channels: remembers how many a device enabled.
#[derive(Default)]
struct SubChannelOffers {
    enabled: Mutex<u16>,
}

impl SubChannelControl for SubChannelOffers {
    fn enable_sub_channels(&self, count: u16) -> Result<(), BusError> {
        *self.enabled.lock().unwrap_or_else(|e| e.into_inner()) = count;
        println!("bus: storvsp enabled {count} sub-channel(s); offering them");
        Ok(())
    }
}

/// Opens the sub-channels the bus offered, for the storvsc driver.
struct Opener {
    bus: Arc<Bus>,
    device: Arc<dyn VmbusDevice>,
    offers: Arc<SubChannelOffers>,
    tasks: Mutex<Vec<Task<Result<(), ChannelError>>>>,
}

impl ChannelOpener for Opener {
    fn open_sub_channel(&self, index: u16) -> Result<Endpoint, String> {
        let enabled = *self.offers.enabled.lock().map_err(|e| e.to_string())?;
        if index == 0 || index > enabled {
            return Err(format!("sub-channel {index} was not offered"));
        }
        let (endpoint, task) = self
            .bus
            .open_channel(&self.device, index, self.offers.clone())
            .map_err(|e| e.to_string())?;
        self.tasks.lock().map_err(|e| e.to_string())?.push(task);
        Ok(endpoint)
    }
}

/// A guest reading one file like the UEFI firmware, with raw messages. A
/// guest resumed after a restore is already past version negotiation.
async fn read_hello(guest: &mut Endpoint, negotiate: bool) -> Result<Vec<u8>, Error> {
    if negotiate {
        guest.send_data(&uefi::version_request()).await?;
        uefi::parse_version_response(&recv(guest).await?)?;
    }
    let path = uefi::child_path(&uefi::root_path(), "hello.txt");
    guest
        .send_data(&uefi::get_file_info_request(&path)?)
        .await?;
    let info = uefi::parse_file_info_response(&recv(guest).await?)?;
    let (request, requested) = uefi::read_request(&path, 0, info.size as usize)?;
    guest.send_data(&request).await?;
    let reply = recv(guest).await?;
    Ok(uefi::parse_read_response(&reply, requested)?.to_vec())
}

async fn recv(guest: &mut Endpoint) -> Result<Vec<u8>, Error> {
    match guest.recv_pipe(12288).await? {
        PipeMessage::Data(bytes) => Ok(bytes),
        other => Err(format!("unexpected pipe message {other:?}").into()),
    }
}

/// Runs the whole example.
pub fn run() -> Result<Report, Error> {
    let bus = Bus::new()?;

    // 1. The devices.
    let mut files = MemoryTree::builder();
    files.add_file("hello.txt", HELLO.as_bytes().to_vec())?;
    // One pool, sized by the VMM, runs every device's blocking I/O.
    let io: Arc<dyn IoSpawner> = Arc::new(ThreadPool::new(2));
    let vmbfs: Arc<dyn VmbusDevice> = Arc::new(
        VmbfsDevice::new(VmbfsConfig {
            tree: Arc::new(files.build()),
            rdma_enabled: false,
        })
        .with_io_spawner(io.clone()),
    );
    let scratch = std::env::temp_dir().join(format!("vmbdev-vmm-example-{}", std::process::id()));
    let image: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&scratch, &image)?;
    let disk: Arc<dyn BlockDevice> = Arc::new(RawFile::open(&scratch)?);
    std::fs::remove_file(&scratch)?;
    let controller = Arc::new(Controller::new());
    controller.insert(
        LunAddress {
            path: 0,
            target: 0,
            lun: 0,
        },
        Arc::new(ScsiDisk::new(disk)),
    );
    let storvsp: Arc<dyn VmbusDevice> = Arc::new(
        StorvspDevice::new(
            StorvspConfig {
                max_sub_channels: 1,
                multi_channel: true,
                ..StorvspConfig::default()
            },
            controller,
        )?
        .with_io_spawner(io),
    );
    for device in [&vmbfs, &storvsp] {
        let offer = device.offer();
        println!(
            "offer {}: interface {} instance {}, {:?} pipe, up to {} sub-channels",
            offer.name,
            offer.interface_id,
            offer.instance_id,
            offer.pipe_mode,
            offer.max_sub_channels
        );
    }

    // 2. vmbfs: the guest opens the channel and reads a file.
    let no_sub_channels = Arc::new(SubChannelOffers::default());
    let (mut guest, task) = bus.open_channel(&vmbfs, 0, no_sub_channels.clone())?;
    let file_bytes = futures_lite::future::block_on(read_hello(&mut guest, true))?;
    println!("vmbfs: read {} bytes of \\hello.txt", file_bytes.len());

    // 4. Save in the middle of the session, restore, continue.
    vmbfs.close(0)?;
    futures_lite::future::block_on(task)?;
    let saved = vmbfs.save()?;
    vmbfs.restore(&saved)?;
    let (mut guest, task) = bus.open_channel(&vmbfs, 0, no_sub_channels)?;
    let after_restore_bytes = futures_lite::future::block_on(read_hello(&mut guest, false))?;
    println!(
        "vmbfs: saved {} bytes of state, restored, read the file again",
        saved.len()
    );

    // 2 + 3. storvsp: a Linux-like storvsc connects, asks for a
    // sub-channel, scans, and reads sectors.
    let offers = Arc::new(SubChannelOffers::default());
    let (primary, storvsp_task) = bus.open_channel(&storvsp, 0, offers.clone())?;
    let opener = Opener {
        bus: bus.clone(),
        device: storvsp.clone(),
        offers,
        tasks: Mutex::new(Vec::new()),
    };
    let config = DriverConfig {
        cpus: 2,
        ..DriverConfig::default()
    };
    let sectors_match = futures_lite::future::block_on(async {
        let storvsc = Storvsc::connect(
            primary,
            bus.memory.clone(),
            bus.pages.clone(),
            &opener,
            &config,
        )
        .await?;
        let disk = storvsc.disk(0).ok_or("no disk found by the scan")?;
        let data = disk.read(0, 2048).await?;
        println!(
            "storvsp: version {:#06x}, {} channel(s), read {} bytes at LBA 0",
            storvsc.version(),
            storvsc.channel_count(),
            data.len()
        );
        Ok::<bool, Error>(data[..] == image[..data.len()])
    })?;
    let sub_channels = opener.tasks.lock().map_err(|_| "task lock")?.len();

    // 5. Shutdown: close every channel and await its task.
    vmbfs.close(0)?;
    futures_lite::future::block_on(task)?;
    for index in (0..=sub_channels as u16).rev() {
        storvsp.close(index)?;
    }
    futures_lite::future::block_on(storvsp_task)?;
    for task in opener.tasks.lock().map_err(|_| "task lock")?.drain(..) {
        futures_lite::future::block_on(task)?;
    }
    println!("all channels closed");
    Ok(Report {
        file_bytes,
        sectors_match,
        sub_channels,
        after_restore_bytes,
    })
}

fn main() -> Result<(), Error> {
    let report = run()?;
    assert_eq!(report.file_bytes, HELLO.as_bytes());
    assert!(report.sectors_match);
    Ok(())
}
