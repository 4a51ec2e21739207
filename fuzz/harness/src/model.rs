//! An independent, deliberately simple model of the ring reader's checks,
//! written from ring.md only: the ring data area as one byte vector, the
//! descriptor checks in spec order, the GPA-direct and transfer-page range
//! lists. The `ring_reader` target compares the real reader against it.

use crate::{le16, le32, le64};

/// A packet the model accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPacket {
    /// Descriptor type.
    pub packet_type: u16,
    /// Transaction id.
    pub transaction_id: u64,
    /// Completion requested flag.
    pub completion_requested: bool,
    /// Payload bytes (`8*data_offset8 .. 8*length8`).
    pub payload: Vec<u8>,
    /// GPA-direct ranges as `(byte_count, byte_offset, gpns)`.
    pub gpa_ranges: Vec<(u32, u32, Vec<u64>)>,
    /// Transfer-page ranges as `(byte_count, byte_offset)`.
    pub transfer_ranges: Vec<(u32, u32)>,
    /// Ring offset after the packet's trailer.
    pub next: u32,
}

/// Bytes available between `read` and `write` in a ring of `size`.
pub fn available(write: u32, read: u32, size: u32) -> u32 {
    ((u64::from(write) + u64::from(size) - u64::from(read)) % u64::from(size)) as u32
}

/// `len` bytes of the ring `data` starting at `at`, wrapping.
fn wrapped(data: &[u8], at: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| data[(at as usize + i) % data.len()])
        .collect()
}

/// Parses `count` GPA ranges from `list`; `None` if any check fails.
fn gpa_ranges(list: &[u8], count: u32) -> Option<Vec<(u32, u32, Vec<u64>)>> {
    let mut at = 0usize;
    let mut out = Vec::new();
    for _ in 0..count {
        if at + 8 > list.len() {
            return None;
        }
        let byte_count = le32(list, at);
        let byte_offset = le32(list, at + 4);
        if byte_count == 0 || byte_offset > 0xFFF || byte_offset % 2 != 0 {
            return None;
        }
        at += 8;
        let pages = (u64::from(byte_offset) + u64::from(byte_count)).div_ceil(4096) as usize;
        if (list.len() - at) / 8 < pages {
            return None;
        }
        let gpns = (0..pages).map(|i| le64(list, at + 8 * i)).collect();
        at += 8 * pages;
        out.push((byte_count, byte_offset, gpns));
    }
    Some(out)
}

/// The packet at `read` of a ring holding `data` whose writer published
/// `write`: `Ok(None)` when empty, `Err(())` when any check fails.
#[allow(clippy::result_unit_err)]
pub fn next_packet(data: &[u8], write: u32, read: u32) -> Result<Option<ModelPacket>, ()> {
    let size = data.len() as u32;
    let avail = available(write, read, size);
    if avail == 0 {
        return Ok(None);
    }
    if avail < 16 {
        return Err(());
    }
    let desc = wrapped(data, read, 16);
    let packet_type = le16(&desc, 0);
    let data_offset8 = le16(&desc, 2);
    let length8 = le16(&desc, 4);
    let flags = le16(&desc, 6);
    if data_offset8 < 2 || data_offset8 > length8 {
        return Err(());
    }
    if u64::from(length8) * 8 + 8 > u64::from(avail) {
        return Err(());
    }
    if flags & !1 != 0 {
        return Err(());
    }
    if ![6u16, 7, 9, 0xB].contains(&packet_type) {
        return Err(());
    }
    if (packet_type == 7 || packet_type == 9) && data_offset8 < 3 {
        return Err(());
    }
    let total = usize::from(length8) * 8;
    let header_len = usize::from(data_offset8) * 8;
    let packet = wrapped(data, read, total);
    let mut gpa = Vec::new();
    let mut transfer = Vec::new();
    if packet_type == 7 || packet_type == 9 {
        let count = le32(&packet, 20);
        if count == 0 {
            return Err(());
        }
        let list = &packet[24..header_len];
        if packet_type == 9 {
            gpa = gpa_ranges(list, count).ok_or(())?;
        } else {
            if count as usize > list.len() / 8 {
                return Err(());
            }
            transfer = (0..count as usize)
                .map(|i| (le32(list, 8 * i), le32(list, 8 * i + 4)))
                .collect();
        }
    }
    Ok(Some(ModelPacket {
        packet_type,
        transaction_id: le64(&desc, 8),
        completion_requested: flags & 1 != 0,
        payload: packet[header_len..].to_vec(),
        gpa_ranges: gpa,
        transfer_ranges: transfer,
        next: ((read as usize + total + 8) % data.len()) as u32,
    }))
}
