# shellcheck shell=bash
# Sourced by qemu-run.sh, tests/run.sh and tests/bench.sh: makes sure the machine
# can build and run the hypervisor, then exports the toolchain choice.
#
# Two toolchains are supported, picked in this order and named in the output:
#   (a) an online rustup nightly with `rust-src` and `llvm-tools` (what
#       rust-toolchain.toml asks for);
#   (b) Debian's offline Rust (packages rustc-web cargo-web rust-web-src
#       rust-web-llvm lld-22 rust-web-clippy rustfmt-web), selected with
#       RUSTUP_TOOLCHAIN=/usr, with
#       RUSTC_BOOTSTRAP=1 for the unstable `-Zbuild-std`.
# Exports: RUSTUP_TOOLCHAIN (b only), RUSTC_BOOTSTRAP, HV_BUILD_STD (1 when the
# kernel needs `-Zbuild-std`), HV_TOOLCHAIN (a name for the logs).
#
# Every step is idempotent. When run as root on Debian, missing packages are
# installed (HV_NO_INSTALL=1 turns that off); otherwise a missing piece stops with
# a message that says what to install.

hv_step() { printf '==> %s\n' "$*" >&2; }
hv_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages each part needs. Emulator packages are only needed to run.
HV_PKGS_TOOLCHAIN="rustc-web cargo-web rust-web-src rust-web-llvm lld-22 llvm-22 rust-web-clippy rustfmt-web"
HV_PKGS_QEMU="qemu-system-x86 ovmf"
HV_PKGS_BOCHS="bochs bochsbios vgabios bochs-sdl"
# The Linux guest's test assets (tests/linux-assets.sh) are packed with cpio.
HV_PKGS_LINUX_TEST="cpio"

# hv_missing_pkgs PKG...: prints the packages of the list that dpkg lacks.
hv_missing_pkgs() {
    local p missing=""
    command -v dpkg-query >/dev/null 2>&1 || return 0
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing="$missing $p"
    done
    printf '%s' "${missing# }"
}

# hv_ensure_pkgs WHAT PKG...: installs missing Debian packages (root) or explains.
hv_ensure_pkgs() {
    local what=$1; shift
    local missing
    missing=$(hv_missing_pkgs "$@")
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${HV_NO_INSTALL:-0}" != 1 ]; then
        hv_step "installing $what: $missing (apt-get, about a minute)"
        if [ ! -f /tmp/.hv-apt-updated ]; then
            apt-get update -qq >&2 || hv_die "apt-get update failed"
            touch /tmp/.hv-apt-updated
        fi
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null \
            || hv_die "apt-get install $missing failed"
    else
        hv_die "$what is missing; install the Debian packages: $missing"
    fi
}

hv_rustup_nightly_ok() {
    command -v rustup >/dev/null 2>&1 || return 1
    local comps
    comps=$(cd "$HV_ROOT" && rustup component list --installed 2>/dev/null) || return 1
    printf '%s\n' "$comps" | grep -q '^rust-src' || return 1
    printf '%s\n' "$comps" | grep -q '^llvm-tools' || return 1
    (cd "$HV_ROOT" && rustc --version 2>/dev/null | grep -q nightly)
}

hv_setup_toolchain() {
    if [ -z "${HV_FORCE_DEBIAN_RUST:-}" ] && hv_rustup_nightly_ok; then
        export HV_TOOLCHAIN="rustup nightly ($(cd "$HV_ROOT" && rustc --version))"
        unset RUSTUP_TOOLCHAIN
        export RUSTC_BOOTSTRAP=1
        if (cd "$HV_ROOT" && rustup target list --installed 2>/dev/null | grep -q '^x86_64-unknown-none'); then
            export HV_BUILD_STD=0
        else
            export HV_BUILD_STD=1
        fi
    else
        hv_ensure_pkgs "the offline Rust toolchain" $HV_PKGS_TOOLCHAIN
        [ -d /usr/lib/rustlib/src/rust/library ] \
            || hv_die "Debian's rust-web-src is installed but /usr/lib/rustlib/src/rust/library is missing"
        export RUSTUP_TOOLCHAIN=/usr RUSTC_BOOTSTRAP=1 HV_BUILD_STD=1
        # Prefer Debian's cargo/rustc over rustup proxies, so nested cargo calls
        # (the bootloader's build script runs `cargo install`) agree.
        export PATH="/usr/bin:$PATH"
        export HV_TOOLCHAIN="Debian offline ($(/usr/bin/rustc --version))"
        # The bootloader's BIOS stages call llvm-objcopy/objdump from the sysroot.
        local bin
        bin="$(/usr/bin/rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin"
        local tool
        for tool in objcopy objdump; do
            if [ ! -e "$bin/llvm-$tool" ]; then
                [ -x "/usr/bin/llvm-$tool-22" ] || hv_die "/usr/bin/llvm-$tool-22 missing: install llvm-22"
                mkdir -p "$bin" && ln -sf "/usr/bin/llvm-$tool-22" "$bin/llvm-$tool" \
                    || hv_die "cannot link llvm-$tool into $bin (run once as root)"
            fi
        done
    fi
    hv_step "toolchain: $HV_TOOLCHAIN (build-std: $HV_BUILD_STD)"
}

HV_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export HV_ROOT
