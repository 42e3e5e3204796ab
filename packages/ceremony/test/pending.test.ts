import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { abortPendingCeremony, finishActivatedCeremony, stageInit, stageRekey } from '@keywarden/split-knowledge';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  initStoreDir,
  pendingCeremonyOf,
  readStagedPending,
  resolveStoreLocation,
  stagedStorePath,
} from '../src/index.js';

let work: string;
beforeEach(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'kw-ceremony-pending-'));
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('pendingCeremonyOf', () => {
  it('no folder, or a store with no ceremony pending: undefined', async () => {
    const loc = resolveStoreLocation({ cwd: work, env: {} });
    expect(await pendingCeremonyOf(loc)).toBeUndefined();
    await initStoreDir(loc, { cwd: work });
    expect(await pendingCeremonyOf(loc)).toBeUndefined();
  });

  it('an init staged and recorded (no key store yet): kind init, its share set', async () => {
    const loc = resolveStoreLocation({ cwd: work, env: {} });
    await mkdir(loc.dir, { recursive: true });
    const staged = await stageInit({ shares: 3, threshold: 2 });
    const store = await SqliteKeyStore.open(stagedStorePath(loc));
    try {
      await staged.record(store, { mode: 'stdout', files: [] });
    } finally {
      await store.close();
      await staged.close();
    }
    const p = await pendingCeremonyOf(loc);
    expect(p?.kind).toBe('init');
    expect(p?.pending.shareSet.shareSetId).toBe(staged.shareSet.shareSetId);
    expect(p?.pending.shareSet.threshold).toBe(2);
  });

  it('a staged init killed before it recorded anything (empty file): undefined', async () => {
    const loc = resolveStoreLocation({ cwd: work, env: {} });
    await mkdir(loc.dir, { recursive: true });
    await writeFile(stagedStorePath(loc), '');
    expect(await readStagedPending(stagedStorePath(loc))).toBeUndefined();
    expect(await pendingCeremonyOf(loc)).toBeUndefined();
  });

  it('a rekey recorded in the store: kind rekey, until it is aborted', async () => {
    const loc = resolveStoreLocation({ cwd: work, env: {} });
    await mkdir(loc.dir, { recursive: true });
    // A split-knowledge store: an init recorded, then finished as after its move into place.
    const init = await stageInit({ shares: 2, threshold: 2 });
    const shares = [...init.handOut];
    let store = await SqliteKeyStore.open(loc.dbPath);
    try {
      await init.record(store, { mode: 'stdout', files: [] });
      await finishActivatedCeremony(store);
      const rekey = await stageRekey(store, shares, { shares: 3, threshold: 2 });
      await rekey.record(store, { mode: 'stdout', files: [] });
      await rekey.close();
    } finally {
      await init.close();
      await store.close();
    }
    const p = await pendingCeremonyOf(loc);
    expect(p?.kind).toBe('rekey');
    expect(p?.pending.shareSet.shares).toBe(3);
    store = await SqliteKeyStore.open(loc.dbPath, { create: false });
    await abortPendingCeremony(store);
    await store.close();
    expect(await pendingCeremonyOf(loc)).toBeUndefined();
  });
});
