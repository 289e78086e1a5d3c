// The web app's pure parts (no DOM, no network): the resync follower's table, the
// ordering of events, the command-line splitter, the store and the output text.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Action, cursorFor, Follower, nextInOrder } from '../app/net/resync.js';
import { splitCommand } from '../app/engine.js';
import { SessionBook } from '../app/net/sessions.js';
import { APP } from '../proto/codec.js';
import { Store } from '../app/store.js';
import { machineText, outputText, statusText } from '../app/dom.js';

const page = (fields) => ({ epoch: 'e1', events: [], more: false, live: false, ...fields });
const events = (...seqs) => seqs.map((seq) => ({ seq, session: 's', at: 0, body: new Uint8Array() }));

test('a follower goes live on the last sync page and resyncs on a gap', () => {
  const follow = new Follower();
  assert.equal(follow.page(page({ live: true }), false), Action.NOTHING); // unasked: nothing
  follow.requested();
  assert.equal(follow.page(page({ more: true }), false), Action.REQUEST_SYNC);
  follow.requested();
  assert.equal(follow.page(page({}), false), Action.GO_LIVE);
  assert.equal(follow.live, true);
  assert.equal(follow.page(page({ live: true }), false), Action.NOTHING);
  assert.equal(follow.page(page({ live: true }), true), Action.REQUEST_SYNC); // a gap
  assert.equal(follow.live, false);
  follow.channelLost();
  assert.equal(follow.state, 'idle');
});

test('events apply once and in order; a gap stops', () => {
  assert.deepEqual(nextInOrder(2, events(1, 2, 3, 4)).events.map((e) => e.seq), [3, 4]);
  const gap = nextInOrder(2, events(3, 5, 6));
  assert.deepEqual([gap.events.map((e) => e.seq), gap.gap], [[3], true]);
  assert.deepEqual(nextInOrder(4, events(1, 2)).events, []);
  assert.deepEqual(cursorFor({ epoch: 'old', seq: 9 }, page({})), { cursor: { epoch: 'e1', seq: 0 }, wiped: true });
  assert.deepEqual(cursorFor({ epoch: '', seq: 0 }, page({})), { cursor: { epoch: 'e1', seq: 0 }, wiped: false });
});

test('commands split like shell words', () => {
  assert.deepEqual(splitCommand(`claude -p "fix the failing tests"`), ['claude', '-p', 'fix the failing tests']);
  assert.deepEqual(splitCommand(`python3 -c 'print("a b")'`), ['python3', '-c', 'print("a b")']);
  assert.deepEqual(splitCommand(`echo a\\ b ""`), ['echo', 'a b', '']);
  assert.throws(() => splitCommand(`echo "open`), /unclosed quote/);
});

test('the store refuses unknown events and tells listeners once per change', () => {
  const store = new Store();
  const seen = [];
  store.subscribe((state) => seen.push(state.connection.state));
  store.dispatch({ type: 'connection/state', state: 'live' });
  store.dispatch({ type: 'connection/state', state: 'live' }); // no change, no call
  assert.deepEqual(seen, ['live']);
  assert.throws(() => store.dispatch({ type: 'nope' }), /unknown event/);
  store.dispatch({ type: 'approval/raised', approval: { machine: 'M', id: 'c1', title: 't' } });
  store.dispatch({ type: 'approval/decided', machine: 'M', id: 'c1', decided: { by: 'laptop', tooLate: true } });
  assert.equal(store.state.approvals['M/c1'].decided.by, 'laptop');
});

test("a machine's text cannot carry terminal or bidi controls", () => {
  assert.equal(machineText('ok\u001b[2Jx\u202eevil'), 'ok\ufffd[2Jx\ufffdevil');
  assert.equal(outputText('\u001b[32mgreen\u001b[0m\r\nnext\r'), 'green\nnext');
  assert.equal(machineText('x'.repeat(10), 4), 'xxxx…');
  assert.equal(statusText('waiting_approval'), 'waiting for approval');
});

test('a snapshot of kept output does not grow with output applied after it', () => {
  const book = new SessionBook(new Store(), { nameOf: () => '', me: '' });
  const line = (seq, text) => ({ seq, at: 1, session: 's-1', body: APP.encode('output', { stream: 'stdout', data: new TextEncoder().encode(text) }) });
  book.apply('fp', [line(1, 'one\n')]);
  const saved = book.snapshot('fp');
  book.apply('fp', [line(2, 'two\n')]); // arrives while the snapshot waits to be written
  assert.equal(saved['s-1'].chunks.length, 1);
  assert.equal(saved['s-1'].bytes, 4);
  assert.equal(book.snapshot('fp')['s-1'].chunks.length, 2);
});
