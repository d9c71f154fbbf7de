/**
 * The serial console on the user's terminal: stdin in raw mode feeds the UART's receive side;
 * Ctrl-A x quits, Ctrl-A h prints help, Ctrl-A Ctrl-A sends a literal Ctrl-A (as in QEMU), Ctrl-A d
 * presses Ctrl+Alt+Del on the guest's keyboard.
 * Works with a pipe on stdin too (no raw mode then).
 */
import type { Vm } from './vm.js';

const CTRL_A = 0x01;

export interface ConsoleHandle {
  detach(): void;
}

export function attachConsole(vm: Vm, input: NodeJS.ReadStream = process.stdin, onQuit: () => void): ConsoleHandle {
  const tty = input.isTTY === true;
  if (tty) input.setRawMode(true);
  let afterCtrlA = false;
  const onData = (chunk: Buffer): void => {
    const out: number[] = [];
    for (const b of chunk) {
      if (afterCtrlA) {
        afterCtrlA = false;
        if (b === 0x78 /* x */ || b === 0x58) {
          process.stderr.write('\r\nvireo: terminated by Ctrl-A x\r\n');
          onQuit();
          return;
        }
        if (b === 0x68 /* h */ || b === 0x3f) {
          process.stderr.write(
            '\r\nC-a x  quit vireo\r\nC-a d  send Ctrl+Alt+Del to the guest\r\nC-a h  this help\r\nC-a C-a  send C-a to the guest\r\n',
          );
          continue;
        }
        if (b === 0x64 /* d */ || b === 0x44) {
          try {
            vm.sendCtrlAltDel();
          } catch (e) {
            process.stderr.write(`\r\nvireo: ${(e as Error).message}\r\n`);
          }
          continue;
        }
        if (b === CTRL_A) out.push(CTRL_A);
        continue;
      }
      if (b === CTRL_A) {
        afterCtrlA = true;
        continue;
      }
      out.push(b);
    }
    if (out.length > 0) vm.sendConsoleInput(Uint8Array.from(out));
  };
  input.on('data', onData);
  input.resume();
  return {
    detach(): void {
      input.off('data', onData);
      if (tty) input.setRawMode(false);
      input.pause();
      // Let the process exit even though stdin was read from.
      (input as unknown as { unref?: () => void }).unref?.();
    },
  };
}
