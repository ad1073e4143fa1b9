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
"""
import csv
import os
import random

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


if __name__ == "__main__":
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tutorials", "data")
    write(os.path.join(root, "financial_sentiment.csv"), financial_rows(random.Random(0)))
    reviews = review_rows(random.Random(1))
    write(os.path.join(root, "movie_reviews.csv"), reviews)
    write_tiny_gpt2(os.path.join(root, "tiny-gpt2-reviews"), [r["sentence"] for r in reviews])
    write_tiny_gpt2_lm(os.path.join(root, "tiny-gpt2-lm"), [r["sentence"] for r in reviews])
