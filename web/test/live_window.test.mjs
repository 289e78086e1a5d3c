// Live-acks from the browser: the same windows and page costs as the Python
// controller (tests/data/web-golden.json), and the same pacing.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { AckPacer, NO_EPOCH, pageCost, windowFor } from '../app/net/live_window.js';
import { GOLDEN } from './golden.mjs';

const W = GOLDEN.live_window;

const events = (first, last, size = 10) =>
  Array.from({ length: last - first + 1 }, (_, i) => ({ seq: BigInt(first + i), at: 0, session: 's-1', body: new Uint8Array(size) }));
const page = (evts, live) => ({ kind: 'event-page', epoch: 'e-1', events: evts, more: false, live });

test('each machine gets the window the Python controller gives', () => {
  for (const [n, pages, bytes] of W.windows) assert.deepEqual(windowFor(n), { pages, bytes }, `${n} machines`);
});

test('a first sync names the same placeholder epoch as Python', () => {
  assert.equal(NO_EPOCH, W.no_epoch);
});

test('a page costs what it costs in Python', () => {
  const evts = W.page.sessions.map((session, i) => ({ seq: BigInt(i + 1), at: 0, session, body: new Uint8Array(W.page.bodies[i]) }));
  assert.equal(pageCost(page(evts, true)), W.page.cost);
});

test('an ack goes out on going live, then each time half the window was applied', () => {
  const pacer = new AckPacer();
  const window = { pages: 4, bytes: 10_000 };
  pacer.applied(page(events(1, 5), false)); // the last sync page
  assert.equal(pacer.seq, 5);
  assert.equal(pacer.pages, 0);
  assert.ok(pacer.due(window)); // no window given yet
  pacer.sent(window);
  pacer.applied(page(events(6, 6), true));
  assert.ok(!pacer.due(window));
  pacer.applied(page(events(7, 7), true));
  assert.ok(pacer.due(window));
  assert.equal(pacer.seq, 7);
  pacer.sent(window);
  assert.ok(!pacer.due(window));
  assert.ok(pacer.due({ pages: 2, bytes: 10_000 })); // a new share is said at once
  pacer.applied(page(events(8, 8, 6_000), true));
  assert.ok(pacer.due(window)); // half the bytes
  pacer.reset();
  assert.deepEqual([pacer.seq, pacer.epoch, pacer.window], [0, '', null]);
});
