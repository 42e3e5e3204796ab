/**
 * unsealRootWithQuorum: split knowledge over any sealable root, dispatched on the secret the root
 * describes. The roots here are small in-test devices that genuinely lock their key behind a PIN
 * or auth value (checked in constant time, attempts counted) — not mocks.
 */
import { randomBytes } from 'node:crypto';
import {
  constantTimeEqual,
  gcmOpen,
  gcmSeal,
  KeystoreSealedError,
  MemoryKeyStore,
  type RootDescription,
  type RootOfTrust,
  type Sealable,
  SoftwareRoot,
  UnsealError,
  type UnsealSecretDescription,
} from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import { SHARE_PURPOSE_OF_SECRET, splitHardwareSecret, unsealRootWithQuorum } from '../src/index.js';
import { expectKwError, forgeShare } from './_helpers.js';

class PinLockedRoot implements RootOfTrust, Sealable {
  readonly sealable: Sealable = this;
  attempts = 0;
  readonly #key = new Uint8Array(randomBytes(32));
  readonly #secret: Uint8Array;
  readonly #kind: 'user-pin' | 'auth-value';
  #open = false;

  constructor(secret: Uint8Array, kind: 'user-pin' | 'auth-value') {
    this.#secret = secret.slice();
    this.#kind = kind;
  }
  describe(): RootDescription {
    return { kind: 'pin-test', id: 'pinroot_1', label: 'in-test PIN-locked device', wrapAlgorithm: 'AES-256-GCM' };
  }
  async wrapKey(m: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    if (!this.#open) throw new KeystoreSealedError('root: pin-test: sealed');
    const n = new Uint8Array(randomBytes(12));
    return Uint8Array.from([...n, ...gcmSeal(this.#key, n, m, aad)]);
  }
  async unwrapKey(w: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    if (!this.#open) throw new KeystoreSealedError('root: pin-test: sealed');
    return gcmOpen(this.#key, w.subarray(0, 12), w.subarray(12), aad, 'root');
  }
  isSealed(): boolean {
    return !this.#open;
  }
  async seal(): Promise<void> {
    this.#open = false;
  }
  async unseal(secret: Uint8Array): Promise<void> {
    this.attempts++;
    if (secret.length !== this.#secret.length || !constantTimeEqual(secret, this.#secret)) {
      throw new UnsealError('root: pin-test: wrong PIN');
    }
    this.#open = true;
  }
  unsealSecret(): UnsealSecretDescription {
    return { kind: this.#kind, minBytes: 4, maxBytes: 64, label: 'in-test PIN' };
  }
  async close(): Promise<void> {
    this.#open = false;
  }
}

const enc = (s: string) => new TextEncoder().encode(s);

describe('unsealRootWithQuorum', () => {
  it('an HSM-like root (user PIN): 3 of 5 custodians unseal it; the PIN is recombined, never held by one person', async () => {
    const pin = enc('7391-4420-8813');
    const root = new PinLockedRoot(pin, 'user-pin');
    const set = await splitHardwareSecret(pin, { purpose: SHARE_PURPOSE_OF_SECRET['user-pin']! });
    const expectSet = { shareSetId: set.shareSetId, threshold: 3, shares: 5 };
    await unsealRootWithQuorum(root, set.encoded.slice(1, 4), expectSet);
    expect(root.isSealed()).toBe(false);
    const m = new Uint8Array(randomBytes(32));
    expect(await root.unwrapKey(await root.wrapKey(m, enc('a')), enc('a'))).toEqual(m);
    expect(root.attempts).toBe(1);
  });

  it('a TPM-like root (auth value) takes tpm-auth shares and refuses HSM PIN shares before the device sees anything', async () => {
    const auth = enc('tpm-auth-value-0123456789');
    const root = new PinLockedRoot(auth, 'auth-value');
    const hsm = await splitHardwareSecret(auth, { purpose: 'hsm-pin' });
    await expectKwError(
      () => unsealRootWithQuorum(root, hsm.encoded.slice(0, 3)),
      'KW_SHARE',
      /purpose|hsm-pin|tpm-auth/,
    );
    expect(root.attempts).toBe(0);
    const tpm = await splitHardwareSecret(auth, { purpose: 'tpm-auth' });
    await unsealRootWithQuorum(root, tpm.encoded.slice(2, 5));
    expect(root.isSealed()).toBe(false);
  });

  it('too few shares, shares of another set, or a forged share: ShareError, the root stays sealed and the device sees no attempt', async () => {
    const pin = enc('5512-0934-7781');
    const root = new PinLockedRoot(pin, 'user-pin');
    const set = await splitHardwareSecret(pin, { purpose: 'hsm-pin' });
    const other = await splitHardwareSecret(enc('0000-1111-2222'), { purpose: 'hsm-pin' });
    const expectSet = { shareSetId: set.shareSetId, threshold: 3, shares: 5 };
    await expectKwError(() => unsealRootWithQuorum(root, set.encoded.slice(0, 2), expectSet), 'KW_SHARE', /./);
    await expectKwError(
      () => unsealRootWithQuorum(root, [set.encoded[0]!, set.encoded[1]!, other.encoded[2]!]),
      'KW_SHARE',
      /./,
    );
    await expectKwError(
      () => unsealRootWithQuorum(root, [set.encoded[0]!, set.encoded[1]!, forgeShare(set.encoded[2]!, 3)], expectSet),
      'KW_SHARE',
      /./,
    );
    expect(root.isSealed()).toBe(true);
    expect(root.attempts).toBe(0);
  });

  it('the software root keeps its own path; a root that cannot be sealed is an UnsupportedCapabilityError', async () => {
    const store = new MemoryKeyStore();
    const software = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    await expectKwError(() => unsealRootWithQuorum(software, []), 'KW_BAD_INPUT', /unsealWithShares/);
    const plain: RootOfTrust = {
      describe: () => software.describe(),
      wrapKey: software.wrapKey.bind(software),
      unwrapKey: software.unwrapKey.bind(software),
      close: software.close.bind(software),
    };
    await expectKwError(() => unsealRootWithQuorum(plain, []), 'KW_UNSUPPORTED', /cannot be sealed/);
  });
});
