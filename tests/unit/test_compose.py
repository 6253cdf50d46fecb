"""The compose file dlenv writes: GPUs (or none), ports, volumes, keys, mirrors, proxies and CA trust, the
user under sudo, standard output, a matrix in another folder."""

from __future__ import annotations

import os

import pytest
import yaml

from dlenv import compose
from dlenv.errors import ConfigError, DlenvError
from helpers import SMALL, write

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7 user@host"


def doc(**kw):
    return compose.document(compose.ComposeOptions(image="r.example:5000/dlenv:13.0-runtime-debian12-py-ssh",
                                                   ssh_key=KEY, **kw))


@pytest.mark.parametrize("gpus, device", [
    ("all", {"count": "all"}), ("2", {"count": 2}), ("0,2", {"device_ids": ["0", "2"]}),
    ("GPU-8a1b-77", {"device_ids": ["GPU-8a1b-77"]}),
])
def test_gpus_all_a_count_or_device_ids(gpus, device):
    reserved = doc(gpus=gpus)["services"]["dlenv"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert reserved == {"driver": "nvidia", "capabilities": ["gpu"], **device}


@pytest.mark.parametrize("gpus", ["", "0 2", "-1", "all,1"])
def test_bad_gpus_is_an_error(gpus):
    with pytest.raises(DlenvError, match="--gpus"):
        compose.gpu_reservation(gpus)


def test_one_service_without_profiles_and_gpus_none_reserves_nothing():
    # `docker compose down` stops only services of active profiles: with none, it stops them all.
    gpu, cpu = doc()["services"], doc(gpus="none")["services"]
    assert list(gpu) == list(cpu) == ["dlenv"]
    assert "profiles" not in gpu["dlenv"] and "deploy" not in cpu["dlenv"]
    assert {k: v for k, v in gpu["dlenv"].items() if k != "deploy"} == cpu["dlenv"]


def test_ports_volumes_restart_key_and_working_dir():
    service = doc(host_ip="127.0.0.1", ssh_port=2201, web_port=6006, models="/data/models", code="./src",
                  cache="/home/me/.cache", restart="always")["services"]["dlenv"]
    assert service["ports"] == ["127.0.0.1:2201:22", "127.0.0.1:6006:6006"]
    assert service["volumes"] == ["/data/models:/models", "./src:/workspace", "/home/me/.cache:/root/.cache"]
    assert service["restart"] == "always" and service["working_dir"] == "/workspace"
    assert service["environment"]["SSH_AUTHORIZED_KEYS"] == KEY
    assert service["environment"]["HF_HOME"] == "/root/.cache/huggingface"


def test_a_non_root_user_gets_the_ids_and_its_own_home():
    env = doc(uid=1000, gid=1001, sudo=True)["services"]["dlenv"]["environment"]
    assert (env["DLENV_UID"], env["DLENV_GID"], env["DLENV_SUDO"]) == ("1000", "1001", "1")
    assert doc(uid=1000)["services"]["dlenv"]["environment"]["DLENV_GID"] == "1000"
    assert doc(uid=1000)["services"]["dlenv"]["volumes"][2].endswith(":/home/dev/.cache")
    assert "DLENV_UID" not in doc()["services"]["dlenv"]["environment"]


def test_mirrors_are_written_and_proxies_are_taken_from_the_environment_at_up_time():
    env = compose.run_environment("https://hf.example", "https://pypi.example/simple")
    assert env["HF_ENDPOINT"] == "https://hf.example" and env["PIP_INDEX_URL"] == "https://pypi.example/simple"
    # No proxy credentials in the file: compose fills them in from the shell that runs `up`.
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "${HTTPS_PROXY:-${https_proxy:-}}"
    assert set(compose.run_environment("", "")) == {"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
                                                    "NO_PROXY", "no_proxy"}


def test_ssh_key_is_read_and_checked(tmp_path):
    pub = tmp_path / "k.pub"
    pub.write_text(KEY + "\n")
    assert compose.find_ssh_key(str(pub)) == KEY
    private = tmp_path / "k"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(DlenvError, match="not an SSH public key"):
        compose.find_ssh_key(str(private))
    with pytest.raises(DlenvError, match="no such file"):
        compose.find_ssh_key(str(tmp_path / "missing.pub"))


def test_write_makes_the_mounted_folders_and_a_yaml_file(tmp_path):
    options = compose.ComposeOptions(image="r/x:t", ssh_key=KEY, models="./models", code="./code",
                                     cache=str(tmp_path / "cache"))
    path = compose.write(options, compose.render(options), tmp_path / "docker-compose.yaml")
    assert (tmp_path / "models").is_dir() and (tmp_path / "code").is_dir() and (tmp_path / "cache").is_dir()
    assert yaml.safe_load(path.read_text()) == compose.document(options)


@pytest.mark.parametrize("argv, field", [
    (["--gpus", "0 2"], "--gpus"),
    (["--ssh-port", "70000"], "port"),
    (["--sudo"], "--sudo/--gid"),
    (["--ssh-key", "/nonexistent/id.pub"], "--ssh-key"),
    (["--ca-bundle", "/nonexistent/ca.pem"], "--ca-bundle: ca_bundle: no such file"),
    (["--ca-bundle", "id.pub"], "--ca-bundle: ca_bundle: "),   # there, but no certificate in it
    (["--jupyter"], "--jupyter: ssh key: "),                      # JupyterLab's image starts no sshd
])
def test_bad_compose_options_exit_2_in_one_line_and_write_nothing(argv, field, tmp_path, capsys, monkeypatch):
    from dlenv.cli import main

    monkeypatch.chdir(tmp_path)
    key = tmp_path / "id.pub"
    key.write_text(KEY + "\\n")
    base = ["compose", "r.example:5000/dlenv:13.0-runtime-debian12-py-ssh", "-o", str(tmp_path / "dc.yaml"),
            "--models", str(tmp_path / "models")]
    if "--ssh-key" not in argv:
        base += ["--ssh-key", str(key)]
    assert main(base + argv) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and field in lines[0], lines
    assert not (tmp_path / "dc.yaml").exists() and not (tmp_path / "models").exists()


def test_a_bare_tag_without_a_matrix_is_one_clear_error(tmp_path, capsys, monkeypatch):
    from dlenv.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["compose", "13.0-runtime-debian12-py-ssh", "--ssh-key", "/dev/null"]) == 2
    assert "matrix.yaml: file: not found, so the bare tag" in capsys.readouterr().err


CERT = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdA==\n-----END CERTIFICATE-----\n"
# What reads a CA bundle from the environment: OpenSSL, Python's ssl and uv; pip; requests; curl; git.
CLIENTS = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")


def test_a_ca_bundle_is_mounted_read_only_and_every_client_points_at_it():
    service = doc(ca_bundle="/etc/corp/ca.pem")["services"]["dlenv"]
    mount = [v for v in service["volumes"] if v.startswith("/etc/corp/ca.pem:")]
    assert len(mount) == 1 and mount[0].endswith(":ro")
    target = mount[0].split(":")[1]
    assert {name: service["environment"].get(name) for name in CLIENTS} == dict.fromkeys(CLIENTS, target)
    plain = doc()["services"]["dlenv"]
    assert not set(CLIENTS) & set(plain["environment"]) and len(plain["volumes"]) == len(service["volumes"]) - 1


def test_the_ca_bundle_is_a_pem_file_or_the_hosts(tmp_path, monkeypatch):
    pem = tmp_path / "proxy-ca.pem"
    pem.write_text(CERT)
    monkeypatch.chdir(tmp_path)
    assert compose.trust_bundle("proxy-ca.pem") == str(pem)          # absolute: compose reads it elsewhere
    assert compose.trust_bundle("host", {"SSL_CERT_FILE": str(pem)}) == str(pem)
    assert compose.trust_bundle(None) == ""
    (tmp_path / "key.txt").write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM file"):
        compose.trust_bundle("key.txt")


def _request(**kw):
    return compose.Request(image="r/x:t", **kw)


def test_user_is_the_caller_and_under_sudo_the_user_who_ran_sudo(monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: 1234)
    monkeypatch.setattr(os, "getgid", lambda: 1235)
    assert compose.user_ids(_request(user=True), {}) == (1234, 1235)
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setattr(os, "getgid", lambda: 0)
    sudo = {"SUDO_UID": "1000", "SUDO_GID": "1001", "SUDO_USER": "me"}
    assert compose.user_ids(_request(user=True), sudo) == (1000, 1001)
    assert compose.user_ids(_request(user=True, gid=50), sudo) == (1000, 50)
    assert compose.user_ids(_request(uid=7), sudo) == (7, None)          # given ids win
    assert compose.user_ids(_request(), sudo) == (None, None)             # no --user: root
    with pytest.raises(ConfigError, match="--user: user: you are root"):
        compose.user_ids(_request(user=True), {})


def test_user_as_plain_root_exits_2_in_one_line(tmp_path, capsys, monkeypatch):
    from dlenv.cli import main

    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.delenv("SUDO_UID", raising=False)
    key = tmp_path / "id.pub"
    key.write_text(KEY)
    assert main(["compose", "r/x:t", "--user", "--ssh-key", str(key), "-o", str(tmp_path / "dc.yaml")]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and "--user" in lines[0] and "--uid" in lines[0], lines
    assert not (tmp_path / "dc.yaml").exists()


def test_output_dash_is_standard_output(tmp_path, capsys, monkeypatch):
    from dlenv.cli import main

    monkeypatch.chdir(tmp_path)
    key = tmp_path / "id.pub"
    key.write_text(KEY)
    assert main(["compose", "r/x:t", "-o", "-", "--ssh-key", str(key), "--gpus", "none"]) == 0
    written = yaml.safe_load(capsys.readouterr().out)
    assert written["services"]["dlenv"]["image"] == "r/x:t"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.pub"]   # no file named '-', no folders


def test_a_bare_tag_of_a_matrix_in_another_folder(project, tmp_path, capsys, monkeypatch):
    from dlenv.cli import main

    matrix = write(project / "matrix.yaml", SMALL)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    key = elsewhere / "id.pub"
    key.write_text(KEY)
    tag = "13.0.2-base-debian12-py"
    assert main(["compose", tag, "--matrix", str(matrix), "-o", "-", "--ssh-key", str(key)]) == 0, capsys.readouterr().err
    family = yaml.safe_load(SMALL)
    image = yaml.safe_load(capsys.readouterr().out)["services"]["dlenv"]["image"]
    assert image == f"{family['registry']}/{family['repository']}:{tag}"


def test_jupyter_is_served_on_the_web_port_with_the_token_of_compose_up_and_no_ssh():
    service = doc(jupyter=True, web_port=9999, host_ip="127.0.0.1", code="./notebooks")["services"]["dlenv"]
    assert service["ports"] == ["127.0.0.1:9999:9999"]                      # no ssh: the image runs no sshd
    env = service["environment"]
    # The token is a reference compose fills in from the shell that runs `up`, never a value.
    assert env["JUPYTER_TOKEN"] == "${JUPYTER_TOKEN:-}" and env["JUPYTER_PORT"] == "9999"
    assert "SSH_AUTHORIZED_KEYS" not in env
    assert "./notebooks:/workspace" in service["volumes"] and service["working_dir"] == "/workspace"
    assert not {"JUPYTER_TOKEN", "JUPYTER_PORT"} & set(doc()["services"]["dlenv"]["environment"])


@pytest.mark.parametrize("token", ["", "s3cr3t-t0ken"])
def test_jupyter_needs_no_ssh_key_keeps_the_token_out_of_the_file_and_prints_the_url(token, tmp_path, capsys,
                                                                                   monkeypatch):
    from dlenv.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))                 # no ~/.ssh: no key to find
    monkeypatch.setenv("JUPYTER_TOKEN", token)
    out = tmp_path / "dc.yaml"
    assert main(["compose", "r/x:t", "--jupyter", "--web-port", "8890", "--host-ip", "127.0.0.1", "-o", str(out),
                 "--models", str(tmp_path / "m"), "--code", str(tmp_path / "c"), "--cache", str(tmp_path / "k")]) == 0
    printed = " ".join(capsys.readouterr().err.split())   # the terminal may wrap long lines
    url = "http://127.0.0.1:8890/lab" + (f"?token={token}" if token else "")
    assert f"JupyterLab: open {url}" in printed, printed
    if token:
        assert token not in out.read_text()
    else:
        assert "logs dlenv` prints the URL" in printed
    assert yaml.safe_load(out.read_text())["services"]["dlenv"]["environment"]["JUPYTER_TOKEN"] == "${JUPYTER_TOKEN:-}"
