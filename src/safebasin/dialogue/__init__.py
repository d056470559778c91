"""Context-dependent instruction tuning for dialogue (Kwak, Kim and Hwang, arXiv 2311.07006), on the shared core.

From the previous turns the model writes a per-turn instruction, then the response that carries it out.
Importing this package registers the `dailydialog` data set and bench and the `context-instruct` and
`fixed-instruct` methods; `safebasin.plugins` imports it before any registry lookup.
"""

from ..scenario import register_scenario
from ..evaluate import register_bench_kind
from . import data, methods  # noqa: F401  (registration on import)
from .bench import DIALOGUE_HEADLINE, DialogueSettings, evaluate_dialogue

register_bench_kind("dialogue", evaluate_dialogue, settings=DialogueSettings, headline=DIALOGUE_HEADLINE)

register_scenario("dialogue", "safebasin.dialogue.demo", "dialogue_config", "run_dialogue_demo",
                  about="context-dependent instructions against fixed ones and plain fine-tuning (DailyDialog)")
