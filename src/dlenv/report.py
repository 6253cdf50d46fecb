"""What people read: the plan as a table, live progress while building, the summary table.

Machines read the same facts as JSON (`--json`, `--metadata FILE`).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dlenv.plan import Plan
from dlenv.results import Result

# Off a terminal (CI logs, pipes) rich would wrap at 80 columns; tables read better wider.
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def say(text: str) -> None:
    """A line for people, printed as it is (no rich markup: messages quote brackets and paths);
    in a log, not wrapped (a heartbeat naming three steps is longer than the log's width)."""
    console.print(text, markup=False, soft_wrap=not console.is_terminal)


def warn(text: str) -> None:
    """A line about something left out or stale, in yellow: the run goes on."""
    head, sep, rest = text.partition(": ")
    console.print(Text.assemble((head + sep, "yellow"), rest))


def error(exc: Exception) -> None:
    """An error as one line, however long: machines and people grep for it."""
    console.print(Text.assemble(("dlenv: error: ", "bold red"), " ".join(str(exc).split())), soft_wrap=True)


STYLE = {"built": "green", "passed": "green", "failed": "bold red", "not attempted": "yellow", "skipped": "dim",
         "building": "cyan", "waiting": "dim"}


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def plan_json(plan: Plan) -> dict:
    return {
        "build": plan.build.build,
        "image": plan.image,
        "variants": [{"id": v.id, "cuda": v.cuda, "flavor": v.flavor, "os": v.os, "stack": list(v.stack),
                      "platforms": list(v.platforms),
                      "tags": [plan.ref(t) for t in v.tags], "immutable": plan.ref(v.immutable),
                      "chain": list(v.chain), "target": v.node,
                      # only where it applies, so plans without such aliases read as before
                      **({"aliases_of_newer": {plan.ref(t): newer for t, newer in v.newer}}
                         if v.newer else {})} for v in plan.variants],
        # "platform" only where one platform of a combination is left out (it keeps the others)
        "left_out": [{"id": left.id, "reason": left.reason, "detail": left.detail, "fix": left.fix,
                      **({"platform": left.platform} if left.platform else {})} for left in plan.left_out],
    }


def _short(node) -> str:
    if node.kind == "rootfs":
        return f"{node.rootfs.suite} rootfs"
    if node.kind == "cuda":
        return dict(node.args)["FLAVOR"]
    if node.kind == "recipe":
        return node.summary
    return node.base_image or "os"


def plan_table(plan: Plan) -> None:
    table = Table(title=f"{plan.image}  build {plan.build.build}", title_justify="left")
    table.add_column("variant", style="bold")
    table.add_column("platforms")
    table.add_column("tags")
    table.add_column("layer chain")
    for v in plan.variants:
        # An alias several variants render names the newest CUDA's: say so under the others.
        tags = [*v.tags, *(f"({tag} names the newer {newer})" for tag, newer in v.newer)]
        table.add_row(v.id, "\n".join(v.platforms), "\n".join(tags), " > ".join(_short(plan.nodes[n]) for n in v.chain))
    console.print(table)
    left = [x for x in plan.left_out if x.reason != "unselected"]
    if left:
        out = Table(title="left out", title_justify="left")
        out.add_column("combination")
        out.add_column("why")
        out.add_column("detail")
        for x in left:
            # A platform left out of a variant that keeps its others is named under the variant.
            out.add_row(x.id + (f"\n{x.platform}" if x.platform else ""), x.reason,
                        x.detail + (f"\nfix: {x.fix}" if x.fix else ""))
        console.print(out)
    unselected = sum(1 for x in plan.left_out if x.reason == "unselected" and not x.platform)
    images = sum(len(v.platforms) for v in plan.variants)
    console.print(f"{len(plan.variants)} variants ({images} images: {', '.join(plan.platforms) or 'none'}), "
                  f"{len(plan.nodes)} bake targets" + (f", {unselected} not selected" if unselected else ""))


class LiveBoard:
    """A live table: one row per variant, its status and what is being built for it.

    Off a terminal (CI logs, pipes) there is no table: a line per layer node and per variant as
    each finishes, and a heartbeat line naming what is running at least every `heartbeat`
    seconds, so that a log is never silent for long."""

    def __init__(self, plan: Plan, heartbeat: float = 60):
        self.order = [v.id for v in plan.variants]
        self.status = {v: "waiting" for v in self.order}
        self.current = {v: "" for v in self.order}
        self.started = time.monotonic()
        self.done_at: dict[str, float] = {}
        self.nodes_done: set[str] = set()
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=True) \
            if console.is_terminal else None
        self.heartbeat = heartbeat
        self._stop = threading.Event()
        self._beats = threading.Thread(target=self._beat, daemon=True) if not self.live else None

    def __enter__(self) -> LiveBoard:
        if self.live:
            self.live.__enter__()
        else:
            say(f"building {len(self.order)} variants (a line as each image is exported and each variant finishes, "
                f"and what is running every {self.heartbeat:.0f}s)")
            assert self._beats is not None
            self._beats.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.__exit__(*exc)
        else:
            self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            say(self.heartbeat_line())

    def heartbeat_line(self) -> str:
        """One line: how far, and the distinct steps running (several variants share a step)."""
        running = [v for v in self.order if self.status[v] == "building"]
        waiting = sum(1 for v in self.order if self.status[v] == "waiting")
        done = len(self.order) - len(running) - waiting
        steps = list(dict.fromkeys(" ".join(self.current[v].split())[:70] for v in running if self.current[v]))
        shown = "; ".join(steps[:3]) + (f"; +{len(steps) - 3} more" if len(steps) > 3 else "")
        return (f"... {time.monotonic() - self.started:.0f}s: {done} of {len(self.order)} variants done, "
                f"{len(running)} building, {waiting} waiting" + (f"; now: {shown}" if shown else ""))

    def drop(self, variants: set[str]) -> None:
        """Variants left out after the board started (unreachable sources): no longer shown."""
        self.order = [v for v in self.order if v not in variants]
        if self.live:
            self.live.update(self._render())

    def node_done(self, node: str, seconds: float | None = None) -> None:
        """A node's image was exported (in a log: a line, once per node)."""
        if node in self.nodes_done:
            return
        self.nodes_done.add(node)
        if not self.live:
            took = f" in {seconds:.0f}s" if seconds is not None else ""
            say(f"exported {node}{took} ({time.monotonic() - self.started:.0f}s since the start)")

    def _render(self) -> Table:
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(width=14)
        table.add_column(style="bold")
        table.add_column(style="dim", overflow="ellipsis", no_wrap=True, max_width=70)
        table.add_column(justify="right")
        now = time.monotonic()
        for variant in self.order:
            state = self.status[variant]
            seconds = self.done_at.get(variant, now) - self.started if state != "waiting" else 0
            table.add_row(Text(state, style=STYLE.get(state, "")), variant,
                          self.current[variant] if state == "building" else "",
                          f"{seconds:.0f}s" if state != "waiting" else "")
        return table

    def step(self, variant: str, text: str) -> None:
        if self.status.get(variant) in ("waiting", "building"):
            self.status[variant] = "building"
            self.current[variant] = text
            if self.live:
                self.live.update(self._render())

    def finish(self, variant: str, status: str) -> None:
        self.status[variant] = status
        self.done_at[variant] = time.monotonic()
        if self.live:
            self.live.update(self._render())
        else:
            console.print(Text.assemble((f"{status:<14}", STYLE.get(status, "")), variant,
                                        f"  {self.done_at[variant] - self.started:.0f}s"))


def summary_table(plan: Plan, results: list[Result]) -> None:
    table = Table(title=f"{plan.image}  build {plan.build.build}", title_justify="left")
    for column in ("variant", "status", "tags", "digest", "size", "seconds"):
        table.add_column(column, justify="right" if column in ("size", "seconds") else "left")
    shown = [r for r in results if r.status != "skipped"]
    for r in shown:
        detail = "\n".join(t.rsplit(":", 1)[-1] for t in r.tags)
        if r.status != "built":
            detail = r.error.strip().splitlines()[-1][:100] if r.error.strip() else ""
        table.add_row(r.variant, Text(r.status, style=STYLE.get(r.status, "")), Text(detail),
                      r.digest.removeprefix("sha256:")[:12], human_size(r.size) if r.status == "built" else "",
                      f"{r.seconds:.0f}" if r.status == "built" else "")
    console.print(table)
    skipped = len(results) - len(shown)
    if skipped:
        console.print(f"{skipped} variants skipped: their sources are unreachable from here (listed above; "
                      "`nox -s list -- --check` shows them again)")
    shown_nodes = set()
    for r in results:
        if r.status == "failed" or (r.status == "not attempted" and r.node not in shown_nodes):
            shown_nodes.add(r.node)
            what = escape(r.variant) + " failed" if r.status == "failed" else f"node {escape(r.node)} failed"
            console.print(f"[bold red]{what}[/] at {escape(r.node)}:")
            console.print(Text("\n".join(r.error.rstrip().splitlines()[-10:]), style="red"))


def results_json(plan: Plan, results: list[Result]) -> dict:
    return {"image": plan.image, "build": plan.build.build, "revision": plan.build.revision,
            "variants": [r.to_json() for r in results]}


def write_json(path: Path | None, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if path is None or str(path) == "-":
        sys.stdout.write(text)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def smoke_table(verdicts) -> None:
    """One row per variant and check; failures with their output below."""
    table = Table(title="smoke checks", title_justify="left")
    for column in ("variant", "check", "status", "seconds", "note"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for v in verdicts:
        note = v.output.splitlines()[0][:80] if v.status != "passed" and v.output else ""
        if getattr(v, "proven", ""):
            note = f"proven on this image at {v.proven}, not run again (--retest runs it)"
        table.add_row(f"{v.variant} ({v.platform})" if getattr(v, "platform", "") else v.variant,
                      v.check + (" (GPU)" if v.gpu else ""), Text(v.status, style=STYLE.get(v.status, "")),
                      f"{v.seconds:.1f}", Text(note))
    console.print(table)
    for v in verdicts:
        if v.status == "failed":
            console.print(f"[bold red]{escape(v.variant)}[/]: {escape(v.check)} ({escape(v.origin)}):")
            console.print(Text(v.output.rstrip()[-2000:], style="red"))


def promotions(items) -> None:
    for p in items:
        if p.promoted:
            say(f"promoted {p.variant}: {', '.join(p.tags)} -> {p.digest[:19]}")
        else:
            console.print(f"[yellow]not promoted[/] {escape(p.variant)}: {escape(p.reason)}")
