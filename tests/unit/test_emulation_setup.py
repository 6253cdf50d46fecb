"""What dlenv writes to register QEMU, and what it says where it cannot: against a stand-in for
/proc/sys/fs/binfmt_misc (the real registration runs in tests/engine/test_emulation.py)."""

from __future__ import annotations

import platform

import pytest

from dlenv import engine
from dlenv.errors import EngineError

# Debian 12's /usr/lib/binfmt.d/qemu-aarch64.conf, with its flags left for each test to set.
DEBIAN = (r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
          r":\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
          r":/usr/libexec/qemu-binfmt/aarch64-binfmt-P:")


@pytest.fixture
def binfmt(tmp_path, monkeypatch):
    """A binfmt_misc folder (mounted: it has `register`) and a binfmt.d folder, in tmp_path."""
    proc, conf = tmp_path / "binfmt_misc", tmp_path / "binfmt.d"
    proc.mkdir()
    conf.mkdir()
    (proc / "register").write_text("")
    monkeypatch.setattr(engine, "BINFMT", proc)
    monkeypatch.setattr(engine, "BINFMT_CONF", conf)
    return proc, conf


def test_the_host_platform_is_dockers_name_for_this_machine():
    assert engine.host_platform() == {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}[platform.machine()]


@pytest.mark.parametrize("flags", ["OP", "OPF"])
def test_debians_handler_is_registered_with_f(binfmt, flags):
    proc, conf = binfmt
    (conf / "qemu-aarch64.conf").write_text(DEBIAN + flags + "\n")
    said: list[str] = []
    engine.register_emulator("linux/arm64", said.append)
    written = (proc / "register").read_text()
    assert written.startswith(DEBIAN) and set(written.removeprefix(DEBIAN)) == set(flags) | {"F"}
    assert len(said) == 1 and "registered qemu-aarch64" in said[0] and "linux/arm64" in said[0]


def test_a_handler_without_f_is_replaced_and_one_with_f_is_kept(binfmt):
    proc, conf = binfmt
    (conf / "qemu-aarch64.conf").write_text(DEBIAN + "OPF\n")
    registered = proc / "qemu-aarch64"
    registered.write_text("enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OC\noffset 0\n")
    engine.register_emulator("linux/arm64", lambda line: None)
    assert registered.read_text() == "-1", "the handler without F was not removed first"
    assert (proc / "register").read_text() == DEBIAN + "OPF"
    # With F it stays as it is: nothing written, nothing said.
    registered.write_text("enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OCF\noffset 0\n")
    (proc / "register").write_text("")
    said: list[str] = []
    engine.register_emulator("linux/arm64", said.append)
    assert (proc / "register").read_text() == "" and not said
    assert engine.handler("linux/arm64") == {"interpreter": "/usr/bin/qemu-aarch64-static", "flags": "OCF"}


def test_without_root_it_says_why_and_the_fix(binfmt, monkeypatch):
    monkeypatch.setattr(engine.os, "geteuid", lambda: 1000)
    with pytest.raises(EngineError) as raised:
        engine.register_emulator("linux/arm64", lambda line: None)
    assert "needs root" in raised.value.message and "qemu-user-static" in raised.value.fix


def test_a_remote_builder_is_not_set_up_from_here(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://builder.invalid:2376")
    monkeypatch.setattr(engine, "builder_platforms", lambda *args, **kw: ("linux/amd64",))
    monkeypatch.setattr(engine, "register_emulator", lambda *args: pytest.fail("registered QEMU for a remote builder"))
    [unreachable] = engine.emulation(["linux/amd64", "linux/arm64"], say=lambda line: None)
    assert unreachable.platform == "linux/arm64"
    assert "does not run linux/arm64" in unreachable.detail and "linux/amd64" in unreachable.detail
    assert "arm64 node" in unreachable.fix
