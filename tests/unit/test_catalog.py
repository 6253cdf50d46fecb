"""The catalog: EOL lookups, the inventory script's output, gathering from a registry, the pages."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import subprocess
import urllib.error
from pathlib import Path

import pytest

from dlenv import catalog, config, gpuarch, lifecycle, plan, registry
from dlenv.errors import DlenvError
from dlenv.report import human_size
from dlenv.tags import BuildInfo
from helpers import REPO

# What checks/inventory.sh printed in two images of the test family (built 2026-11-29): a base
# image without Python, and the torch image (its package list shortened).
BASE_OUTPUT = ('{"os": "Debian GNU/Linux 12 (bookworm)", "cuda_runtime": "13.0.96", "debian_packages": 99, '
               '"python": null}\n')
TORCH = {"os": "Debian GNU/Linux 12 (bookworm)", "cuda_runtime": "13.0.96", "debian_packages": 130,
         "python": {"version": "3.11.2", "packages": {
             "Jinja2": "3.1.6", "cuda-toolkit": "13.0.2", "numpy": "2.4.6",
             "nvidia-cudnn-cu13": "9.19.0.56", "pip": "23.0.1", "torch": "2.11.0",
             "torchvision": "0.26.0", "typing_extensions": "4.16.0", "uv": "0.13.9"},
             "torch_archs": ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]}}
TORCH_OUTPUT = json.dumps(TORCH)
TABLE = {"major": {}, "release": {"13.0": {"eol": "2028-06-01"}, "12.8": {"eol": "2026-02-01"}, "12.9": {}}}
NOW = datetime.datetime(2026, 11, 29, 12, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setattr(lifecycle, "table", lambda: TABLE)


# --- EOL ---------------------------------------------------------------------------------------

def test_eol_date_by_release_or_full_version(table):
    assert lifecycle.eol_date("13.0.2") == lifecycle.eol_date("13.0") == datetime.date(2028, 6, 1)
    assert lifecycle.eol_date("12.8.1") == datetime.date(2026, 2, 1)


def test_no_eol_date_for_a_release_without_one_or_an_unknown_release(table):
    assert lifecycle.eol_date("12.9.1") is None
    assert lifecycle.eol_date("10.2") is None
    assert not lifecycle.is_eol("12.9.1", datetime.date(2099, 1, 1))
    assert not lifecycle.is_eol("10.2.89", datetime.date(2099, 1, 1))


def test_is_eol_from_the_day_itself(table):
    assert not lifecycle.is_eol("12.8.1", datetime.date(2026, 1, 31))
    assert lifecycle.is_eol("12.8.1", datetime.date(2026, 2, 1))
    assert not lifecycle.is_eol("13.0.2", datetime.date(2026, 11, 29))


def test_a_malformed_eol_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(lifecycle, "table", lambda: {"release": {"12.8": {"eol": "Feb 2026"}}})
    with pytest.raises(DlenvError, match=r"release 12\.8: eol = 'Feb 2026' is not a date") as err:
        lifecycle.eol_date("12.8.1")
    assert "YYYY-MM-DD" in err.value.fix


def test_the_shipped_table_has_valid_dates_and_doctor_does_not_see_them():
    rows = lifecycle.table()["release"]
    dated = {mm for mm, row in rows.items() if "eol" in row}
    assert dated and all(isinstance(lifecycle.eol_date(mm), datetime.date) for mm in dated)
    assert all("eol" not in row for row in lifecycle.requirements()["release"].values())


# --- what is inside an image ---------------------------------------------------------------------

def test_parse_a_base_image_without_python():
    found = catalog.parse_inventory(BASE_OUTPUT, "r/x@sha256:1")
    assert found == catalog.Inventory("Debian GNU/Linux 12 (bookworm)", "13.0.96", 99, None, {}, ())


def test_parse_a_python_image():
    found = catalog.parse_inventory(TORCH_OUTPUT, "r/x@sha256:2")
    assert (found.os_name, found.cuda_runtime, found.debian_packages) == (
        TORCH["os"], TORCH["cuda_runtime"], TORCH["debian_packages"])
    assert found.python == TORCH["python"]["version"] and found.packages == TORCH["python"]["packages"]
    assert found.torch_archs == tuple(TORCH["python"]["torch_archs"])


@pytest.mark.parametrize("text", ["", "sh: 1: dpkg-query: not found", '{"os": "Debian"}', "[]",
                                  '{"os": "d", "cuda_runtime": "", "debian_packages": "many", "python": null}'])
def test_output_that_is_not_the_scripts_is_a_one_line_error(text):
    with pytest.raises(DlenvError, match="r/x@sha256:3: the inventory script printed no catalog facts") as err:
        catalog.parse_inventory(text, "r/x@sha256:3")
    assert "inventory.sh" in err.value.fix


def test_the_script_runs_in_plain_sh_and_prints_what_the_parser_reads():
    """Here, on this host (no /opt/venv): the same POSIX sh path a base image takes."""
    out = subprocess.run(["sh", str(catalog.INVENTORY)], capture_output=True, text=True, check=True)
    found = catalog.parse_inventory(out.stdout, "this host")
    pretty = subprocess.run(["sh", "-c", ". /etc/os-release && printf %s \"$PRETTY_NAME\""],
                            capture_output=True, text=True).stdout
    assert found.os_name == pretty
    assert (found.python is None) == (not Path("/opt/venv/bin/python").exists())


def variant(cuda="13.0.2", flavor="runtime", os="debian12", stack=("python", "pytorch")) -> plan.Variant:
    vid = "-".join([cuda, flavor, os] + [{"python": "py", "pytorch": "torch", "ssh": "ssh"}[r] for r in stack])
    mm = lifecycle.major_minor(cuda)
    return plan.Variant(vid, cuda, flavor, os, stack, (), f"{vid}-20261129-c6d0e48",
                        (vid, vid.replace(cuda, mm, 1)), "pip")


def entry(today=datetime.date(2026, 11, 29), output=TORCH_OUTPUT, digest="sha256:" + "ab" * 32, **kw) -> catalog.Entry:
    v = variant(**kw)
    return catalog.entry(v, "127.0.0.1:5000/fam", v.immutable, v.floating, digest, 3_057_639_750,
                         catalog.parse_inventory(output, "r"), today)


def test_an_entry_holds_the_key_packages_and_every_package(table):
    e = entry()
    assert e.key_packages == {"torch": "2.11.0", "torchvision": "0.26.0", "numpy": "2.4.6", "uv": "0.13.9",
                              "pip": "23.0.1"}
    assert e.packages[:2] == ("cuda-toolkit==13.0.2", "Jinja2==3.1.6")   # sorted without regard to case
    assert sorted(e.packages) == sorted(f"{name}=={version}" for name, version in TORCH["python"]["packages"].items())
    assert (e.eol, e.eol_reached, e.recipes) == ("2028-06-01", False, ("python", "pytorch"))


def test_key_packages_are_found_by_their_normalized_name(table):
    output = json.dumps({"os": "d", "cuda_runtime": "", "debian_packages": 1,
                         "python": {"version": "3.12.3", "packages": {"NumPy": "2.1.0", "Torch_Vision": "0.2",
                                                                      "JupyterLab": "4.6.6"},
                                    "torch_archs": []}})
    # torch_vision is not torchvision
    assert entry(output=output).key_packages == {"numpy": "2.1.0", "jupyterlab": "4.6.6"}


# --- gathering from a registry -------------------------------------------------------------------

BUILD = BuildInfo("20261201-1234567", "20261201", "1234567", "1234567" * 5 + "12345", 1764547200,
                  "https://example.invalid/dlenv")


@pytest.fixture
def family() -> plan.Plan:
    matrix = config.load(REPO / "tests/family.yaml", root=REPO)
    return plan.expand(matrix, BUILD, plan.Mirrors(bootstrap_apt="http://apt.invalid/debian"))


def fake_registry(monkeypatch, tags: dict[str, str], indexes: dict[str, dict] | None = None) -> list[str]:
    """A registry holding tag -> digest, and digest -> the image index it names (a plain image
    manifest where none is given); returns the tags asked for, in order."""
    asked = []
    indexes = indexes or {}

    def manifest(reg, repo, reference, user=None):
        if reference in tags.values():
            return indexes.get(reference, {}), reference
        asked.append(reference)
        if reference not in tags:
            raise urllib.error.HTTPError(f"http://{reg}/v2/{repo}/manifests/{reference}", 404, "Not Found", {}, None)
        return {}, tags[reference]
    monkeypatch.setattr(registry, "manifest", manifest)
    monkeypatch.setattr(registry, "tags", lambda reg, repo, user=None: sorted(tags))
    monkeypatch.setattr(registry, "compressed_size", lambda reg, repo, ref, platform="linux/amd64": (
        {"sha256:aa": 1_600_000_000}.get(ref, 7) + (0 if platform == "linux/amd64" else 1_000)))
    return asked


def test_gather_reads_what_the_floating_tags_name_and_leaves_out_what_was_never_promoted(monkeypatch, family, table):
    asked = fake_registry(monkeypatch, {
        # this build failed: the floating tags still name the digest two older builds gave
        "13.0.2-runtime-debian12": "sha256:aa", "13.0-runtime-debian12": "sha256:aa",
        "13.0.2-runtime-debian12-20261015-aaaaaaa": "sha256:aa",
        "13.0.2-runtime-debian12-20261101-bbbbbbb": "sha256:aa",
        # that build's platform tag, merged under the tag above: one platform's image, never a pin
        "13.0.2-runtime-debian12-20261101-bbbbbbb-amd64": "sha256:aa",
        "13.0.2-runtime-debian12-20261201-1234567": "sha256:a2",
        # another variant's tag, that one never promoted: not this variant's to look at
        "13.0.2-runtime-debian12-py-ssh-20261101-bbbbbbb": "sha256:ff",
        # promoted by this build: its immutable tag names the same digest
        "13.0.2-runtime-debian12-py-torch": "sha256:bb", "13.0-runtime-debian12-py-torch": "sha256:bb",
        "13.0.2-runtime-debian12-py-torch-20261201-1234567": "sha256:bb",
        # the major.minor tag was moved elsewhere: it is not this entry's
        "13.0.2-devel-debian12": "sha256:dd", "13.0-devel-debian12": "sha256:ee",
        "13.0.2-devel-debian12-20261201-1234567": "sha256:dd",
    })
    ran = []

    def runner(ref, script, platform):
        ran.append(ref)
        assert script == catalog.INVENTORY.read_text()
        return TORCH_OUTPUT if ref.endswith("bb") else BASE_OUTPUT

    entries, left = catalog.gather(family, runner, today=datetime.date(2028, 6, 1))
    by_id = {e.id: e for e in entries}
    assert set(by_id) == {"13.0.2-runtime-debian12", "13.0.2-runtime-debian12-py-torch", "13.0.2-devel-debian12"}
    assert ran == [f"127.0.0.1:5000/dlenv-test/family@sha256:{d}" for d in ("aa", "dd", "bb")]
    base = by_id["13.0.2-runtime-debian12"]
    assert (base.tag, base.floating, base.size, base.python) == (
        "13.0.2-runtime-debian12-20261101-bbbbbbb", ("13.0.2-runtime-debian12", "13.0-runtime-debian12"),
        1_600_000_000, None)
    assert "13.0.2-runtime-debian12-py-ssh-20261101-bbbbbbb" not in asked
    assert "13.0.2-runtime-debian12-20261101-bbbbbbb-amd64" not in asked
    torch = by_id["13.0.2-runtime-debian12-py-torch"]
    assert torch.tag == "13.0.2-runtime-debian12-py-torch-20261201-1234567" and torch.digest == "sha256:bb"
    assert torch.key_packages["torch"] == "2.11.0" and torch.eol_reached
    assert by_id["13.0.2-devel-debian12"].floating == ("13.0.2-devel-debian12",)
    assert {n.id: n.tag for n in left} == {"13.0.2-runtime-debian12-py-ssh": "13.0.2-runtime-debian12-py-ssh",
                                           "13.0.2-devel-debian12-py-ssh": "13.0.2-devel-debian12-py-ssh"}
    assert all("never promoted" in n.reason for n in left)


def test_a_family_without_floating_tags_publishes_nothing(monkeypatch, family):
    asked = fake_registry(monkeypatch, {"13.0.2-runtime-debian12-20261201-1234567": "sha256:aa"})
    bare = dataclasses.replace(family, variants=tuple(dataclasses.replace(v, floating=()) for v in family.variants))
    entries, left = catalog.gather(bare, lambda ref, script, platform: BASE_OUTPUT)
    assert entries == [] and asked == []
    assert [(n.tag, n.reason) for n in left] == [("", "the matrix gives it no floating tag")] * len(family.variants)


def test_an_unreachable_registry_is_a_one_line_error(monkeypatch, family):
    def refused(*args, **kwargs):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    monkeypatch.setattr(registry, "tags", refused)
    with pytest.raises(DlenvError, match="cannot reach the registry 127.0.0.1:5000") as err:
        catalog.gather(family, lambda ref, script, platform: BASE_OUTPUT)
    assert "--registry" in err.value.fix


def test_each_platform_of_an_index_is_listed_with_its_digest_size_and_key_packages(monkeypatch, family, table):
    both = ("linux/amd64", "linux/arm64")
    two = dataclasses.replace(family, variants=tuple(dataclasses.replace(v, platforms=both) for v in family.variants))
    torch = next(v for v in two.variants if "pytorch" in v.stack)
    image = {"linux/amd64": "sha256:" + "1" * 64, "linux/arm64": "sha256:" + "2" * 64}
    index = {"manifests": [
        {"digest": image["linux/amd64"], "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": image["linux/arm64"], "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "sha256:" + "f" * 64, "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}]}
    fake_registry(monkeypatch, {torch.floating[0]: "sha256:bb", torch.immutable: "sha256:bb"}, {"sha256:bb": index})
    arm = json.loads(TORCH_OUTPUT)
    arm["python"]["packages"]["numpy"] = "2.4.0"   # a platform may get another build of a package
    ran = []

    def runner(ref, script, platform):
        ran.append(platform)
        return json.dumps(arm) if platform == "linux/arm64" else TORCH_OUTPUT

    entries, _ = catalog.gather(two, runner, today=datetime.date(2028, 6, 1))
    [e] = entries
    assert ran == list(both) and e.platforms == both
    assert [(i.platform, i.digest, i.size) for i in e.images] == [
        ("linux/amd64", image["linux/amd64"], 7), ("linux/arm64", image["linux/arm64"], 1_007)]
    assert e.images[1].key_packages["numpy"] == "2.4.0" and e.key_packages == e.images[0].key_packages
    assert (e.digest, e.size) == ("sha256:bb", e.images[0].size)
    # The Markdown gives a line per platform where the index has several.
    row = next(line for line in catalog.render_markdown(entries, [], NOW).splitlines() if torch.floating[0] in line)
    assert f"amd64: {human_size(7)}<br>arm64: {human_size(1_007)}" in row
    assert f"amd64: `{'1' * 12}`<br>arm64: `{'2' * 12}`" in row
    assert "arm64: torch 2.11.0" in row and "numpy 2.4.0" in row
    data = json.loads(json.dumps(catalog.to_json(entries, [], NOW)))
    assert data["images"][0]["platforms"] == list(both)
    assert [i["platform"] for i in data["images"][0]["images"]] == list(both)


def test_an_index_without_the_variants_platforms_is_an_error(monkeypatch, family):
    v = family.variants[0]
    index = {"manifests": [{"digest": "sha256:" + "c" * 64, "platform": {"os": "linux", "architecture": "s390x"}}]}
    fake_registry(monkeypatch, {v.floating[0]: "sha256:bb"}, {"sha256:bb": index})
    only = dataclasses.replace(family, variants=(v,))
    with pytest.raises(DlenvError, match="holds no image of linux/amd64") as err:
        catalog.gather(only, lambda ref, script, platform: BASE_OUTPUT)
    assert "linux/s390x" in err.value.message


# --- the pages -----------------------------------------------------------------------------------

@pytest.fixture
def entries(table) -> list[catalog.Entry]:
    return [entry(cuda="12.8.1", stack=(), output=BASE_OUTPUT, digest="sha256:" + "12" * 32),
            entry(cuda="13.0.2", flavor="devel", stack=(), output=BASE_OUTPUT, digest="sha256:" + "13" * 32),
            entry(cuda="13.0.2"),
            entry(cuda="13.0.2", flavor="base", stack=(), output=BASE_OUTPUT, digest="sha256:" + "14" * 32)]


LEFT = [catalog.NotPublished("13.0.2-devel-debian12-py-ssh", "13.0.2-devel-debian12-py-ssh",
                             "127.0.0.1:5000/fam:13.0.2-devel-debian12-py-ssh does not exist: never promoted")]


def rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| `")]


def test_markdown_sorts_newest_cuda_first_then_flavor_and_stack(entries):
    order = [row.split("`")[1] for row in rows(catalog.render_markdown(entries, LEFT, NOW))]
    assert order == ["13.0.2-base-debian12", "13.0.2-runtime-debian12-py-torch", "13.0.2-devel-debian12",
                     "12.8.1-runtime-debian12"]


def test_markdown_marks_the_eol_rows(entries):
    text = catalog.render_markdown(entries, LEFT, NOW)
    eol = [row for row in rows(text) if "**EOL 2026-02-01**" in row]
    assert len(eol) == 1 and eol[0].startswith("| `12.8.1-runtime-debian12`")
    supported = {e.id for e in entries if e.eol == "2028-06-01"}
    assert {row.split("`")[1] for row in rows(text) if "until 2028-06-01" in row} == supported
    past = text.split("## Past end of life")[1].split("##")[0]
    assert "`12.8.1-runtime-debian12`: CUDA 12.8, EOL 2026-02-01" in past and "13.0" not in past


def test_markdown_has_the_facts_a_reader_chooses_by(entries):
    text = catalog.render_markdown(entries, LEFT, NOW)
    torch = next(row for row in rows(text) if "py-torch" in row)
    for fact in ("pin: `13.0.2-runtime-debian12-py-torch-20261129-c6d0e48`", "`13.0-runtime-debian12-py-torch`",
                 "13.0.2 (cudart 13.0.96)", "python + pytorch", "3.11.2", "torch 2.11.0, torchvision 0.26.0",
                 "3.1 GB", "`" + "ab" * 6 + "`"):
        assert fact in torch, fact
    assert "docker pull 127.0.0.1:5000/fam@sha256:" + "14" * 32 in text   # the first row's full digest
    assert "## Not published" in text and "`13.0.2-devel-debian12-py-ssh`: 127.0.0.1:5000/fam:" in text


def test_a_release_without_eol_says_none_is_announced(table):
    text = catalog.render_markdown([entry(cuda="12.9.1", stack=(), output=BASE_OUTPUT)], [], NOW)
    assert "no EOL announced" in rows(text)[0] and "Past end of life" not in text


def test_json_holds_every_entry_with_its_full_package_list(entries):
    data = json.loads(json.dumps(catalog.to_json(entries, LEFT, NOW)))
    assert sorted(data["images"], key=lambda i: i["id"]) == sorted(
        (json.loads(json.dumps(dataclasses.asdict(e))) for e in entries), key=lambda i: i["id"])
    torch = next(i for i in data["images"] if i["id"] == "13.0.2-runtime-debian12-py-torch")
    assert "nvidia-cudnn-cu13==9.19.0.56" in torch["packages"]
    assert data["not_published"] == [dataclasses.asdict(n) for n in LEFT]
    assert datetime.datetime.fromisoformat(data["generated_at"]) == NOW


def test_json_holds_what_doctor_judges_by(entries):
    data = catalog.to_json(entries, LEFT, NOW)["compatibility"]
    assert {k: data[k] for k in ("major", "release")} == lifecycle.requirements()
    assert data["gpus"] == gpuarch.GPUS


def test_write_puts_every_file_in_the_folder(tmp_path, entries):
    out = catalog.write(tmp_path / "out", entries, LEFT, NOW)
    assert out.markdown.read_text() == catalog.render_markdown(entries, LEFT, NOW)
    assert json.loads(out.machine.read_text()) == json.loads(json.dumps(catalog.to_json(entries, LEFT, NOW)))
    assert out.page.read_text() == out.index.read_text() == catalog.render_html(entries, LEFT, NOW)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["catalog.html", "catalog.json", "catalog.md",
                                                                      "index.html"]


def embedded(page: str) -> dict:
    """The JSON the page holds, as its script reads it."""
    opening = '<script id="catalog-data" type="application/json">'
    return json.loads(page.split(opening, 1)[1].split("</script>", 1)[0])


def test_the_page_holds_the_catalogs_json_and_nothing_can_close_its_script(entries):
    assert catalog.PAGE.read_text().count(catalog.PAGE_DATA) == 1
    hostile = [dataclasses.replace(entries[0], packages=("evil</script><script>alert(1)</script><!--==1",))]
    page = catalog.render_html(hostile, LEFT, NOW)
    assert "evil</script>" not in page and "<!--==1" not in page
    assert embedded(page) == json.loads(json.dumps(catalog.to_json(hostile, LEFT, NOW)))


def test_the_page_requests_nothing_from_anywhere(entries):
    """Self-contained: no script, style, image or font from another address (offline, filtered
    networks); its only links are to the catalog's own files beside it."""
    page = catalog.render_html(entries, LEFT, NOW)
    assert not re.search(r"\b(src|srcset)\s*=|@import|url\(|<link\b", page, re.I)
    assert re.findall(r"\w+://", page) == []
