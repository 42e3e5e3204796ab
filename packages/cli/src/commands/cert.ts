/**
 * `keywarden cert ca|request|issue|renew|revoke|crl|list|import|export` and `keywarden audit
 * checkpoint`: certificate keys of @keywarden/pki on the folder's key store (docs/pki.md). Key
 * pairs are kept under a KEK ("pki" unless --kek; made on first use), so every command that signs
 * needs the root unsealed in this process (development mode, --unseal-key-file, or a device root).
 * Under split knowledge a command that signs takes a quorum of the current shares (--share-file,
 * piped one a line, or typed at the hidden prompt), as the audit commands and rekey do, and
 * unseals the root in this process for that command only: the agent has no sign operation, and a
 * CA key's use is a quorum decision (docs/pki.md §6). The commands that only read or add records
 * (list, export, import, revoke) need no shares there. Requests, certificates and CRLs are read as
 * PEM or DER and written as PEM (stdout, or --out FILE).
 *
 * @keywarden/pki (pure JavaScript: pkijs, asn1js) is a dependency, loaded only by these commands.
 */
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { AuditError, AuditLog, auditLogOf, type Keywarden, KeywardenError, readStoreAuditHead } from '@keywarden/core';
import type * as Pki from '@keywarden/pki';
import { type Command, InvalidArgumentError } from 'commander';
import { writeWholeFile } from '../_streams.js';
import { hooksOf } from '../ceremony-io.js';
import { UsageError } from '../errors.js';
import type { CliIO } from '../io.js';
import { formatDate, formatJson, formatTable, print } from '../output.js';
import { collect, positiveInt } from './_common.js';
import { withQuorumOrUnsealed } from './_unsealed.js';

type PkiModule = typeof Pki;
type Profile = 'server' | 'client' | 'server-client';
type Storage = 'kek' | 'root';

const STORAGE_HELP =
  'where a new private key lives: kek (generated here, kept wrapped under the KEK) or root (held by the root: inside the PKCS#11 token or TPM, never leaving it; for the software root, sealed in its own records of the key store)';

function storageOf(value: string): Storage {
  if (value !== 'kek' && value !== 'root') throw new InvalidArgumentError('must be kek or root');
  return value;
}

const ALGORITHMS = ['ECDSA-P256', 'ECDSA-P384', 'RSA-2048', 'RSA-3072', 'Ed25519'] as const;
const PROFILES: readonly Profile[] = ['server', 'client', 'server-client'];

/** What a command gets: the unsealed Keywarden and the pki objects over it. */
interface PkiContext {
  pki: PkiModule;
  kw: Keywarden;
  pairs: Pki.KeyPairs;
  certs: Pki.Certificates;
}

/** Whether the command signs (needs the root unsealed) or only reads and adds records. */
type Needs = 'sign' | 'records';

async function withPki<T>(
  cmd: Command,
  io: CliIO,
  kek: string,
  fn: (c: PkiContext) => Promise<T>,
  storage: Storage = 'kek',
  needs: Needs = 'sign',
): Promise<T> {
  const pki = await import('@keywarden/pki');
  const run = (kw: Keywarden) => {
    const pairs = new pki.KeyPairs({ keywarden: kw, kek, storage });
    return fn({ pki, kw, pairs, certs: new pki.Certificates({ keywarden: kw, keyPairs: pairs }) });
  };
  const shareFiles = (cmd.opts() as { shareFile?: string[] }).shareFile ?? [];
  // Split knowledge: records need no root; signing takes a quorum in this process (file comment).
  return withQuorumOrUnsealed(
    cmd,
    io,
    {
      operation: `cert ${cmd.name()}`,
      title: 'Unsealing the root to sign',
      shareFiles,
      sealedSuffices: needs === 'records',
    },
    run,
  );
}

const SHARE_FILE_HELP =
  'split knowledge: a file holding one current share (repeat for a quorum; else piped one a line, or typed)';

/** The KEK that wraps new key pairs, made (memory mode: it wraps envelopes) when missing. */
async function ensureKek(kw: Keywarden, kek: string): Promise<void> {
  try {
    await kw.getKey(kek);
  } catch (err) {
    if (!KeywardenError.isInstance(err, 'KW_KEY_NOT_FOUND')) throw err;
    await kw.createKey(kek, { scope: { purpose: 'pki-key-pairs' } });
  }
}

async function isCa(c: PkiContext, name: string): Promise<boolean> {
  return (await c.kw.store.getMeta(`pki/ca/${name}`)) !== undefined;
}

function algorithmOf(value: string): Pki.KeyPairAlgorithm {
  if (!(ALGORITHMS as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`must be one of ${ALGORITHMS.join(', ')}`);
  }
  return value as Pki.KeyPairAlgorithm;
}

function profileOf(value: string): Profile {
  if (!(PROFILES as readonly string[]).includes(value))
    throw new InvalidArgumentError(`must be ${PROFILES.join(', ')}`);
  return value as Profile;
}

function daysOf(value: string): number {
  if (!/^[0-9]{1,5}$/.test(value) || Number(value) < 1 || Number(value) > 36_500) {
    throw new InvalidArgumentError('must be a number of days from 1 to 36500');
  }
  return Number(value);
}

interface SubjectOptions {
  cn: string;
  org?: string;
  ou?: string;
  country?: string;
}

function addSubjectOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--cn <name>', 'subject common name')
    .option('--org <name>', 'subject organization (O)')
    .option('--ou <name>', 'subject organizational unit (OU)')
    .option('--country <cc>', 'subject country (C), two letters');
}

function subjectOf(opts: SubjectOptions): Pki.DistinguishedName {
  if (opts.country !== undefined && !/^[A-Za-z]{2}$/.test(opts.country)) {
    throw new UsageError('--country is a two-letter country code');
  }
  return {
    commonName: opts.cn,
    ...(opts.org !== undefined ? { organization: opts.org } : {}),
    ...(opts.ou !== undefined ? { organizationalUnit: opts.ou } : {}),
    ...(opts.country !== undefined ? { country: opts.country.toUpperCase() } : {}),
  };
}

type PemLabel = 'CERTIFICATE' | 'CERTIFICATE REQUEST' | 'X509 CRL';

/** PEM to --out FILE (and a line saying so), or to stdout; with --json the PEM is a field instead. */
async function emit(
  io: CliIO,
  opts: { out?: string; json?: boolean },
  pki: PkiModule,
  items: Array<{ der: Uint8Array; label: PemLabel }>,
  json: Record<string, unknown>,
  human: string,
): Promise<void> {
  const pem = items.map((i) => pki.toPem(i.der, i.label)).join('');
  // All or nothing: a CRL or certificate being replaced is never seen truncated (mode 0644: public).
  if (opts.out !== undefined) await writeWholeFile(opts.out, io.cwd, pem, 0o644, io.stderr, hooksOf(io).onStep);
  if (opts.json) {
    await print(io.stdout, formatJson({ ...json, ...(opts.out !== undefined ? { file: opts.out } : { pem }) }));
  } else if (opts.out !== undefined) {
    await print(io.stdout, `${human} Wrote ${opts.out}.\n`);
  } else {
    await print(io.stdout, pem);
  }
}

function dnText(dn: Pki.DistinguishedName): string {
  return [
    dn.country !== undefined ? `C=${dn.country}` : '',
    dn.organization !== undefined ? `O=${dn.organization}` : '',
    dn.organizationalUnit !== undefined ? `OU=${dn.organizationalUnit}` : '',
    `CN=${dn.commonName}`,
  ]
    .filter((s) => s !== '')
    .join(', ');
}

/** JSON of a certificate made or read here (public data only). */
function certJson(pki: PkiModule, der: Uint8Array): Record<string, unknown> {
  const { notBefore, notAfter } = pki.validityOf(der);
  return {
    serialNumber: pki.serialOf(der),
    subject: pki.subjectOf(der),
    notBefore: notBefore.toISOString(),
    notAfter: notAfter.toISOString(),
  };
}

function heldJson(h: Pki.HeldCertificate): Record<string, unknown> {
  return {
    keyPair: h.keyPair,
    keyVersion: h.keyVersion,
    serialNumber: h.serialNumber,
    subject: h.subject,
    issuer: h.issuer,
    notBefore: h.notBefore.toISOString(),
    notAfter: h.notAfter.toISOString(),
    profile: h.profile,
    dnsNames: h.dnsNames,
    ipAddresses: h.ipAddresses,
    source: h.source,
    ...(h.ca !== undefined ? { ca: h.ca } : {}),
  };
}

/** A file named on the command line, relative to the command's working directory. */
async function readPem(pki: PkiModule, cwd: string, file: string, label: PemLabel): Promise<Uint8Array> {
  return pki.fromPem(await readFile(path.resolve(cwd, file)), label);
}

interface OutOptions {
  out?: string;
  json?: boolean;
}

export function registerCert(program: Command, io: CliIO): void {
  const cert = program
    .command('cert')
    .description('certificate keys: key pairs under a KEK, requests, a small CA, certificates, CRLs (docs/pki.md)')
    .addHelpText(
      'after',
      `
Private keys are generated here and kept only wrapped under a KEK (--kek, default "pki", made on
first use): each command that signs unwraps one, so it needs the root unsealed in this process
(development mode, --unseal-key-file, or a device root; under split knowledge a quorum of the
current shares: --share-file, piped one a line, or typed). Input is PEM or DER; output is PEM on
stdout, or --out FILE. Serial numbers are lowercase hex.

Example:
  keywarden cert ca demo-ca --cn "Demo Root CA" --out ca.pem
  keywarden cert request web --cn web.example.test --dns web.example.test --out web.csr
  keywarden cert issue demo-ca --csr web.csr --profile server --days 90 --out web.pem
  keywarden cert renew web --ca demo-ca --revoke-old --out web.pem
  keywarden cert crl demo-ca --out ca.crl`,
    );

  addSubjectOptions(
    cert
      .command('ca')
      .description('create a certificate authority: a key pair and its CA certificate (self-signed, or by --parent)')
      .argument('<name>', 'CA name (also the name of its key pair)'),
  )
    .option('--algorithm <alg>', `key pair algorithm: ${ALGORITHMS.join(', ')}`, algorithmOf, 'ECDSA-P256')
    .option('--days <n>', 'validity in days', daysOf, 3650)
    .option('--path-length <n>', 'pathLenConstraint: CA levels allowed below it', (v: string) => {
      if (!/^[0-9]{1,2}$/.test(v)) throw new InvalidArgumentError('must be a small non-negative integer');
      return Number(v);
    })
    .option('--parent <ca>', 'make an intermediate CA issued by this CA of the key store')
    .option('--kek <name>', 'KEK that wraps the private key', 'pki')
    .option('--storage <where>', STORAGE_HELP, storageOf, 'kek')
    .option('--out <file>', 'write the CA certificate (PEM) here')
    .option('--share-file <path>', SHARE_FILE_HELP, collect)
    .option('--json', 'print JSON')
    .action(
      async (
        name: string,
        opts: SubjectOptions &
          OutOptions & {
            algorithm: Pki.KeyPairAlgorithm;
            days: number;
            pathLength?: number;
            parent?: string;
            kek: string;
            storage: Storage;
          },
        cmd: Command,
      ) => {
        const subject = subjectOf(opts);
        await withPki(
          cmd,
          io,
          opts.kek,
          async (c) => {
            await ensureKek(c.kw, opts.kek);
            const parent =
              opts.parent !== undefined ? await c.pki.CertificateAuthority.open(c.kw, c.pairs, opts.parent) : undefined;
            const ca = await c.pki.CertificateAuthority.create(c.kw, c.pairs, name, {
              subject,
              algorithm: opts.algorithm,
              validityDays: opts.days,
              ...(opts.pathLength !== undefined ? { pathLength: opts.pathLength } : {}),
              ...(parent ? { parent } : {}),
            });
            const der = await ca.certificate();
            await c.certs.add(name, der, parent ? { source: 'issued', ca: parent.name } : { source: 'imported' });
            await emit(
              io,
              opts,
              c.pki,
              [{ der, label: 'CERTIFICATE' }],
              { ca: name, algorithm: opts.algorithm, storage: opts.storage, ...certJson(c.pki, der) },
              `Created CA ${name} (${opts.algorithm}${opts.storage === 'root' ? ', key in the root' : ''}, ${dnText(subject)}).`,
            );
          },
          opts.storage,
        );
      },
    );

  addSubjectOptions(
    cert
      .command('request')
      .description('make a PKCS#10 certificate request signed by a key pair (created when it does not exist)')
      .argument('<key-pair>', 'key pair name: 1..128 of [A-Za-z0-9._:-]'),
  )
    .option('--dns <name>', 'subjectAltName DNS name, repeat for several', collect)
    .option('--ip <address>', 'subjectAltName IP address, repeat for several', collect)
    .option(
      '--algorithm <alg>',
      `algorithm of a new key pair: ${ALGORITHMS.join(', ')} (default ECDSA-P256)`,
      algorithmOf,
    )
    .option('--kek <name>', 'KEK that wraps a new key pair’s private key', 'pki')
    .option('--storage <where>', STORAGE_HELP, storageOf, 'kek')
    .option('--out <file>', 'write the request (PEM) here')
    .option('--share-file <path>', SHARE_FILE_HELP, collect)
    .option('--json', 'print JSON')
    .addHelpText(
      'after',
      '\nThe request is signed by the key pair’s primary version; check it with `openssl req -verify`.',
    )
    .action(
      async (
        name: string,
        opts: SubjectOptions &
          OutOptions & {
            dns?: string[];
            ip?: string[];
            algorithm?: Pki.KeyPairAlgorithm;
            kek: string;
            storage: Storage;
          },
        cmd: Command,
      ) => {
        const subject = subjectOf(opts);
        await withPki(
          cmd,
          io,
          opts.kek,
          async (c) => {
            let info: Pki.KeyPairInfo;
            let created = false;
            try {
              info = await c.pairs.get(name);
            } catch (err) {
              if (!KeywardenError.isInstance(err, 'KW_KEY_NOT_FOUND')) throw err;
              await ensureKek(c.kw, opts.kek);
              info = await c.pairs.create(name, { algorithm: opts.algorithm ?? 'ECDSA-P256' });
              created = true;
            }
            if (opts.algorithm !== undefined && info.algorithm !== opts.algorithm) {
              throw new UsageError(
                `cert request: key pair ${name} exists and is ${info.algorithm}, not ${opts.algorithm} (leave out --algorithm)`,
              );
            }
            const csr = await c.pki.createCsr(await c.pairs.signer(name), {
              subject,
              dnsNames: opts.dns ?? [],
              ipAddresses: opts.ip ?? [],
            });
            await emit(
              io,
              opts,
              c.pki,
              [{ der: csr, label: 'CERTIFICATE REQUEST' }],
              {
                keyPair: name,
                keyVersion: info.primaryVersion,
                algorithm: info.algorithm,
                storage: info.storage,
                created,
                subject,
                dnsNames: opts.dns ?? [],
                ipAddresses: opts.ip ?? [],
              },
              `${created ? `Created key pair ${name} (${info.algorithm}${info.storage === 'root' ? ', in the root' : ''}). ` : ''}Request for ${dnText(subject)} signed by ${name} v${info.primaryVersion}.`,
            );
          },
          opts.storage,
        );
      },
    );

  cert
    .command('issue')
    .description(
      'issue a leaf certificate for a PKCS#10 request (its signature is checked), signed by a CA of the key store',
    )
    .argument('<ca>', 'CA name')
    .requiredOption('--csr <file>', 'the request (PEM or DER), from `cert request` or `openssl req`')
    .option('--profile <profile>', `what the certificate is for: ${PROFILES.join(', ')}`, profileOf, 'server')
    .option('--days <n>', 'validity in days (never past the CA certificate’s)', daysOf, 90)
    .option('--out <file>', 'write the certificate (PEM) here')
    .option('--share-file <path>', SHARE_FILE_HELP, collect)
    .option('--json', 'print JSON')
    .action(
      async (caName: string, opts: OutOptions & { csr: string; profile: Profile; days: number }, cmd: Command) => {
        await withPki(cmd, io, 'pki', async (c) => {
          const csr = await readPem(c.pki, io.cwd, opts.csr, 'CERTIFICATE REQUEST');
          c.pki.readCsr(csr); // a bad request is refused before anything else is looked at
          const ca = await c.pki.CertificateAuthority.open(c.kw, c.pairs, caName);
          const der = await ca.issue({ csr, profile: opts.profile, validityDays: opts.days });
          const keyPair = await c.certs.recordIssued(der, caName);
          const json = { ca: caName, profile: opts.profile, ...certJson(c.pki, der), ...(keyPair ? { keyPair } : {}) };
          await emit(
            io,
            opts,
            c.pki,
            [{ der, label: 'CERTIFICATE' }],
            json,
            `Issued ${opts.profile} certificate ${c.pki.serialOf(der)} for ${dnText(c.pki.subjectOf(der))}${keyPair ? ` (key pair ${keyPair})` : ''}.`,
          );
        });
      },
    );

  cert
    .command('renew')
    .description(
      'renew a leaf (new key pair version, new certificate from --ca) or a CA (new key version and CA certificate)',
    )
    .argument('<name>', 'key pair name of a leaf, or CA name')
    .option('--ca <ca>', 'leaf: the CA that issues the new certificate')
    .option('--days <n>', 'validity in days (default: 90 for a leaf, 3650 for a CA)', daysOf)
    .option('--profile <profile>', `leaf: ${PROFILES.join(', ')} (default: the previous certificate's)`, profileOf)
    .option(
      '--revoke-old',
      'leaf: revoke the previous certificate as superseded (default: it stays valid until it expires)',
    )
    .option('--parent <ca>', 'CA: an intermediate is renewed under this CA')
    .option('--out <file>', 'write the new certificate (PEM) here')
    .option('--share-file <path>', SHARE_FILE_HELP, collect)
    .option('--json', 'print JSON')
    .addHelpText(
      'after',
      `
A renewed CA keeps its old key enabled: certificates it issued verify against the old CA
certificate until they expire (the overlap), and \`cert crl CA --key-version N\` still signs their CRL.`,
    )
    .action(
      async (
        name: string,
        opts: OutOptions & { ca?: string; days?: number; profile?: Profile; revokeOld?: boolean; parent?: string },
        cmd: Command,
      ) => {
        await withPki(cmd, io, 'pki', async (c) => {
          if (await isCa(c, name)) {
            if (opts.ca !== undefined || opts.revokeOld || opts.profile !== undefined) {
              throw new UsageError(`cert renew: ${name} is a CA; --ca, --profile and --revoke-old are for leaves`);
            }
            const ca = await c.pki.CertificateAuthority.open(c.kw, c.pairs, name);
            const parent =
              opts.parent !== undefined ? await c.pki.CertificateAuthority.open(c.kw, c.pairs, opts.parent) : undefined;
            const der = await ca.renew({ validityDays: opts.days ?? 3650, ...(parent ? { parent } : {}) });
            await c.certs.add(name, der, parent ? { source: 'issued', ca: parent.name } : { source: 'imported' });
            const version = (await c.pairs.get(name)).primaryVersion;
            await emit(
              io,
              opts,
              c.pki,
              [{ der, label: 'CERTIFICATE' }],
              { ca: name, keyVersion: version, ...certJson(c.pki, der) },
              `Renewed CA ${name}: key v${version}, certificate ${c.pki.serialOf(der)}.`,
            );
            return;
          }
          if (opts.ca === undefined)
            throw new UsageError(`cert renew: give --ca, the CA that issues ${name}'s new certificate`);
          if (opts.parent !== undefined) throw new UsageError('cert renew: --parent is for CAs');
          const ca = await c.pki.CertificateAuthority.open(c.kw, c.pairs, opts.ca);
          const renewed = await c.certs.renew(name, {
            ca,
            validityDays: opts.days ?? 90,
            revokePrevious: opts.revokeOld === true,
            ...(opts.profile !== undefined ? { profile: opts.profile } : {}),
          });
          await emit(
            io,
            opts,
            c.pki,
            [{ der: renewed.certificate, label: 'CERTIFICATE' }],
            heldJson(renewed),
            `Renewed ${name}: key v${renewed.keyVersion}, certificate ${renewed.serialNumber} until ${formatDate(renewed.notAfter)}${opts.revokeOld ? '; the previous one is revoked' : ''}.`,
          );
        });
      },
    );

  cert
    .command('revoke')
    .description('revoke a certificate a CA of the key store issued (it appears in the next CRL)')
    .argument('<ca>', 'CA name')
    .argument('[serial]', 'serial number (hex), or --cert')
    .option('--cert <file>', 'the certificate to revoke (PEM or DER) instead of its serial')
    .option(
      '--reason <reason>',
      'unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise',
      'unspecified',
    )
    .option('--json', 'print JSON')
    .action(
      async (
        caName: string,
        serial: string | undefined,
        opts: { cert?: string; reason: string; json?: boolean },
        cmd: Command,
      ) => {
        if ((serial === undefined) === (opts.cert === undefined)) {
          throw new UsageError('cert revoke: give a serial number or --cert FILE (not both)');
        }
        await withPki(
          cmd,
          io,
          'pki',
          async (c) => {
            if (!Object.hasOwn(c.pki.CRL_REASONS, opts.reason) || opts.reason === 'removeFromCRL') {
              throw new UsageError(`cert revoke: --reason ${opts.reason} is not a revocation reason`);
            }
            const serialNumber =
              opts.cert !== undefined
                ? c.pki.serialOf(await readPem(c.pki, io.cwd, opts.cert, 'CERTIFICATE'))
                : normalizeSerial(serial as string);
            const ca = await c.pki.CertificateAuthority.open(c.kw, c.pairs, caName);
            await ca.revoke(serialNumber, { reason: opts.reason as Pki.CrlReason });
            await print(
              io.stdout,
              opts.json
                ? formatJson({ ca: caName, serialNumber, reason: opts.reason })
                : `Revoked ${serialNumber} (${opts.reason}); it is listed in ${caName}'s next CRL (keywarden cert crl ${caName}).\n`,
            );
          },
          'kek',
          'records',
        );
      },
    );

  cert
    .command('crl')
    .description('sign a new CRL (next cRLNumber) listing what a CA key version revoked')
    .argument('<ca>', 'CA name')
    .option('--hours <n>', 'nextUpdate: hours from now', positiveInt, 24)
    .option(
      '--key-version <n>',
      'the CA key version whose certificates it lists (default: the current one)',
      positiveInt,
    )
    .option('--out <file>', 'write the CRL (PEM) here')
    .option('--share-file <path>', SHARE_FILE_HELP, collect)
    .option('--json', 'print JSON')
    .action(async (caName: string, opts: OutOptions & { hours: number; keyVersion?: number }, cmd: Command) => {
      await withPki(cmd, io, 'pki', async (c) => {
        const ca = await c.pki.CertificateAuthority.open(c.kw, c.pairs, caName);
        const der = await ca.crl({
          nextUpdateHours: opts.hours,
          ...(opts.keyVersion !== undefined ? { keyVersion: opts.keyVersion } : {}),
        });
        const revoked = await ca.revoked();
        await emit(
          io,
          opts,
          c.pki,
          [{ der, label: 'X509 CRL' }],
          { ca: caName, revoked },
          `CRL of ${caName}: ${revoked.length} revoked.`,
        );
      });
    });

  cert
    .command('import')
    .description(
      'add a certificate made elsewhere (e.g. by openssl or another CA) to the key pair whose key it certifies',
    )
    .argument('<key-pair>', 'key pair name')
    .argument('<file>', 'the certificate (PEM or DER)')
    .option('--json', 'print JSON')
    .addHelpText('after', '\nA certificate whose public key is not one of the key pair’s versions is refused.')
    .action(async (name: string, file: string, opts: { json?: boolean }, cmd: Command) => {
      await withPki(
        cmd,
        io,
        'pki',
        async (c) => {
          const held = await c.certs.add(name, await readPem(c.pki, io.cwd, file, 'CERTIFICATE'));
          await print(
            io.stdout,
            opts.json
              ? formatJson(heldJson(held))
              : `Imported certificate ${held.serialNumber} (${held.issuer.replace(/\n/g, ', ')}) for ${name} v${held.keyVersion}, valid until ${formatDate(held.notAfter)}.\n`,
          );
        },
        'kek',
        'records',
      );
    });

  cert
    .command('export')
    .description('print the newest certificate of a key pair or CA (PEM)')
    .argument('<name>', 'key pair or CA name')
    .option('--all', 'every certificate, oldest first (a CA during an overlap: trust them all)')
    .option('--out <file>', 'write them (PEM) here')
    .option('--json', 'print JSON')
    .action(async (name: string, opts: OutOptions & { all?: boolean }, cmd: Command) => {
      await withPki(
        cmd,
        io,
        'pki',
        async (c) => {
          let ders: Uint8Array[];
          if (await isCa(c, name)) {
            const ca = await c.pki.CertificateAuthority.open(c.kw, c.pairs, name);
            ders = opts.all ? await ca.certificates() : [await ca.certificate()];
          } else {
            ders = opts.all
              ? (await c.certs.list(name)).map((h) => h.certificate)
              : [(await c.certs.latest(name)).certificate];
          }
          await emit(
            io,
            opts,
            c.pki,
            ders.map((der) => ({ der, label: 'CERTIFICATE' as const })),
            { name, certificates: ders.map((der) => certJson(c.pki, der)) },
            `${ders.length} certificate(s) of ${name}.`,
          );
        },
        'kek',
        'records',
      );
    });

  cert
    .command('list')
    .description('list key pairs, CAs and the certificates they hold')
    .option('--json', 'print a JSON array')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      await withPki(
        cmd,
        io,
        'pki',
        async (c) => {
          const rows: Array<Record<string, unknown>> = [];
          for (const name of await c.pairs.list()) {
            const info = await c.pairs.get(name);
            const ca = await isCa(c, name);
            const held = await c.certs.list(name);
            const last = held[held.length - 1];
            rows.push({
              name,
              algorithm: info.algorithm,
              kek: info.kek,
              storage: info.storage,
              primaryVersion: info.primaryVersion,
              versions: info.versions.map((v) => ({
                version: v.version,
                state: v.state,
                createdAt: v.createdAt.toISOString(),
              })),
              ca,
              ...(ca ? { revoked: await (await c.pki.CertificateAuthority.open(c.kw, c.pairs, name)).revoked() } : {}),
              certificates: held.map(heldJson),
              ...(last ? { latest: { serialNumber: last.serialNumber, notAfter: last.notAfter.toISOString() } } : {}),
            });
          }
          if (opts.json) {
            await print(io.stdout, formatJson(rows));
            return;
          }
          if (rows.length === 0) {
            await print(io.stdout, 'No key pairs. Create a CA with `keywarden cert ca NAME --cn ...`.\n');
            return;
          }
          await print(
            io.stdout,
            formatTable(
              ['NAME', 'KIND', 'ALGORITHM', 'PRIMARY', 'CERTIFICATES', 'NEWEST EXPIRES'],
              rows.map((r) => {
                const held = r.certificates as unknown[];
                const latest = r.latest as { notAfter: string } | undefined;
                return [
                  r.name as string,
                  r.ca ? 'CA' : 'key pair',
                  r.algorithm as string,
                  `v${r.primaryVersion as number}`,
                  String(held.length),
                  latest ? formatDate(new Date(latest.notAfter)) : '-',
                ];
              }),
            ),
          );
        },
        'kek',
        'records',
      );
    });
}

/** `audit checkpoint`: registered under the `audit` command of cli.ts. */
export function registerAuditCheckpoint(program: Command, io: CliIO): void {
  const audit = program.commands.find((c) => c.name() === 'audit');
  if (!audit) throw new Error('cert: the audit command must be registered first');
  audit
    .command('checkpoint')
    .description('sign the audit log’s head with a key pair and append the signed checkpoint to the log')
    .requiredOption(
      '--key-pair <name>',
      'the key pair that signs (its certificate is what `audit verify --checkpoint-cert` takes)',
    )
    .option('--share-file <path>', SHARE_FILE_HELP, collect)
    .option('--json', 'print JSON')
    .addHelpText(
      'after',
      `
A log rewritten by someone who holds the audit key (a fresh chain with valid MACs) verifies
without checkpoints; with them, \`audit verify --checkpoint-cert CERT\` names the first checkpoint
whose signed head the log no longer has. Schedule this (e.g. hourly) or let a long-running process
use @keywarden/pki's AuditCheckpointer. See docs/audit.md.`,
    )
    .action(async (opts: { keyPair: string; json?: boolean }, cmd: Command) => {
      await withPki(cmd, io, 'pki', async (c) => {
        const signer = await c.pairs.signer(opts.keyPair);
        const own = auditLogOf(c.kw) === undefined;
        const log = auditLogOf(c.kw) ?? new AuditLog({ store: c.kw.store, root: c.kw.root });
        try {
          const info = await c.pki.writeCheckpoint(log, signer, {
            readHead: async () => (await readStoreAuditHead(c.kw.store, await log.key())) ?? { seq: 0, mac: '' },
          });
          await print(
            io.stdout,
            opts.json
              ? formatJson({ keyPair: opts.keyPair, ...info })
              : `audit: checkpoint signed by ${opts.keyPair} over seq ${info.headSeq}.\n`,
          );
        } finally {
          if (own) await log.close();
        }
      });
    });
}

function normalizeSerial(serial: string): string {
  const hex = serial.replace(/:/g, '').toLowerCase();
  if (!/^[0-9a-f]{1,40}$/.test(hex))
    throw new UsageError('cert revoke: the serial number is hex (as `openssl x509 -serial` prints it)');
  return hex;
}

/** `audit verify --checkpoint-cert`: the verified log's signed checkpoints (AuditError when they fail). */
export async function verifyAuditCheckpoints(
  lines: readonly string[],
  certFiles: readonly string[],
  maxUncovered: number,
  cwd: string,
): Promise<string> {
  const pki = await import('@keywarden/pki');
  const certificates = await Promise.all(certFiles.map(async (f) => readPem(pki, cwd, f, 'CERTIFICATE')));
  const result = pki.verifyCheckpoints(lines, { certificates, maxUncovered });
  if (!result.ok) {
    throw new AuditError(`audit: the signed checkpoints do not verify: ${result.firstBad?.reason ?? 'unknown reason'}`);
  }
  return `audit: ${result.checkpoints} signed checkpoint(s) verified; the log is signed through seq ${result.coveredThrough} (${result.uncovered} record(s) after it, at most ${maxUncovered} allowed)\n`;
}

/** --max-uncovered: a count, 0 allowed. */
export function uncoveredOf(value: string): number {
  if (!/^[0-9]{1,9}$/.test(value)) throw new InvalidArgumentError('must be a whole number of records');
  return Number(value);
}
