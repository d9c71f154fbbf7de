/** `vireo host`: what KVM this machine offers and whether vireo can use it. */

import { VireoError } from '../common/errors.js';
import { CAP, type CapName } from '../kvm/abi.js';
import { detectFlavour, Kvm, type KvmFlavour, REQUIRED_CAPS, USED_CAPS } from '../kvm/kvm.js';

export interface HostReport {
  device: string;
  usable: boolean;
  error?: { code: string; message: string };
  flavour: KvmFlavour;
  flavourName: string;
  apiVersion?: number;
  vcpuMmapSize?: number;
  maxVcpus?: number;
  capabilities: { name: CapName; id: number; value: number; required: boolean }[];
  bootsStockLinux: boolean;
}

const FLAVOUR_NAMES: Record<KvmFlavour, string> = {
  vmx: 'Intel VT-x',
  svm: 'AMD-V (SVM)',
  pvm: 'PVM (pagetable-based; guest supervisor code is emulated)',
  unknown: 'unknown',
};

export function hostReport(path = '/dev/kvm'): HostReport {
  const flavour = detectFlavour();
  const report: HostReport = {
    device: path,
    usable: false,
    flavour,
    flavourName: FLAVOUR_NAMES[flavour],
    capabilities: [],
    bootsStockLinux: flavour === 'vmx' || flavour === 'svm',
  };
  let kvm: Kvm | undefined;
  try {
    kvm = Kvm.open(path);
    report.apiVersion = kvm.apiVersion;
    report.vcpuMmapSize = kvm.vcpuMmapSize;
    report.maxVcpus = kvm.checkExtension('KVM_CAP_MAX_VCPUS');
    for (const name of USED_CAPS) {
      report.capabilities.push({
        name,
        id: CAP[name],
        value: kvm.checkExtension(name),
        required: REQUIRED_CAPS.includes(name),
      });
    }
    kvm.requireCapabilities();
    report.usable = true;
  } catch (e) {
    report.error =
      e instanceof VireoError
        ? { code: e.code, message: e.message }
        : { code: 'VIREO_ERR_INTERNAL', message: String(e) };
  } finally {
    kvm?.close();
  }
  return report;
}

export function printHostReport(r: HostReport): void {
  const lines = [
    `device        ${r.device}`,
    `flavour       ${r.flavourName}`,
    `api version   ${r.apiVersion ?? '-'}`,
    `max vCPUs     ${r.maxVcpus ?? '-'}`,
    `stock Linux   ${r.bootsStockLinux ? 'boots natively' : 'cannot boot natively on this KVM'}`,
    'capabilities:',
    ...r.capabilities.map(
      (c) =>
        `  ${c.value > 0 ? 'yes' : 'NO '} ${c.name}${c.value > 1 ? ` (${c.value})` : ''}${c.required ? '' : ' (optional)'}`,
    ),
    r.usable ? 'vireo can run VMs here' : `vireo cannot run VMs here: ${r.error?.message ?? 'unknown reason'}`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}
