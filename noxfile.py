"""nox sessions: each one calls the dlenv package; no logic lives here.

Arguments after `--` go to the command, e.g. `nox -s build-matrix -- --select 'cuda=13.*'`.
"""

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["list"]


def _install(session, *extra):
    session.install("-e", ".", *extra)


@nox.session(name="build-matrix")
def build_matrix(session):
    """Build the family in matrix.yaml with one bake graph and push it (starts an engine if needed)."""
    _install(session)
    session.run("python", "-m", "dlenv", "build", *session.posargs)


@nox.session(name="list")
def list_(session):
    """Print the expanded matrix: variants, tags, layer chains, and what is left out and why."""
    _install(session)
    session.run("python", "-m", "dlenv", "list", *session.posargs)


@nox.session
def bake(session):
    """Print the generated bake definition without building."""
    _install(session)
    session.run("python", "-m", "dlenv", "bake", *session.posargs)


@nox.session
def compose(session):
    """Write a docker-compose.yaml for one image of the family: `-- TAG [--gpus 0,1] [--user] ...`."""
    _install(session)
    session.run("python", "-m", "dlenv", "compose", *session.posargs)


@nox.session
def doctor(session):
    """Check this host (and an image: `-- TAG`) for running the family on its GPUs; each problem with its fix."""
    _install(session)
    session.run("python", "-m", "dlenv", "doctor", *session.posargs)


@nox.session
def engine(session):
    """Start (`-- up`), stop (`-- down`) or show (`-- status`) the engine and registry dlenv runs."""
    _install(session)
    session.run("python", "-m", "dlenv", "engine", *(session.posargs or ["status"]))


@nox.session
def tests(session):
    """Unit tests, then tests against a real engine and registry (started if needed)."""
    # check-jsonschema: the workflows are checked against GitHub's schema, offline; jsonschema:
    # the matrices against matrix.schema.json; selenium: the catalog page in Debian's chromium.
    _install(session, "pytest>=8", "check-jsonschema", "jsonschema", "selenium")
    session.run("pytest", *session.posargs)


@nox.session
def schema(session):
    """Regenerate matrix.schema.json (editors check matrix.yaml with it) from the model in config.py."""
    _install(session)
    session.run("python", "-m", "dlenv.schema", *session.posargs)


@nox.session
def bench(session):
    """Time the test family: one bake vs one `docker build` per variant (prints a table)."""
    _install(session)
    session.run("python", "benchmarks/bench_build.py", *session.posargs)


@nox.session
def lint(session):
    """ruff over the package, tests and benchmarks."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def smoke(session):
    """Run every selected variant's checks in its image; GPU checks run where there is a GPU."""
    _install(session)
    session.run("python", "-m", "dlenv", "smoke", *session.posargs)


@nox.session
def merge(session):
    """Join each variant's per-platform tags (`build-matrix -- --per-platform`) into one index under its immutable tag."""
    _install(session)
    session.run("python", "-m", "dlenv", "merge", *session.posargs)


@nox.session
def promote(session):
    """Move floating tags to the tested digests of variants whose smoke results (JSON) passed."""
    _install(session)
    session.run("python", "-m", "dlenv", "promote", *session.posargs)


@nox.session
def shards(session):
    """Split the family into build jobs: `-- --count 4` prints the CI matrix (JSON)."""
    _install(session)
    session.run("python", "-m", "dlenv", "shards", *session.posargs)


# What GitHub's hosted Ubuntu image preinstalls that a release build never uses: the Android SDK,
# .NET, Haskell (GHC, ghcup) and the CodeQL bundle. Removing them gives a build runner back more
# disk than its 14 GB of free space (docs/release.md says how much, and where the figures come from).
PREINSTALLED = ("/usr/local/lib/android", "/usr/share/dotnet", "/opt/ghc", "/usr/local/.ghcup",
                "/opt/hostedtoolcache/CodeQL")


@nox.session(name="free-disk", venv_backend="none")
def free_disk(session):
    """Remove the toolchains GitHub's hosted Ubuntu runners preinstall and a build never uses (root; hosted runners only)."""
    session.run("df", "-h", "/", external=True)
    session.run("rm", "-rf", *PREINSTALLED, external=True)
    session.run("df", "-h", "/", external=True)


@nox.session
def lock(session):
    """Pin every base image and OS bootstrap to a digest in the lock file (`-- --check`: report what moved)."""
    _install(session)
    session.run("python", "-m", "dlenv", "lock", *session.posargs)


@nox.session
def catalog(session):
    """Write the published family's catalog (Markdown, JSON and a page, index.html) from the registry: `-- --output DIR`."""
    _install(session)
    session.run("python", "-m", "dlenv", "catalog", *session.posargs)


@nox.session
def rehearse(session):
    """The release pipeline on this machine: plan -> each shard built -> smoke -> promote -> catalog."""
    _install(session)
    session.run("python", "-m", "dlenv", "rehearse", *session.posargs)
