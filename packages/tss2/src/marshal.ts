/**
 * TPM wire format (TCG TPM 2.0 Library Part 2: big-endian, TPM2B = 16-bit size ‖ bytes) for the
 * structures a key manager builds and reads. Structures cross into ESAPI by being written here and
 * unmarshalled into the C layout by libtss2-mu (Tss2_MU_*_Unmarshal), and come back by
 * Tss2_MU_*_Marshal: this package never depends on the C struct layout.
 */
import { TPM2_ALG, TPM2_ECC_NIST_P256, TPMA_OBJECT } from './constants.js';

export class WireWriter {
  #parts: number[] = [];
  u8(v: number): this {
    this.#parts.push(v & 0xff);
    return this;
  }
  u16(v: number): this {
    this.#parts.push((v >>> 8) & 0xff, v & 0xff);
    return this;
  }
  u32(v: number): this {
    this.#parts.push((v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
    return this;
  }
  bytes(b: Uint8Array): this {
    for (const x of b) this.#parts.push(x);
    return this;
  }
  /** TPM2B: 16-bit size, then the bytes. */
  tpm2b(b: Uint8Array): this {
    if (b.length > 0xffff) throw new RangeError('tss2: a TPM2B holds at most 65535 bytes');
    return this.u16(b.length).bytes(b);
  }
  finish(): Uint8Array {
    const out = Uint8Array.from(this.#parts);
    this.#parts.fill(0);
    this.#parts = [];
    return out;
  }
}

export class WireReader {
  readonly #b: Uint8Array;
  #o = 0;
  constructor(b: Uint8Array, offset = 0) {
    this.#b = b;
    this.#o = offset;
  }
  get offset(): number {
    return this.#o;
  }
  get remaining(): number {
    return this.#b.length - this.#o;
  }
  #need(n: number): void {
    if (this.#o + n > this.#b.length) throw new RangeError('tss2: structure truncated');
  }
  u8(): number {
    this.#need(1);
    return this.#b[this.#o++] as number;
  }
  u16(): number {
    this.#need(2);
    const v = ((this.#b[this.#o] as number) << 8) | (this.#b[this.#o + 1] as number);
    this.#o += 2;
    return v;
  }
  u32(): number {
    this.#need(4);
    const v =
      (((this.#b[this.#o] as number) << 24) |
        ((this.#b[this.#o + 1] as number) << 16) |
        ((this.#b[this.#o + 2] as number) << 8) |
        (this.#b[this.#o + 3] as number)) >>>
      0;
    this.#o += 4;
    return v;
  }
  bytes(n: number): Uint8Array {
    this.#need(n);
    const out = this.#b.slice(this.#o, this.#o + n);
    this.#o += n;
    return out;
  }
  tpm2b(): Uint8Array {
    return this.bytes(this.u16());
  }
}

/** A TPMT_PUBLIC, as far as this package builds and reads them. */
export interface PublicTemplate {
  type: 'ecc' | 'rsa' | 'keyedhash';
  nameAlg: number;
  objectAttributes: number;
  authPolicy?: Uint8Array;
  /** ecc/rsa storage keys: the symmetric algorithm of a restricted decryption key (AES-128-CFB). */
  symmetric?: { algorithm: number; keyBits: number; mode: number } | null;
  /** ecc: curve id (NIST P-256 = 3). */
  curve?: number;
  /** rsa: key size in bits and exponent (0 = 65537). */
  rsaBits?: number;
  rsaExponent?: number;
  /** ecc: unique.x / unique.y; rsa: unique (the modulus); keyedhash: unique digest. Usually empty. */
  unique?: Uint8Array[];
}

/** TPMT_PUBLIC in wire form. */
export function marshalTpmtPublic(t: PublicTemplate): Uint8Array {
  const w = new WireWriter();
  const symmetric = (s: PublicTemplate['symmetric']) => {
    if (!s) w.u16(TPM2_ALG.NULL);
    else w.u16(s.algorithm).u16(s.keyBits).u16(s.mode);
  };
  switch (t.type) {
    case 'ecc':
      w.u16(TPM2_ALG.ECC)
        .u16(t.nameAlg)
        .u32(t.objectAttributes)
        .tpm2b(t.authPolicy ?? new Uint8Array(0));
      symmetric(t.symmetric);
      w.u16(TPM2_ALG.NULL); // scheme
      w.u16(t.curve ?? TPM2_ECC_NIST_P256);
      w.u16(TPM2_ALG.NULL); // kdf
      w.tpm2b(t.unique?.[0] ?? new Uint8Array(0)).tpm2b(t.unique?.[1] ?? new Uint8Array(0));
      break;
    case 'rsa':
      w.u16(TPM2_ALG.RSA)
        .u16(t.nameAlg)
        .u32(t.objectAttributes)
        .tpm2b(t.authPolicy ?? new Uint8Array(0));
      symmetric(t.symmetric);
      w.u16(TPM2_ALG.NULL); // scheme
      w.u16(t.rsaBits ?? 2048).u32(t.rsaExponent ?? 0);
      w.tpm2b(t.unique?.[0] ?? new Uint8Array(0));
      break;
    case 'keyedhash':
      w.u16(TPM2_ALG.KEYEDHASH)
        .u16(t.nameAlg)
        .u32(t.objectAttributes)
        .tpm2b(t.authPolicy ?? new Uint8Array(0));
      w.u16(TPM2_ALG.NULL); // scheme: a sealed data object
      w.tpm2b(t.unique?.[0] ?? new Uint8Array(0));
      break;
  }
  return w.finish();
}

/** TPM2B_PUBLIC in wire form. */
export function marshalTpm2bPublic(t: PublicTemplate): Uint8Array {
  const inner = marshalTpmtPublic(t);
  return new WireWriter().tpm2b(inner).finish();
}

/** Read a TPMT_PUBLIC (the parts this package builds). Throws RangeError on anything else. */
export function unmarshalTpmtPublic(r: WireReader): PublicTemplate {
  const alg = r.u16();
  const nameAlg = r.u16();
  const objectAttributes = r.u32();
  const authPolicy = r.tpm2b();
  const symmetric = (): PublicTemplate['symmetric'] => {
    const a = r.u16();
    if (a === TPM2_ALG.NULL) return null;
    return { algorithm: a, keyBits: r.u16(), mode: r.u16() };
  };
  if (alg === TPM2_ALG.KEYEDHASH) {
    const scheme = r.u16();
    if (scheme !== TPM2_ALG.NULL) r.u16(); // HMAC/XOR details: a hash (and kdf for XOR)
    if (scheme === 0x000a /* XOR */) r.u16();
    return { type: 'keyedhash', nameAlg, objectAttributes, authPolicy, unique: [r.tpm2b()] };
  }
  if (alg === TPM2_ALG.ECC) {
    const sym = symmetric();
    const scheme = r.u16();
    if (scheme !== TPM2_ALG.NULL) r.u16();
    const curve = r.u16();
    const kdf = r.u16();
    if (kdf !== TPM2_ALG.NULL) r.u16();
    return {
      type: 'ecc',
      nameAlg,
      objectAttributes,
      authPolicy,
      symmetric: sym,
      curve,
      unique: [r.tpm2b(), r.tpm2b()],
    };
  }
  if (alg === TPM2_ALG.RSA) {
    const sym = symmetric();
    const scheme = r.u16();
    if (scheme !== TPM2_ALG.NULL) r.u16();
    const rsaBits = r.u16();
    const rsaExponent = r.u32();
    return {
      type: 'rsa',
      nameAlg,
      objectAttributes,
      authPolicy,
      symmetric: sym,
      rsaBits,
      rsaExponent,
      unique: [r.tpm2b()],
    };
  }
  throw new RangeError(`tss2: unsupported public area type 0x${alg.toString(16)}`);
}

/** Read a TPM2B_PUBLIC; the size must match its contents exactly. */
export function unmarshalTpm2bPublic(r: WireReader): PublicTemplate {
  const inner = r.tpm2b();
  const ir = new WireReader(inner);
  const t = unmarshalTpmtPublic(ir);
  if (ir.remaining !== 0) throw new RangeError('tss2: TPM2B_PUBLIC has trailing bytes');
  return t;
}

const STORAGE_ATTRIBUTES =
  TPMA_OBJECT.FIXEDTPM |
  TPMA_OBJECT.FIXEDPARENT |
  TPMA_OBJECT.SENSITIVEDATAORIGIN |
  TPMA_OBJECT.USERWITHAUTH |
  TPMA_OBJECT.RESTRICTED |
  TPMA_OBJECT.DECRYPT;

/**
 * The storage-key templates tpm2-tools' `tpm2_createprimary -C o -G ecc` (or `-G rsa`) uses — the
 * TCG storage key shape: restricted decryption key, SHA-256 name, AES-128-CFB for its children,
 * null scheme, empty unique. The same template on the same TPM gives the same key every time.
 */
export function storagePrimaryTemplate(alg: 'ecc' | 'rsa'): PublicTemplate {
  const symmetric = { algorithm: TPM2_ALG.AES, keyBits: 128, mode: TPM2_ALG.CFB };
  return alg === 'ecc'
    ? {
        type: 'ecc',
        nameAlg: TPM2_ALG.SHA256,
        objectAttributes: STORAGE_ATTRIBUTES,
        symmetric,
        curve: TPM2_ECC_NIST_P256,
      }
    : { type: 'rsa', nameAlg: TPM2_ALG.SHA256, objectAttributes: STORAGE_ATTRIBUTES, symmetric, rsaBits: 2048 };
}

/**
 * A sealed data object (keyedhash, null scheme) as `tpm2_create -i` makes one: fixedTPM,
 * fixedParent, and either userWithAuth (authorize with the auth value) or a policy.
 */
export function sealedObjectTemplate(options: { authPolicy?: Uint8Array; noDA?: boolean } = {}): PublicTemplate {
  let attrs = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT;
  if (!options.authPolicy || options.authPolicy.length === 0) attrs |= TPMA_OBJECT.USERWITHAUTH;
  if (options.noDA) attrs |= TPMA_OBJECT.NODA;
  return {
    type: 'keyedhash',
    nameAlg: TPM2_ALG.SHA256,
    objectAttributes: attrs,
    authPolicy: options.authPolicy ?? new Uint8Array(0),
  };
}

/** TPM2B_SENSITIVE_CREATE (userAuth, data) in wire form. The caller wipes the result. */
export function marshalSensitiveCreate(userAuth: Uint8Array, data: Uint8Array): Uint8Array {
  const inner = new WireWriter().tpm2b(userAuth).tpm2b(data).finish();
  try {
    return new WireWriter().tpm2b(inner).finish();
  } finally {
    inner.fill(0);
  }
}

/** A PCR selection: a hash bank and the PCR indices (0..23) in it. */
export interface PcrSelection {
  hash: number;
  pcrs: number[];
}

/** TPML_PCR_SELECTION in wire form. */
export function marshalPcrSelection(selections: PcrSelection[]): Uint8Array {
  const w = new WireWriter().u32(selections.length);
  for (const s of selections) {
    const bitmap = new Uint8Array(3);
    for (const p of s.pcrs) {
      if (!Number.isInteger(p) || p < 0 || p > 23) throw new RangeError('tss2: a PCR index is 0..23');
      bitmap[p >> 3] = (bitmap[p >> 3] as number) | (1 << (p & 7));
    }
    w.u16(s.hash).u8(3).bytes(bitmap);
  }
  return w.finish();
}

export function unmarshalPcrSelection(r: WireReader): PcrSelection[] {
  const count = r.u32();
  if (count > 16) throw new RangeError('tss2: TPML_PCR_SELECTION count out of range');
  const out: PcrSelection[] = [];
  for (let i = 0; i < count; i++) {
    const hash = r.u16();
    const size = r.u8();
    if (size > 4) throw new RangeError('tss2: TPMS_PCR_SELECTION sizeofSelect out of range');
    const bitmap = r.bytes(size);
    const pcrs: number[] = [];
    for (let p = 0; p < size * 8; p++) if (((bitmap[p >> 3] as number) >> (p & 7)) & 1) pcrs.push(p);
    out.push({ hash, pcrs });
  }
  return out;
}
