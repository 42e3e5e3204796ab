/**
 * Human and machine output. Tables are for people (aligned columns, ISO dates, "-" for empty);
 * `--json` is for scripts (stable field names, ISO 8601 dates, no ANSI styling ever).
 * Only non-secret metadata goes through here.
 */
import type { Writable } from 'node:stream';
import type { KeyInfo, KeyScope } from '@keywarden/core';
import { writeToStream } from './_streams.js';

/** Render rows under a header, columns padded to their widest cell, two spaces apart. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

/** `label:  value` lines, values aligned. */
export function formatPairs(pairs: readonly (readonly [string, string])[]): string {
  const width = Math.max(0, ...pairs.map(([k]) => k.length)) + 1;
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(width)}  ${v}`).join('\n') + '\n';
}

export function formatJson(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

/** 2024-05-01T12:00:00Z — seconds are enough for people; JSON keeps milliseconds. */
export function formatDate(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

const SCOPE_ORDER: readonly (keyof KeyScope)[] = ['environment', 'service', 'tenant', 'purpose'];

export function formatScope(scope: KeyScope): string {
  const parts = SCOPE_ORDER.filter((k) => scope[k] !== undefined).map((k) => `${k}=${scope[k]}`);
  return parts.length > 0 ? parts.join(' ') : '-';
}

export function keyListTable(keys: readonly KeyInfo[]): string {
  if (keys.length === 0) return 'no keys (create one with `keywarden key create NAME`)\n';
  return formatTable(
    ['NAME', 'ID', 'PRIMARY', 'SCOPE', 'CREATED'],
    [...keys]
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      .map((k) => [k.name, k.id, primaryLabel(k), formatScope(k.scope), formatDate(k.createdAt)]),
  );
}

/** "v3", or "v3 (destroyed)" when the primary version cannot be used (disabled, compromised, destroyed). */
function primaryLabel(key: KeyInfo): string {
  const state = key.versions.find((v) => v.version === key.primaryVersion)?.state;
  return state === undefined || state === 'enabled' ? `v${key.primaryVersion}` : `v${key.primaryVersion} (${state})`;
}

export function keyDetails(key: KeyInfo): string {
  const head = formatPairs([
    ['name', key.name],
    ['id', key.id],
    ['scope', formatScope(key.scope)],
    ['primary version', `v${key.primaryVersion}`],
    ['created', formatDate(key.createdAt)],
    ['updated', formatDate(key.updatedAt)],
  ]);
  const versions = formatTable(
    ['VERSION', 'STATE', 'PRIMARY', 'ROOT', 'CREATED', 'UPDATED'],
    key.versions.map((v) => [
      `v${v.version}`,
      v.state,
      v.version === key.primaryVersion ? 'yes' : '',
      v.rootId,
      formatDate(v.createdAt),
      formatDate(v.updatedAt),
    ]),
  );
  return `${head}\n${versions}`;
}

/** JSON shape of a key for `--json` (dates as ISO 8601 strings): the agent's wire shape, one definition. */
export { keyInfoToWire as keyToJson } from '@keywarden/agent';

/** Write text and wait until the stream took it (small outputs; bulk data uses _streams.ts). */
export function print(out: Writable, text: string): Promise<void> {
  return writeToStream(out, text);
}
