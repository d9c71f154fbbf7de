/** A virtio-blk drive as the user configures it (CLI --drive, API /drives, config file, snapshot). */
export interface DriveConfig {
  /** Drive id (Firecracker's drive_id); also the serial the guest reads with GET_ID. */
  id: string;
  path: string;
  readOnly?: boolean | undefined;
}
