//! SRB execution: checking an EXECUTE_SRB request against the
//! configuration, the LUN map and guest memory, and running it. Checking
//! happens when the channel hands out the job, so a bad request never
//! reaches a disk; [`SrbJob::run`] is the only place that does blocking
//! disk I/O and guest-memory copies.

use std::borrow::Cow;
use std::sync::Arc;

use vmbdev_protocol::scsi::{self, Opcode, VpdHeader};
use vmbdev_protocol::vstor::{
    self, DataDirection, NtStatus, ProtocolVersion, ScsiRequest, SrbStatus,
};
use vmbdev_ring::{GpaRange, GuestMemory};
use zerocopy::IntoBytes;
use zerocopy::little_endian::U32;

use super::config::LunCache;
use super::packet::completion_bytes;
use super::{Completion, Controller, LunAddress, StorvspConfig};
use crate::scsi_disk::{
    self, Attempt, CommandResult, CommandStatus, DataSink, GuestBuffer, ScsiDisk, SinkError,
};

/// What [`SrbJob::try_run`] did.
#[derive(Debug)]
pub enum Attempted {
    /// The SRB ran; its completion.
    Done(Completion),
    /// The SRB needs a wait for the disk: run it where blocking is allowed
    /// (the job now owns a copy of its buffer's page list).
    WouldBlock(SrbJob<'static>),
}

/// What an SRB may reach: the limits, disks and memory of its channel.
#[derive(Debug, Clone, Copy)]
pub(super) struct SrbContext<'a> {
    /// The controller's limits.
    pub config: &'a StorvspConfig,
    /// The LUN map the SRB is addressed into.
    pub controller: &'a Controller,
    /// The channel's last lookup in it.
    pub luns: &'a LunCache,
    /// Guest memory holding the data buffer.
    pub memory: &'a GuestMemory,
    /// The negotiated version, which bounds the sense data returned.
    pub version: ProtocolVersion,
}

/// Where the completion of an SRB goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplyTo {
    /// Transaction id of the request.
    pub transaction_id: u64,
    /// Payload size the request came with, echoed in the completion.
    pub reply_len: usize,
}

/// Why an SRB was refused before running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RejectReason {
    /// Bad SRB fields (length, CDB length, direction, transfer size).
    Malformed,
    /// Bad data buffer (missing, several ranges, too short, outside memory).
    Buffer,
}

// `repr(C)` here and on `Plan`: with the default layout the compiler packs
// the variants around each other's niches, and moving a plan then loads
// words at odd offsets straight after storing them (a store-forwarding
// stall on every request: 2-6% of a 4 KiB read at depths 16 and 32).
#[derive(Debug)]
#[repr(C)]
enum Target {
    Disk(Arc<ScsiDisk>),
    Absent,
    ReportLuns(Vec<u8>),
}

/// The CDB of an SRB, copied out of the request.
#[derive(Debug, Clone, Copy)]
struct Cdb {
    bytes: [u8; vstor::MAX_CDB_SIZE],
    len: usize,
}

impl Cdb {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The first `length` bytes of the request's (checked) page range. The
/// range is borrowed from the request while the job runs inline, so a long
/// page list is never copied; a job handed to another thread owns a copy.
#[derive(Debug)]
struct DataBuffer<'a> {
    range: Cow<'a, GpaRange>,
    length: u32,
}

impl DataBuffer<'_> {
    fn into_owned(self) -> DataBuffer<'static> {
        DataBuffer {
            range: Cow::Owned(self.range.into_owned()),
            length: self.length,
        }
    }
}

#[derive(Debug)]
#[repr(C)]
enum Plan<'a> {
    Reject(RejectReason),
    Run {
        cdb: Cdb,
        target: Target,
        buffer: Option<DataBuffer<'a>>,
        readable: bool,
    },
}

/// An SRB ready to run. [`SrbJob::run`] does the (blocking) disk I/O and
/// guest-memory copies and returns the completion to send. It borrows the
/// request's ranges (`'a`); [`into_owned`](Self::into_owned) makes a job
/// that can be sent elsewhere.
#[derive(Debug)]
pub struct SrbJob<'a> {
    transaction_id: u64,
    reply_len: usize,
    srb: ScsiRequest,
    sense_capacity: usize,
    plan: Plan<'a>,
}

/// A sink for requests with no buffer; never written (the buffer length
/// passed with it is 0).
struct NoSink;

impl DataSink for NoSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        Err(SinkError {
            offset,
            len: data.len(),
            reason: "request has no data-in buffer".into(),
        })
    }
}

impl<'a> SrbJob<'a> {
    /// Checks the SRB in `body` (`body_len` bytes of it were received) and
    /// packages it to run; a refused SRB becomes a job that only completes.
    pub(super) fn prepare(
        context: &SrbContext<'_>,
        body: &[u8; vstor::MAX_BODY_SIZE],
        body_len: usize,
        ranges: &'a [GpaRange],
        reply_to: ReplyTo,
    ) -> Self {
        // The body array is exactly the size of the WIN8 SRB.
        let srb: ScsiRequest = zerocopy::transmute!(*body);
        let plan = plan(context, &srb, body_len, ranges).unwrap_or_else(Plan::Reject);
        Self {
            transaction_id: reply_to.transaction_id,
            reply_len: reply_to.reply_len,
            srb,
            sense_capacity: usize::from(srb.sense_info_length).min(context.version.sense_size()),
            plan,
        }
    }

    /// Transaction id of the request.
    pub fn transaction_id(&self) -> u64 {
        self.transaction_id
    }

    /// The data buffer length the guest asked for (0 for none).
    pub fn data_length(&self) -> u32 {
        self.srb.data_transfer_length.get()
    }

    /// The same job holding its own copy of the buffer's page list (one
    /// allocation for a list too long to store inline), free of the
    /// request it was prepared from.
    pub fn into_owned(self) -> SrbJob<'static> {
        let plan = match self.plan {
            Plan::Reject(reason) => Plan::Reject(reason),
            Plan::Run {
                cdb,
                target,
                buffer,
                readable,
            } => Plan::Run {
                cdb,
                target,
                buffer: buffer.map(DataBuffer::into_owned),
                readable,
            },
        };
        SrbJob {
            transaction_id: self.transaction_id,
            reply_len: self.reply_len,
            srb: self.srb,
            sense_capacity: self.sense_capacity,
            plan,
        }
    }

    /// Runs the SRB (blocking) and builds its completion. `memory` is the
    /// guest memory of the channel that prepared the job (its buffer was
    /// checked against it); the job holds none of its own, so one run
    /// inline costs no reference-count update.
    pub fn run(self, memory: &GuestMemory) -> Completion {
        let result = self.execute(memory, Wait::Allowed);
        self.completion(result)
    }

    /// Runs the SRB if it needs no wait for the disk (every command but a
    /// READ whose file bytes are not all in the page cache) and builds its
    /// completion; otherwise hands the job back, for [`run`](Self::run)
    /// where blocking is allowed. The guest buffer may hold part of the
    /// data then; the blocking run writes all of it again.
    pub fn try_run(self, memory: &GuestMemory) -> Attempted {
        let result = self.execute(memory, Wait::Never);
        if matches!(result, Some(Ok(TargetResult::WouldBlock))) {
            return Attempted::WouldBlock(self.into_owned());
        }
        Attempted::Done(self.completion(result))
    }

    /// Runs the plan; `None` for a refused SRB.
    fn execute(&self, memory: &GuestMemory, wait: Wait) -> Option<Result<TargetResult, SinkError>> {
        match &self.plan {
            Plan::Reject(_) => None,
            Plan::Run {
                cdb,
                target,
                buffer,
                readable,
            } => Some(run_plan(
                memory,
                target,
                cdb.as_slice(),
                buffer.as_ref(),
                *readable,
                wait,
            )),
        }
    }

    /// The completion of a run (`None`: of a refused SRB).
    fn completion(&self, result: Option<Result<TargetResult, SinkError>>) -> Completion {
        let mut srb = self.srb;
        let status = match result {
            None => {
                if let Plan::Reject(reason) = &self.plan {
                    tracing::debug!(?reason, "SRB refused");
                }
                reject(&mut srb);
                NtStatus::INVALID_PARAMETER
            }
            Some(result) => {
                self.fill(&mut srb, result);
                NtStatus::SUCCESS
            }
        };
        Completion {
            transaction_id: self.transaction_id,
            bytes: completion_bytes(self.reply_len, status, srb.as_bytes()),
        }
    }

    fn fill(&self, srb: &mut ScsiRequest, result: Result<TargetResult, SinkError>) {
        srb.cdb_or_sense = [0; vstor::CDB_SENSE_UNION_SIZE];
        srb.sense_info_length = 0;
        srb.scsi_status = scsi::ScsiStatus::GOOD.0;
        let (srb_status, transferred) = match result {
            Err(error) => {
                tracing::debug!(%error, "SRB data buffer failed");
                (SrbStatus::ERROR.0, 0)
            }
            Ok(TargetResult::InvalidLun) => (SrbStatus::INVALID_LUN.0, 0),
            // A blocking run never stops short (and one that may not wait
            // is retried before its completion is built); answer as for a
            // failed transfer rather than panic if that ever changed.
            Ok(TargetResult::WouldBlock) => (SrbStatus::ERROR.0, 0),
            Ok(TargetResult::Command(result)) => match result.status {
                CommandStatus::Good => (SrbStatus::SUCCESS.0, result.transferred),
                CommandStatus::BufferTooSmall { .. } => (SrbStatus::DATA_OVERRUN.0, 0),
                CommandStatus::CheckCondition(sense) => {
                    srb.scsi_status = scsi::ScsiStatus::CHECK_CONDITION.0;
                    let sense = sense.as_bytes();
                    let len = self.sense_capacity.min(sense.len());
                    srb.cdb_or_sense[..len].copy_from_slice(&sense[..len]);
                    srb.sense_info_length = len as u8;
                    let autosense = if len > 0 {
                        vstor::SRB_STATUS_AUTOSENSE_VALID
                    } else {
                        0
                    };
                    (SrbStatus::ERROR.0 | autosense, result.transferred)
                }
            },
        };
        srb.srb_status = srb_status;
        srb.data_transfer_length = U32::new(transferred as u32);
    }
}

/// Runs the CDB with the guest buffer (in `memory`) as data-in sink when
/// the guest reads; otherwise nothing may be written back.
fn run_plan(
    memory: &GuestMemory,
    target: &Target,
    cdb: &[u8],
    buffer: Option<&DataBuffer<'_>>,
    readable: bool,
    wait: Wait,
) -> Result<TargetResult, SinkError> {
    match buffer {
        Some(buffer) if readable => {
            // Reads land in the guest's pages straight from the image
            // file (one copy), zeros as one fill.
            let mut sink = GuestBuffer::prefix(memory, &buffer.range, buffer.length);
            run_target(target, cdb, buffer.length as usize, &mut sink, wait)
        }
        _ => run_target(target, cdb, 0, &mut NoSink, wait),
    }
}

/// Zeroes what a refused SRB reports back.
fn reject(srb: &mut ScsiRequest) {
    srb.srb_status = SrbStatus::INVALID_REQUEST.0;
    srb.scsi_status = scsi::ScsiStatus::GOOD.0;
    srb.data_transfer_length = U32::new(0);
    srb.sense_info_length = 0;
}

/// Validates an SRB and decides what running it means.
fn plan<'a>(
    context: &SrbContext<'_>,
    srb: &ScsiRequest,
    body_len: usize,
    ranges: &'a [GpaRange],
) -> Result<Plan<'a>, RejectReason> {
    let cdb_len = check_fields(srb, body_len, context.config.max_transfer_bytes)?;
    let length = srb.data_transfer_length.get();
    let buffer = data_buffer(context.memory, ranges, length)?;
    // All 16 bytes are copied whatever the length (only `..len` is ever
    // read): a fixed-size copy is a few register moves, where a copy of
    // a variable length is a call.
    let mut bytes = [0; vstor::MAX_CDB_SIZE];
    bytes.copy_from_slice(&srb.cdb_or_sense[..vstor::MAX_CDB_SIZE]);
    let cdb = Cdb {
        bytes,
        len: cdb_len,
    };
    let address = LunAddress {
        path: srb.path_id,
        target: srb.target_id,
        lun: srb.lun,
    };
    let target = target_of(context, cdb.as_slice(), address);
    Ok(Plan::Run {
        cdb,
        target,
        buffer,
        readable: srb.data_in == DataDirection::READ,
    })
}

/// Checks the SRB's own fields and returns its CDB length.
fn check_fields(
    srb: &ScsiRequest,
    body_len: usize,
    max_transfer_bytes: u32,
) -> Result<usize, RejectReason> {
    if body_len < vstor::SRB_SIZE_PRE_WIN8 {
        return Err(RejectReason::Malformed);
    }
    let cdb_len = usize::from(srb.cdb_length);
    if cdb_len == 0 || cdb_len > vstor::MAX_CDB_SIZE {
        return Err(RejectReason::Malformed);
    }
    if !matches!(
        srb.data_in,
        DataDirection::READ | DataDirection::WRITE | DataDirection::NONE
    ) {
        return Err(RejectReason::Malformed);
    }
    if srb.data_transfer_length.get() > max_transfer_bytes {
        return Err(RejectReason::Malformed);
    }
    Ok(cdb_len)
}

/// The guest buffer of `length` bytes, checked against guest memory.
fn data_buffer<'a>(
    memory: &GuestMemory,
    ranges: &'a [GpaRange],
    length: u32,
) -> Result<Option<DataBuffer<'a>>, RejectReason> {
    if ranges.len() > 1 {
        return Err(RejectReason::Buffer);
    }
    if length == 0 {
        return Ok(None);
    }
    let range = ranges.first().ok_or(RejectReason::Buffer)?;
    if range.byte_count() < length {
        return Err(RejectReason::Buffer);
    }
    // Every page must be inside guest memory before any I/O starts.
    range
        .check_access(memory, 0, u64::from(length))
        .map_err(|_| RejectReason::Buffer)?;
    Ok(Some(DataBuffer {
        range: Cow::Borrowed(range),
        length,
    }))
}

/// What the CDB at `address` runs against; REPORT LUNS is answered by the
/// controller whatever LUN it names.
fn target_of(context: &SrbContext<'_>, cdb: &[u8], address: LunAddress) -> Target {
    let controller = context.controller;
    if cdb.first() == Some(&Opcode::REPORT_LUNS.0) {
        return Target::ReportLuns(controller.luns_of(address.path, address.target));
    }
    match context.luns.get(controller, address) {
        Some(disk) => Target::Disk(disk),
        None => Target::Absent,
    }
}

enum TargetResult {
    Command(CommandResult),
    InvalidLun,
    /// A READ would have waited for the disk (only under [`Wait::Never`]).
    WouldBlock,
}

/// Whether running an SRB may wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Allowed,
    Never,
}

/// Runs a CDB against a LUN, an absent LUN or the controller's LUN list.
fn run_target(
    target: &Target,
    cdb: &[u8],
    limit: usize,
    sink: &mut dyn DataSink,
    wait: Wait,
) -> Result<TargetResult, SinkError> {
    match target {
        Target::Disk(disk) if wait == Wait::Allowed => {
            disk.execute(cdb, limit, sink).map(TargetResult::Command)
        }
        Target::Disk(disk) => Ok(match disk.execute_nowait(cdb, limit, sink)? {
            Attempt::Done(result) => TargetResult::Command(result),
            Attempt::WouldBlock => TargetResult::WouldBlock,
        }),
        Target::ReportLuns(luns) => {
            let data = scsi_disk::report_luns_data(luns);
            // UEFI sends allocation length 0 and means the whole buffer.
            let alloc = match scsi_disk::report_luns_allocation(cdb) {
                Some(0) | None => limit,
                Some(n) => n as usize,
            };
            deliver(&data, alloc.min(limit), sink)
        }
        Target::Absent => {
            if cdb.first() != Some(&Opcode::INQUIRY.0) || cdb.len() < 6 {
                return Ok(TargetResult::InvalidLun);
            }
            let alloc = usize::from(u16::from_be_bytes([cdb[3], cdb[4]]));
            let data = if cdb[1] & scsi::INQUIRY_EVPD != 0 {
                VpdHeader {
                    peripheral: scsi::PERIPHERAL_NO_LUN,
                    page_code: cdb[2],
                    page_length: zerocopy::big_endian::U16::new(0),
                }
                .as_bytes()
                .to_vec()
            } else {
                scsi_disk::absent_lun_inquiry().as_bytes().to_vec()
            };
            deliver(&data, alloc.min(limit), sink)
        }
    }
}

fn deliver(data: &[u8], limit: usize, sink: &mut dyn DataSink) -> Result<TargetResult, SinkError> {
    let len = data.len().min(limit);
    if len > 0 {
        sink.write_at(0, &data[..len])?;
    }
    Ok(TargetResult::Command(CommandResult {
        status: CommandStatus::Good,
        transferred: len,
    }))
}
