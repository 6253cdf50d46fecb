"""SPDX 2.3 SBOM of a root filesystem, by BuildKit's SBOM generator protocol.

BuildKit passes the rootfs to scan in $BUILDKIT_SCAN_SOURCE (and others, optionally, in the
folders under $BUILDKIT_SCAN_SOURCE_EXTRAS) and takes each <name>.spdx.json written to
$BUILDKIT_SCAN_DESTINATION as an in-toto statement whose subject it fills in. Listed: the
Debian packages dpkg installed and every Python distribution (*.dist-info) on the usual paths,
each with its package URL. The standard library only: it runs in a plain Debian python3.
"""

import hashlib
import json
import os
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

PYTHON_ROOTS = ("opt", "usr/lib", "usr/local")


def os_release(root: Path) -> dict:
    for name in ("etc/os-release", "usr/lib/os-release"):
        path = root / name
        if path.is_file():
            pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
            return {k: v.strip().strip('"') for k, v in pairs}
    return {}


def debian_packages(root: Path, distro: str) -> list:
    status = root / "var/lib/dpkg/status"
    if not status.is_file():
        return []
    out = []
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if not fields.get("Status", "").endswith(" installed"):
            continue
        name, version, arch = fields["Package"], fields["Version"], fields.get("Architecture", "")
        purl = f"pkg:deb/{distro}/{name}@{version}" + (f"?arch={arch}" if arch else "")
        out.append(("deb", name, version, purl, fields.get("Maintainer", ""), "dpkg"))
    return out


def python_packages(root: Path, files: list | None = None) -> list:
    """Python distributions under PYTHON_ROOTS; their METADATA paths are appended to files."""
    seen, out = set(), []
    for top in PYTHON_ROOTS:
        base = root / top
        if not base.is_dir():
            continue
        for folder, dirs, _ in os.walk(base):
            for d in [d for d in dirs if d.endswith(".dist-info")]:
                meta = Path(folder, d, "METADATA")
                if not meta.is_file():
                    continue
                head = meta.read_text(errors="replace").split("\n\n", 1)[0]
                fields = dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)
                name, version = fields.get("Name", ""), fields.get("Version", "")
                key = (name.lower().replace("_", "-"), version, folder)
                if name and key not in seen:
                    seen.add(key)
                    if files is not None:
                        files.append(meta)
                    purl = f"pkg:pypi/{key[0]}@{version}"
                    # Where it is installed: pip, for one, is often both in the OS and in a venv.
                    out.append(("pypi", name, version, purl, fields.get("Author", ""), str(Path(folder).relative_to(root))))
            # dist-info folders hold no packages of their own; do not walk into them.
            dirs[:] = [d for d in dirs if not d.endswith(".dist-info")]
    return out


def document(root: Path, name: str) -> dict:
    release = os_release(root)
    found_files: list = []
    found = debian_packages(root, release.get("ID", "debian")) + python_packages(root, found_files)
    packages = []
    for kind, pkg, version, purl, supplier, where in sorted(found, key=lambda p: (p[3], p[5])):
        ident = hashlib.sha256(f"{purl} {where}".encode()).hexdigest()[:16]
        entry = {"SPDXID": f"SPDXRef-Package-{kind}-{ident}", "name": pkg, "versionInfo": version,
                 "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "licenseConcluded": "NOASSERTION",
                 "licenseDeclared": "NOASSERTION", "copyrightText": "NOASSERTION",
                 "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                   "referenceLocator": purl}]}
        if supplier:
            entry["supplier"] = "Organization: " + supplier.replace("\n", " ")[:200]
        packages.append(entry)
    # The document's time is when the packages last changed (the newest package database or
    # METADATA file; BuildKit gives the scanner no build time), its namespace follows from what
    # it lists: the same image gives the same document.
    stamps = [f.stat().st_mtime for f in [root / "var/lib/dpkg/status", *found_files] if f.is_file()]
    epoch = int(max(stamps, default=0))
    content = hashlib.sha256(json.dumps(packages, sort_keys=True).encode()).hexdigest()
    return {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT", "name": name,
        "documentNamespace": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'dlenv-sbom:' + content)}",
        "creationInfo": {"created": datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "creators": ["Tool: dlenv-sbom-scan"]},
        "packages": packages,
        "relationships": [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                           "relatedSpdxElement": p["SPDXID"]} for p in packages],
    }


def write(root: Path, destination: Path) -> None:
    name = root.name or "rootfs"
    statement = {"_type": "https://in-toto.io/Statement/v0.1", "predicateType": "https://spdx.dev/Document",
                 "subject": [], "predicate": document(root, name)}
    (destination / f"{name}.spdx.json").write_text(json.dumps(statement, indent=1, sort_keys=True))


def main() -> int:
    source, destination = os.environ.get("BUILDKIT_SCAN_SOURCE"), os.environ.get("BUILDKIT_SCAN_DESTINATION")
    if not source or not destination:
        print("dlenv-sbom-scan: BuildKit sets BUILDKIT_SCAN_SOURCE and BUILDKIT_SCAN_DESTINATION", file=sys.stderr)
        return 2
    write(Path(source), Path(destination))
    extras = Path(os.environ.get("BUILDKIT_SCAN_SOURCE_EXTRAS") or "/nonexistent")
    if extras.is_dir():
        for root in sorted(p for p in extras.iterdir() if p.is_dir()):
            write(root, Path(destination))
    return 0


if __name__ == "__main__":
    sys.exit(main())
