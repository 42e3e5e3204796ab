/**
 * run.ts's TPM rows (ungated: kind "keywarden-tpm"), on a swtpm this module starts with
 * harness/swtpm.sh and stops in close(). As CPU-time ratios like every other row — of THIS process:
 * swtpm's own work is in another process and not counted, so these ratios compare the client-side
 * cost (FFI, ESAPI's session crypto, Keywarden's code); wall-clock rates are tpm.ts's (bench:tpm).
 *
 *   TPM unseal: raw ESAPI loop (synchronous koffi calls, password sessions, no wrapper; the ceiling)
 *     · @keywarden/tss2 with a salted session and parameter encryption · TpmRoot.unwrapKey
 *   TPM root, KEK cached: node:crypto AES-GCM wrap + unwrap of a 32-byte key (the ceiling)
 *     · Keywarden generateDataKey + decryptDataKey with the TPM root (the KEK unwrapped once)
 */
import { randomBytes } from 'node:crypto';
import { Keywarden, MemoryKeyStore } from '@keywarden/core';
import { TpmRoot } from '@keywarden/tpm';
import { Esys, ESYS_TR, sealedObjectTemplate, storagePrimaryTemplate, TPMA_SESSION } from '@keywarden/tss2';
import type { Kind } from './_report.js';
import { BENCH_PRIMARY_HANDLE, BENCH_ROOT_HANDLE, RawEsys, startTpm } from './_tpm.js';

interface Case {
  label: string;
  kind: Kind;
  fn: () => unknown;
  perCall?: number;
}

export async function tpmGroups(
  rawWrapUnwrap: () => unknown,
): Promise<{ groups: Array<{ name: string; cases: Case[] }>; close: () => Promise<void> }> {
  let tpm: ReturnType<typeof startTpm>;
  try {
    tpm = startTpm();
  } catch (err) {
    // In CI swtpm is installed by harness/setup.sh: a failure there is a failure.
    if (process.env.CI) throw err;
    console.log(`bench: TPM rows skipped: swtpm could not be started (${String(err).split('\n')[0]})`);
    return { groups: [], close: async () => {} };
  }
  // Every parent persistent: swtpm has 3 transient object slots and TPM2_Create needs a free one.
  const esys = await Esys.open({ tcti: tpm.tcti });
  const transient = await esys.createPrimary(ESYS_TR.RH_OWNER, storagePrimaryTemplate('ecc'));
  const primary = { handle: await esys.evictControl(ESYS_TR.RH_OWNER, transient.handle, BENCH_PRIMARY_HANDLE) };
  await esys.flushContext(transient.handle);
  const raw = new RawEsys(tpm.tcti, BENCH_PRIMARY_HANDLE);
  const session = await esys.startAuthSession({ tpmKey: primary.handle });
  const sealed = await esys.create(primary.handle, sealedObjectTemplate({ noDA: true }), {
    data: new Uint8Array(randomBytes(32)),
  });
  const prepared = raw.prepare(sealed.outPrivate, sealed.outPublic);
  const store = new MemoryKeyStore();
  const root = await TpmRoot.create({
    store,
    tcti: tpm.tcti,
    handle: BENCH_ROOT_HANDLE,
    authValue: new Uint8Array(randomBytes(32)),
  });
  const aad = new TextEncoder().encode('bench');
  const blob = await root.wrapKey(new Uint8Array(randomBytes(32)), aad);
  const kw = new Keywarden({ store, root });
  await kw.createKey('tpm-bench');
  const context = { tenant: 'bench' };
  const tss2Cycle = async () => {
    const item = await esys.load(primary.handle, sealed.outPrivate, sealed.outPublic);
    try {
      await esys.setSessionAttributes(session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT);
      (await esys.unseal(item, [session])).fill(0);
    } finally {
      await esys.flushContext(item);
    }
  };
  const groups = [
    {
      name: 'TPM unseal: Load + Unseal + FlushContext (swtpm)',
      cases: [
        {
          label: 'raw ESAPI loop (synchronous, password sessions)',
          kind: 'raw' as Kind,
          fn: () => raw.cycle(prepared),
        },
        {
          label: '@keywarden/tss2, salted session + parameter encryption',
          kind: 'keywarden-tpm' as Kind,
          fn: tss2Cycle,
        },
        {
          label: 'TpmRoot.unwrapKey (AAD-bound auth value)',
          kind: 'keywarden-tpm' as Kind,
          fn: async () => (await root.unwrapKey(blob, aad)).fill(0),
        },
      ],
    },
    {
      name: 'TPM root, KEK cached in memory: data key wrap + unwrap',
      cases: [
        { label: 'raw node:crypto AES-256-GCM wrap + unwrap of 32 B', kind: 'raw' as Kind, fn: rawWrapUnwrap },
        {
          label: 'keywarden generateDataKey + decryptDataKey (TPM root)',
          kind: 'keywarden-tpm' as Kind,
          fn: async () => {
            const d = await kw.generateDataKey('tpm-bench', context);
            await kw.decryptDataKey(d.wrapped, context, { key: 'tpm-bench' });
          },
        },
      ],
    },
  ];
  return {
    groups,
    close: async () => {
      await kw.close();
      await root.close();
      await esys.close();
      raw.close();
      tpm.stop();
    },
  };
}
