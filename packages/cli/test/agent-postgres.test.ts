import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { AgentClient, AgentFleetClient } from '@keywarden/agent';
import { Keywarden, KeywardenError, SoftwareRoot } from '@keywarden/core';
import { initSplitRoot } from '@keywarden/split-knowledge';
import { PostgresKeyStore } from '@keywarden/store-postgres';
import pgClient from 'pg';
import { parse } from 'pg-connection-string';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type HarnessPostgres, startPostgres, stopPostgres } from './_postgres.js';
import { type AgentProcess, built, kw, requireBuild, startAgent } from './split-helpers.js';

requireBuild('agent-postgres.test.ts');

/** The harness's PostgreSQL (_postgres.ts). */
let pg: HarnessPostgres = { env: {} };

const SCHEMA = `kw_agent_${process.pid}_${Date.now().toString(36)}`;
const DEV_SCHEMA = `${SCHEMA}_dev`;

/** Drop the suite's schemas (the cluster may be one the environment named, and outlive the run). */
async function dropSchemas(): Promise<void> {
  // pg lets a connection string's (absent) password override `password`: pass the parts instead.
  const { password: _none, ...parts } = parse(pg.env.KEYWARDEN_PG_URL as string);
  const client = new pgClient.Client({ ...(parts as pgClient.ClientConfig), password });
  client.on('error', () => {});
  await client.connect();
  try {
    for (const s of [SCHEMA, DEV_SCHEMA])
      await client.query(`DROP SCHEMA IF EXISTS ${pgClient.escapeIdentifier(s)} CASCADE`);
  } finally {
    await client.end();
  }
}
let cwd: string;
let store: PostgresKeyStore | undefined;
let admin: Keywarden | undefined;
let adminRoot: SoftwareRoot | undefined;
let shareFiles: string[] = [];
let password = '';

beforeAll(async () => {
  if (!built) return;
  pg = startPostgres('agent-postgres.test.ts');
  if (pg.unavailable) return;
  password = readFileSync(pg.env.KEYWARDEN_PG_PASSWORD_FILE as string, 'utf8').trim();
  // Not helpers.tempDir (removed after each test): the suite's tests share it.
  cwd = mkdtempSync(path.join(tmpdir(), 'kw-agent-pg-'));
  // The fleet's store, made with the library (an administrator's instance): a split-knowledge
  // root, 2 of 3 shares, and one key.
  store = await PostgresKeyStore.open({ schema: SCHEMA, env: pg.env });
  const { root, handOut } = await initSplitRoot(store, { shares: 3, threshold: 2 });
  adminRoot = root;
  admin = new Keywarden({ store, root });
  await admin.createKey('orders');
  shareFiles = [];
  for (const [i, share] of handOut.entries()) {
    const f = path.join(cwd, `share-${i + 1}.txt`);
    await writeFile(f, `${share}\n`, { mode: 0o600 });
    shareFiles.push(f);
  }
}, 150_000);

afterAll(async () => {
  await admin?.close();
  await adminRoot?.close();
  await store?.close();
  if (store && !pg.dir) await dropSchemas();
  if (cwd) rmSync(cwd, { recursive: true, force: true });
  stopPostgres(pg);
}, 90_000);

/** A `keywarden agent --store postgres` on SOCKET, unsealed by shares `quorum` (1-based). */
async function fleetAgent(
  name: string,
  quorum: number[],
  extra: string[] = ['--poll-interval', '1'],
): Promise<{ agent: AgentProcess; socket: string }> {
  const socket = path.join(cwd, `${name}.sock`);
  // The connection and the password only from the environment (never argv).
  const agent = await startAgent(
    cwd,
    ['start', '--store', 'postgres', '--pg-schema', SCHEMA, '--socket', socket, ...extra],
    pg.env,
  );
  expect(agent.log()).toContain(`serving ${socket} for the PostgreSQL key store, schema ${SCHEMA}`);
  const r = await kw(
    ['unseal', '--socket', socket, ...quorum.flatMap((i) => ['--share-file', shareFiles[i - 1] as string])],
    cwd,
  );
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/unsealed/);
  return { agent, socket };
}

describe.skipIf(!built)('keywarden agent --store postgres', () => {
  it('two agents on one store: SIGKILL one under load, the client fails over; changes reach the others', async () => {
    if (pg.unavailable) return;
    const a = await fleetAgent('a', [1, 2]);
    const b = await fleetAgent('b', [2, 3]);

    const fleet = await AgentFleetClient.connect([a.socket, b.socket]);
    const TOTAL = 200;
    // A random point under load: the agent dies wherever it is (reading, computing, writing).
    const KILL_AT = 20 + Math.floor(Math.random() * 100);
    let issued = 0;
    let settled = 0;
    const answered = new Map<number, number>();
    const failures: Error[] = [];
    const keys: { wrapped: Uint8Array; plaintext: Uint8Array; context: Record<string, string>; version: number }[] = [];
    let killed: Promise<unknown> | undefined;
    const worker = async (w: number) => {
      while (issued < TOTAL) {
        const n = issued++;
        const context = { worker: String(w), n: String(n) };
        try {
          const dk = await fleet.generateDataKey('orders', context);
          const back = await fleet.decryptDataKey(dk.wrapped, context, { key: 'orders' });
          expect(Buffer.from(back).equals(Buffer.from(dk.plaintext))).toBe(true);
          keys.push({ wrapped: dk.wrapped, plaintext: dk.plaintext, context, version: dk.version });
          answered.set(n, (answered.get(n) ?? 0) + 1);
        } catch (err) {
          failures.push(err as Error);
        } finally {
          settled++;
        }
        if (settled === KILL_AT && !killed) killed = a.agent.stop('SIGKILL');
      }
    };
    await Promise.all(Array.from({ length: 8 }, (_, w) => worker(w)));
    await killed;
    expect(
      failures.map((e) => e.message),
      `killed after ${KILL_AT}`,
    ).toEqual([]);
    expect(a.agent.child.signalCode).toBe('SIGKILL');
    expect(settled).toBe(TOTAL);
    expect(keys).toHaveLength(TOTAL);
    expect(answered.size).toBe(TOTAL);
    expect([...answered.values()].every((c) => c === 1)).toBe(true);
    // Requests in flight on A when it died were answered by B (data-key requests are safe to resend).
    expect(fleet.stats.retriedAfterLoss).toBeGreaterThan(0);
    await fleet.close();

    // Every data key handed out is the one its wrapped key holds, whichever agent made it.
    const onlyB = await AgentClient.connect(b.socket);
    for (const k of keys) {
      const p = await onlyB.decryptDataKey(k.wrapped, k.context, { key: 'orders' });
      expect(Buffer.from(p).equals(Buffer.from(k.plaintext))).toBe(true);
    }

    // Any agent of the fleet can be unsealed: a third one, by another quorum.
    const c = await fleetAgent('c', [1, 3]);
    const onlyC = await AgentClient.connect(c.socket);
    const v1 = keys[0] as (typeof keys)[number];
    expect(v1.version).toBe(1);
    // C caches version 1 now (B did during the load).
    expect(
      Buffer.from(await onlyC.decryptDataKey(v1.wrapped, v1.context, { key: 'orders' })).equals(
        Buffer.from(v1.plaintext),
      ),
    ).toBe(true);

    // A rotation through C: B's next data keys are under version 2 (its cached primary dropped).
    expect((await onlyC.rotateKey('orders')).primaryVersion).toBe(2);
    await waitUntil(async () => (await onlyB.generateDataKey('orders', { t: 'after-rotation' })).version === 2);

    // Version 1 disabled by another instance of the fleet (the administrator's): refused by both
    // agents, which had it cached (cache TTL 5 minutes), once they hear of the change.
    const started = Date.now();
    await admin?.disableVersion('orders', 1);
    const refusedAfter: Record<string, number> = {};
    await Promise.all(
      (
        [
          ['b', onlyB],
          ['c', onlyC],
        ] as const
      ).map(([name, client]) =>
        waitUntil(async () => {
          try {
            await client.decryptDataKey(v1.wrapped, v1.context, { key: 'orders' });
            return false;
          } catch (err) {
            expect(KeywardenError.isInstance(err) ? err.code : String(err)).toBe('KW_KEY_STATE');
            refusedAfter[name] = Date.now() - started;
            return true;
          }
        }),
      ),
    );
    // Measured, not asserted (docs/fleet.md gives the bound: notification delay, or the poll).
    console.info(
      `agent-postgres: version 1 refused by agent b after ${refusedAfter.b} ms, c after ${refusedAfter.c} ms`,
    );
    // Version 2 still serves.
    const dk2 = await onlyB.generateDataKey('orders', { t: 'v2' });
    expect(
      Buffer.from(await onlyC.decryptDataKey(dk2.wrapped, { t: 'v2' }, { key: 'orders' })).equals(
        Buffer.from(dk2.plaintext),
      ),
    ).toBe(true);
    // Version 2 compromised through agent C with the CLI (no key-store folder here, only C's
    // socket): C rotates in the same change; B, which had version 2 cached, refuses it once it hears.
    const comp = await kw(['key', 'compromise', 'orders', '--version', '2', '--socket', c.socket, '--json'], cwd);
    expect(comp.stderr).toBe('');
    expect(comp.code).toBe(0);
    expect(JSON.parse(comp.stdout).rotatedTo).toBe(3);
    await waitUntil(async () => {
      try {
        await onlyB.decryptDataKey(dk2.wrapped, { t: 'v2' }, { key: 'orders' });
        return false;
      } catch (err) {
        expect(KeywardenError.isInstance(err) ? err.code : String(err)).toBe('KW_KEY_COMPROMISED');
        return true;
      }
    });
    expect((await onlyB.generateDataKey('orders')).version).toBe(3);
    await onlyB.close();
    await onlyC.close();

    // Nothing secret in the agents' logs: no share, no password, no connection string.
    expect(await b.agent.stop()).toBe(0);
    expect(await c.agent.stop()).toBe(0);
    for (const log of [a.agent.log(), b.agent.log(), c.agent.log()]) {
      expect(log).not.toContain(password);
      expect(log).not.toContain(pg.env.KEYWARDEN_PG_URL as string);
      for (const f of shareFiles) expect(log).not.toContain(readFileSync(f, 'utf8').trim());
    }
  }, 120_000);

  it('refuses a store without a root, a development-mode root, and no socket', async () => {
    if (pg.unavailable) return;
    // A development-mode root: its users unseal it themselves, no agent serves it.
    const dev = await PostgresKeyStore.open({ schema: DEV_SCHEMA, env: pg.env });
    const unsealKey = new Uint8Array(randomBytes(32));
    await (await SoftwareRoot.initialize(dev, { unsealKey })).close();
    unsealKey.fill(0);
    await dev.close();
    const devMode = await kw(
      ['agent', 'start', '--store', 'postgres', '--pg-schema', DEV_SCHEMA, '--socket', path.join(cwd, 'dev.sock')],
      cwd,
      { env: pg.env },
    );
    expect(devMode.code).not.toBe(0);
    expect(devMode.stderr).toMatch(/development mode .* no agent is needed/);
    // No socket: there is no folder to put one in.
    const noSocket = await kw(['agent', 'start', '--store', 'postgres', '--pg-schema', SCHEMA], cwd, { env: pg.env });
    expect(noSocket.code).toBe(2);
    expect(noSocket.stderr).toMatch(/--socket PATH or \$KEYWARDEN_AGENT_SOCKET/);
    // A schema that holds no store: the agent creates nothing.
    const missing = await kw(
      ['agent', 'start', '--store', 'postgres', '--pg-schema', `${SCHEMA}_none`, '--socket', path.join(cwd, 'x.sock')],
      cwd,
      { env: pg.env },
    );
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).not.toContain(password);
    // --pg-schema without --store postgres.
    const stray = await kw(['agent', 'start', '--pg-schema', SCHEMA], cwd, { env: pg.env });
    expect(stray.code).toBe(2);
    expect(stray.stderr).toMatch(/--pg-schema, --poll-interval and --poll-only go with --store postgres/);
  }, 60_000);

  it('--poll-only (no LISTEN, as behind PgBouncer): a version disabled elsewhere is refused once the poll sees it', async () => {
    if (pg.unavailable) return;
    const d = await fleetAgent('d', [3, 1], ['--poll-only', '--poll-interval', '0.5']);
    await admin?.createKey('invoices');
    const client = await AgentClient.connect(d.socket);
    const dk = await client.generateDataKey('invoices', { n: '1' });
    expect(dk.version).toBe(1);
    await admin?.rotateKey('invoices');
    // D has version 1 cached; it is disabled by another instance.
    const started = Date.now();
    await admin?.disableVersion('invoices', 1);
    await waitUntil(async () => {
      try {
        await client.decryptDataKey(dk.wrapped, { n: '1' }, { key: 'invoices' });
        return false;
      } catch (err) {
        expect(KeywardenError.isInstance(err) ? err.code : String(err)).toBe('KW_KEY_STATE');
        return true;
      }
    });
    console.info(`agent-postgres: poll only (every 500 ms): version 1 refused after ${Date.now() - started} ms`);
    expect((await client.generateDataKey('invoices')).version).toBe(2);
    await client.close();
    expect(await d.agent.stop()).toBe(0);
  }, 60_000);
});

/** Poll `check` every 50 ms until it is true; fail after 20 s (a deadline, not a timing assertion). */
async function waitUntil(check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error('waitUntil: not within 20 s');
    await new Promise((r) => setTimeout(r, 50));
  }
}
