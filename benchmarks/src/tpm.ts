/**
 * The TPM root's WALL-clock rates (docs/tpm.md §Measured), on a swtpm this script starts itself
 * with harness/swtpm.sh and stops at the end:
 *
 *   pnpm --filter @keywarden/benchmarks run bench:tpm          # ~30 s; results/tpm.{json,md}
 *   node dist/tpm.js --seconds 2 --rounds 5                    # longer
 *
 * run.ts's TPM rows are CPU-time ratios of this process and cannot show swtpm's own time (another
 * process); these are wall-clock operations per second, cases interleaved round by round, the
 * median kept. An unseal "op" is Load + Unseal + FlushContext of one sealed object.
 *
 *   raw ESAPI loop             the ceiling: koffi straight onto libtss2-esys, synchronous calls on
 *                              the main thread, password sessions, no wrapper
 *   tss2, password session     @keywarden/tss2 (asynchronous calls on koffi's worker threads)
 *   tss2, salted + encrypted   the same in an HMAC session salted with the primary key, AES-CFB
 *                              parameter encryption on Unseal (what the root does)
 *   TpmRoot.unwrapKey          the root: the above plus the AAD-derived auth value
 *   cached KEK data key        Keywarden generateDataKey + decryptDataKey with the TPM root; the
 *                              KEK is unsealed once and cached, so the TPM is not on this path
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Keywarden, MemoryKeyStore } from '@keywarden/core';
import { TpmRoot } from '@keywarden/tpm';
import { Esys, ESYS_TR, sealedObjectTemplate, storagePrimaryTemplate, TPMA_SESSION } from '@keywarden/tss2';
import { median } from './_measure.js';
import { BENCH_PRIMARY_HANDLE, BENCH_ROOT_HANDLE, RawEsys, startTpm } from './_tpm.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '1' },
    rounds: { type: 'string', default: '3' },
    out: { type: 'string' },
  },
});
const SECONDS = Number(values.seconds);
const ROUNDS = Number(values.rounds);
const OUT = values.out ?? fileURLToPath(new URL('../results', import.meta.url));

async function rate(fn: () => unknown): Promise<number> {
  let n = 0;
  const start = performance.now();
  const end = start + SECONDS * 1000;
  while (performance.now() < end) {
    await fn();
    n++;
  }
  return n / ((performance.now() - start) / 1000);
}

const tpm = startTpm();
try {
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
  const cycle = (sessions?: number[]) => async () => {
    const item = await esys.load(primary.handle, sealed.outPrivate, sealed.outPublic);
    try {
      if (sessions) await esys.setSessionAttributes(session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT);
      (await esys.unseal(item, sessions)).fill(0);
    } finally {
      await esys.flushContext(item);
    }
  };
  const cases: Array<{ label: string; fn: () => unknown }> = [
    { label: 'raw ESAPI loop (synchronous, password sessions)', fn: () => raw.cycle(prepared) },
    { label: '@keywarden/tss2, password session', fn: cycle() },
    { label: '@keywarden/tss2, salted session + parameter encryption', fn: cycle([session]) },
    { label: 'TpmRoot.unwrapKey', fn: async () => (await root.unwrapKey(blob, aad)).fill(0) },
    {
      label: 'cached KEK: generateDataKey + decryptDataKey (TPM root)',
      fn: async () => {
        const d = await kw.generateDataKey('tpm-bench', context);
        await kw.decryptDataKey(d.wrapped, context, { key: 'tpm-bench' });
      },
    },
  ];
  const samples = new Map(cases.map((c) => [c.label, [] as number[]]));
  for (const c of cases) await rate(c.fn); // warm-up
  for (let r = 0; r < ROUNDS; r++) for (const c of cases) samples.get(c.label)?.push(await rate(c.fn));
  const rows = cases.map((c) => {
    const s = samples.get(c.label) as number[];
    return { label: c.label, opsPerSecond: Math.round(median(s)), msPerOp: Number((1000 / median(s)).toFixed(3)) };
  });
  const meta = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: cpus().length,
    loadAverage: loadavg().map((x) => Number(x.toFixed(2))),
    seconds: SECONDS,
    rounds: ROUNDS,
  };
  const md = [
    `# TPM root, wall clock (swtpm)`,
    '',
    `${meta.date}, Node ${meta.node}, ${meta.cpus} CPUs, load average ${meta.loadAverage.join(' ')}; median of ${ROUNDS} rounds × ${SECONDS} s.`,
    '',
    '| case | ops/s | ms/op |',
    '|---|---:|---:|',
    ...rows.map((r) => `| ${r.label} | ${r.opsPerSecond} | ${r.msPerOp} |`),
    '',
  ].join('\n');
  console.log(md);
  mkdirSync(OUT, { recursive: true });
  writeFileSync(join(OUT, 'tpm.json'), `${JSON.stringify({ meta, rows }, null, 2)}\n`);
  writeFileSync(join(OUT, 'tpm.md'), md);
  await kw.close();
  await root.close();
  await esys.close();
  raw.close();
} finally {
  tpm.stop();
}
