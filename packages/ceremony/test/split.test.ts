/**
 * The split-knowledge ceremonies driven programmatically: shares handed to a callback, a quorum
 * from a callback, the step hooks, rollback on a failed hand-out, resume and abort, root rotation
 * and destruction. The CLI's kill suites drive the same code through real, SIGKILLed processes.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { CeremonyError, CeremonyPendingError, InvalidInputError, Keywarden, KeyStoreError } from '@keywarden/core';
import { decryptShareForCustodian, type ShareSetInfo, unsealWithShares } from '@keywarden/split-knowledge';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  abortRekey,
  abortSplitInit,
  type DeliveredShare,
  destroyRootStoreDir,
  initSplitStoreDir,
  openSealed,
  pendingCeremonyOf,
  type QuorumRequest,
  rekeyStoreDir,
  resolveStoreLocation,
  resumeRekey,
  resumeSplitInit,
  rotateRootStoreDir,
  type StoreLocation,
  stagedStorePath,
} from '../src/index.js';

let work: string;
let loc: StoreLocation;
beforeEach(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'kw-ceremony-split-'));
  loc = resolveStoreLocation({ cwd: work, env: {} });
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

/** A callback destination that keeps the shares, and checks no store is in place while it runs. */
function collector(l: StoreLocation = loc) {
  const got: DeliveredShare[] = [];
  return {
    got,
    destination: {
      kind: 'callback' as const,
      deliver: async (s: DeliveredShare) => {
        expect(existsSync(l.dbPath)).toBe(false);
        got.push(s);
      },
    },
  };
}

/** Whether these shares unseal D's root, and a Keywarden over it works. */
async function opensWith(shares: string[]): Promise<string> {
  const { store, root } = await openSealed(loc);
  await unsealWithShares(root, shares);
  const kw = new Keywarden({ store, root, ownsStore: true, ownsRoot: true });
  try {
    if (!(await kw.listKeys()).some((k) => k.name === 'app')) await kw.createKey('app');
    const context = { t: '1' };
    const e = await kw.encrypt(new TextEncoder().encode('x'), { key: 'app', context });
    return new TextDecoder().decode(await kw.decrypt(e, { key: 'app', context }));
  } finally {
    await kw.close();
  }
}

describe('initSplitStoreDir', () => {
  it('hands every share to the callback before the store is in place; any M of them unseal it', async () => {
    const steps: string[] = [];
    const { got, destination } = collector();
    const r = await initSplitStoreDir(loc, {
      shares: 3,
      threshold: 2,
      destination,
      onStep: (s) => steps.push(s),
      cwd: work,
    });
    expect(r.activated).toBe(true);
    expect(r.mode).toBe('callback');
    expect(got.map((s) => s.index)).toEqual([1, 2, 3]);
    expect(got.every((s) => s.shareSet.shareSetId === r.shareSet.shareSetId)).toBe(true);
    expect(steps).toEqual([
      'init:store-created',
      'init:recorded',
      'init:share-1',
      'init:share-2',
      'init:share-3',
      'init:shares-written',
      'init:activated',
      'init:done',
    ]);
    expect(await opensWith([got[0]?.text as string, got[2]?.text as string])).toBe('x');
    await expect(
      initSplitStoreDir(loc, { shares: 3, threshold: 2, destination: collector().destination }),
    ).rejects.toBeInstanceOf(KeyStoreError);
  });

  it('a deliver that fails undoes the init: no store, no staged store, nothing recorded', async () => {
    let n = 0;
    const err = await initSplitStoreDir(loc, {
      shares: 3,
      threshold: 2,
      destination: {
        kind: 'callback',
        deliver: async () => {
          if (++n === 2) throw new Error('custodian 2 is not there');
        },
      },
    }).catch((e: unknown) => e);
    expect((err as Error).message).toBe('custodian 2 is not there');
    expect(existsSync(loc.dbPath)).toBe(false);
    expect(existsSync(stagedStorePath(loc))).toBe(false);
    expect(await pendingCeremonyOf(loc)).toBeUndefined();
  });

  it('files encrypted to custodians; verifyQuorum stays pending until a test quorum of the new shares', async () => {
    const keys = [0, 1, 2].map(() => generateKeyPairSync('x25519'));
    const custodians = keys.map((k, i) => ({
      pem: k.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
      display: `c${i + 1}.pub`,
    }));
    const r = await initSplitStoreDir(loc, { shares: 3, threshold: 2, custodians, verifyQuorum: true, cwd: work });
    expect(r.activated).toBe(false);
    expect(r.mode).toBe('encrypted-files');
    expect(r.custodians?.map((c) => c.display)).toEqual(['c1.pub', 'c2.pub', 'c3.pub']);
    expect((await readdir(r.dir as string)).sort()).toEqual([
      'share-1-of-3.kwshare',
      'share-2-of-3.kwshare',
      'share-3-of-3.kwshare',
    ]);
    expect(existsSync(loc.dbPath)).toBe(false);
    expect((await pendingCeremonyOf(loc))?.kind).toBe('init');
    const plain = await Promise.all(
      r.files.map(async (f, i) =>
        decryptShareForCustodian(
          await readFile(f, 'utf8'),
          keys[i]?.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() as string,
        ),
      ),
    );
    // Without a quorum callback the resume is refused (typed), and nothing moves.
    await expect(resumeSplitInit(loc)).rejects.toBeInstanceOf(InvalidInputError);
    const asked: QuorumRequest[] = [];
    const resumed = await resumeSplitInit(loc, {
      quorum: async (req) => {
        asked.push(req);
        return [plain[0] as string, plain[1] as string];
      },
    });
    expect(asked.map((a) => [a.which, a.shareSet.shareSetId])).toEqual([['new', r.shareSet.shareSetId]]);
    expect(resumed.quorumOf).toBe('new');
    expect(existsSync(loc.dbPath)).toBe(true);
    expect(await opensWith([plain[1] as string, plain[2] as string])).toBe('x');
  });

  it('an unfinished init is CeremonyPendingError until aborted; abort removes its share files', async () => {
    const r = await initSplitStoreDir(loc, {
      shares: 2,
      threshold: 2,
      destination: { kind: 'files', dir: 'out' },
      verifyQuorum: true,
      cwd: work,
    });
    expect(r.files.every((f) => existsSync(f))).toBe(true);
    await expect(initSplitStoreDir(loc, { shares: 2, threshold: 2 })).rejects.toBeInstanceOf(CeremonyPendingError);
    const notes = await abortSplitInit(loc, { cwd: work });
    expect(notes).toEqual(['removed out/share-1-of-2.txt', 'removed out/share-2-of-2.txt']);
    expect(existsSync(stagedStorePath(loc))).toBe(false);
    await expect(abortSplitInit(loc)).rejects.toBeInstanceOf(CeremonyError);
  });

  it('bad parameters and custodians are InvalidInputError before anything is created', async () => {
    await expect(initSplitStoreDir(loc, { shares: 3, threshold: 4 })).rejects.toBeInstanceOf(InvalidInputError);
    const pem = generateKeyPairSync('x25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();
    await expect(
      initSplitStoreDir(loc, { shares: 2, threshold: 2, custodians: [{ pem, display: 'a' }] }),
    ).rejects.toThrow('1 --custodian keys for 2 shares');
    await expect(
      initSplitStoreDir(loc, {
        shares: 2,
        threshold: 2,
        custodians: [
          { pem, display: 'a' },
          { pem, display: 'b' },
        ],
      }),
    ).rejects.toThrow('have the same public key');
    expect(existsSync(loc.dir)).toBe(false);
  });
});

/** A split store (2 of 3) whose shares were handed to a callback. */
async function splitStore(): Promise<{ shares: string[]; set: ShareSetInfo }> {
  const { got, destination } = collector();
  const r = await initSplitStoreDir(loc, { shares: 3, threshold: 2, destination });
  return { shares: got.map((s) => s.text), set: r.shareSet };
}

describe('rekeyStoreDir', () => {
  it('asks the callback for a quorum of the current set; the new set works, the old one no longer', async () => {
    const { shares, set } = await splitStore();
    await opensWith(shares.slice(0, 2));
    const steps: string[] = [];
    const asked: QuorumRequest[] = [];
    const { got, destination } = collector({ ...loc, dbPath: path.join(work, 'never') });
    const r = await rekeyStoreDir(loc, {
      shares: 2,
      destination,
      quorum: async (req) => {
        asked.push(req);
        return [shares[0] as string, shares[1] as string];
      },
      onStep: (s) => steps.push(s),
    });
    expect(asked.map((a) => [a.operation, a.which, a.shareSet.shareSetId])).toEqual([
      ['rekey', 'current', set.shareSetId],
    ]);
    expect(r.previous.shareSetId).toBe(set.shareSetId);
    expect([r.shareSet.shares, r.shareSet.threshold]).toEqual([2, 2]);
    expect(steps).toEqual([
      'rekey:staged',
      'rekey:recorded',
      'rekey:share-1',
      'rekey:share-2',
      'rekey:shares-written',
      'rekey:activated',
    ]);
    expect(await opensWith(got.map((s) => s.text))).toBe('x');
    await expect(opensWith(shares.slice(0, 2))).rejects.toThrow();
  });

  it('a failed hand-out undoes the rekey: the current shares still work, nothing pending', async () => {
    const { shares } = await splitStore();
    const err = await rekeyStoreDir(loc, {
      destination: {
        kind: 'callback',
        deliver: async (s) => {
          if (s.index === 3) throw new Error('printer jammed');
        },
      },
      quorum: async () => shares.slice(1),
    }).catch((e: unknown) => e);
    expect(CeremonyError.isInstance(err)).toBe(true);
    expect((err as Error).message).toBe(
      'rekey: the new shares could not be handed out (printer jammed); the rekey was undone and the current shares still work',
    );
    expect(await pendingCeremonyOf(loc)).toBeUndefined();
    expect(await opensWith(shares.slice(1))).toBe('x');
  });

  it('shares given to a callback resume only with a quorum of the NEW shares; abort drops the rekey', async () => {
    const { shares } = await splitStore();
    const { got, destination } = collector({ ...loc, dbPath: path.join(work, 'never') });
    const r = await rekeyStoreDir(loc, {
      destination: { ...destination, describedAs: 'read out on a phone call' },
      quorum: async () => shares.slice(0, 2),
      verifyQuorum: true,
    });
    expect(r.activated).toBe(false);
    const refused = await resumeRekey(loc, { quorum: async () => shares.slice(0, 2) }).catch((e: unknown) => e);
    expect(CeremonyError.isInstance(refused)).toBe(true);
    expect((refused as Error).message).toMatch(
      /^rekey --resume: the new shares were read out on a phone call, so this cannot tell/,
    );
    const { pending } = await abortRekey(loc);
    expect(pending?.shareSet.shareSetId).toBe(r.shareSet.shareSetId);
    expect(await opensWith(shares.slice(0, 2))).toBe('x');
    await expect(opensWith(got.slice(0, 2).map((s) => s.text))).rejects.toThrow();
  });
});

describe('rotateRootStoreDir and destroyRootStoreDir', () => {
  it('split knowledge: a quorum rotates the root (same shares keep working), then destroys it', async () => {
    const { shares, set } = await splitStore();
    expect(await opensWith(shares.slice(0, 2))).toBe('x');
    await expect(rotateRootStoreDir(loc, {})).rejects.toBeInstanceOf(InvalidInputError);
    const rotated = await rotateRootStoreDir(loc, { quorum: async () => shares.slice(1) });
    expect(rotated.mode).toBe('split-knowledge');
    expect(rotated.rootId).not.toBe(rotated.previousRootId);
    expect(rotated.shareSet?.shareSetId).toBe(set.shareSetId);
    expect(rotated.rewrapped).toBe(1);
    expect(await opensWith([shares[0] as string, shares[2] as string])).toBe('x');
    const destroyed = await destroyRootStoreDir(loc, { quorum: async () => shares.slice(0, 2) });
    expect(destroyed).toMatchObject({ mode: 'split-knowledge', resumed: false, rootId: rotated.rootId, destroyed: 1 });
    await expect(openSealed(loc)).rejects.toThrow();
  });
});
