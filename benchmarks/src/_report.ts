/**
 * Results as a person reads them: a markdown table and an SVG bar chart (a hand-written SVG
 * string, no plotting dependency), from the same rows as the JSON.
 */

export type Kind =
  | 'raw'
  | 'reference'
  | 'keywarden'
  | 'keywarden-cached'
  | 'keywarden-agent'
  | 'keywarden-audit'
  | 'keywarden-pkcs11'
  | 'keywarden-tpm'
  | 'peer-fair'
  | 'peer-signing';

export interface Row {
  /** Stable identity, the key of baseline.json: "<group> | <label>". */
  id: string;
  group: string;
  label: string;
  kind: Kind;
  /** Part of the regression gate (Keywarden's own rows). */
  gated: boolean;
  /** Median slowdown against the group's raw ceiling in the same rounds (1.00 = as fast as raw). */
  ratio: number;
  /** Smallest and largest per-round ratio. */
  ratioMin: number;
  ratioMax: number;
  /** Absolute figure beside the ratio: median over rounds. */
  absolute: number;
  unit: 'ops/s' | 'msg/s' | 'MiB/s';
  /** Streaming only: peak resident set of the process, MiB. */
  peakRssMiB?: number;
}

export interface Meta {
  profile: string;
  date: string;
  node: string;
  cpus: number;
  cpuModel: string;
  loadAverage: number[];
  rounds: number;
  msPerCase: number;
  streamMiB: number;
  streamRounds: number;
  concurrency: number;
  durationS?: number;
}

export interface Target {
  id: string;
  max: number;
}

const KIND_LABEL: Record<Kind, string> = {
  raw: 'raw ceiling',
  reference: 'raw reference',
  keywarden: 'Keywarden',
  'keywarden-cached': 'Keywarden + data-key cache',
  'keywarden-agent': 'Keywarden through @keywarden/agent',
  'keywarden-audit': 'Keywarden with an audit log',
  'keywarden-pkcs11': 'Keywarden on the PKCS#11 root (SoftHSM2)',
  'keywarden-tpm': 'Keywarden on the TPM root (swtpm)',
  'peer-fair': 'AWS ESDK, committing, no signature (fair peer)',
  'peer-signing': 'AWS ESDK default (ECDSA P-384 signing)',
};
const KIND_COLOR: Record<Kind, string> = {
  raw: '#9e9e9e',
  reference: '#cfcfcf',
  keywarden: '#1f6feb',
  'keywarden-cached': '#2da44e',
  'keywarden-agent': '#8250df',
  'keywarden-audit': '#9a6700',
  'keywarden-pkcs11': '#bf3989',
  'keywarden-tpm': '#0a7d6c',
  'peer-fair': '#e8871e',
  'peer-signing': '#cf222e',
};

function fmtAbs(r: Row): string {
  const v = r.absolute;
  const n = v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(1);
  return `${n} ${r.unit}`;
}

export function markdown(meta: Meta, rows: readonly Row[], targets: readonly Target[]): string {
  const out: string[] = [];
  out.push(`# Keywarden benchmark results (${meta.profile})`, '');
  out.push(
    `${meta.date} · node ${meta.node} · ${meta.cpus} × ${meta.cpuModel} · load average at start ${meta.loadAverage
      .map((l) => l.toFixed(1))
      .join(
        ' ',
      )} · ${meta.rounds} rounds × ${meta.msPerCase} ms per case, interleaved · streaming ${meta.streamMiB} MiB × ${meta.streamRounds} rounds · concurrency ${meta.concurrency} callers${meta.durationS ? ` · ${Math.round(meta.durationS)} s` : ''}`,
    '',
  );
  out.push(
    '**×raw** is the median over rounds of (raw ops/s ÷ case ops/s) measured in the same round: 1.00 is as fast as the raw node:crypto ceiling of the group, 2.00 twice as slow, below 1.00 faster (only a cache can do that: it skips work the raw ceiling does per message). The range is the smallest and largest per-round ratio. Absolute figures are medians on a shared, noisy machine; compare ratios, not them.',
    '',
  );
  if (targets.length > 0) {
    out.push('Targets (hot path: issue 11; rewrap: issue 10):', '');
    for (const t of targets) {
      const r = rows.find((x) => x.id === t.id);
      if (!r) continue;
      out.push(
        t.max < 1
          ? // A "cheaper than the ceiling" target (rewrap): say how many times cheaper.
            `- ${r.group}, ${r.label}: ×${r.ratio.toFixed(4)}, ${(1 / r.ratio).toFixed(0)}× cheaper (target ≥ ${(1 / t.max).toFixed(0)}×) ${r.ratio <= t.max ? '✅ met' : '❌ not met'}`
          : `- ${r.group}, ${r.label}: ×${r.ratio.toFixed(2)} (target ≤ ×${t.max.toFixed(1)}) ${r.ratio <= t.max ? '✅ met' : '❌ not met'}`,
      );
    }
    out.push('');
  }
  out.push('| group | case | ×raw | range | absolute | peak RSS |', '|---|---|---:|---:|---:|---:|');
  let lastGroup = '';
  for (const r of rows) {
    const g = r.group === lastGroup ? '' : r.group;
    lastGroup = r.group;
    const name = r.kind === 'raw' ? `${r.label} *(ceiling)*` : r.label;
    out.push(
      `| ${g} | ${name} | ×${r.ratio.toFixed(2)} | ${r.ratioMin.toFixed(2)}–${r.ratioMax.toFixed(2)} | ${fmtAbs(r)} | ${r.peakRssMiB === undefined ? '' : `${r.peakRssMiB.toFixed(0)} MiB`} |`,
    );
  }
  out.push('');
  return out.join('\n');
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Horizontal bars of ×raw on a log scale (the ratios span 0.05 .. 1000), one band per group. */
export function svg(meta: Meta, rows: readonly Row[]): string {
  const left = 430;
  const width = 1000;
  const plotW = width - left - 90;
  const rowH = 16;
  const top = 64;
  const lo = Math.log10(0.05);
  const hi = Math.log10(Math.max(2000, ...rows.map((r) => r.ratio * 1.5)));
  const x = (v: number) => left + ((Math.log10(Math.max(v, 0.05)) - lo) / (hi - lo)) * plotW;
  const parts: string[] = [];
  let y = top;
  let lastGroup = '';
  const body: string[] = [];
  for (const r of rows) {
    if (r.group !== lastGroup) {
      y += lastGroup ? 8 : 0;
      body.push(
        `<text x="8" y="${y + 12}" font-weight="bold">${esc(r.group)}</text>`,
        `<line x1="8" x2="${width - 8}" y1="${y - 3}" y2="${y - 3}" stroke="#e0e0e0"/>`,
      );
      y += rowH;
      lastGroup = r.group;
    }
    const w = Math.max(1, x(r.ratio) - x(0.05));
    body.push(
      `<text x="24" y="${y + 12}">${esc(r.label)}</text>`,
      `<rect x="${x(0.05).toFixed(1)}" y="${y + 2}" width="${w.toFixed(1)}" height="${rowH - 4}" fill="${KIND_COLOR[r.kind]}"><title>${esc(r.id)}: ×${r.ratio.toFixed(2)}</title></rect>`,
      `<text x="${(x(0.05) + w + 4).toFixed(1)}" y="${y + 12}">×${r.ratio < 10 ? r.ratio.toFixed(2) : r.ratio.toFixed(0)}</text>`,
    );
    y += rowH;
  }
  const height = y + 40;
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="8" y="18" font-size="14" font-weight="bold">Keywarden: time per operation as a multiple of raw node:crypto, same run (log scale; 1 = raw)</text>`,
    `<text x="8" y="34">${esc(`${meta.profile} profile · ${meta.date} · node ${meta.node} · ${meta.cpus} CPUs (shared) · median of ${meta.rounds} interleaved rounds`)}</text>`,
  );
  // Legend.
  let lx = 8;
  for (const k of Object.keys(KIND_LABEL) as Kind[]) {
    parts.push(
      `<rect x="${lx}" y="42" width="10" height="10" fill="${KIND_COLOR[k]}"/>`,
      `<text x="${lx + 14}" y="51">${esc(KIND_LABEL[k])}</text>`,
    );
    lx += 24 + KIND_LABEL[k].length * 5.6;
  }
  // Grid lines at decades and at 1.
  for (const v of [0.1, 1, 10, 100, 1000]) {
    if (Math.log10(v) > hi) continue;
    const gx = x(v).toFixed(1);
    parts.push(
      `<line x1="${gx}" x2="${gx}" y1="${top - 4}" y2="${y}" stroke="${v === 1 ? '#555' : '#ddd'}" ${v === 1 ? 'stroke-dasharray="4 3"' : ''}/>`,
      `<text x="${gx}" y="${y + 14}" text-anchor="middle">×${v}</text>`,
    );
  }
  parts.push(...body, '</svg>', '');
  return parts.join('\n');
}
