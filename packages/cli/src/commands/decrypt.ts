/**
 * `keywarden decrypt`: the inverse of encrypt, for both output forms (detected from the input).
 *
 * Nothing unauthenticated is ever released: the framed stream emits a frame's plaintext only
 * after that frame verified, and -o FILE is all or nothing (see _streams.ts).
 */
import type { Command } from 'commander';
import { createDecryptStream, decryptEnvelope, envelopeFromText, TEXT_PREFIX, wipe } from '@keywarden/core';
import { destroyOnAbort, MiB, openInput, openOutput, peek, readAll } from '../_streams.js';
import type { CliIO } from '../io.js';
import { withAgentOrKeyService } from './_agent-client.js';
import { UsageError } from '../errors.js';
import { addContextOption, collect, contextFrom, locationOf } from './_common.js';
import { pipeInto } from './_pipe.js';

/** Above the text form of the largest --text plaintext (4/3 × 64 MiB of base64url plus a header). */
export const MAX_TEXT_ENVELOPE_BYTES = 96 * MiB;

interface DecryptOptions {
  key?: string[];
  anyKeyInStore?: boolean;
  context?: string[];
  input?: string;
  output?: string;
  requireSigned?: boolean;
}

export function registerDecrypt(program: Command, io: CliIO): void {
  const cmd = program
    .command('decrypt')
    .description('decrypt what `keywarden encrypt` produced (binary stream or "kw1." text, detected)')
    .option('-k, --key <name>', 'KEK (name or id) the ciphertext must be under; repeat to allow several', collect)
    .option(
      '--any-key-in-store',
      'accept ciphertext under ANY key of this store (audits, migrations; not for applications)',
    );
  addContextOption(cmd)
    .option('-i, --input <file>', 'read ciphertext from FILE instead of stdin')
    .option('-o, --output <file>', 'write plaintext to FILE, only if the whole input authenticates')
    .option(
      '--require-signed',
      'refuse ciphertext that was not made with encrypt --signed (without it, anyone who can decrypt can forge unsigned ciphertext)',
    )
    .addHelpText(
      'after',
      `
Name the key the ciphertext must be under with --key (the key it was encrypted with) and give the
same --context pairs; ciphertext under any other key is refused, even if the context matches.
--any-key-in-store accepts whichever key of this store the ciphertext names: for audits and
migrations only. --require-signed refuses ciphertext that \`encrypt --signed\` did not make; a
signed stream's signature is checked at its end, so on stdout trust nothing before exit status 0
(with -o FILE, FILE appears only after the signature verified).

Failure (wrong context, wrong key, modified or truncated input) exits with status 1 and one line:
  keywarden: envelope: decryption failed (wrong key or context, or the data was modified)
  - with -o FILE: plaintext goes to a temporary file (mode 0600) beside FILE that is renamed over
    FILE only after the entire input authenticated; on failure it is deleted, so FILE is never
    created or changed and no partial plaintext is left on disk. A signal (SIGINT, SIGTERM,
    SIGHUP, SIGQUIT…) deletes it too (exit 128 + N). On Linux it has no name until complete, so
    even SIGKILL leaves nothing; elsewhere the next -o into the directory removes what a killed
    decrypt left, with a warning.
  - on stdout: each frame is written only after it authenticated, so everything written is
    authentic, but a tampered or truncated stream stops early: the output is then INCOMPLETE.
    Always check the exit status (in shells, set -o pipefail), or use -o FILE.

Examples:
  keywarden decrypt --key backups -i dump.sql.kw -o dump.sql
  keywarden decrypt --key pii --context table=patients --context row=42 <<< "$CIPHERTEXT"`,
    )
    .action(async (opts: DecryptOptions, command: Command) => {
      const context = contextFrom(opts.context);
      const options = {
        ...expectedKeyFrom(opts),
        ...(context ? { context } : {}),
        ...(opts.requireSigned ? { requireSigned: true } : {}),
      };
      const loc = locationOf(command, io);
      await withAgentOrKeyService(command, io, loc, async (ks) => {
        const sink = await openOutput(opts.output, io.cwd, io.stdout, io.stderr);
        const input = openInput(opts.input, io.cwd, io.stdin);
        const stopWatching = destroyOnAbort(input, io.signal);
        try {
          const { head, input: all } = await peek(input, TEXT_PREFIX.length);
          if (Buffer.from(head).toString('latin1') === TEXT_PREFIX) {
            const raw = await readAll(
              all,
              MAX_TEXT_ENVELOPE_BYTES,
              `text ciphertext larger than ${MAX_TEXT_ENVELOPE_BYTES / MiB} MiB is not something --text produces`,
              false,
            );
            const envelope = envelopeFromText(
              Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('utf8').trim(),
            );
            const plaintext = await decryptEnvelope(ks, envelope, options);
            try {
              await sink.write(plaintext);
            } finally {
              if (sink.releasesBuffers) wipe(plaintext);
            }
          } else {
            await pipeInto(all, createDecryptStream(ks, options), sink, {
              wipeChunks: true,
              signal: io.signal,
            });
          }
          await sink.commit();
        } catch (err) {
          await sink.abort();
          if (opts.input !== undefined) input.destroy();
          throw err;
        } finally {
          stopWatching();
        }
      });
    });
}

/** --key (repeatable) or --any-key-in-store: exactly one (KeyExpectation in core). */
function expectedKeyFrom(opts: DecryptOptions): { key: string[] } | { anyKeyInStore: true } {
  const keys = opts.key ?? [];
  if (opts.anyKeyInStore === true) {
    if (keys.length > 0) throw new UsageError('give --key or --any-key-in-store, not both');
    return { anyKeyInStore: true };
  }
  if (keys.length === 0) {
    throw new UsageError(
      'name the key the ciphertext must be under: --key NAME (or --any-key-in-store to accept any key of this store)',
    );
  }
  return { key: keys };
}
