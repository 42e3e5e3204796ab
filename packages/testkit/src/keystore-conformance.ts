/**
 * The KeyStore conformance suite (house style §6: one suite, run against every backend).
 *
 * Each test name states one clause of the KeyStore contract (packages/core/src/keystore.ts).
 * Errors are recognised by their stable `code` and the global error brand that
 * `KeywardenError.isInstance()` checks, so this file only needs types from @keywarden/core.
 */
import { randomBytes } from 'node:crypto';
import type {
  KeyRecord,
  KeyScope,
  KeyStore,
  KeyVersionRecord,
  KeyVersionState,
  LeaseGrant,
  LeaseRefusal,
  LeaseStore,
  RootRewrap,
  RootUpdate,
} from '@keywarden/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

export interface KeyStoreFixture {
  store: KeyStore;
  /**
   * Another connection to the same store (what another process would open), for the races between
   * connections of the lease part; the suite closes it. Omitted: the races run on `store` alone.
   */
  connect?: () => Promise<KeyStore>;
  /** Runs after the suite has closed `store` (remove temporary files, drop a database…). */
  cleanup?: () => Promise<void>;
}

export type KeyStoreFactory = () => Promise<KeyStoreFixture>;

/** The brand `KeywardenError.isInstance()` checks (packages/core/src/errors.ts). */
const ERROR_BRAND = Symbol.for('keywarden.error');

type ErrorCode =
  | 'KW_KEY_EXISTS'
  | 'KW_KEY_NOT_FOUND'
  | 'KW_KEY_STATE'
  | 'KW_BAD_INPUT'
  | 'KW_CLOSED'
  | 'KW_STORE'
  | 'KW_CONFLICT';

/** A fixed instant with a non-zero millisecond part, so a store that drops milliseconds fails. */
const T0 = Date.UTC(2025, 2, 14, 15, 9, 26, 535);
function at(offsetMs = 0): Date {
  return new Date(T0 + offsetMs);
}

function material(length = 40): Uint8Array {
  return new Uint8Array(randomBytes(length));
}

function keyRecord(overrides: Partial<KeyRecord> = {}): KeyRecord {
  return {
    id: 'kek_payments',
    name: 'payments',
    scope: { environment: 'production', service: 'billing', tenant: 'acme', purpose: 'card-data' },
    primaryVersion: 1,
    createdAt: at(0),
    updatedAt: at(0),
    ...overrides,
  };
}

function versionRecord(keyId: string, version: number, overrides: Partial<KeyVersionRecord> = {}): KeyVersionRecord {
  return {
    keyId,
    version,
    state: 'enabled',
    rootId: 'root_software_test',
    wrappedMaterial: material(),
    createdAt: at(version * 1000),
    updatedAt: at(version * 1000),
    ...overrides,
  };
}

/** Creates `payments` (kek_payments) with version 1; returns what was stored. */
async function createSample(
  store: KeyStore,
  overrides: Partial<KeyRecord> = {},
): Promise<{ key: KeyRecord; v1: KeyVersionRecord }> {
  const key = keyRecord(overrides);
  const v1 = versionRecord(key.id, key.primaryVersion);
  await store.createKey(key, v1);
  return { key, v1 };
}

/**
 * Asserts the call returns a promise that rejects with a Keywarden error of `code`, whose message
 * starts with "keystore: ", is one line, and contains none of `secrets` in any common encoding.
 */
async function expectRejects(
  call: () => Promise<unknown>,
  code: ErrorCode,
  secrets: readonly Uint8Array[] = [],
): Promise<Error> {
  let pending: Promise<unknown>;
  try {
    pending = call();
  } catch (err) {
    throw new Error(`expected a rejected promise with ${code}, but the call threw synchronously: ${String(err)}`);
  }
  let caught: unknown;
  let resolved = false;
  try {
    await pending;
    resolved = true;
  } catch (err) {
    caught = err;
  }
  expect(resolved, `expected a rejection with ${code}, but the promise resolved`).toBe(false);
  expect(caught).toBeInstanceOf(Error);
  const err = caught as Error & { code?: unknown; [ERROR_BRAND]?: unknown };
  expect(err.code, `error: ${err.message}`).toBe(code);
  expect(err[ERROR_BRAND], 'a Keywarden error (KeywardenError.isInstance)').toBe(true);
  expect(err.message).toMatch(/^keystore: \S/);
  expect(err.message).not.toMatch(/[\r\n]/);
  for (const secret of secrets) {
    if (secret.length < 4) continue;
    const b = Buffer.from(secret);
    for (const encoded of [b.toString('hex'), b.toString('base64'), b.toString('base64url'), b.toString('latin1')]) {
      expect(err.message.includes(encoded), 'the message must not carry key material').toBe(false);
    }
  }
  return err;
}

function bytesOf(value: Uint8Array | undefined): number[] | undefined {
  return value && Array.from(value);
}

/** Everything a store holds that replaceRoot may touch: keys, all their versions, and one meta record. */
async function snapshot(
  store: KeyStore,
  metaName = 'root',
): Promise<{ keys: KeyRecord[]; versions: KeyVersionRecord[][]; meta: number[] | undefined }> {
  const keys = await store.listKeys();
  const versions = await Promise.all(keys.map((k) => store.listVersions(k.id)));
  return { keys, versions, meta: bytesOf(await store.getMeta(metaName)) };
}

/** A new wrap for one version under `rootId`. */
function rewrap(keyId: string, version: number, rootId = 'root_new'): RootRewrap {
  return { keyId, version, rootId, wrappedMaterial: material(44) };
}

/**
 * Two keys for the replaceRoot tests: payments v1 enabled, v2 disabled (primary), v3 destroyed;
 * orders v1 compromised. The meta record "root" holds the old root. Returns the live versions.
 */
async function rootRotationSample(store: KeyStore): Promise<{ live: Array<[string, number]> }> {
  const { key } = await createSample(store);
  await store.addVersion(versionRecord(key.id, 2), true);
  await store.addVersion(versionRecord(key.id, 3), false);
  await store.setVersionState(key.id, 2, 'disabled', at(10));
  await store.setVersionState(key.id, 3, 'destroyed', at(11));
  await createSample(store, { id: 'kek_orders', name: 'orders' });
  await store.setVersionState('kek_orders', 1, 'compromised', at(12));
  await store.putMeta('root', Uint8Array.of(0x6f, 0x6c, 0x64));
  return {
    live: [
      [key.id, 1],
      [key.id, 2],
      ['kek_orders', 1],
    ],
  };
}

type LeaseAnswer = LeaseGrant | LeaseRefusal;

/**
 * Registers the KeyStore conformance suite. `factory` is called before every test and must
 * return a fresh, empty store; the suite closes it after each test, then calls `cleanup`.
 */
export function describeKeyStoreConformance(name: string, factory: KeyStoreFactory): void {
  describe(`KeyStore conformance: ${name}`, () => {
    let store: KeyStore;
    let cleanup: (() => Promise<void>) | undefined;
    let connect: (() => Promise<KeyStore>) | undefined;
    const others: KeyStore[] = [];

    beforeEach(async () => {
      const fixture = await factory();
      store = fixture.store;
      cleanup = fixture.cleanup;
      connect = fixture.connect;
    });

    afterEach(async () => {
      try {
        for (const other of others.splice(0)) await other.close();
        await store.close();
      } finally {
        await cleanup?.();
      }
    });

    describe('createKey and getKey', () => {
      it('createKey stores the key and its first version; getKey finds the key by id and by name', async () => {
        const { key, v1 } = await createSample(store);
        expect(await store.getKey(key.id)).toStrictEqual(key);
        expect(await store.getKey(key.name)).toStrictEqual(key);
        expect(await store.getVersion(key.id, 1)).toStrictEqual(v1);
      });

      it('getKey resolves to undefined for an unknown id or name', async () => {
        await createSample(store);
        expect(await store.getKey('kek_missing')).toBeUndefined();
        expect(await store.getKey('missing')).toBeUndefined();
      });

      it('createKey rejects a duplicate id with KeyExistsError (KW_KEY_EXISTS)', async () => {
        const { key } = await createSample(store);
        const other = keyRecord({ name: 'other' });
        const secret = material();
        await expectRejects(
          () => store.createKey(other, versionRecord(key.id, 1, { wrappedMaterial: secret })),
          'KW_KEY_EXISTS',
          [secret],
        );
      });

      it('createKey rejects a duplicate name with KeyExistsError (KW_KEY_EXISTS)', async () => {
        await createSample(store);
        const secret = material();
        await expectRejects(
          () =>
            store.createKey(keyRecord({ id: 'kek_other' }), versionRecord('kek_other', 1, { wrappedMaterial: secret })),
          'KW_KEY_EXISTS',
          [secret],
        );
      });

      it("ids and names share one namespace: a name equal to another key's id, or an id equal to another key's name, is rejected with KeyExistsError", async () => {
        await createSample(store); // id kek_payments, name payments
        await expectRejects(
          () => store.createKey(keyRecord({ id: 'kek_2', name: 'kek_payments' }), versionRecord('kek_2', 1)),
          'KW_KEY_EXISTS',
        );
        await expectRejects(
          () => store.createKey(keyRecord({ id: 'payments', name: 'other' }), versionRecord('payments', 1)),
          'KW_KEY_EXISTS',
        );
        expect((await store.listKeys()).map((k) => k.id)).toEqual(['kek_payments']);
      });

      it('a key whose name equals its own id is accepted', async () => {
        const { key } = await createSample(store, { id: 'kek_self', name: 'kek_self' });
        expect(await store.getKey('kek_self')).toStrictEqual(key);
      });

      it('names are matched exactly: case-sensitive, without Unicode normalisation', async () => {
        await createSample(store, { id: 'kek_1', name: 'Payments' });
        await createSample(store, { id: 'kek_2', name: 'payments' });
        await createSample(store, { id: 'kek_3', name: 'caf\u00e9' }); // NFC
        await createSample(store, { id: 'kek_4', name: 'cafe\u0301' }); // NFD
        expect((await store.getKey('Payments'))?.id).toBe('kek_1');
        expect((await store.getKey('payments'))?.id).toBe('kek_2');
        expect((await store.getKey('PAYMENTS'))?.id).toBeUndefined();
        expect((await store.getKey('caf\u00e9'))?.id).toBe('kek_3');
        expect((await store.getKey('cafe\u0301'))?.id).toBe('kek_4');
      });

      it('createKey rejects a first version of another key id, or one that is not the primary version, with InvalidInputError (KW_BAD_INPUT)', async () => {
        const key = keyRecord();
        await expectRejects(() => store.createKey(key, versionRecord('kek_other', 1)), 'KW_BAD_INPUT');
        await expectRejects(() => store.createKey(key, versionRecord(key.id, 2)), 'KW_BAD_INPUT');
        expect(await store.listKeys()).toEqual([]);
      });

      it('createKey rejects malformed records with InvalidInputError (KW_BAD_INPUT)', async () => {
        const bad: Array<[string, KeyRecord, KeyVersionRecord]> = [
          ['empty id', keyRecord({ id: '' }), versionRecord('', 1)],
          ['empty name', keyRecord({ name: '' }), versionRecord('kek_payments', 1)],
          ['lone surrogate in name', keyRecord({ name: 'bad\uD800' }), versionRecord('kek_payments', 1)],
          [
            'NUL in name (not storable in every database)',
            keyRecord({ name: 'a\u0000b' }),
            versionRecord('kek_payments', 1),
          ],
          ['NUL in id', keyRecord({ id: 'kek_\u0000' }), versionRecord('kek_\u0000', 1)],
          ['version 0', keyRecord({ primaryVersion: 0 }), versionRecord('kek_payments', 0)],
          ['fractional version', keyRecord({ primaryVersion: 1.5 }), versionRecord('kek_payments', 1.5)],
          ['invalid date', keyRecord({ createdAt: new Date(Number.NaN) }), versionRecord('kek_payments', 1)],
          [
            'unknown state',
            keyRecord(),
            versionRecord('kek_payments', 1, { state: 'deleted' as unknown as KeyVersionState }),
          ],
          ['empty root id', keyRecord(), versionRecord('kek_payments', 1, { rootId: '' })],
          [
            'material not a Uint8Array',
            keyRecord(),
            versionRecord('kek_payments', 1, { wrappedMaterial: 'AAAA' as unknown as Uint8Array }),
          ],
          ['destroyed version with material', keyRecord(), versionRecord('kek_payments', 1, { state: 'destroyed' })],
          [
            'non-string scope field',
            keyRecord({ scope: { tenant: 42 as unknown as string } }),
            versionRecord('kek_payments', 1),
          ],
          [
            'unknown scope field (a new field must never be silently dropped)',
            keyRecord({ scope: { region: 'eu' } as unknown as KeyScope }),
            versionRecord('kek_payments', 1),
          ],
        ];
        for (const [, key, version] of bad) {
          await expectRejects(() => store.createKey(key, version), 'KW_BAD_INPUT');
        }
        expect(await store.listKeys()).toEqual([]);
      });
    });

    describe('listKeys', () => {
      it('listKeys resolves to [] for an empty store', async () => {
        expect(await store.listKeys()).toEqual([]);
      });

      it('listKeys returns every key ordered by name in Unicode code-point order (UTF-8 byte order), whatever the insertion order', async () => {
        const names = ['b', '\u{1F600}', 'a', 'B', '\uFFFD', 'caf\u00e9', 'a-1', 'A', 'z'];
        for (const [i, n] of names.entries()) await createSample(store, { id: `kek_${i}`, name: n });
        // Code-point order: U+1F600 sorts after U+FFFD (UTF-16 code-unit order would put it before).
        const expected = ['A', 'B', 'a', 'a-1', 'b', 'caf\u00e9', 'z', '\uFFFD', '\u{1F600}'];
        expect((await store.listKeys()).map((k) => k.name)).toEqual(expected);
        // Stable: asking again gives the same order.
        expect((await store.listKeys()).map((k) => k.name)).toEqual(expected);
      });

      it('listKeys returns complete records', async () => {
        const { key } = await createSample(store);
        expect(await store.listKeys()).toStrictEqual([key]);
      });
    });

    describe('versions', () => {
      it('addVersion without makePrimary adds the version and keeps the primary version and updatedAt', async () => {
        const { key } = await createSample(store);
        const v2 = versionRecord(key.id, 2);
        await store.addVersion(v2, false);
        expect(await store.getVersion(key.id, 2)).toStrictEqual(v2);
        expect(await store.getKey(key.id)).toStrictEqual(key);
      });

      it("addVersion with makePrimary adds the version, makes it primary and sets the key's updatedAt to the version's createdAt", async () => {
        const { key } = await createSample(store);
        const v2 = versionRecord(key.id, 2, { createdAt: at(86_400_123), updatedAt: at(86_400_123) });
        await store.addVersion(v2, true);
        expect(await store.getVersion(key.id, 2)).toStrictEqual(v2);
        expect(await store.getKey(key.name)).toStrictEqual({ ...key, primaryVersion: 2, updatedAt: at(86_400_123) });
      });

      it('addVersion rejects a duplicate version with KeyExistsError (KW_KEY_EXISTS)', async () => {
        const { key, v1 } = await createSample(store);
        const secret = material();
        await expectRejects(
          () => store.addVersion(versionRecord(key.id, 1, { wrappedMaterial: secret }), false),
          'KW_KEY_EXISTS',
          [secret, v1.wrappedMaterial],
        );
        expect(await store.getVersion(key.id, 1)).toStrictEqual(v1);
      });

      it('addVersion for a missing key rejects with KeyNotFoundError (KW_KEY_NOT_FOUND)', async () => {
        await expectRejects(() => store.addVersion(versionRecord('kek_missing', 1), true), 'KW_KEY_NOT_FOUND');
      });

      it('getVersion resolves to undefined for a missing version or a missing key', async () => {
        const { key } = await createSample(store);
        expect(await store.getVersion(key.id, 2)).toBeUndefined();
        expect(await store.getVersion('kek_missing', 1)).toBeUndefined();
      });

      it('getVersion and listVersions take the key id, not the name', async () => {
        const { key } = await createSample(store);
        expect(await store.getVersion(key.name, 1)).toBeUndefined();
        expect(await store.listVersions(key.name)).toEqual([]);
      });

      it('listVersions returns the versions ordered by version number, whatever the insertion order', async () => {
        const { key, v1 } = await createSample(store);
        const v3 = versionRecord(key.id, 3);
        const v10 = versionRecord(key.id, 10);
        const v2 = versionRecord(key.id, 2);
        await store.addVersion(v10, false);
        await store.addVersion(v3, true);
        await store.addVersion(v2, false);
        expect(await store.listVersions(key.id)).toStrictEqual([v1, v2, v3, v10]);
      });

      it('listVersions resolves to [] for an unknown key', async () => {
        expect(await store.listVersions('kek_missing')).toEqual([]);
      });

      it("one key's versions are independent of another key's versions", async () => {
        const a = await createSample(store, { id: 'kek_a', name: 'a' });
        const b = await createSample(store, { id: 'kek_b', name: 'b' });
        await store.setVersionState('kek_a', 1, 'destroyed', at(5));
        expect(await store.listVersions('kek_b')).toStrictEqual([b.v1]);
        expect((await store.getVersion('kek_a', 1))?.wrappedMaterial).toHaveLength(0);
        expect(a.v1.wrappedMaterial.length).toBeGreaterThan(0);
      });
    });

    describe('setPrimaryVersion', () => {
      it('setPrimaryVersion changes the primary version and updatedAt, and keeps createdAt', async () => {
        const { key } = await createSample(store);
        await store.addVersion(versionRecord(key.id, 2), false);
        await store.setPrimaryVersion(key.id, 2, at(7_001));
        expect(await store.getKey(key.id)).toStrictEqual({ ...key, primaryVersion: 2, updatedAt: at(7_001) });
        await store.setPrimaryVersion(key.id, 1, at(8_002));
        expect((await store.getKey(key.id))?.primaryVersion).toBe(1);
      });

      it('setPrimaryVersion to a missing version rejects with KeyNotFoundError (KW_KEY_NOT_FOUND) and changes nothing', async () => {
        const { key } = await createSample(store);
        await expectRejects(() => store.setPrimaryVersion(key.id, 2, at(9)), 'KW_KEY_NOT_FOUND');
        expect(await store.getKey(key.id)).toStrictEqual(key);
      });

      it('setPrimaryVersion on a missing key rejects with KeyNotFoundError (KW_KEY_NOT_FOUND)', async () => {
        await expectRejects(() => store.setPrimaryVersion('kek_missing', 1, at(9)), 'KW_KEY_NOT_FOUND');
      });

      it('setPrimaryVersion rejects an invalid date with InvalidInputError (KW_BAD_INPUT)', async () => {
        const { key } = await createSample(store);
        await expectRejects(() => store.setPrimaryVersion(key.id, 1, new Date(Number.NaN)), 'KW_BAD_INPUT');
      });
    });

    describe('setVersionState', () => {
      it('setVersionState changes the state and updatedAt of that version only', async () => {
        const { key, v1 } = await createSample(store);
        const v2 = versionRecord(key.id, 2);
        await store.addVersion(v2, true);
        await store.setVersionState(key.id, 1, 'disabled', at(60_001));
        expect(await store.getVersion(key.id, 1)).toStrictEqual({ ...v1, state: 'disabled', updatedAt: at(60_001) });
        expect(await store.getVersion(key.id, 2)).toStrictEqual(v2);
      });

      it('a disabled version can be enabled again', async () => {
        const { key } = await createSample(store);
        await store.setVersionState(key.id, 1, 'disabled', at(1));
        await store.setVersionState(key.id, 1, 'enabled', at(2));
        expect((await store.getVersion(key.id, 1))?.state).toBe('enabled');
      });

      it('destroyed erases the wrapped material (length 0) in the same write and keeps the other fields; other versions keep theirs', async () => {
        const { key, v1 } = await createSample(store);
        const v2 = versionRecord(key.id, 2);
        await store.addVersion(v2, true);
        await store.setVersionState(key.id, 1, 'destroyed', at(90_009));
        const destroyed = await store.getVersion(key.id, 1);
        expect(destroyed).toStrictEqual({
          ...v1,
          state: 'destroyed',
          wrappedMaterial: new Uint8Array(0),
          updatedAt: at(90_009),
        });
        expect(destroyed?.wrappedMaterial).toHaveLength(0);
        expect((await store.listVersions(key.id))[0]?.wrappedMaterial).toHaveLength(0);
        expect(await store.getVersion(key.id, 2)).toStrictEqual(v2);
      });

      it('a compromised version can be destroyed, which erases its material', async () => {
        const { key } = await createSample(store);
        await store.setVersionState(key.id, 1, 'compromised', at(1));
        await store.setVersionState(key.id, 1, 'destroyed', at(2));
        const v = await store.getVersion(key.id, 1);
        expect(v?.state).toBe('destroyed');
        expect(v?.wrappedMaterial).toHaveLength(0);
      });

      it('destroyed is terminal: moving to any other state rejects with KeyStateError (KW_KEY_STATE)', async () => {
        const { key } = await createSample(store);
        await store.setVersionState(key.id, 1, 'destroyed', at(1));
        for (const state of ['enabled', 'disabled', 'compromised'] as const) {
          await expectRejects(() => store.setVersionState(key.id, 1, state, at(2)), 'KW_KEY_STATE');
        }
        expect((await store.getVersion(key.id, 1))?.state).toBe('destroyed');
      });

      it('compromised cannot be enabled or disabled again (KW_KEY_STATE): a compromise is never forgotten', async () => {
        const { key } = await createSample(store);
        await store.setVersionState(key.id, 1, 'compromised', at(1));
        for (const state of ['enabled', 'disabled'] as const) {
          await expectRejects(() => store.setVersionState(key.id, 1, state, at(2)), 'KW_KEY_STATE');
        }
        const v = await store.getVersion(key.id, 1);
        expect(v?.state).toBe('compromised');
        expect(v?.updatedAt).toEqual(at(1));
      });

      it('setting the current state again is accepted and updates updatedAt', async () => {
        const { key } = await createSample(store);
        await store.setVersionState(key.id, 1, 'enabled', at(3));
        expect((await store.getVersion(key.id, 1))?.updatedAt).toEqual(at(3));
        await store.setVersionState(key.id, 1, 'destroyed', at(4));
        await store.setVersionState(key.id, 1, 'destroyed', at(5));
        const v = await store.getVersion(key.id, 1);
        expect(v?.state).toBe('destroyed');
        expect(v?.wrappedMaterial).toHaveLength(0);
      });

      it('setVersionState on a missing version or key rejects with KeyNotFoundError (KW_KEY_NOT_FOUND)', async () => {
        const { key } = await createSample(store);
        await expectRejects(() => store.setVersionState(key.id, 2, 'disabled', at(1)), 'KW_KEY_NOT_FOUND');
        await expectRejects(() => store.setVersionState('kek_missing', 1, 'disabled', at(1)), 'KW_KEY_NOT_FOUND');
      });

      it('setVersionState rejects an unknown state with InvalidInputError (KW_BAD_INPUT) and changes nothing', async () => {
        const { key, v1 } = await createSample(store);
        await expectRejects(
          () => store.setVersionState(key.id, 1, 'deleted' as unknown as KeyVersionState, at(1)),
          'KW_BAD_INPUT',
        );
        expect(await store.getVersion(key.id, 1)).toStrictEqual(v1);
      });
    });

    describe('meta', () => {
      it('getMeta resolves to undefined for a missing name', async () => {
        expect(await store.getMeta('sealed-root')).toBeUndefined();
      });

      it('putMeta then getMeta returns the same bytes; putMeta again overwrites', async () => {
        const first = material(64);
        const second = material(17);
        await store.putMeta('sealed-root', first);
        expect(bytesOf(await store.getMeta('sealed-root'))).toEqual(Array.from(first));
        await store.putMeta('sealed-root', second);
        expect(bytesOf(await store.getMeta('sealed-root'))).toEqual(Array.from(second));
      });

      it('meta values may be empty or large (1 MiB), and names are independent', async () => {
        const big = material(1 << 20);
        await store.putMeta('empty', new Uint8Array(0));
        await store.putMeta('big', big);
        expect(bytesOf(await store.getMeta('empty'))).toEqual([]);
        expect(Buffer.from((await store.getMeta('big')) ?? []).equals(Buffer.from(big))).toBe(true);
      });

      it('meta names do not collide with key ids or names', async () => {
        const { key } = await createSample(store);
        await store.putMeta(key.name, Uint8Array.of(1));
        await store.putMeta(key.id, Uint8Array.of(2));
        expect(await store.getKey(key.name)).toStrictEqual(key);
        expect(bytesOf(await store.getMeta(key.name))).toEqual([1]);
      });

      it('putMeta rejects a value that is not a Uint8Array and an empty name with InvalidInputError (KW_BAD_INPUT)', async () => {
        await expectRejects(() => store.putMeta('x', 'text' as unknown as Uint8Array), 'KW_BAD_INPUT');
        await expectRejects(() => store.putMeta('', Uint8Array.of(1)), 'KW_BAD_INPUT');
        expect(await store.getMeta('x')).toBeUndefined();
      });
    });

    // updateMeta is optional (the audit chain's appends from many processes need it): every store
    // of this repository has it, so its absence fails here.
    describe('updateMeta (read-modify-write under the store lock)', () => {
      const update = (
        name: string,
        change: (current: Uint8Array | undefined) => { name: string; value: Uint8Array }[],
      ) => {
        if (typeof store.updateMeta !== 'function') throw new Error('this store has no updateMeta');
        return store.updateMeta(name, change);
      };

      it('change sees the current value (undefined when absent) and its records are all written', async () => {
        const seen: Array<number[] | undefined> = [];
        await update('audit/head', (cur) => {
          seen.push(cur && bytesOf(cur));
          return [
            { name: 'audit/seg/1', value: Uint8Array.of(1) },
            { name: 'audit/head', value: Uint8Array.of(9) },
          ];
        });
        await update('audit/head', (cur) => {
          seen.push(cur && bytesOf(cur));
          return [];
        });
        expect(seen).toEqual([undefined, [9]]);
        expect(bytesOf(await store.getMeta('audit/seg/1'))).toEqual([1]);
      });

      it('what change throws rejects the update and nothing is written', async () => {
        await store.putMeta('audit/head', Uint8Array.of(3));
        await expect(
          update('audit/head', () => {
            throw new Error('refused by change');
          }),
        ).rejects.toThrow();
        expect(bytesOf(await store.getMeta('audit/head'))).toEqual([3]);
        await expectRejects(() => update('audit/head', () => [{ name: '', value: Uint8Array.of(1) }]), 'KW_BAD_INPUT');
        expect(bytesOf(await store.getMeta('audit/head'))).toEqual([3]);
      });

      it('concurrent updates of one record are serialized: 16 increments at once make 16', async () => {
        await Promise.all(
          Array.from({ length: 16 }, () =>
            update('counter', (cur) => [{ name: 'counter', value: Uint8Array.of((cur?.[0] ?? 0) + 1) }]),
          ),
        );
        expect(bytesOf(await store.getMeta('counter'))).toEqual([16]);
      });
    });

    // swapMeta is optional (two rekeys at once need it; docs/split-knowledge.md §7.2): every store
    // of this repository has it, so its absence fails here.
    describe('swapMeta (compare-and-swap of one meta record)', () => {
      const swap = (name: string, expected: Uint8Array | null, value: Uint8Array | null) => {
        if (typeof store.swapMeta !== 'function') throw new Error('this store has no swapMeta');
        return store.swapMeta(name, expected, value);
      };

      it('swaps when the record holds exactly the expected value (null: absent), and deletes with a null value', async () => {
        await swap('root', null, Uint8Array.of(1));
        expect(bytesOf(await store.getMeta('root'))).toEqual([1]);
        await swap('root', Uint8Array.of(1), Uint8Array.of(2, 2));
        expect(bytesOf(await store.getMeta('root'))).toEqual([2, 2]);
        await swap('root', Uint8Array.of(2, 2), null);
        expect(await store.getMeta('root')).toBeUndefined();
      });

      it('a record that changed since it was read rejects with ConflictError (KW_CONFLICT) and nothing changes', async () => {
        await store.putMeta('root', Uint8Array.of(5));
        await expectRejects(() => swap('root', Uint8Array.of(4), Uint8Array.of(6)), 'KW_CONFLICT');
        await expectRejects(() => swap('root', null, Uint8Array.of(6)), 'KW_CONFLICT');
        await expectRejects(() => swap('root', Uint8Array.of(5, 0), null), 'KW_CONFLICT');
        expect(bytesOf(await store.getMeta('root'))).toEqual([5]);
        await expectRejects(() => swap('absent', Uint8Array.of(5), Uint8Array.of(6)), 'KW_CONFLICT');
        expect(await store.getMeta('absent')).toBeUndefined();
      });

      it('of 8 concurrent swaps from the same value exactly one wins', async () => {
        await store.putMeta('root', Uint8Array.of(0));
        const outcomes = await Promise.allSettled(
          Array.from({ length: 8 }, (_, i) => swap('root', Uint8Array.of(0), Uint8Array.of(i + 1))),
        );
        const won = outcomes.filter((o) => o.status === 'fulfilled');
        expect(won).toHaveLength(1);
        for (const o of outcomes) {
          if (o.status === 'rejected') expect((o.reason as { code?: string }).code).toBe('KW_CONFLICT');
        }
        const value = bytesOf(await store.getMeta('root'));
        expect(value).toHaveLength(1);
        expect(value?.[0]).toBeGreaterThan(0);
      });
    });

    describe('replaceRoot and deleteMeta', () => {
      it('replaceRoot sets rootId, wrappedMaterial and updatedAt of every listed version and writes the meta record; states, createdAt, keys and destroyed versions are unchanged', async () => {
        const { live } = await rootRotationSample(store);
        const before = await snapshot(store);
        const update: RootUpdate = {
          versions: live.map(([keyId, version]) => rewrap(keyId, version)),
          meta: { name: 'root', value: Uint8Array.of(0x6e, 0x65, 0x77) },
          at: at(99_001),
        };
        await store.replaceRoot(update);
        const after = await snapshot(store);
        expect(after.keys).toStrictEqual(before.keys);
        expect(after.meta).toEqual([0x6e, 0x65, 0x77]);
        for (const [i, versions] of before.versions.entries()) {
          for (const [j, old] of versions.entries()) {
            const now = after.versions[i]?.[j];
            const w = update.versions.find((u) => u.keyId === old.keyId && u.version === old.version);
            if (!w) {
              expect(now, 'a destroyed version is left as it was').toStrictEqual(old);
              continue;
            }
            expect(now).toStrictEqual({
              ...old,
              rootId: 'root_new',
              wrappedMaterial: new Uint8Array(w.wrappedMaterial),
              updatedAt: at(99_001),
            });
          }
        }
      });

      it('replaceRoot with no versions (a store without keys) writes only the meta record', async () => {
        await store.replaceRoot({ versions: [], meta: { name: 'root', value: Uint8Array.of(7) }, at: at(1) });
        expect(bytesOf(await store.getMeta('root'))).toEqual([7]);
        expect(await store.listKeys()).toEqual([]);
      });

      it('replaceRoot naming a missing version or key rejects with KeyNotFoundError (KW_KEY_NOT_FOUND) and changes nothing — neither versions nor meta', async () => {
        const { live } = await rootRotationSample(store);
        const before = await snapshot(store);
        for (const missing of [rewrap('kek_payments', 9), rewrap('kek_missing', 1)]) {
          // The bad entry comes last, after good ones: a store that writes as it checks fails here.
          const versions = [...live.map(([k, v]) => rewrap(k, v)), missing];
          await expectRejects(
            () => store.replaceRoot({ versions, meta: { name: 'root', value: Uint8Array.of(1) }, at: at(5) }),
            'KW_KEY_NOT_FOUND',
            versions.map((v) => v.wrappedMaterial),
          );
          expect(await snapshot(store)).toStrictEqual(before);
        }
      });

      it('replaceRoot naming a destroyed version rejects with KeyStateError (KW_KEY_STATE) and changes nothing — neither versions nor meta', async () => {
        const { live } = await rootRotationSample(store);
        const before = await snapshot(store);
        const versions = [...live.map(([k, v]) => rewrap(k, v)), rewrap('kek_payments', 3)];
        await expectRejects(
          () => store.replaceRoot({ versions, meta: { name: 'root', value: Uint8Array.of(1) }, at: at(5) }),
          'KW_KEY_STATE',
          versions.map((v) => v.wrappedMaterial),
        );
        expect(await snapshot(store)).toStrictEqual(before);
      });

      it('replaceRoot leaving out a version that is not destroyed rejects with KeyStateError (KW_KEY_STATE) and changes nothing: no version is left under the old root', async () => {
        const { live } = await rootRotationSample(store);
        const before = await snapshot(store);
        for (const skip of live.keys()) {
          const versions = live.filter((_, i) => i !== skip).map(([k, v]) => rewrap(k, v));
          const err = await expectRejects(
            () => store.replaceRoot({ versions, meta: { name: 'root', value: Uint8Array.of(1) }, at: at(5) }),
            'KW_KEY_STATE',
          );
          expect(err.message).toContain(`v${live[skip]?.[1]}`);
          expect(await snapshot(store)).toStrictEqual(before);
        }
      });

      it('replaceRoot rejects malformed updates with InvalidInputError (KW_BAD_INPUT) and changes nothing', async () => {
        const { live } = await rootRotationSample(store);
        const before = await snapshot(store);
        const good = (): RootUpdate => ({
          versions: live.map(([k, v]) => rewrap(k, v)),
          meta: { name: 'root', value: Uint8Array.of(1) },
          at: at(5),
        });
        const bad: Array<[string, RootUpdate]> = [
          ['a version listed twice', { ...good(), versions: [...good().versions, rewrap('kek_orders', 1)] }],
          [
            'empty wrapped material',
            { ...good(), versions: good().versions.map((v) => ({ ...v, wrappedMaterial: new Uint8Array(0) })) },
          ],
          [
            'material not a Uint8Array',
            {
              ...good(),
              versions: good().versions.map((v) => ({ ...v, wrappedMaterial: 'AAAA' as unknown as Uint8Array })),
            },
          ],
          ['empty root id', { ...good(), versions: good().versions.map((v) => ({ ...v, rootId: '' })) }],
          ['version 0', { ...good(), versions: [...good().versions, rewrap('kek_orders', 0)] }],
          ['invalid date', { ...good(), at: new Date(Number.NaN) }],
          ['empty meta name', { ...good(), meta: { name: '', value: Uint8Array.of(1) } }],
          ['meta value not a Uint8Array', { ...good(), meta: { name: 'root', value: [1] as unknown as Uint8Array } }],
          ['versions not an array', { ...good(), versions: 'all' as unknown as RootRewrap[] }],
          [
            'unknown field in a version (a new field must never be silently dropped)',
            { ...good(), versions: good().versions.map((v) => ({ ...v, state: 'enabled' }) as RootRewrap) },
          ],
          ['no update at all', null as unknown as RootUpdate],
        ];
        for (const [what, update] of bad) {
          const err = await expectRejects(() => store.replaceRoot(update), 'KW_BAD_INPUT');
          expect(err.message, what).toMatch(/^keystore: /);
        }
        expect(await snapshot(store)).toStrictEqual(before);
      });

      it('replaceRoot stores copies: mutating the update afterwards, or a record read back, changes nothing stored', async () => {
        const { live } = await rootRotationSample(store);
        const update: RootUpdate = {
          versions: live.map(([k, v]) => rewrap(k, v)),
          meta: { name: 'root', value: Uint8Array.of(1, 2, 3) },
          at: at(5),
        };
        const expected = structuredClone(update);
        await store.replaceRoot(update);
        for (const v of update.versions) v.wrappedMaterial.fill(0);
        update.meta.value.fill(0);
        update.at.setTime(0);
        const read = await store.getVersion('kek_orders', 1);
        read?.wrappedMaterial.fill(0xff);
        for (const v of expected.versions) {
          const got = await store.getVersion(v.keyId, v.version);
          expect(bytesOf(got?.wrappedMaterial)).toEqual(Array.from(v.wrappedMaterial));
          expect(got?.updatedAt).toEqual(at(5));
        }
        expect(bytesOf(await store.getMeta('root'))).toEqual([1, 2, 3]);
      });

      it('after replaceRoot, a destroyed version still cannot change state, and the rewrapped versions keep their rules', async () => {
        const { live } = await rootRotationSample(store);
        await store.replaceRoot({
          versions: live.map(([k, v]) => rewrap(k, v)),
          meta: { name: 'root', value: Uint8Array.of(1) },
          at: at(5),
        });
        await expectRejects(() => store.setVersionState('kek_payments', 3, 'enabled', at(6)), 'KW_KEY_STATE');
        await expectRejects(() => store.setVersionState('kek_orders', 1, 'enabled', at(6)), 'KW_KEY_STATE');
        await store.setVersionState('kek_payments', 2, 'enabled', at(7));
        expect((await store.getVersion('kek_payments', 2))?.state).toBe('enabled');
      });

      it('deleteMeta removes one record and keeps the others; deleting a missing record is not an error', async () => {
        const { key } = await createSample(store);
        await store.putMeta('root', Uint8Array.of(1));
        await store.putMeta('other', Uint8Array.of(2));
        await store.deleteMeta('root');
        expect(await store.getMeta('root')).toBeUndefined();
        expect(bytesOf(await store.getMeta('other'))).toEqual([2]);
        await store.deleteMeta('root');
        await store.deleteMeta('never-written');
        expect(await store.getKey(key.id)).toStrictEqual(key);
        await store.putMeta('root', Uint8Array.of(3));
        expect(bytesOf(await store.getMeta('root'))).toEqual([3]);
      });

      it('deleteMeta rejects an empty name with InvalidInputError (KW_BAD_INPUT)', async () => {
        await store.putMeta('root', Uint8Array.of(1));
        await expectRejects(() => store.deleteMeta(''), 'KW_BAD_INPUT');
        await expectRejects(() => store.deleteMeta(42 as unknown as string), 'KW_BAD_INPUT');
        expect(bytesOf(await store.getMeta('root'))).toEqual([1]);
      });
    });

    describe('failed writes leave no partial state', () => {
      it('createKey with a duplicate name stores neither the new key nor its version', async () => {
        await createSample(store);
        const other = keyRecord({ id: 'kek_other' });
        await expectRejects(() => store.createKey(other, versionRecord('kek_other', 1)), 'KW_KEY_EXISTS');
        expect(await store.getKey('kek_other')).toBeUndefined();
        expect(await store.getVersion('kek_other', 1)).toBeUndefined();
        expect(await store.listVersions('kek_other')).toEqual([]);
        expect((await store.listKeys()).map((k) => k.id)).toEqual(['kek_payments']);
      });

      it('createKey with a duplicate id stores neither the new name nor another version', async () => {
        const { v1 } = await createSample(store);
        const other = keyRecord({ name: 'other' });
        await expectRejects(() => store.createKey(other, versionRecord(other.id, 1)), 'KW_KEY_EXISTS');
        expect(await store.getKey('other')).toBeUndefined();
        expect(await store.listVersions(other.id)).toStrictEqual([v1]);
      });

      it('a rejected createKey leaves the id and name free for a later createKey', async () => {
        await expectRejects(() => store.createKey(keyRecord(), versionRecord('kek_x', 1)), 'KW_BAD_INPUT');
        const { key } = await createSample(store);
        expect(await store.getKey(key.name)).toStrictEqual(key);
      });

      it('addVersion with a duplicate version and makePrimary changes neither the version nor the primary', async () => {
        const { key, v1 } = await createSample(store);
        await store.addVersion(versionRecord(key.id, 2), false);
        await expectRejects(() => store.addVersion(versionRecord(key.id, 2), true), 'KW_KEY_EXISTS');
        await expectRejects(() => store.addVersion(versionRecord(key.id, 1), true), 'KW_KEY_EXISTS');
        expect(await store.getKey(key.id)).toStrictEqual(key);
        expect(await store.getVersion(key.id, 1)).toStrictEqual(v1);
      });

      it('addVersion for a missing key stores nothing', async () => {
        await expectRejects(() => store.addVersion(versionRecord('kek_missing', 2), false), 'KW_KEY_NOT_FOUND');
        expect(await store.listVersions('kek_missing')).toEqual([]);
      });

      it('a rejected state change leaves the material in place', async () => {
        const { key, v1 } = await createSample(store);
        await store.setVersionState(key.id, 1, 'compromised', at(1));
        await expectRejects(() => store.setVersionState(key.id, 1, 'enabled', at(2)), 'KW_KEY_STATE');
        expect(bytesOf((await store.getVersion(key.id, 1))?.wrappedMaterial)).toEqual(Array.from(v1.wrappedMaterial));
      });
    });

    describe('returned objects are copies', () => {
      it('mutating a returned KeyRecord (fields, scope, dates) does not change the stored key', async () => {
        const { key } = await createSample(store);
        const expected = structuredClone(key);
        const got = await store.getKey(key.id);
        if (!got) throw new Error('key not found');
        got.name = 'renamed';
        got.primaryVersion = 9;
        got.scope.tenant = 'evil';
        got.scope.environment = undefined;
        got.createdAt.setTime(0);
        got.updatedAt.setTime(0);
        const listed = await store.listKeys();
        listed[0]!.scope.service = 'evil';
        listed[0]!.createdAt.setTime(1);
        expect(await store.getKey(key.id)).toStrictEqual(expected);
        expect(await store.getKey('renamed')).toBeUndefined();
      });

      it('mutating a returned KeyVersionRecord, including the bytes of wrappedMaterial, does not change the stored version', async () => {
        const { key, v1 } = await createSample(store);
        const expected = structuredClone(v1);
        const got = await store.getVersion(key.id, 1);
        if (!got) throw new Error('version not found');
        got.wrappedMaterial.fill(0xff);
        got.state = 'destroyed';
        got.createdAt.setTime(0);
        const listed = await store.listVersions(key.id);
        listed[0]!.wrappedMaterial.fill(0xee);
        listed[0]!.updatedAt.setTime(0);
        expect(await store.getVersion(key.id, 1)).toStrictEqual(expected);
      });

      it('two reads return distinct objects and distinct byte arrays', async () => {
        const { key } = await createSample(store);
        const a = await store.getVersion(key.id, 1);
        const b = await store.getVersion(key.id, 1);
        expect(a).not.toBe(b);
        expect(a?.wrappedMaterial).not.toBe(b?.wrappedMaterial);
        expect(a?.wrappedMaterial.buffer).not.toBe(b?.wrappedMaterial.buffer);
      });

      it('mutating the records passed to createKey and addVersion after the call does not change the stored data', async () => {
        const key = keyRecord();
        const v1 = versionRecord(key.id, 1);
        const expectedKey = structuredClone(key);
        const expectedV1 = structuredClone(v1);
        await store.createKey(key, v1);
        key.name = 'changed';
        key.scope.tenant = 'changed';
        key.createdAt.setTime(0);
        v1.wrappedMaterial.fill(0);
        v1.createdAt.setTime(0);
        const v2 = versionRecord(key.id, 2);
        const expectedV2 = structuredClone(v2);
        await store.addVersion(v2, false);
        v2.wrappedMaterial.fill(0);
        v2.state = 'compromised';
        expect(await store.getKey(expectedKey.id)).toStrictEqual(expectedKey);
        expect(await store.getVersion(key.id, 1)).toStrictEqual(expectedV1);
        expect(await store.getVersion(key.id, 2)).toStrictEqual(expectedV2);
      });

      it('getMeta returns a copy and putMeta stores a copy', async () => {
        const value = Uint8Array.of(1, 2, 3, 4);
        await store.putMeta('m', value);
        value.fill(9);
        const got = await store.getMeta('m');
        got?.fill(7);
        expect(bytesOf(await store.getMeta('m'))).toEqual([1, 2, 3, 4]);
      });

      it('wrappedMaterial and meta values come back as plain Uint8Array (not a Buffer or other subclass), even when stored from a Buffer', async () => {
        const key = keyRecord();
        await store.createKey(key, versionRecord(key.id, 1, { wrappedMaterial: Buffer.from(material()) }));
        await store.putMeta('m', Buffer.from([1, 2, 3]));
        expect((await store.getVersion(key.id, 1))?.wrappedMaterial.constructor).toBe(Uint8Array);
        expect((await store.listVersions(key.id))[0]?.wrappedMaterial.constructor).toBe(Uint8Array);
        expect((await store.getMeta('m'))?.constructor).toBe(Uint8Array);
      });
    });

    describe('round-trips', () => {
      it('dates round-trip as Date objects with millisecond precision, before 1970 and far in the future too', async () => {
        const key = keyRecord({
          createdAt: new Date(-1),
          updatedAt: new Date(Date.UTC(9999, 11, 31, 23, 59, 59, 999)),
        });
        const v1 = versionRecord(key.id, 1, { createdAt: new Date(1), updatedAt: at(999) });
        await store.createKey(key, v1);
        const gotKey = await store.getKey(key.id);
        const gotV1 = await store.getVersion(key.id, 1);
        expect(gotKey?.createdAt).toBeInstanceOf(Date);
        expect(gotKey?.createdAt.getTime()).toBe(-1);
        expect(gotKey?.updatedAt.getTime()).toBe(key.updatedAt.getTime());
        expect(gotV1?.createdAt.getTime()).toBe(1);
        expect(gotV1?.updatedAt.getTime()).toBe(T0 + 999);
      });

      it('scope fields round-trip; absent fields stay absent (not undefined-valued, not null)', async () => {
        const scopes: KeyScope[] = [
          { environment: 'production', service: 'billing', tenant: 'acme', purpose: 'card-data' },
          {},
          { service: 'billing' },
          { tenant: 'acme', purpose: 'pii' },
          { environment: 'staging', tenant: undefined },
        ];
        for (const [i, scope] of scopes.entries()) await createSample(store, { id: `kek_${i}`, name: `k${i}`, scope });
        for (const [i, scope] of scopes.entries()) {
          const got = await store.getKey(`kek_${i}`);
          const expected = Object.fromEntries(Object.entries(scope).filter(([, v]) => v !== undefined));
          expect(got?.scope).toStrictEqual(expected);
          expect(Object.keys(got?.scope ?? { missing: 1 }).sort()).toEqual(Object.keys(expected).sort());
        }
      });

      it('empty-string scope values are kept as empty strings, distinct from absent', async () => {
        await createSample(store, { scope: { environment: '', tenant: 'acme' } });
        expect((await store.getKey('payments'))?.scope).toStrictEqual({ environment: '', tenant: 'acme' });
      });

      it('wrapped material of any length (1 byte to 64 KiB) round-trips byte for byte', async () => {
        const { key } = await createSample(store);
        const lengths = [1, 40, 4096, 65_536];
        for (const [i, length] of lengths.entries()) {
          await store.addVersion(versionRecord(key.id, i + 2, { wrappedMaterial: material(length) }), false);
        }
        const versions = await store.listVersions(key.id);
        for (const [i, length] of lengths.entries()) expect(versions[i + 1]?.wrappedMaterial).toHaveLength(length);
        // Every byte value survives (no text conversion on the way).
        const all = Uint8Array.from({ length: 256 }, (_, i) => i);
        await store.addVersion(versionRecord(key.id, 99, { wrappedMaterial: all }), false);
        expect(bytesOf((await store.getVersion(key.id, 99))?.wrappedMaterial)).toEqual(Array.from(all));
      });

      it('ids, names and root ids with non-ASCII characters round-trip exactly', async () => {
        const key = keyRecord({ id: 'kek_\u00fc\u4e2d\u{1F511}', name: 'z\u00fcrich \u{1F511} \u00a0\t!' });
        const v1 = versionRecord(key.id, 1, { rootId: 'root_\u00e9\u{1F512}' });
        await store.createKey(key, v1);
        expect(await store.getKey(key.name)).toStrictEqual(key);
        expect(await store.getVersion(key.id, 1)).toStrictEqual(v1);
        expect((await store.listKeys())[0]).toStrictEqual(key);
      });
    });

    describe('lifecycle: getLifecycle, updateKey (compare-and-swap), reserveUses', () => {
      it('a new key has revision 0, minimum decryption version 1, no policy of its own and no uses; an unknown key has none', async () => {
        const { key } = await createSample(store);
        expect(await store.getLifecycle(key.id)).toStrictEqual({
          revision: 0,
          minDecryptionVersion: 1,
          rotation: {},
          uses: {},
        });
        expect(await store.getLifecycle('kek_missing')).toBeUndefined();
      });

      it('updateKey adds a version and makes it primary in one write: revision + 1, key.updatedAt = at', async () => {
        const { key, v1 } = await createSample(store);
        const v2 = versionRecord(key.id, 2);
        await store.updateKey({ keyId: key.id, expectedRevision: 0, at: at(5_000), addVersion: v2, primaryVersion: 2 });
        expect(await store.getKey(key.id)).toStrictEqual({ ...key, primaryVersion: 2, updatedAt: at(5_000) });
        expect(await store.listVersions(key.id)).toStrictEqual([v1, v2]);
        expect((await store.getLifecycle(key.id))?.revision).toBe(1);
      });

      it('updateKey against a stale revision is a ConflictError (KW_CONFLICT) and changes nothing', async () => {
        const { key } = await createSample(store);
        await store.updateKey({
          keyId: key.id,
          expectedRevision: 0,
          at: at(1),
          states: [{ version: 1, state: 'disabled' }],
        });
        const before = await snapshot(store);
        await expectRejects(
          () =>
            store.updateKey({
              keyId: key.id,
              expectedRevision: 0,
              at: at(2),
              addVersion: versionRecord(key.id, 2),
              primaryVersion: 2,
            }),
          'KW_CONFLICT',
        );
        expect(await snapshot(store)).toStrictEqual(before);
        expect((await store.getLifecycle(key.id))?.revision).toBe(1);
      });

      it('of two updates made against the same revision exactly one wins; the other is KW_CONFLICT', async () => {
        const { key } = await createSample(store);
        const results = await Promise.allSettled([
          store.updateKey({
            keyId: key.id,
            expectedRevision: 0,
            at: at(1),
            addVersion: versionRecord(key.id, 2),
            primaryVersion: 2,
          }),
          store.updateKey({
            keyId: key.id,
            expectedRevision: 0,
            at: at(2),
            addVersion: versionRecord(key.id, 2),
            primaryVersion: 2,
          }),
        ]);
        expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
        expect((lost.reason as { code?: string }).code).toBe('KW_CONFLICT');
        expect((await store.listVersions(key.id)).map((v) => v.version)).toEqual([1, 2]);
      });

      it('addVersion, setPrimaryVersion and setVersionState bump the revision too, so a compare-and-swap sees them', async () => {
        const { key } = await createSample(store);
        await store.addVersion(versionRecord(key.id, 2), false);
        await store.setPrimaryVersion(key.id, 2, at(1));
        await store.setVersionState(key.id, 1, 'disabled', at(2));
        expect((await store.getLifecycle(key.id))?.revision).toBe(3);
        await expectRejects(
          () => store.updateKey({ keyId: key.id, expectedRevision: 2, at: at(3), minDecryptionVersion: 2 }),
          'KW_CONFLICT',
        );
      });

      it('updateKey to destroyed erases the wrapped material in the same write', async () => {
        const { key } = await createSample(store);
        await store.addVersion(versionRecord(key.id, 2), true);
        await store.updateKey({
          keyId: key.id,
          expectedRevision: 1,
          at: at(9),
          states: [{ version: 1, state: 'destroyed' }],
        });
        const v1 = await store.getVersion(key.id, 1);
        expect(v1?.state).toBe('destroyed');
        expect(v1?.wrappedMaterial).toHaveLength(0);
        expect(v1?.updatedAt).toStrictEqual(at(9));
      });

      it('updateKey refuses a transition the store forbids (compromised → enabled) with KW_KEY_STATE, and applies none of the update', async () => {
        const { key } = await createSample(store);
        await store.addVersion(versionRecord(key.id, 2), true);
        await store.setVersionState(key.id, 1, 'compromised', at(1));
        const before = await snapshot(store);
        const { revision } = (await store.getLifecycle(key.id)) as { revision: number };
        await expectRejects(
          () =>
            store.updateKey({
              keyId: key.id,
              expectedRevision: revision,
              at: at(2),
              addVersion: versionRecord(key.id, 3),
              primaryVersion: 3,
              states: [{ version: 1, state: 'enabled' }],
            }),
          'KW_KEY_STATE',
        );
        expect(await snapshot(store)).toStrictEqual(before);
        expect((await store.getLifecycle(key.id))?.revision).toBe(revision);
      });

      it('updateKey: an unknown key or version is KW_KEY_NOT_FOUND, an existing version number KW_KEY_EXISTS, a malformed update KW_BAD_INPUT', async () => {
        const { key } = await createSample(store);
        await expectRejects(
          () => store.updateKey({ keyId: 'kek_missing', expectedRevision: 0, at: at(1), minDecryptionVersion: 1 }),
          'KW_KEY_NOT_FOUND',
        );
        await expectRejects(
          () => store.updateKey({ keyId: key.id, expectedRevision: 0, at: at(1), primaryVersion: 7 }),
          'KW_KEY_NOT_FOUND',
        );
        await expectRejects(
          () =>
            store.updateKey({
              keyId: key.id,
              expectedRevision: 0,
              at: at(1),
              states: [{ version: 4, state: 'disabled' }],
            }),
          'KW_KEY_NOT_FOUND',
        );
        await expectRejects(
          () =>
            store.updateKey({ keyId: key.id, expectedRevision: 0, at: at(1), addVersion: versionRecord(key.id, 1) }),
          'KW_KEY_EXISTS',
        );
        await expectRejects(() => store.updateKey({ keyId: key.id, expectedRevision: -1, at: at(1) }), 'KW_BAD_INPUT');
        await expectRejects(
          () => store.updateKey({ keyId: key.id, expectedRevision: 0, at: at(1), rotation: { maxAgeMs: 0 } }),
          'KW_BAD_INPUT',
        );
        expect((await store.getLifecycle(key.id))?.revision).toBe(0);
      });

      it('updateKey stores the minimum decryption version and the rotation policy; an empty policy clears it', async () => {
        const { key } = await createSample(store);
        await store.updateKey({
          keyId: key.id,
          expectedRevision: 0,
          at: at(1),
          minDecryptionVersion: 1,
          rotation: { maxAgeMs: 86_400_000, maxUses: 1_000_000 },
        });
        expect(await store.getLifecycle(key.id)).toStrictEqual({
          revision: 1,
          minDecryptionVersion: 1,
          rotation: { maxAgeMs: 86_400_000, maxUses: 1_000_000 },
          uses: {},
        });
        await store.addVersion(versionRecord(key.id, 2), true);
        await store.updateKey({ keyId: key.id, expectedRevision: 2, at: at(2), minDecryptionVersion: 2, rotation: {} });
        const life = await store.getLifecycle(key.id);
        expect(life?.minDecryptionVersion).toBe(2);
        expect(life?.rotation).toStrictEqual({});
      });

      it('replaceRoot with expectedRootId / expectedMeta: a stale expectation is KW_CONFLICT and changes nothing; a current one commits', async () => {
        const { live } = await rootRotationSample(store);
        const update = (rootId: string): RootUpdate => ({
          versions: live.map(([k, v]) => rewrap(k, v, rootId)),
          meta: { name: 'root', value: Uint8Array.of(0x6e, 0x65, 0x77) },
          at: at(90),
        });
        const before = await snapshot(store);
        await expectRejects(
          () => store.replaceRoot({ ...update('root_a'), expectedRootId: 'root_other' }),
          'KW_CONFLICT',
        );
        await expectRejects(
          () => store.replaceRoot({ ...update('root_a'), expectedMeta: Uint8Array.of(0x6f, 0x6c, 0x65) }),
          'KW_CONFLICT',
        );
        await expectRejects(() => store.replaceRoot({ ...update('root_a'), expectedMeta: null }), 'KW_CONFLICT');
        expect(await snapshot(store)).toStrictEqual(before);
        // The first rotation commits against what it read…
        await store.replaceRoot({
          ...update('root_a'),
          expectedRootId: 'root_software_test',
          expectedMeta: Uint8Array.of(0x6f, 0x6c, 0x64),
        });
        // …and a second one that read the same old state loses.
        await expectRejects(
          () =>
            store.replaceRoot({
              ...update('root_b'),
              expectedRootId: 'root_software_test',
              expectedMeta: Uint8Array.of(0x6f, 0x6c, 0x64),
            }),
          'KW_CONFLICT',
        );
        expect((await store.getVersion('kek_orders', 1))?.rootId).toBe('root_a');
      });

      it('reserveUses returns the running total per version and leaves the revision alone; an unknown version is KW_KEY_NOT_FOUND', async () => {
        const { key } = await createSample(store);
        await store.addVersion(versionRecord(key.id, 2), true);
        expect(await store.reserveUses(key.id, 2, 64)).toBe(64);
        expect(await store.reserveUses(key.id, 2, 128)).toBe(192);
        expect(await store.reserveUses(key.id, 1, 1)).toBe(1);
        expect(await store.getLifecycle(key.id)).toMatchObject({ revision: 1, uses: { 1: 1, 2: 192 } });
        await expectRejects(() => store.reserveUses(key.id, 3, 1), 'KW_KEY_NOT_FOUND');
        await expectRejects(() => store.reserveUses(key.id, 1, 0), 'KW_BAD_INPUT');
        await expectRejects(() => store.reserveUses(key.id, 1, 1.5), 'KW_BAD_INPUT');
      });
    });

    // Leases are optional in core (LeaseStore, job-lease.ts): every store of this repository has
    // them, so their absence fails here. The clock is each store's own; the waits below only let a
    // short lease run out, they assert no duration.
    describe('leases (LeaseStore: holder, TTL, fencing token, renew, release, takeover)', () => {
      const leases = (s: KeyStore = store): KeyStore & LeaseStore => {
        const l = s as KeyStore & Partial<LeaseStore>;
        for (const m of ['acquireLease', 'renewLease', 'releaseLease', 'putMetaUnderLease'] as const) {
          if (typeof l[m] !== 'function') throw new Error(`this store has no ${m}`);
        }
        return l as KeyStore & LeaseStore;
      };
      const granted = (r: LeaseAnswer): LeaseGrant => {
        if (!('token' in r)) throw new Error(`expected a grant, got a refusal: held by ${r.heldBy}`);
        return r;
      };
      const connection = async (): Promise<KeyStore> => {
        if (!connect) return store;
        const other = await connect();
        others.push(other);
        return other;
      };
      const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

      it('a free lease is granted to the first holder with a positive token; another holder is refused with the holder and the time left', async () => {
        const a = granted(await leases().acquireLease('rewrap', 'host-a#1', 60_000));
        expect(a).toMatchObject({ name: 'rewrap', holder: 'host-a#1' });
        expect(Number.isSafeInteger(a.token) && a.token >= 1).toBe(true);
        const refused = await leases(await connection()).acquireLease('rewrap', 'host-b#2', 60_000);
        expect(refused).toMatchObject({ heldBy: 'host-a#1' });
        const left = (refused as { expiresInMs: number }).expiresInMs;
        expect(left > 0 && left <= 60_000).toBe(true);
        // Leases of other names are independent.
        granted(await leases().acquireLease('root-rotation', 'host-b#2', 60_000));
      });

      it('of 8 holders racing for one free lease (on separate connections) exactly one is granted; the others are refused naming it', async () => {
        const stores = await Promise.all(Array.from({ length: 8 }, () => connection()));
        const answers = await Promise.all(stores.map((s, i) => leases(s).acquireLease('race', `holder-${i}`, 60_000)));
        const winners = answers.filter((r): r is LeaseGrant => 'token' in r);
        expect(winners).toHaveLength(1);
        for (const r of answers) {
          if (!('token' in r)) expect(r.heldBy).toBe(winners[0]?.holder);
        }
      });

      it('the same holder acquiring again gets a new, higher token, and its earlier grant is fenced out', async () => {
        const first = granted(await leases().acquireLease('job', 'host-a#1', 60_000));
        const second = granted(await leases().acquireLease('job', 'host-a#1', 60_000));
        expect(second.token).toBeGreaterThan(first.token);
        expect(await leases().renewLease(first, 60_000)).toBe(false);
        await expectRejects(() => leases().putMetaUnderLease(first, 'job-state', Uint8Array.of(1)), 'KW_CONFLICT');
        expect(await store.getMeta('job-state')).toBeUndefined();
        expect(await leases().renewLease(second, 60_000)).toBe(true);
      });

      it('an expired lease is taken over by another holder with a higher token; the stale holder cannot renew, release or write under it', async () => {
        // A TTL long enough for its holder's write to land first on a busy machine (with 50 ms
        // the write itself was refused once in CI), short enough to wait out.
        const stale = granted(await leases().acquireLease('job', 'host-a#1', 1_000));
        await leases().putMetaUnderLease(stale, 'job-state', Uint8Array.of(1));
        await sleep(1_300);
        const other = await connection();
        const next = granted(await leases(other).acquireLease('job', 'host-b#2', 60_000));
        expect(next.token).toBeGreaterThan(stale.token);
        expect(await leases().renewLease(stale, 60_000)).toBe(false);
        await expectRejects(() => leases().putMetaUnderLease(stale, 'job-state', Uint8Array.of(2)), 'KW_CONFLICT');
        await expectRejects(() => leases().putMetaUnderLease(stale, 'job-state', undefined), 'KW_CONFLICT');
        expect(bytesOf(await store.getMeta('job-state'))).toEqual([1]);
        await leases().releaseLease(stale);
        // The stale release changed nothing: the new holder still holds it.
        expect(await leases().acquireLease('job', 'host-c#3', 60_000)).toMatchObject({ heldBy: 'host-b#2' });
        await leases(other).putMetaUnderLease(next, 'job-state', Uint8Array.of(3));
        expect(bytesOf(await store.getMeta('job-state'))).toEqual([3]);
      });

      it('a lease not renewed runs out: after its TTL, a fenced write of its holder is refused and nothing is written', async () => {
        const grant = granted(await leases().acquireLease('job', 'host-a#1', 50));
        await sleep(300);
        await expectRejects(() => leases().putMetaUnderLease(grant, 'job-state', Uint8Array.of(1)), 'KW_CONFLICT');
        expect(await store.getMeta('job-state')).toBeUndefined();
        expect(await leases().renewLease(grant, 60_000)).toBe(false);
      });

      it('renewLease extends a held grant by the TTL given (counted from the renewal)', async () => {
        const grant = granted(await leases().acquireLease('job', 'host-a#1', 5_000));
        expect(await leases().renewLease(grant, 600_000)).toBe(true);
        const refused = await leases().acquireLease('job', 'host-b#2', 60_000);
        expect((refused as { expiresInMs: number }).expiresInMs).toBeGreaterThan(5_000);
      });

      it('releaseLease frees the lease at once (the next grant has a higher token); renewing or writing under a released grant fails; releasing twice is harmless', async () => {
        const grant = granted(await leases().acquireLease('job', 'host-a#1', 60_000));
        await leases().releaseLease(grant);
        await leases().releaseLease(grant);
        expect(await leases().renewLease(grant, 60_000)).toBe(false);
        await expectRejects(() => leases().putMetaUnderLease(grant, 'job-state', Uint8Array.of(1)), 'KW_CONFLICT');
        const next = granted(await leases(await connection()).acquireLease('job', 'host-b#2', 60_000));
        expect(next.token).toBeGreaterThan(grant.token);
      });

      it('fencing tokens only grow, across releases, expiries and holders', async () => {
        const tokens: number[] = [];
        for (const holder of ['a', 'b', 'a', 'c']) {
          const g = granted(await leases().acquireLease('job', holder, 60_000));
          tokens.push(g.token);
          await leases().releaseLease(g);
        }
        tokens.push(granted(await leases().acquireLease('job', 'd', 50)).token);
        await sleep(300);
        tokens.push(granted(await leases().acquireLease('job', 'e', 60_000)).token);
        for (let i = 1; i < tokens.length; i++) expect(tokens[i]).toBeGreaterThan(tokens[i - 1] as number);
      });

      it('putMetaUnderLease writes and deletes a meta record while the grant holds', async () => {
        const grant = granted(await leases().acquireLease('job', 'host-a#1', 60_000));
        await leases().putMetaUnderLease(grant, 'job-state', Uint8Array.of(7, 7));
        expect(bytesOf(await store.getMeta('job-state'))).toEqual([7, 7]);
        await leases().putMetaUnderLease(grant, 'job-state', undefined);
        expect(await store.getMeta('job-state')).toBeUndefined();
      });

      it('bad arguments reject with InvalidInputError (KW_BAD_INPUT): empty name or holder, a TTL that is not a positive integer, a fenced write to a lease record', async () => {
        await expectRejects(() => leases().acquireLease('', 'h', 1000), 'KW_BAD_INPUT');
        await expectRejects(() => leases().acquireLease('job', '', 1000), 'KW_BAD_INPUT');
        for (const ttl of [0, -5, 1.5, Number.NaN]) {
          await expectRejects(() => leases().acquireLease('job', 'h', ttl), 'KW_BAD_INPUT');
        }
        const grant = granted(await leases().acquireLease('job', 'h', 60_000));
        await expectRejects(() => leases().renewLease(grant, 0), 'KW_BAD_INPUT');
        await expectRejects(() => leases().putMetaUnderLease(grant, 'lease/job', Uint8Array.of(1)), 'KW_BAD_INPUT');
        await expectRejects(
          () => leases().putMetaUnderLease(grant, 'job-state', 'text' as unknown as Uint8Array),
          'KW_BAD_INPUT',
        );
        expect(await store.getMeta('job-state')).toBeUndefined();
      });

      it('every lease call after close() rejects with ClosedError (KW_CLOSED)', async () => {
        const grant = granted(await leases().acquireLease('job', 'h', 60_000));
        await store.close();
        await expectRejects(() => leases().acquireLease('job', 'h', 1000), 'KW_CLOSED');
        await expectRejects(() => leases().renewLease(grant, 1000), 'KW_CLOSED');
        await expectRejects(() => leases().releaseLease(grant), 'KW_CLOSED');
        await expectRejects(() => leases().putMetaUnderLease(grant, 'job-state', Uint8Array.of(1)), 'KW_CLOSED');
      });
    });

    describe('close', () => {
      it('every operation after close() rejects with ClosedError (KW_CLOSED)', async () => {
        const { key, v1 } = await createSample(store);
        await store.close();
        const calls: Array<() => Promise<unknown>> = [
          () => store.createKey(keyRecord({ id: 'kek_2', name: 'two' }), versionRecord('kek_2', 1)),
          () => store.getKey(key.id),
          () => store.listKeys(),
          () => store.getVersion(key.id, 1),
          () => store.listVersions(key.id),
          () => store.addVersion(versionRecord(key.id, 2), true),
          () => store.setPrimaryVersion(key.id, 1, at(1)),
          () => store.setVersionState(key.id, 1, 'disabled', at(1)),
          () => store.getMeta('m'),
          () => store.putMeta('m', Uint8Array.of(1)),
          () => store.deleteMeta('m'),
          () =>
            store.replaceRoot({
              versions: [{ keyId: key.id, version: 1, rootId: 'root_new', wrappedMaterial: material() }],
              meta: { name: 'root', value: Uint8Array.of(1) },
              at: at(1),
            }),
        ];
        for (const call of calls) await expectRejects(call, 'KW_CLOSED', [v1.wrappedMaterial]);
      });

      it('close() is idempotent', async () => {
        await store.close();
        await store.close();
      });
    });
  });
}
