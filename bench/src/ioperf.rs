//! The storvsp request path in the shape of OpenVMM's `ioperf` benchmark,
//! so the two can be compared side by side: one thread runs both the
//! storvsp channel task and a minimal raw guest (no storvsc driver), over
//! 16 KiB rings each way, against a 64 KiB RAM disk. Each request is an
//! EXECUTE_SRB READ(10) of LBA 1, 8 sectors (4 KiB), GPA-direct into one
//! guest page, protocol WIN8.1; one iteration sends `depth` requests, then
//! reads `depth` completions. Beside the rate it reports the host CPU time
//! per request of the whole process (the device may hand reads to threads
//! of its own).
//!
//! [`IoperfRig`] is also what the allocation-count test drives, so it
//! allocates nothing per iteration itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_lite::future::{block_on, or};
use vmbdev_block::MemoryDisk;
use vmbdev_device::bus::{BusError, ChannelError, NoSubChannels, OpenRequest, VmbusDevice};
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{Controller, LunAddress, StorvspConfig, StorvspDevice};
use vmbdev_protocol::scsi::Opcode;
use vmbdev_protocol::vstor::{
    self, DataDirection, FLAG_REQUEST_COMPLETION, NtStatus, Operation, PacketHeader,
    ProtocolVersion, ScsiRequest, SrbPacket, SrbStatus, VersionBody,
};
use vmbdev_ring::{
    BorrowedKind, Endpoint, GpaRange, LoopbackConfig, LoopbackError, OutgoingPacket, RingError,
    loopback,
};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::cpu::{CpuUnit, Stopwatch};

/// Depths the benchmark runs, as OpenVMM's (plus 32).
pub const DEPTHS: [usize; 4] = [1, 4, 16, 32];

/// Size of the RAM disk.
const DISK_BYTES: usize = 64 * 1024;
/// Data pages of each ring half (16 KiB).
const RING_PAGES: u32 = 4;
/// Bytes one request reads.
pub const READ_BYTES: u32 = 4096;

/// Why the rig failed.
#[derive(Debug, thiserror::Error)]
pub enum IoperfError {
    /// The loopback channel could not be built.
    #[error(transparent)]
    Loopback(#[from] LoopbackError),
    /// The device refused its configuration or the channel.
    #[error(transparent)]
    Device(#[from] BusError),
    /// The device configuration was refused.
    #[error(transparent)]
    Config(#[from] vmbdev_device::storvsp::ConfigError),
    /// A ring operation of the guest side failed.
    #[error("guest ring: {0}")]
    Ring(#[from] RingError),
    /// A GPA range could not be built.
    #[error("guest buffer: {0}")]
    Gpa(#[from] vmbdev_ring::GpaError),
    /// The device task ended.
    #[error("the storvsp channel task ended: {0:?}")]
    DeviceEnded(Option<ChannelError>),
    /// The device answered something else than expected.
    #[error("unexpected completion: {0}")]
    Unexpected(&'static str),
}

type DeviceTask = Pin<Box<dyn Future<Output = Result<(), ChannelError>> + Send>>;

/// A storvsp channel and a raw guest on one thread, initialized and ready
/// to send READs.
pub struct IoperfRig {
    device: Arc<StorvspDevice>,
    task: DeviceTask,
    guest: Endpoint,
    request: SrbPacket,
    buffer: GpaRange,
    next_tid: u64,
}

impl std::fmt::Debug for IoperfRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoperfRig")
            .field("next_tid", &self.next_tid)
            .finish_non_exhaustive()
    }
}

/// The READ(10) SRB of every request: LBA 1, 8 sectors.
fn read_request() -> SrbPacket {
    let mut srb = ScsiRequest::new_zeroed();
    srb.length = U16::new(vstor::SRB_SIZE_WIN8 as u16);
    srb.cdb_length = 10;
    srb.sense_info_length = vstor::SENSE_SIZE_WIN8 as u8;
    srb.data_in = DataDirection::READ;
    srb.data_transfer_length = U32::new(READ_BYTES);
    srb.cdb_or_sense[..10].copy_from_slice(&[Opcode::READ10.0, 0, 0, 0, 0, 1, 0, 0, 8, 0]);
    SrbPacket {
        header: request_header(Operation::EXECUTE_SRB),
        srb,
    }
}

fn request_header(operation: Operation) -> PacketHeader {
    PacketHeader {
        operation,
        flags: U32::new(FLAG_REQUEST_COMPLETION),
        status: NtStatus::SUCCESS,
    }
}

impl IoperfRig {
    /// Builds the device, the rings and the guest, and runs the vstor
    /// handshake (WIN8.1).
    pub fn new() -> Result<Self, IoperfError> {
        let lb = loopback(&LoopbackConfig {
            incoming_pages: RING_PAGES,
            outgoing_pages: RING_PAGES,
            buffer_pages: 1,
            ..LoopbackConfig::default()
        })?;
        let controller = Arc::new(Controller::new());
        let disk = MemoryDisk::new(vec![0; DISK_BYTES]);
        controller.insert(
            LunAddress {
                path: 0,
                target: 0,
                lun: 0,
            },
            Arc::new(ScsiDisk::new(Arc::new(disk))),
        );
        let device = Arc::new(
            StorvspDevice::new(StorvspConfig::default(), controller)?.with_queue_depth(256),
        );
        let page = lb.pages.alloc(1)?;
        let buffer = GpaRange::new(READ_BYTES, 0, page)?;
        let task = device.open(
            0,
            OpenRequest {
                endpoint: lb.host,
                memory: lb.memory.clone(),
                gpadls: vmbdev_ring::GpadlRegistry::new(),
                sub_channels: Arc::new(NoSubChannels),
            },
        )?;
        let mut rig = Self {
            device,
            task,
            guest: lb.guest,
            request: read_request(),
            buffer,
            next_tid: 1,
        };
        rig.handshake()?;
        Ok(rig)
    }

    fn handshake(&mut self) -> Result<(), IoperfError> {
        let version = VersionBody {
            major_minor: U16::new(ProtocolVersion::WIN8_1.0),
            revision: U16::new(0),
        };
        for (operation, body) in [
            (Operation::BEGIN_INITIALIZATION, &[][..]),
            (Operation::QUERY_PROTOCOL_VERSION, version.as_bytes()),
            (Operation::QUERY_PROPERTIES, &[][..]),
            (Operation::END_INITIALIZATION, &[][..]),
        ] {
            let mut payload = [0u8; vstor::PACKET_SIZE_WIN8];
            payload[..vstor::HEADER_SIZE].copy_from_slice(request_header(operation).as_bytes());
            payload[vstor::HEADER_SIZE..vstor::HEADER_SIZE + body.len()].copy_from_slice(body);
            let guest = &mut self.guest;
            let tid = self.next_tid;
            self.next_tid += 1;
            let exchange = async {
                guest
                    .writer
                    .write(&OutgoingPacket::request(tid, &payload))
                    .await?;
                let mut status = None;
                while status.is_none() {
                    guest.reader.wait_readable().await?;
                    guest.reader.try_read_batch_borrowed(1, |packet| {
                        status = Some(completion_status(packet.payload).map(|s| s.0));
                    })?;
                }
                Ok::<_, IoperfError>(status.flatten())
            };
            let status = drive(&mut self.task, exchange)??;
            if status != Some(NtStatus::SUCCESS.0) {
                return Err(IoperfError::Unexpected("handshake step failed"));
            }
        }
        Ok(())
    }

    /// Runs `iterations` iterations of `depth` requests then `depth`
    /// completions; returns how many completions reported a good 4 KiB read.
    pub fn run(&mut self, iterations: u64, depth: usize) -> Result<u64, IoperfError> {
        let guest = &mut self.guest;
        let request = self.request.as_bytes();
        let ranges = std::slice::from_ref(&self.buffer);
        let next_tid = &mut self.next_tid;
        let work = async move {
            let mut good = 0u64;
            for _ in 0..iterations {
                for _ in 0..depth {
                    let packet = OutgoingPacket::gpa_direct(*next_tid, ranges, request);
                    *next_tid += 1;
                    while !guest.writer.try_write_unpublished(&packet)? {
                        guest
                            .writer
                            .wait_write_ready(packet.ring_len()? as usize)
                            .await?;
                    }
                }
                guest.writer.publish()?;
                let mut seen = 0usize;
                while seen < depth {
                    // Returns at once if completions are already there.
                    guest.reader.wait_readable().await?;
                    seen += guest
                        .reader
                        .try_read_batch_borrowed(depth - seen, |packet| {
                            if matches!(packet.kind, BorrowedKind::Completion)
                                && read_succeeded(packet.payload)
                            {
                                good += 1;
                            }
                        })?;
                }
            }
            Ok::<_, IoperfError>(good)
        };
        drive(&mut self.task, work)?
    }

    /// Runs `iterations` of `depth` and measures them.
    pub fn measure(&mut self, iterations: u64, depth: usize) -> Result<IoperfRow, IoperfError> {
        let watch = Stopwatch::start();
        let good = self.run(iterations, depth)?;
        let span = watch.stop();
        let wall = span.secs();
        let requests = iterations * depth as u64;
        if good != requests {
            return Err(IoperfError::Unexpected("a READ did not succeed"));
        }
        Ok(IoperfRow {
            depth,
            iops: requests as f64 / wall,
            us_per_iteration: wall * 1e6 / iterations as f64,
            cpu_ns_per_request: CpuUnit::NsPerRequest.per(span.cpu, requests as f64),
        })
    }
}

impl Drop for IoperfRig {
    fn drop(&mut self) {
        if self.device.close(0).is_ok() {
            let _ = block_on(self.task.as_mut());
        }
    }
}

/// Polls `work` and the device task together on this thread until `work`
/// ends; an ended device task is an error.
fn drive<T>(task: &mut DeviceTask, work: impl Future<Output = T>) -> Result<T, IoperfError> {
    block_on(or(async { Ok(work.await) }, async {
        let result = task.as_mut().await;
        Err(IoperfError::DeviceEnded(result.err()))
    }))
}

fn completion_status(payload: &[u8]) -> Option<NtStatus> {
    let (header, _) = PacketHeader::read_from_prefix(payload).ok()?;
    (header.operation == Operation::COMPLETE_IO).then_some(header.status)
}

/// Whether a completion reports SRB success with all 4 KiB moved.
fn read_succeeded(payload: &[u8]) -> bool {
    let Ok(packet) = SrbPacket::read_from_prefix(payload).map(|(p, _)| p) else {
        return false;
    };
    packet.header.operation == Operation::COMPLETE_IO
        && packet.header.status == NtStatus::SUCCESS
        && packet.srb.srb_status & 0x3F == SrbStatus::SUCCESS.0
        && packet.srb.data_transfer_length.get() == READ_BYTES
}

/// One measured depth.
#[derive(Debug, Clone, Copy)]
pub struct IoperfRow {
    /// Requests in flight per iteration.
    pub depth: usize,
    /// Requests per second.
    pub iops: f64,
    /// Wall time of one iteration (`depth` requests and completions).
    pub us_per_iteration: f64,
    /// CPU time of the process (device and guest) per request, ns.
    pub cpu_ns_per_request: f64,
}

/// Measures every depth of [`DEPTHS`] for about `requests_per_depth`
/// requests each, after a warm-up.
pub fn run_all(requests_per_depth: u64) -> Result<Vec<IoperfRow>, IoperfError> {
    run_depths(&DEPTHS, requests_per_depth)
}

/// Measures each of `depths` for about `requests_per_depth` requests, after
/// a warm-up (one depth alone is what a profile wants).
pub fn run_depths(
    depths: &[usize],
    requests_per_depth: u64,
) -> Result<Vec<IoperfRow>, IoperfError> {
    let mut rig = IoperfRig::new()?;
    depths
        .iter()
        .map(|&depth| {
            let iterations = (requests_per_depth / depth as u64).max(1);
            rig.run((iterations / 10).max(1), depth)?;
            rig.measure(iterations, depth)
        })
        .collect()
}

/// The rows as a text table.
pub fn table(rows: &[IoperfRow]) -> String {
    let mut out = String::from("depth        IOPS   µs/iter  CPU ns/request\n");
    for row in rows {
        out.push_str(&format!(
            "{:>5} {:>11.0} {:>9.2} {:>15.0}\n",
            row.depth, row.iops, row.us_per_iteration, row.cpu_ns_per_request
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_depth_reports_positive_cpu_per_request() {
        let rows = run_all(64).unwrap();
        assert_eq!(rows.iter().map(|r| r.depth).collect::<Vec<_>>(), DEPTHS);
        for r in &rows {
            assert!(r.iops > 0.0, "{r:?}");
            let cpu = r.cpu_ns_per_request;
            assert!(cpu.is_finite() && cpu > 0.0, "{r:?}");
        }
    }
}
