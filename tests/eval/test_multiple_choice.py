"""Multiple choice: row shapes, and accuracy vs a hand computation (one unpadded forward per choice)."""
import pytest
import torch
import torch.nn.functional as F

from distr_patch.data.choices import ChoiceRow, rows_from_records
from distr_patch.data.errors import DataError
from distr_patch.eval.multiple_choice import choice_loglikelihoods, multiple_choice
from tiny_models import WORDS, tiny_llama, word_tokenizer


def test_row_shapes():
    mmlu = rows_from_records([{"question": "q", "choices": ["a", "b", "c"], "answer": 2}],
                             ["question", "choices", "answer"])
    arc = rows_from_records([{"question": "q", "choices": {"text": ["x", "y"], "label": ["A", "B"]},
                              "answerKey": "B"}], ["question", "choices", "answerKey"])
    hella = rows_from_records([{"ctx": "c", "endings": ["e0", "e1"], "label": "1"}], ["ctx", "endings", "label"])
    piqa = rows_from_records([{"goal": "g", "sol1": "s1", "sol2": "s2", "label": 0}], ["goal", "sol1", "sol2", "label"])
    assert mmlu == [ChoiceRow("q", ("a", "b", "c"), 2)]
    assert arc == [ChoiceRow("q", ("x", "y"), 1)]
    assert hella == [ChoiceRow("c", ("e0", "e1"), 1)]
    assert piqa == [ChoiceRow("g", ("s1", "s2"), 0)]


def test_unknown_column_is_named():
    with pytest.raises(DataError, match=r"--label-column: column 'anwser' .*did you mean 'answer'"):
        rows_from_records([{"question": "q", "choices": ["a"], "answer": 0}], ["question", "choices", "answer"],
                          label="anwser")


@pytest.mark.parametrize("choices,match", [
    ("mat;sky;sea", r"row 0: column 'choices' holds str 'mat;sky;sea', expected a list"),  # was 11 one-letter choices
    (["mat", ""], r"row 0: choices \['mat', ''\]: expected two or more non-empty texts"),  # was a bare ValueError
    (["mat"], r"row 0: choices \[.mat.\]: expected two or more"),
])
def test_choices_that_are_not_a_list_of_texts(choices, match):
    with pytest.raises(DataError, match="--choices-column: " + match):
        rows_from_records([{"question": "q", "choices": choices, "answer": 0}], ["question", "choices", "answer"])


def test_label_out_of_range():
    with pytest.raises(DataError, match="outside the 2 choices"):
        rows_from_records([{"question": "q", "choices": ["a", "b"], "answer": 5}], ["question", "choices", "answer"])


@pytest.fixture(scope="module")
def lm():
    tok = word_tokenizer()
    return tiny_llama(len(tok), seed=3), tok


def _hand_loglikelihood(model, tok, context, choice):
    ctx = tok(context).input_ids
    cont = tok(" " + choice, add_special_tokens=False).input_ids
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = F.log_softmax(model(ids).logits[0].float(), -1)
    return sum(logp[len(ctx) + i - 1, t].item() for i, t in enumerate(cont))


def test_accuracy_equals_hand_computation(lm):
    model, tok = lm
    g = torch.Generator().manual_seed(0)
    pick = lambda n: " ".join(WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=g))  # noqa: E731
    rows = [ChoiceRow(pick(6), tuple(pick(int(k)) for k in torch.randint(1, 5, (3,), generator=g)), i % 3)
            for i in range(8)]
    hand = [[_hand_loglikelihood(model, tok, r.context, c) for c in r.choices] for r in rows]
    for r, h in zip(rows, hand):  # the padded batch gives the unpadded log-likelihoods
        assert choice_loglikelihoods(model, tok, r, 512) == pytest.approx(h, abs=1e-4)
    pred = [max(range(3), key=h.__getitem__) for h in hand]
    pred_norm = [max(range(3), key=lambda j: h[j] / len(r.choices[j].encode())) for h, r in zip(hand, rows)]
    out = multiple_choice(model, tok, rows, max_length=512, progress=False)
    assert out["metrics"]["accuracy"] == pytest.approx(sum(p == r.label for p, r in zip(pred, rows)) / len(rows))
    assert out["metrics"]["accuracy_norm"] == pytest.approx(
        sum(p == r.label for p, r in zip(pred_norm, rows)) / len(rows))


@pytest.mark.parametrize("max_length", [512, 6])
def test_loglikelihoods_equal_lm_eval(lm, max_length):
    """lm-evaluation-harness's HFLM scores the same choices to the same values: its split of context and choice
    (trailing whitespace moved to the choice, an empty context as BOS) and its left truncation to
    max_length + 1 tokens, of which the last is not fed."""
    hflm_module = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    model, tok = lm
    hflm = hflm_module.HFLM(pretrained=model, tokenizer=tok, max_length=max_length, add_bos_token=True,
                            batch_size=1, device="cpu")
    g = torch.Generator().manual_seed(1)
    pick = lambda n: " ".join(WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=g))  # noqa: E731
    rows = [ChoiceRow(pick(9), (pick(2), pick(1), pick(3)), 0), ChoiceRow(pick(3) + " ", (pick(1), pick(2)), 1),
            ChoiceRow("", (pick(2), pick(1)), 0)]
    for row in rows:
        requests = [Instance("loglikelihood", {}, (row.context, " " + c), i) for i, c in enumerate(row.choices)]
        theirs = [ll for ll, _ in hflm.loglikelihood(requests, disable_tqdm=True)]
        assert choice_loglikelihoods(model, tok, row, max_length) == pytest.approx(theirs, abs=1e-4), row
