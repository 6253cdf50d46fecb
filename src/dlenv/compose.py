"""`dlenv compose TAG`: a docker-compose.yaml to work in one of the family's images, done right.

The service reserves GPUs (all, a count, or device ids), publishes ssh and a web port on
chosen host ports, mounts models, the project's code and the cache (pip, Hugging Face) from
the host, restarts unless stopped, logs in with the user's SSH public key, and passes mirrors,
proxies (taken from the environment of `docker compose up`) and the Hugging Face endpoint as
run-time environment, never baked into an image.
A second service, `<name>-cpu` under the profile `cpu`, is the same without the GPU
reservation, for hosts without one (`docker compose up -d <name>-cpu`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dlenv import hostconf
from dlenv.errors import ConfigError, DlenvError

KEY_FILES = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


@dataclass(frozen=True)
class ComposeOptions:
    image: str
    name: str = "dlenv"
    gpus: str = "all"                  # all | a count | device ids "0,2"
    host_ip: str = ""                  # "" publishes on every interface; 127.0.0.1 keeps it local
    ssh_port: int = 2222
    web_port: int = 8888               # host and container port of a web service (Jupyter, TensorBoard)
    models: str = "./models"
    code: str = "."
    cache: str = "~/.cache"
    restart: str = "unless-stopped"
    ssh_key: str = ""                  # public key text
    uid: int | None = None             # run as a non-root user with these ids (images/ssh)
    gid: int | None = None
    sudo: bool = False
    environment: dict[str, str] = field(default_factory=dict)   # mirrors, proxies, HF endpoint


def gpu_reservation(gpus: str) -> dict:
    """Compose's device reservation for `all`, a count, or a comma-separated list of device ids."""
    device: dict = {"driver": "nvidia", "capabilities": ["gpu"]}
    if gpus == "all":
        device["count"] = "all"
    elif re.fullmatch(r"[1-9]\d*", gpus):
        device["count"] = int(gpus)
    elif all(re.fullmatch(r"\d+|(GPU|MIG)-[0-9A-Za-z/-]+", d) for d in gpus.split(",")):
        device["device_ids"] = gpus.split(",")
    else:
        raise ConfigError("--gpus", None, "gpus", f"{gpus!r}: use all, a count (2) or device ids (0,2 or GPU-uuid)")
    return {"resources": {"reservations": {"devices": [device]}}}


def find_ssh_key(path: str | None) -> str:
    """The public key text: from path, else the user's first ~/.ssh/id_*.pub."""
    candidates = [Path(path).expanduser()] if path else [Path.home() / ".ssh" / n for n in KEY_FILES]
    for candidate in candidates:
        if candidate.is_file():
            text = candidate.read_text().strip()
            if not re.match(r"^(ssh-|ecdsa-|sk-)\S+ \S+", text) or "PRIVATE KEY" in text:
                raise ConfigError("--ssh-key", None, "ssh key", f"{candidate} is not an SSH public key (pass the .pub file)")
            return text
    if path:
        raise ConfigError("--ssh-key", None, "ssh key", f"no such file: {path}")
    raise DlenvError("no SSH public key in ~/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub)",
                     "make one with `ssh-keygen -t ed25519`, or pass --ssh-key FILE")


def run_environment(hf_endpoint: str, pip_index: str) -> dict[str, str]:
    """Mirrors and proxies for the container. Proxies stay references to the environment of
    `docker compose up` (their credentials are not written into the file)."""
    out = {}
    for name in hostconf.PROXY_NAMES:
        out[name] = out[name.lower()] = f"${{{name}:-${{{name.lower()}:-}}}}"
    if hf_endpoint:
        out["HF_ENDPOINT"] = hf_endpoint
    if pip_index:
        out["PIP_INDEX_URL"] = pip_index
    return out


def document(o: ComposeOptions) -> dict:
    home = "/root" if o.uid is None else "/home/dev"
    env = {"SSH_AUTHORIZED_KEYS": o.ssh_key, "HF_HOME": f"{home}/.cache/huggingface", **o.environment}
    if o.uid is not None:
        env.update(DLENV_UID=str(o.uid), DLENV_GID=str(o.gid if o.gid is not None else o.uid))
        if o.sudo:
            env["DLENV_SUDO"] = "1"
    prefix = f"{o.host_ip}:" if o.host_ip else ""
    service = {
        "image": o.image,
        "restart": o.restart,
        "ports": [f"{prefix}{o.ssh_port}:22", f"{prefix}{o.web_port}:{o.web_port}"],
        "volumes": [f"{o.models}:/models", f"{o.code}:/workspace", f"{o.cache}:{home}/.cache"],
        "working_dir": "/workspace",
        "environment": env,
        # PyTorch's DataLoader workers share tensors through /dev/shm; Docker's default is 64 MB.
        "shm_size": "8gb",
    }
    return {
        "name": o.name,
        "services": {
            o.name: {**service, "deploy": gpu_reservation(o.gpus)},
            f"{o.name}-cpu": {**service, "profiles": ["cpu"]},
        },
    }


def render(o: ComposeOptions) -> str:
    header = ("# Written by `dlenv compose`. Start: docker compose up -d   (no GPU here: docker compose up -d "
              f"{o.name}-cpu)\n# Log in: ssh -p {o.ssh_port} {'dev' if o.uid is not None else 'root'}@HOST\n")
    return header + yaml.safe_dump(document(o), sort_keys=False, width=1000)


def write(o: ComposeOptions, text: str, path: Path) -> Path:
    """Write the rendered file, creating the host folders it mounts (Docker would make them root's)."""
    for folder in (o.models, o.code, o.cache):
        target = Path(folder).expanduser()
        (target if target.is_absolute() else path.parent / target).mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
