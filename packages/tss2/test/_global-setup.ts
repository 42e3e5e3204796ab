/**
 * vitest globalSetup: a private swtpm for this package's suites (harness/swtpm.sh start, stopped
 * after the run) unless KEYWARDEN_TPM_TCTI already names a TPM (a real one, or one started by
 * hand). Without swtpm the suites fail with the harness's reason: they are never skipped.
 */
import { type Swtpm, startSwtpm, stopSwtpm } from './_swtpm.js';

let started: Swtpm | undefined;

export function setup(): void {
  if (process.env.KEYWARDEN_TPM_TCTI) return;
  started = startSwtpm();
  process.env.KEYWARDEN_TPM_TCTI = started.tcti;
}

export function teardown(): void {
  if (started) stopSwtpm(started);
  started = undefined;
}
