"""System 1, safe fine-tuning by optimisation (arXiv 2508.12531): its broad safety panel (`panel`), its aligned
start (`align`) and its scenario, `safebasin demo` (registered here like every system's; its code is still
`safebasin.demo`)."""

from ..scenario import register_scenario

register_scenario("safety", "safebasin.demo", "demo_config", "run_demo")
