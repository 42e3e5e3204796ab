/**
 * The root-of-trust conformance suite (house style §6: one suite, run against every backend — the
 * software root now, the PKCS#11 and TPM roots when they land).
 *
 * Each test name states one clause of the RootOfTrust contract (packages/core/src/root.ts), and
 * the checked wrapper's tests repeat the "Precondition:" / "Postcondition:" text of root.ts, so
 * `grep` pairs contract and test. Optional capabilities are tested when the root has them, and
 * otherwise the suite checks that asking for them is a typed UnsupportedCapabilityError.
 *
 * Errors are recognised by their stable `code` and the global brand `KeywardenError.isInstance()`
 * checks, so a backend built against another copy of @keywarden/core passes the same suite.
 */
import { createPublicKey, randomBytes, verify as verifySignature } from 'node:crypto';
import {
  checkedRoot,
  destroyRoot,
  type KeyStore,
  Keywarden,
  MAX_ROOT_WRAPPED_BYTES,
  requireDestroyable,
  requireKekInRoot,
  requireKeyPairs,
  requireRandom,
  requireSealable,
  type RootKeyPairAlgorithm,
  type RootOfTrust,
} from '@keywarden/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

export interface RootFixture {
  /** A fresh root, unsealed, whose record lives in `store`. */
  root: RootOfTrust;
  store: KeyStore;
  /** The unlocking secret (`Sealable.unsealSecret()`) when the root is sealable or destroyable. */
  secret?: Uint8Array;
  /** Open the same root again from `store`, sealed (after a destroy this must fail or be unusable). */
  reopen?: () => Promise<RootOfTrust>;
  /** Runs after the suite has closed the root and the store. */
  cleanup?: () => Promise<void>;
  /**
   * Required when the root has key pairs: what the device itself says about the private key of
   * `handle`, read beside the root (a second PKCS#11 session, TPM2_ReadPublic's attributes), so
   * the suite can check the key was born sensitive and can never be extracted.
   */
  inspectPrivateKey?: (handle: Uint8Array) => Promise<PrivateKeyFacts>;
}

/** How a device reports a private key (PKCS#11 CKA_* names; a TPM maps fixedTPM/fixedParent/sensitiveDataOrigin). */
export interface PrivateKeyFacts {
  sensitive: boolean;
  extractable: boolean;
  alwaysSensitive: boolean;
  neverExtractable: boolean;
  /** Whether reading the private value (CKA_VALUE, CKA_PRIVATE_EXPONENT…) gave bytes. */
  valueReadable: boolean;
}

/** What the SPKI of each algorithm must be, and how node:crypto verifies its signatures (the
 * root's form: ECDSA r ‖ s, RSA PKCS#1 v1.5, Ed25519 raw). */
const KEY_PAIR_EXPECTATIONS: Record<
  RootKeyPairAlgorithm,
  { type: string; curve?: string; bits?: number; hash: string | null; dsaEncoding?: 'ieee-p1363' }
> = {
  'ECDSA-P256': { type: 'ec', curve: 'prime256v1', hash: 'sha256', dsaEncoding: 'ieee-p1363' },
  'ECDSA-P384': { type: 'ec', curve: 'secp384r1', hash: 'sha384', dsaEncoding: 'ieee-p1363' },
  'RSA-2048': { type: 'rsa', bits: 2048, hash: 'sha256' },
  'RSA-3072': { type: 'rsa', bits: 3072, hash: 'sha384' },
  Ed25519: { type: 'ed25519', hash: null },
};

function verifiesWith(algorithm: RootKeyPairAlgorithm, spki: Uint8Array, data: Uint8Array, sig: Uint8Array): boolean {
  const e = KEY_PAIR_EXPECTATIONS[algorithm];
  const key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
  return verifySignature(e.hash, data, e.dsaEncoding ? { key, dsaEncoding: e.dsaEncoding } : key, sig);
}

export type RootFactory = () => Promise<RootFixture>;

const ERROR_BRAND = Symbol.for('keywarden.error');
const enc = new TextEncoder();

function aadOf(label: string): Uint8Array {
  return enc.encode(`conformance/${label}`);
}

function material(length = 32): Uint8Array {
  return new Uint8Array(randomBytes(length));
}

/** The call rejects with a Keywarden error whose code is one of `codes`; returns the error. */
async function expectCode(call: () => Promise<unknown>, codes: readonly string[]): Promise<Error> {
  let caught: unknown;
  let resolved = false;
  try {
    await call();
    resolved = true;
  } catch (err) {
    caught = err;
  }
  expect(resolved, `expected a rejection with ${codes.join(' or ')}, but the call resolved`).toBe(false);
  const err = caught as Error & { code?: string; [ERROR_BRAND]?: unknown };
  expect(err?.[ERROR_BRAND], `a Keywarden error (got ${String(caught)})`).toBe(true);
  expect(codes, `error ${err.code}: ${err.message}`).toContain(err.code);
  expect(err.message).not.toMatch(/[\r\n]/);
  return err;
}

function flip(bytes: Uint8Array, index: number): Uint8Array {
  const out = bytes.slice();
  out[index] = (out[index] as number) ^ 0x01;
  return out;
}

/**
 * Registers the root conformance suite. `factory` is called before every test and must return a
 * fresh root (unsealed) in its own store; the suite closes both after each test, then `cleanup`.
 */
export function describeRootConformance(name: string, factory: RootFactory): void {
  describe(`Root conformance: ${name}`, () => {
    let f: RootFixture;
    let root: RootOfTrust;

    beforeEach(async () => {
      f = await factory();
      root = f.root;
    });

    afterEach(async () => {
      try {
        await root.close();
        await f.store.close();
      } finally {
        await f.cleanup?.();
      }
    });

    describe('wrap and unwrap (required)', () => {
      it('unwrapKey(wrapKey(m, aad), aad) gives m back, for material of 16, 32 and 64 bytes', async () => {
        for (const n of [16, 32, 64]) {
          const m = material(n);
          const wrapped = await root.wrapKey(m, aadOf('rt'));
          expect(Array.from(await root.unwrapKey(wrapped, aadOf('rt')))).toEqual(Array.from(m));
        }
      });

      it('Postcondition: the wrapped blob is 1..MAX_ROOT_WRAPPED_BYTES bytes', async () => {
        const wrapped = await root.wrapKey(material(), aadOf('bound'));
        expect(wrapped).toBeInstanceOf(Uint8Array);
        expect(wrapped.length).toBeGreaterThanOrEqual(1);
        expect(wrapped.length).toBeLessThanOrEqual(MAX_ROOT_WRAPPED_BYTES);
      });

      it('the wrapped blob does not contain the material', async () => {
        const m = material();
        const wrapped = Buffer.from(await root.wrapKey(m, aadOf('hidden')));
        expect(wrapped.includes(Buffer.from(m.subarray(0, 16)))).toBe(false);
        expect(wrapped.includes(Buffer.from(m.subarray(16)))).toBe(false);
      });

      it('a wrong associated data is refused with DecryptionError', async () => {
        const wrapped = await root.wrapKey(material(), aadOf('right'));
        await expectCode(() => root.unwrapKey(wrapped, aadOf('wrong')), ['KW_DECRYPT']);
        await expectCode(() => root.unwrapKey(wrapped, new Uint8Array(0)), ['KW_DECRYPT']);
      });

      it('a tampered blob is refused with DecryptionError (a flip in its last 16 bytes: tag or ciphertext)', async () => {
        const wrapped = await root.wrapKey(material(), aadOf('tamper'));
        for (let i = Math.max(0, wrapped.length - 16); i < wrapped.length; i++) {
          await expectCode(() => root.unwrapKey(flip(wrapped, i), aadOf('tamper')), ['KW_DECRYPT']);
        }
      });

      it('any single-bit flip anywhere in the blob is refused, never returning material', async () => {
        const wrapped = await root.wrapKey(material(), aadOf('flip-all'));
        for (let i = 0; i < wrapped.length; i++) {
          await expectCode(() => root.unwrapKey(flip(wrapped, i), aadOf('flip-all')), ['KW_DECRYPT', 'KW_FORMAT']);
        }
      });

      it('a truncated or extended blob is refused', async () => {
        const wrapped = await root.wrapKey(material(), aadOf('length'));
        await expectCode(
          () => root.unwrapKey(wrapped.subarray(0, wrapped.length - 1), aadOf('length')),
          ['KW_DECRYPT', 'KW_FORMAT'],
        );
        const longer = new Uint8Array(wrapped.length + 1);
        longer.set(wrapped);
        await expectCode(() => root.unwrapKey(longer, aadOf('length')), ['KW_DECRYPT', 'KW_FORMAT']);
      });

      it('the backend itself refuses a blob of MAX_ROOT_WRAPPED_BYTES + 1 bytes', async () => {
        await expectCode(
          () => root.unwrapKey(new Uint8Array(MAX_ROOT_WRAPPED_BYTES + 1), aadOf('huge')),
          ['KW_DECRYPT', 'KW_FORMAT', 'KW_BAD_INPUT'],
        );
      });

      it('Precondition: the wrapped blob is 1..MAX_ROOT_WRAPPED_BYTES bytes (refused before the backend sees it)', async () => {
        const checked = checkedRoot(root);
        await expectCode(
          () => checked.unwrapKey(new Uint8Array(MAX_ROOT_WRAPPED_BYTES + 1), aadOf('huge')),
          ['KW_FORMAT'],
        );
        await expectCode(() => checked.unwrapKey(new Uint8Array(0), aadOf('empty')), ['KW_FORMAT']);
      });

      it('the checked root round-trips what the backend wraps, and the backend what the checked root wraps', async () => {
        const checked = checkedRoot(root);
        const m = material();
        expect(Array.from(await root.unwrapKey(await checked.wrapKey(m, aadOf('x')), aadOf('x')))).toEqual(
          Array.from(m),
        );
        expect(Array.from(await checked.unwrapKey(await root.wrapKey(m, aadOf('y')), aadOf('y')))).toEqual(
          Array.from(m),
        );
      });

      it('concurrent wraps and unwraps (200 at once, distinct AADs) all round-trip', async () => {
        const items = Array.from({ length: 200 }, (_, i) => ({ m: material(), aad: aadOf(`c${i}`) }));
        const wrapped = await Promise.all(items.map((it) => root.wrapKey(it.m, it.aad)));
        const back = await Promise.all(wrapped.map((w, i) => root.unwrapKey(w, (items[i] as { aad: Uint8Array }).aad)));
        back.forEach((b, i) => {
          expect(Array.from(b)).toEqual(Array.from((items[i] as { m: Uint8Array }).m));
        });
      });
    });

    describe('describe (required)', () => {
      it('describe() gives a lower-case kind, an id of 1..128 printable characters, a label and a wrap algorithm', () => {
        const d = root.describe();
        expect(d.kind).toMatch(/^[a-z][a-z0-9-]{0,31}$/);
        expect(d.id).toMatch(/^[\x21-\x7e]{1,128}$/);
        expect(typeof d.label).toBe('string');
        expect(typeof d.wrapAlgorithm).toBe('string');
      });

      it('Postcondition: the root id is stable (the same before and after wraps, unwraps and a seal/unseal cycle)', async () => {
        const id = root.describe().id;
        const w = await root.wrapKey(material(), aadOf('id'));
        await root.unwrapKey(w, aadOf('id'));
        if (root.sealable && f.secret) {
          await root.sealable.seal();
          await root.sealable.unseal(f.secret);
        }
        expect(root.describe().id).toBe(id);
        expect(checkedRoot(root).describe().id).toBe(id);
      });
    });

    describe('random source (optional)', () => {
      it('gives exactly the requested number of bytes, different on every call; or is an UnsupportedCapabilityError', async () => {
        if (!root.random) {
          await expectCode(async () => requireRandom(root), ['KW_UNSUPPORTED']);
          return;
        }
        const random = requireRandom(root);
        for (const n of [1, 12, 32, 1024]) expect((await random.randomBytes(n)).length).toBe(n);
        const a = await random.randomBytes(32);
        const b = await random.randomBytes(32);
        expect(Buffer.from(a).equals(Buffer.from(b))).toBe(false);
      });
    });

    describe('seal and unseal (optional)', () => {
      it('after seal() the root wraps and unwraps nothing (KeystoreSealedError) until unsealed with its secret; or it is an UnsupportedCapabilityError', async () => {
        if (!root.sealable) {
          await expectCode(async () => requireSealable(root), ['KW_UNSUPPORTED']);
          return;
        }
        const s = requireSealable(root);
        const m = material();
        const wrapped = await root.wrapKey(m, aadOf('seal'));
        await s.seal();
        expect(s.isSealed()).toBe(true);
        await expectCode(() => root.wrapKey(material(), aadOf('seal')), ['KW_KEYSTORE_SEALED']);
        await expectCode(() => root.unwrapKey(wrapped, aadOf('seal')), ['KW_KEYSTORE_SEALED']);
        expect(f.secret, 'a sealable root fixture gives its unlocking secret').toBeDefined();
        await s.unseal(f.secret as Uint8Array);
        expect(s.isSealed()).toBe(false);
        expect(Array.from(await root.unwrapKey(wrapped, aadOf('seal')))).toEqual(Array.from(m));
      });

      it('a seal racing 100 in-flight wraps and unwraps: each completes correctly or fails sealed, and nothing succeeds after seal() resolves', async () => {
        if (!root.sealable || !f.secret) return;
        const s = root.sealable;
        const m = material();
        const w = await root.wrapKey(m, aadOf('race'));
        const calls = Array.from({ length: 100 }, (_, i) =>
          i % 2 === 0
            ? root.unwrapKey(w, aadOf('race')).then((b) => expect(Array.from(b)).toEqual(Array.from(m)))
            : root.wrapKey(material(), aadOf('race')).then((b) => expect(b.length).toBeGreaterThan(0)),
        );
        await s.seal();
        const settled = await Promise.allSettled(calls);
        for (const r of settled) {
          if (r.status === 'rejected') expect((r.reason as { code?: string }).code).toBe('KW_KEYSTORE_SEALED');
        }
        await expectCode(() => root.unwrapKey(w, aadOf('race')), ['KW_KEYSTORE_SEALED']);
      });

      it('a wrong unlocking secret is an UnsealError and the root stays sealed', async () => {
        if (!root.sealable || !f.secret) return;
        const s = root.sealable;
        await s.seal();
        await expectCode(() => s.unseal(flip(f.secret as Uint8Array, 0)), ['KW_UNSEAL']);
        expect(s.isSealed()).toBe(true);
      });

      it('unsealSecret() describes the secret (kind, lengths that admit the fixture secret, label) without it', () => {
        if (!root.sealable || !f.secret) return;
        const d = root.sealable.unsealSecret();
        expect(typeof d.kind).toBe('string');
        expect(d.minBytes).toBeLessThanOrEqual(f.secret.length);
        expect(d.maxBytes).toBeGreaterThanOrEqual(f.secret.length);
        expect(JSON.stringify(d)).not.toContain(Buffer.from(f.secret).toString('hex'));
      });

      it('sealing the root itself (not through Keywarden) stops a Keywarden serving cached KEKs at once', async () => {
        if (!root.sealable) return;
        const kw = new Keywarden({ store: f.store, root });
        await kw.createKey('conformance-seal', root.kekInRoot ? { kekMode: 'memory' } : {});
        await kw.generateDataKey('conformance-seal'); // the KEK is cached now
        await root.sealable.seal();
        await expectCode(() => kw.generateDataKey('conformance-seal'), ['KW_KEYSTORE_SEALED']);
        await kw.close();
      });
    });

    describe('destroy (optional)', () => {
      it('destroyRoot with the root: nothing it wrapped can be unwrapped from the store again; or it is an UnsupportedCapabilityError', async () => {
        if (!root.destroyable) {
          await expectCode(async () => requireDestroyable(root), ['KW_UNSUPPORTED']);
          return;
        }
        expect(f.secret, 'a destroyable root fixture gives its consent secret').toBeDefined();
        const kw = new Keywarden({ store: f.store, root });
        const { id } = await kw.createKey('conformance-destroy', root.kekInRoot ? { kekMode: 'memory' } : {});
        await kw.close();
        const before = await root.wrapKey(material(), aadOf('before-destroy'));
        const result = await destroyRoot(f.store, { root, unsealKey: f.secret as Uint8Array });
        expect(result.destroyed).toBe(1);
        const v1 = await f.store.getVersion(id, 1);
        expect(v1?.state).toBe('destroyed');
        expect(v1?.wrappedMaterial.length).toBe(0);
        if (f.reopen) {
          // Reopened from the store: refused, or unable to unseal or to unwrap what the root wrapped.
          const outcome = await f.reopen().then(
            async (again) => {
              try {
                if (again.sealable) await again.sealable.unseal(f.secret as Uint8Array);
                await again.unwrapKey(before, aadOf('before-destroy'));
                return 'still usable';
              } catch (err) {
                return err;
              } finally {
                await again.close();
              }
            },
            (err: unknown) => err,
          );
          expect(outcome).not.toBe('still usable');
          expect((outcome as { [ERROR_BRAND]?: unknown })[ERROR_BRAND]).toBe(true);
        }
      });

      it('destroy refuses a wrong consent with UnsealError and changes nothing', async () => {
        if (!root.destroyable || !f.secret) return;
        const w = await root.wrapKey(material(), aadOf('kept'));
        await expectCode(
          () => destroyRoot(f.store, { root, unsealKey: flip(f.secret as Uint8Array, 0) }),
          ['KW_UNSEAL'],
        );
        await root.unwrapKey(w, aadOf('kept'));
      });
    });

    describe('KEK held in the root (optional)', () => {
      it('a data key sealed under a KEK in the root opens with the same AAD, and a wrong AAD or another version is DecryptionError; or it is an UnsupportedCapabilityError', async () => {
        if (!root.kekInRoot) {
          await expectCode(async () => requireKekInRoot(root), ['KW_UNSUPPORTED']);
          return;
        }
        const k = requireKekInRoot(checkedRoot(root));
        const v1 = enc.encode('kek/v1');
        const v2 = enc.encode('kek/v2');
        const ref1 = await k.createKek(v1);
        const ref2 = await k.createKek(v2);
        const dek = material(32);
        const { nonce, sealed } = await k.sealDataKey(ref1, v1, dek, aadOf('dek'));
        expect(Array.from(await k.openDataKey(ref1, v1, nonce, sealed, aadOf('dek')))).toEqual(Array.from(dek));
        await expectCode(() => k.openDataKey(ref1, v1, nonce, sealed, aadOf('other')), ['KW_DECRYPT']);
        await expectCode(() => k.openDataKey(ref2, v2, nonce, sealed, aadOf('dek')), ['KW_DECRYPT']);
        await expectCode(() => k.openDataKey(ref1, v2, nonce, sealed, aadOf('dek')), ['KW_DECRYPT']);
        await expectCode(() => k.openDataKey(ref1, v1, nonce, flip(sealed, 47), aadOf('dek')), ['KW_DECRYPT']);
      });

      it('Keywarden with kekMode "root": data keys round-trip, the store holds only the reference, and a sealed root serves none', async () => {
        if (!root.kekInRoot) return;
        const kw = new Keywarden({ store: f.store, root });
        const info = await kw.createKey('conformance-in-root', { kekMode: 'root' });
        const stored = await f.store.getVersion(info.id, 1);
        expect(stored?.wrappedMaterial.length).toBeLessThanOrEqual(MAX_ROOT_WRAPPED_BYTES);
        const dk = await kw.generateDataKey('conformance-in-root', { tenant: 'a' });
        const back = await kw.decryptDataKey(dk.wrapped, { tenant: 'a' }, { key: 'conformance-in-root' });
        expect(Array.from(back)).toEqual(Array.from(dk.plaintext));
        await expectCode(
          () => kw.decryptDataKey(dk.wrapped, { tenant: 'b' }, { key: 'conformance-in-root' }),
          ['KW_DECRYPT'],
        );
        const rotated = await kw.rotateKey('conformance-in-root');
        expect(rotated.primaryVersion).toBe(2);
        const dk2 = await kw.generateDataKey('conformance-in-root');
        expect(dk2.version).toBe(2);
        expect(Array.from(await kw.decryptDataKey(dk2.wrapped, undefined, { key: 'conformance-in-root' }))).toEqual(
          Array.from(dk2.plaintext),
        );
        if (root.sealable) {
          await root.sealable.seal();
          await expectCode(() => kw.generateDataKey('conformance-in-root'), ['KW_KEYSTORE_SEALED']);
        }
        await kw.close();
      });
    });

    describe('key pairs (optional)', () => {
      it('each declared algorithm: generate gives an SPKI of that algorithm, and sign(handle, data) verifies with node:crypto against it and not over other data; or it is an UnsupportedCapabilityError', async () => {
        if (!root.keyPairs) {
          await expectCode(async () => requireKeyPairs(root), ['KW_UNSUPPORTED']);
          return;
        }
        const k = requireKeyPairs(checkedRoot(root));
        expect(k.algorithms.length).toBeGreaterThan(0);
        for (const algorithm of k.algorithms) {
          const pair = await k.generate(algorithm, `kw-conformance/${algorithm}/v1`);
          const e = KEY_PAIR_EXPECTATIONS[algorithm];
          const pub = createPublicKey({ key: Buffer.from(pair.publicKey), format: 'der', type: 'spki' });
          expect(pub.asymmetricKeyType, algorithm).toBe(e.type);
          if (e.curve) expect(pub.asymmetricKeyDetails?.namedCurve, algorithm).toBe(e.curve);
          if (e.bits) {
            expect(pub.asymmetricKeyDetails?.modulusLength, algorithm).toBe(e.bits);
            expect(pub.asymmetricKeyDetails?.publicExponent, algorithm).toBe(65537n);
          }
          const data = material(100);
          const sig = await k.sign(pair.handle, data);
          expect(verifiesWith(algorithm, pair.publicKey, data, sig), `${algorithm} signature verifies`).toBe(true);
          expect(verifiesWith(algorithm, pair.publicKey, flip(data, 3), sig), `${algorithm} over other data`).toBe(
            false,
          );
          await k.destroy(pair.handle);
        }
      });

      it('the private key is never extractable: the device reports it sensitive and never extractable from birth, and its value unreadable', async () => {
        if (!root.keyPairs) return;
        expect(f.inspectPrivateKey, 'a root with key pairs: the fixture gives inspectPrivateKey').toBeDefined();
        const k = requireKeyPairs(checkedRoot(root));
        const pair = await k.generate(k.algorithms[0] as RootKeyPairAlgorithm, 'kw-conformance/inspect/v1');
        const facts = await (f.inspectPrivateKey as NonNullable<RootFixture['inspectPrivateKey']>)(pair.handle);
        expect(facts).toEqual({
          sensitive: true,
          extractable: false,
          alwaysSensitive: true,
          neverExtractable: true,
          valueReadable: false,
        });
        expect(Buffer.from(pair.handle).length).toBeLessThanOrEqual(MAX_ROOT_WRAPPED_BYTES);
        await k.destroy(pair.handle);
      });

      it('after destroy(handle) sign fails with KeyDestroyedError, and destroy again is harmless', async () => {
        if (!root.keyPairs) return;
        const k = requireKeyPairs(checkedRoot(root));
        const pair = await k.generate(k.algorithms[0] as RootKeyPairAlgorithm, 'kw-conformance/destroy/v1');
        await k.sign(pair.handle, material());
        await k.destroy(pair.handle);
        await expectCode(() => k.sign(pair.handle, material()), ['KW_KEY_DESTROYED']);
        await k.destroy(pair.handle);
        await expectCode(() => k.sign(pair.handle, material()), ['KW_KEY_DESTROYED']);
      });

      it('a sealed root signs nothing (KeystoreSealedError), and signs again once unsealed', async () => {
        if (!root.keyPairs || !root.sealable || !f.secret) return;
        const k = requireKeyPairs(checkedRoot(root));
        const algorithm = k.algorithms[0] as RootKeyPairAlgorithm;
        const pair = await k.generate(algorithm, 'kw-conformance/seal/v1');
        await root.sealable.seal();
        await expectCode(() => k.sign(pair.handle, material()), ['KW_KEYSTORE_SEALED']);
        await expectCode(() => k.generate(algorithm, 'kw-conformance/seal/v2'), ['KW_KEYSTORE_SEALED']);
        await root.sealable.unseal(f.secret);
        const data = material();
        expect(verifiesWith(algorithm, pair.publicKey, data, await k.sign(pair.handle, data))).toBe(true);
        await k.destroy(pair.handle);
      });

      it('Precondition: the algorithm is one the root declares; the label is 1..128 printable ASCII characters', async () => {
        if (!root.keyPairs) return;
        const k = requireKeyPairs(checkedRoot(root));
        await expectCode(() => k.generate('RSA-1024' as RootKeyPairAlgorithm, 'kw-conformance/x'), ['KW_UNSUPPORTED']);
        const algorithm = k.algorithms[0] as RootKeyPairAlgorithm;
        await expectCode(() => k.generate(algorithm, ''), ['KW_BAD_INPUT']);
        await expectCode(() => k.generate(algorithm, 'x'.repeat(129)), ['KW_BAD_INPUT']);
        await expectCode(() => k.generate(algorithm, 'line\nbreak'), ['KW_BAD_INPUT']);
      });

      it('Precondition: the handle is 1..MAX_ROOT_WRAPPED_BYTES bytes and the data a Uint8Array; the backend refuses a handle it did not make', async () => {
        if (!root.keyPairs) return;
        const k = requireKeyPairs(checkedRoot(root));
        await expectCode(() => k.sign(new Uint8Array(0), material()), ['KW_BAD_INPUT']);
        await expectCode(() => k.sign(new Uint8Array(MAX_ROOT_WRAPPED_BYTES + 1), material()), ['KW_BAD_INPUT']);
        await expectCode(() => k.destroy(new Uint8Array(0)), ['KW_BAD_INPUT']);
        await expectCode(
          () => root.keyPairs?.sign(material(26), material()) ?? Promise.resolve(),
          ['KW_BAD_INPUT', 'KW_KEY_NOT_FOUND', 'KW_KEY_DESTROYED', 'KW_DECRYPT', 'KW_FORMAT'],
        );
      });
    });

    describe('close', () => {
      it('after close() the root wraps and unwraps nothing, and close() again is harmless', async () => {
        const w = await root.wrapKey(material(), aadOf('close'));
        await root.close();
        await expectCode(() => root.wrapKey(material(), aadOf('close')), ['KW_CLOSED', 'KW_KEYSTORE_SEALED']);
        await expectCode(() => root.unwrapKey(w, aadOf('close')), ['KW_CLOSED', 'KW_KEYSTORE_SEALED']);
        await root.close();
      });
    });
  });
}
