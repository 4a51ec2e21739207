//! The block allocation table: geometry (chunk ratio, interleaved sector
//! bitmap entries), entry decoding and the allocation checks.

use crate::error::VhdxError;
use crate::file::FileView;
use crate::format::{BAT_RESERVED_MASK, MIB, bat_state};
use crate::header::Region;

/// Counts of BAT states over the payload entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatCounts {
    /// NOT_PRESENT blocks.
    pub not_present: u64,
    /// UNDEFINED blocks.
    pub undefined: u64,
    /// ZERO blocks.
    pub zero: u64,
    /// UNMAPPED blocks.
    pub unmapped: u64,
    /// FULLY_PRESENT blocks.
    pub fully_present: u64,
    /// PARTIALLY_PRESENT blocks.
    pub partially_present: u64,
    /// Present sector bitmap blocks.
    pub bitmaps_present: u64,
}

/// A decoded payload or bitmap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatEntry {
    pub(crate) state: u8,
    pub(crate) file_offset: u64,
}

/// The BAT in memory with its geometry.
#[derive(Debug)]
pub(crate) struct Bat {
    entries: Vec<u64>,
    pub(crate) chunk_ratio: u64,
    pub(crate) data_blocks: u64,
    pub(crate) counts: BatCounts,
}

/// Geometry needed to lay out and check the BAT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) block_size: u32,
    pub(crate) logical_sector_size: u32,
    pub(crate) disk_size: u64,
    pub(crate) has_parent: bool,
}

impl Geometry {
    /// Payload blocks per sector bitmap block.
    pub(crate) fn chunk_ratio(&self) -> u64 {
        ((1u64 << 23) * u64::from(self.logical_sector_size)) / u64::from(self.block_size)
    }

    /// Payload blocks covering the disk.
    pub(crate) fn data_blocks(&self) -> u64 {
        self.disk_size.div_ceil(u64::from(self.block_size))
    }

    /// BAT entries the geometry needs.
    pub(crate) fn needed_entries(&self) -> u64 {
        let ratio = self.chunk_ratio();
        let blocks = self.data_blocks();
        if self.has_parent {
            blocks.div_ceil(ratio) * (ratio + 1)
        } else {
            blocks + blocks.saturating_sub(1) / ratio
        }
    }
}

/// Index of payload block `block`.
pub(crate) fn payload_index(block: u64, ratio: u64) -> u64 {
    block + block / ratio
}

/// Index of the sector bitmap entry of chunk `chunk`.
pub(crate) fn bitmap_index(chunk: u64, ratio: u64) -> u64 {
    chunk * (ratio + 1) + ratio
}

fn decode(entry: u64) -> BatEntry {
    BatEntry {
        state: (entry & 7) as u8,
        file_offset: entry & !(MIB - 1),
    }
}

/// A file extent other than payload that blocks must not overlap.
pub(crate) struct Reserved {
    pub(crate) name: &'static str,
    pub(crate) offset: u64,
    pub(crate) length: u64,
}

impl Bat {
    /// Reads the BAT region and checks every entry the geometry uses.
    pub(crate) fn read(
        file: &FileView,
        region: Region,
        geometry: Geometry,
        reserved: &[Reserved],
    ) -> Result<Self, VhdxError> {
        let needed = geometry.needed_entries();
        if needed.saturating_mul(8) > u64::from(region.length) {
            return Err(VhdxError::BatTooSmall {
                needed_entries: needed,
                region_length: region.length,
            });
        }
        let mut raw = vec![0u8; (needed * 8) as usize];
        file.read_at(region.offset, &mut raw)?;
        let entries: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect();
        let mut bat = Bat {
            entries,
            chunk_ratio: geometry.chunk_ratio(),
            data_blocks: geometry.data_blocks(),
            counts: BatCounts::default(),
        };
        bat.check(file.len(), geometry, reserved)?;
        Ok(bat)
    }

    /// The entry of payload block `block` (callers stay below `data_blocks`).
    pub(crate) fn payload(&self, block: u64) -> BatEntry {
        let index = payload_index(block, self.chunk_ratio);
        decode(self.entries.get(index as usize).copied().unwrap_or(0))
    }

    /// The sector bitmap entry covering payload block `block`.
    pub(crate) fn bitmap_for(&self, block: u64) -> BatEntry {
        let index = bitmap_index(block / self.chunk_ratio, self.chunk_ratio);
        decode(self.entries.get(index as usize).copied().unwrap_or(0))
    }

    fn check(
        &mut self,
        file_len: u64,
        geometry: Geometry,
        reserved: &[Reserved],
    ) -> Result<(), VhdxError> {
        let ratio = self.chunk_ratio;
        let block_size = u64::from(geometry.block_size);
        let mut allocated: Vec<(u64, u64, u64)> = Vec::new();
        for (index, &raw) in self.entries.iter().enumerate() {
            let index = index as u64;
            let is_bitmap = index % (ratio + 1) == ratio;
            let block = index - index / (ratio + 1);
            if !is_bitmap && block >= self.data_blocks {
                continue;
            }
            if raw & BAT_RESERVED_MASK != 0 {
                return Err(VhdxError::BatReservedBits { index, entry: raw });
            }
            let entry = decode(raw);
            let length = if is_bitmap {
                match entry.state {
                    bat_state::NOT_PRESENT => continue,
                    bat_state::FULLY_PRESENT => self.counts.bitmaps_present += 1,
                    state => {
                        return Err(VhdxError::BatInvalidState {
                            index,
                            entry: raw,
                            state,
                        });
                    }
                }
                MIB
            } else {
                match entry.state {
                    bat_state::NOT_PRESENT => {
                        self.counts.not_present += 1;
                        continue;
                    }
                    bat_state::UNDEFINED => {
                        self.counts.undefined += 1;
                        continue;
                    }
                    bat_state::ZERO => {
                        self.counts.zero += 1;
                        continue;
                    }
                    bat_state::UNMAPPED => {
                        self.counts.unmapped += 1;
                        continue;
                    }
                    bat_state::FULLY_PRESENT => self.counts.fully_present += 1,
                    bat_state::PARTIALLY_PRESENT => {
                        if !geometry.has_parent {
                            return Err(VhdxError::PartialWithoutParent { index });
                        }
                        let chunk = block / ratio;
                        let bitmap = self.entries.get(bitmap_index(chunk, ratio) as usize);
                        if bitmap.is_none_or(|b| decode(*b).state != bat_state::FULLY_PRESENT) {
                            return Err(VhdxError::PartialWithoutBitmap { index, chunk });
                        }
                        self.counts.partially_present += 1;
                    }
                    state => {
                        return Err(VhdxError::BatInvalidState {
                            index,
                            entry: raw,
                            state,
                        });
                    }
                }
                // The last block only needs to cover the end of the disk.
                block_size.min(geometry.disk_size - block * block_size)
            };
            let offset = entry.file_offset;
            if offset < MIB {
                return Err(VhdxError::BlockInHeaderArea { index, offset });
            }
            if offset.checked_add(length).is_none_or(|end| end > file_len) {
                return Err(VhdxError::BlockBeyondEof {
                    index,
                    offset,
                    file_len,
                });
            }
            for r in reserved {
                if offset < r.offset + r.length && r.offset < offset + length {
                    return Err(VhdxError::BlockInsideStructure {
                        index,
                        offset,
                        structure: r.name,
                    });
                }
            }
            allocated.push((offset, length, index));
        }
        allocated.sort_unstable();
        for pair in allocated.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.0 < a.0 + a.1 {
                return Err(VhdxError::BlocksOverlap {
                    first_index: a.2,
                    second_index: b.2,
                    offset: b.0,
                });
            }
        }
        Ok(())
    }
}
