//! Dirty logs replay in memory to the same disk `qemu-img check -r all`
//! produces by replaying on disk; stale entries with other GUIDs are ignored;
//! the image file is never modified.

mod common;

use common::*;
use vmbdev_vhdx::{LogState, Vhdx, VhdxError};

const GUID: [u8; 16] = [0x11; 16];
const OTHER_GUID: [u8; 16] = [0x22; 16];

/// A qemu-made image with data in most 1 MiB blocks.
fn base_image(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let raw = dir.join("src.raw");
    let data = make_raw(&raw, 16 * MIB, 50);
    let img = dir.join("base.vhdx");
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "vhdx",
            "-o",
            "block_size=1048576",
            path_str(&raw),
            path_str(&img),
        ],
    );
    let mut b = std::fs::read(&img).unwrap();
    // qemu leaves stale entries of its own; start from an empty log so the
    // counts below are exact.
    let (log, len) = log_area(&b);
    b[log..log + len].fill(0);
    (b, data)
}

#[test]
fn replayed_view_equals_qemu_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (mut b, data) = base_image(dir.path());
    let (bat, _) = region(&b, &BAT_GUID);
    // New first BAT page: the first FULLY_PRESENT block becomes ZERO.
    let mut page = b[bat..bat + 4096].to_vec();
    let victim = (0..512)
        .find(|i| le64(&page, i * 8) & 7 == 6)
        .expect("an allocated block");
    let victim_offset = le64(&page, victim * 8) & !0xfffff;
    put64(&mut page, victim * 8, 2);
    // Another allocated block gets 64 KiB zeroed through a zero descriptor.
    let other = (victim + 1..512)
        .find(|i| le64(&page, i * 8) & 7 == 6)
        .expect("a second allocated block");
    let other_offset = le64(&page, other * 8) & !0xfffff;
    assert_ne!(victim_offset, other_offset);
    let len = b.len() as u64;
    let entry = log_entry(
        GUID,
        10,
        0,
        &[
            Desc::Data(bat as u64, page),
            Desc::Zero(other_offset + 4096, 65536),
        ],
        len,
    );
    // A stale entry with a higher sequence and another GUID that would wipe
    // the BAT page if it were applied.
    let stale = log_entry(
        OTHER_GUID,
        11,
        0,
        &[Desc::Data(bat as u64, vec![0; 4096])],
        len,
    );
    let (log, _) = log_area(&b);
    b[log..log + entry.len()].copy_from_slice(&entry);
    b[log + entry.len()..log + entry.len() + stale.len()].copy_from_slice(&stale);
    set_log_guid(&mut b, GUID);

    let ours_path = dir.path().join("ours.vhdx");
    let qemu_path = dir.path().join("qemu.vhdx");
    std::fs::write(&ours_path, &b).unwrap();
    std::fs::write(&qemu_path, &b).unwrap();
    let mtime = std::fs::metadata(&ours_path).unwrap().modified().unwrap();
    // A write after this would move the mtime visibly.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let vhdx = Vhdx::open(&ours_path).unwrap();
    assert_eq!(
        vhdx.info().log,
        LogState::Replayed {
            entries: 1,
            stale_entries: 1
        }
    );
    let ours = read_all(&vhdx);
    drop(vhdx);
    assert!(
        std::fs::read(&ours_path).unwrap() == b,
        "the image was modified"
    );
    assert_eq!(
        std::fs::metadata(&ours_path).unwrap().modified().unwrap(),
        mtime,
        "replaying the dirty log touched the image"
    );

    tool("qemu-img", &["check", "-r", "all", path_str(&qemu_path)]);
    let theirs = qemu_raw(&qemu_path, dir.path());
    assert_same(&ours, &theirs, "replayed view");
    // The replay really changed what is read.
    assert!(ours != data);
    let victim_block = &ours[victim * MIB as usize..(victim + 1) * MIB as usize];
    assert!(victim_block.iter().all(|x| *x == 0));
}

#[test]
fn entries_with_other_guid_only_leave_disk_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut b, data) = base_image(dir.path());
    let (bat, _) = region(&b, &BAT_GUID);
    let stale = log_entry(
        OTHER_GUID,
        3,
        0,
        &[Desc::Data(bat as u64, vec![0; 4096])],
        b.len() as u64,
    );
    let (log, _) = log_area(&b);
    b[log..log + stale.len()].copy_from_slice(&stale);
    let path = dir.path().join("d.vhdx");
    std::fs::write(&path, &b).unwrap();
    let vhdx = Vhdx::open(&path).unwrap();
    assert_eq!(vhdx.info().log, LogState::Clean { stale_entries: 1 });
    assert_same(&read_all(&vhdx), &data, "clean image");
}

#[test]
fn huge_zero_descriptor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut b, _) = base_image(dir.path());
    let entry = log_entry(GUID, 1, 0, &[Desc::Zero(4 * MIB, 1 << 40)], b.len() as u64);
    let (log, _) = log_area(&b);
    b[log..log + entry.len()].copy_from_slice(&entry);
    set_log_guid(&mut b, GUID);
    let path = dir.path().join("d.vhdx");
    std::fs::write(&path, &b).unwrap();
    let err = Vhdx::open(&path).unwrap_err();
    assert!(
        matches!(err, VhdxError::LogImpossibleDescriptor { length, .. } if length == 1 << 40),
        "{err}"
    );
}

#[test]
fn descriptor_targeting_the_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut b, _) = base_image(dir.path());
    let (log, _) = log_area(&b);
    let entry = log_entry(
        GUID,
        1,
        0,
        &[Desc::Data(log as u64 + 65536, vec![1; 4096])],
        b.len() as u64,
    );
    b[log..log + entry.len()].copy_from_slice(&entry);
    set_log_guid(&mut b, GUID);
    let path = dir.path().join("d.vhdx");
    std::fs::write(&path, &b).unwrap();
    assert!(matches!(
        Vhdx::open(&path),
        Err(VhdxError::LogImpossibleDescriptor { reason, .. }) if reason.contains("log")
    ));
}

/// Writes `entries` at their log offsets, marks the log dirty, and checks
/// our in-memory view against qemu's on-disk replay.
fn compare_with_qemu(mut b: Vec<u8>, entries: &[(usize, Vec<u8>)], applied: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (log, log_len) = log_area(&b);
    for (offset, entry) in entries {
        for (i, byte) in entry.iter().enumerate() {
            b[log + (offset + i) % log_len] = *byte;
        }
    }
    set_log_guid(&mut b, GUID);
    let ours_path = dir.path().join("ours.vhdx");
    let qemu_path = dir.path().join("qemu.vhdx");
    std::fs::write(&ours_path, &b).unwrap();
    std::fs::write(&qemu_path, &b).unwrap();
    let vhdx = Vhdx::open(&ours_path).unwrap();
    assert!(matches!(vhdx.info().log, LogState::Replayed { entries, .. } if entries == applied));
    let ours = read_all(&vhdx);
    tool("qemu-img", &["check", "-r", "all", path_str(&qemu_path)]);
    assert_same(&ours, &qemu_raw(&qemu_path, dir.path()), "replayed view");
    ours
}

#[test]
fn entry_wrapping_around_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let (b, data) = base_image(dir.path());
    let (_, log_len) = log_area(&b);
    let target = find_allocated(&b);
    let at = log_len - 4096;
    let entry = log_entry(
        GUID,
        7,
        at as u32,
        &[Desc::Data(target, vec![0xee; 4096])],
        b.len() as u64,
    );
    assert_eq!(entry.len(), 8192);
    let ours = compare_with_qemu(b, &[(at, entry)], 1);
    assert!(ours != data);
}

#[test]
fn later_entries_override_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = base_image(dir.path());
    let target = find_allocated(&b);
    let len = b.len() as u64;
    let first = log_entry(GUID, 20, 0, &[Desc::Data(target, vec![0x01; 4096])], len);
    let second = log_entry(
        GUID,
        21,
        0,
        &[
            Desc::Data(target, vec![0x02; 4096]),
            Desc::Data(target + 8192, vec![0x03; 4096]),
        ],
        len,
    );
    let second_at = first.len();
    let ours = compare_with_qemu(b, &[(0, first), (second_at, second)], 2);
    assert!(ours.windows(4096).any(|w| w.iter().all(|x| *x == 2)));
    assert!(!ours.windows(4096).any(|w| w.iter().all(|x| *x == 1)));
}

/// File offset of the first allocated payload block.
fn find_allocated(b: &[u8]) -> u64 {
    let (bat, _) = region(b, &BAT_GUID);
    (0..16)
        .map(|i| le64(b, bat + i * 8))
        .find(|e| e & 7 == 6)
        .expect("allocated block")
        & !0xfffff
}
