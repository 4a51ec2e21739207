//! Tests of the read-only SCSI disk against an independent in-memory model.

use super::*;
use crate::scsi_disk::GuestBuffer;
use rand::{Rng, SeedableRng};
use vmbdev_block::{BlockError, Extent, MemoryDisk, RawFile};

/// A disk held in memory with the id the page-83 tests expect.
pub(crate) fn mem_disk(bytes: Vec<u8>, sector: u32, physical: u32) -> MemoryDisk {
    MemoryDisk::with_sector_sizes(bytes, sector, physical).with_disk_id(*b"0123456789abcdef")
}

pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

fn disk(sector: u32, sectors: usize) -> (ScsiDisk, Vec<u8>) {
    let bytes = random_bytes(sector as usize * sectors, u64::from(sector));
    let dev = mem_disk(bytes.clone(), sector, 4096);
    (ScsiDisk::new(Arc::new(dev)), bytes)
}

fn run(disk: &ScsiDisk, cdb: &[u8], buffer: usize) -> (CommandResult, Vec<u8>) {
    let mut out = Vec::new();
    let result = disk.execute(cdb, buffer, &mut out).unwrap();
    assert_eq!(
        out.len(),
        result.transferred,
        "sink got exactly the reported bytes"
    );
    (result, out)
}

fn sense_of(result: &CommandResult) -> (u8, u8) {
    let sense = result.sense().expect("CHECK CONDITION");
    assert_eq!(result.scsi_status(), ScsiStatus::CHECK_CONDITION);
    assert_eq!(sense.response_code, 0x70);
    assert_eq!(sense.additional_length, 10);
    (sense.sense_key, sense.asc)
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[test]
fn test_unit_ready_sync_start_stop_are_good() {
    let (d, _) = disk(512, 64);
    for cdb in [
        &[0x00u8, 0, 0, 0, 0, 0][..],
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[0x1B, 0, 0, 0, 1, 0],
    ] {
        let (r, data) = run(&d, cdb, 512);
        assert_eq!(r.status, CommandStatus::Good, "{cdb:x?}");
        assert!(data.is_empty());
    }
}

#[test]
fn reads_match_the_backing_bytes_for_both_sector_sizes() {
    for sector in [512u32, 4096] {
        let sectors = 700usize;
        let (d, bytes) = disk(sector, sectors);
        let s = sector as usize;
        let last = sectors as u32 - 1;
        // Last LBA, first LBA, across the bounce-buffer boundary.
        let big = (BOUNCE_BUFFER_SIZE / s + 3) as u16;
        for (lba, blocks) in [(last, 1u16), (0, 1), (1, big), (last - 1, 2)] {
            let (r, data) = run(&d, &read10(lba, blocks), 8 << 20);
            assert_eq!(r.status, CommandStatus::Good);
            let start = lba as usize * s;
            assert_eq!(
                data,
                bytes[start..start + blocks as usize * s],
                "{sector} {lba}"
            );
        }
        let (r, data) = run(&d, &read16(u64::from(last), 1), s);
        assert_eq!(r.status, CommandStatus::Good);
        assert_eq!(data, bytes[last as usize * s..]);
        let (r, data) = run(&d, &[0xA8, 0, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0], 3 * s);
        assert_eq!(r.status, CommandStatus::Good);
        assert_eq!(data, bytes[5 * s..8 * s]);
        // Past the end: the last block plus one, and an LBA beyond.
        for cdb in [read10(last, 2), read10(last + 1, 1)] {
            let (r, data) = run(&d, &cdb, 8 * s);
            assert_eq!(sense_of(&r), (0x05, 0x21));
            assert!(data.is_empty());
        }
        let (r, _) = run(&d, &read16(u64::MAX, 1), s);
        assert_eq!(sense_of(&r), (0x05, 0x21));
    }
}

#[test]
fn read6_length_zero_means_256_blocks() {
    let (d, bytes) = disk(512, 600);
    let (r, data) = run(&d, &[0x08, 0x00, 0x00, 0x02, 0x00, 0], 1 << 20);
    assert_eq!(r.status, CommandStatus::Good);
    assert_eq!(data.len(), 256 * 512);
    assert_eq!(data, bytes[2 * 512..258 * 512]);
    // 21-bit LBA: bits above 0x1F in byte 1 are not part of it.
    let (r, data) = run(&d, &[0x08, 0xE0, 0x00, 0x03, 0x01, 0], 512);
    assert_eq!(r.status, CommandStatus::Good);
    assert_eq!(data, bytes[3 * 512..4 * 512]);
}

#[test]
fn read_larger_than_buffer_is_reported_not_truncated() {
    let (d, _) = disk(512, 64);
    let (r, data) = run(&d, &read10(0, 4), 1024);
    assert_eq!(r.status, CommandStatus::BufferTooSmall { needed: 2048 });
    assert!(data.is_empty());
    let (r, data) = run(&d, &read10(0, 0), 0);
    assert_eq!(r.status, CommandStatus::Good);
    assert!(data.is_empty());
}

#[test]
fn read_capacity_10_and_16() {
    for sector in [512u32, 4096] {
        let (d, _) = disk(sector, 100);
        let (r, data) = run(&d, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
        assert_eq!(r.status, CommandStatus::Good);
        assert_eq!(data[..4], 99u32.to_be_bytes());
        assert_eq!(data[4..8], sector.to_be_bytes());
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9E;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let (r, data) = run(&d, &cdb, 512);
        assert_eq!(r.status, CommandStatus::Good);
        assert_eq!(data.len(), 32);
        assert_eq!(data[..8], 99u64.to_be_bytes());
        assert_eq!(data[8..12], sector.to_be_bytes());
        let exponent = (4096 / sector).trailing_zeros() as u8;
        assert_eq!(data[13] & 0x0F, exponent);
        cdb[1] = 0x11;
        let (r, _) = run(&d, &cdb, 512);
        assert_eq!(sense_of(&r), (0x05, 0x24));
    }
}

/// A device claiming more sectors than READ CAPACITY(10) can express.
struct HugeDisk;
impl BlockDevice for HugeDisk {
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn physical_sector_size(&self) -> u32 {
        512
    }
    fn sector_count(&self) -> u64 {
        1 << 33
    }
    fn disk_id(&self) -> [u8; 16] {
        [0; 16]
    }
    fn read_sectors(&self, _lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        buf.fill(0);
        Ok(())
    }
}

#[test]
fn read_capacity_10_saturates_for_huge_disks() {
    let d = ScsiDisk::new(Arc::new(HugeDisk));
    let (_, data) = run(&d, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    assert_eq!(data[..4], [0xFF; 4]);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9E;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let (_, data) = run(&d, &cdb, 32);
    assert_eq!(data[..8], ((1u64 << 33) - 1).to_be_bytes());
}

#[test]
fn inquiry_standard_and_allocation_length() {
    let (d, _) = disk(512, 8);
    let (r, data) = run(&d, &[0x12, 0, 0, 0, 96, 0], 96);
    assert_eq!(r.status, CommandStatus::Good);
    assert_eq!(data.len(), 36);
    assert_eq!(data[0], 0);
    assert_eq!(data[4] as usize + 5, 36);
    assert_eq!(&data[8..16], b"Msft    ");
    let (_, data) = run(&d, &[0x12, 0, 0, 0, 5, 0], 96);
    assert_eq!(data.len(), 5);
    let (_, data) = run(&d, &[0x12, 0, 0, 0, 96, 0], 4);
    assert_eq!(data.len(), 4);
    // Page code without EVPD.
    let (r, _) = run(&d, &[0x12, 0, 0x80, 0, 96, 0], 96);
    assert_eq!(sense_of(&r), (0x05, 0x24));
}

#[test]
fn vpd_pages() {
    let (d, _) = disk(512, 8);
    let vpd = |page: u8| run(&d, &[0x12, 1, page, 0x10, 0, 0], 4096);
    let (r, data) = vpd(0x00);
    assert_eq!(r.status, CommandStatus::Good);
    assert_eq!(data[1], 0);
    let list = &data[4..];
    assert_eq!(list.len(), u16::from_be_bytes([data[2], data[3]]) as usize);
    assert_eq!(list, [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
    assert!(list.windows(2).all(|w| w[0] < w[1]));
    for &page in list {
        let (r, data) = vpd(page);
        assert_eq!(r.status, CommandStatus::Good);
        assert_eq!(data[1], page);
        assert_eq!(
            data.len(),
            4 + u16::from_be_bytes([data[2], data[3]]) as usize
        );
    }
    let (_, serial) = vpd(0x80);
    assert_eq!(&serial[4..], b"30313233343536373839616263646566");
    let (_, id) = vpd(0x83);
    // First designator: ASCII T10 vendor id containing the disk id in hex.
    assert_eq!(id[4] & 0x0F, 2);
    assert_eq!(id[5] & 0x0F, 1);
    let len = id[7] as usize;
    assert_eq!(&id[8..16], b"Msft    ");
    assert_eq!(&id[16..8 + len], b"30313233343536373839616263646566");
    // Second designator: NAA, 16 bytes.
    let second = &id[8 + len..];
    assert_eq!(second[1] & 0x0F, 3);
    assert_eq!(second[3], 16);
    assert_eq!(second[4] >> 4, 6);
    assert_eq!(&second[5..20], &b"0123456789abcdef"[1..]);
    let (_, limits) = vpd(0xB0);
    assert_eq!(limits.len(), 64);
    assert_eq!(limits[8..12], (2u32 * 1024 * 1024 / 512).to_be_bytes());
    let (_, chars) = vpd(0xB1);
    assert_eq!(chars[4..6], [0, 1]);
    let (_, prov) = vpd(0xB2);
    assert_eq!(
        prov[5] & 0xE0,
        0,
        "no UNMAP / WRITE SAME on a read-only disk"
    );
    // Unsupported page: GOOD with no data (Linux forces INQUIRY to GOOD).
    for page in [0x89, 0x01, 0xFF] {
        let (r, data) = vpd(page);
        assert_eq!(r.status, CommandStatus::Good);
        assert!(data.is_empty());
    }
}

#[test]
fn mode_sense_reports_write_protect_and_caching() {
    let (d, _) = disk(512, 8);
    for page in [0x3F, 0x08] {
        let (r, data) = run(&d, &[0x1A, 0, page, 0, 0xFF, 0], 255);
        assert_eq!(r.status, CommandStatus::Good);
        assert_eq!(data[0] as usize + 1, data.len());
        assert_eq!(data[2] & 0x80, 0x80);
        assert_eq!(data[3], 0);
        assert_eq!(data[4] & 0x3F, 0x08);
        assert_eq!(data[5], 0x12);
        assert_eq!(data.len(), 4 + 20);
        let (r, data) = run(&d, &[0x5A, 0, page, 0, 0, 0, 0, 0x01, 0x00, 0], 256);
        assert_eq!(r.status, CommandStatus::Good);
        assert_eq!(
            u16::from_be_bytes([data[0], data[1]]) as usize + 2,
            data.len()
        );
        assert_eq!(data[3] & 0x80, 0x80);
        assert_eq!(data[8] & 0x3F, 0x08);
    }
    let (r, data) = run(&d, &[0x1A, 0, 0x3F, 0, 4, 0], 255);
    assert_eq!(r.status, CommandStatus::Good);
    assert_eq!(data.len(), 4);
    let (r, _) = run(&d, &[0x1A, 0, 0x1C, 0, 0xFF, 0], 255);
    assert_eq!(sense_of(&r), (0x05, 0x24));
    let (r, _) = run(&d, &[0x1A, 0, 0xC8, 0, 0xFF, 0], 255);
    assert_eq!(sense_of(&r), (0x05, 0x39));
}

#[test]
fn request_sense_and_report_luns() {
    let (d, _) = disk(512, 8);
    let (r, data) = run(&d, &[0x03, 0, 0, 0, 252, 0], 252);
    assert_eq!(r.status, CommandStatus::Good);
    assert_eq!(data.len(), 18);
    assert_eq!(data[0], 0x70);
    assert_eq!(data[2], 0);
    let (r, data) = run(&d, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 4096);
    assert_eq!(r.status, CommandStatus::Good);
    assert_eq!(data, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn verify_checks_range_and_refuses_byte_compare() {
    let (d, _) = disk(512, 8);
    let (r, _) = run(&d, &[0x2F, 0, 0, 0, 0, 7, 0, 0, 1, 0], 0);
    assert_eq!(r.status, CommandStatus::Good);
    let (r, _) = run(&d, &[0x2F, 0, 0, 0, 0, 7, 0, 0, 2, 0], 0);
    assert_eq!(sense_of(&r), (0x05, 0x21));
    let (r, _) = run(&d, &[0x2F, 0x02, 0, 0, 0, 0, 0, 0, 1, 0], 0);
    assert_eq!(sense_of(&r), (0x05, 0x24));
}

#[test]
fn writes_are_data_protect() {
    let (d, _) = disk(512, 8);
    let mut cdbs: Vec<Vec<u8>> = vec![
        vec![0x0A, 0, 0, 0, 1, 0],
        read10(0, 1).to_vec(),
        vec![0xAA, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        read16(0, 1).to_vec(),
        vec![0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        vec![0x93; 16],
        vec![0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
    ];
    cdbs[1][0] = 0x2A;
    cdbs[3][0] = 0x8A;
    cdbs[5][1..].fill(0);
    for cdb in cdbs {
        let (r, data) = run(&d, &cdb, 4096);
        assert_eq!(sense_of(&r), (0x07, 0x27), "{cdb:x?}");
        assert!(data.is_empty());
    }
}

#[test]
fn unknown_opcode_and_short_cdb() {
    let (d, _) = disk(512, 8);
    let (r, _) = run(&d, &[0xC5, 0, 0, 0, 0, 0], 0);
    assert_eq!(sense_of(&r), (0x05, 0x20));
    let (r, _) = run(&d, &[0x4D, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0);
    assert_eq!(sense_of(&r), (0x05, 0x20));
    let (r, _) = run(&d, &[], 0);
    assert_eq!(sense_of(&r), (0x05, 0x20));
    let (r, _) = run(&d, &[0x28, 0, 0, 0], 512);
    assert_eq!(sense_of(&r), (0x05, 0x24));
}

#[test]
fn raw_file_backing_with_4096_sectors() {
    let bytes = random_bytes(4096 * 40, 7);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, &bytes).unwrap();
    let raw = RawFile::open_with_sector_size(file.path(), 4096).unwrap();
    let d = ScsiDisk::new(Arc::new(raw));
    let (r, data) = run(&d, &read10(38, 2), 8192);
    assert_eq!(r.status, CommandStatus::Good);
    assert_eq!(data, bytes[38 * 4096..]);
    let (_, cap) = run(&d, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    assert_eq!(cap, [0, 0, 0, 39, 0, 0, 0x10, 0]);
}

/// A device whose reads fail.
struct FailingDisk;
impl BlockDevice for FailingDisk {
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn physical_sector_size(&self) -> u32 {
        512
    }
    fn sector_count(&self) -> u64 {
        8
    }
    fn disk_id(&self) -> [u8; 16] {
        [0; 16]
    }
    fn read_sectors(&self, _lba: u64, _buf: &mut [u8]) -> Result<(), BlockError> {
        Err(BlockError::Corrupt("test".into()))
    }
}

#[test]
fn backing_failure_is_medium_error() {
    let d = ScsiDisk::new(Arc::new(FailingDisk));
    let (r, _) = run(&d, &read10(0, 1), 512);
    assert_eq!(sense_of(&r), (0x03, 0x11));
}

/// A disk of 64 sectors that reports runs of 8: zeros, the file's bytes,
/// bytes only `read_sectors` gives, and bytes in memory, in turn.
pub(crate) struct MixedDisk {
    file: std::fs::File,
    bytes: Vec<u8>,
}

impl MixedDisk {
    pub(crate) fn new(seed: u64) -> Self {
        let bytes = random_bytes(64 * 512, seed);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        Self { file, bytes }
    }

    /// What READ must return: zeros where the disk says zeros.
    pub(crate) fn expected(&self) -> Vec<u8> {
        let mut want = self.bytes.clone();
        for (i, chunk) in want.chunks_mut(8 * 512).enumerate() {
            if i % 4 == 0 {
                chunk.fill(0);
            }
        }
        want
    }
}

impl BlockDevice for MixedDisk {
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn physical_sector_size(&self) -> u32 {
        512
    }
    fn sector_count(&self) -> u64 {
        64
    }
    fn disk_id(&self) -> [u8; 16] {
        [0; 16]
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let at = vmbdev_block::check_request(self, lba, buf.len())? as usize;
        buf.copy_from_slice(&self.expected()[at..at + buf.len()]);
        Ok(())
    }
    fn locate(&self, lba: u64, count: u64) -> Result<Extent<'_>, BlockError> {
        vmbdev_block::check_sectors(64, 512, lba, count)?;
        let sectors = (8 - lba % 8).min(count);
        let at = (lba * 512) as usize;
        Ok(match (lba / 8) % 4 {
            0 => Extent::Zero { sectors },
            1 => Extent::File {
                fd: std::os::fd::AsFd::as_fd(&self.file),
                offset: lba * 512,
                sectors,
            },
            2 => Extent::Copy { sectors },
            _ => Extent::Memory {
                bytes: &self.bytes[at..at + sectors as usize * 512],
                sectors,
            },
        })
    }
}

mod guest {
    use super::*;
    use vmbdev_ring::{GpaRange, GuestMemory};

    /// Guest memory of 32 pages, all 0xEE, and a buffer over `pages`.
    fn memory() -> GuestMemory {
        let mem = GuestMemory::new(32 * 4096).unwrap();
        mem.fill(0, 32 * 4096, 0xEE).unwrap();
        mem
    }

    /// The buffer's bytes, page by page in range order.
    fn buffer_bytes(mem: &GuestMemory, range: &GpaRange) -> Vec<u8> {
        let mut out = vec![0u8; range.byte_count() as usize];
        range.read_at(mem, 0, &mut out).unwrap();
        out
    }

    #[test]
    fn every_kind_of_run_lands_in_scattered_guest_pages() {
        let disk = MixedDisk::new(3);
        let want = disk.expected();
        let d = ScsiDisk::new(Arc::new(disk));
        let mem = memory();
        // 32 KiB at byte offset 512 over pages out of order, two adjacent.
        let range = GpaRange::new(64 * 512 - 1024, 512, vec![9, 3, 4, 20, 1, 7, 30, 12]).unwrap();
        let mut sink = GuestBuffer::new(&mem, &range);
        let r = d
            .execute(&read10(1, 62), range.byte_count() as usize, &mut sink)
            .unwrap();
        assert_eq!(r.status, CommandStatus::Good);
        assert_eq!(r.transferred, 62 * 512);
        assert!(buffer_bytes(&mem, &range)[..62 * 512] == want[512..63 * 512]);
        // The byte before the buffer in its first page is untouched.
        let mut before = [0u8; 512];
        mem.read(9 * 4096, &mut before).unwrap();
        assert_eq!(before, [0xEE; 512]);
    }

    #[test]
    fn no_wait_completes_cached_reads_and_stops_at_copies() {
        let disk = MixedDisk::new(4);
        let want = disk.expected();
        let d = ScsiDisk::new(Arc::new(disk));
        let mem = memory();
        let range = GpaRange::new(8 * 4096, 0, (0..8).collect()).unwrap();
        let mut sink = GuestBuffer::new(&mem, &range);
        // Zeros and a just-written (cached) file run: completes.
        let attempt = d
            .execute_nowait(&read10(0, 16), 8 * 4096, &mut sink)
            .unwrap();
        assert_eq!(attempt, Attempt::Done(CommandResult::good(16 * 512)));
        assert!(buffer_bytes(&mem, &range)[..16 * 512] == want[..16 * 512]);
        // A run only `read_sectors` can give may wait: stop.
        let attempt = d
            .execute_nowait(&read10(8, 16), 8 * 4096, &mut sink)
            .unwrap();
        assert_eq!(attempt, Attempt::WouldBlock);
        // Commands other than READ always complete.
        let attempt = d.execute_nowait(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8, &mut Vec::new());
        assert!(matches!(attempt, Ok(Attempt::Done(r)) if r.transferred == 8));
        // The blocking run completes it.
        let r = d.execute(&read10(8, 16), 8 * 4096, &mut sink).unwrap();
        assert_eq!(r, CommandResult::good(16 * 512));
        assert!(buffer_bytes(&mem, &range)[..16 * 512] == want[8 * 512..24 * 512]);
    }

    #[test]
    fn a_buffer_page_outside_guest_memory_is_a_sink_error() {
        let d = ScsiDisk::new(Arc::new(MixedDisk::new(5)));
        let mem = memory();
        for gpn in [40, u64::MAX / 2] {
            let range = GpaRange::new(3 * 4096, 0, vec![1, gpn, 2]).unwrap();
            let mut sink = GuestBuffer::new(&mem, &range);
            // Sectors 8..32 are a file run, a copy and memory: each kind
            // meets the bad page.
            for lba in [0, 8, 16, 24] {
                let err = d.execute(&read10(lba, 24), 3 * 4096, &mut sink);
                assert!(err.is_err(), "page {gpn:#x} at lba {lba}: {err:?}");
            }
        }
        // A file run refused for a bad page writes nothing at all, not
        // even into the good page before it.
        let mem = memory();
        let range = GpaRange::new(4096, 2048, vec![1, 40]).unwrap();
        let mut sink = GuestBuffer::new(&mem, &range);
        assert!(d.execute(&read10(8, 8), 4096, &mut sink).is_err());
        let mut first = [0u8; 4096];
        mem.read(4096, &mut first).unwrap();
        assert!(first == [0xEE; 4096], "page before the bad one was written");
    }

    #[test]
    fn vec_sinks_take_file_runs_straight_from_the_file() {
        let disk = MixedDisk::new(6);
        let want = disk.expected();
        let d = ScsiDisk::new(Arc::new(disk));
        let (r, data) = run(&d, &read16(0, 64), 64 * 512);
        assert_eq!(r.status, CommandStatus::Good);
        assert!(data == want, "READ(16) of the whole disk");
        let mut out = Vec::new();
        let attempt = d.execute_nowait(&read16(8, 8), 4096, &mut out).unwrap();
        assert_eq!(attempt, Attempt::Done(CommandResult::good(4096)));
        assert!(out == want[8 * 512..16 * 512]);
    }
}

/// A device whose file extents point past the end of its file.
struct ShortFileDisk {
    file: std::fs::File,
}

impl BlockDevice for ShortFileDisk {
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn physical_sector_size(&self) -> u32 {
        512
    }
    fn sector_count(&self) -> u64 {
        8
    }
    fn disk_id(&self) -> [u8; 16] {
        [0; 16]
    }
    fn read_sectors(&self, _lba: u64, _buf: &mut [u8]) -> Result<(), BlockError> {
        Err(BlockError::Corrupt("test".into()))
    }
    fn locate(&self, lba: u64, count: u64) -> Result<Extent<'_>, BlockError> {
        vmbdev_block::check_sectors(8, 512, lba, count)?;
        Ok(Extent::File {
            fd: std::os::fd::AsFd::as_fd(&self.file),
            offset: lba * 512,
            sectors: count,
        })
    }
}

#[test]
fn a_file_shorter_than_its_extents_is_medium_error() {
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, &[1u8; 1000]).unwrap();
    let d = ScsiDisk::new(Arc::new(ShortFileDisk { file }));
    let mut out = Vec::new();
    let r = d.execute(&read10(0, 4), 2048, &mut out).unwrap();
    assert_eq!(sense_of(&r), (0x03, 0x11));
    assert_eq!(r.transferred, 0);
}
