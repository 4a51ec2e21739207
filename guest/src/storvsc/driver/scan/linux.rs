//! The Linux scan: path 0–7 × target 0–1, LUN 0 then the LUNs REPORT LUNS
//! lists; each present LUN gets the full INQUIRY, its VPD pages, TEST UNIT
//! READY, READ CAPACITY(16) then (10), two MODE SENSE(6) and the first
//! 4 KiB (the partition scan).

use super::Scan;
use crate::storvsc::driver::channel::good;
use crate::storvsc::driver::{DiskInfo, DriverError};
use crate::storvsc::{
    InquiryInfo, LunAddress, StorvscError, cdb, parse_inquiry, parse_mode_sense6_write_protect,
    parse_read_capacity10, parse_read_capacity16, parse_report_luns, parse_vpd_supported,
};

/// VPD pages Linux reads when page 0x00 lists them.
const LINUX_VPD_PAGES: [u8; 6] = [0x80, 0x83, 0x89, 0xB0, 0xB1, 0xB2];

impl Scan<'_> {
    pub(super) async fn linux(&mut self) -> Result<(), DriverError> {
        for path in 0..8u8 {
            for target in 0..2u8 {
                self.linux_target(path, target).await?;
            }
        }
        Ok(())
    }

    /// LUN 0 of a target, then the other LUNs it reports.
    async fn linux_target(&mut self, path: u8, target: u8) -> Result<(), DriverError> {
        let lun0 = LunAddress {
            path,
            target,
            lun: 0,
        };
        self.linux_lun(lun0).await?;
        // SCSI-3 targets list their other LUNs.
        let (completion, data) = self.cmd(lun0, cdb::report_luns(512), 512).await?;
        if good(&completion) {
            for lun in parse_report_luns(&data)? {
                if lun != 0 {
                    self.linux_lun(LunAddress { path, target, lun }).await?;
                }
            }
        }
        Ok(())
    }

    /// INQUIRY, and the probe if a LUN is present.
    async fn linux_lun(&mut self, address: LunAddress) -> Result<(), DriverError> {
        let info = self.linux_inquiry(address).await?;
        if info.present() {
            self.linux_probe(address, info).await?;
        }
        Ok(())
    }

    async fn linux_inquiry(&mut self, address: LunAddress) -> Result<InquiryInfo, DriverError> {
        let data = self.checked(address, cdb::inquiry(None, 36), 36).await?;
        Ok(parse_inquiry(&data)?)
    }

    async fn linux_probe(
        &mut self,
        address: LunAddress,
        inquiry: InquiryInfo,
    ) -> Result<(), DriverError> {
        let inquiry = self.linux_full_inquiry(address, inquiry).await?;
        let vpd_pages = self.linux_vpd_pages(address).await?;
        self.checked(address, cdb::test_unit_ready(), 0).await?;
        let (blocks, block_size) = self.linux_capacity(address).await?;
        let write_protect = self.linux_mode_sense(address).await?;
        self.linux_partition_scan(address, blocks, block_size)
            .await?;
        self.disks.push(DiskInfo {
            address,
            inquiry,
            vpd_pages,
            block_size,
            blocks,
            write_protect: Some(write_protect),
        });
        Ok(())
    }

    /// The INQUIRY again at its full length, if longer than 36 bytes.
    async fn linux_full_inquiry(
        &mut self,
        address: LunAddress,
        inquiry: InquiryInfo,
    ) -> Result<InquiryInfo, DriverError> {
        if inquiry.full_length <= 36 {
            return Ok(inquiry);
        }
        let len = inquiry.full_length.min(255) as u16;
        let data = self
            .checked(address, cdb::inquiry(None, len), u32::from(len))
            .await?;
        Ok(parse_inquiry(&data)?)
    }

    /// VPD page 0x00, then each page Linux reads that it lists.
    async fn linux_vpd_pages(&mut self, address: LunAddress) -> Result<Vec<u8>, DriverError> {
        let data = self
            .checked(address, cdb::inquiry(Some(0), 255), 255)
            .await?;
        let vpd_pages = parse_vpd_supported(&data)?;
        for page in LINUX_VPD_PAGES {
            if vpd_pages.contains(&page) {
                self.checked(address, cdb::inquiry(Some(page), 255), 255)
                    .await?;
            }
        }
        Ok(vpd_pages)
    }

    /// READ CAPACITY(16) then (10), which must agree: `(blocks,
    /// block_size)`.
    async fn linux_capacity(&mut self, address: LunAddress) -> Result<(u64, u32), DriverError> {
        let data = self.checked(address, cdb::read_capacity16(32), 32).await?;
        let (last16, block16, _) = parse_read_capacity16(&data)?;
        let data = self.checked(address, cdb::read_capacity10(), 8).await?;
        let (last10, block10) = parse_read_capacity10(&data)?;
        if block10 != block16 || (last10 != u32::MAX && u64::from(last10) != last16) {
            return Err(StorvscError::ShortData {
                what: "READ CAPACITY(10) disagrees with READ CAPACITY(16)",
                len: 0,
                needed: 0,
            }
            .into());
        }
        Ok((last16.saturating_add(1), block16))
    }

    /// MODE SENSE(6) of all pages then of the caching page; returns the
    /// write-protect bit.
    async fn linux_mode_sense(&mut self, address: LunAddress) -> Result<bool, DriverError> {
        let data = self
            .checked(address, cdb::mode_sense6(0x3F, 192), 192)
            .await?;
        let write_protect = parse_mode_sense6_write_protect(&data)?;
        self.checked(address, cdb::mode_sense6(0x08, 192), 192)
            .await?;
        Ok(write_protect)
    }

    /// Partition scan: the first 4 KiB, if the disk holds that much.
    async fn linux_partition_scan(
        &mut self,
        address: LunAddress,
        blocks: u64,
        block_size: u32,
    ) -> Result<(), DriverError> {
        let first = (4096 / block_size.max(1)).max(1) as u16;
        if blocks >= u64::from(first) {
            self.checked(
                address,
                cdb::read10(0, first),
                u32::from(first) * block_size,
            )
            .await?;
        }
        Ok(())
    }
}
