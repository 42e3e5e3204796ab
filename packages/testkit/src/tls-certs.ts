/**
 * Certificates for the mutual-TLS tests of packages/agent and packages/cli, made at test time with
 * the openssl CLI (harness/debian-packages.txt installs it): nothing is committed. One CA for the
 * agent's clients, one unrelated CA, the agent's server certificate (127.0.0.1, localhost), and
 * client certificates naming principals (URI SAN keywarden:principal:NAME), an expired one and one
 * with no principal.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

export interface Pem {
  cert: string;
  key: string;
  certFile: string;
  keyFile: string;
}

export interface TestPki {
  dir: string;
  ca: Pem;
  otherCa: Pem;
  server: Pem;
  client(name: string): Pem;
  expired(name: string): Pem;
  foreign(name: string): Pem;
  noPrincipal(): Pem;
  cnOnly(name: string): Pem;
  remove(): void;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 });
}

export function makePki(): TestPki {
  const dir = mkdtempSync(path.join(tmpdir(), 'kw-pki-'));
  const read = (base: string): Pem => ({
    cert: readFileSync(path.join(dir, `${base}.crt`), 'utf8'),
    key: readFileSync(path.join(dir, `${base}.key`), 'utf8'),
    certFile: path.join(dir, `${base}.crt`),
    keyFile: path.join(dir, `${base}.key`),
  });
  const key = (base: string) =>
    openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${base}.key`], dir);
  const ca = (base: string, cn: string): Pem => {
    key(base);
    openssl(
      ['req', '-x509', '-new', '-key', `${base}.key`, '-subj', `/CN=${cn}`, '-days', '2', '-out', `${base}.crt`],
      dir,
    );
    // `openssl ca` keeps a database; one per CA.
    writeFileSync(path.join(dir, `${base}.index`), '');
    writeFileSync(
      path.join(dir, `${base}.cnf`),
      `[ca]\ndefault_ca = d\n[d]\ndatabase = ${base}.index\nnew_certs_dir = .\ncertificate = ${base}.crt\nprivate_key = ${base}.key\nrand_serial = yes\ndefault_md = sha256\npolicy = p\nunique_subject = no\ncopy_extensions = none\n[p]\ncommonName = supplied\n`,
    );
    return read(base);
  };
  let n = 0;
  const leaf = (caBase: string, cn: string, ext: string, dates: { start?: string; end?: string } = {}): Pem => {
    const base = `leaf${++n}`;
    key(base);
    openssl(['req', '-new', '-key', `${base}.key`, '-subj', `/CN=${cn}`, '-out', `${base}.csr`], dir);
    writeFileSync(path.join(dir, `${base}.ext`), `[x]\n${ext}\n`);
    openssl(
      [
        'ca',
        '-batch',
        '-notext',
        '-config',
        `${caBase}.cnf`,
        '-in',
        `${base}.csr`,
        '-out',
        `${base}.crt`,
        '-extfile',
        `${base}.ext`,
        '-extensions',
        'x',
        ...(dates.start ? ['-startdate', dates.start] : []),
        ...(dates.end ? ['-enddate', dates.end] : ['-days', '1']),
      ],
      dir,
    );
    return read(base);
  };
  const clientExt = (name: string) =>
    `basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = clientAuth\nsubjectAltName = URI:keywarden:principal:${name}`;
  const caPem = ca('ca', 'Keywarden test client CA');
  const otherCa = ca('other', 'Some other CA');
  const server = leaf(
    'ca',
    'agent',
    'basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost',
  );
  return {
    dir,
    ca: caPem,
    otherCa,
    server,
    client: (name) => leaf('ca', `client ${name}`, clientExt(name)),
    expired: (name) =>
      leaf('ca', `client ${name}`, clientExt(name), { start: '20200101000000Z', end: '20200102000000Z' }),
    foreign: (name) => leaf('other', `client ${name}`, clientExt(name)),
    noPrincipal: () =>
      leaf(
        'ca',
        'admin',
        'basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = clientAuth\nsubjectAltName = DNS:admin.example',
      ),
    cnOnly: (name) =>
      leaf('ca', name, 'basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = clientAuth'),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
