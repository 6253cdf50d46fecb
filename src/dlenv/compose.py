"""`dlenv compose TAG`: a docker-compose.yaml to work in one of the family's images, done right.

The service reserves GPUs (all, a count, device ids, or none on a host without one), publishes
ssh and a web port on chosen host ports, mounts models, the project's code and the cache (pip,
Hugging Face) from the host, restarts unless stopped, logs in with the user's SSH public key, and
passes mirrors, proxies (taken from the environment of `docker compose up`), the Hugging Face
endpoint and the CA bundle of a TLS-intercepting proxy as run-time settings, never baked into an
image. One service and no profiles: `docker compose down` stops everything `up` started.
With --jupyter the image's JupyterLab is served on the web port, its token taken from the
environment of `docker compose up` (or made by the server at start), and no ssh.

The front door is run(Request) -> the file written, or the text for `-o -`.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dlenv import config, engine, hostconf
from dlenv.errors import ConfigError, DlenvError
from dlenv.options import MISSING, opt

KEY_FILES = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")
RESTART = ("no", "always", "on-failure", "unless-stopped")
# Where the CA bundle is mounted, and the variables that point each client at it: OpenSSL,
# Python's ssl and uv read SSL_CERT_FILE; pip, requests, curl, git and Node.js (npm, Jupyter
# extensions) read their own.
CA_TARGET = "/etc/dlenv/ca-bundle.pem"
CA_VARIABLES = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
                "NODE_EXTRA_CA_CERTS")


@dataclass(frozen=True)
class Request:
    """What `dlenv compose` is asked for; each field is its command-line option."""

    image: str = opt(MISSING, "image",
                     help="a tag of the family in --matrix (e.g. 13.0-runtime-debian12-py-dev-ssh) or a full reference")
    matrix: Path = opt(Path("matrix.yaml"), "--matrix",
                       help="the family a bare tag belongs to (its folder holds the family's recipes/ and images/)")
    output: str = opt("docker-compose.yaml", "--output", "-o", help="the file to write ('-': standard output)")
    name: str = opt("dlenv", "--name", help="the compose project and service name")
    gpus: str = opt("all", "--gpus", help="all, a count (2), device ids (0,2), or none (a host without a GPU)")
    host_ip: str = opt("", "--host-ip", help="publish ports on this address only (e.g. 127.0.0.1)")
    ssh_port: int = opt(2222, "--ssh-port", help="host port for ssh (container port 22)")
    web_port: int = opt(8888, "--web-port", help="host and container port of a web service")
    models: str = opt("./models", "--models", help="host folder mounted at /models")
    code: str = opt(".", "--code", help="host folder mounted at /workspace (the working directory)")
    cache: str = opt("~/.cache", "--cache", help="host folder mounted as the user's ~/.cache (pip, Hugging Face)")
    restart: str = opt("unless-stopped", "--restart", choices=RESTART, help="when Docker restarts the container")
    ssh_key: str | None = opt(None, "--ssh-key", metavar="FILE",
                              help="public key to log in with (default: ~/.ssh/id_*.pub)")
    jupyter: bool = opt(False, "--jupyter",
                        help="the image serves JupyterLab (a -jupyter tag): on --web-port, with the token "
                             "JUPYTER_TOKEN of `docker compose up` (unset: made at start, in the log); no ssh")
    user: bool = opt(False, "--user", help="work as a non-root user with your uid/gid (under sudo: the sudoer's)")
    uid: int | None = opt(None, "--uid", help="that user's uid (implies --user)")
    gid: int | None = opt(None, "--gid", help="that user's gid (default: the uid's)")
    sudo: bool = opt(False, "--sudo", help="let that user sudo without a password")
    hf_endpoint: str = opt("", "--hf-endpoint", metavar="URL", field="mirrors.huggingface",
                           help="a Hugging Face mirror (HF_ENDPOINT; default: the family's mirrors.huggingface)")
    pip_index: str = opt("", "--pip-index", metavar="URL", field="mirrors.pypi",
                         help="a PyPI mirror for pip in the container (default: the family's mirrors.pypi)")
    ca_bundle: str | None = opt(None, "--ca-bundle", metavar="FILE",
                                help="CA certificates (PEM) the container trusts, e.g. a TLS-intercepting proxy's: "
                                     "mounted read-only, pip, uv, requests, curl, git and Python point at it; "
                                     "'host': this host's bundle")


@dataclass(frozen=True)
class ComposeOptions:
    """The service, with the user, key and CA bundle resolved."""

    image: str
    name: str = "dlenv"
    gpus: str = "all"                  # all | a count | device ids "0,2" | none
    host_ip: str = ""                  # "" publishes on every interface; 127.0.0.1 keeps it local
    ssh_port: int = 2222
    web_port: int = 8888               # host and container port of a web service (Jupyter, TensorBoard)
    models: str = "./models"
    code: str = "."
    cache: str = "~/.cache"
    restart: str = "unless-stopped"
    ssh_key: str = ""                  # public key text
    jupyter: bool = False              # serve the image's JupyterLab on web_port (images/jupyter), no ssh
    uid: int | None = None             # run as a non-root user with these ids (images/ssh)
    gid: int | None = None
    sudo: bool = False
    environment: dict[str, str] = field(default_factory=dict)   # mirrors, proxies, HF endpoint
    ca_bundle: str = ""                # absolute host path of a PEM bundle, mounted at CA_TARGET


def gpu_reservation(gpus: str) -> dict | None:
    """Compose's device reservation for `all`, a count, or a comma-separated list of device ids;
    None for `none`."""
    device: dict = {"driver": "nvidia", "capabilities": ["gpu"]}
    if gpus == "none":
        return None
    if gpus == "all":
        device["count"] = "all"
    elif re.fullmatch(r"[1-9]\d*", gpus):
        device["count"] = int(gpus)
    elif all(re.fullmatch(r"\d+|(GPU|MIG)-[0-9A-Za-z/-]+", d) for d in gpus.split(",")):
        device["device_ids"] = gpus.split(",")
    else:
        raise ConfigError("--gpus", None, "gpus",
                          f"{gpus!r}: use all, a count (2), device ids (0,2 or GPU-uuid) or none")
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


def user_ids(request: Request, environ: Mapping[str, str] | None = None) -> tuple[int | None, int | None]:
    """The uid and gid of the container's user (None, None: root). --user means whoever owns
    the files: under sudo that is the user who ran sudo, not root."""
    environ = os.environ if environ is None else environ
    if (request.sudo or request.gid is not None) and not (request.user or request.uid is not None):
        raise ConfigError("--sudo/--gid", None, "user", "they are about the non-root user: add --user or --uid")
    if request.uid is not None:
        return request.uid, request.gid
    if not request.user:
        return None, None
    if os.getuid() != 0:
        return os.getuid(), request.gid if request.gid is not None else os.getgid()
    sudo_uid, sudo_gid = environ.get("SUDO_UID", ""), environ.get("SUDO_GID", "")
    if sudo_uid.isdigit() and sudo_uid != "0":
        return int(sudo_uid), request.gid if request.gid is not None else int(sudo_gid if sudo_gid.isdigit() else sudo_uid)
    raise ConfigError("--user", None, "user", "you are root, not a user under sudo: say whose files these are "
                                              "with --uid UID --gid GID (or leave out --user to work as root)")


def trust_bundle(value: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The absolute host path of the CA bundle to mount ("" for none); 'host' is this host's."""
    if not value:
        return ""
    if value == "host":
        found = hostconf.ca_bundle(environ)
        if not found:
            raise ConfigError("--ca-bundle", None, "ca_bundle", "this host has no CA bundle that dlenv can find "
                                                                "(SSL_CERT_FILE, PIP_CERT, OpenSSL's default): give the file")
        path = found
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError("--ca-bundle", None, "ca_bundle", f"no such file: {value}")
    problem = config.pem_problem(path)
    if problem:
        raise ConfigError("--ca-bundle", None, "ca_bundle", problem)
    return str(path.absolute())


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
    env = {} if o.jupyter else {"SSH_AUTHORIZED_KEYS": o.ssh_key}
    env.update({"HF_HOME": f"{home}/.cache/huggingface", **o.environment})
    if o.jupyter:
        # The token stays a reference to the environment of `docker compose up`: never in the
        # file. Empty there, the server makes one at start and logs the URL with it.
        env.update(JUPYTER_PORT=str(o.web_port), JUPYTER_TOKEN="${JUPYTER_TOKEN:-}")
    if o.uid is not None:
        env.update(DLENV_UID=str(o.uid), DLENV_GID=str(o.gid if o.gid is not None else o.uid))
        if o.sudo:
            env["DLENV_SUDO"] = "1"
    volumes = [f"{o.models}:/models", f"{o.code}:/workspace", f"{o.cache}:{home}/.cache"]
    if o.ca_bundle:
        volumes.append(f"{o.ca_bundle}:{CA_TARGET}:ro")
        env.update(dict.fromkeys(CA_VARIABLES, CA_TARGET))
    prefix = f"{o.host_ip}:" if o.host_ip else ""
    service = {
        "image": o.image,
        "restart": o.restart,
        "ports": ([] if o.jupyter else [f"{prefix}{o.ssh_port}:22"]) + [f"{prefix}{o.web_port}:{o.web_port}"],
        "volumes": volumes,
        "working_dir": "/workspace",
        "environment": env,
        # PyTorch's DataLoader workers share tensors through /dev/shm; Docker's default is 64 MB.
        "shm_size": "8gb",
        # Images without sshd start a shell: a terminal keeps it (and the container) waiting for
        # `docker compose exec` instead of restarting it over and over.
        "stdin_open": True,
        "tty": True,
    }
    reservation = gpu_reservation(o.gpus)
    if reservation:
        service["deploy"] = reservation
    return {"name": o.name, "services": {o.name: service}}


def jupyter_url(o: ComposeOptions, token: str = "") -> str:
    """Where JupyterLab answers on this host (with the token, where one is given)."""
    host = o.host_ip if o.host_ip not in ("", "0.0.0.0") else "localhost"
    return f"http://{host}:{o.web_port}/lab" + (f"?token={token}" if token else "")


def render(o: ComposeOptions) -> str:
    header = "# Written by `dlenv compose`. Start: docker compose up -d   Stop: docker compose down\n"
    if o.jupyter:
        header += (f"# JupyterLab: {jupyter_url(o, '$JUPYTER_TOKEN')} (JUPYTER_TOKEN of `docker compose up`; "
                   f"unset, `docker compose logs {o.name}` shows the token the server made)\n")
    else:
        header += f"# Log in: ssh -p {o.ssh_port} {'dev' if o.uid is not None else 'root'}@HOST   "
    header += f"{'# Shell: ' if o.jupyter else 'or: '}docker compose exec {o.name} bash\n"
    return header + yaml.safe_dump(document(o), sort_keys=False, width=1000)


def validate(text: str, say: Callable[[str], None]) -> None:
    """`docker compose config` on the text, where an engine is at hand."""
    found = engine.find()
    if not found:
        return
    check = subprocess.run(["docker", "compose", "-f", "-", "config", "-q"], input=text, capture_output=True,
                           text=True, env=dict(os.environ, DOCKER_HOST=found[0]))
    if "is not a docker command" in check.stderr:
        say("docker compose is not installed here: the file was not validated")
    elif check.returncode != 0:
        raise DlenvError(f"docker compose rejects the file: {' '.join(check.stderr.split())[:300]}")


def write(o: ComposeOptions, text: str, path: Path) -> Path:
    """Write the rendered file, creating the host folders it mounts (Docker would make them root's)."""
    for folder in (o.models, o.code, o.cache):
        target = Path(folder).expanduser()
        (target if target.is_absolute() else path.parent / target).mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run(request: Request, say: Callable[[str], None] = print,
        environ: Mapping[str, str] | None = None) -> Path | str:
    """The compose front door: the file written (request.image is a full reference), or its text
    where the output is '-'. Bad options raise ConfigError before anything is written.
    environ: where JUPYTER_TOKEN is read, for the URL printed with --jupyter."""
    environ = os.environ if environ is None else environ
    for port in (request.ssh_port, request.web_port):
        if not 1 <= port <= 65535:
            raise ConfigError("--ssh-port/--web-port", None, "port", f"{port} is not a port number")
    if request.jupyter and request.ssh_key:
        raise ConfigError("--jupyter", None, "ssh key", "the image's command is JupyterLab, which starts no sshd: "
                                                         "leave out --ssh-key (docker compose exec gives a shell)")
    uid, gid = user_ids(request)
    o = ComposeOptions(
        image=request.image, name=request.name, gpus=request.gpus, host_ip=request.host_ip,
        ssh_port=request.ssh_port, web_port=request.web_port, models=request.models, code=request.code,
        cache=request.cache, restart=request.restart, uid=uid, gid=gid, jupyter=request.jupyter,
        ssh_key="" if request.jupyter else find_ssh_key(request.ssh_key),
        sudo=request.sudo, environment=run_environment(request.hf_endpoint, request.pip_index),
        ca_bundle=trust_bundle(request.ca_bundle))
    text = render(o)   # a bad --gpus is an error here, before anything is written
    validate(text, say)
    if request.output == "-":
        return text
    path = write(o, text, Path(request.output))
    say(f"wrote {path}: start with `docker compose -f {path} up -d`, stop with `docker compose -f {path} down`; "
        + (f"log in with `ssh -p {o.ssh_port} {'dev' if uid is not None else 'root'}@localhost`" if not o.jupyter
           else f"a shell: `docker compose -f {path} exec {o.name} bash`"))
    if o.jupyter:
        token = environ.get("JUPYTER_TOKEN", "")
        say(f"JupyterLab: open {jupyter_url(o, token)}" + (
            " (JUPYTER_TOKEN: export the same one where `docker compose up` runs)" if token else
            f" with the token the server makes at start: `docker compose -f {path} logs {o.name}` prints the URL "
            "with it (or export JUPYTER_TOKEN before `up` to choose it)"))
    return path

