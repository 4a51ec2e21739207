//! The bus's saved state as bytes: a versioned little-endian encoding of
//! the connection, channels, GPADLs, queued host messages and each device's
//! own saved bytes, and its decoding, which treats the bytes like guest
//! input (every count and length is checked before it sizes anything).
//!
//! Layout (version 1): `"VMBS"`, `u32` version, the link (`u8` present,
//! then version `u32`, vp `u32`, sint `u8`, offers requested `u8`), the
//! offer cursor (`u8` present, `u32`), then four counted lists: channels,
//! GPADLs, queued messages, devices.

use vmbdev_device::bus::BusError;
use vmbdev_ring::GpaError;

const MAGIC: &[u8; 4] = b"VMBS";
const VERSION: u32 = 1;

/// Why saved bus state was refused (on save or on restore).
#[derive(Debug, thiserror::Error)]
pub enum SavedStateError {
    /// The bytes end inside a field.
    #[error("saved state truncated at byte {0}")]
    Truncated(usize),
    /// Not bus saved state.
    #[error("saved state does not start with VMBS")]
    BadMagic,
    /// A version this build does not read.
    #[error("saved state version {0} is not supported")]
    Version(u32),
    /// A field with a value the bus cannot hold.
    #[error("saved state field {field} has the impossible value {value}")]
    BadField {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// Bytes left after the last field.
    #[error("{0} bytes after the end of the saved state")]
    Trailing(usize),
    /// The saved state names other devices than those given.
    #[error("saved state holds {saved} devices but {given} were given")]
    DeviceCount {
        /// Devices in the bytes.
        saved: usize,
        /// Devices given to restore.
        given: usize,
    },
    /// A saved GPADL could not be registered again.
    #[error("saved GPADL {gpadl:#x}: {source}")]
    Gpadl {
        /// The GPADL.
        gpadl: u32,
        /// Why.
        source: GpaError,
    },
    /// A device refused to save or restore.
    #[error("device {index}: {source}")]
    Device {
        /// Index of the device in registration order.
        index: usize,
        /// Why.
        source: BusError,
    },
    /// Something is still in flight; finish it first.
    #[error("cannot save while {0}")]
    Busy(&'static str),
    /// The configuration given to restore is out of bounds.
    #[error(transparent)]
    Config(#[from] crate::server::ConfigError),
}

/// A saved connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SavedLink {
    pub version: u32,
    pub target_vp: u32,
    pub sint: u8,
    pub offers_requested: bool,
}

/// A saved channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SavedChannel {
    pub relid: u32,
    pub device: u32,
    pub index: u16,
    pub offered: bool,
    pub rescinded: bool,
    /// `(ring_gpadl, target_vp, downstream offset)` if open.
    pub open: Option<(u32, u32, u32)>,
}

/// A saved GPADL: created (its pages) or being assembled (its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SavedGpadlState {
    Created(Vec<u64>),
    Assembling {
        range_count: u16,
        expected: u32,
        bytes: Vec<u8>,
    },
}

/// A saved GPADL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SavedGpadl {
    pub id: u32,
    pub relid: u32,
    pub state: SavedGpadlState,
}

/// A queued host message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SavedMessage {
    pub vp: u32,
    pub sint: u8,
    pub bytes: Vec<u8>,
}

/// Everything the bus saves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SavedBus {
    pub link: Option<SavedLink>,
    pub offer_cursor: Option<u32>,
    pub channels: Vec<SavedChannel>,
    pub gpadls: Vec<SavedGpadl>,
    pub queue: Vec<SavedMessage>,
    /// Per device in registration order: its saved bytes, `None` if it was
    /// removed.
    pub devices: Vec<Option<Vec<u8>>>,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], SavedStateError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(SavedStateError::Truncated(self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SavedStateError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, SavedStateError> {
        Ok(self.array::<1>()?[0])
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, SavedStateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(SavedStateError::BadField {
                field,
                value: v.into(),
            }),
        }
    }
    fn u16(&mut self) -> Result<u16, SavedStateError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, SavedStateError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, SavedStateError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A count of items of at least `item_len` bytes each, checked against
    /// what is left so it can size a vector.
    fn count(&mut self, field: &'static str, item_len: usize) -> Result<usize, SavedStateError> {
        let count = self.u32()? as usize;
        if count.saturating_mul(item_len) > self.bytes.len() - self.at {
            return Err(SavedStateError::BadField {
                field,
                value: count as u64,
            });
        }
        Ok(count)
    }
    fn bytes(&mut self, field: &'static str) -> Result<Vec<u8>, SavedStateError> {
        let len = self.count(field, 1)?;
        Ok(self.take(len)?.to_vec())
    }
}

impl SavedBus {
    /// The encoding of `self`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        w.0.extend_from_slice(MAGIC);
        w.u32(VERSION);
        match self.link {
            Some(link) => {
                w.u8(1);
                w.u32(link.version);
                w.u32(link.target_vp);
                w.u8(link.sint);
                w.u8(link.offers_requested.into());
            }
            None => w.u8(0),
        }
        w.u8(self.offer_cursor.is_some().into());
        w.u32(self.offer_cursor.unwrap_or(0));
        w.u32(self.channels.len() as u32);
        for c in &self.channels {
            encode_channel(&mut w, c);
        }
        w.u32(self.gpadls.len() as u32);
        for g in &self.gpadls {
            encode_gpadl(&mut w, g);
        }
        w.u32(self.queue.len() as u32);
        for m in &self.queue {
            w.u32(m.vp);
            w.u8(m.sint);
            w.bytes(&m.bytes);
        }
        w.u32(self.devices.len() as u32);
        for d in &self.devices {
            w.u8(d.is_some().into());
            w.bytes(d.as_deref().unwrap_or_default());
        }
        w.0
    }

    /// Decodes `bytes`, checking the framing (the server checks meaning).
    pub fn decode(bytes: &[u8]) -> Result<Self, SavedStateError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(SavedStateError::BadMagic);
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(SavedStateError::Version(version));
        }
        let link = if r.bool("link present")? {
            Some(SavedLink {
                version: r.u32()?,
                target_vp: r.u32()?,
                sint: r.u8()?,
                offers_requested: r.bool("offers requested")?,
            })
        } else {
            None
        };
        let cursor_present = r.bool("offer cursor present")?;
        let cursor = r.u32()?;
        let mut saved = Self {
            link,
            offer_cursor: cursor_present.then_some(cursor),
            ..Self::default()
        };
        for _ in 0..r.count("channel count", 25)? {
            saved.channels.push(decode_channel(&mut r)?);
        }
        for _ in 0..r.count("GPADL count", 13)? {
            saved.gpadls.push(decode_gpadl(&mut r)?);
        }
        for _ in 0..r.count("queue length", 9)? {
            saved.queue.push(SavedMessage {
                vp: r.u32()?,
                sint: r.u8()?,
                bytes: r.bytes("message length")?,
            });
        }
        for _ in 0..r.count("device count", 5)? {
            let present = r.bool("device present")?;
            let bytes = r.bytes("device state length")?;
            saved.devices.push(present.then_some(bytes));
        }
        if r.at != bytes.len() {
            return Err(SavedStateError::Trailing(bytes.len() - r.at));
        }
        Ok(saved)
    }
}

fn encode_channel(w: &mut Writer, c: &SavedChannel) {
    w.u32(c.relid);
    w.u32(c.device);
    w.u16(c.index);
    w.u8(c.offered.into());
    w.u8(c.rescinded.into());
    w.u8(c.open.is_some().into());
    let (ring, vp, downstream) = c.open.unwrap_or_default();
    w.u32(ring);
    w.u32(vp);
    w.u32(downstream);
}

fn decode_channel(r: &mut Reader<'_>) -> Result<SavedChannel, SavedStateError> {
    let relid = r.u32()?;
    let device = r.u32()?;
    let index = r.u16()?;
    let offered = r.bool("channel offered")?;
    let rescinded = r.bool("channel rescinded")?;
    let open = r.bool("channel open")?;
    let ring = r.u32()?;
    let vp = r.u32()?;
    let downstream = r.u32()?;
    Ok(SavedChannel {
        relid,
        device,
        index,
        offered,
        rescinded,
        open: open.then_some((ring, vp, downstream)),
    })
}

fn encode_gpadl(w: &mut Writer, g: &SavedGpadl) {
    w.u32(g.id);
    w.u32(g.relid);
    match &g.state {
        SavedGpadlState::Created(pages) => {
            w.u8(0);
            w.u32(pages.len() as u32);
            for &page in pages {
                w.u64(page);
            }
        }
        SavedGpadlState::Assembling {
            range_count,
            expected,
            bytes,
        } => {
            w.u8(1);
            w.u16(*range_count);
            w.u32(*expected);
            w.bytes(bytes);
        }
    }
}

fn decode_gpadl(r: &mut Reader<'_>) -> Result<SavedGpadl, SavedStateError> {
    let id = r.u32()?;
    let relid = r.u32()?;
    let state = match r.u8()? {
        0 => {
            let count = r.count("GPADL page count", 8)?;
            let pages = (0..count).map(|_| r.u64()).collect::<Result<_, _>>()?;
            SavedGpadlState::Created(pages)
        }
        1 => SavedGpadlState::Assembling {
            range_count: r.u16()?,
            expected: r.u32()?,
            bytes: r.bytes("GPADL bytes")?,
        },
        v => {
            return Err(SavedStateError::BadField {
                field: "GPADL state",
                value: v.into(),
            });
        }
    };
    Ok(SavedGpadl { id, relid, state })
}

#[cfg(test)]
mod tests {
    //! Saved state the running server could never have produced is
    //! refused, and nothing of it stays registered.

    use super::*;
    use crate::server::{Server, ServerConfig};
    use std::sync::Arc;
    use vmbdev_device::bus::{ChannelTask, Guid, Offer, OpenRequest, PipeMode, VmbusDevice};
    use vmbdev_ring::{GpadlRegistry, GuestMemory, PAGE_SIZE};

    struct Idle;

    impl VmbusDevice for Idle {
        fn offer(&self) -> Offer {
            Offer {
                interface_id: Guid::from_u128(1),
                instance_id: Guid::from_u128(2),
                pipe_mode: PipeMode::None,
                incoming_ring_pages: 1,
                outgoing_ring_pages: 1,
                max_sub_channels: 1,
                name: "idle".into(),
            }
        }
        fn open(&self, index: u16, _request: OpenRequest) -> Result<ChannelTask, BusError> {
            Err(BusError::NotOpen(index))
        }
        fn close(&self, _index: u16) -> Result<(), BusError> {
            Ok(())
        }
        fn save(&self) -> Result<Vec<u8>, BusError> {
            Ok(Vec::new())
        }
        fn restore(&self, _saved: &[u8]) -> Result<(), BusError> {
            Ok(())
        }
    }

    fn config() -> ServerConfig {
        ServerConfig {
            vp_count: 2,
            queue_limit: 2,
            max_gpadls: 4,
            max_assembling: 2,
            max_channels: 4,
            ..ServerConfig::default()
        }
    }

    /// A connected guest with relid 1 open on GPADL 1 and a data GPADL 2
    /// half built for it.
    fn good() -> SavedBus {
        SavedBus {
            link: Some(SavedLink {
                version: 0x0005_0003,
                target_vp: 1,
                sint: 2,
                offers_requested: true,
            }),
            offer_cursor: None,
            channels: vec![
                SavedChannel {
                    relid: 1,
                    device: 0,
                    index: 0,
                    offered: true,
                    rescinded: false,
                    open: Some((1, 1, 2)),
                },
                SavedChannel {
                    relid: 2,
                    device: 1,
                    index: 0,
                    offered: true,
                    rescinded: false,
                    open: None,
                },
            ],
            gpadls: vec![
                SavedGpadl {
                    id: 1,
                    relid: 1,
                    state: SavedGpadlState::Created(vec![8, 9, 10, 11]),
                },
                SavedGpadl {
                    id: 2,
                    relid: 1,
                    state: SavedGpadlState::Assembling {
                        range_count: 1,
                        expected: 8 + 8 * 40,
                        bytes: vec![0; 8 + 8 * 26],
                    },
                },
                SavedGpadl {
                    id: 3,
                    relid: 2,
                    state: SavedGpadlState::Created(vec![20, 21, 22, 23]),
                },
            ],
            queue: vec![SavedMessage {
                vp: 1,
                sint: 2,
                bytes: vec![12, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0],
            }],
            devices: vec![Some(Vec::new()), Some(Vec::new())],
        }
    }

    /// Restores `saved`; on failure checks that no GPADL stayed behind and
    /// returns the field named.
    fn restore(saved: &SavedBus) -> Result<(), &'static str> {
        let memory = GuestMemory::new(64 * PAGE_SIZE as u64).unwrap();
        let registry = GpadlRegistry::new();
        let devices: Vec<Arc<dyn VmbusDevice>> = vec![Arc::new(Idle), Arc::new(Idle)];
        match Server::restore(memory, registry.clone(), config(), devices, &saved.encode()) {
            Ok(_) => {
                for g in &saved.gpadls {
                    let created = matches!(g.state, SavedGpadlState::Created(_));
                    assert_eq!(registry.get(g.id).is_ok(), created, "GPADL {}", g.id);
                }
                Ok(())
            }
            Err(error) => {
                for id in 1..=3 {
                    assert!(registry.get(id).is_err(), "GPADL {id} left behind");
                }
                match error {
                    SavedStateError::BadField { field, .. } => Err(field),
                    other => panic!("unexpected error {other}"),
                }
            }
        }
    }

    fn damaged(change: impl FnOnce(&mut SavedBus)) -> Result<(), &'static str> {
        let mut saved = good();
        change(&mut saved);
        restore(&saved)
    }

    #[test]
    fn what_the_server_could_have_saved_restores() {
        assert_eq!(restore(&good()), Ok(()));
        // A cursor in the middle of the offers, a rescinded channel keeping
        // its GPADL, a sub-channel within the offer: all possible.
        assert_eq!(
            damaged(|s| {
                s.offer_cursor = Some(2);
                s.channels[1].rescinded = true;
                s.channels.push(SavedChannel {
                    relid: 3,
                    index: 1,
                    ..s.channels[1]
                });
            }),
            Ok(())
        );
    }

    #[test]
    fn two_opens_on_one_ring_are_refused() {
        assert_eq!(
            damaged(|s| s.channels[1].open = Some((1, 0, 2))),
            Err("ring GPADL")
        );
    }

    #[test]
    fn open_channels_and_gpadls_without_a_connection_are_refused() {
        assert!(damaged(|s| s.link = None).is_err());
        // Without GPADLs the open channel alone is refused too.
        assert_eq!(
            damaged(|s| {
                s.link = None;
                s.gpadls.clear();
                s.queue.clear();
            }),
            Err("channel state without a connection")
        );
        assert_eq!(
            damaged(|s| {
                s.link = None;
                s.queue.clear();
                s.channels[0].offered = false;
                s.channels[1].offered = false;
            }),
            Err("GPADL without a connection")
        );
    }

    #[test]
    fn an_open_channel_that_was_rescinded_or_never_offered_is_refused() {
        assert_eq!(
            damaged(|s| s.channels[0].rescinded = true),
            Err("open channel")
        );
        assert_eq!(
            damaged(|s| {
                s.channels[0].offered = false;
                s.gpadls.retain(|g| g.relid != 1);
                s.channels[0].open = None;
            }),
            Ok(()),
            "an unoffered closed channel is fine"
        );
        assert_eq!(
            damaged(|s| s.channels[1].offered = false),
            Err("GPADL channel")
        );
    }

    #[test]
    fn an_offer_cursor_without_request_offers_is_refused() {
        assert_eq!(
            damaged(|s| {
                s.offer_cursor = Some(1);
                if let Some(link) = &mut s.link {
                    link.offers_requested = false;
                }
            }),
            Err("offer cursor")
        );
        assert_eq!(damaged(|s| s.offer_cursor = Some(0)), Err("offer cursor"));
    }

    #[test]
    fn a_queue_past_its_bound_or_to_a_missing_sint_or_vcpu_is_refused() {
        let bound = 2 + 4 + 2 * 4 + 1;
        let message = good().queue[0].clone();
        assert_eq!(damaged(|s| s.queue = vec![message.clone(); bound]), Ok(()));
        assert_eq!(
            damaged(|s| s.queue = vec![message.clone(); bound + 1]),
            Err("queue length")
        );
        assert_eq!(
            damaged(|s| s.queue[0].sint = 16),
            Err("queued message SINT")
        );
        assert_eq!(damaged(|s| s.queue[0].vp = 2), Err("queued message vCPU"));
        // Disconnected, at most the answer to the last contact waits.
        let disconnected = |s: &mut SavedBus| {
            s.link = None;
            s.gpadls.clear();
            for c in &mut s.channels {
                (c.offered, c.open) = (false, None);
            }
        };
        assert_eq!(damaged(disconnected), Ok(()));
        assert_eq!(
            damaged(|s| {
                disconnected(s);
                s.queue.push(message.clone());
            }),
            Err("queue length")
        );
    }

    #[test]
    fn sints_and_vcpus_out_of_range_are_refused() {
        assert_eq!(
            damaged(|s| {
                if let Some(link) = &mut s.link {
                    link.sint = 16;
                }
            }),
            Err("sint")
        );
        assert_eq!(
            damaged(|s| {
                if let Some(link) = &mut s.link {
                    link.target_vp = 2;
                }
            }),
            Err("link vCPU")
        );
        assert_eq!(
            damaged(|s| s.channels[0].open = Some((1, 2, 2))),
            Err("channel vCPU")
        );
    }

    #[test]
    fn a_gpadl_being_built_for_a_rescinded_channel_is_refused() {
        // Created GPADLs stay with a rescinded channel until RELID_RELEASED;
        // one being built is discarded at the rescind.
        let rescind = |s: &mut SavedBus| {
            s.channels[0].rescinded = true;
            s.channels[0].open = None;
        };
        assert_eq!(damaged(rescind), Err("GPADL channel"));
        assert_eq!(
            damaged(|s| {
                rescind(s);
                s.gpadls.remove(1);
            }),
            Ok(())
        );
    }

    #[test]
    fn gpadls_being_built_are_held_to_the_header_bounds() {
        let assembling = |range_count, expected, len| {
            move |s: &mut SavedBus| {
                s.gpadls[1].state = SavedGpadlState::Assembling {
                    range_count,
                    expected,
                    bytes: vec![0; len],
                }
            }
        };
        assert_eq!(damaged(assembling(1, 336, 216)), Ok(()));
        assert_eq!(damaged(assembling(2, 336, 216)), Err("GPADL assembly"));
        assert_eq!(damaged(assembling(1, 336, 215)), Err("GPADL assembly"));
        assert_eq!(damaged(assembling(1, 337, 216)), Err("GPADL assembly"));
        assert_eq!(
            damaged(|s| s.channels[0].index = 2),
            Err("sub-channel index")
        );
    }
}
