//! The storvsc models driving the real storvsp host state machine.

use std::sync::Arc;
use vmbdev_block::{BlockDevice, BlockError};
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{
    Completion, Controller, LunAddress, Outcome, Request, StorvspChannel, StorvspConfig,
};
use vmbdev_guest::storvsc::*;
use vmbdev_protocol::vstor::NtStatus;
use vmbdev_ring::{GpaRange, GuestMemory};

/// Every byte is a function of its absolute offset: an independent model.
struct PatternDisk {
    sector: u32,
    sectors: u64,
}

fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B1) >> 13) as u8
}

impl BlockDevice for PatternDisk {
    fn logical_sector_size(&self) -> u32 {
        self.sector
    }
    fn physical_sector_size(&self) -> u32 {
        4096
    }
    fn sector_count(&self) -> u64 {
        self.sectors
    }
    fn disk_id(&self) -> [u8; 16] {
        [7; 16]
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let start = vmbdev_block::check_request(self, lba, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(start + i as u64);
        }
        Ok(())
    }
}

struct Vm {
    host: StorvspChannel,
    memory: GuestMemory,
    next_tid: u64,
}

fn vm(sector: u32, config: StorvspConfig) -> Vm {
    let memory = GuestMemory::new(64 * 4096).unwrap();
    let controller = Arc::new(Controller::new());
    let disk = PatternDisk {
        sector,
        sectors: 1000,
    };
    controller.insert(
        LunAddress {
            path: 0,
            target: 0,
            lun: 0,
        },
        Arc::new(ScsiDisk::new(Arc::new(disk))),
    );
    let host = StorvspChannel::new(config, controller, memory.clone()).unwrap();
    Vm {
        host,
        memory,
        next_tid: 1,
    }
}

impl Vm {
    fn send(&mut self, payload: &[u8], ranges: Vec<GpaRange>) -> Completion {
        self.next_tid += 1;
        let tid = self.next_tid;
        let memory = self.host.memory().clone();
        let completion = match self.host.handle(Request {
            payload,
            ranges: &ranges,
            transaction_id: tid,
        }) {
            Outcome::Complete(c) | Outcome::CreateSubChannels { completion: c, .. } => c,
            Outcome::Execute(job) => job.run(&memory),
            Outcome::Violation(v) => panic!("{v}"),
        };
        assert_eq!(completion.transaction_id, tid);
        completion
    }

    fn init(&mut self, profile: GuestProfile) -> InitDriver {
        let mut driver = InitDriver::new(profile);
        while let Some(request) = driver.request() {
            let completion = self.send(&request, vec![]);
            // UEFI rejects a completion larger than its request; Linux drops
            // shorter ones.
            assert_eq!(completion.bytes.len(), request.len());
            driver.on_completion(&completion.bytes).unwrap();
        }
        driver
    }

    /// Runs an SRB with a buffer at page 8 (offset 2); returns the completion
    /// and the data.
    fn srb(&mut self, size: usize, target: u8, cdb: Vec<u8>, len: u32) -> (SrbCompletion, Vec<u8>) {
        let ranges = if len == 0 {
            vec![]
        } else {
            let pages = (2 + len as u64).div_ceil(4096);
            vec![GpaRange::new(len, 2, (8..8 + pages).collect()).unwrap()]
        };
        let params = SrbParams {
            path: 0,
            target,
            lun: 0,
            cdb,
            data_in: 1,
            data_transfer_length: len,
        };
        let completion = self.send(&srb_packet(&params, size), ranges.clone());
        assert_eq!(completion.bytes.len(), size);
        let parsed = SrbCompletion::parse(&completion.bytes).unwrap();
        let mut data = vec![0u8; parsed.transferred as usize];
        if let Some(range) = ranges.first() {
            range.read_at(&self.memory, 0, &mut data).unwrap();
        }
        (parsed, data)
    }
}

#[test]
fn linux_probe_sequence() {
    let config = StorvspConfig {
        max_transfer_bytes: 512 * 1024,
        max_sub_channels: 7,
        multi_channel: true,
    };
    let mut vm = vm(512, config);
    let driver = vm.init(GuestProfile::Linux);
    assert_eq!(driver.version(), Some(0x0602));
    let props = driver.properties();
    assert_eq!(props.max_transfer_bytes, 512 * 1024);
    let count = linux_sub_channel_count(4, 0x0602, props);
    assert_eq!(count, 3);
    let c = vm.send(&create_sub_channels_packet(count), vec![]);
    assert_eq!(completion_status(&c.bytes).unwrap(), NtStatus::SUCCESS);

    // Scan targets 0 and 1: absent → 0x7F.
    let (mut c, data) = vm.srb(0x40, 1, cdb::inquiry(None, 36), 36);
    c.linux_fixup(0x12);
    assert!(!parse_inquiry(&data).unwrap().present());
    assert_eq!(data[0], 0x7F);
    let (_, data) = vm.srb(0x40, 0, cdb::inquiry(None, 36), 36);
    let info = parse_inquiry(&data).unwrap();
    assert!(info.present());
    assert_eq!(info.device_type, 0);
    let (_, full) = vm.srb(
        0x40,
        0,
        cdb::inquiry(None, info.full_length as u16),
        info.full_length as u32,
    );
    assert_eq!(full.len(), info.full_length);
    let (_, data) = vm.srb(0x40, 0, cdb::inquiry(Some(0), 255), 255);
    let pages = parse_vpd_supported(&data).unwrap();
    assert!(pages.windows(2).all(|w| w[0] < w[1]));
    for page in [0x80u8, 0x83, 0x89, 0xB0, 0xB1, 0xB2] {
        let (mut c, data) = vm.srb(0x40, 0, cdb::inquiry(Some(page), 255), 255);
        c.linux_fixup(0x12);
        assert_eq!(c.srb_status, 1);
        assert_eq!(!data.is_empty(), pages.contains(&page), "page {page:#x}");
    }
    let (c, _) = vm.srb(0x40, 0, cdb::test_unit_ready(), 0);
    assert_eq!((c.srb_status, c.scsi_status), (1, 0));
    let (_, data) = vm.srb(0x40, 0, cdb::read_capacity16(32), 32);
    assert_eq!(parse_read_capacity16(&data).unwrap(), (999, 512, 3));
    let (_, data) = vm.srb(0x40, 0, cdb::mode_sense6(0x3F, 192), 192);
    assert!(parse_mode_sense6_write_protect(&data).unwrap());
    let (c, data) = vm.srb(0x40, 0, cdb::mode_sense6(0x08, 192), 192);
    assert_eq!(c.srb_status, 1);
    assert_eq!(data[4] & 0x3F, 8);
    let (c, data) = vm.srb(0x40, 0, cdb::read10(990, 10), 5120);
    assert_eq!(c.transferred, 5120);
    assert!(
        data.iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(990 * 512 + i as u64))
    );
    let (c, data) = vm.srb(0x40, 0, cdb::read16(0, 256), 128 * 1024);
    assert_eq!(c.srb_status, 1);
    assert!(
        data.iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(i as u64))
    );
    // A write is refused with DATA PROTECT.
    let mut write = cdb::read10(0, 1);
    write[0] = 0x2A;
    let params = SrbParams {
        path: 0,
        target: 0,
        lun: 0,
        cdb: write,
        data_in: 0,
        data_transfer_length: 512,
    };
    let range = GpaRange::new(512, 0, vec![30]).unwrap();
    let c = SrbCompletion::parse(&vm.send(&srb_packet(&params, 0x40), vec![range]).bytes).unwrap();
    assert_eq!(c.sense_key_asc(), Some((7, 0x27)));
}

#[test]
fn linux_version_fallback_walks_the_list() {
    let mut driver = InitDriver::new(GuestProfile::Linux);
    let refuse = |status: u32| {
        let mut p = vec![0u8; 0x40];
        p[0] = 1;
        p[8..12].copy_from_slice(&status.to_le_bytes());
        p
    };
    driver.on_completion(&refuse(0)).unwrap();
    let mut asked = Vec::new();
    loop {
        let request = driver.request().unwrap();
        asked.push(u16::from_le_bytes([request[12], request[13]]));
        match driver.on_completion(&refuse(0xC000_0059)) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e, StorvscError::NoVersionAccepted);
                break;
            }
        }
    }
    assert_eq!(asked, [0x0602, 0x0600, 0x0501, 0x0402, 0x0200]);
}

#[test]
fn every_linux_version_initializes_against_the_host() {
    // Force each version by starting the fallback at it.
    for (n, &version) in GuestProfile::Linux.versions().iter().enumerate() {
        let mut vm = vm(4096, StorvspConfig::default());
        let mut driver = InitDriver::new(GuestProfile::Linux);
        let begin = vm.send(&driver.request().unwrap(), vec![]);
        driver.on_completion(&begin.bytes).unwrap();
        let mut refuse = vec![0u8; 0x40];
        refuse[0] = 1;
        refuse[8..12].copy_from_slice(&0xC000_0059u32.to_le_bytes());
        for _ in 0..n {
            driver.on_completion(&refuse).unwrap();
        }
        while let Some(request) = driver.request() {
            let c = vm.send(&request, vec![]);
            driver.on_completion(&c.bytes).unwrap();
        }
        assert_eq!(driver.version(), Some(version));
        let (c, data) = vm.srb(0x40, 0, cdb::read_capacity10(), 8);
        assert_eq!(c.srb_status, 1);
        assert_eq!(parse_read_capacity10(&data).unwrap(), (999, 4096));
        let (c, data) = vm.srb(0x40, 0, cdb::read10(999, 1), 4096);
        assert_eq!(c.transferred, 4096);
        assert!(
            data.iter()
                .enumerate()
                .all(|(i, &b)| b == pattern(999 * 4096 + i as u64))
        );
    }
}

#[test]
fn uefi_probe_sequence() {
    let mut vm = vm(512, StorvspConfig::default());
    let driver = vm.init(GuestProfile::Uefi);
    assert_eq!(driver.version(), Some(0x0600));
    assert_eq!(driver.properties().max_transfer_bytes, 2 * 1024 * 1024);
    for target in 0..3u8 {
        let (c, data) = vm.srb(0x30, target, cdb::report_luns(0), 2048);
        assert_eq!(
            (c.status, c.srb_status, c.scsi_status),
            (0, 1, 0),
            "target {target}"
        );
        let luns = parse_report_luns(&data).unwrap();
        assert_eq!(luns, if target == 0 { vec![0] } else { vec![] });
        assert!(luns.iter().all(|&l| l < 255));
    }
    let (_, data) = vm.srb(0x30, 0, cdb::inquiry(None, 96), 96);
    assert!(parse_inquiry(&data).unwrap().present());
    let (_, data) = vm.srb(0x30, 0, cdb::inquiry(Some(0), 96), 96);
    assert!(parse_vpd_supported(&data).unwrap().contains(&0xB0));
    // UEFI sets data_in 1 even without data.
    let (c, _) = vm.srb(0x30, 0, cdb::test_unit_ready(), 0);
    assert_eq!(c.srb_status, 1);
    let (_, data) = vm.srb(0x30, 0, cdb::read_capacity10(), 8);
    assert_eq!(parse_read_capacity10(&data).unwrap(), (999, 512));
    let (c, data) = vm.srb(0x30, 0, cdb::read10(3, 2), 1024);
    assert_eq!(c.transferred, 1024);
    assert!(
        data.iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(3 * 512 + i as u64))
    );
}
