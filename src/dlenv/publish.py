"""After bake: the immutable-tag guard, pushes, and what each image weighs.

A tag is a promise: an immutable tag never moves to another image. A builder that pushes as it
builds keeps one by not building its variant again; with the docker driver bake exports to the
engine's store, and dlenv pushes each variant's immutable tag itself, one after another (shared
layers are uploaded once), unless the registry already holds the same image under it. Floating
tags move later, in release, once the smoke checks pass.
"""

from __future__ import annotations

import json
import time

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from dlenv import graph, registry
from dlenv.errors import DlenvError
from dlenv.plan import Plan, Variant
from dlenv.results import Board, Result


class Publisher:
    def __init__(self, plan: Plan, output: graph.Output, options: graph.Options, board: Board):
        self.plan = plan
        self.output = output
        self.options = options
        self.board = board
        self.client = DockerClient()

    def pushed(self, variant: Variant) -> tuple[str, tuple] | None:
        """(digest, identity) of what the immutable tag names in the registry; None if it names nothing.

        identity: the layers (diff ids) and the run-time config (env, labels, entrypoint...).
        A registry that cannot be read is an error: an immutable tag is never overwritten blind.
        """
        ref = self.plan.ref(variant.immutable)
        digest = registry.digest(ref)
        if digest is None:
            return None
        model = self.plan.matrix.model
        try:
            config = registry.image_manifest(model.registry, model.repository, digest)["config"]["digest"]
            image = json.loads(registry.blob(model.registry, model.repository, config))
        except (OSError, ValueError, KeyError) as exc:
            raise DlenvError(f"cannot read {ref}: {exc}", "check the registry") from None
        c = image.get("config") or {}
        return digest, (tuple(image.get("rootfs", {}).get("diff_ids", [])), c.get("Env") or [], c.get("Labels") or {},
                        c.get("Entrypoint") or [], c.get("Cmd") or [], c.get("WorkingDir") or "", c.get("User") or "")

    def already_pushed(self, variant: Variant) -> Result | None:
        """For a builder that pushes as it builds: the variant's Result when its immutable tag
        exists (kept by not building it again) or cannot be checked; None to build it."""
        try:
            pushed = self.pushed(variant)
        except DlenvError as exc:
            return Result(variant.id, "failed", error=str(exc), node=variant.node)
        if pushed:
            return Result(variant.id, "built", (self.plan.ref(variant.immutable),), pushed[0],
                          node=variant.node, error="already pushed: not rebuilt")
        return None

    def _identity(self, variant: Variant) -> tuple:
        """The same identity for the image this build left in the engine's store."""
        found = self.client.image.inspect(self.plan.ref(variant.immutable))
        c = found.config
        return (tuple(found.root_fs.layers or ()), c.env or [], c.labels or {}, c.entrypoint or [], c.cmd or [],
                str(c.working_dir or ""), c.user or "")

    def _keep_immutable(self, variant: Variant, digest: str) -> tuple[str, str | None]:
        """An immutable tag is a promise: never point it at another image.

        The same image built again (same layers and config: only its attestations, which record
        the build, differ) keeps the pushed one. Returns (the digest the tag names after this
        build, an error or None).
        """
        try:
            pushed = self.pushed(variant)
        except DlenvError as exc:
            return digest, str(exc)
        if pushed is None:
            return digest, None
        current, identity = pushed
        if current == digest:
            return digest, None
        try:
            mine = self._identity(variant)
        except DockerException:
            mine = ()
        if mine == identity:
            return current, None
        return current, (f"immutable tag {variant.immutable} already names {current[:19]}, another image than this "
                         f"build's {digest[:19]}: refusing to move it (a new commit gives a new build id)")

    def _push(self, variant: Variant) -> str | None:
        """Push a variant's immutable tag (floating tags move only after its smoke checks pass)."""
        ref = self.plan.ref(variant.immutable)
        try:
            self.client.image.push(ref, quiet=True)
        except DockerException as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return f"pushing {ref} failed: " + (stderr.strip().splitlines() or ["?"])[-1]
        return None

    def finish(self, variant: Variant, meta: dict, seconds: float) -> Result:
        """A variant bake built: pushed where dlenv pushes (guarded), sized, its Result.

        meta: what buildx's metadata file says of its target; seconds: when bake exported it.
        """
        digest = meta.get("containerimage.digest", "")
        if self.output == "push" and not self.options.push:
            self.board.step(variant.id, "pushing")
            started = time.monotonic()
            kept, error = self._keep_immutable(variant, digest)
            if not error and kept == digest:
                error = self._push(variant)
            digest = kept
            seconds += time.monotonic() - started
            if error:
                return Result(variant.id, "failed", error=error, node=variant.node, seconds=seconds)
        size = None
        model = self.plan.matrix.model
        try:
            if self.output == "push" and digest:
                size = registry.compressed_size(model.registry, model.repository, digest)
            elif self.output == "load":
                size = self.client.image.inspect(self.plan.ref(variant.immutable)).size
        except Exception:  # noqa: BLE001 - a size we cannot read is reported as unknown
            size = None
        tags = (self.plan.ref(variant.immutable),) if self.output == "push" else tuple(self.plan.ref(t) for t in variant.tags)
        return Result(variant.id, "built", tags, digest, size, seconds, node=variant.node)


def forget(plan: Plan, client: DockerClient | None = None) -> int:
    """Remove the family's images from the engine's store once they are pushed (and tested):
    the registry and the build cache keep what a rerun needs; an unpacked copy of every
    variant in the store is the largest thing on the data root. Returns how many went."""
    client = client or DockerClient()
    gone = 0
    for image in client.image.list(repository_or_tag=plan.image):
        try:
            client.image.remove(image, force=True)
            gone += 1
        except DockerException:
            pass   # in use by a container the user started: theirs to keep
    return gone
