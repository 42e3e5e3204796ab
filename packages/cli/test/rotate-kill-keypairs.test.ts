/**
 * Random-kill suite for `keywarden root rotate` on a store whose software root holds key pairs
 * (core's sealed-key-pairs.ts): the rotation moves the key-pair key with the root (staged before
 * its one transaction, promoted after). The built CLI is SIGKILLed at random moments, and after
 * every kill, in-process on the same SQLite file: the store's root loads and unseals, every KEK
 * version is under it, the key-pair key is readable by it (promoted, or still staged for it), and
 * every key pair made before signs, verifying with node:crypto against the SPKI returned when it
 * was made. Kill delays follow rotate-kill.test.ts (around the run time of an unkilled command).
 */
import { randomBytes, randomInt, verify } from 'node:crypto';
import {
  checkedRoot,
  KEY_PAIR_KEY_META_NAME,
  KEY_PAIR_KEY_NEXT_META_NAME,
  type Keywarden,
  type RootKeyPair,
  type RootKeyPairAlgorithm,
  requireKeyPairs,
} from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import { tempDir, openUnsealed, integrity } from './helpers.js';
import { built, kw, requireBuild, runAndKill } from './split-helpers.js';

requireBuild('rotate-kill-keypairs.test.ts');

const ROUNDS = 16;
const ALGORITHMS: RootKeyPairAlgorithm[] = ['ECDSA-P256', 'Ed25519', 'RSA-2048'];
const HASH: Record<RootKeyPairAlgorithm, string | null> = {
  'ECDSA-P256': 'sha256',
  'ECDSA-P384': 'sha384',
  'RSA-2048': 'sha256',
  'RSA-3072': 'sha384',
  Ed25519: null,
};

async function expectAllSign(
  kwd: Keywarden,
  pairs: ReadonlyArray<{ algorithm: RootKeyPairAlgorithm; pair: RootKeyPair }>,
  where: string,
): Promise<void> {
  const k = requireKeyPairs(checkedRoot(kwd.root));
  for (const { algorithm, pair } of pairs) {
    const data = new Uint8Array(randomBytes(48));
    const sig = await k.sign(pair.handle, data);
    const key = { key: Buffer.from(pair.publicKey), format: 'der' as const, type: 'spki' as const };
    const ok = verify(
      HASH[algorithm],
      data,
      algorithm.startsWith('ECDSA') ? { ...key, dsaEncoding: 'ieee-p1363' } : key,
      sig,
    );
    expect(ok, `${where}: ${algorithm} key pair signs against its SPKI`).toBe(true);
  }
}

describe.skipIf(!built)('random SIGKILL during root rotate with software-root key pairs', () => {
  it(`root rotate, SIGKILLed ${ROUNDS} times at random points: the root loads, every version and the key-pair key are under it, and every key pair signs against its original SPKI`, async () => {
    const cwd = await tempDir();
    expect((await kw(['init'], cwd)).code).toBe(0);
    const pairs: Array<{ algorithm: RootKeyPairAlgorithm; pair: RootKeyPair }> = [];
    {
      const kwd = await openUnsealed(cwd);
      try {
        await kwd.createKey('orders');
        await kwd.createKey('users');
        const k = requireKeyPairs(checkedRoot(kwd.root));
        for (const algorithm of ALGORITHMS) {
          pairs.push({ algorithm, pair: await k.generate(algorithm, `kw-kill/${algorithm}/v1`) });
        }
      } finally {
        await kwd.close();
      }
    }
    const first = await runAndKill(['root', 'rotate'], cwd);
    const second = await runAndKill(['root', 'rotate'], cwd);
    expect([first.code, second.code]).toEqual([0, 0]);
    let target = Math.min(first.ms, second.ms);
    let kills = 0;
    const delays: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const [from, span] = round % 2 === 0 ? [0.3, 0.7] : [0.75, 0.35];
      const delay = Math.round(target * (from + (span * randomInt(0, 1001)) / 1000));
      delays.push(delay);
      const r = await runAndKill(['root', 'rotate'], cwd, delay);
      const where = `round ${round} (kill after ${delay} ms; delays so far ${delays.join(',')})`;
      target = r.killed ? target * 1.02 : Math.min(target, r.ms) * 0.9;
      if (r.killed) kills++;
      else expect(r.code, where).toBe(0);

      const kwd = await openUnsealed(cwd);
      try {
        const rootId = kwd.root.describe().id;
        for (const name of ['orders', 'users']) {
          for (const v of (await kwd.getKey(name)).versions) expect(v.rootId, `${where}: ${name}`).toBe(rootId);
        }
        // The key-pair key: promoted under this root, or staged for it by a rotation killed
        // between its commit and the promotion.
        const ids = await Promise.all(
          [KEY_PAIR_KEY_META_NAME, KEY_PAIR_KEY_NEXT_META_NAME].map(async (n) => {
            const bytes = await kwd.store.getMeta(n);
            return bytes ? (JSON.parse(Buffer.from(bytes).toString('utf8')) as { rootId: string }).rootId : undefined;
          }),
        );
        expect(ids, where).toContain(rootId);
        await expectAllSign(kwd, pairs, where);
      } finally {
        await kwd.close();
      }
      if (round % 8 === 7) expect(integrity(cwd), where).toBe('ok');
    }
    expect(kills, `only ${kills} of ${ROUNDS} rounds were killed (delays ${delays.join(',')})`).toBeGreaterThanOrEqual(
      ROUNDS / 2,
    );
    // A last unkilled rotation leaves the key promoted, nothing staged.
    expect((await runAndKill(['root', 'rotate'], cwd)).code).toBe(0);
    const kwd = await openUnsealed(cwd);
    try {
      expect(await kwd.store.getMeta(KEY_PAIR_KEY_NEXT_META_NAME)).toBeUndefined();
      await expectAllSign(kwd, pairs, 'after the last rotation');
    } finally {
      await kwd.close();
    }
    console.info(`root rotate kill suite with key pairs: ${kills} of ${ROUNDS} rounds killed`);
  }, 180_000);
});
