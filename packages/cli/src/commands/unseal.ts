/**
 * `keywarden unseal`, `keywarden seal`, `keywarden status`: talking to the agent of a
 * split-knowledge store (@keywarden/agent). Shares go to the agent one at a time and are never echoed,
 * printed or logged; only progress is shown ("unseal progress: 2 of 3").
 */
import type { Command } from 'commander';
import { InvalidInputError, KeywardenError } from '@keywarden/core';
import { AgentClient, type AgentStatus, isAgentUnavailable, type UnsealResult } from '@keywarden/agent';
import { isTerminal, readHidden, readShareFile, readSharesFromStream } from '../_prompt.js';
import type { CliIO } from '../io.js';
import { formatJson, formatPairs, print } from '../output.js';
import { pendingCeremonyOf } from '@keywarden/ceremony';
import { folderStoreOf, loadFolderRootBackend, requireStore, sealedRootDocument } from '../store-dir.js';
import { agentStateText, shareIndicesText } from './_agent-state.js';
import { deviceStatus } from './_device-status.js';
import { type PendingShown, pendingJson as pendingJsonOf, pendingText as pendingTextOf } from './_pending.js';
import { connectCommandAgent, namedAgentOf, withNamedAgent } from './_agent-client.js';
import { collect, locationOf, socketOf } from './_common.js';

/** Errors about one share: reported, and the prompt asks for the next one. */
const SHARE_ERROR_CODES = new Set(['KW_SHARE', 'KW_UNSEAL', 'KW_BAD_INPUT']);

export function registerUnseal(program: Command, io: CliIO): void {
  program
    .command('unseal')
    .description('give shares to the agent, one at a time, until a quorum unseals the root (input hidden)')
    .option('--share-file <file>', 'a file holding one plaintext share; repeat for several', collect)
    .addHelpText(
      'after',
      `
Each share goes to the running agent (\`keywarden agent\`), which holds it in memory only; after each
one the progress is printed ("unseal progress: 2 of 3 (shares 1, 4)"), and "unsealed" once a quorum
opened the root. Shares, from the first source that applies:
  --share-file FILE   one plaintext share a file (a custodian's \`keywarden share decrypt -o FILE\`)
  a terminal          prompts "Share (input hidden):" and reads without echo, one share after the
                      other, until the root is unsealed or end of input (Ctrl-D)
  a pipe              one share a line
Custodians may also come one after another, each running \`keywarden unseal\` with their own share:
the agent keeps the progress, and discards it after its --unseal-timeout without a new share.

A share that does not belong (mistyped, corrupted, of another share set, given twice) is refused
with one line saying why, and the progress made so far is kept. A quorum that does not open the
root (a forged or altered share) is refused and the progress starts over.
Exit status: 0 when unsealed or when every share given was accepted; 1 when a share from a file or
a pipe was refused (at the prompt, a refused share is reported and the next one asked for).`,
    )
    .action(async (opts: { shareFile?: string[] }, cmd: Command) => {
      const loc = locationOf(cmd, io);
      const client = await connectCommandAgent(cmd, io, () => socketOf(cmd, io, loc));
      try {
        const st = await client.status();
        if (!st.sealed) {
          await print(io.stdout, 'already unsealed\n');
          return;
        }
        const files = opts.shareFile ?? [];
        let last: UnsealResult | undefined;
        const submit = async (share: string): Promise<boolean> => {
          last = await client.unseal(share);
          await printProgress(io, last);
          return !last.sealed;
        };
        if (files.length > 0) {
          // One file at a time: a missing or refused file leaves the earlier shares with the agent.
          for (const f of files) if (await submit(await readShareFile(f, io.cwd, io.stderr))) break;
        } else if (!isTerminal(io.stdin)) {
          const shares = await readSharesFromStream(io.stdin);
          if (shares.length === 0) {
            throw new InvalidInputError(
              'no shares given: pass --share-file FILE, pipe shares one a line, or run `keywarden unseal` in a terminal',
            );
          }
          for (const share of shares) if (await submit(share)) break;
          shares.length = 0;
        } else {
          last = await prompt(io, client, st);
        }
        if (last === undefined || last.sealed) await printStillSealed(io, await client.status());
      } finally {
        await client.close();
      }
    });

  program
    .command('seal')
    .description('seal the agent: wipe the root and the KEK cache; key operations are refused until the next unseal')
    .addHelpText(
      'after',
      `
Seal on a suspected intrusion, before maintenance on the host, or whenever no keys are needed for a
while. Unsealing again needs a quorum of shares (\`keywarden unseal\`). Stopping the agent seals too.`,
    )
    .action(async (_opts: unknown, cmd: Command) => {
      const loc = locationOf(cmd, io);
      const client = await connectCommandAgent(cmd, io, () => socketOf(cmd, io, loc));
      try {
        await client.seal();
        await print(io.stdout, 'sealed\n');
      } finally {
        await client.close();
      }
    });

  program
    .command('status')
    .description(
      "show the key store's unseal method and, under split knowledge, the agent: sealed or not, unseal progress",
    )
    .option('--json', 'print JSON')
    .addHelpText(
      'after',
      "\nNothing secret is shown: root id, share-set id, M and N, share indices held.\nWith --agent ENDPOINT (a fleet's agent over mutual TLS): that agent's own answer, no key-store folder.",
    )
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const named = await namedAgentOf(cmd, io);
      if (named) {
        // The agent --agent names (a fleet's, over mutual TLS): what it says, no key-store folder.
        const st = await withNamedAgent(named, (client) => client.status());
        await printAgentStatus(io, named.display, st, opts.json === true);
        return;
      }
      const loc = locationOf(cmd, io);
      const ceremony = await pendingCeremonyOf(loc);
      const shown: PendingShown | undefined = ceremony && {
        kind: ceremony.kind,
        shareSet: ceremony.pending.shareSet,
        createdAt: ceremony.pending.createdAt,
        testQuorum: ceremony.pending.handOut.requireNewQuorum === true,
      };
      const pendingJson = pendingJsonOf(shown);
      const pendingText = shown && pendingTextOf(shown);
      if (ceremony?.kind === 'init') {
        if (opts.json) {
          await print(io.stdout, formatJson({ store: loc.dir, mode: 'init-pending', pending: pendingJson }));
        } else {
          await print(
            io.stdout,
            formatPairs([
              ['key store', `${loc.display} (not initialized: the init did not finish)`],
              ['pending', pendingText as string],
            ]),
          );
        }
        return;
      }
      await requireStore(loc);
      const kept = await folderStoreOf(loc);
      const scheme = await loadFolderRootBackend(loc);
      if (scheme !== 'software') {
        await deviceStatus(io, loc, scheme, opts.json === true, socketOf(cmd, io, loc));
        return;
      }
      const doc = await sealedRootDocument(loc);
      const u = doc.unseal;
      if (u.method !== 'shamir') {
        if (opts.json) {
          await print(io.stdout, formatJson({ store: loc.dir, ...kept.json, rootId: doc.rootId, mode: 'development' }));
        } else {
          await print(
            io.stdout,
            formatPairs([
              ['key store', `${loc.display} (${kept.text})`],
              ['root', doc.rootId],
              ['unseal', 'development mode (unseal key file or environment variable); no agent needed'],
            ]),
          );
        }
        return;
      }
      const socket = socketOf(cmd, io, loc);
      let st: AgentStatus | undefined;
      try {
        const client = await AgentClient.connect(socket);
        try {
          st = await client.status();
        } finally {
          await client.close();
        }
      } catch (err) {
        if (!isAgentUnavailable(err)) throw err;
      }
      if (opts.json) {
        await print(
          io.stdout,
          formatJson({
            store: loc.dir,
            ...kept.json,
            rootId: doc.rootId,
            mode: 'split-knowledge',
            shareSetId: st?.shareSetId ?? u.shareSetId,
            threshold: st?.threshold ?? u.threshold,
            shares: st?.shares ?? u.shares,
            // Not secret: the witness records them so custodians can check their share anywhere.
            commitments: (u as { commitments?: string[] }).commitments ?? null,
            pending: pendingJson,
            agent: st
              ? {
                  running: true,
                  socket: socket.path,
                  pid: st.pid,
                  sealed: st.sealed,
                  accepted: st.accepted,
                  indices: st.indices,
                }
              : { running: false, socket: socket.path },
          }),
        );
        return;
      }
      const shareSetId = st?.shareSetId ?? u.shareSetId;
      const pairs: [string, string][] = [
        ['key store', `${loc.display} (${kept.text})`],
        ['root', doc.rootId],
        [
          'unseal',
          `split knowledge: any ${st?.threshold ?? u.threshold} of ${st?.shares ?? u.shares} shares of share set ${shareSetId}`,
        ],
      ];
      if (pendingText) pairs.push(['pending', `${pendingText}; the current shares still work`]);
      if (!st) {
        pairs.push(['agent', `no agent running on ${socket.display} (start one with \`keywarden agent\`)`]);
      } else {
        pairs.push(['agent', `running on ${socket.display} (pid ${st.pid})`]);
        pairs.push(['state', agentStateText(st)]);
      }
      await print(io.stdout, formatPairs(pairs));
    });
}

/** The interactive loop: hidden prompt, submit, progress; a refused share is reported and asked again. */
async function prompt(io: CliIO, client: AgentClient, st: AgentStatus): Promise<UnsealResult | undefined> {
  await print(
    io.stderr,
    `Unsealing with ${st.threshold} of ${st.shares} shares of share set ${st.shareSetId}` +
      `${st.accepted > 0 ? ` (${st.accepted} already given)` : ''}. Nothing you type is shown; Ctrl-D when done.\n`,
  );
  let last: UnsealResult | undefined;
  for (;;) {
    const share = await readHidden(io.stdin, io.stderr, 'Share (input hidden): ', { signal: io.signal });
    if (share === undefined) return last;
    if (share.trim() === '') continue;
    try {
      last = await client.unseal(share);
    } catch (err) {
      if (KeywardenError.isInstance(err) && SHARE_ERROR_CODES.has(err.code)) {
        await print(io.stderr, `keywarden: ${err.message}\n`);
        continue;
      }
      throw err;
    }
    await printProgress(io, last);
    if (!last.sealed) return last;
  }
}

async function printProgress(io: CliIO, r: UnsealResult): Promise<void> {
  if (r.alreadyUnsealed) {
    await print(io.stdout, 'already unsealed\n');
    return;
  }
  const note = r.reset ? ' — earlier shares had timed out and were discarded; progress started over' : '';
  await print(io.stdout, `unseal progress: ${r.accepted} of ${r.threshold}${shareIndicesText(r.indices)}${note}\n`);
  if (!r.sealed) await print(io.stdout, 'unsealed\n');
}

/** `status --agent ENDPOINT`: the named agent's own answer (nothing secret). */
async function printAgentStatus(io: CliIO, display: string, st: AgentStatus, json: boolean): Promise<void> {
  if (json) {
    await print(io.stdout, formatJson({ mode: 'agent', agent: display, ...st }));
    return;
  }
  const pairs: [string, string][] = [
    ['agent', `${display} (pid ${st.pid})`],
    ['root', st.rootId],
  ];
  if (st.shareSetId) {
    pairs.push(['unseal', `any ${st.threshold} of ${st.shares} shares of share set ${st.shareSetId}`]);
  }
  pairs.push(['state', agentStateText(st)]);
  await print(io.stdout, formatPairs(pairs));
}

async function printStillSealed(io: CliIO, st: AgentStatus): Promise<void> {
  if (!st.sealed) return;
  await print(
    io.stdout,
    `still sealed: ${st.accepted} of ${st.threshold} shares held by the agent; the next custodian runs \`keywarden unseal\` ` +
      `(shares are discarded after ${st.unsealTimeoutSeconds} s without a new one)\n`,
  );
}
