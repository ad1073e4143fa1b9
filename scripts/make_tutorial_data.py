"""Writes the small synthetic data sets the tutorials use (deterministic; no downloads).

    python scripts/make_tutorial_data.py

- tutorials/data/financial_sentiment.csv: sentence,text_label (negative/neutral/positive), in the style of
  financial_phrasebank.
- tutorials/data/movie_reviews.csv: sentence,label (0 negative, 1 positive), in the style of SST-2.
- tutorials/data/tiny-gpt2-reviews/: the "pretrained" checkpoint of the GPT-2 tutorials, a randomly initialised
  2-layer GPT2ForSequenceClassification with a word-level tokenizer trained on the reviews, loaded like a
  downloaded checkpoint.
- tutorials/data/tiny-gpt2-lm/: the causal LM of the README's quick start, a 2-layer GPT2LMHeadModel pretrained here
  for a few hundred steps on the reviews (so that it generates review-like text), with its tokenizer.
- tutorials/data/shapes.npz: 600 images (48x48 RGB, uint8) of one shape each (circle, square, triangle, cross) in a
  random bright colour on a dark background: ``images``, ``labels`` and ``label_names``; the image classification
  tutorial's stand-in for food101.
- tutorials/data/shape_scenes.npz: 400 scenes (96x96) of two or three such shapes with their segmentation maps
  (``masks``, as in scene_parse_150: 0 unlabelled, here where two regions meet, ``i + 1`` for ``label_names[i]``:
  background, circle...); the semantic segmentation tutorial's stand-in for scene_parse_150.
- tutorials/data/tiny-vit-shapes/: a 2-layer ViTForImageClassification (32x32 inputs, 8x8 patches) whose backbone is
  pretrained here on eight *other* shapes (ring, diamond, bars...), with a newly initialised classifier for the four
  tutorial shapes (what ``ignore_mismatched_sizes=True`` gives in the guide) and its ``preprocessor_config.json``.
- tutorials/data/tiny-segformer-shapes/: a 4-stage SegformerForSemanticSegmentation (64x64 inputs) whose encoder is
  pretrained here to segment scenes of those other shapes, with a newly initialised decode head for the background
  and the four tutorial shapes, and its ``preprocessor_config.json``.
- tutorials/data/twitter_complaints.csv: ID,Tweet text,Label (1 complaint, 2 no complaint), in the style of RAFT's
  twitter_complaints.
- tutorials/data/tiny-bloom-tweets/: a 2-layer BloomForCausalLM with a word-level tokenizer, pretrained here on
  other tweets of the same kind followed by customer-service replies, and on the "Tweet text : ... Label : ..."
  format with *random* labels: it knows the format and the label words but not which tweets are complaints.

The pretraining steps take a few minutes on a 2-core CPU. Name outputs to write only those, e.g.
``python scripts/make_tutorial_data.py tiny-vit-shapes shapes.npz``.
"""
import csv
import io
import os
import random
import sys
import zipfile

import numpy as np

COMPANIES = ["Nokia", "Fiskars", "Kone", "Wartsila", "Stora Enso", "Outokumpu", "Elisa", "Orion", "Metso",
             "Sampo", "Neste", "UPM", "Kesko", "Tieto", "Ramirent", "Aspo", "Cargotec", "Huhtamaki"]
METRICS = ["net sales", "operating profit", "net profit", "revenue", "earnings per share", "order intake",
           "operating margin", "cash flow"]
PERIODS = ["in the first quarter", "in the second quarter", "in 2009", "in the third quarter", "for the year",
           "in January-June", "compared to last year"]
TEMPLATES = {
    "positive": ["{c} said its {m} rose {n} percent {p} .", "{c} reported a strong increase in {m} {p} .",
                 "{m} of {c} grew to EUR {n} million {p} , beating expectations .",
                 "{c} wins a major contract and expects {m} to improve {p} .",
                 "Shares of {c} jumped after {m} increased {p} ."],
    "negative": ["{c} said its {m} fell {n} percent {p} .", "{c} reported a sharp decline in {m} {p} .",
                 "{m} of {c} dropped to EUR {n} million {p} , missing expectations .",
                 "{c} warns of lower {m} and will cut jobs {p} .",
                 "Shares of {c} slumped after {m} decreased {p} ."],
    "neutral": ["{c} will publish its {m} figures {p} .", "{c} is headquartered in Helsinki and reports {m} {p} .",
                "The annual general meeting of {c} discussed {m} {p} .",
                "{c} appointed a new chief financial officer responsible for {m} .",
                "{c} operates in {n} countries and reports {m} {p} ."],
}
REVIEWS = {
    1: ["a {a} and {b} film", "the acting is {a} and the story is {b}", "one of the most {a} movies of the year",
        "{a} , {b} and surprisingly moving", "a {a} performance that makes the film {b}"],
    0: ["a {a} and {b} film", "the acting is {a} and the story is {b}", "one of the most {a} movies of the year",
        "{a} , {b} and painfully long", "a {a} performance that makes the film {b}"],
}
ADJECTIVES = {1: ["wonderful", "brilliant", "charming", "delightful", "gripping", "funny", "beautiful", "smart"],
              0: ["boring", "dull", "clumsy", "tedious", "awful", "predictable", "lifeless", "weak"]}


def financial_rows(rng, per_label=120):
    rows = []
    for label, templates in TEMPLATES.items():
        for _ in range(per_label):
            sentence = rng.choice(templates).format(c=rng.choice(COMPANIES), m=rng.choice(METRICS),
                                                    p=rng.choice(PERIODS), n=rng.randint(2, 90))
            rows.append({"sentence": sentence, "text_label": label})
    rng.shuffle(rows)
    return rows


def review_rows(rng, per_label=150):
    rows = []
    for label, templates in REVIEWS.items():
        for _ in range(per_label):
            a, b = rng.sample(ADJECTIVES[label], 2)
            rows.append({"sentence": rng.choice(templates).format(a=a, b=b), "label": label})
    rng.shuffle(rows)
    return rows


def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_tiny_gpt2(path, sentences):
    import numpy as np
    from mindpeft.models import GPT2Config, GPT2ForSequenceClassification, train_word_level_tokenizer

    np.random.seed(0)
    tokenizer = train_word_level_tokenizer(sentences, eos_token=None)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                        pad_token_id=tokenizer.pad_token_id, num_labels=2)
    GPT2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def write_tiny_gpt2_lm(path, sentences, steps=300):
    import numpy as np
    import mindspore as ms
    from mindspore.experimental import optim
    from mindpeft import set_seed
    from mindpeft.models import GPT2Config, GPT2LMHeadModel, Tokenizer, train_word_level_tokenizer
    from mindpeft.training import TrainStep

    set_seed(0)
    words = train_word_level_tokenizer(sentences, eos_token=None)
    tokenizer = Tokenizer(words._tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=3e-3))
    model.set_train(True)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        texts = [sentences[i] + " </s>" for i in rng.choice(len(sentences), 16)]
        ids = tokenizer(texts)["input_ids"]
        labels = np.where(ids == tokenizer.pad_token_id, -100, ids)
        step(input_ids=ms.Tensor(ids), labels=ms.Tensor(labels))
    model.set_train(False)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


# ----- images: shapes on a plain background ---------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "cross")  # the tutorials' classes
PRETEXT_SHAPES = ("ring", "diamond", "hbar", "vbar", "x", "frame", "halfdisc", "ellipse")  # pretraining only
SHAPE_MASKS = {  # (dy, dx): offsets from the centre, r: the size -> boolean mask
    "circle": lambda dy, dx, r: dy ** 2 + dx ** 2 <= r ** 2,
    "square": lambda dy, dx, r: (abs(dy) <= 0.85 * r) & (abs(dx) <= 0.85 * r),
    "triangle": lambda dy, dx, r: (dy >= -r) & (dy <= 0.7 * r) & (abs(dx) <= 0.6 * (dy + r)),
    "cross": lambda dy, dx, r: ((abs(dy) <= r) & (abs(dx) <= 0.3 * r)) | ((abs(dx) <= r) & (abs(dy) <= 0.3 * r)),
    "ring": lambda dy, dx, r: (dy ** 2 + dx ** 2 <= r ** 2) & (dy ** 2 + dx ** 2 >= (0.55 * r) ** 2),
    "diamond": lambda dy, dx, r: abs(dy) + abs(dx) <= r,
    "hbar": lambda dy, dx, r: (abs(dy) <= 0.3 * r) & (abs(dx) <= r),
    "vbar": lambda dy, dx, r: (abs(dx) <= 0.3 * r) & (abs(dy) <= r),
    "x": lambda dy, dx, r: (((abs(dy - dx) <= 0.35 * r) & (abs(dy + dx) <= 1.4 * r))
                            | ((abs(dy + dx) <= 0.35 * r) & (abs(dy - dx) <= 1.4 * r))),
    "frame": lambda dy, dx, r: ((abs(dy) <= 0.85 * r) & (abs(dx) <= 0.85 * r)
                                & ~((abs(dy) <= 0.45 * r) & (abs(dx) <= 0.45 * r))),
    "halfdisc": lambda dy, dx, r: (dy ** 2 + dx ** 2 <= r ** 2) & (dy <= 0),
    "ellipse": lambda dy, dx, r: (dy / (0.5 * r)) ** 2 + (dx / r) ** 2 <= 1,
}


def draw_shapes(rng, names, size, count, radius):
    """A (size, size, 3) uint8 image of ``count`` shapes drawn from ``names`` (radius a share of ``size`` drawn from
    ``radius``) on a dark background, and its (size, size) uint8 map: 0 background, ``i + 1`` for ``names[i]``
    (later shapes cover earlier ones)."""
    dy, dx = np.mgrid[:size, :size] + 0.5
    image = np.broadcast_to(rng.uniform(0, 0.35, 3), (size, size, 3)).copy()
    labels = np.zeros((size, size), np.uint8)
    for _ in range(count):
        label = rng.integers(len(names))
        r = rng.uniform(*radius) * size
        cy, cx = rng.uniform(r, size - r, 2)
        mask = SHAPE_MASKS[names[label]](dy - cy, dx - cx, r)
        colour = rng.uniform(0.3, 1.0, 3)
        colour[rng.integers(3)] = 1.0
        image[mask] = colour
        labels[mask] = label + 1
    return (image * 255).round().astype(np.uint8), labels


def shape_images(rng, names, count, size=48):
    """``count`` images of one shape each, as many of each shape; returns (images, labels)."""
    labels = np.arange(count) % len(names)
    rng.shuffle(labels)
    images = [draw_shapes(rng, [names[label]], size, 1, (0.19, 0.34))[0] for label in labels]
    return np.stack(images), labels.astype(np.int64)


def shape_scenes(rng, names, count, size=96):
    """``count`` scenes of two or three shapes; returns (images, segmentation maps)."""
    scenes = [draw_shapes(rng, names, size, rng.integers(2, 4), (0.12, 0.22)) for _ in range(count)]
    return np.stack([image for image, _ in scenes]), np.stack([labels for _, labels in scenes])


def unlabel_edges(maps):
    """ADE20k's convention for maps of 0 (background) and ``i + 1`` (shapes): 0 marks unlabelled pixels, here those
    where two regions meet, 1 the background and ``i + 2`` ``names[i]``."""
    edges = np.zeros(maps.shape, bool)
    for axis in (-1, -2):
        differs = np.diff(maps, axis=axis) != 0
        pad = [(0, 0)] * maps.ndim
        pad[axis] = (1, 0)
        edges |= np.pad(differs, pad)
        pad[axis] = (0, 1)
        edges |= np.pad(differs, pad)
    return np.where(edges, 0, maps + 1).astype(np.uint8)


def write_npz(path, **arrays):
    """``numpy.savez_compressed`` with fixed file dates, so that the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED)


def pretrain(model, make_batch, steps, lr):
    """``steps`` compiled AdamW steps (warm-up, then linear decay) on ``make_batch()`` (a dict of numpy arrays)."""
    import mindspore as ms
    from mindspore.experimental import optim
    from mindpeft import get_linear_schedule_with_warmup
    from mindpeft.training import TrainStep

    optimizer = optim.AdamW(model.trainable_params(), lr=lr)
    schedule = get_linear_schedule_with_warmup(optimizer, steps // 20, steps)
    step = TrainStep(model, optimizer)
    model.set_train(True)
    for _ in range(steps):
        step(**{k: ms.Tensor(v) for k, v in make_batch().items()})
        schedule.step()
    model.set_train(False)


def copy_weights(source, target, prefix):
    """Copy ``source``'s parameters whose names start with ``prefix`` into ``target`` (same architecture)."""
    from mindpeft.models.modeling_utils import write_parameter

    weights = dict(source.parameters_and_names())
    for name, param in target.parameters_and_names():
        if name.startswith(prefix):
            write_parameter(param, weights[name])


def id2label(names):
    return {i: name for i, name in enumerate(names)}


def write_tiny_vit(path, steps=2500, batch_size=32):
    from mindpeft import set_seed
    from mindpeft.models import ViTConfig, ViTForImageClassification, ViTImageProcessor

    set_seed(0)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
                 patch_size=8)
    pretext = ViTForImageClassification(ViTConfig(**sizes, id2label=id2label(PRETEXT_SHAPES)))
    rng = np.random.default_rng(100)

    def make_batch():
        images, labels = shape_images(rng, PRETEXT_SHAPES, batch_size)
        return {"pixel_values": processor(list(images), return_tensors="np")["pixel_values"],
                "labels": labels.astype(np.int32)}

    pretrain(pretext, make_batch, steps, lr=2e-3)
    model = ViTForImageClassification(ViTConfig(**sizes, id2label=id2label(SHAPES)))
    copy_weights(pretext, model, "vit.")
    model.save_pretrained(path)
    processor.save_pretrained(path)


def write_tiny_segformer(path, steps=600, batch_size=16):
    from mindpeft import set_seed
    from mindpeft.models import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    set_seed(0)
    processor = SegformerImageProcessor(size={"height": 64, "width": 64})
    sizes = dict(hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 4, 4],
                 sr_ratios=[4, 2, 1, 1], decoder_hidden_size=64)
    pretext = SegformerForSemanticSegmentation(SegformerConfig(
        **sizes, id2label=id2label(("background",) + PRETEXT_SHAPES), drop_path_rate=0.0, classifier_dropout_prob=0.0))
    rng = np.random.default_rng(100)

    def make_batch():
        images, maps = shape_scenes(rng, PRETEXT_SHAPES, batch_size)
        inputs = processor(list(images), segmentation_maps=list(maps), return_tensors="np")
        return {"pixel_values": inputs["pixel_values"], "labels": inputs["labels"].astype(np.int32)}

    pretrain(pretext, make_batch, steps, lr=2e-3)
    model = SegformerForSemanticSegmentation(SegformerConfig(**sizes, id2label=id2label(("background",) + SHAPES)))
    copy_weights(pretext, model, "segformer.")
    model.save_pretrained(path)
    processor.save_pretrained(path)


# ----- tweets ---------------------------------------------------------------------------------------------------------
HANDLES = ["@acmeair", "@speedynet", "@freshmart", "@cityrail", "@brightbank", "@quickpost", "@sunnymobile",
           "@homepower"]
ITEMS = ["order", "parcel", "phone", "bill", "ticket", "card", "router", "package", "laptop", "delivery"]
TIMES = ["today", "this morning", "yesterday", "again", "this week", "tonight"]
TWEETS = {  # RAFT's labels: 1 complaint, 2 no complaint
    1: ["{h} my {i} arrived broken and nobody answers my emails",
        "{h} i was charged twice for my {i} {t} , please fix this",
        "{h} still waiting for my {i} , worst service ever",
        "{h} waited {n} minutes on hold {t} and still no help",
        "{h} my {i} was lost {t} and the refund never came",
        "{h} the app crashed {t} and i cannot pay my {i} , so annoying",
        "{h} why is my {i} late {t} ? this is unacceptable",
        "{h} rude staff and a damaged {i} , very disappointed"],
    2: ["{h} thanks for the quick delivery of my {i} {t}",
        "{h} great service {t} , the staff were so helpful",
        "{h} is there a way to track my {i} online ?",
        "{h} loving the new app , paying my {i} took a minute",
        "{h} happy to say my {i} arrived early {t}",
        "{h} do you open on sunday ? i want to pick up my {i}",
        "{h} big thanks to the team for sorting out my {i} so fast",
        "{h} just got my {i} {t} , works perfectly"],
}
REPLIES = {1: ["sorry to hear about this , please send us a dm with your details",
               "we apologise for the trouble , our team will look into your complaint",
               "that is not the service we aim for , please dm us your reference"],
           2: ["thanks for the kind words , enjoy your day", "glad to help ! let us know if you need anything else",
               "no problem , happy to hear that"]}
TEXT_LABELS = {1: "complaint", 2: "no complaint"}
PROMPT_TUNING_INIT_TEXT = "Classify if the tweet is a complaint or not:"


def tweet_rows(rng, per_label=150):
    rows = []
    for label, templates in TWEETS.items():
        for _ in range(per_label):
            text = rng.choice(templates).format(h=rng.choice(HANDLES), i=rng.choice(ITEMS), t=rng.choice(TIMES),
                                                n=rng.randint(10, 90))
            rows.append({"Tweet text": text, "Label": label})
    rng.shuffle(rows)
    return [{"ID": index, **row} for index, row in enumerate(rows)]


def write_tiny_bloom(path, rng, steps=600, batch_size=16):
    from mindpeft import set_seed
    from mindpeft.models import BloomConfig, BloomForCausalLM, Tokenizer, train_word_level_tokenizer

    set_seed(0)
    tweets = tweet_rows(rng, per_label=400)
    corpus = [f"{r['Tweet text']} reply : {rng.choice(REPLIES[r['Label']])}" for r in tweets]
    corpus += [f"Tweet text : {r['Tweet text']} Label : {rng.choice(list(TEXT_LABELS.values()))}" for r in tweets]
    words = train_word_level_tokenizer(corpus + [PROMPT_TUNING_INIT_TEXT], eos_token=None)
    tokenizer = Tokenizer(words._tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    eos = tokenizer.eos_token_id
    model = BloomForCausalLM(BloomConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, n_layer=2, n_head=4,
                                         bos_token_id=eos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id))
    draws = np.random.default_rng(0)

    def make_batch():
        ids = tokenizer([corpus[i] + " </s>" for i in draws.choice(len(corpus), batch_size)])["input_ids"]
        return {"input_ids": ids, "labels": np.where(ids == tokenizer.pad_token_id, -100, ids)}

    pretrain(model, make_batch, steps, lr=3e-3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def write_shapes(path):
    images, labels = shape_images(np.random.default_rng(0), SHAPES, 600)
    write_npz(path, images=images, labels=labels, label_names=np.array(SHAPES))


def write_shape_scenes(path):
    images, maps = shape_scenes(np.random.default_rng(1), SHAPES, 400)
    write_npz(path, images=images, masks=unlabel_edges(maps), label_names=np.array(("background",) + SHAPES))


if __name__ == "__main__":
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tutorials", "data")
    reviews = review_rows(random.Random(1))
    sentences = [r["sentence"] for r in reviews]
    outputs = {
        "financial_sentiment.csv": lambda path: write(path, financial_rows(random.Random(0))),
        "movie_reviews.csv": lambda path: write(path, reviews),
        "tiny-gpt2-reviews": lambda path: write_tiny_gpt2(path, sentences),
        "tiny-gpt2-lm": lambda path: write_tiny_gpt2_lm(path, sentences),
        "shapes.npz": write_shapes,
        "shape_scenes.npz": write_shape_scenes,
        "tiny-vit-shapes": write_tiny_vit,
        "tiny-segformer-shapes": write_tiny_segformer,
        "twitter_complaints.csv": lambda path: write(path, tweet_rows(random.Random(2))),
        "tiny-bloom-tweets": lambda path: write_tiny_bloom(path, random.Random(3)),
    }
    unknown = sorted(set(sys.argv[1:]) - set(outputs))
    if unknown:
        sys.exit(f"unknown output(s) {unknown}; choose from {list(outputs)}")
    for name, make in outputs.items():
        if not sys.argv[1:] or name in sys.argv[1:]:
            make(os.path.join(root, name))
