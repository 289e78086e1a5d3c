// Checkpoint decisions, mirroring starmux/decisions.py: what a controller signs when it
// approves or denies, and the decide-checkpoint command that carries it.
//
//   decisionTranscript(machineKey, checkpoint, approve, reason, decidedAt) -> bytes
//   decideCheckpoint(keys, machineKey, {checkpoint, approve, reason, decidedAt})
//       -> the fields of a decide-checkpoint command (APP-encode it into a `command`)
//   Verdict: {APPROVED, DENIED, EXPIRED} (what checkpoint-decided events carry)

import { utf8 } from './bytes.js';
import { signedTime, transcript } from './transcript.js';

export const DECISION_DOMAIN = 'starmux/checkpoint-decision/v1';
export const Verdict = Object.freeze({ APPROVED: 'approved', DENIED: 'denied', EXPIRED: 'expired' });

export const decisionTranscript = (machineKey, checkpoint, approve, reason, decidedAt) =>
  transcript(DECISION_DOMAIN, machineKey, utf8(checkpoint), utf8(approve ? 'approve' : 'deny'), utf8(reason), signedTime(decidedAt));

export function decideCheckpoint(keys, machineKey, { checkpoint, approve, reason = '', decidedAt }) {
  const signature = keys.sign(decisionTranscript(machineKey, checkpoint, approve, reason, decidedAt));
  return { checkpoint, approve, reason, decided_at: decidedAt, signature };
}
