"""Greedy and sampling ``generate`` with a key/value cache, for causal and seq2seq LM heads.

A causal LM's prompt (prefill) runs once in PyNative: compiled, every new prompt length would cost a compile of
its own, and padding prompts to shared lengths costs more than compiling saves (measured, GPT-2 at 8 x 16 tokens:
PyNative 0.53 s, compiled 0.32 s, compiled and padded to 32 tokens 0.64 s). An encoder-decoder's encoder and first
decoder position run as one compiled graph, the encoder input padded on the right (masked) to a multiple of
``STATIC_CACHE_BUCKET`` so nearby lengths share it (the encoder is a small part of generating).

The decode steps then run as one compiled graph (``jit=True``) over a static cache: every cached key/value tensor
is kept at a fixed length ``L`` with the real entries right-aligned and the empty slots on the left masked out. A
step feeds the new token, the model appends its key/value (length ``L + 1``) and the graph drops the leftmost
(empty) slot, so shapes never change and the decode graph compiles once. Right alignment keeps the distance between
any two cached entries equal to their distance in the text, so relative position schemes (T5 buckets, ALiBi,
sliding windows) see what the growing cache shows them; absolute positions are passed as ``position_ids`` computed
from the mask, as on the growing-cache path.

A mixed adapter batch (``PeftModel.generate(..., adapter_names=...)``) has compiled steps of its own: the LoRA layers
read the per-row adapter numbers from a Parameter (an input of the graph), so other ``adapter_names`` of the same
batch size reuse them.
"""
import itertools
import math

import numpy as np
import mindspore as ms
from mindspore import Tensor

from ..utils.graph_state import graph_version
from .model_outputs import check_model_inputs

STATIC_CACHE_BUCKET = 32  # cache lengths are rounded up to a multiple of this, so nearby lengths share a graph
_GRAPH_IDS = itertools.count()


def _as_numpy(x):
    if x is None:
        return None
    return x.asnumpy() if isinstance(x, Tensor) else np.asarray(x)


def select_next_tokens(logits, do_sample, temperature, top_k, top_p, rng):
    """Next token ids (batch,) from last-position logits (batch, vocab): argmax, or a sample after
    temperature, top-k and top-p (nucleus) filtering."""
    logits = logits.astype(np.float64)
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    logits = logits / temperature
    if top_k and top_k > 0:
        kth = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, -1)
        drop_sorted = np.cumsum(sorted_probs, -1) - sorted_probs > top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs])


class GenerationMixin:
    """Adds ``generate`` to models whose forward returns ``logits`` and, with ``use_cache``, ``past_key_values``.

    A model sets ``supports_static_cache = True`` when its decode step is right with the static cache: positions
    taken from ``position_ids`` (causal) or from the attention mask / key distances, never from the cache length,
    and a ``decoder_attention_mask`` honoured (seq2seq). Others decode in PyNative with a growing cache.
    """

    supports_static_cache = False

    def generate(self, input_ids=None, attention_mask=None, inputs_embeds=None, max_new_tokens=20,
                 do_sample=False, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=None, pad_token_id=None,
                 decoder_start_token_id=None, use_cache=True, seed=None, jit=True, adapter_names=None,
                 **model_kwargs):
        """Generate up to ``max_new_tokens`` tokens. Decoder-only models return prompt + new ids (new ids only
        when prompted by ``inputs_embeds``); encoder-decoder models return decoder ids starting with the
        decoder start token. Finished rows are padded with ``pad_token_id``. With ``use_cache`` and ``jit`` the
        decode steps run as one compiled graph over a static cache (see the module docstring), kept on the model
        for later calls; ``jit=False`` runs them in PyNative with a growing cache (same ids).

        ``adapter_names`` (one adapter per row, ``"__base__"`` for none) is given by ``PeftModel.generate``, which
        puts the LoRA layers into mixed-batch mode around this call; here it selects the mixed decode graph."""
        if input_ids is None and inputs_embeds is None:
            raise ValueError("generate needs input_ids or inputs_embeds")
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        if adapter_names is not None and len(adapter_names) != batch:
            raise ValueError("Length of `adapter_names` should be the same as the number of inputs, but got "
                             f"{len(adapter_names)} and {batch} respectively.")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        prefix_past = None if self.config.is_encoder_decoder else model_kwargs.get("past_key_values")
        check_model_inputs(input_ids, inputs_embeds, attention_mask,
                           0 if prefix_past is None else prefix_past[0][0].shape[2], self.config.vocab_size)
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad = pad_token_id if pad_token_id is not None else self.config.pad_token_id
        pad = eos if pad is None else pad
        pad = 0 if pad is None else pad
        options = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                       rng=np.random.default_rng(seed))
        static = use_cache and jit and self.supports_static_cache
        variant = "plain" if adapter_names is None else "mixed"
        was_training = self.training
        self.set_train(False)
        try:
            if self.config.is_encoder_decoder:
                return self._generate_seq2seq(input_ids, attention_mask, inputs_embeds, max_new_tokens, eos, pad,
                                              decoder_start_token_id, use_cache, static, options, model_kwargs,
                                              variant)
            return self._generate_causal(input_ids, attention_mask, inputs_embeds, max_new_tokens, eos, pad,
                                         use_cache, static, options, model_kwargs, variant)
        finally:
            self.set_train(was_training)

    def _decode_loop(self, step_fn, batch, max_new_tokens, eos, pad, options):
        """Run ``step_fn(new_ids or None) -> last logits`` until every row emits ``eos`` or the budget ends."""
        finished = np.zeros(batch, dtype=bool)
        new_tokens = []
        last = None
        for _ in range(max_new_tokens):
            logits = step_fn(last)
            tokens = select_next_tokens(logits, **options)
            tokens = np.where(finished, pad, tokens).astype(np.int64)
            new_tokens.append(tokens)
            if eos is not None:
                finished |= tokens == eos
            last = tokens
            if finished.all():
                break
        return np.stack(new_tokens, axis=1)

    def _compiled_step(self, kind, variant):
        """The compiled ``kind`` step (a key of ``_STEPS``) for ``variant`` (``"plain"``, or ``"mixed"`` for mixed
        adapter batches), rebuilt when adapter state changed since it was made (MindSpore compiles it at its first
        call and again only for new input shapes)."""
        cache = self.__dict__.setdefault("_compiled_step_cache", {})
        cached = cache.get((kind, variant))
        if cached is not None and cached[0] == graph_version():
            return cached[1]
        step = _STEPS[kind](self)
        # A name of its own per build: MindSpore warns when a new jit object reuses a compiled function's name.
        step.__name__ = step.__qualname__ = f"{kind}_{next(_GRAPH_IDS)}"
        graph = ms.jit(step)
        cache[(kind, variant)] = (graph_version(), graph)
        return graph

    def _generate_causal(self, input_ids, attention_mask, inputs_embeds, max_new_tokens, eos, pad, use_cache,
                         static, options, model_kwargs, variant="plain"):
        ids = _as_numpy(input_ids)
        embeds = inputs_embeds
        batch = ids.shape[0] if ids is not None else embeds.shape[0]
        prompt_len = ids.shape[1] if embeds is None else embeds.shape[1]
        mask = _as_numpy(attention_mask)
        mask = np.ones((batch, prompt_len), np.int64) if mask is None else mask.astype(np.int64)
        prefix_past = model_kwargs.pop("past_key_values", None)
        state = {"ids": ids, "mask": mask, "past": None, "embeds": embeds, "graph": None}
        embed_layer = self.get_input_embeddings()
        static = static and not model_kwargs and max_new_tokens > 1
        limit = getattr(self.config, "max_position_embeddings", None)
        if limit is not None and mask.sum(1).max() + max_new_tokens - 2 >= limit:
            static = False  # the PyNative forward names the position that runs past the model's limit

        def step(last):
            if state["graph"] is not None:
                mask = np.concatenate([state["mask"], np.ones((batch, 1), np.int64)], 1)
                positions = np.clip(mask.sum(1, keepdims=True) - 1, 0, None)
                logits, state["past"] = state["graph"](Tensor(last[:, None], ms.int32), Tensor(mask, ms.int32),
                                                       Tensor(positions, ms.int32), ms.mutable(state["past"]))
                state["mask"] = mask[:, 1:]
                return logits.asnumpy()
            if last is not None:
                col = last[:, None]
                state["mask"] = np.concatenate([state["mask"], np.ones((batch, 1), np.int64)], 1)
                state["ids"] = col if state["ids"] is None else np.concatenate([state["ids"], col], 1)
                if state["embeds"] is not None and not use_cache:
                    state["embeds"] = ms.ops.cat([state["embeds"], embed_layer(Tensor(col, ms.int32))], 1)
            kwargs = dict(model_kwargs)
            if use_cache and last is not None:
                kwargs["input_ids"] = Tensor(last[:, None], ms.int32)
            elif state["embeds"] is not None:
                kwargs["inputs_embeds"] = state["embeds"]
            else:
                kwargs["input_ids"] = Tensor(state["ids"], ms.int32)
            fed = kwargs["inputs_embeds"].shape[1] if "inputs_embeds" in kwargs else kwargs["input_ids"].shape[1]
            positions = np.clip(np.cumsum(state["mask"], 1) - 1, 0, None)[:, -fed:]
            past = state["past"] if state["past"] is not None else prefix_past
            out = self(attention_mask=Tensor(state["mask"], ms.int32), position_ids=Tensor(positions, ms.int32),
                       past_key_values=past, use_cache=use_cache, **kwargs)
            if use_cache:
                state["past"] = out["past_key_values"]
            if static:  # from now on: the compiled step over a static cache
                state["past"], state["mask"] = _static_cache(state["past"], state["mask"], max_new_tokens)
                state["graph"] = self._compiled_step("causal_decode", variant)
            return out["logits"][:, -1, :].asnumpy()

        new = self._decode_loop(step, batch, max_new_tokens, eos, pad, options)
        if embeds is not None:
            return Tensor(new, ms.int64)
        return Tensor(np.concatenate([ids, new], 1).astype(np.int64))

    def _generate_seq2seq(self, input_ids, attention_mask, inputs_embeds, max_new_tokens, eos, pad,
                          decoder_start_token_id, use_cache, static, options, model_kwargs, variant="plain"):
        start = self.config.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
        start = pad if start is None else start
        if attention_mask is None:
            shape = input_ids.shape if inputs_embeds is None else inputs_embeds.shape[:2]
            attention_mask = Tensor(np.ones(shape, np.int32))
        prefix = model_kwargs.pop("prefix_key_values", None)
        static = static and not model_kwargs and max_new_tokens > 1
        batch = (input_ids if inputs_embeds is None else inputs_embeds).shape[0]
        state = {"dec": np.full((batch, 1), start, np.int64), "past": None, "graph": None, "mask": None,
                 "first": None}

        def go_static(past):
            cached = np.ones((batch, past[0][0].shape[2]), np.int64)
            state["past"], state["mask"] = _static_cache(past, cached, max_new_tokens)
            state["graph"] = self._compiled_step("seq2seq_decode", variant)

        if static and inputs_embeds is None and prefix is None:
            # encoder and first decoder position in one graph, the encoder input padded to a bucket length
            ids, mask = _pad_right(_as_numpy(input_ids), _as_numpy(attention_mask), STATIC_CACHE_BUCKET)
            attention_mask = Tensor(mask, ms.int32)
            encoder_outputs, first, past = self._compiled_step("seq2seq_prefill", variant)(
                Tensor(ids, ms.int32), attention_mask, Tensor(state["dec"], ms.int32))
            state["first"] = first.asnumpy()
            go_static(past)
        else:
            encoder_outputs = self.get_encoder()(input_ids=input_ids, attention_mask=attention_mask,
                                                 inputs_embeds=inputs_embeds)["last_hidden_state"]

        def step(last):
            if last is None and state["first"] is not None:
                return state["first"]
            if state["graph"] is not None:
                mask = np.concatenate([state["mask"], np.ones((batch, 1), np.int64)], 1)
                logits, state["past"] = state["graph"](Tensor(last[:, None], ms.int32), Tensor(mask, ms.int32),
                                                       encoder_outputs, attention_mask, ms.mutable(state["past"]))
                state["mask"] = mask[:, 1:]
                return logits.asnumpy()
            if last is not None:
                state["dec"] = np.concatenate([state["dec"], last[:, None]], 1)
            dec = state["dec"][:, -1:] if (use_cache and last is not None) else state["dec"]
            kwargs = dict(model_kwargs)
            if state["past"] is None and prefix is not None:
                kwargs["prefix_key_values"] = prefix
            out = self(attention_mask=attention_mask, encoder_outputs=encoder_outputs,
                       decoder_input_ids=Tensor(dec, ms.int32), past_key_values=state["past"],
                       use_cache=use_cache, **kwargs)
            if use_cache:
                state["past"] = out["past_key_values"]
            if static:
                go_static(state["past"])
            return out["logits"][:, -1, :].asnumpy()

        new = self._decode_loop(step, batch, max_new_tokens, eos, pad, options)
        return Tensor(np.concatenate([np.full((batch, 1), start, np.int64), new], 1))


def _static_length(filled, new_tokens):
    """Static cache length for ``filled`` cached positions and ``new_tokens`` to generate (the last one is never
    fed back), rounded up to ``STATIC_CACHE_BUCKET``."""
    needed = filled + new_tokens - 1
    return int(math.ceil(needed / STATIC_CACHE_BUCKET)) * STATIC_CACHE_BUCKET


def _static_cache(past, mask, new_tokens):
    """``past`` and its (batch, filled) attention ``mask`` padded on the left with empty, masked slots to the
    static cache length for ``new_tokens`` more tokens."""
    length = _static_length(mask.shape[1], new_tokens)
    empty = np.zeros((mask.shape[0], length - mask.shape[1]), np.int64)
    return _left_pad(past, length), np.concatenate([empty, mask], 1)


def _left_pad(past, length):
    """Each layer's self-attention key and value (its first two entries, (batch, heads, seq, dim)) padded with
    zeros on the left of the sequence axis to ``length``; cross-attention entries are kept."""
    def pad(tensor):
        zeros = ms.ops.zeros(tensor.shape[:2] + (length - tensor.shape[2],) + tensor.shape[3:], tensor.dtype)
        return ms.ops.cat([zeros, tensor], 2)

    return tuple((pad(layer[0]), pad(layer[1])) + tuple(layer[2:]) for layer in past)


def _last_position(logits):
    """The compiled step's (batch, vocabulary) logits of its last position; a reshape when it has one: MindSpore
    2.10's CPU ``StridedSlice`` took 7.5 ms of each 46 ms T5-small step at batch 8 for ``logits[:, -1, :]``."""
    if logits.shape[1] == 1:
        return logits.reshape(logits.shape[0], logits.shape[-1])
    return logits[:, -1, :]


def _drop_oldest(past):
    """In the compiled step: each layer's self-attention key and value without their first (empty) slot."""
    kept = ()
    for layer in past:
        kept = kept + ((layer[0][:, :, 1:], layer[1][:, :, 1:]) + layer[2:],)
    return kept


def _pad_right(ids, mask, bucket):
    """``ids`` and ``mask`` (batch, length) padded on the right with masked id 0 to a multiple of ``bucket``, so
    nearby prompt lengths share compiled graphs (a masked key gets exactly zero attention)."""
    extra = -ids.shape[1] % bucket
    if not extra:
        return ids, mask
    zeros = np.zeros((ids.shape[0], extra), np.int64)
    return np.concatenate([ids, zeros], 1), np.concatenate([mask.astype(np.int64), zeros], 1)


def _causal_decode(model):
    def decode(input_ids, attention_mask, position_ids, past_key_values):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=past_key_values, use_cache=True)
        return _last_position(out["logits"]), _drop_oldest(out["past_key_values"])
    return decode


def _seq2seq_decode(model):
    def decode(decoder_input_ids, decoder_attention_mask, encoder_outputs, attention_mask, past_key_values):
        out = model(attention_mask=attention_mask, encoder_outputs=encoder_outputs,
                    decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                    past_key_values=past_key_values, use_cache=True)
        return _last_position(out["logits"]), _drop_oldest(out["past_key_values"])
    return decode


def _seq2seq_prefill(model):
    def prefill(input_ids, attention_mask, decoder_input_ids):
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                    use_cache=True)
        return out["encoder_last_hidden_state"], _last_position(out["logits"]), out["past_key_values"]
    return prefill


# The compiled steps; the cache goes in as ms.mutable (a tuple of Tensors is otherwise a constant: one compile
# per step).
_STEPS = {"causal_decode": _causal_decode, "seq2seq_decode": _seq2seq_decode, "seq2seq_prefill": _seq2seq_prefill}
