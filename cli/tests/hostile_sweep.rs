//! Hostile inputs fed to every subcommand that reads an image or a source:
//! each refusal exits 1 with exactly one `vmbdev: ` line on stderr naming
//! the file, never a panic; inputs a subcommand may legitimately accept
//! (a raw file of random bytes is a valid raw disk) succeed. Usage errors
//! exit 2 for every subcommand.

use std::path::{Path, PathBuf};
use std::process::Output;
use vmbdev_tests::cli::{path_str, qemu_img, run_vmbdev, tool};

fn vmbdev(args: &[&str]) -> Output {
    run_vmbdev(env!("CARGO_BIN_EXE_vmbdev"), args)
}

/// Flips every bit of the byte at `at`.
fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0xFF;
    std::fs::write(path, bytes).unwrap();
}

/// Writes `value` little-endian at `at`.
fn patch(path: &Path, at: usize, value: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at..at + value.len()].copy_from_slice(value);
    std::fs::write(path, bytes).unwrap();
}

/// The hostile inputs, made in `dir`.
struct Inputs {
    signature_only: PathBuf,
    empty: PathBuf,
    truncated_vhdx: PathBuf,
    bad_header_crcs: PathBuf,
    bat_reserved_bits: PathBuf,
    corrupt_gpt: PathBuf,
    random_raw: PathBuf,
    bad_fat32: PathBuf,
    missing: PathBuf,
    directory: PathBuf,
}

fn qemu_vhdx(path: &Path) {
    qemu_img(&["create", "-q", "-f", "vhdx", path_str(path), "8M"]);
}

/// File offset of the BAT, from the region table at 192 KiB.
fn bat_offset(bytes: &[u8]) -> usize {
    // 2dc27766-f623-4200-9d64-115e9bfd4a08 as stored (mixed-endian).
    const BAT_GUID: [u8; 16] = [
        0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a,
        0x08,
    ];
    let table = 192 << 10;
    assert_eq!(&bytes[table..table + 4], b"regi");
    let count = u32::from_le_bytes(bytes[table + 8..table + 12].try_into().unwrap()) as usize;
    (0..count)
        .map(|i| table + 16 + 32 * i)
        .find(|&e| bytes[e..e + 16] == BAT_GUID)
        .map(|e| u64::from_le_bytes(bytes[e + 16..e + 24].try_into().unwrap()) as usize)
        .expect("qemu-img VHDX has a BAT region")
}

fn make_inputs(dir: &Path) -> Inputs {
    let signature_only = dir.join("signature-only.vhdx");
    let mut bytes = vec![0u8; 2 << 20];
    bytes[..8].copy_from_slice(b"vhdxfile");
    std::fs::write(&signature_only, bytes).unwrap();

    let empty = dir.join("empty.img");
    std::fs::write(&empty, b"").unwrap();

    let truncated_vhdx = dir.join("truncated.vhdx");
    qemu_vhdx(&truncated_vhdx);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated_vhdx)
        .unwrap()
        .set_len(3 << 19)
        .unwrap();

    let bad_header_crcs = dir.join("bad-header-crcs.vhdx");
    qemu_vhdx(&bad_header_crcs);
    std::fs::copy(&bad_header_crcs, dir.join("pristine.vhdx")).unwrap();
    flip(&bad_header_crcs, (64 << 10) + 100);
    flip(&bad_header_crcs, (128 << 10) + 100);

    let bat_reserved_bits = dir.join("bat-reserved-bits.vhdx");
    qemu_vhdx(&bat_reserved_bits);
    tool(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            "write -P 0x5a 0 1M",
            path_str(&bat_reserved_bits),
        ],
    );
    let image = std::fs::read(&bat_reserved_bits).unwrap();
    let bat = bat_offset(&image);
    let entry = u64::from_le_bytes(image[bat..bat + 8].try_into().unwrap());
    assert_eq!(entry & 7, 6, "block 0 is fully present after the write");
    std::fs::copy(&bat_reserved_bits, dir.join("pristine-written.vhdx")).unwrap();
    patch(&bat_reserved_bits, bat, &(entry | 1 << 3).to_le_bytes());

    let corrupt_gpt = dir.join("corrupt-gpt.img");
    std::fs::File::create(&corrupt_gpt)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    tool(
        "sgdisk",
        &["-n", "1:2048:+12M", "-t", "1:0700", path_str(&corrupt_gpt)],
    );
    tool(
        "mkfs.vfat",
        &["--offset", "2048", path_str(&corrupt_gpt), "12288"],
    );
    std::fs::copy(&corrupt_gpt, dir.join("pristine-gpt.img")).unwrap();
    flip(&corrupt_gpt, 512 + 20);
    flip(&corrupt_gpt, (16 << 20) - 512 + 20);

    let random_raw = dir.join("random.img");
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let noise: Vec<u8> = (0..(4 << 20))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(&random_raw, noise).unwrap();

    let bad_fat32 = dir.join("bad-fat32.img");
    std::fs::File::create(&bad_fat32)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    tool("mkfs.vfat", &["-F", "32", path_str(&bad_fat32)]);
    std::fs::copy(&bad_fat32, dir.join("pristine-fat32.img")).unwrap();
    patch(&bad_fat32, 11, &3u16.to_le_bytes());

    let missing = dir.join("does-not-exist.vhdx");
    let directory = dir.join("a-directory");
    std::fs::create_dir(&directory).unwrap();
    Inputs {
        signature_only,
        empty,
        truncated_vhdx,
        bad_header_crcs,
        bat_reserved_bits,
        corrupt_gpt,
        random_raw,
        bad_fat32,
        missing,
        directory,
    }
}

/// The subcommands that read an image, as argument lists around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Info,
    Ls,
    Cat,
    Dump,
    DumpDirect,
}

const READERS: [Reader; 5] = [
    Reader::Info,
    Reader::Ls,
    Reader::Cat,
    Reader::Dump,
    Reader::DumpDirect,
];

fn run_reader(reader: Reader, image: &Path, out: &Path) -> Output {
    match reader {
        Reader::Info => vmbdev(&["info", path_str(image)]),
        Reader::Ls => vmbdev(&["ls", path_str(image)]),
        Reader::Cat => vmbdev(&["cat", path_str(image), "/file.txt", "-o", path_str(out)]),
        Reader::Dump => vmbdev(&["dump", path_str(image), "-o", path_str(out)]),
        Reader::DumpDirect => vmbdev(&["dump", "--direct", path_str(image), "-o", path_str(out)]),
    }
}

/// Checks a refusal: exit 1, one `vmbdev: ` line naming `file`, no panic
/// text. Returns a description of what was wrong, if anything.
fn refusal_problem(out: &Output, file: &Path) -> Option<String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let name = file.file_name().unwrap().to_str().unwrap();
    let problem = if out.status.code() != Some(1) {
        "exit code is not 1"
    } else if lines.len() != 1 {
        "stderr is not exactly one line"
    } else if !lines[0].starts_with("vmbdev: ") || lines[0].len() <= "vmbdev: ".len() {
        "stderr does not start with `vmbdev: ` and a message"
    } else if !lines[0].contains(name) {
        "the message does not name the file"
    } else if ["panicked", "RUST_BACKTRACE", "internal error"]
        .iter()
        .any(|t| stderr.contains(t))
    {
        "panic text on stderr"
    } else {
        return None;
    };
    Some(format!(
        "{problem} (exit {:?}): {stderr:?}",
        out.status.code()
    ))
}

fn success_problem(out: &Output) -> Option<String> {
    (!out.status.success()).then(|| {
        format!(
            "expected success, exit {:?}: {:?}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn hostile_images_are_refused_in_one_line_by_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = make_inputs(dir.path());
    let out = dir.path().join("out.bin");
    let mut cases: Vec<(&Path, Reader, bool)> = Vec::new();
    for image in [
        &inputs.signature_only,
        &inputs.empty,
        &inputs.truncated_vhdx,
        &inputs.bad_header_crcs,
        &inputs.bat_reserved_bits,
        &inputs.missing,
    ] {
        for reader in READERS {
            cases.push((image, reader, false));
        }
    }
    // A raw file of random bytes is a valid raw disk: dumping it succeeds
    // (through storvsc and directly); `info` describes it (whole disk, no
    // file system recognised); `ls` and `cat` find no file system. The
    // FAT32 image with 3-byte sectors is the same case: a raw disk whose
    // file system is not recognised.
    for image in [&inputs.random_raw, &inputs.bad_fat32] {
        for reader in READERS {
            let succeeds = matches!(reader, Reader::Info | Reader::Dump | Reader::DumpDirect);
            cases.push((image, reader, succeeds));
        }
    }
    // A raw disk is any byte sequence, so the corrupt-GPT disk dumps; but
    // `info` reports partitions and refuses a disk whose GPT headers are
    // both corrupt, and `ls`/`cat` have no partition to read.
    for reader in READERS {
        let succeeds = matches!(reader, Reader::Dump | Reader::DumpDirect);
        cases.push((&inputs.corrupt_gpt, reader, succeeds));
    }
    // A directory is a valid source for `ls` and `cat`, never an image.
    for reader in [Reader::Info, Reader::Dump, Reader::DumpDirect] {
        cases.push((&inputs.directory, reader, false));
    }

    let mut problems = Vec::new();
    for (image, reader, succeeds) in cases {
        let _ = std::fs::remove_file(&out);
        let output = run_reader(reader, image, &out);
        let problem = if succeeds {
            success_problem(&output)
        } else {
            refusal_problem(&output, image)
        };
        if let Some(p) = problem {
            problems.push(format!("{reader:?} {}: {p}", image.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The images before they were damaged are accepted, so each refusal in
/// the sweep is down to the damage, not to a kind of image never read.
#[test]
fn undamaged_originals_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    make_inputs(dir.path());
    let out = dir.path().join("out.bin");
    let mut problems = Vec::new();
    for (name, readers) in [
        (
            "pristine.vhdx",
            &[Reader::Info, Reader::Dump, Reader::DumpDirect][..],
        ),
        (
            "pristine-written.vhdx",
            &[Reader::Info, Reader::Dump, Reader::DumpDirect][..],
        ),
        ("pristine-gpt.img", &READERS[..2]),
        ("pristine-fat32.img", &READERS[..2]),
    ] {
        for &reader in readers {
            let image = dir.path().join(name);
            if let Some(p) = success_problem(&run_reader(reader, &image, &out)) {
                problems.push(format!("{reader:?} {name}: {p}"));
            }
        }
    }
    // The damaged FAT32 image is described as a raw disk without a
    // recognised file system, never as FAT.
    let info = vmbdev(&["info", path_str(&dir.path().join("bad-fat32.img"))]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("none recognised") && !text.contains("FAT"),
        "{text}"
    );
    let info = vmbdev(&["info", path_str(&dir.path().join("pristine-fat32.img"))]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("file system") && text.contains("FAT"),
        "{text}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn pack_refuses_bad_sources_and_outputs_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("tree");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("hello.txt"), b"hello").unwrap();
    let a_file = dir.path().join("plain-file");
    std::fs::write(&a_file, b"not a directory").unwrap();
    let missing = dir.path().join("no-such-dir");
    let out = dir.path().join("out.vhdx");
    // Under a regular file, so not even root can create it.
    let unwritable = a_file.join("out.vhdx");
    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();

    let mut problems = Vec::new();
    for (args, named) in [
        (vec!["pack", path_str(&missing), path_str(&out)], &missing),
        (vec!["pack", path_str(&a_file), path_str(&out)], &a_file),
        // The message names the directory that cannot hold the output.
        (
            vec!["pack", path_str(&source), path_str(&unwritable)],
            &a_file,
        ),
        (
            vec!["pack", path_str(&source), path_str(&occupied)],
            &occupied,
        ),
    ] {
        if let Some(p) = refusal_problem(&vmbdev(&args), named) {
            problems.push(format!("{args:?}: {p}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn usage_errors_exit_2_for_every_subcommand() {
    let mut problems = Vec::new();
    let no_args_is_usage = ["cat", "dump", "pack", "ls", "info"];
    for sub in ["demo", "cat", "dump", "pack", "ls", "info", "bench"] {
        let mut attempts = vec![vec![sub, "--no-such-flag"]];
        if no_args_is_usage.contains(&sub) {
            attempts.push(vec![sub]);
        }
        for args in attempts {
            let out = vmbdev(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.code() != Some(2) || stderr.contains("panicked") || stderr.is_empty() {
                problems.push(format!("{args:?}: exit {:?}: {stderr}", out.status.code()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
