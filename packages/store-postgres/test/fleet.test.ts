/**
 * Many processes on one store (issue 13): real worker processes (test/_fleet-worker.mjs, on the
 * built package) share one PostgreSQL store with this process.
 * - a version disabled by one process stops decrypting in another that watches the store, long
 *   before its cache would expire (TTL one hour in the workers), by LISTEN/NOTIFY and by polling
 *   alone; a process that does not watch keeps decrypting (so the test can fail);
 * - two processes rotating one key at once make exactly one new version.
 * The measured delays are printed (docs/fleet.md records them); the asserted bound is loose on
 * purpose (busy CI machines): the documented target is under 2 s.
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Keywarden, SoftwareRoot } from '@keywarden/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { PostgresKeyStore } from '../src/index.js';
import { dropSchema, freshSchema, openStore, unavailable } from './_pg.js';

const WORKER = fileURLToPath(new URL('./_fleet-worker.mjs', import.meta.url));
/** Loose upper bound asserted for "seen elsewhere" (the target and typical figures: docs/fleet.md). */
const BOUND_MS = 10_000;

interface Reply {
  ok: boolean;
  code?: string;
  at?: number;
  startedAt?: number;
  refusedAt?: number;
  version?: number;
}

class Worker {
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #replies: Array<(line: string) => void> = [];
  readonly #lines: string[] = [];
  stderr = '';

  constructor(schema: string, mode: 'watch' | 'poll' | 'none', unsealKey: Uint8Array, pollIntervalMs = 1000) {
    this.#child = spawn(process.execPath, [WORKER, schema, mode, String(pollIntervalMs)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.#child.stderr.on('data', (d) => {
      this.stderr += String(d);
    });
    createInterface({ input: this.#child.stdout }).on('line', (line) => {
      const waiter = this.#replies.shift();
      if (waiter) waiter(line);
      else this.#lines.push(line);
    });
    this.#child.stdin.write(`${Buffer.from(unsealKey).toString('hex')}\n`);
  }

  #next(): Promise<string> {
    const line = this.#lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`worker did not answer: ${this.stderr}`)), 45_000);
      this.#replies.push((l) => {
        clearTimeout(timer);
        resolve(l);
      });
    });
  }

  async ready(): Promise<void> {
    expect(JSON.parse(await this.#next())).toEqual({ ready: true });
  }

  async send(cmd: Record<string, unknown>): Promise<Reply> {
    this.#child.stdin.write(`${JSON.stringify(cmd)}\n`);
    return JSON.parse(await this.#next()) as Reply;
  }

  async stop(): Promise<void> {
    if (this.#child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.#child.once('exit', resolve));
    this.#child.stdin.end();
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

describe.skipIf(unavailable !== undefined)('fleet: many processes on one PostgreSQL store', () => {
  let schema: string;
  let store: PostgresKeyStore;
  let kw: Keywarden;
  let root: SoftwareRoot;
  let unsealKey: Uint8Array;
  let envelopeV1: string;
  const workers: Worker[] = [];

  const worker = async (mode: 'watch' | 'poll' | 'none', pollIntervalMs = 1000): Promise<Worker> => {
    const w = new Worker(schema, mode, unsealKey, pollIntervalMs);
    workers.push(w);
    await w.ready();
    return w;
  };

  beforeEach(async () => {
    schema = freshSchema();
    store = await openStore(schema);
    unsealKey = new Uint8Array(randomBytes(32));
    root = await SoftwareRoot.initialize(store, { unsealKey });
    kw = new Keywarden({ store, root });
    await kw.createKey('orders');
    envelopeV1 = Buffer.from(await kw.encrypt(new TextEncoder().encode('order 7'), { key: 'orders' })).toString(
      'base64',
    );
    // v2 becomes primary, so v1 can be disabled like any older version.
    await kw.rotateKey('orders');
  });

  afterEach(async () => {
    await Promise.all(workers.splice(0).map((w) => w.stop()));
    await kw.close();
    await root.close();
    await store.close();
    unsealKey.fill(0);
    await dropSchema(schema);
  });

  /**
   * Worker `watcher` decrypts the v1 envelope in a loop; `actor` disables v1. Returns the time from
   * the start of the actor's disableVersion call (read, plan, commit) to the watcher's first refusal:
   * an upper bound of the delay after the commit.
   */
  async function disableSeenAfter(actor: Worker, watcher: Worker): Promise<number> {
    expect(await watcher.send({ op: 'decrypt', envelope: envelopeV1 })).toEqual({ ok: true }); // cached now
    const refused = watcher.send({ op: 'decryptUntilRefused', envelope: envelopeV1 });
    await new Promise((r) => setTimeout(r, 100)); // the loop is running, from the cache
    const disabled = await actor.send({ op: 'disable', version: 1 });
    expect(disabled.ok).toBe(true);
    const seen = await refused;
    expect(seen).toMatchObject({ ok: true, code: 'KW_KEY_STATE' });
    console.log(
      `fleet: disable call took ${(disabled.at as number) - (disabled.startedAt as number)} ms in the acting process`,
    );
    return (seen.refusedAt as number) - (disabled.startedAt as number);
  }

  it('a version disabled by one process stops decrypting in a process that watches the store (LISTEN/NOTIFY), long before its cache expires', async () => {
    const [actor, watcher, blind] = await Promise.all([worker('none'), worker('watch'), worker('none')]);
    expect(await blind.send({ op: 'decrypt', envelope: envelopeV1 })).toEqual({ ok: true });
    const delay = await disableSeenAfter(actor, watcher);
    console.log(`fleet: disable seen by another process ${delay} ms after the call started (LISTEN/NOTIFY)`);
    expect(delay).toBeLessThan(BOUND_MS);
    // Without watching, the cached KEK keeps serving until the TTL (one hour here): what the
    // notifications fix.
    expect(await blind.send({ op: 'decrypt', envelope: envelopeV1 })).toEqual({ ok: true });
  });

  it('without notifications (listen: false, as behind a transaction-mode pooler) the poll alone makes the change seen within the poll interval', async () => {
    const [actor, watcher] = await Promise.all([worker('none'), worker('poll', 500)]);
    const delay = await disableSeenAfter(actor, watcher);
    console.log(`fleet: disable seen by another process ${delay} ms after the call started (polling every 500 ms)`);
    expect(delay).toBeLessThan(BOUND_MS);
  });

  it('two processes rotating one key at the same instant make exactly one new version; the other gets KW_CONFLICT', async () => {
    const [a, b] = await Promise.all([worker('watch'), worker('watch')]);
    const at = Date.now() + 500;
    const results = await Promise.all([a.send({ op: 'rotate', at }), b.send({ op: 'rotate', at })]);
    expect(results.filter((r) => r.ok)).toHaveLength(1);
    expect(results.find((r) => !r.ok)?.code).toBe('KW_CONFLICT');
    const key = await store.getKey('orders');
    expect((await store.listVersions(key?.id as string)).map((v) => v.version)).toEqual([1, 2, 3]);
    expect(key?.primaryVersion).toBe(3);
  });
});
