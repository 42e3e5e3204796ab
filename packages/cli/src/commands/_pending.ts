/**
 * A pending share ceremony (init or rekey whose new shares are handed out but not activated), as
 * `keywarden status` shows it for a software root and for a device whose secret is split. Nothing
 * secret: the share set's id, M and N, and when it started.
 */

export interface PendingShown {
  kind: 'init' | 'rekey';
  shareSet: { shareSetId: string; threshold: number; shares: number };
  createdAt: string;
  testQuorum: boolean;
}

export function pendingJson(p: PendingShown | undefined): Record<string, unknown> | null {
  return p
    ? {
        kind: p.kind,
        shareSetId: p.shareSet.shareSetId,
        threshold: p.shareSet.threshold,
        shares: p.shareSet.shares,
        since: p.createdAt,
        testQuorum: p.testQuorum,
      }
    : null;
}

export function pendingText(p: PendingShown): string {
  return `${p.kind} to share set ${p.shareSet.shareSetId} (any ${p.shareSet.threshold} of ${p.shareSet.shares}) since ${p.createdAt}, not activated: \`keywarden ${p.kind} --resume\` or \`keywarden ${p.kind} --abort\``;
}
