/**
 * virtio-vsock: the device (device.ts), the host-side muxer over the VsockHost backend interface
 * (muxer.ts, host.ts), one connection's state machine (connection.ts) and the packet codec (packet.ts). What
 * the rest of vireo imports comes from here.
 */
export * from './connection.js';
export * from './device.js';
export * from './host.js';
export * from './muxer.js';
export * from './packet.js';
