/**
 * `keywarden policy check|set|show`: the key store's versioned policy (docs/policy.md). `set`
 * validates the file (errors name the line), stores it as the next version and records a
 * policy-change in the audit log.
 */
import { readFile } from 'node:fs/promises';
import { Keywarden, Policy, readStoredPolicy, updatePolicy } from '@keywarden/core';
import type { Command } from 'commander';
import type { CliIO } from '../io.js';
import { print } from '../output.js';
import { positiveInt } from './_common.js';
import { withUnsealed } from './_unsealed.js';

export function registerPolicy(program: Command, io: CliIO): void {
  const policy = program
    .command('policy')
    .description('principals and what they may do with which keys (docs/policy.md)');

  policy
    .command('check')
    .description('validate a policy file without storing it')
    .argument('<file>', 'the policy file')
    .action(async (file: string) => {
      const p = Policy.parse(await readFile(file, 'utf8'));
      await print(io.stdout, `policy: valid: ${p.principals.size} principals, ${p.rules.length} rules\n`);
    });

  policy
    .command('set')
    .description('validate a policy file and make it the key store’s policy (a new version)')
    .argument('<file>', 'the policy file')
    .action(async (file: string, _opts: unknown, cmd: Command) => {
      const text = await readFile(file, 'utf8');
      Policy.parse(text);
      const version = await withUnsealed(cmd, io, async (kw) => {
        // The operator holding the unsealed store acts as "cli" and the change is recorded.
        const admin = new Keywarden({ store: kw.store, root: kw.root, principal: 'cli', audit: {} });
        try {
          return await updatePolicy(admin, text);
        } finally {
          await admin.close();
        }
      });
      await print(io.stdout, `policy: version ${version} is in force\n`);
    });

  policy
    .command('show')
    .description('print the policy in force (or an earlier version)')
    .option('--version <n>', 'an earlier version', positiveInt)
    .action(async (opts: { version?: number }, cmd: Command) => {
      const read = await withUnsealed(cmd, io, (kw) => readStoredPolicy(kw.store, opts.version));
      if (!read) {
        await print(io.stdout, 'policy: none stored (nothing is allowed to a principal until one is set)\n');
        return;
      }
      await print(io.stdout, read.policy.text.endsWith('\n') ? read.policy.text : `${read.policy.text}\n`);
    });
}
