/**
 * Agent credentials: one per principal, issued by an administrator (docs/agent-protocol.md §Authentication).
 *
 * Node exposes no peer credentials on a unix socket, so a client proves which principal it is with
 * a bearer token: "kwagent1.<principal>.<43 base64url characters>" (32 random bytes). The token is
 * shown once, when issued; the key store keeps only SHA-256 of it (meta "agent/credentials"), which
 * is enough because the token has 256 bits of entropy (no password to stretch). The agent compares
 * digests in constant time. Issuing again replaces the principal's token; revoking removes it, and a
 * running agent cuts the principal's open connections within a second (it re-reads the record).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { AccessDeniedError, InvalidInputError, type KeyStore, StoreCorruptError } from '@keywarden/core';

export const CREDENTIALS_META_NAME = 'agent/credentials';
export const CREDENTIAL_PREFIX = 'kwagent1';
const TOKEN_RE = /^kwagent1\.([A-Za-z0-9][A-Za-z0-9._@:-]{0,63})\.([A-Za-z0-9_-]{43})$/;
const PRINCIPAL_RE = /^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$/;
const DOMAIN = 'keywarden/agent-credential/v1\n';

export interface CredentialRecord {
  /** base64url SHA-256 of the domain and the whole token. */
  hash: string;
  issuedAt: string;
}

export interface RevocationRecord {
  revokedAt: string;
}

interface CredentialsDocument {
  v: 1;
  /** Bumped by every issue and revoke: the agent re-checks its connections when it changes. */
  serial: number;
  principals: Record<string, CredentialRecord>;
  /**
   * Principals revoked since their last issue: their client certificates (mutual TLS, which has no
   * token to delete) are refused, and their open TLS connections cut. Absent in records written
   * before mutual TLS; readers ignore fields they do not know, so the record stays version 1.
   */
  revoked?: Record<string, RevocationRecord>;
}

function digest(token: string): Buffer {
  return createHash('sha256').update(DOMAIN).update(token).digest();
}

/** The credentials record of a store (empty when none was ever issued). */
export async function readAgentCredentials(store: KeyStore): Promise<CredentialsDocument> {
  const raw = await store.getMeta(CREDENTIALS_META_NAME);
  if (!raw) return { v: 1, serial: 0, principals: {} };
  try {
    const doc = JSON.parse(Buffer.from(raw).toString('utf8')) as CredentialsDocument;
    if (doc.v !== 1 || typeof doc.principals !== 'object' || !Number.isSafeInteger(doc.serial))
      throw new Error('shape');
    if (doc.revoked !== undefined && (typeof doc.revoked !== 'object' || doc.revoked === null))
      throw new Error('shape');
    return doc;
  } catch {
    throw new StoreCorruptError('agent: the agent/credentials record in the key store is unreadable');
  }
}

async function write(store: KeyStore, doc: CredentialsDocument): Promise<void> {
  await store.putMeta(CREDENTIALS_META_NAME, new TextEncoder().encode(JSON.stringify(doc)));
}

/**
 * Issue (or re-issue) `principal`'s agent credential. The returned token is the only copy: hand it
 * to the service, it is not stored. The principal must also be in the policy to be allowed anything.
 */
export async function issueAgentCredential(
  store: KeyStore,
  principal: string,
  at: Date = new Date(),
): Promise<{ principal: string; token: string; issuedAt: Date }> {
  if (typeof principal !== 'string' || !PRINCIPAL_RE.test(principal)) {
    throw new InvalidInputError('agent: a principal is 1..64 of [A-Za-z0-9._@:-], starting with a letter or digit');
  }
  const secret = randomBytes(32);
  const token = `${CREDENTIAL_PREFIX}.${principal}.${secret.toString('base64url')}`;
  secret.fill(0);
  const doc = await readAgentCredentials(store);
  doc.principals[principal] = { hash: digest(token).toString('base64url'), issuedAt: at.toISOString() };
  // Issuing again re-admits a revoked principal, its client certificates included.
  if (doc.revoked) delete doc.revoked[principal];
  doc.serial++;
  await write(store, doc);
  return { principal, token, issuedAt: at };
}

/**
 * Revoke `principal`: its token is deleted, and its client certificates (mutual TLS) are refused
 * until it is issued a credential again or re-admitted (admitAgentPrincipal). A running agent cuts
 * its open connections, unix socket and TLS alike, within a second. False when it had no token.
 */
export async function revokeAgentCredential(
  store: KeyStore,
  principal: string,
  at: Date = new Date(),
): Promise<boolean> {
  const doc = await readAgentCredentials(store);
  const had = doc.principals[principal] !== undefined;
  if (!had && doc.revoked?.[principal]) return false;
  delete doc.principals[principal];
  doc.revoked = { ...(doc.revoked ?? {}), [principal]: { revokedAt: at.toISOString() } };
  doc.serial++;
  await write(store, doc);
  return had;
}

/**
 * Lift a revocation for mutual TLS without issuing a token: `principal`'s client certificates are
 * accepted again. False when it was not revoked.
 */
export async function admitAgentPrincipal(store: KeyStore, principal: string): Promise<boolean> {
  const doc = await readAgentCredentials(store);
  if (!doc.revoked?.[principal]) return false;
  delete doc.revoked[principal];
  doc.serial++;
  await write(store, doc);
  return true;
}

/** Whether `principal` was revoked (its client certificates are refused). */
export function isPrincipalRevoked(doc: CredentialsDocument, principal: string): boolean {
  return doc.revoked?.[principal] !== undefined;
}

/** A principal name as tokens and certificates carry it: 1..64 of [A-Za-z0-9._@:-]. */
export function isPrincipalName(name: string): boolean {
  return PRINCIPAL_RE.test(name);
}

/** The principal a token names, if it has the token's shape (no check against the store). */
export function credentialPrincipal(token: unknown): string | undefined {
  return typeof token === 'string' ? TOKEN_RE.exec(token)?.[1] : undefined;
}

/**
 * The principal whose current credential `token` is, or AccessDeniedError (the same message for a
 * malformed, unknown, revoked or wrong token: nothing to probe with).
 */
export function checkAgentCredential(doc: CredentialsDocument, token: unknown): string {
  const denied = () => new AccessDeniedError('agent: the credential was not accepted (unknown, revoked or mistyped)');
  const principal = credentialPrincipal(token);
  const expected = Buffer.from(
    (principal !== undefined ? doc.principals[principal]?.hash : undefined) ?? 'A'.repeat(43),
    'base64url',
  );
  // Always one digest and one constant-time comparison, whatever was wrong.
  const presented = digest(typeof token === 'string' ? token.slice(0, 256) : '');
  const ok = expected.length === presented.length && timingSafeEqual(expected, presented);
  if (!ok || principal === undefined || !doc.principals[principal]) throw denied();
  return principal;
}
