"""The catalog page in a real browser: Debian's chromium, driven by selenium through Debian's
chromium-driver (tests/conftest.py installs both), loaded from file:// as catalog.write wrote it
for the repository's family (entries built from its plan, as the catalog builds them from what
the registry and the images say: no engine needed). Its filters, its EOL marks, and its "which tag
for my machine" helper, whose verdicts must be doctor's."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from pathlib import Path

import pytest

from dlenv import catalog, config, doctor, gpuarch, lifecycle, plan
from dlenv.doctor import Gpu, Host, Image
from dlenv.report import human_size
from dlenv.tags import BuildInfo
from helpers import CHROMEDRIVER, CHROMIUM, REPO

pytest.importorskip("selenium.webdriver", reason="selenium is installed by `nox -s tests`")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="needs Debian's chromium and chromium-driver (the tests install them as root)")

TODAY = datetime.date(2026, 11, 29)
NOW = datetime.datetime(2026, 11, 29, 12, 0, tzinfo=datetime.timezone.utc)
BUILD = BuildInfo("20261129-c6d0e48", "20261129", "c6d0e48", "c6d0e48" * 5 + "12345", 1764374400,
                  "https://example.invalid/dlenv")
# torch's arch list per wheel index of recipes/pytorch.toml, as tests/unit/test_gpuarch.py records
# them with their sources (cu130: read in the built image on the H200).
TORCH_ARCHS = {
    "cu130": json.loads((Path(__file__).parent / "h200_torch_facts.json").read_text())["image"]["torch_archs"],
    "cu128": ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"],
    "cu126": ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"],
}
OS_NAMES = {"debian12": ("Debian GNU/Linux 12 (bookworm)", "3.11.2"), "ubuntu22.04": ("Ubuntu 22.04.5 LTS", "3.10.12"),
            "ubuntu24.04": ("Ubuntu 24.04.3 LTS", "3.12.3")}


def inventory(variant: plan.Variant, torch_recipe: config.Recipe) -> str:
    """What checks/inventory.sh would print in the variant's image."""
    os_name, python = OS_NAMES.get(variant.os, (variant.os, "3.12.3"))
    found = {"os": os_name, "cuda_runtime": variant.cuda, "debian_packages": 100 + 10 * len(variant.stack), "python": None}
    if "python" in variant.stack:
        packages, archs = {"pip": "25.3", "uv": "0.9.9"}, []
        if "pytorch" in variant.stack:
            row = torch_recipe.compat_for(variant.cuda, variant.platforms[0])
            args = dict(row.args)
            packages |= {"torch": args["TORCH_VERSION"] + ("" if row.pypi else f"+{row.index}"),
                         "torchvision": args["TORCHVISION_VERSION"], "numpy": "2.3.5"}
            archs = TORCH_ARCHS[row.index]
        found["python"] = {"version": python, "packages": packages, "torch_archs": archs}
    return json.dumps(found)


@pytest.fixture(scope="module")
def family() -> tuple[list[catalog.Entry], list[catalog.NotPublished]]:
    """Every variant of matrix.yaml published but the last, which was never promoted."""
    family = plan.expand(config.load(REPO / "matrix.yaml", root=REPO), BUILD,
                         plan.Mirrors(bootstrap_apt="http://apt.invalid/debian"))
    torch_recipe = config.load_recipe(REPO / "recipes" / "pytorch.toml", REPO)
    *published, never = family.variants
    entries = [catalog.entry(v, family.image, v.immutable, v.floating, "sha256:" + hashlib.sha256(v.id.encode()).hexdigest(),
                             150_000_000 * (1 + len(v.stack)) + 7_000 * len(v.id),
                             catalog.parse_inventory(inventory(v, torch_recipe), v.id), TODAY) for v in published]
    left = [catalog.NotPublished(never.id, never.floating[0], "never promoted (its smoke checks failed)")]
    return entries, left


@pytest.fixture(scope="module")
def site(family, tmp_path_factory) -> Path:
    return catalog.write(tmp_path_factory.mktemp("site"), *family, NOW).page


@pytest.fixture
def page(browser, site):
    browser.get(site.as_uri())
    yield browser
    assert browser.get_log("browser") == [], "the page logged to the console"


def shown(driver) -> list[str]:
    """The ids of the rows on screen, top to bottom."""
    return driver.execute_script("return [...document.querySelectorAll('#images tbody tr')]"
                                 ".filter(r => r.offsetParent !== null).map(r => r.dataset.id)")


def ids(entries, keep=lambda e: True) -> list[str]:
    """The ids of the entries `keep` takes, in the catalog's order (catalog.json's)."""
    by_id = {e.id: e for e in entries}
    return [i["id"] for i in catalog.to_json(entries, [], NOW)["images"] if keep(by_id[i["id"]])]


def choose(driver, name: str, value: str) -> None:
    Select(driver.find_element(By.CSS_SELECTOR, f"select[data-filter={name}]")).select_by_value(value)


# --- the table and its filters -----------------------------------------------------------------

def test_every_image_is_a_row_with_its_facts_and_eol_rows_are_marked(page, family):
    entries, left = family
    assert shown(page) == ids(entries)
    assert page.find_element(By.ID, "count").text == f"{len(entries)} shown"
    eol = page.execute_script("return [...document.querySelectorAll('#images tr.eol')].map(r => r.dataset.id)")
    assert eol == ids(entries, lambda e: e.eol_reached) and eol   # the family keeps CUDA 12.8, past its EOL
    for e in (entries[0], next(e for e in entries if e.key_packages.get("torch")), next(e for e in entries if e.eol_reached)):
        row = page.find_element(By.CSS_SELECTOR, f'tr[data-id="{e.id}"]')
        text = row.text
        for fact in (*e.floating, f"pin: {e.tag}", human_size(e.size), e.digest.removeprefix("sha256:")[:12],
                     e.python or "-", *(f"{n} {v}" for n, v in e.key_packages.items()),
                     f"EOL {e.eol}" if e.eol_reached else f"until {e.eol}"):
            assert fact in text, (e.id, fact)
        button = row.find_element(By.CSS_SELECTOR, "td.digest button")
        assert button.get_attribute("data-command") == f"docker pull {e.image}@{e.digest}"
    assert [li.text for li in page.find_elements(By.CSS_SELECTOR, "#left-out li")] == [f"{n.id}: {n.reason}" for n in left]


FILTERS = {"cuda": lambda e: e.cuda, "flavor": lambda e: e.flavor, "os": lambda e: e.os,
           "stack": lambda e: " + ".join(e.recipes) or "(none)"}


@pytest.mark.parametrize("name", FILTERS)
def test_each_filter_shows_exactly_the_matching_rows(page, family, name):
    entries, _ = family
    values = sorted({FILTERS[name](e) for e in entries})
    assert len(values) > 1, f"the family has one {name}: the filter would prove nothing"
    for value in values:
        choose(page, name, value)
        assert shown(page) == ids(entries, lambda e, v=value: FILTERS[name](e) == v), (name, value)
    choose(page, name, "")
    assert shown(page) == ids(entries)


def test_filters_and_search_combine_and_reset_clears_them(page, family):
    entries, _ = family
    torch = next(e for e in entries if e.key_packages.get("torch"))
    choose(page, "os", torch.os)
    page.find_element(By.ID, "q").send_keys(f"torch=={torch.key_packages['torch']}")
    wanted = ids(entries, lambda e: e.os == torch.os and f"torch=={torch.key_packages['torch']}" in e.packages)
    assert shown(page) == wanted and torch.id in wanted
    page.find_element(By.ID, "hide-eol").click()
    assert shown(page) == [i for i in wanted if not next(e for e in entries if e.id == i).eol_reached]
    page.find_element(By.ID, "reset").click()
    assert shown(page) == ids(entries)
    search = page.find_element(By.ID, "q")
    search.send_keys(torch.tag)   # a pin tag: that row alone
    assert shown(page) == [torch.id]
    search.clear()
    search.send_keys("py-dev ssh")   # every word must match, in the tags or the packages
    assert shown(page) == ids(entries, lambda e: any("py-dev" in t and "ssh" in t for t in e.floating))


def platform_filter(driver):
    return driver.find_element(By.CSS_SELECTOR, "select[data-filter=platform]")


def test_the_platform_filter_appears_only_when_the_family_has_several_platforms(page, family, tmp_path):
    assert not platform_filter(page).find_element(By.XPATH, "..").is_displayed()
    # Entries that name their platforms (the hook for a multi-platform family): the filter
    # appears and narrows the rows like the others.
    entries, left = family
    html = catalog.render_html(entries, left, NOW)
    data = catalog.to_json(entries, left, NOW)
    for i, image in enumerate(data["images"]):
        image["platforms"] = ["linux/amd64"] + (["linux/arm64"] if i % 2 else [])
    embedded = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    multi = tmp_path / "index.html"
    multi.write_text(html.replace(json.dumps(catalog.to_json(entries, left, NOW), separators=(",", ":")), embedded))
    page.get(multi.as_uri())
    assert platform_filter(page).is_displayed()
    choose(page, "platform", "linux/arm64")
    assert shown(page) == [image["id"] for image in data["images"] if "linux/arm64" in image["platforms"]]


def test_a_row_of_several_platforms_gives_each_ones_size_and_digest(page, family, tmp_path):
    """Entries as catalog.gather writes them for a two-platform index (catalog.PlatformImage):
    the platform filter is there from the data alone, and the row says each platform's facts."""
    entries, left = family
    both = ("linux/amd64", "linux/arm64")
    images = {e.id: tuple(catalog.PlatformImage(p, "sha256:" + hashlib.sha256(f"{e.id}{p}".encode()).hexdigest(),
                                                e.size + 1_000_000 * n, e.python,
                                                {**e.key_packages, **({"numpy": "2.4.0"} if n else {})})
                          for n, p in enumerate(both))
              for e in entries[:3]}
    two = [dataclasses.replace(e, platforms=both, images=images[e.id]) if e.id in images else e for e in entries]
    page.get(catalog.write(tmp_path, two, left, NOW).page.as_uri())
    assert platform_filter(page).is_displayed()
    for e in two[:3]:
        row = page.find_element(By.CSS_SELECTOR, f'tr[data-id="{e.id}"]')
        lines = [d.text for d in row.find_elements(By.CSS_SELECTOR, "td.size div.platform")]
        assert lines == [f"{i.platform.split('/')[1]}: {human_size(i.size)}" for i in e.images]
        digests = [d.text for d in row.find_elements(By.CSS_SELECTOR, "td.digest div.platform")]
        assert digests == [f"{i.platform.split('/')[1]}: {i.digest.removeprefix('sha256:')[:12]}" for i in e.images]
        if len({tuple(i.key_packages.items()) for i in e.images}) > 1:
            assert "arm64: " in row.text and "numpy 2.4.0" in row.text
    choose(page, "platform", "linux/arm64")
    assert shown(page) == ids(two, lambda e: e.id in images)


def test_the_copy_button_puts_the_pull_by_digest_command_on_the_clipboard(page, family):
    entries, _ = family
    page.execute_cdp_cmd("Browser.grantPermissions", {"permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    button = page.find_element(By.CSS_SELECTOR, f'tr[data-id="{entries[1].id}"] td.digest button')
    # The label changes when the clipboard's promise settles and changes back 1.5 s later; on a busy
    # machine a read right after the click can fall before or after, so every label is recorded.
    page.execute_script("""const b = arguments[0]; window.labels = [];
        new MutationObserver(() => window.labels.push(b.textContent))
            .observe(b, {childList: true, characterData: true, subtree: true});""", button)
    button.click()
    WebDriverWait(page, 10, poll_frequency=0.05).until(lambda p: p.execute_script("return window.labels.length"))
    assert page.execute_script("return window.labels[0]") == "copied"
    # What the clipboard holds, read back in the page the way a paste would.
    pasted = page.execute_async_script("navigator.clipboard.readText().then(arguments[0], e => arguments[0]('' + e))")
    assert pasted == f"docker pull {entries[1].image}@{entries[1].digest}"


# --- which tag for my machine ------------------------------------------------------------------

def doctor_verdicts(entries, host: Host) -> dict[str, str]:
    """doctor's worst status per image on this host (skip counts as ok). The family's images all
    ask for cuda>=MAJOR.MINOR of their CUDA: global.toml's check enforces NVIDIA_REQUIRE_CUDA."""
    rank = {"ok": 0, "skip": 0, "warn": 1, "fail": 2}
    out = {}
    for e in entries:
        image = Image(f"{e.image}@{e.digest}", cuda=e.cuda, require_cuda=f"cuda>={lifecycle.major_minor(e.cuda)}",
                      torch=e.key_packages.get("torch", ""), torch_archs=e.torch_archs)
        out[e.id] = max((f.status for f in doctor.judge_image(host, image, doctor.releases())), key=rank.get)
    return {i: "ok" if s == "skip" else s for i, s in out.items()}


# (what the person types, GPU picked, what nvidia-smi shows on such a host: driver, CUDA Version)
MACHINES = [
    pytest.param("12.2", "Tesla T4", "535.183.01", "12.2", id="old driver (R535, CUDA 12.2), T4: nothing runs"),
    pytest.param("560.35.03", "Tesla T4", "560.35.03", "12.6", id="R560 driver, T4: CUDA 12.6 only"),
    pytest.param("580.65", "L4", "580.65.06", "13.0", id="580.65 driver, L4"),
    pytest.param("13.0", "GB10 (DGX Spark)", "580.95.05", "13.0", id="CUDA 13.0, GB10: CUDA 12.6 through PTX JIT"),
    pytest.param("13.0", "Tesla P100", "580.95.05", "13.0", id="CUDA 13.0, P100: too old for CUDA 13"),
]


@pytest.mark.parametrize("typed,gpu,driver,driver_cuda", MACHINES)
def test_my_machine_lists_the_tags_doctor_passes(page, family, tmp_path, typed, gpu, driver, driver_cuda):
    entries, _ = family
    expected = doctor_verdicts(entries, Host(gpus=(Gpu(gpu, driver, gpuarch.GPUS[gpu]),), driver_cuda=driver_cuda))
    page.find_element(By.ID, "m-driver").send_keys(typed)
    Select(page.find_element(By.ID, "m-gpu")).select_by_value(gpu)
    runs = ids(entries, lambda e: expected[e.id] != "fail")
    assert shown(page) == runs
    statuses = page.execute_script("return Object.fromEntries([...document.querySelectorAll('#images tbody tr')]"
                                   ".filter(r => r.offsetParent !== null)"
                                   ".map(r => [r.dataset.id, r.querySelector('td.verdict').dataset.status]))")
    assert statuses == {i: expected[i] for i in runs}
    assert page.find_element(By.ID, "m-result").text.startswith(f"{len(runs)} of {len(entries)} images run on a {gpu}")
    # Narrowed further by the filters, and back to the whole family when cleared.
    choose(page, "flavor", "runtime")
    runtime = set(ids(entries, lambda e: e.flavor == "runtime"))
    assert shown(page) == [i for i in runs if i in runtime]
    shot = tmp_path / "catalog-page.png"
    assert page.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG")
    page.find_element(By.ID, "m-clear").click()
    choose(page, "flavor", "")
    assert shown(page) == ids(entries)


def test_the_cases_cover_every_verdict(family):
    """The machines above are worth testing: between them, rows that run, rows that run with a
    warning, and rows that do not."""
    entries, _ = family
    seen = set()
    for case in MACHINES:
        _, gpu, driver, driver_cuda = case.values
        seen |= set(doctor_verdicts(entries, Host(gpus=(Gpu(gpu, driver, gpuarch.GPUS[gpu]),), driver_cuda=driver_cuda)).values())
    assert seen == {"ok", "warn", "fail"}


@pytest.mark.parametrize("typed,driver,driver_cuda", [
    ("13.0", "580.65.06", "13.0"),          # a CUDA Version: the oldest driver that prints it
    ("12.3", "535.54.03", "12.3"),          # not in the table: the newest release below it decides the driver
    ("580.65", "580.65.06", "13.0"),        # the start of a driver in the table
    ("580.95.05", "580.95.05", "13.0"),
    ("Driver Version: 580.95.05", "580.95.05", "13.0"),   # pasted from nvidia-smi
    ("CUDA Version: 12.8", "570.26", "12.8"),
    ("570.124.06", "570.124.06", "12.8"),
    ("470.256.02", "470.256.02", "0"),      # older than every release in the table
])
def test_what_the_person_types_becomes_what_nvidia_smi_would_say(page, typed, driver, driver_cuda):
    assert page.execute_script("return catalogRule.machine(arguments[0])", typed) == {
        "driver": driver, "driverCuda": driver_cuda, "cuda": typed.split()[-1] == driver_cuda}


@pytest.mark.parametrize("typed", ["", "abc", "13"])
def test_input_that_is_neither_says_what_to_type(page, family, typed):
    assert page.execute_script("return catalogRule.machine(arguments[0])", typed) is None
    page.find_element(By.ID, "m-driver").send_keys(typed)
    Select(page.find_element(By.ID, "m-gpu")).select_by_value("L4")
    result = page.find_element(By.ID, "m-result").text
    assert ("Type the CUDA Version nvidia-smi prints" in result) == bool(typed) and ("images run" not in result)
    assert shown(page) == ids(family[0])


# Hosts as nvidia-smi describes them (driver, the CUDA Version it prints) from R470 to R580.
DRIVERS = [("470.256.02", "11.4"), ("525.147.05", "12.0"), ("535.183.01", "12.2"), ("560.35.03", "12.6"),
           ("570.124.06", "12.8"), ("575.57.08", "12.9"), ("580.95.05", "13.0")]


def test_the_pages_rule_is_doctors_for_every_gpu_driver_and_image(page, family):
    """Every GPU of the table x every driver x the family's images and images made to reach the
    rule's other branches (a CUDA doctor's table lacks, PTX-only and arch-specific torch builds, a
    CPU torch): the page's verdict is doctor's, for the driver typed and for its CUDA Version."""
    entries, _ = family
    torch = next(e for e in entries if e.key_packages.get("torch"))
    odd = [dataclasses.replace(torch, id=f"odd-{i}", cuda=cuda, torch_archs=archs) for i, (cuda, archs) in enumerate([
        ("12.3.2", ("sm_80",)), ("12.9.1", ("sm_80", "compute_80")), ("12.9.1", ("sm_90a", "sm_100f", "compute_120f")),
        ("12.9.1", ("sm_100a", "compute_90")),
        ("13.0.2", ()), ("11.8.0", ("sm_37", "sm_50", "compute_50")), ("12.1.1", ("compute_90",))])]
    images = entries + odd
    # As typed (the driver, or the CUDA Version), and as the host itself, which also reaches the
    # rule's minor-version compatibility: hosts whose nvidia-smi shows no CUDA Version, or shows
    # one its driver is older than the table says.
    cases = [(gpu, cc, driver, driver_cuda, typed) for gpu, cc in gpuarch.GPUS.items()
             for driver, driver_cuda in DRIVERS for typed in (driver, driver_cuda, None)]
    cases += [(gpu, cc, driver, driver_cuda, None) for gpu, cc in gpuarch.GPUS.items()
              for driver, driver_cuda in (("560.35.03", ""), ("550.54.14", "12.8"))]
    # One call: the page judges every image for every case.
    got = page.execute_script(
        "const [images, cases] = arguments;"
        "return cases.map(([gpu, cc, driver, driverCuda, typed]) => {"
        "  const host = typed === null ? {driver, driverCuda} : catalogRule.machine(typed);"
        "  return Object.fromEntries(images.map(e => [e.id, catalogRule.judge(e, host, cc).status])); })",
        json.loads(json.dumps([dataclasses.asdict(e) for e in images])), cases)
    for (gpu, cc, driver, driver_cuda, typed), verdicts in zip(cases, got, strict=True):
        expected = doctor_verdicts(images, Host(gpus=(Gpu(gpu, driver, cc),), driver_cuda=driver_cuda))
        assert verdicts == expected, (gpu, typed, {i: (verdicts[i], expected[i]) for i in verdicts if verdicts[i] != expected[i]})


def test_a_screenshot_for_the_docs_is_a_small_png():
    shot = REPO / "docs" / "catalog.png"
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) < 300_000
