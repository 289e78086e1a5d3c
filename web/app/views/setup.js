// Becoming a device: link to an existing account (an owner's `starmux devices link`
// code, pasted or scanned, or this browser's own code for `starmux devices add`), or
// start a new account with a relay registration token.
import { h } from "../dom.js";
import { showCodeCard } from "../joinshow.js";
import { codeInput } from "../qrinput.js";

export function setupView(ctx) {
  const defaultName = /Android|iPhone|iPad/.test(navigator.userAgent) ? "phone" : "browser";
  const name = h("input", { id: "device-name", value: defaultName, maxLength: 64, autocomplete: "off" });
  // Served by a relay: that relay is the likely one (same origin, allowed by the CSP).
  const here = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
  const relay = h("input", { id: "relay-url", value: here, placeholder: "wss://relay.example:8765", autocomplete: "off", spellcheck: false });
  const token = h("input", { id: "relay-token", type: "password", autocomplete: "off", placeholder: "one-time registration token" });
  const newStatus = h("p", { className: "meta", role: "status" });
  const register = async () => {
    newStatus.textContent = "Registering…";
    try {
      await ctx.actions.register(relay.value.trim(), token.value.trim(), name.value.trim());
      newStatus.textContent = "";
    } catch (exc) {
      newStatus.textContent = exc.message;
    }
  };
  const el = h(
    "div",
    {},
    h("h1", {}, "Make this browser a device"),
    h("p", { className: "muted" }, "This browser gets its own keys. The relay that serves this page cannot read your sessions, approvals or output."),
    h("section", { className: "card", "aria-labelledby": "device-name-title" },
      h("h2", { id: "device-name-title" }, "This device"),
      h("p", { className: "meta mono", id: "my-fingerprint" }, ctx.store.state.device ? ctx.store.state.device.fingerprint : ""),
      h("label", { htmlFor: "device-name" }, "Name (your other devices and machines see it)"),
      name),
    h("section", { className: "card", "aria-labelledby": "link-title" },
      h("h2", { id: "link-title" }, "Link to your account"),
      h("p", { className: "muted" }, "On a device that is an owner, run “starmux devices link --role operator”, then paste its code here or scan its QR."),
      codeInput({
        label: "Link code",
        placeholder: "starmux://link/v1?…",
        busyText: "Linking: compare the code shown on both devices…",
        onCode: (code) => ctx.actions.link(code, name.value.trim()),
      })),
    h("section", { className: "card", "aria-labelledby": "show-title" },
      h("h2", { id: "show-title" }, "Or show a code for an owner to add"),
      h("p", { className: "muted" }, "No camera here? Show this browser's own code and add it from an owner device with “starmux devices add CODE”. It uses the relay URL below."),
      showCodeCard({ onShow: (callbacks) => ctx.actions.showJoinCode(relay.value.trim(), name.value.trim(), callbacks) })),
    h("form", { className: "card", "aria-labelledby": "new-title", on: { submit: (event) => { event.preventDefault(); register(); } } },
      h("h2", { id: "new-title" }, "Or start a new account"),
      h("label", { htmlFor: "relay-url" }, "Relay URL"), relay,
      h("label", { htmlFor: "relay-token" }, "Registration token"), token,
      h("div", { className: "actions" }, h("button", { type: "submit", className: "primary" }, "Create account")),
      newStatus),
  );
  return { el, update() {} };
}
