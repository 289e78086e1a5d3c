// The codec against the Python verdicts in tests/data/web-golden.json: every message
// kind encoded, and ~1,600 mutated encodings, each either refused by both codecs or
// accepted and re-encoded to the same bytes.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { fromHex, toHex } from '../proto/bytes.js';
import { CODECS } from '../proto/codec.js';
import { SCHEMA } from '../proto/schema.js';
import { GOLDEN } from './golden.mjs';

test('the golden table covers every kind of every codec', () => {
  for (const [name, codec] of Object.entries(CODECS)) {
    const seen = new Set(GOLDEN.messages.filter((m) => m.codec === name && m.ok && m.kind).map((m) => m.kind));
    assert.deepEqual([...seen].sort(), Object.keys(SCHEMA[name].kinds).sort());
    assert.ok(codec.maxSize > 0);
  }
});

test('every verdict of the Python codec holds in JS', () => {
  const disagreements = [];
  for (const entry of GOLDEN.messages) {
    const codec = CODECS[entry.codec];
    const wire = fromHex(entry.wire);
    let decoded = null;
    try {
      decoded = codec.decode(wire);
    } catch (error) {
      if (!(error instanceof codec.Error)) throw error;
    }
    if (entry.ok !== (decoded !== null)) {
      disagreements.push(`${entry.kind}: python ${entry.ok ? 'accepts' : 'refuses'} ${entry.wire.slice(0, 160)}`);
      continue;
    }
    if (decoded !== null) {
      const { kind, ...fields } = decoded;
      const again = toHex(codec.encode(kind, fields));
      if (again !== entry.again) disagreements.push(`${kind}: re-encoded ${again} != ${entry.again}`);
    }
  }
  assert.deepEqual(disagreements, []);
});

test('a float field keeps its float encoding when integral', () => {
  const wire = CODECS.control.encode('presence', { online: true, at: 1700000000 });
  assert.equal(toHex(wire).includes('cb41d954fc40000000'), true);
  assert.equal(CODECS.control.decode(wire).at, 1700000000);
});
