/**
 * JobLease on the memory store (core's own LeaseStore; the store conformance suite holds every
 * store to the lease contract, this file the JobLease helpers on top of it): tryAcquire reports a
 * refusal instead of throwing; releaseDeadHolder frees a dead holder's lease by compare-and-swap
 * (the next grant's token is higher, the dead grant is fenced out) and does nothing when the record
 * is not that holder's live grant; a JobLease whose store-side grant was taken over refuses its
 * fenced writes and reports itself lost.
 */
import { describe, expect, it } from 'vitest';
import {
  ConflictError,
  JobLease,
  type LeaseGrant,
  MemoryKeyStore,
  releaseDeadHolder,
  supportsLeases,
} from '../src/index.js';

describe('JobLease helpers (memory store)', () => {
  it('the memory store offers leases', () => {
    expect(supportsLeases(new MemoryKeyStore())).toBe(true);
  });

  it('tryAcquire returns the refusal (holder, time left) when another holder has the lease; acquire throws ConflictError', async () => {
    const store = new MemoryKeyStore();
    const a = await JobLease.acquire(store, 'job', { holder: 'a', ttlMs: 60_000 });
    try {
      const refused = await JobLease.tryAcquire(store, 'job', { holder: 'b', ttlMs: 60_000 });
      expect(refused).not.toBeInstanceOf(JobLease);
      expect(refused).toMatchObject({ heldBy: 'a' });
      await expect(JobLease.acquire(store, 'job', { holder: 'b', ttlMs: 60_000 })).rejects.toSatisfy(
        (e: unknown) =>
          ConflictError.isInstance(e) && /^lease: job is held by a for \d+ s more/.test((e as Error).message),
      );
    } finally {
      await a.release();
    }
    const b = await JobLease.tryAcquire(store, 'job', { holder: 'b', ttlMs: 60_000 });
    expect(b).toBeInstanceOf(JobLease);
    expect((b as JobLease).token).toBeGreaterThan(1);
    await (b as JobLease).release();
  });

  it('releaseDeadHolder frees the named holder’s live grant at once; the next grant has a higher token and the dead grant is fenced out', async () => {
    const store = new MemoryKeyStore();
    const dead = (await store.acquireLease('job', 'dead#1', 600_000)) as LeaseGrant;
    expect(await releaseDeadHolder(store, 'job', 'dead#1')).toBe(true);
    const next = await JobLease.acquire(store, 'job', { holder: 'resumer#2', ttlMs: 60_000 });
    try {
      expect(next.token).toBeGreaterThan(dead.token);
      await expect(store.putMetaUnderLease(dead, 'job-state', Uint8Array.of(1))).rejects.toSatisfy(
        ConflictError.isInstance,
      );
      await next.putMeta('job-state', Uint8Array.of(2));
      expect(await store.getMeta('job-state')).toEqual(Uint8Array.of(2));
    } finally {
      await next.release();
    }
  });

  it('releaseDeadHolder does nothing (false) when the lease is another holder’s, already released, or never granted', async () => {
    const store = new MemoryKeyStore();
    expect(await releaseDeadHolder(store, 'job', 'dead#1')).toBe(false);
    const live = await JobLease.acquire(store, 'job', { holder: 'live#3', ttlMs: 60_000 });
    expect(await releaseDeadHolder(store, 'job', 'dead#1')).toBe(false);
    expect(await store.acquireLease('job', 'other#4', 60_000)).toMatchObject({ heldBy: 'live#3' });
    await live.release();
    expect(await releaseDeadHolder(store, 'job', 'live#3')).toBe(false);
  });

  it('a JobLease whose grant was taken over is refused on its next fenced write and reports itself lost', async () => {
    const store = new MemoryKeyStore();
    const first = await JobLease.acquire(store, 'job', { holder: 'same', ttlMs: 60_000 });
    // The same holder name granted again (a restarted instance): the earlier grant is fenced out.
    const second = await JobLease.acquire(store, 'job', { holder: 'same', ttlMs: 60_000 });
    try {
      await expect(first.putMeta('job-state', Uint8Array.of(1))).rejects.toSatisfy(ConflictError.isInstance);
      expect(first.lost).toBe(true);
      expect(() => first.check()).toThrow(/was lost/);
      expect(await store.getMeta('job-state')).toBeUndefined();
    } finally {
      await first.release();
      await second.release();
    }
  });
});
