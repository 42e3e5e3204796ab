/**
 * Several real agent processes (test/fixtures/fleet-agent.mjs) on one SQLite key store: a fleet
 * client over a unix socket and a mutual-TLS endpoint fails over when its agent is SIGKILLed under
 * load (every request answered once, none lost, every data key still decrypts); a request the dead
 * agent had received is sent to another only when that is safe (RETRIED_WHEN_LOST); and sealing is
 * one action across the fleet.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import {
  AccessDeniedError,
  Keywarden,
  KeywardenError,
  MemoryKeyStore,
  SoftwareRoot,
  writeStoredPolicy,
} from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentEndpoint, AgentClient } from '../src/client.js';
import { issueAgentCredential } from '../src/credentials.js';
import { AgentFleetClient, sealAgents } from '../src/fleet.js';
import { AgentServer } from '../src/server.js';
import { makePki, type Pem, type TestPki } from '@keywarden/testkit/tls-certs';

const FIXTURE = fileURLToPath(new URL('./fixtures/fleet-agent.mjs', import.meta.url));

let pki: TestPki;
let dir: string;
let db: string;
let unsealHex: string;
let tokens: Record<string, string>;
let appPem: Pem;
let adminPem: Pem;
const children: ChildProcess[] = [];
const agentLog: string[] = [];

interface Agent {
  child: ChildProcess;
  socket: string;
  port: number | null;
}

async function startAgent(name: string, tls: boolean): Promise<Agent> {
  const socket = path.join(dir, `${name}.sock`);
  const config = {
    name,
    db,
    socket,
    audit: path.join(dir, `${name}.audit.jsonl`),
    ...(tls ? { tls: { certFile: pki.server.certFile, keyFile: pki.server.keyFile, caFile: pki.ca.certFile } } : {}),
  };
  const child = spawn(process.execPath, [FIXTURE, JSON.stringify(config)], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(child);
  child.stderr?.on('data', (d: Buffer) => agentLog.push(d.toString('utf8')));
  child.stdin?.end(`${unsealHex}\n`);
  const ready = await new Promise<{ port: number | null }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent ${name} did not start: ${agentLog.join('')}`)), 30_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`agent ${name} exited (${code}): ${agentLog.join('')}`));
    });
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', (l) => {
      clearTimeout(timer);
      resolve(JSON.parse(l) as { port: number | null });
    });
  });
  return { child, socket, port: ready.port };
}

function tlsEndpoint(a: Agent, pem: Pem): AgentEndpoint {
  return { host: '127.0.0.1', port: a.port as number, tls: { cert: pem.cert, key: pem.key, ca: pki.ca.cert } };
}

async function kill(a: Agent, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (a.child.exitCode !== null || a.child.signalCode !== null) return;
  const exited = new Promise((r) => a.child.once('exit', r));
  a.child.kill(signal);
  await exited;
}

beforeAll(async () => {
  pki = makePki();
  appPem = pki.client('app');
  adminPem = pki.client('admin');
  dir = mkdtempSync(path.join(tmpdir(), 'kw-fleet-'));
  db = path.join(dir, 'keys.db');
  const unsealKey = new Uint8Array(randomBytes(32));
  unsealHex = Buffer.from(unsealKey).toString('hex');
  const store = SqliteKeyStore.open(db);
  const root = await SoftwareRoot.initialize(store, { unsealKey });
  unsealKey.fill(0);
  await writeStoredPolicy(
    store,
    `keywarden-policy 1
principal app    environment=prod
principal admin  environment=prod
allow app    encrypt,decrypt,generate-data-key on orders
allow admin  *                                 on *
`,
  );
  const kw = new Keywarden({ store, root });
  await kw.createKey('orders', { scope: { environment: 'prod' } });
  tokens = {
    app: (await issueAgentCredential(store, 'app')).token,
    admin: (await issueAgentCredential(store, 'admin')).token,
  };
  await kw.close();
  await root.close();
  await store.close();
}, 60_000);

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  pki?.remove();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const failure = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e as Error,
  );

describe('failover', () => {
  it('an agent SIGKILLed under load: every request is answered exactly once, none fails, every data key decrypts', async () => {
    const a = await startAgent('a', false);
    const b = await startAgent('b', true);
    // A (unix socket, token) first; B over mutual TLS (certificate) second.
    const fleet = await AgentFleetClient.connect([a.socket, tlsEndpoint(b, appPem)], { credential: tokens.app });
    const TOTAL = 200;
    // A random point under load (the agent dies wherever it is: reading, computing, writing).
    const KILL_AT = 20 + Math.floor(Math.random() * 100);
    let issued = 0;
    let settled = 0;
    const failures: Error[] = [];
    const keys: { wrapped: Uint8Array; plaintext: Uint8Array; context: Record<string, string> }[] = [];
    let killed: Promise<void> | undefined;
    const worker = async (w: number) => {
      while (issued < TOTAL) {
        const n = issued++;
        const context = { worker: String(w), n: String(n) };
        try {
          const dk = await fleet.generateDataKey('orders', context);
          const back = await fleet.decryptDataKey(dk.wrapped, context, { key: 'orders' });
          expect(Buffer.from(back).equals(Buffer.from(dk.plaintext))).toBe(true);
          keys.push({ wrapped: dk.wrapped, plaintext: dk.plaintext, context });
        } catch (err) {
          failures.push(err as Error);
        } finally {
          settled++;
        }
        if (settled === KILL_AT && !killed) killed = kill(a);
      }
    };
    await Promise.all(Array.from({ length: 8 }, (_, w) => worker(w)));
    await killed;
    expect(
      failures.map((e) => e.message),
      `killed after ${KILL_AT}`,
    ).toEqual([]);
    expect(settled).toBe(TOTAL);
    expect(keys).toHaveLength(TOTAL);
    expect(a.child.signalCode).toBe('SIGKILL');
    // Requests were in flight on A when it died, and were retried on B (generate and decrypt only).
    expect(fleet.stats.retriedAfterLoss).toBeGreaterThan(0);
    await fleet.close();
    // Every data key handed out is the one its wrapped key holds, whichever agent made it.
    const onlyB = await AgentClient.connect(tlsEndpoint(b, appPem));
    for (const k of keys) {
      const p = await onlyB.decryptDataKey(k.wrapped, k.context, { key: 'orders' });
      expect(Buffer.from(p).equals(Buffer.from(k.plaintext))).toBe(true);
    }
    await onlyB.close();
    await kill(b, 'SIGTERM');
  }, 120_000);

  it('a request the dead agent had received is retried only when safe: data keys yes, rotateKey no', async () => {
    const a = await startAgent('a2', false);
    const b = await startAgent('b2', true);
    const fleet = await AgentFleetClient.connect([a.socket, tlsEndpoint(b, adminPem)], { credential: tokens.admin });
    const dk = await fleet.generateDataKey('orders', { t: '1' }); // the connection to A is open
    // A stops reading (SIGSTOP): what is sent now reaches A's socket and is never answered.
    a.child.kill('SIGSTOP');
    const rotate = failure(fleet.rotateKey('orders'));
    const generate = fleet.generateDataKey('orders', { t: '2' });
    const decrypt = fleet.decryptDataKey(dk.wrapped, { t: '1' }, { key: 'orders' });
    await new Promise((r) => setTimeout(r, 300));
    await kill(a);
    const err = await rotate;
    expect(err?.message).toBe(
      `agent: the agent on ${a.socket} went away while it ran rotateKey; it may or may not have been done, so it is not sent to another agent (look with getKey)`,
    );
    expect((await generate).plaintext).toHaveLength(32);
    expect(Buffer.from(await decrypt).equals(Buffer.from(dk.plaintext))).toBe(true);
    expect(fleet.stats.retriedAfterLoss).toBe(2);
    // A never ran it (it was stopped): one version, as B reads the store.
    expect((await fleet.getKey('orders')).primaryVersion).toBe(1);
    await fleet.close();
    await kill(b, 'SIGTERM');
  }, 60_000);

  it('no agent answers: AgentUnavailableError naming every endpoint tried', async () => {
    const gone = path.join(dir, 'nobody.sock');
    const err = await failure(AgentFleetClient.connect([gone, `${gone}2`]));
    expect(KeywardenError.isInstance(err, 'KW_AGENT_UNAVAILABLE')).toBe(true);
    expect(err?.message).toMatch(new RegExp(`^agent: no agent answered \\(tried ${gone}, ${gone}2\\)`));
  });
});

describe('failover past a sealed agent', () => {
  it('a sealed agent refuses before doing anything, so any op goes on to an unsealed one', async () => {
    // Two agents in this process on one store: one root left sealed, one unsealed.
    const store = new MemoryKeyStore();
    const unsealKey = new Uint8Array(randomBytes(32));
    const setupRoot = await SoftwareRoot.initialize(store, { unsealKey: unsealKey.slice() });
    await setupRoot.close();
    const sealedRoot = await SoftwareRoot.load(store);
    const openRoot = await SoftwareRoot.load(store);
    await openRoot.unseal(unsealKey);
    unsealKey.fill(0);
    const s1 = await AgentServer.start({ socket: path.join(dir, 's1.sock'), store, root: sealedRoot, ownsRoot: true });
    const s2 = await AgentServer.start({ socket: path.join(dir, 's2.sock'), store, root: openRoot, ownsRoot: true });
    try {
      const fleet = await AgentFleetClient.connect([s1.socket.path, s2.socket.path]);
      expect((await fleet.status()).sealed).toBe(true); // status is served by the first, sealed or not
      const created = await fleet.createKey('invoices');
      expect(created.primaryVersion).toBe(1);
      const dk = await fleet.generateDataKey('invoices');
      expect(dk.keyId).toBe(created.id);
      // createKey moved on once; the fleet then prefers the agent that answered.
      expect(fleet.stats.failovers).toBe(1);
      expect((await fleet.status()).sealed).toBe(false);
      await fleet.close();
    } finally {
      await s1.close();
      await s2.close();
    }
  });
});

describe('a change made by another process on the store', () => {
  it('clearCache() (what a store change notification calls) makes the agent refuse a version disabled elsewhere', async () => {
    const store = new MemoryKeyStore();
    const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    const server = await AgentServer.start({ socket: path.join(dir, 'cc.sock'), store, root, ownsRoot: true });
    // "Another instance": its own Keywarden on the same store.
    const other = new Keywarden({ store, root });
    try {
      await other.createKey('ledger');
      const client = await AgentClient.connect(server.socket.path);
      const dk = await client.generateDataKey('ledger'); // the agent caches version 1
      await other.rotateKey('ledger');
      await other.disableVersion('ledger', 1);
      // Until told, the agent serves version 1 from its cache (for up to cache.ttlMs)…
      expect(Buffer.from(await client.decryptDataKey(dk.wrapped, undefined, { key: 'ledger' }))).toEqual(
        Buffer.from(dk.plaintext),
      );
      // …and once its cache is dropped it reads the store and refuses the disabled version.
      server.clearCache();
      const err = await failure(client.decryptDataKey(dk.wrapped, undefined, { key: 'ledger' }));
      expect(KeywardenError.isInstance(err, 'KW_KEY_STATE')).toBe(true);
      await client.close();
    } finally {
      await other.close();
      await server.close();
    }
  });
});

describe('sealing the fleet', () => {
  it('sealAgents seals every agent listed (unix and TLS), reports the unreachable one, and the fleet refuses key operations', async () => {
    const a = await startAgent('a3', false);
    const b = await startAgent('b3', true);
    const dead = path.join(dir, 'dead.sock');
    // An unprivileged principal may not seal: every agent says so, none is sealed.
    const denied = await sealAgents([a.socket], { credential: tokens.app });
    expect(denied[0]?.sealed).toBe(false);
    expect(AccessDeniedError.isInstance(denied[0]?.error)).toBe(true);
    const report = await sealAgents([a.socket, tlsEndpoint(b, adminPem), dead], { credential: tokens.admin });
    expect(report.map((r) => [r.endpoint, r.sealed])).toEqual([
      [a.socket, true],
      [`tls://127.0.0.1:${b.port}`, true],
      [dead, false],
    ]);
    expect(KeywardenError.isInstance(report[2]?.error, 'KW_AGENT_UNAVAILABLE')).toBe(true);
    const fleet = await AgentFleetClient.connect([a.socket, tlsEndpoint(b, appPem)], { credential: tokens.app });
    expect((await fleet.status()).sealed).toBe(true);
    const err = await failure(fleet.generateDataKey('orders'));
    expect(KeywardenError.isInstance(err, 'KW_KEYSTORE_SEALED')).toBe(true);
    await fleet.close();
    await kill(a, 'SIGTERM');
    await kill(b, 'SIGTERM');
  }, 60_000);
});
