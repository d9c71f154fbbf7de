/** Bounds on what a snapshot's configuration may hold (its check refuses more). */
export const PATH = 4096;
export const NAME = 256;
/** More than any vireo VM has (virtio-mmio slots). */
export const MAX_DEVICES = 64;
