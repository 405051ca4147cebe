"""References the code is held to, written out plainly and apart from squad_lora: the official SQuAD v1.1 and v2.0
evaluation scripts' logic (official_normalize, official_v1_f1, official_v1_evaluate, official_v2_f1,
official_v2_evaluate), which the metrics must equal, and what squad_lora.data.load_squad_file promises for any
file, stated on its own (rows_of_official, rows_of_json_file, expected_load, assert_loads_as_written), which the
random-file tests hold the loader to.
"""

import collections
import re
import string
from types import SimpleNamespace

# ---------------------------------------------------------------------------
# What load_squad_file promises, stated on its own: the random-file tests hold the loader to it
# ---------------------------------------------------------------------------


def rows_of_official(doc: dict) -> list | None:
    """The official layout's data/paragraphs/qas flattened into Hub rows, as written (an unanswerable question's
    answers dropped); None where the structure is broken (the whole file is refused)."""
    if not isinstance(doc["data"], list):
        return None
    rows = []
    for article in doc["data"]:
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            return None
        for paragraph in article["paragraphs"]:
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                return None
            if not isinstance(paragraph.get("context"), str):
                return None
            for qa in paragraph["qas"]:
                answers = qa.get("answers") if isinstance(qa, dict) else None
                if not isinstance(answers, list) or not all(isinstance(answer, dict) for answer in answers):
                    return None
                answers = [] if qa.get("is_impossible") else answers
                rows.append(
                    {
                        "id": qa.get("id"),
                        "title": article.get("title", ""),
                        "context": paragraph["context"],
                        "question": qa.get("question"),
                        "answers": {
                            "text": [answer.get("text") for answer in answers],
                            "answer_start": [answer.get("answer_start") for answer in answers],
                        },
                    }
                )
    return rows


def rows_of_json_file(values: list) -> tuple[list | None, str | None]:
    """(rows, declared version) of a JSON file holding values[0] alone, or of JSON Lines, one value a line: an
    object with 'data' is the official layout, a list a list of rows, an object with 'context' one row; rows None
    where the file is refused whole (empty, of no known layout, or a broken official structure)."""
    if len(values) != 1:
        return (values or None), None  # JSON Lines (two values or more are not one JSON document)
    (doc,) = values
    if isinstance(doc, dict) and "data" in doc:
        return rows_of_official(doc), None if doc.get("version") is None else str(doc["version"])
    if isinstance(doc, list):
        return doc, None
    return ([doc] if isinstance(doc, dict) and "context" in doc else None), None


def _kept_answer(context: str, text, start, strict: bool):
    """("keep", start) for an answer a training row keeps (answer_start moved to its text when it misses by at most
    MAX_OFFSET_REPAIR characters, the nearest, earlier first), ("blank" | "bad", None) for one skipped and counted,
    ("refuse", None) for one that refuses the file (a wrong type; under strict, anything short of exact)."""
    from squad_lora.data import MAX_OFFSET_REPAIR

    if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
        return "refuse", None
    if not text.strip():
        return ("refuse" if strict else "blank"), None
    near = [s for s in range(max(0, start - MAX_OFFSET_REPAIR), start + MAX_OFFSET_REPAIR + 1)
            if context[s : s + len(text)] == text]  # fmt: skip
    if start in near:
        return "keep", start
    if strict:
        return "refuse", None
    return ("keep", min(near, key=lambda s: (abs(s - start), s))) if near else ("bad", None)


def expected_load(rows: list, strict: bool = False) -> SimpleNamespace:
    """What load_squad_file (check_answers, the default) must return for these rows: .examples (None where it must
    refuse), .refused_row (the index of the first row it must refuse, None where no row is at fault) and the
    counts of its LoadStats."""
    counts = dict(num_blank_answers=0, num_bad_answer_start=0, bad_answer_start_ids=[], num_repaired_answer_start=0,
                  num_numeric_ids=0)  # fmt: skip
    examples, seen = [], set()
    for i, row in enumerate(rows):
        refused = SimpleNamespace(examples=None, refused_row=i, counts=None)
        row_id = row.get("id") if isinstance(row, dict) else None
        if isinstance(row_id, (int, float)) and not isinstance(row_id, bool):
            counts["num_numeric_ids"] += 1
            row_id = str(row_id)
        elif not (isinstance(row_id, str) and row_id.strip()):
            return refused  # not an object, or no id: a non-empty string or a number
        if not isinstance(row.get("context"), str) or not isinstance(row.get("question"), str):
            return refused
        if not row["question"].strip() or row_id in seen:
            return refused
        seen.add(row_id)
        answers = row.get("answers")
        if not isinstance(answers, dict) or not all(isinstance(answers.get(k), list) for k in ("text", "answer_start")):
            return refused
        if len(answers["text"]) != len(answers["answer_start"]):
            return refused
        texts, starts = [], []
        for text, start in zip(answers["text"], answers["answer_start"]):
            outcome, kept_start = _kept_answer(row["context"], text, start, strict)
            if outcome == "refuse":
                return refused
            if outcome == "blank":
                counts["num_blank_answers"] += 1
            elif outcome == "bad":
                counts["num_bad_answer_start"] += 1
                counts["bad_answer_start_ids"].append(row_id)
            else:
                counts["num_repaired_answer_start"] += kept_start != start
                texts.append(text)
                starts.append(kept_start)
        if answers["text"] and not texts:
            continue  # every answer skipped: dropped, not trained as unanswerable
        title = row.get("title")
        examples.append({"id": row_id, "title": "" if title is None else str(title),
                         "context": row["context"], "question": row["question"],
                         "answers": {"text": texts, "answer_start": starts}})  # fmt: skip
    if not examples:
        return SimpleNamespace(examples=None, refused_row=None, counts=None)
    return SimpleNamespace(examples=examples, refused_row=None, counts={**counts, "num_examples": len(examples)})


def assert_loads_as_written(path, rows: list | None, strict: bool = False, version: str | None = None) -> str:
    """Load path, whose rows as written are `rows` (None: a file refused whole), and hold the result to
    expected_load: the same examples, field for field and offset for offset, and the same counts; or a refusal
    (SquadDataError) that names the file, and the row at fault where one is. Returns "loaded" or "refused"."""
    from squad_lora.data import load_squad_file
    from squad_lora.errors import SquadDataError

    expected = SimpleNamespace(examples=None, refused_row=None) if rows is None else expected_load(rows, strict)
    try:
        examples, stats = load_squad_file(str(path), strict=strict)
    except SquadDataError as e:
        message = str(e)
        assert expected.examples is None, f"refused ({message}), but should load as {expected.examples}"
        assert message.startswith(f"{path}: "), message
        if expected.refused_row is not None:
            assert re.search(rf"\bexample {expected.refused_row}\b", message), message
        elif rows is not None:
            assert message == f"{path}: no usable examples", message
        return "refused"
    assert expected.examples is not None, f"loaded {examples}, but should be refused"
    assert examples == expected.examples
    assert {key: getattr(stats, key) for key in expected.counts} == expected.counts
    inferred = "v2.0" if any(not example["answers"]["text"] for example in examples) else "v1.1"
    assert (stats.version, stats.version_inferred) == ((inferred, True) if version is None else (version, False))
    return "loaded"


# ---------------------------------------------------------------------------
# The official SQuAD v1.1 / v2.0 scripts' logic, written out plainly (the reference the metric must equal)
# ---------------------------------------------------------------------------


def official_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_v1_f1(prediction, ground_truth):
    prediction_tokens = official_normalize(prediction).split()
    ground_truth_tokens = official_normalize(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_v1_evaluate(examples, predictions):
    f1 = exact_match = total = 0
    for ex in examples:
        total += 1
        if ex["id"] not in predictions:
            continue
        ground_truths = ex["answers"]["text"]
        prediction = predictions[ex["id"]]
        exact_match += max(official_normalize(prediction) == official_normalize(gt) for gt in ground_truths)
        f1 += max(official_v1_f1(prediction, gt) for gt in ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def official_v2_tokens(s):
    if not s:
        return []
    return official_normalize(s).split()


def official_v2_f1(a_gold, a_pred):
    gold_toks = official_v2_tokens(a_gold)
    pred_toks = official_v2_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def official_v2_evaluate(examples, predictions, na_probs=None, na_prob_thresh=1.0):
    """The v2.0 script (every prediction must be present), with its --na-prob-file and --na-prob-thresh."""
    has_ans = {ex["id"]: bool(ex["answers"]["text"]) for ex in examples}
    exact_scores, f1_scores = {}, {}
    for ex in examples:
        gold_answers = [a for a in ex["answers"]["text"] if official_normalize(a)] or [""]
        a_pred = predictions[ex["id"]]
        exact_scores[ex["id"]] = max(int(official_normalize(a) == official_normalize(a_pred)) for a in gold_answers)
        f1_scores[ex["id"]] = max(official_v2_f1(a, a_pred) for a in gold_answers)
    probabilities = na_probs if na_probs is not None else {k: 0.0 for k in predictions}

    def apply_no_ans_threshold(scores):
        return {qid: float(not has_ans[qid]) if probabilities[qid] > na_prob_thresh else s for qid, s in scores.items()}

    exact_thresh, f1_thresh = apply_no_ans_threshold(exact_scores), apply_no_ans_threshold(f1_scores)
    total = len(exact_thresh)
    out = {
        "exact": 100.0 * sum(exact_thresh.values()) / total,
        "f1": 100.0 * sum(f1_thresh.values()) / total,
        "total": total,
    }
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [k for k, v in has_ans.items() if v is wanted]
        if qids:
            out[f"{prefix}_exact"] = 100.0 * sum(exact_thresh[k] for k in qids) / len(qids)
            out[f"{prefix}_f1"] = 100.0 * sum(f1_thresh[k] for k in qids) / len(qids)
            out[f"{prefix}_total"] = len(qids)

    def find_best_thresh(scores):
        num_no_ans = sum(1 for k in has_ans if not has_ans[k])
        cur_score = num_no_ans
        best_score = cur_score
        best_thresh = 0.0
        qid_list = sorted(probabilities, key=lambda k: probabilities[k])
        for qid in qid_list:
            if qid not in scores:
                continue
            if has_ans[qid]:
                diff = scores[qid]
            else:
                diff = -1 if predictions[qid] else 0
            cur_score += diff
            if cur_score > best_score:
                best_score = cur_score
                best_thresh = probabilities[qid]
        return 100.0 * best_score / len(scores), best_thresh

    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = find_best_thresh(exact_scores)
        out["best_f1"], out["best_f1_thresh"] = find_best_thresh(f1_scores)
    return out
