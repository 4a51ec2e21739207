//! The vmbfs client's bus in the loopback VM: [`VmbfsLoopback`] opens
//! channel 0 of a vmbfs device (or any [`VmbusDevice`]) with the ring
//! sizes its offer asks for, and [`GuestChannel`] is the client's channel.
//! [`ResumeDevice`] swaps the device behind a client, as a VMM does after
//! restoring saved state.

use std::sync::Arc;

use vmbdev_device::bus::VmbusDevice;
use vmbdev_guest::vmbfs::{BusFailure, VmbfsBus, VmbfsChannel, VmbfsClientError};
use vmbdev_ring::StopSignal;
use vmbdev_ring::{Endpoint, GuestMemory, PageAllocator};

use crate::vm::{GuestChannel, LoopbackVm, RingShape};

/// A vmbfs client running in the loopback VM.
pub type VmbfsClient = vmbdev_guest::vmbfs::VmbfsClient<VmbfsLoopback>;

/// The bus between a vmbfs client and `device` in `vm`.
#[derive(Clone)]
pub struct VmbfsLoopback {
    vm: LoopbackVm,
    device: Arc<dyn VmbusDevice>,
}

impl std::fmt::Debug for VmbfsLoopback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbfsLoopback")
            .field("vm", &self.vm)
            .finish_non_exhaustive()
    }
}

impl VmbfsLoopback {
    /// Channels to `device` in `vm`.
    pub fn new(vm: LoopbackVm, device: Arc<dyn VmbusDevice>) -> Self {
        Self { vm, device }
    }

    /// The VM.
    pub fn vm(&self) -> &LoopbackVm {
        &self.vm
    }

    /// The device later channels open to.
    pub fn device(&self) -> &Arc<dyn VmbusDevice> {
        &self.device
    }

    /// Makes later channels open to `device`.
    pub fn set_device(&mut self, device: Arc<dyn VmbusDevice>) {
        self.device = device;
    }
}

impl VmbfsBus for VmbfsLoopback {
    type Channel = GuestChannel;

    fn open_channel(&mut self) -> Result<GuestChannel, BusFailure> {
        let shape = RingShape::from_offer(&*self.device);
        Ok(self.vm.open_channel(self.device.clone(), 0, shape)?)
    }

    fn memory(&self) -> &GuestMemory {
        self.vm.memory()
    }

    fn pages(&self) -> &PageAllocator {
        self.vm.pages()
    }
}

impl VmbfsChannel for GuestChannel {
    fn endpoint(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    fn host_stopped(&self) -> Arc<StopSignal> {
        self.exit_handle().signal()
    }

    async fn wait_host_end(&mut self) -> Result<(), BusFailure> {
        Ok(self.wait_device_end().await?)
    }

    async fn suspend_host(&mut self) -> Result<(), BusFailure> {
        Ok(self.suspend_device().await?)
    }

    async fn close(self) -> Result<(), BusFailure> {
        Ok(GuestChannel::close(self).await?)
    }
}

/// Serving a client's channel with another device instance.
pub trait ResumeDevice {
    /// Serves the open channel with `device` (e.g. restored from saved
    /// state); later volume opens use it too.
    fn resume_device(&mut self, device: Arc<dyn VmbusDevice>) -> Result<(), VmbfsClientError>;
}

impl ResumeDevice for VmbfsClient {
    fn resume_device(&mut self, device: Arc<dyn VmbusDevice>) -> Result<(), VmbfsClientError> {
        self.bus_mut().set_device(device.clone());
        if let Some(channel) = self.channel_mut() {
            channel
                .resume_device(device)
                .map_err(|e| VmbfsClientError::Bus(Box::new(e)))?;
        }
        Ok(())
    }
}
