#!/usr/bin/env bash
# Fetches the Linux guest's test assets into target/linux/ (never committed):
#
#   target/linux/vmlinuz             Debian's cloud kernel (a bzImage), copied
#                                    from the versioned linux-image-*-cloud-amd64
#                                    package that linux-image-cloud-amd64 names
#   target/linux/initramfs.cpio.gz   busybox-static as /bin/busybox, /bin/sh,
#                                    /dev/console (c 5 1), /dev/ttyS0 (c 4 64),
#                                    /dev/null (c 1 3), and an /init that mounts
#                                    proc and sys, prints HVLINUX-INIT-OK and runs
#                                    a shell on the console
#   target/linux/VERSION             the kernel package and busybox versions
#
# Needs root (apt-get update, device nodes made with mknod), Debian's archive
# (apt-get download), dpkg-deb, cpio and gzip; cpio is installed when missing
# (boot/toolchain.sh, HV_PKGS_LINUX_TEST). Takes about a minute the first time
# (about 20 MB to download); afterwards it only checks that the files exist and
# are newer than this script. `--force` builds them again. Any failure stops it
# with a message and a non-zero exit status.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../boot/toolchain.sh"

force=0
for arg in "$@"; do
    case $arg in
        --force) force=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) hv_die "linux-assets.sh: unknown argument '$arg' (takes --force, --help)" ;;
    esac
done

script="$HV_ROOT/tests/linux-assets.sh"
out="$HV_ROOT/target/linux"
vmlinuz="$out/vmlinuz"
initramfs="$out/initramfs.cpio.gz"
started=$SECONDS

if [ "$force" = 0 ] && [ -s "$vmlinuz" ] && [ -s "$initramfs" ] \
    && [ "$vmlinuz" -nt "$script" ] && [ "$initramfs" -nt "$script" ]; then
    hv_step "Linux test assets: up to date in $out ($(cat "$out/VERSION" 2>/dev/null || echo 'version unknown'))"
    exit 0
fi

hv_step "Linux test assets: building $vmlinuz and $initramfs"
[ "$(id -u)" = 0 ] \
    || hv_die "tests/linux-assets.sh must run as root the first time (apt-get update, mknod for /dev/console and /dev/ttyS0 in the initramfs); run it once with sudo"
for tool in apt-get apt-cache dpkg dpkg-deb gzip mknod; do
    command -v "$tool" >/dev/null 2>&1 || hv_die "$tool is missing: the Linux test assets are fetched from Debian's archive with apt-get, unpacked with dpkg-deb"
done
hv_ensure_pkgs "cpio (Linux test assets)" $HV_PKGS_LINUX_TEST
command -v cpio >/dev/null 2>&1 || hv_die "cpio is missing after installing it"

# The versioned kernel package the metapackage depends on, e.g.
# linux-image-6.1.0-57-cloud-amd64 (apt-get update first when apt does not
# know the metapackage, or knows no candidate for it).
kernel_package() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: <\{0,1\}\(linux-image-[0-9][^ >]*-cloud-amd64\)>\{0,1\}$/\1/p' \
        | head -n 1
}
candidate() { apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | head -n 1; }
pkg=$(kernel_package)
if [ -z "$pkg" ] || [ -z "$(candidate "$pkg")" ] || [ "$(candidate "$pkg")" = "(none)" ] \
    || [ -z "$(candidate busybox-static)" ] || [ "$(candidate busybox-static)" = "(none)" ]; then
    hv_step "apt-get update (apt knows no candidate for the kernel or busybox-static yet)"
    apt-get update -qq >&2 || hv_die "apt-get update failed (no network to Debian's archive?)"
    touch /tmp/.hv-apt-updated
    pkg=$(kernel_package)
fi
[ -n "$pkg" ] || hv_die "apt-cache depends linux-image-cloud-amd64 names no linux-image-*-cloud-amd64 package (is this Debian amd64 with the main component?)"
for p in "$pkg" busybox-static; do
    c=$(candidate "$p")
    [ -n "$c" ] && [ "$c" != "(none)" ] || hv_die "apt has no candidate version of $p"
done
kernel_version=$(candidate "$pkg")
busybox_version=$(candidate busybox-static)
hv_step "kernel package $pkg $kernel_version, busybox-static $busybox_version"

mkdir -p "$out"
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Download (the sandbox user _apt cannot write into a root-owned mktemp
# folder; downloading as root avoids apt's warning about it).
hv_step "apt-get download $pkg busybox-static (about 20 MB)"
(cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" busybox-static >&2) \
    || hv_die "apt-get download $pkg busybox-static failed (no network to Debian's archive?)"
kernel_deb=$(find "$work" -maxdepth 1 -name "${pkg}_*.deb" | head -n 1)
busybox_deb=$(find "$work" -maxdepth 1 -name "busybox-static_*.deb" | head -n 1)
[ -n "$kernel_deb" ] || hv_die "apt-get download left no ${pkg}_*.deb in $work"
[ -n "$busybox_deb" ] || hv_die "apt-get download left no busybox-static_*.deb in $work"

hv_step "unpacking with dpkg -x"
dpkg -x "$kernel_deb" "$work/kernel" || hv_die "dpkg -x $kernel_deb failed"
dpkg -x "$busybox_deb" "$work/busybox" || hv_die "dpkg -x $busybox_deb failed"
bzimage=$(find "$work/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
[ -n "$bzimage" ] || hv_die "$pkg holds no /boot/vmlinuz-*"
[ "$(dd if="$bzimage" bs=1 skip=514 count=4 2>/dev/null)" = HdrS ] \
    || hv_die "$bzimage is not a bzImage (no \"HdrS\" at 0x202)"
busybox="$work/busybox/bin/busybox"
[ -x "$busybox" ] || hv_die "busybox-static holds no executable /bin/busybox"

# The initramfs, staged in a folder of its own.
hv_step "making the initramfs (busybox, /dev/console, /dev/ttyS0, /init)"
root="$work/initramfs"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,etc}
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 660 "$root/dev/ttyS0" c 4 64
mknod -m 666 "$root/dev/null" c 1 3
cat >"$root/init" <<'EOF'
#!/bin/sh
# The test initramfs' init (tests/linux-assets.sh): mounts proc and sys, says
# it runs, and gives the console a shell (started again when it exits).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=vt100
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
/bin/busybox --install -s
echo HVLINUX-INIT-OK
# Test actions chosen on the kernel command line (tests/tests/linux.rs):
# hvtest=reboot reboots at once (reboot=t makes that a triple fault),
# hvtest=crash crashes the kernel through sysrq (panic=N reboots after N s),
# hvtest=smp counts the processors and runs a command pinned to each, which
# prints the CPU it ran on (field 39 of /proc/self/stat).
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        hvtest=reboot) echo HVLINUX-REBOOTING; reboot -f ;;
        hvtest=crash) echo HVLINUX-CRASHING; echo c >/proc/sysrq-trigger ;;
        hvtest=smp)
            n=$(grep -c ^processor /proc/cpuinfo)
            echo "HVLINUX-CPUS $n"
            for c in $(seq 0 $((n - 1))); do
                taskset -c "$c" awk '{print "HVLINUX-RAN-ON-CPU " $39}' /proc/self/stat
            done ;;
    esac
done
while true; do
    setsid cttyhack sh
    echo "HVLINUX-SHELL-EXIT $?"
done
EOF
chmod 755 "$root/init"
cpio_flags=(-o -H newc --owner=0:0 --quiet)
cpio --help 2>/dev/null | grep -q -- --reproducible && cpio_flags+=(--reproducible)
(cd "$root" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort | cpio "${cpio_flags[@]}") \
    | gzip -9 -n >"$work/initramfs.cpio.gz" \
    || hv_die "cpio | gzip failed"
gzip -t "$work/initramfs.cpio.gz" || hv_die "the initramfs just written does not decompress"
listing=$(gzip -dc "$work/initramfs.cpio.gz" | cpio -t --quiet 2>/dev/null)
for f in init bin/busybox bin/sh dev/console dev/ttyS0; do
    printf '%s\n' "$listing" | grep -qx "$f" || hv_die "the initramfs lacks /$f"
done

# Into place: each file replaced whole (a rename), the kernel first.
cp "$bzimage" "$work/vmlinuz"
printf '%s %s, busybox-static %s\n' "$pkg" "$kernel_version" "$busybox_version" >"$work/VERSION"
mv -f "$work/VERSION" "$out/VERSION"
mv -f "$work/vmlinuz" "$vmlinuz"
mv -f "$work/initramfs.cpio.gz" "$initramfs"
hv_step "Linux test assets ready in $((SECONDS - started)) s: vmlinuz $(stat -c %s "$vmlinuz") bytes, initramfs.cpio.gz $(stat -c %s "$initramfs") bytes ($(cat "$out/VERSION"))"
