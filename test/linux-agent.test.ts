/**
 * The guest agent in a real guest, in the nested lane: Debian's cloud kernel with the kit initramfs
 * (whose /init starts the agent on vsock port 49983) boots under `vireo run --vsock cid=3,uds=PATH`.
 * The host side connects to PATH, sends `CONNECT 49983\n`, reads `OK <port>\n`, and speaks HTTP over
 * that stream: GET /health, POST /init with a timestamp (the agent sets the guest's clock), and
 * process.Process/Start of `echo hi` and of `date`, streamed back in Connect's envelopes. One boot.
 *
 * The host side runs inside the lane next to vireo: this file re-runs itself there (`--agent-session`).
 * A small local bridge makes each TCP connection one CONNECTed vsock stream, so that fetch() is the
 * HTTP client; it changes no byte of HTTP.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { AGENT_VSOCK_PORT } from '../src/kit/agent.js';
import { KIT_AGENT_STARTED, prepareKit } from '../src/kit/kit.js';
import { runNested } from '../src/kit/nested.js';
import { NestedError } from '../src/kit/util.js';
import { repoRoot } from './support/cc.js';

const SESSION_FLAG = '--agent-session';
const GUEST_CID = 3;
/** The clock /init is given: far from the lane's, so that the guest's `date` shows it was set. */
const INIT_TIME = '2031-05-06T07:08:09Z';

interface SessionReport {
  status: number | null;
  failed?: string;
  marks: Record<string, number>;
  serial: string;
  stderr: string;
  okLines: string[];
  health?: number;
  init?: number;
  echo?: { events: unknown[]; end?: unknown };
  dateRun?: { events: unknown[]; end?: unknown };
  date?: string;
}

/** A local TCP server whose every connection is a CONNECTed stream to the guest's port. */
function bridge(uds: string, port: number, okLines: string[]): Promise<{ server: Server; url: string }> {
  const server = createServer((c) => {
    c.pause();
    const u = createConnection(uds);
    let head = Buffer.alloc(0);
    const onData = (b: Buffer) => {
      head = Buffer.concat([head, b]);
      const nl = head.indexOf(10);
      if (nl < 0) return;
      u.off('data', onData);
      const line = head.subarray(0, nl + 1).toString('latin1');
      okLines.push(line);
      if (!/^OK \d+\n$/.test(line)) {
        c.destroy();
        u.destroy();
        return;
      }
      if (head.length > nl + 1) c.write(head.subarray(nl + 1));
      u.pipe(c);
      c.pipe(u);
      c.resume();
    };
    u.on('data', onData);
    u.on('error', () => c.destroy());
    c.on('error', () => u.destroy());
    u.write(`CONNECT ${port}\n`);
  });
  return new Promise((res, rej) => {
    server.once('error', rej);
    server.listen(0, '127.0.0.1', () => {
      const a = server.address();
      res({ server, url: `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}` });
    });
  });
}

function envelope(msg: unknown): Buffer {
  const p = Buffer.from(JSON.stringify(msg));
  const h = Buffer.alloc(5);
  h.writeUInt32BE(p.length, 1);
  return Buffer.concat([h, p]);
}

/** process.Process/Start of cmd, its stream's messages and end-stream message. */
async function start(url: string, cmd: string, args: string[]): Promise<{ events: unknown[]; end?: unknown }> {
  const r = await fetch(`${url}/process.Process/Start`, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/connect+json',
      'Connect-Protocol-Version': '1',
      'Connect-Timeout-Ms': '60000',
    },
    body: envelope({ process: { cmd, args } }),
  });
  if (r.status !== 200) throw new Error(`Start: HTTP ${r.status}`);
  const buf = Buffer.from(await r.arrayBuffer());
  const events: unknown[] = [];
  let end: unknown;
  for (let off = 0; off + 5 <= buf.length; ) {
    const len = buf.readUInt32BE(off + 1);
    const msg: unknown = JSON.parse(buf.subarray(off + 5, off + 5 + len).toString());
    if (buf[off]! & 2) end = msg;
    else events.push(msg);
    off += 5 + len;
  }
  return { events, end };
}

const stdoutOf = (events: unknown[]): string =>
  events
    .map((e) => (e as { event?: { data?: { stdout?: string } } }).event?.data?.stdout)
    .filter((s): s is string => s !== undefined)
    .map((s) => Buffer.from(s, 'base64').toString())
    .join('');

async function session(args: { kernel: string; initrd: string; vireo: string }): Promise<SessionReport> {
  const dir = mkdtempSync('/tmp/vireo-agent-');
  const uds = join(dir, 'v.sock');
  const t0 = performance.now();
  const report: SessionReport = { status: null, marks: {}, serial: '', stderr: '', okLines: [] };
  const child: ChildProcess = spawn(
    process.execPath,
    [args.vireo, 'run', '--native', '--kernel', args.kernel, '--initrd', args.initrd, '--mem', '256'].concat([
      '--vsock',
      `cid=${GUEST_CID},uds=${uds}`,
    ]),
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  const exited = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
  child.stdout?.on('data', (b: Buffer) => {
    report.serial += b.toString('latin1');
  });
  child.stderr?.on('data', (b: Buffer) => {
    report.stderr += b.toString('latin1');
  });
  const expect = async (text: string, timeoutMs: number): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!report.serial.includes(text)) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`did not see ${JSON.stringify(text)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    report.marks[text] = Math.round(performance.now() - t0);
  };
  const mark = (what: string) => {
    report.marks[what] = Math.round(performance.now() - t0);
  };
  let server: Server | undefined;
  const sockets: Socket[] = [];
  try {
    await expect('vireo guest ready', 240_000);
    await expect(KIT_AGENT_STARTED, 60_000);
    await expect('# ', 60_000);
    const b = await bridge(uds, AGENT_VSOCK_PORT, report.okLines);
    server = b.server;
    server.on('connection', (s) => sockets.push(s));
    // The agent may still be starting when the shell prompt appears: retry /health for a while.
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        report.health = (await fetch(`${b.url}/health`)).status;
        break;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`/health: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    mark('health');
    report.echo = await start(b.url, '/bin/echo', ['hi']);
    mark('echo hi');
    const init = await fetch(`${b.url}/init`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ timestamp: INIT_TIME }),
    });
    report.init = init.status;
    report.dateRun = await start(b.url, 'date', ['-u', '+%Y-%m-%d']);
    report.date = stdoutOf(report.dateRun.events);
    mark('date');
    // The agent's log, into the serial output the test shows when something failed.
    child.stdin?.write('cat /run/vireo-agent.log; date -u; echo "agent-log-end"\n');
    await expect('agent-log-end\r\n', 30_000);
    child.stdin?.write('poweroff -f\n');
  } catch (e) {
    report.failed = (e as Error).message;
    child.kill('SIGKILL');
  }
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  report.status = await exited;
  clearTimeout(timer);
  for (const s of sockets) s.destroy();
  server?.close();
  report.marks.exit = Math.round(performance.now() - t0);
  if (existsSync(uds)) report.failed ??= `vireo left ${uds} behind`;
  rmSync(dir, { recursive: true, force: true });
  return report;
}

const argIndex = process.argv.indexOf(SESSION_FLAG);
if (argIndex >= 0) {
  const report = await session(JSON.parse(process.argv[argIndex + 1] ?? '{}'));
  process.stdout.write(`@@agent-session ${JSON.stringify(report)}\n`);
} else {
  test('the guest agent over vsock in a kit guest (nested lane): /health, Start of echo, /init sets the clock', {
    timeout: 30 * 60_000,
  }, async () => {
    const kit = await prepareKit();
    const self = fileURLToPath(import.meta.url);
    const args = { kernel: kit.kernel, initrd: kit.initrd, vireo: join(repoRoot, 'bin', 'vireo.js') };
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
    const line = r.output.split('\n').find((l) => l.startsWith('@@agent-session '));
    assert.ok(line, `no session report; nested output:\n${r.output.slice(-3000)}\nconsole:\n${r.console.slice(-2000)}`);
    const s = JSON.parse(line.slice('@@agent-session '.length)) as SessionReport;
    process.stderr.write(`agent e2e: nested boot ${r.timings.bootMs} ms, session marks ${JSON.stringify(s.marks)}\n`);
    const context = `\n--- guest serial ---\n${s.serial.slice(-4000)}\n--- vireo stderr ---\n${s.stderr.slice(-2000)}`;
    assert.equal(s.failed, undefined, `${s.failed}${context}`);
    // fetch keeps connections alive: its four requests take one to four CONNECTs, each answered OK.
    assert.ok(
      s.okLines.length >= 1 && s.okLines.every((l) => /^OK \d+\n$/.test(l)),
      `${JSON.stringify(s.okLines)}${context}`,
    );
    assert.equal(s.health, 204, context);
    const events = s.echo?.events ?? [];
    const pid = (events[0] as { event?: { start?: { pid?: number } } }).event?.start?.pid;
    assert.ok(typeof pid === 'number' && pid > 1, `the first event is start with a pid: ${JSON.stringify(events)}`);
    assert.equal(stdoutOf(events), 'hi\n', JSON.stringify(events));
    assert.deepEqual((events.at(-1) as { event?: unknown }).event, {
      end: { exitCode: 0, exited: true, status: 'exit status 0' },
    });
    assert.deepEqual(s.echo?.end, {}, 'the stream ends without an error');
    assert.equal(s.init, 204, context);
    assert.equal(
      s.date,
      `${INIT_TIME.slice(0, 10)}\n`,
      `the agent set the guest's clock from /init: ${JSON.stringify(s.dateRun)}${context}`,
    );
    assert.equal(s.status, 0, `clean power-off ends vireo with status 0${context}`);
  });
}
