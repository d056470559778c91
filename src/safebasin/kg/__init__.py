"""SURGE: knowledge-graph-grounded dialogue with subgraph retrieval (Kang et al., arXiv 2305.18846), on the shared core.

Importing this package registers the `opendialkg` data set and bench, the `kg-prompt` (baselines) and
`surge` methods, the `kg` bench kind and the `safebasin demo kg` scenario; `safebasin.plugins` imports it
before any registry lookup.
"""

from ..scenario import register_scenario
from ..evaluate import register_bench_kind
from . import data, methods  # noqa: F401  (registration on import)
from .bench import KG_HEADLINE, KGSettings, evaluate_kg

register_bench_kind("kg", evaluate_kg, settings=KGSettings, headline=KG_HEADLINE)

register_scenario("kg", "safebasin.kg.demo", "kg_config", "run_kg_demo",
                  about="SURGE against fixed knowledge sources in the prompt (OpenDialKG)")
