"""TorF / Counting answers: extraction, cleaning and verdict, `released` (quirks kept) and `corrected`."""

import itertools
import logging
import operator
import re
from array import array

from rewardmap.errors import InputError

logger = logging.getLogger(__name__)

VARIANTS = ("released", "corrected")
KINDS = ("TorF", "Counting1", "Counting2", "Counting3")
_RELEASED_PHRASES = tuple(
    p
    for phrase in ("the final answer is", "the answer is", "the correct answer is", "the answer should be")
    for p in (phrase, phrase.replace("the", "The"))
)
_CORRECTED_PHRASES = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")
# Released cleaning, rule 5, then rule 6 up to the empty check: one str.replace pass each, in order.
_RULE5 = (
    (" ", ""), ("\\,", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"), ("\n", ""), ("\\text", ""),
    ("\\mbox", ""), ("bmatrix", "pmatrix"), ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""),
    ("{m}^3", ""), ("m^3", ""), ("{units}", ""), ("units", ""), ("{km}", ""), ("km", ""),
)  # fmt: skip
_RULE6 = (
    ("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"), ("\\left", ""), ("\\right", ""),
    ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""), ("$", ""), ("\\%", ""), ("{.", "{0."),
)  # fmt: skip
_GUARDED_RULES = tuple(("\\" if "\\" in old else old[-1], old, new) for old, new in _RULE5 + _RULE6)
_CHOICES = {"a": 0, "b": 1, "c": 2, "d": 3}
_NOT_BRACKETS = {"{}": re.compile(r"[^{}]+"), "[]": re.compile(r"[^\[\]]+")}
_STEP_TABLES = {pair: bytes.maketrans(pair.encode(), b"\x01\xff") for pair in _NOT_BRACKETS}
_CHUNK = 1 << 16  # match_close skips a chunk with str.count when it cannot close the bracket
_FEW_UNWRAPS = 8  # up to this many \\text{ / \\mbox{, match each with match_close; beyond, one stack walk
_UNWRAP_OPENS = re.compile(r"\\text\{|\\mbox\{")
_UNWRAP_EVENTS = re.compile(
    r"(?P<commands>(?:\\text\{|\\mbox\{)+)|(?P<pairs>(?:\{\})+)|(?P<opens>\{+)|(?P<closes>\}+)"
)  # adjacent `{}` pairs are kept and leave the stack as it was: one event per run
_MAX_INT_DIGITS = 4300  # CPython's int() limit; released int() fails beyond it


def match_close(s: str, start: int, pair: str = "{}") -> int:
    """Index of the bracket closing depth 1 opened just before `start` (nesting counted), or -1 if unmatched."""
    opener, closer = pair
    depth = 1
    for chunk_start in range(start, len(s), _CHUNK):
        # An adjacent pair `{}` never closes the outer bracket: blanking it keeps positions and skips more chunks.
        chunk = s[chunk_start : chunk_start + _CHUNK].replace(pair, "  ")
        closes = chunk.count(closer)
        if closes >= depth:  # the depth may reach 0 inside this chunk: walk it
            at = _first_zero(chunk, depth, pair)
            if at >= 0:
                return chunk_start + at
        depth += chunk.count(opener) - closes
    return -1


def _first_zero(chunk: str, depth: int, pair: str) -> int:
    """Index in `chunk` where the bracket depth, starting at `depth`, first reaches 0; -1 if it never does."""
    # The walk runs in C: brackets only, as +1/-1 signed bytes, prefix sums, first 0.
    brackets = _NOT_BRACKETS[pair].sub("", chunk)
    steps = array("b", brackets.encode("ascii").translate(_STEP_TABLES[pair]))
    try:
        j = operator.indexOf(itertools.accumulate(steps, initial=depth), 0) - 1
    except ValueError:
        return -1
    # The match is the (closes before it + 1)-th closer of the chunk: binary search on C-level counts.
    closer, wanted = pair[1], brackets.count(pair[1], 0, j) + 1
    lo, hi = 0, len(chunk)
    while lo < hi:
        mid = (lo + hi) // 2
        if chunk.count(closer, 0, mid + 1) >= wanted:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _released_extract(response: str) -> str:
    if "oxed{" not in response:
        text = response
        for phrase in _RELEASED_PHRASES:
            at = text.rfind(phrase)
            if at < 0:
                text = text.strip()
                continue
            text = text[at + len(phrase) :].strip()
            text = text.split("\n", 1)[0].split(". ", 1)[0]
        return text
    last = response.rfind("oxed{")
    if response.find("oxed{") != last:
        return "\\boxed{" + response[last + 5 :]
    return response


def _after_equals(a: str) -> str:
    """Cleaning rule 4: the part after the last `=`, then after the last `\\approx`."""
    a = a[a.rfind("=") + 1 :]
    at = a.rfind("\\approx")
    return a if at < 0 else a[at + 7 :]


def _finish(a: str, leading_dot: bool) -> str:
    """Cleaning rules 5-7 (released rewrites of sqrt/frac never yield an accepted answer and are skipped)."""
    for guard, old, new in _GUARDED_RULES:
        if guard in a:  # a one-character memchr scan is far cheaper than a failed multi-character replace
            a = a.replace(old, new)
    if a:
        if leading_dot and a.startswith("."):
            a = "0" + a
        if a.count("\\approx") == 1:
            a = a[a.find("\\approx") + 7 :]
    return a.rstrip(".").lstrip(":").strip()


def _released_clean(text: str) -> str:
    s = text.lower().replace("{}", "")
    a = s
    box = s.find("oxed{")
    if box >= 0:
        last_close = s.rfind("}")
        if last_close >= box + 5:
            a = s[box + 5 : last_close]
    first_close = a.find("}")
    if first_close >= 0:
        first_open = a.find("{")
        if first_open < 0 or first_close < first_open:
            a = a[:first_close]
    return _finish(_after_equals(a), leading_dot=True)


def _corrected_extract(response: str) -> str:
    low = response.lower()
    box = low.rfind("boxed{")
    if box >= 0:
        end = match_close(low, box + 6)
        return low[box + 6 : end] if end >= 0 else low[box + 6 :]
    best = max(((low.rfind(p), p) for p in _CORRECTED_PHRASES), key=operator.itemgetter(0))
    if best[0] < 0:
        return low
    text = low[best[0] + len(best[1]) :]
    return text.split("\n", 1)[0].split(". ", 1)[0]


def _unwrap_text_commands(a: str) -> str:
    """Delete each `\\text{` / `\\mbox{` and the `}` matching its brace; other braces are kept."""
    opens = [m.start() for m in itertools.islice(_UNWRAP_OPENS.finditer(a), _FEW_UNWRAPS + 1)]
    if not opens:
        return a
    if len(opens) > _FEW_UNWRAPS:
        return _unwrap_by_events(a, opens[0])
    cuts = sorted([(p, p + 6) for p in opens] + [(end, end + 1) for p in opens if (end := match_close(a, p + 6)) >= 0])
    pieces, pos = [], 0
    for cut_start, cut_end in cuts:
        pieces.append(a[pos:cut_start])
        pos = cut_end
    pieces.append(a[pos:])
    return "".join(pieces)


def _unwrap_by_events(a: str, first: int) -> str:
    """`_unwrap_text_commands` as one stack walk over runs of commands, `{` and `}` (many commands)."""
    pieces, stack, pos = [a[:first]], [], first
    for event in _UNWRAP_EVENTS.finditer(a, first):
        run, kind = event.group(), event.lastgroup
        if kind == "pairs":
            continue
        if kind == "opens":
            stack.extend([False] * len(run))
            continue
        pieces.append(a[pos : event.start()])
        pos = event.end()
        if kind == "commands":
            stack.extend([True] * (len(run) // 6))
        else:  # a run of `}`: those closing a plain `{` (or nothing) stay; all `}` are alike, so order is moot
            popped = stack[-len(run) :]
            del stack[-len(run) :]
            pieces.append("}" * (popped.count(False) + len(run) - len(popped)))
    pieces.append(a[pos:])
    return "".join(pieces)


def _corrected_clean(text: str) -> str:
    return _finish(_after_equals(_unwrap_text_commands(text.lower())), leading_dot=False)


def extract_answer(response: str, variant: str = "released") -> str:
    """Extract and clean the final answer of a TorF/Counting response: the string the verdict compares."""
    if variant == "released":
        return _released_clean(_released_extract(response))
    if variant == "corrected":
        return _corrected_clean(_corrected_extract(response))
    raise InputError(f"unknown reward variant {variant!r}; expected one of {VARIANTS}")


def _released_int_equals(a: str, answer: object) -> bool:
    try:
        return int(a) == answer
    except ValueError:
        return False


def _corrected_int_equals(a: str, answer: object) -> bool:
    digits = a[1:] if a[:1] in ("+", "-") else a
    if not (digits.isascii() and digits.isdigit()):
        return False
    digits = digits.lstrip("0") or "0"
    if len(digits) > _MAX_INT_DIGITS:  # no count in any dataset is that large
        return False
    return int(a[0] + digits if a[0] == "-" else digits) == answer


def answer_is_correct(a: str, kind: str, answer: int, variant: str = "released") -> bool:
    """The verdict on a cleaned answer `a`: TorF yes/no, Counting1 letter a-d, Counting2/3 integer."""
    if variant not in VARIANTS:
        raise InputError(f"unknown reward variant {variant!r}; expected one of {VARIANTS}")
    if kind == "TorF":
        return a.lower() == ("yes" if answer == 1 else "no")
    if kind == "Counting1":
        choice = _CHOICES.get(a.lower())
        return choice is not None and choice == answer
    if kind in ("Counting2", "Counting3"):
        return _released_int_equals(a, answer) if variant == "released" else _corrected_int_equals(a, answer)
    raise InputError(f"unknown answer kind {kind!r}; expected one of {KINDS}")
