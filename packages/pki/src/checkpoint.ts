/**
 * Signed audit checkpoints (docs/audit.md §Checkpoints, docs/pki.md §6).
 *
 * The audit chain (core) is MACed under one symmetric audit key, which every process writing the
 * log holds: whoever has it can rewrite the whole log — a fresh chain from seq 1 with valid MACs
 * and a matching head — and `verifyAuditLog` accepts it. A checkpoint closes that gap: a key pair
 * of this package (held under a KEK of the root, or in a device) signs the chain's head (seq and
 * MAC of the last written record), and the signature goes into the log itself as an ordinary
 * audit record, op `audit-checkpoint`, so it is MACed and chained like every other record.
 * Verification checks each checkpoint's signature against a certificate the verifier holds (not
 * one read from the store), and that the record the checkpoint names is still in the log with the
 * MAC that was signed. A rewritten log either keeps the old checkpoints (their heads no longer
 * match), signs new ones (without the private key it cannot), or drops them (then too many
 * records are covered by no checkpoint: `maxUncovered`).
 *
 * Core knows nothing of this: it sees an event with `detail`, and a head (`AuditLog.head`).
 *
 * The statement signed (UTF-8, lines joined by "\n"):
 *   keywarden-audit-checkpoint-v1
 *   kid=<the audit key's kid>
 *   seq=<head seq>
 *   mac=<head mac>
 *   at=<ISO 8601 time of signing>
 */
import { createHash, X509Certificate } from 'node:crypto';
import { type AuditAnchor, type AuditLog, type AuditRecord, InvalidInputError } from '@keywarden/core';
import { type Signer, webCryptoParams } from './signer.js';
import { algorithmOfPublicKey, verifySignature } from './x509.js';

/** The audit record's op for a checkpoint. */
export const CHECKPOINT_OP = 'audit-checkpoint';
const STATEMENT_DOMAIN = 'keywarden-audit-checkpoint-v1';

/** A checkpoint as written into a record's `detail`. */
export interface CheckpointInfo {
  /** The record whose MAC was signed. */
  headSeq: number;
  headMac: string;
  /** When it was signed. */
  at: string;
  /** base64url SHA-256 of the signer's SubjectPublicKeyInfo (which certificate to check it with). */
  signer: string;
}

export interface WriteCheckpointOptions {
  /** Who the record names. Default "keywarden". */
  principal?: string;
  /**
   * Where the head is when this AuditLog instance has written nothing yet (its `head` is read from
   * its sinks at the first batch): e.g. `() => readStoreAuditHead(store, key)`.
   */
  readHead?: () => Promise<AuditAnchor | undefined>;
}

/** base64url SHA-256 of a SubjectPublicKeyInfo: how a checkpoint names its signer. */
export function signerKeyId(spki: Uint8Array): string {
  return createHash('sha256').update(spki).digest('base64url');
}

function statement(kid: string, seq: number, mac: string, at: string): Uint8Array {
  return new TextEncoder().encode(`${STATEMENT_DOMAIN}\nkid=${kid}\nseq=${seq}\nmac=${mac}\nat=${at}`);
}

/**
 * Sign the log's head now and append the checkpoint record. Everything recorded before the call
 * is written first (flush), so the head covers it.
 */
export async function writeCheckpoint(
  log: AuditLog,
  signer: Signer,
  options: WriteCheckpointOptions = {},
): Promise<CheckpointInfo> {
  await log.flush();
  const head = log.head ?? (await options.readHead?.());
  if (!head) {
    throw new InvalidInputError('pki: checkpoint: the audit log has no known head yet (pass readHead)');
  }
  const key = await log.key();
  const at = new Date().toISOString();
  const signature = await signer.sign(statement(key.kid, head.seq, head.mac, at));
  const info: CheckpointInfo = { headSeq: head.seq, headMac: head.mac, at, signer: signerKeyId(signer.publicKey) };
  const written = log.record({
    op: CHECKPOINT_OP,
    principal: options.principal ?? 'keywarden',
    outcome: 'ok',
    detail: {
      checkpoint: 1,
      head_seq: info.headSeq,
      head_mac: info.headMac,
      at,
      signer: info.signer,
      sig: Buffer.from(signature).toString('base64url'),
    },
  });
  if (written) await written;
  else await log.flush();
  return info;
}

export interface CheckpointerOptions extends WriteCheckpointOptions {
  log: AuditLog;
  signer: Signer;
  /** A checkpoint after this many records (checkpoints themselves not counted). Default 1000. */
  every?: number;
  /** A periodic checkpoint that failed (the log's own failures are the log's). */
  onError?: (err: unknown) => void;
}

/**
 * Writes a checkpoint every `every` records and on close(). Checkpoints are written one at a
 * time; a checkpoint is also written on demand by checkpoint().
 */
export class AuditCheckpointer {
  readonly #options: CheckpointerOptions;
  readonly #every: number;
  readonly #unsubscribe: () => void;
  #since = 0;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(options: CheckpointerOptions) {
    const every = options.every ?? 1000;
    if (!Number.isSafeInteger(every) || every < 1) {
      throw new InvalidInputError('pki: checkpoint: every is a positive integer (records between checkpoints)');
    }
    this.#options = options;
    this.#every = every;
    this.#unsubscribe = options.log.subscribe((record) => this.#observe(record));
  }

  /** Records written since the last checkpoint. */
  get pending(): number {
    return this.#since;
  }

  /** Sign the head now (after what is queued). */
  checkpoint(): Promise<CheckpointInfo> {
    const run = this.#queue.then(() => {
      this.#since = 0;
      return writeCheckpoint(this.#options.log, this.#options.signer, this.#options);
    });
    this.#queue = run.catch(() => {});
    return run;
  }

  /** A last checkpoint when records were written since the previous one; stops observing. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#unsubscribe();
    await this.#queue;
    if (this.#since > 0) await this.checkpoint();
  }

  #observe(record: AuditRecord): void {
    if (this.#closed || record.op === CHECKPOINT_OP) return;
    this.#since++;
    if (this.#since >= this.#every) {
      this.#since = 0;
      this.checkpoint().catch((err: unknown) => this.#options.onError?.(err));
    }
  }
}

export interface CheckpointVerifyOptions {
  /** Certificates (DER) of the keys trusted to sign checkpoints: from the verifier, not the store. */
  certificates: readonly Uint8Array[];
  /**
   * At most this many records (checkpoints not counted) may follow the last valid checkpoint's
   * head. Default: no limit (then a log with no checkpoint at all passes: set it).
   */
  maxUncovered?: number;
}

export interface CheckpointVerifyResult {
  ok: boolean;
  /** Valid checkpoints seen. */
  checkpoints: number;
  /** The highest seq a valid checkpoint signed (0 when none). */
  coveredThrough: number;
  /** Records after it, checkpoints not counted. */
  uncovered: number;
  /** The first checkpoint that fails, or the coverage failure (seq of the last record). */
  firstBad?: { seq: number; reason: string };
}

interface TrustedKey {
  spki: Uint8Array;
  oid: string;
  notBefore: number;
  notAfter: number;
}

/**
 * Check the signed checkpoints of a log. Precondition: the lines verify under the audit key
 * (core's verifyAuditLog) — this checks what the signatures pin, not the MACs. For each
 * checkpoint record: a certificate holds its signer's key, the signing time is within that
 * certificate's validity, the signature verifies, and the record it names is earlier in this log
 * with the signed MAC. Then the coverage (`maxUncovered`).
 */
export function verifyCheckpoints(
  lines: Iterable<string | AuditRecord>,
  options: CheckpointVerifyOptions,
): CheckpointVerifyResult {
  const trusted = new Map<string, TrustedKey>();
  for (const der of options.certificates) {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(der);
    } catch {
      throw new InvalidInputError('pki: checkpoint: a trusted certificate is not a DER X.509 certificate');
    }
    const spki = new Uint8Array(cert.publicKey.export({ type: 'spki', format: 'der' }));
    trusted.set(signerKeyId(spki), {
      spki,
      oid: webCryptoParams(algorithmOfPublicKey(spki)).signatureOid,
      notBefore: Date.parse(cert.validFrom),
      notAfter: Date.parse(cert.validTo),
    });
  }
  if (trusted.size === 0) throw new InvalidInputError('pki: checkpoint: at least one trusted certificate is needed');
  const macs = new Map<number, string>();
  let checkpoints = 0;
  let coveredThrough = 0;
  let lastSeq = 0;
  // seq of each non-checkpoint record, to count what follows the coverage.
  const plain: number[] = [];
  const result = (firstBad?: { seq: number; reason: string }): CheckpointVerifyResult => {
    const uncovered = plain.filter((s) => s > coveredThrough).length;
    return { ok: firstBad === undefined, checkpoints, coveredThrough, uncovered, ...(firstBad ? { firstBad } : {}) };
  };
  for (const item of lines) {
    const rec = typeof item === 'string' ? (JSON.parse(item) as AuditRecord) : item;
    macs.set(rec.seq, rec.mac);
    lastSeq = rec.seq;
    if (rec.op !== CHECKPOINT_OP) {
      plain.push(rec.seq);
      continue;
    }
    const reason = checkOne(rec, trusted, macs);
    if (reason) return result({ seq: rec.seq, reason: `checkpoint at seq ${rec.seq}: ${reason}` });
    checkpoints++;
    coveredThrough = Math.max(coveredThrough, Number(rec.detail?.head_seq));
  }
  const ok = result();
  if (options.maxUncovered !== undefined && ok.uncovered > options.maxUncovered) {
    return result({
      seq: lastSeq,
      reason:
        checkpoints === 0
          ? `no valid signed checkpoint in ${ok.uncovered} records (at most ${options.maxUncovered} may be uncovered)`
          : `${ok.uncovered} records follow the last signed checkpoint (seq ${coveredThrough}); at most ${options.maxUncovered} may`,
    });
  }
  return ok;
}

function checkOne(rec: AuditRecord, trusted: Map<string, TrustedKey>, macs: Map<number, string>): string | undefined {
  const d = rec.detail ?? {};
  const { head_seq: seq, head_mac: mac, at, signer, sig } = d;
  if (
    d.checkpoint !== 1 ||
    typeof seq !== 'number' ||
    typeof mac !== 'string' ||
    typeof at !== 'string' ||
    typeof signer !== 'string' ||
    typeof sig !== 'string'
  ) {
    return 'not a checkpoint of version 1';
  }
  const key = trusted.get(signer);
  if (!key) return 'signed by a key none of the trusted certificates holds';
  const time = Date.parse(at);
  if (!(time >= key.notBefore && time <= key.notAfter)) return `signed at ${at}, outside its certificate's validity`;
  const ok = verifySignature(
    key.spki,
    key.oid,
    statement(rec.kid, seq, mac, at),
    new Uint8Array(Buffer.from(sig, 'base64url')),
  );
  if (!ok) return 'the signature does not verify (forged or altered)';
  if (seq >= rec.seq) return `it names seq ${seq}, which is not before it`;
  if (seq > 0 && macs.get(seq) !== mac) {
    return `the signed head (seq ${seq}) is not the record this log has there: the log was rewritten`;
  }
  return undefined;
}
