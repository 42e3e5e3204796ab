/**
 * Jobs started on one instance and resumed on another (issue 13; docs/fleet.md §Jobs): real
 * processes (test/_jobs-worker.mjs, on the built packages) against the harness's PostgreSQL.
 * - a bulk rewrap killed (SIGKILL) at a random point of its progress is resumed from its checkpoint
 *   by another process, under another holder name, once the dead one's lease expired; afterwards
 *   the old version is disabled and every record still decrypts (so every one was rewrapped);
 * - two instances resuming at once: exactly one gets the lease, the other a KW_CONFLICT;
 * - a holder stopped (SIGSTOP) past its lease's expiry while another took over stops itself
 *   (KW_CONFLICT) when it runs again;
 * - a root rotation killed before its commit, right after it, and at a random instant is finished
 *   by another process: exactly one rotation, every envelope decrypts under the new root, the audit
 *   key is under the new root; two resumers at once: one rotates, the other gets KW_CONFLICT.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { AUDIT_KEY_META_NAME, JobLease, Keywarden, loadAuditKey, SoftwareRoot } from '@keywarden/core';
import pg from 'pg';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { PostgresKeyStore } from '../src/index.js';
import { adminClient, dropSchema, freshSchema, openStore, unavailable } from './_pg.js';

const WORKER = fileURLToPath(new URL('./_jobs-worker.mjs', import.meta.url));
const RECORDS = 300;
/** The lease of an instance the test kills or stalls: short, so that the tests wait little for it to run out. */
const TTL_MS = 1500;
/**
 * The lease of an instance that must finish its job: long, so that a loaded machine (CPU starved
 * for a second or more) cannot make it miss its renewals and lose the lease halfway (it did, at
 * 1.5 s, under two busy loops on two cores: "rewrap-job/j3 was lost (not renewed in time…)").
 */
const RUN_TTL_MS = 10_000;

interface JobEvent {
  event: string;
  code?: string;
  message?: string;
  done?: number;
  token?: number;
  resumedFrom?: number;
  rewrapped?: number;
  unchanged?: number;
  failed?: number;
  outcome?: string;
  fromRootId?: string;
  rootId?: string;
}

class Instance {
  readonly child: ChildProcess;
  readonly events: JobEvent[] = [];
  readonly exited: Promise<number | null>;
  #watchers: Array<() => void> = [];
  stderr = '';

  constructor(schema: string, holder: string, job: string, options: Record<string, unknown>, unsealKey: Uint8Array) {
    this.child = spawn(process.execPath, [WORKER, schema, holder, job, JSON.stringify(options)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stderr?.on('data', (d) => {
      this.stderr += String(d);
    });
    createInterface({ input: this.child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      if (process.env.JOBS_DEBUG) console.log(holder, line);
      this.events.push(JSON.parse(line) as JobEvent);
      for (const w of this.#watchers) w();
    });
    // 'close', not 'exit': every line of stdout and stderr has been read by then.
    this.exited = new Promise((resolve) => this.child.once('close', (code) => resolve(code)));
    this.child.stdin?.end(`${Buffer.from(unsealKey).toString('hex')}\n`);
  }

  /** Resolves with the first event matching `pred`, or undefined when the process exits first. */
  until(pred: (e: JobEvent) => boolean): Promise<JobEvent | undefined> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`instance: no such event within 45 s: ${this.stderr}`)), 45_000);
      const check = (): void => {
        const hit = this.events.find(pred);
        if (hit) {
          clearTimeout(timer);
          resolve(hit);
        }
      };
      this.#watchers.push(check);
      check();
      void this.exited.then(() => {
        setTimeout(() => {
          clearTimeout(timer);
          resolve(this.events.find(pred));
        }, 50);
      });
    });
  }

  async result(): Promise<JobEvent> {
    const end = await this.until((e) => e.event === 'done' || e.event === 'error');
    await this.exited;
    if (!end) throw new Error(`instance ended without a result: ${this.stderr}`);
    return end;
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }
}

describe.skipIf(unavailable !== undefined)('jobs resumed on another instance (real processes, SIGKILL)', () => {
  let schema: string;
  let store: PostgresKeyStore;
  let root: SoftwareRoot;
  let kw: Keywarden;
  let unsealKey: Uint8Array;
  let app: pg.Client;
  const instances: Instance[] = [];
  const plaintexts = new Map<string, string>();

  const start = (holder: string, job: string, options: Record<string, unknown>): Instance => {
    const i = new Instance(schema, holder, job, options, unsealKey);
    instances.push(i);
    return i;
  };
  const table = (): string => `${pg.escapeIdentifier(schema)}.app_records`;

  beforeEach(async () => {
    schema = freshSchema();
    store = await openStore(schema);
    unsealKey = new Uint8Array(randomBytes(32));
    root = await SoftwareRoot.initialize(store, { unsealKey });
    kw = new Keywarden({ store, root });
    (await loadAuditKey(store, root, { create: true })).destroy();
    await kw.createKey('orders');
    app = await adminClient();
    await app.query(`CREATE TABLE ${table()} (id text PRIMARY KEY, envelope bytea NOT NULL)`);
    plaintexts.clear();
    const ids: string[] = [];
    const envelopes: Buffer[] = [];
    for (let n = 0; n < RECORDS; n++) {
      const id = `r${String(n).padStart(5, '0')}`;
      const text = `order ${n} ${randomBytes(4).toString('hex')}`;
      plaintexts.set(id, text);
      const envelope = await kw.encrypt(new TextEncoder().encode(text), { key: 'orders', context: { record: id } });
      ids.push(id);
      envelopes.push(Buffer.from(envelope));
    }
    await app.query(`INSERT INTO ${table()} (id, envelope) SELECT * FROM unnest($1::text[], $2::bytea[])`, [
      ids,
      envelopes,
    ]);
  });

  afterEach(async () => {
    for (const i of instances.splice(0)) {
      i.kill('SIGCONT');
      i.kill();
      await i.exited;
    }
    await app.end();
    await kw.close();
    await root.close();
    await store.close();
    unsealKey.fill(0);
    await dropSchema(schema);
  });

  /** Every record decrypts through `k` to what was written, and is under version `version`. */
  async function expectAllDecrypt(k: Keywarden): Promise<void> {
    const { rows } = await app.query<{ id: string; envelope: Buffer }>(
      `SELECT id, envelope FROM ${table()} ORDER BY id`,
    );
    expect(rows).toHaveLength(RECORDS);
    for (const r of rows) {
      const out = await k.decrypt(new Uint8Array(r.envelope), { key: 'orders', context: { record: r.id } });
      expect(new TextDecoder().decode(out)).toBe(plaintexts.get(r.id));
    }
  }

  /** Kill a rewrap instance once its progress reaches a random point in 10..90 % of the records. */
  async function killAtRandomProgress(i: Instance): Promise<number> {
    const target = randomInt(Math.floor(RECORDS * 0.1), Math.floor(RECORDS * 0.9));
    const hit = await i.until((e) => e.event === 'progress' && (e.done as number) >= target);
    i.kill();
    await i.exited;
    expect(
      hit,
      `the job ended before the kill point ${target}: ${JSON.stringify(i.events.filter((e) => e.event !== 'progress'))} ${i.stderr}`,
    ).toBeDefined();
    return target;
  }

  it('a bulk rewrap killed at a random point is resumed by another instance after the lease expires; every record decrypts with the old version disabled', async () => {
    await kw.rotateKey('orders'); // v2 primary: the job moves every record from v1 to v2
    const a = start('instance-a', 'rewrap', { jobId: 'j1', ttlMs: TTL_MS, checkpointEvery: 20 });
    const target = await killAtRandomProgress(a);
    // B is another instance: the dead A's lease holds B off until it expires, then B resumes.
    const b = start('instance-b', 'rewrap', {
      jobId: 'j1',
      ttlMs: RUN_TTL_MS,
      checkpointEvery: 20,
      waitForLease: true,
    });
    const done = await b.result();
    console.log(
      `jobs: rewrap killed at ≥${target}/${RECORDS}, resumed from ${done.resumedFrom}: ${JSON.stringify(done)}`,
    );
    expect(done).toMatchObject({ event: 'done', failed: 0 });
    expect(done.resumedFrom).toBeGreaterThan(0);
    expect((done.resumedFrom as number) + (done.rewrapped as number) + (done.unchanged as number)).toBe(RECORDS);
    // The leased tokens grow: B's grant fenced out A's.
    expect(b.events.find((e) => e.event === 'leased')?.token).toBeGreaterThan(
      a.events.find((e) => e.event === 'leased')?.token as number,
    );
    expect(await store.getMeta('rewrap-job/j1')).toBeUndefined();
    // Every record was rewrapped: with v1 disabled, each one still decrypts (under v2).
    await kw.disableVersion('orders', 1);
    await expectAllDecrypt(kw);
  }, 120_000);

  it('two instances resuming one job at once: exactly one runs it, the other gets KW_CONFLICT', async () => {
    await kw.rotateKey('orders');
    const a = start('instance-a', 'rewrap', { jobId: 'j2', ttlMs: TTL_MS, checkpointEvery: 20 });
    await killAtRandomProgress(a);
    await new Promise((r) => setTimeout(r, TTL_MS + 500)); // A's lease has expired
    const startAt = Date.now() + 2000;
    const [b, c] = [
      start('instance-b', 'rewrap', { jobId: 'j2', ttlMs: RUN_TTL_MS, startAt }),
      start('instance-c', 'rewrap', { jobId: 'j2', ttlMs: RUN_TTL_MS, startAt }),
    ];
    const results = await Promise.all([b.result(), c.result()]);
    expect(results.filter((r) => r.event === 'done')).toHaveLength(1);
    const refused = results.find((r) => r.event === 'error');
    expect(refused?.code).toBe('KW_CONFLICT');
    expect(refused?.message).toMatch(/is held by instance-[bc]/);
    await kw.disableVersion('orders', 1);
    await expectAllDecrypt(kw);
  }, 120_000);

  it('a holder stalled past its lease while another instance took over stops itself (KW_CONFLICT) when it runs again', async () => {
    await kw.rotateKey('orders');
    const b = start('instance-b', 'rewrap', { jobId: 'j3', ttlMs: TTL_MS, checkpointEvery: 10 });
    await b.until((e) => e.event === 'progress' && (e.done as number) >= 20);
    b.kill('SIGSTOP');
    const c = start('instance-c', 'rewrap', { jobId: 'j3', ttlMs: RUN_TTL_MS, waitForLease: true });
    // The whole event in the message: a failed run of this test (2026-11-30, once) showed only
    // "event: error", not the code and message that say why.
    const cDone = await c.result();
    expect(cDone, JSON.stringify(cDone)).toMatchObject({ event: 'done', failed: 0 });
    b.kill('SIGCONT');
    const stale = await b.result();
    expect(stale, JSON.stringify(stale)).toMatchObject({ event: 'error', code: 'KW_CONFLICT' });
    await kw.disableVersion('orders', 1);
    await expectAllDecrypt(kw);
  }, 120_000);

  it('JobLease: a second holder is refused until the first releases; each grant draws a higher token', async () => {
    const one = await JobLease.acquire(store, 'test/lease', { holder: 'one', ttlMs: 5000 });
    await expect(JobLease.acquire(store, 'test/lease', { holder: 'two', ttlMs: 5000 })).rejects.toMatchObject({
      code: 'KW_CONFLICT',
    });
    await one.putMeta('test/data', new Uint8Array([1]));
    await one.release();
    await expect(one.putMeta('test/data', new Uint8Array([2]))).rejects.toMatchObject({ code: 'KW_CONFLICT' });
    const two = await JobLease.acquire(store, 'test/lease', { holder: 'two', ttlMs: 5000 });
    expect(two.token).toBeGreaterThan(one.token);
    // A write fenced by the old grant is refused by the store itself, not only by the local check.
    await expect(
      store.putMetaUnderLease(
        { name: 'test/lease', holder: 'one', token: one.token },
        'test/data',
        new Uint8Array([3]),
      ),
    ).rejects.toMatchObject({ code: 'KW_CONFLICT' });
    expect(await store.getMeta('test/data')).toEqual(new Uint8Array([1]));
    await two.release();
  });

  describe('root rotation', () => {
    async function expectRotatedOnce(fromRootId: string, rootId: string): Promise<void> {
      expect(rootId).not.toBe(fromRootId);
      const fresh = await SoftwareRoot.load(store);
      try {
        expect(fresh.document.rootId).toBe(rootId);
        await fresh.unseal(unsealKey);
        for (const key of await store.listKeys()) {
          for (const v of await store.listVersions(key.id)) expect(v.rootId).toBe(rootId);
        }
        const audit = JSON.parse(new TextDecoder().decode(await store.getMeta(AUDIT_KEY_META_NAME))) as {
          rootId: string;
        };
        expect(audit.rootId).toBe(rootId);
        (await loadAuditKey(store, fresh)).destroy();
        const k = new Keywarden({ store, root: fresh });
        await expectAllDecrypt(k);
        await k.close();
      } finally {
        await fresh.close();
      }
    }

    for (const crashAt of ['started', 'committed'] as const) {
      it(`killed ${crashAt === 'started' ? 'before' : 'right after'} its commit, it is finished by another instance: one rotation, everything decrypts`, async () => {
        const from = root.document.rootId;
        const a = start('instance-a', 'rotate-root', { jobId: 'rot1', ttlMs: TTL_MS, crashAt });
        expect(await a.exited).toBeNull(); // SIGKILLed itself
        expect(a.child.signalCode).toBe('SIGKILL');
        const b = start('instance-b', 'rotate-root', { jobId: 'rot1', ttlMs: RUN_TTL_MS, waitForLease: true });
        const done = await b.result();
        expect(done).toMatchObject({
          event: 'done',
          outcome: crashAt === 'started' ? 'rotated' : 'finished',
          fromRootId: from,
        });
        await expectRotatedOnce(from, done.rootId as string);
        // Run again: nothing left to do, still one rotation.
        const again = await start('instance-c', 'rotate-root', { jobId: 'rot1', ttlMs: RUN_TTL_MS }).result();
        expect(again).toMatchObject({ event: 'done', outcome: 'done', rootId: done.rootId });
      }, 60_000);
    }

    it('killed at a random instant, it is finished by another instance: exactly one rotation', async () => {
      const from = root.document.rootId;
      const a = start('instance-a', 'rotate-root', { jobId: 'rot2', ttlMs: TTL_MS });
      await a.until((e) => e.event === 'ready');
      await new Promise((r) => setTimeout(r, randomInt(0, 150)));
      a.kill();
      await a.exited;
      const b = start('instance-b', 'rotate-root', { jobId: 'rot2', ttlMs: RUN_TTL_MS, waitForLease: true });
      const done = await b.result();
      console.log(`jobs: root rotation killed at a random instant; the resumer's outcome: ${done.outcome}`);
      expect(done.event).toBe('done');
      expect(done.fromRootId).toBe(from);
      await expectRotatedOnce(from, done.rootId as string);
    }, 60_000);

    it('two instances resuming at once: one rotates; the other is refused (KW_CONFLICT) or, if it came after, finds it done', async () => {
      const from = root.document.rootId;
      const a = start('instance-a', 'rotate-root', { jobId: 'rot3', ttlMs: TTL_MS, crashAt: 'started' });
      await a.exited;
      await new Promise((r) => setTimeout(r, TTL_MS + 500));
      const startAt = Date.now() + 2000;
      const results = await Promise.all([
        start('instance-b', 'rotate-root', { jobId: 'rot3', ttlMs: RUN_TTL_MS, startAt }).result(),
        start('instance-c', 'rotate-root', { jobId: 'rot3', ttlMs: RUN_TTL_MS, startAt }).result(),
      ]);
      console.log(`jobs: two root-rotation resumers at once: ${results.map((r) => r.outcome ?? r.code).join(', ')}`);
      const winner = results.find((r) => r.outcome === 'rotated');
      expect(results.filter((r) => r.outcome === 'rotated')).toHaveLength(1);
      const other = results.find((r) => r !== winner);
      expect(other?.code === 'KW_CONFLICT' || other?.outcome === 'done').toBe(true);
      await expectRotatedOnce(from, winner?.rootId as string);
    }, 60_000);
  });
});
