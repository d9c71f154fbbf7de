/** GET/PUT/PATCH /machine-config and PUT /boot-source (pre-boot resources). */
import { validateBoot, validateMachine } from '../../config/index.js';
import type { VmController } from '../controller.js';
import { badRequest, unsupported, validated } from '../errors.js';
import { checkReadable, noContent, ok, type Route, route } from '../routes.js';
import type { BootSource, MachineConfiguration } from '../types.js';

/** Firecracker's x86 command line limit (bytes, with the terminating NUL). */
export const CMDLINE_MAX_SIZE = 2048;

/**
 * Firecracker's MAX_SUPPORTED_VCPUS: its API refuses more, and its clients expect that 400, so the API
 * keeps it as an API-level rule. vireo's machine takes up to MAX_VCPUS (254, config/machine.ts): the
 * CLI and Vm.create allow that many.
 */
export const FIRECRACKER_MAX_VCPUS = 32;

/** Firecracker's MachineConfigError::InvalidVcpuCount. */
const INVALID_VCPUS =
  'Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.';

/** Applies a (full or partial) machine configuration after Firecracker's checks. */
function updateMachine(ctl: VmController, update: Partial<MachineConfiguration>, reset: boolean): void {
  ctl.requirePreBoot();
  const base = reset
    ? { vcpu_count: 1, mem_size_mib: 128, smt: false, track_dirty_pages: false, huge_pages: 'None' as const }
    : ctl.machine;
  const next = { ...base, ...update };
  if (next.cpu_template !== undefined && next.cpu_template !== 'None')
    throw unsupported(`vireo does not support CPU templates (\`cpu_template\`: ${next.cpu_template}); use None`);
  if (next.huge_pages !== 'None')
    throw unsupported(`vireo does not support huge pages (\`huge_pages\`: ${next.huge_pages}); use None`);
  if (
    next.vcpu_count < 1 ||
    next.vcpu_count > FIRECRACKER_MAX_VCPUS ||
    (next.smt && next.vcpu_count > 1 && next.vcpu_count % 2 === 1)
  )
    throw badRequest(INVALID_VCPUS);
  if (next.mem_size_mib === 0)
    throw badRequest(
      'Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.',
    );
  if (ctl.balloon && ctl.balloon.amount_mib > next.mem_size_mib)
    throw badRequest(
      'Machine config error: The memory size (MiB) is smaller than the previously set balloon device target size.',
    );
  validated('Machine config error', () => validateMachine({ memMiB: next.mem_size_mib, cpus: next.vcpu_count }));
  ctl.machine = { ...next, cpu_template: next.cpu_template === 'None' ? undefined : next.cpu_template };
  ctl.bootPath = true;
}

export const machineRoutes: Route[] = [
  route({
    method: 'GET',
    path: '/machine-config',
    metric: 'machine_cfg',
    handle: ({ ctl }) => ok(ctl.machineConfig()),
  }),
  route<MachineConfiguration>({
    method: 'PUT',
    path: '/machine-config',
    body: 'MachineConfiguration',
    metric: 'machine_cfg',
    handle({ ctl, body }) {
      updateMachine(ctl, body, true);
      return noContent();
    },
  }),
  route<Partial<MachineConfiguration>>({
    method: 'PATCH',
    path: '/machine-config',
    body: 'MachineConfiguration',
    partial: true,
    metric: 'machine_cfg',
    handle({ ctl, body }) {
      if (Object.keys(body).length === 0) throw badRequest('Empty PATCH request.');
      updateMachine(ctl, body, false);
      return noContent();
    },
  }),
  route<BootSource>({
    method: 'PUT',
    path: '/boot-source',
    body: 'BootSource',
    metric: 'boot_source',
    handle({ ctl, body }) {
      ctl.requirePreBoot();
      checkReadable(body.kernel_image_path, 'Boot source error: The kernel file cannot be opened');
      if (body.initrd_path !== undefined)
        checkReadable(
          body.initrd_path,
          'Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions',
        );
      if (body.boot_args !== undefined && Buffer.byteLength(body.boot_args) >= CMDLINE_MAX_SIZE)
        throw badRequest(
          `Boot source error: The kernel command line is invalid: it is longer than ${CMDLINE_MAX_SIZE - 1} bytes`,
        );
      validated('Boot source error', () =>
        validateBoot({ kernel: body.kernel_image_path, initrd: body.initrd_path, cmdline: body.boot_args }),
      );
      ctl.bootSource = { ...body };
      ctl.bootPath = true;
      return noContent();
    },
  }),
];
