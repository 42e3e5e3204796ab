/**
 * run.ts's PKCS#11 rows (kind "keywarden-pkcs11"): a data-key wrap + unwrap with the KEK in
 * the HSM (every call an AES-GCM call in the token, through the worker pool) and with the KEK
 * unwrapped into memory by the HSM root, against the raw pkcs11js loop on the same token and key
 * object (the ceiling), as CPU-time ratios like every other row. The token is a SoftHSM2 this
 * module starts with harness/softhsm.sh and removes in close(). Wall-clock throughput, pool
 * scaling and event-loop delay are pkcs11.ts's (bench:pkcs11): CPU time cannot show them.
 *
 * Gated (`gate: true`): KEK in memory (0.56-0.65 over five runs at load 15, median 0.57) and KEK in
 * the HSM with 64 concurrent callers (3.00-4.51, median 3.82). Not gated: KEK in the HSM one caller
 * at a time (5.2-7.3 over the same runs, 11.9 once): its CPU per op is mostly the two thread
 * wake-ups per call, which swing with the machine's load, not with Keywarden's code.
 */
import { randomBytes } from 'node:crypto';
import { Keywarden, MemoryKeyStore } from '@keywarden/core';
import { Pkcs11Root } from '@keywarden/pkcs11';
import type { Kind } from './_report.js';
import { RawPkcs11, startSoftHsm } from './_softhsm.js';

interface Case {
  label: string;
  kind: Kind;
  fn: () => unknown;
  perCall?: number;
  /** In the regression gate (baseline.json): the rows whose ratio held within ±20% over five runs. */
  gate?: boolean;
}

/** The groups' common prefix: run.ts does not count their gated rows as missing when the token
 * could not be started (outside CI only; in CI that is an error). */
export const PKCS11_GROUP_PREFIX = 'PKCS#11 data key wrap + unwrap';

export async function pkcs11Groups(
  concurrency: number,
): Promise<{ groups: Array<{ name: string; cases: Case[] }>; close: () => Promise<void> }> {
  let hsm: ReturnType<typeof startSoftHsm>;
  try {
    hsm = startSoftHsm();
  } catch (err) {
    // In CI SoftHSM2 is installed by harness/setup.sh: a failure there is a failure.
    if (process.env.CI) throw err;
    console.log(`bench: PKCS#11 rows skipped: SoftHSM2 could not be started (${String(err).split('\n')[0]})`);
    return { groups: [], close: async () => {} };
  }
  // The raw loop's module is initialised on this thread before the pool's threads start (RawPkcs11.initialize).
  const rawLib = RawPkcs11.initialize(hsm);
  const store = new MemoryKeyStore();
  // Threads, whatever the default kind: these rows are CPU time of this process, and a child
  // process's CPU would not be counted (the process pool's figures are pkcs11.ts's, wall clock).
  const root = await Pkcs11Root.open(hsm.uri('kw-bench-run'), { store, create: true, pool: 'threads' });
  const kw = new Keywarden({ store, root });
  const k = await kw.createKey('in-hsm', { kekMode: 'root' });
  await kw.createKey('in-memory', { kekMode: 'memory' });
  const ref = (await store.getVersion(k.id, 1))?.wrappedMaterial.slice(5) as Uint8Array;
  const raw = new RawPkcs11(hsm, ref, rawLib);
  const iv = new Uint8Array(randomBytes(12));
  const aad = new Uint8Array(randomBytes(80));
  const dek = new Uint8Array(randomBytes(32));
  const context = { tenant: 'bench' };
  const roundTrip = (key: string) => async () => {
    const d = await kw.generateDataKey(key, context);
    await kw.decryptDataKey(d.wrapped, context, { key });
  };
  const fanOut = (f: () => unknown) => () => Promise.all(Array.from({ length: concurrency }, f));
  const RAW = 'raw pkcs11js loop, same token and key (C_Encrypt + C_Decrypt of 32 B)';
  const groups = [
    {
      name: `${PKCS11_GROUP_PREFIX} (SoftHSM2)`,
      cases: [
        { label: RAW, kind: 'raw' as Kind, fn: () => raw.wrapUnwrap(iv, aad, dek) },
        { label: 'keywarden, KEK in the HSM (worker pool)', kind: 'keywarden-pkcs11' as Kind, fn: roundTrip('in-hsm') },
        {
          label: 'keywarden, KEK in memory (HSM root)',
          kind: 'keywarden-pkcs11' as Kind,
          fn: roundTrip('in-memory'),
          gate: true,
        },
      ],
    },
    {
      name: `${PKCS11_GROUP_PREFIX}, ${concurrency} concurrent callers (SoftHSM2)`,
      cases: [
        { label: RAW, kind: 'raw' as Kind, perCall: concurrency, fn: fanOut(() => raw.wrapUnwrap(iv, aad, dek)) },
        {
          label: 'keywarden, KEK in the HSM (worker pool)',
          kind: 'keywarden-pkcs11' as Kind,
          perCall: concurrency,
          fn: fanOut(roundTrip('in-hsm')),
          gate: true,
        },
      ],
    },
  ];
  return {
    groups,
    close: async () => {
      raw.close();
      await kw.close();
      await root.close();
      hsm.stop();
    },
  };
}
