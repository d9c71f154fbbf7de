/**
 * Every virtio device kind vireo has, one entry each (device-kind.ts says what an entry holds). The
 * order is the slot order: the order a guest finds the devices in and a snapshot lists them in.
 * Adding a kind: its device files, its entry (kinds/), one line here, its config, its API resource
 * and its CLI flag.
 */
import { type AnyDeviceKind, defineKind } from './device-kind.js';
import { balloonKind } from './kinds/balloon.js';
import { blockKind } from './kinds/block.js';
import { consoleKind } from './kinds/console.js';
import { fsKind } from './kinds/fs.js';
import { netKind } from './kinds/net.js';
import { rngKind } from './kinds/rng.js';
import { vsockKind } from './kinds/vsock.js';

export const DEVICE_KINDS: readonly AnyDeviceKind[] = [
  defineKind(blockKind),
  defineKind(netKind),
  defineKind(rngKind),
  defineKind(consoleKind),
  defineKind(vsockKind),
  defineKind(balloonKind),
  defineKind(fsKind),
];

/** The kind of a slot name ('virtio-blk:rootfs' → virtio-blk's entry). */
export function kindOfSlot(name: string): AnyDeviceKind | undefined {
  const kind = name.split(':')[0];
  return DEVICE_KINDS.find((k) => k.name === kind);
}
