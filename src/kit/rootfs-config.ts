/**
 * What vireo changes in a debootstrapped Debian tree to make it a test guest's root file system:
 * the files it writes and the links that enable or mask systemd units.
 */

import { AGENT_UNIT } from './agent.js';

export const ROOTFS_HOSTNAME = 'vireo';
/** Printed on /dev/console by vireo-rootfs-ready.service once multi-user.target is reached. */
export const ROOTFS_MARKER = 'vireo rootfs: multi-user target reached';

export type RootfsFile = { path: string; text: string; mode?: number } | { path: string; link: string };

const SYSTEM = 'etc/systemd/system';
const UNITS = '/lib/systemd/system';

/** agetty logs root in by itself on the serial console and the virtio console. */
const autologin = `[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 - $TERM
`;

const marker = `[Unit]
Description=vireo rootfs marker: multi-user.target reached
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "${ROOTFS_MARKER}" >/dev/console'

[Install]
WantedBy=multi-user.target
`;

/** The files, relative to the tree's root; `info` becomes /etc/vireo-rootfs (key=value lines). */
export function rootfsFiles(info: Record<string, string>): RootfsFile[] {
  return [
    { path: 'etc/hostname', text: `${ROOTFS_HOSTNAME}\n` },
    {
      path: 'etc/hosts',
      text: `127.0.0.1\tlocalhost\n127.0.1.1\t${ROOTFS_HOSTNAME}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n`,
    },
    {
      path: 'etc/fstab',
      text: '# <file system> <mount point> <type> <options> <dump> <pass>\n/dev/vda / ext4 defaults 0 1\n',
    },
    // The builder's resolver means nothing inside a guest.
    { path: 'etc/resolv.conf', text: '# vireo rootfs: no name servers configured\n' },
    {
      path: 'etc/vireo-rootfs',
      text: Object.entries(info)
        .map(([k, v]) => `${k}=${v}\n`)
        .join(''),
    },
    { path: `${SYSTEM}/default.target`, link: `${UNITS}/multi-user.target` },
    // Serial gettys with autologin: ttyS0 always; hvc0 when the getty generator starts it (its device exists).
    { path: `${SYSTEM}/serial-getty@ttyS0.service.d/autologin.conf`, text: autologin },
    { path: `${SYSTEM}/serial-getty@hvc0.service.d/autologin.conf`, text: autologin },
    { path: `${SYSTEM}/getty.target.wants/serial-getty@ttyS0.service`, link: `${UNITS}/serial-getty@.service` },
    { path: `${SYSTEM}/vireo-rootfs-ready.service`, text: marker },
    // The guest agent (its binary is copied in by rootfs.ts), started at boot and restarted if it stops.
    { path: `${SYSTEM}/vireo-agent.service`, text: AGENT_UNIT },
    { path: `${SYSTEM}/multi-user.target.wants/vireo-agent.service`, link: `/${SYSTEM}/vireo-agent.service` },
    {
      path: `${SYSTEM}/multi-user.target.wants/vireo-rootfs-ready.service`,
      link: `/${SYSTEM}/vireo-rootfs-ready.service`,
    },
    // Nothing waits for a network, and no background jobs run in a test guest.
    { path: `${SYSTEM}/systemd-networkd-wait-online.service`, link: '/dev/null' },
    { path: `${SYSTEM}/apt-daily.timer`, link: '/dev/null' },
    { path: `${SYSTEM}/apt-daily-upgrade.timer`, link: '/dev/null' },
    { path: `${SYSTEM}/e2scrub_all.timer`, link: '/dev/null' },
    { path: `${SYSTEM}/e2scrub_reap.service`, link: '/dev/null' },
  ];
}
