"""What the controller's commands do, as async functions over real I/O.

Each function takes the controller's home and explicit arguments and returns data
for the command layer to print; errors are :class:`StarmuxError` with a hint.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from starmux.control import (
    AccountRegistered,
    FailureCode,
    GrantMachine,
    MachineGranted,
    OpenTicket,
    RegisterAccount,
    ReportPairingFailure,
    SessionStatus,
    TicketOpened,
)
from starmux.errors import StarmuxError, UsageError
from starmux.fingerprint import fingerprint, fingerprints_match
from starmux.identity import IdentityCard, Role
from starmux.node.link import Data, RelayLink, RelayRefused
from starmux.pairing import (
    ControllerPairing,
    PairingAborted,
    PairingFailed,
    PairingPhase,
    abort_body,
    cancel_body,
)
from starmux.pairing_code import PairingCode, check_relay_url

from .store import ControllerConfig, ControllerStore

PAIRING_STEP_TIMEOUT = 20.0
MACHINE_CONFIRM_PATIENCE = 300.0

_TICKET_REFUSALS = {
    "expired": (
        "this pairing code has expired",
        "the daemon prints a fresh code when one expires: use the newest",
    ),
    "consumed": (
        "this pairing code was already used",
        "each code pairs once; if the machine is not yours, ask its owner",
    ),
    "burnt": (
        "this pairing code was blocked after failed attempts",
        "use the fresh code the daemon prints next",
    ),
    "taken": (
        "another controller is already using this pairing code",
        "wait for the daemon's next code",
    ),
    "unknown-ticket": (
        "the relay does not know this pairing code",
        "use the newest code the daemon shows (it replaces a code that burnt or "
        "expired), and check that it was copied whole",
    ),
}


@contextlib.asynccontextmanager
async def connected(
    store: ControllerStore, config: ControllerConfig, url: str | None = None
) -> AsyncIterator[RelayLink]:
    keys = store.keys()
    link = RelayLink(
        url or config.relay_url,
        keys,
        keys.card(Role.CONTROLLER, config.name),
        pinned_relay_key=config.relay_key,
    )
    await link.connect()
    try:
        yield link
    finally:
        await link.close()


@dataclass(frozen=True)
class InitResult:
    fingerprint: str
    account: bytes
    relay_fingerprint: str
    already: bool


async def init(
    home: Path, *, relay_url: str, token: str, name: str, relay_fingerprint: str | None = None
) -> InitResult:
    """Register (or reconnect) this controller. With ``relay_fingerprint`` the relay's
    key is checked against it before anything is sent, instead of trusted on first use."""
    check_relay_url(relay_url)
    async with ControllerStore(home) as store:
        keys = store.keys(create=True)
        try:
            existing = await store.config()
        except UsageError:
            existing = None
        if existing is not None and existing.relay_url != relay_url:
            raise UsageError(
                f"this controller already uses the relay {existing.relay_url}",
                hint="use another STARMUX_HOME for a second relay",
            )
        link = RelayLink(
            relay_url,
            keys,
            keys.card(Role.CONTROLLER, name),
            pinned_relay_key=existing.relay_key if existing else None,
        )
        auth = await link.connect()
        if relay_fingerprint is not None and not fingerprints_match(
            fingerprint(link.relay_key), relay_fingerprint
        ):
            await link.close()
            raise UsageError(
                f"the relay at {relay_url} has fingerprint {fingerprint(link.relay_key)}, "
                f"not {relay_fingerprint}; nothing was sent to it",
                hint="check the fingerprint with the relay's operator (the relay prints it "
                "at start); someone may impersonate the relay",
            )
        try:
            if auth.status is SessionStatus.UNREGISTERED:
                reply = await link.request(RegisterAccount(0, token), AccountRegistered)
                assert isinstance(reply, AccountRegistered)
                account = reply.account
            else:
                account = auth.account
        except RelayRefused as exc:
            if exc.code == FailureCode.BAD_TOKEN:
                raise UsageError(
                    "the relay refused the registration token",
                    hint="use the one-time token the relay printed at its first start "
                    "(--token), or start the relay with --open-registration",
                ) from exc
            raise
        finally:
            await link.close()
        await store.save_config(ControllerConfig(relay_url, link.relay_key, account, name))
        return InitResult(
            keys.fingerprint, account, fingerprint(link.relay_key), existing is not None
        )


@dataclass(frozen=True)
class PairResult:
    machine: IdentityCard
    comparison_code: str
    stored_by_machine: bool
    name: str = ""  # the machine's real name (its card's, unless it keeps it private)


async def pair(
    home: Path,
    code: PairingCode,
    *,
    confirm: Callable[[IdentityCard, str], bool | Awaitable[bool]],
    on_comparison_code: Callable[[str], None] | None = None,
) -> PairResult:
    async with ControllerStore(home) as store:
        config = await store.config()
        keys = store.keys()
        if not fingerprints_match(fingerprint(config.relay_key), code.relay_fingerprint):
            raise UsageError(
                f"this code is for the relay {code.relay_fingerprint}, but this controller "
                f"uses {fingerprint(config.relay_key)}",
                hint="pair through the same relay the controller was set up with",
            )
        async with connected(store, config, code.relay_url) as link:
            try:
                opened = await link.request(OpenTicket(0, code.ticket), TicketOpened)
            except RelayRefused as exc:
                refusal = exc.code
                expired = code.expires_at is not None and time.time() >= code.expires_at
                if refusal == FailureCode.UNKNOWN_TICKET and expired:
                    refusal = FailureCode.EXPIRED  # the relay drops a machine's old tickets
                message, hint = _TICKET_REFUSALS.get(refusal, (exc.message, exc.hint or ""))
                raise UsageError(message, hint=hint) from exc
            assert isinstance(opened, TicketOpened)
            machine_key = opened.machine_key
            handshake = ControllerPairing(
                keys,
                keys.card(Role.CONTROLLER, config.name),
                code,
                relay_key=config.relay_key,
                account=config.account,
            )
            try:
                await link.send_data(machine_key, handshake.start(machine_key))
                while handshake.phase is not PairingPhase.CONFIRMED:
                    # A machine started with --confirm waits for its person first.
                    accepting = handshake.phase is PairingPhase.AWAIT_ACCEPTED
                    patience = MACHINE_CONFIRM_PATIENCE if accepting else PAIRING_STEP_TIMEOUT
                    reply = handshake.receive(await _from(link, machine_key, patience=patience))
                    if reply is not None:
                        await link.send_data(machine_key, reply)
                        if on_comparison_code is not None:
                            on_comparison_code(handshake.comparison_code)
                assert handshake.machine_card is not None
                answer = confirm(handshake.machine_card, handshake.comparison_code)
                if not (await answer if inspect.isawaitable(answer) else answer):
                    raise PairingFailed(
                        "pairing cancelled: the comparison codes were not confirmed"
                    )
                issued_at = time.time()
                signature, grant_body = handshake.grant(keys, issued_at=issued_at)
                await link.request(
                    GrantMachine(
                        0, code.ticket, handshake.machine_card.encode(), issued_at, signature
                    ),
                    MachineGranted,
                )
            except asyncio.CancelledError:
                # Ctrl-C (at the prompt or while waiting): not a failed attempt. Tell
                # the machine, so it starts over and the code stays usable.
                with contextlib.suppress(StarmuxError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        await link.send_data(machine_key, cancel_body())
                raise
            except PairingFailed as exc:
                if not isinstance(exc, PairingAborted):  # else the machine counted it
                    with contextlib.suppress(StarmuxError):
                        await link.send_data(machine_key, abort_body())
                        await link.request(ReportPairingFailure(0, code.ticket))
                raise UsageError(
                    exc.message, hint="nothing was registered; try the daemon's current code again"
                ) from exc
            await store.add_machine(
                handshake.machine_card, paired_at=issued_at, name=handshake.machine_name
            )
            await link.send_data(machine_key, grant_body)
            stored = False
            with contextlib.suppress(TimeoutError, PairingFailed):
                handshake.receive(await _from(link, machine_key, patience=10.0))
                stored = True
            return PairResult(
                handshake.machine_card, handshake.comparison_code, stored, handshake.machine_name
            )


async def _from(link: RelayLink, peer: bytes, *, patience: float = PAIRING_STEP_TIMEOUT) -> bytes:
    """The next DATA body from ``peer``."""
    try:
        async with asyncio.timeout(patience):
            async for event in link.events():
                if isinstance(event, Data) and event.peer == peer:
                    return event.body
    except TimeoutError as exc:
        raise PairingFailed("the machine stopped answering during pairing") from exc
    raise PairingFailed("the relay connection closed during pairing")
