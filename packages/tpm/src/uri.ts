/**
 * The "tpm:" root URI (docs/tpm.md §URI):
 *
 *   tpm:[attribute;attribute…][?query&query…]
 *
 *   attributes (what the root is; recorded in the store when the root is made):
 *     alg=ecc|rsa        the storage primary's TCG template: ECC NIST P-256 (default) or RSA-2048
 *     handle=0x81xxxxxx  keep the primary persistent at this handle (else: re-derived from the
 *                        owner hierarchy on every open, and never stored anywhere)
 *     pcrs=7,16          bind every KEK to these SHA-256 PCRs (a policy: unsealing fails once
 *                        one of them changes); `pcrs=sha256:7,16` says the bank explicitly
 *   query (how to reach it and unlock it, never recorded):
 *     tcti=CONF          the TCTI: swtpm:host=127.0.0.1,port=2321, device:/dev/tpmrm0, tabrmd…
 *                        (percent-encoding allowed). Default: KEYWARDEN_TPM_TCTI, then the
 *                        tpm2-tss default (TPM2TOOLS_TCTI/TCTI, tabrmd, /dev/tpmrm0…)
 *     tcti-env=NAME      … or from this environment variable
 *     auth-env=NAME      the root's auth value (the unlocking secret) from this variable (UTF-8)
 *     auth-file=PATH     … or from this file (its bytes, a final newline removed)
 *     timeout-ms=N       deadline for each TPM command (default 10000)
 *     lock=PATH|none     the cross-process lock file taken around each TPM operation (default
 *                        <tmpdir>/keywarden-tpm-<hash of the TCTI>.lock); none: no lock (a TPM
 *                        behind a resource manager, /dev/tpmrm0)
 *
 * Examples: `tpm:`, `tpm:alg=rsa;pcrs=7`, `tpm:handle=0x81000001?tcti=device:/dev/tpmrm0`.
 */
import { InvalidInputError } from '@keywarden/core';

export interface TpmUri {
  alg?: 'ecc' | 'rsa';
  handle?: number;
  pcrs?: number[];
  tcti?: string;
  tctiEnv?: string;
  authEnv?: string;
  authFile?: string;
  timeoutMs?: number;
  /** The lock file (absolute path), or false for none. */
  lockFile?: string | false;
}

const ATTRS = new Set(['alg', 'handle', 'pcrs']);
const QUERY = new Set(['tcti', 'tcti-env', 'auth-env', 'auth-file', 'timeout-ms', 'lock']);

function decode(name: string, value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    throw new InvalidInputError(`tpm: "${name}" in the root URI is not validly percent-encoded`);
  }
}

function pairs(text: string, sep: string, allowed: Set<string>, where: string): Map<string, string> {
  const out = new Map<string, string>();
  if (text.length === 0) return out;
  for (const part of text.split(sep)) {
    const eq = part.indexOf('=');
    const name = eq > 0 ? part.slice(0, eq) : part;
    if (!allowed.has(name)) {
      throw new InvalidInputError(
        `tpm: unknown ${where} "${name.slice(0, 32)}" in the root URI (${where}s: ${[...allowed].join(', ')})`,
      );
    }
    if (eq <= 0) throw new InvalidInputError(`tpm: "${name}" in the root URI needs a value`);
    if (out.has(name)) throw new InvalidInputError(`tpm: "${name}" appears more than once in the root URI`);
    out.set(name, decode(name, part.slice(eq + 1)));
  }
  return out;
}

/** Parse a "tpm:" URI. Never echoes the URI in an error (it may name a secret's file). */
export function parseTpmUri(uri: string): TpmUri {
  if (typeof uri !== 'string' || !/^tpm:/i.test(uri))
    throw new InvalidInputError('tpm: a TPM root URI begins with "tpm:"');
  const rest = uri.slice(4);
  const q = rest.indexOf('?');
  const attrs = pairs(q === -1 ? rest : rest.slice(0, q), ';', ATTRS, 'attribute');
  const query = pairs(q === -1 ? '' : rest.slice(q + 1), '&', QUERY, 'query parameter');
  const out: TpmUri = {};
  const alg = attrs.get('alg');
  if (alg !== undefined) {
    if (alg !== 'ecc' && alg !== 'rsa')
      throw new InvalidInputError('tpm: alg is "ecc" (NIST P-256) or "rsa" (RSA-2048)');
    out.alg = alg;
  }
  const handle = attrs.get('handle');
  if (handle !== undefined) {
    if (!/^0x81[0-9a-fA-F]{6}$/.test(handle)) {
      throw new InvalidInputError('tpm: handle is a persistent handle, 0x81000000..0x81ffffff');
    }
    out.handle = Number.parseInt(handle, 16);
  }
  const pcrs = attrs.get('pcrs');
  if (pcrs !== undefined) {
    const list = pcrs.replace(/^sha256:/i, '');
    if (!/^\d{1,2}(,\d{1,2})*$/.test(list))
      throw new InvalidInputError('tpm: pcrs is a list of PCR indices, e.g. pcrs=7,16');
    const values = [...new Set(list.split(',').map(Number))].sort((a, b) => a - b);
    if (values.some((p) => p > 23)) throw new InvalidInputError('tpm: a PCR index is 0..23');
    out.pcrs = values;
  }
  const tcti = query.get('tcti');
  if (tcti !== undefined) out.tcti = tcti;
  const tctiEnv = query.get('tcti-env');
  if (tctiEnv !== undefined) out.tctiEnv = tctiEnv;
  if (out.tcti !== undefined && out.tctiEnv !== undefined) {
    throw new InvalidInputError('tpm: give the TCTI once: tcti= or tcti-env=');
  }
  const authEnv = query.get('auth-env');
  if (authEnv !== undefined) out.authEnv = authEnv;
  const authFile = query.get('auth-file');
  if (authFile !== undefined) out.authFile = authFile;
  if (out.authEnv !== undefined && out.authFile !== undefined) {
    throw new InvalidInputError('tpm: give the auth value once: auth-env= or auth-file=');
  }
  const t = query.get('timeout-ms');
  if (t !== undefined) {
    if (!/^\d{1,6}$/.test(t) || Number(t) < 1) throw new InvalidInputError('tpm: timeout-ms is 1..600000');
    out.timeoutMs = Number(t);
  }
  const lock = query.get('lock');
  if (lock !== undefined) {
    if (lock === 'none') out.lockFile = false;
    else if (lock.startsWith('/') && !lock.includes('\0')) out.lockFile = lock;
    else throw new InvalidInputError('tpm: lock is an absolute path or none');
  }
  return out;
}
