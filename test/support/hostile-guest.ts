/**
 * The rig for the seeded hostile guest (test/guests/hostile-guest.c): every virtio device `vireo run`
 * attaches natively (a read-only virtio-blk on an image of known content, virtio-net on passt when
 * passt is installed, virtio-rng, virtio-console, virtio-vsock with a host listener, virtio-balloon with
 * its statistics queue, a read-only virtio-fs share), the command line, and the judgement of one run:
 * what the guest printed, what vireo printed, and whether the files outside the guest stayed as they
 * were. Used by test/hostile-guest-seeded.test.ts (a fixed seed) and the fuzz target (random seeds).
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestPath } from '../guests/build.js';
import { type RunResult, vireoBin } from './vireo.js';

/** Byte i of sector s of the image: what the guest checks its read against (bit 7 set: as an address, never RAM). */
export const blkPattern = (sector: number, i: number): number => 0x80 | ((sector * 13 + i * 7) & 0x7f);
const SECTORS = 2048;

export const passtInstalled = (): boolean =>
  spawnSync('sh', ['-c', `command -v "${process.env.VIREO_PASST || 'passt'}"`]).status === 0;

export interface HostileRig {
  dir: string;
  image: string;
  share: string;
  /** Whether the VM gets virtio-net (passt is installed). */
  net: boolean;
  /** The devices the guest should find, in slot order (its "devices=" line). */
  devices: string[];
  /**
   * One `vireo run` of the guest (VIREO_VERBOSE=1); stdout is what the guest wrote to COM1 and the
   * virtio-console, which go to a file: a pipe whose reader falls 50 ms behind loses serial output by
   * design (console-io.ts), and a lost verdict line would look like a failed device.
   */
  run(seed: number, rounds: number, timeoutMs: number): Promise<RunResult>;
  /** What is wrong with one run (empty: nothing). */
  judge(r: RunResult): string[];
  close(): void;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function shareDigest(dir: string): string {
  const h = createHash('sha256');
  for (const name of readdirSync(dir).sort())
    h.update(name)
      .update('\0')
      .update(readFileSync(join(dir, name)));
  return h.digest('hex');
}

/** Parses `vireo: device counters {...}` (VIREO_VERBOSE=1). */
export function deviceCounters(stderr: string): Record<string, Record<string, number>> | undefined {
  const m = /^vireo: device counters (\{.*\})$/m.exec(stderr);
  return m ? (JSON.parse(m[1] as string) as Record<string, Record<string, number>>) : undefined;
}

/** The verdict lines: device → [verdict, detail]. */
export function verdicts(stdout: string): Map<string, [string, string]> {
  const out = new Map<string, [string, string]>();
  for (const m of stdout.matchAll(/^verdict (\S+) (\S+) ?(.*)$/gm))
    out.set(m[1] as string, [m[2] as string, m[3] ?? '']);
  return out;
}

export async function hostileRig(opts: { net?: boolean } = {}): Promise<HostileRig> {
  const dir = mkdtempSync(join(tmpdir(), 'vireo-hostile-'));
  const image = join(dir, 'disk.img');
  const img = Buffer.alloc(SECTORS * 512);
  for (let s = 0; s < SECTORS; s++) for (let i = 0; i < 512; i++) img[s * 512 + i] = blkPattern(s, i);
  writeFileSync(image, img);
  const imageSha = sha(img);
  const share = join(dir, 'share');
  mkdirSync(share);
  writeFileSync(join(share, 'a.txt'), 'not yours to change\n');
  writeFileSync(join(share, 'b.bin'), Buffer.alloc(4096, 0x5a));
  const shareSha = shareDigest(share);
  // The host side of vsock: guest connections to port 5000 land here (the guest's request gets a
  // RESPONSE; a full backlog or another port gets a RST, which is an answer too).
  const uds = join(dir, 'v.sock');
  const listener: Server = createServer((s) => {
    s.on('error', () => {});
    s.resume();
  });
  await new Promise<void>((resolve) => listener.listen(`${uds}_5000`, resolve));
  const net = opts.net ?? passtInstalled();
  const devices = ['blk', ...(net ? ['net'] : []), 'rng', 'console', 'vsock', 'balloon', 'fs'];
  const kernel = guestPath('hostile-guest');
  let runs = 0;
  const args = (seed: number, rounds: number, serial: string): string[] => [
    'run',
    '--kernel',
    kernel,
    '--mem',
    '128',
    '--serial',
    `file:${serial}`,
    '--drive',
    `path=${image},ro`,
    ...(net ? ['--net', 'user'] : []),
    '--rng',
    '--virtio-console',
    '--vsock',
    `cid=3,uds=${uds}`,
    '--balloon',
    'amount=0,stats=1',
    '--share',
    `${share},tag=hg,ro`,
    '--cmdline',
    `seed=${seed} rounds=${rounds}`,
  ];
  return {
    dir,
    image,
    share,
    net,
    devices,
    async run(seed, rounds, timeoutMs) {
      const serial = join(dir, `serial-${runs++}.txt`);
      const r = await runVireoAsync(args(seed, rounds, serial), { VIREO_VERBOSE: '1' }, timeoutMs);
      let out = '';
      try {
        out = readFileSync(serial, 'latin1');
        rmSync(serial);
      } catch {
        // no output file: vireo did not get as far as the VM
      }
      return { ...r, stdout: out + r.stdout };
    },
    judge(r) {
      const bad: string[] = [];
      const vcpu = /^vireo: vCPU \d+:.*$/m.exec(r.stderr);
      if (vcpu) bad.push(`a vCPU error ended the VM: ${vcpu[0]}`);
      if (r.signal !== null) bad.push(`vireo was killed by ${r.signal}`);
      if (r.status !== 0x63) bad.push(`exit status ${r.status}, not 0x63 (the guest's "done")`);
      const found = /devices=\d+ ([a-z ]+)$/m.exec(r.stdout)?.[1]?.split(' ');
      if (found?.join(' ') !== devices.join(' ')) bad.push(`the guest found devices ${found?.join(' ')}`);
      const v = verdicts(r.stdout);
      for (const d of [...devices, 'legacy']) {
        const got = v.get(d);
        if (got?.[0] !== 'ok') bad.push(`verdict ${d}: ${got ? got.join(' ') : 'none'}`);
      }
      if (sha(readFileSync(image)) !== imageSha) bad.push('the read-only disk image changed');
      if (shareDigest(share) !== shareSha) bad.push('the read-only share changed');
      return bad;
    },
    close() {
      listener.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Runs vireo without blocking the event loop (the vsock listener keeps accepting). */
export function runVireoAsync(args: string[], env: Record<string, string>, timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [vireoBin, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('latin1').on('data', (c: string) => {
      stdout += c;
    });
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      stderr += c;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}
