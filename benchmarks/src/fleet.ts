/**
 * The fleet load test (issue 13; docs/fleet.md §Load test): several worker processes
 * (fleet-worker.ts) encrypt and decrypt against ONE PostgreSQL store while this process — another
 * instance of the fleet — rotates the key, runs a bulk rewrap job under a lease, and revokes
 * (disables) the old version. It reports throughput and the revocation latency, and FAILS (exit 1)
 * unless:
 *  - no operation failed that should have succeeded: every failure is a refusal of the revoked
 *    version (KW_KEY_STATE) that ended after the revocation call started;
 *  - no success under the revoked version ended later than the revocation's commit plus the
 *    documented bound (BOUND_MS: the poll interval, 1 s, plus one query and an operation in flight);
 *  - every record written (the application's table, kept here, rewrapped by the job) still
 *    decrypts to what it was written with, checked here with the old version disabled.
 * By default the workers get their data keys through two agent processes (AgentServer on the
 * PostgreSQL store, each dropping its KEK cache on the store's change notifications,
 * AgentServer.clearCache); `--via sdk` has them open the store with the SDK themselves.
 *
 *   pnpm --filter @keywarden/benchmarks run bench:fleet      # ~45 s; results/fleet.{json,md} (CI runs it)
 *   node dist/fleet.js --publish                             # also the committed copy, latest/fleet.{json,md}
 *   node dist/fleet.js --workers 4 --seconds 20              # longer
 *
 * PostgreSQL: the cluster named by KEYWARDEN_PG_URL (+ KEYWARDEN_PG_PASSWORD_FILE), else a
 * throwaway one this script starts with harness/postgres.sh and stops at the end. Times across
 * processes are wall-clock (Date.now) on one machine. The commit of the rotation and of the
 * revocation is timed by an idle observer process that only LISTENs (NOTIFY is delivered at
 * commit: it hears it within milliseconds, where the busy processes' own clocks lag); the
 * revocation latency runs from that commit to the last success under the version in any worker,
 * and is also given from the start and the return of the disableVersion call.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { inspectEnvelope, JobLease, Keywarden, rewrapRecords, SoftwareRoot } from '@keywarden/core';
import { invalidateCachesOnChange, PostgresKeyStore } from '@keywarden/store-postgres';

const { values } = parseArgs({
  options: {
    workers: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '12' },
    'poll-ms': { type: 'string', default: '1000' },
    via: { type: 'string', default: 'agents' },
    agents: { type: 'string', default: '2' },
    out: { type: 'string' },
    publish: { type: 'boolean', default: false },
  },
});
const WORKERS = Number(values.workers);
const SECONDS = Number(values.seconds);
const POLL_MS = Number(values['poll-ms']);
/** "agents": workers get data keys from agent processes (unix sockets); "sdk": workers open the store themselves. */
const VIA = values.via === 'sdk' ? 'sdk' : 'agents';
const AGENTS = VIA === 'agents' ? Number(values.agents) : 0;
/** Documented bound (docs/fleet.md §Changes seen across the fleet): poll interval + one query + one operation in flight. */
const BOUND_MS = POLL_MS + 1000;
const OUT = values.out ?? fileURLToPath(new URL('../results', import.meta.url));
const HARNESS = fileURLToPath(new URL('../../harness/postgres.sh', import.meta.url));
const WORKER = fileURLToPath(new URL('./fleet-worker.js', import.meta.url));

interface Failure {
  op: string;
  version: number;
  code: string;
  count: number;
  firstAt: number;
  lastAt: number;
}
interface Summary {
  worker: string;
  startedAt: number;
  endedAt: number;
  counts: { encrypt: number; decrypt: number };
  latencyMs: Record<'encrypt' | 'decrypt', { p50: number; p99: number }>;
  lastOkAt: Record<string, number>;
  failures: Failure[];
}
interface RecordRow {
  worker: string;
  n: number;
  envelope: Uint8Array;
}

const log = (line: string): void => {
  process.stderr.write(`fleet: ${line}\n`);
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ── PostgreSQL ────────────────────────────────────────────────────────────────────────────────
let pgDir: string | undefined;
if (!process.env.KEYWARDEN_PG_URL) {
  const out = execFileSync('bash', [HARNESS, 'start'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    timeout: 120_000,
  });
  for (const line of out.split('\n')) {
    const m = /^export ([A-Z0-9_]+)='([^']*)'$/.exec(line);
    if (m?.[1] && m[2] !== undefined) process.env[m[1]] = m[2];
  }
  pgDir = process.env.KEYWARDEN_PG_DIR;
}
const stopPg = (): void => {
  if (pgDir) execFileSync('bash', [HARNESS, 'stop', pgDir], { stdio: 'ignore', timeout: 60_000 });
  pgDir = undefined;
};

class Worker {
  readonly id: string;
  readonly child: ChildProcess;
  readonly ready: Promise<void>;
  readonly summary: Promise<Summary>;
  /** Highest key version seen in this worker's envelopes, and when first. */
  maxVersion = 0;
  readonly firstSeen = new Map<number, number>();
  /** The observer's: committed changes as it heard them. */
  readonly changes: Array<{ at: number; kind: string; keyId?: string }> = [];
  stderr = '';

  constructor(id: string, schema: string, unsealKey: Uint8Array, records: Map<string, RecordRow>, socket?: string) {
    this.id = id;
    this.child = spawn(process.execPath, [WORKER, schema, id, String(POLL_MS), ...(socket ? [socket] : [])], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stderr?.on('data', (d) => {
      this.stderr += String(d);
    });
    let onReady: () => void = () => {};
    let onSummary: (s: Summary) => void = () => {};
    this.ready = new Promise((r) => {
      onReady = r;
    });
    this.summary = new Promise((resolve, reject) => {
      onSummary = resolve;
      if (id === 'observer' || id.startsWith('agent'))
        this.child.once('exit', () => resolve(undefined as unknown as Summary));
      this.child.once('exit', (code) => {
        setTimeout(
          () => reject(new Error(`worker ${id} exited (${code}) without a summary: ${this.stderr.slice(-2000)}`)),
          200,
        );
      });
    });
    createInterface({ input: this.child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      const m = JSON.parse(line) as { t: string; n?: number; v?: number; e?: string } & Summary;
      if (m.t === 'env') {
        const v = m.v as number;
        records.set(`${id}/${m.n}`, {
          worker: id,
          n: m.n as number,
          envelope: new Uint8Array(Buffer.from(m.e as string, 'base64')),
        });
        if (!this.firstSeen.has(v)) this.firstSeen.set(v, Date.now());
        this.maxVersion = Math.max(this.maxVersion, v);
      } else if (m.t === 'change') {
        this.changes.push(m as unknown as { at: number; kind: string });
      } else if (m.t === 'ready') onReady();
      else if (m.t === 'summary') onSummary(m);
    });
    // Only the processes that hold the root get the unseal key; the observer and the workers that
    // go through an agent get an empty line.
    const holdsRoot = id.startsWith('agent') || (id.startsWith('w') && socket === undefined);
    this.child.stdin?.write(`${holdsRoot ? Buffer.from(unsealKey).toString('hex') : ''}\n`);
  }

  stop(): void {
    this.child.stdin?.end('stop\n');
  }
}

async function main(): Promise<number> {
  const started = Date.now();
  const schema = `kw_fleet_bench_${randomBytes(5).toString('hex')}`;
  const store = await PostgresKeyStore.open({ schema });
  const unsealKey = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey });
  const kw = new Keywarden({ store, root, cache: { ttlMs: 3_600_000 } });
  const stopWatching = await invalidateCachesOnChange(store, kw, { pollIntervalMs: POLL_MS });
  await kw.createKey('orders');
  const records = new Map<string, RecordRow>();
  const socketDir = mkdtempSync(join(tmpdir(), 'kw-fleet-'));
  const agents = Array.from(
    { length: AGENTS },
    (_, i) => new Worker(`agent${i + 1}`, schema, unsealKey, records, join(socketDir, `agent${i + 1}.sock`)),
  );
  await Promise.all(agents.map((a) => a.ready));
  const workers = Array.from(
    { length: WORKERS },
    (_, i) =>
      new Worker(
        `w${i + 1}`,
        schema,
        unsealKey,
        records,
        AGENTS > 0 ? join(socketDir, `agent${(i % AGENTS) + 1}.sock`) : undefined,
      ),
  );
  const observer = new Worker('observer', schema, unsealKey, records);
  /** When the observer heard the first key change committed at or after `since`. */
  const committedAt = async (since: number): Promise<number> => {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const c = observer.changes.find((x) => x.kind === 'key' && x.at >= since);
      if (c) return c.at;
      if (Date.now() > deadline) throw new Error('the observer heard no change within 15 s');
      await sleep(5);
    }
  };
  const failures: string[] = [];
  try {
    await Promise.all([...workers, observer].map((w) => w.ready));
    unsealKey.fill(0);
    const t0 = Date.now();
    log(`${WORKERS} workers running against schema ${schema}`);
    const phase = SECONDS * 1000;

    // 1. Rotate: version 2 becomes primary; wait until every worker writes under it.
    await sleep(phase * 0.2);
    const rotateStart = Date.now();
    await kw.rotateKey('orders');
    const rotatedAt = Date.now();
    const seenBy = async (v: number) => {
      const deadline = Date.now() + 15_000;
      while (workers.some((w) => w.maxVersion < v) && Date.now() < deadline) await sleep(10);
      if (workers.some((w) => w.maxVersion < v)) throw new Error(`not every worker wrote under v${v} within 15 s`);
    };
    await seenBy(2);
    const rotationCommit = await committedAt(rotateStart);
    const rotationSeenMs = Math.max(...workers.map((w) => (w.firstSeen.get(2) as number) - rotationCommit));
    log(`rotated to v2 (${rotatedAt - rotateStart} ms); every worker writing under v2 ${rotationSeenMs} ms after`);

    // 2. Bulk rewrap of every record under v1, under a lease, while the workers keep going.
    const jobStart = Date.now();
    let rewrapped = 0;
    let passes = 0;
    for (;;) {
      const todo = [...records.entries()].filter(([, r]) => inspectEnvelope(r.envelope).keyVersion === 1);
      if (todo.length === 0) break;
      passes++;
      const lease = await JobLease.acquire(store, 'rewrap-job/fleet-bench', { holder: `bench-${process.pid}` });
      try {
        const input = todo.map(([id, r]) => ({ id, envelope: r.envelope, context: { w: r.worker, n: String(r.n) } }));
        for await (const u of rewrapRecords(kw, input, {
          key: 'orders',
          jobId: 'fleet-bench',
          concurrency: 8,
          checkpointEvery: 200,
          lease,
        })) {
          if (u.status === 'failed') failures.push(`rewrap of ${u.id} failed: ${u.error?.code}`);
          if (u.status === 'rewrapped' && u.envelope) {
            (records.get(u.id) as RecordRow).envelope = u.envelope;
            rewrapped++;
          }
        }
      } finally {
        await lease.release();
      }
    }
    const jobMs = Date.now() - jobStart;
    log(`rewrap job: ${rewrapped} records v1 → v2 in ${jobMs} ms (${passes} pass${passes === 1 ? '' : 'es'})`);

    // 3. Revoke v1 and keep the load going past the bound.
    await sleep(Math.max(0, t0 + phase * 0.55 - Date.now()));
    const revokeStart = Date.now();
    await kw.disableVersion('orders', 1);
    const revokedAt = Date.now();
    const revokeCommit = await committedAt(revokeStart);
    log(
      `v1 disabled (${revokedAt - revokeStart} ms; commit heard ${revokeCommit - revokeStart} ms after the call started)`,
    );
    await sleep(Math.max(BOUND_MS + 1000, t0 + phase - Date.now()));
    for (const w of workers) w.stop();
    const summaries = await Promise.all(workers.map((w) => w.summary));
    for (const w of [...agents, observer]) w.stop();
    await Promise.all([...agents, observer].map((w) => w.summary));

    // ── Checks ──────────────────────────────────────────────────────────────────────────────
    let expectedRefusals = 0;
    for (const s of summaries) {
      for (const f of s.failures) {
        const expected = f.version === 1 && f.code === 'KW_KEY_STATE' && f.firstAt >= revokeStart;
        if (expected) expectedRefusals += f.count;
        else
          failures.push(
            `${s.worker}: ${f.count} ${f.op} under v${f.version} failed with ${f.code} (first ${f.firstAt - revokeStart} ms after the revocation started)`,
          );
      }
    }
    const lastV1 = Math.max(...summaries.map((s) => s.lastOkAt['1'] ?? 0));
    const latencyMs = lastV1 - revokeCommit;
    const latencyFromStartMs = lastV1 - revokeStart;
    const latencyFromReturnMs = lastV1 - revokedAt;
    if (latencyMs > BOUND_MS)
      failures.push(`a success under the revoked v1 came ${latencyMs} ms after the revocation (bound ${BOUND_MS} ms)`);
    if (expectedRefusals === 0)
      failures.push('no worker was ever refused v1: the revocation was not observed (the test would not fail)');

    // Every record written still decrypts (the old version is disabled: only rewrapped ones can).
    const verifyStart = Date.now();
    const finalKw = new Keywarden({ store, root });
    let undecryptable = 0;
    let underV1 = 0;
    for (const [, r] of records) {
      if (inspectEnvelope(r.envelope).keyVersion === 1) underV1++;
      try {
        await finalKw.decrypt(r.envelope, { key: 'orders', context: { w: r.worker, n: String(r.n) } });
      } catch {
        undecryptable++;
      }
    }
    await finalKw.close();
    if (undecryptable > 0)
      failures.push(`${undecryptable} of ${records.size} records written do not decrypt (${underV1} still under v1)`);
    const verifyMs = Date.now() - verifyStart;

    // ── Report ──────────────────────────────────────────────────────────────────────────────
    const runS = (Math.max(...summaries.map((s) => s.endedAt)) - Math.min(...summaries.map((s) => s.startedAt))) / 1000;
    const enc = summaries.reduce((a, s) => a + s.counts.encrypt, 0);
    const dec = summaries.reduce((a, s) => a + s.counts.decrypt, 0);
    const result = {
      meta: {
        date: new Date().toISOString(),
        node: process.version,
        cpus: cpus().length,
        loadavg: loadavg().map((x) => Number(x.toFixed(2))),
        workers: WORKERS,
        via: VIA === 'agents' ? `${AGENTS} agent processes (unix sockets)` : 'the SDK on the store directly',
        loopsPerWorker: 4,
        seconds: SECONDS,
        pollIntervalMs: POLL_MS,
        boundMs: BOUND_MS,
      },
      throughput: {
        runSeconds: Number(runS.toFixed(2)),
        encryptPerSecond: Math.round(enc / runS),
        decryptPerSecond: Math.round(dec / runS),
        operationsPerSecond: Math.round((enc + dec) / runS),
        records: records.size,
      },
      latencyMs: Object.fromEntries(summaries.map((s) => [s.worker, s.latencyMs])),
      rotation: {
        callMs: rotatedAt - rotateStart,
        commitHeardAfterCallStartMs: rotationCommit - rotateStart,
        everyWorkerWritingUnderNewVersionAfterCommitMs: rotationSeenMs,
      },
      rewrapJob: { records: rewrapped, passes, ms: jobMs, recordsPerSecond: Math.round(rewrapped / (jobMs / 1000)) },
      revocation: {
        callMs: revokedAt - revokeStart,
        commitHeardAfterCallStartMs: revokeCommit - revokeStart,
        lastSuccessAfterCommitMs: latencyMs,
        lastSuccessAfterCallStartMs: latencyFromStartMs,
        lastSuccessAfterCallReturnedMs: latencyFromReturnMs,
        expectedRefusals,
      },
      verification: { records: records.size, undecryptable, ms: verifyMs },
      failures,
      totalSeconds: Number(((Date.now() - started) / 1000).toFixed(1)),
    };
    mkdirSync(OUT, { recursive: true });
    writeFileSync(join(OUT, 'fleet.json'), `${JSON.stringify(result, null, 2)}\n`);
    writeFileSync(join(OUT, 'fleet.md'), markdown(result));
    if (values.publish) {
      // The committed copy (docs/fleet.md quotes it).
      const latest = fileURLToPath(new URL('../latest', import.meta.url));
      writeFileSync(join(latest, 'fleet.json'), `${JSON.stringify(result, null, 2)}\n`);
      writeFileSync(join(latest, 'fleet.md'), markdown(result));
    }
    process.stdout.write(markdown(result));
    return failures.length === 0 ? 0 : 1;
  } finally {
    for (const w of [...workers, ...agents, observer]) w.child.kill('SIGKILL');
    rmSync(socketDir, { recursive: true, force: true });
    await stopWatching();
    await kw.close();
    await root.close();
    await store.close();
  }
}

function markdown(r: {
  meta: Record<string, unknown>;
  throughput: Record<string, number>;
  latencyMs: Record<string, Record<string, { p50: number; p99: number }>>;
  rotation: Record<string, number>;
  rewrapJob: Record<string, number>;
  revocation: Record<string, number>;
  verification: Record<string, number>;
  failures: string[];
  totalSeconds: number;
}): string {
  const m = r.meta;
  const lines = [
    '# Fleet load test (bench:fleet)',
    '',
    `${m.date} · Node ${m.node} · ${m.cpus} CPUs · load ${(m.loadavg as number[]).join(' ')} · ${m.workers} worker processes × ${m.loopsPerWorker} loops through ${m.via}, ${m.seconds} s, poll ${m.pollIntervalMs} ms (bound ${m.boundMs} ms) · one PostgreSQL store`,
    '',
    '| figure | value |',
    '|---|---|',
    `| throughput, all workers | ${r.throughput.operationsPerSecond} ops/s (${r.throughput.encryptPerSecond} encrypt/s, ${r.throughput.decryptPerSecond} decrypt/s) over ${r.throughput.runSeconds} s |`,
    `| records written | ${r.throughput.records} |`,
    ...Object.entries(r.latencyMs).map(
      ([w, l]) =>
        `| latency ${w} (p50 / p99) | encrypt ${l.encrypt?.p50} / ${l.encrypt?.p99} ms, decrypt ${l.decrypt?.p50} / ${l.decrypt?.p99} ms |`,
    ),
    `| rotation: call; commit heard after the call started; every worker writing under the new version after the commit | ${r.rotation.callMs} ms; ${r.rotation.commitHeardAfterCallStartMs} ms; ${r.rotation.everyWorkerWritingUnderNewVersionAfterCommitMs} ms |`,
    `| rewrap job (under a lease, during the load) | ${r.rewrapJob.records} records in ${r.rewrapJob.ms} ms (${r.rewrapJob.recordsPerSecond}/s, ${r.rewrapJob.passes} pass(es)) |`,
    `| revocation: disableVersion call; commit heard after the call started | ${r.revocation.callMs} ms; ${r.revocation.commitHeardAfterCallStartMs} ms |`,
    `| **revocation latency**: last success under the revoked version after its commit (after the call started; after it returned) | **${r.revocation.lastSuccessAfterCommitMs} ms** (${r.revocation.lastSuccessAfterCallStartMs} ms; ${r.revocation.lastSuccessAfterCallReturnedMs} ms) |`,
    `| refusals of the revoked version (expected) | ${r.revocation.expectedRefusals} |`,
    `| records that do not decrypt at the end (revoked version disabled) | ${r.verification.undecryptable} of ${r.verification.records} |`,
    `| failed operations that should have succeeded; successes past the bound | ${r.failures.length === 0 ? '0; 0' : r.failures.length} |`,
    `| total run time (with PostgreSQL start) | ${r.totalSeconds} s |`,
    '',
    r.failures.length === 0 ? 'All checks passed.' : `FAILED:\n${r.failures.map((f) => `- ${f}`).join('\n')}`,
    '',
  ];
  return lines.join('\n');
}

// Nothing may hang CI: whatever is still running after this is a failure.
const WATCHDOG_MS = (SECONDS + 150) * 1000;
setTimeout(() => {
  log(`error: not finished within ${WATCHDOG_MS / 1000} s`);
  stopPg();
  process.exit(1);
}, WATCHDOG_MS).unref();

let code = 1;
try {
  code = await main();
} catch (err) {
  log(`error: ${err instanceof Error ? err.message : String(err)}`);
} finally {
  stopPg();
}
process.exit(code);
