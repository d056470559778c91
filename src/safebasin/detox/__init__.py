"""ADLM detoxification (Kwak, Kim and Hwang, ACL 2023, arXiv 2210.10329), on the shared core.

Importing this package registers its method (`adlm`), its baselines (`dapt`, `atcon`), its data sets
(`jigsaw`, `jigsaw-nontoxic`, `jigsaw-atcon`, `toxichat`) and benches (`rtp-toxic`, `rtp-nontoxic`,
`toxichat`); `safebasin.plugins` imports it before any registry lookup.
"""

from ..scenario import register_scenario
from ..evaluate import register_bench_kind
from . import adlm, baselines, data  # noqa: F401  (registration on import)
from .bench import (TOXICHAT_HEADLINE, TOXICITY_HEADLINE, ToxichatSettings, ToxicitySettings, evaluate_rtp,
                    evaluate_toxichat)

register_bench_kind("toxicity", evaluate_rtp, settings=ToxicitySettings, headline=TOXICITY_HEADLINE,
                    title="toxicity: sampled continuations (an offline scorer, not Perspective)")
register_bench_kind("toxicity-dialogue", evaluate_toxichat, settings=ToxichatSettings, headline=TOXICHAT_HEADLINE,
                    title="toxicity: replies to ToxiChat threads (an offline scorer)")

register_scenario("detox", "safebasin.detox.demo", "detox_config", "run_detox_demo",
                  about="ADLM against DAPT, ATCON and the base model (RealToxicityPrompts)")
