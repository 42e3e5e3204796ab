/**
 * Random-kill suite for `keywarden root destroy` (issue 6, item 3): the built CLI is SIGKILLed at
 * random moments. After every kill the store is in one of three states and never a fourth: untouched
 * (everything decrypts), destroyed (its tombstone says so), or destroyed with the erasing unfinished
 * — never "no root and no tombstone", the state that used to read as destroyed and let destroy run
 * without consent. An interrupted destruction is finished by running the command again (with the
 * same consent). Development mode, so each round's consent is the unseal key file. The kill delay
 * is random around a target that adapts to where the writes happen (see the loop).
 */
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { decodeUnsealKey, Keywarden, readRootState, SoftwareRoot } from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { built, kw, requireBuild, runAndKill } from './split-helpers.js';

requireBuild('destroy-kill.test.ts');

const ROUNDS = 12;
const CONTEXT = { table: 'destroy-kill' };

function files(cwd: string): { db: string; key: string } {
  return { db: path.join(cwd, '.keywarden', 'keystore.db'), key: path.join(cwd, '.keywarden', 'unseal.key') };
}

/** A development-mode store with two keys (one with two versions) and an envelope under each version. */
async function freshStore(): Promise<{ cwd: string; envelopes: Array<{ key: string; envelope: Uint8Array }> }> {
  const cwd = await tempDir();
  expect((await kw(['init'], cwd)).code).toBe(0);
  const store = SqliteKeyStore.open(files(cwd).db, { create: false });
  const root = await SoftwareRoot.load(store);
  const unsealKey = decodeUnsealKey(readFileSync(files(cwd).key, 'utf8'));
  await root.unseal(unsealKey);
  unsealKey.fill(0);
  const k = new Keywarden({ store, root, ownsStore: true, ownsRoot: true });
  const envelopes: Array<{ key: string; envelope: Uint8Array }> = [];
  try {
    for (const key of ['a', 'b']) {
      await k.createKey(key);
      envelopes.push({ key, envelope: await k.encrypt(new TextEncoder().encode(key), { key, context: CONTEXT }) });
    }
    await k.rotateKey('a');
    envelopes.push({
      key: 'a',
      envelope: await k.encrypt(new TextEncoder().encode('a'), { key: 'a', context: CONTEXT }),
    });
  } finally {
    await k.close();
  }
  return { cwd, envelopes };
}

/** What the store says after a round, read the way the CLI reads it (never created). */
async function inspect(cwd: string) {
  const store = SqliteKeyStore.open(files(cwd).db, { create: false });
  try {
    const state = await readRootState(store);
    let live = 0;
    for (const key of await store.listKeys()) {
      for (const v of await store.listVersions(key.id))
        if (v.state !== 'destroyed' && v.wrappedMaterial.length > 0) live++;
    }
    return { state: state.state, tombstone: state.state !== 'missing' && state.tombstone !== undefined, live };
  } finally {
    await store.close();
  }
}

describe.skipIf(!built)('random SIGKILL during root destroy (issue 6, item 3)', () => {
  it(`root destroy, SIGKILLed ${ROUNDS} times at random points: never "no root and no tombstone"; untouched stores still decrypt; an interrupted destruction finishes when run again`, async () => {
    // Calibration: two whole, unkilled destructions; the faster is the typical run time.
    let whole = { ms: Number.POSITIVE_INFINITY };
    for (let i = 0; i < 2; i++) {
      const calibration = await freshStore();
      const r = await runAndKill(['root', 'destroy', '--yes-destroy-every-key'], calibration.cwd);
      expect(r.code).toBe(0);
      expect(await inspect(calibration.cwd)).toEqual({ state: 'destroyed', tombstone: true, live: 0 });
      if (r.ms < whole.ms) whole = r;
    }

    let target = whole.ms * 0.8;
    let current = await freshStore();
    const seen = { untouched: 0, interrupted: 0, destroyed: 0, completed: 0 };
    const delays: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      // Random jitter (±15 %) around a target that follows the writes: a round killed before the
      // tombstone moves it later, one that completed moves it earlier. The three writes take a few
      // milliseconds at the end of a run dominated by start-up, so pure uniform delays rarely hit them.
      const delay = Math.round(target * (0.85 + randomInt(0, 301) / 1000));
      delays.push(delay);
      const where = `round ${round} (kill after ${delay} ms; delays ${delays.join(',')})`;
      const r = await runAndKill(['root', 'destroy', '--yes-destroy-every-key'], current.cwd, delay);
      const after = await inspect(current.cwd);
      expect(after.state, where).not.toBe('missing');
      if (!r.killed) {
        expect(r.code, where).toBe(0);
        expect(after, where).toEqual({ state: 'destroyed', tombstone: true, live: 0 });
        seen.completed++;
        target *= 0.92;
      } else if (after.state === 'present' && !after.tombstone) {
        // Killed before the tombstone: nothing changed, everything decrypts.
        seen.untouched++;
        target *= 1.08;
        expect(after.live, where).toBe(3);
        const store = SqliteKeyStore.open(files(current.cwd).db, { create: false });
        const root = await SoftwareRoot.load(store);
        const unsealKey = decodeUnsealKey(readFileSync(files(current.cwd).key, 'utf8'));
        await root.unseal(unsealKey);
        unsealKey.fill(0);
        const k = new Keywarden({ store, root, ownsStore: true, ownsRoot: true });
        try {
          for (const e of current.envelopes) {
            const plain = await k.decrypt(e.envelope, { key: e.key, context: CONTEXT });
            expect(new TextDecoder().decode(plain), where).toBe(e.key);
          }
        } finally {
          await k.close();
        }
        continue; // the same store goes into the next round
      } else {
        // From the tombstone on, the store is destroyed; the root is refused even if still present.
        if (after.live > 0 || after.state === 'present') seen.interrupted++;
        else seen.destroyed++;
        const again = await runAndKill(['root', 'destroy', '--yes-destroy-every-key'], current.cwd);
        expect(again.code, where).toBe(0);
        expect(await inspect(current.cwd), where).toEqual({ state: 'destroyed', tombstone: true, live: 0 });
      }
      if (round === ROUNDS - 1 || seen.completed + seen.interrupted + seen.destroyed === 1) {
        const list = await kw(['key', 'list'], current.cwd);
        expect(list.code, where).toBe(0);
        expect(list.stderr, where).toMatch(/was destroyed \(its tombstone says so\)/);
      }
      current = await freshStore();
    }
    console.info(
      `root destroy kill suite: ${ROUNDS} rounds, ${ROUNDS - seen.completed} killed (${seen.untouched} before the tombstone, ${seen.interrupted} mid-destruction, ${seen.destroyed} after the last write), ${seen.completed} completed; run time ${whole.ms} ms`,
    );
    expect(ROUNDS - seen.completed, `delays ${delays.join(',')}`).toBeGreaterThanOrEqual(ROUNDS / 3);
  }, 120_000);
});
