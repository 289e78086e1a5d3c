// The code changed: show both hashes, keep the keys locked until the person confirms.
import { h } from "../dom.js";

export function lockView(ctx) {
  const { code } = ctx.store.state;
  const el = h(
    "section",
    { className: "card lock", "aria-labelledby": "lock-title" },
    h("h1", { id: "lock-title" }, "The app's code changed — keys locked"),
    h("p", {}, "The server now sends different code for this app. Until you confirm it, this device's keys stay locked and the new code does not run."),
    h("h2", {}, "Code you confirmed (running)"),
    h("p", { className: "hash", id: "pinned-hash" }, code.pinned || "—"),
    h("h2", {}, "Code the server sends now"),
    h("p", { className: "hash", id: "offered-hash" }, code.offered || "—"),
    h("p", { className: "muted" }, "Compare the new hash with the output of “starmux web --print-hash” on a machine you trust (the one that installed starmux). Confirm only if they match."),
    h(
      "div",
      { className: "actions" },
      h("button", { type: "button", className: "danger", id: "trust-new-code", on: { click: () => ctx.actions.trustNewCode(code.offered) } }, "The hashes match: run the new code"),
    ),
  );
  return { el, update() {} };
}
