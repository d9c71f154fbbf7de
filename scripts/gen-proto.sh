#!/usr/bin/env bash
# Regenerates src/agent/gen/ (the guest agent's Connect-RPC messages and services, TypeScript) from the
# envd protocol in spec/envd/ with protoc (Debian's protobuf-compiler) and @bufbuild/protoc-gen-es.
# The output is committed (it is source the build compiles); `npm run gen:proto` after changing a .proto.
set -euo pipefail
cd "$(dirname "$0")/.."
out=src/agent/gen
rm -f "$out"/*_pb.ts
mkdir -p "$out"
protoc --plugin=protoc-gen-es=node_modules/.bin/protoc-gen-es \
  --es_out="$out" --es_opt=target=ts,import_extension=js \
  -I spec/envd spec/envd/process.proto spec/envd/filesystem.proto
for f in "$out"/*_pb.ts; do
  { printf '// Generated from spec/envd/%s by `npm run gen:proto` (scripts/gen-proto.sh): do not edit by hand.\n' \
      "$(basename "$f" _pb.ts).proto"; cat "$f"; } >"$f.tmp"
  mv "$f.tmp" "$f"
done
