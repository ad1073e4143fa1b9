"""mindpeft's AutoTokenizer against transformers' AutoTokenizer on the same (locally built) tokenizer folders."""
import json
import os
import pickle
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import mindspore as ms
import transformers
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

import mindpeft
from mindpeft.models import (AutoTokenizer, BatchEncoding, PreTrainedTokenizerFast, Tokenizer,
                             train_word_level_tokenizer)

CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world! How are you doing today?",
          "Don't stop believing, hold on to that feeling.", "Café déjà vu: naïve résumé façade.",
          "Numbers like 12345 and 3.14 appear here.", "MindSpore and PyTorch both train neural networks.",
          "It's a great movie, isn't it ? I've seen it twice .", "positive negative neutral"]
TEXTS = ["Hello world! How are you doing today?", "The quick brown fox.",
         "Don't stop believing , naïve Café résumé 12345 zzqx ; it's fine ."]
PAIRS = ["A lazy dog.", "Neural networks train today and tomorrow and after.", "Hi"]
TARGETS = ["positive", "negative neutral", "neutral"]
FAMILIES = ["bert", "gpt2", "t5"]


def _build_bert(path):
    tok = RustTokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS * 3, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    transformers.BertTokenizerFast(tokenizer_object=tok).save_pretrained(path)


def _build_gpt2(path):
    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.GPT2TokenizerFast(tokenizer_object=tok).save_pretrained(path)


def _build_t5(path):
    tok = RustTokenizer(models.Unigram())
    # the " {2,}" replacement is what transformers 4.x converters wrote; transformers 5 drops it on load
    tok.normalizer = normalizers.Sequence([normalizers.Replace(" {2,}", " ")])
    metaspace = dict(replacement="\u2581", prepend_scheme="always", split=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(**metaspace)])
    tok.decoder = decoders.Metaspace(**metaspace)
    tok.train_from_iterator(CORPUS * 3, trainers.UnigramTrainer(
        vocab_size=150, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    transformers.T5TokenizerFast(tokenizer_object=tok, extra_ids=0).save_pretrained(path)


def _make_legacy(src, dst, extra_config):
    """``src`` rewritten as transformers 4.x saved folders: added_tokens_decoder in tokenizer_config.json and
    AddedToken dicts in special_tokens_map.json."""
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "tokenizer.json"), encoding="utf-8") as f:
        added = json.load(f)["added_tokens"]
    with open(os.path.join(dst, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config.pop("backend", None)
    config["added_tokens_decoder"] = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}
    config.update(extra_config)
    with open(os.path.join(dst, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    by_content = {t["content"]: {k: v for k, v in t.items() if k not in ("id", "special")} for t in added}
    special = {k: by_content.get(v, v) for k, v in config.items() if k.endswith("_token") and v is not None}
    with open(os.path.join(dst, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f)


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for name, build in (("bert", _build_bert), ("gpt2", _build_gpt2), ("t5", _build_t5)):
        out[name] = str(root / name)
        build(out[name])
    # 4.x-style configs; clean_up_tokenization_spaces=True (applied to WordPiece/Unigram, not to BPE)
    for name in FAMILIES:
        out[f"{name}-legacy"] = str(root / f"{name}-legacy")
        _make_legacy(out[name], out[f"{name}-legacy"], {"clean_up_tokenization_spaces": True, "model_max_length": 9})
    # a BERT tokenizer.json that does not lowercase, in a folder whose config does not say: transformers'
    # BertTokenizer rebuilds its normalizer (lowercasing by default), and so does mindpeft
    out["bert-rebuilt"] = str(root / "bert-rebuilt")
    shutil.copytree(out["bert"], out["bert-rebuilt"])
    file = os.path.join(out["bert-rebuilt"], "tokenizer.json")
    with open(file, encoding="utf-8") as f:
        data = json.load(f)
    data["normalizer"]["lowercase"] = False
    data["pre_tokenizer"] = {"type": "Whitespace"}
    with open(file, "w", encoding="utf-8") as f:
        json.dump(data, f)
    config_file = os.path.join(out["bert-rebuilt"], "tokenizer_config.json")
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    del config["do_lower_case"]
    with open(config_file, "w", encoding="utf-8") as f:
        json.dump(config, f)
    return out


def load(folders, name, pad_from_eos=True, **kwargs):
    """(transformers tokenizer, mindpeft tokenizer) for the folder ``name``; GPT-2 gets pad_token = eos_token."""
    ref = transformers.AutoTokenizer.from_pretrained(folders[name], **kwargs)
    ours = AutoTokenizer.from_pretrained(folders[name], **kwargs)
    if pad_from_eos and ref.pad_token is None:
        ref.pad_token = ref.eos_token
        ours.pad_token = ours.eos_token
    return ref, ours


def assert_same(ref, ours):
    """Equal BatchEncodings: the same keys, values and types (lists / numpy arrays of the same dtype)."""
    assert isinstance(ours, BatchEncoding)
    assert list(ref.keys()) == list(ours.keys())
    for key in ref:
        a, b = ref[key], ours[key]
        if isinstance(a, np.ndarray):
            assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, key
            if a.dtype == object:
                assert all(np.array_equal(x, y) for x, y in zip(a, b)), key
            else:
                np.testing.assert_array_equal(a, b, err_msg=key)
        else:
            assert a == b, key


CALLS = [
    {},
    {"padding": True},
    {"padding": "longest", "truncation": True},
    {"padding": "max_length", "max_length": 24},
    {"padding": "max_length", "max_length": 7, "truncation": True},
    {"padding": "max_length", "max_length": 7, "truncation": "longest_first"},
    {"padding": True, "truncation": True, "max_length": 5},
    {"max_length": 4},  # max_length alone truncates
    {"truncation": True},  # no model_max_length: nothing to truncate to
    {"padding": "do_not_pad", "truncation": True, "max_length": 6},
    {"padding": False, "truncation": False, "max_length": 6},
    {"padding": True, "pad_to_multiple_of": 8},
    {"padding": True, "padding_side": "left"},
    {"padding": "max_length", "max_length": 12, "truncation": True, "padding_side": "left"},
    {"add_special_tokens": False, "padding": True},
    {"return_attention_mask": False, "padding": True},
    {"return_token_type_ids": True, "padding": True},
    {"return_special_tokens_mask": True, "return_length": True, "padding": True},
]


@pytest.mark.parametrize("name", FAMILIES + ["bert-legacy", "gpt2-legacy", "t5-legacy", "bert-rebuilt"])
@pytest.mark.parametrize("call", CALLS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_call_matches_transformers(folders, name, call):
    ref, ours = load(folders, name)
    for text in (TEXTS[2], TEXTS, TEXTS[:1]):
        assert_same(ref(text, **call), ours(text, **call))
    assert_same(ref(TEXTS, PAIRS, **call), ours(TEXTS, PAIRS, **call))
    for tensors in ("np", "ms"):
        expected = ref(TEXTS, **call, return_tensors="np")
        if tensors == "ms" and expected["input_ids"].dtype == object:  # ragged rows: no Tensor
            with pytest.raises(ValueError, match="Unable to create tensor"):
                ours(TEXTS, **call, return_tensors=tensors)
            continue
        got = ours(TEXTS, **call, return_tensors=tensors)
        if tensors == "ms":
            assert all(isinstance(v, ms.Tensor) and v.dtype == ms.int64 for v in got.values())
            got = BatchEncoding({k: v.asnumpy() for k, v in got.items()})
        assert_same(expected, got)
        single = ours(TEXTS[0], **call, return_tensors=tensors)
        assert single["input_ids"].shape[0] == 1  # a single string gives a batch of one, as transformers


@pytest.mark.parametrize("name", FAMILIES)
def test_tokenizer_attributes_match_transformers(folders, name):
    ref, ours = load(folders, name, pad_from_eos=False)
    for attr in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
                 "bos_token_id", "eos_token_id", "unk_token_id", "sep_token_id", "pad_token_id", "cls_token_id",
                 "mask_token_id", "all_special_ids", "all_special_tokens", "special_tokens_map", "vocab_size",
                 "model_max_length", "padding_side", "truncation_side", "model_input_names",
                 "clean_up_tokenization_spaces", "added_tokens_encoder"):
        assert getattr(ref, attr) == getattr(ours, attr), attr
    assert len(ref) == len(ours)
    assert ref.get_vocab() == ours.get_vocab()
    words = ref.tokenize(TEXTS[2]) + ["not-a-token-at-all"]
    assert ours.tokenize(TEXTS[2]) == words[:-1]
    assert ours.tokenize(TEXTS[0], add_special_tokens=True) == ref.tokenize(TEXTS[0], add_special_tokens=True)
    assert ours.convert_tokens_to_ids(words) == ref.convert_tokens_to_ids(words)
    assert ours.convert_tokens_to_ids(words[0]) == ref.convert_tokens_to_ids(words[0])
    ids = ref.encode(TEXTS[2])
    assert ours.encode(TEXTS[2]) == ids
    assert ours.encode(TEXTS[2], max_length=5) == ref.encode(TEXTS[2], max_length=5)
    assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == ref.convert_ids_to_tokens(
        ids, skip_special_tokens=True)
    assert ours.convert_ids_to_tokens(ids[1]) == ref.convert_ids_to_tokens(ids[1])
    assert ours.convert_tokens_to_string(words[:-1]) == ref.convert_tokens_to_string(words[:-1])
    # the backend pipeline transformers builds for this class, piece by piece
    a, b = json.loads(ref.backend_tokenizer.to_str()), json.loads(ours.backend_tokenizer.to_str())
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "model", "added_tokens"):
        assert a[key] == b[key], key


def test_rebuilt_pipeline_follows_transformers_class(folders):
    ref, ours = load(folders, "bert-rebuilt")
    text = "MixedCase Words, Hello World!"
    assert ours(text)["input_ids"] == ref(text)["input_ids"]
    assert ours.tokenize(text) == ref.tokenize(text) == [t.lower() for t in ours.tokenize(text)]


@pytest.mark.parametrize("name", FAMILIES + ["bert-legacy", "gpt2-legacy", "t5-legacy"])
def test_text_target(folders, name):
    ref, ours = load(folders, name)
    for kwargs in ({}, {"max_length": 3, "padding": "max_length", "truncation": True}, {"padding": True}):
        assert_same(ref(TEXTS, text_target=TARGETS, **kwargs), ours(TEXTS, text_target=TARGETS, **kwargs))
        assert_same(ref(text_target=TARGETS, **kwargs), ours(text_target=TARGETS, **kwargs))
        assert_same(ref(TEXTS[0], text_target=TARGETS[0], **kwargs), ours(TEXTS[0], text_target=TARGETS[0], **kwargs))
    enc = ours(TEXTS, text_target=TARGETS, padding=True, return_tensors="ms")
    np.testing.assert_array_equal(enc["labels"].asnumpy(), ref(TARGETS, padding=True, return_tensors="np")["input_ids"])
    np.testing.assert_array_equal(
        ours(TEXTS, text_target=TARGETS, max_length=9, max_target_length=2, truncation=True)["labels"],
        ref(TEXTS, text_target=TARGETS, max_length=9, max_target_length=2, truncation=True)["labels"])


@pytest.mark.parametrize("name", FAMILIES + ["bert-legacy", "gpt2-legacy", "t5-legacy"])
def test_decode_matches_transformers(folders, name):
    ref, ours = load(folders, name)
    batch = ref(TEXTS, padding=True)["input_ids"]  # pads and special tokens included
    end = ref.eos_token_id if ref.eos_token_id is not None else ref.sep_token_id
    batch[0] = batch[0][:2] + [ref.pad_token_id, end] + batch[0][2:-2]
    array = np.array(batch)
    for skip in (False, True):
        expected = ref.batch_decode(batch, skip_special_tokens=skip)
        assert ours.batch_decode(batch, skip_special_tokens=skip) == expected
        assert ours.batch_decode(array, skip_special_tokens=skip) == expected
        assert ours.batch_decode(ms.Tensor(array), skip_special_tokens=skip) == expected
        assert ours.batch_decode(ms.Tensor(array.astype(np.int32)), skip_special_tokens=skip) == expected
        assert ours.decode(array, skip_special_tokens=skip) == expected
        for row in (batch[0], batch[2]):
            single = ref.decode(row, skip_special_tokens=skip)
            assert ours.decode(row, skip_special_tokens=skip) == single
            assert ours.decode(np.array(row), skip_special_tokens=skip) == single
            assert ours.decode(ms.Tensor(np.array(row)), skip_special_tokens=skip) == single
        assert ours.batch_decode(batch[1], skip_special_tokens=skip) == ref.batch_decode(batch[1],
                                                                                          skip_special_tokens=skip)
        assert ours.decode(batch[1][2]) == ref.decode(batch[1][2])
        assert ours.decode(np.int64(batch[1][2])) == ref.decode(batch[1][2])
        for clean in (True, False):
            assert ours.batch_decode(batch, skip_special_tokens=skip, clean_up_tokenization_spaces=clean) == \
                ref.batch_decode(batch, skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
    assert ours.decode([]) == ref.decode([]) == ""


@pytest.mark.parametrize("name", FAMILIES + ["bert-legacy", "gpt2-legacy", "t5-legacy", "bert-rebuilt"])
def test_save_round_trips(folders, name, tmp_path):
    ref, ours = load(folders, name, pad_from_eos=False)
    if ours.pad_token is None:
        ours.pad_token = ours.eos_token
    files = ours.save_pretrained(tmp_path / "ours")
    assert sorted(os.path.basename(f) for f in files) == ["special_tokens_map.json", "tokenizer.json",
                                                         "tokenizer_config.json"]
    assert sorted(os.listdir(tmp_path / "ours")) == ["special_tokens_map.json", "tokenizer.json",
                                                     "tokenizer_config.json"]
    if ref.pad_token is None:
        ref.pad_token = ref.eos_token
    ref.save_pretrained(tmp_path / "ref")
    loaded = {"ref>ours": AutoTokenizer.from_pretrained(tmp_path / "ref"),
              "ours>ref": transformers.AutoTokenizer.from_pretrained(tmp_path / "ours"),
              "ours>ours": AutoTokenizer.from_pretrained(str(tmp_path / "ours"))}
    batch = ref(TEXTS, padding=True)["input_ids"]
    for how, tok in loaded.items():
        assert tok.special_tokens_map == ref.special_tokens_map, how
        assert len(tok) == len(ref) and tok.model_max_length == ref.model_max_length, how
        assert tok.clean_up_tokenization_spaces == ref.clean_up_tokenization_spaces, how
        for call in ({}, {"padding": True}, {"padding": "max_length", "max_length": 8, "truncation": True}):
            assert dict(tok(TEXTS, **call)) == dict(ref(TEXTS, **call)), (how, call)
            assert dict(tok(TEXTS, PAIRS, **call)) == dict(ref(TEXTS, PAIRS, **call)), (how, call)
        for skip in (False, True):
            assert tok.batch_decode(batch, skip_special_tokens=skip) == ref.batch_decode(
                batch, skip_special_tokens=skip), how


def test_save_keeps_settings_and_other_files(folders, tmp_path):
    ours = AutoTokenizer.from_pretrained(folders["gpt2"], padding_side="left", model_max_length=12)
    ours.pad_token = ours.eos_token
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "tokenizer.json").write_text("stale")
    ours.save_pretrained(target)
    assert (target / "config.json").read_text() == "{}"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary folders left
    for tok in (AutoTokenizer.from_pretrained(target), transformers.AutoTokenizer.from_pretrained(target)):
        assert tok.padding_side == "left" and tok.model_max_length == 12 and tok.pad_token == "<|endoftext|>"
        enc = tok(["Hi", TEXTS[0]], padding=True, truncation=True)
        assert enc["attention_mask"][0][0] == 0 and len(enc["input_ids"][1]) == 12
    with open(target / "special_tokens_map.json", encoding="utf-8") as f:
        assert json.load(f) == {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}


def test_batch_encoding_access(folders):
    _, ours = load(folders, "bert")
    enc = ours(TEXTS, padding=True)
    assert enc.input_ids is enc["input_ids"] and enc.attention_mask == enc["attention_mask"]
    assert list(enc.keys()) == ["input_ids", "token_type_ids", "attention_mask"]
    assert dict(**enc) == dict(enc.items())
    assert enc.tokens(1)[0] == "[CLS]" and enc[1].ids == enc["input_ids"][1]
    with pytest.raises(AttributeError):
        enc.labels
    copied = pickle.loads(pickle.dumps(enc))
    assert dict(copied) == dict(enc) and copied.input_ids == enc.input_ids


def test_mindspore_tensors_feed_models(folders):
    """``return_tensors="ms"`` output goes straight into mindpeft models; generate output decodes."""
    from mindpeft.models import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    _, bert = load(folders, "bert")
    enc = bert(TEXTS, padding=True, return_tensors="ms")
    model = BertModel(BertConfig(vocab_size=len(bert), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=64))
    assert model(**enc)["last_hidden_state"].shape == (3, enc["input_ids"].shape[1], 16)

    _, gpt2 = load(folders, "gpt2")
    gpt2.padding_side = "left"
    enc = gpt2(TEXTS, padding=True, return_tensors="ms")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(gpt2), n_positions=64, n_embd=16, n_layer=1, n_head=2))
    model.set_train(False)
    out = model.generate(**enc, max_new_tokens=3)
    assert len(gpt2.batch_decode(out, skip_special_tokens=True)) == 3

    _, t5 = load(folders, "t5")
    enc = t5(TEXTS, text_target=TARGETS, padding=True, return_tensors="ms")
    model = T5ForConditionalGeneration(T5Config(vocab_size=len(t5), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                num_heads=2, decoder_start_token_id=t5.pad_token_id))
    assert np.isfinite(float(model(**enc)["loss"].asnumpy()))
    model.set_train(False)
    out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=3)
    assert t5.batch_decode(out.asnumpy(), skip_special_tokens=True) == \
        transformers.AutoTokenizer.from_pretrained(folders["t5"]).batch_decode(out.asnumpy(), skip_special_tokens=True)


def test_mindspore_dataset_map_as_in_the_mindnlp_tutorial(folders):
    """The tutorial's map function, unchanged: numpy string columns in, lists out, pads replaced by -100."""
    import mindspore.dataset as ds

    tokenizer = mindpeft.AutoTokenizer.from_pretrained(folders["t5"])
    lock = threading.Lock()

    class MapFunc:
        def __call__(self, sentence, label, text_label):
            lock.acquire()
            model_inputs = tokenizer(sentence, max_length=8, padding="max_length", truncation=True)
            labels = tokenizer(text_label, max_length=3, padding="max_length", truncation=True)
            lock.release()
            labels = labels['input_ids']
            labels = np.where(np.equal(labels, tokenizer.pad_token_id), -100, labels)
            return model_inputs['input_ids'], model_inputs['attention_mask'], labels

    rows = [(TEXTS[i % 3], i % 2, TARGETS[i % 3]) for i in range(6)]
    dataset = ds.GeneratorDataset(rows, column_names=["sentence", "label", "text_label"], shuffle=False)
    dataset = dataset.map(MapFunc(), ["sentence", "label", "text_label"], ["input_ids", "attention_mask", "labels"])
    batch = next(dataset.batch(6).create_dict_iterator(output_numpy=True))
    ref = transformers.AutoTokenizer.from_pretrained(folders["t5"])
    expected = ref([r[0] for r in rows], max_length=8, padding="max_length", truncation=True)
    np.testing.assert_array_equal(batch["input_ids"], expected["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], expected["attention_mask"])
    labels = np.array(ref([r[2] for r in rows], max_length=3, padding="max_length", truncation=True)["input_ids"])
    np.testing.assert_array_equal(batch["labels"], np.where(labels == ref.pad_token_id, -100, labels))
    assert tokenizer(np.array(TEXTS[0]))["input_ids"] == tokenizer(TEXTS[0])["input_ids"]
    assert tokenizer(np.array(TEXTS))["input_ids"] == tokenizer(TEXTS)["input_ids"]
    assert tokenizer(TEXTS[0].encode())["input_ids"] == tokenizer(TEXTS[0])["input_ids"]


def test_concurrent_calls_and_pickling(folders):
    _, ours = load(folders, "gpt2")
    calls = [dict(padding="max_length", max_length=20), dict(truncation=True, max_length=3), dict(padding=True), {}]
    expected = [dict(ours(TEXTS, **c)) for c in calls]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: dict(ours(TEXTS, **calls[i % 4])), range(200)))
    assert all(r == expected[i % 4] for i, r in enumerate(results))
    clone = pickle.loads(pickle.dumps(ours))
    assert [dict(clone(TEXTS, **c)) for c in calls] == expected and clone.pad_token == ours.pad_token


@pytest.mark.filterwarnings("ignore:`max_length` is ignored")
def test_gpt2_has_no_pad_token_until_set(folders):
    ref, ours = load(folders, "gpt2", pad_from_eos=False)
    assert ours.pad_token is None and ours.pad_token_id is None
    for padding in (True, "longest", "max_length"):
        with pytest.raises(ValueError) as expected:
            ref(TEXTS, padding=padding, max_length=10)
        with pytest.raises(ValueError) as got:
            ours(TEXTS, padding=padding, max_length=10)
        assert str(got.value) == str(expected.value)
        assert "tokenizer.pad_token = tokenizer.eos_token" in str(got.value)
    ours.pad_token = ours.eos_token
    ref.pad_token = ref.eos_token
    assert ours.pad_token_id == ref.pad_token_id == ours.eos_token_id
    assert_same(ref(TEXTS, padding=True), ours(TEXTS, padding=True))
    ours.pad_token_id = 5
    assert ours.pad_token == ours.convert_ids_to_tokens(5)


def test_add_special_tokens_matches_transformers(folders):
    ref, ours = load(folders, "gpt2", pad_from_eos=False)
    for tok in (ref, ours):
        assert tok.add_special_tokens({"pad_token": "<pad>", "extra_special_tokens": ["<sep1>"]}) == 2
    assert ours.add_tokens(["newword", "the", "Hello"]) == ref.add_tokens(["newword", "the", "Hello"]) > 0
    assert len(ours) == len(ref) and ours.pad_token_id == ref.pad_token_id
    assert ours.all_special_tokens == ref.all_special_tokens
    text = ["hello <sep1> newword world", "x"]
    assert_same(ref(text, padding=True), ours(text, padding=True))
    ids = ref(text, padding=True)["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=True) == ref.batch_decode(ids, skip_special_tokens=True)


def test_loading_options(folders):
    for kwargs in ({"padding_side": "left"}, {"truncation_side": "left"}, {"model_max_length": 6},
                   {"pad_token": "[MASK]"}):
        ref, ours = load(folders, "bert", **kwargs)
        for call in ({"padding": True, "truncation": True}, {"padding": "max_length", "max_length": 9,
                                                              "truncation": True}):
            assert_same(ref(TEXTS, **call), ours(TEXTS, **call))
    ref, ours = load(folders, "bert")
    ref.truncation_side = ours.truncation_side = "left"
    assert_same(ref(TEXTS, truncation=True, max_length=5), ours(TEXTS, truncation=True, max_length=5))
    # transformers' download arguments are accepted
    assert AutoTokenizer.from_pretrained(folders["t5"], local_files_only=True, revision="main").eos_token == "</s>"
    assert AutoTokenizer.from_pretrained(os.path.join(folders["t5"], "tokenizer.json")).eos_token is None
    assert type(AutoTokenizer.from_pretrained(folders["t5"])).__name__ == "T5TokenizerFast"
    assert isinstance(mindpeft.AutoTokenizer.from_pretrained(folders["bert"]), PreTrainedTokenizerFast)


def test_clear_errors(folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*local folder"):
        AutoTokenizer.from_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No tokenizer.json.*needs tokenizer.json.*'fast'"):
        AutoTokenizer.from_pretrained(tmp_path / "empty")
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "spiece.model").write_bytes(b"\0")
    (slow / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
    with pytest.raises(FileNotFoundError, match=r"'slow'.*spiece\.model.*needs tokenizer\.json.*save_pretrained"):
        AutoTokenizer.from_pretrained(slow)
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt"):
        AutoTokenizer.from_pretrained(tmp_path / "vocab")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        AutoTokenizer.from_pretrained(broken)
    _, ours = load(folders, "bert")
    with pytest.raises(ValueError, match="padding must be"):
        ours(TEXTS, padding="everything")
    with pytest.raises(ValueError, match="truncation must be"):
        ours(TEXTS, truncation="middle")
    with pytest.raises(ValueError, match="return_tensors must be"):
        ours(TEXTS, padding=True, return_tensors="tf")
    with pytest.raises(ValueError, match="return_tensors='pt'.*'ms'"):
        ours(TEXTS, padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match="Unable to create tensor"):
        ours(TEXTS, return_tensors="ms")
    with pytest.raises(ValueError, match="text input must be of type"):
        ours(12)
    with pytest.raises(ValueError, match="specify either `text` or `text_target`"):
        ours()
    with pytest.raises(EnvironmentError):
        AutoTokenizer()


def test_word_level_tokenizer_and_older_interface(tmp_path):
    """train_word_level_tokenizer and the Tokenizer class keep their behaviour; their folders load in
    mindpeft's and transformers' AutoTokenizer alike."""
    tok = train_word_level_tokenizer(CORPUS)
    assert isinstance(tok, Tokenizer) and tok.pad_token_id == 0 and tok.eos_token_id == 1
    enc = tok(["hello world", "the quick brown fox jumps"], max_length=4, padding="max_length")
    assert enc["input_ids"].dtype == np.int32 and enc["input_ids"].shape == (2, 4)
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert enc["input_ids"][0, 2] == tok.eos_token_id
    single = tok("hello world")
    assert single["input_ids"].shape == (3,) and tok(["a", "hello world"])["input_ids"].shape == (2, 3)
    assert tok("hello world", padding=False)["input_ids"] == single["input_ids"].tolist()
    assert tok.decode(single["input_ids"]) == "hello world"
    assert tok.encode("hello world") == single["input_ids"].tolist()
    assert tok.encode("hello world", add_special_tokens=False) == single["input_ids"].tolist()[:2]
    assert tok.tokenize("Hello world") == ["hello", "world"]
    assert tok.batch_decode(ms.Tensor(enc["input_ids"])) == ["hello world", "the quick brown fox"]
    tok.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.special_tokens == {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    np.testing.assert_array_equal(again(["hello world"])["input_ids"], tok(["hello world"])["input_ids"])
    ref, ours = transformers.AutoTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert_same(ref(CORPUS, padding=True), ours(CORPUS, padding=True))
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        Tokenizer(tok.backend_tokenizer, pad_token="<nope>")


def test_tutorial_tokenizer_folder_loads():
    """The shipped tutorial folder (word-level tokenizer.json next to a GPT-2 config.json, no
    tokenizer_config.json) keeps its word-level pipeline."""
    folder = os.path.join(os.path.dirname(__file__), os.pardir, "tutorials", "data", "tiny-gpt2-reviews")
    raw = RustTokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    ours = AutoTokenizer.from_pretrained(folder)
    assert ours("a great movie")["input_ids"] == raw.encode("a great movie").ids
    assert ours.pad_token == "<pad>" and len(ours) == raw.get_vocab_size()
    older = Tokenizer.from_pretrained(folder)
    assert older("a great movie")["input_ids"].tolist() == raw.encode("a great movie").ids
