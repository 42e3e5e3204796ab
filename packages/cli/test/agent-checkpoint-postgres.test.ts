/**
 * Signed audit checkpoints from a fleet: two real `keywarden agent --store postgres
 * --checkpoint-key-pair auditor` processes on one PostgreSQL store (the harness's), both serving
 * data keys at once. The chain stays one chain (seq 1..n, no gap, no fork), each agent signs heads
 * of it, and every checkpoint verifies against the key pair's certificate with no record left
 * uncovered after both shut down.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { AgentClient } from '@keywarden/agent';
import {
  type AuditRecord,
  Keywarden,
  loadAuditKey,
  readStoreAuditHead,
  readStoreAuditLines,
  type SoftwareRoot,
  verifyAuditLog,
} from '@keywarden/core';
import { issueCertificate, KeyPairs, verifyCheckpoints } from '@keywarden/pki';
import { initSplitRoot } from '@keywarden/split-knowledge';
import { PostgresKeyStore } from '@keywarden/store-postgres';
import pgClient from 'pg';
import { parse } from 'pg-connection-string';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type HarnessPostgres, startPostgres, stopPostgres } from './_postgres.js';
import { built, kw, requireBuild, startAgent } from './split-helpers.js';

requireBuild('agent-checkpoint-postgres.test.ts');

let pg: HarnessPostgres = { env: {} };
const SCHEMA = `kw_ckpt_${process.pid}_${Date.now().toString(36)}`;
let cwd: string;
let store: PostgresKeyStore | undefined;
let root: SoftwareRoot | undefined;
let admin: Keywarden | undefined;
let certificate: Uint8Array;
let shareFiles: string[] = [];

beforeAll(async () => {
  if (!built) return;
  pg = startPostgres('agent-checkpoint-postgres.test.ts');
  if (pg.unavailable) return;
  cwd = mkdtempSync(path.join(tmpdir(), 'kw-ckpt-pg-'));
  // The fleet's store, made by an administrator's instance: a split-knowledge root, a key, and the
  // checkpoint key pair with its (self-signed) certificate, which the verifier keeps.
  store = await PostgresKeyStore.open({ schema: SCHEMA, env: pg.env });
  const made = await initSplitRoot(store, { shares: 3, threshold: 2 });
  root = made.root;
  admin = new Keywarden({ store, root });
  await admin.createKey('orders');
  await admin.createKey('pki');
  const pairs = new KeyPairs({ keywarden: admin });
  await pairs.create('auditor', { algorithm: 'ECDSA-P256' });
  const signer = await pairs.signer('auditor');
  certificate = await issueCertificate(
    { signer },
    {
      subject: { commonName: 'Fleet audit checkpoints' },
      publicKey: signer.publicKey,
      profile: 'ca',
      notAfter: new Date(Date.now() + 86_400_000),
    },
  );
  shareFiles = [];
  for (const [i, share] of made.handOut.entries()) {
    const f = path.join(cwd, `share-${i + 1}.txt`);
    await writeFile(f, `${share}\n`, { mode: 0o600 });
    shareFiles.push(f);
  }
}, 150_000);

afterAll(async () => {
  await admin?.close();
  await root?.close();
  await store?.close();
  if (store && !pg.dir) {
    const password = readFileSync(pg.env.KEYWARDEN_PG_PASSWORD_FILE as string, 'utf8').trim();
    const { password: _none, ...parts } = parse(pg.env.KEYWARDEN_PG_URL as string);
    const client = new pgClient.Client({ ...(parts as pgClient.ClientConfig), password });
    client.on('error', () => {});
    await client.connect();
    await client
      .query(`DROP SCHEMA IF EXISTS ${pgClient.escapeIdentifier(SCHEMA)} CASCADE`)
      .finally(() => client.end());
  }
  if (cwd) rmSync(cwd, { recursive: true, force: true });
  stopPostgres(pg);
}, 90_000);

function checkpointsIn(log: string): number {
  return (log.match(/keywarden agent: audit checkpoint signed over seq \d+ \(periodic\)/g) ?? []).length;
}

describe.skipIf(!built)('keywarden agent --store postgres --checkpoint-key-pair', () => {
  it('two agents serving one store at once: one chain, checkpoints by both, all verify', async () => {
    if (pg.unavailable) return;
    const agents = [];
    for (const [name, quorum] of [
      ['a', [1, 2]],
      ['b', [2, 3]],
    ] as const) {
      const socket = path.join(cwd, `${name}.sock`);
      const agent = await startAgent(
        cwd,
        [
          'start',
          '--store',
          'postgres',
          '--pg-schema',
          SCHEMA,
          '--socket',
          socket,
          '--checkpoint-key-pair',
          'auditor',
          '--checkpoint-interval',
          '0.5',
        ],
        pg.env,
      );
      const r = await kw(
        ['unseal', '--socket', socket, ...quorum.flatMap((i) => ['--share-file', shareFiles[i - 1] as string])],
        cwd,
      );
      expect(r.code, r.stderr).toBe(0);
      agents.push({ agent, socket });
    }
    const clients = await Promise.all(agents.map((a) => AgentClient.connect(a.socket)));
    // Both agents append to the chain at the same time, across several checkpoint intervals.
    const until = Date.now() + 60_000;
    let rounds = 0;
    while (rounds < 4 || !agents.every((a) => checkpointsIn(a.agent.log()) >= 1)) {
      if (Date.now() > until) throw new Error(`no checkpoint from both agents:\n${agents.map((a) => a.agent.log())}`);
      await Promise.all(
        clients.map(async (c) => {
          for (let i = 0; i < 5; i++) (await c.generateDataKey('orders', { n: String(i) })).plaintext.fill(0);
        }),
      );
      rounds++;
      await new Promise((r) => setTimeout(r, 250));
    }
    await Promise.all(clients.map((c) => c.close()));
    for (const a of agents) {
      expect(await a.agent.stop()).toBe(0);
      expect(a.agent.log()).not.toMatch(/failed/);
    }

    const key = await loadAuditKey(store as PostgresKeyStore, root as SoftwareRoot);
    try {
      const lines = await readStoreAuditLines(store as PostgresKeyStore, key);
      const anchor = await readStoreAuditHead(store as PostgresKeyStore, key);
      const chain = verifyAuditLog(key, lines, anchor ? { anchor } : {});
      expect(chain.ok, JSON.stringify(chain.firstBad)).toBe(true);
      const records = lines.map((l) => JSON.parse(l) as AuditRecord);
      // One chain: seq 1..n, each once.
      expect(records.map((r) => r.seq)).toEqual(records.map((_, i) => i + 1));
      const result = verifyCheckpoints(lines, { certificates: [certificate], maxUncovered: 0 });
      expect(result.ok, JSON.stringify(result.firstBad)).toBe(true);
      expect(result.checkpoints).toBeGreaterThanOrEqual(2);
      expect(result.uncovered).toBe(0);
      // Each agent's log named at least one periodic checkpoint of its own (the loop above).
      const checkpoints = records.filter((r) => r.op === 'audit-checkpoint');
      expect(checkpoints.every((r) => r.principal === 'agent-checkpoint')).toBe(true);
      expect(records.filter((r) => r.op === 'generate-data-key').length).toBeGreaterThanOrEqual(40);
    } finally {
      key.destroy();
    }
  }, 180_000);
});
