"""A demo's output dir: every scenario writes into it the same way, and only into a dir it owns.

`safebasin demo` writes into --output-dir only when that dir is new, empty, or a demo dir of the same scenario (it
carries `.safebasin-demo`); it trains an arm only into a dir that this demo made for that arm (the marker lists
them), so a user's own files and runs are never replaced, and `--overwrite` is the one way to let a demo replace a
run it did not make. The outputs are written in one order, each atomically, summary.json last: a summary.json on
disk means the demo finished.
"""

import contextlib
import importlib
import json
import re
import time
from pathlib import Path
from typing import NamedTuple

from . import atomic
from .errors import UserError
from .registry import Registry

MARKER = ".safebasin-demo"
SUMMARY, GENERATIONS, REPORT, CONFIG = "summary.json", "generations.jsonl", "report.html", "demo_config.yaml"


class Scenario(NamedTuple):
    """A system's `safebasin demo NAME`, by the names of its two functions in `module`: imported only when that
    demo runs, so registering one costs nothing at start-up and imports no other system."""
    module: str
    make_config: str  # (preset, yaml_path, overrides) -> the scenario's validated config
    run: str  # (config, output_dir, overwrite=...) -> summary; it carries a `table` (columns, rows) and may carry a
    # shorter `terminal` table (title, columns, rows, notes, outputs) for the CLI
    output_dir: str | None = None  # --output-dir's default (None: runs/demo-NAME)
    about: str = ""  # one line for `--help`: the story the demo tells

    def config(self, *args, **kw):
        return getattr(importlib.import_module(self.module), self.make_config)(*args, **kw)

    def start(self, *args, **kw) -> dict:
        return getattr(importlib.import_module(self.module), self.run)(*args, **kw)


SCENARIOS: Registry[Scenario] = Registry("demo scenario")


def register_scenario(name: str, module: str, make_config: str, run: str, output_dir: str | None = None,
                      about: str = "") -> None:
    SCENARIOS.register(name, Scenario(module, make_config, run, output_dir, about))


def check_arm_names(names: list[str], reserved: set[str] | tuple = (), where: str = "demo", field: str = "arms") -> None:
    """Arm names are the rows of every table and the keys of every "vs base" difference: a reserved name (a row
    the demo makes itself) or two arms of one name (or one run dir) would mix two models in one row."""
    seen: dict[str, str] = {}
    for name in names:
        if name in reserved:
            raise UserError(f"{where}: field {field!r}: arm name {name!r} is reserved (the demo's own rows: "
                            f"{', '.join(sorted(reserved))}); choose another name")
        key = arm_dir_name(name)
        if key in seen:
            raise UserError(f"{where}: field {field!r}: arms {seen[key]!r} and {name!r} have the same name (or run dir "
                            f"{key!r}); give each arm its own name")
        seen[key] = name


def arm_dir_name(name: str) -> str:
    """An arm's run-dir name: "SURGE − retriever (BM25)" -> "surge-retriever-bm25"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "arm"


class DemoDir:
    """The dir one `safebasin demo SCENARIO` run writes into (see the module doc)."""

    def __init__(self, path: str | Path, scenario: str, config: dict, overwrite: bool = False):
        self.path, self.scenario, self.overwrite, self.config = Path(path), scenario, overwrite, config
        self.marker = self._claim()
        atomic.write_yaml(self.path / CONFIG, config)
        # the arm loop's bookkeeping, the same in every scenario: seconds per stage, each trained arm's compute, and
        # every scored row (generations.jsonl)
        self.timings: dict[str, float] = {}
        self.compute: dict[str, dict] = {}
        self.generations: list[dict] = []
        self._started = time.perf_counter()

    def _claim(self) -> dict:
        out = self.path
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: --output-dir exists and is not a directory")
        if (out / MARKER).is_file():
            try:
                marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
                if not isinstance(marker, dict) or not isinstance(marker.get("arms", []), list):
                    raise ValueError("not an object with a list of arms")
            except (ValueError, OSError) as e:
                raise UserError(f"{out / MARKER}: not a demo marker safebasin wrote ({e}); choose another --output-dir") from None
            if marker.get("scenario") != self.scenario:
                raise UserError(f"{out}: holds the outputs of `safebasin demo {marker.get('scenario')}`, not of "
                                f"{self.scenario}; choose another --output-dir")
            return marker
        if out.is_dir() and any(out.iterdir()) and not self._written_before_the_marker():
            raise UserError(f"{out}: not empty and not made by `safebasin demo` (no {MARKER}); a demo writes only into a "
                            "new or empty dir, or its own: choose another --output-dir")
        marker = {"scenario": self.scenario, "arms": self._legacy_arms() if out.is_dir() else []}
        try:
            out.mkdir(parents=True, exist_ok=True)
            atomic.write_json(out / MARKER, marker)
        except OSError as e:
            raise UserError(f"{out}: cannot write to the output dir: {e.strerror}") from None
        return marker

    def _written_before_the_marker(self) -> bool:
        """A demo dir from a safebasin that wrote no marker: its demo_config.yaml has exactly this scenario's keys."""
        import yaml

        try:
            saved = yaml.safe_load((self.path / CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            return False
        return isinstance(saved, dict) and set(saved) == set(self.config)

    def _legacy_arms(self) -> list[str]:
        from .train import MARKER as RUN_MARKER

        return sorted(p.name for p in self.path.iterdir() if p.is_dir() and (p / RUN_MARKER).is_file())

    def claim_arms(self, run_dirs: list[Path]) -> None:
        """Before any work: every arm's run dir is this demo's own, or new, or (with --overwrite) replaceable; a dir
        there that this demo did not make is refused, so an hour of scoring never ends in a refusal."""
        for run in map(Path, run_dirs):
            if run.resolve().parent != self.path.resolve():
                raise ValueError(f"an arm's run dir {run} is not inside the demo dir {self.path}")
            if run.name in self.marker["arms"] or self.overwrite:
                continue
            if run.exists() and (not run.is_dir() or any(run.iterdir())):
                raise UserError(f"{run}: an arm's run dir holds a run or files that this demo did not make; pass "
                                "--overwrite to let the demo replace a safebasin run there, or choose another --output-dir")
        self.marker["arms"] = list(dict.fromkeys([*self.marker["arms"], *(Path(r).name for r in run_dirs)]))
        atomic.write_json(self.path / MARKER, self.marker)  # before training: a killed demo still owns its arms

    def train_arm(self, tc, show_progress: bool = True) -> Path:
        """Train (or keep, when it finished with this very config) a claimed arm's run in `tc.output_dir`."""
        from .train import train_arm

        if Path(tc.output_dir).name not in self.marker["arms"]:
            raise ValueError(f"{tc.output_dir}: not claimed by claim_arms")
        return train_arm(tc, show_progress=show_progress)

    @contextlib.contextmanager
    def timed(self, key: str):
        """Seconds spent in the block, recorded as timings[key]. A scenario that does more per model than `score`
        wraps it all in the same key: the outer block ends last, so its time is the one kept."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = round(time.perf_counter() - t, 1)

    def train(self, name: str, tc, show_progress: bool = True) -> Path:
        """One arm trained (or its finished run kept), timed, its compute recorded; returns the run dir."""
        with self.timed(f"train {name}"):
            run = self.train_arm(tc, show_progress=show_progress)
        s = json.loads((run / "train_summary.json").read_text())
        self.compute[name] = {"tokens": s["tokens"], "seconds": s["seconds"], "steps": s["steps"]}
        return run

    def train_and_load(self, name: str, tc, show_progress: bool = True):
        """`train`, then (model, tokenizer, method) loaded from the run's model/, ready to score."""
        from . import methods
        from .train import MODEL_DIR

        run = self.train(name, tc, show_progress=show_progress)
        model, tok, _ = methods.load_model_folder(run / MODEL_DIR)
        return model, tok, methods.get(tc.method)(tc)

    def score(self, label: str, model, tok, benches: list, annotate=None, **evaluate_kw) -> dict:
        """One model scored through the one harness (`evaluate.evaluate_model`), timed; its rows (each first passed
        to `annotate(row)`, when given) join generations.jsonl. Returns its eval entry (benchmarks, utility)."""
        from .evaluate import evaluate_model

        with self.timed(f"eval {label}"):
            entry, rows = evaluate_model(model, tok, label, benches, **evaluate_kw)
        for row in rows if annotate else ():
            annotate(row)
        self.generations += rows
        return entry

    def stop_clock(self) -> dict[str, float]:
        """The timings with the total so far: what a summary records."""
        self.timings["total"] = round(time.perf_counter() - self._started, 1)
        return self.timings

    def roots(self) -> dict[str, Path]:
        """The machine's folders a summary may name, and what it says instead (see `portable`)."""
        from . import data, models

        ddir = data.data_dir(self.config.get("data_dir")) if isinstance(self.config.get("data_dir"), (str, type(None))) else None
        found = {"": self.path, "$SAFEBASIN_DATA_DIR": ddir, "$SAFEBASIN_CACHE": models.cache_dir(), "~": Path.home()}
        return {label: Path(p).expanduser().resolve() for label, p in found.items() if p}

    def finish(self, summary: dict, write_report) -> dict:
        """generations.jsonl, then the report (and its plots), then summary.json: the last file says it finished.
        The summary names no folder of this machine (`portable`), so it reads the same wherever it is copied."""
        summary = portable(summary, self.roots())
        (self.path / SUMMARY).unlink(missing_ok=True)
        atomic.write_jsonl(self.path / GENERATIONS, self.generations)
        write_report(self.path, summary, self.generations)
        atomic.write_json(self.path / SUMMARY, summary)
        return summary


def portable(value, roots: dict[str, Path]):
    """`value` with every machine path written against a named root: a path inside the demo dir (root label "")
    relative to it, the data dir as $SAFEBASIN_DATA_DIR/..., the cache as $SAFEBASIN_CACHE/..., the home dir as ~.
    The most specific root wins (the cache lies in the home dir)."""
    if isinstance(value, dict):
        return {k: portable(v, roots) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, roots) for v in value]
    if not isinstance(value, str) or "/" not in value:
        return value
    for label, root in sorted(roots.items(), key=lambda kv: -len(str(kv[1]))):
        r = str(root).rstrip("/")
        if r and r in value:  # the root itself, or a path below it; never a longer name it begins (/home/u2)
            value = re.sub(re.escape(r) + r"(/|(?![\w.-]))",
                           lambda m: (f"{label}/" if label else "") if m.group(1) else (label or "."), value)
    return value
