/** Devices: drives, network interfaces, vsock, entropy and the serial console. */

import {
  parseMac,
  validateDrive,
  validateNet,
  validateRateLimiter,
  validateSerial,
  validateVsock,
} from '../../config/index.js';
import { badRequest, checkId, deserializeError, idMismatch, unsupported, validated } from '../errors.js';
import { checkReadable, DEPRECATION, noContent, type Route, rateLimiterConfig, route } from '../routes.js';
import type {
  Drive,
  EntropyDevice,
  NetworkInterface,
  PartialDrive,
  PartialNetworkInterface,
  SerialDevice,
  Vsock,
} from '../types.js';

export const deviceRoutes: Route[] = [
  route<Drive>({
    method: 'PUT',
    path: '/drives/{drive_id}',
    body: 'Drive',
    metric: 'drive',
    handle({ ctl, params, body }) {
      const id = checkId(params.drive_id);
      if (id !== body.drive_id) throw idMismatch();
      ctl.requirePreBoot();
      if (body.socket !== undefined)
        throw unsupported('vireo does not support vhost-user block devices (`socket`): give `path_on_host`');
      if (body.path_on_host === undefined) throw deserializeError('missing field `path_on_host`');
      const drive = {
        id,
        path: body.path_on_host,
        readOnly: body.is_read_only ?? false,
        rateLimiter: rateLimiterConfig(body.rate_limiter),
      };
      validated('Drive config error', () => validateDrive(drive));
      if (body.io_engine === 'Async')
        throw unsupported('vireo does not support the Async io_engine (`io_engine`): use Sync or leave it out');
      if (body.is_root_device) {
        const other = [...ctl.drives.values()].find((d) => d.is_root_device && d.drive_id !== id);
        if (other) throw badRequest('Drive config error: A root block device already exists!');
      }
      checkReadable(
        body.path_on_host,
        'Drive config error: Unable to open the drive image',
        !(body.is_read_only ?? false),
      );
      ctl.drives.set(id, { ...body });
      ctl.bootPath = true;
      return noContent();
    },
  }),
  route<PartialDrive>({
    method: 'PATCH',
    path: '/drives/{drive_id}',
    body: 'PartialDrive',
    metric: 'drive',
    async handle({ ctl, params, body }) {
      const id = checkId(params.drive_id);
      if (id !== body.drive_id) throw idMismatch();
      const vm = ctl.requireVm();
      const drive = ctl.drives.get(id);
      if (!drive) throw badRequest(`Drive config error: Unable to patch the block device: no drive with id ${id}.`);
      // A new rate limiter (its buckets full), as Firecracker's PATCH gives.
      if (body.rate_limiter !== undefined) {
        const limit = rateLimiterConfig(body.rate_limiter);
        validated('Drive config error', () => validateRateLimiter(`drive ${id}: rate_limiter`, limit ?? {}));
        await vm.setDriveRateLimiter(id, limit);
        drive.rate_limiter = body.rate_limiter;
      }
      // A new backing file (firecracker-containerd attaches each container's rootfs this way): the
      // guest sees its contents and capacity; requests in flight finish against the old one.
      if (body.path_on_host !== undefined && body.path_on_host !== drive.path_on_host) {
        try {
          await vm.updateDrive(id, body.path_on_host);
        } catch (e) {
          throw badRequest(`Drive config error: Unable to patch the block device: ${(e as Error).message}`);
        }
        drive.path_on_host = body.path_on_host;
      }
      return noContent();
    },
  }),
  route<NetworkInterface>({
    method: 'PUT',
    path: '/network-interfaces/{iface_id}',
    body: 'NetworkInterface',
    metric: 'network',
    handle({ ctl, params, body }) {
      const id = checkId(params.iface_id);
      if (id !== body.iface_id) throw idMismatch();
      ctl.requirePreBoot();
      if (body.guest_mac !== undefined && !parseMac(body.guest_mac))
        throw deserializeError(
          `invalid value for \`guest_mac\`: string ${JSON.stringify(body.guest_mac)}, expected a unicast MAC address like 06:00:AC:10:00:02`,
        );
      const mac = body.guest_mac === undefined ? undefined : parseMac(body.guest_mac);
      validated('Network interface error', () =>
        validateNet({
          id,
          tap: body.host_dev_name,
          mac: mac ? [...mac] : undefined,
          mtu: body.mtu,
          rxRateLimiter: rateLimiterConfig(body.rx_rate_limiter),
          txRateLimiter: rateLimiterConfig(body.tx_rate_limiter),
        }),
      );
      for (const other of ctl.nets.values()) {
        if (other.iface_id === id) continue;
        if (other.host_dev_name === body.host_dev_name)
          throw badRequest(`Network interface error: The host device name ${body.host_dev_name} is already in use.`);
        if (body.guest_mac !== undefined && other.guest_mac?.toLowerCase() === body.guest_mac.toLowerCase())
          throw badRequest(`Network interface error: The MAC address is already in use: ${body.guest_mac}.`);
      }
      ctl.nets.set(id, { ...body });
      ctl.bootPath = true;
      return noContent();
    },
  }),
  route<PartialNetworkInterface>({
    method: 'PATCH',
    path: '/network-interfaces/{iface_id}',
    body: 'PartialNetworkInterface',
    metric: 'network',
    async handle({ ctl, params, body }) {
      const id = checkId(params.iface_id);
      if (id !== body.iface_id) throw idMismatch();
      const vm = ctl.requireVm();
      const net = ctl.nets.get(id);
      if (!net)
        throw badRequest(`Network interface error: Unable to update the net device: no interface with id ${id}.`);
      // Each limiter given replaces that direction's (its buckets full); one left out stays as it is.
      if (body.rx_rate_limiter === undefined && body.tx_rate_limiter === undefined) return noContent();
      const rx = body.rx_rate_limiter ?? net.rx_rate_limiter;
      const tx = body.tx_rate_limiter ?? net.tx_rate_limiter;
      validated('Network interface error', () => {
        validateRateLimiter(`network interface ${id}: rx_rate_limiter`, rateLimiterConfig(rx) ?? {});
        validateRateLimiter(`network interface ${id}: tx_rate_limiter`, rateLimiterConfig(tx) ?? {});
      });
      await vm.setNetRateLimiters(id, rateLimiterConfig(rx), rateLimiterConfig(tx));
      if (rx !== undefined) net.rx_rate_limiter = rx;
      if (tx !== undefined) net.tx_rate_limiter = tx;
      return noContent();
    },
  }),
  route<Vsock>({
    method: 'PUT',
    path: '/vsock',
    body: 'Vsock',
    metric: 'vsock',
    handle({ ctl, body }) {
      ctl.requirePreBoot();
      validated('Vsock config error', () => validateVsock({ cid: body.guest_cid, udsPath: body.uds_path }));
      ctl.vsock = { guest_cid: body.guest_cid, uds_path: body.uds_path };
      ctl.bootPath = true;
      // vsock_id is deprecated: Firecracker accepts it and flags the response.
      return noContent(body.vsock_id !== undefined ? DEPRECATION : undefined);
    },
  }),
  route<EntropyDevice>({
    method: 'PUT',
    path: '/entropy',
    body: 'EntropyDevice',
    metric: 'entropy',
    handle({ ctl, body }) {
      ctl.requirePreBoot();
      const rl = rateLimiterConfig(body.rate_limiter);
      if (rl !== undefined) validated('Entropy device error', () => validateRateLimiter('entropy: rate_limiter', rl));
      ctl.entropy = { ...body };
      ctl.bootPath = true;
      return noContent();
    },
  }),
  route<SerialDevice>({
    method: 'PUT',
    path: '/serial',
    body: 'SerialDevice',
    metric: 'serial',
    handle({ ctl, body }) {
      ctl.requirePreBoot();
      if (body.rate_limiter && body.rate_limiter.size > 0)
        throw unsupported('vireo does not support rate limiting the serial console (`rate_limiter`)');
      const path = body.serial_out_path;
      if (path !== undefined) validated('Serial config error', () => validateSerial({ kind: 'file', path }));
      ctl.serial = { ...body };
      return noContent();
    },
  }),
];
