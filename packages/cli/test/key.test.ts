import { describe, expect, it } from 'vitest';
import { cli, initialized, oneLine } from './helpers.js';

describe('keywarden key', () => {
  it('create prints the new key; list shows name, id, primary version, scope and creation time', async () => {
    const cwd = await initialized();
    const c = await cli(
      ['key', 'create', 'billing-a', '--env', 'prod', '--service', 'billing', '--tenant', 'a', '--purpose', 'invoices'],
      { cwd },
    );
    expect(c.code).toBe(0);
    expect(c.out).toMatch(/^Created key billing-a \(kek_[A-Za-z0-9_-]{22}, v1\)\.\n$/);
    expect((await cli(['key', 'create', 'audit'], { cwd })).code).toBe(0);

    const list = await cli(['key', 'list'], { cwd });
    expect(list.code).toBe(0);
    const lines = list.out.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^NAME\s+ID\s+PRIMARY\s+SCOPE\s+CREATED\s+AGE\s+USES\s+ROTATE BY$/);
    expect(lines[1]).toMatch(/^audit\s+kek_\S+\s+v1\s+-\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+<1h\s+0\s+\d{4}-/);
    expect(lines[2]).toMatch(
      /^billing-a\s+kek_\S+\s+v1\s+environment=prod service=billing tenant=a purpose=invoices\s+\d{4}-\d\d-\d\dT/,
    );
    expect(lines).toHaveLength(3);
  });

  it('list --json is an array with ids, scope, versions and ISO dates', async () => {
    const cwd = await initialized();
    const empty = await cli(['key', 'list', '--json'], { cwd });
    expect(JSON.parse(empty.out)).toEqual([]);
    await cli(['key', 'create', 'k1', '--tenant', 't1'], { cwd });
    const r = await cli(['key', 'list', '--json'], { cwd });
    expect(r.code).toBe(0);
    const keys = JSON.parse(r.out);
    expect(keys).toHaveLength(1);
    expect(keys[0]).toMatchObject({ name: 'k1', primaryVersion: 1, scope: { tenant: 't1' } });
    expect(keys[0].id).toMatch(/^kek_/);
    expect(new Date(keys[0].createdAt).toISOString()).toBe(keys[0].createdAt);
    expect(keys[0].versions).toEqual([expect.objectContaining({ version: 1, state: 'enabled' })]);
  });

  it('an empty store lists no keys with a hint', async () => {
    const cwd = await initialized();
    const r = await cli(['key', 'list'], { cwd });
    expect(r.code).toBe(0);
    expect(r.out).toContain('no keys');
  });

  it('rotate adds v2 as primary; show lists both versions with states (table and --json)', async () => {
    const cwd = await initialized();
    await cli(['key', 'create', 'app', '--service', 'api'], { cwd });
    const rot = await cli(['key', 'rotate', 'app'], { cwd });
    expect(rot.code).toBe(0);
    expect(rot.out).toMatch(/^Rotated key app \(kek_\S+\): primary is now v2\.\n$/);

    const show = await cli(['key', 'show', 'app'], { cwd });
    expect(show.code).toBe(0);
    expect(show.out).toMatch(/^name:\s+app$/m);
    expect(show.out).toMatch(/^id:\s+kek_\S+$/m);
    expect(show.out).toMatch(/^scope:\s+service=api$/m);
    expect(show.out).toMatch(/^primary version:\s+v2$/m);
    expect(show.out).toMatch(/^VERSION\s+STATE\s+PRIMARY\s+ROOT\s+CREATED\s+UPDATED$/m);
    expect(show.out).toMatch(/^v1\s+enabled\s+root_\S+/m);
    expect(show.out).toMatch(/^v2\s+enabled\s+yes\s+root_\S+/m);

    const json = JSON.parse((await cli(['key', 'show', 'app', '--json'], { cwd })).out);
    expect(json.primaryVersion).toBe(2);
    expect(json.versions.map((v: { version: number; state: string }) => [v.version, v.state])).toEqual([
      [1, 'enabled'],
      [2, 'enabled'],
    ]);
    // By id as well as by name.
    expect((await cli(['key', 'show', json.id], { cwd })).code).toBe(0);
  });

  it('errors: unknown key, duplicate name, invalid name, invalid scope', async () => {
    const cwd = await initialized();
    const missing = await cli(['key', 'show', 'nope'], { cwd });
    expect(missing.code).toBe(1);
    expect(oneLine(missing.stderr)).toBe('keywarden: keystore: no key named "nope"');
    expect((await cli(['key', 'rotate', 'nope'], { cwd })).code).toBe(1);

    await cli(['key', 'create', 'dup'], { cwd });
    const dup = await cli(['key', 'create', 'dup'], { cwd });
    expect(dup.code).toBe(1);
    expect(oneLine(dup.stderr)).toMatch(/^keywarden: keystore: /);

    const bad = await cli(['key', 'create', 'kek_sneaky'], { cwd });
    expect(bad.code).toBe(1);
    expect(oneLine(bad.stderr)).toMatch(/^keywarden: (keywarden: )?key names are/);

    const badScope = await cli(['key', 'create', 'x', '--tenant', ''], { cwd });
    expect(badScope.code).toBe(1);
    oneLine(badScope.stderr);
  });
});
