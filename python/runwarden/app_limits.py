"""What the supervised app's own command says of the load it sheds (issue 22, item 4).

A server that answers 503 past a limit of its own (uvicorn's `--limit-concurrency`) would
have its load-shedding judged as the app saying it is broken (SPEC R1: a 503 replaces the
runner), and its refusals would fail the health checks too. runwarden's door (SPEC Q) must
then keep the app under that limit, with room for a check, as uvicorn counts.

uvicorn refuses a request when, as its head is parsed, L connections are open (its own
counted) or L requests are running. Under uvloop a finished request stays counted until the
loop's next turn: its task is dropped from the count by a callback that runs after the
sockets already readable are read, and a proxy that sends the next request on the same
connection the moment the answer ends is that fast on loopback (measured: a check refused
with 2 requests running and 2 just finished, behind a door of L - 2 = 2). So a door of D can
meet D running, D just finished, and a check: at most `(L - 1) // 2` requests may be at the
app. The connections stay under L as well: D pooled, a check's, and one closing.
"""

from __future__ import annotations

from collections.abc import Sequence


def uvicorn_limit(command: Sequence[str]) -> tuple[int, str] | None:
    """`--limit-concurrency L` of a uvicorn command (`uvicorn …`, `python -m uvicorn …`):
    (L, the words that said it), or None."""
    words = list(command)
    starts = [i for i, w in enumerate(words) if w.rsplit("/", 1)[-1] == "uvicorn"]
    starts += [i + 1 for i, w in enumerate(words[:-1]) if w == "-m" and words[i + 1] == "uvicorn"]
    if not starts:
        return None
    for i, word in enumerate(words[min(starts) :], start=min(starts)):
        text = None
        if word == "--limit-concurrency" and i + 1 < len(words):
            text = words[i + 1]
        elif word.startswith("--limit-concurrency="):
            text = word.split("=", 1)[1]
        if text is not None and text.isdigit() and int(text) > 0:
            return int(text), f"uvicorn --limit-concurrency {int(text)}"
    return None


def door_within(limit: int) -> int:
    """The most requests at the app that keep it, and a check, under uvicorn's limit."""
    return max(1, (limit - 1) // 2)


def fit_door(
    values: dict[str, object], sources: dict[str, str], app_command: Sequence[str]
) -> str | None:
    """Keep `--max-concurrency` within the app's own limit, if its command sets one: set it
    when it was not given, else say when the given one lets the app shed load. Returns the
    line to log, if any."""
    found = uvicorn_limit(app_command)
    if found is None:
        return None
    limit, said = found
    fits = door_within(limit)
    given = int(values["max_concurrency"])  # type: ignore[call-overload]
    if 0 < given <= fits:
        return None
    tight = "" if limit > 3 else (
        f"; a limit of {limit} leaves no sure room for a check beside a request: raise it "
        "to 4 or more"
    )  # fmt: skip
    source = sources["max_concurrency"]
    if source == "default" or source.startswith("profile"):
        values["max_concurrency"] = fits
        sources["max_concurrency"] = f"app command ({said})"
        return (
            f"--max-concurrency set to {fits}: the app's {said} answers 503 once {limit} "
            f"requests are running, counting for a moment those just finished, and "
            f"runwarden replaces a runner whose app answers 503 (R1); {fits} running, "
            f"{fits} just finished and a check stay under {limit}, so requests beyond "
            f"{fits} wait at runwarden instead{tight}"
        )
    shown = "no limit" if given == 0 else str(given)
    return (
        f"--max-concurrency {shown} lets more requests reach the app than its {said} "
        f"takes: its 503s past {limit} running requests (those just finished counted for "
        f"a moment) would replace this runner (R1) and fail its checks; set "
        f"--max-concurrency {fits} or less{tight}"
    )
