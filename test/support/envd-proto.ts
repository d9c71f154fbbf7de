/**
 * envd's message types as the pinned e2b SDK has them: its bundle embeds the two file descriptors
 * (process.proto, filesystem.proto) that @bufbuild/protobuf builds its types from; they are read from
 * there, so that tests encode exactly what the SDK's protobuf says, in binary or JSON.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { DescFile, DescMessage } from '@bufbuild/protobuf';
import { fileDesc } from '@bufbuild/protobuf/codegenv2';
import { file_google_protobuf_timestamp } from '@bufbuild/protobuf/wkt';

const require = createRequire(import.meta.url);
const bundle = readFileSync(require.resolve('e2b').replace(/index\.js$/, 'index.mjs'), 'utf8');
const files = new Map<string, DescFile>();
for (const m of bundle.matchAll(/fileDesc\("([A-Za-z0-9+/=]+)"/g)) {
  const f = fileDesc(m[1]!, [file_google_protobuf_timestamp]);
  files.set(f.proto.package ?? '', f);
}

/** A message type by its full name, e.g. process.StartRequest. */
export function envdMessage(typeName: string): DescMessage {
  const pkg = typeName.split('.')[0]!;
  const f = files.get(pkg);
  if (!f) throw new Error(`the e2b bundle has no ${pkg} descriptor`);
  const find = (msgs: readonly DescMessage[]): DescMessage | undefined => {
    for (const m of msgs) {
      if (m.typeName === typeName) return m;
      const n = find(m.nestedMessages);
      if (n) return n;
    }
    return undefined;
  };
  const m = find(f.messages);
  if (!m) throw new Error(`no message ${typeName} in the e2b bundle`);
  return m;
}
