/**
 * Drives a guest through its serial console, as a person would: starts `vireo run` with the given
 * arguments, waits for text, types commands, and prints one JSON line with what happened. Used by
 * the Linux tests inside the nested lane (where nothing else can type into the guest).
 *
 * usage: node guest-session.js STEPS_JSON -- VIREO_RUN_ARGS...
 * STEPS_JSON: [{"expect": "text", "timeoutMs"?: n} | {"send": "text"}]
 * After the steps it waits for vireo to exit (the last step usually powers the guest off).
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { repoRoot } from './cc.js';

type Step = { expect: string; timeoutMs?: number } | { send: string };

const sep = process.argv.indexOf('--');
const steps = JSON.parse(process.argv[2] ?? '[]') as Step[];
const args = process.argv.slice(sep + 1);
const t0 = performance.now();
const child = spawn(process.execPath, [join(repoRoot, 'bin', 'vireo.js'), 'run', ...args], {
  stdio: ['pipe', 'pipe', 'pipe'],
});
let out = '';
let err = '';
const marks: Record<string, number> = {};
let wake: (() => void) | undefined;
// VIREO_SESSION_STREAM=1: copy the guest's output to stderr as it comes (to watch a long run).
const stream = process.env.VIREO_SESSION_STREAM === '1';
child.stdout.on('data', (b: Buffer) => {
  out += b.toString('latin1');
  if (stream) process.stderr.write(b);
  wake?.();
});
child.stderr.on('data', (b: Buffer) => {
  err += b.toString('latin1');
});
const exited = new Promise<number | null>((res) => child.on('close', (code) => res(code)));

let failed: string | undefined;
let from = 0;
for (const step of steps) {
  if ('send' in step) {
    child.stdin.write(step.send);
    continue;
  }
  const deadline = Date.now() + (step.timeoutMs ?? 600_000);
  while (out.indexOf(step.expect, from) < 0 && Date.now() < deadline && child.exitCode === null) {
    await new Promise<void>((res) => {
      wake = res;
      setTimeout(res, 200);
    });
  }
  const at = out.indexOf(step.expect, from);
  if (at < 0) {
    failed = `did not see ${JSON.stringify(step.expect)}`;
    break;
  }
  from = at + step.expect.length;
  marks[step.expect] = Math.round(performance.now() - t0);
}
if (failed) child.kill('SIGKILL');
const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
const status = await exited;
clearTimeout(timer);
process.stdout.write(`@@guest-session ${JSON.stringify({ status, failed, marks, output: out, stderr: err })}\n`);
