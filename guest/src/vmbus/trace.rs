//! One-line descriptions of control-plane messages (type name and key
//! fields), for a trace of what a guest and its host said to each other.

use vmbdev_protocol::vmbus::{
    GpadlBody, GpadlCreated, GpadlHeader, GpadlTeardown, GpadlTorndown, InitiateContact,
    MessageHeader, MessageType, ModifyChannel, ModifyChannelResponse, OfferChannel, OpenChannel,
    OpenResult, RelidMessage, VersionResponse,
};
use zerocopy::FromBytes;

/// Who sent a traced message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Guest to host (HvPostMessage).
    ToHost,
    /// Host to guest (the SIMP slot).
    ToGuest,
}

/// A traced control-plane message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// Who sent it.
    pub direction: Direction,
    /// The connection id it was posted on (guest to host only).
    pub connection_id: Option<u32>,
    /// Its type.
    pub message_type: MessageType,
    /// Type name and key fields, as [`describe`] gives them.
    pub text: String,
}

impl std::fmt::Display for TraceEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.direction, self.connection_id) {
            (Direction::ToHost, Some(id)) => write!(f, "guest -> host [conn {id}] {}", self.text),
            (Direction::ToHost, None) => write!(f, "guest -> host {}", self.text),
            (Direction::ToGuest, _) => write!(f, "host -> guest {}", self.text),
        }
    }
}

/// The name of a message type, as the protocol spells it.
pub fn type_name(kind: MessageType) -> &'static str {
    match kind {
        MessageType::OFFER_CHANNEL => "OFFERCHANNEL",
        MessageType::RESCIND_CHANNEL_OFFER => "RESCIND_CHANNELOFFER",
        MessageType::REQUEST_OFFERS => "REQUESTOFFERS",
        MessageType::ALL_OFFERS_DELIVERED => "ALLOFFERS_DELIVERED",
        MessageType::OPEN_CHANNEL => "OPENCHANNEL",
        MessageType::OPEN_CHANNEL_RESULT => "OPENCHANNEL_RESULT",
        MessageType::CLOSE_CHANNEL => "CLOSECHANNEL",
        MessageType::GPADL_HEADER => "GPADL_HEADER",
        MessageType::GPADL_BODY => "GPADL_BODY",
        MessageType::GPADL_CREATED => "GPADL_CREATED",
        MessageType::GPADL_TEARDOWN => "GPADL_TEARDOWN",
        MessageType::GPADL_TORNDOWN => "GPADL_TORNDOWN",
        MessageType::RELID_RELEASED => "RELID_RELEASED",
        MessageType::INITIATE_CONTACT => "INITIATE_CONTACT",
        MessageType::VERSION_RESPONSE => "VERSION_RESPONSE",
        MessageType::UNLOAD => "UNLOAD",
        MessageType::UNLOAD_RESPONSE => "UNLOAD_RESPONSE",
        MessageType::MODIFY_CHANNEL => "MODIFYCHANNEL",
        MessageType::MODIFY_CHANNEL_RESPONSE => "MODIFYCHANNEL_RESPONSE",
        _ => "unknown",
    }
}

/// A version as `major.minor`.
pub(crate) fn version_text(version: u32) -> String {
    format!("{}.{}", version >> 16, version & 0xffff)
}

/// The message type of `message`, if it has a header.
pub(crate) fn message_type(message: &[u8]) -> Option<MessageType> {
    MessageHeader::read_from_prefix(message)
        .ok()
        .map(|(h, _)| MessageType(h.message_type.get()))
}

/// Type name and key fields of `message` (what a trace line shows); a
/// message too short for its type says so.
pub fn describe(message: &[u8]) -> String {
    let Some(kind) = message_type(message) else {
        return format!("({} bytes, no header)", message.len());
    };
    let name = type_name(kind);
    let fields = fields(kind, message);
    match fields {
        Some(f) if f.is_empty() => name.to_string(),
        Some(f) => format!("{name} {f}"),
        None if name == "unknown" => format!("type {} ({} bytes)", kind.0, message.len()),
        None => format!("{name} (short: {} bytes)", message.len()),
    }
}

fn fields(kind: MessageType, m: &[u8]) -> Option<String> {
    fn get<T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable>(m: &[u8]) -> Option<T> {
        T::read_from_prefix(m).ok().map(|(t, _)| t)
    }
    Some(match kind {
        MessageType::INITIATE_CONTACT => {
            let c: InitiateContact = get(m)?;
            format!(
                "version {} target_vcpu {}",
                version_text(c.version_requested.get()),
                c.target_vcpu.get()
            )
        }
        MessageType::VERSION_RESPONSE => {
            let r: VersionResponse = get(m)?;
            format!(
                "supported {} msg_conn_id {}",
                r.version_supported,
                r.message_connection_id.get()
            )
        }
        MessageType::OFFER_CHANNEL => {
            let o: OfferChannel = get(m)?;
            format!(
                "relid {} interface {} instance {} sub_channel {} connection_id {:#x}",
                o.child_relid.get(),
                o.offer.interface_id,
                o.offer.instance_id,
                o.offer.sub_channel_index.get(),
                o.connection_id.get()
            )
        }
        MessageType::RESCIND_CHANNEL_OFFER
        | MessageType::CLOSE_CHANNEL
        | MessageType::RELID_RELEASED => {
            let r: RelidMessage = get(m)?;
            format!("relid {}", r.child_relid.get())
        }
        MessageType::OPEN_CHANNEL => {
            let o: OpenChannel = get(m)?;
            format!(
                "relid {} gpadl {:#x} target_vp {} downstream_page_offset {}",
                o.child_relid.get(),
                o.ring_gpadl.get(),
                o.target_vp.get(),
                o.downstream_page_offset.get()
            )
        }
        MessageType::OPEN_CHANNEL_RESULT => {
            let r: OpenResult = get(m)?;
            format!("relid {} status {:#x}", r.child_relid.get(), r.status.get())
        }
        MessageType::GPADL_HEADER => {
            let h: GpadlHeader = get(m)?;
            let pfns = m.len().saturating_sub(size_of::<GpadlHeader>() + 8) / 8;
            format!(
                "relid {} gpadl {:#x} range_buflen {} pfns {pfns}",
                h.child_relid.get(),
                h.gpadl.get(),
                h.range_buflen.get()
            )
        }
        MessageType::GPADL_BODY => {
            let b: GpadlBody = get(m)?;
            let pfns = m.len().saturating_sub(size_of::<GpadlBody>()) / 8;
            format!("gpadl {:#x} pfns {pfns}", b.gpadl.get())
        }
        MessageType::GPADL_CREATED => {
            let c: GpadlCreated = get(m)?;
            format!(
                "relid {} gpadl {:#x} status {:#x}",
                c.child_relid.get(),
                c.gpadl.get(),
                c.status.get()
            )
        }
        MessageType::GPADL_TEARDOWN => {
            let t: GpadlTeardown = get(m)?;
            format!("relid {} gpadl {:#x}", t.child_relid.get(), t.gpadl.get())
        }
        MessageType::GPADL_TORNDOWN => {
            let t: GpadlTorndown = get(m)?;
            format!("gpadl {:#x}", t.gpadl.get())
        }
        MessageType::MODIFY_CHANNEL => {
            let c: ModifyChannel = get(m)?;
            format!(
                "relid {} target_vp {}",
                c.child_relid.get(),
                c.target_vp.get()
            )
        }
        MessageType::MODIFY_CHANNEL_RESPONSE => {
            let r: ModifyChannelResponse = get(m)?;
            format!("relid {} status {:#x}", r.child_relid.get(), r.status.get())
        }
        MessageType::REQUEST_OFFERS
        | MessageType::ALL_OFFERS_DELIVERED
        | MessageType::UNLOAD
        | MessageType::UNLOAD_RESPONSE => String::new(),
        _ => return None,
    })
}
