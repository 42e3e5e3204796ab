/**
 * `keywarden principal issue|revoke|list`: agent credentials (docs/agent-protocol.md §3.1). The
 * token `issue` prints is the only copy: the key store keeps its digest.
 */
import {
  admitAgentPrincipal,
  issueAgentCredential,
  readAgentCredentials,
  revokeAgentCredential,
} from '@keywarden/agent';
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
    .description(
      'revoke a principal: its token is deleted and its client certificates are refused (a running agent closes its connections within a second)',
    )
    .argument('<name>', 'the principal')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const outcome = await withUnsealed(cmd, io, async (kw) => {
        const before = await readAgentCredentials(kw.store);
        if (before.principals[name] === undefined && before.revoked?.[name] !== undefined) return 'already';
        return (await revokeAgentCredential(kw.store, name)) ? 'token' : 'certificates';
      });
      const text = {
        token: `principal: ${name}'s credential revoked; its client certificates are refused too\n`,
        certificates: `principal: ${name} had no token; its client certificates are now refused\n`,
        already: `principal: ${name} was already revoked\n`,
      }[outcome];
      await print(io.stdout, text);
    });

  principal
    .command('admit')
    .description('lift a revocation for mutual TLS: the principal’s client certificates are accepted again')
    .argument('<name>', 'the principal')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const lifted = await withUnsealed(cmd, io, (kw) => admitAgentPrincipal(kw.store, name));
      await print(
        io.stdout,
        lifted
          ? `principal: ${name}'s client certificates are accepted again\n`
          : `principal: ${name} was not revoked\n`,
      );
    });

  principal
    .command('list')
    .description('principals with a credential and when it was issued, and revoked principals')
    .action(async (_opts: unknown, cmd: Command) => {
      const doc = await withUnsealed(cmd, io, (kw) => readAgentCredentials(kw.store));
      const lines = Object.entries(doc.principals).map(([n, c]) => `${n}  issued ${c.issuedAt}\n`);
      for (const [n, r] of Object.entries(doc.revoked ?? {})) lines.push(`${n}  revoked ${r.revokedAt}\n`);
      await print(io.stdout, lines.join('') || 'principal: no credentials issued\n');
    });
}
