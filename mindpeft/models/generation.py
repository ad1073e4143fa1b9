"""Greedy and sampling ``generate`` with a key/value cache, for causal and seq2seq LM heads (PyNative)."""
import numpy as np
import mindspore as ms
from mindspore import Tensor

from .model_outputs import check_model_inputs


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
    """Adds ``generate`` to models whose forward returns ``logits`` and, with ``use_cache``, ``past_key_values``."""

    def generate(self, input_ids=None, attention_mask=None, inputs_embeds=None, max_new_tokens=20,
                 do_sample=False, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=None, pad_token_id=None,
                 decoder_start_token_id=None, use_cache=True, seed=None, **model_kwargs):
        """Generate up to ``max_new_tokens`` tokens. Decoder-only models return prompt + new ids (new ids only
        when prompted by ``inputs_embeds``); encoder-decoder models return decoder ids starting with the
        decoder start token. Finished rows are padded with ``pad_token_id``."""
        if input_ids is None and inputs_embeds is None:
            raise ValueError("generate needs input_ids or inputs_embeds")
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
        was_training = self.training
        self.set_train(False)
        try:
            if self.config.is_encoder_decoder:
                return self._generate_seq2seq(input_ids, attention_mask, inputs_embeds, max_new_tokens, eos, pad,
                                              decoder_start_token_id, use_cache, options, model_kwargs)
            return self._generate_causal(input_ids, attention_mask, inputs_embeds, max_new_tokens, eos, pad,
                                         use_cache, options, model_kwargs)
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

    def _generate_causal(self, input_ids, attention_mask, inputs_embeds, max_new_tokens, eos, pad, use_cache,
                         options, model_kwargs):
        ids = _as_numpy(input_ids)
        embeds = inputs_embeds
        batch = ids.shape[0] if ids is not None else embeds.shape[0]
        prompt_len = ids.shape[1] if embeds is None else embeds.shape[1]
        mask = _as_numpy(attention_mask)
        mask = np.ones((batch, prompt_len), np.int64) if mask is None else mask.astype(np.int64)
        prefix_past = model_kwargs.pop("past_key_values", None)
        state = {"ids": ids, "mask": mask, "past": None, "embeds": embeds}
        embed_layer = self.get_input_embeddings()

        def step(last):
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
            return out["logits"][:, -1, :].asnumpy()

        new = self._decode_loop(step, batch, max_new_tokens, eos, pad, options)
        if embeds is not None:
            return Tensor(new, ms.int64)
        return Tensor(np.concatenate([ids, new], 1).astype(np.int64))

    def _generate_seq2seq(self, input_ids, attention_mask, inputs_embeds, max_new_tokens, eos, pad,
                          decoder_start_token_id, use_cache, options, model_kwargs):
        start = self.config.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
        start = pad if start is None else start
        if attention_mask is None:
            shape = input_ids.shape if inputs_embeds is None else inputs_embeds.shape[:2]
            attention_mask = Tensor(np.ones(shape, np.int32))
        encoder_outputs = self.get_encoder()(input_ids=input_ids, attention_mask=attention_mask,
                                             inputs_embeds=inputs_embeds)["last_hidden_state"]
        batch = encoder_outputs.shape[0]
        state = {"dec": np.full((batch, 1), start, np.int64), "past": None}
        prefix = model_kwargs.pop("prefix_key_values", None)

        def step(last):
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
            return out["logits"][:, -1, :].asnumpy()

        new = self._decode_loop(step, batch, max_new_tokens, eos, pad, options)
        return Tensor(np.concatenate([np.full((batch, 1), start, np.int64), new], 1))
