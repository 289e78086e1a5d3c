// Noise handshake patterns as data, and protocol-name parsing (spec rev 34), mirroring
// starmux/noise/patterns.py one for one.
//
//   PATTERNS: {name: {name, initiatorPre, responderPre, messages}}
//   parseProtocolName('Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b') -> pattern, psk modifiers applied
//   isOneWay(pattern), pskCount(pattern), sends(pattern, initiator, token)
//
// One-way (7.4), fundamental interactive (7.5) and deferred (18.1) patterns; only the
// pskN modifier (psk0 at the start of message 1, pskN at the end of message N).

import { UsageError } from './errors.js';

function pattern(name, messages, { initiatorPre = '', responderPre = '' } = {}) {
  const tokens = (text) => text.split(',').map((t) => t.trim()).filter(Boolean);
  return Object.freeze({
    name,
    initiatorPre: tokens(initiatorPre),
    responderPre: tokens(responderPre),
    messages: messages.map(tokens),
  });
}

const S = { responderPre: 's' };
const KS = { initiatorPre: 's' };
const KKS = { initiatorPre: 's', responderPre: 's' };

const TABLE = [
  pattern('N', ['e, es'], S),
  pattern('K', ['e, es, ss'], KKS),
  pattern('X', ['e, es, s, ss'], S),
  pattern('NN', ['e', 'e, ee']),
  pattern('NK', ['e, es', 'e, ee'], S),
  pattern('NX', ['e', 'e, ee, s, es']),
  pattern('KN', ['e', 'e, ee, se'], KS),
  pattern('KK', ['e, es, ss', 'e, ee, se'], KKS),
  pattern('KX', ['e', 'e, ee, se, s, es'], KS),
  pattern('XN', ['e', 'e, ee', 's, se']),
  pattern('XK', ['e, es', 'e, ee', 's, se'], S),
  pattern('XX', ['e', 'e, ee, s, es', 's, se']),
  pattern('IN', ['e, s', 'e, ee, se']),
  pattern('IK', ['e, es, s, ss', 'e, ee, se'], S),
  pattern('IX', ['e, s', 'e, ee, se, s, es']),
  pattern('NK1', ['e', 'e, ee, es'], S),
  pattern('NX1', ['e', 'e, ee, s', 'es']),
  pattern('X1N', ['e', 'e, ee', 's', 'se']),
  pattern('X1K', ['e, es', 'e, ee', 's', 'se'], S),
  pattern('XK1', ['e', 'e, ee, es', 's, se'], S),
  pattern('X1K1', ['e', 'e, ee, es', 's', 'se'], S),
  pattern('X1X', ['e', 'e, ee, s, es', 's', 'se']),
  pattern('XX1', ['e', 'e, ee, s', 'es, s, se']),
  pattern('X1X1', ['e', 'e, ee, s', 'es, s', 'se']),
  pattern('K1N', ['e', 'e, ee', 'se'], KS),
  pattern('K1K', ['e, es', 'e, ee', 'se'], KKS),
  pattern('KK1', ['e', 'e, ee, se, es'], KKS),
  pattern('K1K1', ['e', 'e, ee, es', 'se'], KKS),
  pattern('K1X', ['e', 'e, ee, s, es', 'se'], KS),
  pattern('KX1', ['e', 'e, ee, se, s', 'es'], KS),
  pattern('K1X1', ['e', 'e, ee, s', 'se, es'], KS),
  pattern('I1N', ['e, s', 'e, ee', 'se']),
  pattern('I1K', ['e, es, s', 'e, ee', 'se'], S),
  pattern('IK1', ['e, s', 'e, ee, se, es'], S),
  pattern('I1K1', ['e, s', 'e, ee, es', 'se'], S),
  pattern('I1X', ['e, s', 'e, ee, s, es', 'se']),
  pattern('IX1', ['e, s', 'e, ee, se, s', 'es']),
  pattern('I1X1', ['e, s', 'e, ee, s', 'se, es']),
];

export const PATTERNS = Object.freeze(Object.fromEntries(TABLE.map((p) => [p.name, p])));

export const isOneWay = (p) => p.messages.length === 1;
export const pskCount = (p) => p.messages.reduce((n, m) => n + m.filter((t) => t === 'psk').length, 0);
/** Whether the given side writes `token` in any of its messages. */
export function sends(p, initiator, token) {
  return p.messages.some((tokens, index) => index % 2 === (initiator ? 0 : 1) && tokens.includes(token));
}

export function parseProtocolName(protocolName) {
  const parts = protocolName.split('_');
  if (parts.length !== 5 || parts[0] !== 'Noise') {
    throw new UsageError(`not a Noise protocol name: ${protocolName}`);
  }
  const [, patternPart, dh, cipher, hash] = parts;
  if (dh !== '25519' || cipher !== 'ChaChaPoly' || hash !== 'BLAKE2b') {
    throw new UsageError(`unsupported Noise suite in ${protocolName}`);
  }
  const match = /^([A-Z1]+)([a-z].*)?$/.exec(patternPart);
  if (match === null || !(match[1] in PATTERNS)) {
    throw new UsageError(`unsupported Noise handshake pattern ${patternPart}`);
  }
  const base = PATTERNS[match[1]];
  const modifiers = match[2] ?? '';
  if (!modifiers) return base;
  const messages = base.messages.map((tokens) => [...tokens]);
  const seen = new Set();
  for (const modifier of modifiers.split('+')) {
    const psk = /^psk([0-9]|[1-9][0-9]+)$/.exec(modifier);
    if (psk === null) throw new UsageError(`unsupported Noise pattern modifier ${modifier}`);
    const position = Number(psk[1]);
    if (seen.has(position)) throw new UsageError(`Noise pattern modifier ${modifier} appears twice`);
    seen.add(position);
    if (position > messages.length) {
      throw new UsageError(`psk${position} needs a message ${position}; ${base.name} has ${messages.length}`);
    }
    if (position === 0) messages[0].unshift('psk');
    else messages[position - 1].push('psk');
  }
  return Object.freeze({ ...base, name: base.name + modifiers, messages });
}
