/**
 * One pool worker (a worker_threads thread): one PKCS#11 session, used by this thread only, since
 * PKCS#11 v2.40 §5.1 leaves concurrent use of one session by two threads undefined. graphene-pk11
 * gives the object model (module, slot found by token label, session, key generation, object
 * search and destruction); the hot path (AES-GCM C_EncryptInit/C_Encrypt, C_DecryptInit/C_Decrypt)
 * calls pkcs11js beneath it directly, with the object handle cached for the session's life.
 *
 * The worker recovers by itself from what a token does under a running process: a session closed
 * or invalidated (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED), the module finalized by another
 * thread (CKR_CRYPTOKI_NOT_INITIALIZED), the login lost (CKR_USER_NOT_LOGGED_IN, or private object
 * handles gone: CKR_OBJECT_HANDLE_INVALID / CKR_KEY_HANDLE_INVALID). It re-initialises the module,
 * reopens its session, logs in again with the PIN it holds while the root is unsealed, finds the
 * object again, and retries the call once. What still fails goes back as the CKR name and the
 * function; the main thread turns it into a typed error (errors.ts).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { withInitLock } from './_init-lock.js';
import * as graphene from 'graphene-pk11';
import { createRequire } from 'node:module';
import type * as Pkcs11js from 'pkcs11js';
import { ckrOf } from './_ckr.js';
import { type KeyPairRequest, keyPairOp } from './_worker-keypairs.js';
import { FrameWriter, LAST_CHUNK, readRequests, writeReply } from './_wire.js';

/** pkcs11js is CommonJS whose exports live on a native object: loaded through require. */
const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof Pkcs11js;

export interface WorkerConfig {
  modulePath: string;
  token: string;
  /** Threads only: the process's lock around the module's load and C_Initialize (_init-lock.ts). */
  initLock?: Int32Array;
}

/** A request from the pool. Byte fields are fresh copies the worker may wipe. */
export type WorkerRequest =
  | { seq: number; op: 'open' }
  | { seq: number; op: 'login'; pin: Uint8Array; hold: boolean }
  | { seq: number; op: 'forget' }
  | { seq: number; op: 'logout' }
  | { seq: number; op: 'info' }
  | { seq: number; op: 'generate'; label: string; id: Uint8Array; usage: 'root' | 'kek' }
  | { seq: number; op: 'exists'; label: string; id: Uint8Array }
  | { seq: number; op: 'encrypt'; label: string; id: Uint8Array; iv: Uint8Array; aad: Uint8Array; data: Uint8Array }
  | { seq: number; op: 'decrypt'; label: string; id: Uint8Array; iv: Uint8Array; aad: Uint8Array; data: Uint8Array }
  | { seq: number; op: 'random'; length: number }
  | { seq: number; op: 'destroy'; label?: string; id: Uint8Array; prefix?: boolean }
  | { seq: number; op: 'close' }
  /** Fault injection for the test suites: the thread dies at once, mid-request for the pool. */
  | { seq: number; op: 'crash' }
  /** Fault injection: the worker blocks for `ms` as a call stuck inside the module would. */
  | { seq: number; op: 'stall'; ms: number }
  /** Fault injection: C_Finalize from this thread, between two of its requests. */
  | { seq: number; op: 'finalize' }
  /** Fault injection: C_CloseAllSessions on the token's slot, from this worker's module instance
   * (for a child process, no other process can close its sessions). */
  | { seq: number; op: 'close-all' }
  /** Key pairs (_worker-keypairs.ts). */
  | KeyPairRequest;

export interface WorkerFailure {
  /** "ckr": a CKR return value; "decrypt": the token refused to authenticate the ciphertext;
   * "missing": no object with that label and id; "other": anything else (message is Keywarden's). */
  kind: 'ckr' | 'decrypt' | 'missing' | 'other';
  fn: string;
  ckr: string;
  detail?: string;
}

/** A batch of requests as it crosses to the worker, and a chunk of replies as it comes back: one
 * flat binary frame each (_wire.ts says why and how). */
export type WorkerBatch = Uint8Array;
export type WorkerBatchReply = Uint8Array;

/** Replies go back after this many requests or this many milliseconds of work, whichever comes
 * first, and at the end of every batch. Each reply message costs this worker a write to its
 * channel (10% of a child's time at 16 requests / 2 ms, V8 CPU profile under full load) and the
 * host a read; the pool sends the next batch, with everything asked for meanwhile, when the last
 * chunk of this one arrives (_pool.ts PIPELINE_DEPTH says why not sooner). Measured on
 * a process pool of 1 at full load, alternating: 64 / 4 ms gave 5,700-7,800 ops/s and 22-34 µs of
 * host CPU per op, 16 / 2 ms 4,700-6,500 ops/s and 42-66 µs. */
const REPLY_EVERY_REQUESTS = 64;
const REPLY_EVERY_MS = 4;

/** SoftHSM reports a GCM tag mismatch as CKR_GENERAL_ERROR; the standard's codes are the others. */
const DECRYPT_REFUSED = new Set(['CKR_ENCRYPTED_DATA_INVALID', 'CKR_ENCRYPTED_DATA_LEN_RANGE', 'CKR_GENERAL_ERROR']);
/** What the worker repairs (reopen, re-login, find again) before retrying the call once. */
const RECOVERABLE = new Set([
  'CKR_SESSION_HANDLE_INVALID',
  'CKR_SESSION_CLOSED',
  'CKR_CRYPTOKI_NOT_INITIALIZED',
  'CKR_USER_NOT_LOGGED_IN',
  'CKR_OBJECT_HANDLE_INVALID',
  'CKR_KEY_HANDLE_INVALID',
  'CKR_DEVICE_REMOVED',
  'CKR_TOKEN_NOT_PRESENT',
  // An operation left active on the session (an Init whose C_Encrypt/C_Decrypt never ran, e.g. a
  // thread stopped between the two): a fresh session has none.
  'CKR_OPERATION_ACTIVE',
]);

class Failure extends Error {
  constructor(readonly failure: WorkerFailure) {
    super(`${failure.fn}: ${failure.ckr}`);
  }
}

function wipe(b: Uint8Array | undefined): void {
  if (b) b.fill(0);
}

function asFailure(fn: string, err: unknown): Failure {
  if (err instanceof Failure) return err;
  const ckr = ckrOf(err);
  return new Failure(ckr ? { kind: 'ckr', fn, ckr } : { kind: 'other', fn, ckr: '', detail: 'native call failed' });
}

/** A thread gets its configuration as workerData; a child process (pool kind "processes") as its
 * one argument, JSON (the module path and token label: no secret; the PIN comes over the IPC
 * channel in a login request, like every other request). */
const config = (workerData as WorkerConfig | null) ?? (JSON.parse(process.argv[2] ?? '{}') as WorkerConfig);
let mod: graphene.Module | undefined;
let session: graphene.Session | undefined;
/** The user PIN while the root is unsealed (to log in again after the token dropped the login). */
let heldPin: Uint8Array | undefined;
/** Object handles for this session: label ‖ id → handle. */
const handles = new Map<string, Buffer>();

function call<T>(fn: string, f: () => T): T {
  try {
    return f();
  } catch (err) {
    throw asFailure(fn, err);
  }
}

function openSession(): graphene.Session {
  // One thread of the process at a time loads the module and calls C_Initialize (_init-lock.ts:
  // SoftHSM2 crashes when two threads make their first call at once).
  const m = withInitLock(config.initLock, () => {
    if (!mod) {
      mod = call('C_Initialize', () => graphene.Module.load(config.modulePath, 'keywarden'));
    }
    const loaded = mod;
    // graphene treats CKR_CRYPTOKI_ALREADY_INITIALIZED as success: every worker of the process
    // shares the one loaded library. CKF_OS_LOCKING_OK: the module is called from several threads.
    call('C_Initialize', () => loaded.initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK }));
    return loaded;
  });
  const slots = call('C_GetSlotList', () => m.getSlots(true));
  for (let i = 0; i < slots.length; i++) {
    const slot = slots.items(i);
    let label: string;
    try {
      label = slot.getToken().label.trim();
    } catch {
      // A token deleted by another process leaves a slot that answers CKR_GENERAL_ERROR: not ours.
      continue;
    }
    if (label === config.token) {
      const s = call('C_OpenSession', () =>
        slot.open(graphene.SessionFlag.SERIAL_SESSION | graphene.SessionFlag.RW_SESSION),
      );
      handles.clear();
      return s;
    }
  }
  throw new Failure({
    kind: 'ckr',
    fn: 'C_GetSlotList',
    ckr: 'CKR_TOKEN_NOT_PRESENT',
    detail: 'no token with the label',
  });
}

function login(s: graphene.Session, pin: Uint8Array): void {
  // pkcs11js takes the PIN as a string: it exists as one for the length of this call.
  try {
    s.login(Buffer.from(pin.buffer, pin.byteOffset, pin.byteLength).toString('utf8'), graphene.UserType.USER);
  } catch (err) {
    // The login state belongs to the application (PKCS#11 §5.6): another worker already logged in.
    if (ckrOf(err) !== 'CKR_USER_ALREADY_LOGGED_IN') throw asFailure('C_Login', err);
  }
}

/** PKCS#11 v2.40 §5.6: CKS_RO_USER_FUNCTIONS (1), CKS_RW_USER_FUNCTIONS (3). Asks the token. */
function loggedIn(s: graphene.Session): boolean {
  const state = call('C_GetSessionInfo', () => s.lib.C_GetSessionInfo(s.handle).state);
  return state === 1 || state === 3;
}

/** Whether this worker logged in since its session opened (the token may have dropped it since:
 * the recovery path finds out). Saves a C_GetSessionInfo per call. */
let didLogin = false;

function current(): graphene.Session {
  if (!session) session = openSession();
  if (heldPin && !didLogin) {
    login(session, heldPin);
    didLogin = true;
  }
  return session;
}

/** Repair after a recoverable failure: a new session (the old one may be gone), logged in again. */
function reset(): void {
  const old = session;
  session = undefined;
  didLogin = false;
  handles.clear();
  if (old) {
    try {
      old.close();
    } catch {
      // Already invalid: nothing to close.
    }
  }
  try {
    session = openSession();
  } catch (err) {
    const f = asFailure('C_OpenSession', err);
    if (f.failure.ckr !== 'CKR_CRYPTOKI_NOT_INITIALIZED') throw f;
    session = openSession();
  }
  if (heldPin) {
    login(session, heldPin);
    didLogin = true;
  }
}

/** Run `f`; after a recoverable failure repair the session and run it again, at most twice more
 * (a C_CloseAllSessions still running in another thread can close the session just reopened). */
function withRecovery<T>(f: () => T): T {
  for (let attempt = 0; ; attempt++) {
    try {
      return f();
    } catch (err) {
      const failure = asFailure('worker', err);
      if (!RECOVERABLE.has(failure.failure.ckr) || attempt >= 2) throw failure;
      reset();
    }
  }
}

/** A Buffer over the same bytes (no copy): pkcs11js takes Buffers. */
function view(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

function keyHandle(label: string, id: Uint8Array): Buffer {
  const k = `${label}\u0000${view(id).toString('hex')}`;
  const cached = handles.get(k);
  if (cached) return cached;
  const s = current();
  const found = call('C_FindObjects', () =>
    s.find({ class: graphene.ObjectClass.SECRET_KEY, label, id: Buffer.from(id) }),
  );
  if (found.length !== 1) {
    // Logged out, private objects are invisible: say so rather than "missing".
    if (!loggedIn(s)) throw new Failure({ kind: 'ckr', fn: 'C_FindObjects', ckr: 'CKR_USER_NOT_LOGGED_IN' });
    throw new Failure({ kind: 'missing', fn: 'C_FindObjects', ckr: '', detail: 'no such key object on the token' });
  }
  const h = found.items(0).handle;
  handles.set(k, h);
  return h;
}

function gcm(iv: Uint8Array, aad: Uint8Array): Pkcs11js.Mechanism {
  return {
    mechanism: pkcs11js.CKM_AES_GCM,
    parameter: { type: pkcs11js.CK_PARAMS_AES_GCM, iv: view(iv), aad: view(aad), tagBits: 128 },
  } as Pkcs11js.Mechanism;
}

function encrypt(r: Extract<WorkerRequest, { op: 'encrypt' }>): Uint8Array {
  return withRecovery(() => {
    const s = current();
    const h = keyHandle(r.label, r.id);
    const out = Buffer.alloc(r.data.length + 16);
    call('C_EncryptInit', () => s.lib.C_EncryptInit(s.handle, gcm(r.iv, r.aad), h));
    const ct = call('C_Encrypt', () => s.lib.C_Encrypt(s.handle, view(r.data), out));
    return new Uint8Array(ct.buffer, ct.byteOffset, ct.byteLength);
  });
}

function decrypt(r: Extract<WorkerRequest, { op: 'decrypt' }>): Uint8Array {
  return withRecovery(() => {
    const s = current();
    const h = keyHandle(r.label, r.id);
    const out = Buffer.alloc(r.data.length);
    call('C_DecryptInit', () => s.lib.C_DecryptInit(s.handle, gcm(r.iv, r.aad), h));
    let pt: Buffer;
    try {
      pt = s.lib.C_Decrypt(s.handle, view(r.data), out);
    } catch (err) {
      wipe(out);
      const f = asFailure('C_Decrypt', err);
      if (DECRYPT_REFUSED.has(f.failure.ckr))
        throw new Failure({ kind: 'decrypt', fn: 'C_Decrypt', ckr: f.failure.ckr });
      throw f;
    }
    return new Uint8Array(pt.buffer, pt.byteOffset, pt.byteLength);
  });
}

function generate(r: Extract<WorkerRequest, { op: 'generate' }>): void {
  withRecovery(() => {
    const s = current();
    // PKCS#11 v2.40 §4.10 / §2.8: an AES-256 secret key made inside the token, persistent (TOKEN),
    // readable only after login (PRIVATE), never revealed (SENSITIVE, not EXTRACTABLE), and with
    // only the usages it needs: encrypt and decrypt (AES-GCM); no wrap, unwrap, sign or derive.
    call('C_GenerateKey', () =>
      s.generateKey(graphene.KeyGenMechanism.AES, {
        class: graphene.ObjectClass.SECRET_KEY,
        keyType: graphene.KeyType.AES,
        token: true,
        private: true,
        sensitive: true,
        extractable: false,
        modifiable: false,
        encrypt: true,
        decrypt: true,
        wrap: false,
        unwrap: false,
        sign: false,
        verify: false,
        derive: false,
        valueLen: 32,
        label: r.label,
        id: Buffer.from(r.id),
      }),
    );
  });
}

function destroy(r: Extract<WorkerRequest, { op: 'destroy' }>): number {
  return withRecovery(() => {
    const s = current();
    const found = call('C_FindObjects', () =>
      s.find(
        r.prefix
          ? { class: graphene.ObjectClass.SECRET_KEY }
          : { class: graphene.ObjectClass.SECRET_KEY, id: Buffer.from(r.id), ...(r.label ? { label: r.label } : {}) },
      ),
    );
    const want = Buffer.from(r.id);
    let n = 0;
    for (let i = 0; i < found.length; i++) {
      const o = found.items(i);
      if (r.prefix) {
        const id = call('C_GetAttributeValue', () => o.getAttribute({ id: null }).id as Buffer | undefined);
        if (!id || id.length <= want.length || !id.subarray(0, want.length).equals(want)) continue;
      }
      call('C_DestroyObject', () => o.destroy());
      n++;
    }
    handles.clear();
    return n;
  });
}

function handle(r: WorkerRequest): unknown {
  switch (r.op) {
    case 'open':
      current();
      return undefined;
    case 'login':
      try {
        const s = current();
        login(s, r.pin);
        didLogin = true;
        if (r.hold) {
          wipe(heldPin);
          heldPin = r.pin;
        } else {
          wipe(r.pin);
        }
      } catch (err) {
        wipe(r.pin);
        throw err;
      }
      return undefined;
    case 'forget':
      wipe(heldPin);
      heldPin = undefined;
      didLogin = false;
      handles.clear();
      return undefined;
    case 'logout':
      wipe(heldPin);
      heldPin = undefined;
      didLogin = false;
      handles.clear();
      if (session && loggedIn(session)) {
        const s = session;
        try {
          s.logout();
        } catch (err) {
          if (ckrOf(err) !== 'CKR_USER_NOT_LOGGED_IN') throw asFailure('C_Logout', err);
        }
      }
      return undefined;
    case 'info': {
      const s = current();
      const info = s.slot.getToken();
      return { serial: info.serialNumber.trim(), label: info.label.trim(), loggedIn: loggedIn(s) };
    }
    case 'generate':
      generate(r);
      return undefined;
    case 'exists':
      return withRecovery(() => {
        const s = current();
        return s.find({ class: graphene.ObjectClass.SECRET_KEY, label: r.label }).length > 0;
      });
    case 'encrypt':
      try {
        return encrypt(r);
      } finally {
        wipe(r.data);
      }
    case 'decrypt':
      return decrypt(r);
    case 'random':
      return withRecovery(() => {
        const s = current();
        const out = Buffer.alloc(r.length);
        call('C_GenerateRandom', () => s.lib.C_GenerateRandom(s.handle, out));
        return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
      });
    case 'destroy':
      return destroy(r);
    case 'close':
      wipe(heldPin);
      heldPin = undefined;
      handles.clear();
      if (session) {
        const s = session;
        session = undefined;
        try {
          s.close();
        } catch {
          // Already closed under us (C_CloseAllSessions, C_Finalize): nothing to release.
        }
      }
      return undefined;
    case 'crash':
      process.exit(70);
      return undefined;
    case 'stall':
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, r.ms);
      return undefined;
    case 'finalize':
      call('C_Finalize', () => mod?.finalize());
      return undefined;
    case 'close-all': {
      const s = current();
      call('C_CloseAllSessions', () => s.lib.C_CloseAllSessions(s.slot.handle));
      return undefined;
    }
    case 'kp-generate':
    case 'kp-sign':
    case 'kp-destroy':
    case 'kp-algorithms':
      return keyPairOp(r, { current, withRecovery, call, loggedIn });
  }
}

/** The pool sends requests in batches (what accumulated during one turn of its event loop), one
 * binary frame each (_wire.ts); the requests' byte fields are views of that frame (the PIN alone is
 * copied out, as it is kept). Replies go back in chunks (REPLY_EVERY_*), one binary frame each; this
 * thread wipes its own copies of results as they are written, and the batch's frame once the batch
 * is done. */
const out = new FrameWriter();

function serve(frame: WorkerBatch, post: (reply: WorkerBatchReply) => void): void {
  let count = 0;
  let flagsAt = 0;
  let countAt = 0;
  const begin = () => {
    flagsAt = out.length;
    out.u8(0);
    countAt = out.mark();
    count = 0;
  };
  const send = (last: boolean) => {
    out.setU8(flagsAt, last ? LAST_CHUNK : 0);
    out.patch(countAt, count);
    post(out.take());
  };
  let since = performance.now();
  begin();
  try {
    const requests = readRequests(frame);
    for (let i = 0; i < requests.length; i++) {
      const r = requests[i] as unknown as WorkerRequest;
      if (r.op === 'login') r.pin = r.pin.slice();
      try {
        const result = handle(r);
        writeReply(out, r.seq, true, result);
        if (result instanceof Uint8Array) wipe(result);
      } catch (err) {
        writeReply(out, r.seq, false, asFailure(r.op, err).failure);
      }
      count++;
      if (i < requests.length - 1 && (count >= REPLY_EVERY_REQUESTS || performance.now() - since >= REPLY_EVERY_MS)) {
        send(false);
        begin();
        since = performance.now();
      }
    }
    // The last chunk says the batch is done (the pool sends the next one when fewer than two are
    // left with this worker), even when it carries no reply.
    send(true);
  } finally {
    // Reset the scratch (a chunk cut short by an exception): take() wipes it.
    out.take();
    wipe(frame);
  }
}

if (parentPort) {
  const port = parentPort;
  // Transferred: the main thread gets the frame, this thread keeps no copy.
  port.on('message', (batch: WorkerBatch) =>
    serve(batch, (reply) => port.postMessage(reply, [reply.buffer as ArrayBuffer])),
  );
} else if (process.send) {
  // A child process (_process-channel.ts): frames arrive over the IPC channel ("advanced"
  // serialization: one typed array, sent as its bytes). process.send serializes the reply before
  // it returns, so the reply frame is wiped here at once.
  process.on('message', (batch: WorkerBatch) =>
    serve(batch, (reply) => {
      process.send?.(reply);
      wipe(reply);
    }),
  );
  // No orphans: when the parent dies or closes the pool the channel closes, and the child goes.
  process.on('disconnect', () => process.exit(0));
}
