/**
 * The token's user PIN, for split knowledge over it (docs/split-knowledge.md §11): draw a fresh
 * random PIN nobody has seen, tell whether a PIN logs in, and change it with C_SetPIN. These run a
 * ceremony step or two, not the hot path: one short session on the main thread (pkcs11js), opened,
 * used and closed by each call; the module is left loaded (never dlclosed).
 */
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { InvalidInputError, parsePkcs11Uri, type RootSecretHooks, type RootSecretOptions, wipe } from '@keywarden/core';
import type * as Pkcs11js from 'pkcs11js';
import { ckrOf } from './_ckr.js';
import { processInitLock, withInitLock } from './_init-lock.js';
import { pkcs11Error } from './errors.js';

/** pkcs11js is CommonJS whose exports live on a native object: loaded through require. */
const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof Pkcs11js;

/** A drawn PIN is this many characters of [A-Za-z0-9] (≈ 190 bits), or the token's maximum if lower. */
const DRAWN_PIN_CHARS = 32;
/** Fewer than this many characters (≈ 95 bits) is refused rather than drawn. */
const MIN_DRAWN_PIN_CHARS = 16;
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

function call<T>(fn: string, f: () => T): T {
  try {
    return f();
  } catch (err) {
    const ckr = ckrOf(err);
    throw ckr ? pkcs11Error(fn, ckr) : pkcs11Error(fn, 'CKR_GENERAL_ERROR', 'native call failed');
  }
}

/** pkcs11js takes a PIN as a string: it exists as one for the length of the call. */
function text(pin: Uint8Array): string {
  return Buffer.from(pin.buffer, pin.byteOffset, pin.byteLength).toString('utf8');
}

interface Opened {
  p: Pkcs11js.PKCS11;
  session: Buffer;
  info: Pkcs11js.TokenInfo;
}

/** One RW session on the token the URI names (by label), closed (and the module finalized) after `f`. */
function withSession<T>(uri: string, options: RootSecretOptions, f: (o: Opened) => T): T {
  const parsed = parsePkcs11Uri(uri);
  wipe(parsed.pinValue);
  const env = options.env ?? process.env;
  const modulePath = parsed.modulePath ?? env.KEYWARDEN_PKCS11_MODULE;
  if (!modulePath) {
    throw new InvalidInputError(
      'pkcs11: the root URI names no module (module-path=…) and KEYWARDEN_PKCS11_MODULE is not set',
    );
  }
  if (!parsed.token) throw new InvalidInputError('pkcs11: the root URI must name the token by label (token=…)');
  const p = new pkcs11js.PKCS11();
  let initialized = false;
  try {
    // Not at the same time as a thread of a pool in this process (_init-lock.ts).
    withInitLock(processInitLock, () => {
      call('C_Initialize', () => p.load(modulePath));
      try {
        p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
        initialized = true;
      } catch (err) {
        // Another part of this process (a pool of threads) has it initialized: leave it so.
        if (ckrOf(err) !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED')
          throw pkcs11Error('C_Initialize', ckrOf(err) || 'CKR_GENERAL_ERROR');
      }
    });
    const slot = call('C_GetSlotList', () => p.C_GetSlotList(true)).find((s) => {
      try {
        return p.C_GetTokenInfo(s).label.trim() === parsed.token;
      } catch {
        return false; // a token deleted under us answers CKR_GENERAL_ERROR: not ours
      }
    });
    if (!slot) throw pkcs11Error('C_GetSlotList', 'CKR_TOKEN_NOT_PRESENT', 'no token with the label');
    const info = call('C_GetTokenInfo', () => p.C_GetTokenInfo(slot));
    const session = call('C_OpenSession', () =>
      p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION),
    );
    try {
      return f({ p, session, info });
    } finally {
      try {
        p.C_CloseSession(session);
      } catch {
        // closing is best effort: the finalize below ends it anyway
      }
    }
  } finally {
    if (initialized) {
      try {
        p.C_Finalize();
      } catch {
        // nothing to do
      }
    }
    // Never dlclose: the module stays loaded for the process's life, so its static destructors
    // run once, at exit, on the main thread (see _pin-module.ts for what they do on a worker's).
  }
}

/** C_Login as the user: true, false for CKR_PIN_INCORRECT; any other failure is thrown. */
function login(o: Opened, pin: Uint8Array): boolean {
  try {
    o.p.C_Login(o.session, pkcs11js.CKU_USER, text(pin));
    return true;
  } catch (err) {
    const ckr = ckrOf(err);
    if (ckr === 'CKR_PIN_INCORRECT') return false;
    if (ckr === 'CKR_USER_ALREADY_LOGGED_IN') {
      throw pkcs11Error('C_Login', ckr, 'this process is logged in already: the PIN cannot be checked');
    }
    throw pkcs11Error('C_Login', ckr || 'CKR_GENERAL_ERROR');
  }
}

function logout(o: Opened): void {
  try {
    o.p.C_Logout(o.session);
  } catch {
    // the session closes next
  }
}

/** The user-PIN hooks of the "pkcs11:" backend (core's RootSecretHooks). */
export const pkcs11UserPinHooks: RootSecretHooks = {
  async draw(uri, options) {
    return withSession(uri, options, (o) => {
      const max = Math.min(o.info.maxPinLen, DRAWN_PIN_CHARS);
      if (max < MIN_DRAWN_PIN_CHARS || max < o.info.minPinLen) {
        throw new InvalidInputError(
          `pkcs11: the token takes user PINs of ${o.info.minPinLen}..${o.info.maxPinLen} characters: too short for a random PIN of ${MIN_DRAWN_PIN_CHARS} or more`,
        );
      }
      const pin = new Uint8Array(max);
      let n = 0;
      while (n < max) {
        // The token's generator and the process's, XORed: either alone suffices.
        const mine = randomBytes(2 * max);
        const token = call('C_GenerateRandom', () => o.p.C_GenerateRandom(o.session, Buffer.alloc(2 * max)));
        for (let i = 0; i < mine.length && n < max; i++) {
          const b = (mine[i] as number) ^ (token[i] as number);
          // Rejection sampling: 248 = 4 × 62, so every character is equally likely.
          if (b < 248) pin[n++] = ALPHABET.charCodeAt(b % 62);
        }
        wipe(mine);
        token.fill(0);
      }
      return pin;
    });
  },
  async check(uri, secret, options) {
    return withSession(uri, options, (o) => {
      const ok = login(o, secret);
      if (ok) logout(o);
      return ok;
    });
  },
  async change(uri, current, next, options) {
    withSession(uri, options, (o) => {
      if (!login(o, current)) throw pkcs11Error('C_Login', 'CKR_PIN_INCORRECT');
      try {
        call('C_SetPIN', () => o.p.C_SetPIN(o.session, text(current), text(next)));
      } finally {
        logout(o);
      }
    });
  },
};
