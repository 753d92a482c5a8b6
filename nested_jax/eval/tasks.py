"""The nine vendored multiple-choice sets, formatted as lm-evaluation-harness formats them.

Each loader yields `Item`s: one context and one continuation per choice (the continuation
starts with lm-eval's target delimiter " "), the gold index, and the text that
`--memorize` memorises. Splits follow lm-eval: ARC and OpenBookQA on test, the rest on
validation/dev (see nested_jax/assets/MANIFEST.md).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator

from nested_jax.data import assets
from nested_jax.eval.errors import EvalError


@dataclasses.dataclass(frozen=True)
class Item:
    task: str
    contexts: tuple          # one per choice (identical except for WinoGrande)
    continuations: tuple     # one per choice, including the leading " "
    gold: int
    memo: str                # the prompt memorised by --memorize

    @property
    def n_choices(self) -> int:
        return len(self.continuations)

    def norm_lengths(self) -> list[int]:
        """acc_norm denominators: characters of each continuation without the delimiter, as
        lm-eval divides by len(choice) (a Python string's length: characters, not bytes)."""
        return [max(1, len(c.removeprefix(" "))) for c in self.continuations]

    def answer_text(self) -> str:
        """The prompt followed by the correct continuation (--memorize-use-correct-answer)."""
        return self.contexts[self.gold] + self.continuations[self.gold]


def _lines(name: str) -> list[str]:
    with assets.open_text(assets.data_path(name)) as f:
        return [ln.rstrip("\n") for ln in f if ln.strip()]


def _mc(task, context, choices, gold) -> Item:
    return Item(task, (context,) * len(choices), tuple(" " + c for c in choices), int(gold), context)


def _labelled_index(choices: list[dict], key: str, where: str) -> int:
    labels = [c["label"] for c in choices]
    if key.strip() not in labels:
        raise ValueError(f"{where}: answerKey {key!r} not among labels {labels}.")
    return labels.index(key.strip())


def piqa() -> Iterator[Item]:
    labels = _lines("piqa_valid_labels")
    recs = list(assets.read_jsonl(assets.data_path("piqa_valid")))
    if len(recs) != len(labels):
        raise ValueError(f"PIQA: {len(recs)} records but {len(labels)} labels.")
    for r, lab in zip(recs, labels):
        # the solutions as stored (some end in a space): lm-eval's piqa.yaml does not strip them
        yield _mc("piqa", f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(lab))


def _hellaswag_pre(text: str) -> str:
    """lm-eval's hellaswag preprocess (the vendored text already went through most of it)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag() -> Iterator[Item]:
    lines = []
    with assets.open_text(assets.data_path("hellaswag_val")) as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"HellaSwag: {len(lines)} lines is not a multiple of 6.")
    for i in range(0, len(lines), 6):
        ctx, gold, endings = lines[i], int(lines[i + 1]), lines[i + 2:i + 6]
        yield _mc("hellaswag", _hellaswag_pre(ctx), [_hellaswag_pre(e) for e in endings], gold)


def winogrande() -> Iterator[Item]:
    """Partial scoring: context = sentence up to the blank with the option substituted;
    continuation = the rest of the sentence (the same for both options)."""
    for r in assets.read_jsonl(assets.data_path("winogrande_dev")):
        s = r["sentence"]
        i = s.index("_")
        target = " " + s[i + 1:].strip()
        opts = (r["option1"], r["option2"])
        yield Item("winogrande", tuple(s[:i] + o for o in opts), (target, target),
                   {"1": 0, "2": 1}[r["answer"]], s[:i].rstrip())


def _arc(name: str, task: str) -> Iterator[Item]:
    for r in assets.read_jsonl(assets.data_path(name)):
        ch = r["question"]["choices"]
        gold = _labelled_index(ch, r["answerKey"], f"{task} {r['id']}")
        yield _mc(task, f"Question: {r['question']['stem']}\nAnswer:", [c["text"] for c in ch], gold)


def boolq() -> Iterator[Item]:
    for r in assets.read_jsonl(assets.data_path("boolq_val")):
        label = r["label"]  # "true"/"false" strings in the SuperGLUE file (or booleans)
        yes = label.strip().lower() == "true" if isinstance(label, str) else bool(label)
        yield _mc("boolq", f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", ["no", "yes"],
                  int(yes))


def siqa() -> Iterator[Item]:
    labels = _lines("siqa_dev_labels")
    recs = list(assets.read_jsonl(assets.data_path("siqa_dev")))
    if len(recs) != len(labels):
        raise ValueError(f"SIQA: {len(recs)} records but {len(labels)} labels.")
    for r, lab in zip(recs, labels):
        yield _mc("siqa", f"Q: {r['context']} {r['question']}\nA:",
                  [r["answerA"], r["answerB"], r["answerC"]], int(lab) - 1)


def commonsenseqa() -> Iterator[Item]:
    """lm-eval's commonsense_qa: the five options listed with letters, the letter scored."""
    for r in assets.read_jsonl(assets.data_path("commonsenseqa_dev")):
        ch = r["question"]["choices"]
        listed = "\n".join(f"{c['label']}. {c['text']}" for c in ch)
        ctx = f"Question: {r['question']['stem'].strip()}\n{listed}\nAnswer:"
        yield _mc("commonsenseqa", ctx, [c["label"] for c in ch],
                  _labelled_index(ch, r["answerKey"], f"commonsenseqa {r['id']}"))


def openbookqa() -> Iterator[Item]:
    for r in assets.read_jsonl(assets.data_path("openbookqa_test")):
        ch = r["question"]["choices"]
        yield _mc("openbookqa", r["question"]["stem"], [c["text"] for c in ch],
                  _labelled_index(ch, r["answerKey"], f"openbookqa {r['id']}"))


TASKS: dict[str, Callable[[], Iterator[Item]]] = {
    "piqa": piqa,
    "hellaswag": hellaswag,
    "winogrande": winogrande,
    "arc_easy": lambda: _arc("arc_easy_test", "arc_easy"),
    "arc_challenge": lambda: _arc("arc_challenge_test", "arc_challenge"),
    "boolq": boolq,
    "siqa": siqa,
    "commonsenseqa": commonsenseqa,
    "openbookqa": openbookqa,
}
# Records per set (MANIFEST.md); loaders are checked against these.
EXPECTED_COUNTS = {"piqa": 1838, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376,
                   "arc_challenge": 1172, "boolq": 3270, "siqa": 1954, "commonsenseqa": 1221,
                   "openbookqa": 500}


def parse_tasks(spec: str) -> list[str]:
    """'all' or a comma list of task names; unknown names are an EvalError listing the valid ones."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise EvalError(f"unknown task name(s) {unknown or [spec]}. Valid tasks: "
                        f"{', '.join(TASKS)} (or 'all'). Fix: e.g. --tasks piqa,arc_easy.")
    return names


def load_items(task: str, limit: int = 0) -> list[Item]:
    """The first `limit` items of a task in file order (all if limit <= 0)."""
    out = []
    for item in TASKS[task]():
        out.append(item)
        if 0 < limit <= len(out):
            break
    return out
