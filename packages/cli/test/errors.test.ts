/**
 * One error model (issue 7): the CLI's failures are core's KeywardenError codes plus UsageError,
 * turned into an exit status and a message in one table; and the CLI has no server, protocol,
 * ceremony or store code of its own (those are @keywarden/agent's and @keywarden/ceremony's).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import {
  AgentUnavailableError,
  CeremonyError,
  CeremonyPendingError,
  InvalidInputError,
  KeystoreSealedError,
} from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import * as cli from '../src/index.js';
import { BY_CODE, describeError, EXIT_FAILURE, EXIT_USAGE, UsageError } from '../src/errors.js';

describe('one error model', () => {
  it('a usage error exits 2; a core error exits by its code, 1 unless the table says otherwise', () => {
    expect(describeError(new UsageError('--a and --b cannot be used together'), '/')).toEqual({
      message: '--a and --b cannot be used together',
      exitCode: EXIT_USAGE,
    });
    for (const err of [
      new CeremonyError('rekey --resume: no rekey is pending in .keywarden'),
      new CeremonyPendingError('rekey: a rekey to share set ss_x is pending'),
      new InvalidInputError('s1.txt is empty'),
      new KeystoreSealedError('this key store is sealed by split knowledge'),
    ]) {
      expect(describeError(err, '/')).toEqual({ message: err.message, exitCode: EXIT_FAILURE });
    }
  });

  it('the table adds what the command line knows: how to start an agent', () => {
    expect(BY_CODE.KW_AGENT_UNAVAILABLE?.suffix).toBe(' (start one with `keywarden agent`)');
    expect(describeError(new AgentUnavailableError('agent: no agent answers on s.sock'), '/')).toEqual({
      message: 'agent: no agent answers on s.sock (start one with `keywarden agent`)',
      exitCode: EXIT_FAILURE,
    });
  });

  it('the package exports UsageError and the table, and no error class of its own besides', () => {
    expect(Object.keys(cli)).toEqual(expect.arrayContaining(['UsageError', 'BY_CODE', 'describeError']));
    expect(Object.keys(cli)).not.toContain('CliError');
  });
});

describe('the CLI parses, calls and prints', () => {
  const src = path.join(__dirname, '..', 'src');
  const files = (function walk(dir: string): string[] {
    return readdirSync(dir).flatMap((name) => {
      const p = path.join(dir, name);
      return statSync(p).isDirectory() ? walk(p) : p.endsWith('.ts') ? [p] : [];
    });
  })(src);

  it('no source file opens a store file, a socket server or a root itself, or runs a ceremony step', () => {
    const forbidden = [
      /from '@keywarden\/store-sqlite'/,
      /from 'node:net'/,
      /\bSqliteKeyStore\.open\(/,
      /\bSoftwareRoot\.load\(/,
      /\bAgentServer\.start\(/,
      /\b(stageInit|stageRekey|activatePendingCeremony|abortPendingCeremony|rotateRoot|destroyRootWithQuorum)\(/,
    ];
    const offenders = files.flatMap((f) => {
      const text = readFileSync(f, 'utf8');
      return forbidden.filter((re) => re.test(text)).map((re) => `${path.relative(src, f)}: ${re}`);
    });
    expect(offenders).toEqual([]);
  });

  it('UsageError is the only error class the CLI defines', () => {
    const classes = files.flatMap((f) =>
      [...readFileSync(f, 'utf8').matchAll(/class (\w+) extends (\w*Error)\b/g)].map((m) => m[1]),
    );
    expect(classes).toEqual(['UsageError']);
  });
});
