//! An out-of-process VMM: the device runs in another process and only
//! control crosses a Unix socket; rings and data stay in guest memory both
//! processes map.
//!
//! What the VMM does, step by step:
//!
//! 1. creates its guest RAM as a sealed memfd with a hole in the guest
//!    physical address space, and adopts it (`GuestMemory::from_memfd`);
//! 2. starts the device server (here: this executable again, as a child
//!    running `vmbdev_remote::listen_and_serve`; `vmbdev serve` does the
//!    same) and connects a `RemoteDevice` to it;
//! 3. when the guest opens the channel: registers the ring GPADL, creates
//!    two eventfds, builds the `OpenRequest` and calls `open` exactly as
//!    for a local device; the proxy passes the memfd, the page list and
//!    the eventfds to the server;
//! 4. runs the returned task (it ends when the server reports the channel
//!    closed, or at once if the server dies);
//! 5. saves and restores the device across a close and reopen.
//!
//! The "guest" is the project's storvsc driver, reading sectors that are
//! compared with the image.
//!
//! Run it with `cargo run -p vmbdev-examples --example remote_vmm`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmbdev_device::bus::{ChannelError, NoSubChannels, OpenRequest, VmbusDevice};
use vmbdev_guest::storvsc::driver::NoSubChannels as NoGuestSubChannels;
use vmbdev_guest::storvsc::{DriverConfig, GuestProfile, Storvsc};
use vmbdev_remote::RemoteDevice;
use vmbdev_remote::devices::{DeviceKind, build_device};
use vmbdev_ring::{
    Endpoint, EventfdDoorbell, GpadlRegistry, GuestMemory, MemoryRegion, PAGE_SIZE, PageAllocator,
    Side,
};

const MIB: u64 = 1 << 20;
/// Sectors of the example disk.
pub const SECTORS: usize = 2048;
/// Ring data pages per direction.
const RING_PAGES: u32 = 16;

/// What the example saw.
#[derive(Debug)]
pub struct Report {
    /// The offer's name, as the server sent it.
    pub device_name: String,
    /// Every sector read matched the image, before and after the restore.
    pub sectors_match: bool,
    /// Bytes of saved device state moved through the socket.
    pub saved_bytes: usize,
}

/// Where the device server runs.
pub enum Launch {
    /// A child process: this executable with `serve SOCKET IMAGE`.
    ChildProcess,
    /// A thread of this process (for tests, which cannot re-run their own
    /// executable as a server).
    Thread,
}

/// The server side of the child process: `remote_vmm serve SOCKET IMAGE`.
fn serve_main(socket: &Path, image: &Path) -> Result<(), String> {
    let device = build_device(DeviceKind::Storvsp, image, 0).map_err(|e| e.to_string())?;
    vmbdev_remote::listen_and_serve(socket, device).map_err(|e| e.to_string())
}

/// Step 1: guest RAM in a sealed memfd, 16 MiB at GPA 0 and 16 MiB at
/// GPA 64 MiB (a hole between), both from one fd.
fn vmm_memory() -> Result<GuestMemory, String> {
    let fd: OwnedFd = rustix::fs::memfd_create(
        "guest-ram",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| e.to_string())?;
    rustix::fs::ftruncate(&fd, 32 * MIB).map_err(|e| e.to_string())?;
    // Without F_SEAL_SHRINK the device process would refuse the memfd.
    rustix::fs::fcntl_add_seals(
        &fd,
        rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW,
    )
    .map_err(|e| e.to_string())?;
    GuestMemory::from_memfd(
        fd,
        &[
            MemoryRegion::new(0, 16 * MIB, 0),
            MemoryRegion::new(64 * MIB, 16 * MIB, 16 * MIB),
        ],
    )
    .map_err(|e| e.to_string())
}

/// The VMM's record of the open channel.
struct Channel {
    gpadl: u32,
    downstream_offset: u32,
    host_bell: EventfdDoorbell,
    guest_bell: EventfdDoorbell,
}

/// Step 3 and 4: the device side of the channel, on a thread.
fn start_device(
    device: &Arc<dyn VmbusDevice>,
    memory: &GuestMemory,
    gpadls: &GpadlRegistry,
    channel: &Channel,
) -> Result<JoinHandle<Result<(), ChannelError>>, String> {
    let mut request = OpenRequest::from_gpadl(
        memory.clone(),
        gpadls.clone(),
        channel.gpadl,
        channel.downstream_offset,
        Arc::new(channel.host_bell.clone()),
        Arc::new(channel.guest_bell.clone()),
    )
    .map_err(|e| e.to_string())?;
    request.sub_channels = Arc::new(NoSubChannels);
    let task = device.open(0, request).map_err(|e| e.to_string())?;
    // `vmbdev_ring::block_on` lets this thread poll its eventfd itself.
    Ok(std::thread::spawn(move || vmbdev_ring::block_on(task)))
}

fn read_and_compare(driver: &Storvsc, image: &[u8]) -> Result<bool, String> {
    let disk = driver.disk(0).ok_or("no disk")?;
    let requests: Vec<(u64, u32)> = (0..SECTORS as u64).step_by(64).map(|l| (l, 64)).collect();
    let chunks =
        futures_lite::future::block_on(disk.read_many(&requests, 8)).map_err(|e| e.to_string())?;
    Ok(chunks.concat() == image)
}

/// Runs the example; the server is started as `launch` says.
pub fn run(launch: Launch) -> Result<Report, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let image_path = dir.path().join("disk.raw");
    let image: Vec<u8> = (0..SECTORS * 512)
        .map(|i| (i / 512) as u8 ^ (i as u8))
        .collect();
    std::fs::write(&image_path, &image).map_err(|e| e.to_string())?;
    let socket = dir.path().join("storvsp.sock");

    // Step 2: the device server and the proxy.
    let mut child = None;
    let remote = match launch {
        Launch::ChildProcess => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            child = Some(
                std::process::Command::new(exe)
                    .arg("serve")
                    .arg(&socket)
                    .arg(&image_path)
                    .spawn()
                    .map_err(|e| e.to_string())?,
            );
            connect_when_listening(&socket)?
        }
        Launch::Thread => {
            let (vmm_end, device_end) =
                vmbdev_remote::transport::socket_pair().map_err(|e| e.to_string())?;
            let device =
                build_device(DeviceKind::Storvsp, &image_path, 0).map_err(|e| e.to_string())?;
            std::thread::spawn(move || vmbdev_remote::serve(device_end, device));
            RemoteDevice::connect(vmm_end).map_err(|e| e.to_string())?
        }
    };
    let device: Arc<dyn VmbusDevice> = Arc::new(remote);
    let device_name = device.offer().name;

    // Step 1 (the VMM's memory) and the guest's ring.
    let memory = vmm_memory()?;
    let pages = PageAllocator::new(0..(16 * MIB / PAGE_SIZE as u64), true);
    let gpadls = GpadlRegistry::new();
    let ring = pages
        .alloc(2 + 2 * u64::from(RING_PAGES))
        .map_err(|e| e.to_string())?;
    gpadls
        .register(&memory, 1, ring.clone())
        .map_err(|e| e.to_string())?;
    let channel = Channel {
        gpadl: 1,
        downstream_offset: 1 + RING_PAGES,
        host_bell: EventfdDoorbell::new().map_err(|e| e.to_string())?,
        guest_bell: EventfdDoorbell::new().map_err(|e| e.to_string())?,
    };
    let guest = Endpoint::open(
        Side::Guest,
        &memory,
        &ring,
        channel.downstream_offset,
        Arc::new(channel.guest_bell.clone()),
        Arc::new(channel.host_bell.clone()),
    )
    .map_err(|e| e.to_string())?;
    let mut task = start_device(&device, &memory, &gpadls, &channel)?;

    let driver = futures_lite::future::block_on(Storvsc::connect(
        guest,
        memory.clone(),
        pages.clone(),
        &NoGuestSubChannels,
        &DriverConfig {
            profile: GuestProfile::Linux,
            cpus: 1,
            buffer_offset: 0,
            ..DriverConfig::default()
        },
    ))
    .map_err(|e| e.to_string())?;
    let mut sectors_match = read_and_compare(&driver, &image)?;

    // Step 5: quiesce, save, restore, reopen on the same ring.
    device.close(0).map_err(|e| e.to_string())?;
    task.join()
        .map_err(|_| "the channel thread panicked")?
        .map_err(|e| e.to_string())?;
    let saved = device.save().map_err(|e| e.to_string())?;
    device.restore(&saved).map_err(|e| e.to_string())?;
    task = start_device(&device, &memory, &gpadls, &channel)?;
    sectors_match &= read_and_compare(&driver, &image)?;

    device.close(0).map_err(|e| e.to_string())?;
    task.join()
        .map_err(|_| "the channel thread panicked")?
        .map_err(|e| e.to_string())?;
    drop(driver);
    drop(device);
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(Report {
        device_name,
        sectors_match,
        saved_bytes: saved.len(),
    })
}

fn connect_when_listening(socket: &Path) -> Result<RemoteDevice, String> {
    let start = std::time::Instant::now();
    loop {
        match RemoteDevice::connect_path(socket) {
            Ok(device) => return Ok(device),
            Err(e) if start.elapsed() > std::time::Duration::from_secs(30) => {
                return Err(format!("the device server never answered: {e}"));
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if let [mode, socket, image] = &args[..] {
        if mode.as_os_str() == "serve" {
            return match serve_main(socket, image) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("device server: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
    }
    match run(Launch::ChildProcess) {
        Ok(report) => {
            println!(
                "{}: sectors match the image before and after a save/restore ({} bytes of state): {}",
                report.device_name, report.saved_bytes, report.sectors_match
            );
            if report.sectors_match {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("remote_vmm: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
