"""The fault-test network: four namespaces joined by veth pairs, and the faults.

::

    controller          relay                     delay                    machine
    eth0 10.231.2.2 ─── c0 10.231.2.1
                        lo 10.231.0.1  relay :8765
                        d0 10.231.3.1 ─────────── r0 10.231.3.2
                                                  lo 10.231.0.1  forwarder :8765
                                                  m0 10.231.1.1 ───────── eth0 10.231.1.2
                                                                          (daemon; faults)

Everyone uses the same relay URL, ``ws://10.231.0.1:8765``. The controller reaches
the relay itself; on the machine's side the *delay* namespace answers for that
address with :class:`~tests.fault.delay_forwarder.DelayForwarder`, which forwards to
the relay's other address (10.231.3.1; the relay listens on all of its own). So the
daemon's own TCP connection crosses the faulty veth, and the controller's never does.

Addresses are from 10.231.0.0/16 and exist only inside these namespaces: no route
leads out of them, and nothing is ever sent to an address outside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .delay_forwarder import DelayForwarder
from .netns import NetNamespace, NetworkSetupError, new_tag, veth

RELAY_ADDRESS = "10.231.0.1"
RELAY_PORT = 8765
RELAY_URL = f"ws://{RELAY_ADDRESS}:{RELAY_PORT}"
RELAY_INNER_ADDRESS = "10.231.3.1"  # the relay as the delay namespace reaches it
MACHINE_GATEWAY = "10.231.1.1"
MACHINE_DEV = "eth0"


@dataclass
class FaultNet:
    relay: NetNamespace
    delay: NetNamespace
    machine: NetNamespace
    controller: NetNamespace
    forwarder: DelayForwarder = field(
        default_factory=lambda: DelayForwarder(
            (RELAY_ADDRESS, RELAY_PORT), (RELAY_INNER_ADDRESS, RELAY_PORT)
        )
    )
    _loss_rules: list[list[str]] = field(default_factory=list)
    _blackholes: list[list[str]] = field(default_factory=list)

    @classmethod
    def build(cls, created: list[NetNamespace]) -> FaultNet:
        """Create the namespaces (appending each to ``created`` at once, so the caller
        removes them even if a later step fails), link them, start the forwarder."""
        tag = new_tag()

        def make(role: str) -> NetNamespace:
            ns = NetNamespace(tag + role)
            created.append(ns)
            return ns.create()

        net = cls(make("r"), make("d"), make("m"), make("c"))
        net.relay.ip("addr", "add", f"{RELAY_ADDRESS}/32", "dev", "lo")
        net.delay.ip("addr", "add", f"{RELAY_ADDRESS}/32", "dev", "lo")
        veth(net.relay, "c0", "10.231.2.1/24", net.controller, "eth0", "10.231.2.2/24")
        veth(net.relay, "d0", f"{RELAY_INNER_ADDRESS}/24", net.delay, "r0", "10.231.3.2/24")
        veth(net.delay, "m0", f"{MACHINE_GATEWAY}/24", net.machine, MACHINE_DEV, "10.231.1.2/24")
        net.controller.ip("route", "add", f"{RELAY_ADDRESS}/32", "via", "10.231.2.1")
        net._route_machine()
        net.check_loss_rules()
        net.forwarder.start_in(net.delay)
        return net

    def _route_machine(self) -> None:
        self.machine.ip(
            "route", "replace", f"{RELAY_ADDRESS}/32", "via", MACHINE_GATEWAY, "dev", MACHINE_DEV
        )

    def check_loss_rules(self) -> None:
        """Fail early, with what to install, if iptables cannot drop at random here."""
        try:
            self.set_loss(0.3)
            self.set_loss(0.0)
        except NetworkSetupError as exc:
            raise NetworkSetupError(
                f"{exc}\niptables with the `statistic` match is needed for packet loss "
                "(apt-get install iptables; kernel: nf_tables + xt_statistic)"
            ) from exc

    # --- faults (all on the machine's veth, or its path) ---------------------------

    def cut_machine_link(self) -> None:
        self.machine.ip("link", "set", MACHINE_DEV, "down")

    def restore_machine_link(self) -> None:
        # Taking a link down flushes the routes through it; a real host's network
        # manager puts them back when the link returns, and so do we.
        self.machine.ip("link", "set", MACHINE_DEV, "up")
        self._route_machine()

    def set_loss(self, probability: float) -> None:
        """Drop packets on the machine's veth at random, both ways (0: no loss)."""
        for rule in self._loss_rules:
            self.machine.exec("iptables", "-D", *rule)
        self._loss_rules.clear()
        if probability <= 0:
            return
        random_drop = ["-m", "statistic", "--mode", "random", "--probability", f"{probability}"]
        for rule in (
            ["INPUT", "-i", MACHINE_DEV, *random_drop, "-j", "DROP"],
            ["OUTPUT", "-o", MACHINE_DEV, *random_drop, "-j", "DROP"],
        ):
            self.machine.exec("iptables", "-A", *rule)
            self._loss_rules.append(rule)

    def kill_connection_silently(self, port: int) -> None:
        """Drop every packet of the daemon's connection from ``port``, both ways, for
        good: as when a NAT or firewall forgets the flow or the machine roams. No RST,
        no FIN; a new connection (another port) goes through."""
        for rule in (
            ["OUTPUT", "-o", MACHINE_DEV, "-p", "tcp", "--sport", str(port), "-j", "DROP"],
            ["INPUT", "-i", MACHINE_DEV, "-p", "tcp", "--dport", str(port), "-j", "DROP"],
        ):
            self.machine.exec("iptables", "-A", *rule)
            self._blackholes.append(rule)

    def set_delay(self, seconds: float) -> None:
        """Delay every chunk between the daemon and the relay, each way."""
        self.forwarder.delay = seconds

    def clear_faults(self) -> None:
        self.set_loss(0.0)
        self.set_delay(0.0)
        for rule in self._blackholes:
            self.machine.exec("iptables", "-D", *rule)
        self._blackholes.clear()
        self.restore_machine_link()

    def remove(self) -> None:
        self.forwarder.stop()
