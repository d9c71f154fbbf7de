/**
 * The ACPI PM registers' persisted state: PM1 status and enable, PM1 control (SCI_EN included) and
 * the last byte written to the reset register. pvpanic has no record: it holds no state.
 */
import { type Check, checkRecord, object, u8, u16, version } from '../../common/schema.js';
import type { SharedState } from '../../common/shared-state.js';
import type { AcpiPmField } from './acpi-pm.js';

export const ACPI_PM_STATE_VERSION = 1;

export interface AcpiPmState {
  version: 1;
  pm1Status: number;
  pm1Enable: number;
  pm1Control: number;
  resetRegister: number;
}

export const checkAcpiPmState: Check = object({
  version: version(ACPI_PM_STATE_VERSION),
  pm1Status: u16,
  pm1Enable: u16,
  pm1Control: u16,
  resetRegister: u8,
});

export function saveAcpiPmState(s: SharedState<AcpiPmField>): AcpiPmState {
  return {
    version: 1,
    pm1Status: s.get('pm1Status') & 0xffff,
    pm1Enable: s.get('pm1Enable') & 0xffff,
    pm1Control: s.get('pm1Control') & 0xffff,
    resetRegister: s.get('resetLast') & 0xff,
  };
}

/** Checks `state` (SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the field's path) and puts it in place. */
export function restoreAcpiPmState(s: SharedState<AcpiPmField>, state: unknown): void {
  checkRecord<AcpiPmState>(checkAcpiPmState, state, 'acpi-pm');
  s.set('pm1Status', state.pm1Status);
  s.set('pm1Enable', state.pm1Enable);
  s.set('pm1Control', state.pm1Control);
  s.set('resetLast', state.resetRegister);
}
