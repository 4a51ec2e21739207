//! The disk API: a [`Disk`] found by the scan reads blocks (split at the
//! host's maximum transfer, many requests in flight) and sends writes.

use std::sync::Arc;

use vmbdev_protocol::scsi::Opcode;
use vmbdev_protocol::vstor::DataDirection;

use super::channel::{Buffer, Inner, good, srb_error};
use super::window::run_windowed;
use super::{DiskInfo, DriverError};
use crate::storvsc::{InquiryInfo, SrbCompletion, cdb};

/// A disk on a connected storvsc.
#[derive(Clone)]
pub struct Disk {
    inner: Arc<Inner>,
    info: DiskInfo,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").field("info", &self.info).finish()
    }
}

/// The READ CDB Linux would use for `count` blocks at `lba`.
fn read_cdb(lba: u64, count: u32) -> ReadCdb {
    let mut bytes = [0u8; 16];
    match (u32::try_from(lba), u16::try_from(count)) {
        (Ok(lba32), Ok(count16)) if lba32.checked_add(u32::from(count16)).is_some() => {
            bytes[..10].copy_from_slice(&cdb::read10_array(lba32, count16));
            ReadCdb { bytes, len: 10 }
        }
        _ => ReadCdb {
            bytes: cdb::read16_array(lba, count),
            len: 16,
        },
    }
}

/// A READ(10) or READ(16) CDB, on the stack.
struct ReadCdb {
    bytes: [u8; 16],
    len: usize,
}

impl std::ops::Deref for ReadCdb {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The WRITE(10) CDB for `blocks` blocks at `lba`.
fn write10_cdb(lba: u32, blocks: u16) -> Vec<u8> {
    let mut cdb = vec![0u8; 10];
    cdb[0] = Opcode::WRITE10.0;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

impl Disk {
    pub(super) fn new(inner: Arc<Inner>, info: DiskInfo) -> Self {
        Self { inner, info }
    }

    /// What the scan found.
    pub fn info(&self) -> &DiskInfo {
        &self.info
    }

    /// `(blocks, block_size)`.
    pub fn capacity(&self) -> (u64, u32) {
        (self.info.blocks, self.info.block_size)
    }

    /// The standard INQUIRY data.
    pub fn inquiry(&self) -> &InquiryInfo {
        &self.info.inquiry
    }

    /// Most blocks one SRB carries.
    pub fn max_blocks_per_request(&self) -> u32 {
        (self.inner.max_transfer / self.info.block_size.max(1)).max(1)
    }

    fn check(&self, lba: u64, count: u64) -> Result<(), DriverError> {
        if count == 0
            || lba
                .checked_add(count)
                .is_none_or(|end| end > self.info.blocks)
        {
            return Err(DriverError::OutOfRange {
                lba,
                count,
                blocks: self.info.blocks,
            });
        }
        Ok(())
    }

    /// Reads `count` blocks at `lba` into guest buffers and copies them
    /// out. Large reads are split at the host's maximum transfer; the
    /// pieces run concurrently.
    pub async fn read(&self, lba: u64, count: u64) -> Result<Vec<u8>, DriverError> {
        self.check(lba, count)?;
        let per = u64::from(self.max_blocks_per_request());
        let pieces: Vec<(u64, u32)> = (0..count.div_ceil(per))
            .map(|i| (lba + i * per, (count - i * per).min(per) as u32))
            .collect();
        let chunks = self.read_many(&pieces, 8).await?;
        Ok(chunks.concat())
    }

    /// Reads each `(lba, count)` (each at most
    /// [`max_blocks_per_request`](Self::max_blocks_per_request)) with up
    /// to `depth` requests in flight; results in request order.
    pub async fn read_many(
        &self,
        requests: &[(u64, u32)],
        depth: usize,
    ) -> Result<Vec<Vec<u8>>, DriverError> {
        let mut chunks = vec![Vec::new(); requests.len()];
        run_windowed(
            requests
                .iter()
                .map(|&(lba, count)| self.read_one(lba, count, true)),
            depth,
            |i, result| {
                chunks[i] = result?.1;
                Ok::<_, DriverError>(())
            },
        )
        .await?;
        Ok(chunks)
    }

    /// Reads each `(lba, count)` (each at most
    /// [`max_blocks_per_request`](Self::max_blocks_per_request)) with up
    /// to `depth` requests in flight, copying the data into `out` in
    /// request order (`out` is exactly as long as the requests): the
    /// caller's buffer, so a long copy allocates nothing per request.
    pub async fn read_many_into(
        &self,
        requests: &[(u64, u32)],
        depth: usize,
        out: &mut [u8],
    ) -> Result<(), DriverError> {
        let block = u64::from(self.info.block_size);
        let total = requests.iter().fold(0u64, |sum, &(_, count)| {
            sum.saturating_add(u64::from(count).saturating_mul(block))
        });
        if total != out.len() as u64 {
            return Err(DriverError::BufferLength {
                wanted: total,
                given: out.len(),
            });
        }
        let mut rest = out;
        let reads = requests.iter().map(|&(lba, count)| {
            let (dst, tail) =
                std::mem::take(&mut rest).split_at_mut((u64::from(count) * block) as usize);
            rest = tail;
            self.read_into(lba, count, dst)
        });
        run_windowed(reads, depth, |_, result| result.map(drop)).await
    }

    /// One READ SRB whose data is copied into `dst`.
    async fn read_into(&self, lba: u64, count: u32, dst: &mut [u8]) -> Result<(), DriverError> {
        let (_, buffer) = self.read_srb(lba, count).await?;
        buffer.range().read_at(&self.inner.memory, 0, dst)?;
        Ok(())
    }

    /// Reads each `(lba, count)` with up to `depth` in flight, leaving the
    /// data in guest memory (as a guest whose DMA lands in its page cache);
    /// returns the bytes moved.
    pub async fn read_discard(
        &self,
        requests: impl Iterator<Item = (u64, u32)>,
        depth: usize,
    ) -> Result<u64, DriverError> {
        let mut total = 0u64;
        run_windowed(
            requests.map(|(lba, count)| self.read_one(lba, count, false)),
            depth,
            |_, result| {
                total += result?.0;
                Ok::<_, DriverError>(())
            },
        )
        .await?;
        Ok(total)
    }

    /// One READ SRB; returns the bytes moved and, with `copy`, the data.
    async fn read_one(
        &self,
        lba: u64,
        count: u32,
        copy: bool,
    ) -> Result<(u64, Vec<u8>), DriverError> {
        let (len, buffer) = self.read_srb(lba, count).await?;
        if !copy {
            return Ok((u64::from(len), Vec::new()));
        }
        let mut data = vec![0u8; len as usize];
        buffer.range().read_at(&self.inner.memory, 0, &mut data)?;
        Ok((u64::from(len), data))
    }

    /// Sends one READ SRB and checks its completion; returns the length
    /// and the guest buffer holding the data.
    async fn read_srb(&self, lba: u64, count: u32) -> Result<(u32, Buffer<'_>), DriverError> {
        self.check(lba, u64::from(count))?;
        let wanted = u64::from(count) * u64::from(self.info.block_size);
        let len = u32::try_from(wanted).map_err(|_| DriverError::OutOfRange {
            lba,
            count: u64::from(count),
            blocks: self.info.blocks,
        })?;
        let cdb = read_cdb(lba, count);
        let buffer = self.inner.buffer(len)?;
        let completion = self
            .inner
            .srb(self.info.address, &cdb, DataDirection::READ, Some(&buffer))
            .await?;
        if !good(&completion) {
            return Err(srb_error(self.info.address, &cdb, &completion));
        }
        if completion.transferred != len {
            return Err(DriverError::ShortRead {
                lba,
                wanted,
                moved: completion.transferred,
            });
        }
        Ok((len, buffer))
    }

    /// Sends a WRITE(10) of `data` (whole blocks) at `lba`; the completion
    /// tells how the host refused it.
    pub async fn try_write(&self, lba: u32, data: &[u8]) -> Result<SrbCompletion, DriverError> {
        let block = self.info.block_size.max(1) as usize;
        let blocks = (data.len() / block) as u16;
        let len = u32::from(blocks) * block as u32;
        let cdb = write10_cdb(lba, blocks);
        let buffer = if len == 0 {
            None
        } else {
            let buffer = self.inner.buffer(len)?;
            buffer
                .range()
                .write_at(&self.inner.memory, 0, &data[..len as usize])?;
            Some(buffer)
        };
        self.inner
            .srb(
                self.info.address,
                &cdb,
                DataDirection::WRITE,
                buffer.as_ref(),
            )
            .await
    }
}
