/**
 * The unnamed temporary output file (_streams.ts) on this machine's file system: it has no name
 * while written, and gets one only by linking (coreutils `ln -L`) or, without ln, by copying.
 * Linux only (O_TMPFILE); elsewhere the named temporary file is the only path.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { nameUnnamed, openUnnamed } from '../src/_streams.js';
import { tempDir } from './helpers.js';

const linux = process.platform === 'linux';

describe.skipIf(!linux)('unnamed temporary output file (O_TMPFILE)', () => {
  for (const how of ['linked with ln -L', 'copied (no ln)'] as const) {
    it(`has no directory entry while written; ${how}, it has the content, mode 0600, and the same inode when linked`, async () => {
      const dir = await tempDir();
      const fh = await openUnnamed(dir);
      if (!fh) {
        console.warn(
          `streams.test.ts: ${dir} has no O_TMPFILE support; the named path is tested in decrypt-signals.test.ts`,
        );
        return;
      }
      try {
        const content = Buffer.from('complete authenticated plaintext\n'.repeat(1000));
        await fh.write(content);
        expect(await readdir(dir)).toEqual([]);
        const name = path.join(dir, 'named');
        await nameUnnamed(fh, name, how === 'copied (no ln)' ? null : await lnPath());
        expect(await readdir(dir)).toEqual(['named']);
        expect((await readFile(name)).equals(content)).toBe(true);
        const st = await stat(name);
        expect(st.mode & 0o777).toBe(0o600);
        const same = st.ino === (await fh.stat()).ino;
        expect(same).toBe(how === 'linked with ln -L');
      } finally {
        await fh.close();
      }
    });
  }
});

async function lnPath(): Promise<string> {
  for (const p of ['/usr/bin/ln', '/bin/ln']) {
    if (
      await stat(p).then(
        () => true,
        () => false,
      )
    )
      return p;
  }
  throw new Error('no ln on this machine');
}
