//! A file in a format `vmbdev` does not read is refused by name, with a
//! conversion hint, by every command: qcow2, QED, VDI, VMDK (sparse and
//! descriptor) made by `qemu-img create`, and an ISO 9660 image made by
//! genisoimage. VHD (dynamic and fixed), found by its footer cookie, is
//! read. Each test first checks the signature the detection relies on in
//! the file the tool made. `--format raw` reads any file as a raw disk;
//! `--format vhdx` and `--format vhd` insist on their format.

mod common;

use std::path::Path;

use common::{ext4_vhdx, names, stderr, vmbdev_in};
use vmbdev_tests::images::run;

fn bytes_at(path: &Path, offset: usize, len: usize) -> Vec<u8> {
    std::fs::read(path).unwrap()[offset..offset + len].to_vec()
}

fn bytes_from_end(path: &Path, back: usize, len: usize) -> Vec<u8> {
    let all = std::fs::read(path).unwrap();
    all[all.len() - back..all.len() - back + len].to_vec()
}

/// Every command refuses `name` in `dir` with `message`, and leaves no
/// output behind.
fn assert_refused_everywhere(dir: &Path, name: &str, message: &str) {
    let before = names(dir);
    for args in [
        &["info", name][..],
        &["info", "--json", name],
        &["ls", name],
        &["cat", name, "/a.txt"],
        &["dump", name, "-o", "out.raw"],
        &["dump", "--direct", name, "-o", "out.raw"],
    ] {
        let out = vmbdev_in(dir, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&out), format!("vmbdev: {message}\n"), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert_eq!(names(dir), before);
}

fn qemu_create(dir: &Path, format: &str, options: &[&str], name: &str) {
    run(std::process::Command::new("qemu-img")
        .current_dir(dir)
        .args(["create", "-f", format])
        .args(options)
        .args([name, "4M"]));
}

#[test]
fn qemu_formats_are_refused_with_a_conversion_hint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: [(&str, &[&str], &str, &str); 5] = [
        ("qcow2", &[], "x.qcow2", "a qcow2 image"),
        ("qed", &[], "x.qed", "a QED image"),
        ("vdi", &[], "x.vdi", "a VDI (VirtualBox) image"),
        ("vmdk", &[], "x.vmdk", "a VMDK (VMware) image"),
        (
            "vmdk",
            &["-o", "subformat=monolithicFlat"],
            "desc.vmdk",
            "a VMDK (VMware) image",
        ),
    ];
    for (format, options, name, what) in cases {
        qemu_create(d, format, options, name);
        let path = d.join(name);
        match (format, options.is_empty()) {
            ("qcow2", _) => assert_eq!(bytes_at(&path, 0, 4), b"QFI\xfb"),
            ("qed", _) => assert_eq!(bytes_at(&path, 0, 4), b"QED\0"),
            ("vdi", _) => assert_eq!(bytes_at(&path, 0x40, 4), 0xbeda_107f_u32.to_le_bytes()),
            ("vmdk", true) => assert_eq!(bytes_at(&path, 0, 4), b"KDMV"),
            ("vmdk", false) => assert_eq!(bytes_at(&path, 0, 21), b"# Disk DescriptorFile"),
            _ => unreachable!(),
        }
        let vhdx = Path::new(name).with_extension("vhdx");
        let message = format!(
            "{name}: {what}; convert it with qemu-img convert -O vhdx {name} {}",
            vhdx.display()
        );
        assert_refused_everywhere(d, name, &message);
        // The hint works.
        run(std::process::Command::new("qemu-img")
            .current_dir(d)
            .args(["convert", "-O", "vhdx", name])
            .arg(&vhdx));
        let out = vmbdev_in(d, &["info", "--json", vhdx.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        std::fs::remove_file(d.join(&vhdx)).unwrap();
    }
}

#[test]
fn an_iso_image_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("cd")).unwrap();
    std::fs::write(d.join("cd/a.txt"), b"a").unwrap();
    run(std::process::Command::new("genisoimage")
        .current_dir(d)
        .args(["-quiet", "-o", "x.iso", "cd"]));
    std::fs::remove_dir_all(d.join("cd")).unwrap();
    assert_eq!(bytes_at(&d.join("x.iso"), 0x8001, 5), b"CD001");
    assert_refused_everywhere(
        d,
        "x.iso",
        "x.iso: an ISO 9660 image, not a disk image; vmbdev reads VHDX, VHD and raw disks (--format raw reads it as raw bytes)",
    );
}

#[test]
fn format_option_forces_raw_or_vhdx() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qemu_create(d, "qcow2", &[], "x.qcow2");
    let out = vmbdev_in(d, &["info", "--json", "--format", "raw", "x.qcow2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "raw");
    // Whole 512-byte sectors of the file.
    let whole = std::fs::metadata(d.join("x.qcow2")).unwrap().len() / 512 * 512;
    assert_eq!(v["virtual_size"], whole);
    let out = vmbdev_in(
        d,
        &[
            "dump", "--direct", "--format", "raw", "x.qcow2", "-o", "x.raw",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(d.join("x.raw")).unwrap(),
        std::fs::read(d.join("x.qcow2")).unwrap()[..whole as usize]
    );
    // --format vhdx on something else is the VHDX reader's refusal.
    let out = vmbdev_in(d, &["info", "--format", "vhdx", "x.raw"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("vmbdev: x.raw: file is {whole} bytes, smaller than the 1 MiB VHDX header area\n")
    );
    // A VHDX is read as such either way.
    ext4_vhdx(d, &[("a.txt", b"a")]);
    let out = vmbdev_in(d, &["cat", "--format", "vhdx", "IMG.vhdx", "/a.txt"]);
    assert_eq!(out.stdout, b"a", "{}", stderr(&out));
}

#[test]
fn vhd_is_read_and_described() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qemu_create(d, "vpc", &[], "x.vhd");
    qemu_create(
        d,
        "vpc",
        &["-o", "subformat=fixed,force_size=on"],
        "fixed.vhd",
    );
    assert_eq!(bytes_at(&d.join("x.vhd"), 0, 8), b"conectix");
    assert_eq!(bytes_from_end(&d.join("x.vhd"), 512, 8), b"conectix");
    assert_ne!(bytes_at(&d.join("fixed.vhd"), 0, 8), b"conectix");
    assert_eq!(bytes_from_end(&d.join("fixed.vhd"), 512, 8), b"conectix");
    let out = vmbdev_in(d, &["info", "--json", "x.vhd"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "vhd");
    assert_eq!(v["vhd"]["disk_type"], "dynamic");
    assert_eq!(v["vhd"]["creator_app"], "qemu");
    assert_eq!(v["block_size"], 2 << 20);
    // Without force_size qemu rounds 4 MiB (8192 sectors) up to 121 x 4 x 17.
    assert_eq!(v["virtual_size"], 121 * 4 * 17 * 512);
    assert_eq!(
        (
            &v["vhd"]["cylinders"],
            &v["vhd"]["heads"],
            &v["vhd"]["sectors_per_track"]
        ),
        (
            &serde_json::json!(121),
            &serde_json::json!(4),
            &serde_json::json!(17)
        )
    );
    assert_eq!(v["vhd"]["allocated_blocks"], 0);
    let out = vmbdev_in(d, &["info", "fixed.vhd"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "format                VHD\n",
        "virtual size          4194304 bytes (4.0 MiB)\n",
        "VHD type              fixed\n",
        "creator               \"qem2\" 5.3 on \"Wi2k\"\n",
        "parent chain          none\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    // --format vhd insists on a VHD.
    std::fs::write(d.join("x.raw"), vec![0u8; 4096]).unwrap();
    let out = vmbdev_in(d, &["info", "--format", "vhd", "x.raw"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("vmbdev: x.raw: VHD: footer at offset 0xe00: cookie"),
        "{}",
        stderr(&out)
    );
}
