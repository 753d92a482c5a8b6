"""The nine vendored multiple-choice sets: every record parses, counts match the manifest,
prompts are lm-evaluation-harness's."""

import pytest

from nested_jax.eval import tasks
from nested_jax.eval.errors import EvalError

MANIFEST_COUNTS = {"piqa": 1838, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376,
                   "arc_challenge": 1172, "boolq": 3270, "siqa": 1954, "commonsenseqa": 1221,
                   "openbookqa": 500}
CHOICES = {"piqa": {2}, "hellaswag": {4}, "winogrande": {2}, "arc_easy": {3, 4, 5},
           "arc_challenge": {3, 4, 5}, "boolq": {2}, "siqa": {3}, "commonsenseqa": {5},
           "openbookqa": {4}}


@pytest.fixture(scope="module")
def all_items():
    return {name: tasks.load_items(name) for name in tasks.TASKS}


def test_every_record_of_all_nine_sets_parses(all_items):
    assert set(all_items) == set(MANIFEST_COUNTS)
    for name, items in all_items.items():
        assert len(items) == MANIFEST_COUNTS[name] == tasks.EXPECTED_COUNTS[name], name
        assert {it.n_choices for it in items} <= CHOICES[name], name
        for it in items:
            assert 0 <= it.gold < it.n_choices
            assert len(it.contexts) == it.n_choices
            assert all(c.startswith(" ") and c.strip() for c in it.continuations), name
            assert it.memo.strip()


def test_gold_label_distributions(all_items):
    hs = [it.gold for it in all_items["hellaswag"]]
    assert [hs.count(k) for k in range(4)] == [2515, 2485, 2584, 2458]  # MANIFEST.md
    bq = [it.gold for it in all_items["boolq"]]
    assert bq.count(1) == 2033 and bq.count(0) == 1237


def test_prompts_follow_lm_eval(all_items):
    p = all_items["piqa"][0]
    assert p.contexts[0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert p.gold == 0 and not p.continuations[0].endswith(" ")
    w = all_items["winogrande"][0]  # partial scoring: option in the context, same continuation
    assert w.contexts == ("Sarah was a much better surgeon than Maria so Sarah",
                          "Sarah was a much better surgeon than Maria so Maria")
    assert w.continuations == (" always got the easier cases.",) * 2 and w.gold == 1
    b = all_items["boolq"][0]
    assert b.gold == 0  # label "false" (a string in the file)
    assert b.contexts[0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert b.continuations == (" no", " yes")
    s = all_items["siqa"][0]
    assert s.contexts[0].startswith("Q: Tracy didn't go home") and s.contexts[0].endswith("\nA:")
    c = all_items["commonsenseqa"][0]
    assert c.continuations == (" A", " B", " C", " D", " E") and "\nE. new york\nAnswer:" in c.contexts[0]
    a = all_items["arc_easy"][0]
    assert a.contexts[0].startswith("Question: ") and a.contexts[0].endswith("\nAnswer:")
    assert all_items["openbookqa"][0].gold == 1
    assert all_items["hellaswag"][0].contexts[0] == "Roof shingle removal: A man is sitting on a roof. he"


def test_numeric_arc_answer_keys_map_to_the_right_choice(all_items):
    from nested_jax.data import assets

    n_numeric = 0
    for name, task in (("arc_easy_test", "arc_easy"), ("arc_challenge_test", "arc_challenge")):
        for rec, it in zip(assets.read_jsonl(assets.data_path(name)), all_items[task]):
            labels = [c["label"] for c in rec["question"]["choices"]]
            assert it.gold == labels.index(rec["answerKey"])
            assert it.continuations[it.gold] == " " + rec["question"]["choices"][it.gold]["text"]
            if rec["answerKey"].isdigit():
                n_numeric += 1
                assert it.gold == int(rec["answerKey"]) - 1
    assert n_numeric > 0


def test_norm_lengths_and_answer_text():
    it = tasks.Item("t", ("Q:",) * 2, (" é", " ab"), 1, "Q:")
    assert it.norm_lengths() == [1, 2]  # characters without the delimiter (lm-eval: len(choice))
    assert it.answer_text() == "Q: ab"


def test_unknown_task_lists_the_valid_ones():
    assert tasks.parse_tasks("all") == list(tasks.TASKS)
    assert tasks.parse_tasks("piqa, boolq") == ["piqa", "boolq"]
    with pytest.raises(EvalError, match="unknown task.*'foo'.*Valid tasks: piqa, hellaswag"):
        tasks.parse_tasks("piqa,foo")
