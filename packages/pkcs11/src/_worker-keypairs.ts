/**
 * Key pair calls of a pool worker (_worker.ts dispatches the "kp-*" requests here, with its own
 * session, recovery and error mapping passed in): C_GenerateKeyPair, C_SignInit + C_Sign and
 * C_DestroyObject on private/public key objects found by CKA_ID.
 *
 * Templates (PKCS#11 v2.40 §4.8–4.9, §2.3 EC, §2.1 RSA): the private key is a token object
 * (CKA_TOKEN), readable only after login (CKA_PRIVATE), CKA_SENSITIVE=true and
 * CKA_EXTRACTABLE=false from birth (so the token sets CKA_ALWAYS_SENSITIVE and
 * CKA_NEVER_EXTRACTABLE), unmodifiable, and usable for C_Sign only (no decrypt, unwrap, derive).
 * The public key is a token object with CKA_VERIFY only. Both carry the same CKA_LABEL and CKA_ID.
 *
 * Ed25519 (PKCS#11 3.0 §2.3.5, §2.3.14): CKM_EC_EDWARDS_KEY_PAIR_GEN with CKK_EC_EDWARDS and
 * CKA_EC_PARAMS the DER OID 1.3.101.112 (RFC 8410 id-Ed25519), signed with CKM_EDDSA without
 * parameters (pure Ed25519, over the whole message). pkcs11js 2 and graphene name none of these, so
 * their numeric values are written here; a token offers Ed25519 only when its C_GetMechanismList
 * has both mechanisms (kp-algorithms).
 */
import { createHash, createPublicKey } from 'node:crypto';
import { createRequire } from 'node:module';
import * as graphene from 'graphene-pk11';
import type * as Pkcs11js from 'pkcs11js';

const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof Pkcs11js;

/** The algorithms a PKCS#11 root can make (core's RootKeyPairAlgorithm); Ed25519 only on a token
 * whose mechanism list has CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA (SoftHSM2 2.6 built with
 * OpenSSL ≥ 1.1.1 has them). */
export type Pkcs11KeyPairAlgorithm = 'ECDSA-P256' | 'ECDSA-P384' | 'RSA-2048' | 'RSA-3072' | 'Ed25519';

/** PKCS#11 3.0 constants pkcs11js 2 and graphene do not name (pkcs11t.h). */
export const CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055;
export const CKM_EDDSA = 0x1057;
export const CKK_EC_EDWARDS = 0x40;
/** CKA_EC_PARAMS of Ed25519: the DER OBJECT IDENTIFIER 1.3.101.112 (RFC 8410 §3). */
const ED25519_PARAMS = Uint8Array.of(0x06, 0x03, 0x2b, 0x65, 0x70);
const ED25519_PUBLIC_BYTES = 32;

export type KeyPairRequest =
  | { seq: number; op: 'kp-generate'; algorithm: Pkcs11KeyPairAlgorithm; label: string; id: Uint8Array }
  /** Reply: the signature, or null when no private key object has the CKA_ID (destroyed). */
  | { seq: number; op: 'kp-sign'; algorithm: Pkcs11KeyPairAlgorithm; id: Uint8Array; data: Uint8Array }
  /** Destroy the private and public key objects with the CKA_ID, or (prefix) every key pair object
   * whose CKA_ID begins with `id` and is longer. Reply: the number of objects destroyed. */
  | { seq: number; op: 'kp-destroy'; id: Uint8Array; prefix?: boolean }
  /** Reply: the algorithms the token's mechanism list allows (C_GetMechanismList). */
  | { seq: number; op: 'kp-algorithms' };

/** What the worker lends: its session (logged in), its recovery loop and its checked call. */
export interface KeyPairWorkerContext {
  current(): graphene.Session;
  withRecovery<T>(f: () => T): T;
  call<T>(fn: string, f: () => T): T;
  loggedIn(s: graphene.Session): boolean;
}

interface Params {
  ec?: { curve: 'secp256r1' | 'secp384r1'; jwk: 'P-256' | 'P-384'; bytes: number };
  rsaBits?: number;
  /** Ed25519: no hash of ours, the token signs the whole message. */
  ed?: true;
  hash: 'sha256' | 'sha384' | null;
  /** The C_Sign mechanism: raw ECDSA over our digest, hash-and-sign PKCS#1 v1.5, or EdDSA. */
  mechanism: number;
}

function paramsOf(algorithm: Pkcs11KeyPairAlgorithm): Params {
  switch (algorithm) {
    case 'ECDSA-P256':
      return { ec: { curve: 'secp256r1', jwk: 'P-256', bytes: 32 }, hash: 'sha256', mechanism: pkcs11js.CKM_ECDSA };
    case 'ECDSA-P384':
      return { ec: { curve: 'secp384r1', jwk: 'P-384', bytes: 48 }, hash: 'sha384', mechanism: pkcs11js.CKM_ECDSA };
    case 'RSA-2048':
      return { rsaBits: 2048, hash: 'sha256', mechanism: pkcs11js.CKM_SHA256_RSA_PKCS };
    case 'RSA-3072':
      return { rsaBits: 3072, hash: 'sha384', mechanism: pkcs11js.CKM_SHA384_RSA_PKCS };
    case 'Ed25519':
      return { ed: true, hash: null, mechanism: CKM_EDDSA };
    default:
      throw new Error(`unknown key pair algorithm ${String(algorithm)}`);
  }
}

export function keyPairOp(r: KeyPairRequest, ctx: KeyPairWorkerContext): unknown {
  switch (r.op) {
    case 'kp-generate':
      return generate(r, ctx);
    case 'kp-sign':
      return sign(r, ctx);
    case 'kp-destroy':
      return destroy(r, ctx);
    case 'kp-algorithms':
      return algorithmsOf(ctx);
  }
}

function generate(r: Extract<KeyPairRequest, { op: 'kp-generate' }>, ctx: KeyPairWorkerContext): Uint8Array {
  const p = paramsOf(r.algorithm);
  return ctx.withRecovery(() => {
    const s = ctx.current();
    const id = Buffer.from(r.id);
    const common = { token: true, label: r.label, id };
    const publicTemplate: graphene.ITemplate = {
      ...common,
      class: graphene.ObjectClass.PUBLIC_KEY,
      private: false,
      modifiable: false,
      verify: true,
      encrypt: false,
      wrap: false,
      derive: false,
      ...(p.ed
        ? { keyType: CKK_EC_EDWARDS, paramsEC: Buffer.from(ED25519_PARAMS) }
        : p.ec
          ? { keyType: graphene.KeyType.EC, paramsEC: graphene.NamedCurve.getByName(p.ec.curve).value }
          : { keyType: graphene.KeyType.RSA, modulusBits: p.rsaBits, publicExponent: Buffer.from([1, 0, 1]) }),
    };
    const privateTemplate: graphene.ITemplate = {
      ...common,
      class: graphene.ObjectClass.PRIVATE_KEY,
      keyType: p.ed ? CKK_EC_EDWARDS : p.ec ? graphene.KeyType.EC : graphene.KeyType.RSA,
      private: true,
      sensitive: true,
      extractable: false,
      modifiable: false,
      sign: true,
      decrypt: false,
      unwrap: false,
      derive: false,
    };
    const mech = p.ed ? CKM_EC_EDWARDS_KEY_PAIR_GEN : p.ec ? graphene.KeyGenMechanism.EC : graphene.KeyGenMechanism.RSA;
    const pair = ctx.call('C_GenerateKeyPair', () => s.generateKeyPair(mech, publicTemplate, privateTemplate));
    try {
      return spkiOf(pair.publicKey, p, ctx);
    } catch (err) {
      // A key pair whose public key cannot be read back is of no use: do not leave it on the token.
      for (const o of [pair.privateKey, pair.publicKey]) {
        try {
          o.destroy();
        } catch {
          // Best effort.
        }
      }
      throw err;
    }
  });
}

/** SubjectPublicKeyInfo DER of the public key object, encoded by node:crypto from a JWK (no DER by hand). */
function spkiOf(key: graphene.PublicKey, p: Params, ctx: KeyPairWorkerContext): Uint8Array {
  let jwk: Record<string, string>;
  if (p.ed) {
    const raw = ctx.call('C_GetAttributeValue', () => key.getAttribute({ pointEC: null }).pointEC as Buffer);
    // PKCS#11 3.0 §2.3.5: CKA_EC_POINT of an Edwards key is the DER OCTET STRING of the 32-byte
    // public key (RFC 8032 encoding), as SoftHSM2 gives it; some tokens give the bare 32 bytes.
    const n = ED25519_PUBLIC_BYTES;
    let point: Buffer;
    if (raw.length === n + 2 && raw[0] === 0x04 && raw[1] === n) point = raw.subarray(2);
    else if (raw.length === n) point = raw;
    else throw new Error('the token returned a CKA_EC_POINT of an unexpected length for Ed25519');
    jwk = { kty: 'OKP', crv: 'Ed25519', x: point.toString('base64url') };
  } else if (p.ec) {
    const raw = ctx.call('C_GetAttributeValue', () => key.getAttribute({ pointEC: null }).pointEC as Buffer);
    const n = p.ec.bytes;
    // PKCS#11 v2.40 §2.3.3: CKA_EC_POINT is "DER-encoding of ANSI X9.62 ECPoint value Q", an OCTET
    // STRING (SoftHSM2); some tokens give the bare point. Either way the point is uncompressed:
    // 0x04 ‖ x ‖ y (2n + 1 bytes, under 128, so the OCTET STRING header is 0x04 ‖ one length byte).
    let point: Buffer;
    if (raw.length === 2 * n + 3 && raw[0] === 0x04 && raw[1] === 2 * n + 1) point = raw.subarray(2);
    else if (raw.length === 2 * n + 1) point = raw;
    else throw new Error('the token returned a CKA_EC_POINT of an unexpected length');
    if (point[0] !== 0x04) throw new Error('the token returned a compressed or invalid EC point');
    jwk = {
      kty: 'EC',
      crv: p.ec.jwk,
      x: point.subarray(1, 1 + n).toString('base64url'),
      y: point.subarray(1 + n).toString('base64url'),
    };
  } else {
    const attrs = ctx.call('C_GetAttributeValue', () => key.getAttribute({ modulus: null, publicExponent: null }));
    jwk = {
      kty: 'RSA',
      n: (attrs.modulus as Buffer).toString('base64url'),
      e: (attrs.publicExponent as Buffer).toString('base64url'),
    };
  }
  const der = createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'der' });
  return new Uint8Array(der.buffer, der.byteOffset, der.byteLength);
}

function findPrivateKey(s: graphene.Session, id: Uint8Array, ctx: KeyPairWorkerContext): Buffer | undefined {
  const found = ctx.call('C_FindObjects', () =>
    s.find({ class: graphene.ObjectClass.PRIVATE_KEY, id: Buffer.from(id) }),
  );
  if (found.length === 1) return found.items(0).handle;
  // Logged out, private objects are invisible: a recoverable failure (the worker logs in again).
  if (!ctx.loggedIn(s)) throw new Error('C_FindObjects: CKR_USER_NOT_LOGGED_IN');
  if (found.length > 1) throw new Error('C_FindObjects: CKR_GENERAL_ERROR (two private keys with one CKA_ID)');
  return undefined;
}

function sign(r: Extract<KeyPairRequest, { op: 'kp-sign' }>, ctx: KeyPairWorkerContext): Uint8Array | null {
  const p = paramsOf(r.algorithm);
  // CKM_ECDSA signs the digest it is given (PKCS#11 v2.40 §2.3.6); the hash-and-sign RSA
  // mechanisms hash inside the token; CKM_EDDSA signs the whole message (PureEdDSA).
  const input = p.ec && p.hash ? createHash(p.hash).update(r.data).digest() : Buffer.from(r.data);
  return ctx.withRecovery(() => {
    const s = ctx.current();
    const h = findPrivateKey(s, r.id, ctx);
    if (!h) return null;
    ctx.call('C_SignInit', () => s.lib.C_SignInit(s.handle, { mechanism: p.mechanism }, h));
    const out = Buffer.alloc(512);
    const sig = ctx.call('C_Sign', () => s.lib.C_Sign(s.handle, input, out));
    return new Uint8Array(sig.buffer, sig.byteOffset, sig.byteLength);
  });
}

/** The algorithms this token's mechanism list allows: EC and RSA always (the root requires them),
 * Ed25519 when both CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA are listed. */
function algorithmsOf(ctx: KeyPairWorkerContext): Pkcs11KeyPairAlgorithm[] {
  const s = ctx.current();
  const list = ctx.call('C_GetMechanismList', () => s.lib.C_GetMechanismList(s.slot.handle));
  const has = (m: number) => list.includes(m);
  const out: Pkcs11KeyPairAlgorithm[] = ['ECDSA-P256', 'ECDSA-P384', 'RSA-2048', 'RSA-3072'];
  if (has(CKM_EC_EDWARDS_KEY_PAIR_GEN) && has(CKM_EDDSA)) out.push('Ed25519');
  return out;
}

function destroy(r: Extract<KeyPairRequest, { op: 'kp-destroy' }>, ctx: KeyPairWorkerContext): number {
  return ctx.withRecovery(() => {
    const s = ctx.current();
    const want = Buffer.from(r.id);
    let n = 0;
    for (const cls of [graphene.ObjectClass.PRIVATE_KEY, graphene.ObjectClass.PUBLIC_KEY]) {
      const found = ctx.call('C_FindObjects', () => s.find(r.prefix ? { class: cls } : { class: cls, id: want }));
      for (let i = 0; i < found.length; i++) {
        const o = found.items(i);
        if (r.prefix) {
          const id = ctx.call('C_GetAttributeValue', () => o.getAttribute({ id: null }).id as Buffer | undefined);
          if (!id || id.length <= want.length || !id.subarray(0, want.length).equals(want)) continue;
        }
        ctx.call('C_DestroyObject', () => o.destroy());
        n++;
      }
    }
    return n;
  });
}
