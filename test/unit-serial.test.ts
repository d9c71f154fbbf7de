/**
 * Unit tests for the 16550A UART model: registers, DLAB, FIFO and trigger levels, interrupt
 * identification and priority, loopback, modem status, the host input ring and the OUT2 gate.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { createSerialState, FIFO_SIZE, HOST_RING_SIZE, Serial16550 } from '../src/devices/legacy/serial.js';

// Register offsets.
const RBR = 0;
const THR = 0;
const DLL = 0;
const IER = 1;
const DLM = 1;
const IIR = 2;
const FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

// IIR identification values (low nibble).
const IIR_NONE = 0x01;
const IIR_MS = 0x00;
const IIR_THRE = 0x02;
const IIR_RDA = 0x04;
const IIR_RLS = 0x06;
const IIR_TIMEOUT = 0x0c;

interface Uart {
  dev: Serial16550;
  /** Every level the device drove onto its interrupt line, in order. */
  levels: boolean[];
  /** Bytes the device transmitted. */
  sent: number[];
  r(offset: number): number;
  w(offset: number, v: number): void;
  /** The current level of the interrupt line (false before any change). */
  irq(): boolean;
  enqueue(bytes: Iterable<number> | string): number;
  /** Read n bytes through RBR. */
  drain(n: number): number[];
}

function uart(): Uart {
  const levels: boolean[] = [];
  const sent: number[] = [];
  const dev = new Serial16550(createSerialState(), { set: (l) => levels.push(l) }, { write: (b) => sent.push(b) });
  const r = (offset: number): number => {
    const d = new Uint8Array(1);
    dev.read(offset, d);
    return d[0] as number;
  };
  const w = (offset: number, v: number): void => dev.write(offset, Uint8Array.of(v));
  return {
    dev,
    levels,
    sent,
    r,
    w,
    irq: () => levels.at(-1) ?? false,
    enqueue: (bytes) =>
      dev.enqueueInput(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : Uint8Array.from(bytes)),
    drain: (n) => Array.from({ length: n }, () => r(RBR)),
  };
}

describe('reset state', () => {
  test('registers hold their reset values', () => {
    const u = uart();
    assert.equal(u.r(LCR), 0x03, 'LCR is 8N1');
    assert.equal(u.r(LSR), 0x60, 'LSR: THRE and TEMT, no data');
    assert.equal(u.r(IER), 0x00);
    assert.equal(u.r(IIR), IIR_NONE, 'no interrupt pending, FIFOs off');
    assert.equal(u.r(MCR), 0x08, 'OUT2 set so the IRQ is routed');
    assert.equal(u.r(MSR), 0xb0, 'DCD, DSR, CTS asserted; no deltas');
    assert.equal(u.r(SCR), 0x00);
    u.w(LCR, 0x83);
    assert.equal(u.r(DLL), 12, 'divisor 12: 9600 baud');
    assert.equal(u.r(DLM), 0);
    assert.deepEqual(u.levels, [], 'the interrupt line never moved');
    assert.equal(u.dev.pendingInput, 0);
  });

  test('a state built on an existing buffer shares it and is not reinitialised', () => {
    const u = uart();
    u.w(SCR, 0x5a);
    u.w(LCR, 0x1b);
    const twin = new Serial16550(createSerialState(u.dev.state.buffer), { set: () => {} }, { write: () => {} });
    const d = new Uint8Array(1);
    twin.read(SCR, d);
    assert.equal(d[0], 0x5a);
    twin.read(LCR, d);
    assert.equal(d[0], 0x1b);
  });

  test('wider reads return the register in the low byte and zeros above', () => {
    const u = uart();
    const d = new Uint8Array([0xee, 0xee, 0xee, 0xee]);
    u.dev.read(LSR, d);
    assert.deepEqual([...d], [0x60, 0, 0, 0]);
  });

  test('offsets beyond the eight registers read as 0xff and ignore writes', () => {
    const u = uart();
    assert.equal(u.r(8), 0xff);
    u.w(8, 0x41);
    assert.deepEqual(u.sent, []);
  });
});

describe('transmit', () => {
  test('THR writes go to the sink in order and are counted', () => {
    const u = uart();
    for (const b of Buffer.from('hi\n')) u.w(THR, b);
    assert.deepEqual(u.sent, [0x68, 0x69, 0x0a]);
    assert.equal(u.dev.state.get('txBytes'), 3);
    assert.equal(u.r(LSR) & 0x60, 0x60, 'transmission is instant: THRE and TEMT stay set');
  });

  test('wide writes transmit only the low byte', () => {
    const u = uart();
    u.dev.write(THR, Uint8Array.of(0x41, 0x42));
    assert.deepEqual(u.sent, [0x41]);
  });
});

describe('DLAB', () => {
  test('with DLAB set, offsets 0 and 1 are DLL and DLM', () => {
    const u = uart();
    u.w(IER, 0x05);
    u.w(LCR, 0x83);
    assert.equal(u.r(LCR), 0x83);
    u.w(DLL, 0x01);
    u.w(DLM, 0x02);
    assert.equal(u.r(DLL), 0x01);
    assert.equal(u.r(DLM), 0x02);
    assert.deepEqual(u.sent, [], 'a DLL write is not transmitted');
    assert.equal(u.dev.state.get('ier'), 0x05, 'a DLM write leaves IER alone');
    u.w(LCR, 0x03);
    assert.equal(u.r(IER), 0x05, 'IER is visible again with DLAB clear');
    assert.equal(u.dev.state.get('dll'), 0x01);
    assert.equal(u.dev.state.get('dlm'), 0x02);
    u.w(THR, 0x7a);
    assert.deepEqual(u.sent, [0x7a]);
  });

  test('with DLAB set, reading offset 0 does not consume receive data', () => {
    const u = uart();
    u.enqueue('x');
    u.w(LCR, 0x83);
    assert.equal(u.r(DLL), 12);
    assert.equal(u.r(LSR) & 0x01, 0x01, 'data still ready');
    u.w(LCR, 0x03);
    assert.equal(u.r(RBR), 0x78);
    assert.equal(u.r(LSR) & 0x01, 0x00);
  });

  test('IER keeps only its low four bits', () => {
    const u = uart();
    u.w(IER, 0xff);
    assert.equal(u.r(IER), 0x0f);
  });
});

describe('interrupt identification', () => {
  test('priority: RLS > RDA/timeout > THRE > MSR, each cleared by its own action', () => {
    const u = uart();
    // Loopback with the FIFO off gives a reachable overrun; the IRQ pin is gated in loopback but IIR still reports.
    u.w(MCR, 0x18);
    u.w(IER, 0x0f);
    assert.equal(u.r(IIR), IIR_THRE, 'enabling ETBEI with an empty THR');
    // IIR reported THRE, which cleared it; modem status deltas are lowest priority.
    u.dev.state.set('msr', u.dev.state.get('msr') | 0x01);
    u.w(THR, 0x11);
    u.w(THR, 0x22); // Overruns the one-byte receive buffer.
    assert.equal(u.r(IIR), IIR_RLS);
    assert.equal(u.r(IIR), IIR_RLS, 'reading IIR does not clear RLS');
    assert.equal(u.r(LSR) & 0x03, 0x03, 'OE and DR');
    assert.equal(u.r(IIR), IIR_RDA, 'LSR read cleared the overrun; data remains');
    u.r(RBR);
    assert.equal(u.r(IIR), IIR_THRE, 'THR writes re-raised THRE');
    assert.equal(u.r(IIR), IIR_MS, 'reading IIR cleared THRE; modem status is left');
    assert.equal(u.r(MSR) & 0x0f, 0x01);
    assert.equal(u.r(IIR), IIR_NONE);
  });

  test('an interrupt source is reported only when its IER bit is set', () => {
    const u = uart();
    u.enqueue('a');
    u.dev.state.set('msr', 0xb0 | 0x02);
    assert.equal(u.r(IIR), IIR_NONE, 'IER is zero');
    u.w(IER, 0x08);
    assert.equal(u.r(IIR), IIR_MS);
    u.w(IER, 0x09);
    assert.equal(u.r(IIR), IIR_RDA);
    u.w(IER, 0x00);
    assert.equal(u.r(IIR), IIR_NONE);
  });

  test('THRE: raised on enabling ETBEI, cleared by IIR read or THR write, re-raised after the write', () => {
    const u = uart();
    u.w(IER, 0x02);
    assert.equal(u.irq(), true, 'raised at once: the holding register is empty');
    assert.equal(u.r(IIR), IIR_THRE);
    assert.equal(u.irq(), false, 'the IIR read cleared it');
    assert.equal(u.r(IIR), IIR_NONE);
    u.w(IER, 0x02);
    assert.equal(u.r(IIR), IIR_NONE, 'rewriting an already-set ETBEI is not an edge');
    u.w(THR, 0x41);
    assert.equal(u.irq(), true, 'THR empties instantly, so THRE is pending again');
    assert.equal(u.r(IIR), IIR_THRE);
    assert.deepEqual(u.levels, [true, false, true, false]);
    u.w(THR, 0x42);
    assert.equal(u.irq(), true);
    u.w(IER, 0x00);
    assert.equal(u.irq(), false, 'disabling ETBEI drops the line');
    u.w(IER, 0x02);
    assert.equal(u.irq(), true, 'a fresh enable raises it again');
  });

  test('modem status interrupt follows MSR deltas and clears when MSR is read', () => {
    const u = uart();
    u.w(IER, 0x08);
    u.dev.state.set('msr', 0xb0 | 0x08); // DCD changed.
    assert.equal(u.r(IIR), IIR_MS);
    assert.equal(u.irq(), true, 'the IIR read re-evaluated the line');
    assert.equal(u.r(MSR), 0xb8);
    assert.equal(u.irq(), false);
    assert.equal(u.r(MSR), 0xb0, 'delta bits cleared on read, line states kept');
    assert.equal(u.r(IIR), IIR_NONE);
  });
});

describe('FIFO control', () => {
  test('FCR bit 0 enables the FIFOs: IIR bits 6-7 report it', () => {
    const u = uart();
    assert.equal(u.r(IIR) & 0xc0, 0x00);
    u.w(FCR, 0x01);
    assert.equal(u.r(IIR), 0xc0 | IIR_NONE);
    u.w(FCR, 0x00);
    assert.equal(u.r(IIR), IIR_NONE);
  });

  test('the FIFO holds 16 bytes; without it the receiver holds one', () => {
    const u = uart();
    u.enqueue('abcdefghijklmnopqrst');
    assert.equal(u.dev.state.get('rxCount'), 1, '16450 mode: a single holding register');
    assert.equal(u.dev.pendingInput, 20);
    const v = uart();
    v.w(FCR, 0x01);
    v.enqueue('abcdefghijklmnopqrst');
    assert.equal(v.dev.state.get('rxCount'), FIFO_SIZE);
    assert.equal(v.dev.state.get('hostCount'), 4);
  });

  for (const [fcr, level] of [
    [0x01, 1],
    [0x41, 4],
    [0x81, 8],
    [0xc1, 14],
  ] as const) {
    test(`trigger level ${level} (FCR ${fcr.toString(16)}): character timeout below it, RDA at it`, () => {
      const u = uart();
      u.w(FCR, fcr);
      u.w(IER, 0x01);
      assert.equal(u.r(IIR), 0xc1);
      u.enqueue(new Array(level - 1).fill(0x30));
      if (level > 1) {
        assert.equal(u.r(IIR), 0xc0 | IIR_TIMEOUT, 'data below the trigger level: timeout indication');
        assert.equal(u.irq(), true);
      }
      u.enqueue([0x31]);
      assert.equal(u.r(IIR), 0xc0 | IIR_RDA);
      assert.equal(u.irq(), true);
      u.r(RBR);
      assert.equal(u.r(IIR), level > 1 ? 0xc0 | IIR_TIMEOUT : 0xc1, 'below the trigger again');
      u.drain(level - 1);
      assert.equal(u.r(IIR), 0xc1);
      assert.equal(u.irq(), false);
    });
  }

  test('without FIFOs a single byte raises RDA, never the timeout', () => {
    const u = uart();
    u.w(FCR, 0xc0); // Trigger bits without the enable bit do nothing.
    u.w(IER, 0x01);
    u.enqueue('z');
    assert.equal(u.r(IIR), IIR_RDA);
  });

  test('FCR bit 1 clears the receive FIFO; bits 1-2 self-clear', () => {
    const u = uart();
    u.w(FCR, 0x01);
    u.w(IER, 0x01);
    u.enqueue('hello');
    assert.equal(u.r(LSR) & 0x01, 0x01);
    u.w(FCR, 0xc7);
    assert.equal(u.r(LSR), 0x60, 'no data after the clear');
    assert.equal(u.dev.pendingInput, 0);
    assert.equal(u.r(IIR), 0xc1);
    assert.equal(u.irq(), false);
    assert.equal(u.dev.state.get('fcr'), 0xc1, 'enable and trigger kept; clear bits not stored');
    u.enqueue('!');
    assert.equal(u.r(RBR), 0x21, 'the FIFO works after a clear');
  });

  test('leaving FIFO mode clears the FIFO', () => {
    const u = uart();
    u.w(FCR, 0x01);
    u.enqueue('abc');
    u.w(FCR, 0x00);
    assert.equal(u.r(LSR) & 0x01, 0);
    assert.equal(u.dev.pendingInput, 0);
  });

  test('rewriting FCR with the same enable bit and no clear keeps the data', () => {
    const u = uart();
    u.w(FCR, 0x01);
    u.enqueue('abc');
    u.w(FCR, 0x81);
    assert.deepEqual(u.drain(3), [0x61, 0x62, 0x63]);
  });
});

describe('line status', () => {
  test('DR follows receive data; THRE and TEMT are always set', () => {
    const u = uart();
    assert.equal(u.r(LSR), 0x60);
    u.enqueue('ab');
    assert.equal(u.r(LSR), 0x61);
    u.r(RBR);
    assert.equal(u.r(LSR), 0x61, 'the second byte moved in from the host ring');
    u.r(RBR);
    assert.equal(u.r(LSR), 0x60);
  });

  test('OE is set by an overrun, reported once, and cleared by the LSR read', () => {
    const u = uart();
    u.w(MCR, 0x10);
    u.w(THR, 0x01);
    u.w(THR, 0x02);
    assert.equal(u.dev.state.get('rxDropped'), 1);
    assert.equal(u.r(LSR), 0x63);
    assert.equal(u.r(LSR), 0x61, 'OE cleared by the read; DR remains');
  });

  test('16450 mode: an overrun replaces the holding register (the datasheet behaviour)', () => {
    const u = uart();
    u.w(MCR, 0x10);
    u.w(THR, 0x01);
    u.w(THR, 0x02);
    assert.equal(u.r(RBR), 0x02);
    assert.equal(u.r(LSR), 0x62, 'no data left, OE still latched until this read');
  });

  test('FIFO mode: an overrun keeps the FIFO and loses the new character', () => {
    const u = uart();
    u.w(FCR, 0x01);
    u.w(MCR, 0x10);
    for (let i = 0; i < FIFO_SIZE + 1; i++) u.w(THR, i);
    assert.equal(u.r(LSR), 0x63);
    assert.deepEqual(
      u.drain(FIFO_SIZE),
      Array.from({ length: FIFO_SIZE }, (_, i) => i),
    );
    assert.equal(u.r(LSR), 0x60);
  });

  test('LSR and MSR are read-only', () => {
    const u = uart();
    u.w(LSR, 0xff);
    u.w(MSR, 0x00);
    assert.equal(u.r(LSR), 0x60);
    assert.equal(u.r(MSR), 0xb0);
  });
});

describe('loopback', () => {
  test('THR bytes come back on RBR and not on the sink', () => {
    const u = uart();
    u.w(FCR, 0x01);
    u.w(MCR, 0x18);
    for (const b of Buffer.from('loop')) u.w(THR, b);
    assert.deepEqual(u.sent, []);
    assert.equal(u.r(LSR) & 0x01, 0x01);
    assert.deepEqual(u.drain(4), [...Buffer.from('loop')]);
    assert.equal(u.r(LSR), 0x60);
    assert.equal(u.dev.state.get('txBytes'), 4);
    u.w(MCR, 0x08);
    u.w(THR, 0x21);
    assert.deepEqual(u.sent, [0x21], 'out of loopback, bytes reach the sink again');
    assert.equal(u.r(LSR) & 0x01, 0);
  });

  test('MSR mirrors the MCR outputs: RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD', () => {
    const u = uart();
    const cases: [number, number][] = [
      [0x10, 0x00],
      [0x11, 0x20],
      [0x12, 0x10],
      [0x14, 0x40],
      [0x18, 0x80],
      [0x1a, 0x90], // What Linux's autoconfig expects.
      [0x1f, 0xf0],
    ];
    for (const [mcr, msr] of cases) {
      u.w(MCR, mcr);
      assert.equal(u.r(MCR), mcr);
      assert.equal(u.r(MSR), msr, `MCR ${mcr.toString(16)}`);
    }
    u.w(MCR, 0x08);
    assert.equal(u.r(MSR), 0xb0, 'the real line states return after loopback');
  });

  test('the interrupt pin is not driven in loopback, though IIR reports', () => {
    const u = uart();
    u.w(MCR, 0x18);
    u.w(IER, 0x03);
    u.w(THR, 0x55);
    assert.equal(u.r(IIR), IIR_RDA);
    assert.deepEqual(u.levels, []);
    u.w(MCR, 0x08);
    assert.equal(u.irq(), true, 'leaving loopback exposes the pending interrupt');
  });

  test('host input waits while the receiver is disconnected in loopback', () => {
    const u = uart();
    u.w(FCR, 0x01);
    u.w(MCR, 0x18);
    assert.equal(u.enqueue('host'), 4, 'the host bytes are accepted into the ring');
    assert.equal(u.r(LSR) & 0x01, 0, 'but do not reach the receiver');
    u.w(THR, 0x4c);
    assert.deepEqual(u.drain(1), [0x4c], 'only the looped-back byte is received');
    assert.equal(u.r(LSR) & 0x01, 0);
    u.w(MCR, 0x08);
    assert.deepEqual(u.drain(4), [...Buffer.from('host')], 'delivered once loopback ends, nothing lost');
    assert.equal(u.dev.pendingInput, 0);
  });

  test('MCR keeps its low five bits', () => {
    const u = uart();
    u.w(MCR, 0xff);
    assert.equal(u.r(MCR), 0x1f);
  });
});

describe('scratch register', () => {
  test('SCR stores any byte and is independent of DLAB', () => {
    const u = uart();
    for (const v of [0x00, 0x55, 0xaa, 0xff]) {
      u.w(SCR, v);
      assert.equal(u.r(SCR), v);
    }
    u.w(LCR, 0x83);
    u.w(SCR, 0x3c);
    u.w(LCR, 0x03);
    assert.equal(u.r(SCR), 0x3c);
  });
});

describe('host input', () => {
  for (const fcr of [0x00, 0x01, 0xc1]) {
    test(`more than 16 bytes are fed to the receiver as the guest drains it (FCR ${fcr.toString(16)})`, () => {
      const u = uart();
      u.w(FCR, fcr);
      const input = Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff);
      assert.equal(u.enqueue(input), 300);
      assert.equal(u.dev.pendingInput, 300);
      const got: number[] = [];
      while (u.r(LSR) & 0x01) got.push(u.r(RBR));
      assert.deepEqual(got, input);
      assert.equal(u.dev.pendingInput, 0);
      assert.equal(u.dev.state.get('rxDropped'), 0);
      assert.equal(u.dev.state.get('rxBytes'), 300);
    });
  }

  test('the host ring drops what does not fit and counts it', () => {
    const u = uart();
    u.w(FCR, 0x01);
    const input = Array.from({ length: HOST_RING_SIZE + 100 }, (_, i) => i & 0xff);
    assert.equal(u.enqueue(input), HOST_RING_SIZE);
    assert.equal(u.dev.state.get('rxDropped'), 100);
    assert.equal(u.dev.pendingInput, HOST_RING_SIZE);
    // Once the FIFO took its share, there is room again.
    assert.equal(u.enqueue([1, 2, 3, 4, 5]), 5);
    assert.deepEqual(u.drain(HOST_RING_SIZE), input.slice(0, HOST_RING_SIZE));
  });

  test('property: interleaved input and reads deliver every byte once, in order', () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant('in' as const), bytes: fc.uint8Array({ maxLength: 40 }) }),
      fc.record({ kind: fc.constant('read' as const), n: fc.integer({ min: 0, max: 40 }) }),
    );
    fc.assert(
      fc.property(fc.constantFrom(0x00, 0x01, 0x41, 0x81, 0xc1), fc.array(op, { maxLength: 40 }), (fcr, ops) => {
        const u = uart();
        u.w(FCR, fcr);
        u.w(IER, 0x01);
        const sent: number[] = [];
        const got: number[] = [];
        for (const o of ops) {
          if (o.kind === 'in') {
            assert.equal(u.enqueue(o.bytes), o.bytes.length);
            sent.push(...o.bytes);
          } else {
            for (let i = 0; i < o.n && u.r(LSR) & 0x01; i++) got.push(u.r(RBR));
          }
          // The line is up exactly while data is waiting.
          assert.equal(u.irq(), got.length < sent.length);
          assert.equal(u.dev.pendingInput, sent.length - got.length);
        }
        while (u.r(LSR) & 0x01) got.push(u.r(RBR));
        assert.deepEqual(got, sent);
        assert.equal(u.dev.state.get('rxDropped'), 0);
        assert.equal(u.r(LSR), 0x60);
      }),
    );
  });
});

describe('interrupt line and OUT2', () => {
  test('the line is asserted only while MCR OUT2 is set', () => {
    const u = uart();
    u.w(MCR, 0x03); // DTR|RTS, OUT2 clear.
    u.w(IER, 0x01);
    u.enqueue('q');
    assert.equal(u.r(IIR), IIR_RDA, 'the interrupt is pending inside the UART');
    assert.deepEqual(u.levels, [], 'but the pin stays low');
    u.w(MCR, 0x0b);
    assert.deepEqual(u.levels, [true]);
    u.w(MCR, 0x03);
    assert.deepEqual(u.levels, [true, false]);
    u.w(MCR, 0x0b);
    u.r(RBR);
    assert.deepEqual(u.levels, [true, false, true, false], 'reading the data drops the line');
  });

  test('the line is driven only on changes of level', () => {
    const u = uart();
    u.w(IER, 0x01);
    u.enqueue('a');
    u.enqueue('b');
    u.r(LSR);
    u.r(IIR);
    assert.deepEqual(u.levels, [true]);
    u.drain(2);
    assert.deepEqual(u.levels, [true, false]);
    assert.equal(u.dev.state.get('irqLevel'), 0);
  });
});
