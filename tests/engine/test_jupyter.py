"""The jupyter recipe against the real engine and registry, and in a real browser.

The smallest family with it: CUDA 13.0.2 base on bootstrapped Debian 12 with [python, jupyter],
and [ssh], whose entrypoint shares the DLENV_UID user script (images/common/user.sh). It is built
with a marker certificate in the build's CA bundle, smoke-tested, scanned for anything secret, and
then a container started from the file `dlenv compose --jupyter` wrote is opened in Debian's
chromium: without the token JupyterLab asks for one, with it the launcher shows.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import tomli

from dlenv import engine
from helpers import (
    REGISTRY,
    REPO,
    RUN,
    TINY,
    dlenv,
    layer_files,
    layers_and_configs,
    leaks,
    marker_bundle,
    new_project,
    read_files,
    write,
)

REPOSITORY = f"dlenv-test/jupyter-{RUN}"
BUILD_ID = "jupyter"
MATRIX = TINY.format(registry=REGISTRY, repository=REPOSITORY, stacks="  - [python, jupyter]\n  - [ssh]")
JUPYTER, SSH = "13.0.2-base-debian12-py-jupyter", "13.0.2-base-debian12-ssh"
UID, GID = 4242, 4243
# Where Jupyter reads its configuration (`jupyter --paths` in the image: the venv's, the
# system's, a home's) and the files of a server's state: none may carry a token or a password.
# (Packages' own test files, e.g. notebook_shim/tests/confs/, are read by nothing.)
JUPYTER_CONFIG = re.compile(r"^((opt/venv|usr/local)/)?etc/jupyter/|(^|/)\.jupyter/")
JUPYTER_STATE = re.compile(r"(^|/)(jupyter_cookie_secret|share/jupyter/runtime/.+)$")


def ref(variant: str) -> str:
    return f"{REGISTRY}/{REPOSITORY}:{variant}-{BUILD_ID}"


@pytest.fixture(scope="module")
def built(docker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jupyter")
    project = new_project(tmp / "project", MATRIX)
    bundle, marker = marker_bundle(tmp)
    out = dlenv(project, "build", "--build-id", BUILD_ID, "--no-promote", "--workdir", str(tmp / "work"),
                env={"SSL_CERT_FILE": str(bundle)})
    assert out.returncode == 0, out.stderr[-4000:]
    yield {"project": project, "tmp": tmp, "bundle": bundle, "marker": marker}
    # The registry keeps the images; the engine's store (shared, and disk is short) does not.
    for image in docker.image.list(repository_or_tag=f"{REGISTRY}/{REPOSITORY}"):
        docker.image.remove(image, force=True)


def test_the_smoke_checks_pass(built):
    out = dlenv(built["project"], "smoke", "--build-id", BUILD_ID, "--json", str(built["tmp"] / "smoke.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    verdicts = json.loads((built["tmp"] / "smoke.json").read_text())["verdicts"]
    assert not [v for v in verdicts if v["status"] == "failed"], verdicts
    recipe = tomli.loads((REPO / "recipes/jupyter.toml").read_text())
    passed = {v["check"] for v in verdicts if v["variant"] == JUPYTER and v["status"] == "passed"}
    assert {c["name"] for c in recipe["checks"]} <= passed
    print("\n" + "\n".join(v["output"].splitlines()[-1] for v in verdicts
                           if v["origin"] == "recipes/jupyter.toml"))


def test_no_token_password_server_state_or_build_ca_in_any_layer_or_config(built):
    configs: list[str] = []
    scanned = 0
    for what, data in layers_and_configs(REPOSITORY, [f"{v}-{BUILD_ID}" for v in (JUPYTER, SSH)]):
        scanned += 1
        assert not leaks(what, data, built["marker"], built["bundle"])
        if what == f"config {JUPYTER}-{BUILD_ID}":
            config = json.loads(data)
            env = [e.split("=", 1)[0] for e in config["config"].get("Env", [])]
            assert not [e for e in env if re.search("TOKEN|PASSWORD", e)], env
            start = (config["config"].get("Entrypoint") or []) + (config["config"].get("Cmd") or [])
            assert start and not [a for a in start if re.search("token|password", a, re.I)], start
            steps = [h.get("created_by", "") for h in config["history"]]
            assert not [s for s in steps if re.search("token|password", s, re.I)], "a token in the history"
        elif what.startswith("layer"):
            files = layer_files(data)
            with_state = [n for n in files if JUPYTER_STATE.search(n)]
            assert not with_state, f"a Jupyter server's state in {what}: {with_state}"
            for name, text in read_files(data, [n for n in files if JUPYTER_CONFIG.search(n)]).items():
                configs.append(name)
                assert not re.search(b"token|password", text, re.I), f"{name} in {what}: {text[:300]!r}"
    assert scanned > 4
    # The scan read the image's own server settings (it cannot pass by looking nowhere).
    assert "opt/venv/etc/jupyter/jupyter_server_config.json" in configs, configs


def test_the_ssh_image_makes_the_dlenv_uid_user_with_the_shared_script(docker, built):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7 user@host"
    out = docker.run(ref(SSH), ["sh", "-c", "id -u; id -g; id -Gn; echo $HOME; cat $HOME/.ssh/authorized_keys"],
                     remove=True, envs={"DLENV_UID": str(UID), "DLENV_GID": str(GID), "SSH_AUTHORIZED_KEYS": key})
    uid, gid, groups, home, keys = out.strip().splitlines()
    # A command other than sshd runs as that user, who holds the login keys and may write /opt/venv.
    assert (uid, gid, home, keys) == (str(UID), str(GID), "/home/dev", key)
    assert "users" in groups.split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(port: int, token: str) -> int | None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def test_jupyterlab_from_the_compose_file_in_a_browser(docker, built, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    code = tmp_path / "code"
    write(code / "hello.ipynb", json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    os.chown(code, UID, GID)   # the host user's project folder
    port, name, token = free_port(), f"dlenv-jupyter-{RUN}", secrets.token_hex(24)
    compose_file = tmp_path / "docker-compose.yaml"
    out = dlenv(built["project"], "compose", ref(JUPYTER), "--jupyter", "--output", str(compose_file), "--name", name,
                "--host-ip", "127.0.0.1", "--web-port", str(port), "--gpus", "none", "--code", str(code),
                "--models", str(tmp_path / "models"), "--cache", str(tmp_path / "cache"),
                "--uid", str(UID), "--gid", str(GID), env={"JUPYTER_TOKEN": token})
    assert out.returncode == 0, out.stderr
    url = f"http://127.0.0.1:{port}/lab"
    assert f"JupyterLab: open {url}?token={token}" in " ".join(out.stderr.split())
    assert token not in compose_file.read_text()            # taken from the environment of `up`
    env = dict(os.environ, DOCKER_HOST=engine.find()[0], JUPYTER_TOKEN=token)
    compose = ["docker", "compose", "-f", str(compose_file)]
    up = subprocess.run([*compose, "up", "-d"], capture_output=True, text=True, env=env)
    assert up.returncode == 0, up.stderr
    try:
        deadline = time.monotonic() + 120
        while status(port, token) != 200:
            assert time.monotonic() < deadline, subprocess.run([*compose, "logs"], capture_output=True, text=True,
                                                               env=env).stdout[-3000:]
            time.sleep(1)
        # Without the token: the login page, asking for it.
        browser.delete_all_cookies()
        browser.get(url)
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "password_input"))
        assert "/login" in browser.current_url and not browser.find_elements(By.CSS_SELECTOR, ".jp-Launcher")
        # With it: JupyterLab's launcher, with the image's Python kernel, and the project's notebook.
        browser.get(f"{url}?token={token}")
        WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Launcher .jp-LauncherCard"))
        cards = [c.text for c in browser.find_elements(By.CSS_SELECTOR, ".jp-LauncherCard")]
        assert "Python 3 (ipykernel)" in [" ".join(c.split()) for c in cards], cards
        WebDriverWait(browser, 30).until(lambda d: "hello.ipynb" in d.find_element(By.CSS_SELECTOR, ".jp-DirListing").text)
        shot = tmp_path / "jupyterlab.png"
        assert browser.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG")
        print(f"\nscreenshot: {shot}")
        # The server is the host user's: what it saves in /workspace is theirs.
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/contents/made.ipynb", method="PUT",
                                     data=b'{"type": "notebook"}', headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 201
        made = code / "made.ipynb"
        assert (made.stat().st_uid, made.stat().st_gid) == (UID, GID)
        logs = subprocess.run([*compose, "logs"], capture_output=True, text=True, env=env).stdout
        assert "is running at" in logs and token not in logs
    finally:
        down = subprocess.run([*compose, "down"], capture_output=True, text=True, env=env)
    assert down.returncode == 0, down.stderr
    assert not docker.container.list(filters=[("label", f"com.docker.compose.project={name}")])
