//! SCSI wire formats used by the storvsp disk: operation codes, CDBs, status
//! bytes, sense keys and codes, fixed-format sense data, standard INQUIRY
//! data, VPD pages, mode parameter headers and READ CAPACITY data. Multi-byte
//! SCSI fields are big-endian.

use bitfield_struct::bitfield;
use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[open_enum::open_enum]
#[derive(IntoBytes, FromBytes, Immutable, KnownLayout, Clone, Copy, Debug, Hash)]
#[repr(u8)]
/// SCSI operation codes (byte 0 of a CDB).
pub enum Opcode {
    /// Test unit ready (0x00).
    TEST_UNIT_READY = 0x00,
    /// Request sense (0x03).
    REQUEST_SENSE = 0x03,
    /// Read6 (0x08).
    READ6 = 0x08,
    /// Write6 (0x0A).
    WRITE6 = 0x0A,
    /// Inquiry (0x12).
    INQUIRY = 0x12,
    /// Mode select6 (0x15).
    MODE_SELECT6 = 0x15,
    /// Mode sense6 (0x1A).
    MODE_SENSE6 = 0x1A,
    /// Start stop unit (0x1B).
    START_STOP_UNIT = 0x1B,
    /// Prevent allow medium removal (0x1E).
    PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E,
    /// Read capacity10 (0x25).
    READ_CAPACITY10 = 0x25,
    /// Read10 (0x28).
    READ10 = 0x28,
    /// Write10 (0x2A).
    WRITE10 = 0x2A,
    /// Write verify10 (0x2E).
    WRITE_VERIFY10 = 0x2E,
    /// Verify10 (0x2F).
    VERIFY10 = 0x2F,
    /// Synchronize cache10 (0x35).
    SYNCHRONIZE_CACHE10 = 0x35,
    /// Write same10 (0x41).
    WRITE_SAME10 = 0x41,
    /// Unmap (0x42).
    UNMAP = 0x42,
    /// Mode select10 (0x55).
    MODE_SELECT10 = 0x55,
    /// Mode sense10 (0x5A).
    MODE_SENSE10 = 0x5A,
    /// Read16 (0x88).
    READ16 = 0x88,
    /// Compare and write (0x89).
    COMPARE_AND_WRITE = 0x89,
    /// Write16 (0x8A).
    WRITE16 = 0x8A,
    /// Write verify16 (0x8E).
    WRITE_VERIFY16 = 0x8E,
    /// Verify16 (0x8F).
    VERIFY16 = 0x8F,
    /// Synchronize cache16 (0x91).
    SYNCHRONIZE_CACHE16 = 0x91,
    /// Write same16 (0x93).
    WRITE_SAME16 = 0x93,
    /// Service action in16 (0x9E).
    SERVICE_ACTION_IN16 = 0x9E,
    /// Report luns (0xA0).
    REPORT_LUNS = 0xA0,
    /// Read12 (0xA8).
    READ12 = 0xA8,
    /// Write12 (0xAA).
    WRITE12 = 0xAA,
    /// Write verify12 (0xAE).
    WRITE_VERIFY12 = 0xAE,
    /// Verify12 (0xAF).
    VERIFY12 = 0xAF,
}

/// SERVICE ACTION IN(16) service action of READ CAPACITY(16).
pub const SERVICE_ACTION_READ_CAPACITY16: u8 = 0x10;

impl Opcode {
    /// CDB length implied by the opcode's group code (bits 5–7), or `None`
    /// for the reserved and vendor groups.
    pub fn cdb_length(self) -> Option<usize> {
        match self.0 >> 5 {
            0 => Some(6),
            1 | 2 => Some(10),
            4 => Some(16),
            5 => Some(12),
            _ => None,
        }
    }
}

#[open_enum::open_enum]
#[derive(IntoBytes, FromBytes, Immutable, KnownLayout, Clone, Copy, Debug, Hash)]
#[repr(u8)]
/// SCSI status byte.
pub enum ScsiStatus {
    /// Good (0x00).
    GOOD = 0x00,
    /// Check condition (0x02).
    CHECK_CONDITION = 0x02,
    /// Busy (0x08).
    BUSY = 0x08,
    /// Reservation conflict (0x18).
    RESERVATION_CONFLICT = 0x18,
    /// Task set full (0x28).
    TASK_SET_FULL = 0x28,
}

#[open_enum::open_enum]
#[derive(IntoBytes, FromBytes, Immutable, KnownLayout, Clone, Copy, Debug, Hash)]
#[repr(u8)]
/// Sense keys (low nibble of byte 2 of fixed-format sense).
pub enum SenseKey {
    /// No sense (0x00).
    NO_SENSE = 0x00,
    /// Recovered error (0x01).
    RECOVERED_ERROR = 0x01,
    /// Not ready (0x02).
    NOT_READY = 0x02,
    /// Medium error (0x03).
    MEDIUM_ERROR = 0x03,
    /// Hardware error (0x04).
    HARDWARE_ERROR = 0x04,
    /// Illegal request (0x05).
    ILLEGAL_REQUEST = 0x05,
    /// Unit attention (0x06).
    UNIT_ATTENTION = 0x06,
    /// Data protect (0x07).
    DATA_PROTECT = 0x07,
    /// Aborted command (0x0B).
    ABORTED_COMMAND = 0x0B,
}

/// Additional sense codes used by the disk.
pub mod asc {
    /// No additional sense information.
    pub const NO_ADDITIONAL_SENSE: u8 = 0x00;
    /// Unrecovered read error.
    pub const UNRECOVERED_READ_ERROR: u8 = 0x11;
    /// Invalid command operation code.
    pub const INVALID_COMMAND_OPERATION_CODE: u8 = 0x20;
    /// Logical block address out of range.
    pub const LBA_OUT_OF_RANGE: u8 = 0x21;
    /// Invalid field in CDB.
    pub const INVALID_FIELD_IN_CDB: u8 = 0x24;
    /// Logical unit not supported.
    pub const LOGICAL_UNIT_NOT_SUPPORTED: u8 = 0x25;
    /// Write protected.
    pub const WRITE_PROTECTED: u8 = 0x27;
    /// Saving parameters not supported.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: u8 = 0x39;
}

/// Response code of current fixed-format sense.
pub const SENSE_RESPONSE_CODE_CURRENT_FIXED: u8 = 0x70;

/// Fixed-format sense data (18 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct FixedSense {
    /// 0x70 (current, fixed), bit 7 = information valid.
    pub response_code: u8,
    /// Obsolete.
    pub obsolete: u8,
    /// Sense key in bits 0–3 (and FILEMARK/EOM/ILI flags above).
    pub sense_key: u8,
    /// Information field.
    pub information: U32,
    /// Bytes after this field (10).
    pub additional_length: u8,
    /// Command-specific information.
    pub command_specific: U32,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// Field replaceable unit code.
    pub fru: u8,
    /// Sense-key-specific bytes.
    pub sense_key_specific: [u8; 3],
}

impl FixedSense {
    /// Current fixed-format sense with the given key, ASC and ASCQ.
    pub fn new(key: SenseKey, asc: u8, ascq: u8) -> Self {
        Self {
            response_code: SENSE_RESPONSE_CODE_CURRENT_FIXED,
            obsolete: 0,
            sense_key: key.0 & 0x0F,
            information: U32::new(0),
            additional_length: (size_of::<Self>() - 8) as u8,
            command_specific: U32::new(0),
            asc,
            ascq,
            fru: 0,
            sense_key_specific: [0; 3],
        }
    }

    /// The sense key.
    pub fn key(&self) -> SenseKey {
        SenseKey(self.sense_key & 0x0F)
    }
}

/// CDB of six-byte commands with a one-byte allocation/transfer length
/// (TEST UNIT READY, REQUEST SENSE, START STOP UNIT, READ(6), WRITE(6)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Cdb6 {
    /// Operation code.
    pub opcode: Opcode,
    /// READ/WRITE(6): LBA bits 16–20 in bits 0–4.
    pub byte1: u8,
    /// READ/WRITE(6): LBA bits 0–15.
    pub lba_low: U16,
    /// Transfer or allocation length (READ(6): 0 means 256).
    pub length: u8,
    /// Control byte.
    pub control: u8,
}

/// CDB of READ/WRITE/VERIFY(10) and SYNCHRONIZE CACHE(10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Cdb10 {
    /// Operation code.
    pub opcode: Opcode,
    /// Protection / DPO / FUA / BYTCHK flags.
    pub flags: u8,
    /// Logical block address.
    pub lba: U32,
    /// Group number.
    pub group: u8,
    /// Transfer length in blocks.
    pub length: U16,
    /// Control byte.
    pub control: u8,
}

/// CDB of READ/WRITE/VERIFY(12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Cdb12 {
    /// Operation code.
    pub opcode: Opcode,
    /// Flags.
    pub flags: u8,
    /// Logical block address.
    pub lba: U32,
    /// Transfer length in blocks.
    pub length: U32,
    /// Group number.
    pub group: u8,
    /// Control byte.
    pub control: u8,
}

/// CDB of READ/WRITE/VERIFY(16) and SYNCHRONIZE CACHE(16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Cdb16 {
    /// Operation code.
    pub opcode: Opcode,
    /// Flags.
    pub flags: u8,
    /// Logical block address.
    pub lba: U64,
    /// Transfer length in blocks.
    pub length: U32,
    /// Group number.
    pub group: u8,
    /// Control byte.
    pub control: u8,
}

/// BYTCHK bits of VERIFY (byte 1, bits 1–2).
pub const VERIFY_BYTCHK_MASK: u8 = 0x06;

/// INQUIRY CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InquiryCdb {
    /// 0x12.
    pub opcode: Opcode,
    /// Bit 0: EVPD.
    pub flags: u8,
    /// VPD page code (must be 0 without EVPD).
    pub page_code: u8,
    /// Allocation length.
    pub allocation_length: U16,
    /// Control byte.
    pub control: u8,
}

/// INQUIRY `flags` bit requesting a VPD page.
pub const INQUIRY_EVPD: u8 = 0x01;

/// READ CAPACITY(16) CDB (SERVICE ACTION IN(16)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ReadCapacity16Cdb {
    /// 0x9E.
    pub opcode: Opcode,
    /// Service action 0x10 in bits 0–4.
    pub service_action: u8,
    /// Obsolete LBA field.
    pub lba: U64,
    /// Allocation length.
    pub allocation_length: U32,
    /// PMI (obsolete).
    pub flags: u8,
    /// Control byte.
    pub control: u8,
}

/// MODE SENSE(6) CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ModeSense6Cdb {
    /// 0x1A.
    pub opcode: Opcode,
    /// Bit 3: DBD (disable block descriptors).
    pub flags: u8,
    /// Page control (bits 6–7) and page code (bits 0–5).
    pub page: PageControlCode,
    /// Subpage code.
    pub subpage: u8,
    /// Allocation length.
    pub allocation_length: u8,
    /// Control byte.
    pub control: u8,
}

/// MODE SENSE(10) CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ModeSense10Cdb {
    /// 0x5A.
    pub opcode: Opcode,
    /// Bit 3: DBD, bit 4: LLBAA.
    pub flags: u8,
    /// Page control and page code.
    pub page: PageControlCode,
    /// Subpage code.
    pub subpage: u8,
    /// Reserved.
    pub reserved: [u8; 3],
    /// Allocation length.
    pub allocation_length: U16,
    /// Control byte.
    pub control: u8,
}

/// Byte 2 of MODE SENSE: page control and page code.
#[bitfield(u8)]
#[derive(PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct PageControlCode {
    /// Page code.
    #[bits(6)]
    pub page_code: u8,
    /// Page control: 0 current, 1 changeable, 2 default, 3 saved.
    #[bits(2)]
    pub page_control: u8,
}

/// MODE SENSE page control: current values.
pub const PAGE_CONTROL_CURRENT: u8 = 0;
/// MODE SENSE page control: changeable values mask.
pub const PAGE_CONTROL_CHANGEABLE: u8 = 1;
/// MODE SENSE page control: default values.
pub const PAGE_CONTROL_DEFAULT: u8 = 2;
/// MODE SENSE page control: saved values.
pub const PAGE_CONTROL_SAVED: u8 = 3;
/// Mode page code of the caching page.
pub const MODE_PAGE_CACHING: u8 = 0x08;
/// Mode page code meaning "all pages".
pub const MODE_PAGE_ALL: u8 = 0x3F;
/// Device-specific parameter bit: the medium is write protected.
pub const MODE_DEVICE_SPECIFIC_WRITE_PROTECT: u8 = 0x80;

/// MODE SENSE(6) parameter header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ModeParameterHeader6 {
    /// Bytes following this field.
    pub mode_data_length: u8,
    /// Medium type (0).
    pub medium_type: u8,
    /// Device-specific parameter (write-protect bit 0x80).
    pub device_specific: u8,
    /// Block descriptor length.
    pub block_descriptor_length: u8,
}

/// MODE SENSE(10) parameter header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ModeParameterHeader10 {
    /// Bytes following this field.
    pub mode_data_length: U16,
    /// Medium type (0).
    pub medium_type: u8,
    /// Device-specific parameter (write-protect bit 0x80).
    pub device_specific: u8,
    /// Bit 0: LONGLBA.
    pub flags: u8,
    /// Reserved.
    pub reserved: u8,
    /// Block descriptor length.
    pub block_descriptor_length: U16,
}

/// Mode page 0x08, caching (20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CachingModePage {
    /// Page code 0x08 (bit 7 PS).
    pub page_code: u8,
    /// Page length 0x12.
    pub page_length: u8,
    /// Bit 2 WCE (write cache enable), bit 0 RCD (read cache disable).
    pub flags: u8,
    /// Retention priorities.
    pub retention: u8,
    /// The rest of the page (prefetch limits and flags), all zero here.
    pub rest: [u8; 16],
}

/// REPORT LUNS CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ReportLunsCdb {
    /// 0xA0.
    pub opcode: Opcode,
    /// Reserved.
    pub reserved1: u8,
    /// Select report.
    pub select_report: u8,
    /// Reserved.
    pub reserved2: [u8; 3],
    /// Allocation length.
    pub allocation_length: U32,
    /// Reserved.
    pub reserved3: u8,
    /// Control byte.
    pub control: u8,
}

/// REPORT LUNS parameter data header; followed by 8-byte LUN entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ReportLunsHeader {
    /// Bytes of LUN entries that follow the header.
    pub lun_list_length: U32,
    /// Reserved.
    pub reserved: U32,
}

/// READ CAPACITY(10) parameter data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ReadCapacity10Data {
    /// Last LBA, or 0xFFFFFFFF when it does not fit.
    pub last_lba: U32,
    /// Logical block length in bytes.
    pub block_length: U32,
}

/// READ CAPACITY(16) parameter data (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ReadCapacity16Data {
    /// Last LBA.
    pub last_lba: U64,
    /// Logical block length in bytes.
    pub block_length: U32,
    /// Protection information.
    pub protection: u8,
    /// Bits 0–3: logical blocks per physical block exponent.
    pub exponents: u8,
    /// LBPME/LBPRZ (bits 15/14) and lowest aligned LBA.
    pub provisioning_and_alignment: U16,
    /// Reserved.
    pub reserved: [u8; 16],
}

/// Peripheral byte of INQUIRY: qualifier (bits 5–7) and device type.
pub const PERIPHERAL_DIRECT_ACCESS: u8 = 0x00;
/// Peripheral byte for "no logical unit here": qualifier 3, type 0x1F.
pub const PERIPHERAL_NO_LUN: u8 = 0x7F;

/// Standard INQUIRY data (the 36 mandatory bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct StandardInquiry {
    /// Peripheral qualifier and device type.
    pub peripheral: u8,
    /// Bit 7: RMB (removable).
    pub rmb: u8,
    /// Version (5 = SPC-3, 6 = SPC-4).
    pub version: u8,
    /// Response data format (2) and HISUP (0x10).
    pub response_format: u8,
    /// Bytes following this field.
    pub additional_length: u8,
    /// SCCS / 3PC / PROTECT flags.
    pub flags5: u8,
    /// ENCSERV / MULTIP flags.
    pub flags6: u8,
    /// Bit 1: CMDQUE.
    pub flags7: u8,
    /// T10 vendor identification, space padded.
    pub vendor: [u8; 8],
    /// Product identification, space padded.
    pub product: [u8; 16],
    /// Product revision level, space padded.
    pub revision: [u8; 4],
}

/// Header of every VPD page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VpdHeader {
    /// Peripheral qualifier and device type.
    pub peripheral: u8,
    /// Page code.
    pub page_code: u8,
    /// Bytes following the header.
    pub page_length: U16,
}

/// VPD page code: supported pages.
pub const VPD_SUPPORTED_PAGES: u8 = 0x00;
/// VPD page code: unit serial number.
pub const VPD_SERIAL_NUMBER: u8 = 0x80;
/// VPD page code: device identification.
pub const VPD_DEVICE_IDENTIFICATION: u8 = 0x83;
/// VPD page code: ATA information (not supported by this disk).
pub const VPD_ATA_INFORMATION: u8 = 0x89;
/// VPD page code: block limits.
pub const VPD_BLOCK_LIMITS: u8 = 0xB0;
/// VPD page code: block device characteristics.
pub const VPD_BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
/// VPD page code: logical block provisioning.
pub const VPD_LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;

/// Header of one designation descriptor in VPD page 0x83.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DesignatorHeader {
    /// Protocol identifier (bits 4–7) and code set (bits 0–3).
    pub code_set: u8,
    /// PIV, association (bits 4–5) and designator type (bits 0–3).
    pub designator_type: u8,
    /// Reserved.
    pub reserved: u8,
    /// Bytes of designator that follow.
    pub length: u8,
}

/// Designator code set: binary.
pub const CODE_SET_BINARY: u8 = 1;
/// Designator code set: ASCII.
pub const CODE_SET_ASCII: u8 = 2;
/// Designator type: T10 vendor ID based.
pub const DESIGNATOR_T10_VENDOR_ID: u8 = 1;
/// Designator type: NAA.
pub const DESIGNATOR_NAA: u8 = 3;

/// VPD page 0xB0 (block limits) after its header: 0x3C bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BlockLimitsPage {
    /// WSNZ flag.
    pub flags: u8,
    /// Maximum COMPARE AND WRITE length.
    pub max_compare_and_write: u8,
    /// Optimal transfer length granularity (blocks).
    pub optimal_granularity: U16,
    /// Maximum transfer length (blocks).
    pub max_transfer_length: U32,
    /// Optimal transfer length (blocks).
    pub optimal_transfer_length: U32,
    /// Maximum prefetch length.
    pub max_prefetch_length: U32,
    /// Maximum UNMAP LBA count.
    pub max_unmap_lba_count: U32,
    /// Maximum UNMAP block descriptor count.
    pub max_unmap_descriptor_count: U32,
    /// Optimal unmap granularity.
    pub optimal_unmap_granularity: U32,
    /// UGAVALID and unmap granularity alignment.
    pub unmap_granularity_alignment: U32,
    /// Maximum WRITE SAME length.
    pub max_write_same_length: U64,
    /// Reserved.
    pub reserved: [u8; 20],
}

/// VPD page 0xB1 (block device characteristics) after its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BlockDeviceCharacteristicsPage {
    /// Medium rotation rate (1 = non-rotating).
    pub rotation_rate: U16,
    /// Product type.
    pub product_type: u8,
    /// Nominal form factor (bits 0–3).
    pub form_factor: u8,
    /// Reserved.
    pub reserved: [u8; 56],
}

/// VPD page 0xB2 (logical block provisioning) after its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct LogicalBlockProvisioningPage {
    /// Threshold exponent.
    pub threshold_exponent: u8,
    /// LBPU (0x80), LBPWS (0x40), LBPWS10 (0x20), LBPRZ, ANC_SUP, DP.
    pub flags: u8,
    /// Provisioning type (bits 0–2).
    pub provisioning_type: u8,
    /// Reserved.
    pub reserved: u8,
}

const _: () = assert!(size_of::<FixedSense>() == 18);
const _: () = assert!(size_of::<Cdb6>() == 6);
const _: () = assert!(size_of::<Cdb10>() == 10);
const _: () = assert!(size_of::<Cdb12>() == 12);
const _: () = assert!(size_of::<Cdb16>() == 16);
const _: () = assert!(size_of::<InquiryCdb>() == 6);
const _: () = assert!(size_of::<ReadCapacity16Cdb>() == 16);
const _: () = assert!(size_of::<ModeSense6Cdb>() == 6);
const _: () = assert!(size_of::<ModeSense10Cdb>() == 10);
const _: () = assert!(size_of::<ReportLunsCdb>() == 12);
const _: () = assert!(size_of::<ModeParameterHeader6>() == 4);
const _: () = assert!(size_of::<ModeParameterHeader10>() == 8);
const _: () = assert!(size_of::<CachingModePage>() == 20);
const _: () = assert!(size_of::<ReportLunsHeader>() == 8);
const _: () = assert!(size_of::<ReadCapacity10Data>() == 8);
const _: () = assert!(size_of::<ReadCapacity16Data>() == 32);
const _: () = assert!(size_of::<StandardInquiry>() == 36);
const _: () = assert!(size_of::<VpdHeader>() == 4);
const _: () = assert!(size_of::<DesignatorHeader>() == 4);
const _: () = assert!(size_of::<BlockLimitsPage>() == 0x3C);
const _: () = assert!(size_of::<BlockDeviceCharacteristicsPage>() == 0x3C);
const _: () = assert!(size_of::<LogicalBlockProvisioningPage>() == 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_layout() {
        let sense = FixedSense::new(SenseKey::DATA_PROTECT, asc::WRITE_PROTECTED, 0);
        let b = sense.as_bytes();
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 7);
        assert_eq!(b[7], 10);
        assert_eq!(b[12], 0x27);
        assert_eq!(b[13], 0);
    }

    #[test]
    fn cdb_fields_are_big_endian() {
        let cdb = [0x28, 0, 0x01, 0x02, 0x03, 0x04, 0, 0x00, 0x08, 0];
        let parsed = Cdb10::read_from_bytes(&cdb).unwrap();
        assert_eq!(parsed.lba.get(), 0x0102_0304);
        assert_eq!(parsed.length.get(), 8);
        let page = PageControlCode::from_bits(0x7F);
        assert_eq!(page.page_code(), 0x3F);
        assert_eq!(page.page_control(), 1);
    }

    #[test]
    fn group_lengths() {
        assert_eq!(Opcode::READ6.cdb_length(), Some(6));
        assert_eq!(Opcode::READ10.cdb_length(), Some(10));
        assert_eq!(Opcode::READ12.cdb_length(), Some(12));
        assert_eq!(Opcode::READ16.cdb_length(), Some(16));
        assert_eq!(Opcode(0xC0).cdb_length(), None);
    }
}
