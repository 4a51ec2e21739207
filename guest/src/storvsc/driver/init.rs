//! The init/version handshake over the primary channel, as
//! [`InitDriver`](crate::storvsc::InitDriver) sequences it, the SRB packet
//! size that follows from the accepted version, and the sub-channels Linux
//! creates and opens afterwards.

use vmbdev_protocol::vstor::{self, NtStatus};

use super::channel::Inner;
use super::{ChannelOpener, DriverError};
use crate::storvsc::{
    GuestProfile, HostProperties, InitDriver, completion_status, create_sub_channels_packet,
    linux_sub_channel_count,
};

/// Runs the init handshake of `profile` on channel 0 and sets the SRB size
/// and transfer limit it negotiated; returns the accepted version and the
/// host's properties.
pub(super) async fn handshake(
    inner: &mut Inner,
    profile: GuestProfile,
) -> Result<(u16, HostProperties), DriverError> {
    let mut init = InitDriver::new(profile);
    while let Some(packet) = init.request() {
        let reply = inner.request(0, &packet, None).await?;
        init.on_completion(reply.bytes())?;
    }
    let version = init.version().unwrap_or(0);
    let properties = init.properties();
    inner.max_transfer = properties.max_transfer_bytes;
    inner.srb_size = srb_size(profile, version);
    Ok((version, properties))
}

/// The size of the SRB packets sent after init: Linux shrinks them before
/// WIN8, the firmware keeps its init size.
fn srb_size(profile: GuestProfile, version: u16) -> usize {
    match profile {
        GuestProfile::Linux if version >= vstor::ProtocolVersion::WIN8.0 => vstor::PACKET_SIZE_WIN8,
        GuestProfile::Linux => vstor::PACKET_SIZE_PRE_WIN8,
        GuestProfile::Uefi => profile.packet_size(),
    }
}

/// Asks for the sub-channels Linux wants for `cpus` CPUs (if the host
/// offers any) and opens each through `opener`.
pub(super) async fn open_linux_sub_channels(
    inner: &mut Inner,
    opener: &dyn ChannelOpener,
    cpus: u16,
    version: u16,
    properties: HostProperties,
) -> Result<(), DriverError> {
    let count = linux_sub_channel_count(cpus, version, properties);
    if count == 0 {
        return Ok(());
    }
    let reply = inner
        .request(0, &create_sub_channels_packet(count), None)
        .await?;
    let status = completion_status(reply.bytes())?;
    if status != NtStatus::SUCCESS {
        return Err(DriverError::SubChannels(format!(
            "CREATE_SUB_CHANNELS({count}) failed with {:#010x}",
            status.0
        )));
    }
    for index in 1..=count {
        let endpoint = opener
            .open_sub_channel(index)
            .map_err(DriverError::SubChannels)?;
        inner.add_channel(endpoint)?;
    }
    Ok(())
}
