/**
 * Detectors for Keywarden's own secret forms, as plain functions over text (no secretlint needed):
 * `detectKeywardenSecrets(text, filePath?)` returns where each secret is and what it is.
 *
 * Each detector checks the form precisely, so that what is not a secret is not flagged:
 *  - unseal key (docs/format.md §12): `keywarden-unseal-key:v1:` + base64url of exactly 32 bytes;
 *  - plaintext share (docs/split-knowledge.md §12.1): `kwshare1.<purpose>.ss_<16>.<i>-of-<N>.need-<M>.
 *    <payload>.<checksum>`, with 1 ≤ i ≤ N ≤ 255, 2 ≤ M ≤ N, a canonical base64url payload of a
 *    length the purpose allows whose last byte (the x-coordinate) equals i, and an 8-hex-digit
 *    checksum (a mistyped checksum still leaks the payload, so it is not required to match);
 *  - data-key JSON (what `keywarden datakey` prints): an object with `"keyId"`, `"wrapped"` and a
 *    `"plaintext"` that is base64 of exactly 32 bytes;
 *  - agent credential (packages/agent/src/credentials.ts): `kwagent1.<principal>.<43 base64url>`;
 *  - PIN: a PKCS#11 URI carrying `pin-value=`, and a PIN file (named `pin`, `user.pin`, `so.pin`,
 *    `*.pin`, `pin.txt`, …) holding one line of 1..255 characters.
 * Not flagged: wrapped keys, envelopes and encrypted shares (`-----BEGIN KEYWARDEN ENCRYPTED
 * SHARE-----`): they are ciphertext under a key the repository does not hold; share-set ids,
 * commitments and fingerprints (public); documentation examples, which elide the secret (`QmF3…Ag`).
 */
import { createHash } from 'node:crypto';

export type KeywardenSecretKind = 'unseal-key' | 'share' | 'data-key' | 'agent-credential' | 'pin';

export interface KeywardenFinding {
  kind: KeywardenSecretKind;
  /** The secret part only ([start, end) in the text): the non-secret prefix is left out. */
  range: readonly [number, number];
  /** Non-secret detail: the share's purpose, set and index; the principal; the data key's KEK id. */
  detail: Readonly<Record<string, string>>;
}

/** What to do about each kind once it has been committed (the same words as docs/scanning.md). */
export const REMEDIATION: Readonly<Record<KeywardenSecretKind, string>> = {
  'unseal-key':
    'whoever also has the key store can unseal its root: run `keywarden rekey` now (a new unseal key; this one stops working), and `keywarden root rotate` if the store or a backup of it may have been copied too',
  share:
    'run `keywarden rekey` with a quorum of custodians (a new share set; every old share stops working), and rotate the root (`keywarden root rotate`) if a quorum may have leaked',
  'data-key':
    'a plaintext data key opens what it encrypted without Keywarden: decrypt that data and encrypt it again under a new data key (`keywarden encrypt` or Keywarden.encrypt), then delete the old ciphertexts; rotating the KEK does not help',
  'agent-credential':
    'run `keywarden principal revoke <principal>` (the agent drops its connections within a second), then `keywarden principal issue <principal>` for the service',
  pin: 'change the PIN (or TPM auth value) on the device, then point the root at the new PIN through pin-source=file: outside the repository or env:NAME; a PIN recombined from shares is changed and split again',
};

const B64URL = /^[A-Za-z0-9_-]*$/;

function base64UrlLength(chars: number): number | undefined {
  // Unpadded base64url: a remainder of one character is impossible.
  if (chars % 4 === 1) return undefined;
  return Math.floor((chars * 3) / 4);
}

function decodeBase64Url(s: string): Buffer | undefined {
  if (!B64URL.test(s) || base64UrlLength(s.length) === undefined) return undefined;
  const b = Buffer.from(s, 'base64url');
  // Canonical only: the unused low bits of the last character must be zero (RFC 4648 §3.5).
  return b.toString('base64url') === s ? b : undefined;
}

// ── unseal key ───────────────────────────────────────────────────────────────────────────────
const UNSEAL_RE = /keywarden-unseal-key:v1:([A-Za-z0-9_-]{43})(?![A-Za-z0-9_-])/g;

function unsealKeys(text: string, out: KeywardenFinding[]): void {
  for (const m of text.matchAll(UNSEAL_RE)) {
    const b = decodeBase64Url(m[1] as string);
    if (b?.length !== 32) continue;
    const start = (m.index as number) + m[0].length - 43;
    out.push({ kind: 'unseal-key', range: [start, start + 43], detail: {} });
  }
}

// ── share text ───────────────────────────────────────────────────────────────────────────────
// Whitespace anywhere is ignored by the parser (a share pasted over two lines); the payload may
// wrap, so it is matched with inner whitespace and checked with the whitespace removed.
const SHARE_RE =
  /(?<![A-Za-z0-9_.-])kwshare1\.([a-z][a-z0-9-]{0,31})\.(ss_[A-Za-z0-9_-]{16})\.(\d{1,3})-of-(\d{1,3})\.need-(\d{1,3})\.([A-Za-z0-9_-]+(?:[ \t]*\r?\n[ \t]*[A-Za-z0-9_-]+)*)\.([0-9A-Fa-f]{8})(?![0-9A-Za-z_-])/g;

function payloadLengthOk(purpose: string, bytes: number): boolean {
  if (purpose === 'unseal-key') return bytes === 33;
  if (purpose === 'hsm-pin' || purpose === 'tpm-auth') return [81, 113, 145, 177, 209, 241, 273, 305].includes(bytes);
  return bytes >= 3 && bytes <= 1026;
}

function shares(text: string, out: KeywardenFinding[]): void {
  for (const m of text.matchAll(SHARE_RE)) {
    const [, purpose, set, iText, nText, mText, rawPayload] = m as unknown as string[];
    const i = Number(iText);
    const n = Number(nText);
    const need = Number(mText);
    if (!(n >= 2 && n <= 255 && i >= 1 && i <= n && need >= 2 && need <= n)) continue;
    const payload = (rawPayload as string).replace(/\s+/g, '');
    const bytes = decodeBase64Url(payload);
    if (!bytes || !payloadLengthOk(purpose as string, bytes.length)) continue;
    if (bytes[bytes.length - 1] !== i) continue;
    const head = m[0].length - (rawPayload as string).length - 10; // ".<payload>.<8 hex>"
    const start = (m.index as number) + head + 1;
    out.push({
      kind: 'share',
      range: [start, (m.index as number) + m[0].length],
      detail: { purpose: purpose as string, shareSet: set as string, index: `${i} of ${n}`, threshold: String(need) },
    });
  }
}

/** Whether a share text's checksum matches (docs/split-knowledge.md §12.1); exported for tests. */
export function shareChecksumMatches(share: string): boolean {
  const t = share.replace(/\s+/g, '');
  const cut = t.lastIndexOf('.');
  const sum = createHash('sha256').update(t.slice(0, cut)).digest().subarray(0, 4).toString('hex');
  return sum === t.slice(cut + 1).toLowerCase();
}

// ── data-key JSON ────────────────────────────────────────────────────────────────────────────
const PLAINTEXT_RE = /"plaintext"\s*:\s*"([A-Za-z0-9+/]{43}=)"/g;

function dataKeys(text: string, out: KeywardenFinding[]): void {
  for (const m of text.matchAll(PLAINTEXT_RE)) {
    const at = m.index as number;
    // The enclosing object: from the last "{" before the field to the first "}" after it.
    const open = text.lastIndexOf('{', at);
    const close = text.indexOf('}', at);
    if (open < 0 || close < 0 || close - open > 4096) continue;
    const object = text.slice(open, close + 1);
    if (!/"wrapped"\s*:\s*"/.test(object) || !/"keyId"\s*:/.test(object)) continue;
    if (Buffer.from(m[1] as string, 'base64').length !== 32) continue;
    const keyId = /"keyId"\s*:\s*"([^"\\]{1,128})"/.exec(object)?.[1];
    const start = at + m[0].length - 45;
    out.push({ kind: 'data-key', range: [start, start + 44], detail: keyId ? { keyId } : {} });
  }
}

// ── agent credential ─────────────────────────────────────────────────────────────────────────
const AGENT_RE =
  /(?<![A-Za-z0-9_.-])kwagent1\.([A-Za-z0-9][A-Za-z0-9._@:-]{0,63})\.([A-Za-z0-9_-]{43})(?![A-Za-z0-9_-])/g;

function agentCredentials(text: string, out: KeywardenFinding[]): void {
  for (const m of text.matchAll(AGENT_RE)) {
    if (decodeBase64Url(m[2] as string)?.length !== 32) continue;
    const end = (m.index as number) + m[0].length;
    out.push({ kind: 'agent-credential', range: [end - 43, end], detail: { principal: m[1] as string } });
  }
}

// ── PINs ─────────────────────────────────────────────────────────────────────────────────────
// RFC 7512 §2.3: pin-value is a query attribute; its value ends at "&", a quote or whitespace.
const PIN_VALUE_RE = /pkcs11:[^\s"'`]*?[?&]pin-value=([^&\s"'`]+)/g;
const PIN_FILE_NAME_RE =
  /^(?:(?:user|so|token|hsm)[._-]?)?pin(?:[._-]?file)?(?:\.txt)?$|^tpm[._-]?auth(?:\.txt)?$|\.pin$/i;

function pins(text: string, filePath: string | undefined, out: KeywardenFinding[]): void {
  for (const m of text.matchAll(PIN_VALUE_RE)) {
    // A placeholder is not a PIN: ${PIN} in a template, $PIN in a shell line, {{pin}}, <pin>.
    if (/^(?:\$\{|\$[A-Za-z_]|\{\{|<)/.test(m[1] as string)) continue;
    const end = (m.index as number) + m[0].length;
    out.push({ kind: 'pin', range: [end - (m[1] as string).length, end], detail: { where: 'pkcs11-uri' } });
  }
  if (filePath === undefined) return;
  const base = filePath.split(/[\\/]/).pop() ?? '';
  if (!PIN_FILE_NAME_RE.test(base)) return;
  // A PIN file holds the PIN and at most one trailing newline (docs/pkcs11.md §PIN sources).
  const body = text.endsWith('\r\n') ? text.slice(0, -2) : text.endsWith('\n') ? text.slice(0, -1) : text;
  if (body.length < 1 || body.length > 255 || /[\r\n]/.test(body) || !/^[\x21-\x7e][\x20-\x7e]*$/.test(body)) return;
  out.push({ kind: 'pin', range: [0, body.length], detail: { where: 'pin-file' } });
}

/** Every Keywarden secret in `text`, in order of position. `filePath` enables the PIN-file check. */
export function detectKeywardenSecrets(text: string, filePath?: string): KeywardenFinding[] {
  const out: KeywardenFinding[] = [];
  unsealKeys(text, out);
  shares(text, out);
  dataKeys(text, out);
  agentCredentials(text, out);
  pins(text, filePath, out);
  return out.sort((a, b) => a.range[0] - b.range[0]);
}
