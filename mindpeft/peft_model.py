"""``PeftModel`` and its task subclasses: a base model plus adapters, saved and loaded in HF peft's format."""
import os
from contextlib import contextmanager

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from .config import PeftConfig
from .models.model_outputs import ModelOutputMixin, check_model_inputs
from .models.gradient_checkpointing import (disable_gradient_checkpointing, enable_gradient_checkpointing,
                                            is_gradient_checkpointing)
from .models.modeling_utils import sync_parameter_names
from .models.peft_integration import convert_legacy_target_modules
from .utils.constants import CONFIG_NAME, TASK_HEAD_MODULE_NAMES
from .utils.hub import resolve_folder
from .utils.io import atomic_directory, write_text
from .utils.other import ModulesToSaveWrapper, wrap_modules_to_save
from .utils.peft_types import PeftType, TaskType
from .utils.registry import get_model_class
from .utils.save_and_load import (get_peft_model_state_dict, load_peft_weights, save_peft_weights,
                                  set_peft_model_state_dict, unchanged_on_error)


class PeftModel(ModelOutputMixin, nn.Cell):
    """Base model with adapters; ``construct`` forwards to the adapted model.

    Layer-injecting methods (LoRA, IA3, ...) live in ``base_model``, a tuner wrapping the model. Prompt-learning
    methods (prompt tuning, prefix tuning, P-tuning) keep the model as ``base_model`` and add ``prompt_encoder``,
    whose virtual tokens the task subclasses prepend to the inputs (or, for prefix tuning, to every layer's keys
    and values).

    Args:
        model: the base model, any ``mindspore.nn.Cell`` (mindpeft.models, mindnlp, mindone or your own).
        peft_config: the adapter configuration, e.g. a :class:`LoraConfig`.
        adapter_name: name of the first adapter.
    """

    def __init__(self, model, peft_config, adapter_name="default", autocast_adapter_dtype=True, _encoded_prompts=False):
        super().__init__()
        model_cls = get_model_class(peft_config.peft_type)
        if peft_config.base_model_name_or_path is None:
            peft_config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
        self._prepare_config(peft_config)
        convert_legacy_target_modules(peft_config, model)
        self.peft_type = peft_config.peft_type
        self._is_prompt_learning = peft_config.is_prompt_learning
        if self._is_prompt_learning:
            self._prompt_configs = {}
            self._prompt_adapter = adapter_name
            self._prompt_state_version = 0
            self._prompts_disabled = False
            self.base_model = model
            self.prompt_encoder = nn.CellDict()
            self._add_prompt_adapter(adapter_name, peft_config, _encoded_prompts)
        else:
            self.base_model = model_cls(model, {adapter_name: peft_config}, adapter_name)
            self.base_model.cast_adapter_dtype(adapter_name, autocast_adapter_dtype)
        if peft_config.inference_mode:
            self.set_train(False)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_model", "_cells", "_params"):
                raise
            return getattr(self.base_model, name)

    def construct(self, *args, adapter_names=None, **kwargs):
        if adapter_names is not None:  # a mixed adapter batch: one adapter per row ("__base__": none)
            return self._mixed_batch_call(adapter_names, args, kwargs)
        if self._is_prompt_learning and not self._prompts_disabled:
            return self._prompt_forward(*args, **kwargs)
        return self.base_model(*args, **kwargs)

    def _mixed_batch_call(self, adapter_names, args, kwargs):
        with self._mixed_adapter_batch(adapter_names, args, kwargs):
            return self.construct(*args, **kwargs)

    def _mixed_adapter_batch(self, adapter_names, args, kwargs):
        """The tuner's ``mixed_adapter_batch`` context for a call with ``args``/``kwargs`` (see
        :meth:`mindpeft.tuners.lora.LoraModel.mixed_adapter_batch`)."""
        from .tuners.lora.mixed_batch import batch_size_of

        if self._is_prompt_learning or not hasattr(self.base_model, "mixed_adapter_batch"):
            raise ValueError(f"adapter_names (mixed adapter batches) needs LoRA adapters; this model's are "
                             f"{self.peft_type.value}")
        return self.base_model.mixed_adapter_batch(adapter_names, batch_size_of(args, kwargs))

    def _prompt_forward(self, *args, **kwargs):
        raise ValueError(f"{type(self).__name__} does not support prompt learning; use get_peft_model with a "
                         "config whose task_type is CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS or TOKEN_CLS")

    def _prompt_batch_size(self, input_ids, inputs_embeds, attention_mask):
        """The batch size of a prompt-learning forward, after the checks the base model would make of the inputs
        it is given in their stead (shapes; in PyNative ids in the vocabulary): the virtual tokens are added here,
        so a 1-D, empty or out-of-vocabulary input would otherwise fail in a concat or gather kernel."""
        check_model_inputs(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                           vocab_size=self._vocab_size, length_limit=False)
        return _batch_size(input_ids, inputs_embeds)

    # ----- configuration and parameters -------------------------------------------------------------
    @property
    def peft_config(self):
        return self._prompt_configs if self._is_prompt_learning else self.base_model.peft_config

    @property
    def active_adapter(self):
        return self._prompt_adapter if self._is_prompt_learning else self.base_model.active_adapter

    @property
    def active_adapters(self):
        return [self._prompt_adapter] if self._is_prompt_learning else self.base_model.active_adapters

    @property
    def active_peft_config(self):
        return self.peft_config[self.active_adapters[0]]

    @property
    def state_version(self):
        """Changes whenever adapter state read by compiled graphs changes (see :mod:`mindpeft.training`)."""
        return self._prompt_state_version if self._is_prompt_learning else self.base_model.state_version

    def get_base_model(self):
        return self.base_model if self._is_prompt_learning else self.base_model.model

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        """Gradient checkpointing of the base model's layers (:mod:`mindpeft.models.gradient_checkpointing`)."""
        enable_gradient_checkpointing(self.get_base_model(), gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        disable_gradient_checkpointing(self.get_base_model())

    @property
    def is_gradient_checkpointing(self):
        return is_gradient_checkpointing(self.get_base_model())

    def get_nb_trainable_parameters(self):
        """``(trainable, total)`` parameter counts; each shared Parameter is counted once."""
        trainable, total = 0, 0
        for _, param in self.parameters_and_names():
            n = int(np.prod(param.shape))
            total += n
            if param.requires_grad:
                trainable += n
        return trainable, total

    def get_layer_status(self):
        """HF peft's :func:`mindpeft.get_layer_status` of this model."""
        from .utils.status import get_layer_status
        return get_layer_status(self)

    def get_model_status(self):
        """HF peft's :func:`mindpeft.get_model_status` of this model."""
        from .utils.status import get_model_status
        return get_model_status(self)

    def print_trainable_parameters(self):
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    # ----- adapters ----------------------------------------------------------------------------------
    def add_adapter(self, adapter_name, peft_config, autocast_adapter_dtype=True):
        """Add a second adapter (not activated; use :meth:`set_adapter`); ``autocast_adapter_dtype`` as in
        :func:`mindpeft.get_peft_model`."""
        if peft_config.peft_type != self.peft_type:
            raise ValueError(f"Cannot combine adapters with different peft types. Found {self.peft_type.value} "
                             f"and {peft_config.peft_type.value}.")
        if adapter_name in self.peft_config:
            raise ValueError(f"Adapter {adapter_name!r} already exists")
        if peft_config.base_model_name_or_path is None:
            peft_config.base_model_name_or_path = self.active_peft_config.base_model_name_or_path
        self._prepare_config(peft_config)
        convert_legacy_target_modules(peft_config, self.get_base_model())
        with unchanged_on_error(self, new_adapter=adapter_name):  # a refused config leaves no half-added adapter
            if self._is_prompt_learning:
                self._add_prompt_adapter(adapter_name, peft_config)
                return
            self.base_model.peft_config[adapter_name] = peft_config
            self.base_model.inject_adapter(self.base_model.model, adapter_name)
            self.base_model.cast_adapter_dtype(adapter_name, autocast_adapter_dtype)

    def _prepare_config(self, peft_config):
        """Add the task's head (classifier, qa_outputs) to ``modules_to_save`` before injection, as HF peft does."""
        heads = TASK_HEAD_MODULE_NAMES.get(peft_config.task_type.value if peft_config.task_type else None, [])
        if heads and hasattr(peft_config, "modules_to_save"):
            names = list(peft_config.modules_to_save or [])
            peft_config.modules_to_save = names + [n for n in heads if n not in names]

    def set_adapter(self, adapter_name):
        """Activate ``adapter_name``; a clear error if it does not exist."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name!r} not found; available adapters: {list(self.peft_config)}")
        if self._is_prompt_learning:
            self._set_prompt_adapter(adapter_name)
            return
        self.base_model.set_adapter(adapter_name)

    def delete_adapter(self, adapter_name):
        if not self._is_prompt_learning:
            self.base_model.delete_adapter(adapter_name)
            return
        if adapter_name not in self._prompt_configs:
            raise ValueError(f"Adapter {adapter_name!r} does not exist; available: {list(self._prompt_configs)}")
        if len(self._prompt_configs) == 1:
            raise ValueError("Cannot delete the only prompt-learning adapter")
        del self._prompt_configs[adapter_name]
        del self.prompt_encoder[adapter_name]
        if adapter_name == self._prompt_adapter:
            self._set_prompt_adapter(next(iter(self._prompt_configs)))

    @contextmanager
    def disable_adapter(self):
        """Context manager running the plain base model (adapters off, merged weights unmerged)."""
        if not self._is_prompt_learning:
            with self.base_model._adapters_disabled():
                yield
            return
        if self._prompts_disabled:  # nested: the outer block turns them back on
            yield
            return
        self._prompts_disabled = True
        self._prompt_state_version += 1
        try:
            yield
        finally:
            self._prompts_disabled = False
            self._prompt_state_version += 1

    def _tuner(self, operation):
        if self._is_prompt_learning:
            raise ValueError(f"{operation} is not supported for prompt learning methods ({self.peft_type.value}): "
                             "their virtual tokens have no weights to merge")
        return self.base_model

    def merge_adapter(self, adapter_names=None, safe_merge=False):
        self._tuner("merge_adapter").merge_adapter(adapter_names, safe_merge)

    def unmerge_adapter(self):
        self._tuner("unmerge_adapter").unmerge_adapter()

    def merge_and_unload(self, safe_merge=False, adapter_names=None):
        """Merge adapters into the base weights and return the base model without adapter layers."""
        return self._tuner("merge_and_unload").merge_and_unload(safe_merge=safe_merge, adapter_names=adapter_names)

    def unload(self):
        """Return the base model with adapter layers removed and weights untouched."""
        return self._tuner("unload").unload()

    # ----- prompt learning ---------------------------------------------------------------------------
    def _add_prompt_adapter(self, adapter_name, config, encoded=False):
        """Fill ``config`` from the model config, freeze the base model and build the prompt encoder."""
        if adapter_name in self._prompt_configs:
            raise ValueError(f"Adapter {adapter_name!r} already exists")
        _prepare_prompt_learning_config(config, getattr(self.base_model, "config", None))
        for name, param in self.base_model.parameters_and_names():
            if ".modules_to_save." not in name:
                param.requires_grad = False
        if not hasattr(self, "word_embeddings"):
            self.word_embeddings = _find_word_embeddings(self.base_model)
            weight = getattr(self.word_embeddings, "weight", getattr(self.word_embeddings, "embedding_table", None))
            self._vocab_size = int(weight.shape[0])
        encoder_cls = get_model_class(config.peft_type)
        if config.peft_type in (PeftType.PROMPT_TUNING, PeftType.MULTITASK_PROMPT_TUNING):
            encoder = encoder_cls(config, self.word_embeddings, encoded)
        else:
            encoder = encoder_cls(config, encoded)
        self._prompt_configs[adapter_name] = config
        self.prompt_encoder[adapter_name] = encoder
        if config.modules_to_save:
            wrap_modules_to_save(self.base_model, config.modules_to_save, adapter_name, self._prompt_adapter)
        sync_parameter_names(self)
        self._set_prompt_adapter(self._prompt_adapter)
        if config.inference_mode:
            for param in encoder.get_parameters():
                param.requires_grad = False

    def _set_prompt_adapter(self, adapter_name):
        config = self._prompt_configs[adapter_name]
        for name, encoder in self.prompt_encoder.items():
            for param in encoder.get_parameters():
                param.requires_grad = name == adapter_name and not self._prompt_configs[name].inference_mode
        for _, cell in self.base_model.cells_and_names():
            if isinstance(cell, ModulesToSaveWrapper):
                cell.set_adapter(adapter_name)
        self._prompt_adapter = adapter_name
        self._num_virtual_tokens = config.num_virtual_tokens
        self._is_prefix = config.peft_type == PeftType.PREFIX_TUNING
        self._prompts_take_task_ids = config.peft_type == PeftType.MULTITASK_PROMPT_TUNING
        self._prompt_token_count = (config.num_virtual_tokens if self._is_prefix
                                    else config.num_virtual_tokens * config.num_transformer_submodules)
        self._prefix_shape = (config.num_layers, config.num_attention_heads,
                              config.token_dim // config.num_attention_heads, config.num_transformer_submodules)
        self._prompt_state_version += 1

    def _prompt_embeds(self, batch_size, task_ids=None):
        """The active adapter's virtual token embeddings, (batch, tokens, token_dim); multitask prompt tuning's
        depend on each sample's ``task_ids``."""
        count = self._prompt_token_count
        indices = ops.arange(count).view(1, count)
        encoder = self.prompt_encoder[self._prompt_adapter]
        prompts = encoder(indices, task_ids) if self._prompts_take_task_ids else encoder(indices)
        return ops.broadcast_to(prompts, (batch_size, count, prompts.shape[-1]))

    def _prefix_past(self, batch_size):
        """Prefix-tuning key/values: per layer ``(key, value)``, plus ``(cross key, cross value)`` for
        encoder-decoders, each (batch, heads, num_virtual_tokens, head_dim); HF peft's layout."""
        num_layers, heads, head_dim, submodules = self._prefix_shape
        tokens = self._num_virtual_tokens
        kv = self._prompt_embeds(batch_size).view(batch_size, tokens, num_layers * 2, heads, head_dim)
        if submodules == 2:
            kv = ops.cat([kv, kv], axis=2)
        kv = kv.transpose(2, 0, 3, 1, 4)
        per_layer = 2 * submodules
        return tuple(tuple(kv[i * per_layer + j] for j in range(per_layer)) for i in range(num_layers))

    def _prefix_attention_mask(self, attention_mask):
        if attention_mask is None:
            return None
        ones = ops.ones((attention_mask.shape[0], self._num_virtual_tokens), attention_mask.dtype)
        return ops.cat([ones, attention_mask], axis=1)

    def get_prompt_embedding_to_save(self, adapter_name):
        """The encoded virtual tokens HF peft stores as ``prompt_embeddings``, as a numpy array."""
        config = self._prompt_configs[adapter_name]
        if config.peft_type == PeftType.MULTITASK_PROMPT_TUNING:  # the shared prompt, as HF peft saves it
            return self.prompt_encoder[adapter_name].embedding.weight.asnumpy()
        count = config.num_virtual_tokens * (1 if config.peft_type == PeftType.PREFIX_TUNING
                                             else config.num_transformer_submodules)
        return self.prompt_encoder[adapter_name](ops.arange(count).view(1, count))[0].asnumpy()

    # ----- saving and loading ------------------------------------------------------------------------
    def save_pretrained(self, save_directory, selected_adapters=None, path_initial_model_for_weight_conversion=None,
                        **kwargs):
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` per adapter (non-default adapters go
        into a sub-folder named after them), readable by HF peft.

        ``path_initial_model_for_weight_conversion``: the folder a PiSSA/OLoRA adapter was saved to right after
        ``get_peft_model``; the adapter is then saved as a plain LoRA adapter (rank 2r) for the original base
        weights, as HF peft does (see :meth:`mindpeft.tuners.lora.LoraModel.convert_mutated_adapter`).

        Every config is serialised before anything is written, and the folder is replaced as a whole (see
        :func:`mindpeft.utils.io.atomic_directory`): at every instant it holds all the old files or all the new.
        """
        if os.path.isfile(save_directory):
            raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
        if not self.peft_config:
            raise ValueError("This model holds no adapter (all were deleted): there is nothing to save")
        if selected_adapters is None:
            names = list(self.peft_config)
        else:
            names = [selected_adapters] if isinstance(selected_adapters, str) else list(selected_adapters)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown or not names:
            raise ValueError(f"You passed an invalid `selected_adapters` arguments, current supported adapter "
                             f"names are {list(self.peft_config)} - got {unknown or names}.")
        files = {}
        for name in names:
            if name != "default" and (os.path.basename(name) != name or name in ("", ".", "..")):
                raise ValueError(f"Adapter {name!r} cannot be saved: its name is not a valid folder name")
            weights = get_peft_model_state_dict(self, adapter_name=name)
            converted = {}
            if path_initial_model_for_weight_conversion is not None:
                weights, converted = self._tuner("path_initial_model_for_weight_conversion").convert_mutated_adapter(
                    self, name, weights, path_initial_model_for_weight_conversion)
            try:
                overrides = {**converted, "inference_mode": True}
                if self.peft_config[name].task_type is None:
                    overrides["auto_mapping"] = self._auto_mapping()
                text = self.peft_config[name].to_json_string(**{**kwargs, **overrides})
            except (TypeError, ValueError) as err:
                raise type(err)(f"Adapter {name!r} config cannot be saved as JSON: {err}") from None
            files["" if name == "default" else name] = (weights, text)
        with atomic_directory(save_directory) as staging:
            for folder, (weights, text) in files.items():
                out_dir = os.path.join(staging, folder)
                save_peft_weights(weights, out_dir)
                write_text(os.path.join(out_dir, CONFIG_NAME), text)

    def _auto_mapping(self):
        """HF peft's ``auto_mapping`` for adapters without a task type, which its ``AutoPeftModel`` reads to rebuild
        the base model: a ``mindpeft.models.<family>`` class is named by its transformers module."""
        cls = type(self.get_base_model())
        module = cls.__module__
        if module.startswith("mindpeft.models."):
            family = module.rsplit(".", 1)[-1]
            module = f"transformers.models.{family}.modeling_{family}"
        return {"base_model_class": cls.__name__, "parent_library": module}

    @classmethod
    def from_pretrained(cls, model, model_id, adapter_name="default", is_trainable=False, config=None, strict=True,
                        **kwargs):
        """Wrap ``model`` and load the adapter (saved by mindpeft or HF peft) in ``model_id``: a local folder, or a
        hub id found in the local Hugging Face cache.

        The files must match the config exactly unless ``strict=False`` (see
        :func:`mindpeft.utils.save_and_load.set_peft_model_state_dict`); a refused load leaves ``model`` as it was.
        """
        folder = resolve_folder(model_id, kwargs.pop("revision", None), kwargs.pop("subfolder", None))
        if config is None:
            config = PeftConfig.from_pretrained(folder, **kwargs)
        weights = load_peft_weights(folder)
        config.inference_mode = not is_trainable
        task = config.task_type.value if config.task_type is not None else None
        model_cls = cls if cls is not PeftModel else TASK_TYPE_TO_PEFT_MODEL.get(task, PeftModel)
        with unchanged_on_error(model):
            if config.is_prompt_learning:
                peft_model = model_cls(model, config, adapter_name, _encoded_prompts=True)
            else:
                peft_model = model_cls(model, config, adapter_name)
            peft_model._load_weights(weights, adapter_name, is_trainable, strict)
        return peft_model

    def load_adapter(self, model_id, adapter_name, is_trainable=False, strict=True, **kwargs):
        """Load the adapter in ``model_id`` (a folder or cached hub id) as the new adapter ``adapter_name`` (not
        activated).

        ``strict`` as in :meth:`from_pretrained`; a refused load leaves the model as it was.
        """
        if adapter_name in self.peft_config:
            raise ValueError(f"Adapter {adapter_name!r} already exists; load the checkpoint under another name, or "
                             f"delete_adapter({adapter_name!r}) first")
        folder = resolve_folder(model_id, kwargs.pop("revision", None), kwargs.pop("subfolder", None))
        config = PeftConfig.from_pretrained(folder, **kwargs)
        config.inference_mode = not is_trainable
        weights = load_peft_weights(folder)
        with unchanged_on_error(self, new_adapter=adapter_name):
            if self._is_prompt_learning and config.is_prompt_learning:
                self._prepare_config(config)
                self._add_prompt_adapter(adapter_name, config, encoded=True)
            else:
                self.add_adapter(adapter_name, config)
            self._load_weights(weights, adapter_name, is_trainable, strict)

    def _load_weights(self, weights, adapter_name, is_trainable, strict=True):
        set_peft_model_state_dict(self, weights, adapter_name, strict=strict)
        if self._is_prompt_learning:  # training goes on from the stored (encoded) prompts
            for param in self.prompt_encoder[adapter_name].get_parameters():
                param.requires_grad = is_trainable and adapter_name == self._prompt_adapter
        elif not is_trainable:
            self.base_model._freeze_adapter(adapter_name)
        if not is_trainable:
            self.set_train(False)

    # ----- inference ---------------------------------------------------------------------------------
    def generate(self, *args, adapter_names=None, **kwargs):
        if adapter_names is not None:  # every forward of the generation runs the mixed adapter batch
            with self._mixed_adapter_batch(adapter_names, args, kwargs):
                return self.get_base_model().generate(*args, adapter_names=adapter_names, **kwargs)
        if self._is_prompt_learning and not self._prompts_disabled:
            return self._prompt_generate(*args, **kwargs)
        if not self._is_prompt_learning and hasattr(type(self.base_model), "generate"):  # Poly: routes task_ids
            return self.base_model.generate(*args, **kwargs)
        return self.get_base_model().generate(*args, **kwargs)

    def _prompt_generate(self, *args, **kwargs):
        raise ValueError(f"generate with prompt learning needs a CAUSAL_LM or SEQ_2_SEQ_LM model, not "
                         f"{type(self).__name__}")


def _batch_size(input_ids, inputs_embeds):
    if input_ids is None and inputs_embeds is None:
        raise ValueError("You have to provide either input_ids or inputs_embeds")
    return (input_ids if input_ids is not None else inputs_embeds).shape[0]


class PeftModelForCausalLM(PeftModel):
    """PeftModel for decoder-only language models (``TaskType.CAUSAL_LM``)."""

    def _prompt_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None,
                        position_ids=None, token_type_ids=None, task_ids=None, **kwargs):
        batch = self._prompt_batch_size(input_ids, inputs_embeds, attention_mask)
        attention_mask = self._prefix_attention_mask(attention_mask)
        if self._is_prefix:
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   labels=labels, past_key_values=self._prefix_past(batch), **kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if labels is not None:
            ignore = ops.full((batch, self._num_virtual_tokens), -100, dtype=labels.dtype)
            labels = ops.cat([ignore, labels], axis=1)
        prompts = self._prompt_embeds(batch, task_ids).astype(inputs_embeds.dtype)
        return self.base_model(inputs_embeds=ops.cat([prompts, inputs_embeds], axis=1),
                               attention_mask=attention_mask, labels=labels, **kwargs)

    def _prompt_generate(self, input_ids=None, attention_mask=None, task_ids=None, **kwargs):
        """Prompt tuning / P-tuning: the prompts lead the embedded input; prefix tuning: the prefix is the
        initial cache. Returns input ids followed by the new ids, as without adapters."""
        if input_ids is None:
            raise ValueError("generate with prompt learning needs input_ids")
        batch, length = input_ids.shape
        mask = attention_mask if attention_mask is not None else Tensor(np.ones((batch, length), np.int32))
        mask = self._prefix_attention_mask(mask)
        if self._is_prefix:
            return self.base_model.generate(input_ids=input_ids, attention_mask=mask,
                                            past_key_values=self._prefix_past(batch), **kwargs)
        embeds = self.word_embeddings(input_ids)
        embeds = ops.cat([self._prompt_embeds(batch, task_ids).astype(embeds.dtype), embeds], axis=1)
        new = self.base_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        return ops.cat([input_ids.astype(ms.int64), new], axis=1)


class PeftModelForSeq2SeqLM(PeftModel):
    """PeftModel for encoder-decoder language models (``TaskType.SEQ_2_SEQ_LM``)."""

    def _prompt_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, decoder_input_ids=None,
                        decoder_attention_mask=None, decoder_inputs_embeds=None, labels=None, task_ids=None,
                        **kwargs):
        batch = self._prompt_batch_size(input_ids, inputs_embeds, attention_mask)
        if self._is_prefix:
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                                   decoder_inputs_embeds=decoder_inputs_embeds, labels=labels,
                                   prefix_key_values=self._prefix_past(batch), **kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        prompts = self._prompt_embeds(batch, task_ids).astype(inputs_embeds.dtype)
        if self._prompts_take_task_ids:  # HF peft: multitask prompt tuning's second half leads the decoder inputs
            decoder_inputs_embeds, decoder_attention_mask, labels = self._decoder_prompts(
                prompts[:, self._num_virtual_tokens:], decoder_input_ids, decoder_inputs_embeds,
                decoder_attention_mask, labels)
            decoder_input_ids = None
        return self.base_model(inputs_embeds=ops.cat([prompts[:, : self._num_virtual_tokens], inputs_embeds], axis=1),
                               attention_mask=self._prefix_attention_mask(attention_mask),
                               decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                               decoder_inputs_embeds=decoder_inputs_embeds, labels=labels, **kwargs)

    def _decoder_prompts(self, prompts, decoder_input_ids, decoder_inputs_embeds, decoder_attention_mask, labels):
        """``prompts`` ahead of the decoder inputs (embedded from the labels shifted right when not given), ones
        ahead of the decoder mask and -100 ahead of the labels (HF peft's multitask prompt tuning forward)."""
        if decoder_inputs_embeds is None:
            if decoder_input_ids is None:
                if labels is None:
                    raise ValueError("Multitask prompt tuning needs decoder_input_ids, decoder_inputs_embeds or labels")
                config = self.base_model.config
                start = ops.full((labels.shape[0], 1), config.decoder_start_token_id, dtype=labels.dtype)
                decoder_input_ids = ops.cat([start, labels[:, :-1]], axis=1)
                decoder_input_ids = ops.masked_fill(decoder_input_ids, decoder_input_ids == -100, config.pad_token_id)
            decoder_inputs_embeds = self.word_embeddings(decoder_input_ids)
        decoder_inputs_embeds = ops.cat([prompts.astype(decoder_inputs_embeds.dtype), decoder_inputs_embeds], axis=1)
        count = prompts.shape[1]
        if decoder_attention_mask is not None:
            ones = ops.ones((decoder_attention_mask.shape[0], count), decoder_attention_mask.dtype)
            decoder_attention_mask = ops.cat([ones, decoder_attention_mask], axis=1)
        if labels is not None:
            labels = ops.cat([ops.full((labels.shape[0], count), -100, dtype=labels.dtype), labels], axis=1)
        return decoder_inputs_embeds, decoder_attention_mask, labels

    def _prompt_generate(self, input_ids=None, attention_mask=None, task_ids=None, **kwargs):
        if input_ids is None:
            raise ValueError("generate with prompt learning needs input_ids")
        batch, length = input_ids.shape
        mask = attention_mask if attention_mask is not None else Tensor(np.ones((batch, length), np.int32))
        if self._is_prefix:
            return self.base_model.generate(input_ids=input_ids, attention_mask=mask,
                                            prefix_key_values=self._prefix_past(batch), **kwargs)
        embeds = self.word_embeddings(input_ids)
        prompts = self._prompt_embeds(batch, task_ids)[:, : self._num_virtual_tokens].astype(embeds.dtype)
        return self.base_model.generate(inputs_embeds=ops.cat([prompts, embeds], axis=1),
                                        attention_mask=self._prefix_attention_mask(mask), **kwargs)


class _PromptClassificationMixin:
    """Prompt tuning / P-tuning / prefix tuning forward of the classification PeftModels."""

    def _prompt_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, token_type_ids=None,
                        position_ids=None, task_ids=None, **kwargs):
        batch = self._prompt_batch_size(input_ids, inputs_embeds, attention_mask)
        attention_mask = self._prefix_attention_mask(attention_mask)
        if self._is_prefix:
            past = self._prefix_past(batch)
            if token_type_ids is None:
                return self.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                       inputs_embeds=inputs_embeds, past_key_values=past, **kwargs)
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   token_type_ids=token_type_ids, past_key_values=past, **kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        prompts = self._prompt_embeds(batch, task_ids).astype(inputs_embeds.dtype)
        inputs_embeds = ops.cat([prompts, inputs_embeds], axis=1)
        if token_type_ids is None:
            return self.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        zeros = ops.zeros((batch, self._num_virtual_tokens), token_type_ids.dtype)
        return self.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               token_type_ids=ops.cat([zeros, token_type_ids], axis=1), **kwargs)


class PeftModelForSequenceClassification(_PromptClassificationMixin, PeftModel):
    """PeftModel for sequence classification; the ``classifier``/``score`` head is trained and saved too."""


class PeftModelForTokenClassification(_PromptClassificationMixin, PeftModel):
    """PeftModel for token classification; the ``classifier``/``score`` head is trained and saved too."""


class PeftModelForQuestionAnswering(PeftModel):
    """PeftModel for extractive question answering; the ``qa_outputs`` head is trained and saved too."""


class PeftModelForFeatureExtraction(PeftModel):
    """PeftModel returning hidden states (``TaskType.FEATURE_EXTRACTION``)."""


TASK_TYPE_TO_PEFT_MODEL = {
    TaskType.SEQ_CLS.value: PeftModelForSequenceClassification,
    TaskType.SEQ_2_SEQ_LM.value: PeftModelForSeq2SeqLM,
    TaskType.CAUSAL_LM.value: PeftModelForCausalLM,
    TaskType.TOKEN_CLS.value: PeftModelForTokenClassification,
    TaskType.QUESTION_ANS.value: PeftModelForQuestionAnswering,
    TaskType.FEATURE_EXTRACTION.value: PeftModelForFeatureExtraction,
}


def _find_word_embeddings(model):
    """The model's input embedding Cell: ``get_input_embeddings()``, else the Cell whose weight has
    vocab_size rows."""
    if hasattr(model, "get_input_embeddings"):
        try:
            return model.get_input_embeddings()
        except NotImplementedError:
            pass
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    for name, cell in model.cells_and_names():
        weight = getattr(cell, "weight", getattr(cell, "embedding_table", None))
        if vocab is not None and weight is not None and weight.shape[0] == vocab and name:
            return cell
    raise ValueError("Could not find the word embeddings of the base model (define get_input_embeddings())")


def _config_value(model_config, *names):
    for name in names:
        value = getattr(model_config, name, None) if model_config is not None else None
        if value is not None:
            return value
    return None


def _prepare_prompt_learning_config(config, model_config):
    """Fill ``num_layers``, ``token_dim``, ``num_attention_heads`` (key/value heads for grouped-query
    prefix tuning), ``num_transformer_submodules`` and ``encoder_hidden_size`` from the model config."""
    if config.num_layers is None:
        config.num_layers = _config_value(model_config, "num_hidden_layers", "num_layers", "n_layer")
    if config.token_dim is None:
        config.token_dim = _config_value(model_config, "hidden_size", "n_embd", "d_model")
    if config.num_attention_heads is None:
        config.num_attention_heads = _config_value(model_config, "num_attention_heads", "n_head", "num_heads")
        kv_heads = _config_value(model_config, "num_key_value_heads")
        if config.peft_type == PeftType.PREFIX_TUNING and kv_heads is not None and config.num_attention_heads:
            config.token_dim = config.token_dim // config.num_attention_heads * kv_heads
            config.num_attention_heads = kv_heads
    for name in ("num_layers", "token_dim", "num_attention_heads"):
        if getattr(config, name) is None:
            raise ValueError(f"Please specify `{name}` in the config: the base model's config does not give it")
    if config.num_transformer_submodules is None:
        config.num_transformer_submodules = 2 if config.task_type == TaskType.SEQ_2_SEQ_LM else 1
    if getattr(config, "encoder_hidden_size", "unset") is None:
        config.encoder_hidden_size = config.token_dim
    return config
