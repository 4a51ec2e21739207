//! The bus scan: every SRB a scan sends goes through [`Scan::cmd`], which
//! records it with its answer in the probe log; `linux` and `uefi` hold the
//! two guests' scan orders.

mod linux;
mod uefi;

use super::channel::{Inner, good, srb_error};
use super::{DiskInfo, DriverError, ProbeRecord};
use crate::storvsc::{GuestProfile, LunAddress, SrbCompletion};

/// What a scan found, and every SRB it sent.
pub(super) struct Found {
    /// The SRBs in order, with their answers.
    pub(super) log: Vec<ProbeRecord>,
    /// The disks, in scan order.
    pub(super) disks: Vec<DiskInfo>,
}

/// Scans the bus the way `inner`'s profile does.
pub(super) async fn scan(inner: &Inner) -> Result<Found, DriverError> {
    let mut scan = Scan {
        inner,
        log: Vec::new(),
        disks: Vec::new(),
    };
    match inner.profile {
        GuestProfile::Linux => scan.linux().await?,
        GuestProfile::Uefi => scan.uefi().await?,
    }
    Ok(Found {
        log: scan.log,
        disks: scan.disks,
    })
}

/// The bus scan of one profile.
struct Scan<'a> {
    inner: &'a Inner,
    log: Vec<ProbeRecord>,
    disks: Vec<DiskInfo>,
}

impl Scan<'_> {
    /// Runs one data-in SRB and logs it.
    async fn cmd(
        &mut self,
        address: LunAddress,
        cdb: Vec<u8>,
        len: u32,
    ) -> Result<(SrbCompletion, Vec<u8>), DriverError> {
        let (completion, data) = self.inner.srb_in(address, &cdb, len).await?;
        self.log.push(ProbeRecord {
            address,
            cdb,
            buffer_len: len,
            completion: completion.clone(),
            data: data.clone(),
        });
        Ok((completion, data))
    }

    /// [`cmd`](Self::cmd) that fails unless the SRB succeeded.
    async fn checked(
        &mut self,
        address: LunAddress,
        cdb: Vec<u8>,
        len: u32,
    ) -> Result<Vec<u8>, DriverError> {
        let (completion, data) = self.cmd(address, cdb.clone(), len).await?;
        if !good(&completion) {
            return Err(srb_error(address, &cdb, &completion));
        }
        Ok(data)
    }
}
