"""Before building: can each variant's sources be reached from here?

A variant needs its OS source (a base image from a registry, or an apt mirror for bootstrap),
its CUDA source (an nvidia/cuda image, or a PyPI index) and, for recipes, the PyPI index.
Variants whose sources do not answer are left out with the reason and the setting that fixes it.
"""

from __future__ import annotations

import http.client
import subprocess
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dlenv import engine, hostconf, retry
from dlenv.hostconf import Network
from dlenv.plan import LeftOut, Plan, Variant


@dataclass(frozen=True)
class Source:
    kind: str      # image | apt | pypi
    address: str
    fix: str


@dataclass(frozen=True)
class Verdict:
    source: Source
    ok: bool
    detail: str


def image_ok(image: str, network: Network) -> tuple[bool, str]:
    try:
        out = subprocess.run(["docker", "buildx", "imagetools", "inspect", "--raw", image],
                             capture_output=True, text=True, timeout=30, env=network.env())
    except subprocess.TimeoutExpired:
        return False, "no answer in 30s"
    except OSError as exc:
        return False, str(exc)
    if out.returncode == 0:
        return True, "ok"
    last = [line for line in out.stderr.strip().splitlines() if line.strip()][-1:] or ["failed"]
    # Registry errors nest causes ("failed to do request: Head ...: dial tcp: ...: no such host");
    # the innermost one says what is wrong.
    return False, last[0].rsplit(": ", 1)[-1][:160]


def _url_ok(url: str, network: Network) -> tuple[bool, str]:
    """Whether url answers; a mirror that drops a connection or answers 5xx for a moment is
    asked again (retry.py) before it is called unreachable."""
    try:
        with retry.call(lambda: network.urlopen(url, timeout=15)) as response:
            return True, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}{retry.attempts(exc)}"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return False, f"{str(getattr(exc, 'reason', exc)) or exc.__class__.__name__}"[:160] + retry.attempts(exc)


def sources(plan: Plan, variant: Variant) -> list[Source]:
    model = plan.matrix.model
    out: list[Source] = []
    first = plan.nodes[variant.chain[0]]
    if first.rootfs and first.rootfs.mirror:
        # Without a mirror mmdebstrap uses its own default archive: its failure says so.
        address = f"{first.rootfs.mirror}/dists/{first.rootfs.suite}/Release"
        out.append(Source("apt", address, "set mirrors.apt in matrix.yaml to a reachable Debian mirror"))
    if first.base_image:
        out.append(Source("image", first.base_image,
                          "set mirrors.registry in matrix.yaml to a registry mirror that has this image"
                          + (", or use `source: bootstrap` for this OS" if variant.cuda_source == "pip" else "")))
    needs_pip = variant.cuda_source == "pip" or any(plan.nodes[n].kind == "recipe" for n in variant.chain)
    if needs_pip:
        index = plan.mirrors.pypi or hostconf.pip_default_index()
        if index:
            out.append(Source("pypi", f"{index.rstrip('/')}/pip/",
                              "set mirrors.pypi in matrix.yaml to a reachable PyPI index"))
    if model.mirrors.apt and first.base_image:
        out.append(Source("apt", f"{model.mirrors.apt}/", "fix mirrors.apt in matrix.yaml"))
    return out


def check(plan: Plan) -> tuple[dict[str, LeftOut], list[Verdict]]:
    """Probe every distinct source once; return the variants to leave out, and all verdicts."""
    needed = {v.id: sources(plan, v) for v in plan.variants}
    distinct = sorted({s for ss in needed.values() for s in ss}, key=lambda s: (s.kind, s.address))

    def probe(source: Source) -> Verdict:
        if not source.address:
            return Verdict(source, False, f"none configured, and the host's {source.kind} sources name none")
        ok, detail = (image_ok if source.kind == "image" else _url_ok)(source.address, plan.network)
        return Verdict(source, ok, detail)

    with ThreadPoolExecutor(max_workers=8) as pool:
        verdicts = list(pool.map(probe, distinct))
    by_source = {v.source: v for v in verdicts}
    gone: dict[str, LeftOut] = {}
    for variant_id, needs in needed.items():
        bad = next((by_source[s] for s in needs if not by_source[s].ok), None)
        if bad:
            what = f"{bad.source.kind} {bad.source.address}" if bad.source.address else f"{bad.source.kind} mirror"
            gone[variant_id] = LeftOut(variant_id, "unreachable", f"{what}: {bad.detail}", bad.source.fix)
    return gone, verdicts


def reachable(plan: Plan, say=print) -> Plan:
    """The plan without the variants whose sources do not answer (`list --check`)."""
    engine.ensure(say=say)
    gone, _ = check(plan)
    return plan.without(gone)
