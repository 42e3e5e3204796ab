/**
 * The lifecycle of KEK versions through real agent processes (test/fixtures/fleet-agent.mjs) on
 * one SQLite key store: a version disabled through one agent is refused by another; each operation
 * is decided by the caller's policy (disable, compromise, destroy) and audited, a refusal too; the
 * library's destroy safeguards hold over the protocol; a compromise rotates; and a lifecycle change
 * in flight on an agent that dies is not sent to another one.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { AccessDeniedError, Keywarden, KeywardenError, SoftwareRoot, writeStoredPolicy } from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../src/client.js';
import { issueAgentCredential } from '../src/credentials.js';
import { AgentFleetClient } from '../src/fleet.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/fleet-agent.mjs', import.meta.url));

let dir: string;
let db: string;
let unsealHex: string;
let tokens: Record<string, string>;
const children: ChildProcess[] = [];
const clients: Array<{ close(): Promise<void> }> = [];
const agentLog: string[] = [];

interface Agent {
  child: ChildProcess;
  socket: string;
  audit: string;
}

async function startAgent(name: string): Promise<Agent> {
  const socket = path.join(dir, `${name}.sock`);
  const audit = path.join(dir, `${name}.audit.jsonl`);
  const child = spawn(process.execPath, [FIXTURE, JSON.stringify({ name, db, socket, audit })], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  children.push(child);
  child.stderr?.on('data', (d: Buffer) => agentLog.push(d.toString('utf8')));
  child.stdin?.end(`${unsealHex}\n`);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent ${name} did not start: ${agentLog.join('')}`)), 30_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`agent ${name} exited (${code}): ${agentLog.join('')}`));
    });
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  return { child, socket, audit };
}

async function kill(a: Agent, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (a.child.exitCode !== null || a.child.signalCode !== null) return;
  const exited = new Promise((r) => a.child.once('exit', r));
  a.child.kill(signal);
  await exited;
}

async function connect(a: Agent, principal: string): Promise<AgentClient> {
  const c = await AgentClient.connect(a.socket, { credential: tokens[principal] as string });
  clients.push(c);
  return c;
}

const failure = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e as Error,
  );

function code(err: Error | undefined): string | undefined {
  return KeywardenError.isInstance(err) ? err.code : undefined;
}

/** The agent's audit records (written in batches: wait until `want` is among them). */
async function auditRecords(
  a: Agent,
  want: (r: Record<string, unknown>) => boolean,
): Promise<Array<Record<string, unknown>>> {
  for (let i = 0; i < 100; i++) {
    let records: Array<Record<string, unknown>> = [];
    try {
      records = readFileSync(a.audit, 'utf8')
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    } catch {
      // not written yet
    }
    if (records.some(want)) return records;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no such audit record in ${a.audit}`);
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'kw-lifecycle-'));
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
principal ops    environment=prod
principal admin  environment=prod
allow app    encrypt,decrypt,generate-data-key on *
allow ops    disable                           on orders
allow admin  *                                 on *
`,
  );
  const kw = new Keywarden({ store, root });
  await kw.createKey('orders', { scope: { environment: 'prod' } });
  await kw.createKey('invoices', { scope: { environment: 'prod' } });
  await kw.createKey('tenant-x', { scope: { environment: 'prod' } });
  tokens = {};
  for (const p of ['app', 'ops', 'admin']) tokens[p] = (await issueAgentCredential(store, p)).token;
  await kw.close();
  await root.close();
  await store.close();
}, 60_000);

afterAll(async () => {
  for (const c of clients) await c.close().catch(() => {});
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the lifecycle of KEK versions through agents', () => {
  let a: Agent;
  let b: Agent;

  beforeAll(async () => {
    [a, b] = await Promise.all([startAgent('a'), startAgent('b')]);
  }, 60_000);

  it('a version disabled through one agent is refused by another on the same store; enabled again, it decrypts there', async () => {
    const appA = await connect(a, 'app');
    const dk = await appA.generateDataKey('orders', { order: '1' });
    expect(dk.version).toBe(1);
    const adminA = await connect(a, 'admin');
    expect((await adminA.rotateKey('orders')).primaryVersion).toBe(2);

    const opsA = await connect(a, 'ops');
    const disabled = await opsA.disableVersion('orders', 1);
    expect(disabled.versions.find((v) => v.version === 1)?.state).toBe('disabled');

    // B has not used the key: it reads the version from the store and refuses it.
    const appB = await connect(b, 'app');
    const refused = await failure(appB.decryptDataKey(dk.wrapped, { order: '1' }, { key: 'orders' }));
    expect(code(refused)).toBe('KW_KEY_STATE');
    // A dropped its cached version at once.
    expect(code(await failure(appA.decryptDataKey(dk.wrapped, { order: '1' }, { key: 'orders' })))).toBe(
      'KW_KEY_STATE',
    );
    expect((await appB.getKey('orders')).versions.find((v) => v.version === 1)?.state).toBe('disabled');

    // Enabled again through B: both agents decrypt.
    const opsB = await connect(b, 'ops');
    expect((await opsB.enableVersion('orders', 1)).versions.find((v) => v.version === 1)?.state).toBe('enabled');
    const again = await appB.decryptDataKey(dk.wrapped, { order: '1' }, { key: 'orders' });
    expect(Buffer.from(again).equals(Buffer.from(dk.plaintext))).toBe(true);

    const records = await auditRecords(a, (r) => r.op === 'disable-version' && r.principal === 'ops');
    expect(records.find((r) => r.op === 'disable-version' && r.principal === 'ops')?.outcome).toBe('ok');
    await auditRecords(b, (r) => r.op === 'enable-version' && r.principal === 'ops' && r.outcome === 'ok');
  }, 60_000);

  it('a principal without the permission gets KW_DENIED, nothing changes, and the refusal is audited', async () => {
    const appA = await connect(a, 'app');
    const opsA = await connect(a, 'ops');
    const denied = await failure(appA.disableVersion('orders', 1));
    expect(denied).toBeInstanceOf(AccessDeniedError);
    expect(denied?.message).toBe('policy: principal "app" may not disable key "orders" (no rule allows it)');
    // ops may disable, but only "orders", and may neither compromise nor destroy.
    expect(code(await failure(opsA.disableVersion('invoices', 1)))).toBe('KW_DENIED');
    expect(code(await failure(opsA.compromiseVersion('orders', 1)))).toBe('KW_DENIED');
    expect(code(await failure(opsA.destroyVersion('orders', 1, { force: true })))).toBe('KW_DENIED');
    const key = await appA.getKey('orders');
    expect(key.primaryVersion).toBe(2);
    expect(key.versions.map((v) => v.state)).toEqual(['enabled', 'enabled']);

    const records = await auditRecords(
      a,
      (r) => r.op === 'destroy-version' && r.principal === 'ops' && r.outcome === 'denied',
    );
    const refusals = records.filter((r) => r.outcome === 'denied').map((r) => [r.principal, r.op, r.code]);
    expect(refusals).toEqual(
      expect.arrayContaining([
        ['app', 'disable-version', 'KW_DENIED'],
        ['ops', 'disable-version', 'KW_DENIED'],
        ['ops', 'compromise-version', 'KW_DENIED'],
        ['ops', 'destroy-version', 'KW_DENIED'],
      ]),
    );
  }, 60_000);

  it('destroy keeps the library safeguards: disabled first, the grace period or force, the last version confirmed', async () => {
    const adminB = await connect(b, 'admin');
    const appA = await connect(a, 'app');
    const dk = await appA.generateDataKey('invoices');
    expect((await adminB.rotateKey('invoices')).primaryVersion).toBe(2);

    // Enabled: not destroyed.
    const enabled = await failure(adminB.destroyVersion('invoices', 1, { force: true }));
    expect(code(enabled)).toBe('KW_KEY_STATE');
    expect(enabled?.message).toMatch(/disable|compromise/);
    await adminB.disableVersion('invoices', 1);
    // Disabled just now: the grace period, unless forced.
    const grace = await failure(adminB.destroyVersion('invoices', 1));
    expect(code(grace)).toBe('KW_KEY_STATE');
    expect(grace?.message).toBe(
      'keywarden: key "invoices" v1 became disabled less than the grace period ago; destroy it in 168 h, or force it',
    );
    const destroyed = await adminB.destroyVersion('invoices', 1, { force: true });
    expect(destroyed.versions.find((v) => v.version === 1)?.state).toBe('destroyed');
    // The data key under v1 is gone for good (A, which cached v1 when it made the data key, sees
    // it when told or when its cache entry expires: SQLite has no change notifications).
    const appB = await connect(b, 'app');
    expect(code(await failure(appB.decryptDataKey(dk.wrapped, undefined, { key: 'invoices' })))).toBe(
      'KW_KEY_DESTROYED',
    );

    // The last version of a key: disabling and destroying it each need the confirmation.
    expect(code(await failure(adminB.disableVersion('tenant-x', 1)))).toBe('KW_KEY_STATE');
    await adminB.disableVersion('tenant-x', 1, { confirmLastVersion: true });
    const last = await failure(adminB.destroyVersion('tenant-x', 1, { force: true }));
    expect(code(last)).toBe('KW_KEY_STATE');
    expect(last?.message).toMatch(/confirm to do so$/);
    const gone = await adminB.destroyVersion('tenant-x', 1, { force: true, confirmLastVersion: true });
    expect(gone.versions.map((v) => v.state)).toEqual(['destroyed']);
    await auditRecords(b, (r) => r.op === 'destroy-version' && r.principal === 'admin' && r.outcome === 'ok');
  }, 60_000);

  it('compromise through an agent rotates in the same change; the other agent refuses the version', async () => {
    const appB = await connect(b, 'app');
    const dk = await appB.generateDataKey('orders', { order: '2' });
    expect(dk.version).toBe(2);
    const adminA = await connect(a, 'admin');
    const report = await adminA.compromiseVersion('orders', 2);
    expect(report.compromisedVersion).toBe(2);
    expect(report.rotatedTo).toBe(3);
    expect(report.key.primaryVersion).toBe(3);
    expect(report.unreadableVersions).toEqual([2]);
    expect(report.rewrapVersions).toEqual([1]);
    // B cached v2 when it made the data key, and SQLite has no change notifications (on
    // PostgreSQL they drop B's cache): an agent that has not cached it refuses it at once.
    const c = await startAgent('c');
    const appC = await connect(c, 'app');
    expect(code(await failure(appC.decryptDataKey(dk.wrapped, { order: '2' }, { key: 'orders' })))).toBe(
      'KW_KEY_COMPROMISED',
    );
    expect((await appC.generateDataKey('orders')).version).toBe(3);
    // Compromised is final.
    expect(code(await failure(adminA.enableVersion('orders', 2)))).toBe('KW_KEY_COMPROMISED');
    await kill(c, 'SIGTERM');
  }, 60_000);

  it('a lifecycle change in flight on an agent that dies is not sent to another agent', async () => {
    const fleet = await AgentFleetClient.connect([a.socket, b.socket], { credential: tokens.admin as string });
    clients.push(fleet);
    await fleet.getKey('orders'); // the connection to A is open
    a.child.kill('SIGSTOP');
    const disable = failure(fleet.disableVersion('orders', 1));
    await new Promise((r) => setTimeout(r, 300));
    await kill(a);
    const err = await disable;
    expect(err?.message).toBe(
      `agent: the agent on ${a.socket} went away while it ran disableVersion; it may or may not have been done, so it is not sent to another agent (look with getKey)`,
    );
    // A never ran it (it was stopped), and B was not asked.
    expect((await fleet.getKey('orders')).versions.find((v) => v.version === 1)?.state).toBe('enabled');
    // Sent now, it goes to B.
    expect((await fleet.disableVersion('orders', 1)).versions.find((v) => v.version === 1)?.state).toBe('disabled');
  }, 60_000);
});
