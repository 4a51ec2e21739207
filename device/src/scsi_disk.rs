//! A read-only SCSI direct-access disk over any [`BlockDevice`].
//!
//! [`ScsiDisk::execute`] runs one CDB: it validates the CDB, moves the
//! sectors of a READ into a caller-supplied [`DataSink`] (guest pages
//! through [`GuestBuffer`], or a `Vec` in tests), and returns the SCSI
//! status, sense data and the number of bytes transferred. Writes are
//! refused with DATA PROTECT. The disk keeps no per-command state, so many
//! requests can run at once from several threads.
//!
//! A READ asks the device where its sectors live ([`BlockDevice::locate`])
//! and moves each run in one step: file bytes straight into the sink
//! (`preadv2` into guest pages), holes as one fill, bytes in memory as one
//! copy; only runs the device cannot place go through a reused bounce
//! buffer. [`ScsiDisk::execute_nowait`] does the same without waiting for
//! the disk and says [`Attempt::WouldBlock`] when it would have to, so a
//! caller can run cached reads inline and send the rest to an I/O thread.

mod guest_buffer;
mod read;

use std::os::fd::BorrowedFd;
use std::sync::Arc;

pub use guest_buffer::GuestBuffer;
use vmbdev_block::BlockDevice;
use vmbdev_protocol::scsi::{
    self, BlockDeviceCharacteristicsPage, BlockLimitsPage, CachingModePage, Cdb6, Cdb10, Cdb12,
    Cdb16, DesignatorHeader, FixedSense, InquiryCdb, LogicalBlockProvisioningPage,
    ModeParameterHeader6, ModeParameterHeader10, ModeSense6Cdb, ModeSense10Cdb, Opcode,
    ReadCapacity10Data, ReadCapacity16Cdb, ReadCapacity16Data, ReportLunsCdb, ReportLunsHeader,
    ScsiStatus, SenseKey, StandardInquiry, VpdHeader, asc,
};
use vmbdev_ring::memory::{FileReadError, FileReadMode};
use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// Largest bounce buffer one read uses, in bytes.
pub const BOUNCE_BUFFER_SIZE: usize = 256 * 1024;

/// An error delivering data to the requester's buffer.
#[derive(Debug, thiserror::Error)]
#[error("cannot deliver {len} bytes at buffer offset {offset}: {reason}")]
pub struct SinkError {
    /// Offset inside the data buffer.
    pub offset: u64,
    /// Length of the failed write.
    pub len: usize,
    /// What went wrong.
    pub reason: String,
}

/// What a sink did with [`DataSink::read_file_at`].
#[derive(Debug)]
pub enum FileTransfer {
    /// All the bytes are in the buffer.
    Done,
    /// In [`FileReadMode::NoWait`], the file bytes are not all cached; the
    /// buffer may hold some of them. Read again, blocking.
    WouldBlock,
    /// The sink cannot read files itself: the disk reads the bytes and
    /// hands them to [`DataSink::write_at`].
    Unsupported,
    /// The file read failed (I/O error, or the file ended early); the
    /// buffer may hold some of the bytes.
    Failed(FileReadError),
}

/// Where data-in bytes go: a buffer addressed by byte offset.
pub trait DataSink {
    /// Stores `data` at `offset` bytes into the buffer.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SinkError>;

    /// Sets `len` bytes at `offset` to zero. The default writes from a
    /// static page of zeros.
    fn zero_at(&mut self, offset: u64, len: u64) -> Result<(), SinkError> {
        static ZEROS: [u8; 4096] = [0; 4096];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64) as usize;
            self.write_at(offset + done, &ZEROS[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Reads `len` bytes of `fd` at `file_offset` into the buffer at
    /// `offset`, with no copy in between if the sink can. An `Err` means
    /// the buffer refused the bytes (as for [`write_at`](Self::write_at)).
    /// The default is [`FileTransfer::Unsupported`].
    fn read_file_at(
        &mut self,
        offset: u64,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        len: u64,
        mode: FileReadMode,
    ) -> Result<FileTransfer, SinkError> {
        let _ = (offset, fd, file_offset, len, mode);
        Ok(FileTransfer::Unsupported)
    }
}

impl DataSink for Vec<u8> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        let start = usize::try_from(offset).map_err(|_| SinkError {
            offset,
            len: data.len(),
            reason: "offset does not fit in memory".into(),
        })?;
        let end = start.checked_add(data.len()).ok_or_else(|| SinkError {
            offset,
            len: data.len(),
            reason: "end of write overflows".into(),
        })?;
        if self.len() < end {
            self.resize(end, 0);
        }
        self[start..end].copy_from_slice(data);
        Ok(())
    }

    /// Reads with `preadv2` straight into the vector (grown to fit).
    fn read_file_at(
        &mut self,
        offset: u64,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        len: u64,
        mode: FileReadMode,
    ) -> Result<FileTransfer, SinkError> {
        let refuse = |reason: &str| SinkError {
            offset,
            len: len as usize,
            reason: reason.into(),
        };
        let start = usize::try_from(offset).map_err(|_| refuse("offset does not fit in memory"))?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .ok_or_else(|| refuse("end of read overflows"))?;
        if self.len() < end {
            self.resize(end, 0);
        }
        Ok(read::pread_into(
            fd,
            file_offset,
            &mut self[start..end],
            mode,
        ))
    }
}

/// Whether a command finished or needs a blocking retry, from
/// [`ScsiDisk::execute_nowait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The command ran to completion (any status).
    Done(CommandResult),
    /// A READ would have waited for the disk. The sink may hold some of
    /// its bytes; run the command again with [`ScsiDisk::execute`].
    WouldBlock,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    /// GOOD.
    Good,
    /// CHECK CONDITION with this sense data.
    CheckCondition(FixedSense),
    /// The command would move more data than the buffer holds; nothing was
    /// transferred.
    BufferTooSmall {
        /// Bytes the command needs.
        needed: u64,
    },
}

/// The result of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandResult {
    /// How it ended.
    pub status: CommandStatus,
    /// Data-in bytes delivered to the sink (from offset 0).
    pub transferred: usize,
}

impl CommandResult {
    fn good(transferred: usize) -> Self {
        Self {
            status: CommandStatus::Good,
            transferred,
        }
    }

    fn check(key: SenseKey, asc: u8) -> Self {
        Self {
            status: CommandStatus::CheckCondition(FixedSense::new(key, asc, 0)),
            transferred: 0,
        }
    }

    /// The SCSI status byte this result maps to.
    pub fn scsi_status(&self) -> ScsiStatus {
        match self.status {
            CommandStatus::Good | CommandStatus::BufferTooSmall { .. } => ScsiStatus::GOOD,
            CommandStatus::CheckCondition(_) => ScsiStatus::CHECK_CONDITION,
        }
    }

    /// The sense data, if the command ended in CHECK CONDITION.
    pub fn sense(&self) -> Option<FixedSense> {
        match self.status {
            CommandStatus::CheckCondition(sense) => Some(sense),
            _ => None,
        }
    }
}

fn illegal(asc: u8) -> CommandResult {
    CommandResult::check(SenseKey::ILLEGAL_REQUEST, asc)
}

/// Identity strings a disk reports in INQUIRY.
#[derive(Debug, Clone)]
pub struct DiskIdentity {
    /// T10 vendor (8 bytes, space padded).
    pub vendor: [u8; 8],
    /// Product (16 bytes, space padded).
    pub product: [u8; 16],
    /// Revision (4 bytes, space padded).
    pub revision: [u8; 4],
}

impl Default for DiskIdentity {
    fn default() -> Self {
        Self {
            vendor: *b"Msft    ",
            product: *b"Virtual Disk    ",
            revision: *b"1.0 ",
        }
    }
}

/// A read-only SCSI disk.
pub struct ScsiDisk {
    device: Arc<dyn BlockDevice>,
    identity: DiskIdentity,
    max_transfer_bytes: u32,
}

impl std::fmt::Debug for ScsiDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiDisk")
            .field("sector_size", &self.device.logical_sector_size())
            .field("sector_count", &self.device.sector_count())
            .finish()
    }
}

/// Supported VPD pages, ascending.
const SUPPORTED_VPD_PAGES: [u8; 6] = [
    scsi::VPD_SUPPORTED_PAGES,
    scsi::VPD_SERIAL_NUMBER,
    scsi::VPD_DEVICE_IDENTIFICATION,
    scsi::VPD_BLOCK_LIMITS,
    scsi::VPD_BLOCK_DEVICE_CHARACTERISTICS,
    scsi::VPD_LOGICAL_BLOCK_PROVISIONING,
];

impl ScsiDisk {
    /// A disk over `device` with the default identity and a 2 MiB maximum
    /// transfer reported in the block-limits page.
    pub fn new(device: Arc<dyn BlockDevice>) -> Self {
        Self {
            device,
            identity: DiskIdentity::default(),
            max_transfer_bytes: 2 * 1024 * 1024,
        }
    }

    /// Sets the identity reported by INQUIRY.
    pub fn with_identity(mut self, identity: DiskIdentity) -> Self {
        self.identity = identity;
        self
    }

    /// Sets the maximum transfer reported in VPD page 0xB0.
    pub fn with_max_transfer_bytes(mut self, bytes: u32) -> Self {
        self.max_transfer_bytes = bytes;
        self
    }

    /// The backing device.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.device
    }

    /// Executes `cdb`, delivering at most `buffer_len` data-in bytes to
    /// `sink`. Blocking: reads the backing device (each file run tries the
    /// page cache first, then waits). An `Err` means the sink refused the
    /// data (the requester's buffer is bad).
    pub fn execute(
        &self,
        cdb: &[u8],
        buffer_len: usize,
        sink: &mut dyn DataSink,
    ) -> Result<CommandResult, SinkError> {
        match self.run(cdb, buffer_len, sink, read::Wait::Allowed)? {
            Attempt::Done(result) => Ok(result),
            // A run that may wait never stops short; answer as for a
            // failed read rather than panic if that ever changed.
            Attempt::WouldBlock => Ok(CommandResult::check(
                SenseKey::MEDIUM_ERROR,
                asc::UNRECOVERED_READ_ERROR,
            )),
        }
    }

    /// Executes `cdb` like [`execute`](Self::execute) if that needs no
    /// wait for the disk: every command but READ always completes; a READ
    /// completes when its file bytes are in the page cache (and its other
    /// runs are zeros or in memory), else it stops with
    /// [`Attempt::WouldBlock`] and is run again with `execute`.
    pub fn execute_nowait(
        &self,
        cdb: &[u8],
        buffer_len: usize,
        sink: &mut dyn DataSink,
    ) -> Result<Attempt, SinkError> {
        self.run(cdb, buffer_len, sink, read::Wait::Never)
    }

    fn run(
        &self,
        cdb: &[u8],
        buffer_len: usize,
        sink: &mut dyn DataSink,
        wait: read::Wait,
    ) -> Result<Attempt, SinkError> {
        let Some(&first) = cdb.first() else {
            return Ok(Attempt::Done(illegal(asc::INVALID_COMMAND_OPERATION_CODE)));
        };
        if matches!(
            Opcode(first),
            Opcode::READ6 | Opcode::READ10 | Opcode::READ12 | Opcode::READ16
        ) {
            // `None` also for a CDB shorter than its opcode's length.
            let Some((lba, blocks)) = lba_and_length(cdb) else {
                return Ok(Attempt::Done(illegal(asc::INVALID_FIELD_IN_CDB)));
            };
            let mut out = Responder { sink, buffer_len };
            return self.read(lba, blocks, &mut out, wait);
        }
        self.execute_other(cdb, buffer_len, sink).map(Attempt::Done)
    }

    /// Every command but READ: none of them waits for the disk.
    fn execute_other(
        &self,
        cdb: &[u8],
        buffer_len: usize,
        sink: &mut dyn DataSink,
    ) -> Result<CommandResult, SinkError> {
        let Some(&first) = cdb.first() else {
            return Ok(illegal(asc::INVALID_COMMAND_OPERATION_CODE));
        };
        let opcode = Opcode(first);
        if let Some(needed) = opcode.cdb_length() {
            if cdb.len() < needed {
                return Ok(illegal(asc::INVALID_FIELD_IN_CDB));
            }
        }
        let mut out = Responder { sink, buffer_len };
        match opcode {
            Opcode::TEST_UNIT_READY
            | Opcode::START_STOP_UNIT
            | Opcode::SYNCHRONIZE_CACHE10
            | Opcode::SYNCHRONIZE_CACHE16
            | Opcode::PREVENT_ALLOW_MEDIUM_REMOVAL => Ok(CommandResult::good(0)),
            Opcode::INQUIRY => self.inquiry(cdb, &mut out),
            Opcode::REQUEST_SENSE => {
                let sense = FixedSense::new(SenseKey::NO_SENSE, asc::NO_ADDITIONAL_SENSE, 0);
                out.respond(sense.as_bytes(), u64::from(cdb[4]))
            }
            Opcode::READ_CAPACITY10 => self.read_capacity10(&mut out),
            Opcode::SERVICE_ACTION_IN16 => self.read_capacity16(cdb, &mut out),
            Opcode::MODE_SENSE6 | Opcode::MODE_SENSE10 => self.mode_sense(cdb, &mut out),
            Opcode::REPORT_LUNS => {
                let Some(alloc) = report_luns_allocation(cdb) else {
                    return Ok(illegal(asc::INVALID_FIELD_IN_CDB));
                };
                out.respond(&report_luns_data(&[0]), u64::from(alloc))
            }
            Opcode::VERIFY10 | Opcode::VERIFY12 | Opcode::VERIFY16 => {
                if cdb[1] & scsi::VERIFY_BYTCHK_MASK != 0 {
                    // Byte-compare needs a data-out buffer this disk does not take.
                    return Ok(illegal(asc::INVALID_FIELD_IN_CDB));
                }
                let Some((lba, blocks)) = lba_and_length(cdb) else {
                    return Ok(illegal(asc::INVALID_FIELD_IN_CDB));
                };
                Ok(self
                    .check_range(lba, blocks)
                    .unwrap_or(CommandResult::good(0)))
            }
            Opcode::WRITE6
            | Opcode::WRITE10
            | Opcode::WRITE12
            | Opcode::WRITE16
            | Opcode::WRITE_VERIFY10
            | Opcode::WRITE_VERIFY12
            | Opcode::WRITE_VERIFY16
            | Opcode::WRITE_SAME10
            | Opcode::WRITE_SAME16
            | Opcode::UNMAP
            | Opcode::COMPARE_AND_WRITE
            | Opcode::MODE_SELECT6
            | Opcode::MODE_SELECT10 => Ok(CommandResult::check(
                SenseKey::DATA_PROTECT,
                asc::WRITE_PROTECTED,
            )),
            _ => Ok(illegal(asc::INVALID_COMMAND_OPERATION_CODE)),
        }
    }

    fn standard_inquiry(&self) -> StandardInquiry {
        StandardInquiry {
            peripheral: scsi::PERIPHERAL_DIRECT_ACCESS,
            rmb: 0,
            version: 0x05,
            response_format: 0x12,
            additional_length: (size_of::<StandardInquiry>() - 5) as u8,
            flags5: 0,
            flags6: 0,
            flags7: 0x02,
            vendor: self.identity.vendor,
            product: self.identity.product,
            revision: self.identity.revision,
        }
    }

    fn inquiry(&self, cdb: &[u8], out: &mut Responder<'_>) -> Result<CommandResult, SinkError> {
        let Ok((cdb, _)) = InquiryCdb::read_from_prefix(cdb) else {
            return Ok(illegal(asc::INVALID_FIELD_IN_CDB));
        };
        let alloc = u64::from(cdb.allocation_length.get());
        if cdb.flags & scsi::INQUIRY_EVPD == 0 {
            if cdb.page_code != 0 {
                return Ok(illegal(asc::INVALID_FIELD_IN_CDB));
            }
            return out.respond(self.standard_inquiry().as_bytes(), alloc);
        }
        match self.vpd_page(cdb.page_code) {
            Some(page) => out.respond(&page, alloc),
            // Linux forces INQUIRY completions to GOOD, so an unsupported
            // page is answered with no data rather than CHECK CONDITION.
            None => Ok(CommandResult::good(0)),
        }
    }

    fn vpd_page(&self, code: u8) -> Option<Vec<u8>> {
        let body: Vec<u8> = match code {
            scsi::VPD_SUPPORTED_PAGES => SUPPORTED_VPD_PAGES.to_vec(),
            scsi::VPD_SERIAL_NUMBER => hex(&self.device.disk_id()).into_bytes(),
            scsi::VPD_DEVICE_IDENTIFICATION => self.device_identification(),
            scsi::VPD_BLOCK_LIMITS => self.block_limits().as_bytes().to_vec(),
            scsi::VPD_BLOCK_DEVICE_CHARACTERISTICS => {
                let mut page = BlockDeviceCharacteristicsPage::new_zeroed();
                page.rotation_rate = U16::new(1);
                page.as_bytes().to_vec()
            }
            scsi::VPD_LOGICAL_BLOCK_PROVISIONING => {
                // Fully provisioned and read-only: no UNMAP or WRITE SAME.
                LogicalBlockProvisioningPage::new_zeroed()
                    .as_bytes()
                    .to_vec()
            }
            _ => return None,
        };
        let header = VpdHeader {
            peripheral: scsi::PERIPHERAL_DIRECT_ACCESS,
            page_code: code,
            page_length: U16::new(body.len() as u16),
        };
        let mut page = header.as_bytes().to_vec();
        page.extend_from_slice(&body);
        Some(page)
    }

    /// Page 0x83: a T10 vendor designator with the disk id in hex, and an
    /// NAA designator derived from the disk id.
    fn device_identification(&self) -> Vec<u8> {
        let id = self.device.disk_id();
        let mut t10 = self.identity.vendor.to_vec();
        t10.extend_from_slice(hex(&id).as_bytes());
        let mut naa = id;
        // NAA 6 (IEEE registered extended) lives in the top nibble.
        naa[0] = 0x60 | (naa[0] & 0x0F);
        let mut out = Vec::new();
        for (code_set, kind, value) in [
            (
                scsi::CODE_SET_ASCII,
                scsi::DESIGNATOR_T10_VENDOR_ID,
                &t10[..],
            ),
            (scsi::CODE_SET_BINARY, scsi::DESIGNATOR_NAA, &naa[..]),
        ] {
            let header = DesignatorHeader {
                code_set,
                designator_type: kind,
                reserved: 0,
                length: value.len() as u8,
            };
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    fn block_limits(&self) -> BlockLimitsPage {
        let sector = self.device.logical_sector_size().max(1);
        let per_physical = (self.device.physical_sector_size() / sector).max(1);
        let mut page = BlockLimitsPage::new_zeroed();
        page.optimal_granularity = U16::new(per_physical.min(u32::from(u16::MAX)) as u16);
        page.max_transfer_length = U32::new(self.max_transfer_bytes / sector);
        page.optimal_transfer_length = U32::new(self.max_transfer_bytes / sector);
        page
    }

    fn read_capacity10(&self, out: &mut Responder<'_>) -> Result<CommandResult, SinkError> {
        let last = self.device.sector_count().saturating_sub(1);
        let data = ReadCapacity10Data {
            last_lba: U32::new(u32::try_from(last).unwrap_or(u32::MAX)),
            block_length: U32::new(self.device.logical_sector_size()),
        };
        out.respond(data.as_bytes(), 8)
    }

    fn read_capacity16(
        &self,
        cdb: &[u8],
        out: &mut Responder<'_>,
    ) -> Result<CommandResult, SinkError> {
        let Ok((cdb, _)) = ReadCapacity16Cdb::read_from_prefix(cdb) else {
            return Ok(illegal(asc::INVALID_FIELD_IN_CDB));
        };
        if cdb.service_action & 0x1F != scsi::SERVICE_ACTION_READ_CAPACITY16 {
            return Ok(illegal(asc::INVALID_FIELD_IN_CDB));
        }
        let sector = self.device.logical_sector_size().max(1);
        let per_physical = (self.device.physical_sector_size() / sector).max(1);
        let mut data = ReadCapacity16Data::new_zeroed();
        data.last_lba = U64::new(self.device.sector_count().saturating_sub(1));
        data.block_length = U32::new(sector);
        data.exponents = (per_physical.trailing_zeros() & 0x0F) as u8;
        out.respond(data.as_bytes(), u64::from(cdb.allocation_length.get()))
    }

    fn mode_sense(&self, cdb: &[u8], out: &mut Responder<'_>) -> Result<CommandResult, SinkError> {
        let six = cdb[0] == Opcode::MODE_SENSE6.0;
        let (page, subpage, alloc) = if six {
            let Ok((c, _)) = ModeSense6Cdb::read_from_prefix(cdb) else {
                return Ok(illegal(asc::INVALID_FIELD_IN_CDB));
            };
            (c.page, c.subpage, u64::from(c.allocation_length))
        } else {
            let Ok((c, _)) = ModeSense10Cdb::read_from_prefix(cdb) else {
                return Ok(illegal(asc::INVALID_FIELD_IN_CDB));
            };
            (c.page, c.subpage, u64::from(c.allocation_length.get()))
        };
        if page.page_control() == scsi::PAGE_CONTROL_SAVED {
            return Ok(illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED));
        }
        if subpage != 0 && subpage != 0xFF {
            return Ok(illegal(asc::INVALID_FIELD_IN_CDB));
        }
        let pages = match page.page_code() {
            scsi::MODE_PAGE_CACHING | scsi::MODE_PAGE_ALL => {
                let mut caching = CachingModePage::new_zeroed();
                caching.page_code = scsi::MODE_PAGE_CACHING;
                caching.page_length = (size_of::<CachingModePage>() - 2) as u8;
                // No write cache, read cache on: the changeable mask is all
                // zero, so the fields stay zero for every page control.
                caching.as_bytes().to_vec()
            }
            _ => return Ok(illegal(asc::INVALID_FIELD_IN_CDB)),
        };
        let mut data = if six {
            ModeParameterHeader6 {
                mode_data_length: (size_of::<ModeParameterHeader6>() - 1 + pages.len()) as u8,
                medium_type: 0,
                device_specific: scsi::MODE_DEVICE_SPECIFIC_WRITE_PROTECT,
                block_descriptor_length: 0,
            }
            .as_bytes()
            .to_vec()
        } else {
            ModeParameterHeader10 {
                mode_data_length: U16::new(
                    (size_of::<ModeParameterHeader10>() - 2 + pages.len()) as u16,
                ),
                medium_type: 0,
                device_specific: scsi::MODE_DEVICE_SPECIFIC_WRITE_PROTECT,
                flags: 0,
                reserved: 0,
                block_descriptor_length: U16::new(0),
            }
            .as_bytes()
            .to_vec()
        };
        data.extend_from_slice(&pages);
        out.respond(&data, alloc)
    }

    /// `None` if `blocks` at `lba` lie inside the disk, else LBA OUT OF RANGE.
    fn check_range(&self, lba: u64, blocks: u64) -> Option<CommandResult> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.device.sector_count() => None,
            _ => Some(illegal(asc::LBA_OUT_OF_RANGE)),
        }
    }
}

/// Delivers a response of known bytes, cut to the allocation length and the
/// buffer.
struct Responder<'a> {
    sink: &'a mut dyn DataSink,
    buffer_len: usize,
}

impl Responder<'_> {
    fn respond(&mut self, data: &[u8], allocation: u64) -> Result<CommandResult, SinkError> {
        let len = (data.len() as u64)
            .min(allocation)
            .min(self.buffer_len as u64) as usize;
        if len > 0 {
            self.sink.write_at(0, &data[..len])?;
        }
        Ok(CommandResult::good(len))
    }
}

/// The LBA and block count of a READ/WRITE/VERIFY CDB of any size, `None`
/// if the CDB is too short. READ(6) length 0 means 256 blocks.
pub fn lba_and_length(cdb: &[u8]) -> Option<(u64, u64)> {
    let opcode = Opcode(*cdb.first()?);
    match opcode.cdb_length()? {
        6 => {
            let (c, _) = Cdb6::read_from_prefix(cdb).ok()?;
            let lba = (u64::from(c.byte1 & 0x1F) << 16) | u64::from(c.lba_low.get());
            let blocks = if c.length == 0 {
                256
            } else {
                u64::from(c.length)
            };
            Some((lba, blocks))
        }
        10 => {
            let (c, _) = Cdb10::read_from_prefix(cdb).ok()?;
            Some((u64::from(c.lba.get()), u64::from(c.length.get())))
        }
        12 => {
            let (c, _) = Cdb12::read_from_prefix(cdb).ok()?;
            Some((u64::from(c.lba.get()), u64::from(c.length.get())))
        }
        16 => {
            let (c, _) = Cdb16::read_from_prefix(cdb).ok()?;
            Some((c.lba.get(), u64::from(c.length.get())))
        }
        _ => None,
    }
}

/// The allocation length of a REPORT LUNS CDB (`None` if too short).
pub fn report_luns_allocation(cdb: &[u8]) -> Option<u32> {
    let (c, _) = ReportLunsCdb::read_from_prefix(cdb).ok()?;
    Some(c.allocation_length.get())
}

/// REPORT LUNS parameter data listing `luns` in peripheral addressing.
pub fn report_luns_data(luns: &[u8]) -> Vec<u8> {
    let header = ReportLunsHeader {
        lun_list_length: U32::new((luns.len() * 8) as u32),
        reserved: U32::new(0),
    };
    let mut data = header.as_bytes().to_vec();
    for &lun in luns {
        // Peripheral device addressing: method 0, bus 0, LUN in byte 1.
        data.extend_from_slice(&[0, lun, 0, 0, 0, 0, 0, 0]);
    }
    data
}

/// Standard INQUIRY data for a LUN that is not present (byte 0 = 0x7F).
pub fn absent_lun_inquiry() -> StandardInquiry {
    let mut data = StandardInquiry::new_zeroed();
    data.peripheral = scsi::PERIPHERAL_NO_LUN;
    data.version = 0x05;
    data.response_format = 0x12;
    data.additional_length = (size_of::<StandardInquiry>() - 5) as u8;
    data
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02X}");
        s
    })
}

#[cfg(test)]
pub(crate) mod tests;
