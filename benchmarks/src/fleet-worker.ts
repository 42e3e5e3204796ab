/**
 * One process of the fleet load test (fleet.ts). A worker — one application instance — gets its
 * data keys through an agent (AGENT_SOCKET given) or opens the PostgreSQL store with the SDK
 * (loads and unseals the software root, watches the store: LISTEN/NOTIFY + a poll), and runs
 * `CONCURRENCY` loops of: encrypt a new record → decrypt it → decrypt one of its earlier records
 * (half the time one written under version 1, so that a revocation of version 1 is seen at once),
 * yielding to the event loop between records.
 *
 *   node dist/fleet-worker.js SCHEMA WORKER_ID POLL_MS [AGENT_SOCKET]   (first stdin line: the
 *     unseal key in hex for a process that holds the root, else empty; "stop" ends it)
 *   WORKER_ID "observer": no load; prints {"t":"change","at":MS,…} for every committed change it hears.
 *   WORKER_ID "agentN": an agent on AGENT_SOCKET serving the store, its KEK cache dropped on every
 *     committed change (invalidateCachesOnChange(store, agent)).
 *
 * stdout, one JSON line each: {"t":"ready"} · {"t":"env","n":N,"v":VERSION,"e":BASE64} for every
 * record written (the coordinator keeps the application's table) · {"t":"summary",…} at the end:
 * operation counts and latencies, per key version the last success (ms since the epoch), and the
 * failures grouped by operation, version and error code with their first and last end times.
 * Nothing secret is printed: envelopes are ciphertext; plaintexts are random and stay here.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { createInterface } from 'node:readline';
import { AgentClient, AgentServer } from '@keywarden/agent';
import {
  type DataKeyProvider,
  decryptEnvelope,
  encryptEnvelope,
  inspectEnvelope,
  Keywarden,
  SoftwareRoot,
} from '@keywarden/core';
import { invalidateCachesOnChange, PostgresKeyStore } from '@keywarden/store-postgres';

const [schema, workerId, pollArg, agentSocket] = process.argv.slice(2) as [string, string, string, string?];
const CONCURRENCY = 4;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const unsealKey = Uint8Array.from(Buffer.from(String((await lines.next()).value), 'hex'));
const untilStop = async (): Promise<void> => {
  for (;;) {
    const line = await lines.next();
    if (line.done || line.value === 'stop') return;
  }
};

if (workerId === 'observer') {
  // An idle process that only LISTENs: it timestamps each committed change within milliseconds of
  // its commit (NOTIFY is delivered at commit), which the busy processes cannot (fleet.ts uses it
  // as the commit time of the rotation and the revocation).
  const store = await PostgresKeyStore.open({ schema, maxConnections: 2 });
  const stop = await store.watch((change) => {
    process.stdout.write(`${JSON.stringify({ t: 'change', at: Date.now(), ...change })}\n`);
  });
  process.stdout.write(`${JSON.stringify({ t: 'ready' })}\n`);
  await untilStop();
  await stop();
  await store.close();
  process.exit(0);
}

if (workerId.startsWith('agent')) {
  // An agent of the fleet: holds the root (unsealed here with the development-mode key) and serves
  // data keys on a unix socket; it drops its KEK cache on every change committed to the store.
  const store = await PostgresKeyStore.open({ schema, maxConnections: 4 });
  const root = await SoftwareRoot.load(store);
  await root.unseal(unsealKey);
  unsealKey.fill(0);
  const agent = await AgentServer.start({
    socket: agentSocket as string,
    store,
    root,
    ownsStore: true,
    ownsRoot: true,
  });
  const stop = await invalidateCachesOnChange(store, agent, { pollIntervalMs: Number(pollArg) });
  process.stdout.write(`${JSON.stringify({ t: 'ready' })}\n`);
  await untilStop();
  await stop();
  await agent.close();
  process.exit(0);
}

// A worker: through an agent when a socket is given, else on the store with the SDK directly.
let provider: DataKeyProvider;
let cleanup: () => Promise<void>;
if (agentSocket) {
  const client = await AgentClient.connect(agentSocket);
  provider = client;
  cleanup = () => client.close();
} else {
  const store = await PostgresKeyStore.open({ schema, maxConnections: 4 });
  const root = await SoftwareRoot.load(store);
  await root.unseal(unsealKey);
  // A KEK cache TTL far beyond the run: only the store's change notifications make a change seen.
  const kw = new Keywarden({ store, root, cache: { ttlMs: 3_600_000 } });
  const stopWatching = await invalidateCachesOnChange(store, kw, { pollIntervalMs: Number(pollArg) });
  provider = kw;
  cleanup = async () => {
    await stopWatching();
    await kw.close();
    await root.close();
    await store.close();
  };
}
unsealKey.fill(0);

interface Failure {
  op: string;
  version: number;
  code: string;
  count: number;
  firstAt: number;
  lastAt: number;
}
const lastOkAt: Record<number, number> = {};
const failures = new Map<string, Failure>();
const latencies: Record<'encrypt' | 'decrypt', number[]> = { encrypt: [], decrypt: [] };
const counts = { encrypt: 0, decrypt: 0 };
const history: Array<{ n: number; v: number; e: Uint8Array; p: Uint8Array }> = [];
const historyV1: typeof history = [];
let running = true;
let next = 0;

const contextOf = (n: number) => ({ w: workerId, n: String(n) });

async function timed<T>(op: 'encrypt' | 'decrypt', version: number, fn: () => Promise<T>): Promise<T | undefined> {
  const start = performance.now();
  try {
    const out = await fn();
    const at = Date.now();
    latencies[op].push(performance.now() - start);
    counts[op]++;
    if (version > 0) lastOkAt[version] = Math.max(lastOkAt[version] ?? 0, at);
    return out;
  } catch (err) {
    const at = Date.now();
    const code = typeof (err as { code?: unknown }).code === 'string' ? (err as { code: string }).code : 'UNKNOWN';
    const k = `${op}/${version}/${code}`;
    const f = failures.get(k) ?? { op, version, code, count: 0, firstAt: at, lastAt: at };
    f.count++;
    f.lastAt = at;
    failures.set(k, f);
    return undefined;
  }
}

async function loop(): Promise<void> {
  while (running) {
    const n = next++;
    const plaintext = randomBytes(64 + randomInt(192));
    // An encryption's version is known only from its envelope: a failed one is counted under 0.
    let version = 0;
    const envelope = await timed('encrypt', 0, async () => {
      const e = await encryptEnvelope(provider, plaintext, { key: 'orders', context: contextOf(n) });
      version = inspectEnvelope(e).keyVersion;
      return e;
    });
    if (envelope === undefined) continue;
    lastOkAt[version] = Math.max(lastOkAt[version] ?? 0, Date.now());
    process.stdout.write(
      `${JSON.stringify({ t: 'env', n, v: version, e: Buffer.from(envelope).toString('base64') })}\n`,
    );
    const record = { n, v: version, e: envelope, p: plaintext };
    history.push(record);
    if (version === 1) historyV1.push(record);
    await check(record);
    const pool = historyV1.length > 0 && randomInt(2) === 0 ? historyV1 : history;
    await check(pool[randomInt(pool.length)] as (typeof history)[number]);
    // Yield to the event loop between records, as a server does between requests: with KEKs cached,
    // encrypt and decrypt complete in microtasks, and a loop that never yields would starve the
    // store's change notifications (and everything else) in this process.
    await new Promise((r) => setImmediate(r));
  }
}

async function check(record: (typeof history)[number]): Promise<void> {
  const out = await timed('decrypt', record.v, () =>
    decryptEnvelope(provider, record.e, { key: 'orders', context: contextOf(record.n) }),
  );
  if (out !== undefined && !Buffer.from(out).equals(Buffer.from(record.p))) {
    // Never expected: a decryption that returns other bytes is a failure of its own kind.
    const at = Date.now();
    failures.set(`decrypt/${record.v}/WRONG_PLAINTEXT`, {
      op: 'decrypt',
      version: record.v,
      code: 'WRONG_PLAINTEXT',
      count: 1,
      firstAt: at,
      lastAt: at,
    });
  }
}

process.stdout.write(`${JSON.stringify({ t: 'ready' })}\n`);
const startedAt = Date.now();
const loops = Array.from({ length: CONCURRENCY }, () => loop());
for (;;) {
  const line = await lines.next();
  if (line.done || line.value === 'stop') break;
}
running = false;
await Promise.all(loops);
const endedAt = Date.now();

const pct = (xs: number[], p: number): number => {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return Number((s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number).toFixed(2));
};
process.stdout.write(
  `${JSON.stringify({
    t: 'summary',
    worker: workerId,
    startedAt,
    endedAt,
    counts,
    latencyMs: {
      encrypt: { p50: pct(latencies.encrypt, 50), p99: pct(latencies.encrypt, 99) },
      decrypt: { p50: pct(latencies.decrypt, 50), p99: pct(latencies.decrypt, 99) },
    },
    lastOkAt,
    failures: [...failures.values()],
  })}\n`,
);
await cleanup();
