"""Against the real engine and registry: build a small family, push it, read it back, run it.

The family: Debian 12 bootstrapped with mmdebstrap; CUDA 13 from PyPI in runtime and devel; bare
and with python + ssh; runtime with python + pytorch. A second, tiny family (CUDA base) exercises failures and a registry login.
The engine and the registry are the ones dlenv starts itself where none is given.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from netserver import MirrorProxy

from dlenv import buildcache, engine, hostconf, merge, registry
from helpers import REGISTRY, REPO, RUN, TINY, dlenv, layers_and_configs, leaks, marker_bundle, new_project, sh, write

BUILD_ID = "test-" + time.strftime("%Y%m%d")
FAMILY_REPO = f"dlenv-test/family-{RUN}"
TINY_REPO = f"dlenv-test/tiny-{RUN}"

FAMILY = (REPO / "tests/family.yaml").read_text().replace("repository: dlenv-test/family",
                                                                    f"repository: {FAMILY_REPO}")
VARIANTS = ["13.0.2-runtime-debian12", "13.0.2-runtime-debian12-py-ssh",
            "13.0.2-devel-debian12", "13.0.2-devel-debian12-py-ssh", "13.0.2-runtime-debian12-py-torch"]



@pytest.fixture(scope="session")
def family(docker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("family")
    project = new_project(tmp / "project", FAMILY)
    bundle, marker = marker_bundle(tmp)
    started = time.monotonic()
    out = dlenv(project, "build", "--build-id", BUILD_ID, "--metadata", str(tmp / "first.json"),
                "--workdir", str(tmp / "work1"), env={"SSL_CERT_FILE": str(bundle)})
    seconds = time.monotonic() - started
    assert out.returncode == 0, out.stderr[-4000:]
    results = {r["variant"]: r for r in json.loads((tmp / "first.json").read_text())["variants"]}
    return {"project": project, "tmp": tmp, "results": results, "seconds": seconds, "stderr": out.stderr,
            "bundle": bundle, "marker": marker}


def ref(variant: str) -> str:
    return f"{REGISTRY}/{FAMILY_REPO}:{variant}-{BUILD_ID}"


def ssh(key: Path, port: int | str, login: str, command: str, wait: float = 0) -> subprocess.CompletedProcess:
    """Run command over ssh on loopback with key; retry for up to `wait` seconds while sshd starts."""
    deadline = time.monotonic() + wait
    while True:
        out = subprocess.run(["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
                              "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", f"{login}@127.0.0.1",
                              command], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 or time.monotonic() > deadline:
            return out
        time.sleep(1)


def test_every_variant_built_and_pushed_with_all_its_tags(family):
    results = family["results"]
    assert sorted(results) == sorted(VARIANTS)
    pushed = registry.tags(REGISTRY, FAMILY_REPO)
    for variant in VARIANTS:
        r = results[variant]
        assert r["status"] == "built"
        assert r["digest"].startswith("sha256:")
        assert r["size"] and r["size"] > 1_000_000
        expected = {f"{variant}-{BUILD_ID}", variant, variant.replace("13.0.2", "13.0", 1)}
        # The build pushed the immutable tag; the floating ones were moved after smoke passed.
        assert [t.rsplit(":", 1)[1] for t in r["tags"]] == [f"{variant}-{BUILD_ID}"]
        for tag in expected:
            assert tag in pushed
            _, digest = registry.manifest(REGISTRY, FAMILY_REPO, tag)
            assert digest == r["digest"], tag
    # The summary table was printed for people.
    assert "13.0.2-devel-debian12-py-ssh" in family["stderr"] and "built" in family["stderr"]


def test_labels_and_annotations(family):
    manifest = registry.image_manifest(REGISTRY, FAMILY_REPO, f"13.0.2-devel-debian12-py-ssh-{BUILD_ID}")
    assert manifest["annotations"]["org.opencontainers.image.version"] == f"13.0.2-devel-debian12-py-ssh-{BUILD_ID}"
    config = json.loads(registry.blob(REGISTRY, FAMILY_REPO, manifest["config"]["digest"]))
    labels = config["config"]["Labels"]
    assert labels["io.dlenv.cuda"] == "13.0.2"
    assert labels["io.dlenv.flavor"] == "devel"
    assert labels["io.dlenv.recipes"] == "python,ssh"
    head = subprocess.run(["git", "-C", str(family["project"]), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == head
    assert labels["org.opencontainers.image.created"] == "2026-01-02T03:04:05Z"
    env = dict(e.split("=", 1) for e in config["config"]["Env"])
    assert env["CUDA_VERSION"] == "13.0.2"
    assert env["NVIDIA_REQUIRE_CUDA"].startswith("cuda>=13.0")
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"]
    assert env["TZ"] and env["LANG"]


def test_cuda_runtime_resolves_in_every_variant(docker, family):
    for variant in VARIANTS:
        out = sh(docker, ref(variant), "ldconfig -p | grep -E 'libcudart.so.13|libcublas.so.13'")
        assert "libcudart.so.13" in out and "libcublas.so.13" in out, variant


def test_runtime_libraries_have_no_missing_dependencies(docker, family):
    # libcuda.so.1 is the driver: the container toolkit injects it at run time.
    out = sh(docker, ref("13.0.2-runtime-debian12"),
             "for f in /usr/local/cuda/lib64/*.so*; do ldd $f | grep 'not found' | grep -v libcuda.so.1 "
             "| sed \"s|^|$f: |\"; done; echo checked")
    assert out.strip() == "checked", out


def test_devel_has_a_working_nvcc(docker, family):
    image = ref("13.0.2-devel-debian12")
    assert "release 13.0" in sh(docker, image, "nvcc --version")
    program = ("__global__ void add(int *x) { x[threadIdx.x] += 1; }\n"
               "int main() { int *d; cudaMalloc(&d, 64); add<<<1, 16>>>(d); return cudaDeviceSynchronize() == 0 ? 0 : 1; }\n")
    out = sh(docker, image, f"printf '%s' '{program}' > /tmp/k.cu && nvcc -o /tmp/k /tmp/k.cu && ls -l /tmp/k && echo ok")
    assert out.strip().endswith("ok")
    # PyPI has no nvcc for the runtime flavor.
    with pytest.raises(Exception):
        sh(docker, ref("13.0.2-runtime-debian12"), "command -v nvcc")


def test_python_and_uv_work(docker, family):
    out = sh(docker, ref("13.0.2-runtime-debian12-py-ssh"),
             "python --version && uv --version && command -v python && pip --version && echo $VIRTUAL_ENV")
    assert "Python 3" in out and "uv " in out and "/opt/venv/bin/python" in out


def test_sshd_has_a_valid_config_no_host_keys_and_no_password(docker, family):
    image = ref("13.0.2-devel-debian12-py-ssh")
    assert sh(docker, image, "ls /etc/ssh/ssh_host_* 2>/dev/null | wc -l").strip() == "0"
    # What the entrypoint does at start (host key, privilege separation dir), then sshd's own check.
    out = sh(docker, image, "ssh-keygen -q -t ed25519 -N '' -f /tmp/hk && mkdir -p /run/sshd && /usr/sbin/sshd -t -h /tmp/hk && "
                            "/usr/sbin/sshd -T -h /tmp/hk | grep -iE '^(permitrootlogin|passwordauthentication) '")
    assert "permitrootlogin without-password" in out or "permitrootlogin prohibit-password" in out
    assert "passwordauthentication no" in out
    shadow = sh(docker, image, "getent shadow root | cut -d: -f2")
    assert shadow.strip() and shadow.strip()[0] in "*!", f"root can log in with a password: {shadow!r}"


def test_ssh_login_with_a_key_given_at_run_time(docker, family, tmp_path):
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    container = docker.run(ref("13.0.2-runtime-debian12-py-ssh"), detach=True, remove=True,
                           publish=[("127.0.0.1:0", 22)], envs={"SSH_AUTHORIZED_KEYS": (tmp_path / "id.pub").read_text()})
    try:
        port = docker.container.inspect(container).network_settings.ports["22/tcp"][0]["HostPort"]
        out = ssh(key, port, "root", "python --version", wait=30)
        assert out.returncode == 0, out.stderr
        assert "Python 3" in out.stdout
        # Host keys were made at first start, in the container, not in the image.
        assert "ssh_host_ed25519_key" in docker.execute(container, ["ls", "/etc/ssh"])
    finally:
        docker.container.stop(container)


def _blob_count() -> int:
    """The blobs in dlenv's own registry, where the configuration dlenv gave it stores them."""
    config = yaml.safe_load((engine.state_dir() / "registry/config.yml").read_text())
    blobs = Path(config["storage"]["filesystem"]["rootdirectory"]) / "docker/registry/v2/blobs"
    return sum(1 for _ in blobs.rglob("data"))


def test_rebuild_with_nothing_changed_builds_and_pushes_nothing(family):
    tmp = family["tmp"]
    blobs_before = _blob_count()
    started = time.monotonic()
    out = dlenv(family["project"], "build", "--build-id", BUILD_ID, "--metadata", str(tmp / "second.json"),
                "--workdir", str(tmp / "work2"), env={"SSL_CERT_FILE": str(family["bundle"])})
    seconds = time.monotonic() - started
    assert out.returncode == 0, out.stderr[-3000:]
    second = {r["variant"]: r for r in json.loads((tmp / "second.json").read_text())["variants"]}
    for variant in VARIANTS:
        assert second[variant]["digest"] == family["results"][variant]["digest"], variant
    # The registry holds every immutable tag of this build id: nothing is baked, exported or pushed.
    assert all(second[v]["error"] == "already pushed: not rebuilt" for v in VARIANTS), second
    log = tmp / "work2/build.log"
    assert not log.exists() or "### bake" not in log.read_text()
    assert _blob_count() == blobs_before
    # Nothing is tested again: every variant's digest passed these very checks in the first run.
    first_smoke = json.loads((tmp / "first.json").read_text())["smoke"]
    second_smoke = json.loads((tmp / "second.json").read_text())["smoke"]
    assert not any(v.get("proven") for v in first_smoke)
    assert second_smoke and all(v.get("proven") for v in second_smoke)
    assert {(v["variant"], v["check"], v["status"]) for v in second_smoke} == \
        {(v["variant"], v["check"], v["status"]) for v in first_smoke}
    # --retest runs them again.
    one = VARIANTS[0]
    out = dlenv(family["project"], "smoke", "--build-id", BUILD_ID, "--select", one, "--retest",
                "--json", str(tmp / "retest.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    retest = json.loads((tmp / "retest.json").read_text())["verdicts"]
    assert retest and not any(v.get("proven") for v in retest)
    print(f"\ncold build {family['seconds']:.0f}s, no-op rebuild {seconds:.0f}s")


def test_torch_reuses_the_cuda_wheels_of_the_image(docker, family):
    out = sh(docker, ref("13.0.2-runtime-debian12-py-torch"),
             "pip show nvidia-cublas nvidia-nccl-cu13 torch | grep -E '^(Name|Version|Location):'")
    found = {}
    for block in out.split("Name: ")[1:]:
        fields = dict(line.split(": ", 1) for line in ("Name: " + block).strip().splitlines())
        found[fields["Name"]] = fields
    # The CUDA wheels torch pins are the image's own (no second copy in the venv).
    assert found["nvidia-cublas"]["Location"] == "/usr/local/cuda/python"
    assert found["nvidia-nccl-cu13"]["Location"] == "/usr/local/cuda/python"
    assert found["torch"]["Location"].startswith("/opt/venv/") and found["torch"]["Version"] == "2.11.0"


def test_no_secret_key_cache_or_package_list_in_any_layer_config_or_history(family):
    scanned = 0
    for what, data in layers_and_configs(FAMILY_REPO, [f"{v}-{BUILD_ID}" for v in VARIANTS]):
        scanned += 1
        assert not leaks(what, data, family["marker"], family["bundle"])
    assert scanned > 4


@pytest.fixture(scope="session")
def auth_registry(docker, tmp_path_factory):
    """A second registry on loopback that wants a login (htpasswd)."""
    tmp = tmp_path_factory.mktemp("auth")
    password = "pw-" + secrets.token_hex(12)
    # distribution's htpasswd auth wants bcrypt hashes (apache2-utils' htpasswd -B).
    htpasswd = tmp / "htpasswd"
    subprocess.run(["htpasswd", "-Bbc", str(htpasswd), "tester", password], check=True, capture_output=True)
    config = write(tmp / "config.yml", f"""
        version: 0.1
        log: {{level: warn}}
        storage: {{filesystem: {{rootdirectory: {tmp}/data}}}}
        http: {{addr: 127.0.0.1:5001}}
        auth: {{htpasswd: {{realm: dlenv-test, path: {htpasswd}}}}}
    """)
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not engine.registry_answers("127.0.0.1:5001", 1):
            assert time.monotonic() < deadline, "the auth registry did not start"
            time.sleep(0.3)
        docker_config = tmp / "docker-config"
        docker_config.mkdir()
        login = subprocess.run(["docker", "--config", str(docker_config), "login", "-u", "tester", "--password-stdin",
                                "127.0.0.1:5001"], input=password, capture_output=True, text=True)
        assert login.returncode == 0, login.stderr
        yield {"password": password, "docker_config": docker_config}
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_registry_password_used_to_push_is_in_no_image(auth_registry, tmp_path):
    matrix = TINY.format(registry="127.0.0.1:5001", repository=TINY_REPO, stacks="  - [python]")
    project = new_project(tmp_path / "project", matrix)
    env = {"DOCKER_CONFIG": str(auth_registry["docker_config"])}
    out = dlenv(project, "build", "--build-id", BUILD_ID, "--workdir", str(tmp_path / "w"), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    password = auth_registry["password"].encode()
    token = base64.b64encode(b"tester:" + password)
    user = ("127.0.0.1:5001", ("tester", auth_registry["password"]))
    tags = [f"13.0.2-base-debian12-py-{BUILD_ID}"]
    found = 0
    for what, data in layers_and_configs(TINY_REPO, tags, user=user):
        found += 1
        assert password not in data and token not in data, f"the registry password leaked into {what}"
    # The config and every layer were read (the loop above cannot pass by reading nothing).
    layers = registry.image_manifest(user[0], TINY_REPO, tags[0], user=user[1])["layers"]
    assert found >= 1 + len({layer["digest"] for layer in layers})   # an empty layer may be there twice
    # And without the login, the registry refuses: the password really was needed.
    with pytest.raises(Exception):
        registry.tags("127.0.0.1:5001", TINY_REPO, user=("tester", "wrong"))


def test_a_prune_removes_the_build_cache_records_it_names_and_no_other(docker, tmp_path):
    made = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "file").write_text(f"{name} {secrets.token_hex(8)}\n")   # a record of its own each run
        (folder / "Dockerfile").write_text("FROM scratch\nCOPY file /file\n")
        before = set(buildcache.records())
        out = subprocess.run(["docker", "buildx", "build", "--output", "type=cacheonly", str(folder)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        made.append({i for i, r in buildcache.records().items() if i not in before and r.kind == "regular"})
    assert made[0] and made[1] and not made[0] & made[1]
    buildcache.prune(made[0])
    left = set(buildcache.records())
    assert not made[0] & left
    assert made[1] <= left
    buildcache.prune(made[1])


def test_a_failing_node_fails_its_variants_and_the_rest_still_build(docker, tmp_path):
    stacks = "  - []\n  - [python]\n  - [broken]\n  - [broken, python]"
    matrix = TINY.format(registry=REGISTRY, repository=TINY_REPO, stacks=stacks)
    project = new_project(tmp_path / "project", matrix,
                          images={"broken": "FROM base\nRUN echo 'about to fail: dlenv-broken-marker' && exit 3\n"},
                          recipes={"broken.toml": 'description = "fails on purpose"\ndockerfile = "images/broken"\n'
                                                  'tag = "broken"\n'})
    out = dlenv(project, "build", "--build-id", BUILD_ID, "--metadata", str(tmp_path / "m.json"),
                "--workdir", str(tmp_path / "w"))
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    results = {r["variant"]: r for r in json.loads((tmp_path / "m.json").read_text())["variants"]}
    assert results["13.0.2-base-debian12"]["status"] == "built"
    assert results["13.0.2-base-debian12-py"]["status"] == "built"
    assert results["13.0.2-base-debian12-broken"]["status"] == "failed"
    assert "exit code: 3" in results["13.0.2-base-debian12-broken"]["error"]
    assert "dlenv-broken-marker" in results["13.0.2-base-debian12-broken"]["error"]
    assert results["13.0.2-base-debian12-broken-py"]["status"] == "not attempted"
    assert "13_0_2-base-debian12-broken" in results["13.0.2-base-debian12-broken-py"]["error"]
    pushed = registry.tags(REGISTRY, TINY_REPO)
    assert f"13.0.2-base-debian12-py-{BUILD_ID}" in pushed
    assert not any("broken" in t for t in pushed)


def test_unreachable_rows_are_skipped_with_the_fix_or_fail_with_strict(docker, tmp_path):
    matrix = TINY.format(registry=REGISTRY, repository=TINY_REPO, stacks="  - []").replace(
        "  debian12: {source: bootstrap, suite: bookworm}\n",
        "  debian12: {source: bootstrap, suite: bookworm}\n  farawayos: {source: image, image: \"dlenv.invalid/os:1\"}\n")
    project = new_project(tmp_path / "project", matrix)
    before = registry.tags(REGISTRY, TINY_REPO)
    strict = dlenv(project, "build", "--strict", "--build-id", "strict-check", "--workdir", str(tmp_path / "w1"))
    assert strict.returncode == 1
    assert "dlenv: error: 1 variants have unreachable sources, e.g. 13.0.2-base-farawayos" in strict.stderr
    assert "mirrors.registry" in strict.stderr and "Traceback" not in strict.stderr
    assert registry.tags(REGISTRY, TINY_REPO) == before, "--strict built or pushed something"
    default = dlenv(project, "build", "--build-id", "strict-check", "--metadata", str(tmp_path / "m.json"),
                    "--workdir", str(tmp_path / "w2"))
    assert default.returncode == 0, default.stderr[-2000:]
    assert "skipping 1 variants: image dlenv.invalid/os:1" in default.stderr
    results = {r["variant"]: r["status"] for r in json.loads((tmp_path / "m.json").read_text())["variants"]}
    assert results == {"13.0.2-base-debian12": "built", "13.0.2-base-farawayos": "skipped"}


def test_smoke_on_a_cpu_host_passes_what_it_can_and_skips_gpu_checks(family, tmp_path):
    out = dlenv(family["project"], "smoke", "--build-id", BUILD_ID, "--junit", str(tmp_path / "smoke.xml"),
                "--json", str(tmp_path / "smoke.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    verdicts = json.loads((tmp_path / "smoke.json").read_text())["verdicts"]
    by_variant = {}
    for v in verdicts:
        by_variant.setdefault(v["variant"], []).append(v)
    assert sorted(by_variant) == sorted(VARIANTS)
    for variant, mine in by_variant.items():
        for v in mine:
            # Without a GPU, exactly the GPU checks are skipped, with the reason; nothing GPU passes.
            assert v["status"] == ("skipped" if v["gpu"] else "passed"), (variant, v)
            if v["gpu"]:
                assert "no GPU" in v["output"]
    devel = {v["check"] for v in by_variant["13.0.2-devel-debian12-py-ssh"]}
    assert {"nvcc compiles and links a kernel", "sshd accepts its configuration: keys only, no passwords",
            "python, pip and uv run from the virtual environment", "no account has a usable password"} <= devel
    # What compiles: a C extension builds where a compiler is (devel's g++), only Python.h is
    # checked where none is; torch.compile builds C++ on the CPU; the shipped-twice check names
    # the copies it allowed.
    def output(variant, check):
        return next(v["output"] for v in by_variant[variant] if v["check"].startswith(check))
    assert "and imported: /tmp/dlenv-ext/" in output("13.0.2-devel-debian12-py-ssh", "Python.h is there")
    assert "no C compiler in this image" in output("13.0.2-runtime-debian12-py-ssh", "Python.h is there")
    assert "modules import" in output("13.0.2-runtime-debian12-py-ssh", "the standard library is whole")
    torch = "13.0.2-runtime-debian12-py-torch"
    assert "Inductor C++ with /usr/bin/g++" in output(torch, "torch.compile runs a function on the CPU")
    assert "no nvcc in this image" in output(torch, "where nvcc is (devel), a CUDA extension builds")
    assert "torchvision.libs: libcudart, libnvjpeg" in output(torch, "CUDA is not shipped twice")
    assert "<skipped" in (tmp_path / "smoke.xml").read_text()
    # --require-gpu turns the missing GPU into a failure.
    required = dlenv(family["project"], "smoke", "--build-id", BUILD_ID, "--require-gpu",
                     "--select", "13.0.2-runtime-debian12")
    assert required.returncode == 1 and "--require-gpu: no GPU" in required.stderr


def test_a_failing_check_fails_smoke(family, tmp_path):
    project = family["project"]
    recipe = project / "recipes/python.toml"
    original = recipe.read_text()
    recipe.write_text(original + '\n[[checks]]\nname = "fails on purpose"\nrun = "echo broken-on-purpose; exit 4"\n')
    try:
        out = dlenv(project, "smoke", "--build-id", BUILD_ID, "--select", "13.0.2-runtime-debian12-py-ssh",
                    "--json", str(tmp_path / "s.json"))
    finally:
        recipe.write_text(original)
    assert out.returncode == 1
    failed = [v for v in json.loads((tmp_path / "s.json").read_text())["verdicts"] if v["status"] == "failed"]
    assert [v["check"] for v in failed] == ["fails on purpose"]
    assert "exit 4, expected 0" in failed[0]["output"] and "broken-on-purpose" in failed[0]["output"]


def test_floating_tags_move_only_to_digests_that_passed_smoke(docker, tmp_path):
    repo = f"{TINY_REPO}-promote"
    project = new_project(tmp_path / "project", TINY.format(registry=REGISTRY, repository=repo, stacks="  - [python]"))
    variant, floating = "13.0.2-base-debian12-py", ("13.0.2-base-debian12-py", "13.0-base-debian12-py")
    first = dlenv(project, "build", "--build-id", "promote-1", "--workdir", str(tmp_path / "w1"))
    assert first.returncode == 0, first.stderr[-3000:]
    _, passed = registry.manifest(REGISTRY, repo, f"{variant}-promote-1")
    for tag in floating:
        assert registry.manifest(REGISTRY, repo, tag)[1] == passed
    # A new build (its own digest: the version label names the build) whose checks fail.
    recipe = project / "recipes/python.toml"
    recipe.write_text(recipe.read_text() + '\n[[checks]]\nname = "fails on purpose"\nrun = "exit 7"\n')
    second = dlenv(project, "build", "--build-id", "promote-2", "--workdir", str(tmp_path / "w2"),
                   "--metadata", str(tmp_path / "m2.json"))
    assert second.returncode == 1
    assert "not promoted" in second.stderr and "failed its smoke checks" in second.stderr
    _, failed = registry.manifest(REGISTRY, repo, f"{variant}-promote-2")
    assert failed and failed != passed
    for tag in floating:
        assert registry.manifest(REGISTRY, repo, tag)[1] == passed, f"{tag} moved to a build that failed"
    promotions = json.loads((tmp_path / "m2.json").read_text())["promotions"]
    assert [(p["variant"], p["promoted"]) for p in promotions] == [(variant, False)]
    # --no-promote pushes the immutable tag only.
    recipe.write_text(recipe.read_text().replace("exit 7", "exit 0"))
    third = dlenv(project, "build", "--build-id", "promote-3", "--no-promote", "--workdir", str(tmp_path / "w3"))
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"{variant}-promote-3" in registry.tags(REGISTRY, repo)
    assert registry.manifest(REGISTRY, repo, floating[0])[1] == passed
    # The release pipeline's split: smoke in one job writes JSON, promote in a later one reads it.
    results = tmp_path / "s3.json"
    smoke = dlenv(project, "smoke", "--build-id", "promote-3", "--json", str(results))
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    _, third_digest = registry.manifest(REGISTRY, repo, f"{variant}-promote-3")
    assert json.loads(results.read_text())["digests"] == {variant: third_digest}
    # Results for another digest than the one the immutable tag names now are refused.
    stale = json.loads(results.read_text())
    stale["digests"][variant] = passed
    write(tmp_path / "stale.json", json.dumps(stale))
    refused = dlenv(project, "promote", "--build-id", "promote-3", str(tmp_path / "stale.json"))
    assert refused.returncode == 1 and "checks ran on" in refused.stdout + refused.stderr
    # A release that requires GPU results does not promote what was only tested on a CPU.
    cpu_only = dlenv(project, "promote", "--build-id", "promote-3", "--require-gpu", str(results))
    assert cpu_only.returncode == 1 and "was skipped in every result (--require-gpu)" in cpu_only.stdout + cpu_only.stderr
    assert registry.manifest(REGISTRY, repo, floating[0])[1] == passed
    promoted = dlenv(project, "promote", "--build-id", "promote-3", str(results), "--json", str(tmp_path / "p.json"))
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    for tag in floating:
        assert registry.manifest(REGISTRY, repo, tag)[1] == third_digest
    assert json.loads((tmp_path / "p.json").read_text())["promotions"][0]["promoted"] is True


def test_compose_up_ssh_in_as_the_host_user_see_the_volumes_and_down(docker, family, tmp_path):
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "code").mkdir()
    (tmp_path / "code/train.py").write_text("print('hello')\n")
    os.chown(tmp_path / "code", 4242, 4243)   # the host user's project folder
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        ssh_port, web_port = a.getsockname()[1], b.getsockname()[1]
    name = f"dlenv-test-{RUN}"
    compose_file = tmp_path / "docker-compose.yaml"
    args = ["compose", ref("13.0.2-runtime-debian12-py-ssh"), "--output", str(compose_file),
            "--name", name, "--host-ip", "127.0.0.1", "--ssh-port", str(ssh_port), "--web-port", str(web_port),
            "--models", str(tmp_path / "models"), "--code", str(tmp_path / "code"), "--cache", str(tmp_path / "cache"),
            "--ssh-key", str(key) + ".pub", "--uid", "4242", "--gid", "4243", "--sudo"]
    out = dlenv(family["project"], *args, "--gpus", "0")
    assert out.returncode == 0, out.stderr  # dlenv ran `docker compose config` on it
    host = engine.find()[0]
    env = dict(os.environ, DOCKER_HOST=host, HTTPS_PROXY="http://proxy.invalid:3128")
    assert "proxy.invalid" not in compose_file.read_text()   # taken from the environment at `up` time
    config = json.loads(subprocess.run(["docker", "compose", "-f", str(compose_file), "config", "--format", "json"],
                                       capture_output=True, text=True, env=env, check=True).stdout)
    gpu = config["services"][name]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["device_ids"] == ["0"] and gpu["capabilities"] == ["gpu"]
    # No GPU on this host: the same file without the reservation.
    out = dlenv(family["project"], *args, "--gpus", "none")
    assert out.returncode == 0, out.stderr
    compose = ["docker", "compose", "-f", str(compose_file)]
    up = subprocess.run([*compose, "up", "-d"], capture_output=True, text=True, env=env)
    assert up.returncode == 0, up.stderr
    try:
        script = ("id -u; id -g; ls /models; cat /workspace/train.py; touch /workspace/made-in-container; "
                  "echo $HTTPS_PROXY; d=$(echo /opt/venv/lib/python3*/site-packages); touch $d/.w && echo venv-writable; "
                  "echo sudo-uid=$(sudo -n id -u)")
        login = ssh(key, ssh_port, "dev", script, wait=60)
        assert login.returncode == 0, login.stderr
        lines = login.stdout.split()
        assert lines[:2] == ["4242", "4243"]                      # the host user's ids, not root
        assert "print('hello')" in login.stdout                   # the project's code is mounted
        assert "http://proxy.invalid:3128" in login.stdout        # run-time proxy, not baked in
        assert "venv-writable" in login.stdout                    # pip works without root
        assert "sudo-uid=0" in login.stdout                       # --sudo: passwordless sudo
        made = tmp_path / "code/made-in-container"
        assert (made.stat().st_uid, made.stat().st_gid) == (4242, 4243)   # files keep the host user's owner
        assert (tmp_path / "models").is_dir() and (tmp_path / "cache").is_dir()
        # Root has no keys: only the user logs in.
        assert ssh(key, ssh_port, "root", "true").returncode != 0
    finally:
        down = subprocess.run([*compose, "down"], capture_output=True, text=True, env=env)
    assert down.returncode == 0, down.stderr
    assert not docker.container.list(filters=[("label", f"com.docker.compose.project={name}")])


def test_apt_mirror_proxies_and_ca_bundle_are_used_at_build_time_and_kept_out_of_the_image(docker, tmp_path):
    bridge = docker.network.inspect("bridge").ipam.config[0]
    gateway = bridge["Gateway"]   # the host, as builds see it
    upstream = hostconf.debian_mirror()
    assert upstream, "the host names no Debian mirror in its apt sources"
    server = MirrorProxy(gateway, upstream)
    try:
        secret = "marker-" + secrets.token_hex(8)
        proxy = f"http://dlenv:{secret}@{gateway}:{server.port}"
        mirror = f"http://{gateway}:{server.port}/debian"
        _, ca_marker = marker_bundle(tmp_path)
        repo = f"{TINY_REPO}-net"
        project = new_project(tmp_path / "project", TINY.format(registry=REGISTRY, repository=repo, stacks="  - [python]"))
        out = dlenv(project, "build", "--build-id", "net", "--no-promote", "--workdir", str(tmp_path / "w"),
                    "--apt-mirror", mirror, "--http-proxy", proxy, "--https-proxy", proxy, "--no-proxy", gateway,
                    "--ca-bundle", str(tmp_path / "marker.pem"))
        assert out.returncode == 0, out.stderr[-3000:]
    finally:
        server.shutdown()
    subnet = ipaddress.ip_network(bridge["Subnet"])

    def in_build(client: str) -> bool:   # a build container, not the host
        return ipaddress.ip_address(client) in subnet and client != gateway

    clients = sorted({(kind, client) for kind, client, *_ in server.log})
    mirror_paths = [(client, target) for kind, client, target, _ in server.log if kind == "MIRROR"]
    # mmdebstrap (on the host) bootstrapped from the mirror, and apt inside the build used it too.
    assert any(not in_build(c) and t.startswith("/debian/dists/bookworm/") for c, t in mirror_paths), clients
    assert any(in_build(c) and t.startswith("/debian/") for c, t in mirror_paths), clients
    # pip inside the build went through the proxy (TLS tunnelled), with the proxy's credentials.
    tunnels = [(client, target, auth) for kind, client, target, auth in server.log if kind == "CONNECT"]
    assert any(in_build(c) and t.endswith(":443") for c, t, _ in tunnels), clients
    assert any(auth for *_, auth in tunnels)
    tag = "13.0.2-base-debian12-py-net"
    sources = sh(docker, f"{REGISTRY}/{repo}:{tag}",
                 "grep -rh '^deb\\|^URIs' /etc/apt/sources.list /etc/apt/sources.list.d/ || true")
    assert mirror in sources   # images keep the mirror they were built from (documented)
    # Neither the proxy (with its password) nor the extra CA is in any layer, config or history.
    scanned = 0
    for what, data in layers_and_configs(repo, [tag]):
        scanned += 1
        assert secret.encode() not in data, f"the proxy's password is in {what}"
        assert ca_marker.encode() not in data, f"the extra CA is in {what}"
    assert scanned >= 1 + len(registry.image_manifest(REGISTRY, repo, tag)["layers"])   # the config and every layer
    history = json.loads(registry.blob(REGISTRY, repo, registry.image_manifest(REGISTRY, repo, tag)["config"]["digest"]))
    assert not [h for h in history["history"] if "PROXY" in h.get("created_by", "").upper()]
    assert not [e for e in history["config"].get("Env", []) if "proxy" in e.lower()]


def test_base_images_come_through_the_registry_mirror(docker, tmp_path):
    # A "Docker Hub" image that only the mirror has: the loopback registry plays the mirror.
    source_repo = f"{TINY_REPO}-mirror-source"
    project = new_project(tmp_path / "source", TINY.format(registry=REGISTRY, repository=source_repo, stacks="  - []"))
    built = dlenv(project, "build", "--build-id", "src", "--no-promote", "--workdir", str(tmp_path / "w0"))
    assert built.returncode == 0, built.stderr[-2000:]
    hub_name = f"dlenv-os-{RUN}:1"
    # Copied registry-side, index and attestations with it (the build removed its images from the
    # engine's store once pushed).
    merge.create(f"{REGISTRY}/library/{hub_name}", [f"{REGISTRY}/{source_repo}:13.0.2-base-debian12-src"])
    matrix = (TINY.format(registry=REGISTRY, repository=f"{TINY_REPO}-mirrored", stacks="  - []")
              .replace("  debian12: {source: bootstrap, suite: bookworm}\n",
                       f"  hubos: {{source: image, image: \"{hub_name}\", family: debian}}\n"))
    project = new_project(tmp_path / "project", matrix)
    without = dlenv(project, "build", "--build-id", "m", "--metadata", str(tmp_path / "m0.json"),
                    "--workdir", str(tmp_path / "w1"))
    assert without.returncode == 1 and "mirrors.registry" in without.stderr   # nowhere to pull it from
    out = dlenv(project, "build", "--build-id", "m", "--registry-mirror", REGISTRY, "--no-promote",
                "--metadata", str(tmp_path / "m.json"), "--workdir", str(tmp_path / "w2"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert [r["status"] for r in json.loads((tmp_path / "m.json").read_text())["variants"]] == ["built"]
    bake = json.loads((tmp_path / "w2/bake.json").read_text())
    assert f"docker-image://{REGISTRY}/library/{hub_name}" in json.dumps(bake)
