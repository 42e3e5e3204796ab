/**
 * `keywarden key disable|enable|compromise|destroy NAME VERSION`, `key retire|policy` and `key rotate --due`
 * (issue 10), through the real CLI on a real SQLite key store.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, initialized, oneLine, tempDir } from './helpers.js';
import { built, startAgent } from './split-helpers.js';

async function encrypt(cwd: string, key: string, text: string): Promise<Buffer> {
  const r = await cli(['encrypt', '--key', key], { cwd, stdin: text });
  if (r.code !== 0) throw new Error(r.stderr);
  return r.stdout;
}

async function decrypt(cwd: string, key: string, envelope: Buffer) {
  return cli(['decrypt', '--key', key], { cwd, stdin: envelope });
}

describe('keywarden key lifecycle commands', () => {
  it('disable, enable, compromise and destroy a version, each with --json; decrypt follows the states', async () => {
    const cwd = await initialized();
    await cli(['key', 'create', 'app'], { cwd });
    const v1 = await encrypt(cwd, 'app', 'one');
    expect((await cli(['key', 'rotate', 'app'], { cwd })).code).toBe(0);
    const v2 = await encrypt(cwd, 'app', 'two');

    const primary = await cli(['key', 'disable', 'app', '2'], { cwd });
    expect(primary.code).toBe(1);
    expect(oneLine(primary.stderr)).toMatch(/^keywarden: (keywarden: )?v2 is the primary version of key "app"/);

    const dis = await cli(['key', 'disable', 'app', '1'], { cwd });
    expect(dis.code).toBe(0);
    expect(dis.out).toBe('Disabled app v1.\n');
    const refused = await decrypt(cwd, 'app', v1);
    expect(refused.code).toBe(1);
    expect(oneLine(refused.stderr)).toMatch(/v1 is disabled/);

    const en = await cli(['key', 'enable', 'app', 'v1', '--json'], { cwd });
    expect(en.code).toBe(0);
    expect(JSON.parse(en.out).versions.map((v: { state: string }) => v.state)).toEqual(['enabled', 'enabled']);
    expect((await decrypt(cwd, 'app', v1)).out).toBe('one');

    const comp = await cli(['key', 'compromise', 'app', '2', '--json'], { cwd });
    expect(comp.code).toBe(0);
    const report = JSON.parse(comp.out);
    expect(report).toMatchObject({ compromisedVersion: 2, rotatedTo: 3, unreadableVersions: [2], rewrapVersions: [1] });
    expect(report.key.primaryVersion).toBe(3);
    const compromised = await decrypt(cwd, 'app', v2);
    expect(compromised.code).toBe(1);
    expect(oneLine(compromised.stderr)).toMatch(/v2 is compromised/);

    const enabled = await cli(['key', 'destroy', 'app', '1'], { cwd });
    expect(oneLine(enabled.stderr)).toMatch(/v1 is enabled; disable it first/);
    await cli(['key', 'disable', 'app', '1'], { cwd });
    const early = await cli(['key', 'destroy', 'app', '1'], { cwd });
    expect(early.code).toBe(1);
    expect(oneLine(early.stderr)).toMatch(/grace period.* with --force$/);
    const destroyed = await cli(['key', 'destroy', 'app', '1', '--force'], { cwd });
    expect(destroyed.code).toBe(0);
    expect(destroyed.out).toBe('Destroyed app v1: its material is erased.\n');
    const gone = await decrypt(cwd, 'app', v1);
    expect(gone.code).toBe(1);
    expect(oneLine(gone.stderr)).toMatch(/v1 was destroyed/);
    expect((await decrypt(cwd, 'app', await encrypt(cwd, 'app', 'three'))).out).toBe('three');
  });

  it('list shows age, uses and the next rotation due; rotate --due rotates only what is due', async () => {
    const cwd = await initialized();
    await cli(['key', 'create', 'busy'], { cwd });
    await cli(['key', 'create', 'quiet'], { cwd });
    await encrypt(cwd, 'busy', 'x');
    const list = await cli(['key', 'list'], { cwd });
    expect(list.code).toBe(0);
    const lines = list.out.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^NAME\s+ID\s+PRIMARY\s+SCOPE\s+CREATED\s+AGE\s+USES\s+ROTATE BY$/);
    // One CLI encrypt reserves the first block of uses (64), counted as used.
    expect(lines[1]).toMatch(/^busy\s+kek_\S+\s+v1\s+-\s+\S+\s+<1h\s+64\s+\d{4}-\d\d-\d\dT/);
    expect(lines[2]).toMatch(/^quiet\s+kek_\S+\s+v1\s+-\s+\S+\s+<1h\s+0\s+\d{4}-/);
    const json = JSON.parse((await cli(['key', 'list', '--json'], { cwd })).out);
    const due = new Date(json[0].nextRotationDue).getTime() - new Date(json[0].versions[0].createdAt).getTime();
    expect(due).toBe(90 * 86_400_000);
    expect(json[0].rotation).toEqual({ maxAgeMs: 90 * 86_400_000, maxUses: 2 ** 31 });

    expect((await cli(['key', 'rotate', '--due'], { cwd })).out).toBe('No key is due for rotation.\n');
    expect((await cli(['key', 'policy', 'busy', '--max-uses', '10'], { cwd })).code).toBe(0);
    const r = await cli(['key', 'rotate', '--due', '--json'], { cwd });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject([
      { key: 'busy', reasons: ['uses'], fromVersion: 1, toVersion: 2, outcome: 'rotated' },
    ]);
    expect((await cli(['key', 'rotate', '--due'], { cwd })).out).toBe('No key is due for rotation.\n');

    const both = await cli(['key', 'rotate', 'busy', '--due'], { cwd });
    expect(both.code).toBe(2);
  });

  it('retire sets the minimum decryption version; lowering it again restores decryption', async () => {
    const cwd = await initialized();
    await cli(['key', 'create', 'k'], { cwd });
    const v1 = await encrypt(cwd, 'k', 'old');
    await cli(['key', 'rotate', 'k'], { cwd });
    const r = await cli(['key', 'retire', 'k', '--min-version', '2'], { cwd });
    expect(r.code).toBe(0);
    expect(oneLine((await decrypt(cwd, 'k', v1)).stderr)).toMatch(/retired/);
    await cli(['key', 'retire', 'k', '--min-version', '1'], { cwd });
    expect((await decrypt(cwd, 'k', v1)).out).toBe('old');
  });

  it('destroying the last version of a key needs --confirm-last-version', async () => {
    const cwd = await initialized();
    await cli(['key', 'create', 'tenant-x'], { cwd });
    const last = await cli(['key', 'disable', 'tenant-x', '1'], { cwd });
    expect(oneLine(last.stderr)).toMatch(/with --confirm-last-version$/);
    expect((await cli(['key', 'disable', 'tenant-x', '1', '--confirm-last-version'], { cwd })).code).toBe(0);
    expect((await cli(['key', 'destroy', 'tenant-x', '1', '--force'], { cwd })).code).toBe(1);
    const ok = await cli(['key', 'destroy', 'tenant-x', '1', '--force', '--confirm-last-version', '--json'], {
      cwd,
    });
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.out).versions[0]).toMatchObject({ version: 1, state: 'destroyed' });
  });

  it('--version N selects the version of disable, enable, compromise and destroy (the positional form still works); only --version before the command prints the program version', async () => {
    const cwd = await initialized();
    await cli(['key', 'create', 'app'], { cwd });
    const v1 = await encrypt(cwd, 'app', 'one');
    await cli(['key', 'rotate', 'app'], { cwd });

    const dis = await cli(['key', 'disable', 'app', '--version', '1'], { cwd });
    expect(dis.code, dis.stderr).toBe(0);
    expect(dis.out).toBe('Disabled app v1.\n');
    expect((await decrypt(cwd, 'app', v1)).code).toBe(1);
    const en = await cli(['key', 'enable', '--version', 'v1', 'app', '--json'], { cwd });
    expect(en.code, en.stderr).toBe(0);
    expect(JSON.parse(en.out).versions.map((v: { state: string }) => v.state)).toEqual(['enabled', 'enabled']);
    expect((await decrypt(cwd, 'app', v1)).out).toBe('one');
    // Positional and option agree: fine; disagree: a usage error that changes nothing.
    expect((await cli(['key', 'disable', 'app', '1', '--version', '1'], { cwd })).code).toBe(0);
    const both = await cli(['key', 'enable', 'app', '1', '--version', '2'], { cwd });
    expect(both.code).toBe(2);
    expect(oneLine(both.stderr)).toMatch(/^keywarden: two different versions given: v1 and --version 2/);
    const none = await cli(['key', 'enable', 'app'], { cwd });
    expect(none.code).toBe(2);
    expect(oneLine(none.stderr)).toMatch(/^keywarden: missing the key version: give --version N/);
    expect((await cli(['key', 'enable', 'app', '--version', '1'], { cwd })).code).toBe(0);

    const comp = await cli(['key', 'compromise', 'app', '--version', '1', '--no-rotate', '--json'], { cwd });
    expect(comp.code, comp.stderr).toBe(0);
    expect(JSON.parse(comp.out)).toMatchObject({ compromisedVersion: 1 });
    const des = await cli(['key', 'destroy', 'app', '--version', '1', '--force'], { cwd });
    expect(des.code, des.stderr).toBe(0);
    expect(des.out).toBe('Destroyed app v1: its material is erased.\n');
    expect(oneLine((await decrypt(cwd, 'app', v1)).stderr)).toMatch(/v1 was destroyed/);

    // The program's version: --version before any command (global options may come first), or -V.
    for (const argv of [['--version'], ['-V'], ['--dir', join(cwd, '.keywarden'), '--version']]) {
      const r = await cli(argv, { cwd });
      expect(r.code, argv.join(' ')).toBe(0);
      expect(r.out).toMatch(/^\d+\.\d+\.\d+\n$/);
    }
    const help = await cli(['--help'], { cwd });
    expect(help.out).toMatch(/-V\s+print the version \(also --version, before any command\)/);
  });

  it('each lifecycle command has --help naming its options', async () => {
    const cwd = await initialized();
    for (const [verb, flags] of [
      ['disable', ['[version]', '--version <n>', '--confirm-last-version', '--json']],
      ['enable', ['[version]', '--version <n>', '--json']],
      ['compromise', ['[version]', '--version <n>', '--no-rotate', '--json']],
      ['destroy', ['[version]', '--version <n>', '--force', '--confirm-last-version', '--json']],
      ['rotate', ['--due', '--json']],
      ['retire', ['--min-version', '--json']],
      ['policy', ['--max-age-days', '--max-uses', '--default', '--json']],
    ] as const) {
      const r = await cli(['key', verb, '--help'], { cwd });
      expect(r.code, verb).toBe(0);
      for (const flag of flags) expect(r.out, `${verb} ${flag}`).toContain(flag);
    }
  });
});

describe.skipIf(!built)('key lifecycle commands on a split-knowledge store (through the agent)', () => {
  it('compromise rotates through the agent and marks the version in the store; rotate --due rotates through the agent; disable needs no agent', async () => {
    const dir = await tempDir();
    expect((await cli(['init', '--shares', '2', '--threshold', '2', '--share-dir', 'shares'], { cwd: dir })).code).toBe(
      0,
    );
    const agent = await startAgent(dir);
    try {
      const shares = ['--share-file', 'shares/share-1-of-2.txt', '--share-file', 'shares/share-2-of-2.txt'];
      expect((await cli(['unseal', ...shares], { cwd: dir })).code).toBe(0);
      expect((await cli(['key', 'create', 'k'], { cwd: dir })).code).toBe(0);
      const v1 = (await cli(['encrypt', '--key', 'k', '--text'], { cwd: dir, stdin: 'one' })).out;
      const comp = await cli(['key', 'compromise', 'k', '1', '--json'], { cwd: dir });
      expect(comp.code, comp.stderr).toBe(0);
      expect(JSON.parse(comp.out)).toMatchObject({ compromisedVersion: 1, unreadableVersions: [1] });
      expect(JSON.parse(comp.out).key.primaryVersion).toBe(2);
      // The agent made the change itself (one write: marked and rotated), so it refuses v1 at once.
      const refused = await cli(['decrypt', '--key', 'k'], { cwd: dir, stdin: v1 });
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/^keywarden: .*v1 is compromised/);
      const show = JSON.parse((await cli(['key', 'show', 'k', '--json'], { cwd: dir })).out);
      expect(show.versions.map((v: { state: string }) => v.state)).toEqual(['compromised', 'enabled']);
      expect(v1.startsWith('kw1.')).toBe(true);

      expect((await cli(['key', 'policy', 'k', '--max-uses', '1'], { cwd: dir })).code).toBe(0);
      expect((await cli(['encrypt', '--key', 'k', '--text'], { cwd: dir, stdin: 'two' })).code).toBe(0);
      const due = await cli(['key', 'rotate', '--due', '--json'], { cwd: dir });
      expect(due.code, due.stderr).toBe(0);
      expect(JSON.parse(due.out)).toMatchObject([
        { key: 'k', reasons: ['uses'], fromVersion: 2, toVersion: 3, outcome: 'rotated' },
      ]);

      const dis = await cli(['key', 'disable', 'k', '2'], { cwd: dir });
      expect(dis.code, dis.stderr).toBe(0);
    } finally {
      expect(await agent.stop()).toBe(0);
    }
  });
});
