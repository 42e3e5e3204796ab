/**
 * The PKCS#11 root's throughput and event-loop figures (docs/pkcs11.md), on a SoftHSM2 token this
 * script starts itself with harness/softhsm.sh and removes at the end:
 *
 *   pnpm --filter @keywarden/benchmarks run bench:pkcs11            # ~1 min; results/pkcs11.{json,md}
 *   node dist/pkcs11.js --seconds 2 --rounds 5                      # longer
 *
 * Unlike run.ts's CPU-time ratios, these are WALL-clock rates: the point of the worker pool is to
 * use more than one core and to keep the event loop free, and CPU time cannot show either. Cases
 * are interleaved round by round, the median kept; a data-key "op" is one wrap plus one unwrap of a
 * 32-byte key (two AES-GCM calls in the token).
 *
 *   raw pkcs11js loop          the ceiling: C_EncryptInit/C_Encrypt/C_DecryptInit/C_Decrypt on the
 *                              main thread, one session, the same key object (blocks the event loop)
 *   pkcs11js async, N sessions the other design: the *Async variants on libuv's pool, N loops
 *   pool, N workers            Keywarden (generateDataKey + decryptDataKey, KEK in the HSM) through
 *                              the worker pool, 64 concurrent callers: worker threads, and worker
 *                              processes (pool: 'processes', one module instance per child)
 *   KEK in memory              the same key mode "memory": the HSM root unwrapped the KEK once
 *   idle event loop            nothing at all: the event-loop delay this machine adds by itself
 *
 * Maximum event-loop delay (perf_hooks.monitorEventLoopDelay) is recorded during every case.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Keywarden, kekAad, MemoryKeyStore } from '@keywarden/core';
import { type PoolKind, Pkcs11Root } from '@keywarden/pkcs11';
import { median } from './_measure.js';
import { RawPkcs11, startSoftHsm } from './_softhsm.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '0.6' },
    rounds: { type: 'string', default: '3' },
    out: { type: 'string' },
  },
});
const SECONDS = Number(values.seconds);
const ROUNDS = Number(values.rounds);
const CALLERS = 64;
const CORES = availableParallelism();
const PKG_DIR = fileURLToPath(new URL('..', import.meta.url));
const POOL_KINDS: PoolKind[] = ['threads', 'processes'];

/** "pool of 2 workers" (threads, the rows' historical name) or "process pool of 2 workers". */
function poolName(pool: PoolKind, workers: number): string {
  return `${pool === 'processes' ? 'process pool' : 'pool'} of ${workers} worker${workers > 1 ? 's' : ''}`;
}

interface CaseResult {
  label: string;
  opsPerSecond: number;
  /** The 99th percentile of the event-loop delay (median over rounds) and its maximum (the worst round). */
  p99EventLoopDelayMs: number;
  maxEventLoopDelayMs: number;
}

type Runner = (deadline: number) => Promise<number>;

/** Ops per wall second of `run`, and the worst event-loop delay while it ran. */
async function measure(run: Runner): Promise<{ ops: number; eld: number; p99: number }> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  const start = performance.now();
  const n = await run(start + SECONDS * 1000);
  const elapsed = (performance.now() - start) / 1000;
  // Let the monitor's timer fire once more: a loop blocked until the end must still be recorded.
  await new Promise((r) => setTimeout(r, 2));
  h.disable();
  return { ops: n / elapsed, eld: h.max / 1e6, p99: h.percentile(99) / 1e6 };
}

/** `callers` concurrent loops of `op` until the deadline; the number of ops done. */
function concurrently(callers: number, op: () => Promise<unknown>): Runner {
  return async (deadline) => {
    let n = 0;
    await Promise.all(
      Array.from({ length: callers }, async () => {
        while (performance.now() < deadline) {
          await op();
          n++;
        }
      }),
    );
    return n;
  };
}

async function main(): Promise<void> {
  const hsm = startSoftHsm();
  const closers: Array<() => Promise<void> | void> = [];
  try {
    const store = new MemoryKeyStore();
    const setupRoot = await Pkcs11Root.open(hsm.uri('kw-bench-root'), { store, create: true, poolSize: 1 });
    const kw0 = new Keywarden({ store, root: setupRoot });
    const hsmKey = await kw0.createKey('in-hsm', { kekMode: 'root' });
    await kw0.createKey('in-memory', { kekMode: 'memory' });
    const ref = (await store.getVersion(hsmKey.id, 1))?.wrappedMaterial.slice(5) as Uint8Array;
    await kw0.close();
    await setupRoot.close();

    const raw = new RawPkcs11(hsm, ref);
    closers.push(() => raw.close());
    const iv = new Uint8Array(randomBytes(12));
    const aad = new Uint8Array(randomBytes(80));
    const dek = new Uint8Array(randomBytes(32));
    const context = { tenant: 'bench' };

    const cases: Array<{ label: string; run: Runner }> = [];
    cases.push({
      label: 'raw pkcs11js loop (main thread, 1 session)',
      run: async (deadline) => {
        let n = 0;
        while (performance.now() < deadline) {
          for (let i = 0; i < 64; i++) raw.wrapUnwrap(iv, aad, dek);
          n += 64;
          // Yield now and then, as any server would, so the loop delay shows the blocked stretches.
          await new Promise((r) => setImmediate(r));
        }
        return n;
      },
    });
    // The machine's own floor: nothing runs, the loop only waits. A shared or virtual machine that
    // deschedules this process shows it here, and no case below can have a smaller delay.
    cases.push({
      label: 'idle event loop (nothing running: the machine’s delay floor)',
      run: async (deadline) => {
        await new Promise((r) => setTimeout(r, Math.max(0, deadline - performance.now())));
        return 0;
      },
    });
    for (const sessions of [...new Set([1, CORES, 4])]) {
      const list = Array.from({ length: sessions }, () => raw.openSession());
      cases.push({
        label: `pkcs11js async (libuv pool), ${sessions} session${sessions > 1 ? 's' : ''}`,
        run: async (deadline) => {
          let n = 0;
          await Promise.all(
            list.map(async (s) => {
              while (performance.now() < deadline) {
                await raw.wrapUnwrapAsync(s, iv, aad, dek);
                n++;
              }
            }),
          );
          return n;
        },
      });
    }
    const roots: Pkcs11Root[] = [];
    const sizes = (pool: PoolKind) => (pool === 'threads' ? [...new Set([1, CORES, 4])] : [...new Set([1, CORES])]);
    for (const [pool, workers] of POOL_KINDS.flatMap((pool) => sizes(pool).map((w) => [pool, w] as const))) {
      const root = await Pkcs11Root.open(hsm.uri('kw-bench-root'), { store, poolSize: workers, pool });
      roots.push(root);
      closers.push(() => root.close());
      const kw = new Keywarden({ store, root });
      const warm = await kw.generateDataKey('in-hsm', context);
      await kw.decryptDataKey(warm.wrapped, context, { key: 'in-hsm' });
      cases.push({
        label: `keywarden KEK in HSM, ${poolName(pool, workers)}, ${CALLERS} callers`,
        run: concurrently(CALLERS, async () => {
          const d = await kw.generateDataKey('in-hsm', context);
          await kw.decryptDataKey(d.wrapped, context, { key: 'in-hsm' });
        }),
      });
      if (workers === CORES && pool === 'threads') {
        const k = root.kekInRoot;
        const versionAad = kekAad(hsmKey.id, 1);
        cases.push({
          label: `Pkcs11Root sealDataKey + openDataKey alone, pool of ${workers}, ${CALLERS} callers`,
          run: concurrently(CALLERS, async () => {
            const s = await k.sealDataKey(ref, versionAad, dek, aad);
            await k.openDataKey(ref, versionAad, s.nonce, s.sealed, aad);
          }),
        });
        const warmMem = await kw.generateDataKey('in-memory', context);
        await kw.decryptDataKey(warmMem.wrapped, context, { key: 'in-memory' });
        cases.push({
          label: `keywarden KEK in memory (unwrapped once by the HSM root), ${CALLERS} callers`,
          run: concurrently(CALLERS, async () => {
            const d = await kw.generateDataKey('in-memory', context);
            await kw.decryptDataKey(d.wrapped, context, { key: 'in-memory' });
          }),
        });
      }
    }

    const ops = new Map<string, number[]>(cases.map((c) => [c.label, []]));
    const eld = new Map<string, number[]>(cases.map((c) => [c.label, []]));
    const p99 = new Map<string, number[]>(cases.map((c) => [c.label, []]));
    for (let r = 0; r < ROUNDS; r++) {
      for (const c of cases) {
        const m = await measure(c.run);
        ops.get(c.label)?.push(m.ops);
        eld.get(c.label)?.push(m.eld);
        p99.get(c.label)?.push(m.p99);
      }
    }
    const results: CaseResult[] = cases.map((c) => ({
      label: c.label,
      opsPerSecond: Math.round(median(ops.get(c.label) as number[])),
      p99EventLoopDelayMs: Math.round(median(p99.get(c.label) as number[]) * 10) / 10,
      maxEventLoopDelayMs: Math.round(Math.max(...(eld.get(c.label) as number[])) * 10) / 10,
    }));
    const rawOps = results[0]?.opsPerSecond as number;
    const byLabel = (re: RegExp) => results.find((r) => re.test(r.label));
    const poolN = byLabel(new RegExp(`KEK in HSM, ${poolName('threads', CORES)},`));
    const pool1 = byLabel(new RegExp(`KEK in HSM, ${poolName('threads', 1)},`));
    const procN = byLabel(new RegExp(`KEK in HSM, ${poolName('processes', CORES)},`));
    const proc1 = byLabel(new RegExp(`KEK in HSM, ${poolName('processes', 1)},`));
    const meta = {
      date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
      node: process.version,
      cpus: cpus().length,
      cpuModel: (cpus()[0]?.model ?? 'unknown').trim(),
      loadAverage: loadavg().map((l) => Math.round(l * 10) / 10),
      secondsPerCase: SECONDS,
      rounds: ROUNDS,
      callers: CALLERS,
    };
    const ratio = (x: number, y: number) => Math.round((x / y) * 100) / 100;
    const targets: Record<string, number | null> = {
      'KEK in HSM, pool of 1 ÷ raw pkcs11js loop (target ≥ 0.9)': pool1 ? ratio(pool1.opsPerSecond, rawOps) : null,
      [`KEK in HSM, pool of ${CORES} ÷ raw pkcs11js loop (target ≥ 0.9)`]: poolN
        ? ratio(poolN.opsPerSecond, rawOps)
        : null,
      [`pool of ${CORES} ÷ pool of 1 (target ≥ 1.7 on 2 cores)`]:
        poolN && pool1 ? ratio(poolN.opsPerSecond, pool1.opsPerSecond) : null,
      'max event-loop delay, pool of 1, ms (target < 10)': pool1?.maxEventLoopDelayMs ?? null,
      [`max event-loop delay, pool of ${CORES}, ms (target < 10)`]: poolN?.maxEventLoopDelayMs ?? null,
      'KEK in HSM, process pool of 1 ÷ raw pkcs11js loop (target ≥ 0.9)': proc1
        ? ratio(proc1.opsPerSecond, rawOps)
        : null,
      [`KEK in HSM, process pool of ${CORES} ÷ raw pkcs11js loop (target ≥ 0.9)`]: procN
        ? ratio(procN.opsPerSecond, rawOps)
        : null,
      [`process pool of ${CORES} ÷ process pool of 1 (target ≥ 1.7 on 2 cores)`]:
        procN && proc1 ? ratio(procN.opsPerSecond, proc1.opsPerSecond) : null,
      [`process pool of ${CORES} ÷ thread pool of ${CORES}`]:
        procN && poolN ? ratio(procN.opsPerSecond, poolN.opsPerSecond) : null,
      'max event-loop delay, process pool of 1, ms (target < 10)': proc1?.maxEventLoopDelayMs ?? null,
      [`max event-loop delay, process pool of ${CORES}, ms (target < 10)`]: procN?.maxEventLoopDelayMs ?? null,
    };
    const lines = [
      `# PKCS#11 root on SoftHSM2 (wall clock)`,
      '',
      `${meta.date} · node ${meta.node} · ${meta.cpus} × ${meta.cpuModel} · load ${meta.loadAverage.join(' ')} · ${ROUNDS} rounds × ${SECONDS} s per case, interleaved, median · one op = data-key wrap + unwrap`,
      '',
      '| case | ops/s | × raw loop | event-loop delay p99 / max |',
      '|---|---:|---:|---:|',
      ...results.map(
        (r) =>
          `| ${r.label} | ${r.opsPerSecond.toLocaleString('en-US')} | ${(r.opsPerSecond / rawOps).toFixed(2)} | ${r.p99EventLoopDelayMs} / ${r.maxEventLoopDelayMs} ms |`,
      ),
      '',
      ...Object.entries(targets).map(([k, v]) => `- ${k}: ${v ?? 'n/a'}`),
      '',
    ];
    console.log(lines.join('\n'));
    const outDir = values.out ?? join(PKG_DIR, 'results');
    mkdirSync(outDir, { recursive: true });
    writeFileSync(join(outDir, 'pkcs11.json'), `${JSON.stringify({ meta, results, targets }, null, 2)}\n`);
    writeFileSync(join(outDir, 'pkcs11.md'), lines.join('\n'));
  } finally {
    for (const c of closers.reverse()) await c();
    hsm.stop();
  }
}

await main();
