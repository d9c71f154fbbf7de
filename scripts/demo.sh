#!/usr/bin/env bash
# The main job: boot vireo's default Linux guest (Debian's stock cloud kernel with the kit's busybox
# initramfs, 2 vCPUs) to its userland banner and power it off; then vireo's small sample guests.
# On a PVM host (no VT-x/AMD-V) vireo says so and boots Linux in the nested lane.
set -uo pipefail
cd "$(dirname "$0")/.."
node bin/vireo.js host | sed -n '1,5p;$p'
echo
echo '$ vireo run --cpus 2 --append vireo.exit=poweroff'
node bin/vireo.js run --cpus 2 --append vireo.exit=poweroff
echo "(exit status $?)"
mapfile -t g < <(node dist/test/guests/build.js multiboot hello64 user64) || exit 1
module=$(mktemp); echo "a module handed over as --initrd" >"$module"
run() { echo; echo "\$ vireo run $*"; node bin/vireo.js run "$@"; echo "(exit status $?)"; }
run --kernel "${g[0]}" --initrd "$module" --cmdline "console=ttyS0 demo=1" --mem 64
run --kernel "${g[1]}"
run --kernel "${g[2]}" --boot-timer
rm -f "$module"
