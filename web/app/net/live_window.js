// Flow control of live pushes, the controller's side (starmux/live_window.py's
// AckPacer and window_for): the relay closes a controller whose queue it cannot
// empty (4011), so the controller acknowledges what it applied and gives each
// machine a window; a machine keeps its unacknowledged pushes within it and
// otherwise says "sync again", and the controller's requests pace the rest.

// Pages and bytes all machines together may have in flight (the relay closes a
// connection at 1,024 queued frames or 4 MiB), and the least share of one machine.
export const PAGE_BUDGET = 768;
export const BYTE_BUDGET = 3 * 1024 * 1024;
export const MIN_PAGES = 4;
export const MIN_BYTES = 16 * 1024;

// Each machine's share when `machines` of them have a channel open.
export function windowFor(machines) {
  const share = Math.max(1, machines);
  return {
    pages: Math.max(MIN_PAGES, Math.floor(PAGE_BUDGET / share)),
    bytes: Math.max(MIN_BYTES, Math.floor(BYTE_BUDGET / share)),
  };
}

// What a page costs against a window: each event's body and session id, plus 32.
export function pageCost(page) {
  let cost = 0;
  for (const event of page.events) cost += event.body.length + event.session.length + 32;
  return cost;
}

// When to send one machine a live-ack: once it is live (its first: from then on
// the machine keeps the window), then each time half the window was applied.
// The epoch a live-ack names before the machine's is known (a first sync): any epoch
// but the machine's acknowledges nothing there, and still gives the window.
export const NO_EPOCH = "none";

export class AckPacer {
  pages = 0;
  bytes = 0;
  seq = 0;
  epoch = "";
  window = null;

  reset() {
    this.pages = 0;
    this.bytes = 0;
    this.seq = 0;
    this.epoch = "";
    this.window = null;
  }

  // A page applied without a gap: everything through its last event is applied.
  applied(page) {
    this.epoch = page.epoch;
    if (!page.events.length) return;
    if (page.live) {
      this.pages += 1;
      this.bytes += pageCost(page);
    }
    this.seq = Math.max(this.seq, Number(page.events[page.events.length - 1].seq));
  }

  due(window) {
    if (this.window === null || this.window.pages !== window.pages || this.window.bytes !== window.bytes) return true;
    return this.pages * 2 >= window.pages || this.bytes * 2 >= window.bytes;
  }

  sent(window) {
    this.pages = 0;
    this.bytes = 0;
    this.window = window;
  }
}
