"""Which sources each variant needs before it can build, and the fix dlenv suggests."""

from __future__ import annotations

from dlenv import plan, reach
from helpers import expand


def test_sources_per_variant(project, monkeypatch):
    monkeypatch.setattr(reach.hostconf, "pip_default_index", lambda: "https://pypi.invalid/simple")
    p = expand(project)
    boot = {(s.kind, s.address) for s in reach.sources(p, p.variant("13.0.2-base-debian12"))}
    assert boot == {("apt", "http://apt.invalid/debian/dists/bookworm/Release"),
                    ("pypi", "https://pypi.invalid/simple/pip/")}
    image = reach.sources(p, p.variant("12.6.3-devel-ubuntu24.04"))
    assert [(s.kind, s.address) for s in image] == [("image", "nvidia/cuda:12.6.3-devel-ubuntu24.04")]
    assert "mirrors.registry" in image[0].fix
    pip_on_ubuntu = reach.sources(p, p.variant("13.0.2-base-ubuntu24.04-py"))
    assert ("image", "ubuntu:24.04") in {(s.kind, s.address) for s in pip_on_ubuntu}
    assert "source: bootstrap" in next(s.fix for s in pip_on_ubuntu if s.kind == "image")


def test_unreachable_sources_leave_variants_out(project, monkeypatch):
    monkeypatch.setattr(reach.hostconf, "pip_default_index", lambda: "https://pypi.invalid/simple")
    monkeypatch.setattr(reach, "image_ok", lambda image, network: (False, "no such host"))
    monkeypatch.setattr(reach, "_url_ok", lambda url, network: (True, "HTTP 200"))
    p = expand(project)
    gone, verdicts = reach.check(p)
    assert all("ubuntu" in vid for vid in gone)
    assert len(gone) == sum(1 for v in p.variants if v.os == "ubuntu24.04")
    left = gone["12.6.3-base-ubuntu24.04"]
    assert left.reason == "unreachable" and left.detail == "image nvidia/cuda:12.6.3-base-ubuntu24.04: no such host"
    # Each distinct source is probed once.
    assert len(verdicts) == len({(v.source.kind, v.source.address) for v in verdicts})


def test_without_an_apt_mirror_mmdebstrap_uses_its_own_default_archive(project, monkeypatch):
    monkeypatch.setattr(reach.hostconf, "pip_default_index", lambda: "https://pypi.invalid/simple")
    probed = []
    monkeypatch.setattr(reach, "_url_ok", lambda url, network: probed.append(url) or (True, "HTTP 200"))
    p = expand(project, select=["os=debian12"], mirrors=plan.Mirrors(bootstrap_apt=""))
    gone, _ = reach.check(p)
    # A host whose apt sources name no Debian mirror (an Ubuntu CI runner): nothing to probe,
    # and mmdebstrap is given no sources at all.
    assert not gone and not [u for u in probed if "/dists/" in u]
    spec = p.nodes["rootfs-debian12"].rootfs
    assert spec.sources() == []
