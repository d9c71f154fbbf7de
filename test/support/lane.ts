/**
 * What the Linux lane tests share: the guest-session script (test/support/guest-session.ts) they run
 * inside the lane, the report it prints, and the lane's own failure that a run may meet.
 */
import { fileURLToPath } from 'node:url';

/** The compiled guest-session script: it types into a `vireo run` console and prints a GuestSession. */
export const GUEST_SESSION = fileURLToPath(new URL('./guest-session.js', import.meta.url));

/** What guest-session prints after `@@guest-session `. */
export interface GuestSession {
  /** vireo's exit status (null: killed). */
  status: number | null;
  /** The first step that did not happen, if any. */
  failed?: string;
  /** When each expected text was seen (ms after vireo started). */
  marks: Record<string, number>;
  output: string;
  stderr: string;
}

/**
 * The nested lane's own failure that a test run through it may meet: with two emulated CPUs (QEMU
 * 7.2's multi-threaded TCG emulating SVM) a guest now and then triple-faults in the middle of its boot,
 * on any vCPU, 1-vCPU guests included; the outer machine itself has been seen to reset the same way.
 * QEMU+KVM does it too in the same lane: a 2-vCPU QEMU microvm booting the kit's kernel stopped in
 * the same phase in 1 of 16 boots interleaved with 16 of vireo's (none of vireo's failed that time;
 * 2 of 20 in another lane, and CI runs met it in linux-nested and linux-net). 1-CPU lanes have not
 * shown it. Tests whose lane has two CPUs retry such a run like a hung lane, saying why; a third in a
 * row fails.
 */
/** Why the session looks like the lane's triple fault (before `banner` was seen), or undefined. */
export function laneTripleFault(s: GuestSession | undefined, banner: string): string | undefined {
  if (s === undefined || s.marks[banner] !== undefined) return undefined;
  const fault = s.stderr.match(/vCPU \d+: triple fault \(KVM_EXIT_SHUTDOWN\)/);
  if (!fault) return undefined;
  const last = s.output.trimEnd().split('\n').slice(-1)[0] ?? '';
  return `the guest triple-faulted before "${banner}" in the lane (${fault[0]}; last guest line: ${last.slice(0, 160)})`;
}

/**
 * The same lane's other failure in that phase: the guest's output stops before `banner` with no
 * fault and vireo still running until the session gives up (CI met it in a 2-vCPU linux-nested boot:
 * the last line was the kernel loading its X.509 certificates, 180 s of silence after; the QEMU+KVM
 * comparison above is where a 2-vCPU QEMU microvm "stopped in the same phase"). Only for lanes with
 * two CPUs, like the triple fault; vireo's own errors (a line on its stderr) are never taken for it.
 */
export function laneStall(s: GuestSession | undefined, banner: string): string | undefined {
  if (s === undefined || s.marks[banner] !== undefined) return undefined;
  if (!s.failed?.includes(`did not see "${banner}"`)) return undefined;
  if (/^vireo: /m.test(s.stderr) || s.status !== null) return undefined;
  const last = s.output.trimEnd().split('\n').slice(-1)[0] ?? '';
  return `the guest's output stopped before "${banner}" in the lane, vireo running and silent (last guest line: ${last.slice(0, 160)})`;
}
