/**
 * KEK lifecycle in the key manager (issue 10): what the state-machine property test does not
 * single out — cache invalidation, usage accounting in blocks, rotateDue, compromise reports,
 * compare-and-swap between two managers, and the typed errors of each refused unwrap.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  ConflictError,
  KeyCompromisedError,
  KeyDestroyedError,
  KeyStateError,
  KeyVersionRetiredError,
  Keywarden,
  type KeywardenOptions,
  MemoryKeyStore,
  rewrapUnderNewRoot,
  SoftwareRoot,
} from '../src/index.js';

const DAY = 86_400_000;
const CONTEXT = { tenant: 'a' };

async function setup(options: Partial<KeywardenOptions> = {}) {
  const store = new MemoryKeyStore();
  const unsealKey = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey });
  let now = Date.UTC(2026, 0, 1);
  const clock = {
    advance: (ms: number) => {
      now += ms;
    },
  };
  const kw = new Keywarden({ store, root, now: () => new Date(now), ...options });
  return { store, root, kw, clock, unsealKey, now: () => now };
}

describe('KEK lifecycle: the typed refusals', () => {
  it('a version changed through this instance stops serving at once, even while its KEK is cached (cache.ttlMs 1 hour)', async () => {
    const { kw } = await setup({ cache: { ttlMs: 3_600_000 } });
    await kw.createKey('k');
    const v1 = await kw.encrypt(new TextEncoder().encode('one'), { key: 'k', context: CONTEXT });
    await kw.rotateKey('k');
    const v2 = await kw.encrypt(new TextEncoder().encode('two'), { key: 'k', context: CONTEXT });
    // Both versions are cached now.
    await kw.decrypt(v1, { key: 'k', context: CONTEXT });
    await kw.decrypt(v2, { key: 'k', context: CONTEXT });

    await kw.disableVersion('k', 1);
    await expect(kw.decrypt(v1, { key: 'k', context: CONTEXT })).rejects.toSatisfy(KeyStateError.isInstance);
    await kw.enableVersion('k', 1);
    expect(new TextDecoder().decode(await kw.decrypt(v1, { key: 'k', context: CONTEXT }))).toBe('one');

    await kw.setMinDecryptionVersion('k', 2);
    await expect(kw.decrypt(v1, { key: 'k', context: CONTEXT })).rejects.toSatisfy(KeyVersionRetiredError.isInstance);
    await kw.setMinDecryptionVersion('k', 1);
    await kw.decrypt(v1, { key: 'k', context: CONTEXT });

    const report = await kw.compromiseVersion('k', 2);
    expect(report.rotatedTo).toBe(3);
    expect(report.unreadableVersions).toEqual([2]);
    expect(report.rewrapVersions).toEqual([1]);
    expect(report.key.primaryVersion).toBe(3);
    await expect(kw.decrypt(v2, { key: 'k', context: CONTEXT })).rejects.toSatisfy(KeyCompromisedError.isInstance);

    await kw.disableVersion('k', 1);
    await kw.destroyVersion('k', 1, { force: true });
    await expect(kw.decrypt(v1, { key: 'k', context: CONTEXT })).rejects.toSatisfy(KeyDestroyedError.isInstance);
    // New data goes under v3.
    const v3 = await kw.encrypt(new TextEncoder().encode('three'), { key: 'k', context: CONTEXT });
    expect(new TextDecoder().decode(await kw.decrypt(v3, { key: 'k', context: CONTEXT }))).toBe('three');
  });

  it('destroying needs the version disabled first, then the grace period or force', async () => {
    const { kw, clock } = await setup({ lifecycle: { destroyGraceMs: DAY } });
    await kw.createKey('k');
    await kw.rotateKey('k');
    await expect(kw.destroyVersion('k', 1)).rejects.toThrow(/disable it first/);
    await kw.disableVersion('k', 1);
    await expect(kw.destroyVersion('k', 1)).rejects.toThrow(/grace period/);
    clock.advance(DAY);
    const info = await kw.destroyVersion('k', 1);
    expect(info.versions.map((v) => v.state)).toEqual(['destroyed', 'enabled']);
  });

  it('the last version of a key is destroyed only with confirmLastVersion (crypto-shredding the whole key)', async () => {
    const { kw } = await setup();
    await kw.createKey('tenant-x');
    const dk = await kw.generateDataKey('tenant-x', CONTEXT);
    await expect(kw.disableVersion('tenant-x', 1)).rejects.toThrow(/last enabled version/);
    await kw.disableVersion('tenant-x', 1, { confirmLastVersion: true });
    await expect(kw.destroyVersion('tenant-x', 1, { force: true })).rejects.toThrow(/confirm/);
    await kw.destroyVersion('tenant-x', 1, { force: true, confirmLastVersion: true });
    await expect(kw.decryptDataKey(dk.wrapped, CONTEXT, { key: 'tenant-x' })).rejects.toSatisfy(
      KeyDestroyedError.isInstance,
    );
    await expect(kw.generateDataKey('tenant-x', CONTEXT)).rejects.toSatisfy(KeyDestroyedError.isInstance);
    const info = await kw.getKey('tenant-x');
    expect(info.nextRotationDue).toBeUndefined();
  });
});

describe('KEK lifecycle: compare-and-swap between two managers on one store', () => {
  it('two rotations of the same key at the same moment: exactly one wins, the other is a ConflictError', async () => {
    const { store, root, kw } = await setup();
    await kw.createKey('k');
    const other = new Keywarden({ store, root });
    const results = await Promise.allSettled([kw.rotateKey('k'), other.rotateKey('k')]);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect(ConflictError.isInstance(lost.reason)).toBe(true);
    expect((await kw.getKey('k')).versions.map((v) => v.version)).toEqual([1, 2]);
    await other.close();
  });
});

describe('root rotation: compare-and-swap on the versions and the sealed root document', () => {
  it('two root rotations of one store at the same moment: exactly one wins, the other is a ConflictError and its root is never written', async () => {
    const { store, root, kw, unsealKey } = await setup();
    await kw.createKey('k');
    const env = await kw.encrypt(new TextEncoder().encode('kept'), { key: 'k' });
    const a = await SoftwareRoot.createForRotation({ unsealKey, unseal: root.document.unseal });
    const b = await SoftwareRoot.createForRotation({ unsealKey, unseal: root.document.unseal });
    const results = await Promise.allSettled([
      rewrapUnderNewRoot(store, root, a.root),
      rewrapUnderNewRoot(store, root, b.root),
    ]);
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
    const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect(ConflictError.isInstance(lost.reason)).toBe(true);
    const winner = results[0]?.status === 'fulfilled' ? a.root : b.root;
    const loaded = await SoftwareRoot.load(store);
    expect(loaded.describe().id).toBe(winner.describe().id);
    await loaded.unseal(unsealKey);
    const after = new Keywarden({ store, root: loaded });
    expect(new TextDecoder().decode(await after.decrypt(env, { key: 'k' }))).toBe('kept');
    await after.close();
  });
});

describe('KEK lifecycle: usage accounting and rotateDue', () => {
  it('uses are reserved in the store in blocks (64, doubling up to usageBlock), not once per data key', async () => {
    const { store, kw } = await setup({ lifecycle: { usageBlock: 256 } });
    await kw.createKey('k');
    let reservations = 0;
    const reserve = store.reserveUses.bind(store);
    store.reserveUses = async (id, v, n) => {
      reservations++;
      return reserve(id, v, n);
    };
    for (let i = 0; i < 1000; i++) await kw.generateDataKey('k');
    // 64 + 128 + 256 + 256 + 256 + 256 = 1216 ≥ 1000: six writes for a thousand data keys.
    expect(reservations).toBe(6);
    const info = await kw.getKey('k');
    expect(info.versions[0]?.uses).toBe(1216);
    // Concurrent callers share one reservation.
    await Promise.all(Array.from({ length: 300 }, () => kw.generateDataKey('k')));
    expect((await kw.getKey('k')).versions[0]?.uses).toBeGreaterThanOrEqual(1300);
    expect(reservations).toBeLessThanOrEqual(8);
  });

  it('a new manager (another process) counts on from the store: nothing it reserved is reused', async () => {
    const { store, root, kw } = await setup({ lifecycle: { usageBlock: 64 } });
    await kw.createKey('k');
    await kw.generateDataKey('k');
    await kw.close();
    const next = new Keywarden({ store, root, lifecycle: { usageBlock: 64 } });
    await next.generateDataKey('k');
    // The first manager's block is counted as used even though it wrapped one data key only.
    expect((await next.getKey('k')).versions[0]?.uses).toBe(128);
    await next.close();
  });

  it('rotateDue rotates keys past their maximum age or maximum uses, and only those', async () => {
    const { kw, clock } = await setup({ lifecycle: { usageBlock: 8, rotation: { maxAgeMs: 30 * DAY } } });
    await kw.createKey('old');
    await kw.createKey('busy');
    await kw.createKey('quiet');
    await kw.setRotationPolicy('busy', { maxUses: 16 });
    for (let i = 0; i < 20; i++) await kw.generateDataKey('busy');
    expect(await kw.rotateDue()).toEqual([
      {
        key: 'busy',
        id: (await kw.getKey('busy')).id,
        reasons: ['uses'],
        fromVersion: 1,
        toVersion: 2,
        outcome: 'rotated',
      },
    ]);
    clock.advance(30 * DAY);
    const due = await kw.rotateDue();
    expect(due.map((d) => [d.key, d.reasons, d.toVersion])).toEqual([
      ['busy', ['age'], 3],
      ['old', ['age'], 2],
      ['quiet', ['age'], 2],
    ]);
    const info = await kw.getKey('old');
    expect(info.rotation).toEqual({ maxAgeMs: 30 * DAY, maxUses: 2 ** 31 });
    expect(info.nextRotationDue?.getTime()).toBe(info.versions[1]!.createdAt.getTime() + 30 * DAY);
    expect(await kw.rotateDue()).toEqual([]);
  });
});
