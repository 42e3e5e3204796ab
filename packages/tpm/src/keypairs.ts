/**
 * The TPM root's key-pair capability (core's KeyPairRoot): an unrestricted ECC or RSA signing key
 * (TPM 2.0 Part 1 §27: sign = 1, restricted = 0, decrypt = 0; fixedTPM, fixedParent,
 * sensitiveDataOrigin, userWithAuth, noDA) created under the root's storage key with TPM2_Create,
 * loaded with TPM2_Load, made persistent with TPM2_EvictControl at a random owner handle in
 * 0x81400000..0x817FFFFF, and the transient copy flushed at once (swtpm has no resource manager).
 * Persistent, not a public ‖ private blob: a blob copied anywhere stays loadable under the
 * storage key, so `destroy` could not keep its promise; evicting the persistent object does.
 *
 * The key's auth value is derived like a KEK object's (root.ts): HMAC-SHA-256(K, domain ‖ handle)
 * for a sealable root (K exists only while unsealed), SHA-256(domain ‖ handle) otherwise; TPM2_Sign
 * runs in the root's HMAC session salted with the storage key, so the auth value never crosses the
 * TPM interface. The handle Keywarden stores is 0x01 ‖ algorithm code ‖ u32 persistent handle ‖
 * the object's name (TPM2B_NAME contents): a sign or destroy finds the object and checks its name,
 * so another object later put at the same handle is never used.
 *
 * Signing: TPM2_Sign with TPM_ALG_ECDSA over SHA-256 (P-256) or SHA-384 (P-384) of the data,
 * or TPM_ALG_RSASSA over SHA-256 (RSA-2048) or SHA-384 (RSA-3072), e = 65537, with the NULL
 * hash-check ticket; the TPMS_SIGNATURE_ECDSA's r and s are returned as r ‖ s, an RSA signature
 * as it is.
 */
import { createHash, createPublicKey } from 'node:crypto';
import {
  InvalidInputError,
  KeyDestroyedError,
  KeyNotFoundError,
  type KeyPairRoot,
  type RootKeyPair,
  type RootKeyPairAlgorithm,
  UnsupportedCapabilityError,
  wipe,
} from '@keywarden/core';
import {
  type Esys,
  ESYS_TR,
  type EsysTR,
  isTpmRc,
  type PublicTemplate,
  TPM2_ALG,
  TPM2_HR,
  TPMA_OBJECT,
  TPMA_SESSION,
  unmarshalTpm2bPublic,
  WireReader,
} from '@keywarden/tss2';

type TpmKeyPairAlgorithm = 'ECDSA-P256' | 'ECDSA-P384' | 'RSA-2048' | 'RSA-3072';

interface Params {
  code: number;
  /** ECC: the curve (TPM 2.0 Part 2 §6.4 TPM_ECC_CURVE: NIST_P256 = 3, NIST_P384 = 4); RSA: none. */
  curve?: number;
  crv?: string;
  /** ECC: bytes of r and s; RSA: bytes of the modulus. */
  bytes: number;
  hash: number;
  node: string;
  /** The TPM2_Sign scheme: TPM_ALG_ECDSA or TPM_ALG_RSASSA (PKCS#1 v1.5). */
  scheme: number;
}

const PARAMS: Record<TpmKeyPairAlgorithm, Params> = {
  'ECDSA-P256': {
    code: 1,
    curve: 0x0003,
    crv: 'P-256',
    bytes: 32,
    hash: TPM2_ALG.SHA256,
    node: 'sha256',
    scheme: TPM2_ALG.ECDSA,
  },
  'ECDSA-P384': {
    code: 2,
    curve: 0x0004,
    crv: 'P-384',
    bytes: 48,
    hash: TPM2_ALG.SHA384,
    node: 'sha384',
    scheme: TPM2_ALG.ECDSA,
  },
  'RSA-2048': { code: 3, bytes: 256, hash: TPM2_ALG.SHA256, node: 'sha256', scheme: TPM2_ALG.RSASSA },
  // swtpm (libtpms 0.9) makes RSA-3072 keys (`tpm2_testparms rsa3072`); a TPM that cannot refuses
  // TPM2_Create with TPM_RC_KEY_SIZE / TPM_RC_VALUE.
  'RSA-3072': { code: 4, bytes: 384, hash: TPM2_ALG.SHA384, node: 'sha384', scheme: TPM2_ALG.RSASSA },
};
const BY_CODE = new Map(Object.entries(PARAMS).map(([a, p]) => [p.code, a as TpmKeyPairAlgorithm]));
const HANDLE_FORMAT = 0x01;
const FIRST = 0x81400000;
const SPAN = 0x00400000;
const AUTH_DOMAIN = Buffer.from('keywarden/tpm/keypair-auth/v1\0', 'utf8');

/** What the root lends: its connection (storage key and HMAC session), run alone and only while
 * unsealed, and the auth derivation under its secret. */
export interface TpmKeyPairHost {
  withTpm<T>(body: (c: { esys: Esys; primary: EsysTR; session: EsysTR }) => Promise<T>): Promise<T>;
  /** HMAC-SHA-256(K, data) for a sealable root, SHA-256(data) otherwise. */
  derive(data: Uint8Array): Uint8Array;
}

/** What the TPM reports about a key pair's object (TPM2_ReadPublic). */
export interface TpmKeyPairAttributes {
  objectAttributes: number;
  fixedTPM: boolean;
  fixedParent: boolean;
  sensitiveDataOrigin: boolean;
  sign: boolean;
  restricted: boolean;
  decrypt: boolean;
}

export class TpmKeyPairs implements KeyPairRoot {
  readonly algorithms: readonly RootKeyPairAlgorithm[] = Object.freeze(Object.keys(PARAMS) as TpmKeyPairAlgorithm[]);
  readonly #host: TpmKeyPairHost;

  constructor(host: TpmKeyPairHost) {
    this.#host = host;
  }

  async generate(algorithm: RootKeyPairAlgorithm, _label: string): Promise<RootKeyPair> {
    const p = PARAMS[algorithm as TpmKeyPairAlgorithm];
    if (!p) throw new UnsupportedCapabilityError(`tpm: the TPM root cannot make ${String(algorithm)} key pairs`);
    return this.#host.withTpm(async (c) => {
      const taken = new Set(await c.esys.handles(TPM2_HR.PERSISTENT));
      let ph = 0;
      for (let i = 0; i < 16 && (ph === 0 || taken.has(ph)); i++) {
        ph = FIRST + (createHash('sha256').update(String(Math.random())).digest().readUInt32BE(0) % SPAN);
      }
      if (taken.has(ph)) throw new InvalidInputError('tpm: no free persistent handle for a key pair');
      const auth = this.#auth(ph);
      let loaded: EsysTR | undefined;
      try {
        const objectAttributes =
          TPMA_OBJECT.FIXEDTPM |
          TPMA_OBJECT.FIXEDPARENT |
          TPMA_OBJECT.SENSITIVEDATAORIGIN |
          TPMA_OBJECT.USERWITHAUTH |
          TPMA_OBJECT.NODA |
          TPMA_OBJECT.SIGN_ENCRYPT;
        const template: PublicTemplate = p.curve
          ? { type: 'ecc', nameAlg: TPM2_ALG.SHA256, objectAttributes, symmetric: null, curve: p.curve }
          : {
              type: 'rsa',
              nameAlg: TPM2_ALG.SHA256,
              objectAttributes,
              symmetric: null,
              rsaBits: 8 * p.bytes,
              rsaExponent: 0,
            };
        // The auth value crosses the interface encrypted (the session's DECRYPT attribute).
        await c.esys.setSessionAttributes(c.session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT);
        const created = await c.esys.create(c.primary, template, { userAuth: auth, sessions: [c.session] });
        loaded = await c.esys.load(c.primary, created.outPrivate, created.outPublic, [ESYS_TR.PASSWORD]);
        const persistent = await c.esys.evictControl(ESYS_TR.RH_OWNER, loaded, ph);
        const { name } = await c.esys.readPublic(persistent);
        await c.esys.trClose(persistent).catch(() => undefined);
        const der = createPublicKey({ key: jwkOf(created.outPublic, p), format: 'jwk' }).export({
          type: 'spki',
          format: 'der',
        });
        const handle = new Uint8Array(6 + name.length);
        handle[0] = HANDLE_FORMAT;
        handle[1] = p.code;
        new DataView(handle.buffer).setUint32(2, ph);
        handle.set(name, 6);
        return { handle, publicKey: new Uint8Array(der) };
      } finally {
        wipe(auth);
        if (loaded !== undefined) await c.esys.flushContext(loaded).catch(() => undefined);
      }
    });
  }

  async sign(handle: Uint8Array, data: Uint8Array): Promise<Uint8Array> {
    const h = parse(handle);
    const p = PARAMS[h.algorithm];
    const digest = createHash(p.node).update(data).digest();
    return this.#host.withTpm(async (c) => {
      const tr = await this.#find(c.esys, h);
      const auth = this.#auth(h.persistent);
      try {
        await c.esys.trSetAuth(tr, auth);
        const wire = await this.#sign(c, tr, digest, p);
        // TPMT_SIGNATURE: sigAlg, then TPMS_SIGNATURE_RSA: hash, TPM2B signature, or
        // TPMS_SIGNATURE_ECDSA: hash, TPM2B r, TPM2B s (Part 2 §11.3.4–11.3.5).
        const r = new WireReader(wire);
        if (r.u16() !== p.scheme) throw new InvalidInputError('tpm: TPM2_Sign returned another scheme');
        r.u16();
        if (p.scheme === TPM2_ALG.RSASSA) {
          const sig = r.tpm2b();
          if (sig.length !== p.bytes) throw new InvalidInputError('tpm: an RSA signature of the wrong length');
          return sig;
        }
        const sigR = r.tpm2b();
        const sigS = r.tpm2b();
        const out = new Uint8Array(2 * p.bytes);
        if (sigR.length > p.bytes || sigS.length > p.bytes)
          throw new InvalidInputError('tpm: oversized ECDSA signature');
        out.set(sigR, p.bytes - sigR.length);
        out.set(sigS, 2 * p.bytes - sigS.length);
        return out;
      } finally {
        wipe(auth);
        await c.esys.trClose(tr).catch(() => undefined);
      }
    });
  }

  async destroy(handle: Uint8Array): Promise<void> {
    const h = parse(handle);
    await this.#host.withTpm(async (c) => {
      let tr: EsysTR;
      try {
        tr = await this.#find(c.esys, h);
      } catch (err) {
        if (KeyDestroyedError.isInstance(err)) return; // idempotent
        throw err;
      }
      // The owner hierarchy may evict any object: first prove the key is this root's (its auth
      // value opens it: one signature over a zero digest), so no root destroys another's key pair.
      const auth = this.#auth(h.persistent);
      try {
        await c.esys.trSetAuth(tr, auth);
        const p = PARAMS[h.algorithm];
        await this.#sign(c, tr, new Uint8Array(p.hash === TPM2_ALG.SHA384 ? 48 : 32), p);
      } catch (err) {
        await c.esys.trClose(tr).catch(() => undefined);
        throw err;
      } finally {
        wipe(auth);
      }
      await c.esys.evictControl(ESYS_TR.RH_OWNER, tr, h.persistent);
    });
  }

  /** TPM2_Sign in the root's HMAC session; a refused auth value is a key of another root. */
  async #sign(c: { esys: Esys; session: EsysTR }, tr: EsysTR, digest: Uint8Array, p: Params): Promise<Uint8Array> {
    await c.esys.setSessionAttributes(c.session, TPMA_SESSION.CONTINUESESSION);
    try {
      return await c.esys.sign(tr, digest, { algorithm: p.scheme, hash: p.hash }, [c.session]);
    } catch (err) {
      if (isTpmRc(err, 'TPM_RC_BAD_AUTH') || isTpmRc(err, 'TPM_RC_AUTH_FAIL')) {
        throw new KeyNotFoundError('tpm: the key pair is not one of this root (the TPM refused its auth value)');
      }
      throw err;
    }
  }

  /** TPM2_ReadPublic of the key pair's object: the attributes the TPM enforces for it. */
  async attributes(handle: Uint8Array): Promise<TpmKeyPairAttributes> {
    const h = parse(handle);
    return this.#host.withTpm(async (c) => {
      const tr = await this.#find(c.esys, h);
      try {
        const pub = unmarshalTpm2bPublic(new WireReader((await c.esys.readPublic(tr)).outPublic));
        const a = pub.objectAttributes;
        return {
          objectAttributes: a,
          fixedTPM: (a & TPMA_OBJECT.FIXEDTPM) !== 0,
          fixedParent: (a & TPMA_OBJECT.FIXEDPARENT) !== 0,
          sensitiveDataOrigin: (a & TPMA_OBJECT.SENSITIVEDATAORIGIN) !== 0,
          sign: (a & TPMA_OBJECT.SIGN_ENCRYPT) !== 0,
          restricted: (a & TPMA_OBJECT.RESTRICTED) !== 0,
          decrypt: (a & TPMA_OBJECT.DECRYPT) !== 0,
        };
      } finally {
        await c.esys.trClose(tr).catch(() => undefined);
      }
    });
  }

  /** The persistent object, checked to be the one the handle names; KeyDestroyedError when gone. */
  async #find(esys: Esys, h: Parsed): Promise<EsysTR> {
    if (!(await esys.handles(TPM2_HR.PERSISTENT)).includes(h.persistent)) {
      throw new KeyDestroyedError('tpm: the key pair is destroyed (its persistent object is gone)');
    }
    const tr = await esys.trFromTPMPublic(h.persistent);
    const { name } = await esys.readPublic(tr);
    if (!Buffer.from(name).equals(Buffer.from(h.name))) {
      await esys.trClose(tr).catch(() => undefined);
      throw new KeyDestroyedError('tpm: the key pair is destroyed (another object is at its handle)');
    }
    return tr;
  }

  #auth(persistent: number): Uint8Array {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(persistent >>> 0);
    return this.#host.derive(new Uint8Array(Buffer.concat([AUTH_DOMAIN, b])));
  }
}

/** The public key as a JWK, from the public area's unique field (ECC x, y; RSA modulus, e = 65537). */
function jwkOf(outPublic: Uint8Array, p: Params): Record<string, string> {
  const pub = unmarshalTpm2bPublic(new WireReader(outPublic));
  const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64url');
  if (p.curve) {
    const [x, y] = pub.unique ?? [];
    if (pub.type !== 'ecc' || !x || !y || x.length !== p.bytes || y.length !== p.bytes) {
      throw new InvalidInputError('tpm: the TPM returned an unexpected ECC public point');
    }
    return { kty: 'EC', crv: p.crv as string, x: b64(x), y: b64(y) };
  }
  const [n] = pub.unique ?? [];
  if (pub.type !== 'rsa' || !n || n.length !== p.bytes || (pub.rsaExponent !== 0 && pub.rsaExponent !== 65537)) {
    throw new InvalidInputError('tpm: the TPM returned an unexpected RSA public key');
  }
  return { kty: 'RSA', n: b64(n), e: 'AQAB' };
}

interface Parsed {
  algorithm: TpmKeyPairAlgorithm;
  persistent: number;
  name: Uint8Array;
}

function parse(handle: Uint8Array): Parsed {
  if (!(handle instanceof Uint8Array) || handle.length < 8 || handle.length > 6 + 66 || handle[0] !== HANDLE_FORMAT) {
    throw new InvalidInputError('tpm: not a TPM key pair handle');
  }
  const algorithm = BY_CODE.get(handle[1] as number);
  if (!algorithm) throw new InvalidInputError('tpm: the key pair handle names an unknown algorithm');
  const persistent = new DataView(handle.buffer, handle.byteOffset, handle.byteLength).getUint32(2);
  if (persistent < FIRST || persistent >= FIRST + SPAN) throw new InvalidInputError('tpm: not a TPM key pair handle');
  return { algorithm, persistent, name: handle.slice(6) };
}
