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
import { withKeyService } from '../store-dir.js';
import { addContextOption, contextFrom, keyServiceOptionsOf, locationOf } from './_common.js';
import { pipeInto } from './_pipe.js';

/** Above the text form of the largest --text plaintext (4/3 × 64 MiB of base64url plus a header). */
export const MAX_TEXT_ENVELOPE_BYTES = 96 * MiB;

interface DecryptOptions {
  context?: string[];
  input?: string;
  output?: string;
}

export function registerDecrypt(program: Command, io: CliIO): void {
  const cmd = program
    .command('decrypt')
    .description('decrypt what `keywarden encrypt` produced (binary stream or "kw1." text, detected)');
  addContextOption(cmd)
    .option('-i, --input <file>', 'read ciphertext from FILE instead of stdin')
    .option('-o, --output <file>', 'write plaintext to FILE, only if the whole input authenticates')
    .addHelpText(
      'after',
      `
The key is named inside the ciphertext; give the same --context pairs that were used to encrypt.

Failure (wrong context, wrong key, modified or truncated input) exits with status 1 and one line:
  keywarden: envelope: decryption failed (wrong key or context, or the data was modified)
  - with -o FILE: plaintext goes to a temporary file (mode 0600) beside FILE that is renamed over
    FILE only after the entire input authenticated; on failure it is deleted, so FILE is never
    created or changed and no partial plaintext is left on disk.
  - on stdout: each frame is written only after it authenticated, so everything written is
    authentic, but a tampered or truncated stream stops early: the output is then INCOMPLETE.
    Always check the exit status (in shells, set -o pipefail), or use -o FILE.

Examples:
  keywarden decrypt -i dump.sql.kw -o dump.sql
  keywarden decrypt --context table=patients --context row=42 <<< "$CIPHERTEXT"`,
    )
    .action(async (opts: DecryptOptions, command: Command) => {
      const context = contextFrom(opts.context);
      const loc = locationOf(command, io);
      await withKeyService(loc, io, keyServiceOptionsOf(command), async (ks) => {
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
            const plaintext = await decryptEnvelope(ks, envelope, context ? { context } : {});
            try {
              await sink.write(plaintext);
            } finally {
              if (sink.releasesBuffers) wipe(plaintext);
            }
          } else {
            await pipeInto(all, createDecryptStream(ks, context ? { context } : {}), sink, {
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
