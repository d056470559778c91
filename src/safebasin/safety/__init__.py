"""System 1, safe fine-tuning by optimisation (arXiv 2508.12531): its broad safety panel (`panel`), its aligned
start (`align`), its scenario (`demo`: `safebasin demo`, registered here like every system's), the basin plot
(`basin`), the sweep analysis (`sweep_analysis`) and the method comparison (`compare`)."""

from ..evaluate import BenchSuite, register_bench_suite
from ..scenario import register_scenario
from . import panel

register_scenario("safety", "safebasin.safety.demo", "demo_config", "run_demo", output_dir="runs/demo",
                  about="align, then fine-tune badly and carefully, with and without EMA (the default)")
register_bench_suite("panel", BenchSuite(matches=panel.is_panel, expand=panel.expand, summarize=panel.summarize_entry,
                                         describe=panel.describe, store_rows=panel.store_rows,
                                         about="the broad safety panel: every harmful and over-refusal set, worst set "
                                               "and macro mean per half (panel:choose, panel:check: one half)"))
