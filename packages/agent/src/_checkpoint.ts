/**
 * Signed audit checkpoints written by the agent itself (docs/audit.md §Checkpoints,
 * docs/agent-protocol.md §6). The agent knows nothing of signatures or certificates (that is
 * @keywarden/pki's, which the agent does not depend on): it is given an `open` function that, with
 * the agent's unsealed Keywarden, returns a writer (e.g. @keywarden/pki's writeCheckpoint over a
 * key pair's signer), and decides WHEN to call it:
 *  - every `intervalMs`, when records other than the checkpointer's own were written since the last
 *    checkpoint (an idle agent, or several idle agents on one store, write nothing: no ping-pong of
 *    checkpoints over each other's checkpoints);
 *  - before a seal and on close (clean shutdown), when such records are pending;
 *  - never while sealed (the signer needs the root): what was written is covered by the first
 *    checkpoint after the next unseal.
 * The writer is opened once per unseal and dropped at the seal (its key handle with it), so one
 * checkpoint costs one signature, not one unwrap.
 *
 * Several agents on one store (a fleet on PostgreSQL): each appends to the one chain under the
 * store's lock and signs the head IT wrote last, a record of that chain; every such checkpoint is
 * valid on its own, whatever the others wrote before or after it, so they neither fork nor
 * conflict. No lease or election is needed (one that died holding it would stop checkpoints).
 *
 * A failure to sign (the key pair missing or disabled, a policy refusing the checkpointer, the
 * device busy) is logged (through the agent's scrubbing log) and audited as
 * `audit-checkpoint-failed`, and the agent keeps serving: the MAC chain still protects every
 * record, and `audit verify --max-uncovered` is what notices checkpoints that stopped.
 */
import { type AuditLog, type AuditRecord, type Keywarden, KeywardenError, recordAudit } from '@keywarden/core';

/** The op of a checkpoint record (@keywarden/pki's CHECKPOINT_OP). */
const CHECKPOINT_OP = 'audit-checkpoint';
/** The op of the record of a checkpoint that could not be signed. */
export const CHECKPOINT_FAILED_OP = 'audit-checkpoint-failed';
/** The principal the checkpointer acts as: its records (the unwrap of the signing key) are not counted. */
export const CHECKPOINT_PRINCIPAL = 'agent-checkpoint';

/** Writes one signed checkpoint into `log` and says which head it signed. */
export interface AgentCheckpointWriter {
  write(log: AuditLog): Promise<{ headSeq: number }>;
  /** Drop the signing key (at a seal or close). */
  close?(): void | Promise<void>;
}

export interface AgentCheckpointOptions {
  /** How often to sign the chain's head when records were written since the last checkpoint (ms). */
  intervalMs: number;
  /**
   * Open the writer with the agent's unsealed Keywarden, acting as CHECKPOINT_PRINCIPAL ("agent-
   * checkpoint": under a policy, that principal needs `decrypt` on the KEK holding the key pair).
   */
  open: (keywarden: Keywarden) => Promise<AgentCheckpointWriter>;
}

export class AgentCheckpoints {
  readonly #options: AgentCheckpointOptions;
  readonly #log: AuditLog;
  readonly #say: (line: string) => void;
  readonly #unsubscribe: () => void;
  #pending = 0;
  #writer: AgentCheckpointWriter | undefined;
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(options: AgentCheckpointOptions, log: AuditLog, say: (line: string) => void) {
    this.#options = options;
    this.#log = log;
    this.#say = say;
    this.#unsubscribe = log.subscribe((r) => this.#observe(r));
  }

  /** Start the timer; `tick` runs one periodic checkpoint (serialized by the agent). */
  start(tick: () => void): void {
    this.#timer = setInterval(tick, this.#options.intervalMs);
    this.#timer.unref?.();
  }

  /** Records written since the last checkpoint (not the checkpointer's own). */
  get pending(): number {
    return this.#pending;
  }

  /**
   * Sign the head now when records are pending and `kw` is unsealed. Never throws: a failure is
   * logged and audited, and the records stay pending for the next attempt.
   */
  async checkpoint(kw: Keywarden, sealed: boolean, why: string): Promise<void> {
    if (sealed || this.#pending === 0) return;
    const counted = this.#pending;
    this.#pending = 0;
    try {
      this.#writer ??= await this.#options.open(kw.as(CHECKPOINT_PRINCIPAL));
      const info = await this.#writer.write(this.#log);
      this.#say(`audit checkpoint signed over seq ${info.headSeq} (${why})`);
    } catch (err) {
      this.#pending += counted;
      await this.drop();
      const code = KeywardenError.isInstance(err) ? err.code : undefined;
      const message = KeywardenError.isInstance(err) ? err.message : 'an unexpected error';
      this.#say(`audit checkpoint (${why}) failed, serving on: ${message}`);
      await recordAudit(kw, {
        op: CHECKPOINT_FAILED_OP,
        principal: CHECKPOINT_PRINCIPAL,
        outcome: 'error',
        ...(code ? { code } : {}),
      }).catch(() => {});
    }
  }

  /** Forget the writer (its key): at a seal, after a failure, at close. */
  async drop(): Promise<void> {
    const w = this.#writer;
    this.#writer = undefined;
    await Promise.resolve(w?.close?.()).catch(() => {});
  }

  async close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#unsubscribe();
    await this.drop();
  }

  #observe(record: AuditRecord): void {
    if (record.op === CHECKPOINT_OP || record.op === CHECKPOINT_FAILED_OP) return;
    if (record.principal === CHECKPOINT_PRINCIPAL) return;
    this.#pending++;
  }
}
