/**
 * Root rotation on PostgreSQL through the library (issue 13; docs/fleet.md §Jobs): the CLI's
 * `keywarden root rotate` works on a key-store folder (SQLite), the fleet calls the library. Here
 * the split-knowledge path — a quorum of shares (@keywarden/split-knowledge's rotateRoot) — run as a
 * resumable job (runRootRotationJob) against the harness's PostgreSQL: every version moves to the
 * new root in one transaction, the same shares unseal it, and every envelope still decrypts.
 * (The development-mode path and the crashes: jobs.test.ts.)
 */
import { Keywarden, runRootRotationJob, SoftwareRoot } from '@keywarden/core';
import { initSplitRoot, rotateRoot, unsealWithShares } from '@keywarden/split-knowledge';
import { afterEach, describe, expect, it } from 'vitest';
import type { PostgresKeyStore } from '../src/index.js';
import { dropSchema, freshSchema, openStore, unavailable } from './_pg.js';

describe.skipIf(unavailable !== undefined)('root rotation with a quorum on PostgreSQL', () => {
  let schema: string;
  let store: PostgresKeyStore | undefined;

  afterEach(async () => {
    await store?.close();
    await dropSchema(schema);
  });

  it('rotates every version to a new root in one job; the same quorum unseals it; everything decrypts', async () => {
    schema = freshSchema();
    store = await openStore(schema);
    const { root, handOut } = await initSplitRoot(store, { shares: 3, threshold: 2 });
    const kw = new Keywarden({ store, root });
    await kw.createKey('orders');
    await kw.rotateKey('orders');
    const envelope = await kw.encrypt(new TextEncoder().encode('order 7'), { key: 'orders' });
    const from = root.document.rootId;
    const quorum = handOut.slice(1, 3);

    const result = await runRootRotationJob(store, {
      jobId: 'quorum-1',
      holder: 'instance-a',
      root,
      rotate: () => rotateRoot(store as PostgresKeyStore, quorum),
    });
    expect(result).toMatchObject({ outcome: 'rotated', fromRootId: from });
    expect(result.rootId).not.toBe(from);
    await kw.close();
    await root.close();

    const next = await SoftwareRoot.load(store);
    expect(next.document.rootId).toBe(result.rootId);
    await unsealWithShares(next, [handOut[0] as string, handOut[2] as string]);
    const key = await store.getKey('orders');
    for (const v of await store.listVersions(key?.id as string)) expect(v.rootId).toBe(result.rootId);
    const kw2 = new Keywarden({ store, root: next });
    expect(new TextDecoder().decode(await kw2.decrypt(envelope, { key: 'orders' }))).toBe('order 7');
    // The same job again: done, no second rotation.
    expect(
      await runRootRotationJob(store, {
        jobId: 'quorum-1',
        holder: 'instance-b',
        root: next,
        rotate: () => rotateRoot(store as PostgresKeyStore, quorum),
      }),
    ).toMatchObject({ outcome: 'done', rootId: result.rootId });
    await kw2.close();
    await next.close();
  });
});
