/**
 * PostgreSQL restarted during a load (harness/postgres.sh restart: a fast shutdown disconnects
 * every client, then the server comes back on the same port). Every operation either succeeds —
 * retried across the outage when it failed before COMMIT — or, when the connection was lost while
 * its COMMIT was in flight, fails with the KeyStoreError that says the outcome is unknown. Nothing is
 * half-written, every acknowledged key is there afterwards, and watch() hears changes made after
 * the restart.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type { KeyRecord, KeyVersionRecord } from '@keywarden/core';
import { afterEach, describe, expect, it } from 'vitest';
import type { KeyStoreChange, PostgresKeyStore } from '../src/index.js';
import { dropSchema, freshSchema, openStore, unavailable } from './_pg.js';

const HARNESS = fileURLToPath(new URL('../../../harness/postgres.sh', import.meta.url));
const pgDir = process.env.KEYWARDEN_PG_DIR;
// The server can be restarted only when the harness started it; in CI it always did.
const cannotRestart =
  unavailable ?? (pgDir ? undefined : 'KEYWARDEN_PG_DIR is not set (a server the harness did not start)');
if (cannotRestart && process.env.CI) throw new Error(`faults: ${cannotRestart}`);

const UNKNOWN_OUTCOME = /may or may not have been applied/;
const T0 = Date.UTC(2026, 0, 2, 3, 4, 5, 678);

function records(id: string): [KeyRecord, KeyVersionRecord] {
  return [
    {
      id,
      name: id.replace('kek_', ''),
      scope: {},
      primaryVersion: 1,
      createdAt: new Date(T0),
      updatedAt: new Date(T0),
    },
    {
      keyId: id,
      version: 1,
      state: 'enabled',
      rootId: 'root_test',
      wrappedMaterial: new Uint8Array(randomBytes(40)),
      createdAt: new Date(T0),
      updatedAt: new Date(T0),
    },
  ];
}

describe.skipIf(cannotRestart !== undefined)('faults: PostgreSQL restarted during a load', () => {
  const schema = freshSchema();
  let store: PostgresKeyStore | undefined;
  afterEach(async () => {
    await store?.close();
    await dropSchema(schema);
  });

  it('operations are retried across the restart or fail with the unknown-outcome error; nothing is half-written or lost; watch() resumes', async () => {
    store = await openStore(schema, { retryForMs: 30_000, maxConnections: 8 });
    const s = store;
    const changes: KeyStoreChange[] = [];
    const stopWatch = await s.watch((c) => changes.push(c), { pollIntervalMs: 500 });

    const acknowledged: string[] = [];
    const unknown: string[] = [];
    const unexpected: string[] = [];
    let afterRestart = 0;
    let restarted = false;
    let stop = false;
    const loop = async (worker: number) => {
      for (let n = 0; !stop; n++) {
        const id = `kek_w${worker}_${n}`;
        const [key, v1] = records(id);
        try {
          await s.createKey(key, v1);
          acknowledged.push(id);
          await s.reserveUses(id, 1, 1).catch((err: Error & { code?: string }) => {
            if (!(err.code === 'KW_STORE' && UNKNOWN_OUTCOME.test(err.message))) throw err;
          });
          expect((await s.getKey(key.name))?.id).toBe(id);
          if (restarted) afterRestart++;
        } catch (err) {
          const e = err as Error & { code?: string };
          if (e.code === 'KW_STORE' && UNKNOWN_OUTCOME.test(e.message)) unknown.push(id);
          else unexpected.push(`${e.code}: ${e.message}`);
        }
      }
    };
    const loops = [0, 1, 2, 3].map(loop);
    await new Promise((r) => setTimeout(r, 1000));
    execFileSync('bash', [HARNESS, 'restart', pgDir as string], { stdio: 'ignore', timeout: 90_000 });
    restarted = true;
    const until = Date.now() + 30_000;
    while (afterRestart < 20 && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    stop = true;
    await Promise.all(loops);

    console.log(
      `faults: ${acknowledged.length} keys acknowledged, ${unknown.length} with an unknown outcome, ${afterRestart} operations after the restart`,
    );
    expect(unexpected).toEqual([]);
    expect(afterRestart).toBeGreaterThanOrEqual(20);
    // Every acknowledged key is there with its version; an unknown outcome is all or nothing.
    const keys = new Set((await s.listKeys()).map((k) => k.id));
    for (const id of acknowledged) expect(keys.has(id), id).toBe(true);
    for (const id of [...acknowledged, ...unknown]) {
      if (keys.has(id)) expect((await s.listVersions(id)).map((v) => v.version)).toEqual([1]);
    }

    // The watcher reconnected: a change made now is heard.
    const seen = changes.length;
    await s.setVersionState(acknowledged[0] as string, 1, 'disabled', new Date(T0 + 1));
    const deadline = Date.now() + 15_000;
    while (
      !changes.slice(seen).some((c) => c.keyId === acknowledged[0] || c.kind === 'resync') &&
      Date.now() < deadline
    ) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(changes.slice(seen).some((c) => c.keyId === acknowledged[0] || c.kind === 'resync')).toBe(true);
    await stopWatch();
  }, 120_000);
});
