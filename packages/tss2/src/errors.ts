/**
 * Every TSS2_RC becomes a typed error naming the command and the decoded layer and code, for
 * example `TPM2_Unseal: TPM_RC_POLICY_FAIL (tpm:session(1)): a policy check failed`. The classes
 * extend @keywarden/core's root errors, so a Keywarden caller sees one error model:
 *
 *   TssError             KW_ROOT_DEVICE       the TPM or the TSS refused or failed the command
 *   TssLockoutError      KW_ROOT_LOCKOUT      TPM_RC_LOCKOUT: dictionary-attack lockout
 *   TssUnavailableError  KW_ROOT_UNAVAILABLE  the TPM cannot be reached (TCTI I/O, no connection,
 *                                             no answer within the deadline), or the library is
 *                                             not installed
 */
import { RootDeviceError, RootLockoutError, RootUnavailableError } from '@keywarden/core';
import { TPM_RC_NAMES, TSS2_BASE_RC_NAMES } from './rc-names.js';

/** The decoded parts of a TSS2_RC. */
export interface DecodedRc {
  /** The raw 32-bit return code. */
  rc: number;
  /** The TSS layer: 0 the TPM itself, 7 ESYS, 8 SYS, 9 MU, 10 TCTI, 11/12 resource manager. */
  layer: number;
  /** The code's name: TPM_RC_POLICY_FAIL, or the TSS base code (IO_ERROR, BAD_REFERENCE…). */
  name: string;
  /** The TPM base code (format-one codes with their parameter/handle/session number removed), or
   * the TSS base code. */
  base: number;
  /** libtss2-rc's text, e.g. "tpm:session(1):a policy check failed". */
  text: string;
}

const LAYER_NAMES: Record<number, string> = {
  0: 'tpm',
  6: 'fapi',
  7: 'esapi',
  8: 'sys',
  9: 'mu',
  10: 'tcti',
  11: 'rmt',
  12: 'rm',
};

/** TPM_RC_LOCKOUT (warning 0x921). */
export const TPM_RC_LOCKOUT = 0x921;
/** TCTI-layer and ESYS-layer base codes that mean "the TPM is not reachable". */
const UNREACHABLE_BASES = new Set([8 /* NO_CONNECTION */, 10 /* IO_ERROR */, 9 /* TRY_AGAIN */]);

/** Split a TSS2_RC into layer, base code and name. `text` is supplied by the caller (libtss2-rc). */
export function decodeRc(rc: number, text: string): DecodedRc {
  const value = rc >>> 0;
  const layer = (value >>> 16) & 0xff;
  let base: number;
  let name: string;
  if (layer === 0 || layer === 11 || layer === 12) {
    const low = value & 0xffff;
    if (low & 0x80) {
      base = (low & 0x3f) | 0x80;
    } else {
      base = low & 0x97f;
    }
    name = TPM_RC_NAMES.get(base) ?? `TPM_RC_0x${base.toString(16).padStart(3, '0')}`;
  } else {
    base = value & 0xffff;
    name = TSS2_BASE_RC_NAMES.get(base) ?? `0x${base.toString(16)}`;
    name = `TSS2_${(LAYER_NAMES[layer] ?? `layer${layer}`).toUpperCase()}_RC_${name}`;
  }
  return { rc: value, layer, name, base, text };
}

/** "TPM2_Unseal: TPM_RC_POLICY_FAIL (tpm:session(1)): a policy check failed". */
function formatMessage(command: string, d: DecodedRc): string {
  const colon = d.text.lastIndexOf(':');
  const where = colon > 0 ? d.text.slice(0, colon) : (LAYER_NAMES[d.layer] ?? `layer ${d.layer}`);
  const what = colon > 0 ? d.text.slice(colon + 1) : d.text;
  return `${command}: ${d.name} (${where})${what ? `: ${what}` : ''}`.replace(/[\r\n]+/g, ' ');
}

/** Fields every TSS error carries. */
export interface TssErrorFields {
  /** The TPM command or TSS function, e.g. "TPM2_Unseal", "Tss2_TctiLdr_Initialize". */
  readonly command: string;
  readonly rc: number;
  readonly layer: number;
  /** TPM_RC_… or TSS2_…_RC_… */
  readonly rcName: string;
  /** The base code (see DecodedRc.base). */
  readonly base: number;
}

/** The TPM or the TSS refused or failed a command. */
export class TssError extends RootDeviceError implements TssErrorFields {
  readonly command: string;
  readonly rc: number;
  readonly layer: number;
  readonly rcName: string;
  readonly base: number;
  constructor(command: string, d: DecodedRc) {
    super(formatMessage(command, d));
    this.command = command;
    this.rc = d.rc;
    this.layer = d.layer;
    this.rcName = d.name;
    this.base = d.base;
  }
}

/** TPM_RC_LOCKOUT: the TPM's dictionary-attack protection locked authorizations. */
export class TssLockoutError extends RootLockoutError implements TssErrorFields {
  readonly command: string;
  readonly rc: number;
  readonly layer: number;
  readonly rcName: string;
  readonly base: number;
  constructor(command: string, d: DecodedRc) {
    super(
      `${formatMessage(command, d)} (wait for the lockout recovery time, or reset it with the lockout authorization)`,
    );
    this.command = command;
    this.rc = d.rc;
    this.layer = d.layer;
    this.rcName = d.name;
    this.base = d.base;
  }
}

/** The TPM cannot be reached: connection refused or lost, no answer within the deadline, or the
 * tpm2-tss libraries are missing. Retrying later may succeed (after a reconnect). */
export class TssUnavailableError extends RootUnavailableError implements TssErrorFields {
  readonly command: string;
  readonly rc: number;
  readonly layer: number;
  readonly rcName: string;
  readonly base: number;
  constructor(command: string, d: DecodedRc | undefined, message?: string, options?: { cause?: unknown }) {
    super(message ?? formatMessage(command, d as DecodedRc), options);
    this.command = command;
    this.rc = d?.rc ?? 0;
    this.layer = d?.layer ?? 10;
    this.rcName = d?.name ?? 'unavailable';
    this.base = d?.base ?? 0;
  }
}

/** The typed error for `rc` returned by `command`. */
export function tssError(command: string, d: DecodedRc): TssError | TssLockoutError | TssUnavailableError {
  if (d.layer === 0 && d.base === TPM_RC_LOCKOUT) return new TssLockoutError(command, d);
  if ((d.layer === 10 || d.layer === 7 || d.layer === 8) && UNREACHABLE_BASES.has(d.base)) {
    return new TssUnavailableError(command, d);
  }
  return new TssError(command, d);
}

/** True when `err` is a TSS error whose TPM code is `name` (TPM_RC_AUTH_FAIL, …). */
export function isTpmRc(err: unknown, name: string): boolean {
  return (
    typeof err === 'object' &&
    err !== null &&
    (err as TssErrorFields).layer === 0 &&
    (err as TssErrorFields).rcName === name
  );
}
