/**
 * The process's own stderr as a place that can fail. A failed write to process.stderr (ENOSPC on a
 * full disk or /dev/full, EPIPE on a closed pipe) is not thrown: it comes as an 'error' event, which
 * with no listener ends the process — a VMM and its guest ended by a diagnostic line. Each command's
 * entry calls guardStderr() first, so every later write (the boot timer, progress lines, warnings)
 * is at worst lost; the failures that matter (the log's own) are counted where they happen.
 */
let guarded = false;

export function guardStderr(): void {
  if (guarded) return;
  process.stderr.on('error', () => undefined);
  guarded = true;
}
