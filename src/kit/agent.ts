/**
 * The guest agent (guest/agent/, Go) as the kit and the root file system carry it: where its static
 * binary is (dist/guest/vireo-agent, built by scripts/build-agent.sh, rebuilt here when a source is
 * newer), and the kit's initramfs with the agent laid over it as a second cpio archive (Linux unpacks
 * both, the later one's files replacing the earlier's), so that a changed agent needs no kernel
 * download and no new kit.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InitramfsBuilder } from './initramfs.js';
import { KitError } from './util.js';

/** envd's port, which e2b's SDK and vireo's host side connect to. */
export const AGENT_VSOCK_PORT = 49983;
/** Where the kit and the root file system put the agent. */
export const AGENT_GUEST_PATH = '/usr/bin/vireo-agent';
/** The agent's log in the kit guest. */
export const AGENT_KIT_LOG = '/run/vireo-agent.log';

/** The repository root (this file is dist/src/kit/agent.js once compiled). */
const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const sourceDir = join(repoRoot, 'guest', 'agent');

/** The agent binary: VIREO_AGENT if set, else dist/guest/vireo-agent, built first when missing or stale. */
export function agentBinary(): string {
  const override = process.env.VIREO_AGENT;
  if (override) {
    if (!existsSync(override)) throw new KitError(`VIREO_AGENT=${override}: no such file`);
    return override;
  }
  const bin = join(repoRoot, 'dist', 'guest', 'vireo-agent');
  const built = existsSync(bin) ? statSync(bin).mtimeMs : -1;
  let stale = built < 0;
  if (!stale && existsSync(sourceDir))
    for (const f of readdirSync(sourceDir))
      if ((f.endsWith('.go') || f === 'go.mod') && statSync(join(sourceDir, f)).mtimeMs > built) stale = true;
  if (!stale) return bin;
  const script = join(repoRoot, 'scripts', 'build-agent.sh');
  if (!existsSync(script)) throw new KitError(`the guest agent is not built (${bin}) and ${script} is missing`);
  try {
    execFileSync(script, [bin], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const why = (e as { stderr?: Buffer }).stderr?.toString().trim().split('\n').pop() ?? (e as Error).message;
    throw new KitError(`building the guest agent failed: ${why}`, { cause: e });
  }
  return bin;
}

/**
 * E2B's SDK starts every command as `/bin/bash -l -c CMD` (and a PTY as `/bin/bash -i -l`); the kit has
 * busybox's ash only, so /bin/bash there is ash under bash's name: POSIX shell, no bash extensions.
 */
export const KIT_BASH_PATH = '/bin/bash';
export const KIT_BASH_SHIM = `#!/bin/sh
# The kit has busybox ash, not bash: E2B's SDK runs /bin/bash -l -c CMD, which ash understands.
exec /bin/sh "$@"
`;

/**
 * `base` with a second archive appended that holds the agent and `init` (the kit's /init, which
 * starts it). Written next to `base`, named by a hash of all three; combinations unused for a day
 * are removed.
 */
export function initrdWithAgent(
  base: string,
  init: string,
  extra: readonly { path: string; data: Buffer }[] = [],
): string {
  const agent = readFileSync(agentBinary());
  const kit = readFileSync(base);
  if (kit.length % 4 !== 0) throw new KitError(`${base}: a cpio archive whose length is not a multiple of 4`);
  const img = new InitramfsBuilder()
    .file(AGENT_GUEST_PATH.slice(1), agent, 0o755)
    .file('init', init, 0o755)
    .file(KIT_BASH_PATH.slice(1), KIT_BASH_SHIM, 0o755);
  for (const f of extra) img.file(f.path, f.data, 0o644);
  const overlay = img.build();
  const hash = createHash('sha256').update(kit).update(overlay).digest('hex').slice(0, 16);
  const dir = dirname(base);
  const name = `initramfs-agent-${hash}.cpio`;
  const out = join(dir, name);
  if (existsSync(out)) {
    const now = new Date();
    utimesSync(out, now, now); // in use: not removed as old
    return out;
  }
  const tmp = `${out}.tmp-${process.pid}`;
  writeFileSync(tmp, Buffer.concat([kit, overlay]));
  renameSync(tmp, out);
  // Another checkout's agent may be booting from its combination right now: only old ones go.
  for (const f of readdirSync(dir)) {
    if (!f.startsWith('initramfs-agent-') || f === name) continue;
    const p = join(dir, f);
    if (Date.now() - (statSync(p, { throwIfNoEntry: false })?.mtimeMs ?? Date.now()) > 24 * 3600_000)
      rmSync(p, { force: true });
  }
  return out;
}

/** The agent's systemd unit in the root file system. */
export const AGENT_UNIT = `[Unit]
Description=vireo guest agent (envd's protocol on vsock port ${AGENT_VSOCK_PORT})
After=local-fs.target

[Service]
ExecStart=${AGENT_GUEST_PATH} --listen vsock:${AGENT_VSOCK_PORT} --set-clock
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
`;
