// Becoming a device and pairing a machine: the I/O around web/proto's state
// machines (NewDevice and JoiningDevice in device_link.js, ControllerPairing in
// pairing.js), like client/device_linking.py's join and join_shown and
// client/actions.py::pair.
//
// Each flow waits for DATA from one peer through a PeerInbox; every failure
// tells the other side (abort) and the relay (a failed attempt) unless the other
// side aborted first, and the error says what to do next.

import { equal } from "../../proto/bytes.js";
import { JoiningDevice, NewDevice } from "../../proto/device_link.js";
import { PairingFailed } from "../../proto/errors.js";
import { fingerprint, fingerprintsMatch } from "../../proto/fingerprint.js";
import { randomBytes } from "../../proto/noise.js";
import { abortBody, ControllerPairing } from "../../proto/pairing.js";
import { formatJoinCode, parseJoinCode, SECRET_SIZE } from "../../proto/pairing_code.js";
import { grantTranscript } from "../../proto/relay_auth.js";
import { RelayRefused } from "./relay_link.js";

const STEP_MS = 30000;
const CONFIRM_MS = 120000;
const LONGEST_SHOWN_MS = 15 * 60 * 1000;

export class FlowError extends Error {}

const TICKET_REFUSALS = {
  "unknown-ticket": "the relay does not know this code: use the newest one, copied whole",
  expired: "this code has expired: ask for a fresh one",
  consumed: "this code was already used: ask for a fresh one",
  burnt: "this code was blocked after failed attempts: use the next one shown",
  taken: "another device is already using this code",
  forbidden: "the relay does not allow this device to use that code",
  "rate-limited": "too many attempts: wait a minute",
};

export function refusalText(error) {
  if (error instanceof RelayRefused) return TICKET_REFUSALS[error.code] || error.message;
  return error.message;
}

// DATA bodies from one peer, in order, for a flow that waits for them.
export class PeerInbox {
  constructor(peer) {
    this.peer = peer;
    this.queue = [];
    this.waiter = null;
  }

  push(body) {
    if (this.waiter) {
      const { resolve } = this.waiter;
      this.waiter = null;
      resolve(body);
    } else {
      this.queue.push(body);
    }
  }

  next(timeoutMs = STEP_MS) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new FlowError("the other side stopped answering (or the code expired)"));
      }, timeoutMs);
      this.waiter = { resolve: (body) => (clearTimeout(timer), resolve(body)) };
    });
  }
}

async function failed(link, peer, ticket, error) {
  if (error instanceof PairingFailed && !error.aborted && peer) {
    try {
      link.sendData(peer, abortBody());
      await link.request("report-pairing-failure", { ticket });
    } catch {
      // the connection is gone: the ticket burns on its own
    }
  }
}

// The new device's side of linking. `confirm(code, inviterName)` resolves true
// when the person saw the same comparison code on the inviter.
export async function joinAccount({ link, keys, card, code, inbox, confirm }) {
  if (!fingerprintsMatch(fingerprint(link.relayKey), code.relayFingerprint)) {
    throw new FlowError(`the relay at ${code.relayUrl} is ${fingerprint(link.relayKey)}, not ${code.relayFingerprint} as the code says; refusing`);
  }
  if (link.auth.status !== "unregistered") throw new FlowError("this device's key already belongs to an account");
  let opened;
  try {
    opened = await link.request("open-link-ticket", { ticket: code.ticket }, "ticket-opened");
  } catch (error) {
    throw new FlowError(refusalText(error));
  }
  const inviterKey = opened.machine_key;
  const peer = inbox(inviterKey);
  const device = new NewDevice(keys, card, code, { relayKey: link.relayKey });
  try {
    link.sendData(inviterKey, device.start());
    const reply = device.receive(await peer.next());
    if (!equal(device.inviter.signPublic, inviterKey)) {
      throw new PairingFailed("the inviter's card is not the key the relay connected");
    }
    if (!(await confirm(device.comparisonCode, device.inviter.name))) {
      throw new PairingFailed("link cancelled: the comparison codes were not confirmed");
    }
    link.sendData(inviterKey, reply);
    const stored = device.receive(await peer.next(CONFIRM_MS));
    link.sendData(inviterKey, stored);
  } catch (error) {
    await failed(link, inviterKey, code.ticket, error);
    throw error instanceof PairingFailed || error instanceof FlowError ? new FlowError(`${error.message}: ask for a fresh link code`) : error;
  }
  return { account: device.account, log: device.log, machines: device.machines, inviter: device.inviter };
}

// The new device showing its own join code (a browser without a camera), like
// client/device_linking.py::join_shown: hold a fresh link ticket, show the code,
// wait for the owner that opens it (`starmux devices add CODE`), compare codes, and
// take the account the owner hands over. `firstPeer(ms)` resolves {peer, inbox} for
// the first DATA of a device this one does not know; `show(text, expiresAt)` and
// `status(text)` tell the person where it stands.
export async function joinByShowing({ link, keys, card, firstPeer, show, status, confirm }) {
  if (link.auth.status !== "unregistered") throw new FlowError("this device's key already belongs to an account");
  let created;
  try {
    created = await link.request("create-link-ticket", {}, "ticket-created");
  } catch (error) {
    throw new FlowError(refusalText(error));
  }
  const text = formatJoinCode({
    relayUrl: link.url, relayFingerprint: fingerprint(link.relayKey), ticket: created.ticket,
    deviceFingerprint: keys.fingerprint, secret: randomBytes(SECRET_SIZE),
  });
  const code = parseJoinCode(text);
  show(text, created.expires_at);
  status("waiting for an owner to run the command");
  const waitMs = Math.min(Math.max(created.expires_at * 1000 - Date.now(), 1000), LONGEST_SHOWN_MS);
  const { peer: ownerKey, inbox: peer } = await firstPeer(waitMs);
  status("an owner device opened the code: connecting");
  const device = new JoiningDevice(keys, card, code, { relayKey: link.relayKey });
  try {
    link.sendData(ownerKey, device.receive(await peer.next()));
    // The owner's person compares before it sends its last handshake message.
    device.receive(await peer.next(CONFIRM_MS));
    if (!equal(device.owner.signPublic, ownerKey)) {
      throw new PairingFailed("the owner's card is not the key the relay connected");
    }
    status("compare the codes");
    if (!(await confirm(device.comparisonCode, device.owner.name))) {
      throw new PairingFailed("link cancelled: the comparison codes were not confirmed");
    }
    link.sendData(ownerKey, device.accept());
    status(`waiting for ${device.owner.name} to add this browser`);
    link.sendData(ownerKey, device.receive(await peer.next(CONFIRM_MS)));
  } catch (error) {
    await failed(link, ownerKey, code.ticket, error);
    throw error instanceof PairingFailed || error instanceof FlowError ? new FlowError(`${error.message}: show a fresh code`) : error;
  }
  return { account: device.account, log: device.log, machines: device.machines, owner: device.owner, role: device.role };
}

// The controller's side of pairing a machine, through this device's live link.
export async function pairMachine({ link, keys, card, code, account, relayKey, inbox, confirm, now }) {
  if (!fingerprintsMatch(fingerprint(relayKey), code.relayFingerprint)) {
    throw new FlowError(`this code is for the relay ${code.relayFingerprint}, but this device uses ${fingerprint(relayKey)}`);
  }
  let opened;
  try {
    opened = await link.request("open-ticket", { ticket: code.ticket }, "ticket-opened");
  } catch (error) {
    throw new FlowError(refusalText(error));
  }
  const machineKey = opened.machine_key;
  const peer = inbox(machineKey);
  const pairing = new ControllerPairing(keys, card, code, { relayKey, account });
  let grantBody;
  try {
    link.sendData(machineKey, pairing.start(machineKey));
    while (pairing.phase !== "confirmed") {
      const patience = pairing.phase === "await-accepted" ? CONFIRM_MS : STEP_MS;
      const reply = pairing.receive(await peer.next(patience));
      if (reply !== null) link.sendData(machineKey, reply);
    }
    if (!(await confirm(pairing.comparisonCode, pairing.machineName))) {
      throw new PairingFailed("pairing cancelled: the comparison codes were not confirmed");
    }
    const issuedAt = now();
    let signature;
    [signature, grantBody] = pairing.grant(keys, { issuedAt });
    await link.request("grant-machine", {
      ticket: code.ticket,
      machine_card: pairing.machineCard.encoded,
      issued_at: issuedAt,
      signature,
    }, "machine-granted");
  } catch (error) {
    await failed(link, machineKey, code.ticket, error);
    if (error instanceof RelayRefused) throw new FlowError(`the relay refused the grant: ${refusalText(error)}`);
    throw error instanceof PairingFailed || error instanceof FlowError ? new FlowError(`${error.message}: nothing was registered; try the daemon's current code`) : error;
  }
  link.sendData(machineKey, grantBody);
  let stored = false;
  try {
    pairing.receive(await peer.next(10000));
    stored = true;
  } catch {
    // the relay holds the grant; the machine learns it at its next connection
  }
  return { card: pairing.machineCard, name: pairing.machineName, stored };
}

export { grantTranscript };
