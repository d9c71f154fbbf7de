/** The memory balloon: GET/PUT/PATCH /balloon, GET/PATCH /balloon/statistics. */
import { validateBalloon } from '../../config/index.js';
import { BALLOON_PAGE } from '../../devices/virtio/balloon.js';
import type { VmController } from '../controller.js';
import { badRequest, unsupported, validated } from '../errors.js';
import { noContent, ok, type Route, route } from '../routes.js';
import type { Balloon, BalloonStats, BalloonStatsUpdate, BalloonUpdate } from '../types.js';

const PAGES_PER_MIB = (1024 * 1024) / BALLOON_PAGE;

function requireBalloon(ctl: VmController): Balloon {
  if (!ctl.balloon) throw badRequest('Balloon config error: No balloon device found.');
  return ctl.balloon;
}

export const balloonRoutes: Route[] = [
  route({ method: 'GET', path: '/balloon', metric: 'balloon', handle: ({ ctl }) => ok(ctl.balloonConfig()) }),
  route<Balloon>({
    method: 'PUT',
    path: '/balloon',
    body: 'Balloon',
    metric: 'balloon',
    handle({ ctl, body }) {
      ctl.requirePreBoot();
      if (body.free_page_hinting)
        throw unsupported('vireo does not support balloon free page hinting (`free_page_hinting`)');
      if (body.free_page_reporting)
        throw unsupported('vireo does not support balloon free page reporting (`free_page_reporting`)');
      if (body.amount_mib > ctl.machine.mem_size_mib)
        throw badRequest(
          `Balloon config error: The balloon target (${body.amount_mib} MiB) is larger than the guest's memory (${ctl.machine.mem_size_mib} MiB).`,
        );
      const config = {
        amountMiB: body.amount_mib,
        deflateOnOom: body.deflate_on_oom,
        statsPollingIntervalS: body.stats_polling_interval_s ?? 0,
      };
      validated('Balloon config error', () => validateBalloon(config, ctl.machine.mem_size_mib));
      ctl.balloon = {
        amount_mib: body.amount_mib,
        deflate_on_oom: body.deflate_on_oom,
        stats_polling_interval_s: body.stats_polling_interval_s ?? 0,
      };
      ctl.bootPath = true;
      return noContent();
    },
  }),
  route<BalloonUpdate>({
    method: 'PATCH',
    path: '/balloon',
    body: 'BalloonUpdate',
    metric: 'balloon',
    handle({ ctl, body }) {
      const vm = ctl.requireVm();
      const balloon = requireBalloon(ctl);
      if (body.amount_mib > vm.config.memMiB)
        throw badRequest(
          `Balloon update error: The balloon target (${body.amount_mib} MiB) is larger than the guest's memory (${vm.config.memMiB} MiB).`,
        );
      try {
        vm.setBalloonTarget(body.amount_mib);
      } catch (e) {
        throw badRequest(`Balloon update error: ${(e as Error).message}`);
      }
      balloon.amount_mib = body.amount_mib;
      return noContent();
    },
  }),
  route({
    method: 'GET',
    path: '/balloon/statistics',
    metric: 'balloon',
    handle({ ctl }) {
      const vm = ctl.requireVm();
      const balloon = requireBalloon(ctl);
      if (!balloon.stats_polling_interval_s)
        throw badRequest('Balloon config error: Statistics for the balloon device are not enabled');
      const status = vm.balloonStatus();
      if (!status) throw badRequest('Balloon config error: No balloon device found.');
      const stats: BalloonStats = {
        target_pages: Math.round(status.targetMiB * PAGES_PER_MIB),
        actual_pages: Math.round(status.actualMiB * PAGES_PER_MIB),
        target_mib: Math.floor(status.targetMiB),
        actual_mib: Math.floor(status.actualMiB),
        ...status.stats,
      };
      return ok(stats);
    },
  }),
  route<BalloonStatsUpdate>({
    method: 'PATCH',
    path: '/balloon/statistics',
    body: 'BalloonStatsUpdate',
    metric: 'balloon_stats',
    handle({ ctl, body }) {
      const vm = ctl.requireVm();
      const balloon = requireBalloon(ctl);
      const before = balloon.stats_polling_interval_s ?? 0;
      const after = body.stats_polling_interval_s;
      if ((before === 0) !== (after === 0))
        throw badRequest('Balloon update error: Cannot enable/disable the statistics after boot.');
      if (after !== before) {
        try {
          vm.setBalloonStatsInterval(after);
        } catch (e) {
          throw badRequest(`Balloon update error: ${(e as Error).message}`);
        }
        balloon.stats_polling_interval_s = after;
      }
      return noContent();
    },
  }),
];
