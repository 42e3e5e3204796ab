/**
 * `keywarden principal issue|revoke|list`: agent credentials (docs/agent-protocol.md §3.1). The
 * token `issue` prints is the only copy: the key store keeps its digest.
 */
import { issueAgentCredential, readAgentCredentials, revokeAgentCredential } from '@keywarden/agent';
import type { Command } from 'commander';
import type { CliIO } from '../io.js';
import { print } from '../output.js';
import { withUnsealed } from './_unsealed.js';

export function registerPrincipal(program: Command, io: CliIO): void {
  const principal = program.command('principal').description('agent credentials of principals');

  principal
    .command('issue')
    .description('issue (or replace) a principal’s agent credential and print it once')
    .argument('<name>', 'the principal (as named in the policy)')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const issued = await withUnsealed(cmd, io, (kw) => issueAgentCredential(kw.store, name));
      await print(
        io.stderr,
        `principal: credential for ${name} issued; it is shown once and stored only as a digest. Give it to the service as KEYWARDEN_AGENT_TOKEN.\n`,
      );
      await print(io.stdout, `${issued.token}\n`);
    });

  principal
    .command('revoke')
    .description('revoke a principal’s credential (a running agent closes its connections within a second)')
    .argument('<name>', 'the principal')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const had = await withUnsealed(cmd, io, (kw) => revokeAgentCredential(kw.store, name));
      await print(
        io.stdout,
        had ? `principal: ${name}'s credential revoked\n` : `principal: ${name} had no credential\n`,
      );
    });

  principal
    .command('list')
    .description('principals with a credential, and when it was issued')
    .action(async (_opts: unknown, cmd: Command) => {
      const doc = await withUnsealed(cmd, io, (kw) => readAgentCredentials(kw.store));
      const lines = Object.entries(doc.principals).map(([n, c]) => `${n}  issued ${c.issuedAt}\n`);
      await print(io.stdout, lines.join('') || 'principal: no credentials issued\n');
    });
}
