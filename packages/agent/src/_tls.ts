/**
 * Remote clients over TCP with mutual TLS (docs/agent-protocol.md §1.1): TLS 1.3 only, the client
 * must present a certificate issued by the configured client CA, and the certificate names the
 * principal whose policy decides each request (it replaces the token of a unix-socket client).
 *
 * Which certificate field names the principal: a URI subject alternative name
 * `keywarden:principal:NAME` (RFC 5280 §4.2.1.6), exactly one of them. The subject CN is NOT used by
 * default: a client CA that also issues certificates for other purposes puts host or person names
 * in CNs, and those must never become principals by accident; a URI in a scheme only Keywarden
 * uses cannot be. `principalFrom: 'cn'` opts into the CN for a CA that cannot set URIs (then the
 * CA must be dedicated to the agent).
 *
 * Nothing here logs or formats key material: certificate fields and OpenSSL reason codes only.
 */
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { AgentError } from '@keywarden/core';
import { isPrincipalName } from './credentials.js';

/** The agent's TLS listener (AgentServerOptions.listen). */
export interface AgentListenOptions {
  /** The address to bind, e.g. "0.0.0.0", "127.0.0.1" or "::1". */
  host: string;
  /** The TCP port; 0 picks a free one (AgentServer.tcpAddress says which). */
  port: number;
  tls: AgentTlsOptions;
}

export interface AgentTlsOptions {
  /** The agent's certificate chain, PEM. */
  cert: string | Uint8Array;
  /** The agent's private key, PEM (a secret: the agent keeps it only inside its TLS context). */
  key: string | Uint8Array;
  /** The CA (PEM, one or more certificates) whose client certificates are accepted. */
  clientCa: string | Uint8Array;
  /** Which field names the principal: the URI SAN `keywarden:principal:NAME` (default) or the subject CN. */
  principalFrom?: 'uri' | 'cn';
}

/** A remote agent (AgentClient): TLS 1.3 with this client's certificate. */
export interface AgentTcpEndpoint {
  host: string;
  port: number;
  tls: AgentClientTlsOptions;
  /** How messages name it; default `tls://host:port`. */
  display?: string;
}

export interface AgentClientTlsOptions {
  /** This client's certificate chain, PEM (it names the principal). */
  cert: string | Uint8Array;
  /** This client's private key, PEM. */
  key: string | Uint8Array;
  /** The CA (PEM) that issued the agent's certificate. */
  ca: string | Uint8Array;
  /** The name to check the agent's certificate against; default the host. */
  servername?: string;
}

export const PRINCIPAL_URI_PREFIX = 'keywarden:principal:';
/** RFC 8446: the only version either side speaks. */
export const TLS_VERSION = 'TLSv1.3' as const;

export function tcpDisplay(host: string, port: number): string {
  return `tls://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/**
 * The principal a verified client certificate names, or the reason it names none (a one-line
 * message for the client and the log).
 */
export function principalFromCertificate(
  cert: PeerCertificate | undefined,
  from: 'uri' | 'cn',
): { principal: string } | { refused: string } {
  if (!cert || Object.keys(cert).length === 0) return { refused: 'agent: no client certificate' };
  if (from === 'cn') {
    const cn = cert.subject?.CN;
    const name = Array.isArray(cn) ? undefined : cn;
    if (name === undefined) return { refused: 'agent: the client certificate has no single subject CN (principal)' };
    if (!isPrincipalName(name)) {
      return { refused: 'agent: the client certificate CN is not a principal name (1..64 of [A-Za-z0-9._@:-])' };
    }
    return { principal: name };
  }
  const uris = subjectAltNames(cert.subjectaltname).filter((s) => s.startsWith(`URI:${PRINCIPAL_URI_PREFIX}`));
  if (uris.length === 0) {
    return {
      refused: `agent: the client certificate names no principal (expected one URI subject alternative name ${PRINCIPAL_URI_PREFIX}NAME)`,
    };
  }
  if (uris.length > 1) return { refused: 'agent: the client certificate names more than one principal' };
  const name = (uris[0] as string).slice(`URI:${PRINCIPAL_URI_PREFIX}`.length);
  if (!isPrincipalName(name)) {
    return {
      refused: 'agent: the principal in the client certificate is not a valid name (1..64 of [A-Za-z0-9._@:-])',
    };
  }
  return { principal: name };
}

/**
 * Node's `subjectaltname` text: entries separated by ", ", each `TYPE:value`; a value with a
 * comma, quote or other special character is quoted (and then never a valid principal, which has
 * none of those, so quoted entries are kept as they are and fail the name check).
 */
function subjectAltNames(text: string | undefined): string[] {
  if (!text) return [];
  return text.split(', ');
}

/**
 * Why a client's certificate failed OpenSSL's verification against the client CA (Node's
 * `authorizationError`), as the one-line KW_DENIED message the client gets.
 */
export function clientCertRefusal(conn: TLSSocket): string {
  const cert = peerCertificate(conn);
  if (!cert || Object.keys(cert).length === 0) {
    return 'agent: no client certificate (this agent requires one issued by its client CA)';
  }
  const code = String(conn.authorizationError ?? '');
  switch (code) {
    case 'CERT_HAS_EXPIRED':
      return 'agent: the client certificate has expired';
    case 'CERT_NOT_YET_VALID':
      return 'agent: the client certificate is not valid yet';
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'CERT_SIGNATURE_FAILURE':
      return "agent: the client certificate was not issued by this agent's client CA";
    case 'CERT_REVOKED':
      return 'agent: the client certificate was revoked';
    default:
      return `agent: the client certificate was not accepted (${code || 'unverified'})`;
  }
}

/** The peer certificate of a TLS socket (after a verified handshake). */
export function peerCertificate(conn: TLSSocket): PeerCertificate | undefined {
  try {
    return conn.getPeerCertificate(false);
  } catch {
    return undefined;
  }
}

/**
 * What went wrong in a TLS handshake, in words, from either side (OpenSSL reason codes as Node
 * gives them in err.code). Undefined for an error that is not about TLS.
 */
export function tlsFailureText(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code !== 'string') return undefined;
  switch (code) {
    // The agent's verdict on this client, sent as a TLS alert (RFC 8446 §6.2).
    case 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED':
      return 'the agent requires a client certificate, and this client presented none';
    case 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA':
      return "the agent does not trust the issuer of this client's certificate (not its client CA)";
    case 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED':
      return "the agent refused this client's certificate: it has expired (or is not valid yet)";
    case 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE':
    case 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN':
    case 'ERR_SSL_TLSV1_ALERT_DECRYPT_ERROR':
      return "the agent refused this client's certificate";
    case 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED':
      return "the agent refused this client's certificate: revoked";
    case 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION':
    case 'ERR_SSL_UNSUPPORTED_PROTOCOL':
    case 'ERR_SSL_NO_PROTOCOLS_AVAILABLE':
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
      return 'no TLS version in common: the agent speaks TLS 1.3 only';
    // This client's verdict on the agent's certificate.
    case 'CERT_HAS_EXPIRED':
      return "the agent's certificate has expired";
    case 'CERT_NOT_YET_VALID':
      return "the agent's certificate is not valid yet";
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      return "the agent's certificate does not name the host connected to";
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'CERT_SIGNATURE_FAILURE':
      return "the agent's certificate was not issued by the CA this client trusts";
    // The server's side: what a refused client did (for the agent's log).
    case 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE':
      return 'no client certificate';
    case 'ERR_SSL_CERTIFICATE_VERIFY_FAILED':
      return 'the client certificate did not verify (unknown CA, expired or not valid yet)';
    case 'ERR_SSL_UNSUPPORTED_PROTOCOL_VERSION':
      return 'the client offered no TLS 1.3';
    case 'ECONNRESET':
      return undefined;
    default:
      return code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || /CERT/.test(code)
        ? `TLS handshake failed (${code})`
        : undefined;
  }
}

/** PEM text or bytes as a Buffer Node's TLS accepts (a copy: the caller wipes its own). */
export function pemBuffer(v: string | Uint8Array, what: string): Buffer {
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  if (v instanceof Uint8Array) return Buffer.from(v);
  throw new AgentError(`agent: TLS option "${what}" must be PEM text or bytes`);
}
