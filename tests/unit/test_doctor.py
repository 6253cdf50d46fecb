"""doctor's verdicts, from gathered facts: each host or image problem is found and comes with its fix."""

from __future__ import annotations

import pytest

from dlenv import doctor
from dlenv.doctor import Gpu, Host, Image

H200 = Gpu("NVIDIA H200", "580.159.04", "9.0")
READY = Host(docker_version="26.1.5", runtimes=("nvidia", "runc"), cgroup_driver="systemd", gpus=(H200,),
             driver_cuda="13.0", cgroup_v2=True, systemd=252, cdi_specs=("/etc/cdi/nvidia.yaml",))
TABLE = doctor.releases()


def by_check(findings):
    return {f.check: f for f in findings}


def test_a_ready_host_has_nothing_blocking():
    findings = doctor.judge_host(READY)
    assert [f.status for f in findings] == ["ok", "ok", "ok", "ok"]


def test_no_engine_is_blocking_and_says_how_else_to_run():
    f = by_check(doctor.judge_host(Host(docker_error="no docker command on this host", gpus=(H200,))))
    assert f["Docker engine"].status == "fail" and "rootfs_run.py" in f["Docker engine"].fix
    assert "NVIDIA container toolkit" not in f   # nothing to say about a toolkit without an engine


def test_no_gpu_is_blocking():
    f = by_check(doctor.judge_host(Host(docker_version="26", smi_error="nvidia-smi not found")))
    assert f["NVIDIA driver and GPU"].status == "fail"


def test_the_articles_error_toolkit_missing_or_not_configured():
    missing = by_check(doctor.judge_host(Host(docker_version="26", runtimes=("runc",), gpus=(H200,))))
    assert missing["NVIDIA container toolkit"].status == "fail"
    assert 'could not select device driver "nvidia"' in missing["NVIDIA container toolkit"].detail
    assert "install nvidia-container-toolkit" in missing["NVIDIA container toolkit"].fix
    idle = by_check(doctor.judge_host(Host(docker_version="26", runtimes=("runc",), gpus=(H200,),
                                           toolkit="/usr/bin/nvidia-ctk")))
    assert idle["NVIDIA container toolkit"].status == "fail"
    assert "nvidia-ctk runtime configure --runtime=docker" in idle["NVIDIA container toolkit"].fix


def test_the_articles_nvml_error_risk_on_cgroup_v2_with_systemd():
    host = Host(docker_version="26", runtimes=("nvidia",), cgroup_driver="systemd", gpus=(H200,), cgroup_v2=True,
                systemd=255)
    f = by_check(doctor.judge_host(host))["cgroup v2 and NVML in containers"]
    assert f.status == "warn" and "Failed to initialize NVML: Unknown Error" in f.detail
    assert "nvidia-ctk cdi generate" in f.fix and "native.cgroupdriver=cgroupfs" in f.fix
    assert "systemd.unified_cgroup_hierarchy=false" in f.fix   # the article's fix, for old libnvidia-container


@pytest.mark.parametrize("host", [
    Host(docker_version="26", runtimes=("nvidia",), cgroup_driver="cgroupfs", gpus=(H200,), cgroup_v2=True, systemd=255),
    Host(docker_version="26", runtimes=("nvidia",), cgroup_driver="systemd", gpus=(H200,), cgroup_v2=False, systemd=255),
])
def test_no_nvml_risk_with_cgroupfs_or_cgroup_v1(host):
    assert by_check(doctor.judge_host(host))["cgroup v2 and NVML in containers"].status == "ok"


def test_no_cgroups_true_on_cgroup_v1_is_flagged():
    host = Host(docker_version="26", runtimes=("nvidia",), gpus=(H200,), cgroup_v2=False, no_cgroups=True)
    f = by_check(doctor.judge_host(host))["cgroup v2 and NVML in containers"]
    assert f.status == "warn" and "no-cgroups = false" in f.fix


def image(cuda="13.0.2", torch="", archs=()):
    return Image("r/x:t", cuda=cuda, require_cuda=f"cuda>={cuda.rsplit('.', 1)[0]}", torch=torch, torch_archs=archs)


def test_driver_new_enough_for_the_image():
    f = by_check(doctor.judge_image(READY, image(), TABLE))
    assert f["driver vs the image's CUDA"].status == "ok"
    assert f["NVIDIA H200 vs CUDA 13.0"].status == "ok"


def test_driver_too_old_for_the_image_is_blocking_with_the_minimum():
    old = Host(gpus=(Gpu("NVIDIA A100", "570.124.06", "8.0"),), driver_cuda="12.8")
    f = by_check(doctor.judge_image(old, image(), TABLE))["driver vs the image's CUDA"]
    assert f.status == "fail" and "580.65.06" in f.fix and "cuda>=13.0" in f.detail


def test_an_older_driver_of_the_same_major_warns_minor_version_compatibility():
    host = Host(gpus=(Gpu("NVIDIA A100", "570.124.06", "8.0"),), driver_cuda="12.8")
    f = by_check(doctor.judge_image(host, Image("r/x:t", cuda="12.9.1"), TABLE))["driver vs the image's CUDA"]
    assert f.status == "warn" and "minor-version compatibility" in f.detail


def test_a_gpu_cuda_13_dropped_is_blocking():
    pascal = Host(gpus=(Gpu("GeForce GTX 1080", "580.65.06", "6.1"),), driver_cuda="13.0")
    f = by_check(doctor.judge_image(pascal, image(), TABLE))
    assert f["GeForce GTX 1080 vs CUDA 13.0"].status == "fail"
    assert by_check(doctor.judge_image(pascal, image("12.8.1"), TABLE))["GeForce GTX 1080 vs CUDA 12.8"].status == "ok"


def test_a_gpu_newer_than_the_cuda_warns():
    blackwell = Host(gpus=(Gpu("RTX 5090", "575.51.03", "12.0"),), driver_cuda="12.9")
    assert by_check(doctor.judge_image(blackwell, image("12.6.3"), TABLE))["RTX 5090 vs CUDA 12.6"].status == "warn"


def test_torch_architectures_against_the_gpu():
    archs = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
    assert by_check(doctor.judge_image(READY, image(torch="2.11.0", archs=archs), TABLE))[
        "NVIDIA H200 vs torch 2.11.0"].status == "ok"
    volta = Host(gpus=(Gpu("Tesla V100", "580.65.06", "7.0"),), driver_cuda="13.0")
    f = by_check(doctor.judge_image(volta, image(torch="2.11.0", archs=archs), TABLE))["Tesla V100 vs torch 2.11.0"]
    assert f.status == "fail" and "no kernel image is available" in f.detail
    jit = by_check(doctor.judge_image(READY, image(torch="2.11.0", archs=("sm_80", "compute_80")), TABLE))
    assert jit["NVIDIA H200 vs torch 2.11.0"].status == "warn"
    assert "compute_80 PTX is JIT-compiled" in jit["NVIDIA H200 vs torch 2.11.0"].detail


TORCH_2_11 = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")   # torch 2.11.0+cu130, read on the H200


@pytest.mark.parametrize("name,compute,status,entry", [
    ("NVIDIA L4", "8.9", "ok", "sm_86"),            # binary compatible within Ada/Ampere's major
    ("NVIDIA GeForce RTX 4090", "8.9", "ok", "sm_86"),
    ("NVIDIA GH200 480GB", "9.0", "ok", "sm_90"),
    ("NVIDIA GB200", "10.0", "ok", "sm_100"),
    ("NVIDIA GB300", "10.3", "ok", "sm_100"),
    ("NVIDIA GB10", "12.1", "ok", "sm_120"),
    ("Tesla P100-PCIE-16GB", "6.0", "fail", ""),
])
def test_gpus_against_torch_2_11_by_the_compatibility_rule(name, compute, status, entry):
    host = Host(gpus=(Gpu(name, "580.95.05", compute),), driver_cuda="13.0")
    f = by_check(doctor.judge_image(host, image(torch="2.11.0+cu130", archs=TORCH_2_11), TABLE))[
        f"{name} vs torch 2.11.0+cu130"]
    assert f.status == status, f
    if entry:
        assert f.detail.startswith(f"torch: {entry} ")
    else:
        assert "no kernel image is available" in f.detail and f.fix


def test_a_gpu_past_the_cudas_newest_architecture_in_the_same_major_is_supported():
    spark = Host(gpus=(Gpu("NVIDIA GB10", "580.95.05", "12.1"),), driver_cuda="13.0")
    assert TABLE["release"]["12.8"]["max_compute"] == "12.0"   # the premise: 12.8's newest is sm_120
    assert by_check(doctor.judge_image(spark, image("12.8.1"), TABLE))["NVIDIA GB10 vs CUDA 12.8"].status == "ok"


def test_an_image_that_cannot_be_inspected_or_is_no_cuda_image_is_skipped():
    assert doctor.judge_image(READY, Image("r/x:t", error="no engine"), TABLE)[0].status == "skip"
    assert doctor.judge_image(READY, Image("r/x:t"), TABLE)[0].status == "skip"


def test_every_table_row_is_complete():
    for mm, row in TABLE["release"].items():
        assert set(row) == {"min_driver", "min_compute", "max_compute"}, mm
        assert doctor.version(row["min_compute"]) <= doctor.version(row["max_compute"])
        assert mm.split(".")[0] in TABLE["major"], mm


def test_the_command_reports_this_host_as_json_and_exits_by_what_blocks(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from helpers import REPO

    out = subprocess.run([sys.executable, "-m", "dlenv.doctor", "--json", str(tmp_path / "d.json")],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    data = json.loads((tmp_path / "d.json").read_text())
    checks = {f["check"]: f for f in data["findings"]}
    assert {"Docker engine", "NVIDIA driver and GPU", "cgroup v2 and NVML in containers"} <= set(checks)
    assert data["blocking"] == sum(f["status"] == "fail" for f in data["findings"])
    assert out.returncode == (1 if data["blocking"] else 0)
    assert "Traceback" not in out.stderr and "dlenv doctor" in out.stderr


def test_a_torch_without_cuda_architectures_is_skipped_not_failed():
    f = doctor.judge_image(READY, image(torch="2.11.0+cpu", archs=()), TABLE)
    assert [x.status for x in f if "torch" in x.check] == ["skip"]


def test_the_h200_machine_against_the_torch_image_as_recorded():
    """Facts gathered for real: the H200 host (doctor there, 2026-11-29) and the torch image (here)."""
    import json
    from pathlib import Path

    facts = json.loads((Path(__file__).parent / "h200_torch_facts.json").read_text())
    host = Host(**{**facts["host"], "gpus": tuple(Gpu(**g) for g in facts["host"]["gpus"]),
                   "runtimes": tuple(facts["host"]["runtimes"]), "cdi_specs": tuple(facts["host"]["cdi_specs"])})
    image = Image(**{**facts["image"], "torch_archs": tuple(facts["image"]["torch_archs"])})
    found = by_check(doctor.judge_image(host, image, TABLE))
    assert found["driver vs the image's CUDA"].status == "ok"      # 580.159.04 >= 580.65.06
    assert found["NVIDIA H200 vs CUDA 13.0"].status == "ok"         # compute 9.0
    assert found["NVIDIA H200 vs torch 2.11.0+cu130"].status == "ok"   # sm_90 in torch's list


def test_a_docker_older_than_23_is_told_it_cannot_pull_zstd_layers():
    old = by_check(doctor.judge_host(Host(docker_version="20.10.24", runtimes=("nvidia", "runc"), gpus=(H200,))))
    assert old["Docker engine"].status == "warn" and "zstd" in old["Docker engine"].detail
    assert "Docker 23" in old["Docker engine"].fix
    assert by_check(doctor.judge_host(READY))["Docker engine"].status == "ok"
