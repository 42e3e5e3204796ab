/**
 * `keywarden datakey`: a fresh data key for an application that encrypts by itself. This is the
 * one command that prints a plaintext key, because that is what was asked for.
 */
import type { Command } from 'commander';
import { wipe } from '@keywarden/core';
import type { CliIO } from '../io.js';
import { formatJson, print } from '../output.js';
import { withAgentOrKeyService } from './_agent-client.js';
import { addContextOption, contextFrom, locationOf } from './_common.js';

export function registerDatakey(program: Command, io: CliIO): void {
  const cmd = program
    .command('datakey')
    .description('generate a data key (DEK) under a KEK and print it as JSON')
    .argument('<name>', 'KEK (name or id) that wraps the data key');
  addContextOption(cmd)
    .addHelpText(
      'after',
      `
Prints {"keyId", "version", "plaintext", "wrapped"} with both keys in base64:
  plaintext  the 32-byte DEK: use it in memory, then discard it. Never store it.
  wrapped    the DEK wrapped under the KEK's primary version: store this beside the data;
             Keywarden.decryptDataKey(wrapped, context, { key: NAME }) gives the DEK back later.
The plaintext is a secret: do not log this output or leave it in shell history or files.`,
    )
    .action(async (name: string, opts: { context?: string[] }, command: Command) => {
      const context = contextFrom(opts.context);
      const loc = locationOf(command, io);
      await withAgentOrKeyService(command, io, loc, async (ks) => {
        const dk = await ks.generateDataKey(name, context);
        try {
          // The JSON string cannot be wiped (JavaScript strings are immutable); the bytes can.
          await print(
            io.stdout,
            formatJson({
              keyId: dk.keyId,
              version: dk.version,
              plaintext: base64(dk.plaintext),
              wrapped: base64(dk.wrapped),
            }),
          );
        } finally {
          wipe(dk.plaintext);
        }
      });
    });
}

/** Base64 through a view, not Buffer.from(bytes), which would leave an unwiped copy of a secret. */
function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}
