/**
 * config/: the shared key=value parser's edge cases, each resource's parseX and validateX, and one
 * bad value fed through the CLI parser, the API handler and Vm.create, refused the same way by each.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { VmController } from '../src/api/controller.js';
import { ApiServer } from '../src/api/server.js';
import { MAX_XAPIC_CPUS } from '../src/arch/x86_64/firmware-layout.js';
import { parseDrive as cliDrive, parseVsock as cliVsock } from '../src/cli/main.js';
import { ConfigError } from '../src/common/errors.js';
import {
  MAX_MEM_MIB,
  MAX_STATS_INTERVAL_S,
  MAX_VCPUS,
  optionBool,
  optionUint,
  parseBalloon,
  parseDrive,
  parseMac,
  parseNet,
  parseOptions,
  parseSerial,
  parseVsock,
  VSOCK_MAX_GUEST_CID,
  VSOCK_MIN_GUEST_CID,
  validateBalloon,
  validateBoot,
  validateDrive,
  validateDrives,
  validateMachine,
  validateNet,
  validateNets,
  validateSerial,
  validateVmConfig,
  validateVsock,
} from '../src/config/index.js';
import * as packet from '../src/devices/virtio/vsock/packet.js';
import { Vm } from '../src/vmm/vm.js';

const refused = (fn: () => unknown, re: RegExp): void => {
  assert.throws(fn, (e: unknown) => e instanceof ConfigError && re.test(e.message) && !e.message.includes('\n'));
};

describe('the shared key=value parser', () => {
  const spec = { what: 'thing', keys: ['a', 'b', 'flag'], aliases: { alpha: 'a' }, usage: 'a=X, b=Y, flag' };

  test('keys, aliases, bare keys and values holding =', () => {
    const o = parseOptions('alpha=1,b=x=y==,flag', spec);
    assert.deepEqual(
      [...o],
      [
        ['a', '1'],
        ['b', 'x=y=='],
        ['flag', ''],
      ],
    );
  });

  test('empty values are kept as empty (the resource decides)', () => {
    assert.deepEqual(
      [...parseOptions('a=,b=2', spec)],
      [
        ['a', ''],
        ['b', '2'],
      ],
    );
  });

  test('an empty text and empty options are refused', () => {
    refused(() => parseOptions('', spec), /^thing options are empty: use a=X, b=Y, flag$/);
    refused(() => parseOptions('a=1,,b=2', spec), /^empty thing option in "a=1,,b=2"/);
    refused(() => parseOptions('a=1,', spec), /^empty thing option/);
  });

  test('duplicate keys, under the same name or an alias, are refused', () => {
    refused(() => parseOptions('a=1,a=2', spec), /^thing option a is given more than once/);
    refused(() => parseOptions('a=1,alpha=2', spec), /^thing option a is given more than once/);
  });

  test('unknown keys are refused with the usage', () => {
    refused(() => parseOptions('c=1', spec), /^unknown thing option "c=1": use a=X, b=Y, flag$/);
    refused(() => parseOptions('=1', spec), /^unknown thing option "=1"/);
  });

  test('a positional key takes a bare word', () => {
    const o = parseOptions('5,flag', { ...spec, positional: 'a' });
    assert.deepEqual(
      [...o],
      [
        ['a', '5'],
        ['flag', ''],
      ],
    );
    refused(() => parseOptions('5,a=6', { ...spec, positional: 'a' }), /given more than once/);
  });

  test('flags and numbers', () => {
    for (const v of ['', 'on', 'true', '1', 'yes']) assert.equal(optionBool('t', 'k', v), true);
    for (const v of ['off', 'false', '0', 'no']) assert.equal(optionBool('t', 'k', v), false);
    refused(() => optionBool('t', 'k', 'maybe'), /k=maybe is not on or off/);
    assert.equal(optionUint('t', 'k', '0042'), 42);
    for (const v of ['', '-1', '1.5', '0x10', '1e3', '9'.repeat(16)])
      refused(() => optionUint('t', 'k', v), /must be a whole number/);
  });
});

describe('machine', () => {
  test('limits: memory 2 MiB to 1 TiB, 1 to 254 vCPUs (the xAPIC IDs the MP and ACPI tables give)', () => {
    assert.equal(MAX_VCPUS, MAX_XAPIC_CPUS);
    assert.equal(MAX_MEM_MIB, 1024 * 1024);
    validateMachine({ memMiB: 2, cpus: 1 });
    validateMachine({ memMiB: MAX_MEM_MIB, cpus: MAX_VCPUS });
    refused(
      () => validateMachine({ memMiB: 1, cpus: 1 }),
      /^memory size 1 MiB is out of range: give 2 to 1048576 MiB$/,
    );
    refused(() => validateMachine({ memMiB: MAX_MEM_MIB + 1, cpus: 1 }), /out of range/);
    refused(() => validateMachine({ memMiB: 2.5, cpus: 1 }), /out of range/);
    refused(() => validateMachine({ memMiB: 64, cpus: 0 }), /^vCPU count 0 is out of range: give 1 to 254$/);
    refused(() => validateMachine({ memMiB: 64, cpus: 255 }), /vCPU count 255/);
  });
});

describe('boot source', () => {
  test('a kernel path is needed; the initrd, when given, is a path', () => {
    validateBoot({ kernel: 'k', initrd: 'i', cmdline: 'c' });
    refused(() => validateBoot({ kernel: '' }), /a kernel is needed/);
    refused(() => validateBoot({ kernel: 'k', initrd: '' }), /initrd path is empty/);
  });
});

describe('drive', () => {
  test('parse: a bare path, path=, id=, ro in every spelling, format=', () => {
    assert.deepEqual(parseDrive('disk.img', 0), { id: 'drive0', path: 'disk.img', readOnly: false });
    assert.deepEqual(parseDrive('path=a=b.img,id=root,ro', 3), { id: 'root', path: 'a=b.img', readOnly: true });
    assert.deepEqual(parseDrive('path=x,readonly=off', 1), { id: 'drive1', path: 'x', readOnly: false });
    refused(() => parseDrive('', 0), /needs path=FILE/);
    refused(() => parseDrive('id=x', 0), /needs path=FILE/);
    refused(() => parseDrive('path=', 0), /option path needs a value/);
    refused(() => parseDrive('path=x,id=', 0), /option id needs a value/);
    refused(() => parseDrive('path=x,path=y', 0), /path is given more than once/);
    refused(() => parseDrive('path=x,ro,readonly', 0), /ro is given more than once/);
    refused(
      () => parseDrive('path=x,cache=none', 0),
      /^unknown drive option "cache=none": use path=FILE, id=NAME, ro, format=raw\|qcow2$/,
    );
    assert.deepEqual(parseDrive('path=c.qcow2,format=qcow2', 0), {
      id: 'drive0',
      path: 'c.qcow2',
      readOnly: false,
      format: 'qcow2',
    });
    assert.equal(parseDrive('path=r.img,format=raw', 0).format, 'raw');
    refused(() => parseDrive('path=x,format=vmdk', 0), /^drive drive0: format vmdk is not raw or qcow2$/);
  });

  test('validate: ids of 1-64 letters, digits or underscores (any script), each once', () => {
    validateDrive({ id: 'root_1', path: 'x' });
    validateDrive({ id: 'disque_é', path: 'x' });
    validateDrive({ id: 'a'.repeat(64), path: 'x' });
    refused(() => validateDrive({ id: 'a'.repeat(65), path: 'x' }), /is invalid: use 1-64 letters/);
    refused(() => validateDrive({ id: 'a-b', path: 'x' }), /drive id "a-b" is invalid/);
    refused(() => validateDrive({ id: '', path: 'x' }), /is invalid/);
    refused(() => validateDrive({ id: 'a', path: '' }), /needs a path/);
    refused(
      () =>
        validateDrives([
          { id: 'a', path: 'x' },
          { id: 'a', path: 'y' },
        ]),
      /drive id "a" is given twice: each drive needs its own id/,
    );
  });
});

describe('net', () => {
  test('parse: tap, mac, id', () => {
    assert.deepEqual(parseNet('tap=tap0', 2), { id: 'net2', tap: 'tap0' });
    assert.deepEqual(parseNet('tap=t,mac=52:54:00:AB:cd:ef,id=eth', 0), {
      id: 'eth',
      tap: 't',
      mac: [0x52, 0x54, 0, 0xab, 0xcd, 0xef],
    });
    refused(() => parseNet('mac=52:54:00:12:34:56', 0), /needs tap=NAME/);
    refused(() => parseNet('tap=t,mac=01:00:5e:00:00:01', 0), /is not a unicast MAC address/);
    refused(() => parseNet('tap=t,tap=u', 0), /tap is given more than once/);
    assert.deepEqual(parseNet('tap=t,mtu=9000', 0), { id: 'net0', tap: 't', mtu: 9000 });
    refused(() => parseNet('tap=t,mtu=20', 0), /MTU 20 is out of range: give 68 to 65535/);
    refused(() => parseNet('tap=t,mtu=big', 0), /mtu is a number of bytes/);
    refused(() => parseNet('user,mtu=9000', 0), /unknown net option "mtu=9000"/);
    assert.equal(parseMac('52:54:00:ab:cd'), undefined);
  });

  test('validate: ids, MACs, no id, TAP or MAC twice', () => {
    validateNet({ id: 'eth0', tap: 't', mac: [2, 0, 0, 0, 0, 1] });
    refused(() => validateNet({ id: 'eth-0', tap: 't' }), /network interface id "eth-0" is invalid/);
    refused(() => validateNet({ id: 'e', tap: 't', mac: [1, 0, 0, 0, 0, 1] }), /not a unicast address/);
    refused(() => validateNet({ id: 'e', tap: 't', mac: [2, 0, 0] }), /not a unicast address/);
    refused(
      () =>
        validateNets([
          { id: 'a', tap: 't' },
          { id: 'a', tap: 'u' },
        ]),
      /id "a" is given twice/,
    );
    refused(
      () =>
        validateNets([
          { id: 'a', tap: 't' },
          { id: 'b', tap: 't' },
        ]),
      /TAP t is given to two/,
    );
    const mac = [2, 0, 0, 0, 0, 9];
    refused(
      () =>
        validateNets([
          { id: 'a', tap: 't', mac },
          { id: 'b', tap: 'u', mac },
        ]),
      /MAC address 02:00:00:00:00:09 is given to two/,
    );
  });
});

describe('vsock', () => {
  test('parse: cid and uds under either name', () => {
    assert.equal(VSOCK_MIN_GUEST_CID, packet.VSOCK_MIN_GUEST_CID);
    assert.equal(VSOCK_MAX_GUEST_CID, packet.VSOCK_MAX_GUEST_CID);
    assert.deepEqual(parseVsock('guest_cid=3,uds_path=/tmp/v=1.sock'), { cid: 3, udsPath: '/tmp/v=1.sock' });
    refused(() => parseVsock('cid=3'), /^--vsock needs cid=N,uds=PATH$/);
    refused(() => parseVsock('cid=x,uds=/p'), /vsock cid must be a whole number/);
    refused(() => parseVsock('cid=3,guest_cid=4,uds=/p'), /cid is given more than once/);
  });

  test('validate: CIDs 3 to 2^32-2, a path of 1-96 bytes without NUL', () => {
    validateVsock({ cid: 3, udsPath: `/${'x'.repeat(95)}` });
    validateVsock({ cid: 0xfffffffe, udsPath: '/p' });
    refused(() => validateVsock({ cid: 2, udsPath: '/p' }), /vsock guest CID 2 is out of range/);
    refused(() => validateVsock({ cid: 2 ** 32 - 1, udsPath: '/p' }), /out of range/);
    refused(() => validateVsock({ cid: 3, udsPath: '' }), /empty or contains a NUL/);
    refused(() => validateVsock({ cid: 3, udsPath: '/a\0b' }), /empty or contains a NUL/);
    refused(() => validateVsock({ cid: 3, udsPath: `/${'x'.repeat(96)}` }), /is 97 bytes: give at most 96/);
  });
});

describe('balloon', () => {
  test('parse: MIB or amount=, deflate_on_oom, stats=', () => {
    assert.deepEqual(parseBalloon('64'), { amountMiB: 64, deflateOnOom: false, statsPollingIntervalS: 0 });
    assert.deepEqual(parseBalloon('amount_mib=8,deflate_on_oom,stats=5'), {
      amountMiB: 8,
      deflateOnOom: true,
      statsPollingIntervalS: 5,
    });
    assert.equal(parseBalloon('1,deflate_on_oom=off').deflateOnOom, false);
    refused(() => parseBalloon('amount=x'), /^balloon amount must be a whole number, got "x"$/);
    refused(() => parseBalloon('8,amount=9'), /amount is given more than once/);
    refused(() => parseBalloon('stats=65536'), /statistics interval 65536 s is invalid/);
    refused(() => parseBalloon('hinting'), /balloon amount must be a whole number/);
  });

  test('validate: whole MiB, no more than the guest has; stats 0 to 65535 s', () => {
    validateBalloon({ amountMiB: 128, deflateOnOom: false, statsPollingIntervalS: MAX_STATS_INTERVAL_S }, 128);
    refused(
      () => validateBalloon({ amountMiB: 129, deflateOnOom: false, statsPollingIntervalS: 0 }, 128),
      /^balloon target 129 MiB is larger than the guest's memory \(128 MiB\)$/,
    );
    refused(() => validateBalloon({ amountMiB: -1, deflateOnOom: false, statsPollingIntervalS: 0 }), /is invalid/);
    refused(() => validateBalloon({ amountMiB: 0, deflateOnOom: false, statsPollingIntervalS: 1.5 }), /is invalid/);
  });
});

describe('serial', () => {
  test('parse and validate', () => {
    assert.deepEqual(parseSerial('stdio'), { kind: 'stdio' });
    assert.deepEqual(parseSerial('none'), { kind: 'none' });
    assert.deepEqual(parseSerial('file:/tmp/a:b'), { kind: 'file', path: '/tmp/a:b' });
    refused(() => parseSerial('file:'), /use stdio, none or file:PATH/);
    refused(() => parseSerial('tcp:1'), /use stdio, none or file:PATH/);
    validateSerial({ kind: 'fd', fd: 1 });
    refused(() => validateSerial({ kind: 'fd', fd: -1 }), /fd -1 is invalid/);
    refused(
      () => validateSerial({ kind: 'file', path: '' }, 'virtio-console'),
      /virtio-console output file needs a path/,
    );
  });
});

describe('the whole machine', () => {
  test('facts between resources: balloon against memory, virtio devices against the irqchip', () => {
    const base = { kernel: 'k', memMiB: 64, cpus: 1, irqchip: true };
    validateVmConfig({ ...base, rng: true });
    validateVmConfig({ ...base, kernel: '' }, false); // a restore loads no kernel
    refused(() => validateVmConfig({ ...base, kernel: '' }), /a kernel is needed/);
    refused(
      () => validateVmConfig({ ...base, irqchip: false, rng: true }),
      /virtio devices need the in-kernel irqchip/,
    );
    refused(
      () => validateVmConfig({ ...base, balloon: { amountMiB: 65, deflateOnOom: false, statsPollingIntervalS: 0 } }),
      /balloon target 65 MiB is larger than the guest's memory \(64 MiB\)/,
    );
  });
});

describe('one input, one answer: the CLI parser, the API handler and Vm.create refuse it alike', () => {
  /** The CLI's commander argParser message (InvalidArgumentError), the API's 400 fault, Vm.create's ConfigError. */
  async function threeWays(
    cli: () => unknown,
    api: { method: string; path: string; body: unknown; prefix: string },
    vm: Parameters<typeof Vm.create>[0],
  ): Promise<string> {
    let cliMessage = '';
    try {
      cli();
    } catch (e) {
      cliMessage = (e as Error).message;
    }
    assert.ok(cliMessage, 'the CLI refused it');
    const server = new ApiServer(new VmController({ id: 'config-test' }));
    await server.dispatch('PUT', '/machine-config', JSON.stringify({ vcpu_count: 1, mem_size_mib: 64 }));
    const r = await server.dispatch(api.method, api.path, JSON.stringify(api.body));
    assert.equal(r.status, 400, r.body);
    const fault = (JSON.parse(r.body) as { fault_message: string }).fault_message;
    assert.equal(fault, `${api.prefix}: ${cliMessage}`);
    await assert.rejects(Vm.create(vm), (e: unknown) => e instanceof ConfigError && e.message === cliMessage);
    return cliMessage;
  }

  test('a vsock uds path too long for sockaddr_un once _PORT is appended', async () => {
    const udsPath = `/tmp/${'v'.repeat(92)}`; // 97 bytes
    const msg = await threeWays(
      () => cliVsock(`cid=3,uds=${udsPath}`),
      { method: 'PUT', path: '/vsock', body: { guest_cid: 3, uds_path: udsPath }, prefix: 'Vsock config error' },
      { kernel: 'k', vsock: { cid: 3, udsPath } },
    );
    assert.match(msg, /^vsock uds path \S+ is 97 bytes: give at most 96/);
  });

  test('a drive id of 65 characters', async () => {
    const id = 'd'.repeat(65);
    const msg = await threeWays(
      () => cliDrive(`path=/dev/null,id=${id}`, []),
      {
        method: 'PUT',
        path: `/drives/${id}`,
        body: { drive_id: id, path_on_host: '/dev/null', is_root_device: false },
        prefix: 'Drive config error',
      },
      { kernel: 'k', drives: [{ id, path: '/dev/null' }] },
    );
    assert.match(msg, /^drive id "d+" is invalid: use 1-64 letters, digits or underscores$/);
  });

  test('1 MiB of memory', async () => {
    const server = new ApiServer(new VmController({ id: 'config-test' }));
    const r = await server.dispatch('PUT', '/machine-config', JSON.stringify({ vcpu_count: 1, mem_size_mib: 1 }));
    assert.equal(r.status, 400);
    const expected = 'memory size 1 MiB is out of range: give 2 to 1048576 MiB';
    assert.equal((JSON.parse(r.body) as { fault_message: string }).fault_message, `Machine config error: ${expected}`);
    await assert.rejects(Vm.create({ kernel: 'k', memMiB: 1 }), { message: expected });
  });
});
