"""Caption metrics: exact match and token F1 (pure Python), BLEU / METEOR / ROUGE-L / CIDEr (pycocoevalcap).

pycocoevalcap works offline; its PTB tokenizer and METEOR run on java. A scorer that fails (no java, a
crashed process) gives NaN and one warning; a metric never stops a training run.
"""
import math
import re
import shutil
import subprocess
import tempfile
import warnings
from collections import Counter
from importlib.util import find_spec
from pathlib import Path

COCO_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")
SCORERS = ("bleu", "meteor", "rouge", "cider")
# What the COCO evaluation drops after PTB tokenization (pycocoevalcap's PTBTokenizer list).
_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                "...", ";"}
_JAVA_TIMEOUT_S = 300
_warned = set()
_meteor = None  # one java process per Python process: METEOR takes 10-20 s to load its paraphrase tables


def normalize(text):
    """Lower case, words only: 'An apple, with mold.' -> 'an apple with mold'."""
    return " ".join(re.findall(r"\w+", str(text).lower()))


def _as_list(references):
    return [references] if isinstance(references, str) else list(references)


def exact_match(prediction, references):
    """1.0 when the prediction equals any reference after normalize(), else 0.0."""
    return float(any(normalize(prediction) == normalize(ref) for ref in _as_list(references)))


def token_f1(prediction, references):
    """Best bag-of-words F1 (SQuAD style, repeated words counted) against any reference."""
    predicted = Counter(normalize(prediction).split())
    best = 0.0
    for ref in _as_list(references):
        expected = Counter(normalize(ref).split())
        if not predicted and not expected:
            return 1.0
        overlap = sum((predicted & expected).values())
        if overlap:
            precision, recall = overlap / sum(predicted.values()), overlap / sum(expected.values())
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def coco_metrics(references, predictions, scorers=SCORERS):
    """Corpus BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) of predictions {id: str} against references
    {id: [str, ...]} (ids as in predictions). Scorers left out of `scorers`, or failing, give NaN."""
    ids = list(predictions)
    missing = [i for i in ids if not _as_list(references.get(i, []))]
    if missing:
        raise ValueError(f"no reference captions for {len(missing)} prediction(s), e.g. id {missing[0]!r}")
    results = dict.fromkeys(COCO_METRICS, math.nan)
    if not ids:
        return results
    unknown = set(scorers) - set(SCORERS)
    if unknown:
        raise ValueError(f"unknown scorers {sorted(unknown)}: choose from {SCORERS}")
    gts, res = _tokenize({i: _as_list(references[i]) for i in ids}, {i: [predictions[i]] for i in ids})
    for name in scorers:
        try:
            score = _score(name, gts, res)
        except Exception as error:  # noqa: BLE001 -- any scorer failure becomes NaN, never a crash
            _warn_once(name, f"{name} failed, recorded as NaN: {type(error).__name__}: {error}")
            if name == "meteor":
                _drop_meteor()
            continue
        if name == "bleu":
            results.update({f"bleu_{n + 1}": float(value) for n, value in enumerate(score)})
        else:
            results["rouge_l" if name == "rouge" else name] = float(score)
    return results


def caption_metrics(references, predictions, scorers=SCORERS):
    """Mean exact match and token F1, plus coco_metrics(); one flat dict of floats."""
    ids = list(predictions)
    results = {
        "exact_match": _mean(exact_match(predictions[i], references[i]) for i in ids),
        "token_f1": _mean(token_f1(predictions[i], references[i]) for i in ids),
    }
    results.update(coco_metrics(references, predictions, scorers))
    return results


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _score(name, gts, res):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if name == "bleu":
        return Bleu(4).compute_score(gts, res, verbose=0)[0]
    if name == "rouge":
        return Rouge().compute_score(gts, res)[0]
    if name == "cider":
        return Cider().compute_score(gts, res)[0]
    return _meteor_scorer().compute_score(gts, res)[0]


def _meteor_scorer():
    global _meteor
    if _meteor is None:
        from pycocoevalcap.meteor.meteor import Meteor
        _require_java()  # a Meteor() whose java cannot start fails again noisily in its __del__
        _meteor = Meteor()
    return _meteor


def _drop_meteor():
    """A failed METEOR call leaves pycocoevalcap's lock held and its __del__ would then hang at exit."""
    global _meteor
    if _meteor is not None:
        if _meteor.lock.locked():
            _meteor.lock.release()
        _meteor.meteor_p.kill()
        _meteor = None


def _tokenize(gts, res):
    """The COCO evaluation's PTB tokenization (java), or lower-case word splitting when java fails."""
    keys = [("g", i) for i, refs in gts.items() for _ in refs] + [("r", i) for i in res]
    texts = [t for refs in gts.values() for t in refs] + [refs[0] for refs in res.values()]
    try:
        tokenized = _ptb_tokenize(texts)
    except Exception as error:  # noqa: BLE001
        _warn_once("ptb", f"PTB tokenizer failed ({type(error).__name__}: {error}); using simple tokenization")
        tokenized = [normalize(t) for t in texts]
    out = {"g": {i: [] for i in gts}, "r": {i: [] for i in res}}
    for (side, i), text in zip(keys, tokenized):
        out[side][i].append(text)
    return out["g"], out["r"]


def _ptb_tokenize(texts):
    """pycocoevalcap's PTBTokenizer, but reading a temp file outside site-packages and keeping java quiet."""
    _require_java()
    spec = find_spec("pycocoevalcap")
    jar = Path(next(iter(spec.submodule_search_locations))) / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    lines = [" ".join(str(t).split()) for t in texts]  # one caption per line, whatever it contains
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as source:
        source.write("\n".join(lines) + "\n")
        source.flush()
        command = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                   "-lowerCase", source.name]
        output = subprocess.run(command, capture_output=True, check=True, timeout=_JAVA_TIMEOUT_S).stdout
    tokenized = output.decode("utf-8").split("\n")[:len(lines)]
    if len(tokenized) != len(lines):
        raise RuntimeError(f"{len(lines)} captions in but {len(tokenized)} lines out")
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in _PUNCTUATION) for line in tokenized]


def _require_java():
    if shutil.which("java") is None:
        raise RuntimeError("java is not installed (apt-get install default-jre-headless)")


def _warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def auroc(labels, scores):
    """Area under the ROC curve of `scores` for boolean `labels` (Mann-Whitney U, ties counted half);
    NaN when one class is missing."""
    import numpy as np

    labels, scores = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=float)
    positives, negatives = labels.sum(), (~labels).sum()
    if not positives or not negatives:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranks = (first + (counts + 1) / 2)[inverse]  # the average rank (1-based) within each run of ties
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def best_threshold(labels, scores):
    """The threshold t (score >= t is positive) with the highest accuracy, midway between two scores; the
    lowest such one when several tie."""
    import numpy as np

    labels, scores = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=float)
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    accuracy = [((scores >= t) == labels).mean() for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])
