//! `vmbdev demo`: vmbfs and storvsp end to end on a built-in sample image,
//! behind a VMBus control plane. A sample boot tree is packed into a
//! dynamic VHDX (GPT, one FAT32 partition), opened again through the VHDX
//! reader, the partition table and the FAT reader, and served over vmbfs;
//! the same image is served as a SCSI disk over storvsp. Both devices sit
//! behind the real control-plane server in a loopback VM ([`BusVm`]); a
//! Linux-like guest VMBus client negotiates the version, collects the
//! offers and opens each channel (GPADL, OPENCHANNEL), and the handshake is
//! printed message by message before the reads. The vmbfs client behaves
//! like the UEFI firmware: it opens the volume, looks the files up and
//! reads them, once in-band and once by RDMA, checking every byte against
//! the sample; a Linux-like storvsc reads the disk whole, every sector
//! checked against the block device; then the guest unloads the bus. Last,
//! the in-band vs RDMA throughput of a large file is measured.

use clap::Args;
use std::sync::Arc;
use std::time::Instant;
use vmbdev_block::BlockDevice;
use vmbdev_fs::{MemoryTree, open_tree};
use vmbdev_pack::{PackOptions, pack_tree};
use vmbdev_vhdx::open_image;

use crate::dump_storvsp::{bus_config, dump_on_bus, storvsp_device};
use crate::error::CliError;
use vmbdev_bench::vmbfs::{
    BENCH_FILE_SIZE, measure_throughput, measure_throughput_with, sample_bytes,
};
use vmbdev_device::bus::VmbusDevice;
use vmbdev_device::vmbfs::{IoPolicy, VmbfsConfig, VmbfsDevice};
use vmbdev_loopback::bus::{BusVm, BusVmbfsClient};

/// Arguments of `vmbdev demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size in MiB of the file used for the throughput measurement.
    #[arg(long, default_value_t = (BENCH_FILE_SIZE >> 20) as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BENCH_MIB))]
    bench_mib: u64,
}

/// Largest throughput file the demo builds (it lives in host memory).
const MAX_BENCH_MIB: u64 = 4096;

/// The built-in sample tree: a few boot-like files.
fn sample_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("EFI/BOOT/BOOTX64.EFI", sample_bytes(1_234_567, 1)),
        ("EFI/Microsoft/Boot/BCD", sample_bytes(28_672, 2)),
        (
            "EFI/Microsoft/Boot/bootmgfw.efi",
            sample_bytes(2_536_000, 3),
        ),
        ("boot/initrd.img", sample_bytes(9 << 20, 4)),
        ("imc.hiv", sample_bytes(12_276, 5)),
        ("EFI/empty.txt", Vec::new()),
    ]
}

/// Prints the control-plane messages traced since the last call.
struct TracePrinter {
    printed: usize,
}

impl TracePrinter {
    fn print_new(&mut self, vm: &BusVm) {
        let trace = vm.trace();
        for entry in trace.iter().skip(self.printed) {
            println!("  vmbus: {entry}");
        }
        self.printed = trace.len();
    }
}

fn read_all_files(
    vm: &BusVm,
    relid: u32,
    trace: &mut TracePrinter,
    files: &[(&'static str, Vec<u8>)],
    rdma: bool,
) -> Result<(u64, f64, u64), String> {
    let mut client = BusVmbfsClient::new(vm.vmbfs_bus(relid), rdma);
    let start = Instant::now();
    futures_lite::future::block_on(async {
        client.open_volume().await.map_err(|e| e.to_string())?;
        trace.print_new(vm);
        for (path, data) in files {
            let got = client
                .read_all(path)
                .await
                .map_err(|e| format!("{path}: {e}"))?;
            if got != *data {
                return Err(format!("{path}: bytes differ"));
            }
        }
        client.close().await.map_err(|e| e.to_string())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let stats = client.stats();
    Ok((stats.in_band_bytes + stats.rdma_bytes, secs, stats.requests))
}

/// Runs `vmbdev demo`.
pub fn run(args: &DemoArgs) -> Result<(), CliError> {
    demo(args).map_err(|e| CliError::new(format!("demo: {e}")))
}

fn demo(args: &DemoArgs) -> Result<(), String> {
    let files = sample_files();
    let mut builder = MemoryTree::builder();
    for (path, data) in &files {
        builder
            .add_file(path, data.clone())
            .map_err(|e| e.to_string())?;
    }
    let scratch = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let image_path = scratch.path().join("sample.vhdx");
    let options = PackOptions {
        label: Some("VMBDEV".into()),
        ..PackOptions::default()
    };
    let packed = pack_tree(&builder.build(), &image_path, &options).map_err(|e| e.to_string())?;
    let image_len = std::fs::metadata(&image_path)
        .map_err(|e| format!("{}: {e}", image_path.display()))?
        .len();
    println!(
        "sample image: dynamic VHDX, {} MiB virtual disk, {} MiB blocks, {:.1} MiB file (GPT, FAT32: {} files, {} directories)",
        packed.disk_size >> 20,
        packed.block_size >> 20,
        image_len as f64 / 1048576.0,
        packed.files,
        packed.dirs
    );
    let disk: Arc<dyn BlockDevice> = Arc::from(open_image(&image_path).map_err(|e| e.to_string())?);
    let tree = open_tree(disk.clone(), None).map_err(|e| e.to_string())?;
    let vmbfs = VmbfsDevice::new(VmbfsConfig {
        tree,
        rdma_enabled: true,
    });
    let device: Arc<dyn VmbusDevice> = Arc::new(vmbfs.clone());
    let offer = device.offer();
    println!(
        "offer: {} interface {} instance {} ({:?} pipe, {}+{} ring pages)",
        offer.name,
        offer.interface_id,
        offer.instance_id,
        offer.pipe_mode,
        offer.incoming_ring_pages,
        offer.outgoing_ring_pages
    );
    let vm = BusVm::new(bus_config(true)).map_err(|e| e.to_string())?;
    let fs_relid = vm.add_device(device.clone()).map_err(|e| e.to_string())?;
    let storvsp = storvsp_device(disk.clone()).map_err(|e| e.to_string())?;
    let disk_relid = vm.add_device(storvsp).map_err(|e| e.to_string())?;
    println!("control plane: VMBus server behind a software SynIC, Linux-like guest client:");
    let (version, offers) = vm.connect().map_err(|e| e.to_string())?;
    let mut trace = TracePrinter { printed: 0 };
    trace.print_new(&vm);
    println!(
        "  version {}.{} agreed, {} offers:",
        version.0 >> 16,
        version.0 & 0xffff,
        offers.len()
    );
    for offer in &offers {
        println!(
            "    relid {}: {} (sub-channel {}, connection id {:#x})",
            offer.relid,
            vm.device_name(offer.relid).unwrap_or_default(),
            offer.sub_channel_index,
            offer.connection_id
        );
    }
    println!("sample tree:");
    for (path, data) in &files {
        println!(
            "  \\{:<34} {:>10} bytes",
            path.replace('/', "\\"),
            data.len()
        );
    }
    for rdma in [false, true] {
        let (bytes, secs, requests) = read_all_files(&vm, fs_relid, &mut trace, &files, rdma)?;
        println!(
            "read all files {:<8}: {bytes} bytes in {requests} requests, {:.1} ms, {:.0} MB/s, all bytes match",
            if rdma { "by RDMA" } else { "in-band" },
            secs * 1e3,
            bytes as f64 / secs.max(1e-9) / 1e6
        );
    }
    let stats = vmbfs.stats();
    println!(
        "device: {} opens, {} messages, {} in-band + {} RDMA bytes served, {} bad inputs, {} backpressure waits",
        stats.opens,
        stats.messages,
        stats.in_band_bytes,
        stats.rdma_bytes,
        stats.protocol.total_bad_input(),
        stats.backpressure_waits
    );
    trace.print_new(&vm);
    read_sectors_over_storvsp(&vm, disk_relid, &mut trace, disk)?;
    vm.unload().map_err(|e| e.to_string())?;
    trace.print_new(&vm);
    let size = usize::try_from(args.bench_mib << 20).map_err(|e| e.to_string())?;
    let report = measure_throughput(size).map_err(|e| e.to_string())?;
    println!("throughput, one {} MiB file:", args.bench_mib);
    for (name, t) in [("in-band", report.in_band), ("RDMA", report.rdma)] {
        println!(
            "  {name:<8} {:>8.0} MB/s ({} requests, {:.1} ms)",
            t.mb_per_s(),
            t.requests,
            t.elapsed.as_secs_f64() * 1e3
        );
    }
    println!("  RDMA / in-band = {:.2}x", report.ratio());
    let inline = measure_throughput_with(size, IoPolicy::Inline).map_err(|e| e.to_string())?;
    println!(
        "  with tree I/O inline on the channel's thread (no blocking-pool hand-off): \
         in-band {:.0} MB/s, RDMA {:.0} MB/s, {:.2}x",
        inline.in_band.mb_per_s(),
        inline.rdma.mb_per_s(),
        inline.ratio()
    );
    Ok(())
}

/// Reads the whole disk through storvsc → ring → storvsp and checks every
/// byte against the block device read directly.
fn read_sectors_over_storvsp(
    vm: &BusVm,
    relid: u32,
    trace: &mut TracePrinter,
    disk: Arc<dyn BlockDevice>,
) -> Result<(), String> {
    let mut through_storvsc = Vec::with_capacity(disk.size_bytes() as usize);
    let start = Instant::now();
    dump_on_bus(vm, relid, disk.clone(), &mut through_storvsc, &mut || {
        trace.print_new(vm)
    })
    .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    let mut direct = vec![0u8; disk.size_bytes() as usize];
    disk.read_sectors(0, &mut direct)
        .map_err(|e| e.to_string())?;
    if through_storvsc != direct {
        return Err("storvsp: sectors read through storvsc differ from the image".into());
    }
    println!(
        "storvsp: read the whole {} MiB disk as SCSI sectors through storvsc in {:.1} ms ({:.0} MB/s), all sectors match the image",
        direct.len() >> 20,
        secs * 1e3,
        direct.len() as f64 / secs.max(1e-9) / 1e6
    );
    Ok(())
}
