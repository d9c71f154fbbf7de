/** A network interface on a host TAP (Firecracker's iface_id, host_dev_name, guest_mac). */
export interface NetConfig {
  id: string;
  tap: string;
  /** 6 bytes; default 52:54:00:12:34:56, the last byte counting up per interface. */
  mac?: number[] | undefined;
}
