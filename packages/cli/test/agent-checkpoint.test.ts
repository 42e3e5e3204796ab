/**
 * `keywarden agent --checkpoint-key-pair NAME --checkpoint-interval S` (real agent processes from
 * dist/bin.js on a split-knowledge folder): the agent signs the audit chain's head while it serves,
 * at shutdown too; `audit verify --checkpoint-cert` accepts the log, and a log rewritten with the
 * audit key (a fresh chain that `audit verify` alone accepts) fails, naming the checkpoint. Two
 * agents on one store checkpoint the one chain each on its own, and every checkpoint verifies. A
 * key pair that cannot sign is logged and audited, and the agent serves on.
 */
import { chmod, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { AgentClient } from '@keywarden/agent';
import {
  AUDIT_HEAD_META_NAME,
  type AuditEvent,
  AuditLog,
  type AuditRecord,
  loadAuditKey,
  readStoreAuditLines,
  SoftwareRoot,
  writeStoredPolicy,
} from '@keywarden/core';
import { unsealWithShares } from '@keywarden/split-knowledge';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { makePki, type TestPki } from '@keywarden/testkit/tls-certs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, tempDir } from './helpers.js';
import { requireBuild, sharesIn, startAgent, waitFor } from './split-helpers.js';

requireBuild('agent-checkpoint.test.ts');

let tls: TestPki;
beforeAll(() => {
  tls = makePki();
});
afterAll(() => tls?.remove());

async function withStore<T>(cwd: string, fn: (store: SqliteKeyStore) => Promise<T>): Promise<T> {
  const store = SqliteKeyStore.open(path.join(cwd, '.keywarden', 'keystore.db'), { create: false });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

interface SplitFolder {
  cwd: string;
  shares: string[];
  /** --share-file arguments for a quorum. */
  quorum: string[];
}

async function splitFolder(): Promise<SplitFolder> {
  const cwd = await tempDir();
  const init = await cli(['init', '--shares', '3', '--threshold', '2'], { cwd });
  expect(init.code, init.stderr).toBe(0);
  const shares = sharesIn(init.out);
  await writeFile(path.join(cwd, 's1.txt'), `${shares[0]}\n`, { mode: 0o600 });
  await writeFile(path.join(cwd, 's2.txt'), `${shares[1]}\n`, { mode: 0o600 });
  return { cwd, shares, quorum: ['--share-file', 's1.txt', '--share-file', 's2.txt'] };
}

async function unseal(f: SplitFolder, socket: string): Promise<void> {
  for (const file of ['s1.txt', 's2.txt']) {
    const r = await cli(['--socket', socket, 'unseal', '--share-file', file], { cwd: f.cwd });
    expect(r.code, r.stderr).toBe(0);
  }
}

function checkpointsIn(log: string): number {
  return (log.match(/keywarden agent: audit checkpoint signed over seq \d+ \(periodic\)/g) ?? []).length;
}

/** Data-key traffic through the agent on `socket`. */
async function traffic(cwd: string, socket: string, n: number): Promise<void> {
  const c = await AgentClient.connect(path.join(cwd, socket));
  try {
    for (let i = 0; i < n; i++) {
      const dk = await c.generateDataKey('orders', { order: `o-${i}` });
      dk.plaintext.fill(0);
    }
  } finally {
    await c.close();
  }
}

/** What an attacker holding the audit key does: the store's log replaced by a fresh chain of edited events. */
async function rewriteStoreLog(f: SplitFolder, edit: (records: AuditRecord[]) => AuditRecord[]): Promise<void> {
  const store = SqliteKeyStore.open(path.join(f.cwd, '.keywarden', 'keystore.db'), { create: false });
  const root = await SoftwareRoot.load(store);
  try {
    await unsealWithShares(root, [f.shares[0] as string, f.shares[2] as string]);
    const key = await loadAuditKey(store, root);
    const records = (await readStoreAuditLines(store, key)).map((l) => JSON.parse(l) as AuditRecord);
    await store.deleteMeta(AUDIT_HEAD_META_NAME);
    const log = new AuditLog({ store, key });
    for (const r of edit(records)) {
      const event: AuditEvent = {
        op: r.op,
        principal: r.principal,
        outcome: r.outcome,
        ...(r.detail !== undefined ? { detail: r.detail } : {}),
      };
      await log.record(event);
    }
    await log.close();
    key.destroy();
  } finally {
    await root.close();
    await store.close();
  }
}

describe('keywarden agent --checkpoint-key-pair', () => {
  it('signs the head periodically while serving; verify passes, a log rewritten with the audit key fails naming the checkpoint', async () => {
    const f = await splitFolder();
    const { cwd } = f;
    // The signing key pair is held in the root (storage "root": sealed under the root itself).
    const ca = await cli(
      ['cert', 'ca', 'auditor', '--cn', 'Audit checkpoints', '--storage', 'root', '--out', 'auditor.pem', ...f.quorum],
      { cwd },
    );
    expect(ca.code, ca.stderr).toBe(0);
    const agent = await startAgent(cwd, [
      'start',
      '--socket',
      'a.sock',
      '--checkpoint-key-pair',
      'auditor',
      '--checkpoint-interval',
      '0.5',
    ]);
    await unseal(f, 'a.sock');
    const c = await AgentClient.connect(path.join(cwd, 'a.sock'));
    await c.createKey('orders');
    await c.close();
    await traffic(cwd, 'a.sock', 5);
    await waitFor(() => checkpointsIn(agent.log()) >= 1, 'a first checkpoint', 20_000);
    await traffic(cwd, 'a.sock', 5);
    await waitFor(() => checkpointsIn(agent.log()) >= 2, 'a second checkpoint', 20_000);
    // Idle: once the last traffic is signed (the second checkpoint may have come mid-traffic), no
    // record is written any more, so no more checkpoints: the checkpointer's own unwrap and
    // checkpoints do not count. Several intervals pass with the count unchanged.
    const sleep = () => new Promise((r) => setTimeout(r, 1500));
    let settled = -1;
    for (let i = 0; i < 10 && checkpointsIn(agent.log()) !== settled; i++) {
      settled = checkpointsIn(agent.log());
      await sleep();
    }
    await sleep();
    expect(checkpointsIn(agent.log())).toBe(settled);
    // Records after the last periodic checkpoint: signed by the next one or at shutdown (whichever
    // comes first; the shutdown case on its own: the seal test below).
    await traffic(cwd, 'a.sock', 3);
    expect(await agent.stop()).toBe(0);
    expect(agent.log()).not.toMatch(/failed/);
    const written = checkpointsIn(agent.log()) + (agent.log().match(/\(shutdown\)/g) ?? []).length;

    const verified = await cli(
      ['audit', 'verify', '--checkpoint-cert', 'auditor.pem', '--max-uncovered', '0', ...f.quorum],
      { cwd },
    );
    expect(verified.stderr).toBe('');
    expect(verified.code).toBe(0);
    const m =
      /audit: (\d+) signed checkpoint\(s\) verified; the log is signed through seq \d+ \(0 record\(s\) after it/.exec(
        verified.out,
      );
    expect(m, verified.out).not.toBeNull();
    expect(Number(m?.[1])).toBe(written);
    expect(written).toBeGreaterThanOrEqual(3);

    // The attacker edits one record and rebuilds the whole chain and head with the audit key.
    await rewriteStoreLog(f, (records) => {
      const first = records.find((r) => r.op === 'generate-data-key') as AuditRecord;
      return records.map((r) => (r === first ? { ...r, principal: 'intruder' } : r));
    });
    const plain = await cli(['audit', 'verify', ...f.quorum], { cwd });
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.out).toMatch(/^audit: \d+ records verified, chain intact/);
    const caught = await cli(['audit', 'verify', '--checkpoint-cert', 'auditor.pem', ...f.quorum], { cwd });
    expect(caught.code).toBe(1);
    expect(caught.stderr).toMatch(
      /^keywarden: audit: the signed checkpoints do not verify: checkpoint at seq \d+: the signed head \(seq \d+\) is not the record this log has there: the log was rewritten\n$/,
    );
  }, 120_000);

  it('two agents on one store: each signs the one chain, no fork; every checkpoint verifies', async () => {
    const f = await splitFolder();
    const { cwd } = f;
    const ca = await cli(['cert', 'ca', 'auditor', '--cn', 'Audit checkpoints', '--out', 'auditor.pem', ...f.quorum], {
      cwd,
    });
    expect(ca.code, ca.stderr).toBe(0);
    const args = ['--checkpoint-key-pair', 'auditor', '--checkpoint-interval', '0.5'];
    const a = await startAgent(cwd, ['start', '--socket', 'a.sock', ...args]);
    const b = await startAgent(cwd, ['start', '--socket', 'b.sock', ...args]);
    await unseal(f, 'a.sock');
    await unseal(f, 'b.sock');
    const c = await AgentClient.connect(path.join(cwd, 'a.sock'));
    await c.createKey('orders');
    await c.close();
    for (let round = 0; round < 3; round++) {
      await Promise.all([traffic(cwd, 'a.sock', 4), traffic(cwd, 'b.sock', 4)]);
      await new Promise((r) => setTimeout(r, 300));
    }
    await waitFor(
      () => checkpointsIn(a.log()) >= 1 && checkpointsIn(b.log()) >= 1,
      'a checkpoint by each agent',
      20_000,
    );
    expect(await a.stop()).toBe(0);
    expect(await b.stop()).toBe(0);
    const verified = await cli(
      ['audit', 'verify', '--checkpoint-cert', 'auditor.pem', '--max-uncovered', '0', ...f.quorum],
      { cwd },
    );
    expect(verified.stderr).toBe('');
    expect(verified.code).toBe(0);
    const n = Number(/audit: (\d+) signed checkpoint\(s\) verified/.exec(verified.out)?.[1]);
    expect(n).toBeGreaterThanOrEqual(2);
    expect(verified.out).toMatch(/\(0 record\(s\) after it/);
  }, 120_000);

  it('a key pair that cannot sign: the failure is logged and audited, and the agent serves on', async () => {
    const f = await splitFolder();
    const { cwd } = f;
    const agent = await startAgent(cwd, [
      'start',
      '--socket',
      'a.sock',
      '--checkpoint-key-pair',
      'no-such-pair',
      '--checkpoint-interval',
      '0.5',
    ]);
    await unseal(f, 'a.sock');
    const c = await AgentClient.connect(path.join(cwd, 'a.sock'));
    await c.createKey('orders');
    await c.close();
    await traffic(cwd, 'a.sock', 2);
    await waitFor(
      () => /audit checkpoint \(periodic\) failed, serving on: pki: /.test(agent.log()),
      'the failure in the log',
      20_000,
    );
    // Still serving.
    await traffic(cwd, 'a.sock', 2);
    expect(await agent.stop()).toBe(0);
    const failed = await cli(['audit', 'search', '--op', 'audit-checkpoint-failed', ...f.quorum], { cwd });
    expect(failed.code, failed.stderr).toBe(0);
    const records = failed.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as AuditRecord);
    expect(records.length).toBeGreaterThanOrEqual(1);
    expect(records[0]).toMatchObject({ principal: 'agent-checkpoint', outcome: 'error' });
  }, 120_000);

  it('a seal, and a clean shutdown, sign what was recorded first (the interval not yet reached)', async () => {
    const f = await splitFolder();
    const { cwd } = f;
    const ca = await cli(['cert', 'ca', 'auditor', '--cn', 'Audit checkpoints', '--out', 'auditor.pem', ...f.quorum], {
      cwd,
    });
    expect(ca.code, ca.stderr).toBe(0);
    const agent = await startAgent(cwd, ['start', '--socket', 'a.sock', '--checkpoint-key-pair', 'auditor']);
    await unseal(f, 'a.sock');
    const c = await AgentClient.connect(path.join(cwd, 'a.sock'));
    await c.createKey('orders');
    await c.close();
    await traffic(cwd, 'a.sock', 3);
    const sealed = await cli(['--socket', 'a.sock', 'seal'], { cwd });
    expect(sealed.code, sealed.stderr).toBe(0);
    expect(agent.log()).toMatch(/keywarden agent: audit checkpoint signed over seq \d+ \(seal\)/);
    expect(checkpointsIn(agent.log())).toBe(0);
    // Only the seal's own record follows that checkpoint.
    const afterSeal = await cli(
      ['audit', 'verify', '--checkpoint-cert', 'auditor.pem', '--max-uncovered', '1', ...f.quorum],
      { cwd },
    );
    expect(afterSeal.stderr).toBe('');
    expect(afterSeal.out).toMatch(
      /audit: 1 signed checkpoint\(s\) verified; .* \(1 record\(s\) after it, at most 1 allowed\)/,
    );
    // Unsealed again, more traffic, then a clean shutdown (SIGTERM): signed before the root goes.
    await unseal(f, 'a.sock');
    await traffic(cwd, 'a.sock', 2);
    expect(await agent.stop()).toBe(0);
    expect(agent.log()).toMatch(/keywarden agent: audit checkpoint signed over seq \d+ \(shutdown\)/);
    expect(checkpointsIn(agent.log())).toBe(0);
    const verified = await cli(
      ['audit', 'verify', '--checkpoint-cert', 'auditor.pem', '--max-uncovered', '0', ...f.quorum],
      { cwd },
    );
    expect(verified.stderr).toBe('');
    expect(verified.out).toMatch(/audit: 2 signed checkpoint\(s\) verified; .* \(0 record\(s\) after it/);
  }, 120_000);

  it('under a policy (--listen): refused until agent-checkpoint may decrypt with the key pair, then signed', async () => {
    const f = await splitFolder();
    const { cwd } = f;
    const ca = await cli(['cert', 'ca', 'auditor', '--cn', 'Audit checkpoints', '--out', 'auditor.pem', ...f.quorum], {
      cwd,
    });
    expect(ca.code, ca.stderr).toBe(0);
    const base = 'keywarden-policy 1\nprincipal app\nprincipal agent-checkpoint\nallow app * on orders\n';
    await withStore(cwd, (store) => writeStoredPolicy(store, base));
    await chmod(tls.server.keyFile, 0o600);
    const agent = await startAgent(cwd, [
      'start',
      '--socket',
      'a.sock',
      '--checkpoint-key-pair',
      'auditor',
      '--checkpoint-interval',
      '0.5',
      '--listen',
      'tcp://127.0.0.1:0',
      '--tls-cert',
      tls.server.certFile,
      '--tls-key',
      tls.server.keyFile,
      '--tls-client-ca',
      tls.ca.certFile,
    ]);
    await waitFor(() => /listening on tls:/.test(agent.log()), 'the listening line');
    const port = Number(/listening on tls:\/\/127\.0\.0\.1:(\d+)/.exec(agent.log())?.[1]);
    await unseal(f, 'a.sock');
    const app = tls.client('app');
    const c = await AgentClient.connect({
      host: '127.0.0.1',
      port,
      tls: { cert: app.cert, key: app.key, ca: tls.ca.cert },
    });
    await c.createKey('orders');
    (await c.generateDataKey('orders')).plaintext.fill(0);
    await waitFor(
      () =>
        /audit checkpoint \(periodic\) failed, serving on: policy: principal "agent-checkpoint" may not decrypt/.test(
          agent.log(),
        ),
      'the refusal in the log',
      20_000,
    );
    await withStore(cwd, (store) => writeStoredPolicy(store, `${base}allow agent-checkpoint decrypt on pki\n`));
    (await c.generateDataKey('orders')).plaintext.fill(0);
    await waitFor(() => checkpointsIn(agent.log()) >= 1, 'a checkpoint once allowed', 20_000);
    await c.close();
    expect(await agent.stop()).toBe(0);
    const verified = await cli(['audit', 'verify', '--checkpoint-cert', 'auditor.pem', ...f.quorum], { cwd });
    expect(verified.stderr).toBe('');
    expect(verified.out).toMatch(/audit: \d+ signed checkpoint\(s\) verified/);
  }, 120_000);

  it('--checkpoint-interval without --checkpoint-key-pair is a usage error', async () => {
    const f = await splitFolder();
    const r = await cli(['agent', 'start', '--checkpoint-interval', '5'], { cwd: f.cwd });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('keywarden: agent: --checkpoint-interval goes with --checkpoint-key-pair');
  }, 60_000);
});
