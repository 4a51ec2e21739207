//! Guest memory a VMM owns: an adopted memfd with a hole (bytes land at
//! their fd offsets, the hole is refused), the seal and size checks, layout
//! checks, and copies checked byte for byte against a model. (The
//! VMM-owned mapping is tested beside its constructor, in
//! `memory.rs`.)

use proptest::prelude::*;
use rustix::fs::{MemfdFlags, SealFlags};
use std::os::fd::OwnedFd;
use vmbdev_ring::{GpaError, GpaRange, GpadlRegistry, GuestMemory, MemoryError, MemoryRegion};
use vmbdev_ring::{RingError, RingHalf};

const P: u64 = 4096;

fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create(
        "vmbdev-test",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

fn pread(fd: &OwnedFd, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = rustix::io::pread(fd, &mut buf, offset).unwrap();
    assert_eq!(n, len);
    buf
}

/// GPA `[0, 2P)` at fd offset `4P`, a hole `[2P, 4P)`, GPA `[4P, 5P)` at fd
/// offset 0 and GPA `[5P, 6P)` at fd offset `2P` (adjacent in the guest,
/// not in the fd). Returns the memory and a duplicate of its fd.
fn holed() -> (GuestMemory, OwnedFd) {
    let fd = memfd(6 * P, SealFlags::SHRINK | SealFlags::GROW);
    let probe = fd.try_clone().unwrap();
    let layout = [
        MemoryRegion::new(5 * P, P, 2 * P),
        MemoryRegion::new(0, 2 * P, 4 * P),
        MemoryRegion::new(4 * P, P, 0),
    ];
    (GuestMemory::from_memfd(fd, &layout).unwrap(), probe)
}

#[test]
fn adopted_memfd_regions_land_at_their_fd_offsets() {
    let (mem, fd) = holed();
    assert_eq!(mem.size(), 6 * P);
    assert_eq!(mem.page_count(), 6);
    assert_eq!(
        mem.regions(),
        &[
            MemoryRegion::new(0, 2 * P, 4 * P),
            MemoryRegion::new(4 * P, P, 0),
            MemoryRegion::new(5 * P, P, 2 * P),
        ]
    );
    assert!(mem.fd().is_some());

    mem.write(0x10, b"low").unwrap();
    assert_eq!(pread(&fd, 4 * P + 0x10, 3), b"low");
    mem.write(2 * P - 3, b"end").unwrap();
    assert_eq!(pread(&fd, 6 * P - 3, 3), b"end");
    mem.write(4 * P + 8, b"high").unwrap();
    assert_eq!(pread(&fd, 8, 4), b"high");
    // One access across two guest-adjacent regions splits at the boundary.
    mem.write(5 * P - 4, b"abcdefgh").unwrap();
    assert_eq!(pread(&fd, P - 4, 4), b"abcd");
    assert_eq!(pread(&fd, 2 * P, 4), b"efgh");
    let mut back = [0u8; 8];
    mem.read(5 * P - 4, &mut back).unwrap();
    assert_eq!(&back, b"abcdefgh");

    rustix::io::pwrite(&fd, b"from fd", 4 * P + 100).unwrap();
    let mut buf = [0u8; 7];
    mem.read(100, &mut buf).unwrap();
    assert_eq!(&buf, b"from fd");

    mem.store_u32(
        4 * P + 64,
        0x1234_5678,
        std::sync::atomic::Ordering::Release,
    )
    .unwrap();
    assert_eq!(pread(&fd, 64, 4), 0x1234_5678u32.to_le_bytes());
    mem.fill(5 * P + 16, 8, 0xAB).unwrap();
    assert_eq!(pread(&fd, 2 * P + 16, 8), [0xAB; 8]);
}

#[test]
fn accesses_into_or_across_the_hole_are_refused() {
    let (mem, fd) = holed();
    let mut buf = [0u8; 16];
    assert_eq!(
        mem.read(2 * P, &mut buf[..1]),
        Err(MemoryError::Hole {
            gpa: 2 * P,
            len: 1,
            unbacked: 2 * P
        })
    );
    assert_eq!(
        mem.read(2 * P - 8, &mut buf),
        Err(MemoryError::Hole {
            gpa: 2 * P - 8,
            len: 16,
            unbacked: 2 * P
        })
    );
    assert_eq!(
        mem.write(4 * P - 8, &[0xEE; 16]),
        Err(MemoryError::Hole {
            gpa: 4 * P - 8,
            len: 16,
            unbacked: 4 * P - 8
        })
    );
    assert!(matches!(
        mem.fill(P, 3 * P, 0),
        Err(MemoryError::Hole {
            unbacked: 0x2000,
            ..
        })
    ));
    assert!(matches!(
        mem.load_u32(3 * P, std::sync::atomic::Ordering::Relaxed),
        Err(MemoryError::Hole { gpa: 0x3000, .. })
    ));
    assert_eq!(
        mem.read(6 * P - 4, &mut buf[..8]),
        Err(MemoryError::OutOfRange {
            gpa: 6 * P - 4,
            len: 8,
            size: 6 * P
        })
    );
    // A refused write across the hole writes nothing, not even the bytes
    // before it.
    assert_eq!(
        mem.write(2 * P - 8, &[0xAA; 16]),
        Err(MemoryError::Hole {
            gpa: 2 * P - 8,
            len: 16,
            unbacked: 2 * P
        })
    );
    assert_eq!(pread(&fd, 6 * P - 8, 8), [0; 8]);
    assert!(mem.check_range(0, 2 * P).is_ok());
    assert!(mem.check_range(4 * P, 2 * P).is_ok());
    assert!(mem.check_range(P, 2 * P).is_err());
    let message = mem.read(3 * P, &mut buf).unwrap_err().to_string();
    assert!(message.contains("0x3000"), "{message}");
}

#[test]
fn gpadl_page_in_the_hole_is_refused() {
    let (mem, _fd) = holed();
    let registry = GpadlRegistry::new();
    assert_eq!(
        registry.register(&mem, 1, vec![0, 1, 2, 4]),
        Err(GpaError::Memory(MemoryError::Hole {
            gpa: 2 * P,
            len: P,
            unbacked: 2 * P
        }))
    );
    registry.register(&mem, 1, vec![0, 1, 4, 5]).unwrap();
    assert!(matches!(
        RingHalf::new(&mem, &[0, 3]),
        Err(RingError::Gpa(GpaError::Memory(MemoryError::Hole {
            unbacked: 0x3000,
            ..
        })))
    ));
    let half = RingHalf::new(&mem, &[4, 0, 5]).unwrap();
    assert_eq!(half.size(), 2 * P as u32);
    let range = GpaRange::new(100, 0, vec![3]).unwrap();
    assert!(matches!(
        range.write_at(&mem, 0, &[1; 100]),
        Err(GpaError::Memory(MemoryError::Hole { gpa: 0x3000, .. }))
    ));
}

#[test]
fn unsealed_memfd_is_refused() {
    let layout = [MemoryRegion::new(0, P, 0)];
    assert_eq!(
        GuestMemory::from_memfd(memfd(P, SealFlags::empty()), &layout).unwrap_err(),
        MemoryError::NotSealed { seals: 0 }
    );
    let only_grow = GuestMemory::from_memfd(memfd(P, SealFlags::GROW), &layout).unwrap_err();
    assert_eq!(
        only_grow,
        MemoryError::NotSealed {
            seals: SealFlags::GROW.bits()
        }
    );
    assert!(only_grow.to_string().contains("F_SEAL_SHRINK"));
    // Created without sealing support: F_GET_SEALS reports F_SEAL_SEAL only.
    let unsealable = rustix::fs::memfd_create("vmbdev-test", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&unsealable, P).unwrap();
    assert_eq!(
        GuestMemory::from_memfd(unsealable, &layout).unwrap_err(),
        MemoryError::NotSealed {
            seals: SealFlags::SEAL.bits()
        }
    );
}

#[test]
fn short_memfd_is_refused() {
    assert_eq!(
        GuestMemory::from_memfd(
            memfd(2 * P, SealFlags::SHRINK),
            &[MemoryRegion::new(0, 3 * P, 0)]
        )
        .unwrap_err(),
        MemoryError::BackingTooSmall {
            backing: "fd",
            size: 2 * P,
            needed: 3 * P
        }
    );
    // The fd offset counts, not the guest address.
    let err = GuestMemory::from_memfd(
        memfd(2 * P, SealFlags::SHRINK),
        &[MemoryRegion::new(0, P, 2 * P)],
    )
    .unwrap_err();
    assert_eq!(
        err,
        MemoryError::BackingTooSmall {
            backing: "fd",
            size: 2 * P,
            needed: 3 * P
        }
    );
    assert!(err.to_string().contains("0x2000"), "{err}");
}

#[test]
fn overlapping_and_malformed_layouts_are_refused() {
    let fd = || memfd(8 * P, SealFlags::SHRINK);
    assert_eq!(
        GuestMemory::from_memfd(
            fd(),
            &[
                MemoryRegion::new(P, P, 2 * P),
                MemoryRegion::new(0, 2 * P, 0)
            ]
        )
        .unwrap_err(),
        MemoryError::Overlap {
            gpa: P,
            other_gpa: 0,
            other_end: 2 * P
        }
    );
    assert_eq!(
        GuestMemory::from_memfd(fd(), &[]).unwrap_err(),
        MemoryError::NoRegions
    );
    assert!(matches!(
        GuestMemory::from_memfd(fd(), &[MemoryRegion::new(0x800, P, 0)]),
        Err(MemoryError::BadRegion {
            gpa: 0x800,
            reason: "not page-aligned",
            ..
        })
    ));
    assert!(matches!(
        GuestMemory::from_memfd(fd(), &[MemoryRegion::new(P, 0, 0)]),
        Err(MemoryError::BadRegion {
            reason: "empty",
            ..
        })
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    Fill(u64, u64, u8),
    Read(u64, usize),
}

fn op() -> impl Strategy<Value = Op> {
    // Addresses in [0, 3P): two guest-adjacent regions and the hole after.
    prop_oneof![
        (0..3 * P, prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(g, d)| Op::Write(g, d)),
        (0..3 * P, 0u64..300, any::<u8>()).prop_map(|(g, l, b)| Op::Fill(g, l, b)),
        (0..3 * P, 0usize..300).prop_map(|(g, l)| Op::Read(g, l)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Every copy matches a flat byte model at any alignment and length;
    /// an access reaching the hole at `2P` fails and changes nothing; the
    /// fd holds the model's bytes at the regions' offsets.
    #[test]
    fn copies_match_a_byte_model(ops in prop::collection::vec(op(), 1..40)) {
        let fd = memfd(3 * P, SealFlags::SHRINK);
        let probe = fd.try_clone().unwrap();
        // GPA [0, P) at fd 2P, GPA [P, 2P) at fd 0, then a hole to 4P.
        let layout = [
            MemoryRegion::new(0, P, 2 * P),
            MemoryRegion::new(P, P, 0),
            MemoryRegion::new(4 * P, P, P),
        ];
        let mem = GuestMemory::from_memfd(fd, &layout).unwrap();
        let mut model = vec![0u8; 2 * P as usize];
        for op in ops {
            match op {
                Op::Write(gpa, data) => {
                    let end = gpa + data.len() as u64;
                    let got = mem.write(gpa, &data);
                    if data.is_empty() {
                        prop_assert!(got.is_ok());
                    } else if end <= 2 * P {
                        prop_assert!(got.is_ok());
                        model[gpa as usize..end as usize].copy_from_slice(&data);
                    } else {
                        prop_assert!(matches!(got, Err(MemoryError::Hole { .. })), "{:?}", got);
                    }
                }
                Op::Fill(gpa, len, byte) => {
                    let got = mem.fill(gpa, len, byte);
                    if len == 0 {
                        prop_assert!(got.is_ok());
                    } else if gpa + len <= 2 * P {
                        prop_assert!(got.is_ok());
                        model[gpa as usize..(gpa + len) as usize].fill(byte);
                    } else {
                        prop_assert!(got.is_err());
                    }
                }
                Op::Read(gpa, len) => {
                    let mut buf = vec![0u8; len];
                    let got = mem.read(gpa, &mut buf);
                    if len == 0 {
                        prop_assert!(got.is_ok());
                    } else if gpa + len as u64 <= 2 * P {
                        prop_assert!(got.is_ok());
                        prop_assert_eq!(&buf[..], &model[gpa as usize..gpa as usize + len]);
                    } else {
                        prop_assert!(got.is_err());
                    }
                }
            }
        }
        prop_assert_eq!(pread(&probe, 2 * P, P as usize), &model[..P as usize]);
        prop_assert_eq!(pread(&probe, 0, P as usize), &model[P as usize..]);
    }
}
