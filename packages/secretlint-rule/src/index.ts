/**
 * `@keywarden/secretlint-rule`: Keywarden's own secret forms as a secretlint rule. Add it to an
 * existing `.secretlintrc.json` beside the recommended preset:
 *
 *     { "rules": [{ "id": "@secretlint/secretlint-rule-preset-recommend" },
 *                 { "id": "@keywarden/secretlint-rule" }] }
 *
 * Each message says what leaked and which Keywarden command revokes or rotates it; it never
 * contains the secret. The detectors are in ./detect.ts (usable without secretlint).
 */
import type { SecretLintRuleCreator, SecretLintSourceCode } from '@secretlint/types';
import { detectKeywardenSecrets, type KeywardenFinding, REMEDIATION } from './detect.js';

export {
  detectKeywardenSecrets,
  type KeywardenFinding,
  type KeywardenSecretKind,
  REMEDIATION,
  shareChecksumMatches,
} from './detect.js';

export const RULE_ID = '@keywarden/secretlint-rule';

/** Message ids (stable: usable in secretlint's `allowMessageIds`). */
export const MESSAGE_IDS = {
  'unseal-key': 'KeywardenUnsealKey',
  share: 'KeywardenShare',
  'data-key': 'KeywardenDataKey',
  'agent-credential': 'KeywardenAgentCredential',
  pin: 'KeywardenPin',
} as const;

type Props = { detail?: string };

export const messages = {
  KeywardenUnsealKey: {
    en: (_p?: Props) => `found a Keywarden development unseal key: ${REMEDIATION['unseal-key']}`,
  },
  KeywardenShare: {
    en: (p?: Props) => `found a plaintext Keywarden share${p?.detail ?? ''}: ${REMEDIATION.share}`,
  },
  KeywardenDataKey: {
    en: (p?: Props) => `found a plaintext Keywarden data key${p?.detail ?? ''}: ${REMEDIATION['data-key']}`,
  },
  KeywardenAgentCredential: {
    en: (p?: Props) => `found a Keywarden agent credential${p?.detail ?? ''}: ${REMEDIATION['agent-credential']}`,
  },
  KeywardenPin: {
    en: (p?: Props) => `found a device PIN${p?.detail ?? ''}: ${REMEDIATION.pin}`,
  },
};

function describe(f: KeywardenFinding): string {
  const d = f.detail;
  switch (f.kind) {
    case 'share':
      return ` (${d.purpose} share ${d.index} of share set ${d.shareSet}, ${d.threshold} needed)`;
    case 'data-key':
      return d.keyId ? ` (under KEK ${d.keyId})` : '';
    case 'agent-credential':
      return ` (principal ${d.principal})`;
    case 'pin':
      return d.where === 'pin-file' ? ' (a PIN file)' : ' (pin-value= in a PKCS#11 URI)';
    default:
      return '';
  }
}

export type Options = Record<string, never>;

export const creator: SecretLintRuleCreator<Options> = {
  messages,
  meta: {
    id: RULE_ID,
    recommended: true,
    type: 'scanner',
    supportedContentTypes: ['text'],
    docs: { url: 'https://github.com/keywarden/keywarden/blob/main/docs/scanning.md' },
  },
  create(context) {
    const t = context.createTranslator(messages);
    return {
      file(source: SecretLintSourceCode) {
        for (const f of detectKeywardenSecrets(source.content, source.getFilePath())) {
          // The detail is not secret, so it is part of the message but not of `data`: secretlint's
          // maskSecrets option (which `keywarden scan` sets) masks every data value in a message.
          const message = t(MESSAGE_IDS[f.kind], { detail: describe(f) });
          context.report({ message: { ...message, data: undefined }, range: f.range });
        }
      },
    };
  },
};

export default creator;
