//! The READ data transfer: each run of sectors the device reports moves
//! into the sink in one step, file bytes without a host copy when the sink
//! can take them straight from the file.

use std::io::IoSliceMut;
use std::os::fd::BorrowedFd;

use vmbdev_block::{BlockError, Extent};
use vmbdev_protocol::scsi::{SenseKey, asc};
use vmbdev_ring::memory::{FileReadError, FileReadMode};

use super::{
    Attempt, BOUNCE_BUFFER_SIZE, CommandResult, CommandStatus, DataSink, FileTransfer, Responder,
    ScsiDisk, SinkError,
};

/// Whether a READ may wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Try the page cache first, then wait.
    Allowed,
    /// Stop with [`Attempt::WouldBlock`] instead of waiting.
    Never,
}

/// How moving one run ended.
enum Run {
    Done,
    WouldBlock,
    Failed(String),
}

impl ScsiDisk {
    /// READ of `blocks` sectors at `lba` into the responder's sink.
    pub(super) fn read(
        &self,
        lba: u64,
        blocks: u64,
        out: &mut Responder<'_>,
        wait: Wait,
    ) -> Result<Attempt, SinkError> {
        if let Some(error) = self.check_range(lba, blocks) {
            return Ok(Attempt::Done(error));
        }
        let sector_size = self.device.logical_sector_size().max(1);
        let sector = u64::from(sector_size);
        let needed = blocks.saturating_mul(sector);
        if needed > out.buffer_len as u64 {
            return Ok(Attempt::Done(CommandResult {
                status: CommandStatus::BufferTooSmall { needed },
                transferred: 0,
            }));
        }
        let mut done = 0u64;
        while done < blocks {
            let at = done * sector;
            let extent = match self.device.locate(lba + done, blocks - done) {
                Ok(extent) => extent,
                Err(error) => return Ok(Attempt::Done(read_failure(&error, at))),
            };
            let n = extent.sectors().min(blocks - done);
            if n == 0 {
                // A device reporting an empty run would never finish.
                let error = BlockError::Corrupt(format!("empty extent at sector {}", lba + done));
                return Ok(Attempt::Done(read_failure(&error, at)));
            }
            let len = n * sector;
            let run = match extent {
                Extent::File { fd, offset, .. } => file_run(out.sink, at, fd, offset, len, wait)?,
                Extent::Memory { bytes, .. } => match bytes.get(..len as usize) {
                    Some(bytes) => {
                        out.sink.write_at(at, bytes)?;
                        Run::Done
                    }
                    None => Run::Failed(format!(
                        "memory extent of {} bytes for {len} at sector {}",
                        bytes.len(),
                        lba + done
                    )),
                },
                Extent::Zero { .. } => {
                    out.sink.zero_at(at, len)?;
                    Run::Done
                }
                // A copy goes through `read_sectors`, which may wait.
                Extent::Copy { .. } if wait == Wait::Never => Run::WouldBlock,
                Extent::Copy { .. } => self.copy_run(out.sink, lba + done, at, len)?,
            };
            match run {
                Run::Done => done += n,
                Run::WouldBlock => return Ok(Attempt::WouldBlock),
                Run::Failed(reason) => {
                    let error = BlockError::Corrupt(reason);
                    return Ok(Attempt::Done(read_failure(&error, at)));
                }
            }
        }
        Ok(Attempt::Done(CommandResult::good(needed as usize)))
    }

    /// Reads `len` bytes at sector `lba` with `read_sectors` through the
    /// bounce buffer into the sink at `at`.
    fn copy_run(
        &self,
        sink: &mut dyn DataSink,
        lba: u64,
        at: u64,
        len: u64,
    ) -> Result<Run, SinkError> {
        let sector = u64::from(self.device.logical_sector_size().max(1));
        let chunk = (BOUNCE_BUFFER_SIZE as u64 / sector).max(1) * sector;
        with_bounce(len.min(chunk) as usize, |bounce| {
            let mut done = 0u64;
            while done < len {
                let buf = &mut bounce[..(len - done).min(chunk) as usize];
                if let Err(error) = self.device.read_sectors(lba + done / sector, buf) {
                    return Ok(Run::Failed(error.to_string()));
                }
                sink.write_at(at + done, buf)?;
                done += buf.len() as u64;
            }
            Ok(Run::Done)
        })
    }
}

/// Moves `len` file bytes at `offset` into the sink at `at`: straight in if
/// the sink can, from the page cache first, waiting only when allowed.
fn file_run(
    sink: &mut dyn DataSink,
    at: u64,
    fd: BorrowedFd<'_>,
    offset: u64,
    len: u64,
    wait: Wait,
) -> Result<Run, SinkError> {
    let mut transfer = sink.read_file_at(at, fd, offset, len, FileReadMode::NoWait)?;
    if matches!(transfer, FileTransfer::WouldBlock) && wait == Wait::Allowed {
        transfer = sink.read_file_at(at, fd, offset, len, FileReadMode::Blocking)?;
    }
    Ok(match transfer {
        FileTransfer::Done => Run::Done,
        FileTransfer::WouldBlock if wait == Wait::Never => Run::WouldBlock,
        FileTransfer::WouldBlock => Run::Failed("blocking file read would block".into()),
        FileTransfer::Failed(error) => Run::Failed(error.to_string()),
        FileTransfer::Unsupported => bounce_file_run(sink, at, fd, offset, len, wait)?,
    })
}

/// [`file_run`] for a sink that cannot read files: `pread` into the bounce
/// buffer, then one copy into the sink.
fn bounce_file_run(
    sink: &mut dyn DataSink,
    at: u64,
    fd: BorrowedFd<'_>,
    offset: u64,
    len: u64,
    wait: Wait,
) -> Result<Run, SinkError> {
    let chunk = BOUNCE_BUFFER_SIZE as u64;
    with_bounce(len.min(chunk) as usize, |bounce| {
        let mut done = 0u64;
        while done < len {
            let buf = &mut bounce[..(len - done).min(chunk) as usize];
            let mut transfer = pread_into(fd, offset + done, buf, FileReadMode::NoWait);
            if matches!(transfer, FileTransfer::WouldBlock) && wait == Wait::Allowed {
                transfer = pread_into(fd, offset + done, buf, FileReadMode::Blocking);
            }
            match transfer {
                FileTransfer::Done => {}
                FileTransfer::WouldBlock if wait == Wait::Never => return Ok(Run::WouldBlock),
                FileTransfer::Failed(error) => return Ok(Run::Failed(error.to_string())),
                FileTransfer::WouldBlock | FileTransfer::Unsupported => {
                    return Ok(Run::Failed("file read did not complete".into()));
                }
            }
            sink.write_at(at + done, buf)?;
            done += buf.len() as u64;
        }
        Ok(Run::Done)
    })
}

/// Fills `buf` from `fd` at `offset` with `preadv2` (`RWF_NOWAIT` in
/// [`FileReadMode::NoWait`]), continuing after short reads and `EINTR`.
/// End of file first is a failure, never silent zeros.
pub(super) fn pread_into(
    fd: BorrowedFd<'_>,
    offset: u64,
    buf: &mut [u8],
    mode: FileReadMode,
) -> FileTransfer {
    use rustix::io::{Errno, ReadWriteFlags};
    let flags = match mode {
        FileReadMode::Blocking => ReadWriteFlags::empty(),
        FileReadMode::NoWait => ReadWriteFlags::NOWAIT,
    };
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset + done as u64;
        let result = rustix::io::preadv2(fd, &mut [IoSliceMut::new(&mut buf[done..])], at, flags);
        match result {
            Ok(0) => {
                return FileTransfer::Failed(FileReadError::EndOfFile {
                    offset,
                    wanted: buf.len() as u64,
                    got: done,
                });
            }
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN | Errno::OPNOTSUPP) if mode == FileReadMode::NoWait => {
                return FileTransfer::WouldBlock;
            }
            Err(errno) => return FileTransfer::Failed(FileReadError::Io { offset: at, errno }),
        }
    }
    FileTransfer::Done
}

thread_local! {
    /// Each I/O thread's bounce buffer, kept between reads: allocating
    /// (and faulting in) up to 256 KiB per command costs about as much as
    /// the copy itself.
    static BOUNCE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a bounce buffer of `len` (at most [`BOUNCE_BUFFER_SIZE`]
/// rounded to a sector) bytes. Stale bytes from an earlier read may be in
/// it; `f` overwrites what it uses before reading it.
fn with_bounce<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    BOUNCE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < len {
                buffer.resize(len, 0);
            }
            f(&mut buffer[..len])
        }
        // Not expected (reads do not nest), but never panic over it.
        Err(_) => f(&mut vec![0u8; len]),
    })
}

fn read_failure(error: &BlockError, transferred: u64) -> CommandResult {
    tracing::warn!(%error, "backing read failed");
    let mut result = CommandResult::check(SenseKey::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR);
    result.transferred = transferred as usize;
    result
}
