"""After bake: the immutable-tag guard, pushes, and what each image weighs.

A tag is a promise: an immutable tag never moves to another image. A builder that pushes as it
builds keeps one by not building its variant again; with the docker driver bake exports to the
engine's store, and dlenv pushes each variant's immutable tag itself, one after another (shared
layers are uploaded once), unless the registry already holds the same image under it. Floating
tags move later, in release, once the smoke checks pass. A push that fails for a moment is tried
again (retry.py); a registry that stopped answering stops the run in one line (what was pushed
stays pushed, and the rerun pushes the rest).
"""

from __future__ import annotations

import json
import time

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from dlenv import engine, graph, registry, retry
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

    def pushed(self, variant: Variant) -> tuple[str, dict[str, tuple]] | None:
        """(digest, platform -> identity) of what the immutable tag names in the registry: each
        image of its index; None if it names nothing.

        identity: the layers (diff ids) and the run-time config (env, labels, entrypoint...).
        A registry that cannot be read is an error: an immutable tag is never overwritten blind.
        """
        ref = self.plan.ref(variant.immutable)
        digest = registry.digest(ref)
        if digest is None:
            return None
        model = self.plan.matrix.model
        identities = {}
        try:
            for platform, (image_digest, _) in registry.images(model.registry, model.repository, digest).items():
                manifest, _ = registry.manifest(model.registry, model.repository, image_digest)
                image = json.loads(registry.blob(model.registry, model.repository, manifest["config"]["digest"]))
                c = image.get("config") or {}
                identities[platform] = (tuple(image.get("rootfs", {}).get("diff_ids", [])), c.get("Env") or [],
                                        c.get("Labels") or {}, c.get("Entrypoint") or [], c.get("Cmd") or [],
                                        c.get("WorkingDir") or "", c.get("User") or "")
        except (OSError, ValueError, KeyError) as exc:
            raise DlenvError(f"cannot read {ref}: {exc}", "check the registry") from None
        return digest, identities

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
        """The same identity for the image this build left in the engine's store (the engine's
        own platform's: Docker 26 inspected no other)."""
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
        current, identities = pushed
        if current == digest:
            return digest, None
        try:
            mine = self._identity(variant)
        except DockerException:
            mine = ()
        # The same platforms, and the same image for the one the engine shows (all of them come
        # from one set of build args and one cache, so one differing means a rebuild from scratch).
        if set(identities) == set(variant.platforms) and mine in identities.values():
            return current, None
        return current, (f"immutable tag {variant.immutable} already names {current[:19]}, another image than this "
                         f"build's {digest[:19]}: refusing to move it (a new commit gives a new build id)")

    def _push(self, variant: Variant) -> str | None:
        """Push a variant's immutable tag (floating tags move only after its smoke checks pass)."""
        ref = self.plan.ref(variant.immutable)
        try:
            retry.call(lambda: self.client.image.push(ref, quiet=True), is_transient=_transient_push)
        except DockerException as exc:
            return f"pushing {ref} failed{retry.attempts(exc)}: " + (_stderr(exc).strip().splitlines() or ["?"])[-1]
        return None

    def _stopped(self, variant: Variant, error: str) -> None:
        """A push or a read that failed because the registry no longer answers ends the run here:
        every later variant would fail the same way, and nothing may be promoted."""
        reg = self.plan.matrix.model.registry
        if not engine.registry_answers(reg):
            raise DlenvError(f"the registry {reg} stopped answering while dlenv pushed {variant.id}: {error}",
                             "start it again and rerun: what was pushed stays, the rest is pushed then")

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
                self._stopped(variant, error)
                return Result(variant.id, "failed", error=error, node=variant.node, seconds=seconds)
        size, images = None, ()
        model = self.plan.matrix.model
        try:
            if self.output == "push" and digest:
                found = registry.images(model.registry, model.repository, digest)
                images = tuple((p, *found[p]) for p in variant.platforms if p in found)
                missing = [p for p in variant.platforms if p not in found]
                if missing:
                    return Result(variant.id, "failed", (self.plan.ref(variant.immutable),), digest, seconds=seconds,
                                  node=variant.node, images=images,
                                  error=f"{variant.immutable} holds no {', '.join(missing)} image (its index holds "
                                        f"{', '.join(found) or 'none'})")
                size = images[0][2] if images else None
            elif self.output == "load":
                size = self.client.image.inspect(self.plan.ref(variant.immutable)).size
        except Exception:  # noqa: BLE001 - a size we cannot read is reported as unknown
            size = None
        tags = (self.plan.ref(variant.immutable),) if self.output == "push" else tuple(self.plan.ref(t) for t in variant.tags)
        return Result(variant.id, "built", tags, digest, size, seconds, node=variant.node, images=images)


def forget(plan: Plan, client: DockerClient | None = None) -> int:
    """Remove this run's images from the engine's store once they are pushed (and tested):
    the registry and the build cache keep what a rerun needs; an unpacked copy of every
    variant in the store is the largest thing on the data root. Returns how many went."""
    client = client or DockerClient()
    gone = 0
    # This run's own tags only: another run on this engine may be building the same repository.
    for ref in sorted({plan.ref(tag) for variant in plan.variants for tag in variant.tags}):
        try:
            if not client.image.exists(ref):   # `rmi --force` says nothing of an image that is not there
                continue
            client.image.remove(ref, force=True)
            gone += 1
        except DockerException:
            pass   # not in the store, or in use by a container the user started: theirs to keep
    return gone


def _stderr(exc: DockerException) -> str:
    return exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")


def _transient_push(exc: BaseException) -> bool:
    return isinstance(exc, DockerException) and retry.transient_output(_stderr(exc))

