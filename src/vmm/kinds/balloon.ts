/**
 * virtio-balloon: its host handle (BalloonControl, shared with the I/O thread) takes the target and
 * holds the statistics; a timer asks the guest for statistics at the configured interval. The
 * handle's own record is kept in a snapshot beside the slots (devices.balloon).
 */
import { toDisposable } from '../../common/lifecycle.js';
import { bool, int, object, opt, u32 } from '../../common/schema.js';
import type { BalloonConfig } from '../../config/index.js';
import { BalloonControl, VirtioBalloon } from '../../devices/virtio/balloon.js';
import {
  type BalloonControlState,
  checkBalloonControlState,
  restoreBalloonControlState,
  saveBalloonControlState,
} from '../../devices/virtio/balloon-control-state.js';
import { checkBalloonState } from '../../devices/virtio/balloon-state.js';
import { markDirty, type RegionDescriptor } from '../../memory/guest-memory.js';
import * as sys from '../../os/sys.js';
import type { DeviceKind } from '../device-kind.js';

/** The balloon's host side: its control and the statistics timer. */
export class BalloonHost {
  readonly control = new BalloonControl();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly wake: () => void) {}

  /** Asks for statistics every `seconds` from now on (the caller checked that the device has the stats queue). */
  setStatsInterval(seconds: number): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = setInterval(() => {
      this.control.requestStats();
      this.wake();
    }, seconds * 1000);
    this.timer.unref();
  }

  stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

/** Gives the host memory behind guest pages back to the host (they read as zero when touched again). */
function releaser(memory: readonly RegionDescriptor[]): (gpa: number, len: number) => void {
  return (gpa, len) => {
    const r = memory.find((d) => gpa >= d.gpa && gpa + len <= d.gpa + d.size);
    if (!r) return;
    sys.madvise(r.hostAddr + (gpa - r.gpa), len, sys.MADV_DONTNEED);
    // The pages now read as zero: a diff snapshot must carry that.
    if (r.dirty) markDirty(new Uint8Array(r.dirty), gpa - r.gpa, len);
  };
}

export const balloonKind: DeviceKind<
  BalloonConfig,
  { control: SharedArrayBuffer; deflateOnOom: boolean; stats: boolean },
  BalloonHost
> = {
  name: 'virtio-balloon',
  configKey: 'balloon',
  config: (c) => c.balloon,
  snapshot: {
    save: (c) => c,
    check: opt(object({ amountMiB: int(0, 1024 * 1024), deflateOnOom: bool, statsPollingIntervalS: u32 })),
    restore: (saved) => saved as BalloonConfig | undefined,
  },
  open(b, ctx) {
    const host = new BalloonHost(ctx.wake);
    ctx.store.add(toDisposable(() => host.stopTimer()));
    host.control.setTargetMiB(b.amountMiB);
    if (b.statsPollingIntervalS > 0) host.setStatsInterval(b.statsPollingIntervalS);
    const spec = { control: host.control.buffer, deflateOnOom: b.deflateOnOom, stats: b.statsPollingIntervalS > 0 };
    return { devices: [{ name: 'virtio-balloon', spec }], host };
  },
  build: (spec, memory) =>
    new VirtioBalloon(new BalloonControl(spec.control), releaser(memory), {
      deflateOnOom: spec.deflateOnOom,
      stats: spec.stats,
    }),
  recordCheck: checkBalloonState,
  hostRecord: {
    key: 'balloon',
    check: checkBalloonControlState,
    save: (h) => saveBalloonControlState(h.control),
    restore: (h, s) => restoreBalloonControlState(h.control, s as BalloonControlState),
  },
};
