"""tests/setup_system.py decides: install what it can, otherwise fail naming it."""

from __future__ import annotations

from .. import setup_system
from ..setup_system import REQUIREMENTS, Plan, has_tests, plan

ALL_TESTS = {"fault", "browser"}


def decide(
    *, present: set[str], root: bool = True, apt: bool = True, tests: set[str] = ALL_TESTS
) -> Plan:
    return plan(
        REQUIREMENTS,
        has_tests=lambda folder: folder in tests,
        which=lambda program: f"/usr/bin/{program}" if program in present else None,
        is_root=root,
        has_apt=apt,
    )


def test_nothing_to_do_when_everything_is_there() -> None:
    result = decide(present={"ip", "iptables", "chromium"})
    assert result == Plan()


def test_root_on_debian_installs_what_is_missing() -> None:
    result = decide(present={"ip"})
    assert result.install == ["iproute2", "iptables", "chromium"]
    assert not result.errors


def test_without_apt_it_fails_naming_the_packages() -> None:
    result = decide(present={"ip", "chromium"}, apt=False)
    assert result.install == []
    (error,) = result.errors
    assert "iptables" in error and "apt-get install iproute2 iptables" in error
    assert "--ignore=tests/fault" in error


def test_without_root_the_fault_tests_fail_early_with_what_to_do() -> None:
    result = decide(present={"ip", "iptables", "chromium"}, root=False)
    (error,) = result.errors
    assert "needs root" in error and "--ignore=tests/fault" in error


def test_a_requirement_holds_only_while_its_tests_exist() -> None:
    # No browser tests yet: chromium is neither installed nor asked for.
    result = decide(present={"ip", "iptables"}, tests={"fault"})
    assert result == Plan()


def test_the_real_tests_folder() -> None:
    assert has_tests(setup_system.TESTS / "fault")
    assert not has_tests(setup_system.TESTS / "no-such-folder")


def test_the_readme_test_command_readies_the_machine_before_pytest() -> None:
    readme = (setup_system.TESTS.parent / "README.md").read_text()
    block = readme.split("<!-- command: test -->", 1)[1].split("```", 2)[1]
    lines = [line.strip() for line in block.splitlines()[1:] if line.strip()]
    assert lines[0] == "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'"
    assert lines[1] == ".venv/bin/python tests/setup_system.py"
    assert lines[2].startswith(".venv/bin/python -m pytest")


def test_the_web_controller_tests_need_node_and_npm() -> None:
    present = {"ip", "iptables", "chromium"}
    assert decide(present=present, tests={"unit"}).install == ["nodejs", "npm"]
    (error,) = decide(present=present, tests={"unit"}, apt=False).errors
    assert "node, npm" in error and "apt-get install nodejs npm" in error
    assert decide(present=present | {"node", "npm"}, tests={"unit"}) == Plan()
