/**
 * Does SoftHSM2 let two threads (or two processes) run AES-GCM on one token at the same time?
 * The question behind issue #8's "pool ≥ 1.7 × one worker" target (docs/pkcs11.md, "Does SoftHSM2
 * scale?"). No Keywarden code is involved: each loop is raw pkcs11js, exactly the raw loop of
 * bench:pkcs11 (C_EncryptInit(CKM_AES_GCM, IV, AAD, 128-bit tag) + C_Encrypt of 32 B, then
 * C_DecryptInit + C_Decrypt), on its own session, with its own pkcs11js PKCS11 instance, on the same
 * key object of a SoftHSM2 token started with harness/softhsm.sh.
 *
 *   pnpm --filter @keywarden/benchmarks run bench:pkcs11-scaling     # ~40 s; results/pkcs11-scaling.{json,md}
 *   node dist/pkcs11-scaling.js --seconds 3 --rounds 5
 *
 * Rows, each with 1 and 2 concurrent loops (the machine's 2 cores), wall clock, interleaved, median:
 *   gcm, threads     worker_threads in this process (the pool's design)
 *   gcm, processes   child processes (each loads its own copy of the module: no shared mutex)
 *   random, threads  C_GenerateRandom(32): a module call that touches no key object
 *   node:crypto      AES-256-GCM of the same sizes in node:crypto: does this machine scale at all?
 * A loop count of 2 at ≈ 2 × the rate of 1 means the module runs the calls in parallel; ≈ 1 × means
 * it serialises them.
 */
import { fork } from 'node:child_process';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import type * as Pkcs11js from 'pkcs11js';
import { findSlot } from './_softhsm.js';

const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof Pkcs11js;
const SELF = fileURLToPath(import.meta.url);

type Kind = 'gcm' | 'random' | 'node';
type Where = 'threads' | 'processes' | 'threads-2-tokens';

interface LoopConfig {
  kind: Kind;
  module: string;
  softhsmConf: string;
  token: string;
  pinFile: string;
  keyId: string; // hex
  /** Date.now() at which every loop starts, and how long it runs. */
  startAt: number;
  ms: number;
}

/** One loop: set up (session, login, key), wait for the common start, count ops until the end.
 * `cpuMs`: this process's CPU time during the loop (meaningful for a loop alone in its process). */
function loop(c: LoopConfig): { n: number; cpuMs: number; waits: number } {
  const iv = randomBytes(12);
  const aad = randomBytes(80);
  const dek = randomBytes(32);
  let once: () => void;
  if (c.kind === 'node') {
    const key = randomBytes(32);
    once = () => {
      const e = createCipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
      e.setAAD(aad);
      const ct = Buffer.concat([e.update(dek), e.final()]);
      const tag = e.getAuthTag();
      const d = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
      d.setAAD(aad);
      d.setAuthTag(tag);
      Buffer.concat([d.update(ct), d.final()]);
    };
  } else {
    process.env.SOFTHSM2_CONF = c.softhsmConf;
    const lib = new pkcs11js.PKCS11();
    lib.load(c.module);
    try {
      lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (err) {
      // Threads of one process share the one loaded module: the second C_Initialize says so.
      if (!/ALREADY_INITIALIZED/.test(String((err as Error).message))) throw err;
    }
    const slot = findSlot(lib, c.token);
    if (!slot) throw new Error('bench: the harness token is not there');
    const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    const pin = readFileSync(c.pinFile, 'utf8');
    for (let attempt = 0; ; attempt++) {
      try {
        lib.C_Login(session, pkcs11js.CKU_USER, pin);
        break;
      } catch (err) {
        const m = String((err as Error).message);
        if (/ALREADY_LOGGED_IN/.test(m)) break;
        // Two processes logging in at the same moment: SoftHSM2 can answer CKR_GENERAL_ERROR to one
        // (it reads the token file another process holds): try again shortly.
        if (!/GENERAL_ERROR/.test(m) || attempt >= 20) throw err;
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 25);
      }
    }
    lib.C_FindObjectsInit(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_ID, value: Buffer.from(c.keyId, 'hex') },
    ]);
    const [key] = lib.C_FindObjects(session, 1);
    lib.C_FindObjectsFinal(session);
    if (!key) throw new Error('bench: key object not found');
    const mech = {
      mechanism: pkcs11js.CKM_AES_GCM,
      parameter: { type: pkcs11js.CK_PARAMS_AES_GCM, iv, aad, tagBits: 128 },
    } as Pkcs11js.Mechanism;
    const out = Buffer.alloc(48);
    once =
      c.kind === 'gcm'
        ? () => {
            lib.C_EncryptInit(session, mech, key);
            const ct = lib.C_Encrypt(session, dek, Buffer.alloc(48));
            lib.C_DecryptInit(session, mech, key);
            lib.C_Decrypt(session, ct, out);
          }
        : () => {
            lib.C_GenerateRandom(session, out.subarray(0, 32));
          };
  }
  while (Date.now() < c.startAt) {
    // Spin until the common start (every loop is set up by then).
  }
  const end = c.startAt + c.ms;
  const cpu0 = process.cpuUsage();
  const waits0 = process.resourceUsage().voluntaryContextSwitches;
  let n = 0;
  while (Date.now() < end) {
    for (let i = 0; i < 32; i++) once();
    n += 32;
  }
  const cpu = process.cpuUsage(cpu0);
  return { n, cpuMs: (cpu.user + cpu.system) / 1000, waits: process.resourceUsage().voluntaryContextSwitches - waits0 };
}

type LoopResult = ReturnType<typeof loop>;

// A loop in a worker thread, or in a child process: run it and report the count.
if (!isMainThread && workerData?.bench === 'pkcs11-scaling') {
  parentPort?.postMessage(loop(workerData.config as LoopConfig));
} else if (isMainThread && process.argv[2] === '--child') {
  process.once('message', (config: LoopConfig) => {
    const n = loop(config);
    process.send?.(n, () => process.exit(0));
  });
} else if (isMainThread) {
  await main();
}

function inThread(config: LoopConfig): Promise<LoopResult> {
  return new Promise((resolve, reject) => {
    const w = new Worker(SELF, { workerData: { bench: 'pkcs11-scaling', config } });
    w.once('message', (n: LoopResult) => {
      resolve(n);
      void w.terminate();
    });
    w.once('error', reject);
  });
}

function inProcess(config: LoopConfig): Promise<LoopResult> {
  return new Promise((resolve, reject) => {
    const child = fork(SELF, ['--child'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child.once('message', (n) => resolve(n as LoopResult));
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code !== 0) reject(new Error(`bench: child exited with ${code}`));
    });
    child.send(config);
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '1.5' },
      rounds: { type: 'string', default: '3' },
      out: { type: 'string' },
    },
  });
  const seconds = Number(values.seconds);
  const rounds = Number(values.rounds);
  const { startSoftHsm, createBenchKey, addToken } = await import('./_softhsm.js');
  const { median } = await import('./_measure.js');
  const hsm = startSoftHsm();
  try {
    // A second token in the same SoftHSM2 (same PINs), with its own key: per-token locks are not
    // shared. Made before this process initialises the module (SoftHSM2 lists tokens at C_Initialize).
    const secondToken = addToken(hsm, `${hsm.token}-2`);
    const keyId = createBenchKey(hsm);
    const second = { token: secondToken.token, keyId: Buffer.from(createBenchKey(secondToken)).toString('hex') };
    const base = {
      module: hsm.module,
      softhsmConf: process.env.SOFTHSM2_CONF as string,
      token: hsm.token,
      pinFile: hsm.pinFile,
      keyId: Buffer.from(keyId).toString('hex'),
      ms: seconds * 1000,
    };
    const rows: Array<{ label: string; kind: Kind; where: Where }> = [
      { label: 'raw pkcs11js AES-GCM wrap + unwrap, worker_threads (one process)', kind: 'gcm', where: 'threads' },
      { label: 'raw pkcs11js AES-GCM wrap + unwrap, child processes', kind: 'gcm', where: 'processes' },
      {
        label: 'raw pkcs11js AES-GCM wrap + unwrap, worker_threads, the second loop on a second token',
        kind: 'gcm',
        where: 'threads-2-tokens',
      },
      { label: 'raw pkcs11js C_GenerateRandom(32), worker_threads', kind: 'random', where: 'threads' },
      {
        label: 'node:crypto AES-256-GCM wrap + unwrap, worker_threads (machine control)',
        kind: 'node',
        where: 'threads',
      },
    ];
    const rates = new Map<string, number[]>();
    const coresUsed = new Map<string, number[]>();
    const waitsPerKop = new Map<string, number[]>();
    for (let r = 0; r < rounds; r++) {
      for (const row of rows) {
        for (const loops of [1, 2]) {
          // Setup (module load, session, login) happens before startAt; a process needs longer.
          const startAt = Date.now() + (row.where === 'processes' ? 1500 : 600);
          const config: LoopConfig = { ...base, kind: row.kind, startAt };
          const run = row.where === 'processes' ? inProcess : inThread;
          // Threads: this process's CPU time from the start to the end of the loops (the main thread
          // only waits meanwhile); processes: the sum of the children's own.
          let cpuStart = process.cpuUsage();
          let waitsStart = process.resourceUsage().voluntaryContextSwitches;
          let cpuThreads = -1;
          let waitsThreads = 0;
          const stop = () => {
            if (cpuThreads >= 0) return;
            const u = process.cpuUsage(cpuStart);
            cpuThreads = (u.user + u.system) / 1000;
            waitsThreads = process.resourceUsage().voluntaryContextSwitches - waitsStart;
          };
          const t0 = setTimeout(() => {
            cpuStart = process.cpuUsage();
            waitsStart = process.resourceUsage().voluntaryContextSwitches;
          }, startAt - Date.now());
          const t1 = setTimeout(stop, startAt + base.ms - Date.now());
          const counts = await Promise.all(
            Array.from({ length: loops }, (_, i) =>
              run(row.where === 'threads-2-tokens' && i === 1 ? { ...config, ...second } : config),
            ),
          );
          clearTimeout(t0);
          clearTimeout(t1);
          stop();
          const cpuMs = row.where !== 'processes' ? cpuThreads : counts.reduce((a, b) => a + b.cpuMs, 0);
          const waits = row.where !== 'processes' ? waitsThreads : counts.reduce((a, b) => a + b.waits, 0);
          const ops = counts.reduce((a, b) => a + b.n, 0);
          const key = `${row.label}|${loops}`;
          rates.set(key, [...(rates.get(key) ?? []), counts.reduce((a, b) => a + b.n, 0) / seconds]);
          coresUsed.set(key, [...(coresUsed.get(key) ?? []), cpuMs / base.ms]);
          waitsPerKop.set(key, [...(waitsPerKop.get(key) ?? []), (waits / ops) * 1000]);
        }
      }
    }
    const results = rows.map((row) => {
      const one = median(rates.get(`${row.label}|1`) as number[]);
      const two = median(rates.get(`${row.label}|2`) as number[]);
      return {
        label: row.label,
        oneLoopOpsPerSecond: Math.round(one),
        twoLoopsOpsPerSecond: Math.round(two),
        speedup: Math.round((two / one) * 100) / 100,
        coresUsedOneLoop: Math.round(median(coresUsed.get(`${row.label}|1`) as number[]) * 100) / 100,
        coresUsedTwoLoops: Math.round(median(coresUsed.get(`${row.label}|2`) as number[]) * 100) / 100,
        waitsPer1000OpsOneLoop: Math.round(median(waitsPerKop.get(`${row.label}|1`) as number[])),
        waitsPer1000OpsTwoLoops: Math.round(median(waitsPerKop.get(`${row.label}|2`) as number[])),
      };
    });
    const meta = {
      date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
      node: process.version,
      cores: availableParallelism(),
      cpuModel: (cpus()[0]?.model ?? 'unknown').trim(),
      loadAverage: loadavg().map((l) => Math.round(l * 10) / 10),
      secondsPerCase: seconds,
      rounds,
    };
    const lines = [
      '# Does SoftHSM2 run AES-GCM from two threads at once? (raw pkcs11js, wall clock)',
      '',
      `${meta.date} · node ${meta.node} · ${meta.cores} × ${meta.cpuModel} · load ${meta.loadAverage.join(' ')} · ${rounds} rounds × ${seconds} s per case, interleaved, median · one op = one wrap + one unwrap (or one C_GenerateRandom)`,
      '',
      '| case | 1 loop, ops/s | 2 loops, ops/s | 2 ÷ 1 | CPU cores busy, 1 / 2 loops | threads put to sleep per 1,000 ops, 1 / 2 loops |',
      '|---|---:|---:|---:|---:|---:|',
      ...results.map(
        (r) =>
          `| ${r.label} | ${r.oneLoopOpsPerSecond.toLocaleString('en-US')} | ${r.twoLoopsOpsPerSecond.toLocaleString('en-US')} | ${r.speedup.toFixed(2)} | ${r.coresUsedOneLoop.toFixed(2)} / ${r.coresUsedTwoLoops.toFixed(2)} | ${r.waitsPer1000OpsOneLoop} / ${r.waitsPer1000OpsTwoLoops} |`,
      ),
      '',
    ];
    console.log(lines.join('\n'));
    const outDir = values.out ?? join(fileURLToPath(new URL('..', import.meta.url)), 'results');
    mkdirSync(outDir, { recursive: true });
    writeFileSync(join(outDir, 'pkcs11-scaling.json'), `${JSON.stringify({ meta, results }, null, 2)}\n`);
    writeFileSync(join(outDir, 'pkcs11-scaling.md'), lines.join('\n'));
  } finally {
    hsm.stop();
  }
}
