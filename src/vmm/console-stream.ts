/**
 * The serial console as Node streams, for programs that embed vireo: `output` carries what the guest
 * writes to COM1 (through a pipe the UART writes to), `input` types into the console
 * (vm.sendConsoleInput, which feeds hvc0 instead when the VM has a virtio-console).
 *
 *   const con = createConsoleStreams();
 *   const vm = await Vm.create({ kernel, serial: con.serial });
 *   const { output, input } = con.attach(vm);
 *   output.pipe(process.stdout); input.write('ls\n');
 *
 * `output` ends when the VM has exited. Read it: while nobody reads, a full pipe holds the guest's
 * serial writes for at most 50 ms, then what does not fit is dropped (vm.stats().serialOutputDropped
 * counts it) until `output` is read again; a vCPU thread never spins nor waits longer on it.
 */
import { closeSync } from 'node:fs';
import { Socket } from 'node:net';
import { type Readable, Writable } from 'node:stream';
import * as sys from '../os/sys.js';
import type { SerialConfig, Vm } from './vm.js';

export interface ConsoleStreams {
  /** What the guest writes to its console; ends when the VM has exited. */
  output: Readable;
  /** What the guest reads from its console. */
  input: Writable;
}

export interface ConsoleStreamsBuilder {
  /** Give this as the VM's `serial` config. */
  serial: SerialConfig;
  /** Streams over the VM built with `serial`; call once. */
  attach(vm: Vm): ConsoleStreams;
  /** Releases the pipe when no VM was built with it. */
  close(): void;
}

/** How long to wait before retrying input the UART's receive buffer had no room for. */
const INPUT_RETRY_MS = 2;

export function createConsoleStreams(): ConsoleStreamsBuilder {
  const [readFd, writeFd] = sys.pipe();
  let writeOpen = true;
  const closeWrite = (): void => {
    if (writeOpen) closeSync(writeFd);
    writeOpen = false;
  };
  const output = new Socket({ fd: readFd, readable: true, writable: false });
  let attached = false;
  return {
    serial: { kind: 'fd', fd: writeFd },
    attach(vm: Vm): ConsoleStreams {
      if (attached) throw new Error('createConsoleStreams(): attach() was already called');
      attached = true;
      // The VM writes to writeFd but does not own it: closing it after the exit ends `output`.
      void vm.waitForExit().then(closeWrite);
      let ended = false;
      void vm.waitForExit().then(() => {
        ended = true;
      });
      const input = new Writable({
        write(chunk: Buffer, _enc, done) {
          let rest = Uint8Array.from(chunk);
          const push = (): void => {
            if (ended) {
              done();
              return;
            }
            const n = vm.sendConsoleInput(rest);
            rest = rest.subarray(n);
            if (rest.length === 0) done();
            else setTimeout(push, INPUT_RETRY_MS);
          };
          push();
        },
      });
      return { output, input };
    },
    close(): void {
      closeWrite();
      output.destroy();
    },
  };
}
