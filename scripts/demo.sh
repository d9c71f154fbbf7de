#!/usr/bin/env bash
# The main job for now: boot vireo's sample guests on this machine's /dev/kvm, through the CLI.
set -uo pipefail
cd "$(dirname "$0")/.."
node bin/vireo.js host || exit 1
mapfile -t g < <(node dist/test/guests/build.js multiboot hello64 user64) || exit 1
module=$(mktemp); echo "a module handed over as --initrd" >"$module"
run() { echo; echo "\$ vireo run $*"; node bin/vireo.js run "$@"; echo "(exit status $?)"; }
run --kernel "${g[0]}" --initrd "$module" --cmdline "console=ttyS0 demo=1" --mem 64
run --kernel "${g[1]}"
run --kernel "${g[2]}" --boot-timer
rm -f "$module"
