//! What kind of file an image is, by its signatures, so a file in a format
//! `vmbdev` does not read is refused by name instead of being read as a
//! raw disk.
//!
//! Signatures checked: VHDX `vhdxfile` at 0; qcow2 `QFI\xfb` at 0; QED
//! `QED\0` at 0; VDI's magic 0xbeda107f (little-endian) at 0x40; VMDK
//! `KDMV` at 0 (sparse extent) or a text descriptor starting with
//! `# Disk DescriptorFile`; VHD `conectix` in the 512-byte footer at the
//! end or its copy at 0 (dynamic disks); ISO 9660 `CD001` at 0x8001.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A recognised image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// VHDX: read.
    Vhdx,
    /// Anything without a known signature: read as a raw disk.
    Raw,
    /// QEMU copy-on-write v2 (or v3).
    Qcow2,
    /// QEMU enhanced disk.
    Qed,
    /// VirtualBox disk image.
    Vdi,
    /// VMware sparse extent or descriptor.
    Vmdk,
    /// Virtual PC / Hyper-V VHD: read.
    Vhd,
    /// ISO 9660 (CD/DVD) image.
    Iso,
}

impl Format {
    /// How a message names it: `a qcow2 image`.
    pub fn described(self) -> &'static str {
        match self {
            Format::Vhdx => "a VHDX image",
            Format::Raw => "a raw disk image",
            Format::Qcow2 => "a qcow2 image",
            Format::Qed => "a QED image",
            Format::Vdi => "a VDI (VirtualBox) image",
            Format::Vmdk => "a VMDK (VMware) image",
            Format::Vhd => "a VHD image",
            Format::Iso => "an ISO 9660 image",
        }
    }

    /// Whether `qemu-img convert` turns it into a VHDX.
    fn convertible(self) -> bool {
        matches!(
            self,
            Format::Qcow2 | Format::Qed | Format::Vdi | Format::Vmdk
        )
    }
}

fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Reads the signatures of the open image file of `size` bytes.
pub fn detect(file: &File, size: u64) -> std::io::Result<Format> {
    let head = read_at(file, 0, 512)?;
    let starts = |sig: &[u8]| head.starts_with(sig);
    if starts(b"vhdxfile") {
        return Ok(Format::Vhdx);
    }
    if starts(b"QFI\xfb") {
        return Ok(Format::Qcow2);
    }
    if starts(b"QED\0") {
        return Ok(Format::Qed);
    }
    if head.get(0x40..0x44) == Some(&0xbeda_107f_u32.to_le_bytes()[..]) {
        return Ok(Format::Vdi);
    }
    if starts(b"KDMV") || starts(b"# Disk DescriptorFile") {
        return Ok(Format::Vmdk);
    }
    if starts(b"conectix") {
        return Ok(Format::Vhd);
    }
    if size >= 512 && read_at(file, size - 512, 8)? == b"conectix" {
        return Ok(Format::Vhd);
    }
    if read_at(file, 0x8001, 5)? == b"CD001" {
        return Ok(Format::Iso);
    }
    Ok(Format::Raw)
}

/// Why `vmbdev` will not read a file of `format` at `path`, with what to do.
pub fn refusal(path: &Path, format: Format) -> String {
    let shown = path.display();
    if format.convertible() {
        let mut target = path.with_extension("vhdx");
        if target == path {
            target = path.with_extension("converted.vhdx");
        }
        format!(
            "{shown}: {}; convert it with qemu-img convert -O vhdx {shown} {}",
            format.described(),
            target.display()
        )
    } else {
        format!(
            "{shown}: {}, not a disk image; vmbdev reads VHDX, VHD and raw disks (--format raw reads it as raw bytes)",
            format.described()
        )
    }
}
