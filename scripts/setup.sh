#!/usr/bin/env bash
# Installs what vireo needs on a fresh Debian machine (as root), then installs npm packages and
# builds. Idempotent: a second run installs nothing and only rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v gcc >/dev/null || need+=(gcc)
command -v ld >/dev/null || need+=(binutils)
[ -f /usr/include/linux/kvm.h ] || need+=(linux-libc-dev)
command -v python3 >/dev/null || need+=(python3)
command -v setpriv >/dev/null || need+=(util-linux)
command -v iasl >/dev/null || need+=(acpica-tools)
command -v stdbuf >/dev/null || need+=(coreutils)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v go >/dev/null || need+=(golang-go)          # builds the guest agent (guest/agent/)
command -v passt >/dev/null || need+=(passt)            # user-mode networking (--net user)
command -v qemu-img >/dev/null || need+=(qemu-utils)    # checks vireo's qcow2 images
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing ${need[*]}; run as root or install them: apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

node -e 'const [M]=process.versions.node.split(".").map(Number); if (M < 20) { console.error(`setup: vireo needs Node >= 20, this is ${process.versions.node}`); process.exit(1) }'

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # Not `npm ci`: npm refuses a lock file that lacks optional per-platform packages (biome's darwin/win32
  # builds) when the registry mirror does not carry them. `npm install --no-save` installs the locked
  # versions and leaves the lock file as it is.
  npm install --no-save --no-audit --no-fund --loglevel=error
fi
npm run -s build
scripts/build-agent.sh   # the guest agent: dist/guest/vireo-agent
