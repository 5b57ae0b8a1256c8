"""Station-name normalization: the released C form (quirks kept) and the corrected, idempotent N form."""

import functools
import logging
import re

logger = logging.getLogger(__name__)

# Released C, step 1: one str.replace pass each, in this order (case-sensitive; `University` -> `Universityersity`).
_RELEASED_REPLACEMENTS = (
    ("Metro", ""),
    ("metro", ""),
    (",", ""),
    ("*", ""),
    ("\n", ""),
    ("'", ""),
    ("Univ.", "University"),
    ("Univ", "University"),
    ("Tech.", "Technology"),
    ("Tech", "Technology"),
    ("road", "lu"),
    ("Road", "lu"),
    ("Station", ""),
    ("station", ""),
    ("Asian Games Village", "yayuncun"),
)
_BRACKET_GROUP = re.compile(r"[(（][^)）]*[)）]")
_ALNUM_RUN = re.compile(r"[^\W_]+")  # maximal runs of str.isalnum characters
_TOKEN_MAP = {"univ": "university", "tech": "technology", "road": "lu"}
_DROPPED_TOKENS = frozenset({"metro", "station"})


def delete_bracket_groups(s: str) -> str:
    """Delete `(`/`（` ... `)`/`）` groups leftmost first, like the released regex but in linear time."""
    last_close = max(s.rfind(")"), s.rfind("）"))
    if last_close < 0:
        return s
    # No match can end after the last closing bracket; before it every attempt succeeds, so the regex is linear.
    return _BRACKET_GROUP.sub("", s[: last_close + 1]) + s[last_close + 1 :]


def clean_released(s: str) -> str:
    """The released C(s): replacements, one trailing `站`, bracket groups, whitespace and `-` deleted, lowercased."""
    return _clean_released_cached(s) if len(s) <= _CACHED_LENGTH else _clean_released(s)


def normalize_name(s: str) -> str:
    """The corrected N(s): lowercase, bracket groups gone, alnum tokens without trailing `站`, aliases; idempotent."""
    return _normalize_cached(s) if len(s) <= _CACHED_LENGTH else _normalize(s)


def name_key(s: str) -> str:
    """The corrected matching key: N(s) without spaces (names match when their keys are equal)."""
    return normalize_name(s).replace(" ", "")


def _clean_released(s: str) -> str:
    for old, new in _RELEASED_REPLACEMENTS:
        if old[0] in s:  # a one-character scan is far cheaper than a failed multi-character replace on long text
            s = s.replace(old, new)
    if s.endswith("站"):
        s = s[:-1]
    s = delete_bracket_groups(s)
    return "".join(s.split()).replace("-", "").lower()


def _normalize(s: str) -> str:
    tokens = []
    for token in _ALNUM_RUN.findall(delete_bracket_groups(s.lower())):
        token = token.rstrip("站")
        if token and token not in _DROPPED_TOKENS:
            tokens.append(_TOKEN_MAP.get(token, token))
    # Tokens are alnum, so NUL is a safe separator; doubled, back-to-back runs are all replaced in one pass.
    joined = "\0" + "\0\0".join(tokens) + "\0"
    joined = joined.replace("\0asian\0\0games\0\0village\0", "\0yayuncun\0")
    return joined.strip("\0").replace("\0\0", " ")


# Names are short and repeat across responses; long (adversarial) strings bypass the caches.
_CACHED_LENGTH = 256
_clean_released_cached = functools.lru_cache(maxsize=65536)(_clean_released)
_normalize_cached = functools.lru_cache(maxsize=65536)(_normalize)
