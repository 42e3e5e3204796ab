/**
 * `keywarden root rotate` and `keywarden root destroy`: replace the root key (every KEK rewrapped
 * in one transaction), or crypto-shred the whole store. Both need a quorum of current shares on a
 * split-knowledge store, the unseal key in development mode (@keywarden/ceremony's rotateRootStoreDir and destroyRootStoreDir;
 * docs/split-knowledge.md, "Rotating and destroying the root").
 */
import type { Command } from 'commander';
import { displayPath } from '../errors.js';
import type { CliIO } from '../io.js';
import { print } from '../output.js';
import { destroyRootStoreDir, type StoreLocation, rotateRootStoreDir } from '@keywarden/ceremony';
import {
  type AgentOutcome,
  destroyNeedsConfirmation,
  type RootCommandOptions,
  rootConsentOf,
  sealAgent,
} from '../ceremony-io.js';
import { collect, globalsOf, locationOf } from './_common.js';
import { withJobLease } from './_job-lease.js';
import {
  finishStagedRootMoves,
  type JobLease,
  type KeyStore,
  ROOT_ROTATION_LEASE,
  readRootState,
} from '@keywarden/core';

interface RootOptions {
  shareFile?: string[];
  yesDestroyEveryKey?: boolean;
}

const SHARES_HELP = `Consent, checked before anything changes:
  split knowledge    a quorum of the CURRENT shares — from --share-file, else typed at a hidden
                     prompt (a terminal), else piped one a line — even when an agent is running
                     unsealed: a running process is not a quorum (separation of duties)
  development mode   the unseal key ($KEYWARDEN_UNSEAL_KEY, --unseal-key-file, or DIR/unseal.key),
                     which must open the root`;

export function registerRoot(program: Command, io: CliIO): void {
  const root = program
    .command('root')
    .description('rotate or destroy the root of trust (a quorum under split knowledge)')
    .addHelpText(
      'after',
      `
The root wraps every KEK. \`root rotate\` replaces it with a new root key; \`root destroy\` deletes it,
which makes every key in the store, and all data under them, unrecoverable (crypto-shredding).
See docs/split-knowledge.md, "Rotating and destroying the root".`,
    );

  root
    .command('rotate')
    .description('replace the root key: every KEK version is rewrapped under a new root in one transaction')
    .option('--share-file <file>', 'a file holding one CURRENT plaintext share; repeat for a quorum', collect)
    .addHelpText(
      'after',
      `
${SHARES_HELP}

A new root key and root id are drawn from the CSPRNG and sealed under the SAME unseal key, so the
custodians' shares (or the development-mode unseal key) keep working. Every KEK version that is not
destroyed is unwrapped by the old root and wrapped by the new one, and all of it is written with
the new sealed root in one transaction: an interruption leaves the old root or the new one, never
a mix. The KEKs themselves do not change, so all data encrypted before still decrypts.

One root rotation runs at a time on a key store (a job lease; a second one is refused). If a run
is killed, run it again: if the killed run had already committed, the new run records it as done
and does not rotate a second time (it says so); otherwise it rotates (docs/lifecycle.md §10).

Afterwards a running agent is told to seal (it holds the old root): custodians unseal it again with
the same shares. Rotate the root when the root key may have been exposed (a memory dump of an
unsealed process, a quorum of old shares together with an old backup), or on a schedule.

Example:
  keywarden root rotate --share-file s1.txt --share-file s3.txt --share-file s4.txt`,
    )
    .action(async (opts: RootOptions, cmd: Command) => {
      const loc = locationOf(cmd, io);
      const options = operationOptions(opts, cmd);
      // One root rotation at a time per key store, finished (never repeated) by the next run if
      // killed (_job-lease.ts, docs/lifecycle.md §Jobs under a lease).
      const outcome = await withJobLease(loc, io, ROOT_ROTATION_LEASE, 'root rotate', (lease, store) =>
        rotateUnderLease(lease, store, () => rotateRootStoreDir(loc, rootConsentOf(io, loc, options, 'root rotate'))),
      );
      if (outcome.kind === 'finished') {
        const agent = await agentAfter(io, loc, outcome.mode, options);
        const lines = [
          `An earlier \`root rotate\` of the key store in ${loc.display} was interrupted after its commit: the root had already been rotated (${outcome.fromRootId} → ${outcome.rootId}). Recorded it as done; the root was not rotated again.`,
          ...agentLines(agent, 'rotate'),
        ];
        await print(io.stdout, `${lines.join('\n')}\n`);
        await warnUnreachable(agent, io);
        return;
      }
      const rotated = outcome.rotated;
      const r = { ...rotated, agent: await agentAfter(io, loc, rotated.mode, options) };
      const lines = [
        `Rotated the root of the key store in ${loc.display}: ${r.previousRootId} → ${r.rootId}; ${count(r.rewrapped, 'key version')} rewrapped under the new root in one transaction.`,
        r.shareSet
          ? `The shares are unchanged: any ${r.shareSet.threshold} of the ${r.shareSet.shares} shares of share set ${r.shareSet.shareSetId} unseal the new root.`
          : 'The unseal key is unchanged (development mode): it unseals the new root.',
        'Data encrypted before still decrypts: the KEKs did not change, only the root that wraps them.',
        ...agentLines(r.agent, 'rotate'),
      ];
      await print(io.stdout, `${lines.join('\n')}\n`);
      await warnUnreachable(r.agent, io);
    });

  root
    .command('destroy')
    .description('delete the root: every key in the store, and all data under them, become unrecoverable')
    .option('--yes-destroy-every-key', 'confirm: destroy the root and every key version, for good')
    .option('--share-file <file>', 'a file holding one CURRENT plaintext share; repeat for a quorum', collect)
    .addHelpText(
      'after',
      `
Refused without --yes-destroy-every-key. ${SHARES_HELP}

The sealed root is deleted first: from that instant nothing wrapped under it can be recovered from
this store, whoever holds the shares or the unseal key. Then every key version is marked destroyed,
which erases its wrapped material. Irreversible. \`key list --json\` and \`key show\` still list the
keys, every version destroyed.

It does not reach backups of the key store (they still hold the root: destroy them too), nor
processes that hold the root unsealed: a running agent is told to seal; then stop it.

Example:
  keywarden root destroy --yes-destroy-every-key --share-file s1.txt --share-file s2.txt --share-file s5.txt`,
    )
    .action(async (opts: RootOptions, cmd: Command) => {
      if (!opts.yesDestroyEveryKey) throw destroyNeedsConfirmation();
      const loc = locationOf(cmd, io);
      const options = operationOptions(opts, cmd);
      const destroyed = await destroyRootStoreDir(loc, rootConsentOf(io, loc, options, 'root destroy'));
      const r = { ...destroyed, agent: await agentAfter(io, loc, destroyed.mode, options) };
      const lines = r.resumed
        ? [
            `The root of the key store in ${loc.display} (${r.rootId}) was already destroyed by an earlier, interrupted destruction; ${count(r.destroyed, 'remaining key version')} destroyed now (wrapped material erased).`,
          ]
        : [
            `Destroyed the root of the key store in ${loc.display} (${r.rootId}): the sealed root is deleted and ${count(r.destroyed, 'key version')} destroyed (wrapped material erased).`,
            'Nothing encrypted under this key store can be decrypted any more. Backups of the key store still hold the root: destroy them too.',
          ];
      lines.push(...agentLines(r.agent, 'destroy'));
      await print(io.stdout, `${lines.join('\n')}\n`);
      await warnUnreachable(r.agent, io);
    });
}

/** The record of the CLI's root rotation (meta "root-rotation-job/cli", core's job record format). */
const JOB_META = 'root-rotation-job/cli';

interface JobRecord {
  v: 1;
  state: 'started' | 'done';
  from: string;
  to?: string;
}

type RotateOutcome =
  | { kind: 'rotated'; rotated: Awaited<ReturnType<typeof rotateRootStoreDir>> }
  | { kind: 'finished'; fromRootId: string; rootId: string; mode: 'development' | 'split-knowledge' };

/**
 * Under the lease: "started from R" is recorded (fenced) before the rotation and "done" after it.
 * A record "started from R" while the store's root is no longer R means the run that wrote it was
 * killed after its commit (the rotation is one transaction): that rotation is recorded as done and
 * not repeated. A record "started from R" while the root is still R: killed before its commit, so
 * rotate now.
 */
async function rotateUnderLease(
  lease: JobLease | undefined,
  store: KeyStore,
  rotate: () => ReturnType<typeof rotateRootStoreDir>,
): Promise<RotateOutcome> {
  if (lease === undefined) return { kind: 'rotated', rotated: await rotate() };
  const state = await readRootState(store).catch(() => undefined);
  // No readable root: the rotation itself reports why (device root, damaged or destroyed store).
  if (state?.state !== 'present') return { kind: 'rotated', rotated: await rotate() };
  const current = state.document.rootId;
  // A rotation killed between its commit and the promotion of the audit key and the key-pair key
  // (staged under the new root) is finished here: the promotion needs only the root's id, and the
  // next rotation stages from these records (core's runRootRotationJob does the same).
  await finishStagedRootMoves(store, current);
  const job = parseJob(await store.getMeta(JOB_META));
  const encode = (r: JobRecord) => new TextEncoder().encode(JSON.stringify(r));
  if (job?.state === 'started' && job.from !== current) {
    await lease.putMeta(JOB_META, encode({ v: 1, state: 'done', from: job.from, to: current }));
    const mode = state.document.unseal.method === 'shamir' ? 'split-knowledge' : 'development';
    return { kind: 'finished', fromRootId: job.from, rootId: current, mode };
  }
  await lease.putMeta(JOB_META, encode({ v: 1, state: 'started', from: current }));
  lease.check();
  const rotated = await rotate();
  await lease.putMeta(JOB_META, encode({ v: 1, state: 'done', from: rotated.previousRootId, to: rotated.rootId }));
  return { kind: 'rotated', rotated };
}

function parseJob(bytes: Uint8Array | undefined): JobRecord | undefined {
  if (bytes === undefined) return undefined;
  try {
    const r = JSON.parse(new TextDecoder().decode(bytes)) as Partial<JobRecord>;
    if (r.v === 1 && (r.state === 'started' || r.state === 'done') && typeof r.from === 'string') return r as JobRecord;
  } catch {
    // Fall through: a damaged record is replaced by this run's.
  }
  return undefined;
}

/** A split-knowledge store's agent still holds the old root: tell it to seal. */
function agentAfter(
  io: CliIO,
  loc: StoreLocation,
  mode: 'development' | 'split-knowledge',
  options: RootCommandOptions,
): Promise<AgentOutcome> {
  return mode === 'split-knowledge' ? sealAgent(io, loc, options.socket) : Promise.resolve({ state: 'not-applicable' });
}

function operationOptions(opts: RootOptions, cmd: Command): RootCommandOptions {
  const g = globalsOf(cmd);
  return {
    ...(opts.shareFile?.length ? { shareFiles: opts.shareFile } : {}),
    ...(g.unsealKeyFile !== undefined ? { unsealKeyFile: g.unsealKeyFile } : {}),
    ...(g.socket !== undefined ? { socket: g.socket } : {}),
  };
}

function count(n: number, what: string): string {
  return `${n} ${what}${n === 1 ? '' : 's'}`;
}

function agentLines(agent: AgentOutcome, op: 'rotate' | 'destroy'): string[] {
  if (agent.state === 'sealed') {
    return op === 'rotate'
      ? [
          `The agent on ${agent.socket.display} was sealed (it held the old root): custodians must unseal it again with a quorum of the same shares (\`keywarden unseal\`).`,
        ]
      : [`The agent on ${agent.socket.display} was sealed; stop it: it has nothing left to serve.`];
  }
  if (agent.state === 'none' && op === 'rotate') {
    return [`No agent answers on ${agent.socket.display}: the next one to start loads the new root.`];
  }
  if (agent.state === 'not-applicable' && op === 'rotate') {
    return ['Processes that still hold the old root (applications using this store) must be restarted.'];
  }
  return [];
}

async function warnUnreachable(agent: AgentOutcome, io: CliIO): Promise<void> {
  if (agent.state !== 'unreachable') return;
  await print(
    io.stderr,
    `keywarden: warning: could not seal the agent on ${displayPath(agent.socket.path, io.cwd)} (${agent.reason}); seal it (\`keywarden seal\`) or stop it: until then it holds the old root\n`,
  );
}
