"""A dockerd of its own whose data root is a loop-mounted ext4 file of a given size: the engine the
reliability tests kill and fill up (test_reliability.py), and the build runner of a given free disk
that benchmarks/bench_shard_disk.py measures a release shard on. dlenv's shared engine, its
registry and the shared engine's firewall rules are never touched; `outbound` adds (and removes
afterwards) the two rules of its own that let its build steps reach the network through NAT.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from dlenv import engine


def processes_with(text: str, program: str = "") -> list[int]:
    """Pids whose command line holds text (other than this process), and runs program where given."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if text.encode() in b" ".join(argv) and (not program or argv[0] == program.encode()):
                found.append(int(entry))
    return found


def wait_for(what: str, test, timeout: float = 120, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (found := test()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return found


class ScratchEngine:
    """dockerd on unix:///run/<name>/docker.sock, its data root on folder/fs.img (size, sparse:
    it costs what is written) mounted at folder/root, on a bridge of its own (subnet: a /24's
    first three octets). up() makes it all and starts dockerd; down() removes all of it."""

    def __init__(self, folder: Path, size: str, name: str, subnet: str, outbound: bool = False):
        self.folder, self.size, self.name, self.subnet, self.outbound = folder, size, name, subnet, outbound
        self.image, self.root, self.run = folder / "fs.img", folder / "root", Path(f"/run/{name}")
        self.bridge = name[-15:]   # a link name has at most 15 characters
        self.host = f"unix://{self.run / 'docker.sock'}"
        self.log = folder / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        self.project: Path | None = None   # the family a test builds on it
        # (table, chain, rule): its subnet masqueraded on the way out, its bridge forwarded both ways.
        self._rules = [("nat", "POSTROUTING", ["-s", f"{subnet}.0/24", "!", "-o", self.bridge, "-j", "MASQUERADE"]),
                       ("filter", "FORWARD", ["-i", self.bridge, "-j", "ACCEPT"]),
                       ("filter", "FORWARD", ["-o", self.bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                                              "-j", "ACCEPT"])]

    @property
    def env(self) -> dict[str, str]:
        """dlenv's environment for this engine: its socket, and its data root (DLENV_STATE)."""
        return {"DOCKER_HOST": self.host, "DLENV_STATE": str(self.root)}

    def up(self) -> ScratchEngine:
        self.root.mkdir(parents=True, exist_ok=True)
        self.run.mkdir(parents=True, exist_ok=True)
        config = self.folder / "daemon.json"
        config.write_text(json.dumps({"features": {"containerd-snapshotter": True}, "bridge": self.bridge,
                                      "iptables": False, "ip6tables": False}))
        steps = [["truncate", "-s", self.size, str(self.image)], ["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)],
                 ["mount", "-o", "loop", str(self.image), str(self.root)],
                 ["ip", "link", "add", "name", self.bridge, "type", "bridge"],
                 ["ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge], ["ip", "link", "set", self.bridge, "up"]]
        if self.outbound:
            steps += [["iptables", "-t", table, "-I", chain, *rule] for table, chain, rule in self._rules]
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        self.argv = ["dockerd", "--config-file", str(config), "--data-root", str(self.root / "docker"),
                     "--exec-root", str(self.run / "exec"), "--host", self.host,
                     "--pidfile", str(self.run / "dockerd.pid")]
        self.start()
        return self

    def start(self) -> None:
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("the scratch engine to answer", lambda: engine.answers(self.host), timeout=60, every=0.5)

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """dockerd ended by its pid (SIGKILL: as a crash would end it)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signum)
            self.proc.wait(60)

    def docker(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, DOCKER_HOST=self.host))

    def down(self) -> None:
        self.kill(signal.SIGTERM)
        for pid in processes_with(str(self.run)):   # a containerd a killed dockerd left behind
            os.kill(pid, signal.SIGKILL)
        # Network namespaces of a killed dockerd's sandboxes are still mounted under its exec root.
        left = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                if line.split()[1].startswith(f"{self.run}/")]
        for point in [*left, str(self.root)]:
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.run, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        if self.outbound:
            for table, chain, rule in self._rules:
                subprocess.run(["iptables", "-t", table, "-D", chain, *rule], capture_output=True)
        self.image.unlink(missing_ok=True)
