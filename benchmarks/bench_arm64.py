"""linux/arm64 under QEMU against linux/amd64 on this amd64 host, in the same run: one chain
(bootstrapped Debian 12 > OS set-up > CUDA 13.0.2 base from PyPI > python) built, pushed,
smoke-tested and promoted by the main job once per platform (`--platform`), cold above the
rootfs: the time zone is one picked at random from the host's, so the OS set-up and every
node above it miss the build cache (the bootstrapped rootfs is cached by dlenv; its
mmdebstrap time per architecture is printed by the build the first time, see docs/benchmarks.md).

    flock /tmp/dlenv-engine.lock python3 benchmarks/bench_arm64.py --json out/bench-arm64.json

Prints, per platform: seconds, compressed size per variant, checks passed / skipped / failed;
and the arm64 / amd64 time ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = ("linux/amd64", "linux/arm64")
FAMILY = """
registry: 127.0.0.1:5000
repository: bench/arm64-{run}
timezone: {timezone}
os:
  debian12: {{source: bootstrap, suite: bookworm}}
cuda:
  "13.0.2": {{source: pip}}
flavors: [base]
stacks:
  - []
  - [python]
platforms: [linux/amd64, linux/arm64]
"""


def zones() -> list[str]:
    """The host's time zones (Area/City), for a cache-missing TZ."""
    root = Path("/usr/share/zoneinfo")
    return sorted(str(p.relative_to(root)) for p in root.glob("[A-Z]*/[A-Z]*") if p.is_file()
                  and not str(p.relative_to(root)).startswith(("Etc/", "SystemV/", "posix/", "right/")))


def project(folder: Path, timezone: str, run: str) -> Path:
    (folder / "images").symlink_to(ROOT / "images")
    (folder / "recipes").symlink_to(ROOT / "recipes")
    (folder / "matrix.yaml").write_text(FAMILY.format(run=run, timezone=timezone))
    return folder


def build(folder: Path, platform: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = folder / f"{platform.split('/')[1]}.json"
    started = time.monotonic()
    # A build id per platform: each run pushes its own immutable tag (one platform's index).
    proc = subprocess.run([sys.executable, "-m", "dlenv", "build", "--platform", platform,
                           "--build-id", f"bench-{platform.split('/')[1]}",
                           "--workdir", str(folder / "work"), "--metadata", str(out)],
                          cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"build --platform {platform} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    data = json.loads(out.read_text())
    checks = [v for v in data.get("smoke", []) if v.get("platform") == platform]
    return {"seconds": round(seconds, 1),
            "sizes": {r["variant"]: r["platforms"][platform]["size"] for r in data["variants"]},
            "checks": {s: sum(v["status"] == s for v in checks) for s in ("passed", "skipped", "failed")},
            "promoted": sum(p["promoted"] for p in data.get("promotions", []))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    timezone = random.choice(zones())
    run = secrets.token_hex(3)
    with tempfile.TemporaryDirectory(prefix="bench-arm64-") as tmp:
        folder = project(Path(tmp), timezone, run)
        who = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@dlenv.invalid", "GIT_COMMITTER_NAME": "bench",
               "GIT_COMMITTER_EMAIL": "bench@dlenv.invalid"}
        for git in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
            subprocess.run(["git", *git], cwd=folder, check=True, env=dict(os.environ, **who))
        results = {p: build(folder, p) for p in PLATFORMS}
    ratio = results["linux/arm64"]["seconds"] / results["linux/amd64"]["seconds"]
    for platform, r in results.items():
        sizes = ", ".join(f"{v} {n / 1e6:.0f} MB" for v, n in r["sizes"].items())
        print(f"{platform}: {r['seconds']:.0f} s; {sizes}; checks {r['checks']}; promoted {r['promoted']}")
    print(f"arm64 / amd64 time: {ratio:.2f}x (TZ {timezone})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"timezone": timezone, "platforms": results, "ratio": round(ratio, 2)},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
