// This device, the account's devices (owners may remove one) and the code hash.
import { h, machineText, replace } from "../dom.js";
import { notificationsCard } from "./notify_card.js";

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
