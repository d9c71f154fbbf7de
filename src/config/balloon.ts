/** A virtio-balloon as the user configures it (CLI --balloon, API /balloon, config file, snapshot). */
export interface BalloonConfig {
  /** Initial target: MiB the guest should give back. */
  amountMiB: number;
  deflateOnOom: boolean;
  /** Ask the guest for statistics every this many seconds (0: never; they can still be requested). */
  statsPollingIntervalS: number;
}
