#!/usr/bin/env bash
# Generates the seed corpora the fuzz targets start from, into
# fuzz/seeds/<target>/ (not committed: images are rebuilt from the real
# tools each time), or fs_mount_read's into the empty or missing directory
# given as the argument (the corpus replay test makes its own). Needs
# mkfs.vfat + mtools, mke2fs, mkntfs, sgdisk and sfdisk (the same tools
# the test suite needs).
#
#   fuzz/gen-seeds.sh              # fuzz/seeds/fs_mount_read/
#   fuzz/gen-seeds.sh DIR          # DIR/
#
# fs_mount_read: small FAT12, FAT16, ext4 and NTFS volumes holding a few
# files (EFI\BOOT\BOOTX64.EFI, a nested directory, an empty file, a file
# spanning several clusters), bare and behind MBR and GPT tables. They are
# the images the target's inputs patch (it loads them at start), not inputs.
# The other targets build their inputs with `arbitrary` and start from an
# empty corpus; vhdx_open_read and vhd_open_read lay out their base images
# themselves.
set -euo pipefail
shopt -s inherit_errexit
out=
if [ $# -gt 0 ]; then
  out=$(realpath -m -- "$1")
  mkdir -p "$out"
  [ -z "$(ls -A "$out")" ] || { echo "gen-seeds.sh: $out is not empty" >&2; exit 1; }
fi
cd "$(dirname "$0")"

for tool in mkfs.vfat mcopy mmd mke2fs mkntfs sgdisk sfdisk; do
  command -v "$tool" >/dev/null || { echo "gen-seeds.sh: $tool is required" >&2; exit 1; }
done

if [ -z "$out" ]; then
  out=seeds/fs_mount_read
  rm -rf "$out"
  mkdir -p "$out"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The source tree.
src="$work/src"
mkdir -p "$src/EFI/BOOT" "$src/dir/sub"
head -c 5000 /dev/urandom >"$src/EFI/BOOT/BOOTX64.EFI"
printf 'hello from the seed image\n' >"$src/dir/sub/hello.txt"
: >"$src/empty.bin"
head -c 20000 /dev/urandom >"$src/dir/big.bin"
printf 'a long file name, to need LFN entries\n' >"$src/dir/A long file name.txt"

fat() { # bits kib name
  local img="$work/$3"
  truncate -s "$2K" "$img"
  mkfs.vfat -F "$1" -s 1 -n SEED "$img" >/dev/null
  mcopy -i "$img" -s "$src/EFI" "$src/dir" "$src/empty.bin" ::/
  echo "$img"
}

ext4() { # kib name
  local img="$work/$2"
  mke2fs -q -F -t ext4 -b 1024 -N 64 -d "$src" "$img" "$1K" >/dev/null
  echo "$img"
}

ntfs() { # kib name
  local img="$work/$2"
  truncate -s "$1K" "$img"
  mkntfs -F -Q -q -s 512 -c 512 "$img" >/dev/null
  if command -v wimcapture >/dev/null && command -v wimapply >/dev/null; then
    wimcapture "$src" "$work/src.wim" --no-acls >/dev/null
    wimapply "$work/src.wim" 1 "$img" >/dev/null
  fi
  echo "$img"
}

mbr() { # fs-image type name ; partition at sector 64
  local fsimg=$1 disk="$out/$3" sectors
  sectors=$(( ($(stat -c %s "$fsimg") + 511) / 512 ))
  truncate -s $(( (64 + sectors) * 512 )) "$disk"
  printf 'label: dos\n64,%s,%s\n' "$sectors" "$2" | sfdisk --no-reread -q "$disk" >/dev/null
  dd if="$fsimg" of="$disk" bs=512 seek=64 conv=notrunc status=none
}

gpt() { # fs-image typecode name ; partition at sector 64, 33-sector backup
  local fsimg=$1 disk="$out/$3" sectors
  sectors=$(( ($(stat -c %s "$fsimg") + 511) / 512 ))
  truncate -s $(( (64 + sectors + 40) * 512 )) "$disk"
  sgdisk -a 8 --new=1:64:$((64 + sectors - 1)) --typecode=1:"$2" \
    --change-name=1:seed "$disk" >/dev/null
  dd if="$fsimg" of="$disk" bs=512 seek=64 conv=notrunc status=none
}

fat12=$(fat 12 256 fat12.img)
fat16=$(fat 16 2200 fat16.img)
ext=$(ext4 1024 ext4.img)
nt=$(ntfs 1536 ntfs.img)

cp "$fat12" "$out/fat12.img"
cp "$fat16" "$out/fat16.img"
cp "$ext" "$out/ext4.img"
cp "$nt" "$out/ntfs.img"
mbr "$fat12" 0x0c mbr-fat12.img
gpt "$fat12" ef00 gpt-fat12.img
mbr "$ext" 0x83 mbr-ext4.img
gpt "$nt" 0700 gpt-ntfs.img

ls -l "$out"
