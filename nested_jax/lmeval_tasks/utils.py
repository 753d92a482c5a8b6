"""Datasets and helpers of the offline lm-evaluation-harness tasks (the YAML files here):
the vendored copies (nested_jax/assets/data, MANIFEST.md) in the fields of the stock tasks'
Hugging Face datasets, so the stock prompts, choices and metrics apply unchanged. The harness
calls each `custom_dataset` function and gets {split: datasets.Dataset}."""

from __future__ import annotations

import functools

import datasets

from nested_jax.data import assets
from nested_jax.eval import perplexity, tasks


def _ds(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows)


def _dataset(build):
    """A `custom_dataset` function from a builder without arguments: the harness passes the
    task's metadata as keyword arguments (unused: the data is fixed, and may hold unhashable
    values), and asks again per evaluation, so the result is built once per process."""
    cached = functools.cache(build)

    @functools.wraps(build)
    def custom_dataset(**_) -> dict:
        return cached()

    return custom_dataset


def _stem_and_choices(name: str, question_key: str = "question") -> list[dict]:
    """Records of the ARC / OpenBookQA / CommonsenseQA kind (question.stem,
    question.choices[{text, label}], answerKey) in the stock datasets' flat fields."""
    rows = []
    for r in assets.read_jsonl(assets.data_path(name)):
        ch = r["question"]["choices"]
        rows.append({"id": r.get("id"), question_key: r["question"]["stem"],
                     "choices": {"text": [c["text"] for c in ch], "label": [c["label"] for c in ch]},
                     "answerKey": r["answerKey"]})
    return rows


@_dataset
def piqa() -> dict:
    """Stock piqa (baber/piqa validation): goal, sol1, sol2, label."""
    labels = tasks._lines("piqa_valid_labels")
    recs = list(assets.read_jsonl(assets.data_path("piqa_valid")))
    return {"validation": _ds([{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"],
                                "label": int(lab)} for r, lab in zip(recs, labels)])}


@_dataset
def arc_easy() -> dict:
    """Stock arc_easy (allenai/ai2_arc ARC-Easy test): question, choices{text,label}, answerKey."""
    return {"test": _ds(_stem_and_choices("arc_easy_test"))}


@_dataset
def hellaswag() -> dict:
    """Stock hellaswag after its process_docs (the vendored file is already the preprocessed
    context and endings, lm-eval's `preprocess` is applied once more as the stock task does):
    query, choices, label."""
    items = list(tasks.hellaswag())
    return {"validation": _ds([{"query": it.contexts[0],
                                "choices": [c.removeprefix(" ") for c in it.continuations],
                                "label": it.gold} for it in items])}


@_dataset
def winogrande() -> dict:
    """Stock winogrande (allenai/winogrande winogrande_xl validation = the dev set):
    sentence, option1, option2, answer."""
    return {"validation": _ds([{k: r[k] for k in ("sentence", "option1", "option2", "answer")}
                               for r in assets.read_jsonl(assets.data_path("winogrande_dev"))])}


# The stock winogrande's partial scoring (lm_eval/tasks/winogrande/preprocess_winogrande.py):
# the context is the sentence up to the blank with each option, the target the rest.
def winogrande_text(doc) -> int:
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_target(doc) -> str:
    i = doc["sentence"].index("_") + 1
    return doc["sentence"][i:].strip()


def winogrande_choice(doc) -> list[str]:
    i = doc["sentence"].index("_")
    return [doc["sentence"][:i] + o for o in (doc["option1"], doc["option2"])]


@_dataset
def wikitext() -> dict:
    """WikiText-2 validation as stock wikitext's documents ("page": one article as stored,
    the tokenized release with its <unk>s: `eval perplexity --text wikitext2`'s articles)."""
    return {"validation": _ds([{"page": a} for a in
                               perplexity.wikitext_articles(assets.wikitext2_valid())])}


def wikitext_detokenizer(doc) -> str:
    return perplexity.wikitext_detokenize(doc["page"])


def wikitext_results(doc, results) -> dict:
    """Stock wikitext's process_results: words and bytes of the page as stored."""
    (loglikelihood,) = results
    words = perplexity.count_words(doc["page"])
    n_bytes = perplexity.count_bytes(doc["page"])
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes)}


@_dataset
def gsm8k() -> dict:
    """Stock gsm8k (openai/gsm8k main): question, answer; train (few-shot) and test."""
    return {split: _ds([{"question": r["question"], "answer": r["answer"]}
                        for r in assets.gsm8k(split)]) for split in ("train", "test")}


# Prompt functions: the stock YAMLs' Jinja templates as Python (the harness compiles a Jinja
# template anew for every document, which cost more than scoring a small model). Each
# returns exactly what its template renders.
def piqa_text(doc) -> str:  # "Question: {{goal}}\nAnswer:"
    return f"Question: {doc['goal']}\nAnswer:"


def piqa_choice(doc) -> list[str]:  # "{{[sol1, sol2]}}"
    return [doc["sol1"], doc["sol2"]]


def arc_text(doc) -> str:  # "Question: {{question}}\nAnswer:"
    return f"Question: {doc['question']}\nAnswer:"


def arc_choice(doc) -> list[str]:  # "{{choices.text}}"
    return list(doc["choices"]["text"])


def arc_target(doc) -> int:  # "{{choices.label.index(answerKey)}}"
    return list(doc["choices"]["label"]).index(doc["answerKey"])


def hellaswag_text(doc) -> str:  # "{{query}}"
    return doc["query"]


def hellaswag_target(doc) -> int:  # "{{label}}"
    return int(doc["label"])


def gsm8k_text(doc) -> str:  # "Question: {{question}}\nAnswer:"
    return f"Question: {doc['question']}\nAnswer:"


def gsm8k_target(doc) -> str:  # "{{answer}}"
    return doc["answer"]


@_dataset
def arc_challenge() -> dict:
    """Stock arc_challenge (ARC-Challenge test), fields as arc_easy."""
    return {"test": _ds(_stem_and_choices("arc_challenge_test"))}


@_dataset
def boolq() -> dict:
    """Stock boolq (super_glue boolq validation): passage, question, label (1 = yes)."""
    rows = []
    for r in assets.read_jsonl(assets.data_path("boolq_val")):
        lab = r["label"]
        yes = lab.strip().lower() == "true" if isinstance(lab, str) else bool(lab)
        rows.append({"passage": r["passage"], "question": r["question"], "label": int(yes)})
    return {"validation": _ds(rows)}


def boolq_text(doc) -> str:  # "{{passage}}\nQuestion: {{question}}?\nAnswer:"
    return f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"


@_dataset
def siqa() -> dict:
    """Stock social_iqa (lighteval/siqa validation = the dev set): context, question,
    answerA/B/C, label ("1".."3")."""
    labels = tasks._lines("siqa_dev_labels")
    recs = list(assets.read_jsonl(assets.data_path("siqa_dev")))
    return {"validation": _ds([{**{k: r[k] for k in ("context", "question", "answerA",
                                                      "answerB", "answerC")}, "label": lab}
                               for r, lab in zip(recs, labels)])}


def siqa_text(doc) -> str:  # "Q: {{context}} {{question}}\nA:"
    return f"Q: {doc['context']} {doc['question']}\nA:"


def siqa_choice(doc) -> list[str]:  # "{{[answerA, answerB, answerC]}}"
    return [doc["answerA"], doc["answerB"], doc["answerC"]]


def siqa_target(doc) -> int:  # "{{ (label|int) - 1 }}"
    return int(doc["label"]) - 1


@_dataset
def commonsense_qa() -> dict:
    """Stock commonsense_qa (tau/commonsense_qa validation = the dev set): question,
    choices{text,label}, answerKey."""
    return {"validation": _ds(_stem_and_choices("commonsenseqa_dev"))}


def commonsense_qa_text(doc) -> str:
    """"Question: {{ question.strip() }}\\nA. {{choices['text'][0]}}\\n…E. …\\nAnswer:" """
    listed = "".join(f"\n{lab}. {t}" for lab, t in zip("ABCDE", doc["choices"]["text"]))
    return f"Question: {doc['question'].strip()}{listed}\nAnswer:"


@_dataset
def openbookqa() -> dict:
    """Stock openbookqa (allenai/openbookqa main test): question_stem, choices{text,label},
    answerKey."""
    return {"test": _ds(_stem_and_choices("openbookqa_test", "question_stem"))}


def openbookqa_target(doc) -> int:  # "{{choices.label.index(answerKey.lstrip())}}"
    return list(doc["choices"]["label"]).index(doc["answerKey"].lstrip())
