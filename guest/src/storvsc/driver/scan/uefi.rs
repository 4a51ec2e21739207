//! The UEFI firmware's scan: REPORT LUNS (allocation 0) to targets 0–2 of
//! path 0; each listed LUN gets a 96-byte INQUIRY and, if present, VPD
//! page 0x00 (and 0xB0 when listed), TEST UNIT READY, READ CAPACITY(10)
//! (16 when it overflows) and one read of block 0.

use super::Scan;
use crate::storvsc::driver::{DiskInfo, DriverError};
use crate::storvsc::{
    LunAddress, cdb, parse_inquiry, parse_read_capacity10, parse_read_capacity16,
    parse_report_luns, parse_vpd_supported,
};

impl Scan<'_> {
    pub(super) async fn uefi(&mut self) -> Result<(), DriverError> {
        for target in 0..3u8 {
            let lun0 = LunAddress {
                path: 0,
                target,
                lun: 0,
            };
            let data = self.checked(lun0, cdb::report_luns(0), 2048).await?;
            for lun in parse_report_luns(&data)? {
                let address = LunAddress {
                    path: 0,
                    target,
                    lun,
                };
                self.uefi_probe(address).await?;
            }
        }
        Ok(())
    }

    async fn uefi_probe(&mut self, address: LunAddress) -> Result<(), DriverError> {
        let data = self.checked(address, cdb::inquiry(None, 96), 96).await?;
        let inquiry = parse_inquiry(&data)?;
        if !inquiry.present() {
            return Ok(());
        }
        let vpd_pages = self.uefi_vpd_pages(address).await?;
        self.checked(address, cdb::test_unit_ready(), 0).await?;
        let (blocks, block_size) = self.uefi_capacity(address).await?;
        if blocks > 0 && block_size > 0 {
            self.checked(address, cdb::read10(0, 1), block_size).await?;
        }
        self.disks.push(DiskInfo {
            address,
            inquiry,
            vpd_pages,
            block_size,
            blocks,
            write_protect: None,
        });
        Ok(())
    }

    /// VPD page 0x00, then the block limits page if listed.
    async fn uefi_vpd_pages(&mut self, address: LunAddress) -> Result<Vec<u8>, DriverError> {
        let data = self
            .checked(address, cdb::inquiry(Some(0), 255), 255)
            .await?;
        let vpd_pages = parse_vpd_supported(&data)?;
        if vpd_pages.contains(&0xB0) {
            self.checked(address, cdb::inquiry(Some(0xB0), 64), 64)
                .await?;
        }
        Ok(vpd_pages)
    }

    /// READ CAPACITY(10), then (16) if the last LBA does not fit:
    /// `(blocks, block_size)`.
    async fn uefi_capacity(&mut self, address: LunAddress) -> Result<(u64, u32), DriverError> {
        let data = self.checked(address, cdb::read_capacity10(), 8).await?;
        let (last10, block10) = parse_read_capacity10(&data)?;
        if last10 != u32::MAX {
            return Ok((u64::from(last10) + 1, block10));
        }
        let data = self.checked(address, cdb::read_capacity16(32), 32).await?;
        let (last, block, _) = parse_read_capacity16(&data)?;
        Ok((last.saturating_add(1), block))
    }
}
