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
 *   raw pkcs11js process       THE BASELINE of the 0.9 target: one child process of its own doing
 *                              C_EncryptInit/C_Encrypt/C_DecryptInit/C_Decrypt synchronously in a
 *                              loop, one session, the same key object, the same work as Keywarden's
 *                              KEK-in-HSM op (a 32-byte key, a 12-byte IV, and the very AAD
 *                              Keywarden binds, captured from a real wrap); it counts its own ops
 *                              over its own clock, so nothing of this process is in its figure
 *   raw pkcs11js loop, main    the same loop on this process's main thread (blocks the event loop;
 *                              kept for comparison with the figures recorded before; not a baseline)
 *   pkcs11js async, N sessions the other design: the *Async variants on libuv's pool, N loops
 *   pool, N workers            Keywarden (generateDataKey + decryptDataKey, KEK in the HSM) through
 *                              the worker pool, 64 concurrent callers: worker threads, and worker
 *                              processes (pool: 'processes', one module instance per child)
 *   KEK in memory              the same key mode "memory": the HSM root unwrapped the KEK once
 *   idle event loop            nothing at all: the event-loop delay this machine adds by itself;
 *                              every event-loop target is reported beside this row's p99 and max
 *                              from the same run, so that the machine's noise is visible
 *
 * Maximum event-loop delay (perf_hooks.monitorEventLoopDelay) is recorded during every case.
 * `--only REGEX` keeps the cases whose label matches (plus the two baselines: raw process, idle).
 */
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
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
    only: { type: 'string' },
    'raw-child': { type: 'boolean' },
  },
});
const SECONDS = Number(values.seconds);
const ROUNDS = Number(values.rounds);
const CALLERS = 64;
const CORES = availableParallelism();
const PKG_DIR = fileURLToPath(new URL('..', import.meta.url));
const POOL_KINDS: PoolKind[] = ['threads', 'processes'];
const RAW_PROCESS = 'raw pkcs11js process (synchronous loop, 1 session): the baseline';
const IDLE = 'idle event loop (nothing running: the machine’s delay floor)';

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
  /** CPU time per op (µs, median over rounds): this process's (the host's: Keywarden, the pool, the
   * IPC), and the worker processes' (read from /proc; process pools and the raw process only). */
  hostCpuUsPerOp: number;
  workersCpuUsPerOp: number | null;
}

type Runner = (deadline: number) => Promise<number>;

/** A case: how to run it, and (process pools) the worker processes whose CPU time to count. */
interface Case {
  label: string;
  run: Runner;
  pids?: () => number[];
  /** The raw process counts its own CPU time (µs) over its last run. */
  ownCpuUs?: () => number;
}

/** User + system CPU time of a process so far, in µs (Linux /proc; 0 when it is gone). */
function cpuOf(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / 100;
  } catch {
    return 0;
  }
}

/** Ops per wall second of `run`, the worst event-loop delay while it ran, and CPU per op. */
async function measure(c: Case): Promise<{ ops: number; eld: number; p99: number; host: number; workers: number }> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  const pids = c.pids?.() ?? [];
  const workers0 = pids.map(cpuOf);
  const cpu0 = process.cpuUsage();
  h.enable();
  const start = performance.now();
  const n = await c.run(start + SECONDS * 1000);
  const elapsed = (performance.now() - start) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const workersUs = c.ownCpuUs ? c.ownCpuUs() : pids.reduce((sum, pid, i) => sum + cpuOf(pid) - (workers0[i] ?? 0), 0);
  // Let the monitor's timer fire once more: a loop blocked until the end must still be recorded.
  await new Promise((r) => setTimeout(r, 2));
  h.disable();
  const ops = n / elapsed;
  const done = ops * elapsed;
  return {
    ops,
    eld: h.max / 1e6,
    p99: h.percentile(99) / 1e6,
    host: done > 0 ? (cpu.user + cpu.system) / done : 0,
    workers: done > 0 ? workersUs / done : 0,
  };
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

/** What the raw baseline process needs (no secret but the PIN file's path). */
interface RawConfig {
  module: string;
  token: string;
  pinFile: string;
  softhsmConf: string;
  keyId: number[];
  iv: number[];
  aad: number[];
  dek: number[];
}

/** The raw baseline: one process of its own (this script with --raw-child), set up once, then one
 * loop of `seconds` per round on request; it answers its own count and its own elapsed time. */
async function rawProcess(
  config: RawConfig,
): Promise<{ run: Runner; cpuUs: () => number; close: () => Promise<void> }> {
  const child = fork(fileURLToPath(import.meta.url), ['--raw-child'], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    execArgv: [],
  });
  const next = () =>
    new Promise<{ n: number; ms: number; cpuUs: number }>((resolve, reject) => {
      child.once('message', (m) => resolve(m as { n: number; ms: number; cpuUs: number }));
      child.once('exit', (code) => reject(new Error(`bench: the raw baseline process exited (${code})`)));
    });
  const ready = next();
  child.send(config);
  await ready;
  let last = 0;
  let lastCpu = 0;
  return {
    cpuUs: () => lastCpu,
    run: async (deadline) => {
      const done = next();
      child.send({ ms: deadline - performance.now() });
      const { n, ms, cpuUs } = await done;
      lastCpu = (cpuUs * (performance.now() - (deadline - SECONDS * 1000))) / ms;
      // measure() divides by its own elapsed time: scale the count to it, so the rate is the child's.
      last = n / (ms / 1000);
      return last * ((performance.now() - (deadline - SECONDS * 1000)) / 1000);
    },
    close: async () => {
      child.removeAllListeners('exit');
      const gone = new Promise((r) => child.once('exit', r));
      child.disconnect();
      await gone;
    },
  };
}

function rawChild(): void {
  process.once('message', (c: RawConfig) => {
    process.env.SOFTHSM2_CONF = c.softhsmConf;
    const raw = new RawPkcs11(
      { module: c.module, token: c.token, pinFile: c.pinFile, uri: () => '', stop: () => {} },
      new Uint8Array(c.keyId),
    );
    const iv = new Uint8Array(c.iv);
    const aad = new Uint8Array(c.aad);
    const dek = new Uint8Array(c.dek);
    for (let i = 0; i < 200; i++) raw.wrapUnwrap(iv, aad, dek);
    process.on('message', ({ ms }: { ms: number }) => {
      const cpu0 = process.cpuUsage();
      const start = performance.now();
      const end = start + ms;
      let n = 0;
      while (performance.now() < end) {
        for (let i = 0; i < 16; i++) raw.wrapUnwrap(iv, aad, dek);
        n += 16;
      }
      const cpu = process.cpuUsage(cpu0);
      process.send?.({ n, ms: performance.now() - start, cpuUs: cpu.user + cpu.system });
    });
    process.on('disconnect', () => {
      raw.close();
      process.exit(0);
    });
    process.send?.({ n: 0, ms: 0, cpuUs: 0 });
  });
}

async function main(): Promise<void> {
  const only = values.only ? new RegExp(values.only) : undefined;
  const hsm = startSoftHsm();
  const closers: Array<() => Promise<void> | void> = [];
  try {
    const store = new MemoryKeyStore();
    const setupRoot = await Pkcs11Root.open(hsm.uri('kw-bench-root'), { store, create: true, poolSize: 1 });
    const kw0 = new Keywarden({ store, root: setupRoot });
    const hsmKey = await kw0.createKey('in-hsm', { kekMode: 'root' });
    await kw0.createKey('in-memory', { kekMode: 'memory' });
    const ref = (await store.getVersion(hsmKey.id, 1))?.wrappedMaterial.slice(5) as Uint8Array;
    // The associated data Keywarden binds to a data-key wrap (docs/format.md §2's header and the
    // encoded context), captured from a real wrap, so that the raw baseline does the same work.
    const context = { tenant: 'bench' };
    let captured: Uint8Array | undefined;
    const seal = setupRoot.sealDataKey.bind(setupRoot);
    setupRoot.sealDataKey = (r, k, d, a) => {
      captured = a.slice();
      return seal(r, k, d, a);
    };
    await kw0.generateDataKey('in-hsm', context);
    await kw0.close();
    await setupRoot.close();

    const raw = new RawPkcs11(hsm, ref);
    closers.push(() => raw.close());
    const iv = new Uint8Array(randomBytes(12));
    if (!captured) throw new Error('bench: no data-key AAD captured');
    const aad = captured;
    const dek = new Uint8Array(randomBytes(32));
    const rawProc = await rawProcess({
      module: hsm.module,
      token: hsm.token,
      pinFile: hsm.pinFile,
      softhsmConf: process.env.SOFTHSM2_CONF as string,
      keyId: [...ref],
      iv: [...iv],
      aad: [...aad],
      dek: [...dek],
    });
    closers.push(() => rawProc.close());

    const cases: Case[] = [];
    cases.push({ label: RAW_PROCESS, run: rawProc.run, ownCpuUs: rawProc.cpuUs });
    cases.push({
      label: 'raw pkcs11js loop on the main thread (1 session; not the baseline)',
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
      label: IDLE,
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
    // Process pools also at workerNice 10 (the workers below the host's priority), beside the default.
    const variants: Array<[PoolKind, number, number | undefined]> = [];
    for (const pool of POOL_KINDS) {
      for (const w of sizes(pool)) {
        variants.push([pool, w, undefined]);
        if (pool === 'processes') variants.push([pool, w, 10]);
      }
    }
    for (const [pool, workers, nice] of variants) {
      const root = await Pkcs11Root.open(hsm.uri('kw-bench-root'), {
        store,
        poolSize: workers,
        pool,
        ...(nice !== undefined ? { workerNice: nice } : {}),
      });
      roots.push(root);
      closers.push(() => root.close());
      const kw = new Keywarden({ store, root });
      const warm = await kw.generateDataKey('in-hsm', context);
      await kw.decryptDataKey(warm.wrapped, context, { key: 'in-hsm' });
      cases.push({
        label: `keywarden KEK in HSM, ${poolName(pool, workers)}${nice !== undefined ? `, workerNice ${nice}` : ''}, ${CALLERS} callers`,
        run: concurrently(CALLERS, async () => {
          const d = await kw.generateDataKey('in-hsm', context);
          await kw.decryptDataKey(d.wrapped, context, { key: 'in-hsm' });
        }),
        ...(pool === 'processes' ? { pids: () => root.pool.pids() } : {}),
      });
      if (workers === CORES && pool === 'threads' && nice === undefined) {
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

    if (only) {
      const keep = cases.filter((c) => c.label === RAW_PROCESS || c.label === IDLE || only.test(c.label));
      cases.splice(0, cases.length, ...keep);
    }
    const ops = new Map<string, number[]>(cases.map((c) => [c.label, []]));
    const eld = new Map<string, number[]>(cases.map((c) => [c.label, []]));
    const p99 = new Map<string, number[]>(cases.map((c) => [c.label, []]));
    const host = new Map<string, number[]>(cases.map((c) => [c.label, []]));
    const work = new Map<string, number[]>(cases.map((c) => [c.label, []]));
    for (let r = 0; r < ROUNDS; r++) {
      for (const c of cases) {
        const m = await measure(c);
        ops.get(c.label)?.push(m.ops);
        eld.get(c.label)?.push(m.eld);
        p99.get(c.label)?.push(m.p99);
        host.get(c.label)?.push(m.host);
        work.get(c.label)?.push(m.workers);
      }
    }
    const results: CaseResult[] = cases.map((c) => ({
      label: c.label,
      opsPerSecond: Math.round(median(ops.get(c.label) as number[])),
      p99EventLoopDelayMs: Math.round(median(p99.get(c.label) as number[]) * 10) / 10,
      maxEventLoopDelayMs: Math.round(Math.max(...(eld.get(c.label) as number[])) * 10) / 10,
      hostCpuUsPerOp: Math.round(median(host.get(c.label) as number[]) * 10) / 10,
      workersCpuUsPerOp: c.pids || c.ownCpuUs ? Math.round(median(work.get(c.label) as number[]) * 10) / 10 : null,
    }));
    const byLabel = (re: RegExp) => results.find((r) => re.test(r.label));
    const rawOps = results.find((r) => r.label === RAW_PROCESS)?.opsPerSecond as number;
    const idle = results.find((r) => r.label === IDLE) as CaseResult;
    const beside = (r: CaseResult | undefined) =>
      r
        ? `${r.maxEventLoopDelayMs} (p99 ${r.p99EventLoopDelayMs}; idle loop: max ${idle.maxEventLoopDelayMs}, p99 ${idle.p99EventLoopDelayMs})`
        : null;
    const poolN = byLabel(new RegExp(`KEK in HSM, ${poolName('threads', CORES)},`));
    const pool1 = byLabel(new RegExp(`KEK in HSM, ${poolName('threads', 1)},`));
    const procN = byLabel(new RegExp(`KEK in HSM, ${poolName('processes', CORES)},`));
    const proc1 = byLabel(new RegExp(`KEK in HSM, ${poolName('processes', 1)},`));
    const procN0 = byLabel(new RegExp(`KEK in HSM, ${poolName('processes', CORES)}, workerNice 10,`));
    const proc10 = byLabel(new RegExp(`KEK in HSM, ${poolName('processes', 1)}, workerNice 10,`));
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
    const targets: Record<string, number | string | null> = {
      'KEK in HSM, pool of 1 ÷ raw pkcs11js loop (target ≥ 0.9; baseline: the raw pkcs11js process)': pool1
        ? ratio(pool1.opsPerSecond, rawOps)
        : null,
      [`KEK in HSM, pool of ${CORES} ÷ raw pkcs11js loop (target ≥ 0.9; baseline: the raw pkcs11js process)`]: poolN
        ? ratio(poolN.opsPerSecond, rawOps)
        : null,
      [`pool of ${CORES} ÷ pool of 1 (target ≥ 1.7 on 2 cores)`]:
        poolN && pool1 ? ratio(poolN.opsPerSecond, pool1.opsPerSecond) : null,
      'max event-loop delay, pool of 1, ms (target < 10), beside the idle loop of the same run': beside(pool1),
      [`max event-loop delay, pool of ${CORES}, ms (target < 10), beside the idle loop of the same run`]: beside(poolN),
      'KEK in HSM, process pool of 1 ÷ raw pkcs11js loop (target ≥ 0.9; baseline: the raw pkcs11js process)': proc1
        ? ratio(proc1.opsPerSecond, rawOps)
        : null,
      [`KEK in HSM, process pool of ${CORES} ÷ raw pkcs11js loop (target ≥ 0.9; baseline: the raw pkcs11js process)`]:
        procN ? ratio(procN.opsPerSecond, rawOps) : null,
      [`process pool of ${CORES} ÷ process pool of 1 (target ≥ 1.7 on 2 cores)`]:
        procN && proc1 ? ratio(procN.opsPerSecond, proc1.opsPerSecond) : null,
      [`process pool of ${CORES} ÷ thread pool of ${CORES}`]:
        procN && poolN ? ratio(procN.opsPerSecond, poolN.opsPerSecond) : null,
      'max event-loop delay, process pool of 1, ms (target < 10), beside the idle loop of the same run': beside(proc1),
      [`max event-loop delay, process pool of ${CORES}, ms (target < 10), beside the idle loop of the same run`]:
        beside(procN),
      'workerNice 10: KEK in HSM, process pool of 1 ÷ raw pkcs11js process': proc10
        ? ratio(proc10.opsPerSecond, rawOps)
        : null,
      [`workerNice 10: process pool of ${CORES} ÷ process pool of 1`]:
        procN0 && proc10 ? ratio(procN0.opsPerSecond, proc10.opsPerSecond) : null,
      [`workerNice 10: max event-loop delay, process pool of ${CORES}, beside the idle loop`]: beside(procN0),
    };
    // The CPU bound on the process pool's scaling: on CORES cores a pool of N cannot do more ops per
    // second than CORES ÷ (the workers' + the host's CPU time per op), whatever its design; divided
    // by the pool of 1's measured rate, that bounds the ratio above. And the host's CPU per op that
    // the 1.7 target would leave room for, given the workers' own cost per op.
    if (procN && proc1 && procN.workersCpuUsPerOp !== null) {
      const perOp = procN.workersCpuUsPerOp + procN.hostCpuUsPerOp;
      targets[
        `CPU bound of process pool of ${CORES} ÷ process pool of 1 on ${CORES} cores: ${CORES} s ÷ (${perOp.toFixed(0)} µs per op: workers ${procN.workersCpuUsPerOp} + host ${procN.hostCpuUsPerOp}) ÷ ${proc1.opsPerSecond} ops/s`
      ] = ratio((CORES * 1e6) / perOp, proc1.opsPerSecond);
      targets[
        `host CPU per op the 1.7 target would allow at that pool-of-1 rate (µs; measured ${procN.hostCpuUsPerOp})`
      ] = Math.round(((CORES * 1e6) / (1.7 * proc1.opsPerSecond) - procN.workersCpuUsPerOp) * 10) / 10;
    }
    const lines = [
      `# PKCS#11 root on SoftHSM2 (wall clock)`,
      '',
      `${meta.date} · node ${meta.node} · ${meta.cpus} × ${meta.cpuModel} · load ${meta.loadAverage.join(' ')} · ${ROUNDS} rounds × ${SECONDS} s per case, interleaved, median · one op = data-key wrap + unwrap`,
      '',
      '| case | ops/s | × raw process | event-loop delay p99 / max | CPU µs per op: host / worker processes |',
      '|---|---:|---:|---:|---:|',
      ...results.map(
        (r) =>
          `| ${r.label} | ${r.opsPerSecond.toLocaleString('en-US')} | ${(r.opsPerSecond / rawOps).toFixed(2)} | ${r.p99EventLoopDelayMs} / ${r.maxEventLoopDelayMs} ms | ${r.hostCpuUsPerOp} / ${r.workersCpuUsPerOp ?? '—'} |`,
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

if (values['raw-child']) rawChild();
else await main();
