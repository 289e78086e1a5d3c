// Start-up: pin the code (service worker), open the keys, mount the screens.
// Views render from the one store; actions go to the engine and come back as
// store events.

import { codeStatus, controllingWorker, trustOffered } from "./codepin.js";
import { h, replace } from "./dom.js";
import { Engine } from "./engine.js";
import { hasKeys, KeysLocked, storeKeys, unlockKeys } from "./keystore.js";
import { disablePush, enablePush, savedSettings, saveSettings, sendQueuedDecisions, trackViewing } from "./notifications.js";
import { Store } from "./store.js";
import { approvalsView } from "./views/approvals.js";
import { devicesView } from "./views/devices.js";
import { lockView } from "./views/lock.js";
import { machinesView } from "./views/machines.js";
import { sessionsView, sessionView } from "./views/sessions.js";
import { setupView } from "./views/setup.js";
import { startView } from "./views/start.js";

const TABS = [
  ["machines", "Machines", "▣"],
  ["sessions", "Sessions", "▤"],
  ["approvals", "Approvals", "✓"],
  ["start", "Start", "+"],
  ["devices", "Devices", "⚙"],
];
const VIEWS = { machines: machinesView, sessions: sessionsView, session: sessionView, approvals: approvalsView, start: startView, devices: devicesView };

const store = new Store();
const pendingPrompts = new Map();
let nextPrompt = 1;

// The person compares a code shown on two screens; resolves true when they match.
function confirmCode(title, code, detail) {
  const id = nextPrompt++;
  return new Promise((resolve) => {
    pendingPrompts.set(id, resolve);
    store.dispatch({ type: "prompt/set", prompt: { id, title, code, detail } });
  });
}

function answerPrompt(id, yes) {
  const resolve = pendingPrompts.get(id);
  pendingPrompts.delete(id);
  store.dispatch({ type: "prompt/set", prompt: null });
  if (resolve) resolve(yes);
}

const engine = new Engine(store, { confirm: confirmCode });
let worker = null;
let mounted = null; // { name, el, update, close }

const INFO_SHOWN_MS = 6000; // information goes away by itself; errors stay until dismissed

function notify(kind, text) {
  store.dispatch({ type: "notice/add", kind, text });
  if (kind === "info") {
    const { id } = store.state.notices[store.state.notices.length - 1];
    setTimeout(() => store.dispatch({ type: "notice/dismiss", id }), INFO_SHOWN_MS);
  }
}

async function guarded(work) {
  try {
    return await work();
  } catch (exc) {
    notify("error", exc.message || String(exc));
    throw exc;
  }
}

const actions = {
  show: (view, selected) => store.dispatch({ type: "view/show", view, selected }),
  trustNewCode: async (hash) => {
    const answer = await trustOffered(worker, hash);
    if (answer.ok) location.reload();
    else notify("error", answer.error || "the service worker refused");
  },
  link: (code, name) => guarded(() => engine.joinByCode(code, name)),
  showJoinCode: (relay, name, callbacks) => guarded(() => engine.joinByShowing(relay, name, callbacks)),
  register: (url, token, name) => guarded(() => engine.register(url, token, name)),
  pairMachine: (code) => guarded(() => engine.pairMachine(code)),
  decide: (machine, id, approve, reason) => guarded(() => engine.decide(machine, id, approve, reason)),
  startSession: (machine, spec) => guarded(() => engine.startSession(machine, spec)),
  cancel: (machine, session) => guarded(() => engine.cancel(machine, session)),
  revoke: (machine, name) => {
    if (confirm(`Revoke ${name}? It loses access at once and must be paired again.`)) guarded(() => engine.revoke(machine));
  },
  removeDevice: (device, name) => {
    if (confirm(`Remove the device ${name} from the account?`)) guarded(() => engine.removeDevice(device));
  },
  watchOutput: (machine, session, callback) => engine.watchOutput(machine, session, callback),
  enablePush: () => guarded(() => enablePush(engine)),
  saveNotifySettings: (kinds, fraction) => guarded(() => saveSettings(engine, kinds, fraction)),
  disablePush: () => guarded(() => disablePush(engine)),
  notifySettings: () => savedSettings(),
};

function connectionText(state) {
  if (state.code.locked) return ["locked", "code changed: keys locked"];
  if (state.keys !== "unlocked") return ["offline", "keys locked"];
  if (!state.device || !state.device.account) return ["idle", "not linked yet"];
  const c = state.connection;
  if (c.state === "live") return ["live", "live"];
  if (c.state === "connecting") return ["connecting", "connecting…"];
  const at = new Date(c.since).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return ["offline", `offline since ${at}`];
}

function renderPrompt(state) {
  const region = document.getElementById("prompt");
  const p = state.prompt;
  if (!p) {
    region.hidden = true;
    replace(region);
    return;
  }
  if (region.dataset.id === String(p.id) && !region.hidden) return;
  region.dataset.id = String(p.id);
  region.hidden = false;
  replace(region, h("section", { className: "card prompt", role: "alertdialog", "aria-labelledby": "prompt-title" },
    h("h2", { id: "prompt-title" }, p.title),
    h("p", {}, p.detail),
    h("p", { className: "comparison", id: "comparison-code" }, p.code),
    h("div", { className: "actions" },
      h("button", { type: "button", className: "primary", id: "codes-match", on: { click: () => answerPrompt(p.id, true) } }, "The codes match"),
      h("button", { type: "button", on: { click: () => answerPrompt(p.id, false) } }, "Cancel"))));
  region.querySelector("#codes-match").focus();
}

function renderChrome(state) {
  renderPrompt(state);
  const [kind, text] = connectionText(state);
  const pill = document.getElementById("connection");
  pill.className = `pill ${kind}`;
  pill.textContent = text;
  pill.title = state.connection.detail || "";
  document.getElementById("code-hash").textContent = state.code.pinned || "unknown";
  document.body.dataset.keys = state.keys;
  const notices = document.getElementById("notices");
  replace(notices, state.notices.map((n) =>
    h("div", { className: `notice ${n.kind}`, role: n.kind === "error" ? "alert" : "status" },
      h("p", {}, n.text),
      h("button", { type: "button", "aria-label": "Dismiss", on: { click: () => store.dispatch({ type: "notice/dismiss", id: n.id }) } }, "✕"))));
  const tabs = document.getElementById("tabs");
  const showTabs = !state.code.locked && state.keys === "unlocked" && state.device && state.device.account;
  tabs.hidden = !showTabs;
  if (showTabs) {
    const waiting = Object.values(state.approvals).filter((a) => !a.decided).length;
    const current = state.view === "session" ? "sessions" : state.view;
    replace(tabs, TABS.map(([name, label, icon]) =>
      h("button", { type: "button", "aria-current": name === current ? "page" : "false", on: { click: () => actions.show(name) } },
        h("span", { className: "icon", "aria-hidden": "true" }, icon), label,
        name === "approvals" && waiting ? h("span", { className: "badge", "aria-label": `${waiting} waiting` }, String(waiting)) : null)));
  }
}

function loadingView() {
  return { el: h("p", { className: "loading" }, "Checking the app's code…"), update() {} };
}

function screenFor(state) {
  if (!state.code.pinned) return "loading";
  if (state.code.locked) return "lock";
  if (state.keys !== "unlocked") return "lock";
  if (!state.device || !state.device.account) return "setup";
  return VIEWS[state.view] ? state.view : "machines";
}

function renderMain(state) {
  const name = screenFor(state);
  const key = name === "session" ? `session:${JSON.stringify(state.selected)}` : name;
  if (!mounted || mounted.key !== key) {
    if (mounted && mounted.close) mounted.close();
    const make = name === "loading" ? loadingView : name === "lock" ? lockView : name === "setup" ? setupView : VIEWS[name];
    mounted = { key, ...make({ store, actions }) };
    const main = document.getElementById("main");
    replace(main, mounted.el);
    document.title = `starmux · ${name}`;
  }
  mounted.update(state);
}

function render(state) {
  renderChrome(state);
  renderMain(state);
}

async function openKeys(status) {
  if (!(await hasKeys())) {
    // A device has its keys from the first start: 32 bytes Ed25519 seed, 32 bytes X25519.
    await storeKeys(crypto.getRandomValues(new Uint8Array(64)), { created: Date.now() }, status);
  }
  const secrets = await unlockKeys(status);
  await engine.start(secrets);
  store.dispatch({ type: "keys/state", keys: "unlocked" });
  trackViewing(store, engine);
  // The service worker says when a notification's action queued a signed decision,
  // or that a tap asks for the approvals; a page it opened finds "#approvals".
  navigator.serviceWorker.addEventListener("message", (event) => {
    const type = event.data && event.data.type;
    if (type === "decisions") sendQueuedDecisions(engine).catch((exc) => notify("error", exc.message));
    else if (type === "show-approvals") actions.show("approvals");
  });
  await sendQueuedDecisions(engine);
  if (location.hash === "#approvals") actions.show("approvals");
}

async function main() {
  store.subscribe(render);
  render(store.state);
  try {
    worker = await controllingWorker();
    const status = await codeStatus(worker);
    store.dispatch({ type: "code/status", status });
    if (status.error && !status.checked) notify("info", `Could not check the server's code (${status.error}); running the pinned copy.`);
    if (status.locked) {
      store.dispatch({ type: "keys/state", keys: "locked" });
      return;
    }
    await openKeys(status);
  } catch (exc) {
    if (exc instanceof KeysLocked) store.dispatch({ type: "keys/state", keys: "locked" });
    notify("error", exc.message || String(exc));
  }
}

main();
