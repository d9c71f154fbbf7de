/**
 * virtio-vsock end to end, in the nested lane: Debian's cloud kernel with the kit initramfs boots under
 * `vireo run --vsock cid=3,uds=PATH`; the kit's virtio-vsock transport module binds to the device; a
 * small static C tool (built here with gcc and appended to the initramfs as a second cpio archive, which
 * Linux unpacks over the first) listens and connects on AF_VSOCK inside the guest.
 *
 * - host → guest: the guest listens on port 1234; a host process connects to PATH, sends `CONNECT 1234\n`,
 *   reads `OK <port>\n`, and exchanges data with the guest (which answers in upper case).
 * - guest → host: the guest connects to CID 2 port 5000; the host's server on `PATH_5000` receives it and
 *   answers.
 *
 * The host side runs inside the nested lane next to vireo: this file re-runs itself there as the driver
 * (`--vsock-session`), typing into the guest's serial console and playing the host processes.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { InitramfsBuilder } from '../src/kit/initramfs.js';
import { KIT_MODULES, prepareKit } from '../src/kit/kit.js';
import { runNested } from '../src/kit/nested.js';
import { NestedError } from '../src/kit/util.js';
import { buildDir, repoRoot } from './support/cc.js';

const SESSION_FLAG = '--vsock-session';
const TOOL_IN_GUEST = '/opt/vireo/vsock-tool';
const GUEST_CID = 3;
const GUEST_PORT = 1234;
const HOST_PORT = 5000;
const BULK_PORT = 5001;
/** Bytes pushed each way in the bulk exchanges: many times both sides' credit (256 KiB). */
const BULK = 2 * 1024 * 1024;

/** `vsock-tool listen PORT` / `vsock-tool connect CID PORT` (static, no libc beyond the basics). */
const TOOL_SOURCE = String.raw`
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) { if (errno == EINTR) continue; return -1; }
    p += w; n -= (size_t)w;
  }
  return 0;
}

/* Accept one connection; answer every chunk in upper case until end of stream. */
static int do_listen(unsigned port) {
  int s = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (s < 0) { perror("vsock-tool: socket"); return 1; }
  struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
  if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("vsock-tool: bind"); return 1; }
  if (listen(s, 1) < 0) { perror("vsock-tool: listen"); return 1; }
  printf("vsock-tool: listening on %u\n", port);
  fflush(stdout);
  struct sockaddr_vm peer; socklen_t len = sizeof peer;
  int c = accept(s, (struct sockaddr *)&peer, &len);
  if (c < 0) { perror("vsock-tool: accept"); return 1; }
  printf("vsock-tool: accepted cid=%u port=%u\n", peer.svm_cid, peer.svm_port);
  fflush(stdout);
  char buf[4096];
  unsigned long total = 0;
  for (;;) {
    ssize_t n = read(c, buf, sizeof buf);
    if (n < 0) { if (errno == EINTR) continue; perror("vsock-tool: read"); return 1; }
    if (n == 0) break;
    for (ssize_t i = 0; i < n; i++) buf[i] = (char)toupper((unsigned char)buf[i]);
    if (write_all(c, buf, (size_t)n) < 0) { perror("vsock-tool: write"); return 1; }
    total += (unsigned long)n;
  }
  printf("vsock-tool: echoed %lu bytes, peer closed\n", total);
  close(c);
  close(s);
  return 0;
}

/* Send stdin, half-close, print the reply until end of stream. */
static int do_connect(unsigned cid, unsigned port) {
  int s = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (s < 0) { perror("vsock-tool: socket"); return 1; }
  struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port };
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("vsock-tool: connect"); return 1; }
  char buf[4096];
  for (;;) {
    ssize_t n = read(0, buf, sizeof buf);
    if (n < 0) { if (errno == EINTR) continue; perror("vsock-tool: stdin"); return 1; }
    if (n == 0) break;
    if (write_all(s, buf, (size_t)n) < 0) { perror("vsock-tool: write"); return 1; }
  }
  shutdown(s, SHUT_WR);
  for (;;) {
    ssize_t n = read(s, buf, sizeof buf);
    if (n < 0) { if (errno == EINTR) continue; perror("vsock-tool: read"); return 1; }
    if (n == 0) break;
    write_all(1, buf, (size_t)n);
  }
  close(s);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "listen") == 0) return do_listen((unsigned)strtoul(argv[2], 0, 10));
  if (argc == 4 && strcmp(argv[1], "connect") == 0)
    return do_connect((unsigned)strtoul(argv[2], 0, 10), (unsigned)strtoul(argv[3], 0, 10));
  fprintf(stderr, "usage: vsock-tool listen PORT | vsock-tool connect CID PORT\n");
  return 2;
}
`;

/** Builds the tool (static) into the test build directory, cached by its source. */
function buildTool(): string {
  const hash = createHash('sha256').update(TOOL_SOURCE).digest('hex').slice(0, 12);
  const exe = join(buildDir, `vsock-tool-${hash}`);
  if (existsSync(exe)) return exe;
  mkdirSync(buildDir, { recursive: true });
  const src = join(buildDir, `vsock-tool-${hash}.c`);
  writeFileSync(src, TOOL_SOURCE);
  const tmp = `${exe}.tmp${process.pid}`;
  execFileSync('gcc', ['-static', '-O2', '-Wall', '-o', tmp, src], { stdio: ['ignore', 'inherit', 'inherit'] });
  renameSync(tmp, exe);
  return exe;
}

/** The kit's initramfs with a second archive appended that adds the tool (Linux unpacks both). */
function initrdWithTool(kitInitrd: string, tool: string): string {
  const extra = new InitramfsBuilder().file(TOOL_IN_GUEST.slice(1), readFileSync(tool), 0o755).build();
  const kit = readFileSync(kitInitrd);
  const hash = createHash('sha256').update(kit).update(extra).digest('hex').slice(0, 12);
  const out = join(buildDir, `kit-initrd-vsock-${hash}.cpio`);
  if (!existsSync(out)) {
    // The kit's archive ends padded to 512 bytes: the next archive starts 4-byte aligned, as newc needs.
    assert.equal(kit.length % 4, 0);
    const tmp = `${out}.tmp${process.pid}`;
    writeFileSync(tmp, Buffer.concat([kit, extra]));
    renameSync(tmp, out);
  }
  return out;
}

// ---- the session: runs inside the nested lane, next to vireo ------------------------------------

interface SessionReport {
  status: number | null;
  failed?: string;
  marks: Record<string, number>;
  serial: string;
  stderr: string;
  okLine?: string;
  hostToGuest?: string;
  guestToHostReceived?: string;
  hostEnded?: boolean;
  /** Host → guest → host bulk echo: bytes back, and whether they are the upper-cased input. */
  bulkEchoBytes?: number;
  bulkEchoIntact?: boolean;
  /** Guest → host bulk: bytes the host's server counted. */
  bulkToHost?: number;
}

async function session(args: { kernel: string; initrd: string; vireo: string }): Promise<SessionReport> {
  const dir = mkdtempSync('/tmp/vireo-vsock-');
  const uds = join(dir, 'v.sock');
  const t0 = performance.now();
  const report: SessionReport = { status: null, marks: {}, serial: '', stderr: '' };
  const child: ChildProcess = spawn(
    process.execPath,
    [
      args.vireo,
      'run',
      '--native',
      '--kernel',
      args.kernel,
      '--initrd',
      args.initrd,
      '--mem',
      '256',
      '--vsock',
      `cid=${GUEST_CID},uds=${uds}`,
    ],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  const exited = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
  child.stdout?.on('data', (b: Buffer) => {
    report.serial += b.toString('latin1');
  });
  child.stderr?.on('data', (b: Buffer) => {
    report.stderr += b.toString('latin1');
  });
  let from = 0;
  const expect = async (text: string, timeoutMs: number): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (report.serial.indexOf(text, from) < 0) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`did not see ${JSON.stringify(text)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    from = report.serial.indexOf(text, from) + text.length;
    report.marks[text] = Math.round(performance.now() - t0);
  };
  const type = (s: string): void => {
    child.stdin?.write(s);
  };
  const until = async (cond: () => boolean, what: string, timeoutMs: number): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    report.marks[what] = Math.round(performance.now() - t0);
  };
  const sockets: Socket[] = [];
  const server = createServer({ allowHalfOpen: true }, (s) => {
    sockets.push(s);
    let got = '';
    s.on('data', (b: Buffer) => {
      got += b.toString('latin1');
      report.guestToHostReceived = got;
    });
    s.on('end', () => s.end('pong from the host\n'));
  });
  const bulkServer = createServer({ allowHalfOpen: true }, (s) => {
    sockets.push(s);
    let n = 0;
    s.on('data', (b: Buffer) => {
      n += b.length;
    });
    s.on('end', () => {
      report.bulkToHost = n;
      s.end(`host got ${n} bytes\n`);
    });
  });
  try {
    for (const [srv, port] of [
      [server, HOST_PORT],
      [bulkServer, BULK_PORT],
    ] as const)
      await new Promise<void>((res, rej) => {
        srv.once('error', rej);
        srv.listen(`${uds}_${port}`, res);
      });
    await expect('vireo guest ready', 240_000);
    await expect('# ', 60_000);
    // The transport module is loaded and bound to the device; /dev/vsock exists.
    type(
      'grep -q "^vmw_vsock_virtio_transport " /proc/modules && echo "mod=ok"; ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/ | grep -q virtio && echo "bound=ok"; [ -c /dev/vsock ] && echo "dev=ok"\n',
    );
    await expect('mod=ok', 60_000);
    await expect('bound=ok', 30_000);
    await expect('dev=ok', 30_000);

    // host → guest
    type(`${TOOL_IN_GUEST} listen ${GUEST_PORT} &\n`);
    await expect(`vsock-tool: listening on ${GUEST_PORT}`, 60_000);
    const c = createConnection(uds);
    sockets.push(c);
    let fromGuest = '';
    let ended = false;
    c.on('data', (b: Buffer) => {
      fromGuest += b.toString('latin1');
    });
    c.on('end', () => {
      ended = true;
    });
    c.on('error', (e) => {
      fromGuest += `<error ${e.message}>`;
    });
    c.write(`CONNECT ${GUEST_PORT}\n`);
    await until(() => fromGuest.includes('\n'), 'OK line', 60_000);
    report.okLine = fromGuest.slice(0, fromGuest.indexOf('\n') + 1);
    fromGuest = fromGuest.slice(report.okLine.length);
    if (!/^OK \d+\n$/.test(report.okLine)) throw new Error(`bad answer to CONNECT: ${JSON.stringify(report.okLine)}`);
    await expect('vsock-tool: accepted cid=2', 30_000);
    const payload = 'hello over vsock, from the host\n';
    c.write(payload);
    await until(() => fromGuest.length >= payload.length, 'the upper-cased echo', 60_000);
    report.hostToGuest = fromGuest.slice(0, payload.length);
    // Bulk, on the same connection: far more than either side's buffer, so credit runs out and
    // comes back many times, both ways at once.
    const bulk = Buffer.alloc(BULK);
    for (let i = 0; i < BULK; i++) bulk[i] = 0x61 + ((i * 7 + (i >> 12)) % 26);
    fromGuest = fromGuest.slice(payload.length);
    c.write(bulk);
    await until(() => fromGuest.length >= BULK, 'the bulk echo', 240_000);
    report.bulkEchoBytes = fromGuest.length;
    report.bulkEchoIntact = fromGuest === bulk.toString('latin1').toUpperCase();
    c.end(); // half-close: the guest reads end of stream, says how much it echoed and closes
    await until(() => ended, 'the guest closing the connection', 60_000);
    report.hostEnded = ended;
    await expect(`vsock-tool: echoed ${payload.length + BULK} bytes, peer closed`, 30_000);

    // guest → host
    type(`echo ping-from-the-guest | ${TOOL_IN_GUEST} connect 2 ${HOST_PORT}; echo "connect-status=$?"\n`);
    await expect('pong from the host', 60_000);
    await expect('connect-status=0', 30_000);
    type(`head -c ${BULK} /dev/zero | ${TOOL_IN_GUEST} connect 2 ${BULK_PORT}; echo "bulk-status=$?"\n`);
    await expect(`host got ${BULK} bytes`, 240_000);
    await expect('bulk-status=0', 30_000);
    // A port nobody listens on is refused (the device answers RST: ECONNRESET in the guest).
    type(`echo x | ${TOOL_IN_GUEST} connect 2 5999; echo "refused-status=$?"\n`);
    await expect('refused-status=1', 30_000);
    type('poweroff -f\n');
  } catch (e) {
    report.failed = (e as Error).message;
    child.kill('SIGKILL');
  }
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  report.status = await exited;
  clearTimeout(timer);
  for (const s of sockets) s.destroy();
  server.close();
  bulkServer.close();
  report.marks.exit = Math.round(performance.now() - t0);
  // vireo removes its socket when it stops; the directory goes with the test.
  if (existsSync(uds)) report.failed ??= `vireo left ${uds} behind`;
  rmSync(dir, { recursive: true, force: true });
  return report;
}

const argIndex = process.argv.indexOf(SESSION_FLAG);
if (argIndex >= 0) {
  const report = await session(JSON.parse(process.argv[argIndex + 1] ?? '{}'));
  process.stdout.write(`@@vsock-session ${JSON.stringify(report)}\n`);
} else {
  test('the kit lists the vsock modules', () => {
    assert.ok(KIT_MODULES.includes('vsock'));
    assert.ok(KIT_MODULES.includes('vmw_vsock_virtio_transport'));
  });

  test('virtio-vsock end to end (nested lane): CONNECT/OK into a guest listener, guest connect to <uds>_5000', {
    timeout: 30 * 60_000,
  }, async () => {
    const kit = await prepareKit();
    assert.ok(
      kit.modules.includes('vmw_vsock_virtio_transport'),
      `the kit's initramfs loads vmw_vsock_virtio_transport (it has: ${kit.modules.join(' ')}); rebuild it with 'vireo kit'`,
    );
    const initrd = initrdWithTool(kit.initrd, buildTool());
    const self = fileURLToPath(import.meta.url);
    const args = { kernel: kit.kernel, initrd, vireo: join(repoRoot, 'bin', 'vireo.js') };
    let r: Awaited<ReturnType<typeof runNested>> | undefined;
    // The lane itself occasionally hangs (see linux-nested.test.ts): retry that, never vireo's failures.
    for (let attempt = 1; r === undefined; attempt++) {
      try {
        r = await runNested({
          command: [process.execPath, self, SESSION_FLAG, JSON.stringify(args)],
          cwd: repoRoot,
          timeoutMs: 12 * 60_000,
          cpus: 1,
        });
      } catch (e) {
        if (!(e instanceof NestedError) || attempt === 3) throw e;
        process.stderr.write(`nested lane failed (${e.message.slice(0, 300)}); attempt ${attempt + 1} of 3\n`);
      }
    }
    const line = r.output.split('\n').find((l) => l.startsWith('@@vsock-session '));
    assert.ok(line, `no session report; nested output:\n${r.output.slice(-3000)}\nconsole:\n${r.console.slice(-2000)}`);
    const s = JSON.parse(line.slice('@@vsock-session '.length)) as SessionReport;
    process.stderr.write(`vsock e2e: nested boot ${r.timings.bootMs} ms, session marks ${JSON.stringify(s.marks)}\n`);
    const context = `\n--- guest serial ---\n${s.serial.slice(-4000)}\n--- vireo stderr ---\n${s.stderr.slice(-2000)}`;
    assert.equal(s.failed, undefined, `${s.failed}${context}`);
    assert.match(s.okLine ?? '', /^OK \d+\n$/, context);
    const port = Number((s.okLine ?? '').slice(3));
    assert.ok(port >= 2 ** 30 && port < 2 ** 31, `the OK line names the host-side port (${port})${context}`);
    assert.equal(s.hostToGuest, 'HELLO OVER VSOCK, FROM THE HOST\n', context);
    assert.ok(s.hostEnded, `the host saw the guest close${context}`);
    assert.equal(s.guestToHostReceived, 'ping-from-the-guest\n', context);
    assert.equal(s.bulkEchoBytes, BULK, `bulk echo length${context}`);
    assert.ok(s.bulkEchoIntact, `the bulk echo is the upper-cased input, complete and in order${context}`);
    assert.equal(s.bulkToHost, BULK, `guest → host bulk${context}`);
    assert.match(s.serial, /pong from the host/);
    assert.equal(s.status, 0, `clean power-off ends vireo with status 0${context}`);
  });
}
