//! Disk images made by the real tools, for tests: a random source tree,
//! FAT (mkfs.vfat + mcopy), ext4 (mke2fs -d) and NTFS (mkntfs + wimapply)
//! file systems, wrapped in GPT (sgdisk) or MBR (sfdisk) partition tables.
//! Every helper fails the calling test with the tool's output when a tool
//! is missing or fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Runs a tool, failing the test with its output when it is missing or
/// fails.
pub fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let out = cmd
        .env("LC_ALL", "C.UTF-8")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown} (is the tool installed?): {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a tool and returns its stdout.
pub fn run_output(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown} (is the tool installed?): {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs an external tool with `args`, failing the test with its output
/// when it is missing or fails; returns its stdout. mtools are told not
/// to refuse images made with unusual geometry.
pub fn tool(program: &str, args: &[&str]) -> String {
    run_output(
        Command::new(program)
            .args(args)
            .env("MTOOLS_SKIP_CHECK", "1"),
    )
}

/// A path as the `&str` argument tools take; test paths are UTF-8.
pub fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("test path {path:?} is not UTF-8"))
}

fn bytes(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// Writes a source tree with nested directories, long, Unicode and spaced
/// names, an empty file and the edge sizes around a 4 KiB block, plus
/// `extra` random files. With `big`, one file of about 2 MiB.
pub fn make_source_tree(root: &Path, seed: u64, extra: usize, big: bool) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let dirs = [
        "docs",
        "docs/A directory with spaces",
        "docs/A directory with spaces/deeper/deepest",
        "Ünïcødé ディレクトリ",
        "empty dir",
    ];
    for d in dirs {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let mut files: Vec<(String, usize)> = vec![
        ("empty.txt".into(), 0),
        ("one.bin".into(), 1),
        ("docs/block-minus-one.bin".into(), 4095),
        ("docs/block.bin".into(), 4096),
        ("docs/block-plus-one.bin".into(), 4097),
        (
            "docs/A directory with spaces/a rather long file name, with spaces and commas.txt"
                .into(),
            777,
        ),
        (
            "docs/A directory with spaces/deeper/deepest/leaf.dat".into(),
            12345,
        ),
        ("Ünïcødé ディレクトリ/Grüße – 日本語.txt".into(), 300),
        ("README".into(), 42),
    ];
    if big {
        files.push(("docs/big file.bin".into(), 2 * 1024 * 1024 + 321));
    }
    for i in 0..extra {
        let dir = dirs[rng.random_range(0..dirs.len())];
        let size = match rng.random_range(0..4) {
            0 => rng.random_range(0..16),
            1 => rng.random_range(0..5000),
            _ => rng.random_range(0..40000),
        };
        files.push((
            format!("{dir}/random file {i} é{}.bin", rng.random_range(0..1000)),
            size,
        ));
    }
    for (name, size) in files {
        fs::write(root.join(name), bytes(&mut rng, size)).unwrap();
    }
}

/// Creates an empty file of `size` bytes.
pub fn blank(path: &Path, size: u64) {
    fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// A FAT image (`fat_bits` 12, 16 or 32) of `mib` MiB holding `src`.
pub fn fat_image(dir: &Path, src: &Path, fat_bits: u32, mib: u64) -> PathBuf {
    let img = dir.join(format!("fat{fat_bits}.img"));
    blank(&img, mib << 20);
    run(Command::new("mkfs.vfat")
        .args(["-F", &fat_bits.to_string(), "-n", "TESTVOL"])
        .arg(&img));
    let entries: Vec<PathBuf> = fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&img)
        .arg("-s")
        .args(&entries)
        .arg("::/"));
    img
}

/// An ext4 image of `mib` MiB holding `src` (`mke2fs -d`).
pub fn ext4_image(dir: &Path, src: &Path, mib: u64) -> PathBuf {
    let img = dir.join("ext4.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(src)
        .arg(&img)
        .arg(format!("{mib}M")));
    img
}

/// An NTFS image of `mib` MiB holding `src` (mkntfs, then wimcapture and
/// wimapply straight into the image file).
pub fn ntfs_image(dir: &Path, src: &Path, mib: u64) -> PathBuf {
    let img = dir.join("ntfs.img");
    blank(&img, mib << 20);
    run(Command::new("mkntfs").args(["-F", "-Q", "-q"]).arg(&img));
    let wim = dir.join("src.wim");
    run(Command::new("wimcapture")
        .arg(src)
        .arg(&wim)
        .arg("--no-acls"));
    run(Command::new("wimapply").arg(&wim).arg("1").arg(&img));
    img
}

/// Start of the partition in the wrapped disks, in 512-byte sectors.
pub const PART_START: u64 = 2048;

fn disk_with(fs_image: &Path, disk: &Path, tail: u64) -> u64 {
    let fs_bytes = fs::read(fs_image).unwrap();
    let sectors = (fs_bytes.len() as u64).div_ceil(512);
    blank(disk, (PART_START + sectors + tail) * 512);
    sectors
}

fn copy_in(fs_image: &Path, disk: &Path) {
    use std::os::unix::fs::FileExt;
    let fs_bytes = fs::read(fs_image).unwrap();
    let f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&fs_bytes, PART_START * 512).unwrap();
}

/// A GPT disk (sgdisk) whose partition 1 holds `fs_image`.
pub fn gpt_disk(fs_image: &Path, disk: &Path, type_code: &str) -> u64 {
    let sectors = disk_with(fs_image, disk, 2048);
    run(Command::new("sgdisk")
        .arg(format!(
            "--new=1:{}:{}",
            PART_START,
            PART_START + sectors - 1
        ))
        .arg(format!("--typecode=1:{type_code}"))
        .arg("--change-name=1:test part")
        .arg(disk));
    copy_in(fs_image, disk);
    sectors
}

/// An MBR disk (sfdisk) whose partition 1 holds `fs_image`.
pub fn mbr_disk(fs_image: &Path, disk: &Path, type_byte: &str) -> u64 {
    let sectors = disk_with(fs_image, disk, 0);
    let script = format!("label: dos\n{PART_START},{sectors},{type_byte}\n");
    let mut child = Command::new("sfdisk")
        .arg("--no-reread")
        .arg("-q")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run sfdisk (is it installed?)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    copy_in(fs_image, disk);
    sectors
}

/// An mtools configuration file in `dir` that sets the code page of short
/// names (mtools otherwise uses 850 whatever the locale).
pub fn mtools_config(dir: &Path, code_page: u32) -> PathBuf {
    let conf = dir.join(format!("mtools-{code_page}.conf"));
    fs::write(
        &conf,
        format!("default_codepage={code_page}\nmtools_skip_check=1\n"),
    )
    .unwrap();
    conf
}

/// An mtools command told which code page to use, in UTC (mtools stores
/// local time and the reader takes FAT times as UTC).
pub fn mtools(program: &str, conf: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("MTOOLSRC", conf)
        .env("TZ", "UTC")
        .env("LC_ALL", "C.UTF-8");
    cmd
}

/// A FAT image (`fat_bits` 12, 16 or 32) of `kib` KiB named `name`
/// holding `src`, its short names written in `code_page` by `mcopy`
/// (modification times kept).
pub fn fat_image_in_code_page(
    dir: &Path,
    name: &str,
    src: &Path,
    fat_bits: u32,
    kib: u64,
    code_page: u32,
) -> PathBuf {
    let img = dir.join(name);
    blank(&img, kib << 10);
    run(Command::new("mkfs.vfat")
        .args(["-F", &fat_bits.to_string(), "-n", "CPTEST"])
        .arg(&img));
    let conf = mtools_config(dir, code_page);
    let mut entries: Vec<PathBuf> = fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    if !entries.is_empty() {
        run(mtools("mcopy", &conf)
            .arg("-i")
            .arg(&img)
            .args(["-s", "-m"])
            .args(&entries)
            .arg("::/"));
    }
    img
}

/// Converts a raw disk to a dynamic VHDX next to it (`qemu-img convert
/// -O vhdx`).
pub fn to_vhdx(raw: &Path) -> PathBuf {
    let vhdx = raw.with_extension("vhdx");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vhdx"])
        .arg(raw)
        .arg(&vhdx));
    vhdx
}

/// Converts a raw disk to a VHD next to it (`qemu-img convert -O vpc -o
/// OPTIONS`), named after the options so several can sit side by side.
pub fn to_vhd(raw: &Path, options: &str) -> PathBuf {
    let name = format!("{}.vhd", options.replace([',', '='], "-"));
    let vhd = raw.with_file_name(format!(
        "{}-{name}",
        raw.file_stem().unwrap().to_str().unwrap()
    ));
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", options])
        .arg(raw)
        .arg(&vhd));
    vhd
}
