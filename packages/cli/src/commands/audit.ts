/**
 * `keywarden audit tail|export|verify|search|anomalies`: read the key store's audit log
 * (docs/audit.md). Every command needs the root unsealed (the records are checked under the audit
 * key, which the root wraps): in development mode with the unseal key, under split knowledge with a
 * quorum of the current shares (--share-file, piped one a line, or typed at the hidden prompt, as
 * for rekey and root rotate), unsealed in this process only for the command and sealed again after;
 * each calls one library function and prints.
 */
import { readFile } from 'node:fs/promises';
import {
  type AuditAnchor,
  AuditError,
  type AuditRecord,
  detectAnomalies,
  KeyNotFoundError,
  type Keywarden,
  loadAuditKey,
  readStoreAuditHead,
  readStoreAuditLines,
  verifyAuditLog,
} from '@keywarden/core';
import type { Command } from 'commander';
import type { CliIO } from '../io.js';
import { withKeywarden } from '../store-dir.js';
import { print } from '../output.js';
import { collect, locationOf, positiveInt } from './_common.js';
import { uncoveredOf, verifyAuditCheckpoints } from './cert.js';
import { withQuorumOrUnsealed } from './_unsealed.js';

interface LogOpen {
  lines: string[];
  anchor: AuditAnchor | undefined;
}

/**
 * The folder's Keywarden with its root unsealed for reading the audit log: under split knowledge by
 * a quorum of the current shares (checked against the share set before they are combined; the
 * combined key is wiped, and the root sealed again when the command ends), else as the other
 * commands that read the store's own records (withUnsealed).
 */
function withAuditRoot<T>(
  cmd: Command,
  io: CliIO,
  shareFiles: readonly string[] | undefined,
  fn: (kw: Keywarden) => Promise<T>,
): Promise<T> {
  return withQuorumOrUnsealed(
    cmd,
    io,
    { operation: 'audit', title: 'Reading the audit log', shareFiles: shareFiles ?? [] },
    fn,
  );
}

/** The verified log, or AuditError naming the first bad record (nothing is printed from a bad log). */
async function openLog(
  cmd: Command,
  io: CliIO,
  file: string | undefined,
  shareFiles?: readonly string[],
): Promise<LogOpen & { records: AuditRecord[] }> {
  return withAuditRoot(cmd, io, shareFiles, async (kw) => {
    const key = await loadAuditKey(kw.store, kw.root, { create: false });
    try {
      const anchor = await readStoreAuditHead(kw.store, key);
      const lines =
        file === undefined
          ? await readStoreAuditLines(kw.store, key)
          : (await readFile(file, 'utf8')).split('\n').filter((l, i, all) => l !== '' || i < all.length - 1);
      const result = verifyAuditLog(key, lines, anchor ? { anchor } : {});
      if (!result.ok) {
        const bad = result.firstBad as NonNullable<typeof result.firstBad>;
        throw new AuditError(
          `audit: the log does not verify: line ${bad.line}${bad.seq !== undefined ? ` (seq ${bad.seq})` : ''}: ${bad.reason}; ${result.verified} records before it verified`,
        );
      }
      return { lines, anchor, records: lines.map((l) => JSON.parse(l) as AuditRecord) };
    } finally {
      key.destroy();
    }
  });
}

export function registerAudit(program: Command, io: CliIO): void {
  const audit = program.command('audit').description('read and verify the tamper-evident audit log (docs/audit.md)');

  audit
    .command('verify')
    .description('check every record and the chain; names the first bad record')
    .option(
      '--file <path>',
      'verify a JSONL copy (a file sink) against the key store’s head instead of the store’s own log',
    )
    .option(
      '--checkpoint-cert <file>',
      'also check the signed checkpoints against this certificate (PEM/DER; repeat for several; see `audit checkpoint`)',
      collect,
    )
    .option(
      '--max-uncovered <n>',
      'with --checkpoint-cert: records allowed after the last signed checkpoint',
      uncoveredOf,
      1000,
    )
    .option('--share-file <path>', 'split knowledge: a file holding one current share (repeat for a quorum)', collect)
    .action(
      async (
        opts: { file?: string; checkpointCert?: string[]; maxUncovered: number; shareFile?: string[] },
        cmd: Command,
      ) => {
        const { lines, anchor } = await openLog(cmd, io, opts.file, opts.shareFile);
        const signed = opts.checkpointCert
          ? await verifyAuditCheckpoints(lines, opts.checkpointCert, opts.maxUncovered, io.cwd)
          : '';
        await print(
          io.stdout,
          `audit: ${lines.length} records verified, chain intact${anchor ? ` up to seq ${anchor.seq}, the head the key store recorded` : ' (no head in the key store to check the tail against)'}\n${signed}`,
        );
      },
    );

  audit
    .command('tail')
    .description('print the last records, one JSON object a line')
    .option('-n, --lines <n>', 'how many', positiveInt, 20)
    .option('--share-file <path>', 'split knowledge: a file holding one current share (repeat for a quorum)', collect)
    .action(async (opts: { lines: number; shareFile?: string[] }, cmd: Command) => {
      const { lines } = await openLog(cmd, io, undefined, opts.shareFile);
      await print(
        io.stdout,
        lines
          .slice(-opts.lines)
          .map((l) => `${l}\n`)
          .join(''),
      );
    });

  audit
    .command('export')
    .description('print the whole log')
    .requiredOption('--jsonl', 'as JSON lines (the only format)')
    .option('--share-file <path>', 'split knowledge: a file holding one current share (repeat for a quorum)', collect)
    .action(async (opts: { shareFile?: string[] }, cmd: Command) => {
      const { lines } = await openLog(cmd, io, undefined, opts.shareFile);
      await print(io.stdout, lines.map((l) => `${l}\n`).join(''));
    });

  audit
    .command('search')
    .description('print the records about a key, a principal, an operation or an outcome')
    .option('--key <name>', 'a key name or id')
    .option('--principal <name>', 'a principal')
    .option('--op <op>', 'an operation (encrypt, decrypt, generate-data-key, rotate-key, policy-change …)')
    .option('--outcome <outcome>', 'ok, denied or error')
    .option('--share-file <path>', 'split knowledge: a file holding one current share (repeat for a quorum)', collect)
    .action(
      async (
        opts: { key?: string; principal?: string; op?: string; outcome?: string; shareFile?: string[] },
        cmd: Command,
      ) => {
        let keyId: string | undefined;
        if (opts.key !== undefined) {
          // A metadata read: the root stays sealed.
          keyId = await withKeywarden(locationOf(cmd, io), io, {}, async (kw) => {
            const k = await kw.store.getKey(opts.key as string);
            if (!k) throw new KeyNotFoundError(`keystore: no key named "${opts.key}"`);
            return k.id;
          });
        }
        const { lines, records } = await openLog(cmd, io, undefined, opts.shareFile);
        const out = records
          .map((r, i) => [r, lines[i] as string] as const)
          .filter(
            ([r]) =>
              (keyId === undefined || r.key === keyId) &&
              (opts.principal === undefined || r.principal === opts.principal) &&
              (opts.op === undefined || r.op === opts.op) &&
              (opts.outcome === undefined || r.outcome === opts.outcome),
          );
        await print(io.stdout, out.map(([, l]) => `${l}\n`).join(''));
      },
    );

  audit
    .command('anomalies')
    .description(
      'flag unusual use in the log: rate spikes, new principal-key pairs, retired versions, decrypt-failure bursts, off-hours use',
    )
    .option('--learn <n>', 'records of each principal before it is established', positiveInt, 100)
    .option('--share-file <path>', 'split knowledge: a file holding one current share (repeat for a quorum)', collect)
    .action(async (opts: { learn: number; shareFile?: string[] }, cmd: Command) => {
      const { records } = await openLog(cmd, io, undefined, opts.shareFile);
      const found = detectAnomalies(records, { learnRecords: opts.learn });
      await print(
        io.stdout,
        found
          .map(
            (a) =>
              `${a.at.toISOString()}  ${a.kind}  ${a.principal}${a.key ? `  ${a.key}${a.version !== undefined ? ` v${a.version}` : ''}` : ''}${a.seq !== undefined ? `  (seq ${a.seq})` : ''}: ${a.detail}\n`,
          )
          .join('') || 'audit: no anomalies\n',
      );
    });
}
