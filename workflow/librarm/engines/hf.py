"""The hf backend: a Hugging Face model in this process, batched, each row with its own seeded sampling.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from librarm.engines import Backend, ModelRef
from librarm.engines.base import ContextWindow, SampleRequest, SampleResult, SamplingConfig, is_positive_int


# ----------------------------------------------------------------------------- hf backend
def load_causal_lm(path: str, revision: str | None = None, threads: int | None = None):
    """Load tokenizer + causal LM the way every stage does (local folder or hub id)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(path, revision=revision)
    model = on_inference_device(AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=torch.float32))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok, model


def on_inference_device(model):
    """The model in eval mode, on the GPU when there is one (the hf backend's models otherwise
    stayed on the CPU of a GPU machine)."""
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval()


def render_chat(tokenizer, messages: Sequence[Mapping[str, str]]) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


# The config fields that hold a model's context length, by model family (Llama, Qwen, Mistral...;
# GPT-2; MPT, Falcon; ChatGLM; ...): the first one a config sets is its context.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length", "seq_length",
                "n_ctx")


def config_context_window(model_config) -> ContextWindow | None:
    """A model's context length from its transformers config (a multimodal config's text part),
    named by the field it comes from; None when the config has none of CONTEXT_KEYS."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for cfg in (text, model_config):
        for key in CONTEXT_KEYS:
            value = getattr(cfg, key, None)
            if is_positive_int(value):
                return ContextWindow(value, f"its config.json {key}")
    return None


def cache_argument(model) -> str:
    """The name of the KV cache in the model's forward: `cache` since a transformers 5 release,
    `past_key_values` before (the vLLM environment pins an older transformers). The other name is
    swallowed by the forward's **kwargs, and decoding without the cache, one token of context a
    step, produced garbage there."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class HFSampler:
    """Batched sampling with a KV cache and one torch.Generator per row (per-sample seeds)."""

    COMPACT_AT = 0.75       # finished rows leave the batch once the live share falls to this

    def __init__(self, path: str, cfg: SamplingConfig, revision: str | None = None, threads: int | None = None,
                 model=None, tokenizer=None):
        self.name = f"hf:{path}"
        self.cfg = cfg
        if model is None:
            tokenizer, model = load_causal_lm(path, revision, threads)
        self.tok, self.model = tokenizer, model
        eos = self.tok.eos_token_id
        self.stop_ids = {eos} if isinstance(eos, int) else set(eos or [])
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            self.stop_ids.add(gen_eos)
        elif gen_eos:
            self.stop_ids.update(gen_eos)

    def encode_prompts(self, requests: Sequence[SampleRequest]) -> list[list[int]]:
        return [self.tok(render_chat(self.tok, r.messages), add_special_tokens=False)["input_ids"] for r in requests]

    def context_window(self) -> ContextWindow | None:
        return config_context_window(self.model.config)

    def generate(self, requests: Sequence[SampleRequest]) -> list[SampleResult]:
        return self.generate_ids(self.encode_prompts(requests), [r.seed for r in requests])

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int]) -> list[SampleResult]:
        """Sample from prompts already tokenized (e.g. a trainer's rollouts), one seed each."""
        out: list[SampleResult] = []
        bs = self.cfg.batch_size
        for start in range(0, len(prompt_ids), bs):
            out.extend(self._generate_batch(prompt_ids[start:start + bs], seeds[start:start + bs]))
        return out

    def _generate_batch(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int]) -> list[SampleResult]:
        import torch

        cfg = self.cfg
        pad = self.tok.pad_token_id
        n = len(prompt_ids)
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompt_ids):           # left padding
            input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        gens = [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        reason = ["length"] * n
        generated: list[list[int]] = [[] for _ in range(n)]
        stop_token: list[list[int]] = [[] for _ in range(n)]
        # `rows`: the original row of each batch row. Finished rows leave the batch (their cache rows
        # too) once a quarter of the batch has finished, so a batch costs about what its live rows
        # cost without copying the cache at every stop. Each row's numbers do not depend on its
        # batch neighbours (tests/test_sampling.py), so dropping rows changes no token.
        rows = list(range(n))
        alive = [True] * n
        # the model may sit on a GPU; token choice stays on the CPU with each row's own generator,
        # so a seed draws the same noise on every device
        dev = self.model.device
        input_ids, mask, position = input_ids.to(dev), mask.to(dev), position.to(dev)
        with torch.inference_mode():
            res = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position, use_cache=True)
            past = res.past_key_values
            logits = res.logits[:, -1, :].float().cpu()
            next_pos = position[:, -1:] + 1
            noise = _ExponentialNoise(gens, logits.shape[-1], cfg.max_new_tokens)
            for _ in range(cfg.max_new_tokens):
                tokens = self._pick(logits, noise)
                for j, r in enumerate(rows):
                    if not alive[j]:
                        tokens[j] = pad
                    elif tokens[j] in self.stop_ids:
                        reason[r], stop_token[r], alive[j], tokens[j] = "stop", [tokens[j]], False, pad
                    else:
                        generated[r].append(tokens[j])
                n_alive = sum(alive)
                if not n_alive:
                    break
                if n_alive <= self.COMPACT_AT * len(rows):
                    keep = [j for j in range(len(rows)) if alive[j]]
                    index = torch.tensor(keep, dtype=torch.long)
                    on_dev = index.to(dev)
                    past.batch_select_indices(on_dev)
                    noise.keep(index)
                    mask, next_pos = mask[on_dev], next_pos[on_dev]
                    rows, tokens, alive = [rows[j] for j in keep], [tokens[j] for j in keep], [True] * len(keep)
                step = torch.tensor([[t] for t in tokens], dtype=torch.long, device=dev)
                mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long, device=dev)], dim=1)
                res = self.model(input_ids=step, attention_mask=mask, position_ids=next_pos,
                                 **{cache_argument(self.model): past}, use_cache=True)
                past = res.past_key_values
                logits = res.logits[:, -1, :].float().cpu()
                next_pos = next_pos + 1
        return [SampleResult(self.tok.decode(g, skip_special_tokens=True), reason[i], len(prompt_ids[i]), len(g),
                             token_ids=g + stop_token[i])
                for i, g in enumerate(generated)]

    def _pick(self, logits, noise: "_ExponentialNoise") -> list[int]:
        """One token per batch row (rows already finished get one too; the caller ignores it),
        drawn with that row's own generator."""
        import torch

        cfg = self.cfg
        if cfg.temperature == 0:
            return logits.argmax(-1).tolist()
        probs = torch.softmax(logits / cfg.temperature, dim=-1)
        if cfg.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            probs = probs / probs.sum(-1, keepdim=True)
        return noise.sample(probs)


class _ExponentialNoise:
    """Per-row seeded sampling for a whole batch at once, with the same tokens as a per-row
    `torch.multinomial(p, 1, generator=g)`: torch draws that one sample as argmax(p / q) with
    q ~ Exp(1) from g, and a generator's exponential draws are the same whether taken one step at
    a time or several steps in one call. So each row draws the noise of `chunk` steps in one call,
    and every step is one vectorized argmax (one multinomial call per row and step took 1.50 s of
    6.0 s for 512 tiny-policy samples, cProfile). Checked by tests/test_sampling.py against
    multinomial."""

    BUDGET = 1 << 22                # floats held per batch: bounds memory for big vocabularies

    def __init__(self, gens, vocab: int, max_steps: int):
        self.gens, self.vocab = list(gens), vocab
        self.chunk = max(1, min(max_steps, self.BUDGET // max(1, vocab * len(self.gens))))
        self.buf, self.rows, self.step = None, None, 0

    def keep(self, index) -> None:
        """Keep only these batch rows (finished rows leave the batch)."""
        self.gens = [self.gens[int(i)] for i in index]
        if self.rows is not None:
            self.rows = self.rows[index]

    def sample(self, probs) -> list[int]:
        import torch

        if self.buf is None or self.step == self.chunk:
            self.buf = torch.stack([torch.empty(self.chunk, self.vocab).exponential_(generator=g)
                                    for g in self.gens])
            self.rows, self.step = torch.arange(len(self.gens)), 0
        q = self.buf[self.rows, self.step]
        self.step += 1
        return (probs / q).argmax(-1).tolist()


# ----------------------------------------------------------------------------- registry entry
def _make(spec, ref: ModelRef, cfg: SamplingConfig, threads: int | None, seed: int) -> HFSampler:
    return HFSampler(ref.path, cfg, ref.revision, threads)


BACKEND = Backend("hf", _make, "a Hugging Face model in this process (CPU or one GPU)")
