/**
 * Several processes on one TPM without a resource manager (swtpm: three transient object slots and
 * three session slots for all clients together). Each process (test/_concurrent-worker.mjs, on the
 * built package) makes its own root — the same re-derived storage key — wraps two KEKs and unwraps
 * them; they run at the same time. Before the cross-process lock and the per-operation handles
 * (docs/tpm.md §Several processes), five of six such processes failed with TPM_RC_OBJECT_MEMORY.
 * Afterwards no transient object is left in the TPM.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Esys } from '@keywarden/tss2';
import { describe, expect, it } from 'vitest';
import { tcti } from './_tpm.js';

const WORKER = fileURLToPath(new URL('./_concurrent-worker.mjs', import.meta.url));

function worker(cycles: number): Promise<{ ok: number; errors: string[] }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WORKER, String(cycles)], {
      env: { ...process.env, KEYWARDEN_TPM_TCTI: tcti() },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(out.trim().split('\n').pop() as string));
      } catch {
        reject(new Error(`worker exited ${code} without a result: ${err.slice(0, 500)}`));
      }
    });
  });
}

describe('several processes on one swtpm', () => {
  it('five processes wrap and unwrap at the same time, none out of TPM memory, nothing left loaded', async () => {
    const N = 5;
    const CYCLES = 12;
    const results = await Promise.all(Array.from({ length: N }, () => worker(CYCLES)));
    for (const r of results) expect(r).toEqual({ ok: CYCLES, errors: [] });
    const esys = await Esys.open({ tcti: tcti() });
    try {
      expect(await esys.transientHandles()).toEqual([]);
    } finally {
      await esys.close();
    }
  }, 120_000);
});
