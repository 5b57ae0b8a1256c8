"""Answer records: the questions a row asks, their ids, and the scored record of one answer."""

import hashlib
import logging
from collections.abc import Mapping

from rewardmap.data.schema import is_reasonmap_row
from rewardmap.eval.answers import answer_text
from rewardmap.eval.plus import score_plus
from rewardmap.eval.routes import score_reasonmap
from rewardmap.reward import compute_score

logger = logging.getLogger(__name__)

REASONMAP_QUESTIONS = ("short", "long")


def sample_id(index: int, question: str) -> str:
    """A stable id for row `index`: its position plus a hash of its question (a changed dataset changes the id)."""
    return f"{index:06d}-{hashlib.sha256(question.encode('utf-8')).hexdigest()[:12]}"


def questions_of(row: Mapping) -> tuple[str | None, ...]:
    """The answers a row asks for: ("short", "long") for a ReasonMap benchmark row, (None,) for one question."""
    return REASONMAP_QUESTIONS if is_reasonmap_row(row) else (None,)


def record_id(index: int, row: Mapping, question: str | None) -> str:
    """The answers.jsonl id of one answer: sample_id of the question text, `-short` / `-long` for ReasonMap."""
    if question is None:
        return sample_id(index, row["question"])
    return f"{sample_id(index, row[f'question_{question}'])}-{question}"


def score_record(row: Mapping, response: str, answer_format: str = "plain") -> dict:
    """The metrics of one answer to one Train / Plus row (scored on `answer_text(response, answer_format)`).

    TorF/Counting rows: `correct` = the ReasonMap-Plus verdict. Planning rows: `reward_correct` = the reward's
    verdict (released variant) and, when the row has reference `routes`, the ReasonMap short-question figures
    (`correct`, `map_score`, ...); without routes `correct` is the reward's verdict.
    """
    answer = answer_text(response, answer_format)
    record = {key: row.get(key) for key in ("type", "difficulty_city", "country", "city")}
    if row["type"] != "planning":
        return record | {"correct": int(score_plus(answer, row))}
    record["reward_correct"] = int(compute_score(answer, row).correct)
    if not row.get("routes"):
        return record | {"correct": record["reward_correct"]}
    return record | {"question": "short"} | score_reasonmap(answer, row, question="short")


def score_reasonmap_record(row: Mapping, response: str, question: str, answer_format: str = "plain") -> dict:
    """The metrics of one answer to a ReasonMap benchmark row's `question` ("short" / "long"): score_reasonmap's
    figures plus what aggregation reads (`type` planning, `benchmark` reasonmap, city, difficulties)."""
    record = {"type": "planning", "benchmark": "reasonmap"}
    record |= {key: row.get(key) for key in ("country", "city", "difficulty_city", "difficulty_question")}
    return record | score_reasonmap(answer_text(response, answer_format), row, question=question)


def make_record(index: int, row: Mapping, question: str | None, answer: Mapping, answer_format: str) -> dict:
    """The answers.jsonl entry of one answer: id, index, [question,] the answer (`prompt`: the rendered prompt text,
    one `<|image_pad|>` for the map; `response`, `token_count`, `finished`; all but the response may be None) and its
    scores."""
    kept = {key: answer.get(key) for key in ("prompt", "response", "token_count", "finished")}
    head = {"id": record_id(index, row, question), "index": index}
    if question is None:
        return head | kept | score_record(row, kept["response"], answer_format)
    scores = score_reasonmap_record(row, kept["response"], question, answer_format)
    return head | {"question": question} | kept | scores
