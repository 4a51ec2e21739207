//! Guest memory across the socket: the [`kind::SET_MEMORY`] message a VMM
//! side builds from its memfd-backed memory, and the checks a device side
//! makes before adopting the memfd it receives.

use std::os::fd::{BorrowedFd, OwnedFd};

use vmbdev_ring::{GuestMemory, MemoryRegion};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U32, U64};

use crate::error::RemoteError;
use crate::transport::{Malformed, exact_array, fixed};
use crate::wire::{MAX_REGIONS, MemoryHeader, RegionDesc, code};

/// `(device, inode)` of a memfd: tells whether the peer already has it.
pub(crate) type MemoryIdentity = (u64, u64);

/// The payload and fd of a [`kind::SET_MEMORY`](crate::wire::kind::SET_MEMORY)
/// for `memory`, and the memfd's identity.
pub(crate) fn set_memory_message(
    memory: &GuestMemory,
) -> Result<(Vec<u8>, BorrowedFd<'_>, MemoryIdentity), RemoteError> {
    let fd = memory.fd().ok_or(RemoteError::NoMemoryFd)?;
    let stat = rustix::fs::fstat(fd).map_err(|e| RemoteError::io("fstat the memfd", e))?;
    let regions = memory.regions();
    if regions.len() > MAX_REGIONS {
        return Err(RemoteError::TooLarge {
            what: "guest memory regions",
            len: regions.len(),
            max: MAX_REGIONS,
        });
    }
    let mut payload = MemoryHeader {
        region_count: U32::new(regions.len() as u32),
        reserved: U32::new(0),
    }
    .as_bytes()
    .to_vec();
    for r in regions {
        let desc = RegionDesc {
            gpa: U64::new(r.gpa),
            len: U64::new(r.len),
            fd_offset: U64::new(r.offset),
        };
        payload.extend_from_slice(desc.as_bytes());
    }
    Ok((payload, fd, (stat.st_dev, stat.st_ino)))
}

/// Checks a received [`kind::SET_MEMORY`](crate::wire::kind::SET_MEMORY)
/// and maps the memfd it carries.
pub(crate) fn adopt_memory(payload: &[u8], fd: Option<OwnedFd>) -> Result<GuestMemory, Malformed> {
    let (header, rest) = fixed::<MemoryHeader>(payload, "set memory")?;
    let count = header.region_count.get() as usize;
    if count > MAX_REGIONS {
        return Err(Malformed::new(
            code::TOO_LARGE,
            format!("region_count {count} is above {MAX_REGIONS}"),
        ));
    }
    let regions = exact_array::<RegionDesc>(rest, count, "set memory regions")?;
    let layout: Vec<MemoryRegion> = regions
        .iter()
        .map(|r| MemoryRegion::new(r.gpa.get(), r.len.get(), r.fd_offset.get()))
        .collect();
    let fd = fd.ok_or_else(|| Malformed::new(code::MISSING_FDS, "set memory without its fd"))?;
    let memory = GuestMemory::from_memfd(fd, &layout)
        .map_err(|e| Malformed::new(code::BAD_MEMORY, e.to_string()))?;
    tracing::debug!(?layout, "remote: adopted guest memory");
    Ok(memory)
}
