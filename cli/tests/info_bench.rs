//! `vmbdev info` against images made by qemu-img, sgdisk, mkfs.vfat and
//! mke2fs, checked against what those tools report; hostile files exit 1
//! with one line; host file size and allocated bytes are what `stat`
//! says; `vmbdev bench --quick --json` yields positive figures, CPU time
//! per unit included.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use vmbdev_tests::cli::{path_str, qemu_img, run_vmbdev, tool};

fn vmbdev(args: &[&str]) -> Output {
    run_vmbdev(env!("CARGO_BIN_EXE_vmbdev"), args)
}

const MIB: u64 = 1 << 20;

/// `vmbdev info --json`, which must succeed.
fn info_json(image: &Path) -> Value {
    let out = vmbdev(&["info", "--json", path_str(image)]);
    assert!(
        out.status.success(),
        "info failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("info --json prints one JSON object")
}

fn qemu_json(image: &Path) -> Value {
    serde_json::from_str(&qemu_img(&[
        "info",
        "--output=json",
        "-f",
        "vhdx",
        path_str(image),
    ]))
    .unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

fn sum_bat(bat: &Value) -> u64 {
    bat.as_object().unwrap().values().map(u).sum()
}

#[test]
fn dynamic_vhdx_matches_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("dyn.vhdx");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "subformat=dynamic,block_size=1M",
        path_str(&img),
        "9M",
    ]);
    // Writes touching blocks 0, 3 and 7 (block 3 twice).
    tool(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            "write -P 0x11 4096 4096",
            "-c",
            "write -P 0x22 3M 512",
            "-c",
            "write -P 0x33 3670016 1M",
            "-c",
            "write -P 0x44 7M 8192",
            path_str(&img),
        ],
    );
    let qemu = qemu_json(&img);
    let ours = info_json(&img);
    assert_eq!(ours["format"], "vhdx");
    assert_eq!(u(&ours["virtual_size"]), u(&qemu["virtual-size"]));
    assert_eq!(u(&ours["block_size"]), u(&qemu["cluster-size"]));
    assert_eq!(u(&ours["logical_sector_size"]), 512);
    let bat = &ours["bat"];
    // 3 MiB + 512 KiB .. + 1 MiB ends in block 4: blocks 0, 3, 4 and 7.
    assert_eq!(u(&bat["fully_present"]), 4, "{bat}");
    assert_eq!(u(&bat["partially_present"]), 0);
    assert_eq!(sum_bat(bat) - u(&bat["sector_bitmaps_present"]), 9);
    assert_eq!(ours["log"]["state"], "clean");
    assert_eq!(ours["parent_chain"].as_array().unwrap().len(), 0);
    // No partition table: the whole disk, no file system.
    let parts = ours["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0]["scheme"], "none");
    assert_eq!(u(&parts[0]["last_lba"]), 9 * MIB / 512 - 1);
    assert!(parts[0]["file_system"].is_null());
}

#[test]
fn fixed_vhdx_has_every_block_present() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fixed.vhdx");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "subformat=fixed,block_size=1M,block_state_zero=off",
        path_str(&img),
        "5M",
    ]);
    let qemu = qemu_json(&img);
    let ours = info_json(&img);
    assert_eq!(u(&ours["virtual_size"]), u(&qemu["virtual-size"]));
    assert_eq!(u(&ours["block_size"]), u(&qemu["cluster-size"]));
    let bat = &ours["bat"];
    assert_eq!(u(&bat["fully_present"]), 5, "{bat}");
    assert_eq!(sum_bat(bat) - u(&bat["sector_bitmaps_present"]), 5);
    let human = vmbdev(&["info", path_str(&img)]);
    assert!(human.status.success());
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(text.contains("VHDX"), "{text}");
    assert!(text.contains("fully present 5"), "{text}");
}

#[test]
fn differencing_vhdx_shows_its_parent_chain() {
    use vmbdev_block::RawFile;
    use vmbdev_vhdx::{WriteOptions, write_differencing, write_vhdx};
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("base.raw");
    std::fs::write(&raw, vec![0x5Au8; 4 * MIB as usize]).unwrap();
    let opts = WriteOptions {
        block_size: MIB as u32,
        ..WriteOptions::default()
    };
    let base = dir.path().join("base.vhdx");
    write_vhdx(&RawFile::open(&raw).unwrap(), &base, &opts).unwrap();
    let mid = dir.path().join("mid.vhdx");
    // One sector of block 0 (partial) and all of block 2 (full).
    let changes = [(0, vec![1u8; 512]), (4096, vec![2u8; MIB as usize])];
    write_differencing(&base, &mid, &changes, &opts).unwrap();
    let top = dir.path().join("top.vhdx");
    write_differencing(&mid, &top, &[(8, vec![3u8; 512])], &opts).unwrap();

    let mid_info = info_json(&mid);
    let bat = &mid_info["bat"];
    assert_eq!(u(&bat["partially_present"]), 1, "{bat}");
    assert_eq!(u(&bat["fully_present"]), 1, "{bat}");
    assert_eq!(u(&bat["not_present"]), 2, "{bat}");
    let top_info = info_json(&top);
    let chain: Vec<std::path::PathBuf> = top_info["parent_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| std::fs::canonicalize(p.as_str().unwrap()).unwrap())
        .collect();
    let expected = [&mid, &base].map(|p| std::fs::canonicalize(p).unwrap());
    assert_eq!(chain, expected);
    assert_eq!(u(&top_info["virtual_size"]), 4 * MIB);
    let text = String::from_utf8(vmbdev(&["info", path_str(&top)]).stdout).unwrap();
    assert!(
        text.contains("parent 2") && text.contains("base.vhdx"),
        "{text}"
    );
    // A missing parent is an error naming the child.
    std::fs::remove_file(&base).unwrap();
    assert_refused(&top, false);
}

/// `field: value` from `sgdisk -i` output.
fn sgdisk_field<'a>(text: &'a str, field: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in sgdisk output:\n{text}"))
        .trim()
}

/// The leading number of an `sgdisk -i` sector field (`2048 (at 1 MiB)`).
fn sgdisk_number(text: &str, field: &str) -> u64 {
    sgdisk_field(text, field)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn raw_gpt_disk_matches_sgdisk_and_mkfs() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    tool(
        "sgdisk",
        &[
            "-n",
            "1:2048:+40M",
            "-t",
            "1:0700",
            "-c",
            "1:Data Volume",
            "-n",
            "2:0:+8M",
            "-c",
            "2:root",
            path_str(&img),
        ],
    );
    let p1 = tool("sgdisk", &["-i", "1", path_str(&img)]);
    let p2 = tool("sgdisk", &["-i", "2", path_str(&img)]);
    let first1 = sgdisk_number(&p1, "First sector");
    let first2 = sgdisk_number(&p2, "First sector");
    tool(
        "mkfs.vfat",
        &[
            "-F",
            "32",
            "-S",
            "512",
            "-s",
            "1",
            "-n",
            "VOL LABEL",
            "--offset",
            &first1.to_string(),
            path_str(&img),
            "40960",
        ],
    );
    tool(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "1024",
            "-L",
            "rootfs",
            "-E",
            &format!("offset={}", first2 * 512),
            path_str(&img),
            "6144",
        ],
    );
    let ours = info_json(&img);
    assert_eq!(ours["format"], "raw");
    assert_eq!(u(&ours["virtual_size"]), 64 * MIB);
    assert!(ours["bat"].is_null() && ours["log"].is_null());
    let parts = ours["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    for (part, sg, number) in [(&parts[0], &p1, 1), (&parts[1], &p2, 2)] {
        assert_eq!(part["scheme"], "gpt");
        assert_eq!(u(&part["number"]), number);
        let type_code = sgdisk_field(sg, "Partition GUID code")
            .split_whitespace()
            .next()
            .unwrap();
        assert!(
            part["type_guid"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(type_code),
            "{part} vs {type_code}"
        );
        assert!(
            part["unique_guid"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(sgdisk_field(sg, "Partition unique GUID")),
            "{part}"
        );
        assert_eq!(u(&part["first_lba"]), sgdisk_number(sg, "First sector"));
        assert_eq!(u(&part["last_lba"]), sgdisk_number(sg, "Last sector"));
        assert_eq!(
            format!("'{}'", part["name"].as_str().unwrap()),
            sgdisk_field(sg, "Partition name")
        );
    }
    // 0700 is Microsoft basic data.
    assert!(
        parts[0]["type_guid"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")
    );
    let fat = &parts[0]["file_system"];
    assert_eq!(fat["type"], "fat");
    assert_eq!(fat["label"], "VOL LABEL");
    assert_eq!(u(&fat["size"]), 40960 * 1024);
    let ext = &parts[1]["file_system"];
    assert_eq!(ext["type"], "ext4");
    assert_eq!(ext["label"], "rootfs");
    assert_eq!(u(&ext["size"]), 6 * MIB);

    // The human form shows the same facts with the values in one column.
    let out = vmbdev(&["info", path_str(&img)]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\"VOL LABEL\""), "{text}");
    assert!(text.contains("\"rootfs\""), "{text}");
    let column = |key: &str| {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no {key} line in\n{text}"));
        let after_key = line.find(key).unwrap() + key.len();
        after_key + line[after_key..].len() - line[after_key..].trim_start().len()
    };
    let value_column = column("format");
    for key in ["virtual size", "partition 2", "unique GUID", "file system"] {
        assert_eq!(column(key), value_column, "{key} misaligned in\n{text}");
    }
}

#[test]
fn raw_mbr_disk_matches_sfdisk() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("mbr.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(24 * MIB)
        .unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", path_str(&img)])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk is required for this test");
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"start=2048, size=32768, type=e\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let table: Value = serde_json::from_str(&tool("sfdisk", &["--json", path_str(&img)])).unwrap();
    let theirs = &table["partitiontable"]["partitions"][0];
    let start = u(&theirs["start"]);
    let size = u(&theirs["size"]);
    tool(
        "mkfs.vfat",
        &[
            "-F",
            "16",
            "-n",
            "MBRVOL",
            "--offset",
            &start.to_string(),
            path_str(&img),
            &(size / 2).to_string(),
        ],
    );
    let ours = info_json(&img);
    let parts = ours["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1);
    let p = &parts[0];
    assert_eq!(p["scheme"], "mbr");
    assert_eq!(u(&p["number"]), 1);
    let their_type = u64::from_str_radix(theirs["type"].as_str().unwrap(), 16).unwrap();
    assert_eq!(u(&p["mbr_type"]), their_type);
    assert!(p["type_guid"].is_null() && p["unique_guid"].is_null());
    assert_eq!(u(&p["first_lba"]), start);
    assert_eq!(u(&p["last_lba"]), start + size - 1);
    assert_eq!(u(&p["size"]), size * 512);
    assert_eq!(p["file_system"]["type"], "fat");
    assert_eq!(p["file_system"]["label"], "MBRVOL");
    assert_eq!(u(&p["file_system"]["size"]), size * 512);
}

/// Asserts a refused image: exit 1, one `vmbdev:` line naming the file,
/// no panic report.
fn assert_refused(image: &Path, json: bool) {
    let mut args = vec!["info"];
    if json {
        args.push("--json");
    }
    args.push(path_str(image));
    let out = vmbdev(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{image:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{image:?} printed a report");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("vmbdev: "), "{stderr}");
    let name = image.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(name),
        "message does not name the file: {stderr}"
    );
    assert!(!stderr.contains("panicked") && !stderr.contains("internal error"));
}

#[test]
fn hostile_files_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let only_signature = dir.path().join("signature-only.vhdx");
    std::fs::write(&only_signature, b"vhdxfile").unwrap();
    let mut padded = b"vhdxfile".to_vec();
    padded.resize(2 * MIB as usize, 0);
    let signature_then_zeros = dir.path().join("signature-zeros.vhdx");
    std::fs::write(&signature_then_zeros, &padded).unwrap();
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();

    let good = dir.path().join("good.vhdx");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "subformat=fixed,block_size=1M,block_state_zero=off",
        path_str(&good),
        "4M",
    ]);
    let bytes = std::fs::read(&good).unwrap();
    let mut cases = vec![only_signature, signature_then_zeros, empty];
    // Cut inside the headers, the region tables, the metadata and the
    // payload.
    for cut in [
        100_000,
        MIB as usize + 4096,
        2 * MIB as usize + 4096,
        bytes.len() - 4096,
    ] {
        let truncated = dir.path().join(format!("truncated-{cut}.vhdx"));
        std::fs::write(&truncated, &bytes[..cut.min(bytes.len())]).unwrap();
        cases.push(truncated);
    }
    for case in &cases {
        assert_refused(case, false);
        assert_refused(case, true);
    }
    // A GPT whose primary and backup headers both fail their checksum.
    let bad_gpt = dir.path().join("bad-gpt.raw");
    std::fs::File::create(&bad_gpt)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    tool("sgdisk", &["-n", "1:2048:+1M", path_str(&bad_gpt)]);
    let mut disk = std::fs::read(&bad_gpt).unwrap();
    let backup = disk.len() - 512;
    for header in [512, backup] {
        disk[header + 88] ^= 0xFF;
    }
    std::fs::write(&bad_gpt, &disk).unwrap();
    assert_refused(&bad_gpt, true);
    let missing = dir.path().join("missing.vhdx");
    assert_refused(&missing, false);
}

#[test]
fn usage_errors_exit_2_and_verbose_turns_on_tracing() {
    for args in [
        &["info"][..],
        &["info", "--bogus", "x"],
        &["no-such-command"],
    ] {
        assert_eq!(vmbdev(args).status.code(), Some(2), "{args:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("plain.raw");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let quiet = vmbdev(&["info", path_str(&img)]);
    assert!(quiet.status.success());
    assert!(quiet.stderr.is_empty());
    let verbose = vmbdev(&["-v", "info", path_str(&img)]);
    assert!(verbose.status.success());
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    assert!(stderr.contains("opened image"), "{stderr}");
    assert_eq!(verbose.stdout, quiet.stdout);
}

#[test]
fn quick_bench_json_has_positive_figures() {
    let out = vmbdev(&["bench", "--quick", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("bench --json is JSON");
    let results = doc["results"].as_array().expect("results array");
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    let expected: [&[&str]; 9] = [
        &["ring"],
        &["vhdx"],
        &["vmbfs", "in-band"],
        &["vmbfs", "RDMA"],
        &["storvsp", "QD1"],
        &["storvsp", "QD32"],
        &["storvsp", "sequential"],
        &["storvsp", "QD32", "2", "channels"],
        &["storvsp", "QD32", "vs", "pread", "threads"],
    ];
    for words in expected {
        assert!(
            names.iter().any(|n| n.starts_with(words[0])
                && words[1..]
                    .iter()
                    .all(|w| n.split([' ', ',']).any(|part| part == *w))),
            "no result named with {words:?} in {names:?}"
        );
    }
    for r in results {
        assert!(!r["name"].as_str().unwrap().is_empty());
        assert!(!r["unit"].as_str().unwrap().is_empty());
        let (value, baseline, ratio) = (
            r["value"].as_f64().unwrap(),
            r["baseline"].as_f64().unwrap(),
            r["ratio"].as_f64().unwrap(),
        );
        assert!(value > 0.0 && baseline > 0.0, "{r}");
        assert!(
            (ratio - value / baseline).abs() <= 1e-9 * ratio.max(1.0),
            "{r}"
        );
        for cpu in ["cpu_per_unit", "baseline_cpu_per_unit"] {
            let cpu = r[cpu].as_f64().unwrap();
            assert!(cpu.is_finite() && cpu > 0.0, "{r}");
        }
        assert!(r["cpu_unit"].as_str().unwrap().contains("s/"), "{r}");
    }
}

/// `stat -c FORMAT path` as a number.
fn stat(format: &str, path: &Path) -> u64 {
    tool("stat", &["-L", "-c", format, path_str(path)])
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn host_file_size_and_allocated_bytes_are_what_stat_says() {
    let dir = tempfile::tempdir().unwrap();
    let vhdx = dir.path().join("d.vhdx");
    qemu_img(&["create", "-f", "vhdx", path_str(&vhdx), "1G"]);
    tool(
        "qemu-io",
        &["-f", "vhdx", "-c", "write -P 0x61 5M 3M", path_str(&vhdx)],
    );
    // A sparse raw disk: 64 MiB long, a few KiB allocated.
    let raw = dir.path().join("sparse.img");
    let file = std::fs::File::create(&raw).unwrap();
    file.set_len(64 * MIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0x55; 8192], 10 * MIB).unwrap();
    drop(file);
    for image in [&vhdx, &raw] {
        let size = stat("%s", image);
        let allocated = stat("%b", image) * stat("%B", image);
        assert!(allocated < size, "{image:?} is not sparse");
        let json = info_json(image);
        assert_eq!(u(&json["file_size"]), size, "{image:?}");
        assert_eq!(u(&json["allocated_bytes"]), allocated, "{image:?}");
        let text = vmbdev(&["info", path_str(image)]);
        let text = String::from_utf8_lossy(&text.stdout);
        let line = |key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("no {key:?} line in {text}"))
                .to_owned()
        };
        assert!(
            line("file size").contains(&format!(" {size} bytes")),
            "{text}"
        );
        assert!(
            line("allocated").contains(&format!(" {allocated} bytes")),
            "{text}"
        );
    }
}
