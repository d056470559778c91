"""The detox baselines, through the same loop and data as ADLM (Gehman et al. 2020; Gururangan et al. 2020).

DAPT: fine-tune (full or LoRA) on the non-toxic half of Jigsaw as plain text. ATCON: fine-tune on all of
Jigsaw with a control code before each text (`<|toxic|>` / `<|nontoxic|>`, written as plain text rather
than new special tokens, so the vocabulary stays the base model's), and generate after `<|nontoxic|>`.
"""

from ..methods import Method, register
from .data import CONTROL, NONTOXIC


@register
class DAPT(Method):
    name = "dapt"
    about = "detox baseline: fine-tuning on non-toxic text (DAPT)"

    implied = {"data": "jigsaw-nontoxic", "filter_safety": False}


@register
class ATCON(Method):
    name = "atcon"
    about = "detox baseline: a control code for toxic or not, prompted non-toxic (ATCON)"
    prompt_prefix = CONTROL[NONTOXIC] + " "

    implied = {"data": "jigsaw-atcon", "filter_safety": False}
