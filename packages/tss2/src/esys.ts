/**
 * An ESAPI context (ESYS_CONTEXT over a TCTI from the TCTI loader), with typed methods for the TPM
 * commands a key manager needs. Each command runs on a worker thread (koffi's async calls), one at
 * a time per context (ESAPI contexts are not thread-safe), under a deadline: a TPM that does not
 * answer makes the call fail with TssUnavailableError and the context unusable (open a new one).
 *
 * Resource hygiene (a TPM without a resource manager, like swtpm, has 3 object slots):
 *  - every buffer ESAPI allocates for a result is copied out through Tss2_MU_*_Marshal and freed
 *    with Esys_Free at once (a secret result is wiped with explicit_bzero before);
 *  - every transient object and session this context creates is tracked until flushed, and
 *    `close()` flushes what is left; `stats()` counts both, for leak tests.
 */
import { InvalidInputError } from '@keywarden/core';
import {
  digestSize,
  ESYS_TR,
  type EsysTR,
  TPM2_ALG,
  TPM2_CAP,
  TPM2_HR,
  TPM2_SE,
  TPM2_SU,
  TPMA_SESSION,
} from './constants.js';
import { decodeRc, TssError, TssUnavailableError, tssError } from './errors.js';
import { C_SIZE, type MuType, type NativeFn, type Tss2Native, tss2Native } from './lib.js';
import {
  marshalPcrSelection,
  marshalSensitiveCreate,
  marshalTpm2bPublic,
  type PcrSelection,
  type PublicTemplate,
  unmarshalPcrSelection,
  WireReader,
  WireWriter,
} from './marshal.js';

/** Up to three sessions for a command (ESYS_TR_PASSWORD for a password authorization). */
export type Sessions = readonly EsysTR[];

export interface EsysOptions {
  /**
   * TCTI configuration for Tss2_TctiLdr_Initialize: "swtpm:host=127.0.0.1,port=2321",
   * "device:/dev/tpmrm0", "mssim:…", "tabrmd", or "pcap:swtpm:…" to record the command stream.
   * Default: the TPM2TOOLS_TCTI / TCTI environment's choice of the loader (tabrmd, then
   * /dev/tpmrm0, /dev/tpm0, then swtpm on localhost).
   */
  tcti?: string;
  /** Deadline for each TPM command, in milliseconds. Default 10 000. */
  timeoutMs?: number;
}

export interface EsysStats {
  /** ESAPI result buffers not yet freed (always 0 between calls). */
  liveBuffers: number;
  /** Transient objects and sessions this context created and has not flushed. */
  liveHandles: number;
  /** ESYS_TRs for persistent objects (TR_FromTPMPublic, EvictControl) not yet closed. */
  liveTrs: number;
  /** Commands sent since the context was opened. */
  commands: number;
  /** Native calls still running, counting one abandoned at its deadline (the context is released
   * only when none is left). */
  nativeCalls: number;
  /** The ESAPI context and the TCTI are released (after close(), once no native call is left). */
  released: boolean;
}

export interface SymmetricSpec {
  algorithm: number;
  keyBits: number;
  mode: number;
}

/** AES-128 in CFB mode: the parameter-encryption cipher every TPM implements. */
export const AES_128_CFB: SymmetricSpec = { algorithm: TPM2_ALG.AES, keyBits: 128, mode: TPM2_ALG.CFB };

export interface StartAuthSessionOptions {
  /** Key whose public part encrypts the salt (salted session); default none. */
  tpmKey?: EsysTR;
  /** Entity the session is bound to; default none. */
  bind?: EsysTR;
  /** "hmac" (default), "policy" or "trial". */
  type?: 'hmac' | 'policy' | 'trial';
  /** Parameter-encryption cipher; null for none. Default AES-128-CFB. */
  symmetric?: SymmetricSpec | null;
  /** Session hash; default SHA-256. */
  authHash?: number;
  /** TPMA_SESSION attributes to set; default continueSession. */
  attributes?: number;
}

function readTpm2b(wire: Uint8Array): Uint8Array {
  const r = new WireReader(wire);
  return r.tpm2b();
}

/** TPM 2.0 Part 2 §6.9 TPM_ST_HASHCHECK and §7.4 TPM_RH_NULL (the NULL ticket of TPM2_Sign). */
const TPM2_ST_HASHCHECK = 0x8024;
const TPM2_RH_NULL = 0x40000007;

export class Esys {
  readonly #n: Tss2Native;
  #ctx: unknown;
  #tcti: unknown;
  readonly #timeoutMs: number;
  #queue: Promise<unknown> = Promise.resolve();
  #broken: TssUnavailableError | undefined;
  /** Native calls on this context that have not returned yet (a timed-out one keeps running on its
   * worker thread): the context and the TCTI are released only when this is 0. */
  #native = 0;
  /** The handles of an abandoned command are being flushed. */
  #flushing = false;
  #closed = false;
  #liveBuffers = 0;
  #commands = 0;
  readonly #handles = new Set<EsysTR>();
  readonly #trs = new Set<EsysTR>();
  /** ESYS_TRs whose auth value ESAPI holds (trSetAuth): wiped before they are flushed or closed. */
  readonly #authed = new Set<EsysTR>();

  private constructor(n: Tss2Native, ctx: unknown, tcti: unknown, timeoutMs: number) {
    this.#n = n;
    this.#ctx = ctx;
    this.#tcti = tcti;
    this.#timeoutMs = timeoutMs;
  }

  /** Connect: Tss2_TctiLdr_Initialize then Esys_Initialize. TssUnavailableError when the TPM
   * cannot be reached. */
  static async open(options: EsysOptions = {}): Promise<Esys> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 600_000) {
      throw new InvalidInputError('tss2: timeoutMs is 1..600000');
    }
    if (options.tcti !== undefined && (typeof options.tcti !== 'string' || /[\0\r\n]/.test(options.tcti))) {
      throw new InvalidInputError('tss2: a TCTI configuration is one line of text');
    }
    const n = tss2Native();
    const tctiOut: unknown[] = [null];
    // A connection that is made only after the deadline is closed when it is.
    const late = (code: number) => {
      if (code >>> 0 === 0 && tctiOut[0]) n.tctiFinalize(tctiOut);
    };
    const rc =
      (await asyncCall(
        n.tctiInit,
        [options.tcti ?? null, tctiOut],
        timeoutMs,
        'Tss2_TctiLdr_Initialize',
        undefined,
        late,
      )) >>> 0;
    if (rc !== 0) {
      const d = decodeRc(rc, String(n.rcDecode(rc)));
      throw new TssUnavailableError(
        'Tss2_TctiLdr_Initialize',
        d,
        `Tss2_TctiLdr_Initialize: the TPM cannot be reached through TCTI "${redactTcti(options.tcti)}": ${d.name} (${d.text})`,
      );
    }
    const ctxOut: unknown[] = [null];
    const rc2 = (n.esys.Esys_Initialize(ctxOut, tctiOut[0], null) as number) >>> 0;
    if (rc2 !== 0) {
      n.tctiFinalize(tctiOut);
      throw tssError('Esys_Initialize', decodeRc(rc2, String(n.rcDecode(rc2))));
    }
    return new Esys(n, ctxOut[0], tctiOut[0], timeoutMs);
  }

  stats(): EsysStats {
    return {
      liveBuffers: this.#liveBuffers,
      liveHandles: this.#handles.size,
      liveTrs: this.#trs.size,
      commands: this.#commands,
      nativeCalls: this.#native,
      released: this.#ctx === null,
    };
  }

  /** Whether a deadline or a lost connection made this context unusable. */
  get broken(): boolean {
    return this.#broken !== undefined;
  }

  // ── plumbing ─────────────────────────────────────────────────────────────────────────────────

  /** Run `body` alone on this context (commands are serialized). */
  #run<T>(body: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(
      () => this.#gate(body),
      () => this.#gate(body),
    );
    this.#queue = next.catch(() => undefined);
    return next;
  }

  async #gate<T>(body: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new TssUnavailableError('Esys', undefined, 'tss2: this ESAPI context is closed');
    if (this.#broken) throw this.#broken;
    return body();
  }

  /** One ESAPI call on the worker pool under the deadline; rejects with the typed error. */
  async #call(
    command: string,
    fn: NativeFn,
    args: unknown[],
    outs: unknown[][] = [],
    created?: number[],
  ): Promise<void> {
    this.#commands++;
    const state = { timedOut: false };
    let rc: number;
    try {
      rc = await this.#invoke(fn, [this.#ctx, ...args], this.#timeoutMs, command, state, (late) => {
        // Abandoned after the deadline, and now answered: free what it returned, and flush what
        // it created and every handle this context still holds (a TPM without a resource manager
        // keeps them loaded otherwise), then release the context if close() ran.
        for (const o of outs) if (o[0]) this.#n.esys.Esys_Free(o[0]);
        if (late >>> 0 === 0 && created?.[0]) this.#handles.add(created[0]);
        void this.#flushAbandoned();
      });
    } catch (err) {
      if (err instanceof TssUnavailableError) this.#broken = err;
      throw err;
    }
    rc >>>= 0;
    for (const o of outs) if (o[0]) this.#liveBuffers++;
    if (rc !== 0) {
      for (const o of outs) this.#free(o);
      const e = tssError(command, decodeRc(rc, String(this.#n.rcDecode(rc))));
      if (e instanceof TssUnavailableError) this.#broken = e;
      throw e;
    }
  }

  /** `fn.async` counted in #native until it returns, whether or not its deadline passed first. */
  #invoke(
    fn: NativeFn,
    args: unknown[],
    timeoutMs: number,
    command: string,
    state?: { timedOut: boolean },
    abandoned?: (rc: number) => void,
  ): Promise<number> {
    this.#native++;
    return asyncCall(fn, args, timeoutMs, command, state, abandoned, () => {
      this.#native--;
      this.#maybeFinalize();
    });
  }

  /**
   * The abandoned command answered: flush every handle this context still holds, each waited for
   * without a deadline (a flush given up on would leave its object loaded in a TPM without a
   * resource manager, and its native call running on a context about to be released). A failed
   * flush (the TPM gone again) does not stop the others.
   */
  async #flushAbandoned(): Promise<void> {
    this.#flushing = true;
    for (const h of [...this.#handles]) {
      this.#wipeAuth(h);
      await this.#invoke(
        this.#n.esys.Esys_FlushContext,
        [this.#ctx, h],
        Number.POSITIVE_INFINITY,
        'TPM2_FlushContext',
      ).catch(() => undefined);
    }
    this.#handles.clear();
    this.#trs.clear();
    this.#flushing = false;
    this.#maybeFinalize();
  }

  /** Release the context once it is closed, no native call on it is running and no abandoned
   * command's handles are being flushed. */
  #maybeFinalize(): void {
    if (!this.#closed || this.#native > 0 || this.#flushing) return;
    this.#handles.clear();
    this.#trs.clear();
    this.#finalize();
  }

  #free(out: unknown[], wipeBytes = 0): void {
    if (!out[0]) return;
    if (wipeBytes > 0) this.#n.bzero(out[0], wipeBytes);
    this.#n.esys.Esys_Free(out[0]);
    out[0] = null;
    this.#liveBuffers--;
  }

  /** Copy an ESAPI result out (wire form) and free it. `secret`: wipe the C copy first. */
  #take(type: MuType, out: unknown[], secret = false): Uint8Array {
    if (!out[0]) throw new TssError(`Tss2_MU_${type}_Marshal`, decodeRc(0x90005, 'mu:null result'));
    const size = C_SIZE[type] + 16;
    const buf = Buffer.alloc(size);
    const offset = [0];
    try {
      const rc = (this.#n.marshal[type](out[0], buf, size, offset) as number) >>> 0;
      if (rc !== 0) throw tssError(`Tss2_MU_${type}_Marshal`, decodeRc(rc, String(this.#n.rcDecode(rc))));
      return new Uint8Array(buf.subarray(0, offset[0] as number));
    } finally {
      if (secret) buf.fill(0);
      this.#free(out, secret ? C_SIZE[type] : 0);
    }
  }

  /** Unmarshal wire bytes into a C struct buffer (the caller wipes it when it holds a secret). */
  #cstruct(type: MuType, wire: Uint8Array): Buffer {
    const dest = Buffer.alloc(C_SIZE[type]);
    const offset = [0];
    const rc = (this.#n.unmarshal[type](wire, wire.length, offset, dest) as number) >>> 0;
    if (rc !== 0) {
      dest.fill(0);
      const d = decodeRc(rc, String(this.#n.rcDecode(rc)));
      throw new InvalidInputError(`tss2: not a valid ${type}: ${d.name} (${d.text})`);
    }
    if (offset[0] !== wire.length) {
      dest.fill(0);
      throw new InvalidInputError(`tss2: ${type} has ${wire.length - (offset[0] as number)} trailing bytes`);
    }
    return dest;
  }

  #sessions(sessions: Sessions | undefined, auth: boolean): [EsysTR, EsysTR, EsysTR] {
    const s = sessions ?? (auth ? [ESYS_TR.PASSWORD] : []);
    if (s.length > 3) throw new InvalidInputError('tss2: a command takes at most 3 sessions');
    return [s[0] ?? ESYS_TR.NONE, s[1] ?? ESYS_TR.NONE, s[2] ?? ESYS_TR.NONE];
  }

  #syncRc(command: string, rc: unknown): void {
    const v = (rc as number) >>> 0;
    if (v !== 0) throw tssError(command, decodeRc(v, String(this.#n.rcDecode(v))));
  }

  // ── commands ─────────────────────────────────────────────────────────────────────────────────

  /** TPM2_Startup (swtpm started with startup-clear, or a TPM the firmware started, answers
   * TPM_RC_INITIALIZE: already started). */
  startup(type: 'clear' | 'state' = 'clear'): Promise<void> {
    return this.#run(() =>
      this.#call('TPM2_Startup', this.#n.esys.Esys_Startup, [type === 'clear' ? TPM2_SU.CLEAR : TPM2_SU.STATE]),
    );
  }

  /** TPM2_GetRandom, repeated until `length` bytes (the TPM returns at most a digest per call). */
  getRandom(length: number, sessions?: Sessions): Promise<Uint8Array> {
    if (!Number.isInteger(length) || length < 0 || length > 1 << 20) {
      throw new InvalidInputError('tss2: getRandom length is 0..1048576');
    }
    return this.#run(async () => {
      const out = new Uint8Array(length);
      let filled = 0;
      while (filled < length) {
        const want = Math.min(32, length - filled);
        const o: unknown[] = [null];
        await this.#call(
          'TPM2_GetRandom',
          this.#n.esys.Esys_GetRandom,
          [...this.#sessions(sessions, false), want, o],
          [o],
        );
        const got = readTpm2b(this.#take('TPM2B_DIGEST', o, true));
        if (got.length === 0)
          throw new TssError('TPM2_GetRandom', decodeRc(0x7000b, 'esapi:the TPM returned no random bytes'));
        out.set(got.subarray(0, want), filled);
        filled += Math.min(want, got.length);
        got.fill(0);
      }
      return out;
    });
  }

  /**
   * TPM2_CreatePrimary under `hierarchy` (ESYS_TR.RH_OWNER…). The same template and sensitive data
   * under the same hierarchy seed give the same key. Returns the transient handle (flush it), the
   * public area (TPM2B_PUBLIC wire form) and the name.
   */
  createPrimary(
    hierarchy: EsysTR,
    template: PublicTemplate | Uint8Array,
    options: { userAuth?: Uint8Array; data?: Uint8Array; sessions?: Sessions } = {},
  ): Promise<{ handle: EsysTR; outPublic: Uint8Array; name: Uint8Array }> {
    return this.#run(async () => {
      const sens = this.#sensitive(options.userAuth, options.data);
      const pub = this.#cstruct(
        'TPM2B_PUBLIC',
        template instanceof Uint8Array ? template : marshalTpm2bPublic(template),
      );
      const outside = this.#cstruct('TPM2B_DATA', new Uint8Array(2));
      const pcr = this.#cstruct('TPML_PCR_SELECTION', new Uint8Array(4));
      const h = [0];
      const oPub: unknown[] = [null];
      const o2: unknown[] = [null];
      const o3: unknown[] = [null];
      const o4: unknown[] = [null];
      try {
        await this.#call(
          'TPM2_CreatePrimary',
          this.#n.esys.Esys_CreatePrimary,
          [hierarchy, ...this.#sessions(options.sessions, true), sens, pub, outside, pcr, h, oPub, o2, o3, o4],
          [oPub, o2, o3, o4],
          h,
        );
      } finally {
        sens.fill(0);
      }
      this.#free(o2);
      this.#free(o3);
      this.#free(o4);
      const handle = h[0] as number;
      this.#handles.add(handle);
      const outPublic = this.#take('TPM2B_PUBLIC', oPub);
      const name = await this.#getName(handle);
      return { handle, outPublic, name };
    });
  }

  #sensitive(userAuth?: Uint8Array, data?: Uint8Array): Buffer {
    const wire = marshalSensitiveCreate(userAuth ?? new Uint8Array(0), data ?? new Uint8Array(0));
    try {
      return this.#cstruct('TPM2B_SENSITIVE_CREATE', wire);
    } finally {
      wire.fill(0);
    }
  }

  /**
   * TPM2_Create under `parent`: a new object (a sealed data object when `data` is given). Returns
   * its private part (TPM2B_PRIVATE, encrypted under the parent) and public part (TPM2B_PUBLIC),
   * both in wire form — what `tpm2_create -r/-u` writes.
   */
  create(
    parent: EsysTR,
    template: PublicTemplate | Uint8Array,
    options: { userAuth?: Uint8Array; data?: Uint8Array; sessions?: Sessions } = {},
  ): Promise<{ outPrivate: Uint8Array; outPublic: Uint8Array }> {
    return this.#run(async () => {
      const sens = this.#sensitive(options.userAuth, options.data);
      const pub = this.#cstruct(
        'TPM2B_PUBLIC',
        template instanceof Uint8Array ? template : marshalTpm2bPublic(template),
      );
      const outside = this.#cstruct('TPM2B_DATA', new Uint8Array(2));
      const pcr = this.#cstruct('TPML_PCR_SELECTION', new Uint8Array(4));
      const oPriv: unknown[] = [null];
      const oPub: unknown[] = [null];
      const o3: unknown[] = [null];
      const o4: unknown[] = [null];
      const o5: unknown[] = [null];
      try {
        await this.#call(
          'TPM2_Create',
          this.#n.esys.Esys_Create,
          [parent, ...this.#sessions(options.sessions, true), sens, pub, outside, pcr, oPriv, oPub, o3, o4, o5],
          [oPriv, oPub, o3, o4, o5],
        );
      } finally {
        sens.fill(0);
      }
      this.#free(o3);
      this.#free(o4);
      this.#free(o5);
      return { outPrivate: this.#take('TPM2B_PRIVATE', oPriv), outPublic: this.#take('TPM2B_PUBLIC', oPub) };
    });
  }

  /** TPM2_Load: the object's private and public parts (wire form) under `parent`. Flush it. */
  load(parent: EsysTR, inPrivate: Uint8Array, inPublic: Uint8Array, sessions?: Sessions): Promise<EsysTR> {
    return this.#run(async () => {
      const priv = this.#cstruct('TPM2B_PRIVATE', inPrivate);
      const pub = this.#cstruct('TPM2B_PUBLIC', inPublic);
      const h = [0];
      await this.#call(
        'TPM2_Load',
        this.#n.esys.Esys_Load,
        [parent, ...this.#sessions(sessions, true), priv, pub, h],
        [],
        h,
      );
      const handle = h[0] as number;
      this.#handles.add(handle);
      return handle;
    });
  }

  /** TPM2_Unseal: the data of a sealed data object. The caller wipes the result. */
  unseal(item: EsysTR, sessions?: Sessions): Promise<Uint8Array> {
    return this.#run(async () => {
      const o: unknown[] = [null];
      await this.#call('TPM2_Unseal', this.#n.esys.Esys_Unseal, [item, ...this.#sessions(sessions, true), o], [o]);
      const wire = this.#take('TPM2B_SENSITIVE_DATA', o, true);
      try {
        return readTpm2b(wire);
      } finally {
        wire.fill(0);
      }
    });
  }

  /**
   * TPM2_ObjectChangeAuth (TPM 2.0 Part 3 §12.8): a new private part for the loaded `object` (under
   * `parent`) whose auth value is `newAuth`; authorized with the object's current auth value
   * (trSetAuth). The TPM keeps nothing: the old private part still loads with the old value until
   * the caller replaces it. `newAuth` is not modified; the caller wipes it.
   */
  objectChangeAuth(object: EsysTR, parent: EsysTR, newAuth: Uint8Array, sessions?: Sessions): Promise<Uint8Array> {
    return this.#run(async () => {
      const wire = new WireWriter().tpm2b(newAuth).finish();
      let c: Buffer | undefined;
      const o: unknown[] = [null];
      try {
        c = this.#cstruct('TPM2B_AUTH', wire);
        await this.#call(
          'TPM2_ObjectChangeAuth',
          this.#n.esys.Esys_ObjectChangeAuth,
          [object, parent, ...this.#sessions(sessions, true), c, o],
          [o],
        );
      } finally {
        wire.fill(0);
        c?.fill(0);
      }
      return this.#take('TPM2B_PRIVATE', o);
    });
  }

  /**
   * TPM2_Sign (TPM 2.0 Part 3 §20.2) of `digest` with the unrestricted signing key `key`, with
   * the scheme given here (the key's own scheme is TPM_ALG_NULL). The validation ticket is the
   * NULL ticket (TPM_ST_HASHCHECK, TPM_RH_NULL, empty digest), which only an unrestricted key
   * accepts. Returns the TPMT_SIGNATURE in wire form.
   */
  sign(
    key: EsysTR,
    digest: Uint8Array,
    scheme: { algorithm: number; hash: number },
    sessions?: Sessions,
  ): Promise<Uint8Array> {
    return this.#run(async () => {
      const d = this.#cstruct('TPM2B_DIGEST', new WireWriter().tpm2b(digest).finish());
      const sch = this.#cstruct('TPMT_SIG_SCHEME', new WireWriter().u16(scheme.algorithm).u16(scheme.hash).finish());
      const ticket = this.#cstruct(
        'TPMT_TK_HASHCHECK',
        new WireWriter().u16(TPM2_ST_HASHCHECK).u32(TPM2_RH_NULL).tpm2b(new Uint8Array(0)).finish(),
      );
      const o: unknown[] = [null];
      await this.#call(
        'TPM2_Sign',
        this.#n.esys.Esys_Sign,
        [key, ...this.#sessions(sessions, true), d, sch, ticket, o],
        [o],
      );
      return this.#take('TPMT_SIGNATURE', o);
    });
  }

  /** TPM2_FlushContext: a transient object or a session leaves the TPM (and this context). */
  flushContext(handle: EsysTR): Promise<void> {
    return this.#run(async () => {
      this.#wipeAuth(handle);
      await this.#call('TPM2_FlushContext', this.#n.esys.Esys_FlushContext, [handle]);
      this.#handles.delete(handle);
    });
  }

  /**
   * TPM2_StartAuthSession. Salted when `tpmKey` is given (the salt is encrypted to that key, so the
   * session key is unknown to anyone watching the bus); parameter encryption with AES-128-CFB
   * unless `symmetric: null`; set TPMA_SESSION.DECRYPT/ENCRYPT per command with
   * `setSessionAttributes`. Flush it when done.
   */
  startAuthSession(options: StartAuthSessionOptions = {}): Promise<EsysTR> {
    return this.#run(async () => {
      const sym = options.symmetric === undefined ? AES_128_CFB : options.symmetric;
      const symWire = sym
        ? new WireWriter().u16(sym.algorithm).u16(sym.keyBits).u16(sym.mode).finish()
        : new WireWriter().u16(TPM2_ALG.NULL).finish();
      const symC = this.#cstruct('TPMT_SYM_DEF', symWire);
      const type = options.type ?? 'hmac';
      const h = [0];
      await this.#call(
        'TPM2_StartAuthSession',
        this.#n.esys.Esys_StartAuthSession,
        [
          options.tpmKey ?? ESYS_TR.NONE,
          options.bind ?? ESYS_TR.NONE,
          ESYS_TR.NONE,
          ESYS_TR.NONE,
          ESYS_TR.NONE,
          null,
          type === 'hmac' ? TPM2_SE.HMAC : type === 'policy' ? TPM2_SE.POLICY : TPM2_SE.TRIAL,
          symC,
          options.authHash ?? TPM2_ALG.SHA256,
          h,
        ],
        [],
        h,
      );
      const handle = h[0] as number;
      this.#handles.add(handle);
      const attrs = options.attributes ?? TPMA_SESSION.CONTINUESESSION;
      this.#syncRc('Esys_TRSess_SetAttributes', this.#n.esys.Esys_TRSess_SetAttributes(this.#ctx, handle, attrs, 0xff));
      return handle;
    });
  }

  /** Esys_TRSess_SetAttributes: set the bits of `mask` in the session's attributes to `flags`. */
  setSessionAttributes(session: EsysTR, flags: number, mask = 0xff): Promise<void> {
    return this.#run(async () =>
      this.#syncRc(
        'Esys_TRSess_SetAttributes',
        this.#n.esys.Esys_TRSess_SetAttributes(this.#ctx, session, flags & 0xff, mask & 0xff),
      ),
    );
  }

  /** TPM2_PolicyPCR: extend the policy with the PCRs `selection` (current values when `pcrDigest`
   * is empty). */
  policyPCR(session: EsysTR, selection: PcrSelection[], pcrDigest: Uint8Array = new Uint8Array(0)): Promise<void> {
    return this.#run(async () => {
      const digest = this.#cstruct('TPM2B_DIGEST', new WireWriter().tpm2b(pcrDigest).finish());
      const sel = this.#cstruct('TPML_PCR_SELECTION', marshalPcrSelection(selection));
      await this.#call('TPM2_PolicyPCR', this.#n.esys.Esys_PolicyPCR, [
        session,
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        digest,
        sel,
      ]);
    });
  }

  /** TPM2_PolicyAuthValue: the object's auth value is required too (an HMAC over it). */
  policyAuthValue(session: EsysTR): Promise<void> {
    return this.#run(() =>
      this.#call('TPM2_PolicyAuthValue', this.#n.esys.Esys_PolicyAuthValue, [
        session,
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        ESYS_TR.NONE,
      ]),
    );
  }

  /** TPM2_PolicyGetDigest: the session's policy digest (from a trial session: an authPolicy). */
  policyGetDigest(session: EsysTR): Promise<Uint8Array> {
    return this.#run(async () => {
      const o: unknown[] = [null];
      await this.#call(
        'TPM2_PolicyGetDigest',
        this.#n.esys.Esys_PolicyGetDigest,
        [session, ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE, o],
        [o],
      );
      return readTpm2b(this.#take('TPM2B_DIGEST', o));
    });
  }

  /** TPM2_PCR_Read. */
  pcrRead(
    selection: PcrSelection[],
  ): Promise<{ updateCounter: number; selection: PcrSelection[]; digests: Uint8Array[] }> {
    return this.#run(async () => {
      const sel = this.#cstruct('TPML_PCR_SELECTION', marshalPcrSelection(selection));
      const counter = [0];
      const oSel: unknown[] = [null];
      const oVal: unknown[] = [null];
      await this.#call(
        'TPM2_PCR_Read',
        this.#n.esys.Esys_PCR_Read,
        [ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE, sel, counter, oSel, oVal],
        [oSel, oVal],
      );
      const selWire = this.#take('TPML_PCR_SELECTION', oSel);
      const valWire = this.#take('TPML_DIGEST', oVal);
      const r = new WireReader(valWire);
      const count = r.u32();
      const digests: Uint8Array[] = [];
      for (let i = 0; i < count; i++) digests.push(r.tpm2b());
      return {
        updateCounter: counter[0] as number,
        selection: unmarshalPcrSelection(new WireReader(selWire)),
        digests,
      };
    });
  }

  /** TPM2_PCR_Extend PCR `pcr` (0..23) in each bank given. */
  pcrExtend(pcr: number, digests: { hash: number; digest: Uint8Array }[], sessions?: Sessions): Promise<void> {
    if (!Number.isInteger(pcr) || pcr < 0 || pcr > 23) throw new InvalidInputError('tss2: a PCR index is 0..23');
    return this.#run(async () => {
      const w = new WireWriter().u32(digests.length);
      for (const d of digests) {
        if (d.digest.length !== digestSize(d.hash))
          throw new InvalidInputError('tss2: PCR_Extend digest has the wrong length');
        w.u16(d.hash).bytes(d.digest);
      }
      const values = this.#cstruct('TPML_DIGEST_VALUES', w.finish());
      await this.#call('TPM2_PCR_Extend', this.#n.esys.Esys_PCR_Extend, [
        ESYS_TR.PCR0 + pcr,
        ...this.#sessions(sessions, true),
        values,
      ]);
    });
  }

  /**
   * TPM2_EvictControl: make the transient `object` persistent at `persistentHandle`
   * (0x81000000..), returning its new ESYS_TR; or, given a persistent object, evict it (returns
   * ESYS_TR.NONE). `auth` is ESYS_TR.RH_OWNER (or RH_PLATFORM).
   */
  evictControl(auth: EsysTR, object: EsysTR, persistentHandle: number, sessions?: Sessions): Promise<EsysTR> {
    return this.#run(async () => {
      const h = [ESYS_TR.NONE as number];
      await this.#call('TPM2_EvictControl', this.#n.esys.Esys_EvictControl, [
        auth,
        object,
        ...this.#sessions(sessions, true),
        persistentHandle >>> 0,
        h,
      ]);
      const out = h[0] as number;
      if (this.#trs.has(object)) this.#trs.delete(object); // ESAPI closes an evicted object's TR
      if (out !== ESYS_TR.NONE) this.#trs.add(out);
      return out;
    });
  }

  /** TPM2_ReadPublic: public area (TPM2B_PUBLIC wire form), name and qualified name. */
  readPublic(handle: EsysTR): Promise<{ outPublic: Uint8Array; name: Uint8Array; qualifiedName: Uint8Array }> {
    return this.#run(async () => {
      const oPub: unknown[] = [null];
      const oName: unknown[] = [null];
      const oQn: unknown[] = [null];
      await this.#call(
        'TPM2_ReadPublic',
        this.#n.esys.Esys_ReadPublic,
        [handle, ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE, oPub, oName, oQn],
        [oPub, oName, oQn],
      );
      return {
        outPublic: this.#take('TPM2B_PUBLIC', oPub),
        name: readTpm2b(this.#take('TPM2B_NAME', oName)),
        qualifiedName: readTpm2b(this.#take('TPM2B_NAME', oQn)),
      };
    });
  }

  /** Esys_TR_SetAuth: the auth value ESAPI uses for `handle` in HMAC and password sessions. Not
   * modified; the caller wipes it. */
  trSetAuth(handle: EsysTR, authValue: Uint8Array): Promise<void> {
    return this.#run(async () => {
      const wire = new WireWriter().tpm2b(authValue).finish();
      let c: Buffer | undefined;
      try {
        c = this.#cstruct('TPM2B_AUTH', wire);
        this.#syncRc('Esys_TR_SetAuth', this.#n.esys.Esys_TR_SetAuth(this.#ctx, handle, c));
        if (authValue.length > 0) this.#authed.add(handle);
        else this.#authed.delete(handle);
      } finally {
        wire.fill(0);
        c?.fill(0);
      }
    });
  }

  /**
   * Overwrite ESAPI's copy of `handle`'s auth value with an all-zero, empty TPM2B_AUTH (ESAPI keeps
   * the value in its resource node until the handle is flushed or closed, and frees that memory
   * without wiping it). flushContext, trClose and close do this themselves for every handle given
   * an auth value; call it to drop the value earlier. Local: no TPM command.
   */
  trClearAuth(handle: EsysTR): Promise<void> {
    return this.#run(async () => {
      const zero = Buffer.alloc(C_SIZE.TPM2B_AUTH);
      this.#syncRc('Esys_TR_SetAuth', this.#n.esys.Esys_TR_SetAuth(this.#ctx, handle, zero));
      this.#authed.delete(handle);
    });
  }

  /** Best effort: the zero auth value over ESAPI's copy (the handle may be gone already). */
  #wipeAuth(handle: EsysTR): void {
    if (!this.#authed.delete(handle) || !this.#ctx) return;
    this.#n.esys.Esys_TR_SetAuth(this.#ctx, handle, Buffer.alloc(C_SIZE.TPM2B_AUTH));
  }

  /** Esys_TR_GetName: the TPM name of `handle`. */
  trGetName(handle: EsysTR): Promise<Uint8Array> {
    return this.#run(() => this.#getName(handle));
  }

  async #getName(handle: EsysTR): Promise<Uint8Array> {
    const o: unknown[] = [null];
    this.#syncRc('Esys_TR_GetName', this.#n.esys.Esys_TR_GetName(this.#ctx, handle, o));
    if (o[0]) this.#liveBuffers++;
    return readTpm2b(this.#take('TPM2B_NAME', o));
  }

  /** Esys_TR_FromTPMPublic: an ESYS_TR for an object already in the TPM (a persistent handle). */
  trFromTPMPublic(tpmHandle: number): Promise<EsysTR> {
    return this.#run(async () => {
      const h = [0];
      await this.#call('Esys_TR_FromTPMPublic', this.#n.esys.Esys_TR_FromTPMPublic, [
        tpmHandle >>> 0,
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        h,
      ]);
      const tr = h[0] as number;
      this.#trs.add(tr);
      return tr;
    });
  }

  /** Esys_TR_Close: forget an ESYS_TR without touching the TPM (a persistent object stays). */
  trClose(handle: EsysTR): Promise<void> {
    return this.#run(async () => {
      this.#wipeAuth(handle);
      this.#syncRc('Esys_TR_Close', this.#n.esys.Esys_TR_Close(this.#ctx, [handle]));
      this.#trs.delete(handle);
      this.#handles.delete(handle);
    });
  }

  /** TPM2_ContextSave: the saved context (TPMS_CONTEXT wire form). A saved session leaves the
   * TPM's session slots; a saved object stays loaded (flush it to free the slot). */
  contextSave(handle: EsysTR): Promise<Uint8Array> {
    return this.#run(async () => {
      const o: unknown[] = [null];
      await this.#call('TPM2_ContextSave', this.#n.esys.Esys_ContextSave, [handle, o], [o]);
      return this.#take('TPMS_CONTEXT', o);
    });
  }

  /** TPM2_ContextLoad: a saved context back (a new ESYS_TR for an object; the same session). */
  contextLoad(saved: Uint8Array): Promise<EsysTR> {
    return this.#run(async () => {
      const c = this.#cstruct('TPMS_CONTEXT', saved);
      const h = [0];
      await this.#call('TPM2_ContextLoad', this.#n.esys.Esys_ContextLoad, [c, h], [], h);
      const handle = h[0] as number;
      this.#handles.add(handle);
      return handle;
    });
  }

  /** TPM2_GetCapability: the TPMS_CAPABILITY_DATA in wire form, and whether more is available. */
  getCapability(capability: number, property: number, count: number): Promise<{ more: boolean; data: Uint8Array }> {
    return this.#run(async () => {
      const more = [0];
      const o: unknown[] = [null];
      await this.#call(
        'TPM2_GetCapability',
        this.#n.esys.Esys_GetCapability,
        [ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE, capability >>> 0, property >>> 0, count >>> 0, more, o],
        [o],
      );
      return { more: more[0] !== 0, data: this.#take('TPMS_CAPABILITY_DATA', o) };
    });
  }

  /** The TPM handles in use from `first` (TPM2_HR.TRANSIENT, …) within its range. */
  async handles(first: number): Promise<number[]> {
    const { data } = await this.getCapability(TPM2_CAP.HANDLES, first, 254);
    const r = new WireReader(data);
    r.u32();
    const n = r.u32();
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const h = r.u32();
      if (h >>> 24 === first >>> 24) out.push(h);
    }
    return out;
  }

  /** Transient object handles loaded in the TPM (by anyone). */
  transientHandles(): Promise<number[]> {
    return this.handles(TPM2_HR.TRANSIENT);
  }

  /** TPM properties (TPM2_PT_…) from `first`, `count` of them. */
  async properties(first: number, count: number): Promise<Map<number, number>> {
    const { data } = await this.getCapability(0x6, first, count);
    const r = new WireReader(data);
    r.u32();
    const n = r.u32();
    const out = new Map<number, number>();
    for (let i = 0; i < n; i++) out.set(r.u32(), r.u32());
    return out;
  }

  /** TPM2_DictionaryAttackLockReset (lockout authorization). */
  dictionaryAttackLockReset(sessions?: Sessions): Promise<void> {
    return this.#run(() =>
      this.#call('TPM2_DictionaryAttackLockReset', this.#n.esys.Esys_DictionaryAttackLockReset, [
        ESYS_TR.RH_LOCKOUT,
        ...this.#sessions(sessions, true),
      ]),
    );
  }

  /** TPM2_DictionaryAttackParameters (lockout authorization): failures before lockout, seconds to
   * forget one failure, seconds before the lockout authorization may be retried. */
  dictionaryAttackParameters(
    maxTries: number,
    recoveryTime: number,
    lockoutRecovery: number,
    sessions?: Sessions,
  ): Promise<void> {
    return this.#run(() =>
      this.#call('TPM2_DictionaryAttackParameters', this.#n.esys.Esys_DictionaryAttackParameters, [
        ESYS_TR.RH_LOCKOUT,
        ...this.#sessions(sessions, true),
        maxTries >>> 0,
        recoveryTime >>> 0,
        lockoutRecovery >>> 0,
      ]),
    );
  }

  /**
   * Flush every transient object and session this context still tracks, then release the ESAPI
   * context and the TCTI. Idempotent. A context whose last command never answered is released
   * when that command returns.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#queue.catch(() => undefined);
    if (!this.#broken) {
      for (const h of [...this.#handles]) {
        try {
          await this.flushContext(h);
        } catch {
          this.#handles.delete(h);
        }
      }
      for (const tr of [...this.#trs]) {
        try {
          await this.trClose(tr);
        } catch {
          this.#trs.delete(tr);
        }
      }
    }
    this.#closed = true;
    // With a command still running (abandoned at its deadline), its return flushes the handles and
    // then releases the context.
    this.#maybeFinalize();
  }

  #finalize(): void {
    for (const h of [...this.#authed]) this.#wipeAuth(h);
    if (this.#ctx) {
      const c = [this.#ctx];
      this.#n.esys.Esys_Finalize(c);
      this.#ctx = null;
    }
    if (this.#tcti) {
      const t = [this.#tcti];
      this.#n.tctiFinalize(t);
      this.#tcti = null;
    }
  }
}

/** `fn.async(...args)` under a deadline (none when it is not finite); `abandoned` runs when a
 * timed-out call finally returns, then `returned` runs on every return. */
function asyncCall(
  fn: NativeFn,
  args: unknown[],
  timeoutMs: number,
  command: string,
  state: { timedOut: boolean } = { timedOut: false },
  abandoned?: (rc: number) => void,
  returned?: () => void,
): Promise<number> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const timer = !Number.isFinite(timeoutMs)
      ? undefined
      : setTimeout(() => {
          if (settled) return;
          settled = true;
          state.timedOut = true;
          reject(
            new TssUnavailableError(
              command,
              undefined,
              `${command}: the TPM did not answer within ${timeoutMs} ms (the connection is abandoned; reconnect)`,
            ),
          );
        }, timeoutMs);
    fn.async(...args, (err: unknown, rc: number) => {
      // The arguments (buffers the native side reads or writes) stay referenced until it returns.
      void args;
      try {
        if (settled) {
          abandoned?.(err ? 0xa000a : rc);
          return;
        }
        settled = true;
        clearTimeout(timer);
        if (err)
          reject(new TssUnavailableError(command, undefined, `${command}: the native call failed`, { cause: err }));
        else resolve(rc);
      } finally {
        returned?.();
      }
    });
  });
}

/** A TCTI configuration for messages: the module and its host/port or path, nothing else. */
function redactTcti(tcti: string | undefined): string {
  if (tcti === undefined) return '(default)';
  return tcti.length > 120 ? `${tcti.slice(0, 120)}…` : tcti;
}
