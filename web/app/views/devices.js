// This device, the account's devices (owners may remove one) and the code hash.
import { h, machineText, replace } from "../dom.js";
import { KINDS } from "../notifications.js";

// Notifications: turn pushes on for this device, and choose what is pushed.
function notificationsCard(ctx) {
  const status = h("p", { className: "meta", id: "notify-status", role: "status" });
  const boxes = KINDS.map(([kind, label]) =>
    h("label", { className: "check" }, h("input", { type: "checkbox", name: "notify-kind", value: kind, checked: true }), ` ${label}`));
  const summary = (results) =>
    results.map((r) => `${machineText(r.name || "machine", 60)}: ${r.ok ? "yes" : machineText(r.error, 120)}`).join(" · ");
  const enable = h("button", { type: "button", className: "primary", id: "notify-enable", on: { click: async () => {
    status.textContent = "Turning on…";
    try {
      status.textContent = `Notifications on. ${summary(await ctx.actions.enablePush())}`;
    } catch (exc) {
      status.textContent = `Not turned on: ${exc.message}`;
    }
  } } }, "Turn on notifications");
  const save = h("button", { type: "button", id: "notify-save", on: { click: async () => {
    const kinds = boxes.map((b) => b.firstChild).filter((i) => i.checked).map((i) => i.value);
    try {
      status.textContent = `Saved. ${summary(await ctx.actions.saveNotifySettings(kinds, 0.8))}`;
    } catch (exc) {
      status.textContent = `Not saved: ${exc.message}`;
    }
  } } }, "Save choices");
  return h("section", { className: "card", "aria-labelledby": "notify-title" },
    h("h2", { id: "notify-title" }, "Notifications"),
    h("p", { className: "muted" }, "Machines encrypt each notification to this device: the relay and the push service see only its size. Approve and Deny show on the notification in Chrome, Edge and Android; elsewhere a tap opens the approval here."),
    h("fieldset", {}, h("legend", {}, "Notify me when"), ...boxes),
    h("div", { className: "actions" }, enable, save), status);
}

export function devicesView(ctx) {
  const me = h("div", {});
  const list = h("ul", { className: "list", id: "device-list", "aria-label": "Devices" });
  const hash = h("p", { className: "hash", id: "running-hash" });
  const el = h("div", {}, h("h1", {}, "Devices"),
    h("section", { className: "card", "aria-labelledby": "me-title" }, h("h2", { id: "me-title" }, "This device"), me),
    h("h2", {}, "Devices of the account"), list,
    notificationsCard(ctx),
    h("section", { className: "card", "aria-labelledby": "code-title" },
      h("h2", { id: "code-title" }, "App code"),
      h("p", { className: "muted" }, "The hash of the code this app runs. “starmux web --print-hash” prints the hash of the code your starmux installation ships; they should match."),
      hash));

  function update(state) {
    const d = state.device;
    replace(me, d
      ? [h("div", { className: "name" }, machineText(d.name, 64)), h("div", { className: "meta" }, `role ${d.role}`), h("div", { className: "meta mono" }, d.fingerprint)]
      : h("p", { className: "muted" }, "Not a device yet."));
    hash.textContent = state.code.pinned || "—";
    const owner = d && d.role === "owner";
    replace(list, state.devices.length ? state.devices.map((dev) =>
      h("li", { className: "card", dataset: { device: dev.fingerprint } },
        h("div", { className: "name" }, machineText(dev.name, 64)),
        h("div", { className: "meta" }, `${dev.role}${dev.fingerprint === (d && d.fingerprint) ? " · this device" : ""}`),
        h("div", { className: "meta mono" }, dev.fingerprint),
        owner && dev.fingerprint !== d.fingerprint
          ? h("div", { className: "actions" }, h("button", { type: "button", className: "danger", on: { click: () => ctx.actions.removeDevice(dev.fingerprint, dev.name) } }, "Remove"))
          : null))
      : h("li", { className: "muted" }, "The device list arrives once this device is linked."));
  }
  return { el, update };
}
