//! Client against the real host state machine: the client builds a
//! request, the host handles it, the client parses the reply.

use std::sync::Arc;
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsHost, VmbfsInput};
use vmbdev_fs::MemoryTree;
use vmbdev_guest::vmbfs::*;
use vmbdev_ring::{GpaRange, GuestMemory};

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(13).wrapping_add(seed.into()) as u8 ^ (i >> 8) as u8)
        .collect()
}

const SIZES: [usize; 5] = [0, 1, 12275, 12276, 12277];
const HUGE: usize = 7 * 1024 * 1024 + 300_001;
const MEMORY: u64 = 16 * 1024 * 1024;

fn files() -> MemoryTree {
    let mut tree = MemoryTree::builder();
    tree.add_file("EFI/BOOT/BOOTX64.EFI", content(40_000, 1))
        .unwrap();
    tree.add_file("huge.bin", content(HUGE, 2)).unwrap();
    for size in SIZES {
        tree.add_file(&format!("s/f{size}"), content(size, size as u8))
            .unwrap();
    }
    tree.build()
}

struct Vm {
    host: VmbfsHost,
    memory: GuestMemory,
}

impl Vm {
    fn new(rdma_enabled: bool) -> Self {
        let memory = GuestMemory::new(MEMORY).unwrap();
        let config = VmbfsConfig {
            tree: Arc::new(files()),
            rdma_enabled,
        };
        let mut vm = Self {
            host: VmbfsHost::new(config, memory.clone()),
            memory,
        };
        let reply = vm.send(&version_request());
        parse_version_response(&reply).unwrap();
        vm
    }

    fn send(&mut self, msg: &[u8]) -> Vec<u8> {
        self.host
            .handle(VmbfsInput::Message(msg))
            .unwrap()
            .unwrap()
            .into_bytes()
    }

    fn pipe(&mut self, input: VmbfsInput<'_>) {
        assert_eq!(self.host.handle(input), Ok(None));
    }

    fn open(&mut self, path: &[u16]) -> Result<FileInfo, ClientError> {
        let reply = self.send(&get_file_info_request(path).unwrap());
        parse_file_info_response(&reply)
    }

    /// The firmware's in-band read of a whole buffer.
    fn read_in_band(&mut self, path: &[u16], size: u64, buffer_size: usize) -> Vec<u8> {
        let mut buffer = vec![0u8; buffer_size];
        let mut read = FileRead::new(size, 0, buffer_size);
        while let Some((offset, at, left)) = read.next_chunk() {
            let (msg, requested) = read_request(path, offset, left).unwrap();
            assert_eq!(
                requested as usize,
                left.min(12276),
                "not clamped to the file"
            );
            let reply = self.send(&msg);
            let data = parse_read_response(&reply, requested).unwrap();
            buffer[at..at + data.len()].copy_from_slice(data);
            read.advance(data.len()).unwrap();
        }
        buffer.truncate(read.bytes_read());
        buffer
    }
}

fn units(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

/// `len` bytes at `offset` into `full` as a range of its own.
fn sub_range(full: &GpaRange, offset: usize, len: usize) -> GpaRange {
    let start = full.byte_offset() as usize + offset;
    let first = start / 4096;
    let pages = (start % 4096 + len).div_ceil(4096);
    GpaRange::new(
        len as u32,
        (start % 4096) as u32,
        full.gpns()[first..first + pages].to_vec(),
    )
    .unwrap()
}

/// Guest bytes of `range`, read page by page.
fn read_range(memory: &GuestMemory, range: &GpaRange, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut pos = range.byte_offset() as usize;
    let mut done = 0;
    while done < len {
        let take = (4096 - pos % 4096).min(len - done);
        let gpa = range.gpns()[pos / 4096] * 4096 + (pos % 4096) as u64;
        memory.read(gpa, &mut out[done..done + take]).unwrap();
        done += take;
        pos += take;
    }
    out
}

#[test]
fn open_paths_the_firmware_sends() {
    let mut vm = Vm::new(false);
    let efi = child_path(&units("\\"), "EFI");
    assert!(vm.open(&efi).unwrap().directory);
    let boot = child_path(&units("\\EFI\\"), "BOOT"); // trailing NUL
    assert_eq!(boot.last(), Some(&0));
    let info = vm.open(&boot).unwrap();
    assert!(info.directory && info.size == 0);
    let file = child_path(&boot, "BOOTX64.EFI");
    let info = vm.open(&file).unwrap();
    assert_eq!(
        (info.directory, info.rdma_capable, info.size),
        (false, false, 40_000)
    );
    assert!(
        vm.open(&units("")).unwrap().directory,
        "empty path is the root"
    );
    assert!(
        vm.open(&units("\\EFI\\..\\..\\EFI\\.\\BOOT"))
            .unwrap()
            .directory
    );
    assert_eq!(vm.open(&units("\\nope")), Err(ClientError::NotFound));
}

#[test]
fn in_band_reads_with_unclamped_chunks() {
    let mut vm = Vm::new(false);
    for size in SIZES {
        let path = child_path(&units("\\s"), &format!("f{size}"));
        let info = vm.open(&path).unwrap();
        assert_eq!(info.size, size as u64);
        // The buffer is larger than the file, as when a caller over-allocates.
        let data = vm.read_in_band(&path, info.size, size + 30_000);
        assert_eq!(data, content(size, size as u8), "size {size}");
    }
    let path = units("\\EFI\\BOOT\\BOOTX64.EFI");
    assert_eq!(vm.read_in_band(&path, 40_000, 40_000), content(40_000, 1));
}

#[test]
fn read_errors_map_like_the_firmware() {
    let mut vm = Vm::new(false);
    let (msg, n) = read_request(&units("s\\f1"), 1, 100).unwrap();
    assert_eq!(
        parse_read_response(&vm.send(&msg), n),
        Err(ClientError::EndOfFile)
    );
    let (msg, n) = read_request(&units("EFI"), 0, 100).unwrap();
    assert_eq!(
        parse_read_response(&vm.send(&msg), n),
        Err(ClientError::DeviceError(3))
    );
    let (msg, n) = read_request(&units("nope"), 0, 100).unwrap();
    assert_eq!(
        parse_read_response(&vm.send(&msg), n),
        Err(ClientError::NotFound)
    );
}

#[test]
fn rdma_read_with_deferred_teardown() {
    let mut vm = Vm::new(true);
    let path = units("\\huge.bin");
    let info = vm.open(&path).unwrap();
    assert!(info.rdma_capable);
    assert_eq!(info.size, HUGE as u64);
    // The guest buffer: scattered pages, starting mid-page, larger than
    // the file.
    let buffer_len = HUGE + 5000;
    let pages = (100 + buffer_len).div_ceil(4096) as u64;
    let gpns = (0..pages).map(|i| (i * 7) % (MEMORY / 4096)).collect();
    let buffer = GpaRange::new(buffer_len as u32, 100, gpns).unwrap();
    vm.memory.fill(0, MEMORY, 0xEE).unwrap();

    let mut read = FileRead::new(info.size, 0, buffer_len);
    let mut pending_teardown = None;
    let mut chunks = 0;
    while let Some((offset, at, left)) = read.next_chunk() {
        let chunk = rdma_chunk(&path, offset, &sub_range(&buffer, at, left)).unwrap();
        assert_eq!(chunk.requested, (left as u32).min(7 * 1024 * 1024));
        // Deferred teardown of the previous chunk arrives with this one.
        if let Some(handle) = pending_teardown.take() {
            vm.pipe(VmbfsInput::TeardownGpaDirect { handle });
        }
        vm.pipe(VmbfsInput::SetupGpaDirect {
            handle: chunk.setup.handle,
            writable: chunk.setup.writable,
            ranges: chunk.setup.ranges.clone(),
        });
        let reply = vm.send(&chunk.request);
        let written = parse_rdma_response(&reply, chunk.requested).unwrap();
        read.advance(written as usize).unwrap();
        pending_teardown = Some(chunk.teardown_handle);
        chunks += 1;
    }
    vm.pipe(VmbfsInput::TeardownGpaDirect {
        handle: pending_teardown.unwrap(),
    });
    assert_eq!(chunks, 2, "7 MiB per chunk");
    assert_eq!(read.bytes_read(), HUGE);
    let got = read_range(&vm.memory, &buffer, buffer_len);
    assert_eq!(got[..HUGE], content(HUGE, 2)[..]);
    assert!(
        got[HUGE..].iter().all(|&b| b == 0xEE),
        "nothing past the file"
    );
    assert!(vm.host.gpa_direct_handles().is_empty());
}
