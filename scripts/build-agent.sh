#!/usr/bin/env bash
# Builds the guest agent (guest/agent/, Go standard library only) as a static binary:
#   scripts/build-agent.sh [OUTPUT]      (default dist/guest/vireo-agent)
# The Go caches live under dist/ so that the build needs no $HOME and no network.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist/guest/vireo-agent}"
command -v go >/dev/null || { echo "build-agent: go is missing (apt-get install golang-go)" >&2; exit 1; }
mkdir -p "$(dirname "$out")" dist/.go/cache dist/.go/path
root="$PWD"
case "$out" in /*) abs="$out" ;; *) abs="$root/$out" ;; esac
cd guest/agent
env -u GOFLAGS GOCACHE="$root/dist/.go/cache" GOPATH="$root/dist/.go/path" GOPROXY=off GOTOOLCHAIN=local \
  CGO_ENABLED=0 GOOS=linux GOARCH=amd64 \
  go build -trimpath -ldflags '-s -w' -o "$abs.tmp" .
mv "$abs.tmp" "$abs"
